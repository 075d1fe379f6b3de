//! Storage below the engine and the node: the write-ahead log ([`wal`]) and the one
//! group-commit writer ([`group_commit`]) that every durable store of OneCard uses.
//!
//! Architecture invariant: this crate knows nothing of money, accounts or HTTP. It moves
//! bytes to disk in order and says when they are durable.

pub mod group_commit;
pub mod wal;
