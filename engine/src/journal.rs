//! The durable journal: the engine's write-ahead log, written by the one group-commit writer,
//! with the account-state view checkpointed behind it.
//!
//! Callers hand an entry, with the account-state view's writes it causes, to the writer and
//! get a future that resolves only after the record holding their entry is on disk (I7). The
//! writer ([`onecard_storage::group_commit`]) takes everything queued (up to `max_batch`) and
//! the journal's sink appends it as **one** record of the log ([`onecard_storage::wal`]:
//! segments, length + CRC32 + the SHA-256 of the record before, I8), with one `fdatasync`.
//! Right after the sync, the record's view writes go into the view's in-memory overlay, and the
//! writer answers everyone in the batch.
//!
//! The view in sled is a checkpoint: a checkpointer thread seals the overlay every
//! `checkpoint_interval_ms` (or once it holds `checkpoint_max_keys` keys), writes it to sled as
//! one sorted batch (a key written many times is written once) stamped with the last record it
//! covers, and flushes. No sled write is on the path of a command. Opening loads the
//! checkpoint and replays the log's tail after its stamp, which is bounded by the checkpoint
//! interval.
//!
//! A record's payload (all integers big-endian):
//!
//! ```text
//! entries u32 | { len u32 | bincode Entry }*
//! writes u32  | { 0 u8 | klen u32 | key | vlen u32 | value  (put)
//!               | 1 u8 | klen u32 | key                     (remove) }*
//! ```
//!
//! The writes are the record's redo for the view, in order: each entry's writes (the bank
//! operation index, the accounts' records), then the writer's own (merchants, meta). Replaying
//! a record's writes over the checkpoint gives the view at that record; `verify` checks that
//! this equals the replay of the entries from record 1.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bincode::Options;
use onecard_storage::group_commit::{
    CommitError, GroupCommit, GroupCommitConfig, Sink, SinkFailure,
};
use onecard_storage::runs::RunStore;
use onecard_storage::wal::{Wal, WalConfig, WalCursor, WalError, WalReader};

use crate::ledger::Entry;
use crate::view::{
    self, IdFilter, MerchantBook, Overlay, StateView, ViewError, ViewFailure, ViewMeta, ViewWrite,
    WriterDelta, WriterView,
};

pub use onecard_storage::wal::Hash;

/// Refuse to decode anything claiming to be larger than this (a garbled length must not make
/// us allocate gigabytes).
const MAX_RECORD_BYTES: u64 = 256 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("log: {0}")]
    Log(#[from] WalError),
    #[error("{0}")]
    Commit(#[from] CommitError),
    #[error(transparent)]
    View(#[from] ViewError),
    #[error("journal record {seq}: {reason}")]
    Corrupt { seq: u64, reason: String },
    /// The data directory is not one this version can open as it is.
    #[error("data directory {dir}: {reason}")]
    Layout { dir: String, reason: String },
    #[error("cannot start a journal thread: {0}")]
    Thread(String),
}

impl JournalError {
    /// Whether a write failed because the disk is full.
    pub fn is_disk_full(&self) -> bool {
        match self {
            JournalError::Commit(c) => c.is_disk_full(),
            JournalError::Log(WalError::DiskFull { .. }) => true,
            _ => false,
        }
    }
}

/// Tuning of the group-commit writer, the log and the checkpoint.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// Capacity of the channel into the writer; a full channel makes submitters wait.
    pub queue_capacity: usize,
    /// Most entries written in one record and sync.
    pub max_batch: usize,
    /// How long a batch may stay open for more entries once the queue is empty, in
    /// microseconds. 0 closes it at once: lowest latency; a few hundred µs trades latency
    /// for fewer, fuller syncs under load.
    pub batch_window_micros: u64,
    /// sled's page cache for the view's catalogue of runs, in bytes.
    pub cache_bytes: u64,
    /// Checkpointed consumer records kept in memory in front of the runs, in bytes (0: none).
    pub record_cache_bytes: u64,
    /// The log rotates to a new segment file at this size.
    pub segment_bytes: u64,
    /// Where segments the checkpoint no longer needs are moved; `None` keeps them in place.
    /// `verify` reads both, so it still replays from record 1.
    pub archive_dir: Option<PathBuf>,
    /// The overlay is checkpointed (one new run) at least this often, in milliseconds.
    pub checkpoint_interval_ms: u64,
    /// … and as soon as it holds this many changed keys.
    pub checkpoint_max_keys: usize,
    /// Closed orders and refunds the in-memory id filter is sized for (16 bits each: 32 MiB
    /// for the default 16 million); beyond it, more new ids are looked up in the store.
    pub id_filter_capacity: usize,
    /// Prefixes of the layer above's record keys ([`crate::records`]) that the id filter
    /// covers too: keys that are mostly looked up while new (the node's idempotency keys), so
    /// that such a lookup is answered from memory instead of a read that finds nothing.
    pub filtered_record_prefixes: Vec<Vec<u8>>,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            queue_capacity: 16_384,
            max_batch: 4_096,
            batch_window_micros: 0,
            // sled holds only the runs' catalogue; activations read the record cache, then a
            // run's block through the OS's page cache.
            cache_bytes: 8 * 1024 * 1024,
            // Room for the records of a million consumers: with 256 MiB, activations at a
            // million consumers often missed the cache and read a run's block, which cost
            // about a fifth of the throughput (BENCHMARKS.md, the write path's seventh session).
            record_cache_bytes: 512 * 1024 * 1024,
            segment_bytes: 64 * 1024 * 1024,
            archive_dir: None,
            checkpoint_interval_ms: 1_000,
            checkpoint_max_keys: 250_000,
            id_filter_capacity: 16_000_000,
            filtered_record_prefixes: Vec::new(),
        }
    }
}

/// Counters for operators and benchmarks.
#[derive(Default, Debug)]
pub struct JournalStats {
    pub records: AtomicU64,
    pub entries: AtomicU64,
    /// Everything written: entries, the upper layer's record commits, the simulated bank's
    /// own records (commits / records is the group commit's batch size).
    pub commits: AtomicU64,
    /// Syncs of the log (one per record).
    pub flushes: AtomicU64,
    /// Time spent encoding, appending and syncing, in microseconds.
    pub write_micros: AtomicU64,
    /// Checkpoints written to sled, and the keys in them.
    pub checkpoints: AtomicU64,
    pub checkpoint_keys: AtomicU64,
    /// Records the feed gave its followers from the writer's memory, and read back from the log.
    pub feed_from_memory: AtomicU64,
    pub feed_from_log: AtomicU64,
}

