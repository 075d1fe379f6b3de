//! Batched bank calls: `BatchingBankPort` over a scripted bank (answers by a rule, calls that
//! fail, answer the wrong number of operations, panic or take their time), with real
//! concurrency from several threads; then the whole engine over a batching simulated bank.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use onecard_engine::bank::{
    AccountNames, BankAnswer, BankError, BankOp, BankRequest, BankResult, UnconfirmedOp,
};
use onecard_engine::bank_batch::{BatchConfig, BatchingBankPort};
use onecard_engine::engine::{EngineConfig, OpenConsumer, PlaceOrder, RefundRequest};
use onecard_engine::journal::JournalHandle;
use onecard_engine::{Amount, BankPort, Engine, OrderState, Outcome, SimBank, SimBankPort};
use parking_lot::Mutex;
use serde_json::json;

/// What the scripted bank does with its calls, by call number (from 0).
#[derive(Clone, Default)]
struct Script {
    /// How long every batch call takes.
    delay: Duration,
    /// These calls fail as a whole.
    fail: HashSet<usize>,
    /// These calls answer this many answers more (or fewer) than they got operations.
    miscount: HashMap<usize, isize>,
    /// These calls panic when called; these others while they run.
    panic_at_call: HashSet<usize>,
    panic_in_call: HashSet<usize>,
}

/// A bank reached only in batches: it records every call (the ids in it) and answers each
/// operation by [`rule`].
#[derive(Default)]
struct ScriptedBank {
    script: Mutex<Script>,
    calls: Mutex<Vec<Vec<String>>>,
    /// Calls of `debit` or `credit` (the batching port must make none).
    singles: AtomicUsize,
    in_flight: Arc<AtomicUsize>,
    most_in_flight: AtomicUsize,
    /// The calls that must pass straight through, by name.
    passed: Mutex<Vec<String>>,
}

/// The number in an operation's id (`op-17` → 17).
fn number(op: &BankOp) -> usize {
    op.id.rsplit('-').next().unwrap().parse().unwrap()
}

/// The answer an operation must get, telling its id and kind apart where it can.
fn rule(r: &BankRequest) -> BankResult {
    let op = r.op();
    let n = number(op);
    if n.is_multiple_of(5) {
        Err(BankError::UnknownAccount(op.account.clone()))
    } else if n.is_multiple_of(3) {
        Ok(BankAnswer::Refused(format!("{:?} {}", r.kind(), op.id)))
    } else {
        Ok(BankAnswer::Done)
    }
}

fn request(n: usize) -> BankRequest {
    let op = BankOp {
        id: format!("op-{n}"),
        account: format!("acct-{n}"),
        amount: Amount::from_cents(n as i64 + 1),
    };
    if n.is_multiple_of(4) {
        BankRequest::Credit(op)
    } else {
        BankRequest::Debit(op)
    }
}

impl ScriptedBank {
    fn new(script: Script) -> Arc<ScriptedBank> {
        Arc::new(ScriptedBank {
            script: Mutex::new(script),
            ..ScriptedBank::default()
        })
    }

    fn calls(&self) -> Vec<Vec<String>> {
        self.calls.lock().clone()
    }

    /// The call (number) that carried operation `id`; exactly one did.
    fn call_of(&self, id: &str) -> usize {
        let calls = self.calls();
        let found: Vec<usize> = (0..calls.len())
            .filter(|&i| calls[i].iter().any(|x| x == id))
            .collect();
        assert_eq!(found.len(), 1, "{id} was in calls {found:?}");
        found[0]
    }
}

