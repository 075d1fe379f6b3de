//! The disk fills up. Use a small tmpfs; mounting one works on these machines, as root.
//!
//! The engine's data directory lives on a tmpfs of 4 MiB, which a filler file fills but for a
//! little room once the engine is open. Orders run until a command fails. Then:
//!
//! - the first failure says "disk full" in words;
//! - every later command fails too: the journal stopped (a failed write or fsync cannot be
//!   retried safely, by design), and the errors say so;
//! - reads keep working: consumers, orders and the whole ledger as acknowledged;
//! - after a restart with room again (the directory copied to a roomy disk, or the filler
//!   removed), every acknowledged order is there with its outcome, nothing unacknowledged is
//!   half-applied (the state is exactly the one read while full), the engine writes again,
//!   and `verify` passes.
//!
//! Either the log or the view's checkpoint (sled, written by the checkpointer thread) may hit
//! the full disk first; the scenarios cover a log that fills with no checkpoint running, and
//! checkpoints every few milliseconds on a log of small segments. The view's sled on a tmpfs
//! of its own fills while the log (on a roomy disk) goes on: commands keep succeeding, and a
//! restart has everything.
//!
//! Three tests pin down bugs found here (each names it in its failure):
//! `a_command_retried_after_the_disk_filled_is_not_acknowledged` (a retried placement answered
//! "accepted" from the actor's memory, never written), `checkpoints_resume_once_the_view_disk_has_room_again`
//! (sled keeps its first I/O error for good, so the checkpointer's retries never succeed) and
//! `reads_keep_working_after_a_large_checkpoint_failed_on_a_full_disk` (sled then fails reads
//! that would split a node).
//!
//! Where this process may not mount (not root, no tmpfs), each test prints a note and passes.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use onecard_engine::engine::{EngineConfig, OpenConsumer, PlaceOrder};
use onecard_engine::journal::JournalConfig;
use onecard_engine::ledger::LedgerState;
use onecard_engine::{Amount, Engine, EngineError, OrderState, Outcome, SimBank, SimBankPort};
use serde_json::json;

const ENOSPC: i32 = 28;
const CONSUMERS: usize = 4;

/// Unmounts (lazily) when dropped, after everything on the mount was closed.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Mounts a tmpfs of `size` on `at`; None (with a note) where this process may not.
fn mount_tmpfs(at: &Path, size: &str) -> Option<Mount> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if uid.as_deref() != Some("0") {
        eprintln!(
            "NOTE: not root (uid {uid:?}): cannot mount a tmpfs; skipping the disk-full test"
        );
        return None;
    }
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(at)
        .output();
    match out {
        Ok(o) if o.status.success() => Some(Mount(at.to_path_buf())),
        Ok(o) => {
            eprintln!(
                "NOTE: cannot mount a tmpfs on {} ({}): skipping the disk-full test",
                at.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            );
            None
        }
        Err(e) => {
            eprintln!("NOTE: cannot run mount ({e}): skipping the disk-full test");
            None
        }
    }
}

/// Fills the file system holding `dir` with a filler file, then gives `leave` bytes back.
fn fill_leaving(dir: &Path, leave: u64) -> PathBuf {
    let path = dir.join("filler");
    let mut f = File::create(&path).unwrap();
    let chunk = vec![0xa5u8; 4096];
    loop {
        match f.write_all(&chunk) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(ENOSPC) => break,
            Err(e) => panic!("filler: {e}"),
        }
    }
    let len = f.metadata().unwrap().len();
    f.set_len(len.saturating_sub(leave)).unwrap();
    path
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

fn order(id: &str, consumer: &str) -> PlaceOrder {
    PlaceOrder {
        id: id.into(),
        consumer: consumer.into(),
        merchant: "shop".into(),
        amount: "1.25".into(),
        release: json!({"on": "receipt"}),
    }
}

struct Scenario {
    name: &'static str,
    checkpoint_interval_ms: u64,
    checkpoint_max_keys: usize,
    segment_bytes: u64,
    /// Room left on the tmpfs once the engine is open.
    leave: u64,
    /// After the failure: remove the filler and reopen in place (else: copy the directory to a
    /// roomy disk and reopen there).
    reopen_in_place: bool,
    /// Orders are only placed (none settled or cancelled): the failing command is a place.
    places_only: bool,
    /// The failed command is retried at once, as a client would.
    retry_failed: bool,
}

