//! The OneCard settlement node: `onecard serve`.
//!
//! - [`api`]: the HTTP API (actix-web) for merchants, readers, consumers and operators;
//! - [`app`]: what the handlers and the outbox do with orders, apart from HTTP: the order view,
//!   the per-order lock, placing an authorised order;
//! - [`store`]: the node's own durable store (checkouts, idempotency, queues), group-committed;
//! - [`outbox`]: follows the engine's journal and queues print jobs, webhooks and statements;
//! - [`analysis`]: the spending analysis (F6): follows the journal apart from the outbox and
//!   keeps each consumer's monthly income and spending, and the alerts on them;
//! - [`workers`]: the print queue (ESC/POS over TCP) and the webhook deliveries;
//! - [`notify`]: the notifier port (recipient, event type, payload, idempotent id), its
//!   durable outbox and the webhook adapter; consumers' inboxes;
//! - [`bills`]: bills (F7): autopay rules, paying a bill as an engine order, the overdue scan;
//! - [`payroll`]: salaries (F12): payroll files checked whole, funded from the employer's bank
//!   account, paid line by line by a worker that resumes after a crash;
//! - [`credit`]: dynamic credit (F10): the `[credit]` policy, each consumer's credit score,
//!   and the follower of the journal that sets limits through the engine;
//! - [`recharge`]: recharge (F8): prepaid codes, kept only keyed-hashed, redeemed once;
//!   deposits by bank transfer;
//! - [`transfers`]: account management (F5): transfers between a consumer's bank accounts and
//!   into the wallet, and the standing transfer rules the same task as the overdue bills runs;
//! - [`settings`]: the `[node]` table of `config.toml`.
//!
//! Shutdown (SIGTERM, SIGINT): the server stops accepting, finishes the requests in progress
//! (each answered only once durable), the outbox catches up with the journal, the workers stop
//! between two jobs, and the node store and the journal are flushed and closed.

pub mod analysis;
pub mod api;
pub mod app;
pub mod bills;
pub mod credit;
pub mod metrics;
pub mod notify;
pub mod outbox;
pub mod pages;
pub mod payouts;
pub mod payroll;
pub mod recharge;
pub mod records;
pub mod settings;
pub mod state;
pub mod store;
pub mod transfers;
pub mod workers;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{middleware, web, App, HttpServer};
use onecard_adapters::banks::{open_bank, BankKind};
use onecard_engine::{Engine, EngineError, NodeConfig};

pub use settings::NodeSettings;
use state::Node;
use store::{NodeStore, StoreError};

/// `onecard serve`'s command line.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// `config.toml`; `./config.toml` when present, else the built-in defaults.
    pub config: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub data: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
}

/// The administrator's token: `ONECARD_ADMIN_TOKEN`, else the one in `<data>/admin-token`
/// (made on first start, readable by the node's user only).
fn admin_token(data: &Path) -> Result<String, ServeError> {
    if let Ok(t) = std::env::var("ONECARD_ADMIN_TOKEN") {
        let t = t.trim().to_string();
        if t.len() < 16 {
            return Err(ServeError::Config(
                "ONECARD_ADMIN_TOKEN must be at least 16 characters".into(),
            ));
        }
        return Ok(t);
    }
    let path = data.join("admin-token");
    if let Ok(t) = std::fs::read_to_string(&path) {
        let t = t.trim().to_string();
        if t.len() < 16 {
            return Err(ServeError::Config(format!(
                "{} holds no usable token (under 16 characters): remove it to make a new one",
                path.display()
            )));
        }
        return Ok(t);
    }
    let token = format!("ocadm_{}", records::random_hex(24));
    {
        use std::io::Write as _;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&path)?;
        f.write_all(token.as_bytes())?;
        f.sync_all()?;
    }
    eprintln!(
        "serve: the administrator's token is in {} (or set ONECARD_ADMIN_TOKEN)",
        path.display()
    );
    Ok(token)
}

fn tls_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, ServeError> {
    let read =
        |p: &Path| std::fs::read(p).map_err(|e| ServeError::Tls(format!("{}: {e}", p.display())));
    let certs: Vec<_> = rustls_pemfile::certs(&mut read(cert)?.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| ServeError::Tls(format!("{}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(ServeError::Tls(format!(
            "{}: no certificate",
            cert.display()
        )));
    }
    let key = rustls_pemfile::private_key(&mut read(key)?.as_slice())
        .map_err(|e| ServeError::Tls(format!("{}: {e}", key.display())))?
        .ok_or_else(|| ServeError::Tls(format!("{}: no private key", key.display())))?;
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| ServeError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ServeError::Tls(e.to_string()))
}

