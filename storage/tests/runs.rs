//! The sorted runs against their contract: a property test against a `BTreeMap` model (runs
//! written, merged by the policy and wholly, the store reopened, crashes that leave orphan
//! files), removals kept or dropped by merges, damage refused and never read as a value, a
//! scan that outlives the merge retiring its runs, and the background merger.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use onecard_storage::runs::{Merger, RunError, RunStore, BLOCK_BYTES};
use proptest::prelude::*;

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

/// The run format's footer: magic (8), four offsets (32), CRC32 (4), reserved (4).
const FOOTER_BYTES: u64 = 48;
/// The footer's bytes that mean something (the last four are reserved zeros).
const FOOTER_CHECKED_BYTES: u64 = 44;
/// A run of this many bytes or more is past the lowest merge tier (`TIER_BASE_BYTES`).
const TIER_BASE_BYTES: u64 = 4 << 20;
/// Runs of one tier side by side that the policy merges (`FAN_IN`).
const FAN_IN: usize = 6;

// ---------------------------------------------------------------------------------------------
// Opening, files and the model
// ---------------------------------------------------------------------------------------------

/// sled 0.34 may hold its file lock for a moment after the last handle is dropped: retry for
/// up to 2 s on "could not acquire lock", as the engine's `open_sled` does.
fn open_sled(path: &Path) -> sled::Db {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match sled::Config::new().path(path).open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("opening sled at {}: {e}", path.display()),
            Ok(db) => return db,
        }
    }
}

fn runs_dir(root: &Path) -> PathBuf {
    root.join("runs")
}

fn open_store(root: &Path) -> Result<RunStore, RunError> {
    RunStore::open(open_sled(&root.join("db")), &runs_dir(root))
}

fn run_name(id: u64) -> String {
    format!("{id:020}.run")
}

/// The `.run` files in the runs' directory, by id.
fn run_files(root: &Path) -> BTreeMap<u64, PathBuf> {
    fs::read_dir(runs_dir(root))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "run"))
        .map(|p| {
            let id = p
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("a run file with a bad name: {}", p.display()));
            (id, p)
        })
        .collect()
}

fn key(n: usize) -> Vec<u8> {
    format!("c{n}").into_bytes()
}

/// The property test's key space: the empty key, `c`, and `c0` … `c199` (which share prefixes:
/// `c1`, `c10`, `c100` …).
fn key_space() -> Vec<Vec<u8>> {
    let mut keys = vec![Vec::new(), b"c".to_vec()];
    keys.extend((0..200).map(key));
    keys
}

/// Keys never written, around and between the written ones.
const ABSENT: &[&[u8]] = &[
    b"\0",
    b"b",
    b"c00",
    b"c0\0",
    b"c1\xff",
    b"c1999",
    b"c200",
    b"c99\0",
    b"d",
    b"\xff\xff",
];

/// Where scans start: before everything, on keys, between keys, past the end.
const SCAN_STARTS: &[&[u8]] = &[b"", b"c", b"c15", b"c150\0", b"c5", b"c999", b"d"];

/// A value that fills a block of its own: `len` bytes of a pattern from `seed`.
fn big_value(seed: u8, len: usize) -> Vec<u8> {
    // Byte `i` is `seed + 7 i` (mod 256): a period of 256 bytes, copied (debug builds are slow
    // byte by byte).
    let period: Vec<u8> = (0..=255u8)
        .map(|i| seed.wrapping_add(i.wrapping_mul(7)))
        .collect();
    let mut v = Vec::with_capacity(len + 256);
    while v.len() < len {
        v.extend_from_slice(&period);
    }
    v.truncate(len);
    v
}

fn write(store: &RunStore, batch: &BTreeMap<Vec<u8>, Option<Vec<u8>>>) -> Result<(), RunError> {
    store.write_run(
        batch.iter().map(|(k, v)| (k.as_slice(), v.as_deref())),
        batch.len(),
    )
}

/// Writes `batch` as a run and applies it to the model.
fn write_both(store: &RunStore, model: &mut Model, batch: &BTreeMap<Vec<u8>, Option<Vec<u8>>>) {
    write(store, batch).unwrap();
    apply(model, batch);
}

fn apply(model: &mut Model, batch: &BTreeMap<Vec<u8>, Option<Vec<u8>>>) {
    for (k, v) in batch {
        match v {
            Some(v) => model.insert(k.clone(), v.clone()),
            None => model.remove(k),
        };
    }
}

