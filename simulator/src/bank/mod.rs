//! `onecard-sim bank`: a bank over HTTP that speaks ISO 20022 (docs/bank-http.md).
//!
//! It keeps real balances: accounts opened through its admin calls, the node's own account
//! (created at 0.00 when a message first names it), and every initiation's bookings. Each
//! change is a line of its journal (`DIR/bank.journal`, see [`journal`]), on disk before it is
//! answered, and a restart replays the journal. A message id is booked once: a repeat gets the
//! same pain.002, other content under the same id gets 409. Faults (slow or lost answers,
//! duplicated or reordered notifications, a statement missing a line, forced rejections) are
//! set at start or through `/admin/faults`.
//!
//! Plain HTTP by default; HTTPS with `--tls-cert` and `--tls-key`, and client-certificate
//! authentication with `--client-ca` (see [`tls`]).

pub mod faults;
pub mod journal;
mod server;
pub mod state;
pub mod tls;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use actix_web::{web, App, HttpServer};
use clap::Args;
use onecard_adapters::iso20022::{Initiation, Reason};
use onecard_engine::money::Amount;
use parking_lot::Mutex;

use faults::{Faults, Serving};
use journal::{Journal, JournalError};
use state::{content_sha256, now_ms, Record, State, StateError};

/// Every option of `onecard-sim bank`. The doc comments are the `--help` text.
#[derive(Debug, Clone, Args)]
#[command(
    about = "Serves a simulated bank over HTTP (ISO 20022), with durable balances and faults",
    long_about = "Serves a simulated bank over HTTP: pain.001 and pain.008 initiations answered \
with pain.002, camt.054 notifications and camt.053 statements, and JSON admin calls to open and \
close accounts, read totals and set faults (docs/bank-http.md). Balances are real and durable: \
every change is written and fdatasynced to DIR/bank.journal before it is answered, and replayed \
at start. Prints `bank simulator listening on http://ADDR` (https:// with --tls-cert) once \
listening; stops on SIGTERM or SIGINT."
)]
pub struct BankArgs {
    /// Address to listen on, such as 127.0.0.1:8090; port 0 picks a free port (printed).
    #[arg(long, value_name = "ADDR")]
    pub listen: String,

    /// Directory of the journal (created if missing).
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,

    /// Serve HTTPS instead of HTTP with this certificate chain (PEM, the server's certificate
    /// first); needs --tls-key.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Require of every client a certificate signed by this CA (PEM, one or more
    /// certificates): a client without a valid one is refused at the TLS handshake. Needs
    /// --tls-cert. Without it, no client certificate is asked for.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub client_ca: Option<PathBuf>,

    /// The currency of every account (ISO 4217). Transactions of initiations in another
    /// currency are rejected AG01.
    #[arg(long, value_name = "CCY", default_value = "EUR", value_parser = currency)]
    pub currency: String,

    /// Fault: every answer to an initiation or a status query waits this long first.
    #[arg(long, value_name = "MS", default_value_t = 0, value_parser = wait_ms)]
    pub delay_ms: u64,

    /// Fault: the next N initiations are booked, then answered only after --hang-ms.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub drop_after_booking: u64,

    /// How long a dropped answer (--drop-after-booking) hangs before it is sent.
    #[arg(long, value_name = "MS", default_value_t = 30_000, value_parser = wait_ms)]
    pub hang_ms: u64,

    /// Fault: each notification is served twice.
    #[arg(long)]
    pub duplicate_notifications: bool,

    /// Fault: notifications are served two at a time in swapped order.
    #[arg(long)]
    pub reorder_notifications: bool,

    /// Fault: statements leave out their first entry (balances still include it).
    #[arg(long)]
    pub omit_statement_line: bool,

    /// Fault: the next N transactions are rejected with --reject-next-code whatever the balance.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub reject_next: u64,

    /// The reason code of --reject-next (AC01, AC04, AC06, AG01, AM04, AM05 or MS03).
    #[arg(long, value_name = "CODE", default_value = "AM04", value_parser = reason_code)]
    pub reject_next_code: String,
}

fn currency(s: &str) -> Result<String, String> {
    if s.len() == 3 && s.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(s.to_string())
    } else {
        Err("expected three capital letters, such as EUR".into())
    }
}

fn wait_ms(s: &str) -> Result<u64, String> {
    let ms: u64 = s.parse().map_err(|e| format!("{e}"))?;
    if ms > faults::MAX_WAIT_MS {
        return Err(format!("at most {}", faults::MAX_WAIT_MS));
    }
    Ok(ms)
}