impl BankPort for ScriptedBank {
    fn debit(&self, _op: BankOp) -> BoxFuture<'static, Result<BankAnswer, BankError>> {
        self.singles.fetch_add(1, Ordering::SeqCst);
        futures::future::ready(Err(BankError::Unavailable("single debit".into()))).boxed()
    }

    fn credit(&self, _op: BankOp) -> BoxFuture<'static, Result<BankAnswer, BankError>> {
        self.singles.fetch_add(1, Ordering::SeqCst);
        futures::future::ready(Err(BankError::Unavailable("single credit".into()))).boxed()
    }

    fn perform_batch(
        &self,
        requests: Vec<BankRequest>,
    ) -> BoxFuture<'static, Result<Vec<BankResult>, BankError>> {
        let index = {
            let mut calls = self.calls.lock();
            calls.push(requests.iter().map(|r| r.op().id.clone()).collect());
            calls.len() - 1
        };
        let script = self.script.lock().clone();
        if script.panic_at_call.contains(&index) {
            panic!("the scripted bank panics at call {index}");
        }
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_in_flight.fetch_max(now, Ordering::SeqCst);
        let mut answers: Vec<BankResult> = requests.iter().map(rule).collect();
        // Counts the call as finished however it ends (also when it panics).
        struct Finished(Arc<AtomicUsize>);
        impl Drop for Finished {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let finished = Finished(self.in_flight.clone());
        async move {
            let _finished = finished;
            if !script.delay.is_zero() {
                tokio::time::sleep(script.delay).await;
            }
            if script.panic_in_call.contains(&index) {
                panic!("the scripted bank panics in call {index}");
            }
            if script.fail.contains(&index) {
                return Err(BankError::Unavailable(format!("call {index} failed")));
            }
            match script.miscount.get(&index) {
                Some(&d) if d < 0 => answers.truncate(answers.len().saturating_sub((-d) as usize)),
                Some(&d) => answers.extend((0..d).map(|_| Ok(BankAnswer::Done))),
                None => {}
            }
            Ok(answers)
        }
        .boxed()
    }

    fn unconfirmed(&self) -> Result<Vec<UnconfirmedOp>, BankError> {
        self.passed.lock().push("unconfirmed".into());
        Ok(vec![UnconfirmedOp {
            id: "u-1".into(),
            kind: onecard_engine::bank::BankOpKind::Debit,
            account: "acct".into(),
            amount: Amount::from_cents(1),
        }])
    }

    fn confirm(&self, ids: &[String]) {
        self.passed.lock().push(format!("confirm {ids:?}"));
    }

    fn reverse(&self, id: &str) -> Result<(), BankError> {
        self.passed.lock().push(format!("reverse {id}"));
        Err(BankError::Storage("cannot reverse".into()))
    }

    fn attach(&self, _journal: &JournalHandle, _names: AccountNames) -> Result<bool, BankError> {
        self.passed.lock().push("attach".into());
        Ok(true)
    }

    fn add_moved(&self, moved: &HashMap<String, Amount>) -> Result<(), BankError> {
        self.passed
            .lock()
            .push(format!("add_moved {}", moved.len()));
        Ok(())
    }
}

fn batching(inner: &Arc<ScriptedBank>, cfg: BatchConfig) -> Arc<BatchingBankPort> {
    Arc::new(BatchingBankPort::new(inner.clone(), cfg).unwrap())
}

fn call(port: &BatchingBankPort, r: &BankRequest) -> BoxFuture<'static, BankResult> {
    match r.clone() {
        BankRequest::Debit(op) => port.debit(op),
        BankRequest::Credit(op) => port.credit(op),
    }
}

/// Runs `f` on a current-thread runtime (as an arbiter would), failing instead of hanging.
fn run<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            tokio::time::timeout(Duration::from_secs(60), f)
                .await
                .expect("hung")
        })
}