/// One entry (or view writes alone) on its way into the log.
pub struct Submission {
    entry_bytes: Option<Vec<u8>>,
    bank_ops: Vec<String>,
    view_writes: Vec<ViewWrite>,
    delta: Option<WriterDelta>,
}

impl Submission {
    fn writes(view_writes: Vec<ViewWrite>) -> Submission {
        Submission {
            entry_bytes: None,
            bank_ops: Vec::new(),
            view_writes,
            delta: None,
        }
    }
}

/// State outside the ledger that is made durable by the log's own records: the simulated
/// bank, whose operations become durable in the record of the entry that names them.
pub trait LogParticipant: Send + Sync + 'static {
    /// Called by the writer for every entry, in log order, with the bank operations it names;
    /// adds the view writes that make their effects durable in the same record.
    fn record_writes(&self, bank_ops: &[String], out: &mut Vec<ViewWrite>);
}

/// The journal's side of the group-commit writer: one batch, one record, one sync.
struct LogSink {
    wal: Wal,
    view: WriterView,
    overlay: Arc<Overlay>,
    ids: Arc<IdFilter>,
    shared: Arc<Common>,
    payload: Vec<u8>,
    released_through: u64,
}

/// What the handles, the sink and the checkpointer share.
struct Common {
    stats: JournalStats,
    /// The last record on disk: readers never go past it.
    synced_seq: AtomicU64,
    /// The last record the sled checkpoint covers.
    checkpoint_seq: AtomicU64,
    /// Wakes the checkpointer early when the overlay is large.
    nudge: crossbeam_channel::Sender<()>,
    checkpoint_max_keys: usize,
    /// Cleared at close, so that the participant (which holds a link back) is let go.
    participant: parking_lot::Mutex<Option<Arc<dyn LogParticipant>>>,
    index_bank_ops: std::sync::atomic::AtomicBool,
    /// Set when a checkpoint or a read of sled failed (see [`ViewFailure`]): the writer then
    /// accepts nothing more, like after a failed sync; a restart recovers.
    view_failure: Arc<ViewFailure>,
    /// The last records' entries, for the feed.
    recent: parking_lot::Mutex<RecentRecords>,
}

/// The entries of the last records the writer synced, as it encoded them: the log's
/// followers (the node's outbox, history index and credit follower) read a few records behind
/// the head, and take them from here instead of reading back, and checking again, what this
/// process has just written and synced. Bounded by [`RECENT_RECORD_BYTES`]; a follower further
/// behind reads the log.
#[derive(Default)]
struct RecentRecords {
    records: std::collections::VecDeque<RecentRecord>,
    bytes: usize,
}

#[derive(Clone)]
struct RecentRecord {
    seq: u64,
    prev_hash: Hash,
    hash: Hash,
    /// Each entry's bincode, as in the record's payload.
    entries: Arc<[Vec<u8>]>,
    bytes: usize,
}

/// Bytes of entries [`RecentRecords`] keeps (about 2,000 records of a busy node's payments).
const RECENT_RECORD_BYTES: usize = 4 << 20;

impl RecentRecords {
    fn push(&mut self, record: RecentRecord) {
        self.bytes += record.bytes;
        self.records.push_back(record);
        while self.bytes > RECENT_RECORD_BYTES {
            match self.records.pop_front() {
                Some(old) => self.bytes -= old.bytes,
                None => break,
            }
        }
    }

    /// Records `after + 1` on, at most `max` of them and none past `upto`, if record
    /// `after + 1` is still kept (`None`: read the log).
    fn after(&self, after: u64, max: usize, upto: u64) -> Option<Vec<RecentRecord>> {
        let first = self.records.front()?.seq;
        if after + 1 < first || after + 1 > self.records.back()?.seq {
            return None;
        }
        let skip = usize::try_from(after + 1 - first).ok()?;
        Some(
            self.records
                .iter()
                .skip(skip)
                .take_while(|r| r.seq <= upto)
                .take(max)
                .cloned()
                .collect(),
        )
    }
}

fn put_u32(buf: &mut Vec<u8>, n: usize) {
    buf.extend_from_slice(&(n as u32).to_be_bytes());
}

impl Sink for LogSink {
    type Item = Submission;
    type Done = u64;

    fn commit(&mut self, batch: &mut Vec<Submission>) -> Result<u64, SinkFailure> {
        if let Some(f) = self.shared.view_failure.get() {
            return Err(f.clone());
        }
        let started = Instant::now();
        let seq = self.wal.last_seq() + 1;
        let (writer_writes, published) = self
            .view
            .batch_writes(seq, batch.iter().filter_map(|s| s.delta.as_ref()))
            .map_err(|e| SinkFailure::new(e.to_string()))?;
        let mut writes: Vec<ViewWrite> = Vec::with_capacity(
            batch
                .iter()
                .map(|s| s.view_writes.len() + s.bank_ops.len())
                .sum::<usize>()
                + writer_writes.len(),
        );
        let participant = self.shared.participant.lock().clone();
        let index_bank_ops = self.shared.index_bank_ops.load(Ordering::Acquire);
        let buf = &mut self.payload;
        buf.clear();
        put_u32(
            buf,
            batch.iter().filter(|s| s.entry_bytes.is_some()).count(),
        );
        for s in batch.iter_mut() {
            if let Some(entry) = &s.entry_bytes {
                put_u32(buf, entry.len());
                buf.extend_from_slice(entry);
            }
            if index_bank_ops && s.entry_bytes.is_some() {
                writes.extend(s.bank_ops.iter().map(|op| view::bank_op_write(op, seq)));
            }
            writes.append(&mut s.view_writes);
            if let (Some(p), false) = (&participant, s.bank_ops.is_empty()) {
                p.record_writes(&s.bank_ops, &mut writes);
            }
        }
        writes.extend(writer_writes);
        put_u32(buf, writes.len());
        for w in &writes {
            match w {
                ViewWrite::Put(k, v) => {
                    buf.push(0);
                    put_u32(buf, k.len());
                    buf.extend_from_slice(k);
                    put_u32(buf, v.len());
                    buf.extend_from_slice(v);
                }
                ViewWrite::Remove(k) => {
                    buf.push(1);
                    put_u32(buf, k.len());
                    buf.extend_from_slice(k);
                }
            }
        }
        let prev_hash = self.wal.last_hash();
        let (written, hash) = self.wal.append(buf).map_err(log_failure)?;
        self.wal.sync().map_err(log_failure)?;
        debug_assert_eq!(written, seq);
        let entries: Arc<[Vec<u8>]> = batch
            .iter_mut()
            .filter_map(|s| s.entry_bytes.take())
            .collect();
        let entry_count = entries.len();
        let bytes = entries.iter().map(Vec::len).sum::<usize>() + 64;
        self.shared.recent.lock().push(RecentRecord {
            seq,
            prev_hash,
            hash,
            entries,
            bytes,
        });
        writes.push(view::stamp_write(seq, &hash));
        // Durable: now readers may see it, and the writer answers everyone.
        for w in &writes {
            if self.ids.covers(w.key()) {
                self.ids.insert(w.key());
            }
        }
        self.overlay.apply(seq, writes);
        self.view.publish(&published);
        let common = &self.shared;
        common.synced_seq.store(seq, Ordering::Release);
        let stats = &common.stats;
        stats.records.fetch_add(1, Ordering::Relaxed);
        stats.flushes.fetch_add(1, Ordering::Relaxed);
        stats
            .entries
            .fetch_add(entry_count as u64, Ordering::Relaxed);
        stats
            .commits
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        stats
            .write_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        if self.overlay.len() >= common.checkpoint_max_keys {
            let _ = common.nudge.try_send(());
        }
        let covered = common.checkpoint_seq.load(Ordering::Acquire);
        if covered > self.released_through {
            // Segments wholly before the checkpoint are not needed to reopen.
            if self.wal.release_through(covered).is_ok() {
                self.released_through = covered;
            }
        }
        Ok(seq)
    }

