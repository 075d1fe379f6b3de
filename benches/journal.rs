//! The write-ahead log alone, then the journal on it: appends acknowledged after the sync.
//!
//! - `log/append_sync_1`: one 256-byte record appended and fdatasync'ed at a time.
//! - `log/append_sync_4096`: 4,096 records of 256 bytes per fdatasync (a full group commit).
//! - `journal/append_flush_1`: one entry at a time through the group-commit writer, each
//!   awaited (a sync per entry), with its view writes.
//! - `journal/append_flush_256`: 256 appends in flight; the writer batches them.
//!
//! Run: `cargo bench --bench journal`. Results: BENCHMARKS.md.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use onecard_engine::journal::{Journal, JournalConfig};
use onecard_engine::ledger::{consumer_opened_event, ConsumerState, Entry};
use onecard_engine::view::{self, ViewWrite};
use onecard_engine::Amount;
use onecard_storage::wal::{Wal, WalConfig};

/// An entry of a typical size (a settlement-sized event with postings) and the view's writes
/// that come with it (a consumer record and a bank key).
fn entry(n: u64) -> (Entry, Vec<ViewWrite>) {
    let ev = consumer_opened_event(
        &format!("consumer-{n}"),
        Amount::from_cents(100_000),
        &format!("bank-{n}"),
        Amount::from_cents(500_000),
        Some(format!("0123456789abcdef-{n}")),
    );
    let mut c = ConsumerState::new(
        format!("consumer-{n}"),
        Amount::from_cents(100_000),
        format!("bank-{n}"),
    );
    c.apply(&ev, n).expect("applies");
    (Entry::new(n, vec![ev]), view::opened_consumer_writes(&c))
}

fn log_benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), WalConfig::default(), None).unwrap();
    let record = vec![0x5a_u8; 256];
    let mut group = c.benchmark_group("log");
    group.measurement_time(Duration::from_secs(8));
    group.throughput(Throughput::Elements(1));
    group.bench_function("append_sync_1", |b| {
        b.iter(|| {
            wal.append(&record).unwrap();
            wal.sync().unwrap();
        })
    });
    group.throughput(Throughput::Elements(4096));
    group.bench_function("append_sync_4096", |b| {
        b.iter(|| {
            for _ in 0..4096 {
                wal.append(&record).unwrap();
            }
            wal.sync().unwrap();
        })
    });
    group.finish();
}

fn journal_benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open(dir.path(), JournalConfig::default()).unwrap();
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
                    let (e, w) = entry(n);
                    handle.append(&e, w).await.unwrap();
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
                            let (e, w) = entry(n);
                            handle.append(&e, w)
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

criterion_group!(benches, log_benches, journal_benches);
criterion_main!(benches);
