//! OneCard adapters: the engine's ports made real.
//!
//! - [`printer`]: ESC/POS receipt printers over TCP.
//! - [`iso20022`]: the ISO 20022 messages and the bank adapter over HTTP(S).
//! - [`banks`]: which bank the node works with (`[bank]` in `config.toml`): the engine's
//!   in-process simulated bank or the ISO 20022 adapter.

pub mod banks;
pub mod iso20022;
pub mod printer;

pub use onecard_engine::bank::{BankAnswer, BankError, BankOp, BankPort};