    fn close(&mut self) {
        let _ = self.wal.sync();
    }
}

fn log_failure(e: WalError) -> SinkFailure {
    match e {
        WalError::DiskFull { .. } => SinkFailure::disk_full(e.to_string()),
        other => SinkFailure::new(other.to_string()),
    }
}

/// A participant's way into the log (see [`JournalHandle::participant_link`]).
#[derive(Clone)]
pub struct ParticipantLink {
    writer: GroupCommit<LogSink>,
}

impl ParticipantLink {
    /// Makes changes of the participant durable in a record without an entry (the simulated
    /// bank's own: accounts opened, deposits, refuse flags), waiting on this thread. `ops` are
    /// the participant's ids for them, handed back to it in log order.
    pub fn append_ops_blocking(&self, ops: Vec<String>) -> Result<u64, JournalError> {
        Ok(self.writer.submit_blocking(Submission {
            entry_bytes: None,
            bank_ops: ops,
            view_writes: Vec::new(),
            delta: None,
        })?)
    }
}

/// A handle to the running journal; cheap to clone.
#[derive(Clone)]
pub struct JournalHandle {
    writer: GroupCommit<LogSink>,
    common: Arc<Common>,
    view: StateView,
    book: Arc<MerchantBook>,
    reader: Arc<FeedReader>,
}

/// The log as a feed: cursors kept between calls, so that following the log reads each
/// record once. One per follower (the node's outbox, its history index): a follower finds
/// its own cursor by position, so two followers at different places do not take turns
/// re-opening a segment and re-reading it up to their place (up to a segment's 64 MiB a
/// call). At most [`FEED_CURSORS`] are kept, the least recently used dropped first.
struct FeedReader {
    dir: PathBuf,
    archive_dir: Option<PathBuf>,
    cursors: parking_lot::Mutex<Vec<WalCursor>>,
}

/// Cursors the feed keeps (more than there are followers, so that none is ever dropped).
const FEED_CURSORS: usize = 4;

impl JournalHandle {
    /// Queues an entry. The returned future resolves with the record's sequence number once
    /// the entry is on disk. Blocks the calling thread while the queue is full (back-pressure).
    pub fn append(
        &self,
        entry: &Entry,
        view_writes: Vec<ViewWrite>,
    ) -> impl std::future::Future<Output = Result<u64, JournalError>> + 'static {
        let submitted = encode_entry(entry).map(|entry_bytes| {
            self.writer.submit(Submission {
                entry_bytes: Some(entry_bytes),
                bank_ops: entry.bank_ops().cloned().collect(),
                view_writes,
                delta: Some(WriterDelta::of(entry)),
            })
        });
        async move { Ok(submitted?.await?) }
    }

    /// Queues view writes with no entry (the upper layer's records, [`crate::records`]):
    /// they go into the next record with everyone else's, and the future resolves once that
    /// record is on disk and the writes are readable.
    pub fn append_writes(
        &self,
        view_writes: Vec<ViewWrite>,
    ) -> impl std::future::Future<Output = Result<u64, JournalError>> + 'static {
        let done = self.writer.submit(Submission::writes(view_writes));
        async move { Ok(done.await?) }
    }

    /// [`JournalHandle::append_writes`] for threads outside any async runtime.
    pub fn append_writes_blocking(&self, view_writes: Vec<ViewWrite>) -> Result<u64, JournalError> {
        Ok(self
            .writer
            .submit_blocking(Submission::writes(view_writes))?)
    }

    /// Whether bank operations are indexed in the view (`has_bank_op`), which only a bank
    /// that reconciles with the journal at opening needs. Set once, before any entry.
    pub fn index_bank_ops(&self, on: bool) {
        self.common.index_bank_ops.store(on, Ordering::Release);
    }

    /// Registers the one participant whose durable state rides on the log's records; `false`
    /// if another is registered.
    pub fn set_participant(&self, p: Arc<dyn LogParticipant>) -> bool {
        let mut slot = self.common.participant.lock();
        if slot.is_some() {
            return false;
        }
        *slot = Some(p);
        true
    }

    /// What a participant needs to write records of its own: the writer alone, not the view,
    /// so that holding it keeps no store open.
    pub fn participant_link(&self) -> ParticipantLink {
        ParticipantLink {
            writer: self.writer.clone(),
        }
    }

    /// Whether a bank operation is recorded in a durable entry.
    pub fn has_bank_op(&self, op: &str) -> Result<bool, JournalError> {
        Ok(self.view.has_bank_op(op)?)
    }

    pub fn stats(&self) -> &JournalStats {
        &self.common.stats
    }

    /// Entries waiting for the writer now.
    pub fn queued(&self) -> usize {
        self.writer.queued()
    }

    /// Why the journal stopped writing, if it did (a full disk, an I/O error).
    pub fn failure(&self) -> Option<String> {
        self.writer
            .failure()
            .or_else(|| self.common.view_failure.get().cloned())
            .map(|f| CommitError::Stopped(f).to_string())
    }

    /// The durable records after sequence number `after`, at most `max` of them, in order,
    /// checked for framing, checksum and chain: the journal as a feed, for the node's outbox
    /// (print jobs, webhooks) which keeps its own cursor.
    pub fn records_after(
        &self,
        after: u64,
        max: usize,
    ) -> Result<Vec<DecodedRecord>, JournalError> {
        let upto = self.last_seq();
        let mut out = Vec::new();
        if after >= upto || max == 0 {
            return Ok(out);
        }
        let recent = self.common.recent.lock().after(after, max, upto);
        if let Some(recent) = recent {
            self.common
                .stats
                .feed_from_memory
                .fetch_add(recent.len() as u64, Ordering::Relaxed);
            return recent
                .into_iter()
                .map(|r| {
                    let seq = r.seq;
                    let entries = r
                        .entries
                        .iter()
                        .map(|bytes| bincode_opts().deserialize(bytes))
                        .collect::<Result<Vec<Entry>, _>>()
                        .map_err(|e| JournalError::Corrupt {
                            seq,
                            reason: format!("undecodable entry: {e}"),
                        })?;
                    Ok(DecodedRecord {
                        seq,
                        prev_hash: r.prev_hash,
                        hash: r.hash,
                        entries,
                    })
                })
                .collect();
        }
        // The follower's cursor is taken out while it reads, so that another follower reads
        // at the same time with its own; it is put back (most recently used first) after.
        let kept = {
            let mut cursors = self.reader.cursors.lock();
            cursors
                .iter()
                .position(|c| c.position() == after)
                .map(|i| cursors.remove(i))
        };
        let mut cursor = match kept {
            Some(c) => c,
            None => WalReader::open(&self.reader.dir, self.reader.archive_dir.as_deref())?
                .cursor_after(after)?,
        };
        while out.len() < max {
            match cursor.next_upto(upto) {
                None => break,
                // The cursor is dropped: the next call opens the log afresh.
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(rec)) => out.push(decode_record(
                    rec.seq,
                    rec.prev_hash,
                    rec.hash,
                    &rec.payload,
                )?),
            }
        }
        self.common
            .stats
            .feed_from_log
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        let mut cursors = self.reader.cursors.lock();
        cursors.insert(0, cursor);
        cursors.truncate(FEED_CURSORS);
        Ok(out)
    }

    /// The last durable record's sequence number (0 when the journal is empty).
    pub fn last_seq(&self) -> u64 {
        self.common.synced_seq.load(Ordering::Acquire)
    }

    /// Reads of the account-state view.
    pub fn view(&self) -> StateView {
        self.view.clone()
    }

    /// Merchants' durable balances, kept by the writer.
    pub fn merchants(&self) -> &Arc<MerchantBook> {
        &self.book
    }
}

