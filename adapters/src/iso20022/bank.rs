//! The ISO 20022 bank adapter: the engine's [`BankPort`] over HTTP(S) to a real bank.
//!
//! Each batch of operations ([`BankPort::perform_batch`], formed by the engine's
//! `BatchingBankPort`) becomes at most two messages: one pain.008 with the debits, one
//! pain.001 with the credits. The bank answers each with a pain.002 giving every operation's
//! status. The wire contract is `docs/bank-http.md`.
//!
//! **An unknown outcome never pays twice.**
//! - A message's id is derived from its operations' ids, so a retry sends the same id, and
//!   the bank books a message id once.
//! - Before a message is first sent, it is written (and `fdatasync`ed) to the adapter's log,
//!   `DATA/bank/sent.jsonl`. So after a crash the node knows every message that may have
//!   been booked.
//! - When an answer is lost (a timeout, a dropped connection, a 5xx), the adapter asks the
//!   bank for the status of that message id before sending it again. It sends it again only
//!   when the bank says it never received it (404).
//! - An operation whose outcome is still unknown after the retries is answered with an error.
//!   The engine then undoes what it did in memory and never journals the operation. The
//!   adapter keeps it as an orphan. The adapter's actor ([`super::actor`]) asks the bank about
//!   it on a timer until the outcome is known, and reverses it (the opposite operation, with a derived id) if the bank
//!   booked it. At opening, the engine's reconciliation does the same for operations the
//!   journal does not hold ([`BankPort::unconfirmed`], [`BankPort::reverse`]).
//! - Orphans still unresolved after `unresolved_alert_secs` are logged as errors and counted
//!   in [`AdapterStats`].
//!
//! The log never holds a bank account in the clear when the node has a data key (I10): the
//! account is sealed under it, as the journal seals designated accounts.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::FutureExt;
use onecard_engine::bank::{
    BankAnswer, BankError, BankOp, BankOpKind, BankPort, BankRequest, BankResult, UnconfirmedOp,
};
use onecard_engine::money::Amount;
use onecard_engine::seal::{self, DataKey};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::actor::BankActorHandle;
use super::xml::MAX_MESSAGE_BYTES;
use super::{Direction, Initiation, Reason, Statement, StatusReport, Transfer, TxStatus};

/// The `[bank]` table of `config.toml` for `kind = "iso20022"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BankSettings {
    /// The bank's base URL, `http://` (loopback only) or `https://`.
    pub endpoint: String,
    /// Our SEPA creditor identifier, carried by every direct debit.
    pub creditor_id: String,
    /// The settlement center's name in the messages.
    pub initiator_name: String,
    /// The settlement center's own account at the bank.
    pub own_account: String,
    /// ISO 4217 (from `[rules] currency`).
    pub currency: String,
    /// Per HTTP exchange.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// How many times a message whose answer was lost is asked about and sent again.
    pub retries: u32,
    /// The first pause between attempts; it doubles up to 5 s.
    pub retry_backoff: Duration,
    /// How long operations the bank reports as pending are polled before they are answered
    /// as unknown (and resolved in the background).
    pub pending_wait: Duration,
    /// Most operations in one message, and how long a batch may wait for more.
    pub batch_max: usize,
    pub batch_window: Duration,
    /// How often the background resolver asks the bank about orphans.
    pub resolve_interval: Duration,
    /// An orphan older than this is reported to operators (log line, metric).
    pub unresolved_alert: Duration,
    /// PEM: the bank's root certificate(s) to trust (instead of the public web roots).
    pub tls_root_cert: Option<PathBuf>,
    /// PEM: our client certificate chain and its key, where the bank asks for them.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

impl BankSettings {
    /// Settings from the `[bank]` table (`kind` already read by the caller).
    pub fn from_table(t: &toml::Table, currency: &str) -> Result<BankSettings, String> {
        let text = |key: &str| -> Result<Option<String>, String> {
            match t.get(key) {
                None => Ok(None),
                Some(toml::Value::String(s)) => Ok(Some(s.clone())),
                Some(v) => Err(format!("bank.{key} must be a string, not {v}")),
            }
        };
        let required = |key: &str| -> Result<String, String> {
            text(key)?.ok_or_else(|| format!("bank.{key} is required for kind = \"iso20022\""))
        };
        let number = |key: &str, default: u64| -> Result<u64, String> {
            match t.get(key) {
                None => Ok(default),
                Some(toml::Value::Integer(n)) if *n >= 0 => Ok(*n as u64),
                Some(v) => Err(format!(
                    "bank.{key} must be a non-negative integer, not {v}"
                )),
            }
        };
        let ms = |key: &str, default: u64| number(key, default).map(Duration::from_millis);
        let known = [
            "kind",
            "endpoint",
            "creditor_id",
            "initiator_name",
            "own_account",
            "timeout_ms",
            "connect_timeout_ms",
            "retries",
            "retry_backoff_ms",
            "pending_wait_ms",
            "batch_max",
            "batch_window_ms",
            "resolve_interval_ms",
            "unresolved_alert_secs",
            "tls_root_cert",
            "client_cert",
            "client_key",
        ];
        if let Some(k) = t.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(format!(
                "bank.{k} is not a setting of the ISO 20022 bank adapter"
            ));
        }
        let s = BankSettings {
            endpoint: required("endpoint")?.trim_end_matches('/').to_string(),
            creditor_id: required("creditor_id")?,
            initiator_name: text("initiator_name")?
                .unwrap_or_else(|| "OneCard settlement center".into()),
            own_account: required("own_account")?,
            currency: currency.to_string(),
            timeout: ms("timeout_ms", 10_000)?,
            connect_timeout: ms("connect_timeout_ms", 2_000)?,
            retries: number("retries", 5)?.min(u32::MAX as u64) as u32,
            retry_backoff: ms("retry_backoff_ms", 200)?,
            pending_wait: ms("pending_wait_ms", 5_000)?,
            batch_max: number("batch_max", 1_000)?.max(1) as usize,
            batch_window: ms("batch_window_ms", 0)?,
            resolve_interval: ms("resolve_interval_ms", 5_000)?,
            unresolved_alert: Duration::from_secs(number("unresolved_alert_secs", 300)?),
            tls_root_cert: text("tls_root_cert")?.map(PathBuf::from),
            client_cert: text("client_cert")?.map(PathBuf::from),
            client_key: text("client_key")?.map(PathBuf::from),
        };
        s.validate()?;
        Ok(s)
    }

    /// Settings for a bank at `endpoint` with the defaults (the load simulator, tests).
    pub fn for_endpoint(endpoint: &str, currency: &str) -> BankSettings {
        BankSettings {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            creditor_id: "DE98ZZZ09999999999".into(),
            initiator_name: "OneCard settlement center".into(),
            own_account: "ONECARD-SETTLEMENT".into(),
            currency: currency.to_string(),
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            retries: 5,
            retry_backoff: Duration::from_millis(200),
            pending_wait: Duration::from_secs(5),
            batch_max: 1_000,
            batch_window: Duration::ZERO,
            resolve_interval: Duration::from_secs(5),
            unresolved_alert: Duration::from_secs(300),
            tls_root_cert: None,
            client_cert: None,
            client_key: None,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        let rest = if let Some(r) = self.endpoint.strip_prefix("https://") {
            r
        } else if let Some(r) = self.endpoint.strip_prefix("http://") {
            let host = r.split(['/', ':']).next().unwrap_or("");
            let loopback =
                host == "localhost" || host.starts_with("127.") || r.starts_with("[::1]");
            if !loopback {
                return Err(format!(
                    "bank.endpoint {:?}: plain http is only for a bank on this machine (loopback); use https",
                    self.endpoint
                ));
            }
            r
        } else {
            return Err(format!(
                "bank.endpoint {:?} must start with http:// or https://",
                self.endpoint
            ));
        };
        if rest.is_empty() || rest.contains(['?', '#']) {
            return Err(format!(
                "bank.endpoint {:?} is not a base URL",
                self.endpoint
            ));
        }
        for (key, v) in [
            ("creditor_id", &self.creditor_id),
            ("own_account", &self.own_account),
        ] {
            if v.is_empty() || v.chars().count() > 34 {
                return Err(format!("bank.{key} must have 1 to 34 characters"));
            }
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            return Err("bank.client_cert and bank.client_key go together".into());
        }
        Ok(())
    }
}

