//! The one group-commit writer of OneCard.
//!
//! Many threads hand items to one writer thread over a bounded channel. The writer takes what
//! has queued (up to `max_batch`, optionally waiting `batch_window` for more once the queue is
//! empty), gives the whole batch to its [`Sink`], which makes it durable with one sync, and
//! then answers every submitter of the batch itself, from its own thread: nobody is answered
//! before the sync, and one sync serves everyone queued meanwhile.
//!
//! After a failed commit the writer stops accepting: a failed `fsync` cannot safely be retried
//! (the kernel may already have dropped the dirty pages it could not write), so the only safe
//! way on is a restart, which recovers from what is on disk. Everything queued behind the
//! failure, and everything submitted later, gets [`CommitError::Stopped`] with the first
//! failure's reason.
//!
//! The journal of the engine and the node store both use this writer; each brings its own
//! `Sink` (a write-ahead log append + fdatasync, a sled batch + flush).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use tokio::sync::oneshot;

/// Why a commit failed, as the sink saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkFailure {
    pub reason: String,
    /// The device is full: said in words to operators, since it is the one failure they can
    /// fix themselves.
    pub disk_full: bool,
}

impl SinkFailure {
    pub fn new(reason: impl Into<String>) -> SinkFailure {
        SinkFailure {
            reason: reason.into(),
            disk_full: false,
        }
    }

    pub fn disk_full(reason: impl Into<String>) -> SinkFailure {
        SinkFailure {
            reason: reason.into(),
            disk_full: true,
        }
    }
}

/// Why a submission was not made durable. Nothing of it was acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitError {
    /// The batch holding the submission could not be written.
    #[error("{}", describe(.0, "write failed"))]
    Failed(SinkFailure),
    /// An earlier batch failed; the writer accepts nothing more until a restart.
    #[error("{}; the writer stopped after that failure: restart once it is fixed", describe(.0, "an earlier write failed"))]
    Stopped(SinkFailure),
    /// The writer was closed.
    #[error("the writer is closed")]
    Closed,
}

fn describe(f: &SinkFailure, what: &str) -> String {
    if f.disk_full {
        format!("disk full: {what}: {}", f.reason)
    } else {
        format!("{what}: {}", f.reason)
    }
}

impl CommitError {
    /// Whether the device holding the store is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, CommitError::Failed(f) | CommitError::Stopped(f) if f.disk_full)
    }
}

/// Where a writer's batches go.
pub trait Sink: Send + 'static {
    type Item: Send + 'static;
    /// What every submitter of a committed batch learns (for a log: the record's number).
    type Done: Clone + Send + 'static;
    /// Makes `batch` durable as one unit with one sync. Ok means every item is on disk. The
    /// sink may take what it needs out of the items (they are dropped afterwards).
    fn commit(&mut self, batch: &mut Vec<Self::Item>) -> Result<Self::Done, SinkFailure>;
    /// Called once when the writer stops (after the last batch): a last flush, closing files.
    fn close(&mut self) {}
}

/// Tuning of a writer.
#[derive(Debug, Clone)]
pub struct GroupCommitConfig {
    /// Capacity of the channel into the writer; a full channel makes submitters wait.
    pub queue_capacity: usize,
    /// Most items committed in one batch.
    pub max_batch: usize,
    /// How long a batch may stay open for more items once the queue is empty. Zero closes it
    /// at once: lowest latency; a few hundred µs trades latency for fewer, fuller syncs.
    pub batch_window: Duration,
}

impl Default for GroupCommitConfig {
    fn default() -> Self {
        GroupCommitConfig {
            queue_capacity: 16_384,
            max_batch: 4_096,
            batch_window: Duration::ZERO,
        }
    }
}

/// Counters for operators and benchmarks.
#[derive(Debug, Default)]
pub struct CommitStats {
    /// Batches committed (one sync each).
    pub batches: AtomicU64,
    /// Items in them.
    pub items: AtomicU64,
    /// Time spent inside the sink, in microseconds.
    pub commit_micros: AtomicU64,
}

/// Who waits for a submission.
enum Waiter<D> {
    Async(oneshot::Sender<Result<D, CommitError>>),
    Blocking(std::sync::mpsc::SyncSender<Result<D, CommitError>>),
}

impl<D> Waiter<D> {
    fn answer(self, r: Result<D, CommitError>) {
        // A waiter that went away (a cancelled request) needs no answer.
        match self {
            Waiter::Async(tx) => {
                let _ = tx.send(r);
            }
            Waiter::Blocking(tx) => {
                let _ = tx.send(r);
            }
        }
    }
}

enum Msg<I, D> {
    Submit(I, Waiter<D>),
    /// Commit everything queued before this, then stop.
    Stop,
}

/// State shared by the handles and the writer.
struct Common {
    /// The failure that stopped the writer, if any.
    failure: std::sync::OnceLock<SinkFailure>,
    stats: CommitStats,
}

