//! What a checkpoint of a million consumer records costs in sled, written three ways: as
//! random updates of their keys (what the view's checkpointer does today), as a fresh copy of
//! every key in key order, and as the same records packed into 64 KiB values in key order.
//! The measurement behind BENCHMARKS.md's "A checkpoint whose writes never read" (issue 10):
//!
//!     cargo run --release --example sled_write_shapes -- DIR
//!
//! DIR is removed and created again. About a minute and 1 GB of disk. Prints CPU seconds
//! (from /proc/self/stat: every thread, sled's own included) and wall time for each shape.

use std::time::Instant;

const CONSUMERS: u64 = 1_000_000;
const CLOSED_ORDERS: u64 = 2_000_000;
/// About a consumer record's size without open orders.
const RECORD_BYTES: usize = 150;
/// Random updates, in ten sorted batches (a checkpoint each, as the checkpointer sorts).
const UPDATES: u64 = 360_000;
const BLOB_BYTES: usize = 64 << 10;

fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let after_name = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn consumer_key(n: u64) -> Vec<u8> {
    format!("c{n}").into_bytes()
}

/// Runs `f`, then prints its CPU and wall time under `what`; returns the CPU seconds.
fn measured(what: &str, f: impl FnOnce()) -> f64 {
    let (cpu, wall) = (cpu_secs(), Instant::now());
    f();
    let cpu = cpu_secs() - cpu;
    println!(
        "{what}: {cpu:.2} s CPU, {:.1} s wall",
        wall.elapsed().as_secs_f64()
    );
    cpu
}

fn main() -> Result<(), sled::Error> {
    let Some(dir) = std::env::args().nth(1) else {
        eprintln!("usage: sled_write_shapes DIR");
        std::process::exit(2);
    };
    let _ = std::fs::remove_dir_all(&dir);
    // The view's settings (engine/src/journal.rs): 64 MiB of cache, high throughput.
    let db = sled::Config::new()
        .path(&dir)
        .cache_capacity(64 << 20)
        .mode(sled::Mode::HighThroughput)
        .open()?;
    let record = vec![7u8; RECORD_BYTES];
    let view = db.open_tree("view")?;
    measured("fill: 1M consumer records and 2M closed orders", || {
        for n in 0..CONSUMERS {
            view.insert(consumer_key(n), record.as_slice())
                .expect("insert");
        }
        for n in 0..CLOSED_ORDERS {
            view.insert(format!("d{n}").into_bytes(), record.as_slice())
                .expect("insert");
        }
        db.flush().expect("flush");
    });

    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut random = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let cpu = measured("(a) 360,000 random updates in ten sorted batches", || {
        for _ in 0..10 {
            let mut batch: Vec<Vec<u8>> = (0..UPDATES / 10)
                .map(|_| consumer_key(random() % CONSUMERS))
                .collect();
            batch.sort_unstable();
            for k in batch {
                view.insert(k, record.as_slice()).expect("insert");
            }
            db.flush().expect("flush");
        }
    });
    println!("    {:.2} µs of CPU per update", cpu * 1e6 / UPDATES as f64);

    let mut keys: Vec<Vec<u8>> = (0..CONSUMERS).map(consumer_key).collect();
    keys.sort_unstable();
    let copy = db.open_tree("copy")?;
    let cpu = measured("(b) every record once, in key order, a key each", || {
        for k in &keys {
            copy.insert(k.as_slice(), record.as_slice())
                .expect("insert");
        }
        db.flush().expect("flush");
    });
    println!(
        "    {:.2} µs of CPU per record",
        cpu * 1e6 / CONSUMERS as f64
    );

    let blobs = db.open_tree("blobs")?;
    let mut count = 0u64;
    let cpu = measured(
        "(c) every record once, in key order, in 64 KiB values",
        || {
            let mut blob = Vec::with_capacity(BLOB_BYTES + 1024);
            for k in &keys {
                for part in [k.as_slice(), record.as_slice()] {
                    let len = u16::try_from(part.len()).expect("short");
                    blob.extend_from_slice(&len.to_le_bytes());
                    blob.extend_from_slice(part);
                }
                if blob.len() >= BLOB_BYTES {
                    blobs
                        .insert(count.to_be_bytes(), blob.as_slice())
                        .expect("insert");
                    count += 1;
                    blob.clear();
                }
            }
            blobs
                .insert(count.to_be_bytes(), blob.as_slice())
                .expect("insert");
            count += 1;
            db.flush().expect("flush");
        },
    );
    println!(
        "    {count} values; {:.2} µs of CPU per record",
        cpu * 1e6 / CONSUMERS as f64
    );
    Ok(())
}