fn model_from(model: &Model, start: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    model
        .range(start.to_vec()..)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// A short description of a value, for failure messages.
fn show(v: &Option<Vec<u8>>) -> String {
    match v {
        None => "None".into(),
        Some(v) => format!("Some({} bytes, {:02x?}…)", v.len(), &v[..v.len().min(8)]),
    }
}

/// Every key of the key space and the absent ones read as the model says; every scan start
/// yields exactly the model's range in order; the directory holds exactly the live runs.
fn check(store: &RunStore, root: &Path, model: &Model) -> Result<(), TestCaseError> {
    check_with(store, root, model, 0)
}

/// The filler: `z0000` …, values of 10 KiB, outside the model's key space and after it, in a
/// run past the lowest merge tier. Never changed.
fn filler_key(i: usize) -> Vec<u8> {
    format!("z{i:04}").into_bytes()
}

fn filler_value(i: usize) -> Vec<u8> {
    big_value(i as u8, 10 * 1024)
}

/// Filler entries enough to put their run past the lowest merge tier.
fn filler_len() -> usize {
    (TIER_BASE_BYTES as usize).div_ceil(10 * 1024) + 20
}

/// [`check`], beside the first `filler` filler keys (only the first and last are read; scans
/// stop at them).
fn check_with(
    store: &RunStore,
    root: &Path,
    model: &Model,
    filler: usize,
) -> Result<(), TestCaseError> {
    check_reads(store, model, filler)?;
    prop_assert_eq!(
        run_files(root).len(),
        store.stats().runs,
        "run files in the directory vs live runs"
    );
    Ok(())
}

/// [`check_with`] but for the directory (which may hold orphans, for a store opened to read).
fn check_reads(store: &RunStore, model: &Model, filler: usize) -> Result<(), TestCaseError> {
    if filler > 0 {
        for i in [0, filler - 1] {
            let got = ok(store.get(&filler_key(i)), "get a filler key")?;
            prop_assert!(got == Some(filler_value(i)), "filler key {} misread", i);
        }
        let got: Vec<_> = ok(
            store.scan_from(b"z").take(2).collect::<Result<Vec<_>, _>>(),
            "a scan of the filler",
        )?;
        prop_assert!(got[0] == (filler_key(0), filler_value(0)), "filler scan");
    }
    for k in key_space()
        .iter()
        .map(Vec::as_slice)
        .chain(ABSENT.iter().copied())
    {
        let got = ok(store.get(k), &format!("get {k:?}"))?;
        let want = model.get(k).cloned();
        prop_assert!(
            got == want,
            "get {:?}: {} but the model says {}",
            String::from_utf8_lossy(k),
            show(&got),
            show(&want)
        );
    }
    for start in SCAN_STARTS {
        let got: Vec<_> = ok(
            store
                .scan_from(start)
                .take_while(|r| r.as_ref().map_or(true, |(k, _)| k.as_slice() < &b"z"[..]))
                .collect::<Result<_, _>>(),
            &format!("scan {start:?}"),
        )?;
        let want = model_from(model, start);
        if got != want {
            let keys = |v: &[(Vec<u8>, Vec<u8>)]| {
                v.iter()
                    .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
                    .collect::<Vec<_>>()
            };
            prop_assert_eq!(keys(&got), keys(&want), "scan from {:?}: keys", start);
            return Err(TestCaseError::fail(format!(
                "scan from {start:?}: the keys agree, a value differs"
            )));
        }
    }
    let stats = store.stats();
    prop_assert!(
        stats.entries >= (model.len() + filler) as u64,
        "{} entries in the runs, {} live keys and {} filler keys",
        stats.entries,
        model.len(),
        filler
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 1. The property test against the model
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Orphan {
    /// A whole copy of a live run (a merge's result cut before its commit, or a source whose
    /// unlink a crash prevented).
    Copy,
    /// The first half of a live run (a run cut while being written).
    Half,
    /// A few bytes of nothing in particular.
    Garbage(Vec<u8>),
}

#[derive(Debug, Clone)]
enum Op {
    /// A run: keys by index into the key space, each a value or a removal; `undersized` gives
    /// the Bloom filter a count of 1 (more is allowed).
    Write {
        batch: BTreeMap<usize, Option<Vec<u8>>>,
        undersized: bool,
    },
    MergeOnce,
    MergeAll,
    Reopen,
    /// Dropped, an orphan planted in the runs' directory, reopened.
    Crash {
        orphan: Orphan,
        source: prop::sample::Index,
        id: prop::sample::Index,
    },
}

fn value_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        12 => prop::collection::vec(any::<u8>(), 0..300),
        1 => (any::<u8>(), 10_000..10_400usize).prop_map(|(s, n)| big_value(s, n)),
    ]
}

fn batch_strategy() -> impl Strategy<Value = BTreeMap<usize, Option<Vec<u8>>>> {
    let entry = prop_oneof![4 => value_strategy().prop_map(Some), 1 => Just(None)];
    let n = key_space().len();
    prop_oneof![
        4 => prop::collection::btree_map(0..n, entry.clone(), 1..12),
        1 => prop::collection::btree_map(0..n, entry, 12..120),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (batch_strategy(), prop::bool::weighted(0.2))
            .prop_map(|(batch, undersized)| Op::Write { batch, undersized }),
        4 => Just(Op::MergeOnce),
        1 => Just(Op::MergeAll),
        1 => Just(Op::Reopen),
        2 => (
            prop_oneof![
                Just(Orphan::Copy),
                Just(Orphan::Half),
                prop::collection::vec(any::<u8>(), 0..100).prop_map(Orphan::Garbage),
            ],
            any::<prop::sample::Index>(),
            any::<prop::sample::Index>(),
        )
            .prop_map(|(orphan, source, id)| Op::Crash { orphan, source, id }),
    ]
}

fn ok<T>(r: Result<T, RunError>, what: &str) -> Result<T, TestCaseError> {
    r.map_err(|e| TestCaseError::fail(format!("{what}: {e}")))
}

/// Runs `ops` against the store and the model. With a `base`, the first run is that batch
/// beside the filler: a run past the lowest tier, so that the policy's merges of newer runs
/// leave it out (and must keep their removals).
fn run_ops(
    base: Option<&BTreeMap<usize, Option<Vec<u8>>>>,
    ops: &[Op],
) -> Result<(), TestCaseError> {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let keys = key_space();
    let mut model = Model::new();
    let mut store = Some(ok(open_store(root), "open")?);
    let mut filler = 0;
    if let Some(base) = base {
        let mut batch: BTreeMap<Vec<u8>, Option<Vec<u8>>> = base
            .iter()
            .map(|(&i, v)| (keys[i].clone(), v.clone()))
            .collect();
        filler = filler_len();
        batch.extend((0..filler).map(|i| (filler_key(i), Some(filler_value(i)))));
        ok(write(store.as_ref().unwrap(), &batch), "write the base")?;
        batch.retain(|k, _| !k.starts_with(b"z"));
        apply(&mut model, &batch);
        prop_assert!(store.as_ref().unwrap().stats().bytes >= TIER_BASE_BYTES);
    }
    for (step, op) in ops.iter().enumerate() {
        let s = store.as_ref().unwrap();
        match op {
            Op::Write { batch, undersized } => {
                let batch: BTreeMap<Vec<u8>, Option<Vec<u8>>> = batch
                    .iter()
                    .map(|(&i, v)| (keys[i].clone(), v.clone()))
                    .collect();
                let before = s.stats();
                ok(
                    s.write_run(
                        batch.iter().map(|(k, v)| (k.as_slice(), v.as_deref())),
                        if *undersized { 1 } else { batch.len() },
                    ),
                    "write_run",
                )?;
                apply(&mut model, &batch);
                let after = s.stats();
                prop_assert_eq!(after.runs, before.runs + 1, "a run written");
                prop_assert_eq!(after.entries, before.entries + batch.len() as u64);
            }
            Op::MergeOnce => {
                let stop = AtomicBool::new(false);
                let mut merges = 0;
                while ok(s.merge_once(&stop), "merge_once")? {
                    merges += 1;
                    prop_assert!(merges < 100, "merge_once does not settle");
                    check_with(s, root, &model, filler)?;
                }
            }
            Op::MergeAll => {
                let before = s.stats();
                ok(s.merge_all(), "merge_all")?;
                let after = s.stats();
                if before.runs > 1 {
                    // Everything merged, the oldest run included: one version of each live
                    // key, no removals.
                    let live = model.len() + filler;
                    prop_assert_eq!(after.runs, usize::from(live > 0));
                    prop_assert_eq!(after.entries, live as u64, "removals dropped");
                } else {
                    prop_assert_eq!(after.runs, before.runs);
                }
            }
            Op::Reopen => {
                let before = s.stats();
                drop(store.take());
                store = Some(ok(open_store(root), "reopen")?);
                let after = store.as_ref().unwrap().stats();
                prop_assert_eq!((after.runs, after.entries), (before.runs, before.entries));
                prop_assert_eq!(after.bytes, before.bytes);
            }
            Op::Crash { orphan, source, id } => {
                let before = s.stats();
                drop(store.take());
                let live = run_files(root);
                // An id the catalogue does not name: a retired one, or one past the newest.
                let max = live.keys().next_back().copied().unwrap_or(0);
                let free: Vec<u64> = (0..=max + 3).filter(|i| !live.contains_key(i)).collect();
                let orphan_id = *id.get(&free);
                let orphan_path = runs_dir(root).join(run_name(orphan_id));
                let bytes = match orphan {
                    Orphan::Garbage(b) => b.clone(),
                    Orphan::Copy | Orphan::Half if live.is_empty() => b"OCRUN".to_vec(),
                    Orphan::Copy | Orphan::Half => {
                        let paths: Vec<&PathBuf> = live.values().collect();
                        let mut b = fs::read(source.get(&paths)).unwrap();
                        if matches!(orphan, Orphan::Half) {
                            b.truncate(b.len() / 2);
                        }
                        b
                    }
                };
                fs::write(&orphan_path, bytes).unwrap();
                // Opened to read (as a check does), the orphan is left alone and ignored.
                let db = open_sled(&root.join("db"));
                let reader = ok(
                    RunStore::open_to_read(db.clone(), &runs_dir(root)),
                    "open_to_read after a crash",
                )?;
                prop_assert!(orphan_path.exists(), "open_to_read deleted an orphan");
                check_reads(&reader, &model, filler)?;
                drop(reader);
                store = Some(ok(
                    RunStore::open(db, &runs_dir(root)),
                    "reopen after a crash",
                )?);
                prop_assert!(
                    !orphan_path.exists(),
                    "step {}: the orphan {} outlived the opening",
                    step,
                    orphan_path.display()
                );
                let now = run_files(root);
                prop_assert_eq!(
                    now.keys().collect::<Vec<_>>(),
                    live.keys().collect::<Vec<_>>()
                );
                let after = store.as_ref().unwrap().stats();
                prop_assert_eq!((after.runs, after.entries), (before.runs, before.entries));
            }
        }
        check_with(store.as_ref().unwrap(), root, &model, filler)?;
    }
    // A last reopen and merge of everything agree with the model too.
    drop(store.take());
    let s = ok(open_store(root), "the last reopen")?;
    check_with(&s, root, &model, filler)?;
    let before = s.stats();
    ok(s.merge_all(), "the last merge_all")?;
    check_with(&s, root, &model, filler)?;
    if before.runs > 1 {
        prop_assert_eq!(s.stats().entries, (model.len() + filler) as u64);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn runs_agree_with_a_model_through_merges_reopens_and_crashes(
        base in prop::option::weighted(0.3, batch_strategy()),
        ops in prop::collection::vec(op_strategy(), 1..40),
    ) {
        run_ops(base.as_ref(), &ops)?;
    }
}

/// The policy does merge in the property test's range: six small runs make `merge_once`
/// merge (so the property test's `MergeOnce` is not a no-op whenever six runs pile up).
#[test]
fn six_small_runs_are_merged_by_the_policy_and_five_are_not() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(tmp.path()).unwrap();
    let mut model = Model::new();
    let stop = AtomicBool::new(false);
    for i in 0..FAN_IN {
        let batch: BTreeMap<Vec<u8>, Option<Vec<u8>>> = (0..20)
            .map(|j| (key(j * 7 + i), Some(vec![i as u8; j])))
            .collect();
        write_both(&store, &mut model, &batch);
        if i + 1 < FAN_IN {
            assert!(!store.merge_once(&stop).unwrap(), "{} runs merged", i + 1);
        }
    }
    assert_eq!(store.stats().runs, FAN_IN);
    assert!(store.merge_once(&stop).unwrap());
    assert_eq!(store.stats().runs, 1);
    assert!(!store.merge_once(&stop).unwrap());
    check(&store, tmp.path(), &model).unwrap();
}

// ---------------------------------------------------------------------------------------------
// 2. Removals: dropped by a merge that reaches the oldest run, kept by one that does not
// ---------------------------------------------------------------------------------------------

#[test]
fn merging_everything_drops_removals() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let store = open_store(root).unwrap();
    let mut model = Model::new();
    // Run 1: c0..c99. Run 2: removes the even ones, and a key never written. Run 3: rewrites
    // c0 and removes c1.
    let first: BTreeMap<_, _> = (0..100).map(|i| (key(i), Some(vec![1u8; i]))).collect();
    let mut second: BTreeMap<_, _> = (0..100).step_by(2).map(|i| (key(i), None)).collect();
    second.insert(b"never".to_vec(), None);
    let third: BTreeMap<_, _> = [(key(0), Some(b"back".to_vec())), (key(1), None)].into();
    for batch in [&first, &second, &third] {
        write(&store, batch).unwrap();
        apply(&mut model, batch);
    }
    assert_eq!(store.stats().entries, 100 + 51 + 2);
    check(&store, root, &model).unwrap();
    store.merge_all().unwrap();
    let stats = store.stats();
    assert_eq!(stats.runs, 1);
    assert_eq!(model.len(), 50);
    assert_eq!(
        stats.entries, 50,
        "the removals outlived a merge of everything"
    );
    check(&store, root, &model).unwrap();
    drop(store);
    let store = open_store(root).unwrap();
    assert_eq!(store.stats().entries, 50);
    check(&store, root, &model).unwrap();

    // Removing every key: the merge leaves no run at all.
    let all: BTreeMap<_, _> = model.keys().map(|k| (k.clone(), None)).collect();
    write(&store, &all).unwrap();
    apply(&mut model, &all);
    store.merge_all().unwrap();
    assert_eq!(store.stats().runs, 0);
    assert_eq!(store.stats().entries, 0);
    check(&store, root, &model).unwrap();
    drop(store);
    let store = open_store(root).unwrap();
    assert_eq!(store.stats().runs, 0);
    check(&store, root, &model).unwrap();
}

