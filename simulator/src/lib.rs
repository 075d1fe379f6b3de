//! The simulator's library part: the virtual OneCard card (its applet and the vpcd connector that
//! plugs it into a real PC/SC stack), shared by `onecard-sim card` and the reader program's tests,
//! and the tuning of the allocator that the node (`onecard`) and `onecard-sim` both use.
//! The load simulator itself is the binary (`src/main.rs`). The bank simulator (`bank`, served
//! by `onecard-sim bank`) is here, beside the card, for its books and journal to be usable alone.

pub mod allocator;
pub mod bank;

pub mod card {
    pub mod applet;
    pub mod vpcd;
}