fn reason_code(s: &str) -> Result<String, String> {
    Reason::from_code(s)
        .map(|r| r.code().to_string())
        .ok_or_else(|| "expected AC01, AC04, AC06, AG01, AM04, AM05 or MS03".into())
}

impl BankArgs {
    fn faults(&self) -> Faults {
        Faults {
            delay_ms: self.delay_ms,
            drop_after_booking: self.drop_after_booking,
            hang_ms: self.hang_ms,
            duplicate_notifications: self.duplicate_notifications,
            reorder_notifications: self.reorder_notifications,
            omit_statement_line: self.omit_statement_line,
            reject_next: faults::RejectNext {
                count: self.reject_next,
                code: self.reject_next_code.clone(),
            },
        }
    }
}

/// Why the simulator stopped, or why a change was not made.
#[derive(Debug, thiserror::Error)]
pub enum BankError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("{path} line {line} does not fit the books: {source}")]
    Replay {
        path: PathBuf,
        line: usize,
        #[source]
        source: StateError,
    },
    #[error(transparent)]
    State(#[from] StateError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the server failed: {0}")]
    Serve(#[source] std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
}

/// The books and their journal, under one lock: checking a message id and booking it are one
/// step, so two requests with the same id at once still book once.
pub struct Bank {
    state: State,
    journal: Journal,
}

/// What became of an initiation.
#[derive(Debug)]
pub enum Initiated {
    /// New: booked; its pain.002.
    Booked(String),
    /// Seen before with the same content: its pain.002 again, nothing booked.
    Known(String),
    /// Seen before with other content.
    Conflict,
}

/// What became of an admin opening.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened {
    Created,
    /// The same opening again.
    Existing,
    /// The account exists with another opening balance.
    Conflict,
}

/// What became of a bulk opening.
#[derive(Debug, PartialEq, Eq)]
pub enum Bulk {
    Done {
        created: usize,
        existing: usize,
    },
    /// This account exists (or is named before in the list) with another opening balance:
    /// nothing was opened.
    Conflict(String),
}

