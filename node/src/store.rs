//! The node's own durable store: checkout sessions, merchants' API settings, idempotency
//! records, the print queue, webhook deliveries, consumer sessions and statements, and the
//! outbox's cursor in the engine's journal.
//!
//! Money never lives here: the engine's journal is the ledger. This store holds what the API
//! needs around it, in its own sled database (`<data>/node`), written by OneCard's one
//! group-commit writer (`onecard_storage::group_commit`): every [`NodeStore::commit`] is
//! applied as one atomic sled batch together with whatever else is queued, flushed (fsync)
//! once, and only then acknowledged. So an API answer that depends on
//! a write is never sent before the write is on disk, and one flush serves many requests.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use onecard_storage::group_commit::{
    CommitError, GroupCommit, GroupCommitConfig, Sink, SinkFailure,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("node store: {0}")]
    Sled(#[from] sled::Error),
    #[error("node store: record {key}: {message}")]
    Corrupt { key: String, message: String },
    #[error("node store: {0}")]
    Write(#[from] CommitError),
}

/// One key set or removed.
#[derive(Debug, Clone)]
pub enum Write {
    Put(Vec<u8>, Vec<u8>),
    Remove(Vec<u8>),
}

impl Write {
    /// A JSON record under a text key.
    pub fn json<T: Serialize>(key: impl Into<String>, value: &T) -> Write {
        // Serialising our own plain data types to JSON cannot fail (no maps with non-string
        // keys, no custom serialisers that error).
        let bytes = serde_json::to_vec(value).unwrap_or_default();
        Write::Put(key.into().into_bytes(), bytes)
    }

    pub fn remove(key: impl Into<String>) -> Write {
        Write::Remove(key.into().into_bytes())
    }
}

/// The node store's side of the group-commit writer: one sled batch and one flush.
struct StoreSink {
    db: sled::Db,
    stats: Arc<StoreStats>,
}

impl Sink for StoreSink {
    type Item = Vec<Write>;
    type Done = ();

    fn commit(&mut self, pending: &mut Vec<Vec<Write>>) -> Result<(), SinkFailure> {
        let mut batch = sled::Batch::default();
        for w in pending.iter().flatten() {
            match w {
                Write::Put(k, v) => batch.insert(k.as_slice(), v.as_slice()),
                Write::Remove(k) => batch.remove(k.as_slice()),
            }
        }
        let result = self
            .db
            .apply_batch(batch)
            .and_then(|()| self.db.flush().map(|_| ()));
        self.stats.flushes.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(()) => {
                self.stats
                    .commits
                    .fetch_add(pending.len() as u64, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "node store write failed");
                Err(sled_failure(&e))
            }
        }
    }

    fn close(&mut self) {
        let _ = self.db.flush();
    }
}

fn sled_failure(e: &sled::Error) -> SinkFailure {
    match e {
        sled::Error::Io(io) if onecard_storage::is_disk_full(io) => {
            SinkFailure::disk_full(e.to_string())
        }
        _ => SinkFailure::new(e.to_string()),
    }
}

/// Counters for `/metrics`.
#[derive(Default, Debug)]
pub struct StoreStats {
    pub commits: AtomicU64,
    pub flushes: AtomicU64,
}

/// The node store. Cheap to clone.
#[derive(Clone)]
pub struct NodeStore {
    db: sled::Db,
    writer: GroupCommit<StoreSink>,
    pub stats: Arc<StoreStats>,
}

