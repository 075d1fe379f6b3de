//! The engine: opens a data directory, recovers, reconciles with the bank, starts the actors
//! and routes commands to them.
//!
//! Commands come in as raw requests (strings from a scenario file, a CLI or an HTTP body) and
//! are checked here in the precedence FORMAT.md fixes — conflict, amount, invalid, unknown —
//! before they reach the actor that owns the account, which decides the rest.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use dashmap::mapref::entry::Entry as MapEntry;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use crate::actors::{
    ConsumerActor, ConsumerCmd, ConsumerMsg, ConsumerReply, MerchantActor, MerchantMsg,
    MerchantReply,
};
use crate::bank::{BankAnswer, BankError, BankOp, BankPort};
use crate::journal::{Journal, JournalConfig, JournalError, JournalHandle};
use crate::ledger::{
    consumer_opened_event, ConsumerState, Entry, Event, EventKind, LedgerState, MerchantState,
    Order, Posting,
};
use crate::model::{CommandResult, Outcome, Refusal, Release, RulesConfig, Secs};
use crate::money::Amount;

/// Faults: the command could not be carried out, and nothing was acknowledged. Business
/// refusals are not faults; they are the `Err` side of a [`CommandResult`].
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("journal: {0}")]
    Journal(#[from] JournalError),
    #[error("bank: {0}")]
    Bank(#[from] BankError),
    #[error("engine unavailable: {0}")]
    Unavailable(String),
    #[error("overloaded: {0} commands already in progress; retry later with the same id")]
    Overloaded(usize),
    #[error("configuration: {0}")]
    Config(String),
    #[error("internal error (a bug): {0}")]
    Internal(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl From<MailboxError> for EngineError {
    fn from(e: MailboxError) -> Self {
        EngineError::Unavailable(format!("account actor unreachable: {e}"))
    }
}

/// Engine settings: the rules, the journal's tuning and the actor pool.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub rules: RulesConfig,
    pub journal: JournalConfig,
    /// Arbiters (threads) running the account actors; default one per core.
    pub arbiters: usize,
    /// Bound of every account actor's mailbox.
    pub mailbox_capacity: usize,
    /// Most commands in progress at once; one more is refused at once with
    /// [`EngineError::Overloaded`] instead of queueing without bound.
    pub max_in_flight: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            rules: RulesConfig::default(),
            journal: JournalConfig::default(),
            arbiters: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            mailbox_capacity: 256,
            max_in_flight: 100_000,
        }
    }
}

/// The content that identifies an order id's first use (I6).
#[derive(Debug, Clone, PartialEq, Eq)]
struct OrderKey {
    consumer: String,
    merchant: String,
    amount: Amount,
    release: Release,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct RefundKey {
    order: String,
    amount: Amount,
}

/// What the actors share: the rules, the journal, the bank and the routing directory.
pub struct Shared {
    pub rules: RulesConfig,
    pub journal: JournalHandle,
    pub bank: Arc<dyn BankPort>,
    pub mailbox_capacity: usize,
    consumers: DashMap<String, Addr<ConsumerActor>>,
    merchants: DashMap<String, Addr<MerchantActor>>,
    /// bank account → the consumer it is designated for.
    banks: DashMap<String, String>,
    orders: DashMap<String, OrderKey>,
    refunds: DashMap<String, RefundKey>,
    /// Consumers that may have time-driven work: those with reserved credit (pending,
    /// disputed or awaiting orders). A tick visits only these.
    timed: DashMap<String, ()>,
    bank_op_prefix: String,
    bank_op_counter: AtomicU64,
    in_flight: std::sync::atomic::AtomicUsize,
    max_in_flight: usize,
}

impl Shared {
    /// A bank operation id never used before, by this run or any earlier one.
    pub fn new_bank_op_id(&self) -> String {
        let n = self.bank_op_counter.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.bank_op_prefix)
    }