/// Loads the configuration and runs the node until SIGTERM or SIGINT.
pub fn serve(opts: ServeOptions) -> Result<(), ServeError> {
    let cfg = match &opts.config {
        Some(p) => NodeConfig::load(p).map_err(|e| ServeError::Config(e.to_string()))?,
        None if Path::new("config.toml").exists() => NodeConfig::load(Path::new("config.toml"))
            .map_err(|e| ServeError::Config(e.to_string()))?,
        None => NodeConfig::default(),
    };
    let mut settings = NodeSettings::from_table(&cfg.node).map_err(ServeError::Config)?;
    if let Some(l) = opts.listen {
        settings.listen = l;
    }
    if let Some(d) = &opts.data {
        settings.data_dir = d.clone();
    }
    settings.validate().map_err(ServeError::Config)?;
    let mut engine_cfg = cfg.engine.clone();
    onecard_engine::config::secret_keys_from_env(&mut engine_cfg, |v| std::env::var(v).ok())
        .map_err(ServeError::Config)?;
    if engine_cfg.issuer_key.is_none() {
        eprintln!("serve: ONECARD_ISSUER_KEY is not set: cards cannot be issued or authenticated");
    }
    std::fs::create_dir_all(&settings.data_dir)?;
    let token = admin_token(&settings.data_dir)?;
    let tls = match (&settings.tls_cert, &settings.tls_key) {
        (Some(c), Some(k)) => Some(tls_config(c, k)?),
        _ => None,
    };
    let currency = cfg.currency.clone();
    let bank = BankKind::from_table(&cfg.bank, &currency).map_err(ServeError::Config)?;
    let credit = credit::CreditPolicy::from_table(&cfg.credit).map_err(ServeError::Config)?;
    actix_rt::System::new().block_on(run(
        settings, engine_cfg, bank, currency, token, tls, credit,
    ))
}

