//! Checkpoint + tail = replay: a property test with checkpoints and crashes at random moments,
//! including part-way through a checkpoint's writes.
//!
//! The real engine (actors, group-commit writer, log, checkpointer, simulated bank) runs random
//! commands with checkpoints every few milliseconds or every few keys, so that they happen
//! often, at any point of the work, and with the log rotating to new segments. A crash is a
//! copy of the data directory taken while the engine runs: first the view (sled, with whatever
//! the checkpointer has written at that moment), then the log, so that the log copied is at
//! least as far as any checkpoint stamp copied, as on a real disk (a checkpoint only covers
//! records already synced). Two kinds of crash points:
//!
//! - *quiescent*: no command is in flight (the checkpointer may be): the copy must reopen to
//!   exactly the state the engine showed before the copy;
//! - *in a burst*: commands run concurrently while another thread takes the copy after a random
//!   delay: every command answered before the copy started must be in the copy, and the copy's
//!   log must be a prefix of the original's.
//!
//! A crash *part-way through a checkpoint* cannot be timed from outside, so it is made at the
//! view level: a checkpoint is one new sorted run, committed when the runs' catalogue names it.
//! The crashed copy's runs directory gets a prefix of the file `view::write_checkpoint` writes
//! for a checkpoint of the log's tail (a random number of the records after the one it covers;
//! written by the engine's own code into a scratch store), under a name the catalogue does not
//! hold, as when the node dies before the commit: the whole file, or any prefix of it. In the
//! property test the prefix is cut at any byte; a deterministic test cuts a checkpoint of more
//! than three blocks at every 4 KiB.
//!
//! After each reopening: `verify` passes on the crashed copy, the reopened engine's
//! `ledger_state()` equals the full replay (`report.state`), every acknowledged command is
//! there, and the reopened engine can write, close and verify again.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use onecard_engine::engine::{EngineConfig, OpenConsumer, PlaceOrder, RefundRequest};
use onecard_engine::journal::{self, JournalConfig, ViewStore};
use onecard_engine::ledger::{Entry, EventKind, LedgerState};
use onecard_engine::view::{self, Overlay, StateView, ViewWrite};
use onecard_engine::{
    Amount, CommandResult, Engine, EngineError, Outcome, RefusalKind, RulesConfig, SimBank,
    SimBankPort,
};
use proptest::prelude::*;

mod crash_copy;
use crash_copy::{copy_tree, crash_copy};
use serde_json::json;

/// Where the deterministic test cuts a checkpoint's run file: every this many bytes.
const CHECKPOINT_CHUNK: usize = 4096;
/// The name a run cut by a crash gets in the copy: an id the catalogue never handed out.
const CUT_RUN_FILE: &str = "09999999999999999999.run";
const CODE: &str = "4711";

fn amount(s: &str) -> Amount {
    Amount::parse(s).unwrap()
}

