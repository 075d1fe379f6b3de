//! `onecard-sim load`: opens the engine, the population, runs the workload (with an optional
//! restart), drains, closes, verifies and reports.

use std::cell::{Cell, RefCell};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use onecard_adapters::banks::{open_bank, BankKind, OpenedBank};
use onecard_adapters::iso20022::bank::BankSettings;
use onecard_engine::engine::EngineConfig;
use onecard_engine::{verify, Amount, Engine, EngineError, NodeConfig};

use crate::bank_admin::{self, AdminError, BankAdmin};
use crate::checks::{self, ExternalBank};
use crate::options::LoadArgs;
use crate::population::{self, Accounts, SetupError};
use crate::report::{Report, Residency, Restart, ServicesSummary, VerifySummary};
use crate::runner::{Book, Common, Ctx, Pace};
use crate::stats::{peak_rss_bytes, Recorder};
use crate::workload::{Generator, Shape, TICK_SECS};

/// A day: 1440 ticks, far more than can pass while one lifecycle is in flight.
const MIN_EXPIRY_SECS: u64 = 86_400;

/// Why a run could not be carried out at all (as opposed to a run whose checks fail).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Usage(String),
    #[error("data directory {path}: {reason}")]
    DataDir { path: String, reason: String },
    #[error("configuration: {0}")]
    Config(String),
    #[error("opening the bank: {0}")]
    Bank(#[from] onecard_engine::bank::BankError),
    #[error("bank simulator: {0}")]
    Admin(#[from] AdminError),
    #[error("engine: {0}")]
    Engine(#[from] EngineError),
    #[error("setup: {0}")]
    Setup(#[from] SetupError),
}

/// Where the run keeps its data.
enum DataDir {
    Temp(tempfile::TempDir),
    Given(PathBuf),
}

impl DataDir {
    fn new(given: Option<&Path>) -> Result<DataDir, LoadError> {
        let err = |path: &Path, reason: String| LoadError::DataDir {
            path: path.display().to_string(),
            reason,
        };
        match given {
            None => tempfile::Builder::new()
                .prefix("onecard-sim-")
                .tempdir()
                .map(DataDir::Temp)
                .map_err(|e| err(Path::new("(temporary)"), e.to_string())),
            Some(p) => {
                // A population opened over an old one would collide with its names.
                if p.exists()
                    && std::fs::read_dir(p)
                        .map_err(|e| err(p, e.to_string()))?
                        .next()
                        .is_some()
                {
                    return Err(err(p, "must be empty or absent".into()));
                }
                std::fs::create_dir_all(p).map_err(|e| err(p, e.to_string()))?;
                Ok(DataDir::Given(p.to_path_buf()))
            }
        }
    }

    fn path(&self) -> &Path {
        match self {
            DataDir::Temp(t) => t.path(),
            DataDir::Given(p) => p,
        }
    }

    /// Removes a temporary directory unless asked to keep it; a given one is always kept.
    fn finish(self, keep: bool) -> (String, bool) {
        match self {
            DataDir::Temp(t) if keep => (t.keep().display().to_string(), true),
            DataDir::Temp(t) => {
                let p = t.path().display().to_string();
                drop(t);
                (p, false)
            }
            DataDir::Given(p) => (p.display().to_string(), true),
        }
    }
}

/// The CLI entry: exit 0 when every check passes, 1 when one fails or the run could not be
/// carried out, 2 for bad options.
pub fn main(args: LoadArgs) -> ExitCode {
    if let Err(e) = args.validate() {
        eprintln!("onecard-sim load: {e}");
        return ExitCode::from(2);
    }
    let system = actix_rt::System::new();
    match system.block_on(run(&args)) {
        Ok(report) => {
            if args.json {
                println!("{}", report.json());
            } else {
                println!("{}", report.text());
            }
            if report.invariants_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("onecard-sim load: {e}");
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({"error": e.to_string(), "invariants_ok": false})
                );
            }
            ExitCode::from(match e {
                LoadError::Usage(_) => 2,
                _ => 1,
            })
        }
    }
}

/// The engine's configuration and the currency (`[rules] currency`, for the ISO 20022 bank's
/// messages).
fn engine_config(args: &LoadArgs) -> Result<(EngineConfig, String), LoadError> {
    let node = match &args.config {
        Some(path) => NodeConfig::load(path).map_err(|e| LoadError::Config(e.to_string()))?,
        None => NodeConfig::default(),
    };
    let mut cfg = node.engine;
    if let Some(n) = args.arbiters {
        cfg.arbiters = n as usize;
    }
    Ok((cfg, node.currency))
}

/// A progress bar on standard error, or a hidden one when that is not a terminal or the
/// output is JSON.
fn progress(args: &LoadArgs, len: u64, what: &str) -> ProgressBar {
    if args.json || !std::io::stderr().is_terminal() || !std::io::stdout().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    let template = format!(
        "{{prefix:>5}} [{{elapsed_precise}}] {{wide_bar}} {{pos}}/{{len}} {what} ({{rate}}, eta {{eta}})"
    );
    if let Ok(style) = ProgressStyle::with_template(&template) {
        pb.set_style(style.with_key(
            "rate",
            |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.0}/s", state.per_sec());
            },
        ));
    }
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