/// Waits until the bank has seen `n` calls.
async fn calls_reach(bank: &ScriptedBank, n: usize) {
    while bank.calls.lock().len() < n {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

#[test]
fn concurrent_operations_from_many_threads_go_out_in_few_batches_each_with_its_own_answer() {
    let bank = ScriptedBank::new(Script {
        delay: Duration::from_millis(1),
        ..Script::default()
    });
    let port = batching(
        &bank,
        BatchConfig {
            batch_max: 64,
            ..BatchConfig::default()
        },
    );
    const THREADS: usize = 4;
    const OPS: usize = 500;
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let port = &port;
            s.spawn(move || {
                run(async {
                    let mine: Vec<BankRequest> =
                        (0..OPS).filter(|n| n % THREADS == t).map(request).collect();
                    let answers =
                        futures::future::join_all(mine.iter().map(|r| call(port, r))).await;
                    for (r, a) in mine.iter().zip(answers) {
                        assert_eq!(a, rule(r), "{r:?}");
                    }
                })
            });
        }
    });
    let calls = bank.calls();
    let sizes: Vec<usize> = calls.iter().map(Vec::len).collect();
    assert_eq!(
        sizes.iter().sum::<usize>(),
        OPS,
        "every operation sent once"
    );
    let ids: HashSet<&String> = calls.iter().flatten().collect();
    assert_eq!(ids.len(), OPS, "no operation sent twice");
    assert!(
        calls.len() < OPS / 4,
        "{} batch calls for {OPS} operations: {sizes:?}",
        calls.len()
    );
    assert!(sizes.iter().all(|&n| n <= 64), "batch_max kept: {sizes:?}");
    assert_eq!(bank.singles.load(Ordering::SeqCst), 0);
    assert_eq!(
        bank.most_in_flight.load(Ordering::SeqCst),
        1,
        "one batch call at a time"
    );
    let stats = port.stats();
    assert_eq!(stats.batches.load(Ordering::Relaxed) as usize, calls.len());
    assert_eq!(stats.ops.load(Ordering::Relaxed) as usize, OPS);
    assert_eq!(
        stats.largest_batch.load(Ordering::Relaxed) as usize,
        *sizes.iter().max().unwrap()
    );
    assert_eq!(stats.failed_batches.load(Ordering::Relaxed), 0);
}

/// Sends `first` alone, then `rounds` of operations (`from..to`) each while the call before is in flight,
/// then `last` once everything before is answered. Returns every operation with its answer.
async fn in_rounds(
    port: &BatchingBankPort,
    bank: &ScriptedBank,
    rounds: &[(usize, usize)],
    last: std::ops::Range<usize>,
) -> Vec<(BankRequest, BankResult)> {
    let first = request(1);
    let mut pending = vec![(first.clone(), call(port, &first))];
    calls_reach(bank, 1).await;
    let mut out = vec![];
    let mut calls = 1;
    for &(from, to) in rounds {
        for n in from..to {
            let r = request(n);
            pending.push((r.clone(), call(port, &r)));
        }
        // The round queued while the call before was in flight: it is the next call.
        calls += 1;
        calls_reach(bank, calls).await;
    }
    for (r, f) in pending {
        out.push((r, f.await));
    }
    let last: Vec<BankRequest> = last.map(request).collect();
    let answers = futures::future::join_all(last.iter().map(|r| call(port, r))).await;
    out.extend(last.into_iter().zip(answers));
    out
}

#[test]
fn a_failed_batch_call_fails_exactly_its_operations_and_later_batches_work() {
    let bank = ScriptedBank::new(Script {
        delay: Duration::from_millis(20),
        fail: HashSet::from([1]),
        ..Script::default()
    });
    let port = batching(&bank, BatchConfig::default());
    let answers = run(in_rounds(&port, &bank, &[(2, 32)], 32..42));
    let mut failed = 0;
    for (r, a) in &answers {
        if bank.call_of(&r.op().id) == 1 {
            assert_eq!(a, &Err(BankError::Unavailable("call 1 failed".into())));
            failed += 1;
        } else {
            assert_eq!(a, &rule(r), "{r:?}");
        }
    }
    assert!(failed > 0, "call 1 carried operations");
    let calls = bank.calls();
    assert!(calls.len() >= 3, "a batch after the failed one: {calls:?}");
    assert_eq!(port.stats().failed_batches.load(Ordering::Relaxed), 1);
}

