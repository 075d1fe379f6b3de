//! OneCard adapters: the engine's ports made real. The ESC/POS printer ([`printer`]) is here;
//! the ISO 20022 bank adapter and the PC/SC reader bridge arrive with their issues, and until
//! then the engine's in-process simulated bank (`onecard_engine::SimBank`) serves the demo,
//! scenarios and tests.

pub mod printer;

pub use onecard_engine::bank::{BankAnswer, BankError, BankOp, BankPort};