fn money(cents: u64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

/// Checkpoint and log settings of one run.
#[derive(Debug, Clone)]
struct Tuning {
    checkpoint_interval_ms: u64,
    checkpoint_max_keys: usize,
    segment_bytes: u64,
    arbiters: usize,
    passivate_after_ms: u64,
}

fn tuning() -> impl Strategy<Value = Tuning> {
    (
        1u64..=50,
        1usize..=20,
        prop_oneof![Just(2_048u64), Just(8_192), Just(1 << 20)],
        1usize..=2,
        prop_oneof![Just(0u64), Just(5), Just(2_000)],
    )
        .prop_map(|(interval, keys, segment, arbiters, passivate)| Tuning {
            checkpoint_interval_ms: interval,
            checkpoint_max_keys: keys,
            segment_bytes: segment,
            arbiters,
            passivate_after_ms: passivate,
        })
}

fn config(t: &Tuning) -> EngineConfig {
    EngineConfig {
        rules: RulesConfig {
            wallet_cap: amount("100.00"),
            topup_threshold: amount("40.00"),
            direct_max: amount("5.00"),
            order_expiry_secs: 120,
            ..RulesConfig::default()
        },
        journal: JournalConfig {
            checkpoint_interval_ms: t.checkpoint_interval_ms,
            checkpoint_max_keys: t.checkpoint_max_keys,
            segment_bytes: t.segment_bytes,
            cache_bytes: 16 << 20,
            ..JournalConfig::default()
        },
        arbiters: t.arbiters,
        passivate_after: Duration::from_millis(t.passivate_after_ms),
        ..EngineConfig::default()
    }
}

/// A command as generated: accounts and orders by index into what exists when it runs.
#[derive(Debug, Clone)]
enum Gen {
    OpenConsumer {
        limit_dollars: u16,
        wallet_dollars: u16,
    },
    OpenMerchant,
    Place {
        consumer: u8,
        merchant: u8,
        cents: u16,
        release: u8,
        after_secs: u8,
    },
    Confirm {
        order: u8,
        satisfied: bool,
    },
    Code {
        order: u8,
        right: bool,
    },
    Cancel {
        order: u8,
    },
    Refund {
        order: u8,
        cents: u16,
    },
    Tick {
        advance: u8,
    },
}

fn gen() -> impl Strategy<Value = Gen> {
    prop_oneof![
        2 => (0u16..=300, 0u16..=100).prop_map(|(l, w)| Gen::OpenConsumer {
            limit_dollars: l,
            wallet_dollars: w,
        }),
        1 => Just(Gen::OpenMerchant),
        8 => (any::<u8>(), any::<u8>(), 1u16..=15_000, 0u8..3, 1u8..=90).prop_map(
            |(consumer, merchant, cents, release, after_secs)| Gen::Place {
                consumer,
                merchant,
                cents,
                release,
                after_secs,
            }
        ),
        4 => (any::<u8>(), prop::bool::weighted(0.8))
            .prop_map(|(order, satisfied)| Gen::Confirm { order, satisfied }),
        2 => (any::<u8>(), prop::bool::weighted(0.7))
            .prop_map(|(order, right)| Gen::Code { order, right }),
        2 => any::<u8>().prop_map(|order| Gen::Cancel { order }),
        2 => (any::<u8>(), 1u16..=8_000).prop_map(|(order, cents)| Gen::Refund { order, cents }),
        2 => (1u8..=100).prop_map(|advance| Gen::Tick { advance }),
    ]
}

/// Where a crash cuts a checkpoint of the log's tail: the last record it covers (a share of
/// the tail after the stamp, /255) and how many of its keys reached sled (a share, /255).
#[derive(Debug, Clone, Copy)]
struct Cut {
    upto: u8,
    keep: u8,
}

fn cut() -> impl Strategy<Value = Option<Cut>> {
    prop::option::weighted(
        0.6,
        (any::<u8>(), any::<u8>()).prop_map(|(upto, keep)| Cut { upto, keep }),
    )
}

#[derive(Debug, Clone)]
enum Step {
    Do(Gen),
    /// Lets the checkpointer run for a while.
    Pause {
        ms: u8,
    },
    /// Every idle consumer actor leaves memory: the next command reads it from the view.
    Passivate,
    /// A crash with no command in flight, after a short wait.
    Crash {
        wait_ms: u8,
        cut: Option<Cut>,
    },
    /// Commands run concurrently; another thread copies the data directory after a delay.
    Burst {
        cmds: Vec<Gen>,
        copy_after_us: u16,
        cut: Option<Cut>,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        20 => gen().prop_map(Step::Do),
        2 => (0u8..=30).prop_map(|ms| Step::Pause { ms }),
        1 => Just(Step::Passivate),
        2 => (0u8..=20, cut()).prop_map(|(wait_ms, cut)| Step::Crash { wait_ms, cut }),
        2 => (prop::collection::vec(gen(), 2..10), 0u16..=4_000, cut()).prop_map(
            |(cmds, copy_after_us, cut)| Step::Burst {
                cmds,
                copy_after_us,
                cut,
            }
        ),
    ]
}

/// A command with its ids resolved.
#[derive(Debug, Clone)]
enum Cmd {
    OpenConsumer {
        id: String,
        limit: u64,
        wallet: u64,
    },
    OpenMerchant {
        id: String,
    },
    Place {
        id: String,
        consumer: String,
        merchant: String,
        cents: u64,
        release: serde_json::Value,
    },
    Confirm {
        order: String,
        satisfied: bool,
    },
    Code {
        order: String,
        code: String,
    },
    Cancel {
        order: String,
    },
    Refund {
        id: String,
        order: String,
        cents: u64,
    },
    Tick,
}

#[derive(Debug, Clone)]
struct Planned {
    cmd: Cmd,
    now: u64,
}

/// What exists, for resolving generated commands.
struct World {
    consumers: Vec<String>,
    merchants: Vec<String>,
    orders: Vec<String>,
    next_id: u64,
    now: u64,
}

impl World {
    fn pick_order(&self, i: u8) -> String {
        if self.orders.is_empty() {
            return "no-such-order".into();
        }
        // Mostly the latest orders, so that they go through their whole life.
        let window = self.orders.len().min(6);
        self.orders[self.orders.len() - 1 - usize::from(i) % window].clone()
    }

    fn resolve(&mut self, g: &Gen) -> Planned {
        self.now += 1;
        self.next_id += 1;
        let n = self.next_id;
        let cmd = match g {
            Gen::OpenConsumer {
                limit_dollars,
                wallet_dollars,
            } => Cmd::OpenConsumer {
                id: format!("c{n}"),
                limit: u64::from(*limit_dollars) * 100,
                wallet: u64::from(*wallet_dollars) * 100,
            },
            Gen::Place { .. } if self.consumers.is_empty() => Cmd::OpenConsumer {
                id: format!("c{n}"),
                limit: 20_000,
                wallet: 5_000,
            },
            Gen::OpenMerchant => Cmd::OpenMerchant {
                id: format!("m{n}"),
            },
            Gen::Place {
                consumer,
                merchant,
                cents,
                release,
                after_secs,
            } => Cmd::Place {
                id: format!("o{n}"),
                consumer: self.consumers[usize::from(*consumer) % self.consumers.len()].clone(),
                merchant: self.merchants[usize::from(*merchant) % self.merchants.len()].clone(),
                cents: u64::from(*cents),
                release: match release {
                    0 => json!({"on": "receipt"}),
                    1 => json!({"on": "code", "code": CODE}),
                    _ => json!({"on": "time", "after_secs": after_secs}),
                },
            },
            Gen::Confirm { order, satisfied } => Cmd::Confirm {
                order: self.pick_order(*order),
                satisfied: *satisfied,
            },
            Gen::Code { order, right } => Cmd::Code {
                order: self.pick_order(*order),
                code: if *right { CODE.into() } else { "0000".into() },
            },
            Gen::Cancel { order } => Cmd::Cancel {
                order: self.pick_order(*order),
            },
            Gen::Refund { order, cents } => Cmd::Refund {
                id: format!("r{n}"),
                order: self.pick_order(*order),
                cents: u64::from(*cents),
            },
            Gen::Tick { advance } => {
                self.now += u64::from(*advance);
                Cmd::Tick
            }
        };
        Planned { cmd, now: self.now }
    }

    fn record(&mut self, p: &Planned, r: &CommandResult) {
        match &p.cmd {
            Cmd::OpenConsumer { id, .. } if r.is_ok() => self.consumers.push(id.clone()),
            Cmd::OpenMerchant { id } if r.is_ok() => self.merchants.push(id.clone()),
            Cmd::Place { id, .. } => self.orders.push(id.clone()),
            _ => {}
        }
    }
}

async fn run(engine: &Engine, sim: &SimBank, p: &Planned) -> Result<CommandResult, EngineError> {
    let now = p.now;
    match &p.cmd {
        Cmd::OpenConsumer { id, limit, wallet } => {
            let bank = format!("{id}-bank");
            sim.open_account(&bank, Amount::from_cents(100_000))?;
            let req = OpenConsumer {
                consumer: id.clone(),
                credit_limit: money(*limit),
                bank,
                wallet: money(*wallet),
            };
            engine.open_consumer(req, now).await
        }
        Cmd::OpenMerchant { id } => engine.open_merchant(id, None, now).await,
        Cmd::Place {
            id,
            consumer,
            merchant,
            cents,
            release,
        } => {
            let req = PlaceOrder {
                id: id.clone(),
                consumer: consumer.clone(),
                merchant: merchant.clone(),
                amount: money(*cents),
                release: release.clone(),
            };
            engine.place_order(req, now).await
        }
        Cmd::Confirm { order, satisfied } => engine.confirm_receipt(order, *satisfied, now).await,
        Cmd::Code { order, code } => engine.enter_code(order, code, now).await,
        Cmd::Cancel { order } => engine.cancel_order(order, now).await,
        Cmd::Refund { id, order, cents } => {
            let req = RefundRequest {
                id: id.clone(),
                order: order.clone(),
                amount: money(*cents),
            };
            engine.refund(req, now).await
        }
        Cmd::Tick => engine.tick(now).await,
    }
}

/// What an answered command left in the log: an event naming its id, or a clock entry.
#[derive(Debug, Clone)]
enum Effect {
    Event(&'static str, String),
    Clock(u64),
}

/// The effect of an answered command, and whether a record must hold it (an answer that is
/// not a refusal). Refusals recorded with their order id (credit, funds) are checked when the
/// original's log holds them.
fn effect(p: &Planned, r: &CommandResult) -> Option<(Effect, bool)> {
    use Effect::Event as E;
    let e = match (&p.cmd, r) {
        (Cmd::OpenConsumer { id, .. }, Ok(_)) => E("ConsumerOpened", id.clone()),
        (Cmd::OpenMerchant { id }, Ok(_)) => E("MerchantOpened", id.clone()),
        (Cmd::Place { id, .. }, Ok(_)) => E("OrderPlaced", id.clone()),
        (Cmd::Place { id, .. }, Err(refusal))
            if matches!(refusal.kind, RefusalKind::Credit | RefusalKind::Funds) =>
        {
            E("OrderPlaced", id.clone())
        }
        (Cmd::Confirm { order, .. } | Cmd::Code { order, .. }, Ok(Outcome::Settled)) => {
            E("OrderSettled", order.clone())
        }
        (Cmd::Confirm { order, .. } | Cmd::Code { order, .. }, Ok(Outcome::Disputed)) => {
            E("OrderDisputed", order.clone())
        }
        (Cmd::Confirm { order, .. } | Cmd::Code { order, .. }, Ok(Outcome::AwaitingFunds)) => {
            E("OrderAwaitingFunds", order.clone())
        }
        (Cmd::Cancel { order }, Ok(_)) => E("OrderCancelled", order.clone()),
        (Cmd::Refund { id, .. }, Ok(_)) => E("Refunded", id.clone()),
        (Cmd::Tick, Ok(_)) => Effect::Clock(p.now),
        _ => return None,
    };
    Some((e, r.is_ok()))
}

fn entry_has(entry: &Entry, e: &Effect) -> bool {
    use EventKind::*;
    match e {
        Effect::Clock(t) => {
            entry.at >= *t
                && entry
                    .events
                    .iter()
                    .any(|ev| matches!(ev.kind, ClockAdvanced))
        }
        Effect::Event(kind, id) => entry.events.iter().any(|ev| match (&ev.kind, *kind) {
            (ConsumerOpened { consumer, .. }, "ConsumerOpened") => consumer == id,
            (MerchantOpened { merchant, .. }, "MerchantOpened") => merchant == id,
            (OrderPlaced { order, .. }, "OrderPlaced")
            | (OrderSettled { order, .. }, "OrderSettled")
            | (OrderDisputed { order, .. }, "OrderDisputed")
            | (OrderAwaitingFunds { order, .. }, "OrderAwaitingFunds")
            | (OrderCancelled { order, .. }, "OrderCancelled") => order == id,
            (Refunded { refund, .. }, "Refunded") => refund == id,
            _ => false,
        }),
    }
}

/// What [`cut_checkpoint`] wrote.
#[derive(Debug)]
struct CutCheckpoint {
    /// The record the checkpoint in sled covers (its meta `k`), which stays.
    stamp: u64,
    /// The last record the cut checkpoint covers, and the log's last record.
    upto: u64,
    log_end: u64,
    /// Bytes of the checkpoint's run file left, and its whole length.
    kept: usize,
    writes: usize,
}

impl std::fmt::Display for CutCheckpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "checkpoint of records {}..={} (log ends at {}) cut after {} of the {} bytes of its run, before its commit",
            self.stamp + 1,
            self.upto,
            self.log_end,
            self.kept,
            self.writes,
        )
    }
}

