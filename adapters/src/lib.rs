//! OneCard adapters: the engine's ports made real. The ISO 20022 bank adapter, the PC/SC
//! reader bridge and the ESC/POS printer arrive with their issues; until then the engine's
//! in-process simulated bank (`onecard_engine::SimBank`) serves the demo, scenarios and tests.

pub use onecard_engine::bank::{BankAnswer, BankError, BankOp, BankPort};