#[test]
fn a_merge_of_newer_runs_keeps_their_removals() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let store = open_store(root).unwrap();
    let mut model = Model::new();
    let stop = AtomicBool::new(false);

    // The oldest run, past the lowest tier: the policy will not merge it with small runs.
    let value_len = 10 * 1024;
    let n_big = (TIER_BASE_BYTES as usize).div_ceil(value_len) + 20;
    let big: BTreeMap<_, _> = (0..n_big)
        .map(|i| (key(i), Some(big_value(i as u8, value_len))))
        .collect();
    write(&store, &big).unwrap();
    apply(&mut model, &big);
    assert!(store.stats().bytes >= TIER_BASE_BYTES);

    // Six small runs: the first removes c3 and c4 (in the oldest run) and c9999 (nowhere),
    // the others touch other keys.
    let mut small_entries = 0u64;
    let mut distinct = BTreeSet::new();
    for r in 0..FAN_IN {
        let mut batch: BTreeMap<_, _> = (0..10)
            .map(|j| (key(100 + r * 10 + j), Some(vec![r as u8; j])))
            .collect();
        if r == 0 {
            for k in [key(3), key(4), key(9999)] {
                batch.insert(k, None);
            }
        }
        if r == 3 {
            // c4 written again, then removed again in run 4.
            batch.insert(key(4), Some(b"again".to_vec()));
        }
        if r == 4 {
            batch.insert(key(4), None);
        }
        small_entries += batch.len() as u64;
        distinct.extend(batch.keys().cloned());
        write_both(&store, &mut model, &batch);
    }
    assert_eq!(store.stats().runs, 1 + FAN_IN);
    assert_eq!(store.stats().entries, n_big as u64 + small_entries);
    check(&store, root, &model).unwrap();

    assert!(
        store.merge_once(&stop).unwrap(),
        "six small runs not merged"
    );
    let stats = store.stats();
    assert_eq!(
        stats.runs, 2,
        "the oldest run was merged with the small ones"
    );
    assert_eq!(
        stats.entries,
        n_big as u64 + distinct.len() as u64,
        "the merge of newer runs dropped its removals (or kept old versions)"
    );
    assert_eq!(store.get(&key(3)).unwrap(), None, "c3 came back");
    assert_eq!(store.get(&key(4)).unwrap(), None, "c4 came back");
    assert!(!store.merge_once(&stop).unwrap());
    check(&store, root, &model).unwrap();
    drop(store);
    let store = open_store(root).unwrap();
    assert_eq!(
        store.get(&key(3)).unwrap(),
        None,
        "c3 came back after a reopen"
    );
    check(&store, root, &model).unwrap();

    store.merge_all().unwrap();
    let stats = store.stats();
    assert_eq!(stats.runs, 1);
    assert_eq!(
        stats.entries,
        model.len() as u64,
        "removals kept by merge_all"
    );
    check(&store, root, &model).unwrap();
}

