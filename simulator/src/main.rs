//! `onecard-sim`: the load simulator (issue "Scale"). Not built yet: this binary says so
//! instead of pretending.

fn main() {
    eprintln!("onecard-sim: the load simulator is not implemented yet (see the Scale issue)");
    std::process::exit(2);
}
