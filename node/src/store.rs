//! The node's own records: checkout sessions, merchants' API settings, idempotency records,
//! the print queue, webhook deliveries, consumer sessions and statements, and the outbox's
//! cursor in the engine's journal.
//!
//! Money never lives here: the engine's journal is the ledger. These records are what the API
//! needs around it, and they are made durable by that same journal
//! ([`onecard_engine::records`]): every [`NodeStore::commit`] rides in the next record of the
//! engine's write-ahead log together with whatever else is queued (the engine's entries and
//! other commits), one `fdatasync` for all of them, and resolves only once that record is on
//! disk. So an API answer that depends on a write is never sent before the write is durable,
//! and the node has one writer and one log, not two.
//!
//! A data directory written by an earlier version kept these records in a sled store of its
//! own (`<data>/node`); opening imports it once into the journal and renames it to
//! `<data>/node.imported`.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use onecard_engine::fast_map::FastDashMap;
use onecard_engine::records::{RecordError, RecordStore, RecordWrite};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("node store: {0}")]
    Records(#[from] RecordError),
    #[error("node store: record {key}: {message}")]
    Corrupt { key: String, message: String },
    #[error("node store: importing the store of an earlier version ({dir}): {message}")]
    Import { dir: String, message: String },
}

impl StoreError {
    /// Whether a write failed because the disk is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::Records(r) if r.is_disk_full())
    }
}

/// One key set or removed.
pub type Write = RecordWrite;

/// A JSON record under a text key.
pub fn json<T: Serialize>(key: impl Into<String>, value: &T) -> Write {
    // Serialising our own plain data types to JSON cannot fail (no maps with non-string
    // keys, no custom serialisers that error).
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    RecordWrite::Put(key.into().into_bytes(), bytes)
}

/// A record type stored in an encoding of its own rather than JSON (one read many times on
/// the payment path: a checkout). `decode` reads every form the type was ever stored in.
pub trait Codec: Sized {
    fn encode(&self) -> Vec<u8>;
    /// The record from its stored bytes; bytes that do not decode are an error, never a panic.
    fn decode(bytes: &[u8]) -> Result<Self, String>;
}

/// The [`Codec`] record stored under `key`; one that does not decode is an error, never a
/// panic.
pub fn decode_record<T: Codec>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    T::decode(bytes).map_err(|message| StoreError::Corrupt {
        key: key.to_string(),
        message,
    })
}

/// A record of a [`Codec`] type under a text key.
pub fn record<T: Codec>(key: impl Into<String>, value: &T) -> Write {
    RecordWrite::Put(key.into().into_bytes(), value.encode())
}

/// The removal of a text key.
pub fn remove(key: impl Into<String>) -> Write {
    RecordWrite::Remove(key.into().into_bytes())
}

/// The JSON record stored under `key`; one that does not decode is an error, never a panic.
pub(crate) fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: key.to_string(),
        message: e.to_string(),
    })
}

/// Records decoded from their stored bytes, each kept with the bytes it was decoded from (see
/// [`NodeStore::get_cached`]). The bytes are the check: a record changed in the store since
/// does not match and is decoded anew, so nothing is ever invalidated and no read can see an
/// older record than the store holds. For records read several times in a short while (a
/// checkout is read by each step of its payment): when full, it is emptied and fills again.
pub struct DecodedCache<T> {
    map: FastDashMap<String, (Box<[u8]>, Arc<T>)>,
    capacity: usize,
}

impl<T> DecodedCache<T> {
    pub fn new(capacity: usize) -> DecodedCache<T> {
        DecodedCache {
            map: FastDashMap::default(),
            capacity: capacity.max(1),
        }
    }
}

/// Counters for `/metrics`.
#[derive(Default, Debug)]
pub struct StoreStats {
    pub commits: AtomicU64,
}

/// The node store. Cheap to clone.
#[derive(Clone)]
pub struct NodeStore {
    records: RecordStore,
    pub stats: Arc<StoreStats>,
}