/// The journal: its log writer, its view and the checkpointer.
pub struct Journal {
    handle: JournalHandle,
    store: ViewStore,
    /// Merges the checkpoint's runs in the background.
    merger: Option<onecard_storage::runs::Merger>,
    checkpointer: Option<(crossbeam_channel::Sender<()>, JoinHandle<()>)>,
    /// The thread filling the id filter, and its stop flag.
    filler: Option<(Arc<std::sync::atomic::AtomicBool>, JoinHandle<()>)>,
    path: PathBuf,
}

/// What opening a journal found: where the log ends and the view's meta record.
pub struct Recovered {
    pub meta: ViewMeta,
    pub last_seq: u64,
    pub last_hash: Hash,
    /// Records replayed from the log's tail over the checkpoint.
    pub replayed: u64,
    /// Bytes of a torn tail cut off the log (a record never acknowledged).
    pub torn_bytes: u64,
}

/// Where the parts of a data directory live.
pub struct Layout {
    pub log: PathBuf,
    pub view: PathBuf,
}

impl Layout {
    pub fn of(dir: &Path) -> Layout {
        Layout {
            log: dir.join("log"),
            view: dir.join("view"),
        }
    }
}

/// Opens a sled store, waiting a little for a lock that a store closed a moment ago in this
/// process still holds: sled 0.34 releases its file lock from background threads after the
/// last handle is dropped (spacejam/sled#1234), so a quick close-and-reopen can see
/// `WouldBlock`. Gives up after about two seconds with sled's own error.
pub fn open_sled(path: &Path, cache_bytes: Option<u64>) -> Result<sled::Db, sled::Error> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let mut config = sled::Config::new()
            .path(path)
            .mode(sled::Mode::HighThroughput);
        if let Some(bytes) = cache_bytes {
            config = config.cache_capacity(bytes);
        }
        match config.open() {
            Err(e) if is_lock_contention(&e) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
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

/// The sled tree in which earlier versions kept every key of the view.
const OLD_VIEW_TREE: &[u8] = b"view";

/// The view's checkpoint store, opened: sorted runs (`DIR/view/runs/`) with their catalogue
/// in sled (`DIR/view`).
pub struct ViewStore {
    pub db: sled::Db,
    pub runs: Arc<RunStore>,
}

impl ViewStore {
    /// Opens the view's store to run on it: deletes run files a crash left uncommitted, and
    /// converts a view of the earlier layout (every key in sled's tree `view`).
    pub fn open(dir: &Path, cache_bytes: Option<u64>) -> Result<ViewStore, JournalError> {
        let store = ViewStore::open_with(dir, cache_bytes, true)?;
        store.import_sled_tree()?;
        Ok(store)
    }

    /// Opens the view's store to check it (`verify`): nothing on disk is deleted or converted.
    pub fn open_to_check(dir: &Path, cache_bytes: Option<u64>) -> Result<ViewStore, JournalError> {
        let store = ViewStore::open_with(dir, cache_bytes, false)?;
        if store.has_sled_tree() {
            return Err(JournalError::Layout {
                dir: dir.display().to_string(),
                reason: "its view is in the earlier layout (keys in sled's tree `view`): open it once with `onecard serve` (or any command that runs the engine) to convert it, then check it".into(),
            });
        }
        Ok(store)
    }

    fn open_with(
        dir: &Path,
        cache_bytes: Option<u64>,
        to_run: bool,
    ) -> Result<ViewStore, JournalError> {
        let layout = Layout::of(dir);
        let old = dir.join("journal");
        if old.exists() && !layout.log.exists() {
            return Err(JournalError::Layout {
                dir: dir.display().to_string(),
                reason: "it holds a journal in the older sled format (DIR/journal); this OneCard writes a log of its own (DIR/log) and cannot read that one: use a new data directory".into(),
            });
        }
        let db = open_sled(&layout.view, cache_bytes).map_err(ViewError::from)?;
        let runs_dir = layout.view.join("runs");
        let runs = if to_run {
            RunStore::open(db.clone(), &runs_dir)
        } else {
            RunStore::open_to_read(db.clone(), &runs_dir)
        }
        .map_err(ViewError::from)?;
        Ok(ViewStore {
            db,
            runs: Arc::new(runs),
        })
    }

    fn has_sled_tree(&self) -> bool {
        self.db
            .tree_names()
            .iter()
            .any(|n| n.as_ref() == OLD_VIEW_TREE)
    }

    /// A view written by an earlier version kept every key in sled's tree `view`. Its keys
    /// become the first run (they are already in key order), then the tree is dropped; a crash
    /// in between imports it again over the same keys.
    fn import_sled_tree(&self) -> Result<(), JournalError> {
        if !self.has_sled_tree() {
            return Ok(());
        }
        let tree = self.db.open_tree(OLD_VIEW_TREE).map_err(ViewError::from)?;
        let entries: Vec<(sled::IVec, sled::IVec)> = tree
            .iter()
            .collect::<Result<_, _>>()
            .map_err(ViewError::from)?;
        if !entries.is_empty() {
            tracing::info!(
                keys = entries.len(),
                "importing the view from sled's tree into sorted runs"
            );
            self.runs
                .write_run(
                    entries.iter().map(|(k, v)| (k.as_ref(), Some(v.as_ref()))),
                    entries.len(),
                )
                .map_err(ViewError::from)?;
        }
        drop(tree);
        self.db.drop_tree(OLD_VIEW_TREE).map_err(ViewError::from)?;
        self.db.flush().map_err(ViewError::from)?;
        Ok(())
    }
}

/// Checks that the log still holds the very record the checkpoint covers, then replays the
/// records after it into the checkpoint, as one more checkpoint. Returns how many records were
/// replayed.
fn replay_tail(
    dir: &Path,
    archive_dir: Option<&Path>,
    store: &ViewStore,
    checkpoint_seq: u64,
    last_seq: u64,
) -> Result<u64, JournalError> {
    if checkpoint_seq == 0 && last_seq == 0 {
        return Ok(0);
    }
    let checkpoint = StateView::new(store.runs.clone(), Arc::new(Overlay::default()));
    let reader = WalReader::open(&Layout::of(dir).log, archive_dir)?;
    let mut cursor = reader.cursor_after(checkpoint_seq.saturating_sub(1))?;
    if checkpoint_seq > 0 {
        let stamp = checkpoint.checkpoint_stamp()?;
        check_stamp(&mut cursor, checkpoint_seq, stamp)?;
    }
    let overlay = Overlay::default();
    let mut replayed = 0;
    while let Some(rec) = cursor.next_upto(last_seq) {
        let rec = rec?;
        let mut writes = decode_writes(rec.seq, &rec.payload)?;
        writes.push(view::stamp_write(rec.seq, &rec.hash));
        overlay.apply(rec.seq, writes);
        replayed += 1;
    }
    if cursor.position() != last_seq {
        return Err(JournalError::Corrupt {
            seq: cursor.position() + 1,
            reason: format!("the log ends at record {last_seq} but reading stopped here"),
        });
    }
    if let Some((layer, _)) = overlay.seal() {
        view::write_checkpoint(&store.runs, &layer)?;
    }
    Ok(replayed)
}

/// Reads record `seq` from a cursor placed just before it and checks it is the record the
/// checkpoint's stamp names (by hash).
pub fn check_stamp(
    cursor: &mut WalCursor,
    seq: u64,
    stamp: Option<(u64, Hash)>,
) -> Result<(), JournalError> {
    let Some((stamp_seq, stamp_hash)) = stamp else {
        return Err(JournalError::Corrupt {
            seq,
            reason: "the view's checkpoint covers this record but has no stamp".into(),
        });
    };
    if stamp_seq != seq {
        return Err(JournalError::Corrupt {
            seq,
            reason: format!(
                "the view's checkpoint is at record {seq} but its stamp names record {stamp_seq}"
            ),
        });
    }
    match cursor.next_upto(seq) {
        Some(Ok(rec)) if rec.hash == stamp_hash => Ok(()),
        Some(Ok(_)) => Err(JournalError::Corrupt {
            seq,
            reason: "altered: it is not the record the view's checkpoint covers (its hash differs from the checkpoint's stamp)".into(),
        }),
        Some(Err(e)) => Err(e.into()),
        None => Err(JournalError::Corrupt {
            seq,
            reason: "missing: the view's checkpoint covers it but the log does not hold it".into(),
        }),
    }
}

impl Journal {
    /// Opens (or creates) the journal in `dir` (`dir/log`: the log's segments; `dir/view`: the
    /// view's checkpoint), replays the log's tail over the checkpoint, checks that the view is
    /// at the log's last record, and starts the writer and the checkpointer.
    pub fn open(dir: &Path, cfg: JournalConfig) -> Result<(Journal, Recovered), JournalError> {
        let layout = Layout::of(dir);
        let store = ViewStore::open(dir, Some(cfg.cache_bytes))?;
        let checkpoint = StateView::new(store.runs.clone(), Arc::new(Overlay::default()));
        let known_store = checkpoint.store_id()?;
        let checkpoint_meta = checkpoint.meta()?;
        let had_log = layout.log.exists();
        let wal_cfg = WalConfig {
            segment_bytes: cfg.segment_bytes,
            archive_dir: cfg.archive_dir.clone(),
        };
        let checkpoint_seq = checkpoint_meta.as_ref().map_or(0, |m| m.last_seq);
        // Records the checkpoint covers were acknowledged: never cut as a torn tail.
        let (wal, opened) = Wal::open_keeping(&layout.log, wal_cfg, known_store, checkpoint_seq)?;
        if known_store.is_none() {
            if checkpoint_meta.is_some() {
                return Err(JournalError::Layout {
                    dir: dir.display().to_string(),
                    reason: "the view has no store id: it was not written by this version".into(),
                });
            }
            if had_log && opened.last_seq > 0 && opened.first_seq != 1 {
                return Err(JournalError::Layout {
                    dir: dir.display().to_string(),
                    reason: format!(
                        "the view is missing and the log starts at record {}: it cannot be rebuilt",
                        opened.first_seq
                    ),
                });
            }
            // A new store, or a lost view rebuilt from the whole log below.
            checkpoint.set_store_id(opened.store_id)?;
        }
        if checkpoint_seq > opened.last_seq {
            return Err(JournalError::Corrupt {
                seq: opened.last_seq + 1,
                reason: format!(
                    "the view's checkpoint covers record {checkpoint_seq} but the log ends at record {}: acknowledged records are missing from the log",
                    opened.last_seq
                ),
            });
        }
        let replayed = replay_tail(
            dir,
            cfg.archive_dir.as_deref(),
            &store,
            checkpoint_seq,
            opened.last_seq,
        )?;
        let overlay = Arc::new(Overlay::with_record_cache(
            usize::try_from(cfg.record_cache_bytes).unwrap_or(usize::MAX),
        ));
        let ids = Arc::new(IdFilter::with_capacity(
            cfg.id_filter_capacity,
            &cfg.filtered_record_prefixes,
        ));
        let view = StateView::with_filter(store.runs.clone(), overlay.clone(), ids.clone());
        let meta = view.meta()?.unwrap_or_default();
        let book = Arc::new(MerchantBook::default());
        if meta.last_seq != opened.last_seq {
            return Err(JournalError::Corrupt {
                seq: opened.last_seq,
                reason: format!(
                    "the view is at record {} but the log ends at record {}",
                    meta.last_seq, opened.last_seq
                ),
            });
        }

        let (nudge, nudged) = crossbeam_channel::bounded(1);
        let common = Arc::new(Common {
            stats: JournalStats::default(),
            synced_seq: AtomicU64::new(opened.last_seq),
            checkpoint_seq: AtomicU64::new(opened.last_seq),
            nudge,
            checkpoint_max_keys: cfg.checkpoint_max_keys.max(1),
            participant: parking_lot::Mutex::new(None),
            index_bank_ops: std::sync::atomic::AtomicBool::new(true),
            view_failure: view.failure().clone(),
            recent: Default::default(),
        });
        let sink = LogSink {
            wal,
            view: WriterView::load(&view, book.clone())?,
            overlay: overlay.clone(),
            ids: ids.clone(),
            shared: common.clone(),
            payload: Vec::with_capacity(1 << 20),
            released_through: 0,
        };
        let writer = GroupCommit::start(
            "journal-writer",
            sink,
            GroupCommitConfig {
                queue_capacity: cfg.queue_capacity,
                max_batch: cfg.max_batch,
                batch_window: Duration::from_micros(cfg.batch_window_micros),
            },
        )
        .map_err(|e| JournalError::Thread(e.to_string()))?;
        // The id filter is filled from the store in the background: opening does not wait for
        // a pass over every closed order, and until the pass is done every id is looked up.
        let filling = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let filler = {
            let (view, stop) = (view.clone(), filling.clone());
            std::thread::Builder::new()
                .name("id-filter".into())
                .spawn(move || {
                    if let Err(e) = view.fill_id_filter(&stop) {
                        tracing::error!(error = %e, "the id filter could not be filled; ids are looked up in the store");
                    }
                })
                .map_err(|e| JournalError::Thread(e.to_string()))?
        };
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let checkpointer = {
            let (runs, overlay, common) = (store.runs.clone(), overlay.clone(), common.clone());
            let every = Duration::from_millis(cfg.checkpoint_interval_ms.max(1));
            std::thread::Builder::new()
                .name("checkpointer".into())
                .spawn(move || checkpoint_loop(runs, overlay, common, every, stopped, nudged))
                .map_err(|e| JournalError::Thread(e.to_string()))?
        };
        let merger = store
            .runs
            .start_merger()
            .map_err(|e| JournalError::Thread(e.to_string()))?;
        let journal = Journal {
            handle: JournalHandle {
                writer,
                common,
                view,
                book,
                reader: Arc::new(FeedReader {
                    dir: layout.log.clone(),
                    archive_dir: cfg.archive_dir.clone(),
                    cursors: parking_lot::Mutex::new(Vec::new()),
                }),
            },
            store,
            merger: Some(merger),
            checkpointer: Some((stop, checkpointer)),
            filler: Some((filling, filler)),
            path: dir.to_path_buf(),
        };
        Ok((
            journal,
            Recovered {
                meta,
                last_seq: opened.last_seq,
                last_hash: opened.last_hash,
                replayed,
                torn_bytes: opened.torn_bytes,
            },
        ))
    }

    pub fn handle(&self) -> JournalHandle {
        self.handle.clone()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes everything queued, stops the writer, checkpoints what is left and closes.
    pub fn close(mut self) -> Result<(), JournalError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), JournalError> {
        if let Some((stop, thread)) = self.filler.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = thread.join();
        }
        self.handle.writer.close();
        self.handle.common.participant.lock().take();
        if let Some((stop, thread)) = self.checkpointer.take() {
            drop(stop);
            let _ = thread.join();
        }
        // A merge under way is abandoned (its file deleted); the runs stay as they are.
        self.merger.take();
        // A last checkpoint makes the next open replay nothing.
        checkpoint_once(
            &self.store.runs,
            self.handle.view.overlay(),
            &self.handle.common,
        )?;
        Ok(())
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

fn checkpoint_once(
    runs: &RunStore,
    overlay: &Overlay,
    common: &Common,
) -> Result<(), JournalError> {
    let Some((layer, seq)) = overlay.seal() else {
        return Ok(());
    };
    view::write_checkpoint(runs, &layer)?;
    overlay.checkpointed();
    common.checkpoint_seq.store(seq, Ordering::Release);
    common.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
    common
        .stats
        .checkpoint_keys
        .fetch_add(layer.len() as u64, Ordering::Relaxed);
    Ok(())
}

fn checkpoint_loop(
    runs: Arc<RunStore>,
    overlay: Arc<Overlay>,
    common: Arc<Common>,
    every: Duration,
    stopped: crossbeam_channel::Receiver<()>,
    nudged: crossbeam_channel::Receiver<()>,
) {
    loop {
        crossbeam_channel::select! {
            recv(stopped) -> _ => return,
            recv(nudged) -> _ => {},
            default(every) => {},
        }
        if let Err(e) = checkpoint_once(&runs, &overlay, &common) {
            // The overlay keeps the sealed layer and the log every record: nothing is lost. But
            // sled will not write again before it is reopened, so the journal stops too.
            tracing::error!(error = %e, "checkpoint of the account-state view failed; the journal stops: restart once it is fixed");
            let doing = "checkpoint of the account-state view";
            match e {
                JournalError::View(e) if e.is_storage_failure() => {
                    common.view_failure.note(doing, e);
                }
                e => common
                    .view_failure
                    .set(SinkFailure::new(format!("{doing}: {e}"))),
            }
            return;
        }
    }
}

fn bincode_opts() -> impl bincode::Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_limit(MAX_RECORD_BYTES)
}

fn encode_entry(entry: &Entry) -> Result<Vec<u8>, JournalError> {
    bincode::serialize(entry).map_err(|e| JournalError::Corrupt {
        seq: 0,
        reason: format!("encode: {e}"),
    })
}

/// A record as read back: checked for framing, checksum and chain by the log's reader.
pub struct DecodedRecord {
    pub seq: u64,
    pub prev_hash: Hash,
    pub hash: Hash,
    pub entries: Vec<Entry>,
}

/// Reads a record's payload: its entries and its view writes.
struct PayloadReader<'a> {
    rest: &'a [u8],
}

