//! The records of the layer above the engine (the node's checkouts, idempotency records,
//! sessions, print and webhook queues), kept durable by the engine's own journal.
//!
//! Why here and not in a store of the node's own: one log, one writer and one `fdatasync` for
//! both. A commit rides in the next record of the write-ahead log with whatever entries are
//! queued, is readable from the view's overlay as soon as that record is on disk, and reaches
//! sled with the view's checkpoint (one sorted batch a second) instead of a sled batch and
//! flush per commit. Before, the node's own sled store cost about half of the node's CPU for an
//! order creation (BENCHMARKS.md).
//!
//! The engine never interprets these records: keys and values are bytes, kept in the view
//! under their own prefix (`x`), in key order in the overlay so that a prefix scan reads only
//! its range. `verify` checks their framing in the log but not their values (they are not the
//! ledger's, and holding every one of them to compare would make its memory grow with the
//! node's history).

use crate::journal::{JournalError, JournalHandle};
use crate::view::{StateView, ViewError, ViewWrite, UPPER_RECORD};

/// One key set or removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordWrite {
    Put(Vec<u8>, Vec<u8>),
    Remove(Vec<u8>),
}

/// Why a record could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    View(#[from] ViewError),
}

impl RecordError {
    /// Whether a write failed because the disk is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, RecordError::Journal(j) if j.is_disk_full())
    }
}

/// The upper layer's records. Cheap to clone; holding one keeps no store open (the journal
/// stops writing when the engine closes, and a later commit fails).
#[derive(Clone)]
pub struct RecordStore {
    journal: JournalHandle,
    view: StateView,
}

fn stored_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(UPPER_RECORD);
    k.extend_from_slice(key);
    k
}

fn view_write(w: RecordWrite) -> ViewWrite {
    match w {
        RecordWrite::Put(k, v) => ViewWrite::Put(stored_key(&k), v),
        RecordWrite::Remove(k) => ViewWrite::Remove(stored_key(&k)),
    }
}

impl RecordStore {
    pub(crate) fn new(journal: JournalHandle, view: StateView) -> RecordStore {
        RecordStore { journal, view }
    }

    /// Applies `writes` atomically (one log record holds them all) and resolves once they are
    /// on disk and readable.
    pub fn commit(
        &self,
        writes: Vec<RecordWrite>,
    ) -> impl std::future::Future<Output = Result<(), RecordError>> + 'static {
        let done = self
            .journal
            .append_writes(writes.into_iter().map(view_write).collect());
        async move {
            done.await?;
            Ok(())
        }
    }

    /// [`RecordStore::commit`] for threads outside any async runtime.
    pub fn commit_blocking(&self, writes: Vec<RecordWrite>) -> Result<(), RecordError> {
        self.journal
            .append_writes_blocking(writes.into_iter().map(view_write).collect())?;
        Ok(())
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, RecordError> {
        let k = stored_key(key);
        // A key under a filtered prefix (`JournalConfig::filtered_record_prefixes`) that was
        // never written is answered from memory.
        let ids = self.view.ids();
        if ids.covers(&k) && ids.surely_absent(&k) {
            return Ok(None);
        }
        Ok(self.view.get_raw(&k)?)
    }

    /// The records whose keys start with `prefix`, in key order, from `start` on (inclusive;
    /// `start` should itself start with `prefix`). Read lazily: taking a few costs a few.
    pub fn scan_from<'a>(
        &'a self,
        prefix: &[u8],
        start: &[u8],
    ) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), RecordError>> + 'a {
        self.view
            .scan_from(stored_key(prefix), stored_key(start))
            .map(|kv| {
                let (mut k, v) = kv?;
                k.remove(0);
                Ok((k, v))
            })
    }

    /// The records whose keys start with `prefix`, in key order.
    pub fn scan<'a>(
        &'a self,
        prefix: &[u8],
    ) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), RecordError>> + 'a {
        self.scan_from(prefix, prefix)
    }
}