#[test]
fn a_wrong_number_of_answers_is_a_fault_for_every_operation_of_the_batch() {
    let bank = ScriptedBank::new(Script {
        delay: Duration::from_millis(20),
        miscount: HashMap::from([(1, -1), (2, 1), (3, -1_000)]),
        ..Script::default()
    });
    let port = batching(&bank, BatchConfig::default());
    let answers = run(in_rounds(
        &port,
        &bank,
        &[(2, 22), (22, 42), (42, 52)],
        52..60,
    ));
    let calls = bank.calls();
    for (r, a) in &answers {
        let i = bank.call_of(&r.op().id);
        let n = calls[i].len();
        let got = match i {
            1 => n - 1,
            2 => n + 1,
            3 => 0,
            _ => {
                assert_eq!(a, &rule(r), "{r:?}");
                continue;
            }
        };
        let expected = format!("the bank answered a batch of {n} operations with {got} answers");
        match a {
            Err(BankError::Protocol(m)) => assert!(m.contains(&expected), "{m}"),
            other => panic!("{r:?} in call {i}: {other:?}"),
        }
    }
    assert!(calls.len() >= 5, "{calls:?}");
    assert_eq!(port.stats().failed_batches.load(Ordering::Relaxed), 3);
}

#[test]
fn a_bank_port_that_panics_fails_its_batch_and_the_next_batch_goes_out() {
    let bank = ScriptedBank::new(Script {
        delay: Duration::from_millis(20),
        panic_at_call: HashSet::from([1]),
        panic_in_call: HashSet::from([2]),
        ..Script::default()
    });
    let port = batching(&bank, BatchConfig::default());
    let answers = run(in_rounds(&port, &bank, &[(2, 12), (12, 22)], 22..30));
    for (r, a) in &answers {
        let i = bank.call_of(&r.op().id);
        if i == 1 || i == 2 {
            match a {
                Err(BankError::Unavailable(m)) => {
                    assert!(m.contains("panicked") && m.contains("scripted bank"), "{m}")
                }
                other => panic!("{r:?} in call {i}: {other:?}"),
            }
        } else {
            assert_eq!(a, &rule(r), "{r:?}");
        }
    }
    assert_eq!(port.stats().failed_batches.load(Ordering::Relaxed), 2);
}

#[test]
fn a_batch_window_gathers_operations_and_batch_max_closes_the_batch() {
    let bank = ScriptedBank::new(Script::default());
    let port = batching(
        &bank,
        BatchConfig {
            batch_max: 10,
            batch_window: Duration::from_secs(1),
            queue_capacity: 4,
        },
    );
    run(async {
        // One at a time, 2 ms apart: the window holds each batch open until it is full (the
        // last one for the whole second), and the small queue is never full: the collector
        // takes every operation as it comes.
        let mut pending = vec![];
        for n in 1..=25 {
            pending.push(tokio::spawn(call(&port, &request(n))));
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        for (n, f) in (1..=25).zip(pending) {
            assert_eq!(f.await.unwrap(), rule(&request(n)));
        }
    });
    let sizes: Vec<usize> = bank.calls().iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![10, 10, 5]);

    // A window too long to add to the clock: a batch waits until it is full, and panics on
    // nothing. A queue of one place (0 is taken as 1): the others wait for room.
    let bank = ScriptedBank::new(Script::default());
    let port = batching(
        &bank,
        BatchConfig {
            batch_max: 3,
            batch_window: Duration::MAX,
            queue_capacity: 0,
        },
    );
    run(async {
        let answers = futures::future::join_all((1..=6).map(|n| call(&port, &request(n)))).await;
        for (n, a) in (1..=6).zip(answers) {
            assert_eq!(a, rule(&request(n)));
        }
    });
    let sizes: Vec<usize> = bank.calls().iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![3, 3]);
}

