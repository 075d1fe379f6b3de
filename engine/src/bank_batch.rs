//! Batched bank calls: [`BatchingBankPort`] gathers the operations the engine asks of a bank
//! into batch calls ([`BankPort::perform_batch`]), group-commit style.
//!
//! The engine asks for one operation at a time: a consumer's actor waits for the bank's answer
//! to its debit before it journals the entry that records it (the [`BankPort`] contract: the
//! bank answers first, then the record is written, and opening reconciles). A bank reached by
//! messages (the ISO 20022 adapter) should not get one message per operation: wrapped in a
//! `BatchingBankPort`, it gets one `perform_batch` call for everything asked for while its
//! previous call was in flight.
//!
//! How it runs: `debit` and `credit` put the operation on a bounded queue and wait for its own
//! answer. One collector thread (with a current-thread tokio runtime of its own: the engine's
//! arbiters are current-thread runtimes too, and nothing here needs more) takes what has
//! queued (up to [`BatchConfig::batch_max`], optionally waiting [`BatchConfig::batch_window`]
//! for more once the queue is empty), makes one `perform_batch` call to the wrapped port,
//! and answers every waiter of the batch with the answer for its operation. One call is in
//! flight at a time; operations queue behind it and form the next batch.
//!
//! - Every operation keeps its own id, so the bank's idempotency holds per operation.
//! - A failed batch call (`Err`: the bank unreachable, …) answers every operation of that
//!   batch with that error, a fault: the engine's actors undo what they did in memory, and an
//!   operation the bank did after all stays unconfirmed until the next opening reverses it.
//!   The next batch is called as usual.
//! - A batch answered with the wrong number of answers is a fault for every operation of it
//!   ([`BankError::Protocol`]): nobody can tell which answer is whose.
//! - A wrapped port that panics fails its batch the same way; the collector goes on.
//! - `unconfirmed`, `confirm`, `reverse`, `attach` and `add_moved` go straight to the wrapped
//!   port.
//! - A full queue makes callers wait (asynchronously: the arbiter's thread goes on). After
//!   [`BatchingBankPort::close`], or once the port is dropped, new operations, and those still
//!   waiting for room, get an error; what was queued before is still sent and answered;
//!   nobody is left waiting.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{mpsc, oneshot, Notify, OwnedSemaphorePermit, Semaphore, TryAcquireError};

use crate::bank::{
    AccountNames, BankAnswer, BankError, BankOp, BankPort, BankRequest, BankResult, UnconfirmedOp,
};
use crate::journal::JournalHandle;
use crate::money::Amount;

/// Tuning of a [`BatchingBankPort`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchConfig {
    /// Most operations in one batch call (at least 1).
    pub batch_max: usize,
    /// How long a batch may stay open for more operations once the queue is empty. Zero sends
    /// it at once: operations still gather while the previous call is in flight.
    pub batch_window: Duration,
    /// Operations waiting for the collector (at least 1); a full queue makes callers wait.
    pub queue_capacity: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            batch_max: 1_000,
            batch_window: Duration::ZERO,
            queue_capacity: 16_384,
        }
    }
}

/// Counters for operators, benchmarks and tests.
#[derive(Debug, Default)]
pub struct BatchStats {
    /// Batch calls made to the wrapped port.
    pub batches: AtomicU64,
    /// Operations in them.
    pub ops: AtomicU64,
    /// Batch calls that failed as a whole (an error, a wrong number of answers, a panic).
    pub failed_batches: AtomicU64,
    /// The largest batch so far.
    pub largest_batch: AtomicU64,
}

/// An operation waiting for its batch.
struct Queued {
    request: BankRequest,
    answer: oneshot::Sender<BankResult>,
    /// Its place in the queue, given back when the collector takes it.
    room: OwnedSemaphorePermit,
}

impl Queued {
    /// Out of the queue, into a batch: its place is free for another.
    fn take(self) -> (BankRequest, oneshot::Sender<BankResult>) {
        drop(self.room);
        (self.request, self.answer)
    }
}