impl NodeStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<NodeStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Sled(sled::Error::Io(e)))?;
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            .cache_capacity(64 << 20)
            .open()?;
        let stats = Arc::new(StoreStats::default());
        let sink = StoreSink {
            db: db.clone(),
            stats: stats.clone(),
        };
        let writer = GroupCommit::start(
            "node-store-writer",
            sink,
            GroupCommitConfig {
                max_batch: 8192,
                ..GroupCommitConfig::default()
            },
        )
        .map_err(|e| StoreError::Sled(sled::Error::Io(e)))?;
        Ok(NodeStore { db, writer, stats })
    }

    /// Applies `writes` atomically and resolves once they are on disk.
    pub fn commit(
        &self,
        writes: Vec<Write>,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + 'static {
        let done = self.writer.submit(writes);
        async move { Ok(done.await?) }
    }

    /// [`NodeStore::commit`] for threads outside any async runtime (the print and webhook
    /// workers).
    pub fn commit_blocking(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        Ok(self.writer.submit_blocking(writes)?)
    }

    pub fn get_raw(&self, key: &str) -> Result<Option<sled::IVec>, StoreError> {
        Ok(self.db.get(key.as_bytes())?)
    }

    /// A JSON record; a record that does not decode is an error, never a panic.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        match self.db.get(key.as_bytes())? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| StoreError::Corrupt {
                    key: key.to_string(),
                    message: e.to_string(),
                }),
        }
    }

    /// The records whose keys start with `prefix`, in key order, starting after `after` (a
    /// full key) when given, at most `limit`.
    pub fn scan<T: DeserializeOwned>(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, T)>, StoreError> {
        let start: Vec<u8> = match after {
            Some(a) => {
                let mut k = a.as_bytes().to_vec();
                k.push(0);
                k
            }
            None => prefix.as_bytes().to_vec(),
        };
        let mut out = Vec::new();
        for kv in self.db.range(start..) {
            let (k, v) = kv?;
            if !k.starts_with(prefix.as_bytes()) || out.len() >= limit {
                break;
            }
            let key = String::from_utf8_lossy(&k).into_owned();
            let value = serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                key: key.clone(),
                message: e.to_string(),
            })?;
            out.push((key, value));
        }
        Ok(out)
    }

    /// The keys starting with `prefix`, in order, while `take` says so, at most `limit`; and
    /// the first key `take` refused, if any. Values are not read.
    pub fn keys_while(
        &self,
        prefix: &str,
        limit: usize,
        mut take: impl FnMut(&str) -> bool,
    ) -> Result<(Vec<String>, Option<String>), StoreError> {
        let mut out = Vec::new();
        for kv in self.db.scan_prefix(prefix.as_bytes()).keys() {
            if out.len() >= limit {
                break;
            }
            let key = String::from_utf8_lossy(&kv?).into_owned();
            if !take(&key) {
                return Ok((out, Some(key)));
            }
            out.push(key);
        }
        Ok((out, None))
    }

    /// How many keys start with `prefix`, counting up to `cap`.
    pub fn count_prefix(&self, prefix: &str, cap: usize) -> usize {
        self.db
            .scan_prefix(prefix.as_bytes())
            .keys()
            .take(cap)
            .count()
    }

    /// Writes everything queued, stops the writer and flushes.
    pub fn close(&self) -> Result<(), StoreError> {
        self.writer.close();
        self.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_records_survive_a_reopen_and_scan_in_key_order() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = NodeStore::open(dir.path()).unwrap();
            store
                .commit_blocking(vec![
                    Write::json("a/2", &2u32),
                    Write::json("a/1", &1u32),
                    Write::json("b/1", &9u32),
                ])
                .unwrap();
            store.commit_blocking(vec![Write::remove("a/2")]).unwrap();
            store.close().unwrap();
        }
        let store = NodeStore::open(dir.path()).unwrap();
        let all: Vec<(String, u32)> = store.scan("a/", None, 10).unwrap();
        assert_eq!(all, vec![("a/1".to_string(), 1)]);
        assert_eq!(store.get::<u32>("b/1").unwrap(), Some(9));
        let after: Vec<(String, u32)> = store.scan("a/", Some("a/1"), 10).unwrap();
        assert!(after.is_empty());
    }

    #[test]
    fn a_record_that_does_not_decode_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = NodeStore::open(dir.path()).unwrap();
        store
            .commit_blocking(vec![Write::Put(b"x".to_vec(), b"not json".to_vec())])
            .unwrap();
        assert!(store.get::<u32>("x").is_err());
    }
}
