//! Storage below the engine and the node: the write-ahead log ([`wal`]), the one
//! group-commit writer ([`group_commit`]) that every durable store of OneCard uses, the sorted
//! runs the view is checkpointed into ([`runs`]) and the one Bloom filter ([`bloom`]).
//!
//! Architecture invariant: this crate knows nothing of money, accounts or HTTP. It moves
//! bytes to disk in order and says when they are durable.

pub mod bloom;
pub mod group_commit;
pub mod runs;
pub mod wal;

/// Whether an I/O error says the device is full (ENOSPC): the one test of it, for the log, the
/// view's checkpoint and the node store, so that each says "disk full" in words alike.
pub fn is_disk_full(e: &std::io::Error) -> bool {
    // sled re-wraps some of its I/O errors as custom ones that keep only the message.
    e.raw_os_error() == Some(libc::ENOSPC) || e.to_string().contains("No space left on device")
}