impl Scenario {
    fn config(&self) -> EngineConfig {
        EngineConfig {
            journal: JournalConfig {
                checkpoint_interval_ms: self.checkpoint_interval_ms,
                checkpoint_max_keys: self.checkpoint_max_keys,
                segment_bytes: self.segment_bytes,
                cache_bytes: 8 << 20,
                ..JournalConfig::default()
            },
            arbiters: 2,
            ..EngineConfig::default()
        }
    }
}

/// What the run on the full disk saw.
struct Full {
    /// Every acknowledged order and the state its last answer put it in.
    acked: BTreeMap<String, OrderState>,
    /// The command that failed first, and the order it was about.
    failed: String,
    failed_order: String,
    /// The ledger read while the disk was full (if that read worked).
    state: Option<LedgerState>,
}

fn check_orders(state: &LedgerState, acked: &BTreeMap<String, OrderState>, when: &str) {
    for (id, want) in acked {
        let owner = state
            .owner_of_order(id)
            .unwrap_or_else(|| panic!("{when}: acknowledged order {id} is missing"));
        let got = state.consumers[owner].orders[id].state;
        assert_eq!(got, *want, "{when}: order {id}");
    }
}

fn run(s: &Scenario) {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let Some(mount) = mount_tmpfs(&mnt, "4m") else {
        return;
    };
    let started = Instant::now();
    let data = mnt.join("data");
    let full = actix_rt::System::new().block_on(fill_up(s, &mnt, &data));
    eprintln!(
        "{}: {} orders acknowledged, then `{}` failed ({:.1} s)",
        s.name,
        full.acked.len(),
        full.failed,
        started.elapsed().as_secs_f64()
    );

    // Room again: in place without the filler, or a copy on a roomy disk.
    let roomy = tempfile::tempdir().unwrap();
    let dir = if s.reopen_in_place {
        std::fs::remove_file(mnt.join("filler")).unwrap();
        data.clone()
    } else {
        let dir = roomy.path().join("data");
        copy_tree(&data, &dir);
        dir
    };
    let last = actix_rt::System::new().block_on(async {
        let sim = SimBank::open(&dir).unwrap();
        let engine = Engine::open(&dir, s.config(), Arc::new(SimBankPort(sim.clone())))
            .await
            .unwrap_or_else(|e| panic!("{}: reopening after the disk filled: {e}", s.name));
        let state = engine.ledger_state().await.unwrap();
        check_orders(&state, &full.acked, "after the restart");
        // Nothing of what failed is there: exactly the state read while full.
        if let Some(full_state) = &full.state {
            assert!(
                state == *full_state,
                "{}: the state after the restart is not the one acknowledged before it",
                s.name
            );
        }
        let o = engine.order(&full.failed_order).await.unwrap();
        match full.acked.get(&full.failed_order) {
            None => assert!(
                o.is_none(),
                "{}: order {} half there",
                s.name,
                full.failed_order
            ),
            Some(st) => assert_eq!(o.map(|o| o.state), Some(*st), "{}", s.name),
        }
        // It writes again.
        let id = "after-restart";
        assert_eq!(
            engine
                .place_order(order(id, "c0"), 1_000_000)
                .await
                .unwrap(),
            Ok(Outcome::Accepted)
        );
        assert_eq!(
            engine.confirm_receipt(id, true, 1_000_000).await.unwrap(),
            Ok(Outcome::Settled)
        );
        let last = engine.ledger_state().await.unwrap();
        engine.close().await.unwrap();
        last
    });
    let report = onecard_engine::verify::verify(&dir)
        .unwrap_or_else(|e| panic!("{}: verify after the restart: {e}", s.name));
    assert!(report.state == last, "{}: verify's replay differs", s.name);
    check_orders(&report.state, &full.acked, "verify");
    drop(mount);
}