#[test]
fn closing_answers_everyone_and_refuses_later_operations() {
    let bank = ScriptedBank::new(Script {
        delay: Duration::from_millis(50),
        ..Script::default()
    });
    let port = batching(
        &bank,
        BatchConfig {
            queue_capacity: 2,
            ..BatchConfig::default()
        },
    );
    run(async {
        let first = tokio::spawn(call(&port, &request(1)));
        calls_reach(&bank, 1).await;
        // Two fill the queue; three more wait for room.
        let rest: Vec<_> = (2..7)
            .map(|n| tokio::spawn(call(&port, &request(n))))
            .collect();
        tokio::task::yield_now().await;
        // While the first call is in flight.
        port.close();
        port.close();
        assert_eq!(first.await.unwrap(), rule(&request(1)));
        let mut sent = 0;
        for (n, h) in (2..7).zip(rest) {
            let a = h.await.unwrap();
            if bank
                .calls()
                .iter()
                .flatten()
                .any(|id| id == &request(n).op().id)
            {
                assert_eq!(a, rule(&request(n)), "queued before the close: still sent");
                sent += 1;
            } else {
                let e = a.unwrap_err();
                assert!(e.to_string().contains("closed"), "{e}");
            }
        }
        assert_eq!(sent, 2, "the two queued before the close");
        let late = port.debit(request(7).op().clone()).await.unwrap_err();
        assert!(late.to_string().contains("closed"), "{late}");
    });
}

#[test]
fn a_dropped_port_still_answers_what_was_queued() {
    let bank = ScriptedBank::new(Script {
        delay: Duration::from_millis(10),
        ..Script::default()
    });
    let port = BatchingBankPort::new(bank.clone(), BatchConfig::default()).unwrap();
    let pending: Vec<_> = (1..20).map(|n| call(&port, &request(n))).collect();
    drop(port);
    run(async {
        for (n, f) in (1..20).zip(pending) {
            assert_eq!(f.await, rule(&request(n)));
        }
    });
}

#[test]
fn everything_but_debit_and_credit_goes_straight_to_the_wrapped_port() {
    let bank = ScriptedBank::new(Script::default());
    let port = batching(&bank, BatchConfig::default());
    assert_eq!(port.unconfirmed().unwrap()[0].id, "u-1");
    port.confirm(&["a".into(), "b".into()]);
    assert_eq!(
        port.reverse("x"),
        Err(BankError::Storage("cannot reverse".into()))
    );
    port.add_moved(&HashMap::from([("a".into(), Amount::ZERO)]))
        .unwrap();
    assert_eq!(
        *bank.passed.lock(),
        vec![
            "unconfirmed".to_string(),
            "confirm [\"a\", \"b\"]".into(),
            "reverse x".into(),
            "add_moved 1".into()
        ]
    );
    // A batch given to the batching port goes out with the rest, each answered.
    let requests: Vec<BankRequest> = (1..8).map(request).collect();
    let answers = run(port.perform_batch(requests.clone())).unwrap();
    assert_eq!(answers, requests.iter().map(rule).collect::<Vec<_>>());
    assert_eq!(bank.singles.load(Ordering::SeqCst), 0);
}

// ---- The engine over a batching simulated bank ----

/// The simulated bank reached in batches only: it counts the calls and their sizes, and each
/// takes a millisecond, as a remote bank would take longer.
struct CountingSim {
    inner: SimBankPort,
    batches: Mutex<Vec<usize>>,
    singles: AtomicUsize,
}

impl BankPort for CountingSim {
    fn debit(&self, op: BankOp) -> BoxFuture<'static, Result<BankAnswer, BankError>> {
        self.singles.fetch_add(1, Ordering::SeqCst);
        self.inner.debit(op)
    }
    fn credit(&self, op: BankOp) -> BoxFuture<'static, Result<BankAnswer, BankError>> {
        self.singles.fetch_add(1, Ordering::SeqCst);
        self.inner.credit(op)
    }
    fn perform_batch(
        &self,
        requests: Vec<BankRequest>,
    ) -> BoxFuture<'static, Result<Vec<BankResult>, BankError>> {
        self.batches.lock().push(requests.len());
        let inner = self.inner.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            inner.perform_batch(requests).await
        }
        .boxed()
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