// ---------------------------------------------------------------------------------------------
// 3. Damage: refused, named, never read as a value
// ---------------------------------------------------------------------------------------------

/// A store of one run of `c0`..`c99` (about 110 bytes an entry: three blocks), closed.
fn one_run_store(root: &Path) -> (Model, PathBuf) {
    let store = open_store(root).unwrap();
    let batch: BTreeMap<_, _> = (0..100)
        .map(|i| (key(i), Some(big_value(i as u8, 100))))
        .collect();
    write(&store, &batch).unwrap();
    let mut model = Model::new();
    apply(&mut model, &batch);
    drop(store);
    let files = run_files(root);
    assert_eq!(files.len(), 1);
    let path = files.into_values().next().unwrap();
    (model, path)
}

fn flip(path: &Path, at: u64, mask: u8) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= mask;
    f.write_all_at(&b, at).unwrap();
}

/// The blocks of a run file: (offset, framed length), read from the blocks' own headers.
fn block_spans(bytes: &[u8]) -> Vec<(u64, u64)> {
    let footer = &bytes[bytes.len() - FOOTER_BYTES as usize..];
    let index_off = u64::from_le_bytes(footer[8..16].try_into().unwrap());
    let mut spans = Vec::new();
    let mut at = 0u64;
    while at < index_off {
        let len = u32::from_le_bytes(bytes[at as usize..at as usize + 4].try_into().unwrap());
        spans.push((at, 8 + u64::from(len)));
        at += 8 + u64::from(len);
    }
    assert_eq!(at, index_off);
    spans
}