async fn fill_up(s: &Scenario, mnt: &Path, data: &Path) -> Full {
    let sim = SimBank::open(data).unwrap();
    let engine = Engine::open(data, s.config(), Arc::new(SimBankPort(sim.clone())))
        .await
        .unwrap();
    engine
        .open_merchant("shop", None, 0)
        .await
        .unwrap()
        .unwrap();
    for c in 0..CONSUMERS {
        let bank = format!("c{c}-bank");
        sim.open_account(&bank, Amount::from_cents(100_000_000))
            .unwrap();
        let req = OpenConsumer {
            consumer: format!("c{c}"),
            credit_limit: "100000.00".into(),
            bank,
            wallet: "50.00".into(),
        };
        assert_eq!(engine.open_consumer(req, 0).await.unwrap(), Ok(Outcome::Ok));
    }
    // Two orders stay pending from before the disk fills, so that the commands after the
    // failure always have a pending order to confirm and one to cancel, however early the
    // disk fills (a checkpoint running in the background may take the last room at once).
    let mut acked = BTreeMap::new();
    for (n, id) in ["kept-1", "kept-2"].into_iter().enumerate() {
        let consumer = format!("c{}", n % CONSUMERS);
        let r = engine.place_order(order(id, &consumer), 0).await.unwrap();
        assert_eq!(r, Ok(Outcome::Accepted), "{id}");
        acked.insert(id.to_string(), OrderState::Pending);
    }
    fill_leaving(mnt, s.leave);
    let checkpoints_at_fill = engine.journal_stats().checkpoints.load(Ordering::Relaxed);

    let mut i = 0u64;
    let (failed, failed_order, first) = 'fill: loop {
        i += 1;
        assert!(i < 50_000, "{}: the disk never filled", s.name);
        let id = format!("o{i}");
        let consumer = format!("c{}", i as usize % CONSUMERS);
        match engine.place_order(order(&id, &consumer), i).await {
            Ok(r) => {
                assert_eq!(r, Ok(Outcome::Accepted), "{id}");
                acked.insert(id.clone(), OrderState::Pending);
            }
            Err(e) => break 'fill (format!("place {id}"), id, e),
        }
        // Every fourth order stays pending, every fourth is cancelled, the rest settle.
        let (what, r, state) = match i % 4 {
            _ if s.places_only => continue,
            0 => continue,
            1 => (
                "cancel",
                engine.cancel_order(&id, i).await,
                OrderState::Cancelled,
            ),
            _ => (
                "confirm",
                engine.confirm_receipt(&id, true, i).await,
                OrderState::Settled,
            ),
        };
        match r {
            Ok(r) => {
                assert!(r.is_ok(), "{what} {id}: {r:?}");
                acked.insert(id, state);
            }
            Err(e) => break 'fill (format!("{what} {id}"), id, e),
        }
    };

    // The first failure says what is wrong, in words.
    let msg = first.to_string();
    eprintln!("{}: first failure: {msg}", s.name);
    assert!(msg.contains("disk full"), "{}: {msg}", s.name);
    assert!(
        matches!(&first, EngineError::Journal(j) if j.is_disk_full()),
        "{}: {first:?}",
        s.name
    );

    if s.retry_failed {
        // The client retries the command that failed, with the same id and content.
        let again = if failed.starts_with("place") {
            let consumer = format!("c{}", i as usize % CONSUMERS);
            engine.place_order(order(&failed_order, &consumer), i).await
        } else if failed.starts_with("cancel") {
            engine.cancel_order(&failed_order, i).await
        } else {
            engine.confirm_receipt(&failed_order, true, i).await
        };
        eprintln!("{}: `{failed}` retried: {again:?}", s.name);
        match &again {
            Err(e) => assert!(e.to_string().contains("disk full"), "{}: {e}", s.name),
            Ok(r) => panic!(
                "{}: `{failed}` failed (disk full), and its retry was answered {r:?}: the consumer's actor answered from its memory, where the failed command was applied but never written",
                s.name
            ),
        }
    }

    // Every later command fails, and says why. (Each touches an order no earlier command
    // after the failure touched: see `a_command_retried_after_the_disk_filled_...`.)
    let mut pending = acked
        .iter()
        .filter(|(id, st)| **st == OrderState::Pending && **id != failed_order)
        .map(|(id, _)| id.clone());
    let (to_confirm, to_cancel) = (pending.next().unwrap(), pending.next().unwrap());
    let t = i + 1;
    let mut later: Vec<(String, Result<String, String>)> = Vec::new();
    let mut note = |what: &str, r: Result<onecard_engine::CommandResult, EngineError>| {
        later.push((
            what.to_string(),
            match r {
                Ok(r) => Ok(format!("{r:?}")),
                Err(e) => Err(e.to_string()),
            },
        ));
    };
    note("place", engine.place_order(order("late-1", "c1"), t).await);
    note(
        "place (another consumer)",
        engine.place_order(order("late-2", "c2"), t).await,
    );
    note(
        "confirm a pending order",
        engine.confirm_receipt(&to_confirm, true, t).await,
    );
    note(
        "cancel another pending order",
        engine.cancel_order(&to_cancel, t).await,
    );
    note(
        "open a merchant",
        engine.open_merchant("late-shop", None, t).await,
    );
    note(
        "open a consumer (no bank account needed)",
        engine
            .open_consumer(
                OpenConsumer {
                    consumer: "late".into(),
                    credit_limit: "10.00".into(),
                    bank: "c0-bank-2".into(),
                    wallet: "0".into(),
                },
                t,
            )
            .await,
    );
    note("tick", engine.tick(t).await);
    let bank = sim.open_account("late-bank", Amount::from_cents(100));
    later.push((
        "open a bank account".into(),
        bank.map(|()| "opened".into()).map_err(|e| e.to_string()),
    ));
    for (what, r) in &later {
        eprintln!("{}: later: {what}: {r:?}", s.name);
    }
    for (what, r) in &later {
        let Err(e) = r else {
            panic!(
                "{}: after the disk filled, `{what}` succeeded: {r:?}",
                s.name
            );
        };
        assert!(
            e.contains("disk full") && e.contains("restart"),
            "{}: `{what}` failed without saying the disk is full and a restart is needed: {e}",
            s.name
        );
    }

    // Reads keep working while the disk is full. Errors are gathered, then judged below.
    let mut read_errors: Vec<String> = Vec::new();
    let state = match engine.ledger_state().await {
        Ok(state) => {
            check_orders(&state, &acked, "while full");
            Some(state)
        }
        Err(e) => {
            read_errors.push(format!("ledger_state: {e}"));
            None
        }
    };
    for (id, want) in &acked {
        match engine.order(id).await {
            Ok(o) => assert_eq!(
                o.map(|o| o.state),
                Some(*want),
                "{}: reading order {id}",
                s.name
            ),
            Err(e) => read_errors.push(format!("order {id}: {e}")),
        }
    }
    for c in 0..CONSUMERS {
        let id = format!("c{c}");
        match engine.consumer(&id).await {
            Ok(got) => {
                let got = got.expect("consumer");
                if let Some(state) = &state {
                    let want = &state.consumers[&id];
                    assert_eq!(
                        (got.wallet, got.reserved),
                        (want.wallet, want.reserved),
                        "{id}"
                    );
                }
            }
            Err(e) => read_errors.push(format!("consumer {id}: {e}")),
        }
    }
    assert!(engine.merchant("shop").await.unwrap().is_some());
    match engine.order("late-1").await {
        Ok(o) => assert!(o.is_none(), "a failed order is visible"),
        Err(e) => read_errors.push(format!("order late-1: {e}")),
    }
    if !acked.contains_key(&failed_order) {
        match engine.order(&failed_order).await {
            Ok(o) => assert!(o.is_none(), "the failed order {failed_order} is visible"),
            Err(e) => read_errors.push(format!("order {failed_order}: {e}")),
        }
    }
    if !read_errors.is_empty() {
        // With checkpoints running, sled may have hit the full disk too, and sled 0.34 then
        // fails some reads (those that would split a node): a known bug, reproduced on its own
        // by `reads_keep_working_after_a_large_checkpoint_failed_on_a_full_disk`. Tolerated
        // here so that this test stays about the log; anything else fails it.
        let sled_full =
            |e: &String| e.contains("account-state view: storage") && e.contains("No space left");
        assert!(
            s.checkpoint_interval_ms < 1_000 && read_errors.iter().all(sled_full),
            "{}: reads failed while the disk was full: {read_errors:?}",
            s.name
        );
        eprintln!(
            "{}: NOTE: {} reads failed with sled's full-disk error (known bug): {}",
            s.name,
            read_errors.len(),
            read_errors[0]
        );
    }

    let checkpoints = engine.journal_stats().checkpoints.load(Ordering::Relaxed);
    eprintln!(
        "{}: {} checkpoints while filling; {} log records",
        s.name,
        checkpoints - checkpoints_at_fill,
        engine.last_seq().unwrap()
    );
    // Closing tries a last checkpoint, which may find no room either.
    let closed = engine.close().await;
    eprintln!("{}: close: {closed:?}", s.name);
    sim.close();
    // Let sled's threads let go of its files before the directory is copied or reopened.
    std::thread::sleep(Duration::from_millis(100));
    Full {
        acked,
        failed,
        failed_order,
        state,
    }
}