fn amount(s: &str) -> Amount {
    Amount::parse(s).unwrap()
}

async fn open_engine(
    dir: &std::path::Path,
) -> (
    Engine,
    Arc<SimBank>,
    Arc<CountingSim>,
    Arc<BatchingBankPort>,
) {
    let sim = SimBank::open(dir).unwrap();
    let counting = Arc::new(CountingSim {
        inner: SimBankPort(sim.clone()),
        batches: Mutex::new(vec![]),
        singles: AtomicUsize::new(0),
    });
    let port = Arc::new(BatchingBankPort::new(counting.clone(), BatchConfig::default()).unwrap());
    let cfg = EngineConfig {
        arbiters: 4,
        ..EngineConfig::default()
    };
    let engine = Engine::open(dir, cfg, port.clone()).await.unwrap();
    (engine, sim, counting, port)
}

#[test]
fn the_engine_over_a_batching_bank_settles_tops_up_and_refunds_with_fewer_bank_calls() {
    actix_rt::System::new().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let (engine, sim, counting, port) = open_engine(dir.path()).await;
        engine
            .open_merchant("shop", None, 0)
            .await
            .unwrap()
            .unwrap();
        const CONSUMERS: usize = 60;
        const ORDERS: usize = 5;
        // Every tenth consumer's bank refuses: its orders wait for funds.
        let refusing = |c: usize| c % 10 == 9;
        let mut opening_total = Amount::ZERO;
        for c in 0..CONSUMERS {
            let balance = amount("100000.00");
            sim.open_account(&format!("b{c}"), balance).unwrap();
            opening_total = opening_total.checked_add(balance).unwrap();
        }
        // Opened concurrently: the wallets are filled from the bank in batches too.
        let opens = (0..CONSUMERS).map(|c| {
            engine.open_consumer(
                OpenConsumer {
                    consumer: format!("c{c}"),
                    credit_limit: "100000".into(),
                    bank: format!("b{c}"),
                    wallet: if refusing(c) { "0" } else { "5000" }.into(),
                },
                0,
            )
        });
        for r in futures::future::join_all(opens).await {
            assert_eq!(r.unwrap(), Ok(Outcome::Ok));
        }
        for c in (0..CONSUMERS).filter(|&c| refusing(c)) {
            sim.set_refuse(&format!("b{c}"), true).unwrap();
        }

        // Every lifecycle at once: place, confirm (settle + top-up, or awaiting funds), and a
        // refund of every third settled order (the wallet is at the cap: all to the bank).
        let lifecycles = (0..CONSUMERS).flat_map(|c| (0..ORDERS).map(move |i| (c, i)));
        let runs = lifecycles.map(|(c, i)| {
            let engine = &engine;
            async move {
                let id = format!("o{c}-{i}");
                let price = Amount::from_cents(1_000 + (c * ORDERS + i) as i64);
                let placed = engine
                    .place_order(
                        PlaceOrder {
                            id: id.clone(),
                            consumer: format!("c{c}"),
                            merchant: "shop".into(),
                            amount: price.to_string(),
                            release: json!({"on": "receipt"}),
                        },
                        1,
                    )
                    .await
                    .unwrap();
                assert_eq!(placed, Ok(Outcome::Accepted), "{id}");
                let confirmed = engine.confirm_receipt(&id, true, 2).await.unwrap();
                if refusing(c) {
                    assert_eq!(confirmed, Ok(Outcome::AwaitingFunds), "{id}");
                    return (Amount::ZERO, false);
                }
                assert_eq!(confirmed, Ok(Outcome::Settled), "{id}");
                let refunded = i % 3 == 0;
                if refunded {
                    let r = engine
                        .refund(
                            RefundRequest {
                                id: format!("r{c}-{i}"),
                                order: id.clone(),
                                amount: "5.00".into(),
                            },
                            3,
                        )
                        .await
                        .unwrap();
                    assert_eq!(r, Ok(Outcome::Refunded), "{id}");
                }
                let kept = if refunded {
                    price.checked_sub(amount("5.00")).unwrap()
                } else {
                    price
                };
                (kept, refunded)
            }
        });
        let results = futures::future::join_all(runs).await;

        // Outcomes and balances.
        let merchant_expected = results
            .iter()
            .fold(Amount::ZERO, |s, (k, _)| s.checked_add(*k).unwrap());
        let shop = engine.merchant("shop").await.unwrap().unwrap();
        assert_eq!(shop.balance, merchant_expected);
        let mut wallets = Amount::ZERO;
        for c in 0..CONSUMERS {
            let state = engine.consumer(&format!("c{c}")).await.unwrap().unwrap();
            let expected = if refusing(c) { "0" } else { "5000" };
            assert_eq!(state.wallet, amount(expected), "c{c}: topped up to the cap");
            wallets = wallets.checked_add(state.wallet).unwrap();
            for i in 0..ORDERS {
                let o = engine.order(&format!("o{c}-{i}")).await.unwrap().unwrap();
                let expected = if refusing(c) {
                    OrderState::AwaitingFunds
                } else {
                    OrderState::Settled
                };
                assert_eq!(o.state, expected, "o{c}-{i}");
            }
        }
        // Money is conserved: what left the bank is in the wallets and with the merchant.
        let held = wallets.checked_add(shop.balance).unwrap();
        assert_eq!(sim.total().checked_add(held).unwrap(), opening_total);

        // Every bank operation went out in a batch, exactly once.
        let normal = (0..CONSUMERS).filter(|&c| !refusing(c)).count();
        let lifecycles_normal = normal * ORDERS;
        let refunds = results.iter().filter(|(_, r)| *r).count();
        let expected_ops = normal // wallets at opening
            + lifecycles_normal // top-ups after settling
            + refunds // refunds to the bank
            + (CONSUMERS - normal) * ORDERS; // refused debits
        let batches = counting.batches.lock().clone();
        assert_eq!(counting.singles.load(Ordering::SeqCst), 0);
        assert_eq!(batches.iter().sum::<usize>(), expected_ops);
        assert!(
            batches.len() * 4 < expected_ops,
            "{} bank calls for {expected_ops} operations: {batches:?}",
            batches.len()
        );
        assert_eq!(
            port.stats().batches.load(Ordering::Relaxed) as usize,
            batches.len()
        );

        // The journal holds it all, and a reopened engine sees the bank as it was.
        let live = engine.ledger_state().await.unwrap();
        let balances = sim.balances();
        engine.close().await.unwrap();
        port.close();
        let report = onecard_engine::verify::verify(dir.path()).unwrap();
        assert_eq!(live, report.state);
        let (engine, sim, counting, port) = open_engine(dir.path()).await;
        assert_eq!(sim.balances(), balances);
        assert_eq!(engine.recovery().bank_ops_reversed, 0);
        // Orders waiting for funds settle at the next tick once the bank pays.
        sim.set_refuse("b9", false).unwrap();
        engine.tick(4).await.unwrap().unwrap();
        for i in 0..ORDERS {
            let o = engine.order(&format!("o9-{i}")).await.unwrap().unwrap();
            assert_eq!(o.state, OrderState::Settled, "o9-{i}");
            let o = engine.order(&format!("o19-{i}")).await.unwrap().unwrap();
            assert_eq!(o.state, OrderState::AwaitingFunds, "o19-{i}");
        }
        assert!(!counting.batches.lock().is_empty());
        engine.close().await.unwrap();
        port.close();
    });
}