/// Counters for `/metrics` and tests.
#[derive(Debug, Default)]
pub struct AdapterStats {
    /// Messages sent (first sends, not retries).
    pub messages: AtomicU64,
    /// Sends again after the bank said it never received the message.
    pub resends: AtomicU64,
    /// Status queries after a lost answer or for pending operations.
    pub status_queries: AtomicU64,
    /// Operations answered with an unknown outcome, and those still unresolved now.
    pub unknown_outcomes: AtomicU64,
    pub unresolved: AtomicU64,
    /// Of the unresolved, those older than `unresolved_alert`.
    pub unresolved_overdue: AtomicU64,
    /// Orphans the bank had booked, reversed.
    pub reversals: AtomicU64,
    /// camt.054 notifications taken in sequence order; those served again (ignored); those
    /// that came ahead of their turn (kept until it came).
    pub notifications: AtomicU64,
    pub notification_duplicates: AtomicU64,
    pub notifications_out_of_order: AtomicU64,
    /// Entries of notifications that disagree with what the adapter sent (amount or
    /// direction): logged as errors, for operators.
    pub notification_mismatches: AtomicU64,
}

/// An operation whose outcome is not known yet (the admin API's view of it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnresolvedOp {
    pub id: String,
    pub msg_id: String,
    #[serde(serialize_with = "direction_name")]
    pub direction: Direction,
    pub amount: Amount,
    /// Known to be booked, waiting for its reversal to go through.
    pub booked: bool,
    /// Seconds since it was answered with an unknown outcome.
    pub secs: u64,
    /// For a reversal: the operation it undoes.
    pub reverses: Option<String>,
}

fn direction_name<S: serde::Serializer>(d: &Direction, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(match d {
        Direction::Debit => "debit",
        Direction::Credit => "credit",
    })
}