/// The keys whose entries lie in the block at `span`.
fn keys_in_block(bytes: &[u8], span: (u64, u64)) -> Vec<Vec<u8>> {
    let block = &bytes[span.0 as usize + 8..(span.0 + span.1) as usize];
    let mut keys = Vec::new();
    let mut pos = 0;
    while pos < block.len() {
        let klen = u32::from_le_bytes(block[pos..pos + 4].try_into().unwrap()) as usize;
        keys.push(block[pos + 4..pos + 4 + klen].to_vec());
        pos += 4 + klen;
        let tag = block[pos];
        pos += 1;
        if tag == 1 {
            let vlen = u32::from_le_bytes(block[pos..pos + 4].try_into().unwrap()) as usize;
            pos += 4 + vlen;
        }
    }
    keys
}

fn names(e: &RunError, path: &Path) -> bool {
    let name = path.file_name().unwrap().to_str().unwrap();
    e.to_string().contains(name)
}

#[test]
fn a_damaged_block_is_an_error_naming_the_file_for_its_keys_only() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (model, path) = one_run_store(root);
    let bytes = fs::read(&path).unwrap();
    let spans = block_spans(&bytes);
    assert!(spans.len() >= 3, "{} blocks", spans.len());
    let damaged = spans[1];
    let hit = keys_in_block(&bytes, damaged);
    // A byte inside a value of the middle block's second entry.
    flip(&path, damaged.0 + 8 + 30 + hit[0].len() as u64 + 110, 0x10);

    // Opening reads no block: it succeeds.
    let store = open_store(root).unwrap();
    for (k, v) in &model {
        match store.get(k) {
            Ok(got) if hit.contains(k) => panic!(
                "{:?} read from a damaged block as {}",
                String::from_utf8_lossy(k),
                show(&got)
            ),
            Ok(got) => assert_eq!(got.as_ref(), Some(v)),
            Err(RunError::Corrupt { path: p, reason }) if hit.contains(k) => {
                assert!(p.ends_with(path.file_name().unwrap().to_str().unwrap()));
                assert!(reason.contains("block 1"), "{reason}");
            }
            Err(e) => panic!("{:?}: {e}", String::from_utf8_lossy(k)),
        }
    }
    // A scan yields (some of) the keys before the block, right, then the error, then nothing.
    let mut it = store.scan_from(b"");
    let mut want = model.iter();
    let err = loop {
        match it.next() {
            Some(Ok((k, v))) => {
                assert!(!hit.contains(&k));
                assert_eq!(Some((&k, &v)), want.next());
            }
            Some(Err(e)) => break e,
            None => panic!("a scan read through a damaged block"),
        }
    };
    assert!(
        matches!(err, RunError::Corrupt { .. }) && names(&err, &path),
        "{err}"
    );
    assert!(it.next().is_none(), "a scan went on past its error");
    // A scan starting inside the damaged block fails at once.
    let err = store.scan_from(&hit[1]).next().unwrap().unwrap_err();
    assert!(
        matches!(err, RunError::Corrupt { .. }) && names(&err, &path),
        "{err}"
    );

    // Damage found while the store is open (the block's own header, this time) too.
    flip(&path, spans[2].0 + 1, 0x01);
    let last = keys_in_block(&bytes, spans[2]);
    let err = store.get(&last[0]).unwrap_err();
    assert!(
        matches!(err, RunError::Corrupt { .. }) && names(&err, &path),
        "{err}"
    );
}