/// Writes per commit when importing an earlier version's store.
const IMPORT_CHUNK: usize = 4096;

impl NodeStore {
    /// The store on the engine's journal; imports `legacy_dir` (an earlier version's sled
    /// store) first if it exists, then renames it so that it is imported once.
    pub fn open(records: RecordStore, legacy_dir: &Path) -> Result<NodeStore, StoreError> {
        let store = NodeStore {
            records,
            stats: Arc::new(StoreStats::default()),
        };
        if legacy_dir.is_dir() {
            store.import(legacy_dir)?;
        }
        Ok(store)
    }

    fn import(&self, dir: &Path) -> Result<(), StoreError> {
        let failed = |message: String| StoreError::Import {
            dir: dir.display().to_string(),
            message,
        };
        let db = sled::Config::new()
            .path(dir)
            .open()
            .map_err(|e| failed(e.to_string()))?;
        let mut chunk = Vec::with_capacity(IMPORT_CHUNK);
        let mut imported = 0usize;
        for kv in db.iter() {
            let (k, v) = kv.map_err(|e| failed(e.to_string()))?;
            chunk.push(RecordWrite::Put(k.to_vec(), v.to_vec()));
            if chunk.len() == IMPORT_CHUNK {
                imported += chunk.len();
                self.records.commit_blocking(std::mem::take(&mut chunk))?;
            }
        }
        imported += chunk.len();
        if !chunk.is_empty() {
            self.records.commit_blocking(chunk)?;
        }
        drop(db);
        let target = dir.with_extension("imported");
        std::fs::rename(dir, &target).map_err(|e| failed(format!("renaming it: {e}")))?;
        tracing::info!(records = imported, from = %dir.display(), to = %target.display(),
            "imported the node store of an earlier version into the journal");
        eprintln!(
            "serve: imported {imported} node records from {} into the journal (the old store is kept as {})",
            dir.display(),
            target.display()
        );
        Ok(())
    }