/// A running writer. Cheap to clone; the writer stops on [`GroupCommit::close`] or when every
/// handle is gone.
pub struct GroupCommit<S: Sink> {
    tx: Sender<Msg<S::Item, S::Done>>,
    common: Arc<Common>,
    thread: Arc<std::sync::Mutex<Option<JoinHandle<()>>>>,
}

impl<S: Sink> Clone for GroupCommit<S> {
    fn clone(&self) -> Self {
        GroupCommit {
            tx: self.tx.clone(),
            common: self.common.clone(),
            thread: self.thread.clone(),
        }
    }
}

impl<S: Sink> GroupCommit<S> {
    /// Starts the writer thread, named `name`.
    pub fn start(name: &str, sink: S, cfg: GroupCommitConfig) -> std::io::Result<GroupCommit<S>> {
        let (tx, rx) = bounded(cfg.queue_capacity.max(1));
        let common = Arc::new(Common {
            failure: Default::default(),
            stats: CommitStats::default(),
        });
        let thread = {
            let common = common.clone();
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || writer_loop(sink, rx, cfg, common))?
        };
        Ok(GroupCommit {
            tx,
            common,
            thread: Arc::new(std::sync::Mutex::new(Some(thread))),
        })
    }

    /// Queues an item; the future resolves once it is durable. Blocks the calling thread while
    /// the queue is full (back-pressure), not the future.
    pub fn submit(
        &self,
        item: S::Item,
    ) -> impl std::future::Future<Output = Result<S::Done, CommitError>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let queued = self.send(item, Waiter::Async(tx));
        async move {
            queued?;
            rx.await.map_err(|_| CommitError::Closed)?
        }
    }

    /// Queues an item and waits, on this thread, until it is durable.
    pub fn submit_blocking(&self, item: S::Item) -> Result<S::Done, CommitError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.send(item, Waiter::Blocking(tx))?;
        rx.recv().map_err(|_| CommitError::Closed)?
    }

    fn send(&self, item: S::Item, waiter: Waiter<S::Done>) -> Result<(), CommitError> {
        if let Some(f) = self.common.failure.get().cloned() {
            return Err(CommitError::Stopped(f));
        }
        match self.tx.try_send(Msg::Submit(item, waiter)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(msg)) => self.tx.send(msg).map_err(|_| CommitError::Closed),
            Err(TrySendError::Disconnected(_)) => Err(CommitError::Closed),
        }
    }

    /// The failure that stopped the writer, if one did.
    pub fn failure(&self) -> Option<SinkFailure> {
        self.common.failure.get().cloned()
    }

    pub fn stats(&self) -> &CommitStats {
        &self.common.stats
    }

    /// Items waiting in the queue now.
    pub fn queued(&self) -> usize {
        self.tx.len()
    }

    /// Commits everything queued, stops the writer and waits for it. Later submissions get
    /// [`CommitError::Closed`]. Idempotent.
    pub fn close(&self) {
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(h) = handle {
            let _ = self.tx.send(Msg::Stop);
            let _ = h.join();
        }
    }
}