impl<'a> PayloadReader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.rest.len() < n {
            return Err("payload ends early".into());
        }
        let (a, b) = self.rest.split_at(n);
        self.rest = b;
        Ok(a)
    }

    fn u32(&mut self) -> Result<usize, String> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    fn entries(&mut self) -> Result<Vec<Entry>, String> {
        let count = self.u32()?;
        let mut entries = Vec::with_capacity(count.min(65_536));
        for _ in 0..count {
            let len = self.u32()?;
            let bytes = self.take(len)?;
            entries.push(
                bincode_opts()
                    .deserialize(bytes)
                    .map_err(|e| e.to_string())?,
            );
        }
        Ok(entries)
    }

    fn skip_entries(&mut self) -> Result<(), String> {
        let count = self.u32()?;
        for _ in 0..count {
            let len = self.u32()?;
            self.take(len)?;
        }
        Ok(())
    }

    /// Checks the writes' framing without copying them (what the feed needs).
    fn skip_writes(&mut self) -> Result<(), String> {
        let count = self.u32()?;
        for _ in 0..count {
            let tag = self.take(1)?[0];
            let klen = self.u32()?;
            self.take(klen)?;
            match tag {
                0 => {
                    let vlen = self.u32()?;
                    self.take(vlen)?;
                }
                1 => {}
                t => return Err(format!("unknown write tag {t}")),
            }
        }
        if !self.rest.is_empty() {
            return Err(format!("{} stray bytes after the writes", self.rest.len()));
        }
        Ok(())
    }

    fn writes(&mut self) -> Result<Vec<ViewWrite>, String> {
        let count = self.u32()?;
        let mut writes = Vec::with_capacity(count.min(65_536));
        for _ in 0..count {
            let tag = self.take(1)?[0];
            let klen = self.u32()?;
            let k = self.take(klen)?.to_vec();
            writes.push(match tag {
                0 => {
                    let vlen = self.u32()?;
                    ViewWrite::Put(k, self.take(vlen)?.to_vec())
                }
                1 => ViewWrite::Remove(k),
                t => return Err(format!("unknown write tag {t}")),
            });
        }
        if !self.rest.is_empty() {
            return Err(format!("{} stray bytes after the writes", self.rest.len()));
        }
        Ok(writes)
    }
}