/// The engine over its bank: the in-process simulated bank (`BankKind::Simulated`: exactly
/// `SimBank::open` and `SimBankPort`), or the ISO 20022 adapter to a bank simulator.
async fn open_node(
    dir: &Path,
    cfg: &EngineConfig,
    kind: &BankKind,
) -> Result<(Engine, OpenedBank), LoadError> {
    let bank = open_bank(kind, dir, cfg.data_key.clone())?;
    match Engine::open(dir, cfg.clone(), bank.port.clone()).await {
        Ok(engine) => Ok((engine, bank)),
        Err(e) => {
            bank.close();
            Err(e.into())
        }
    }
}

async fn close_node(engine: Engine, bank: OpenedBank) -> Result<(), LoadError> {
    engine.close().await?;
    bank.close();
    Ok(())
}

/// Every balance at the bank: the in-process bank's, or the bank simulator's read over its
/// admin API (`None` beside them); then its own account taken out of the list, and its
/// totals.
async fn bank_balances(
    bank: &OpenedBank,
    admin: Option<&BankAdmin>,
) -> Result<(Vec<(String, Amount)>, Option<ExternalBank>), LoadError> {
    let (Some(admin), Some(iso)) = (admin, &bank.iso20022) else {
        let balances = bank.simulated.as_ref().map(|b| b.balances());
        return Ok((balances.unwrap_or_default(), None));
    };
    let own_account = iso.settings().own_account.clone();
    let reader = admin.clone();
    let (lines, totals) = actix_rt::task::spawn_blocking(move || {
        Ok::<_, AdminError>((reader.accounts()?, reader.totals()?))
    })
    .await
    .map_err(|e| LoadError::Setup(SetupError::Join(e.to_string())))??;
    let what = format!("GET {}/admin/accounts", admin.base());
    let mut own_balance = 0;
    let mut balances = Vec::with_capacity(lines.len());
    for line in lines {
        let cents = bank_admin::cents(&what, &line.balance)?;
        if line.account == own_account {
            own_balance = cents;
        } else {
            let amount = Amount::from_cents_i128(cents).map_err(|e| AdminError::Answer {
                what: what.clone(),
                reason: e.to_string(),
            })?;
            balances.push((line.account, amount));
        }
    }
    let ext = ExternalBank {
        own_account,
        own_balance,
        total: bank_admin::cents("GET /admin/totals", &totals.total)?,
        accounts: totals.accounts,
        bank_messages: totals.messages,
        bank_bookings: totals.bookings,
        messages: 0,
        resends: 0,
        unknown_outcomes: 0,
        unresolved: 0,
    };
    Ok((balances, Some(ext)))
}

/// The ISO 20022 adapter's counters, once the engine has closed.
fn adapter_counters(bank: &OpenedBank, ext: &mut ExternalBank) {
    use std::sync::atomic::Ordering::Relaxed;
    if let Some(iso) = &bank.iso20022 {
        let stats = iso.stats();
        ext.messages = stats.messages.load(Relaxed);
        ext.resends = stats.resends.load(Relaxed);
        ext.unknown_outcomes = stats.unknown_outcomes.load(Relaxed);
        ext.unresolved = iso.unresolved().len();
    }
}