#[test]
fn a_damaged_index_filter_or_footer_refuses_the_opening_and_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (_model, path) = one_run_store(root);
    let size = fs::metadata(&path).unwrap().len();
    let bytes = fs::read(&path).unwrap();
    let index_off = block_spans(&bytes).last().map_or(0, |s| s.0 + s.1);
    let db = open_sled(&root.join("db"));
    let mut accepted = Vec::new();
    // Every byte from the index to the footer's CRC. The footer's last four bytes are reserved
    // and not read by `Run::open` (nor covered by a CRC): damage there is harmless and
    // accepted, which `no_damaged_byte_is_ever_read_as_a_wrong_value` covers.
    for at in index_off..size - (FOOTER_BYTES - FOOTER_CHECKED_BYTES) {
        for mask in [0x01, 0x80] {
            flip(&path, at, mask);
            match RunStore::open(db.clone(), &runs_dir(root)) {
                Ok(_) => accepted.push((at, mask)),
                Err(e) => assert!(names(&e, &path), "byte {at}: {e} does not name the file"),
            }
            flip(&path, at, mask);
        }
    }
    assert!(
        accepted.is_empty(),
        "opened with these bytes (offset, xor) of the index, filter or footer damaged: \
         {accepted:?} (index at {index_off}, footer at {})",
        size - FOOTER_BYTES
    );
    // Undamaged again, it opens.
    RunStore::open(db, &runs_dir(root)).unwrap();
}

/// Any byte of a run damaged: the store refuses to open, or every read returns the right
/// value or an error naming the file. Never a panic, never a wrong value.
#[test]
fn no_damaged_byte_is_ever_read_as_a_wrong_value() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (model, path) = one_run_store(root);
    let size = fs::metadata(&path).unwrap().len();
    let bytes = fs::read(&path).unwrap();
    let spans = block_spans(&bytes);
    let index_off = spans.last().map_or(0, |s| s.0 + s.1);
    // Every byte of the index, filter and footer and of the blocks' headers (and a few past
    // them); every 11th byte of the blocks' payloads.
    let mut positions: BTreeSet<u64> = (index_off..size).collect();
    for (off, len) in &spans {
        positions.extend(*off..off + 12);
        positions.extend((*off..off + len).step_by(11));
    }
    let db = open_sled(&root.join("db"));
    let mut opened = 0;
    for at in positions {
        flip(&path, at, 0x04);
        match RunStore::open(db.clone(), &runs_dir(root)) {
            Err(e) => assert!(names(&e, &path), "byte {at}: {e}"),
            Ok(store) => {
                opened += 1;
                for (k, v) in &model {
                    match store.get(k) {
                        Ok(got) => assert_eq!(got.as_ref(), Some(v), "byte {at}: {k:?}"),
                        Err(e) => assert!(
                            matches!(e, RunError::Corrupt { .. }) && names(&e, &path),
                            "byte {at}: {e}"
                        ),
                    }
                }
                for k in ABSENT {
                    match store.get(k) {
                        Ok(got) => assert_eq!(got, None, "byte {at}: {k:?}"),
                        Err(e) => assert!(names(&e, &path), "byte {at}: {e}"),
                    }
                }
                let mut want = model.iter();
                for item in store.scan_from(b"") {
                    match item {
                        Ok((k, v)) => {
                            assert_eq!(Some((&k, &v)), want.next(), "byte {at}: scan")
                        }
                        Err(e) => {
                            assert!(names(&e, &path), "byte {at}: {e}");
                            break;
                        }
                    }
                }
            }
        }
        flip(&path, at, 0x04);
    }
    assert!(opened > 0, "no damage was ever let through to the reads");
}