    /// Keeps the set of consumers a tick must visit up to date.
    pub fn note_time_work(&self, consumer: &str, may_have_work: bool) {
        if may_have_work {
            if !self.timed.contains_key(consumer) {
                self.timed.insert(consumer.to_string(), ());
            }
        } else if self.timed.contains_key(consumer) {
            self.timed.remove(consumer);
        }
    }

    pub fn credit_merchant(&self, merchant: &str, postings: Vec<Posting>) {
        if let Some(addr) = self.merchants.get(merchant) {
            // Unbounded on purpose: a credit is already durable and must never be dropped.
            addr.do_send(MerchantMsg::Credit(postings));
        }
    }

    pub fn credit_merchant_back(&self, merchant: &str, amount: Amount) {
        if let Some(addr) = self.merchants.get(merchant) {
            addr.do_send(MerchantMsg::Restore(amount));
        }
    }

    pub async fn debit_merchant_for_refund(
        &self,
        merchant: &str,
        amount: Amount,
    ) -> Result<Result<(), Refusal>, EngineError> {
        let addr = self
            .merchants
            .get(merchant)
            .map(|a| a.clone())
            .ok_or_else(|| EngineError::Internal(format!("merchant {merchant} has no actor")))?;
        match addr.send(MerchantMsg::DebitForRefund(amount)).await? {
            MerchantReply::Done(r) => Ok(r),
            MerchantReply::State(_) => {
                Err(EngineError::Internal("unexpected merchant reply".into()))
            }
        }
    }
}

/// A request to open a consumer: amounts as text, checked by the engine.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpenConsumer {
    pub consumer: String,
    pub credit_limit: String,
    /// The designated bank account, which must exist at the bank.
    pub bank: String,
    /// Moved from the bank account into the wallet at opening.
    pub wallet: String,
}

/// A request to place an order, as it arrives from outside.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlaceOrder {
    pub id: String,
    pub consumer: String,
    pub merchant: String,
    pub amount: String,
    /// One of `{"on":"receipt"}`, `{"on":"code","code":"…"}`, `{"on":"time","after_secs":N}`.
    pub release: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefundRequest {
    pub id: String,
    pub order: String,
    pub amount: String,
}

/// Parses a release condition, refusing anything that is not exactly one of the three forms.
pub fn parse_release(v: &serde_json::Value) -> Result<Release, Refusal> {
    let invalid = |m: &str| Refusal::invalid(format!("release {v}: {m}"));
    let obj = v.as_object().ok_or_else(|| invalid("must be an object"))?;
    let on = obj
        .get("on")
        .and_then(|x| x.as_str())
        .ok_or_else(|| invalid("needs \"on\""))?;
    let allowed: &[&str] = match on {
        "receipt" => &["on"],
        "code" => &["on", "code"],
        "time" => &["on", "after_secs"],
        _ => return Err(invalid("\"on\" must be receipt, code or time")),
    };
    if let Some(k) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(invalid(&format!("unexpected field {k:?}")));
    }
    match on {
        "receipt" => Ok(Release::Receipt),
        "code" => match obj.get("code").and_then(|c| c.as_str()) {
            Some(c) if !c.is_empty() && c.len() <= 256 => Ok(Release::Code(c.to_string())),
            _ => Err(invalid("a code release needs a non-empty \"code\" string")),
        },
        _ => match obj.get("after_secs").and_then(|s| s.as_u64()) {
            Some(n) if n > 0 => Ok(Release::Time { after_secs: n }),
            _ => Err(invalid(
                "a time release needs a positive integer \"after_secs\"",
            )),
        },
    }
}

/// Checks an id or a name from outside: non-empty, bounded, printable.
fn check_id(what: &str, id: &str) -> Result<(), Refusal> {
    if id.is_empty() || id.len() > 128 || id.chars().any(|c| c.is_control()) {
        return Err(Refusal::invalid(format!(
            "{what} {id:?} must be 1 to 128 characters with no control characters"
        )));
    }
    Ok(())
}