/// A crash in the middle of a checkpoint: into `dir`'s runs directory, the first bytes of the
/// run file that `view::write_checkpoint` writes for a checkpoint of the log's records after
/// the one the checkpoint covers, up to a later record, under a name the catalogue does not
/// hold (the crash came before its commit). The layer is what the overlay holds for those
/// records (each record's writes, then its stamp write `h`). `chunks`: cut after that many
/// times 4 KiB; else at the byte `cut.keep` points to (255: the whole file). None when the log
/// has no record after the checkpoint.
fn cut_checkpoint(dir: &Path, cut: Cut, chunks: Option<usize>) -> Option<CutCheckpoint> {
    let store = ViewStore::open(dir, None).expect("open the crashed view");
    let meta_seq = |store: &ViewStore| {
        StateView::new(store.runs.clone(), Arc::new(Overlay::default()))
            .meta()
            .unwrap()
            .map_or(0, |m| m.last_seq)
    };
    let stamp = meta_seq(&store);
    let tail: Vec<(u64, Vec<ViewWrite>)> = journal::read_log(dir, None)
        .unwrap()
        .map(|r| r.expect("the crashed log reads back"))
        .filter(|(rec, _)| rec.seq > stamp)
        .map(|(rec, mut writes)| {
            writes.push(view::stamp_write(rec.seq, &rec.hash));
            (rec.seq, writes)
        })
        .collect();
    let log_end = tail.last()?.0;
    let n = 1 + usize::from(cut.upto) * (tail.len() - 1) / 255;
    let overlay = Overlay::default();
    for (seq, writes) in tail.into_iter().take(n) {
        overlay.apply(seq, writes);
    }
    let (layer, upto) = overlay.seal()?;
    // The engine's own code writes the run, into a scratch store.
    let scratch = tempfile::tempdir().unwrap();
    let scratch_db = sled::Config::new().temporary(true).open().unwrap();
    let scratch_runs =
        onecard_storage::runs::RunStore::open(scratch_db, &scratch.path().join("runs")).unwrap();
    view::write_checkpoint(&scratch_runs, &layer).unwrap();
    let files: Vec<_> = std::fs::read_dir(scratch.path().join("runs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(files.len(), 1, "a checkpoint is one run: {files:?}");
    let bytes = std::fs::read(&files[0]).unwrap();
    let kept = match chunks {
        Some(c) => (c * CHECKPOINT_CHUNK).min(bytes.len()),
        None => usize::from(cut.keep) * bytes.len() / 255,
    };
    std::fs::write(
        dir.join("view").join("runs").join(CUT_RUN_FILE),
        &bytes[..kept],
    )
    .unwrap();
    assert_eq!(meta_seq(&store), stamp, "the meta must stay old");
    drop(store);
    Some(CutCheckpoint {
        stamp,
        upto,
        log_end,
        kept,
        writes: bytes.len(),
    })
}

/// Panics naming the first account that differs.
fn assert_same(got: &LedgerState, want: &LedgerState, what: &str) {
    if got == want {
        return;
    }
    for (id, c) in &want.consumers {
        let g = got.consumers.get(id);
        assert!(
            g == Some(c),
            "{what}: consumer {id} differs:\n got  {g:?}\n want {c:?}"
        );
    }
    assert_eq!(
        got.consumers.keys().collect::<Vec<_>>(),
        want.consumers.keys().collect::<Vec<_>>(),
        "{what}: consumers"
    );
    assert_eq!(got.merchants, want.merchants, "{what}: merchants");
    assert_eq!(
        (got.clock, got.entries, &got.config),
        (want.clock, want.entries, &want.config),
        "{what}: clock, entries, rules"
    );
    panic!("{what}: the states differ (owners, cards or authorisations)");
}

/// What a crashed copy must hold.
struct Expect<'a> {
    /// Copied with nothing in flight: exactly the state the engine showed before the copy.
    exact: Option<&'a LedgerState>,
    /// Commands answered before the copy began: (effect, must a record hold it, description).
    acked: Vec<(Effect, bool, String)>,
    /// The original's records once every command of the step was answered.
    original: Vec<(u64, Vec<Entry>)>,
}

/// Cuts a checkpoint into the crashed copy if asked, verifies it, reopens it and checks it.
async fn check_crashed(copy: &Path, t: &Tuning, cut: Option<Cut>, want: Expect<'_>, label: &str) {
    let mut label = label.to_string();
    if let Some(c) = cut {
        if let Some(done) = cut_checkpoint(copy, c, None) {
            label += &format!(" [{done}]");
        }
    }
    let report = onecard_engine::verify::verify(copy)
        .unwrap_or_else(|e| panic!("{label}: verify of the crashed copy: {e}"));
    let sim = SimBank::open(copy).unwrap();
    let engine = Engine::open(copy, config(t), Arc::new(SimBankPort(sim.clone())))
        .await
        .unwrap_or_else(|e| panic!("{label}: reopening the crashed copy: {e}"));
    let state = engine.ledger_state().await.unwrap();
    assert_same(&state, &report.state, &format!("{label}: view vs replay"));
    if let Some(exact) = want.exact {
        assert_same(
            &state,
            exact,
            &format!("{label}: reopened vs before the crash"),
        );
    }
    let last = engine.last_seq().unwrap();
    assert_eq!(report.records, last, "{label}: records");
    if want.exact.is_some() {
        assert_eq!(
            last,
            want.original.len() as u64,
            "{label}: a quiescent copy holds every record"
        );
    }
    let records = engine.records_after(0, usize::MAX).unwrap();
    assert_eq!(records.len() as u64, last, "{label}: records read back");
    assert!(
        records.len() <= want.original.len(),
        "{label}: the copy has more records than the original"
    );
    for (a, b) in records.iter().zip(&want.original) {
        assert!(
            a == b,
            "{label}: record {} of the copy is not the original's",
            a.0
        );
    }
    for (e, required, what) in &want.acked {
        let holder = want
            .original
            .iter()
            .find(|(_, entries)| entries.iter().any(|en| entry_has(en, e)));
        match holder {
            Some((seq, _)) => assert!(
                *seq <= last,
                "{label}: acknowledged before the crash but lost: {what} (record {seq}; the copy ends at record {last})"
            ),
            None => assert!(!required, "{label}: {what} was answered but no record holds it"),
        }
    }
    // The reopened engine goes on writing (a tick: an entry per consumer with time work, then
    // the clock's), closes and verifies.
    assert_eq!(
        engine.tick(state.clock + 1).await.unwrap(),
        Ok(Outcome::Ok),
        "{label}"
    );
    engine.close().await.unwrap();
    let again = onecard_engine::verify::verify(copy)
        .unwrap_or_else(|e| panic!("{label}: verify after reopening and closing: {e}"));
    assert!(again.records > last, "{label}: the tick after reopening");
}

async fn scenario(t: Tuning, steps: Vec<Step>) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let sim = SimBank::open(&data).unwrap();
    let engine = Engine::open(&data, config(&t), Arc::new(SimBankPort(sim.clone())))
        .await
        .unwrap();
    engine.open_merchant("m0", None, 0).await.unwrap().unwrap();
    let mut w = World {
        consumers: Vec::new(),
        merchants: vec!["m0".into()],
        orders: Vec::new(),
        next_id: 0,
        now: 0,
    };
    for (i, step) in steps.iter().enumerate() {
        let label = format!("step {i} ({t:?})");
        match step {
            Step::Do(g) => {
                let p = w.resolve(g);
                let r = run(&engine, &sim, &p)
                    .await
                    .unwrap_or_else(|e| panic!("{label}: {p:?}: {e}"));
                w.record(&p, &r);
            }
            Step::Pause { ms } => tokio::time::sleep(Duration::from_millis(u64::from(*ms))).await,
            Step::Passivate => {
                engine.passivate_idle(Duration::ZERO);
            }
            Step::Crash { wait_ms, cut } => {
                tokio::time::sleep(Duration::from_millis(u64::from(*wait_ms))).await;
                let before = engine.ledger_state().await.unwrap();
                let original = engine.records_after(0, usize::MAX).unwrap();
                let copy = tmp.path().join(format!("crash-{i}"));
                crash_copy(&data, &copy);
                let want = Expect {
                    exact: Some(&before),
                    acked: Vec::new(),
                    original,
                };
                check_crashed(&copy, &t, *cut, want, &format!("{label}: quiescent crash")).await;
                std::fs::remove_dir_all(&copy).unwrap();
            }
            Step::Burst {
                cmds,
                copy_after_us,
                cut,
            } => {
                let planned: Vec<Planned> = cmds.iter().map(|g| w.resolve(g)).collect();
                let copy = tmp.path().join(format!("crash-{i}"));
                let copying = Arc::new(AtomicBool::new(false));
                let copier = {
                    let (data, copy, copying) = (data.clone(), copy.clone(), copying.clone());
                    let delay = Duration::from_micros(u64::from(*copy_after_us));
                    std::thread::spawn(move || {
                        std::thread::sleep(delay);
                        copying.store(true, Ordering::SeqCst);
                        crash_copy(&data, &copy);
                    })
                };
                let results = futures::future::join_all(planned.iter().map(|p| {
                    let (engine, sim, copying) = (&engine, &sim, copying.clone());
                    async move {
                        let r = run(engine, sim, p).await;
                        // Answered before the copy began: it must be in the copy.
                        (r, !copying.load(Ordering::SeqCst))
                    }
                }))
                .await;
                copier.join().unwrap();
                let mut acked = Vec::new();
                for (p, (r, before_copy)) in planned.iter().zip(results) {
                    let r = r.unwrap_or_else(|e| panic!("{label}: {p:?}: {e}"));
                    w.record(p, &r);
                    if before_copy {
                        if let Some((e, required)) = effect(p, &r) {
                            acked.push((e, required, format!("{p:?} -> {r:?}")));
                        }
                    }
                }
                let want = Expect {
                    exact: None,
                    acked,
                    original: engine.records_after(0, usize::MAX).unwrap(),
                };
                check_crashed(&copy, &t, *cut, want, &format!("{label}: crash in a burst")).await;
                std::fs::remove_dir_all(&copy).unwrap();
            }
        }
    }
    let last = engine.ledger_state().await.unwrap();
    engine.close().await.unwrap();
    let report = onecard_engine::verify::verify(&data).unwrap();
    assert_same(&report.state, &last, "the original, closed");
}

