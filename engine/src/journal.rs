//! The durable journal: a checksummed, hash-chained log of entries on sled, written by one
//! group-commit writer.
//!
//! Architecture invariant: this is the only module that touches sled for the node's own data.
//!
//! Callers hand an entry to the writer over a bounded crossbeam channel and get a future that
//! resolves only after the batch holding their entry has been flushed to disk (I7). The writer
//! takes everything queued (up to `max_batch`), encodes it as **one** sled record, writes the
//! record together with an index of the bank operations it mentions in one atomic sled batch,
//! flushes once, then answers everyone in the batch.
//!
//! Record layout (the value under key `r` + seq as big-endian u64):
//!
//! ```text
//! magic "OCJ1" | seq u64 | prev_hash [32] | payload_len u32 | payload | crc32 u32
//! ```
//!
//! `crc32` covers everything before it; `prev_hash` is the SHA-256 of the previous record's
//! whole value (zeros for the first). The payload is a count and length-prefixed bincode
//! entries. Snapshots live in a separate tree and name the hash of the record they end at.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use bincode::Options;
use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use crate::ledger::{Entry, LedgerState};

const MAGIC: &[u8; 4] = b"OCJ1";
const SNAP_MAGIC: &[u8; 4] = b"OCS1";
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
    #[error("snapshot: {0}")]
    Snapshot(String),
}

/// Tuning of the group-commit writer and the snapshots.
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
    /// Write a snapshot when this many entries have been journaled since the last one.
    pub snapshot_every_entries: u64,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            queue_capacity: 16_384,
            max_batch: 4_096,
            batch_window_micros: 0,
            snapshot_every_entries: 50_000,
        }
    }
}

struct Submission {
    entry_bytes: Vec<u8>,
    bank_ops: Vec<String>,
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
    ) -> impl std::future::Future<Output = Result<u64, JournalError>> + 'static {
        let (ack, rx) = oneshot::channel();
        let queued = self.queue(entry, ack);
        async move {
            queued?;
            rx.await.map_err(|_| JournalError::Closed)?
        }
    }

    fn queue(
        &self,
        entry: &Entry,
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
}

/// The journal: its store, its writer thread and its snapshotter thread.
pub struct Journal {
    db: sled::Db,
    handle: JournalHandle,
    writer: Option<JoinHandle<()>>,
    snapshotter: Option<JoinHandle<()>>,
    snap_tx: Option<Sender<SnapMsg>>,
    path: PathBuf,
}

enum SnapMsg {
    Written { last_seq: u64, entries: u64 },
    Shutdown,
}

/// The result of opening a journal: the rebuilt state and where the log ends.
pub struct Recovered {
    pub state: LedgerState,
    pub last_seq: u64,
    pub last_hash: Hash,
    /// Records replayed after the snapshot (0 when the snapshot was current).
    pub replayed_records: u64,
    pub snapshot_seq: u64,
}

pub fn open_db(path: &Path) -> Result<sled::Db, JournalError> {
    Ok(open_sled(path)?)
}