/// Decodes a record's entries (its view writes are checked for framing, not kept).
pub fn decode_record(
    seq: u64,
    prev_hash: Hash,
    hash: Hash,
    payload: &[u8],
) -> Result<DecodedRecord, JournalError> {
    let corrupt = |reason: String| JournalError::Corrupt {
        seq,
        reason: format!("undecodable payload: {reason}"),
    };
    let mut r = PayloadReader { rest: payload };
    let entries = r.entries().map_err(corrupt)?;
    r.skip_writes().map_err(corrupt)?;
    Ok(DecodedRecord {
        seq,
        prev_hash,
        hash,
        entries,
    })
}

/// A record's view writes, in order.
pub fn decode_writes(seq: u64, payload: &[u8]) -> Result<Vec<ViewWrite>, JournalError> {
    let mut r = PayloadReader { rest: payload };
    r.skip_entries()
        .and_then(|_| r.writes())
        .map_err(|reason| JournalError::Corrupt {
            seq,
            reason: format!("undecodable payload: {reason}"),
        })
}

/// Every record of the log in `dir` (with `archive_dir` for archived segments) from record 1,
/// checked (framing, CRC, sequence, hash chain) and decoded, with its view writes: what
/// `verify` replays. Nothing but the log's own reader opens the files.
pub fn read_log(
    dir: &Path,
    archive_dir: Option<&Path>,
) -> Result<impl Iterator<Item = Result<(DecodedRecord, Vec<ViewWrite>), JournalError>>, JournalError>
{
    read_log_upto(dir, archive_dir, u64::MAX)
}