proptest! {
    #![proptest_config(ProptestConfig {
        // 16 cases: about 10-25 s in a debug build on two shared cores; PROPTEST_CASES=N for more.
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(16),
        // Each case takes up to a second: shrinking is bounded.
        max_shrink_iters: 100,
        max_shrink_time: 60_000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn checkpoint_plus_tail_equals_replay_after_crashes_at_random_moments(
        tuning in tuning(),
        steps in prop::collection::vec(step(), 8..40),
        last_wait_ms in 0u8..=20,
        last_cut in cut(),
    ) {
        let mut steps = steps;
        steps.push(Step::Crash { wait_ms: last_wait_ms, cut: last_cut });
        actix_rt::System::new().block_on(scenario(tuning, steps));
    }
}

/// A checkpoint of more than 1,536 writes, cut at every 512th write (and at a record half-way
/// through the tail): each reopens to exactly the state before the crash.
#[test]
fn a_checkpoint_cut_part_way_reopens_to_the_same_state() {
    const CONSUMERS: usize = 500;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let crashed = tmp.path().join("crashed");
    // No checkpoint but the one at close: the tail after it is all in one checkpoint-to-be.
    let t = Tuning {
        checkpoint_interval_ms: 3_600_000,
        checkpoint_max_keys: 10_000_000,
        segment_bytes: 64 << 10,
        arbiters: 2,
        passivate_after_ms: 2_000,
    };
    let before = actix_rt::System::new().block_on(async {
        {
            let sim = SimBank::open(&data).unwrap();
            let engine = Engine::open(&data, config(&t), Arc::new(SimBankPort(sim.clone())))
                .await
                .unwrap();
            engine.open_merchant("m0", None, 0).await.unwrap().unwrap();
            let p = Planned {
                cmd: Cmd::OpenConsumer {
                    id: "first".into(),
                    limit: 100_000,
                    wallet: 5_000,
                },
                now: 1,
            };
            assert_eq!(run(&engine, &sim, &p).await.unwrap(), Ok(Outcome::Ok));
            engine.close().await.unwrap();
        }
        let sim = SimBank::open(&data).unwrap();
        let engine = Engine::open(&data, config(&t), Arc::new(SimBankPort(sim.clone())))
            .await
            .unwrap();
        // The bank's accounts from a few threads, so that the writer groups them.
        let openers: Vec<_> = (0..8)
            .map(|k| {
                let sim = sim.clone();
                std::thread::spawn(move || {
                    for c in (k..CONSUMERS).step_by(8) {
                        sim.open_account(&format!("c{c}-bank"), Amount::from_cents(100_000))
                            .unwrap();
                    }
                })
            })
            .collect();
        for o in openers {
            o.join().unwrap();
        }
        let opens = (0..CONSUMERS).map(|c| {
            let req = OpenConsumer {
                consumer: format!("c{c}"),
                credit_limit: "500.00".into(),
                bank: format!("c{c}-bank"),
                wallet: "20.00".into(),
            };
            engine.open_consumer(req, 2)
        });
        for r in futures::future::join_all(opens).await {
            assert_eq!(r.unwrap(), Ok(Outcome::Ok));
        }
        let places = (0..CONSUMERS).map(|c| {
            let req = PlaceOrder {
                id: format!("o{c}"),
                consumer: format!("c{c}"),
                merchant: "m0".into(),
                amount: "30.00".into(),
                release: json!({"on": "receipt"}),
            };
            engine.place_order(req, 3)
        });
        for r in futures::future::join_all(places).await {
            assert_eq!(r.unwrap(), Ok(Outcome::Accepted));
        }
        let settled: Vec<String> = (0..CONSUMERS).step_by(2).map(|c| format!("o{c}")).collect();
        let confirms = settled.iter().map(|o| engine.confirm_receipt(o, true, 4));
        for r in futures::future::join_all(confirms).await {
            assert_eq!(r.unwrap(), Ok(Outcome::Settled));
        }
        let before = engine.ledger_state().await.unwrap();
        crash_copy(&data, &crashed);
        engine.close().await.unwrap();
        before
    });

    let mut cuts = 0;
    for upto in [127u8, 255] {
        for chunks in 0.. {
            let copy = tmp.path().join(format!("cut-{upto}-{chunks}"));
            copy_tree(&crashed, &copy);
            let cut = cut_checkpoint(&copy, Cut { upto, keep: 0 }, Some(chunks)).unwrap();
            let (stamp, end) = (cut.stamp, cut.log_end);
            assert!(stamp > 0, "the first run's checkpoint is under the tail");
            if upto == 255 {
                assert_eq!(cut.upto, end);
                assert!(
                    cut.writes > 3 * CHECKPOINT_CHUNK,
                    "{} bytes: want more than three blocks",
                    cut.writes
                );
            }
            let label = cut.to_string();
            actix_rt::System::new().block_on(async {
                let report = onecard_engine::verify::verify(&copy)
                    .unwrap_or_else(|e| panic!("{label}: verify: {e}"));
                assert_eq!(report.records, end);
                assert!(
                    copy.join("view").join("runs").join(CUT_RUN_FILE).exists(),
                    "{label}: verify leaves the uncommitted run where it is"
                );
                let sim = SimBank::open(&copy).unwrap();
                let engine = Engine::open(&copy, config(&t), Arc::new(SimBankPort(sim.clone())))
                    .await
                    .unwrap_or_else(|e| panic!("{label}: reopening: {e}"));
                assert_eq!(engine.recovery().replayed, end - stamp, "{label}");
                assert!(
                    !copy.join("view").join("runs").join(CUT_RUN_FILE).exists(),
                    "{label}: the uncommitted run is deleted at opening"
                );
                let state = engine.ledger_state().await.unwrap();
                assert_same(&state, &report.state, &format!("{label}: view vs replay"));
                assert_same(&state, &before, &format!("{label}: vs before"));
                engine.close().await.unwrap();
                let again = onecard_engine::verify::verify(&copy).unwrap();
                assert_same(&again.state, &before, &format!("{label}: closed"));
            });
            std::fs::remove_dir_all(&copy).unwrap();
            cuts += 1;
            if cut.kept == cut.writes {
                break;
            }
        }
    }
    assert!(cuts >= 7, "{cuts} cuts");
}