/// No checkpoint runs while the orders fill the disk: the log hits it.
#[test]
fn the_log_fills_the_disk_then_a_copy_on_a_roomy_disk_has_every_acknowledged_order() {
    run(&Scenario {
        name: "log fills",
        checkpoint_interval_ms: 3_600_000,
        checkpoint_max_keys: 100_000_000,
        segment_bytes: 64 << 20,
        leave: 256 << 10,
        reopen_in_place: false,
        places_only: false,
        retry_failed: false,
    });
}

/// Checkpoints every few milliseconds and small segments: sled or the log hits the full disk
/// first, whichever it is; the filler is then removed and the node restarts in place.
#[test]
fn checkpoints_and_log_fill_the_disk_then_a_restart_in_place_has_every_acknowledged_order() {
    run(&Scenario {
        name: "checkpoints and log fill",
        checkpoint_interval_ms: 2,
        checkpoint_max_keys: 16,
        segment_bytes: 16 << 10,
        leave: 512 << 10,
        reopen_in_place: true,
        places_only: false,
        retry_failed: false,
    });
}

/// A client retries the order whose placement failed on the full disk, with the same id and
/// content: it must fail again (nothing was written), not be answered "accepted" from the
/// consumer actor's memory, where the failed placement was applied before the write failed.
#[test]
fn a_command_retried_after_the_disk_filled_is_not_acknowledged() {
    run(&Scenario {
        name: "retry after the disk filled",
        checkpoint_interval_ms: 3_600_000,
        checkpoint_max_keys: 100_000_000,
        segment_bytes: 64 << 20,
        leave: 128 << 10,
        reopen_in_place: false,
        places_only: true,
        retry_failed: true,
    });
}