/// [`read_log`] up to record `upto`: beside a running journal, pass its last durable record,
/// so that a record being written is never read.
pub fn read_log_upto(
    dir: &Path,
    archive_dir: Option<&Path>,
    upto: u64,
) -> Result<impl Iterator<Item = Result<(DecodedRecord, Vec<ViewWrite>), JournalError>>, JournalError>
{
    let reader = WalReader::open(&Layout::of(dir).log, archive_dir)?;
    let mut cursor = reader.cursor_after(0)?;
    Ok(std::iter::from_fn(move || {
        let rec = match cursor.next_upto(upto)? {
            Ok(r) => r,
            Err(e) => return Some(Err(e.into())),
        };
        let decoded = decode_record(rec.seq, rec.prev_hash, rec.hash, &rec.payload)
            .and_then(|d| Ok((d, decode_writes(rec.seq, &rec.payload)?)));
        Some(decoded)
    }))
}

/// For crash tests that copy a running engine's data directory: not part of the node.
#[doc(hidden)]
pub mod testing {
    use super::*;

    /// Copies `data`'s view into `to`'s as a crash at one moment would leave it, though the
    /// engine runs on while it is copied: the run files are hard-linked first (they never
    /// change once whole, and a file still being written is an uncommitted run), then sled's
    /// catalogue is copied, then any run file that appeared meanwhile is linked too. A merge
    /// can still retire a run the copied catalogue names between those steps; then the copy
    /// does not open, and it is taken again. `data` and `to` must be on one file system.
    pub fn copy_view(data: &Path, to: &Path) -> Result<(), String> {
        let (from, view) = (data.join("view"), to.join("view"));
        for attempt in 0.. {
            let _ = std::fs::remove_dir_all(&view);
            std::fs::create_dir_all(view.join("runs")).map_err(|e| e.to_string())?;
            let link_runs = || {
                let listing = std::fs::read_dir(from.join("runs"));
                for e in listing.into_iter().flatten().flatten() {
                    let target = view.join("runs").join(e.file_name());
                    if !target.exists() {
                        let _ = std::fs::hard_link(e.path(), target);
                    }
                }
            };
            link_runs();
            copy_files(&from, &view, "runs")?;
            link_runs();
            match ViewStore::open(to, None) {
                Ok(store) => {
                    drop(store);
                    return Ok(());
                }
                Err(e) if attempt < 20 => {
                    tracing::debug!(error = %e, "the copied view does not open; copying again")
                }
                Err(e) => return Err(format!("the view could not be copied whole: {e}")),
            }
        }
        Ok(())
    }