/// Opens a sled store, waiting a little for a lock that a store closed a moment ago in this
/// process still holds: sled 0.34 releases its file lock from background threads after the
/// last handle is dropped (spacejam/sled#1234), so a quick close-and-reopen can see
/// `WouldBlock`. Gives up after about two seconds with sled's own error.
pub fn open_sled(path: &Path) -> Result<sled::Db, sled::Error> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match sled::Config::new().path(path).open() {
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
    /// Opens (or creates) the journal in `dir`, rebuilds the state from the newest valid
    /// snapshot plus the records after it, and starts the writer.
    pub fn open(
        dir: &Path,
        initial: LedgerState,
        cfg: JournalConfig,
    ) -> Result<(Journal, Recovered), JournalError> {
        let path = dir.join("journal");
        let db = open_db(&path)?;
        let tree = db.open_tree("log")?;
        let snaps = db.open_tree("snapshots")?;
        let recovered = recover(&tree, &snaps, initial)?;

        let (tx, rx) = bounded(cfg.queue_capacity.max(1));
        let failed = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(JournalStats::default());
        let (snap_tx, snap_rx) = bounded(1024);
        let writer = {
            let (db, tree, failed, stats, snap_tx) = (
                db.clone(),
                tree.clone(),
                failed.clone(),
                stats.clone(),
                snap_tx.clone(),
            );
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
                        snap_tx,
                    )
                })
                .map_err(|e| JournalError::Snapshot(format!("cannot start writer: {e}")))?
        };
        let snapshotter = {
            let (tree, snaps) = (tree.clone(), snaps.clone());
            let state = recovered.state.clone();
            let seq = recovered.last_seq;
            let every = cfg.snapshot_every_entries.max(1);
            let since = recovered.replayed_records;
            std::thread::Builder::new()
                .name("journal-snapshots".into())
                .spawn(move || snapshot_loop(tree, snaps, state, seq, since, every, snap_rx))
                .map_err(|e| JournalError::Snapshot(format!("cannot start snapshotter: {e}")))?
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
            snapshotter: Some(snapshotter),
            snap_tx: Some(snap_tx),
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

    /// Stops the writer after everything queued is written, writes a final snapshot, flushes.
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
        if let Some(s) = self.snap_tx.take() {
            let _ = s.send(SnapMsg::Shutdown);
        }
        if let Some(s) = self.snapshotter.take() {
            let _ = s.join();
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
    snap_tx: Sender<SnapMsg>,
) {
    let mut batch: Vec<Submission> = Vec::with_capacity(max_batch);
    let mut entries_total = 0u64;
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
        for s in &batch {
            for op in &s.bank_ops {
                sled_batch.insert(bank_op_key(op), &next_seq.to_be_bytes());
            }
        }
        let write_started = std::time::Instant::now();
        let written = tree
            .apply_batch(sled_batch)
            .and_then(|_| db.flush().map(|_| ()));
        match written {
            Ok(()) => {
                seq = next_seq;
                prev_hash = hash;
                entries_total += batch.len() as u64;
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
                let _ = snap_tx.try_send(SnapMsg::Written {
                    last_seq: seq,
                    entries: entries_total,
                });
            }
            Err(e) => {
                // Nothing after a failed write may be acknowledged: the log must stay a prefix.
                failed.store(true, Ordering::Release);
                let msg = e.to_string();
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

#[derive(Serialize, Deserialize)]
struct SnapshotHeader {
    seq: u64,
    record_hash: Hash,
}

fn encode_snapshot(seq: u64, record_hash: &Hash, state: &LedgerState) -> Result<Vec<u8>, String> {
    let body = bincode::serialize(&(
        SnapshotHeader {
            seq,
            record_hash: *record_hash,
        },
        state,
    ))
    .map_err(|e| e.to_string())?;
    let mut v = Vec::with_capacity(body.len() + 8);
    v.extend_from_slice(SNAP_MAGIC);
    v.extend_from_slice(&body);
    let crc = crc32fast::hash(&v);
    v.extend_from_slice(&crc.to_be_bytes());
    Ok(v)
}

/// Decodes a snapshot blob: (seq, hash of the record it ends at, state).
pub fn decode_snapshot(bytes: &[u8]) -> Result<(u64, Hash, LedgerState), String> {
    if bytes.len() < 8 || &bytes[..4] != SNAP_MAGIC {
        return Err("bad snapshot magic".into());
    }
    let (body, crc_bytes) = bytes.split_at(bytes.len() - 4);
    if crc32fast::hash(body) != u32::from_be_bytes(crc_bytes.try_into().expect("4")) {
        return Err("snapshot checksum mismatch".into());
    }
    let (h, state): (SnapshotHeader, LedgerState) = bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_limit(4 * 1024 * 1024 * 1024)
        .deserialize(&body[4..])
        .map_err(|e| e.to_string())?;
    Ok((h.seq, h.record_hash, state))
}

/// The newest snapshot that is intact and agrees with the record it names.
fn latest_valid_snapshot(tree: &sled::Tree, snaps: &sled::Tree) -> Option<(u64, LedgerState)> {
    for kv in snaps.iter().rev() {
        let Ok((_, v)) = kv else { continue };
        let Ok((seq, hash, state)) = decode_snapshot(&v) else {
            continue;
        };
        let Ok(Some(rec)) = tree.get(record_key(seq)) else {
            continue;
        };
        if hash_record(&rec) == hash {
            return Some((seq, state));
        }
    }
    None
}

/// Rebuilds the state: newest valid snapshot, then every record after it, checking the chain.
pub fn recover(
    tree: &sled::Tree,
    snaps: &sled::Tree,
    initial: LedgerState,
) -> Result<Recovered, JournalError> {
    let (snapshot_seq, mut state) = latest_valid_snapshot(tree, snaps).unwrap_or((0, initial));
    let mut last_hash = if snapshot_seq == 0 {
        [0u8; 32]
    } else {
        let rec = tree
            .get(record_key(snapshot_seq))?
            .ok_or(JournalError::Corrupt {
                seq: snapshot_seq,
                reason: "record named by the snapshot is missing".into(),
            })?;
        hash_record(&rec)
    };
    let mut last_seq = snapshot_seq;
    let mut replayed = 0;
    for rec in records(tree, snapshot_seq) {
        let rec = rec?;
        check_link(last_seq, &last_hash, &rec)?;
        for e in &rec.entries {
            state.apply_entry(e).map_err(|err| JournalError::Corrupt {
                seq: rec.seq,
                reason: format!("entry does not apply: {err}"),
            })?;
        }
        last_seq = rec.seq;
        last_hash = rec.hash;
        replayed += 1;
    }
    check_head(tree, last_seq, &last_hash)?;
    Ok(Recovered {
        state,
        last_seq,
        last_hash,
        replayed_records: replayed,
        snapshot_seq,
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

fn snapshot_loop(
    tree: sled::Tree,
    snaps: sled::Tree,
    mut state: LedgerState,
    mut snap_seq: u64,
    since_snapshot: u64,
    every: u64,
    rx: Receiver<SnapMsg>,
) {
    let mut pending_entries = since_snapshot;
    let mut last_written_seq = snap_seq;
    let mut last_entries = 0u64;
    loop {
        let (target, shutdown) = match rx.recv() {
            Ok(SnapMsg::Written { last_seq, entries }) => {
                pending_entries += entries - last_entries;
                last_entries = entries;
                last_written_seq = last_seq;
                (last_seq, false)
            }
            Ok(SnapMsg::Shutdown) | Err(_) => (last_written_seq, true),
        };
        if (pending_entries >= every || shutdown) && target > snap_seq {
            match catch_up(&tree, &mut state, snap_seq, target) {
                Ok(hash) => {
                    if let Ok(bytes) = encode_snapshot(target, &hash, &state) {
                        if snaps.insert(target.to_be_bytes(), bytes).is_ok() {
                            snap_seq = target;
                            pending_entries = 0;
                            // Keep the two newest snapshots; older ones only cost space.
                            let keys: Vec<_> = snaps.iter().keys().filter_map(Result::ok).collect();
                            for k in keys.iter().take(keys.len().saturating_sub(2)) {
                                let _ = snaps.remove(k);
                            }
                        }
                    }
                }
                Err(_) => return,
            }
        }
        if shutdown {
            return;
        }
    }
}

fn catch_up(
    tree: &sled::Tree,
    state: &mut LedgerState,
    from: u64,
    to: u64,
) -> Result<Hash, JournalError> {
    let mut hash = [0u8; 32];
    for rec in records(tree, from) {
        let rec = rec?;
        if rec.seq > to {
            break;
        }
        for e in &rec.entries {
            state.apply_entry(e).map_err(|err| JournalError::Corrupt {
                seq: rec.seq,
                reason: err.to_string(),
            })?;
        }
        hash = rec.hash;
    }
    Ok(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opening_waits_for_a_lock_released_a_moment_later() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let first = open_sled(&path).unwrap();
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(100));
            drop(first);
        });
        let second = open_sled(&path);
        releaser.join().unwrap();
        assert!(second.is_ok(), "{:?}", second.err());
    }

    fn open_with(dir: &Path, max_batch: usize, batch_window_micros: u64) -> Journal {
        let cfg = JournalConfig {
            max_batch,
            batch_window_micros,
            ..JournalConfig::default()
        };
        Journal::open(dir, LedgerState::default(), cfg).unwrap().0
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
            let first = handle.append(&clock_entry(1));
            let second = async {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                handle.append(&clock_entry(2)).await
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
        let first = rt.block_on(handle.append(&clock_entry(1))).unwrap();
        let second = rt.block_on(handle.append(&clock_entry(2))).unwrap();
        assert_eq!((first, second), (1, 2));
    }

    #[test]
    fn a_lock_held_for_good_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let _held = open_sled(&path).unwrap();
        let err = open_sled(&path).unwrap_err();
        assert!(is_lock_contention(&err), "{err}");
    }
}