async fn run(
    settings: NodeSettings,
    engine_cfg: onecard_engine::EngineConfig,
    bank: BankKind,
    currency: String,
    token: String,
    tls: Option<rustls::ServerConfig>,
    credit: credit::CreditPolicy,
) -> Result<(), ServeError> {
    let started = std::time::Instant::now();
    let data = settings.data_dir.clone();
    let bank = open_bank(&bank, &data, engine_cfg.data_key.clone())
        .map_err(|e| ServeError::Config(format!("the bank: {e}")))?;
    // Before the engine takes the configuration: the secrets stay in memory, in the engine
    // and (derived) here.
    let recharge_key = recharge::RechargeKey::from_config(&engine_cfg);
    let mut engine_cfg = engine_cfg;
    // Idempotency keys are looked up while new, on every request that carries one.
    engine_cfg
        .journal
        .filtered_record_prefixes
        .push(records::IDEM_KEY_PREFIX.as_bytes().to_vec());
    let engine = Arc::new(Engine::open(&data, engine_cfg, bank.port.clone()).await?);
    let store = NodeStore::open(engine.records(), &data.join("node"))?;
    let mut node = Node::new(
        engine.clone(),
        store.clone(),
        bank.simulated.clone(),
        bank.iso20022.clone(),
        settings.clone(),
        currency,
        &token,
    )?;
    node.recharge_key = recharge_key;
    node.credit = credit;
    let node = web::Data::new(node);

    let outbox = actix_rt::spawn(outbox::run(node.clone()));
    let analysis = actix_rt::spawn(analysis::run(node.clone()));
    let credit_task = actix_rt::spawn(credit::run(node.clone()));
    let ticker = {
        let node = node.clone();
        actix_rt::spawn(async move {
            let every = Duration::from_millis(node.settings.tick_interval_ms);
            let mut last_sweep = std::time::Instant::now();
            while !node.is_stopping() {
                tokio::time::sleep(every).await;
                if node.is_stopping() {
                    // No journal record after the outbox's last catch-up at shutdown.
                    break;
                }
                match node.engine.tick(node.now()).await {
                    Ok(_) => node.outbox_wake.notify_one(),
                    Err(e) => tracing::error!(error = %e, "tick failed"),
                }

                if last_sweep.elapsed() >= Duration::from_secs(node.settings.sweep_secs) {
                    last_sweep = std::time::Instant::now();
                    if let Err(e) = state::sweep_expired(&node).await {
                        tracing::error!(error = %e, "sweeping expired records failed");
                    }
                }
            }
        })
    };
    // Payouts by the merchants' policies: a task of their own, so that a slow bank never
    // holds up the ticks.
    let payout_task = {
        let node = node.clone();
        actix_rt::spawn(async move {
            let every = Duration::from_millis(node.settings.tick_interval_ms);
            let mut scheduler = payouts::Scheduler::default();
            while !node.is_stopping() {
                tokio::time::sleep(every).await;
                if node.is_stopping() {
                    break;
                }
                scheduler.run(&node, node.now()).await;
            }
        })
    };
    // Overdue bills and due transfer rules: a task of their own, like the payouts.
    let bills_task = {
        let node = node.clone();
        actix_rt::spawn(async move {
            let every = Duration::from_millis(node.settings.tick_interval_ms);
            while !node.is_stopping() {
                tokio::time::sleep(every).await;
                if node.is_stopping() {
                    break;
                }
                if let Err(e) = bills::overdue_pass(&node).await {
                    tracing::error!(error = %e, "the overdue bills scan failed");
                }
                // Standing transfer rules (F5) that are due, on the same beat.
                if let Err(e) = transfers::run_due(&node).await {
                    tracing::error!(error = %e, "running the due transfer rules failed");
                }
            }
        })
    };
    // Payroll batches: a worker of its own, which resumes at start-up every batch a stop or a
    // crash left unfinished.
    let payroll_task = actix_rt::spawn(payroll::run(node.clone()));
    let shared = Arc::new(workers::NodeRef(node.clone()));
    let printer = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("print-queue".into())
            .spawn(move || workers::print_loop(shared))?
    };
    let webhooks = {
        let shared = shared.clone();
        let n = settings.webhook_workers;
        std::thread::Builder::new()
            .name("webhooks".into())
            .spawn(move || workers::webhook_loop(shared, n))?
    };
    drop(shared);

    // One HTTP worker per core by default. A worker waiting on a group commit serves its other
    // connections meanwhile (the waits are futures), and more workers than cores only add
    // thread switches: on 2 cores, 2 workers did 2,343-2,361 card payments/s against
    // 2,160-2,216 with 4, and the same order creations (BENCHMARKS.md, 2026-12-06).
    let workers = if settings.workers == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    } else {
        settings.workers
    };
    let app_node = node.clone();
    let server = HttpServer::new(move || {
        // Runs on each worker's own thread: the consumer actors a worker activates run on it
        // too, so that a command and its answer need no other thread.
        onecard_engine::host_actors_here();
        App::new()
            .app_data(app_node.clone())
            .wrap(middleware::from_fn(api::request_log))
            .configure(api::configure)
            .configure(pages::configure)
            .default_service(web::to(api::no_such_route))
    })
    .workers(workers)
    // The node handles SIGTERM and SIGINT itself (below), both as a graceful stop: actix's
    // own handler treats SIGINT as a forced one.
    .disable_signals()
    .backlog(4096)
    .max_connections(25_000)
    .shutdown_timeout(settings.shutdown_timeout_secs);
    let server = match tls {
        Some(t) => server.bind_rustls_0_23(settings.listen, t)?,
        None => server.bind(settings.listen)?,
    };
    let scheme = if settings.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    // SIGTERM and SIGINT are caught from here on, before anyone is told the node listens:
    // a stop asked for right after start is still a graceful one.
    let stop_signals = {
        use actix_rt::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        )
    };
    for a in server.addrs() {
        eprintln!(
            "serve: listening on {scheme}://{a} (data {}, opened in {} ms)",
            data.display(),
            started.elapsed().as_millis()
        );
    }
    let server = server.run();
    let handle = server.handle();
    let signals = actix_rt::spawn(async move {
        let (Ok(mut term), Ok(mut int)) = stop_signals else {
            tracing::error!("cannot listen for SIGTERM/SIGINT");
            return;
        };
        let which = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        eprintln!("serve: {which}: finishing the requests in progress");
        handle.stop(true).await;
    });
    server.await?;
    signals.abort();

    // Stopped accepting and finished every request in progress: now the background work.
    eprintln!("serve: stopping");
    node.stopping.store(true, Ordering::Release);
    node.outbox_wake.notify_one();
    node.work_wake.notify();
    node.payroll_wake.notify_one();
    let _ = ticker.await;
    let _ = payroll_task.await;
    let _ = payout_task.await;
    let _ = bills_task.await;
    let _ = outbox.await;
    // After the outbox, which may still have placed an interrupted order: the index counts
    // up to the journal's end (what it has not counted, it counts at the next start).
    node.analysis_wake.notify_one();
    let _ = analysis.await;
    node.credit_wake.notify_one();
    let _ = credit_task.await;
    let _ = tokio::task::spawn_blocking(move || {
        let _ = printer.join();
        let _ = webhooks.join();
    })
    .await;
    drop(store);
    drop(node);
    match Arc::try_unwrap(engine) {
        Ok(engine) => engine.close().await?,
        Err(_) => {
            return Err(ServeError::Engine(EngineError::Internal(
                "the engine is still in use at shutdown; the journal is durable up to the last \
                 acknowledged command"
                    .into(),
            )))
        }
    }
    bank.close();
    eprintln!("serve: stopped cleanly");
    Ok(())
}