/// A command's place among those in progress; given back on drop.
struct Admission<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Names claimed by an open in progress; released on drop.
struct Claim<'a> {
    opening: &'a DashMap<String, ()>,
    keys: Vec<String>,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        for k in &self.keys {
            self.opening.remove(k);
        }
    }
}

/// The running engine.
pub struct Engine {
    shared: Arc<Shared>,
    arbiters: Vec<Arbiter>,
    journal: Option<Journal>,
    clock: AtomicU64,
    /// Names being opened right now (`acct:NAME`, `bank:NAME`), so that two concurrent opens
    /// of one name cannot both succeed while opens of different names run in parallel.
    opening: DashMap<String, ()>,
    data_dir: PathBuf,
    recovery: RecoveryInfo,
}

/// What opening the data directory found.
#[derive(Debug, Clone, Default)]
pub struct RecoveryInfo {
    pub snapshot_seq: u64,
    pub replayed_records: u64,
    pub last_seq: u64,
    pub entries: u64,
    pub bank_ops_confirmed: usize,
    pub bank_ops_reversed: usize,
}

impl Engine {
    /// Opens (or creates) a data directory: recovers state from the journal, reconciles with
    /// the bank, and starts the actors. Must be called inside an actix `System`.
    pub async fn open(
        dir: &Path,
        cfg: EngineConfig,
        bank: Arc<dyn BankPort>,
    ) -> Result<Engine, EngineError> {
        cfg.rules.validate().map_err(EngineError::Config)?;
        std::fs::create_dir_all(dir)?;
        let (journal, recovered) = Journal::open(
            dir,
            LedgerState::new(cfg.rules.clone()),
            cfg.journal.clone(),
        )?;
        let handle = journal.handle();
        let state = recovered.state;
        if let Some(c) = state
            .consumers
            .values()
            .find(|c| c.wallet > cfg.rules.wallet_cap)
        {
            return Err(EngineError::Config(format!(
                "wallet_cap {} is below the wallet of {} ({}); lowering the cap below existing wallets is refused",
                cfg.rules.wallet_cap, c.id, c.wallet
            )));
        }

        // Reconcile: bank operations the journal does not hold belong to commands that were
        // never acknowledged, and are undone.
        let mut info = RecoveryInfo {
            snapshot_seq: recovered.snapshot_seq,
            replayed_records: recovered.replayed_records,
            last_seq: recovered.last_seq,
            entries: state.entries,
            ..Default::default()
        };
        for op in bank.unconfirmed()? {
            if handle.has_bank_op(&op.id)? {
                bank.confirm(std::slice::from_ref(&op.id));
                info.bank_ops_confirmed += 1;
            } else {
                bank.reverse(&op.id)?;
                info.bank_ops_reversed += 1;
            }
        }

        let shared = Arc::new(Shared {
            rules: cfg.rules.clone(),
            journal: handle,
            bank,
            mailbox_capacity: cfg.mailbox_capacity.max(1),
            consumers: DashMap::new(),
            merchants: DashMap::new(),
            banks: DashMap::new(),
            orders: DashMap::new(),
            refunds: DashMap::new(),
            timed: DashMap::new(),
            bank_op_prefix: format!("{:016x}", rand::random::<u64>()),
            bank_op_counter: AtomicU64::new(0),
            in_flight: std::sync::atomic::AtomicUsize::new(0),
            max_in_flight: cfg.max_in_flight.max(1),
        });
        let arbiters = (0..cfg.arbiters.max(1)).map(|_| Arbiter::new()).collect();
        let engine = Engine {
            shared,
            arbiters,
            journal: Some(journal),
            clock: AtomicU64::new(state.clock),
            opening: DashMap::new(),
            data_dir: dir.to_path_buf(),
            recovery: info,
        };
        if state.entries == 0 || state.config != cfg.rules {
            let entry = Entry::new(
                state.clock,
                vec![Event::new(EventKind::Configured(cfg.rules.clone()))],
            );
            engine.shared.journal.append(&entry).await?;
        }
        for (_, c) in state.consumers {
            engine.index_consumer(&c);
            engine.start_consumer(c);
        }
        for (_, m) in state.merchants {
            engine.start_merchant(m);
        }
        Ok(engine)
    }

