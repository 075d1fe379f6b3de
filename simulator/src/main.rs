//! `onecard-sim`: the load simulator (issue "Scale").
//!
//! `onecard-sim load` opens a seeded population — consumers with credit limits, wallets and
//! accounts at the simulated bank; merchants with a Zipf popularity — on the real engine in
//! process (actors, durable journal, simulated bank, all on sled in one data directory), runs
//! a deterministic stream of order lifecycles, recharges, bank refusals and ticks with many
//! lifecycles in flight, checks every answer against the rules, then verifies the journal and
//! the conservation of money and reports throughput, latency and memory.
//!
//! `onecard-sim card` plugs a virtual OneCard smart card into a reader of pcscd's vpcd driver
//! (see `card`).
//!
//! `onecard-sim pay` runs many simulated card readers paying against a running `onecard serve`
//! over real HTTP (see `pay`).
//!
//! `onecard-sim bank` serves a simulated bank over HTTP that speaks ISO 20022, with durable
//! balances and faults (see `onecard_sim::bank` and docs/bank-http.md).

mod analysis;
mod bank_admin;
mod card_cmd;
mod checks;
mod load;
mod options;
mod pay;
mod population;
mod report;
mod runner;
mod stats;
mod workload;

use std::process::ExitCode;

/// mimalloc instead of glibc's malloc: allocation is a large share of the engine's CPU. Tuned by
/// `onecard_sim::allocator::tune`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "onecard-sim",
    version,
    about = "OneCard load simulator: a seeded population and workload over the real engine",
    long_about = "OneCard load simulator. `onecard-sim load` runs a seeded population and workload \
over the real engine in process (actors, durable journal, simulated bank), checks every outcome \
against the rules and every invariant at the end, and reports throughput, latency percentiles, \
peak memory and a digest of the final state. See `onecard-sim load --help` for every option.\n\n\
`onecard-sim card` plugs a virtual OneCard smart card into a reader of pcscd's vpcd driver. See \
`onecard-sim card --help`.\n\n\
`onecard-sim pay` runs simulated card readers paying against a running `onecard serve` over HTTP \
and reports payments per second and the latency of each step. See `onecard-sim pay --help`.\n\n\
`onecard-sim bank` serves a simulated bank over HTTP (ISO 20022) with durable balances and \
faults. See `onecard-sim bank --help`."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Load(options::LoadArgs),
    Card(options::CardArgs),
    Pay(options::PayArgs),
    Bank(onecard_sim::bank::BankArgs),
}

fn main() -> ExitCode {
    onecard_sim::allocator::tune();
    match Cli::parse().command {
        Command::Load(args) => load::main(args),
        Command::Card(args) => card_cmd::main(args),
        Command::Pay(args) => pay::main(args),
        Command::Bank(args) => onecard_sim::bank::main(args),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