/// How the view's own file system fills.
struct ViewFill {
    name: &'static str,
    checkpoint_interval_ms: u64,
    checkpoint_max_keys: usize,
    consumers: usize,
}

/// What happened while the view's file system was full.
struct ViewFilled {
    /// Point reads (orders, consumers) acknowledged since the disk filled that failed.
    read_errors: Vec<String>,
    /// Whether the whole-ledger read (a scan of sled) worked while full.
    ledger_read: Result<(), String>,
    /// The first command that failed, and whether it said "disk full".
    first_failure: Option<(String, bool)>,
    /// Commands refused after the first failure (all of those tried).
    refused_after: usize,
}

/// The view's checkpoint (sled) is on a tmpfs of its own, which fills while the log, on a roomy
/// disk, goes on. The first checkpoint that fails, or the first read that meets sled's error
/// (sled finishes page splits and flushes while reading), stops the journal (sled keeps its
/// first I/O error until it is reopened, so no later checkpoint could succeed): every command from then
/// on fails with "disk full", nothing acknowledged is lost, reads of what changed since the last
/// checkpoint (held in memory) keep working, and a restart in place, with room again, has every
/// acknowledged order and verifies.
fn view_fills(f: &ViewFill) -> Option<ViewFilled> {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let view_dir = data.join("view");
    std::fs::create_dir_all(&view_dir).unwrap();
    // The filler takes whatever room there is, so the size only matters once it is gone: then
    // the restart's checkpoint and `verify`'s opening of sled need room for what was
    // acknowledged meanwhile (more orders on a loaded machine: with 2 MiB, `verify` met ENOSPC
    // once in a full suite run).
    let mount = mount_tmpfs(&view_dir, "8m")?;
    let cfg = EngineConfig {
        journal: JournalConfig {
            checkpoint_interval_ms: f.checkpoint_interval_ms,
            checkpoint_max_keys: f.checkpoint_max_keys,
            cache_bytes: 8 << 20,
            ..JournalConfig::default()
        },
        arbiters: 2,
        ..EngineConfig::default()
    };
    let (acked, filled) = actix_rt::System::new().block_on(async {
        let sim = SimBank::open(&data).unwrap();
        let engine = Engine::open(&data, cfg.clone(), Arc::new(SimBankPort(sim.clone())))
            .await
            .unwrap();
        engine.open_merchant("shop", None, 0).await.unwrap().unwrap();
        for c in 0..f.consumers {
            let bank = format!("bank-{c}");
            sim.open_account(&bank, Amount::parse("100000.00").unwrap())
                .unwrap();
            let req = OpenConsumer {
                consumer: format!("c{c}"),
                credit_limit: "100000.00".into(),
                bank,
                wallet: "50.00".into(),
            };
            assert_eq!(engine.open_consumer(req, 0).await.unwrap(), Ok(Outcome::Ok));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        fill_leaving(&view_dir, 0);
        let mut acked: BTreeMap<String, OrderState> = BTreeMap::new();
        let mut first_failure = None;
        let mut refused_after = 0;
        for i in 1..3_000u64 {
            let id = format!("o{i}");
            let consumer = format!("c{}", i as usize % f.consumers);
            let r = engine.place_order(order(&id, &consumer), i).await;
            match (r, &first_failure) {
                (Ok(Ok(Outcome::Accepted)), None) => {
                    acked.insert(id, OrderState::Pending);
                }
                (Err(e), None) => {
                    let message = e.to_string();
                    let full = message.contains("disk full");
                    first_failure = Some((message, full));
                }
                (Err(_), Some(_)) => refused_after += 1,
                (other, first) => panic!("{}: place {id}: {other:?} (first failure: {first:?})", f.name),
            }
            if first_failure.is_some() && refused_after >= 8 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // What changed since the last checkpoint is in memory: read without sled.
        let mut read_errors = Vec::new();
        for (id, want) in &acked {
            match engine.order(id).await {
                Ok(o) => assert_eq!(o.map(|o| o.state), Some(*want), "reading order {id}"),
                Err(e) => read_errors.push(format!("order {id}: {e}")),
            }
        }
        let ledger_read = engine.ledger_state().await.map(|_| ()).map_err(|e| e.to_string());
        eprintln!(
            "{}: {} orders acknowledged, first failure {:?}, {} refused after it; {} point reads failed; whole-ledger read: {:?}",
            f.name,
            acked.len(),
            first_failure,
            refused_after,
            read_errors.len(),
            ledger_read
        );
        std::fs::remove_file(view_dir.join("filler")).unwrap();
        // Closing cannot write the last checkpoint (sled's error sticks): the restart will.
        let _ = engine.close().await;
        (
            acked,
            ViewFilled {
                read_errors,
                ledger_read,
                first_failure,
                refused_after,
            },
        )
    });
    // sled's threads let go of its files.
    std::thread::sleep(Duration::from_millis(100));
    let state = actix_rt::System::new().block_on(async {
        let sim = SimBank::open(&data).unwrap();
        let engine = Engine::open(&data, cfg, Arc::new(SimBankPort(sim.clone())))
            .await
            .unwrap_or_else(|e| panic!("{}: restart: {e}", f.name));
        let state = engine.ledger_state().await.unwrap();
        engine.close().await.unwrap();
        state
    });
    check_orders(&state, &acked, "after the restart");
    let report = onecard_engine::verify::verify(&data)
        .unwrap_or_else(|e| panic!("{}: verify after the restart: {e}", f.name));
    assert!(report.state == state, "{}: verify's replay differs", f.name);
    drop(mount);
    Some(filled)
}

/// Small checkpoints every few milliseconds: the first one that meets the full disk stops the
/// journal with "disk full"; nothing acknowledged is lost; point reads keep working.
#[test]
fn a_full_view_disk_stops_the_journal_with_disk_full_and_a_restart_has_every_order() {
    let Some(filled) = view_fills(&ViewFill {
        name: "view fills",
        checkpoint_interval_ms: 5,
        checkpoint_max_keys: 16,
        consumers: CONSUMERS,
    }) else {
        return;
    };
    let (message, full) = filled.first_failure.expect("the journal stopped");
    assert!(full, "the first failure says disk full: {message}");
    assert!(filled.refused_after >= 8, "every later command fails");
    assert!(
        filled.read_errors.is_empty(),
        "point reads failed while the view's disk was full: {:?}",
        filled.read_errors
    );
}

/// One large checkpoint (1,200 keys: three batches, due once the orders on the full disk have
/// touched that many consumers) fails on the full view disk: the journal stops with "disk full", point
/// reads of what changed since keep working (they are in memory). A whole-ledger read scans
/// sled, which may fail after its own ENOSPC (sled 0.34 finishes page splits while reading):
/// reported, not asserted.
#[test]
fn reads_keep_working_after_a_large_checkpoint_failed_on_a_full_disk() {
    let Some(filled) = view_fills(&ViewFill {
        name: "large checkpoint fails",
        checkpoint_interval_ms: 3_600_000,
        checkpoint_max_keys: 1_200,
        consumers: 1_300,
    }) else {
        return;
    };
    let (message, full) = filled.first_failure.expect("the journal stopped");
    assert!(full, "the first failure says disk full: {message}");
    assert!(
        filled.read_errors.is_empty(),
        "{} reads failed while the view's disk was full, the first: {:?}",
        filled.read_errors.len(),
        filled.read_errors.first()
    );
    eprintln!("whole-ledger read while full: {:?}", filled.ledger_read);
}