    /// The journal's counters: records written, entries in them, flushes.
    pub fn journal_stats(&self) -> &crate::journal::JournalStats {
        self.shared.journal.stats()
    }

    pub fn recovery(&self) -> &RecoveryInfo {
        &self.recovery
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn rules(&self) -> &RulesConfig {
        &self.shared.rules
    }

    /// The engine's clock: the latest time any command ran at.
    pub fn clock(&self) -> Secs {
        self.clock.load(Ordering::Acquire)
    }

    fn advance_clock(&self, now: Secs) -> Secs {
        self.clock.fetch_max(now, Ordering::AcqRel).max(now)
    }

    fn arbiter_for(&self, id: &str) -> &Arbiter {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        id.hash(&mut h);
        &self.arbiters[(h.finish() % self.arbiters.len() as u64) as usize]
    }

    fn index_consumer(&self, c: &ConsumerState) {
        self.shared.note_time_work(&c.id, c.reserved.is_positive());
        self.shared.banks.insert(c.bank.clone(), c.id.clone());
        for o in c.orders.values() {
            self.shared.orders.insert(
                o.id.clone(),
                OrderKey {
                    consumer: c.id.clone(),
                    merchant: o.merchant.clone(),
                    amount: o.amount,
                    release: o.release.clone(),
                },
            );
        }
        for (id, r) in &c.refunds {
            self.shared.refunds.insert(
                id.clone(),
                RefundKey {
                    order: r.order.clone(),
                    amount: r.amount,
                },
            );
        }
    }

    fn start_consumer(&self, c: ConsumerState) {
        let id = c.id.clone();
        let shared = self.shared.clone();
        let addr = ConsumerActor::start_in_arbiter(&self.arbiter_for(&id).handle(), move |_| {
            ConsumerActor::new(c, shared)
        });
        self.shared.consumers.insert(id, addr);
    }

    fn start_merchant(&self, m: MerchantState) {
        let id = m.id.clone();
        let cap = self.shared.mailbox_capacity;
        let addr = MerchantActor::start_in_arbiter(&self.arbiter_for(&id).handle(), move |_| {
            MerchantActor::new(m, cap)
        });
        self.shared.merchants.insert(id, addr);
    }

    /// Admission control: every command holds a place while it runs, so the work queued in
    /// the engine (mailboxes, the journal's queue, bank calls) stays bounded end to end.
    fn admit(&self) -> Result<Admission<'_>, EngineError> {
        let before = self.shared.in_flight.fetch_add(1, Ordering::AcqRel);
        let admission = Admission(&self.shared.in_flight);
        if before >= self.shared.max_in_flight {
            return Err(EngineError::Overloaded(before));
        }
        Ok(admission)
    }

