//! Order lifecycles through the real engine: per-account actors, the group-commit journal on
//! the write-ahead log (every acknowledged command synced), the view checkpointed behind it,
//! and the simulated bank (its side of a settlement durable in the same record).
//!
//! - `lifecycle/sequential`: one order placed, then settled on receipt (with the top-up back
//!   to the cap), waiting for each acknowledgement: the latency of a whole lifecycle.
//! - `lifecycle/concurrent_256`: 256 consumers each run one lifecycle at the same time: the
//!   throughput when group commit has company.
//! - `ledger/place_and_settle_pure`: the same rules on the pure ledger alone, no I/O.
//! - `actor/round_trip`: a message to one (resident) consumer actor and its answer, through the
//!   engine's router, no journal (`Engine::touch`).
//!
//! Run: `cargo bench --bench order_lifecycle`. Results and machine: BENCHMARKS.md.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use onecard_engine::engine::{EngineConfig, OpenConsumer, PlaceOrder};
use onecard_engine::ledger::{consumer_opened_event, ConsumerState, PlaceDecision};
use onecard_engine::{Amount, Engine, Outcome, Release, RulesConfig, SimBank, SimBankPort};
use serde_json::json;

const CONSUMERS: usize = 256;

struct Node {
    engine: Engine,
    _bank: Arc<SimBank>,
    _dir: tempfile::TempDir,
}

async fn node() -> Node {
    let dir = tempfile::tempdir().expect("temp dir");
    let bank = SimBank::open(dir.path()).expect("bank");
    let mut cfg = EngineConfig::default();
    if let Ok(n) = std::env::var("BENCH_ARBITERS") {
        cfg.arbiters = n.parse().expect("BENCH_ARBITERS is a number");
    }
    if std::env::var("BENCH_NO_TOPUP").is_ok() {
        cfg.rules.topup_threshold = Amount::ZERO;
    }
    let engine = Engine::open(dir.path(), cfg, Arc::new(SimBankPort(bank.clone())))
        .await
        .expect("engine");
    engine
        .open_merchant("shop", None, 0)
        .await
        .unwrap()
        .unwrap();
    for i in 0..CONSUMERS {
        let acct = format!("bank-{i}");
        bank.open_account(&acct, Amount::parse("1000000000.00").unwrap())
            .unwrap();
        let req = OpenConsumer {
            consumer: format!("c{i}"),
            credit_limit: "1000000.00".into(),
            bank: acct,
            wallet: "5000.00".into(),
        };
        engine.open_consumer(req, 0).await.unwrap().unwrap();
    }
    Node {
        engine,
        _bank: bank,
        _dir: dir,
    }
}

async fn lifecycle(engine: &Engine, consumer: usize, n: u64) {
    let id = format!("o-{consumer}-{n}");
    let req = PlaceOrder {
        id: id.clone(),
        consumer: format!("c{consumer}"),
        merchant: "shop".into(),
        amount: "12.34".into(),
        release: json!({"on": "receipt"}),
    };
    assert_eq!(
        engine.place_order(req, 1).await.unwrap(),
        Ok(Outcome::Accepted)
    );
    assert_eq!(
        engine.confirm_receipt(&id, true, 1).await.unwrap(),
        Ok(Outcome::Settled)
    );
}

fn engine_benches(c: &mut Criterion) {
    let system = actix_rt::System::new();
    let node = system.block_on(node());
    let counter = AtomicU64::new(0);
    let mut group = c.benchmark_group("lifecycle");
    group.measurement_time(Duration::from_secs(10));

    group.throughput(Throughput::Elements(1));
    group.bench_function("sequential", |b| {
        b.iter_custom(|iters| {
            system.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    lifecycle(&node.engine, 0, n).await;
                }
                start.elapsed()
            })
        })
    });

    group.throughput(Throughput::Elements(CONSUMERS as u64));
    group.sample_size(20);
    group.bench_function("concurrent_256", |b| {
        b.iter_custom(|iters| {
            system.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    let all = (0..CONSUMERS).map(|c| lifecycle(&node.engine, c, n));
                    futures::future::join_all(all).await;
                }
                start.elapsed()
            })
        })
    });
    group.finish();

    // An actor round trip: a query to a consumer with no orders (its state is small), sent
    // from the System thread to an arbiter and answered, no journal involved.
    let mut group = c.benchmark_group("actor");
    group.throughput(Throughput::Elements(1));
    system.block_on(async {
        node._bank.open_account("idle-bank", Amount::ZERO).unwrap();
        let req = OpenConsumer {
            consumer: "idle".into(),
            credit_limit: "0.00".into(),
            bank: "idle-bank".into(),
            wallet: "0.00".into(),
        };
        node.engine.open_consumer(req, 0).await.unwrap().unwrap();
    });
    group.bench_function("round_trip", |b| {
        b.iter_custom(|iters| {
            system.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    assert!(node.engine.touch("idle").await.unwrap());
                }
                start.elapsed()
            })
        })
    });
    group.finish();
    let stats = node.engine.journal_stats();
    let (records, entries) = (
        stats.records.load(Ordering::Relaxed),
        stats.entries.load(Ordering::Relaxed),
    );
    eprintln!(
        "journal: {records} records (= flushes), {entries} entries, {:.1} entries per flush, {:.0} µs per write+flush",
        entries as f64 / records.max(1) as f64,
        stats.write_micros.load(Ordering::Relaxed) as f64 / records.max(1) as f64
    );
    system.block_on(async move { node.engine.close().await.unwrap() });
}

fn ledger_benches(c: &mut Criterion) {
    let rules = RulesConfig::default();
    let mut consumer =
        ConsumerState::new("c".into(), Amount::parse("1000000000").unwrap(), "b".into());
    let open = consumer_opened_event("c", consumer.credit_limit, "b", rules.wallet_cap, None);
    consumer.apply(&open, 0).unwrap();
    let amount = Amount::parse("12.34").unwrap();
    let mut n = 0u64;
    let mut group = c.benchmark_group("ledger");
    group.throughput(Throughput::Elements(1));
    group.bench_function("place_and_settle_pure", |b| {
        b.iter(|| {
            n += 1;
            let id = format!("o{n}");
            assert_eq!(consumer.decide_place(amount, &rules), PlaceDecision::Accept);
            let placed = consumer.placed_event(
                &id,
                "m",
                amount,
                &Release::Receipt,
                Ok(Outcome::Accepted),
                false,
            );
            consumer.apply(&placed, 0).unwrap();
            let funding = consumer.funding(amount);
            let settled = consumer.settled_event(&id, "m", funding, None);
            consumer.apply(&settled, 0).unwrap();
            let top_up = consumer.topup_needed(&rules).unwrap();
            let ev = consumer.topped_up_event(top_up, "op".into());
            consumer.apply(&ev, 0).unwrap();
            // Keep the order book from growing without bound across iterations.
            consumer.orders.remove(&id);
        })
    });
    group.finish();
}

criterion_group!(benches, ledger_benches, engine_benches);
criterion_main!(benches);