/// An account as the log keeps it: sealed under the data key, or as is without one.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum StoredAccount {
    Sealed { bank_ref: String, sealed: String },
    Plain(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Dir {
    Debit,
    Credit,
}

impl From<Direction> for Dir {
    fn from(d: Direction) -> Dir {
        match d {
            Direction::Debit => Dir::Debit,
            Direction::Credit => Dir::Credit,
        }
    }
}

impl From<Dir> for Direction {
    fn from(d: Dir) -> Direction {
        match d {
            Dir::Debit => Direction::Debit,
            Dir::Credit => Direction::Credit,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LoggedOp {
    id: String,
    account: StoredAccount,
    amount: Amount,
}

/// What an operation is known to be at the bank.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Known {
    /// Not known yet (sent, no readable answer).
    Unknown,
    Booked,
    /// Rejected, or never received by the bank: nothing moved.
    NotBooked,
}

/// One line of the log.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "lowercase")]
enum Line {
    /// Written and synced before the message is first sent.
    Sent {
        msg_id: String,
        direction: Dir,
        ops: Vec<LoggedOp>,
        /// The message's requested date: with the ids, what the message is made of again
        /// when it must be sent again after a restart.
        requested: super::Date,
        /// For a reversal: the operation it undoes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reverses: Option<String>,
    },
    /// What the bank said of operations.
    Outcome { ids: Vec<String>, known: Known },
    /// The engine answered with an unknown outcome: never to be journaled.
    Orphaned { ids: Vec<String> },
    /// Journaled by the engine: nothing more to do for them.
    Confirmed { ids: Vec<String> },
    /// An orphan the bank had booked, reversed by `reversal`.
    Reversed { id: String, reversal: String },
    /// Notifications up to this sequence number are taken.
    Notified { seq: u64 },
}

#[derive(Debug, Clone)]
struct OpState {
    msg_id: String,
    /// Its place in its message.
    pos: usize,
    requested: super::Date,
    direction: Dir,
    account: StoredAccount,
    amount: Amount,
    known: Known,
    confirmed: bool,
    orphaned_at: Option<Instant>,
    reversed: bool,
    /// For a reversal: the operation it undoes.
    reverses: Option<String>,
}

impl OpState {
    /// Whether anything is left to do for it.
    fn open(&self) -> bool {
        !self.confirmed && !self.reversed && self.known != Known::NotBooked
    }
}

/// The log, and what it says, op by op. A message leaves memory once nothing is left to do
/// for any of its operations; the file is rewritten with what is left at opening and every
/// [`COMPACT_EVERY`] lines.
struct SentLog {
    path: PathBuf,
    file: File,
    ops: HashMap<String, OpState>,
    /// Message id → its operations' ids, in the message's order.
    messages: HashMap<String, Vec<String>>,
    /// Lines appended since the file was last rewritten.
    appended: u64,
    /// The last notification taken (all before it taken too).
    notified: u64,
}

/// Lines appended before the log is rewritten with only what is still open.
const COMPACT_EVERY: u64 = 100_000;

impl SentLog {
    fn open(path: &Path) -> Result<SentLog, BankError> {
        let storage = |e: std::io::Error| BankError::Storage(format!("{}: {e}", path.display()));
        let mut log = SentLog {
            path: path.to_path_buf(),
            // Replaced below, once the file is rewritten.
            file: OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(storage)?,
            ops: HashMap::new(),
            messages: HashMap::new(),
            appended: 0,
            notified: 0,
        };
        let reader = BufReader::new(File::open(path).map_err(storage)?);
        let lines: Vec<String> = reader.lines().collect::<Result<_, _>>().map_err(storage)?;
        let n = lines.len();
        for (i, text) in lines.iter().enumerate() {
            let line: Line = match serde_json::from_str(text) {
                Ok(l) => l,
                // A torn last line: its message was never sent (the sync comes first).
                Err(_) if i + 1 == n => break,
                Err(e) => {
                    return Err(BankError::Storage(format!(
                        "{} line {}: {e}",
                        path.display(),
                        i + 1
                    )))
                }
            };
            log.apply(line);
        }
        log.compact()?;
        Ok(log)
    }

    /// Rewrites the file with the messages still in memory, and reopens it for appending.
    fn compact(&mut self) -> Result<(), BankError> {
        let path = self.path.clone();
        let storage = |e: std::io::Error| BankError::Storage(format!("{}: {e}", path.display()));
        let tmp = path.with_extension("jsonl.tmp");
        {
            let mut f = File::create(&tmp).map_err(storage)?;
            if self.notified > 0 {
                write_line(&mut f, &Line::Notified { seq: self.notified }).map_err(storage)?;
            }
            for (msg_id, ids) in &self.messages {
                let list: Vec<(&String, &OpState)> = ids
                    .iter()
                    .filter_map(|id| self.ops.get(id).map(|op| (id, op)))
                    .collect();
                let Some((_, first)) = list.first() else {
                    continue;
                };
                let sent = Line::Sent {
                    msg_id: msg_id.clone(),
                    direction: first.direction,
                    requested: first.requested,
                    ops: list
                        .iter()
                        .map(|(id, op)| LoggedOp {
                            id: (*id).clone(),
                            account: op.account.clone(),
                            amount: op.amount,
                        })
                        .collect(),
                    reverses: first.reverses.clone(),
                };
                write_line(&mut f, &sent).map_err(storage)?;
                for (id, op) in &list {
                    let ids = vec![(*id).clone()];
                    if op.known != Known::Unknown {
                        let line = Line::Outcome {
                            ids: ids.clone(),
                            known: op.known,
                        };
                        write_line(&mut f, &line).map_err(storage)?;
                    }
                    if op.orphaned_at.is_some() {
                        write_line(&mut f, &Line::Orphaned { ids: ids.clone() })
                            .map_err(storage)?;
                    }
                    if op.confirmed {
                        write_line(&mut f, &Line::Confirmed { ids }).map_err(storage)?;
                    }
                }
            }
            f.sync_all().map_err(storage)?;
        }
        std::fs::rename(&tmp, &path).map_err(storage)?;
        if let Some(dir) = path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(storage)?;
        }
        self.file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(storage)?;
        self.appended = 0;
        Ok(())
    }

    /// Appends `line`; `sync` for what must be durable before anything else happens.
    fn append(&mut self, line: Line, sync: bool) -> Result<(), BankError> {
        let storage =
            |e: std::io::Error| BankError::Storage(format!("the bank adapter's log: {e}"));
        write_line(&mut self.file, &line).map_err(storage)?;
        if sync {
            self.file.sync_data().map_err(storage)?;
        }
        self.apply(line);
        self.appended += 1;
        if self.appended >= COMPACT_EVERY {
            self.compact()?;
        }
        Ok(())
    }

    fn apply(&mut self, line: Line) {
        let touched: Vec<String> = match line {
            Line::Sent {
                msg_id,
                direction,
                ops: list,
                requested,
                reverses,
            } => {
                let ids = self.messages.entry(msg_id.clone()).or_default();
                for (pos, op) in list.into_iter().enumerate() {
                    if self.ops.contains_key(&op.id) {
                        continue;
                    }
                    ids.push(op.id.clone());
                    self.ops.insert(
                        op.id,
                        OpState {
                            msg_id: msg_id.clone(),
                            pos,
                            requested,
                            direction,
                            account: op.account,
                            amount: op.amount,
                            known: Known::Unknown,
                            confirmed: false,
                            orphaned_at: None,
                            reversed: false,
                            reverses: reverses.clone(),
                        },
                    );
                }
                Vec::new()
            }
            Line::Outcome { ids, known } => {
                for id in &ids {
                    if let Some(op) = self.ops.get_mut(id) {
                        op.known = known;
                    }
                }
                ids
            }
            Line::Orphaned { ids } => {
                for id in &ids {
                    if let Some(op) = self.ops.get_mut(id) {
                        op.orphaned_at.get_or_insert_with(Instant::now);
                    }
                }
                ids
            }
            Line::Confirmed { ids } => {
                for id in &ids {
                    if let Some(op) = self.ops.get_mut(id) {
                        op.confirmed = true;
                    }
                }
                ids
            }
            Line::Reversed { id, .. } => {
                if let Some(op) = self.ops.get_mut(&id) {
                    op.reversed = true;
                }
                vec![id]
            }
            Line::Notified { seq } => {
                self.notified = self.notified.max(seq);
                Vec::new()
            }
        };
        // A message nothing is left to do for leaves memory.
        let mut done: Vec<String> = Vec::new();
        for id in touched {
            let Some(msg_id) = self.ops.get(&id).map(|op| op.msg_id.clone()) else {
                continue;
            };
            if done.contains(&msg_id) {
                continue;
            }
            let finished = self.messages.get(&msg_id).is_some_and(|ids| {
                ids.iter()
                    .all(|i| !self.ops.get(i).is_some_and(OpState::open))
            });
            if finished {
                done.push(msg_id);
            }
        }
        for msg_id in done {
            if let Some(ids) = self.messages.remove(&msg_id) {
                for id in ids {
                    self.ops.remove(&id);
                }
            }
        }
    }
}

fn write_line(f: &mut File, line: &Line) -> std::io::Result<()> {
    let mut text = serde_json::to_string(line).map_err(std::io::Error::other)?;
    text.push('\n');
    f.write_all(text.as_bytes())
}

/// What one HTTP exchange gave.
enum Reply {
    Report(StatusReport),
    /// 404 to a status query: the bank never received the message.
    NeverReceived,
}

/// Why an exchange gave no answer.
enum Failure {
    /// No answer, or one we cannot read: the outcome is unknown. Ask before sending again.
    Lost(String),
    /// The bank refused the message itself (400, 409, 413): it booked nothing of it.
    Refused(String),
}

struct Inner {
    settings: BankSettings,
    agent: ureq::Agent,
    log: Mutex<SentLog>,
    data_key: Option<DataKey>,
    stats: Arc<AdapterStats>,
    /// The actor that talks to the bank ([`super::actor`]), once started.
    actor: std::sync::OnceLock<BankActorHandle>,
}

/// The ISO 20022 bank adapter. Cheap to clone; wrap it in the engine's `BatchingBankPort` so
/// that concurrent operations share messages.
#[derive(Clone)]
pub struct Iso20022Bank {
    inner: Arc<Inner>,
}

impl Iso20022Bank {
    /// Opens the adapter's log in `data_dir/bank/` and starts the adapter's actor (the bank exchanges and the resolver).
    /// `data_key` seals accounts in the log (I10), as the engine does in the journal.
    pub fn open(
        settings: BankSettings,
        data_dir: &Path,
        data_key: Option<DataKey>,
    ) -> Result<Iso20022Bank, BankError> {
        settings.validate().map_err(BankError::Unavailable)?;
        let dir = data_dir.join("bank");
        std::fs::create_dir_all(&dir)
            .map_err(|e| BankError::Storage(format!("{}: {e}", dir.display())))?;
        let log = SentLog::open(&dir.join("sent.jsonl"))?;
        let agent = agent(&settings)?;
        let bank = Iso20022Bank {
            inner: Arc::new(Inner {
                settings,
                agent,
                log: Mutex::new(log),
                data_key,
                stats: Arc::new(AdapterStats::default()),
                actor: std::sync::OnceLock::new(),
            }),
        };
        bank.refresh_gauges();
        let actor = BankActorHandle::start(bank.clone(), bank.inner.settings.resolve_interval)?;
        let _ = bank.inner.actor.set(actor);
        Ok(bank)
    }

    pub fn settings(&self) -> &BankSettings {
        &self.inner.settings
    }

    pub fn stats(&self) -> Arc<AdapterStats> {
        self.inner.stats.clone()
    }

    /// Stops the adapter's actor (after the batch it is handling): batches asked for later
    /// get an error. Call it once the engine has closed.
    pub fn close(&self) {
        if let Some(actor) = self.inner.actor.get() {
            actor.stop();
        }
    }

    /// The operations whose outcome is unknown now, oldest first: for operators (the admin
    /// API). No account is named (I10).
    pub fn unresolved(&self) -> Vec<UnresolvedOp> {
        let log = self.inner.log.lock();
        let mut list: Vec<UnresolvedOp> = log
            .ops
            .iter()
            .filter(|(_, op)| op.open())
            .filter_map(|(id, op)| {
                op.orphaned_at.map(|at| UnresolvedOp {
                    id: id.clone(),
                    msg_id: op.msg_id.clone(),
                    direction: op.direction.into(),
                    amount: op.amount,
                    booked: op.known == Known::Booked,
                    secs: at.elapsed().as_secs(),
                    reverses: op.reverses.clone(),
                })
            })
            .collect();
        list.sort_by(|a, b| b.secs.cmp(&a.secs).then_with(|| a.id.cmp(&b.id)));
        list
    }

    /// The bank's statement (camt.053) of the settlement center's own account for `date`.
    pub fn statement(&self, date: super::Date) -> Result<Statement, BankError> {
        let url = format!(
            "{}/iso20022/statements/{}/{date}",
            self.inner.settings.endpoint, self.inner.settings.own_account
        );
        match self.inner.agent.get(&url).call() {
            Ok(resp) => {
                let body = read_capped(resp).map_err(BankError::Unavailable)?;
                let statement = Statement::from_xml(&body).map_err(|e| {
                    BankError::Protocol(format!("the bank's statement cannot be read: {e}"))
                })?;
                if statement.account != self.inner.settings.own_account || statement.date != date {
                    return Err(BankError::Protocol(format!(
                        "asked for the statement of {} on {date}, the bank sent {} on {}",
                        self.inner.settings.own_account, statement.account, statement.date
                    )));
                }
                Ok(statement)
            }
            Err(ureq::Error::Status(code, _)) => Err(BankError::Unavailable(format!(
                "the bank answered HTTP {code} for the statement of {date}"
            ))),
            Err(ureq::Error::Transport(t)) => Err(BankError::Unavailable(t.to_string())),
        }
    }

    fn store_account(&self, account: &str) -> StoredAccount {
        match &self.inner.data_key {
            Some(key) => {
                let bank_ref = seal::bank_ref(key, account);
                let sealed = seal::seal(key, &bank_ref, account, &mut rand_core_rng());
                StoredAccount::Sealed {
                    bank_ref,
                    sealed: hex::encode(sealed),
                }
            }
            None => StoredAccount::Plain(account.to_string()),
        }
    }

    fn real_account(&self, stored: &StoredAccount) -> Result<String, BankError> {
        match (stored, &self.inner.data_key) {
            (StoredAccount::Plain(a), _) => Ok(a.clone()),
            (StoredAccount::Sealed { bank_ref, sealed }, Some(key)) => {
                let bytes = hex::decode(sealed)
                    .map_err(|e| BankError::Storage(format!("a sealed account: {e}")))?;
                seal::unseal(key, bank_ref, &bytes).map_err(|e| BankError::Storage(e.to_string()))
            }
            (StoredAccount::Sealed { bank_ref, .. }, None) => Err(BankError::Storage(format!(
                "the bank adapter's log holds the account {bank_ref} sealed, and the node has no data key"
            ))),
        }
    }

    /// Performs a batch on this thread (blocking HTTP): the actor's handler. Operations
    /// answered with an unknown outcome are kept as orphans (never journaled by the engine),
    /// for the resolver.
    pub(crate) fn perform_now(&self, requests: Vec<BankRequest>) -> Vec<BankResult> {
        let ids: Vec<String> = requests.iter().map(|r| r.op().id.clone()).collect();
        let answers = self.perform_blocking(requests);
        let orphans: Vec<String> = ids
            .iter()
            .zip(&answers)
            .filter(|(_, a)| matches!(a, Err(BankError::Unavailable(_) | BankError::Protocol(_))))
            .map(|(id, _)| id.clone())
            .collect();
        if !orphans.is_empty() {
            let mut log = self.inner.log.lock();
            let known: Vec<String> = orphans
                .into_iter()
                .filter(|id| log.ops.contains_key(id))
                .collect();
            if !known.is_empty() {
                if let Err(e) = log.append(Line::Orphaned { ids: known }, false) {
                    tracing::warn!(error = %e, "the bank adapter could not log orphans");
                }
            }
            drop(log);
            self.refresh_gauges();
        }
        answers
    }

    /// Performs a batch on this thread (blocking HTTP).
    fn perform_blocking(&self, requests: Vec<BankRequest>) -> Vec<BankResult> {
        let mut results: Vec<Option<BankResult>> = vec![None; requests.len()];
        for direction in [Direction::Debit, Direction::Credit] {
            let picked: Vec<(usize, &BankOp)> = requests
                .iter()
                .enumerate()
                .filter(|(_, r)| {
                    matches!(
                        (r, direction),
                        (BankRequest::Debit(_), Direction::Debit)
                            | (BankRequest::Credit(_), Direction::Credit)
                    )
                })
                .map(|(i, r)| (i, r.op()))
                .collect();
            for chunk in picked.chunks(self.inner.settings.batch_max) {
                let ops: Vec<BankOp> = chunk.iter().map(|(_, op)| (*op).clone()).collect();
                let answers = self.send_ops(direction, &ops, None);
                for ((i, _), answer) in chunk.iter().zip(answers) {
                    results[*i] = Some(answer);
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(BankError::Protocol("no answer".into()))))
            .collect()
    }

    /// Sends `ops` as one message and answers each.
    fn send_ops(
        &self,
        direction: Direction,
        ops: &[BankOp],
        reverses: Option<&str>,
    ) -> Vec<BankResult> {
        let fail_all = |e: BankError| ops.iter().map(|_| Err(e.clone())).collect::<Vec<_>>();
        // Ids the bank can take (Max35Text); the engine's are far shorter.
        if let Some(op) = ops
            .iter()
            .find(|op| op.id.is_empty() || op.id.chars().count() > 35)
        {
            return fail_all(BankError::Protocol(format!(
                "operation id {:?} is not 1 to 35 characters",
                op.id
            )));
        }
        let msg = self.message_for(direction, ops);
        let xml = match msg.to_xml() {
            Ok(x) => x,
            Err(e) => {
                return fail_all(BankError::Protocol(format!(
                    "cannot write the message: {e}"
                )))
            }
        };
        {
            let mut log = self.inner.log.lock();
            // The same operation ids again (a reversal asked for twice) are the same message:
            // logged once.
            if !ops.iter().all(|op| log.ops.contains_key(&op.id)) {
                let line = Line::Sent {
                    msg_id: msg.msg_id.clone(),
                    direction: direction.into(),
                    ops: ops
                        .iter()
                        .map(|op| LoggedOp {
                            id: op.id.clone(),
                            account: self.store_account(&op.account),
                            amount: op.amount,
                        })
                        .collect(),
                    requested: msg.requested,
                    reverses: reverses.map(str::to_string),
                };
                if let Err(e) = log.append(line, true) {
                    return fail_all(e);
                }
            }
        }
        self.inner.stats.messages.fetch_add(1, Ordering::Relaxed);
        match self.exchange(&msg, &xml) {
            Ok(report) => self.answers(&msg, ops, report),
            Err(Failure::Refused(reason)) => {
                self.record(
                    ops.iter().map(|op| op.id.clone()).collect(),
                    Known::NotBooked,
                );
                fail_all(BankError::Protocol(format!(
                    "the bank refused message {}: {reason}",
                    msg.msg_id
                )))
            }
            Err(Failure::Lost(reason)) => {
                self.inner
                    .stats
                    .unknown_outcomes
                    .fetch_add(ops.len() as u64, Ordering::Relaxed);
                fail_all(BankError::Unavailable(format!(
                    "the outcome of message {} is unknown ({reason}); it is kept and resolved with the bank before anything is sent again",
                    msg.msg_id
                )))
            }
        }
    }

    /// The message the adapter sends for `ops` (its id derived from theirs).
    pub fn message_for(&self, direction: Direction, ops: &[BankOp]) -> Initiation {
        let s = &self.inner.settings;
        let now = time::OffsetDateTime::now_utc();
        Initiation {
            direction,
            msg_id: message_id(direction, ops),
            created: now.replace_nanosecond(0).unwrap_or(now),
            initiator_name: s.initiator_name.clone(),
            creditor_id: s.creditor_id.clone(),
            own_account: s.own_account.clone(),
            currency: s.currency.clone(),
            requested: now.date(),
            transfers: ops
                .iter()
                .map(|op| Transfer {
                    end_to_end_id: op.id.clone(),
                    account: op.account.clone(),
                    amount: op.amount,
                })
                .collect(),
        }
    }

    /// The bank's answer for each operation, from its report.
    fn answers(&self, msg: &Initiation, ops: &[BankOp], report: StatusReport) -> Vec<BankResult> {
        let mut by_id: HashMap<&str, &TxStatus> = HashMap::new();
        let mut bad = None;
        if report.original_msg_id != msg.msg_id || report.original_direction != msg.direction {
            bad = Some(format!(
                "the bank's report answers message {}, not {}",
                report.original_msg_id, msg.msg_id
            ));
        }
        for tx in &report.transactions {
            if by_id
                .insert(tx.original_end_to_end_id.as_str(), &tx.status)
                .is_some()
            {
                bad = Some(format!(
                    "the bank's report names operation {} twice",
                    tx.original_end_to_end_id
                ));
            }
        }
        if bad.is_none()
            && (by_id.len() != ops.len()
                || ops.iter().any(|op| !by_id.contains_key(op.id.as_str())))
        {
            bad = Some(format!(
                "the bank's report for message {} does not name each of its {} operations once",
                msg.msg_id,
                ops.len()
            ));
        }
        if let Some(reason) = bad {
            self.inner
                .stats
                .unknown_outcomes
                .fetch_add(ops.len() as u64, Ordering::Relaxed);
            return ops
                .iter()
                .map(|_| Err(BankError::Protocol(reason.clone())))
                .collect();
        }
        let mut booked = Vec::new();
        let mut not_booked = Vec::new();
        let answers = ops
            .iter()
            .map(|op| match by_id[op.id.as_str()] {
                TxStatus::Accepted => {
                    booked.push(op.id.clone());
                    Ok(BankAnswer::Done)
                }
                TxStatus::Rejected(reason) => {
                    not_booked.push(op.id.clone());
                    match reason {
                        Reason::IncorrectAccount => Err(BankError::UnknownAccount(op.account.clone())),
                        r => Ok(BankAnswer::Refused(format!("the bank rejected it: {}", r.describe()))),
                    }
                }
                TxStatus::Pending => {
                    self.inner.stats.unknown_outcomes.fetch_add(1, Ordering::Relaxed);
                    Err(BankError::Unavailable(format!(
                        "the bank still reports operation {} of message {} as pending; it is resolved in the background",
                        op.id, msg.msg_id
                    )))
                }
            })
            .collect();
        self.record(booked, Known::Booked);
        self.record(not_booked, Known::NotBooked);
        answers
    }

    fn record(&self, ids: Vec<String>, known: Known) {
        if ids.is_empty() {
            return;
        }
        // Not synced: a lost outcome line only means the bank is asked again.
        if let Err(e) = self
            .inner
            .log
            .lock()
            .append(Line::Outcome { ids, known }, false)
        {
            tracing::warn!(error = %e, "the bank adapter could not log an outcome");
        }
    }

    /// Sends `xml` and reads the report, asking for the status before any resend, and polling
    /// while operations are pending (up to `pending_wait`).
    fn exchange(&self, msg: &Initiation, xml: &str) -> Result<StatusReport, Failure> {
        let s = &self.inner.settings;
        let mut report = self.deliver(msg, xml)?;
        let deadline = Instant::now() + s.pending_wait;
        let mut pause = s.retry_backoff;
        while report
            .transactions
            .iter()
            .any(|t| t.status == TxStatus::Pending)
            && Instant::now() < deadline
        {
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_secs(5));
            if let Ok(Reply::Report(r)) = self.status(&msg.msg_id) {
                report = r;
            }
        }
        Ok(report)
    }

    /// Delivers a message once: sends it, and after a lost answer asks for its status, sending
    /// it again only when the bank never received it.
    fn deliver(&self, msg: &Initiation, xml: &str) -> Result<StatusReport, Failure> {
        let s = &self.inner.settings;
        let mut pause = s.retry_backoff;
        let mut last = String::new();
        let mut must_ask = false;
        for attempt in 0..=s.retries {
            if attempt > 0 {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            if must_ask {
                match self.status(&msg.msg_id) {
                    Ok(Reply::Report(r)) => return Ok(r),
                    Ok(Reply::NeverReceived) => {
                        self.inner.stats.resends.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(Failure::Lost(e)) => {
                        last = e;
                        continue;
                    }
                    Err(refused) => return Err(refused),
                }
            }
            match self.post(xml) {
                Ok(Reply::Report(r)) => return Ok(r),
                Ok(Reply::NeverReceived) => {
                    return Err(Failure::Refused(
                        "the bank's endpoint for initiations was not found (404)".into(),
                    ))
                }
                Err(Failure::Lost(e)) => {
                    tracing::warn!(msg_id = %msg.msg_id, error = %e, "the bank's answer was lost; asking for the message's status before any retry");
                    last = e;
                    must_ask = true;
                }
                Err(refused) => return Err(refused),
            }
        }
        Err(Failure::Lost(last))
    }

    fn post(&self, xml: &str) -> Result<Reply, Failure> {
        let url = format!("{}/iso20022/initiations", self.inner.settings.endpoint);
        let answer = self
            .inner
            .agent
            .post(&url)
            .set("Content-Type", "application/xml")
            .send_string(xml);
        self.read(answer)
    }

    fn status(&self, msg_id: &str) -> Result<Reply, Failure> {
        self.inner
            .stats
            .status_queries
            .fetch_add(1, Ordering::Relaxed);
        let url = format!(
            "{}/iso20022/initiations/{}/status",
            self.inner.settings.endpoint, msg_id
        );
        self.read(self.inner.agent.get(&url).call())
    }

    fn read(&self, answer: Result<ureq::Response, ureq::Error>) -> Result<Reply, Failure> {
        match answer {
            Ok(resp) => {
                let body = read_capped(resp).map_err(Failure::Lost)?;
                StatusReport::from_xml(&body)
                    .map(Reply::Report)
                    .map_err(|e| Failure::Lost(format!("the bank's answer cannot be read: {e}")))
            }
            Err(ureq::Error::Status(404, _)) => Ok(Reply::NeverReceived),
            Err(ureq::Error::Status(code @ (400 | 409 | 413 | 422), resp)) => {
                let body = read_capped(resp).unwrap_or_default();
                let text = String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned();
                Err(Failure::Refused(format!("HTTP {code}: {text}")))
            }
            Err(ureq::Error::Status(code, _)) => Err(Failure::Lost(format!("HTTP {code}"))),
            Err(ureq::Error::Transport(t)) => Err(Failure::Lost(t.to_string())),
        }
    }

    /// Takes the bank's camt.054 notifications in sequence order: one served again is
    /// ignored, one ahead of its turn is kept until the ones before it came. Each booked entry
    /// settles an operation whose outcome was unknown, and one that disagrees with what was
    /// sent is reported. Stops at the first gap the bank does not fill in this pass.
    pub fn take_notifications(&self) {
        let stats = &self.inner.stats;
        let mut next = self.inner.log.lock().notified + 1;
        let mut ahead: std::collections::BTreeMap<u64, super::Notification> = Default::default();
        // Bounded: a bank serving the same few notifications forever cannot hold the thread.
        for _ in 0..10_000 {
            let url = format!(
                "{}/iso20022/notifications?after={}",
                self.inner.settings.endpoint,
                next - 1
            );
            let n = match self.inner.agent.get(&url).call() {
                Ok(resp) if resp.status() == 204 => break,
                Ok(resp) => match read_capped(resp)
                    .map_err(|e| e.to_string())
                    .and_then(|b| super::Notification::from_xml(&b).map_err(|e| e.to_string()))
                {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::warn!(error = %e, "a notification from the bank cannot be read");
                        break;
                    }
                },
                Err(e) => {
                    tracing::debug!(error = %e, "cannot fetch the bank's notifications now");
                    break;
                }
            };
            if n.sequence < next || ahead.contains_key(&n.sequence) {
                stats
                    .notification_duplicates
                    .fetch_add(1, Ordering::Relaxed);
                if n.sequence >= next {
                    // The one ahead again: the gap before it is not filled yet.
                    break;
                }
                continue;
            }
            if n.sequence > next {
                stats
                    .notifications_out_of_order
                    .fetch_add(1, Ordering::Relaxed);
                ahead.insert(n.sequence, n);
                continue;
            }
            self.take_notification(&n);
            next += 1;
            while let Some(n) = ahead.remove(&next) {
                self.take_notification(&n);
                next += 1;
            }
            let _ = self
                .inner
                .log
                .lock()
                .append(Line::Notified { seq: next - 1 }, false);
        }
    }

    fn take_notification(&self, n: &super::Notification) {
        let stats = &self.inner.stats;
        stats.notifications.fetch_add(1, Ordering::Relaxed);
        if n.account != self.inner.settings.own_account {
            tracing::error!(
                seq = n.sequence,
                "a notification from the bank is for another account than ours"
            );
            stats
                .notification_mismatches
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut booked = Vec::new();
        {
            let log = self.inner.log.lock();
            for e in &n.entries {
                let Some(op) = log.ops.get(&e.end_to_end_id) else {
                    continue;
                };
                // On the own account a debit of a consumer is a credit, and the other way round.
                let side = match op.direction {
                    Dir::Debit => super::Side::Credit,
                    Dir::Credit => super::Side::Debit,
                };
                if e.amount != op.amount || e.side != side {
                    stats
                        .notification_mismatches
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::error!(op = %e.end_to_end_id, seq = n.sequence, "the bank notified a booking that differs from the operation sent");
                } else if op.known == Known::Unknown {
                    booked.push(e.end_to_end_id.clone());
                }
            }
        }
        self.record(booked, Known::Booked);
    }

    /// Asks the bank about every orphan (an operation answered with an unknown outcome, that
    /// the engine therefore never journals) and reverses those it booked.
    pub fn resolve_orphans(&self) {
        self.take_notifications();
        let orphans: Vec<(String, OpState)> = {
            let log = self.inner.log.lock();
            log.ops
                .iter()
                .filter(|(_, op)| op.open() && op.orphaned_at.is_some())
                .map(|(id, op)| (id.clone(), op.clone()))
                .collect()
        };
        for (id, op) in orphans {
            if let Err(e) = self.settle_orphan(&id, &op) {
                tracing::warn!(op = %id, error = %e, "an orphaned bank operation is still unresolved");
            }
        }
        self.refresh_gauges();
    }

    fn settle_orphan(&self, id: &str, op: &OpState) -> Result<(), BankError> {
        if op.known == Known::Unknown {
            match self.ask(&op.msg_id, id)? {
                Known::Unknown => {
                    return Err(BankError::Unavailable("still pending at the bank".into()))
                }
                Known::NotBooked => {
                    self.record(vec![id.to_string()], Known::NotBooked);
                    return Ok(());
                }
                Known::Booked => self.record(vec![id.to_string()], Known::Booked),
            }
        }
        self.reverse_booked(id)
    }

    /// Message `msg_id` as it was sent, from the log: the same id, operations, amounts and
    /// requested date (only its creation time is new).
    fn logged_message(&self, msg_id: &str) -> Result<Initiation, BankError> {
        let mut ops: Vec<(usize, Dir, super::Date, BankOp)> = Vec::new();
        {
            let log = self.inner.log.lock();
            for (id, op) in log.ops.iter().filter(|(_, op)| op.msg_id == msg_id) {
                ops.push((
                    op.pos,
                    op.direction,
                    op.requested,
                    BankOp {
                        id: id.clone(),
                        account: String::new(),
                        amount: op.amount,
                    },
                ));
            }
        }
        ops.sort_by_key(|(pos, ..)| *pos);
        let Some(&(_, direction, requested, _)) = ops.first() else {
            return Err(BankError::Protocol(format!(
                "message {msg_id} is not in the log"
            )));
        };
        let mut list = Vec::with_capacity(ops.len());
        for (_, _, _, mut op) in ops {
            let stored = self
                .inner
                .log
                .lock()
                .ops
                .get(&op.id)
                .map(|o| o.account.clone());
            if let Some(stored) = stored {
                op.account = self.real_account(&stored)?;
            }
            list.push(op);
        }
        let mut msg = self.message_for(direction.into(), &list);
        if msg.msg_id != msg_id {
            // Some of its operations were left out of the rewritten log (done with): a
            // message of the others would be another message.
            return Err(BankError::Protocol(format!(
                "message {msg_id} cannot be rebuilt from the log"
            )));
        }
        msg.requested = requested;
        Ok(msg)
    }

    /// What the bank says now of operation `id` of message `msg_id`: `Unknown` while pending.
    /// A report that does not answer that message and name that operation is an error.
    ///
    /// A bank that says it never received the message may still have it on its way (a request
    /// sent just before a crash), so "never received" is not taken as "not booked": the
    /// message, rebuilt from the log, is sent again (the bank books a message id once), and
    /// its answer is the outcome.
    fn ask(&self, msg_id: &str, id: &str) -> Result<Known, BankError> {
        let reply = match self.status(msg_id) {
            Ok(Reply::NeverReceived) => {
                let msg = self.logged_message(msg_id)?;
                let xml = msg
                    .to_xml()
                    .map_err(|e| BankError::Protocol(format!("cannot write the message: {e}")))?;
                self.inner.stats.resends.fetch_add(1, Ordering::Relaxed);
                match self.deliver(&msg, &xml) {
                    Ok(r) => Ok(Reply::Report(r)),
                    Err(Failure::Refused(_)) => return Ok(Known::NotBooked),
                    Err(lost) => Err(lost),
                }
            }
            other => other,
        };
        match reply {
            Ok(Reply::NeverReceived) => Err(BankError::Protocol(format!(
                "the bank says it never received message {msg_id} it has just answered"
            ))),
            Ok(Reply::Report(r)) => {
                if r.original_msg_id != msg_id {
                    return Err(BankError::Protocol(format!(
                        "asked for message {msg_id}, the bank answered for {}",
                        r.original_msg_id
                    )));
                }
                let mut named = r
                    .transactions
                    .iter()
                    .filter(|t| t.original_end_to_end_id == id);
                match (named.next().map(|t| &t.status), named.next()) {
                    (Some(TxStatus::Accepted), None) => Ok(Known::Booked),
                    (Some(TxStatus::Rejected(_)), None) => Ok(Known::NotBooked),
                    (Some(TxStatus::Pending), None) => Ok(Known::Unknown),
                    _ => Err(BankError::Protocol(format!(
                        "the bank's report of message {msg_id} does not name operation {id} once"
                    ))),
                }
            }
            Err(Failure::Lost(e)) | Err(Failure::Refused(e)) => Err(BankError::Unavailable(e)),
        }
    }

    /// Sends the opposite of booked operation `id` and records it as reversed.
    fn reverse_booked(&self, id: &str) -> Result<(), BankError> {
        let op = {
            let log = self.inner.log.lock();
            match log.ops.get(id) {
                Some(op) => op.clone(),
                None => return Ok(()),
            }
        };
        if op.reversed || op.confirmed || op.known == Known::NotBooked {
            return Ok(());
        }
        let reversal = reversal_id(id);
        let direction = match op.direction {
            Dir::Debit => Direction::Credit,
            Dir::Credit => Direction::Debit,
        };
        let back = BankOp {
            id: reversal.clone(),
            account: self.real_account(&op.account)?,
            amount: op.amount,
        };
        match self
            .send_ops(direction, std::slice::from_ref(&back), Some(id))
            .pop()
        {
            Some(Ok(BankAnswer::Done)) => {
                self.inner.stats.reversals.fetch_add(1, Ordering::Relaxed);
                tracing::info!(op = %id, reversal = %reversal, "a bank operation the node never recorded was reversed");
                self.inner.log.lock().append(
                    Line::Reversed {
                        id: id.to_string(),
                        reversal: reversal.clone(),
                    },
                    true,
                )?;
                // The reversal itself is done: nothing left to do for it.
                self.inner.log.lock().append(
                    Line::Confirmed {
                        ids: vec![reversal],
                    },
                    false,
                )
            }
            Some(Ok(BankAnswer::Refused(why))) => Err(BankError::Unavailable(format!(
                "the bank refused the reversal of {id}: {why}"
            ))),
            Some(Err(e)) => Err(e),
            None => Err(BankError::Protocol("no answer".into())),
        }
    }

    fn refresh_gauges(&self) {
        let log = self.inner.log.lock();
        let alert = self.inner.settings.unresolved_alert;
        let mut unresolved = 0;
        let mut overdue = 0;
        for (id, op) in log.ops.iter().filter(|(_, op)| op.open()) {
            if let Some(at) = op.orphaned_at {
                unresolved += 1;
                if at.elapsed() >= alert {
                    overdue += 1;
                    tracing::error!(op = %id, msg_id = %op.msg_id, secs = at.elapsed().as_secs(), "a bank operation's outcome is still unknown; operators should check it with the bank");
                }
            }
        }
        self.inner
            .stats
            .unresolved
            .store(unresolved, Ordering::Relaxed);
        self.inner
            .stats
            .unresolved_overdue
            .store(overdue, Ordering::Relaxed);
    }
}

impl BankPort for Iso20022Bank {
    fn debit(&self, op: BankOp) -> BoxFuture<'static, Result<BankAnswer, BankError>> {
        let batch = self.perform_batch(vec![BankRequest::Debit(op)]);
        async move { single(batch.await) }.boxed()
    }

    fn credit(&self, op: BankOp) -> BoxFuture<'static, Result<BankAnswer, BankError>> {
        let batch = self.perform_batch(vec![BankRequest::Credit(op)]);
        async move { single(batch.await) }.boxed()
    }

    /// A message to the adapter's actor, which makes the blocking HTTP exchange on its own
    /// thread: no runtime's thread waits for the bank.
    fn perform_batch(
        &self,
        requests: Vec<BankRequest>,
    ) -> BoxFuture<'static, Result<Vec<BankResult>, BankError>> {
        match self.inner.actor.get() {
            Some(actor) => actor.perform(requests).boxed(),
            None => futures::future::ready(Err(BankError::Unavailable(
                "the bank adapter is not running".into(),
            )))
            .boxed(),
        }
    }

    /// Operations the bank booked that the node has not confirmed as journaled; asks the bank
    /// about those whose outcome is not known yet. One it cannot reach leaves the operation
    /// for the resolver, with a warning.
    fn unconfirmed(&self) -> Result<Vec<UnconfirmedOp>, BankError> {
        let open: Vec<(String, OpState)> = {
            let log = self.inner.log.lock();
            log.ops
                .iter()
                .filter(|(_, op)| op.open() && op.reverses.is_none() && op.orphaned_at.is_none())
                .map(|(id, op)| (id.clone(), op.clone()))
                .collect()
        };
        let mut out = Vec::new();
        // One bank that cannot be reached is enough to know: the others are left to the
        // engine's decision below and to the resolver, not asked one timeout each.
        let mut reachable = true;
        for (id, op) in open {
            let mut known = op.known;
            if known == Known::Unknown && reachable {
                match self.ask(&op.msg_id, &id) {
                    Ok(k) => known = k,
                    Err(e) => {
                        reachable = false;
                        tracing::warn!(op = %id, error = %e, "cannot learn an operation's outcome from the bank at opening; the resolver goes on asking");
                    }
                }
                if known != Known::Unknown {
                    self.record(vec![id.clone()], known);
                }
            }
            // Booked, or perhaps booked: the engine confirms it if its journal holds it (a
            // command answered before a crash), and asks to reverse it otherwise
            // (`reverse` of an unknown outcome waits for the outcome).
            if known != Known::NotBooked {
                out.push(UnconfirmedOp {
                    id,
                    kind: match op.direction {
                        Dir::Debit => BankOpKind::Debit,
                        Dir::Credit => BankOpKind::Credit,
                    },
                    account: self.real_account(&op.account)?,
                    amount: op.amount,
                });
            }
        }
        Ok(out)
    }

    fn confirm(&self, ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        let mut log = self.inner.log.lock();
        let known: Vec<String> = ids
            .iter()
            .filter(|id| log.ops.contains_key(*id))
            .cloned()
            .collect();
        if known.is_empty() {
            return;
        }
        // Best effort (the trait's contract): a lost confirmation is checked again at opening.
        if let Err(e) = log.append(Line::Confirmed { ids: known }, false) {
            tracing::warn!(error = %e, "the bank adapter could not log confirmations");
        }
    }

    /// Undoes an operation the engine never recorded. One whose outcome is still unknown is
    /// not undone blindly (it may never have been booked): it becomes an orphan, which the
    /// resolver reverses once the bank says it booked it.
    fn reverse(&self, id: &str) -> Result<(), BankError> {
        let unknown = self
            .inner
            .log
            .lock()
            .ops
            .get(id)
            .is_some_and(|op| op.known == Known::Unknown);
        if unknown {
            let mut log = self.inner.log.lock();
            log.append(
                Line::Orphaned {
                    ids: vec![id.to_string()],
                },
                false,
            )?;
            drop(log);
            self.refresh_gauges();
            return Ok(());
        }
        self.reverse_booked(id)
    }
}

fn single(answers: Result<Vec<BankResult>, BankError>) -> BankResult {
    answers?
        .pop()
        .unwrap_or_else(|| Err(BankError::Protocol("no answer".into())))
}

/// The message id for `ops`: the same operations give the same id, so a retry is the same
/// message to the bank. `OC` + 32 hex digits of SHA-256 over the direction and the ids.
pub fn message_id(direction: Direction, ops: &[BankOp]) -> String {
    let mut h = Sha256::new();
    h.update(match direction {
        Direction::Debit => b"pain.008|".as_slice(),
        Direction::Credit => b"pain.001|".as_slice(),
    });
    for op in ops {
        h.update(op.id.as_bytes());
        h.update(b"|");
    }
    format!("OC{}", &hex::encode(h.finalize())[..32])
}

/// The id of the operation that reverses `id`.
pub fn reversal_id(id: &str) -> String {
    let plain = format!("RV-{id}");
    if plain.chars().count() <= 35 {
        plain
    } else {
        format!("RV-{}", &hex::encode(Sha256::digest(id.as_bytes()))[..32])
    }
}

fn read_capped(resp: ureq::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    resp.into_reader()
        .take(MAX_MESSAGE_BYTES as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| format!("reading the bank's answer: {e}"))?;
    if body.len() > MAX_MESSAGE_BYTES {
        return Err(format!(
            "the bank's answer is over {MAX_MESSAGE_BYTES} bytes; not read"
        ));
    }
    Ok(body)
}

fn rand_core_rng() -> rand::rngs::ThreadRng {
    rand::thread_rng()
}

/// The HTTP agent: timeouts, no redirects, and the TLS roots and client certificate asked for.
fn agent(s: &BankSettings) -> Result<ureq::Agent, BankError> {
    let mut builder = ureq::AgentBuilder::new()
        .timeout(s.timeout)
        .timeout_connect(s.connect_timeout)
        .redirects(0)
        .user_agent(concat!("onecard-node/", env!("CARGO_PKG_VERSION")));
    if s.endpoint.starts_with("https://") {
        builder = builder.tls_config(tls_config(s).map_err(BankError::Unavailable)?);
    }
    Ok(builder.build())
}

fn tls_config(s: &BankSettings) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let mut roots = rustls::RootCertStore::empty();
    match &s.tls_root_cert {
        Some(path) => {
            for cert in CertificateDer::pem_slice_iter(&read(path)?) {
                let cert = cert.map_err(|e| format!("bank.tls_root_cert: not valid PEM: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("bank.tls_root_cert cannot be trusted: {e}"))?;
            }
            if roots.is_empty() {
                return Err("bank.tls_root_cert has no PEM CERTIFICATE in it".into());
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS configuration: {e}"))?
        .with_root_certificates(roots);
    let config = match (&s.client_cert, &s.client_key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_slice_iter(&read(cert)?)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("bank.client_cert: not valid PEM: {e}"))?;
            if chain.is_empty() {
                return Err("bank.client_cert has no PEM CERTIFICATE in it".into());
            }
            let key = PrivateKeyDer::from_pem_slice(&read(key)?)
                .map_err(|e| format!("bank.client_key: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("bank.client_cert and client_key: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}