    /// Commands in progress right now.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Acquire)
    }

    /// Claims names for an account being opened; `None` if another open holds one of them.
    /// The claim is released when the returned guard is dropped, after the account exists.
    fn claim(&self, keys: &[String]) -> Option<Claim<'_>> {
        let mut claim = Claim {
            opening: &self.opening,
            keys: Vec::new(),
        };
        for k in keys {
            match self.opening.entry(k.clone()) {
                MapEntry::Occupied(_) => return None,
                MapEntry::Vacant(v) => {
                    v.insert(());
                    claim.keys.push(k.clone());
                }
            }
        }
        Some(claim)
    }

    pub fn has_consumer(&self, id: &str) -> bool {
        self.shared.consumers.contains_key(id)
    }
    pub fn has_merchant(&self, id: &str) -> bool {
        self.shared.merchants.contains_key(id)
    }
    /// Whether a bank account is already designated for a consumer.
    pub fn has_bank_account(&self, bank: &str) -> bool {
        self.shared.banks.contains_key(bank)
    }

    /// Opens a consumer: virtual account with its credit limit, wallet filled from the
    /// designated bank account.
    pub async fn open_consumer(
        &self,
        req: OpenConsumer,
        now: Secs,
    ) -> Result<CommandResult, EngineError> {
        let _admission = self.admit()?;
        let now = self.advance_clock(now);
        let keys = [
            format!("acct:{}", req.consumer),
            format!("bank:{}", req.bank),
        ];
        let claim = self.claim(&keys);
        if claim.is_none() || self.has_consumer(&req.consumer) || self.has_merchant(&req.consumer) {
            return Ok(Err(Refusal::conflict(format!(
                "account {:?} already exists",
                req.consumer
            ))));
        }
        if self.has_bank_account(&req.bank) {
            return Ok(Err(Refusal::conflict(format!(
                "bank account {:?} is already designated",
                req.bank
            ))));
        }
        let credit_limit = match Amount::parse_non_negative(&req.credit_limit) {
            Ok(a) => a,
            Err(e) => return Ok(Err(Refusal::amount(format!("credit_limit: {e}")))),
        };
        let wallet = match Amount::parse_non_negative(&req.wallet) {
            Ok(a) => a,
            Err(e) => return Ok(Err(Refusal::amount(format!("wallet: {e}")))),
        };
        if wallet > self.shared.rules.wallet_cap {
            return Ok(Err(Refusal::amount(format!(
                "wallet {wallet} is above the cap {}",
                self.shared.rules.wallet_cap
            ))));
        }
        if let Err(r) = check_id("consumer", &req.consumer).and(check_id("bank account", &req.bank))
        {
            return Ok(Err(r));
        }
        let mut bank_op = None;
        if wallet.is_positive() {
            let id = self.shared.new_bank_op_id();
            let op = BankOp {
                id: id.clone(),
                account: req.bank.clone(),
                amount: wallet,
            };
            match self.shared.bank.debit(op).await {
                Ok(BankAnswer::Done) => bank_op = Some(id),
                Ok(BankAnswer::Refused(reason)) => {
                    return Ok(Err(Refusal::amount(format!(
                        "the wallet cannot be filled from {}: {reason}",
                        req.bank
                    ))))
                }
                Err(BankError::UnknownAccount(b)) => {
                    return Ok(Err(Refusal::unknown(format!("no bank account {b:?}"))))
                }
                Err(e) => return Err(e.into()),
            }
        }
        let ev = consumer_opened_event(&req.consumer, credit_limit, &req.bank, wallet, bank_op);
        let entry = Entry::new(now, vec![ev]);
        self.shared.journal.append(&entry).await?;
        self.shared
            .bank
            .confirm(&entry.bank_ops().cloned().collect::<Vec<_>>());
        let mut c = ConsumerState::new(req.consumer.clone(), credit_limit, req.bank.clone());
        c.apply(&entry.events[0], now)
            .map_err(|e| EngineError::Internal(e.to_string()))?;
        self.index_consumer(&c);
        self.start_consumer(c);
        Ok(Ok(Outcome::Ok))
    }

    /// Opens a merchant account at the settlement center (balance 0).
    pub async fn open_merchant(
        &self,
        merchant: &str,
        bank: Option<&str>,
        now: Secs,
    ) -> Result<CommandResult, EngineError> {
        let _admission = self.admit()?;
        let now = self.advance_clock(now);
        let claim = self.claim(&[format!("acct:{merchant}")]);
        if claim.is_none() || self.has_merchant(merchant) || self.has_consumer(merchant) {
            return Ok(Err(Refusal::conflict(format!(
                "account {merchant:?} already exists"
            ))));
        }
        if let Err(r) = check_id("merchant", merchant) {
            return Ok(Err(r));
        }
        let ev = Event::new(EventKind::MerchantOpened {
            merchant: merchant.to_string(),
            bank: bank.map(str::to_string),
        });
        self.shared
            .journal
            .append(&Entry::new(now, vec![ev]))
            .await?;
        self.start_merchant(MerchantState {
            id: merchant.to_string(),
            bank: bank.map(str::to_string),
            balance: Amount::ZERO,
        });
        Ok(Ok(Outcome::Ok))
    }

    async fn ask_consumer(
        &self,
        consumer: &str,
        cmd: ConsumerCmd,
        now: Secs,
    ) -> Result<CommandResult, EngineError> {
        let addr = match self.shared.consumers.get(consumer) {
            Some(a) => a.clone(),
            None => return Ok(Err(Refusal::unknown(format!("no consumer {consumer:?}")))),
        };
        match addr.send(ConsumerMsg { cmd, now }).await?? {
            ConsumerReply::Done(r) => Ok(r),
            ConsumerReply::State(_) => Err(EngineError::Internal("unexpected reply".into())),
        }
    }

    /// Places an order: credit check and reservation, or direct settlement for small amounts.
    pub async fn place_order(
        &self,
        req: PlaceOrder,
        now: Secs,
    ) -> Result<CommandResult, EngineError> {
        let _admission = self.admit()?;
        let now = self.advance_clock(now);
        let amount = Amount::parse_positive(&req.amount);
        let release = parse_release(&req.release);
        let key_of = |amount: Amount, release: Release| OrderKey {
            consumer: req.consumer.clone(),
            merchant: req.merchant.clone(),
            amount,
            release,
        };
        let same_as = |k: &OrderKey| match (&amount, &release) {
            (Ok(a), Ok(r)) => *k == key_of(*a, r.clone()),
            _ => false,
        };
        let conflict = || {
            Refusal::conflict(format!(
                "order id {:?} is already used with other content",
                req.id
            ))
        };
        if let Some(k) = self.shared.orders.get(&req.id).map(|k| k.clone()) {
            if !same_as(&k) {
                return Ok(Err(conflict()));
            }
        } else {
            let amount = match &amount {
                Ok(a) => *a,
                Err(e) => return Ok(Err(Refusal::amount(e.to_string()))),
            };
            let release = match &release {
                Ok(r) => r.clone(),
                Err(r) => return Ok(Err(r.clone())),
            };
            if let Err(r) = check_id("order id", &req.id) {
                return Ok(Err(r));
            }
            if !self.has_consumer(&req.consumer) {
                return Ok(Err(Refusal::unknown(format!(
                    "no consumer {:?}",
                    req.consumer
                ))));
            }
            if !self.has_merchant(&req.merchant) {
                return Ok(Err(Refusal::unknown(format!(
                    "no merchant {:?}",
                    req.merchant
                ))));
            }
            // Claim the id; a concurrent claim with the same content goes to the same actor,
            // which answers the repeat with the first outcome.
            let key = key_of(amount, release);
            match self.shared.orders.entry(req.id.clone()) {
                MapEntry::Occupied(o) if *o.get() != key => return Ok(Err(conflict())),
                MapEntry::Occupied(_) => {}
                MapEntry::Vacant(v) => {
                    v.insert(key);
                }
            }
        }
        let (Ok(amount), Ok(release)) = (amount, release) else {
            return Err(EngineError::Internal("validated above".into()));
        };
        let cmd = ConsumerCmd::Place {
            id: req.id,
            merchant: req.merchant,
            amount,
            release,
        };
        self.ask_consumer(&req.consumer, cmd, now).await
    }

    fn owner_of_order(&self, order: &str) -> Result<String, Refusal> {
        self.shared
            .orders
            .get(order)
            .map(|k| k.consumer.clone())
            .ok_or_else(|| Refusal::unknown(format!("no order {order:?}")))
    }

    /// The consumer confirms receipt: satisfied settles, not satisfied disputes.
    pub async fn confirm_receipt(
        &self,
        order: &str,
        satisfied: bool,
        now: Secs,
    ) -> Result<CommandResult, EngineError> {
        let _admission = self.admit()?;
        let now = self.advance_clock(now);
        match self.owner_of_order(order) {
            Ok(c) => {
                self.ask_consumer(
                    &c,
                    ConsumerCmd::ConfirmReceipt {
                        order: order.into(),
                        satisfied,
                    },
                    now,
                )
                .await
            }
            Err(r) => Ok(Err(r)),
        }
    }

    /// The special code handed over at delivery.
    pub async fn enter_code(
        &self,
        order: &str,
        code: &str,
        now: Secs,
    ) -> Result<CommandResult, EngineError> {
        let _admission = self.admit()?;
        let now = self.advance_clock(now);
        match self.owner_of_order(order) {
            Ok(c) => {
                self.ask_consumer(
                    &c,
                    ConsumerCmd::EnterCode {
                        order: order.into(),
                        code: code.into(),
                    },
                    now,
                )
                .await
            }
            Err(r) => Ok(Err(r)),
        }
    }

    pub async fn cancel_order(&self, order: &str, now: Secs) -> Result<CommandResult, EngineError> {
        let _admission = self.admit()?;
        let now = self.advance_clock(now);
        match self.owner_of_order(order) {
            Ok(c) => {
                self.ask_consumer(
                    &c,
                    ConsumerCmd::Cancel {
                        order: order.into(),
                    },
                    now,
                )
                .await
            }
            Err(r) => Ok(Err(r)),
        }
    }

    /// Refunds part or all of a settled order: merchant → wallet, overflow to the bank.
    pub async fn refund(
        &self,
        req: RefundRequest,
        now: Secs,
    ) -> Result<CommandResult, EngineError> {
        let _admission = self.admit()?;
        let now = self.advance_clock(now);
        let amount = Amount::parse_positive(&req.amount);
        let conflict = || {
            Refusal::conflict(format!(
                "refund id {:?} is already used with other content",
                req.id
            ))
        };
        let key = amount.as_ref().ok().map(|a| RefundKey {
            order: req.order.clone(),
            amount: *a,
        });
        if let Some(k) = self.shared.refunds.get(&req.id).map(|k| k.clone()) {
            if Some(&k) != key.as_ref() {
                return Ok(Err(conflict()));
            }
        }
        let amount = match amount {
            Ok(a) => a,
            Err(e) => return Ok(Err(Refusal::amount(e.to_string()))),
        };
        if let Err(r) = check_id("refund id", &req.id) {
            return Ok(Err(r));
        }
        let consumer = match self.owner_of_order(&req.order) {
            Ok(c) => c,
            Err(r) => return Ok(Err(r)),
        };
        let key = RefundKey {
            order: req.order.clone(),
            amount,
        };
        let claimed = match self.shared.refunds.entry(req.id.clone()) {
            MapEntry::Occupied(o) if *o.get() != key => return Ok(Err(conflict())),
            MapEntry::Occupied(_) => false,
            MapEntry::Vacant(v) => {
                v.insert(key);
                true
            }
        };
        let cmd = ConsumerCmd::Refund {
            id: req.id.clone(),
            order: req.order,
            amount,
        };
        let result = self.ask_consumer(&consumer, cmd, now).await;
        if claimed && !matches!(result, Ok(Ok(_))) {
            // A refused refund leaves no trace: its id stays free.
            self.shared.refunds.remove(&req.id);
        }
        result
    }

    /// Runs the time-driven work due at `now` for every consumer, then records the clock.
    pub async fn tick(&self, now: Secs) -> Result<CommandResult, EngineError> {
        let now = self.advance_clock(now);
        let addrs: Vec<_> = self
            .shared
            .timed
            .iter()
            .filter_map(|e| self.shared.consumers.get(e.key()).map(|a| a.clone()))
            .collect();
        // `unconstrained`: with thousands of replies, tokio's cooperative budget would make
        // join_all re-poll every pending send on each wake-up (quadratic in the consumers).
        let replies =
            tokio::task::unconstrained(futures::future::join_all(addrs.iter().map(|a| {
                a.send(ConsumerMsg {
                    cmd: ConsumerCmd::Tick,
                    now,
                })
            })))
            .await;
        for r in replies {
            r??;
        }
        self.shared
            .journal
            .append(&Entry::new(now, vec![Event::new(EventKind::ClockAdvanced)]))
            .await?;
        Ok(Ok(Outcome::Ok))
    }

    /// A consumer's current state, if it exists.
    pub async fn consumer(&self, id: &str) -> Result<Option<ConsumerState>, EngineError> {
        let Some(addr) = self.shared.consumers.get(id).map(|a| a.clone()) else {
            return Ok(None);
        };
        match addr
            .send(ConsumerMsg {
                cmd: ConsumerCmd::Snapshot,
                now: self.clock(),
            })
            .await??
        {
            ConsumerReply::State(s) => Ok(Some(*s)),
            ConsumerReply::Done(_) => Err(EngineError::Internal("unexpected reply".into())),
        }
    }

    pub async fn merchant(&self, id: &str) -> Result<Option<MerchantState>, EngineError> {
        let Some(addr) = self.shared.merchants.get(id).map(|a| a.clone()) else {
            return Ok(None);
        };
        match addr.send(MerchantMsg::Snapshot).await? {
            MerchantReply::State(s) => Ok(Some(s)),
            MerchantReply::Done(_) => Err(EngineError::Internal("unexpected reply".into())),
        }
    }

    /// An order, if it exists.
    pub async fn order(&self, id: &str) -> Result<Option<Order>, EngineError> {
        let Ok(owner) = self.owner_of_order(id) else {
            return Ok(None);
        };
        Ok(self
            .consumer(&owner)
            .await?
            .and_then(|c| c.orders.get(id).cloned()))
    }

    /// The whole ledger as the actors hold it now.
    pub async fn ledger_state(&self) -> Result<LedgerState, EngineError> {
        let mut state = LedgerState::new(self.shared.rules.clone());
        state.clock = self.clock();
        let consumers: Vec<String> = self
            .shared
            .consumers
            .iter()
            .map(|e| e.key().clone())
            .collect();
        for id in consumers {
            if let Some(c) = self.consumer(&id).await? {
                for o in c.orders.keys() {
                    state.order_owner.insert(o.clone(), id.clone());
                }
                for r in c.refunds.keys() {
                    state.refund_owner.insert(r.clone(), id.clone());
                }
                state.bank_owner.insert(c.bank.clone(), id.clone());
                state.consumers.insert(id, c);
            }
        }
        let merchants: Vec<String> = self
            .shared
            .merchants
            .iter()
            .map(|e| e.key().clone())
            .collect();
        for id in merchants {
            if let Some(m) = self.merchant(&id).await? {
                state.merchants.insert(id, m);
            }
        }
        Ok(state)
    }

    /// Stops the actors, writes what is queued, snapshots and closes the store.
    pub async fn close(mut self) -> Result<(), EngineError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), EngineError> {
        for a in &self.arbiters {
            a.stop();
        }
        for a in self.arbiters.drain(..) {
            let _ = a.join();
        }
        self.shared.consumers.clear();
        self.shared.merchants.clear();
        if let Some(j) = self.journal.take() {
            j.close()?;
        }
        Ok(())
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn release_forms_are_exact() {
        assert_eq!(
            parse_release(&json!({"on":"receipt"})),
            Ok(Release::Receipt)
        );
        assert_eq!(
            parse_release(&json!({"on":"code","code":"12"})),
            Ok(Release::Code("12".into()))
        );
        assert_eq!(
            parse_release(&json!({"on":"time","after_secs":5})),
            Ok(Release::Time { after_secs: 5 })
        );
        for bad in [
            json!({"on":"someday"}),
            json!({"on":"code"}),
            json!({"on":"code","code":""}),
            json!({"on":"time","after_secs":0}),
            json!({"on":"time","after_secs":-1}),
            json!({"on":"time","after_secs":1.5}),
            json!({"on":"time","after_secs":"5"}),
            json!({"on":"receipt","code":"1"}),
            json!("receipt"),
            json!(null),
        ] {
            assert_eq!(
                parse_release(&bad).map_err(|r| r.kind),
                Err(crate::model::RefusalKind::Invalid),
                "{bad}"
            );
        }
    }
}