/// The engine, once every worker that shared it has finished.
fn sole(engine: Rc<Engine>) -> Result<Engine, LoadError> {
    Rc::try_unwrap(engine).map_err(|_| {
        LoadError::Engine(EngineError::Internal(
            "a finished worker still holds the engine".into(),
        ))
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn run(args: &LoadArgs) -> Result<Report, LoadError> {
    let (cfg, currency) = engine_config(args)?;
    let (kind, admin) = match &args.bank {
        None => (BankKind::Simulated, None),
        Some(url) => {
            let settings = BankSettings::for_endpoint(url, &currency);
            settings
                .validate()
                .map_err(|e| LoadError::Usage(format!("--bank: {e}")))?;
            let admin = BankAdmin::new(&settings.endpoint);
            (BankKind::Iso20022(Box::new(settings)), Some(admin))
        }
    };
    // The simulated clock advances TICK_SECS a tick. With a short expiry, an order could expire
    // between its placement and its release, which the lifecycles do not expect.
    if cfg.rules.order_expiry_secs < MIN_EXPIRY_SECS {
        return Err(LoadError::Usage(format!(
            "order_expiry_secs {} is too short for the simulator, whose clock advances {TICK_SECS} s a tick: \
             pending orders could expire in the middle of their lifecycle; use at least {MIN_EXPIRY_SECS}",
            cfg.rules.order_expiry_secs
        )));
    }
    let data = DataDir::new(args.data.as_deref())?;
    let dir = data.path().to_path_buf();
    let (engine, mut bank) = open_node(&dir, &cfg, &kind).await?;
    let rules = engine.rules().clone();
    let cents = |a: onecard_engine::Amount| i64::try_from(a.cents()).unwrap_or(i64::MAX);

    // Setup: timed apart from the run.
    let pb = progress(args, args.consumers, "consumers opened");
    pb.set_prefix("setup");
    let setup_start = Instant::now();
    let accounts = match (&admin, &bank.simulated) {
        (Some(admin), _) => Accounts::External(admin),
        (None, Some(sim)) => Accounts::Embedded(sim),
        (None, None) => return Err(LoadError::Config("the in-process bank did not open".into())),
    };
    let opened = population::open_all(
        &engine,
        accounts,
        args.seed,
        args.consumers,
        args.merchants,
        args.services_pct > 0.0,
        args.setup_concurrency,
        &pb,
    )
    .await?;
    let setup_secs = setup_start.elapsed().as_secs_f64();
    pb.finish_and_clear();

    let generator = Generator::new(Shape {
        seed: args.seed,
        consumers: args.consumers,
        merchants: args.merchants,
        orders: args.orders,
        mix: args.mix(),
        tick_every: args.tick_every(),
        zipf_s: args.zipf_s,
        code_attempts_max: rules.code_attempts_max,
        wallet_cap: cents(rules.wallet_cap),
    })
    .map_err(LoadError::Usage)?;
    let pb = progress(args, args.orders, "lifecycles");
    pb.set_prefix("run");
    let common = Rc::new(Common {
        gen: RefCell::new(generator),
        rec: RefCell::new(Recorder::default()),
        book: RefCell::new(Book::default()),
        progress: pb.clone(),
        code_attempts_max: rules.code_attempts_max,
        direct_max: cents(rules.direct_max),
        deadline: args
            .duration
            .map(|d| Instant::now() + Duration::from_secs_f64(d)),
        stopped: Cell::new(false),
        pace: args.rate.map(Pace::per_second),
        employers: (0..population::EMPLOYERS)
            .map(|_| futures::lock::Mutex::new(0))
            .collect(),
    });
    let restart_at = args
        .restart_at_pct
        .map(|p| ((args.orders as f64) * p / 100.0).round() as u64)
        .filter(|r| *r > 0 && *r < args.orders);

    let mut engine = Rc::new(engine);
    let phase = |engine: &Rc<Engine>, bank: &OpenedBank, limit: u64| Ctx {
        engine: engine.clone(),
        bank: bank.simulated.clone(),
        limit,
        common: common.clone(),
    };
    let mut run_time = Duration::ZERO;
    let mut run_cpu = 0.0;
    let cpu_at = crate::stats::process_cpu_secs;
    let cpu_start = cpu_at();
    let start = Instant::now();
    phase(&engine, &bank, restart_at.unwrap_or(args.orders))
        .run(args.concurrency)
        .await;
    run_time += start.elapsed();
    run_cpu += cpu_at()
        .zip(cpu_start)
        .map_or(0.0, |(end, start)| end - start);
    let mut restart = None;
    if let Some(at) = restart_at.filter(|_| !common.stopped.get()) {
        // Every lifecycle of the first phase has finished: a clean close, as an operator's
        // restart would be. What is pending (time releases, awaiting funds, disputes, refusal
        // flags, the clock) must come back.
        let t = Instant::now();
        close_node(sole(engine)?, bank).await?;
        let close_ms = ms(t.elapsed());
        let t = Instant::now();
        let (reopened, rebank) = open_node(&dir, &cfg, &kind).await?;
        (engine, bank) = (Rc::new(reopened), rebank);
        restart = Some(Restart {
            after_lifecycles: at,
            close_ms,
            recovery_ms: ms(t.elapsed()),
            info: engine.recovery().clone(),
        });
        let cpu_start = cpu_at();
        let start = Instant::now();
        phase(&engine, &bank, args.orders)
            .run(args.concurrency)
            .await;
        run_time += start.elapsed();
        run_cpu += cpu_at()
            .zip(cpu_start)
            .map_or(0.0, |(end, start)| end - start);
    }
    pb.finish_and_clear();
    let peak_rss_run = peak_rss_bytes();
    let residency = Residency {
        resident_at_end: engine.resident_consumers(),
        activations: engine
            .residency()
            .activations
            .load(std::sync::atomic::Ordering::Relaxed),
        passivations: engine
            .residency()
            .passivations
            .load(std::sync::atomic::Ordering::Relaxed),
    };

    // Drain: lift every refusal and tick far ahead, so every order that can reach its end
    // does. Not part of the measured run.
    let drain_start = Instant::now();
    let jobs = common.gen.borrow_mut().drain(rules.order_expiry_secs);
    {
        let ctx = phase(&engine, &bank, 0);
        for job in jobs {
            ctx.job(job).await;
        }
    }
    let drain_secs = drain_start.elapsed().as_secs_f64();

    // The monthly spending analysis over the whole journal, as the node's follower would run
    // it, once everything has settled (not part of the measured run; its time is reported).
    let analysis = (args.services_pct > 0.0).then(|| crate::analysis::run(&engine));

    let checks_start = Instant::now();
    let (bank_balances, mut external) = bank_balances(&bank, admin.as_ref()).await?;
    // Summarised item by item, never held whole: the replay below is a whole ledger.
    let live = match checks::LiveSummary::of_engine(&engine, &bank_balances) {
        Ok(s) => Some(s),
        Err(e) => {
            common
                .rec
                .borrow_mut()
                .error(format!("reading the final state: engine error: {e}"));
            None
        }
    };
    sole(engine)?.close().await?;
    if let Some(ext) = external.as_mut() {
        adapter_counters(&bank, ext);
    }
    bank.close();
    drop(bank);
    onecard_sim::allocator::release_freed();
    let verified = verify::verify(&dir);
    let stopped = common.stopped.get();
    let rec = common.rec.take();
    let book = common.book.take();
    let gen = common.gen.borrow();
    let checks = checks::run(&checks::Inputs {
        seed: args.seed,
        consumers: args.consumers,
        merchants: args.merchants,
        wallet_cap: cents(rules.wallet_cap),
        opening_total: opened.opening_total,
        book: &book,
        lifecycles: gen.emitted(),
        unexpected: rec.unexpected,
        errors: rec.errors,
        live: live.as_ref(),
        bank_balances: &bank_balances,
        verify: &verified,
        recovery: restart.as_ref().map(|r: &Restart| &r.info),
        external: external.as_ref(),
        services: args.services_pct > 0.0,
        analysis: analysis.as_ref(),
    });
    let final_state = verified.as_ref().ok().map(|r| &r.state);
    let digest = final_state
        .map(|s| checks::digest(s, &bank_balances))
        .or_else(|| live.as_ref().map(|l| l.digest.clone()));
    let order_states = final_state.map(checks::order_states).unwrap_or_default();
    let verify = match &verified {
        Ok(r) => VerifySummary {
            ok: true,
            error: None,
            records: r.records,
            entries: r.entries,
            events: r.events,
            topups_done: r.topups_done,
            topups_refused: r.topups_refused,
            view_checked: r.view_checked,
        },
        Err(e) => VerifySummary {
            ok: false,
            error: Some(e.to_string()),
            records: 0,
            entries: 0,
            events: 0,
            topups_done: 0,
            topups_refused: 0,
            view_checked: None,
        },
    };
    drop(live);
    drop(verified);
    let checks_secs = checks_start.elapsed().as_secs_f64();
    let peak_rss_end = peak_rss_bytes();
    let (data_dir, data_kept) = data.finish(args.keep);
    Ok(Report {
        seed: args.seed,
        consumers: args.consumers,
        merchants: args.merchants,
        orders: args.orders,
        concurrency: args.concurrency,
        arbiters: cfg.arbiters,
        tick_every: args.tick_every(),
        bank: match &args.bank {
            None => "the in-process simulated bank".into(),
            Some(_) => format!(
                "the ISO 20022 adapter to the bank simulator at {}",
                admin.as_ref().map_or("", |a| a.base())
            ),
        },
        notes: if args.bank.is_some() {
            vec![
                "deposits and bank refusals were not run (--deposit-pct and --refuse-pct need the \
                 in-process bank's operator powers; 0 with --bank): conservation and bank_vs_ledger \
                 count no deposits, and the drain had no refusal to lift"
                    .into(),
            ]
        } else {
            vec![]
        },
        data_dir,
        data_kept,
        setup_secs,
        run_secs: run_time.as_secs_f64(),
        run_cpu_secs: run_cpu,
        drain_secs,
        checks_secs,
        lifecycles_started: gen.emitted(),
        services: analysis
            .as_ref()
            .map(|a| ServicesSummary::of(args.services_pct, &book, a)),
        stopped_by_duration: stopped,
        restart,
        peak_rss_run,
        peak_rss_end,
        residency,
        opening_total: opened.opening_total,
        deposits_total: book.deposits_total,
        order_states,
        verify,
        checks,
        digest,
        rec,
    })
}