// ---------------------------------------------------------------------------------------------
// 4. A scan outlives the merge that retires its runs
// ---------------------------------------------------------------------------------------------

#[test]
fn a_scan_reads_on_through_the_files_a_merge_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let store = open_store(root).unwrap();
    let mut model = Model::new();
    // Three runs of several blocks each, overlapping, with removals.
    for r in 0..3u8 {
        let batch: BTreeMap<_, _> = (0..150)
            .filter(|i| i % 3 != usize::from(r))
            .map(|i| {
                let v = (i % 7 != 0 || r == 0).then(|| big_value(r * 50 + i as u8, 90));
                (key(i), v)
            })
            .collect();
        write_both(&store, &mut model, &batch);
    }
    let old_files = run_files(root);
    assert_eq!(old_files.len(), 3);
    let want = model_from(&model, b"");

    let mut early = store.scan_from(b"");
    let mut late = store.scan_from(b"c5");
    let mut got: Vec<_> = early.by_ref().take(5).map(Result::unwrap).collect();

    store.merge_all().unwrap();
    for p in old_files.values() {
        assert!(!p.exists(), "{} outlived the merge", p.display());
    }
    // Changes after the scans began are not theirs to see.
    let after: BTreeMap<_, _> = (0..150)
        .map(|i| (key(i), (i % 2 == 0).then(|| b"new".to_vec())))
        .collect();
    write(&store, &after).unwrap();
    store.merge_all().unwrap();

    got.extend(early.map(Result::unwrap));
    assert_eq!(got.len(), want.len());
    assert!(
        got == want,
        "a scan begun before a merge read other contents"
    );
    let got_late: Vec<_> = late.by_ref().map(Result::unwrap).collect();
    assert!(got_late == model_from(&model, b"c5"));

    apply(&mut model, &after);
    check(&store, root, &model).unwrap();
}

// ---------------------------------------------------------------------------------------------
// 5. The background merger
// ---------------------------------------------------------------------------------------------

fn poll(deadline: Duration, mut done: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + deadline;
    while Instant::now() < until {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    done()
}

#[test]
fn the_merger_merges_after_a_nudge_and_stops_when_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let store = Arc::new(open_store(root).unwrap());
    let merger = store.start_merger().unwrap();
    let mut model = Model::new();
    for r in 0..FAN_IN {
        let batch: BTreeMap<_, _> = (0..30)
            .map(|i| {
                (
                    key(i * 5 + r % 5),
                    (i % 4 != r % 4).then(|| vec![r as u8; i]),
                )
            })
            .collect();
        write_both(&store, &mut model, &batch);
    }
    merger.nudge();
    assert!(
        poll(Duration::from_secs(10), || store.stats().runs < FAN_IN),
        "no merge 10 s after a nudge: {:?}",
        store.stats()
    );
    check(&store, root, &model).unwrap();
    stop_and_reopen(store, merger, root, &model);
}

/// Runs written, read and merged at once: readers of keys that never change always find
/// them; at the end the contents are the model's, before and after a reopen.
#[test]
fn the_merger_beside_a_writer_and_readers() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let store = Arc::new(open_store(root).unwrap());
    let mut model = Model::new();
    // Fixed keys `f…`, written once, in the oldest run.
    let fixed: BTreeMap<Vec<u8>, Option<Vec<u8>>> = (0..50)
        .map(|i| (format!("f{i}").into_bytes(), Some(big_value(i, 200))))
        .collect();
    write(&store, &fixed).unwrap();
    apply(&mut model, &fixed);
    let merger = store.start_merger().unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (store, done, fixed) = (store.clone(), done.clone(), fixed.clone());
            std::thread::spawn(move || {
                let mut rounds = 0u64;
                while !done.load(Ordering::Relaxed) || rounds == 0 {
                    for (k, v) in &fixed {
                        assert_eq!(&store.get(k).unwrap(), v, "a fixed key misread");
                    }
                    let scanned: Vec<_> = store
                        .scan_from(b"f")
                        .map(Result::unwrap)
                        .take_while(|(k, _)| k.starts_with(b"f"))
                        .collect();
                    assert_eq!(scanned.len(), fixed.len(), "a scan of the fixed keys");
                    rounds += 1;
                }
                rounds
            })
        })
        .collect();
    for r in 0..40usize {
        let batch: BTreeMap<_, _> = (0..25)
            .map(|i| {
                let n = (i * 7 + r * 3) % 120;
                (key(n), ((n + r) % 5 != 0).then(|| vec![r as u8; n % 40]))
            })
            .collect();
        write_both(&store, &mut model, &batch);
        merger.nudge();
    }
    assert!(
        poll(Duration::from_secs(10), || store.stats().runs < FAN_IN),
        "the merger left {:?}",
        store.stats()
    );
    done.store(true, Ordering::Relaxed);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
    let store = stop_and_reopen(store, merger, root, &model);
    store.merge_all().unwrap();
    assert_eq!(store.stats().entries, model.len() as u64);
    check(&store, root, &model).unwrap();
}

