//! The upper layer's records on the engine's journal (`onecard_engine::records`), against a
//! reference model (a `BTreeMap`): random commits of puts and removes under a few prefixes,
//! with checkpoints every few keys (so that reads and scans cross the overlay's active and
//! sealed layers and sled), reads and prefix scans from random starts after every commit, and
//! the engine closed and reopened, or its data directory copied while it runs (a crash: the
//! view first, then the log), at random points. `verify` passes on every copy.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use onecard_engine::engine::EngineConfig;
use onecard_engine::journal::JournalConfig;
use onecard_engine::records::RecordWrite;
use onecard_engine::{Engine, SimBank, SimBankPort};
use proptest::prelude::*;

mod crash_copy;
use crash_copy::crash_copy;

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

fn config(checkpoint_max_keys: usize) -> EngineConfig {
    EngineConfig {
        arbiters: 1,
        journal: JournalConfig {
            checkpoint_interval_ms: 5,
            checkpoint_max_keys,
            segment_bytes: 16 * 1024,
            ..JournalConfig::default()
        },
        ..EngineConfig::default()
    }
}

async fn open(dir: &Path, checkpoint_max_keys: usize) -> Engine {
    let sim = SimBank::open(dir).unwrap();
    Engine::open(dir, config(checkpoint_max_keys), Arc::new(SimBankPort(sim)))
        .await
        .unwrap()
}

#[derive(Debug, Clone)]
enum Step {
    /// One commit: (prefix, key number, value or removal).
    Commit(Vec<(u8, u16, Option<u16>)>),
    Reopen,
    Crash,
}

fn key(prefix: u8, n: u16) -> Vec<u8> {
    // Prefixes that are prefixes of each other's keys: "a/", "a/b" and "b/".
    let p: &[u8] = match prefix % 3 {
        0 => b"a/",
        1 => b"a/b",
        _ => b"b/",
    };
    let mut k = p.to_vec();
    k.extend_from_slice(format!("{n:05}").as_bytes());
    k
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        12 => prop::collection::vec((0u8..3, 0u16..400, prop::option::weighted(0.8, any::<u16>())), 1..40)
            .prop_map(Step::Commit),
        1 => Just(Step::Reopen),
        1 => Just(Step::Crash),
    ]
}

fn check(engine: &Engine, model: &Model, probe: u16) {
    let records = engine.records();
    for p in [b"a/".as_slice(), b"a/b", b"b/", b""] {
        let want: Vec<(Vec<u8>, Vec<u8>)> = model
            .iter()
            .filter(|(k, _)| k.starts_with(p))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let got: Vec<(Vec<u8>, Vec<u8>)> = records.scan(p).map(|kv| kv.unwrap()).collect();
        assert_eq!(got, want, "scan of {:?}", String::from_utf8_lossy(p));
        // From a start inside the range.
        let start = key(u8::from(p == b"a/b"), probe % 400);
        if start.starts_with(p) {
            let want_from: Vec<_> = want.iter().filter(|(k, _)| *k >= start).cloned().collect();
            let got_from: Vec<_> = records.scan_from(p, &start).map(|kv| kv.unwrap()).collect();
            assert_eq!(got_from, want_from);
        }
    }
    for n in [probe % 400, (probe / 3) % 400] {
        for prefix in 0..3 {
            let k = key(prefix, n);
            assert_eq!(records.get(&k).unwrap(), model.get(&k).cloned());
        }
    }
}

fn run(steps: Vec<Step>, checkpoint_max_keys: usize, probe: u16) {
    actix_rt::System::new().block_on(async {
        let mut dirs = vec![tempfile::tempdir().unwrap()];
        let mut engine = open(dirs[0].path(), checkpoint_max_keys).await;
        let mut model = Model::new();
        for (i, s) in steps.into_iter().enumerate() {
            match s {
                Step::Commit(writes) => {
                    let writes: Vec<RecordWrite> = writes
                        .into_iter()
                        .map(|(p, n, v)| {
                            let k = key(p, n);
                            match v {
                                Some(v) => {
                                    let v = format!("v{v}").into_bytes();
                                    model.insert(k.clone(), v.clone());
                                    RecordWrite::Put(k, v)
                                }
                                None => {
                                    model.remove(&k);
                                    RecordWrite::Remove(k)
                                }
                            }
                        })
                        .collect();
                    engine.records().commit(writes).await.unwrap();
                }
                Step::Reopen => {
                    engine.close().await.unwrap();
                    engine = open(dirs.last().unwrap().path(), checkpoint_max_keys).await;
                }
                Step::Crash => {
                    let copy = tempfile::tempdir().unwrap();
                    crash_copy(dirs.last().unwrap().path(), copy.path());
                    engine.close().await.unwrap();
                    onecard_engine::verify::verify(copy.path()).expect("verify passes on the copy");
                    engine = open(copy.path(), checkpoint_max_keys).await;
                    dirs.push(copy);
                }
            }
            check(&engine, &model, probe.wrapping_add(i as u16));
        }
        engine.close().await.unwrap();
        onecard_engine::verify::verify(dirs.last().unwrap().path()).expect("verify passes");
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn records_read_back_as_the_model_says_across_checkpoints_reopenings_and_crashes(
        steps in prop::collection::vec(step(), 1..40),
        checkpoint_max_keys in prop_oneof![Just(1usize), Just(7), Just(100_000)],
        probe in any::<u16>(),
    ) {
        run(steps, checkpoint_max_keys, probe);
    }
}

/// A scan longer than the overlay's piece (256 keys) in both the sealed and the active layer
/// and in sled, with removals hiding sled's keys, returns every key once, in order.
#[test]
fn a_long_scan_merges_every_layer_in_order() {
    let mut steps = Vec::new();
    for round in 0..4u16 {
        let writes = (0..400u16)
            .filter(|n| n % 4 == round)
            .map(|n| (0u8, n, Some(n + round)))
            .collect();
        steps.push(Step::Commit(writes));
    }
    steps.push(Step::Commit(
        (0..400u16)
            .filter(|n| n % 5 == 0)
            .map(|n| (0u8, n, None))
            .collect(),
    ));
    steps.push(Step::Reopen);
    steps.push(Step::Commit(
        (0..400u16).map(|n| (1u8, n, Some(n))).collect(),
    ));
    run(steps.clone(), 100_000, 7);
    run(steps.clone(), 150, 7);
    run(steps, 1, 7);
}
