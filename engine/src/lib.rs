//! OneCard's settlement engine.
//!
//! Layers, from the bottom: [`money`] (exact amounts), [`model`] (domain types), [`ledger`]
//! (the pure rules and the state they act on), [`journal`] (the durable, hash-chained log on
//! sled), [`view`] (the current state of every account, stored with each record), [`bank`] (the bank port and the simulated bank; [`bank_batch`] batches its calls), [`router`] (what the actors
//! share, resident actors, passivation), [`actors`] (per-account actors on actix) and
//! [`engine`] (the public API), with [`recovery`] (opening a data directory), [`commands`]
//! (the request types) and [`error`] beside it. [`verify`] replays a journal from scratch and
//! checks the invariants. See `ARCHITECTURE.md` at the repository root.

pub mod actors;
mod auth_front;
pub mod bank;
pub mod bank_batch;
pub mod bank_ops;
pub mod cards;
pub mod commands;
pub mod config;
mod directory;
pub mod engine;
pub mod error;
pub mod fast_map;
pub mod feed;
pub mod journal;
pub mod ledger;
pub mod model;
pub mod money;
pub mod query;
pub mod records;
pub mod recovery;
pub mod router;
pub mod seal;
mod services;
pub mod verify;
pub mod view;

pub use auth_front::QueuedAuth;
pub use bank::{BankPort, SimBank, SimBankPort};
pub use config::NodeConfig;
pub use engine::{
    host_actors_here, Engine, EngineConfig, EngineError, OpenConsumer, PlaceOrder, RefundRequest,
};
pub use ledger::{CreditSource, CreditTarget};
pub use model::{CommandResult, OrderState, Outcome, Refusal, RefusalKind, Release, RulesConfig};
pub use money::{Amount, AmountError};
pub use seal::DataKey;

/// Public types shared across threads must stay `Send + Sync` (a compile-time check).
#[allow(dead_code)]
fn assert_thread_safe() {
    fn is<T: Send + Sync>() {}
    is::<money::Amount>();
    is::<ledger::LedgerState>();
    is::<journal::JournalHandle>();
    is::<bank::SimBank>();
    is::<engine::Shared>();
}