impl Bank {
    /// Opens the journal in `dir` and replays it.
    pub fn open(dir: &Path, currency: String) -> Result<Bank, BankError> {
        let (journal, records) = Journal::open::<Record>(dir)?;
        let mut state = State::new(currency);
        let replayed = records.len();
        for (line, record) in records {
            let change = state.prepare(&record).map_err(|source| BankError::Replay {
                path: journal.path().to_path_buf(),
                line,
                source,
            })?;
            state.commit(change);
        }
        tracing::info!(path = %journal.path().display(), records = replayed, "journal replayed");
        Ok(Bank { state, journal })
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// Checks, journals (durably), then applies.
    fn record(&mut self, record: Record) -> Result<(), BankError> {
        let change = self.state.prepare(&record)?;
        self.journal.append(&record)?;
        self.state.commit(change);
        Ok(())
    }

    /// Books a new initiation, or answers a known one. The `reject_next` fault's budget is
    /// taken from `faults` and used up only once the booking is durable.
    pub fn initiate(
        &mut self,
        init: &Initiation,
        faults: &Mutex<FaultState>,
    ) -> Result<Initiated, BankError> {
        let hash = content_sha256(init);
        if let Some(m) = self.state.message(&init.msg_id) {
            return Ok(if m.content_sha256 == hash {
                Initiated::Known(m.report_xml.clone())
            } else {
                Initiated::Conflict
            });
        }
        let budget = {
            let f = faults.lock();
            (f.faults.reject_next.count, f.faults.reject_reason())
        };
        let (booking, used) = self.state.plan(init, hash, now_ms(), budget)?;
        let report = booking.report_xml.clone();
        let accepted = booking
            .transactions
            .iter()
            .filter(|t| t.outcome == state::ACCEPTED)
            .count();
        self.record(Record::MessageBooked(booking))?;
        if used > 0 {
            let mut f = faults.lock();
            f.faults.reject_next.count = f.faults.reject_next.count.saturating_sub(used);
        }
        tracing::info!(
            msg_id = %init.msg_id,
            accepted,
            rejected = init.transfers.len() - accepted,
            "initiation booked"
        );
        Ok(Initiated::Booked(report))
    }

    pub fn open_account(&mut self, account: &str, balance: Amount) -> Result<Opened, BankError> {
        if let Some(a) = self.state.account(account) {
            return Ok(if a.opening == balance {
                Opened::Existing
            } else {
                Opened::Conflict
            });
        }
        self.record(Record::AccountOpened {
            account: account.to_string(),
            balance,
            at_ms: now_ms(),
        })?;
        tracing::info!(account, %balance, "account opened");
        Ok(Opened::Created)
    }

    /// Opens many accounts at once: one journal write and one `fdatasync` for all of them
    /// (a population of 100,000 accounts opened one request at a time would wait for 100,000
    /// syncs). All or nothing: if any account exists with another opening balance, or is named
    /// twice with different balances, nothing is opened. The same opening again (here or
    /// earlier) is counted as existing.
    pub fn open_accounts(&mut self, list: &[(String, Amount)]) -> Result<Bulk, BankError> {
        let mut seen: HashMap<&str, Amount> = HashMap::with_capacity(list.len());
        let mut records = Vec::new();
        let mut existing = 0usize;
        let mut sum = self.state.opened();
        for (account, balance) in list {
            let opening = self
                .state
                .account(account)
                .map(|a| a.opening)
                .or_else(|| seen.get(account.as_str()).copied());
            match opening {
                Some(b) if b == *balance => existing += 1,
                Some(_) => return Ok(Bulk::Conflict(account.clone())),
                None => {
                    seen.insert(account, *balance);
                    sum = sum
                        .checked_add(*balance)
                        .map_err(|_| StateError::Overflow)?;
                    records.push(Record::AccountOpened {
                        account: account.clone(),
                        balance: *balance,
                        at_ms: now_ms(),
                    });
                }
            }
        }
        let changes = records
            .iter()
            .map(|r| self.state.prepare(r))
            .collect::<Result<Vec<_>, _>>()?;
        self.journal.append_all(&records)?;
        for change in changes {
            self.state.commit(change);
        }
        tracing::info!(created = records.len(), existing, "accounts opened in bulk");
        Ok(Bulk::Done {
            created: records.len(),
            existing,
        })
    }

    /// `false` for an unknown account; closing a closed account changes nothing.
    pub fn close_account(&mut self, account: &str) -> Result<bool, BankError> {
        match self.state.account(account) {
            None => Ok(false),
            Some(a) if a.closed => Ok(true),
            Some(_) => {
                self.record(Record::AccountClosed {
                    account: account.to_string(),
                    at_ms: now_ms(),
                })?;
                tracing::info!(account, "account closed");
                Ok(true)
            }
        }
    }
}

/// The fault settings and what the notification faults have served.
#[derive(Debug, Default)]
pub struct FaultState {
    pub faults: Faults,
    pub serving: Serving,
}

/// What every request handler shares. Lock order: `bank`, then `faults`.
pub struct Shared {
    pub bank: Mutex<Bank>,
    pub faults: Mutex<FaultState>,
}

pub fn main(args: BankArgs) -> ExitCode {
    // Logs on standard error (standard output carries the one "listening" line); RUST_LOG
    // filters, info by default: every booking and account change.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    match actix_rt::System::new().block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("onecard-sim bank: {e}");
            ExitCode::from(1)
        }
    }
}

async fn run(args: BankArgs) -> Result<(), BankError> {
    // The TLS files are checked first: a bad one stops the start before the journal is opened.
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            Some(tls::server_config(cert, key, args.client_ca.as_deref()).map_err(BankError::Tls)?)
        }
        // clap requires both, and --client-ca requires --tls-cert.
        _ => None,
    };
    let bank = Bank::open(&args.data, args.currency.clone())?;
    let shared = web::Data::new(Shared {
        bank: Mutex::new(bank),
        faults: Mutex::new(FaultState {
            faults: args.faults(),
            serving: Serving::default(),
        }),
    });
    let server = HttpServer::new(move || {
        App::new()
            .app_data(shared.clone())
            .configure(server::routes)
    })
    .workers(2)
    // A dropped answer hangs for `hang_ms`: do not let it hold up SIGTERM.
    .shutdown_timeout(1);
    let scheme = if tls.is_some() { "https" } else { "http" };
    let server = match tls {
        Some(config) => server.bind_rustls_0_23(&args.listen, config),
        None => server.bind(&args.listen),
    }
    .map_err(|source| BankError::Listen {
        addr: args.listen.clone(),
        source,
    })?;
    if let Some(addr) = server.addrs().first() {
        let mut out = std::io::stdout().lock();
        // Tests and scripts read the port from this line: it must not sit in a buffer.
        let _ = writeln!(out, "bank simulator listening on {scheme}://{addr}");
        let _ = out.flush();
    }
    server.run().await.map_err(BankError::Serve)
}