    /// Applies `writes` atomically and resolves once they are on disk.
    pub fn commit(
        &self,
        writes: Vec<Write>,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + 'static {
        let done = self.records.commit(writes);
        let stats = self.stats.clone();
        async move {
            done.await?;
            stats.commits.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }

    /// [`NodeStore::commit`] for threads outside any async runtime (the print and webhook
    /// workers).
    pub fn commit_blocking(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        self.records.commit_blocking(writes)?;
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    pub fn get_raw(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.records.get(key.as_bytes())?)
    }

    /// A JSON record; a record that does not decode is an error, never a panic.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        match self.get_raw(key)? {
            None => Ok(None),
            Some(v) => decode(key, &v).map(Some),
        }
    }

    /// The [`Codec`] record under `key`; one that does not decode is an error, never a panic.
    pub fn get_record<T: Codec>(&self, key: &str) -> Result<Option<T>, StoreError> {
        match self.get_raw(key)? {
            None => Ok(None),
            Some(v) => decode_record(key, &v).map(Some),
        }
    }

    /// The [`Codec`] record under `key`, through `cache`: a record whose stored bytes are the
    /// ones it was last decoded from is shared from the cache instead of decoded again.
    pub fn get_cached<T: Codec>(
        &self,
        key: &str,
        cache: &DecodedCache<T>,
    ) -> Result<Option<Arc<T>>, StoreError> {
        let Some(raw) = self.get_raw(key)? else {
            return Ok(None);
        };
        if let Some(hit) = cache.map.get(key) {
            if *hit.0 == *raw {
                return Ok(Some(hit.1.clone()));
            }
        }
        let value = Arc::new(decode_record::<T>(key, &raw)?);
        if cache.map.len() >= cache.capacity {
            cache.map.clear();
        }
        cache
            .map
            .insert(key.to_string(), (raw.into_boxed_slice(), value.clone()));
        Ok(Some(value))
    }

    /// The records whose keys start with `prefix`, in key order, starting after `after` (a
    /// full key) when given, at most `limit`.
    pub fn scan<T: DeserializeOwned>(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, T)>, StoreError> {
        self.scan_decoded(prefix, after, limit, decode::<T>)
    }

    /// [`NodeStore::scan`] of [`Codec`] records.
    pub fn scan_records<T: Codec>(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, T)>, StoreError> {
        self.scan_decoded(prefix, after, limit, decode_record::<T>)
    }

    fn scan_decoded<T>(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        decode: fn(&str, &[u8]) -> Result<T, StoreError>,
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
        if limit == 0 {
            return Ok(out);
        }
        for kv in self.records.scan_from(prefix.as_bytes(), &start) {
            let (k, v) = kv?;
            let key = String::from_utf8_lossy(&k).into_owned();
            let value = decode(&key, &v)?;
            out.push((key, value));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// The keys starting with `prefix`, in order, while `take` says so, at most `limit`; and
    /// the first key `take` refused, if any. Values are not decoded.
    pub fn keys_while(
        &self,
        prefix: &str,
        limit: usize,
        mut take: impl FnMut(&str) -> bool,
    ) -> Result<(Vec<String>, Option<String>), StoreError> {
        let mut out = Vec::new();
        for kv in self.records.scan(prefix.as_bytes()) {
            if out.len() >= limit {
                break;
            }
            let key = String::from_utf8_lossy(&kv?.0).into_owned();
            if !take(&key) {
                return Ok((out, Some(key)));
            }
            out.push(key);
        }
        Ok((out, None))
    }

    /// The `n`-th key (from 0) starting with `prefix`, if there are more than `n`. Reads the
    /// keys before it (for paging from the end of a short index).
    pub fn nth_key(&self, prefix: &str, n: usize) -> Result<Option<String>, StoreError> {
        match self.records.scan(prefix.as_bytes()).nth(n) {
            None => Ok(None),
            Some(kv) => Ok(Some(String::from_utf8_lossy(&kv?.0).into_owned())),
        }
    }

    /// How many keys start with `prefix`, counting up to `cap`.
    pub fn count_prefix(&self, prefix: &str, cap: usize) -> usize {
        self.records
            .scan(prefix.as_bytes())
            .take(cap)
            .filter(|kv| kv.is_ok())
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use onecard_engine::{Engine, EngineConfig, SimBank, SimBankPort};

    async fn engine(dir: &Path) -> Engine {
        let bank = SimBank::open(dir).unwrap();
        Engine::open(dir, EngineConfig::default(), Arc::new(SimBankPort(bank)))
            .await
            .unwrap()
    }

    /// A record type of the test's, stored as JSON.
    struct Ids(Vec<u32>);

    impl Codec for Ids {
        fn encode(&self) -> Vec<u8> {
            serde_json::to_vec(&self.0).unwrap()
        }
        fn decode(bytes: &[u8]) -> Result<Self, String> {
            serde_json::from_slice(bytes)
                .map(Ids)
                .map_err(|e| e.to_string())
        }
    }

    #[test]
    fn a_cached_read_never_returns_a_record_older_than_the_store_holds() {
        actix_rt::System::new().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let engine = engine(dir.path()).await;
            let store = NodeStore::open(engine.records(), &dir.path().join("node")).unwrap();
            let cache = DecodedCache::<Ids>::new(2);
            let get = |key: &str| {
                store
                    .get_cached(key, &cache)
                    .unwrap()
                    .map(|ids| ids.0.clone())
            };
            assert_eq!(get("k/1"), None);
            store
                .commit(vec![record("k/1", &Ids(vec![1]))])
                .await
                .unwrap();
            assert_eq!(get("k/1"), Some(vec![1]));
            // Changed behind the cache's back: the stored bytes differ, so it is decoded anew.
            for n in 2..50u32 {
                store
                    .commit(vec![record("k/1", &Ids(vec![n]))])
                    .await
                    .unwrap();
                assert_eq!(get("k/1"), Some(vec![n]));
                assert_eq!(get("k/1"), Some(vec![n]));
            }
            store.commit(vec![remove("k/1")]).await.unwrap();
            assert_eq!(get("k/1"), None);
            // Past its capacity it starts again, and reads stay right.
            for n in 0..5u32 {
                let key = format!("k/{n}");
                store
                    .commit(vec![record(&key, &Ids(vec![n, n]))])
                    .await
                    .unwrap();
                assert_eq!(get(&key), Some(vec![n, n]));
                assert!(cache.map.len() <= 2);
            }
            // A record that does not decode is an error, not a panic, cached or not.
            store
                .commit(vec![RecordWrite::Put(b"k/bad".to_vec(), b"{".to_vec())])
                .await
                .unwrap();
            assert!(matches!(
                store.get_cached("k/bad", &cache),
                Err(StoreError::Corrupt { .. })
            ));
            engine.close().await.unwrap();
        });
    }

    #[test]
    fn committed_records_survive_a_reopen_and_scan_in_key_order() {
        actix_rt::System::new().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            {
                let engine = engine(dir.path()).await;
                let store = NodeStore::open(engine.records(), &dir.path().join("node")).unwrap();
                store
                    .commit(vec![
                        json("a/2", &2u32),
                        json("a/1", &1u32),
                        json("b/1", &9u32),
                    ])
                    .await
                    .unwrap();
                store.commit(vec![remove("a/2")]).await.unwrap();
                engine.close().await.unwrap();
            }
            let engine = engine(dir.path()).await;
            let store = NodeStore::open(engine.records(), &dir.path().join("node")).unwrap();
            let all: Vec<(String, u32)> = store.scan("a/", None, 10).unwrap();
            assert_eq!(all, vec![("a/1".to_string(), 1)]);
            assert_eq!(store.get::<u32>("b/1").unwrap(), Some(9));
            let after: Vec<(String, u32)> = store.scan("a/", Some("a/1"), 10).unwrap();
            assert!(after.is_empty());
            assert_eq!(store.count_prefix("", 10), 2);
            engine.close().await.unwrap();
        });
    }

    #[test]
    fn a_record_that_does_not_decode_is_an_error() {
        actix_rt::System::new().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let engine = engine(dir.path()).await;
            let store = NodeStore::open(engine.records(), &dir.path().join("node")).unwrap();
            store
                .commit_blocking(vec![Write::Put(b"x".to_vec(), b"not json".to_vec())])
                .unwrap();
            assert!(store.get::<u32>("x").is_err());
            engine.close().await.unwrap();
        });
    }

    /// An earlier version's sled store is imported once, whole, and kept aside.
    #[test]
    fn the_store_of_an_earlier_version_is_imported_once() {
        actix_rt::System::new().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let legacy = dir.path().join("node");
            {
                let db = sled::open(&legacy).unwrap();
                for i in 0..5_000u32 {
                    db.insert(format!("ck/ord_{i:05}"), serde_json::to_vec(&i).unwrap())
                        .unwrap();
                }
                db.insert("outbox/cursor", b"42".to_vec()).unwrap();
                db.flush().unwrap();
            }
            {
                let engine = engine(dir.path()).await;
                let store = NodeStore::open(engine.records(), &legacy).unwrap();
                assert!(!legacy.exists(), "the old store is renamed");
                assert!(dir.path().join("node.imported").is_dir());
                assert_eq!(store.get::<u64>("outbox/cursor").unwrap(), Some(42));
                assert_eq!(store.count_prefix("ck/", 10_000), 5_000);
                store.commit(vec![remove("ck/ord_00000")]).await.unwrap();
                engine.close().await.unwrap();
            }
            // Reopened: nothing imported again (the removal stays).
            let engine = engine(dir.path()).await;
            let store = NodeStore::open(engine.records(), &legacy).unwrap();
            assert_eq!(store.count_prefix("ck/", 10_000), 4_999);
            assert_eq!(store.get::<u32>("ck/ord_04999").unwrap(), Some(4_999));
            engine.close().await.unwrap();
        });
    }
}
