//! The durable journal alone: appends acknowledged after the group-commit flush.
//!
//! - `journal/append_flush_1`: one entry at a time, each awaited (a flush per entry).
//! - `journal/append_flush_256`: 256 appends in flight; the writer batches them.
//!
//! Run: `cargo bench --bench journal`. Results: BENCHMARKS.md.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use onecard_engine::journal::{Journal, JournalConfig};
use onecard_engine::ledger::{consumer_opened_event, Entry, LedgerState};
use onecard_engine::{Amount, RulesConfig};

/// An entry of a typical size: a settlement-sized event with postings.
fn entry(n: u64) -> Entry {
    let ev = consumer_opened_event(
        &format!("consumer-{n}"),
        Amount::from_cents(100_000),
        &format!("bank-{n}"),
        Amount::from_cents(500_000),
        Some(format!("0123456789abcdef-{n}")),
    );
    Entry::new(n, vec![ev])
}

fn journal_benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    // Snapshots off for this bench: the snapshot thread would replay these synthetic entries.
    let cfg = JournalConfig {
        snapshot_every_entries: u64::MAX,
        ..JournalConfig::default()
    };
    let (journal, _) =
        Journal::open(dir.path(), LedgerState::new(RulesConfig::default()), cfg).unwrap();
    let handle = journal.handle();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut n = 0u64;
    let mut group = c.benchmark_group("journal");
    group.measurement_time(Duration::from_secs(8));
    group.throughput(Throughput::Elements(1));
    group.bench_function("append_flush_1", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    n += 1;
                    handle.append(&entry(n)).await.unwrap();
                }
                start.elapsed()
            })
        })
    });
    group.throughput(Throughput::Elements(256));
    group.bench_function("append_flush_256", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let all: Vec<_> = (0..256)
                        .map(|_| {
                            n += 1;
                            handle.append(&entry(n))
                        })
                        .collect();
                    for r in futures::future::join_all(all).await {
                        r.unwrap();
                    }
                }
                start.elapsed()
            })
        })
    });
    group.finish();
    let stats = handle.stats();
    eprintln!(
        "journal: {} flushes, {} entries",
        stats.flushes.load(std::sync::atomic::Ordering::Relaxed),
        stats.entries.load(std::sync::atomic::Ordering::Relaxed)
    );
    drop(handle);
    journal.close().unwrap();
}

criterion_group!(benches, journal_benches);
criterion_main!(benches);