fn writer_loop<S: Sink>(
    mut sink: S,
    rx: Receiver<Msg<S::Item, S::Done>>,
    cfg: GroupCommitConfig,
    common: Arc<Common>,
) {
    let max_batch = cfg.max_batch.max(1);
    let mut items: Vec<S::Item> = Vec::with_capacity(max_batch);
    let mut waiters: Vec<Waiter<S::Done>> = Vec::with_capacity(max_batch);
    let mut stopping = false;
    while !stopping {
        match rx.recv() {
            Ok(Msg::Submit(item, w)) => {
                items.push(item);
                waiters.push(w);
            }
            Ok(Msg::Stop) | Err(_) => break,
        }
        // The batch closes when it is full, or when the queue is empty and the window since
        // its first item has passed (a zero window: as soon as the queue is empty).
        let window_ends = Instant::now() + cfg.batch_window;
        while items.len() < max_batch {
            let next = match rx.try_recv() {
                Ok(m) => Some(m),
                Err(_) if cfg.batch_window.is_zero() => None,
                Err(_) => {
                    let left = window_ends.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        None
                    } else {
                        rx.recv_timeout(left).ok()
                    }
                }
            };
            match next {
                Some(Msg::Submit(item, w)) => {
                    items.push(item);
                    waiters.push(w);
                }
                Some(Msg::Stop) => {
                    stopping = true;
                    break;
                }
                None => break,
            }
        }
        if let Some(f) = common.failure.get().cloned() {
            for w in waiters.drain(..) {
                w.answer(Err(CommitError::Stopped(f.clone())));
            }
            items.clear();
            continue;
        }
        let started = Instant::now();
        let result = sink.commit(&mut items);
        let n = waiters.len() as u64;
        items.clear();
        match result {
            Ok(done) => {
                let stats = &common.stats;
                stats.batches.fetch_add(1, Ordering::Relaxed);
                stats.items.fetch_add(n, Ordering::Relaxed);
                stats
                    .commit_micros
                    .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                for w in waiters.drain(..) {
                    w.answer(Ok(done.clone()));
                }
            }
            Err(f) => {
                // Nothing after a failed write may be acknowledged: what is on disk must stay
                // a prefix of what was acknowledged.
                let _ = common.failure.set(f.clone());
                for w in waiters.drain(..) {
                    w.answer(Err(CommitError::Failed(f.clone())));
                }
            }
        }
    }
    // Whatever is still queued behind a Stop is refused, never silently dropped.
    for m in rx.try_iter() {
        if let Msg::Submit(_, w) = m {
            w.answer(Err(CommitError::Closed));
        }
    }
    sink.close();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Records batch sizes; fails the batch that holds `fail_on`.
    struct Recorder {
        batches: Arc<std::sync::Mutex<Vec<Vec<u32>>>>,
        fail_on: Option<u32>,
        commits: Arc<AtomicUsize>,
    }

    impl Sink for Recorder {
        type Item = u32;
        type Done = usize;
        fn commit(&mut self, batch: &mut Vec<u32>) -> Result<usize, SinkFailure> {
            if let Some(x) = self.fail_on {
                if batch.contains(&x) {
                    return Err(SinkFailure::disk_full("no space left on device"));
                }
            }
            let n = self.commits.fetch_add(1, Ordering::SeqCst) + 1;
            self.batches.lock().unwrap().push(batch.clone());
            Ok(n)
        }
    }

    fn recorder(fail_on: Option<u32>) -> (Recorder, Arc<std::sync::Mutex<Vec<Vec<u32>>>>) {
        let batches = Arc::new(std::sync::Mutex::new(Vec::new()));
        (
            Recorder {
                batches: batches.clone(),
                fail_on,
                commits: Arc::new(AtomicUsize::new(0)),
            },
            batches,
        )
    }

    #[test]
    fn every_item_is_committed_once_in_submission_order_per_thread() {
        let (sink, batches) = recorder(None);
        let gc = GroupCommit::start("t", sink, GroupCommitConfig::default()).unwrap();
        let threads: Vec<_> = (0..4u32)
            .map(|t| {
                let gc = gc.clone();
                std::thread::spawn(move || {
                    for i in 0..500u32 {
                        gc.submit_blocking(t * 1000 + i).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        gc.close();
        let all: Vec<u32> = batches.lock().unwrap().concat();
        assert_eq!(all.len(), 2000);
        for t in 0..4u32 {
            let mine: Vec<u32> = all.iter().copied().filter(|x| x / 1000 == t).collect();
            assert_eq!(mine, (0..500).map(|i| t * 1000 + i).collect::<Vec<_>>());
        }
        assert_eq!(gc.stats().items.load(Ordering::Relaxed), 2000);
    }

    #[test]
    fn a_window_gathers_items_into_one_batch_and_max_batch_closes_it() {
        let (sink, batches) = recorder(None);
        let cfg = GroupCommitConfig {
            max_batch: 3,
            batch_window: Duration::from_secs(60),
            ..Default::default()
        };
        let gc = GroupCommit::start("t", sink, cfg).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (a, b, c) =
            rt.block_on(async { futures_join3(gc.submit(1), gc.submit(2), gc.submit(3)).await });
        assert_eq!((a.unwrap(), b.unwrap(), c.unwrap()), (1, 1, 1));
        gc.close();
        assert_eq!(*batches.lock().unwrap(), vec![vec![1, 2, 3]]);
    }

    async fn futures_join3<A, B, C>(
        a: impl std::future::Future<Output = A>,
        b: impl std::future::Future<Output = B>,
        c: impl std::future::Future<Output = C>,
    ) -> (A, B, C) {
        (a.await, b.await, c.await)
    }

    #[test]
    fn after_a_failure_nothing_more_is_committed_and_the_error_says_disk_full() {
        let (sink, batches) = recorder(Some(2));
        let gc = GroupCommit::start("t", sink, GroupCommitConfig::default()).unwrap();
        assert_eq!(gc.submit_blocking(1), Ok(1));
        let failed = gc.submit_blocking(2).unwrap_err();
        assert!(matches!(failed, CommitError::Failed(_)));
        assert!(failed.is_disk_full());
        assert!(failed.to_string().contains("disk full"), "{failed}");
        let later = gc.submit_blocking(3).unwrap_err();
        assert!(matches!(later, CommitError::Stopped(_)), "{later:?}");
        assert!(later.to_string().contains("disk full"), "{later}");
        assert!(gc.failure().is_some());
        gc.close();
        assert_eq!(*batches.lock().unwrap(), vec![vec![1]]);
    }

    #[test]
    fn close_commits_what_is_queued_and_refuses_what_comes_after() {
        let (sink, batches) = recorder(None);
        let gc = GroupCommit::start("t", sink, GroupCommitConfig::default()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let pending = gc.submit(7);
        gc.close();
        assert_eq!(rt.block_on(pending), Ok(1));
        assert_eq!(gc.submit_blocking(8), Err(CommitError::Closed));
        assert_eq!(*batches.lock().unwrap(), vec![vec![7]]);
    }
}