/// The block size the large values are chosen against: a value of 10 KiB fills a block alone.
#[test]
fn a_large_value_is_a_block_of_its_own() {
    const { assert!(BLOCK_BYTES < 10_000) };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let store = open_store(root).unwrap();
    let batch: BTreeMap<_, _> = [
        (key(1), Some(b"small".to_vec())),
        (key(2), Some(big_value(2, 10_000))),
        (key(3), Some(Vec::new())),
        (key(4), Some(big_value(4, 10_001))),
        (key(5), None),
    ]
    .into();
    write(&store, &batch).unwrap();
    let mut model = Model::new();
    apply(&mut model, &batch);
    check(&store, root, &model).unwrap();
    drop(store);
    let bytes = fs::read(run_files(root).values().next().unwrap()).unwrap();
    let blocks: Vec<_> = block_spans(&bytes)
        .into_iter()
        .map(|s| keys_in_block(&bytes, s))
        .collect();
    assert_eq!(
        blocks,
        vec![
            vec![key(1)],
            vec![key(2)],
            vec![key(3)],
            vec![key(4)],
            vec![key(5)]
        ]
    );
}

/// A footer whose offsets overflow when added (magic intact, CRC made to match): the opening
/// must refuse the file, naming it, not panic (it once did: `index_off + index_len` was an
/// unchecked `u64` addition, which wrapped in release builds so that the offsets "added up").
#[test]
fn a_footer_with_overflowing_offsets_is_refused_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (_model, path) = one_run_store(root);
    let size = fs::metadata(&path).unwrap().len();
    // index_off = 2, index_len = 2^64 − 2: their sum wraps to 0 = bloom_off; bloom_len makes
    // bloom_off + bloom_len + 48 = size; the CRC is over the `size − 50` bytes from byte 2.
    let (index_off, index_len, bloom_off, bloom_len) = (2u64, u64::MAX - 1, 0u64, size - 48);
    let bytes = fs::read(&path).unwrap();
    let meta_len = index_len.wrapping_add(bloom_len) as usize;
    let crc = crc32fast::hash(&bytes[2..2 + meta_len]);
    let mut footer = Vec::new();
    footer.extend_from_slice(&bytes[(size - FOOTER_BYTES) as usize..][..8]);
    for f in [index_off, index_len, bloom_off, bloom_len] {
        footer.extend_from_slice(&f.to_le_bytes());
    }
    footer.extend_from_slice(&crc.to_le_bytes());
    footer.extend_from_slice(&[0; 4]);
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&footer, size - FOOTER_BYTES).unwrap();
    drop(f);
    let db = open_sled(&root.join("db"));
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        RunStore::open(db, &runs_dir(root)).err()
    }));
    match opened {
        Err(_) => panic!("RunStore::open panicked on a footer with wild offsets"),
        Ok(None) => panic!("RunStore::open accepted a footer with wild offsets"),
        Ok(Some(e)) => assert!(names(&e, &path), "{e}"),
    }
}

/// Stops the merger (its thread must end with its handle), checks the store against the model
/// before and after a reopening, and gives back the reopened store.
fn stop_and_reopen(store: Arc<RunStore>, merger: Merger, root: &Path, model: &Model) -> RunStore {
    drop(merger);
    assert_eq!(
        Arc::strong_count(&store),
        1,
        "the merger's thread outlived its handle"
    );
    let store = Arc::try_unwrap(store).ok().unwrap();
    check(&store, root, model).unwrap();
    drop(store);
    let store = open_store(root).unwrap();
    check(&store, root, model).unwrap();
    store
}

/// Keys handed to a run out of order, or twice, are refused with an error naming the run, and
/// leave neither a file nor a change behind: a run out of order would answer reads wrongly.
#[test]
fn keys_out_of_order_or_twice_are_refused_and_leave_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let store = open_store(root).unwrap();
    store.write_run([(&b"a"[..], Some(&b"1"[..]))], 1).unwrap();
    for bad in [
        vec![(&b"c"[..], Some(&b"3"[..])), (&b"b"[..], Some(&b"2"[..]))],
        vec![(&b"c"[..], Some(&b"3"[..])), (&b"c"[..], None)],
    ] {
        let e = store.write_run(bad, 2).expect_err("refused");
        assert!(
            matches!(&e, RunError::Corrupt { reason, .. } if reason.contains("out of order")),
            "{e}"
        );
    }
    assert_eq!(store.stats().runs, 1);
    assert_eq!(store.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(store.get(b"c").unwrap(), None);
    let files = fs::read_dir(root.join("runs")).unwrap().count();
    assert_eq!(files, 1, "no file of a refused run is left");
}