/// A [`BankPort`] that sends the operations of its callers to the wrapped port in batch calls.
/// See the module's documentation.
pub struct BatchingBankPort {
    inner: Arc<dyn BankPort>,
    /// `None` once closed.
    tx: RwLock<Option<mpsc::UnboundedSender<Queued>>>,
    /// The queue's bound: a place is taken before an operation is queued, so that nobody
    /// holds a place without having queued into it (closing then waits for nobody).
    room: Arc<Semaphore>,
    /// Tells the collector to stop taking operations (those queued are still sent).
    shutdown: Arc<Notify>,
    stats: Arc<BatchStats>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

fn closed() -> BankError {
    BankError::Unavailable("the bank's batching queue is closed".into())
}

impl BatchingBankPort {
    /// Wraps `inner`, starting the collector thread.
    pub fn new(inner: Arc<dyn BankPort>, cfg: BatchConfig) -> std::io::Result<BatchingBankPort> {
        let (tx, rx) = mpsc::unbounded_channel();
        let room = Arc::new(Semaphore::new(
            cfg.queue_capacity.clamp(1, Semaphore::MAX_PERMITS),
        ));
        let shutdown = Arc::new(Notify::new());
        let stats = Arc::new(BatchStats::default());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = {
            let inner = inner.clone();
            let shutdown = shutdown.clone();
            let stats = stats.clone();
            std::thread::Builder::new()
                .name("onecard-bank-batch".into())
                .spawn(move || {
                    runtime.block_on(collect(inner, rx, shutdown, cfg, stats));
                })?
        };
        Ok(BatchingBankPort {
            inner,
            tx: RwLock::new(Some(tx)),
            room,
            shutdown,
            stats,
            thread: Mutex::new(Some(thread)),
        })
    }

    pub fn stats(&self) -> &BatchStats {
        &self.stats
    }

    /// Stops taking operations: later ones get an error at once. What was queued before is
    /// still sent (after the call in flight) and answered; then the collector stops. Waits for
    /// that. Idempotent.
    pub fn close(&self) {
        self.stop();
        let thread = self.thread.lock().take();
        if let Some(t) = thread {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }

    fn stop(&self) {
        self.room.close();
        self.tx.write().take();
        self.shutdown.notify_one();
    }

    /// Queues one operation; the future resolves with its own answer.
    fn submit(&self, request: BankRequest) -> BoxFuture<'static, BankResult> {
        let (answer, answered) = oneshot::channel();
        let Some(tx) = self.tx.read().clone() else {
            return futures::future::ready(Err(closed())).boxed();
        };
        let queue = move |request, answer, room| {
            tx.send(Queued {
                request,
                answer,
                room,
            })
            .map_err(|_| closed())
        };
        // Queued now when there is room, so that operations queue in the order they were
        // asked for; otherwise the future waits for room.
        let waiting = match self.room.clone().try_acquire_owned() {
            Ok(room) => {
                if let Err(e) = queue(request, answer, room) {
                    return futures::future::ready(Err(e)).boxed();
                }
                None
            }
            Err(TryAcquireError::Closed) => return futures::future::ready(Err(closed())).boxed(),
            Err(TryAcquireError::NoPermits) => Some((self.room.clone(), queue, request, answer)),
        };
        async move {
            if let Some((room, queue, request, answer)) = waiting {
                let room = room.acquire_owned().await.map_err(|_| closed())?;
                queue(request, answer, room)?;
            }
            answered.await.unwrap_or_else(|_| {
                Err(BankError::Unavailable(
                    "the bank's batching queue stopped without answering".into(),
                ))
            })
        }
        .boxed()
    }
}

impl Drop for BatchingBankPort {
    /// Like [`BatchingBankPort::close`] without waiting: the collector answers what is queued
    /// and stops on its own.
    fn drop(&mut self) {
        self.stop();
    }
}

impl BankPort for BatchingBankPort {
    fn debit(&self, op: BankOp) -> BoxFuture<'static, Result<BankAnswer, BankError>> {
        self.submit(BankRequest::Debit(op))
    }

    fn credit(&self, op: BankOp) -> BoxFuture<'static, Result<BankAnswer, BankError>> {
        self.submit(BankRequest::Credit(op))
    }

    /// Queues every operation on its own; they go out with whatever else is queued, in as
    /// many batches as `batch_max` needs.
    fn perform_batch(
        &self,
        requests: Vec<BankRequest>,
    ) -> BoxFuture<'static, Result<Vec<BankResult>, BankError>> {
        let answers: Vec<_> = requests.into_iter().map(|r| self.submit(r)).collect();
        async move { Ok(futures::future::join_all(answers).await) }.boxed()
    }

    fn unconfirmed(&self) -> Result<Vec<UnconfirmedOp>, BankError> {
        self.inner.unconfirmed()
    }

    fn confirm(&self, ids: &[String]) {
        self.inner.confirm(ids)
    }

    fn reverse(&self, id: &str) -> Result<(), BankError> {
        self.inner.reverse(id)
    }

    fn attach(&self, journal: &JournalHandle, names: AccountNames) -> Result<bool, BankError> {
        self.inner.attach(journal, names)
    }

    fn add_moved(&self, moved: &HashMap<String, Amount>) -> Result<(), BankError> {
        self.inner.add_moved(moved)
    }
}

