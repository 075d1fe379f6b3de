//! The durable journal: a checksummed, hash-chained log of entries on sled, written by one
//! group-commit writer.
//!
//! Architecture invariant: this module and [`crate::view`] are the only code that touches sled
//! for the node's own data.
//!
//! Callers hand an entry, with the account-state view's writes it causes, to the writer over a
//! bounded crossbeam channel and get a future that resolves only after the batch holding their
//! entry has been flushed to disk (I7). The writer takes everything queued (up to `max_batch`),
//! encodes it as **one** sled record, writes the record together with an index of the bank
//! operations it mentions, the head marker and the view's writes in one atomic sled batch,
//! flushes once, then answers everyone in the batch. So the view is always at the head: opening
//! replays nothing, whatever the journal's length.
//!
//! Record layout (the value under key `r` + seq as big-endian u64):
//!
//! ```text
//! magic "OCJ1" | seq u64 | prev_hash [32] | payload_len u32 | payload | crc32 u32
//! ```
//!
//! `crc32` covers everything before it; `prev_hash` is the SHA-256 of the previous record's
//! whole value (zeros for the first). The payload is a count and length-prefixed bincode
//! entries.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use bincode::Options;
use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use crate::ledger::Entry;
use crate::view::{StateView, ViewMeta, ViewWrite, WriterDelta, WriterView};

const MAGIC: &[u8; 4] = b"OCJ1";
const HEADER_LEN: usize = 4 + 8 + 32 + 4;
const RECORD_PREFIX: u8 = b'r';
const BANK_OP_PREFIX: u8 = b'o';
/// Sequence number and hash of the last record, written in the same atomic batch as it, so
/// that an altered last record (which no later record chains to) is detected too.
const HEAD_KEY: &[u8] = b"h";
/// Refuse to decode anything claiming to be larger than this (a garbled length must not make
/// us allocate gigabytes).
const MAX_RECORD_BYTES: u64 = 256 * 1024 * 1024;

pub type Hash = [u8; 32];

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("storage error: {0}")]
    Storage(#[from] sled::Error),
    #[error("journal record {seq}: {reason}")]
    Corrupt { seq: u64, reason: String },
    #[error("the journal is closed")]
    Closed,
    #[error("the journal stopped after an earlier write failed; restart the node")]
    Failed,
    #[error("the journal queue is full (overloaded)")]
    Overloaded,
    #[error("account-state view: {0}")]
    View(String),
    #[error("cannot start the journal writer: {0}")]
    Thread(String),
}

/// Tuning of the group-commit writer and the store.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// Capacity of the channel into the writer; a full channel makes submitters wait.
    pub queue_capacity: usize,
    /// Most entries written in one record and flush.
    pub max_batch: usize,
    /// How long a batch may stay open for more entries once the queue is empty, in
    /// microseconds. 0 closes it at once: lowest latency; a few hundred µs trades latency
    /// for fewer, fuller flushes under load.
    pub batch_window_micros: u64,
    /// sled's page cache, in bytes: how much of the store stays in memory.
    pub cache_bytes: u64,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            queue_capacity: 16_384,
            max_batch: 4_096,
            batch_window_micros: 0,
            cache_bytes: 256 * 1024 * 1024,
        }
    }
}

struct Submission {
    entry_bytes: Vec<u8>,
    bank_ops: Vec<String>,
    view_writes: Vec<ViewWrite>,
    delta: WriterDelta,
    ack: oneshot::Sender<Result<u64, JournalError>>,
}

enum WriterMsg {
    Append(Submission),
    /// Write everything queued before this, then stop.
    Stop,
}

/// A handle to the running journal; cheap to clone.
#[derive(Clone)]
pub struct JournalHandle {
    tx: Sender<WriterMsg>,
    failed: Arc<AtomicBool>,
    tree: sled::Tree,
    stats: Arc<JournalStats>,
}

/// Counters for operators and benchmarks.
#[derive(Default, Debug)]
pub struct JournalStats {
    pub records: AtomicU64,
    pub entries: AtomicU64,
    pub flushes: AtomicU64,
    /// Time spent writing and flushing, in microseconds.
    pub write_micros: AtomicU64,
}