    /// Copies a tree as it is, but the entry `skip` at its top; files that vanish meanwhile
    /// (sled replacing a snapshot) are skipped, as a crash would not have them either.
    fn copy_files(from: &Path, to: &Path, skip: &str) -> Result<(), String> {
        std::fs::create_dir_all(to).map_err(|e| e.to_string())?;
        for e in std::fs::read_dir(from)
            .map_err(|e| e.to_string())?
            .flatten()
        {
            if e.file_name() == skip {
                continue;
            }
            let target = to.join(e.file_name());
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                copy_files(&e.path(), &target, "")?;
            } else if let Err(err) = std::fs::copy(e.path(), &target) {
                if err.kind() != std::io::ErrorKind::NotFound {
                    return Err(format!("copy {}: {err}", e.path().display()));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recent(seq: u64, bytes: usize) -> RecentRecord {
        RecentRecord {
            seq,
            prev_hash: [seq as u8; 32],
            hash: [seq as u8 + 1; 32],
            entries: vec![vec![seq as u8; bytes]].into(),
            bytes,
        }
    }

    #[test]
    fn recent_records_give_a_contiguous_run_from_the_one_asked_or_nothing() {
        let mut r = RecentRecords::default();
        assert!(r.after(0, 10, 10).is_none());
        let big = RECENT_RECORD_BYTES / 4;
        for seq in 1..=6 {
            r.push(recent(seq, big));
        }
        // Four records fit: 1 and 2 are gone, and a read from them goes to the log.
        let kept: Vec<u64> = r.records.iter().map(|x| x.seq).collect();
        assert_eq!(kept, vec![3, 4, 5, 6]);
        assert!(r.after(0, 10, 6).is_none());
        assert!(r.after(1, 10, 6).is_none());
        let seqs = |got: Option<Vec<RecentRecord>>| {
            got.map(|v| v.into_iter().map(|x| x.seq).collect::<Vec<u64>>())
        };
        assert_eq!(seqs(r.after(2, 10, 6)), Some(vec![3, 4, 5, 6]));
        assert_eq!(seqs(r.after(3, 2, 6)), Some(vec![4, 5]));
        // Never past the last synced record the reader was told of.
        assert_eq!(seqs(r.after(2, 10, 4)), Some(vec![3, 4]));
        // Past the last kept: nothing here (the caller found nothing new anyway).
        assert!(r.after(6, 10, 6).is_none());
        let first = r.after(2, 1, 6).unwrap().remove(0);
        assert_eq!((first.prev_hash, first.hash), ([3; 32], [4; 32]));
        assert_eq!(&first.entries[0], &vec![3u8; big]);
    }

    #[test]
    fn opening_waits_for_a_lock_released_a_moment_later() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let first = open_sled(&path, None).unwrap();
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            drop(first);
        });
        let second = open_sled(&path, None);
        releaser.join().unwrap();
        assert!(second.is_ok(), "{:?}", second.err());
    }

    #[test]
    fn a_view_of_the_earlier_sled_layout_is_converted_once_and_refused_by_the_check() {
        let dir = tempfile::tempdir().unwrap();
        let view_dir = Layout::of(dir.path()).view;
        {
            let db = open_sled(&view_dir, None).unwrap();
            let tree = db.open_tree(OLD_VIEW_TREE).unwrap();
            for (k, v) in [
                (&b"ca"[..], &b"1"[..]),
                (b"cb", b"2"),
                (b"i", b"id"),
                (b"k", b""),
            ] {
                tree.insert(k, v).unwrap();
            }
            db.flush().unwrap();
        }
        let refused = ViewStore::open_to_check(dir.path(), None)
            .err()
            .expect("refused");
        assert!(refused.to_string().contains("earlier layout"), "{refused}");
        let store = ViewStore::open(dir.path(), None).unwrap();
        assert!(!store.has_sled_tree());
        assert_eq!(store.runs.get(b"cb").unwrap().as_deref(), Some(&b"2"[..]));
        assert_eq!(store.runs.get(b"k").unwrap().as_deref(), Some(&b""[..]));
        let keys: Vec<Vec<u8>> = store.runs.scan_from(b"").map(|kv| kv.unwrap().0).collect();
        assert_eq!(keys, [&b"ca"[..], b"cb", b"i", b"k"]);
        drop(store);
        let again = ViewStore::open_to_check(dir.path(), None).unwrap();
        assert_eq!(again.runs.stats().runs, 1, "converted once");
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
                tokio::time::sleep(Duration::from_millis(50)).await;
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

    fn put(k: &str, v: &str) -> ViewWrite {
        ViewWrite::Put(k.as_bytes().to_vec(), v.as_bytes().to_vec())
    }

    /// A restart after a crash (no last checkpoint) finds every acknowledged write: the
    /// checkpoint plus the log's tail.
    #[test]
    fn checkpoint_plus_tail_gives_every_acknowledged_write_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let cfg = JournalConfig {
            checkpoint_interval_ms: 3_600_000,
            ..JournalConfig::default()
        };
        {
            let (journal, _) = Journal::open(dir.path(), cfg.clone()).unwrap();
            let h = journal.handle();
            rt.block_on(h.append(&clock_entry(1), vec![put("xa", "1"), put("xb", "1")]))
                .unwrap();
            checkpoint_once(&journal.store.runs, h.view.overlay(), &h.common).unwrap();
            rt.block_on(h.append(
                &clock_entry(2),
                vec![put("xa", "2"), ViewWrite::Remove(b"xb".to_vec())],
            ))
            .unwrap();
            // A crash: nothing more is checkpointed.
            std::mem::forget(journal);
        }
        // sled's lock belongs to the forgotten handle in this process: copy the files.
        let copy = tempfile::tempdir().unwrap();
        copy_dir(dir.path(), copy.path());
        let (journal, recovered) = Journal::open(copy.path(), cfg).unwrap();
        assert_eq!(recovered.last_seq, 2);
        assert_eq!(recovered.replayed, 1);
        let view = journal.handle().view();
        assert_eq!(view.get_raw(b"xa").unwrap(), Some(b"2".to_vec()));
        assert_eq!(view.get_raw(b"xb").unwrap(), None);
    }

    fn copy_dir(from: &Path, to: &Path) {
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let target = to.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                std::fs::create_dir_all(&target).unwrap();
                copy_dir(&e.path(), &target);
            } else {
                std::fs::copy(e.path(), target).unwrap();
            }
        }
    }
}