/// The collector's queue: the next operation, or `None` once the queue is closed and empty or
/// `until` has passed.
struct Intake {
    rx: mpsc::UnboundedReceiver<Queued>,
    shutdown: Arc<Notify>,
    stopping: bool,
}

impl Intake {
    async fn next(&mut self, until: Option<tokio::time::Instant>) -> Option<Queued> {
        if !self.stopping {
            let rx = &mut self.rx;
            let recv = async {
                match until {
                    None => rx.recv().await,
                    Some(t) => tokio::time::timeout_at(t, rx.recv()).await.unwrap_or(None),
                }
            };
            tokio::select! {
                q = recv => return q,
                _ = self.shutdown.notified() => {}
            }
            // Closed: later sends fail; what is still queued comes out below, then `None`.
            self.rx.close();
            self.stopping = true;
        }
        match until {
            None => self.rx.recv().await,
            Some(t) => tokio::time::timeout_at(t, self.rx.recv())
                .await
                .unwrap_or(None),
        }
    }
}

async fn collect(
    inner: Arc<dyn BankPort>,
    rx: mpsc::UnboundedReceiver<Queued>,
    shutdown: Arc<Notify>,
    cfg: BatchConfig,
    stats: Arc<BatchStats>,
) {
    let batch_max = cfg.batch_max.max(1);
    let mut intake = Intake {
        rx,
        shutdown,
        stopping: false,
    };
    let mut batch = Vec::new();
    // Until the port is closed or dropped and what was queued before has gone out.
    while let Some(first) = intake.next(None).await {
        batch.push(first.take());
        // The batch closes when it is full, or when the queue is empty and the window since
        // its first operation has passed (a zero window: as soon as the queue is empty).
        let window_ends = if cfg.batch_window.is_zero() {
            None
        } else {
            // A window too long to add to now: the batch waits until it is full.
            Some(tokio::time::Instant::now().checked_add(cfg.batch_window))
        };
        while batch.len() < batch_max {
            let next = match intake.rx.try_recv() {
                Ok(q) => Some(q),
                Err(mpsc::error::TryRecvError::Disconnected) => None,
                Err(mpsc::error::TryRecvError::Empty) => match window_ends {
                    None => None,
                    Some(until) => intake.next(until).await,
                },
            };
            match next {
                Some(q) => batch.push(q.take()),
                None => break,
            }
        }
        send_batch(&*inner, std::mem::take(&mut batch), &stats).await;
    }
}

/// One batch call, then every waiter gets the answer for its operation.
async fn send_batch(
    inner: &dyn BankPort,
    batch: Vec<(BankRequest, oneshot::Sender<BankResult>)>,
    stats: &BatchStats,
) {
    let n = batch.len();
    let (requests, waiters): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
    stats.batches.fetch_add(1, Ordering::Relaxed);
    stats.ops.fetch_add(n as u64, Ordering::Relaxed);
    stats.largest_batch.fetch_max(n as u64, Ordering::Relaxed);
    let call = std::panic::catch_unwind(AssertUnwindSafe(|| inner.perform_batch(requests)));
    let result = match call {
        Ok(fut) => AssertUnwindSafe(fut)
            .catch_unwind()
            .await
            .unwrap_or_else(|p| Err(panicked(p))),
        Err(p) => Err(panicked(p)),
    };
    let answers = match result {
        Ok(answers) if answers.len() == n => answers,
        Ok(answers) => {
            let e = BankError::Protocol(format!(
                "the bank answered a batch of {n} operations with {} answers; none of them is \
                 taken",
                answers.len()
            ));
            failed(stats, n, &e);
            vec![Err(e); n]
        }
        Err(e) => {
            failed(stats, n, &e);
            vec![Err(e); n]
        }
    };
    for (waiter, answer) in waiters.into_iter().zip(answers) {
        // A caller that went away needs no answer.
        let _ = waiter.send(answer);
    }
}

fn failed(stats: &BatchStats, n: usize, e: &BankError) {
    stats.failed_batches.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(ops = n, error = %e, "a batch call to the bank failed; each of its operations gets the error");
}

fn panicked(payload: Box<dyn std::any::Any + Send>) -> BankError {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into());
    BankError::Unavailable(format!("the bank port panicked in a batch call: {what}"))
}