impl JournalHandle {
    /// Queues an entry. The returned future resolves with the record's sequence number once
    /// the entry is on disk. Blocks the calling thread while the queue is full (back-pressure).
    pub fn append(
        &self,
        entry: &Entry,
        view_writes: Vec<ViewWrite>,
    ) -> impl std::future::Future<Output = Result<u64, JournalError>> + 'static {
        let (ack, rx) = oneshot::channel();
        let queued = self.queue(entry, view_writes, ack);
        async move {
            queued?;
            rx.await.map_err(|_| JournalError::Closed)?
        }
    }

    fn queue(
        &self,
        entry: &Entry,
        view_writes: Vec<ViewWrite>,
        ack: oneshot::Sender<Result<u64, JournalError>>,
    ) -> Result<(), JournalError> {
        if self.failed.load(Ordering::Acquire) {
            return Err(JournalError::Failed);
        }
        let entry_bytes = bincode::serialize(entry).map_err(|e| JournalError::Corrupt {
            seq: 0,
            reason: format!("encode: {e}"),
        })?;
        let bank_ops = entry.bank_ops().cloned().collect();
        let msg = WriterMsg::Append(Submission {
            entry_bytes,
            bank_ops,
            view_writes,
            delta: WriterDelta::of(entry),
            ack,
        });
        match self.tx.try_send(msg) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(msg)) => self.tx.send(msg).map_err(|_| JournalError::Closed),
            Err(TrySendError::Disconnected(_)) => Err(JournalError::Closed),
        }
    }

    /// Whether a bank operation is recorded in a durable entry.
    pub fn has_bank_op(&self, op: &str) -> Result<bool, JournalError> {
        Ok(self.tree.contains_key(bank_op_key(op))?)
    }

    pub fn stats(&self) -> &JournalStats {
        &self.stats
    }

    /// The durable records after sequence number `after`, at most `max` of them, in order,
    /// checked for framing and checksum: the journal as a feed, for the node's outbox (print
    /// jobs, webhooks) which keeps its own cursor.
    pub fn records_after(
        &self,
        after: u64,
        max: usize,
    ) -> Result<Vec<DecodedRecord>, JournalError> {
        records(&self.tree, after).take(max).collect()
    }

    /// The last durable record's sequence number (0 when the journal is empty).
    pub fn last_seq(&self) -> Result<u64, JournalError> {
        Ok(read_head(&self.tree)?.map(|(seq, _)| seq).unwrap_or(0))
    }

    /// Reads of the account-state view.
    pub fn view(&self) -> StateView {
        StateView::new(self.tree.clone())
    }
}

/// The journal: its store and its writer thread.
pub struct Journal {
    db: sled::Db,
    handle: JournalHandle,
    writer: Option<JoinHandle<()>>,
    path: PathBuf,
}

/// What opening a journal found: where the log ends and the view's meta record.
pub struct Recovered {
    pub meta: ViewMeta,
    pub last_seq: u64,
    pub last_hash: Hash,
}

pub fn open_db(path: &Path) -> Result<sled::Db, JournalError> {
    Ok(open_sled(path, None)?)
}

/// Opens a sled store, waiting a little for a lock that a store closed a moment ago in this
/// process still holds: sled 0.34 releases its file lock from background threads after the
/// last handle is dropped (spacejam/sled#1234), so a quick close-and-reopen can see
/// `WouldBlock`. Gives up after about two seconds with sled's own error.
pub fn open_sled(path: &Path, cache_bytes: Option<u64>) -> Result<sled::Db, sled::Error> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let mut config = sled::Config::new()
            .path(path)
            .mode(sled::Mode::HighThroughput);
        if let Some(bytes) = cache_bytes {
            config = config.cache_capacity(bytes);
        }
        match config.open() {
            Err(e) if is_lock_contention(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// sled reports a held lock as an `io::ErrorKind::Other` whose message carries the
/// `WouldBlock` of the failed `flock`, so the message is all there is to go by.
fn is_lock_contention(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

impl Journal {
    /// Opens (or creates) the journal in `dir` and starts the writer. Nothing is replayed:
    /// the account-state view is written with every record. Opening checks that the log ends
    /// where the head marker says, that the last record is intact and is the one the head
    /// names, and that the view is at that record.
    pub fn open(dir: &Path, cfg: JournalConfig) -> Result<(Journal, Recovered), JournalError> {
        let path = dir.join("journal");
        let db = open_sled(&path, Some(cfg.cache_bytes))?;
        let tree = db.open_tree("log")?;
        let recovered = open_at_head(&tree)?;

        let (tx, rx) = bounded(cfg.queue_capacity.max(1));
        let failed = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(JournalStats::default());
        let writer_view = WriterView::load(&tree)?;
        let writer = {
            let (db, tree, failed, stats) =
                (db.clone(), tree.clone(), failed.clone(), stats.clone());
            let (seq, hash, max_batch) = (recovered.last_seq, recovered.last_hash, cfg.max_batch);
            let window = cfg.batch_window_micros;
            std::thread::Builder::new()
                .name("journal-writer".into())
                .spawn(move || {
                    writer_loop(
                        db,
                        tree,
                        rx,
                        seq,
                        hash,
                        max_batch.max(1),
                        std::time::Duration::from_micros(window),
                        failed,
                        stats,
                        writer_view,
                    )
                })
                .map_err(|e| JournalError::Thread(e.to_string()))?
        };
        let journal = Journal {
            db,
            handle: JournalHandle {
                tx,
                failed,
                tree,
                stats,
            },
            writer: Some(writer),
            path,
        };
        Ok((journal, recovered))
    }

    pub fn handle(&self) -> JournalHandle {
        self.handle.clone()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops the writer after everything queued is written, and flushes.
    /// Every `JournalHandle` must be dropped first, or the writer never sees the end.
    pub fn close(mut self) -> Result<(), JournalError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), JournalError> {
        if let Some(w) = self.writer.take() {
            // Everything queued before Stop is written; later appends see a closed journal.
            let _ = self.handle.tx.send(WriterMsg::Stop);
            let _ = w.join();
        }
        self.db.flush()?;
        Ok(())
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// Where the log ends, checked: the head marker names the last record, that record is intact
/// (checksum, framing) and hashes to what the head says, no record follows it, and the view's
/// meta is at it. An empty store is a new journal.
fn open_at_head(tree: &sled::Tree) -> Result<Recovered, JournalError> {
    let meta = StateView::new(tree.clone()).meta()?;
    let Some((seq, hash)) = read_head(tree)? else {
        if let Some(first) = records(tree, 0).next() {
            let seq = first.map(|r| r.seq).unwrap_or(0);
            return Err(JournalError::Corrupt {
                seq,
                reason: "records exist but the head marker is missing".into(),
            });
        }
        return Ok(Recovered {
            meta: meta.unwrap_or_default(),
            last_seq: 0,
            last_hash: [0u8; 32],
        });
    };
    let last = tree.get(record_key(seq))?.ok_or(JournalError::Corrupt {
        seq,
        reason: "the record the head marker names is missing".into(),
    })?;
    decode_record(seq, &last)?;
    if hash_record(&last) != hash {
        return Err(JournalError::Corrupt {
            seq,
            reason: "altered: the last record's hash differs from the head marker".into(),
        });
    }
    if let Some(next) = records(tree, seq).next() {
        let next = next.map(|r| r.seq).unwrap_or(seq + 1);
        return Err(JournalError::Corrupt {
            seq: next,
            reason: format!("a record follows the head marker's record {seq}"),
        });
    }
    let meta = meta.ok_or_else(|| {
        JournalError::View(
            "no account-state view: the store was written by an older version of OneCard".into(),
        )
    })?;
    if meta.last_seq != seq {
        return Err(JournalError::View(format!(
            "the view is at record {} but the log ends at record {seq}",
            meta.last_seq
        )));
    }
    Ok(Recovered {
        meta,
        last_seq: seq,
        last_hash: hash,
    })
}

fn record_key(seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = RECORD_PREFIX;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn bank_op_key(op: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(op.len() + 1);
    k.push(BANK_OP_PREFIX);
    k.extend_from_slice(op.as_bytes());
    k
}

/// Frames a record: header, payload, checksum.
pub fn encode_record(seq: u64, prev_hash: &Hash, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER_LEN + payload.len() + 4);
    v.extend_from_slice(MAGIC);
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(prev_hash);
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    let crc = crc32fast::hash(&v);
    v.extend_from_slice(&crc.to_be_bytes());
    v
}

/// A record as read back: checked for framing and checksum, not yet for its place in the chain.
pub struct DecodedRecord {
    pub seq: u64,
    pub prev_hash: Hash,
    pub hash: Hash,
    pub entries: Vec<Entry>,
}

pub fn hash_record(bytes: &[u8]) -> Hash {
    Sha256::digest(bytes).into()
}

/// Checks a record's framing and checksum and decodes its entries.
pub fn decode_record(key_seq: u64, bytes: &[u8]) -> Result<DecodedRecord, JournalError> {
    let corrupt = |reason: String| JournalError::Corrupt {
        seq: key_seq,
        reason,
    };
    if bytes.len() < HEADER_LEN + 4 {
        return Err(corrupt(format!("truncated: {} bytes", bytes.len())));
    }
    if &bytes[..4] != MAGIC {
        return Err(corrupt("bad magic".into()));
    }
    let (body, crc_bytes) = bytes.split_at(bytes.len() - 4);
    let crc = u32::from_be_bytes(crc_bytes.try_into().expect("4 bytes"));
    if crc32fast::hash(body) != crc {
        return Err(corrupt("checksum mismatch".into()));
    }
    let seq = u64::from_be_bytes(body[4..12].try_into().expect("8 bytes"));
    if seq != key_seq {
        return Err(corrupt(format!(
            "stored under sequence {key_seq} but says {seq}"
        )));
    }
    let prev_hash: Hash = body[12..44].try_into().expect("32 bytes");
    let len = u32::from_be_bytes(body[44..48].try_into().expect("4 bytes")) as usize;
    let payload = &body[HEADER_LEN..];
    if payload.len() != len {
        return Err(corrupt(format!(
            "payload length {} but header says {len}",
            payload.len()
        )));
    }
    let entries =
        decode_payload(payload).map_err(|e| corrupt(format!("undecodable payload: {e}")))?;
    Ok(DecodedRecord {
        seq,
        prev_hash,
        hash: hash_record(bytes),
        entries,
    })
}

fn bincode_opts() -> impl bincode::Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_limit(MAX_RECORD_BYTES)
}

fn decode_payload(payload: &[u8]) -> Result<Vec<Entry>, String> {
    let mut rest = payload;
    let mut take = |n: usize| -> Result<&[u8], String> {
        if rest.len() < n {
            return Err("payload ends early".into());
        }
        let (a, b) = rest.split_at(n);
        rest = b;
        Ok(a)
    };
    let count = u32::from_be_bytes(take(4)?.try_into().expect("4")) as usize;
    let mut entries = Vec::with_capacity(count.min(65_536));
    for _ in 0..count {
        let len = u32::from_be_bytes(take(4)?.try_into().expect("4")) as usize;
        let bytes = take(len)?;
        let entry: Entry = bincode_opts()
            .deserialize(bytes)
            .map_err(|e| e.to_string())?;
        entries.push(entry);
    }
    if !rest.is_empty() {
        return Err(format!("{} stray bytes after the entries", rest.len()));
    }
    Ok(entries)
}

#[allow(clippy::too_many_arguments)]
fn writer_loop(
    db: sled::Db,
    tree: sled::Tree,
    rx: Receiver<WriterMsg>,
    mut seq: u64,
    mut prev_hash: Hash,
    max_batch: usize,
    batch_window: std::time::Duration,
    failed: Arc<AtomicBool>,
    stats: Arc<JournalStats>,
    mut view: WriterView,
) {
    let mut batch: Vec<Submission> = Vec::with_capacity(max_batch);
    let mut stopping = false;
    while !stopping {
        match rx.recv() {
            Ok(WriterMsg::Append(first)) => batch.push(first),
            Ok(WriterMsg::Stop) | Err(_) => break,
        }
        // The batch closes when it is full, or when the queue is empty and the time window
        // since its first entry has passed (a zero window: as soon as the queue is empty).
        let window_ends = std::time::Instant::now() + batch_window;
        while batch.len() < max_batch {
            let next = match rx.try_recv() {
                Ok(m) => Ok(m),
                Err(_) if batch_window.is_zero() => break,
                Err(_) => {
                    let left = window_ends.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    rx.recv_timeout(left).map_err(|_| ())
                }
            };
            match next {
                Ok(WriterMsg::Append(s)) => batch.push(s),
                Ok(WriterMsg::Stop) => {
                    stopping = true;
                    break;
                }
                Err(()) => break,
            }
        }
        let next_seq = seq + 1;
        let mut payload =
            Vec::with_capacity(4 + batch.iter().map(|s| s.entry_bytes.len() + 4).sum::<usize>());
        payload.extend_from_slice(&(batch.len() as u32).to_be_bytes());
        for s in &batch {
            payload.extend_from_slice(&(s.entry_bytes.len() as u32).to_be_bytes());
            payload.extend_from_slice(&s.entry_bytes);
        }
        let record = encode_record(next_seq, &prev_hash, &payload);
        let hash = hash_record(&record);
        let mut sled_batch = sled::Batch::default();
        sled_batch.insert(&record_key(next_seq), record);
        let mut head = Vec::with_capacity(40);
        head.extend_from_slice(&next_seq.to_be_bytes());
        head.extend_from_slice(&hash);
        sled_batch.insert(HEAD_KEY, head);
        for s in &mut batch {
            for op in &s.bank_ops {
                sled_batch.insert(bank_op_key(op), &next_seq.to_be_bytes());
            }
            // In submission order: a later write of the same key wins, as it must.
            for w in s.view_writes.drain(..) {
                w.apply_to(&mut sled_batch);
            }
        }
        let write_started = std::time::Instant::now();
        let written = view
            .batch_writes(next_seq, batch.iter().map(|s| &s.delta))
            .map_err(|e| e.to_string())
            .and_then(|writes| {
                for w in writes {
                    w.apply_to(&mut sled_batch);
                }
                tree.apply_batch(sled_batch)
                    .and_then(|_| db.flush().map(|_| ()))
                    .map_err(|e| e.to_string())
            });
        match written {
            Ok(()) => {
                seq = next_seq;
                prev_hash = hash;
                stats.records.fetch_add(1, Ordering::Relaxed);
                stats.flushes.fetch_add(1, Ordering::Relaxed);
                stats.write_micros.fetch_add(
                    write_started.elapsed().as_micros() as u64,
                    Ordering::Relaxed,
                );
                stats
                    .entries
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                for s in batch.drain(..) {
                    let _ = s.ack.send(Ok(next_seq));
                }
            }
            Err(e) => {
                // Nothing after a failed write may be acknowledged: the log must stay a prefix.
                failed.store(true, Ordering::Release);
                let msg = e;
                for s in batch.drain(..) {
                    let _ = s
                        .ack
                        .send(Err(JournalError::Storage(sled::Error::Unsupported(
                            msg.clone(),
                        ))));
                }
                for m in rx.try_iter() {
                    if let WriterMsg::Append(s) = m {
                        let _ = s.ack.send(Err(JournalError::Failed));
                    }
                }
            }
        }
    }
}

/// Iterates over the records in order, checking framing, checksum and sequence numbers.
pub fn records(
    tree: &sled::Tree,
    after: u64,
) -> impl Iterator<Item = Result<DecodedRecord, JournalError>> + '_ {
    tree.range(record_key(after.saturating_add(1))..=record_key(u64::MAX))
        .map(|kv| {
            let (k, v) = kv?;
            if k.len() != 9 {
                return Err(JournalError::Corrupt {
                    seq: 0,
                    reason: format!("malformed key {k:?}"),
                });
            }
            let seq = u64::from_be_bytes(k[1..].try_into().expect("8 bytes"));
            decode_record(seq, &v)
        })
}

/// The stored head: (last sequence number, hash of the last record), if any record exists.
pub fn read_head(tree: &sled::Tree) -> Result<Option<(u64, Hash)>, JournalError> {
    match tree.get(HEAD_KEY)? {
        None => Ok(None),
        Some(v) if v.len() == 40 => Ok(Some((
            u64::from_be_bytes(v[..8].try_into().expect("8")),
            v[8..].try_into().expect("32"),
        ))),
        Some(v) => Err(JournalError::Corrupt {
            seq: 0,
            reason: format!("head marker has {} bytes", v.len()),
        }),
    }
}

/// I8 at the end of the log: the last record is the one the head names.
pub fn check_head(tree: &sled::Tree, last_seq: u64, last_hash: &Hash) -> Result<(), JournalError> {
    match read_head(tree)? {
        None if last_seq == 0 => Ok(()),
        None => Err(JournalError::Corrupt { seq: last_seq, reason: "head marker missing".into() }),
        Some((seq, _)) if seq != last_seq => Err(JournalError::Corrupt {
            seq: seq.max(last_seq),
            reason: format!("the head names record {seq} but the log ends at record {last_seq}: records are missing"),
        }),
        Some((_, hash)) if hash != *last_hash => Err(JournalError::Corrupt {
            seq: last_seq,
            reason: "altered: the last record's hash differs from the head marker".into(),
        }),
        Some(_) => Ok(()),
    }
}

/// I8: a record follows the one before it, by sequence number and by hash.
pub fn check_link(
    prev_seq: u64,
    prev_hash: &Hash,
    rec: &DecodedRecord,
) -> Result<(), JournalError> {
    if rec.seq != prev_seq + 1 {
        return Err(JournalError::Corrupt {
            seq: rec.seq,
            reason: format!(
                "expected record {} next: records are missing or reordered",
                prev_seq + 1
            ),
        });
    }
    if rec.prev_hash != *prev_hash {
        return Err(JournalError::Corrupt {
            seq: prev_seq,
            reason: format!(
                "altered or replaced: its hash is not the one record {} chains to",
                rec.seq
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opening_waits_for_a_lock_released_a_moment_later() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let first = open_sled(&path, None).unwrap();
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(100));
            drop(first);
        });
        let second = open_sled(&path, None);
        releaser.join().unwrap();
        assert!(second.is_ok(), "{:?}", second.err());
    }

    fn open_with(dir: &Path, max_batch: usize, batch_window_micros: u64) -> Journal {
        let cfg = JournalConfig {
            max_batch,
            batch_window_micros,
            ..JournalConfig::default()
        };
        Journal::open(dir, cfg).unwrap().0
    }

    fn clock_entry(at: u64) -> Entry {
        Entry::new(
            at,
            vec![crate::ledger::Event::new(
                crate::ledger::EventKind::ClockAdvanced,
            )],
        )
    }

    #[test]
    fn a_batch_waits_out_its_window_for_more_entries_then_closes_when_full() {
        let dir = tempfile::tempdir().unwrap();
        // A window far longer than the test: only a full batch (2 entries) can close it.
        let journal = open_with(dir.path(), 2, 60_000_000);
        let handle = journal.handle();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let (a, b) = rt.block_on(async {
            let first = handle.append(&clock_entry(1), vec![]);
            let second = async {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                handle.append(&clock_entry(2), vec![]).await
            };
            futures::join!(first, second)
        });
        assert_eq!(
            (a.unwrap(), b.unwrap()),
            (1, 1),
            "both entries share record 1"
        );
        assert_eq!(handle.stats().flushes.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn without_a_window_an_entry_is_written_as_soon_as_the_queue_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let journal = open_with(dir.path(), 2, 0);
        let handle = journal.handle();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let first = rt.block_on(handle.append(&clock_entry(1), vec![])).unwrap();
        let second = rt.block_on(handle.append(&clock_entry(2), vec![])).unwrap();
        assert_eq!((first, second), (1, 2));
    }

    #[test]
    fn a_lock_held_for_good_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let _held = open_sled(&path, None).unwrap();
        let err = open_sled(&path, None).unwrap_err();
        assert!(is_lock_contention(&err), "{err}");
    }
}
