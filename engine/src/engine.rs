//! The engine: opens a data directory, recovers, reconciles with the bank, starts the actors
//! and routes commands to them.
//!
//! Commands come in as raw requests (strings from a scenario file, a CLI or an HTTP body) and
//! are checked here in the precedence FORMAT.md fixes — conflict, amount, invalid, unknown —
//! before they reach the actor that owns the account, which decides the rest.
//!
//! Consumer actors are activated on their first message and passivated when idle: the router
//! (`Shared::route`) keeps a slot per resident consumer, counting the messages handed to its
//! actor and not yet handled. A slot is removed only while that count is zero, under the map's
//! lock, so a message either reaches the live actor or finds no slot and activates a fresh one
//! from the account-state view. Messages arriving while an actor is being activated wait on
//! the slot until it is up. No message can reach an actor that is being retired.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use actix::prelude::*;
use dashmap::mapref::entry::Entry as MapEntry;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use crate::actors::{ConsumerActor, ConsumerCmd, ConsumerMsg, ConsumerReply};
use crate::bank::{BankAnswer, BankError, BankOp, BankPort};
use crate::cards::{
    AuthCenter, AuthChange, AuthOutcome, CardError, CardKey, ChallengeIssued, EncryptedPin,
    IssuerKey, NewReader, SwipeRefusal,
};
use crate::journal::{Journal, JournalConfig, JournalError, JournalHandle};
use crate::ledger::{
    next_time_work, sealed_consumer_opened_event, ConsumerState, Entry, Event, EventKind,
    LedgerState, MerchantState, Order,
};
use crate::model::{CommandResult, Outcome, Refusal, Release, RulesConfig, Secs};
use crate::money::{Amount, AmountError};
use crate::seal::{self, DataKey};
use crate::view::{self, StateView};
use futures::StreamExt;

/// How many consumers a tick visits at once.
const TICK_FAN_OUT: usize = 64;

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

impl From<crate::view::ViewError> for EngineError {
    fn from(e: crate::view::ViewError) -> Self {
        EngineError::Journal(JournalError::View(e))
    }
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
    /// A consumer actor idle this long is passivated: it leaves memory, its state stays in
    /// the account-state view, and its next message activates it again.
    pub passivate_after: Duration,
    /// The card issuer's master key; every card key is derived from it. Never stored. Without
    /// it, card operations are refused (`EngineError::Config`).
    pub issuer_key: Option<IssuerKey>,
    /// The node's data key (I10): with it, a consumer's designated bank account is stored only
    /// as its reference and sealed (`seal`). Never stored. Without it, accounts are stored as
    /// given.
    pub data_key: Option<DataKey>,
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
            passivate_after: Duration::from_secs(2),
            issuer_key: None,
            data_key: None,
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

impl OrderKey {
    fn of(consumer: &str, o: &Order) -> OrderKey {
        OrderKey {
            consumer: consumer.to_string(),
            merchant: o.merchant.clone(),
            amount: o.amount,
            release: o.release.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct RefundKey {
    order: String,
    amount: Amount,
}

/// Milliseconds since the first call: a cheap clock for idle times.
fn monotonic_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// The router's slot for one resident consumer.
struct Slot {
    /// The actor, once activated; messages arriving during activation wait here.
    addr: tokio::sync::OnceCell<Addr<ConsumerActor>>,
    /// Messages handed to the actor and not yet handled (leases alive).
    outstanding: AtomicUsize,
    last_used_ms: AtomicU64,
}

/// A message's claim on its consumer's slot: while any lease is alive the actor is not
/// passivated. It travels inside the message and is dropped when the actor has handled it (or
/// when the message is dropped unhandled), not when the caller stops waiting.
pub struct Lease(Arc<Slot>);

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.last_used_ms.store(monotonic_ms(), Ordering::Release);
        self.0.outstanding.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counters of the actors' residency.
#[derive(Debug, Default)]
pub struct ResidencyStats {
    pub activations: AtomicU64,
    pub passivations: AtomicU64,
}

/// What the actors share: the rules, the journal and its view, the bank and the router.
pub struct Shared {
    pub rules: RulesConfig,
    pub journal: JournalHandle,
    pub view: StateView,
    pub bank: Arc<dyn BankPort>,
    pub mailbox_capacity: usize,
    /// Resident consumers (activated and not yet passivated).
    residents: DashMap<String, Arc<Slot>>,
    /// Merchants' durable balances, published by the journal writer.
    merchants: Arc<crate::view::MerchantBook>,
    /// Order ids being placed right now: claimed before they are in the view, so that two
    /// concurrent places of one id with different content cannot both go ahead.
    placing: DashMap<String, OrderKey>,
    /// Refund ids being refunded right now.
    refunding: DashMap<String, RefundKey>,
    /// Open orders (pending, awaiting funds, disputed) → their content. Closed orders are
    /// looked up in the view; open ones live inside their consumer's record, so this map is
    /// what finds their consumer. Rebuilt at start-up from the consumer records.
    open_orders: DashMap<String, OrderKey>,
    /// Consumers that will have time-driven work, and from when on (`next_time_work`): a
    /// tick visits only those due, so its work follows what is due, not what is open.
    timed: DashMap<String, Secs>,
    arbiters: Vec<ArbiterHandle>,
    bank_op_prefix: String,
    bank_op_counter: AtomicU64,
    in_flight: AtomicUsize,
    max_in_flight: usize,
    residency: ResidencyStats,
    /// The data key, if bank accounts are stored sealed.
    data_key: Option<DataKey>,
    /// Bank reference → the account it stands for, unsealed on first use. Memory only.
    bank_accounts: DashMap<String, String>,
}

impl Shared {
    /// The reference the node stores for bank account `account`: the account itself without
    /// a data key.
    pub fn bank_ref(&self, account: &str) -> String {
        match &self.data_key {
            None => account.to_string(),
            Some(key) => seal::bank_ref(key, account),
        }
    }

    /// The real bank account behind the stored reference `bank_ref` (the reference itself
    /// without a data key): from the cache, or unsealed from its owner's consumer record.
    pub fn real_bank_account(&self, bank_ref: &str) -> Result<String, EngineError> {
        let Some(key) = &self.data_key else {
            return Ok(bank_ref.to_string());
        };
        if let Some(a) = self.bank_accounts.get(bank_ref) {
            return Ok(a.clone());
        }
        let missing = || EngineError::Internal(format!("no sealed bank account for {bank_ref}"));
        let owner = self.view.bank_owner(bank_ref)?.ok_or_else(missing)?;
        let sealed = self
            .view
            .consumer_record(&owner)?
            .and_then(|r| r.bank_sealed)
            .ok_or_else(missing)?;
        let account =
            seal::unseal(key, bank_ref, &sealed).map_err(|e| EngineError::Config(e.to_string()))?;
        self.bank_accounts
            .insert(bank_ref.to_string(), account.clone());
        Ok(account)
    }

    /// A bank operation id never used before, by this run or any earlier one.
    pub fn new_bank_op_id(&self) -> String {
        let n = self.bank_op_counter.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.bank_op_prefix)
    }

    /// Keeps the open-order directory up to date after an order changed durably.
    pub fn note_order(&self, consumer: &str, order: &Order) {
        if order.state.is_open() {
            if !self.open_orders.contains_key(&order.id) {
                self.open_orders
                    .insert(order.id.clone(), OrderKey::of(consumer, order));
            }
        } else {
            self.open_orders.remove(&order.id);
        }
    }

    /// Keeps the consumers a tick must visit up to date: `next` is when this one will first
    /// have time-driven work, if ever.
    pub fn note_time_work(&self, consumer: &str, next: Option<Secs>) {
        match next {
            Some(at) => {
                if self.timed.get(consumer).map(|e| *e) != Some(at) {
                    self.timed.insert(consumer.to_string(), at);
                }
            }
            None => {
                if self.timed.contains_key(consumer) {
                    self.timed.remove(consumer);
                }
            }
        }
    }

    fn arbiter_for(&self, id: &str) -> &ArbiterHandle {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        id.hash(&mut h);
        &self.arbiters[(h.finish() % self.arbiters.len() as u64) as usize]
    }

    /// The actor of a consumer, activated from the view if it is not resident, and a lease
    /// that keeps it resident until the message carrying the lease is handled. `None` if
    /// there is no such consumer.
    async fn route(
        self: &Arc<Self>,
        consumer: &str,
    ) -> Result<Option<(Addr<ConsumerActor>, Lease)>, EngineError> {
        let slot = match self.residents.get(consumer) {
            Some(slot) => {
                // Under the map's read lock: the sweeper removes only under the write lock.
                slot.outstanding.fetch_add(1, Ordering::AcqRel);
                slot.clone()
            }
            None => match self.residents.entry(consumer.to_string()) {
                MapEntry::Occupied(o) => {
                    o.get().outstanding.fetch_add(1, Ordering::AcqRel);
                    o.get().clone()
                }
                MapEntry::Vacant(v) => {
                    let slot = Arc::new(Slot {
                        addr: tokio::sync::OnceCell::new(),
                        outstanding: AtomicUsize::new(1),
                        last_used_ms: AtomicU64::new(monotonic_ms()),
                    });
                    v.insert(slot.clone());
                    slot
                }
            },
        };
        let lease = Lease(slot.clone());
        let activated = slot
            .addr
            .get_or_try_init(|| async {
                match self.view.consumer_record(consumer) {
                    Err(e) => Err(Some(e)),
                    Ok(None) => Err(None),
                    Ok(Some(record)) => {
                        let state = record.into_state();
                        let shared = self.clone();
                        let addr = ConsumerActor::start_in_arbiter(
                            self.arbiter_for(consumer),
                            move |_| ConsumerActor::new(state, shared),
                        );
                        self.residency.activations.fetch_add(1, Ordering::Relaxed);
                        Ok(addr)
                    }
                }
            })
            .await;
        match activated {
            Ok(addr) => Ok(Some((addr.clone(), lease))),
            Err(e) => {
                drop(lease);
                // Free the empty slot unless another message is waiting on it.
                self.residents.remove_if(consumer, |_, s| {
                    s.outstanding.load(Ordering::Acquire) == 0 && !s.addr.initialized()
                });
                match e {
                    None => Ok(None),
                    Some(e) => Err(e.into()),
                }
            }
        }
    }

    /// Passivates every consumer actor idle for `idle` with nothing outstanding: its slot is
    /// removed, the actor stops when its last address is dropped. Returns how many.
    fn passivate_idle(&self, idle: Duration) -> usize {
        let now = monotonic_ms();
        let idle = idle.as_millis() as u64;
        let mut passivated = 0;
        self.residents.retain(|_, s| {
            let retire = s.outstanding.load(Ordering::Acquire) == 0
                && now.saturating_sub(s.last_used_ms.load(Ordering::Acquire)) >= idle;
            passivated += retire as usize;
            !retire
        });
        self.residency
            .passivations
            .fetch_add(passivated as u64, Ordering::Relaxed);
        passivated
    }

    /// Gives back a refund's hold on the merchant's balance: the refund did not happen.
    pub fn credit_merchant_back(&self, merchant: &str, amount: Amount) {
        self.merchants.release(merchant, amount);
    }

    /// Holds `amount` of the merchant's durable balance for a refund; the journal writer
    /// takes the hold back when it writes the refund.
    pub fn debit_merchant_for_refund(
        &self,
        merchant: &str,
        amount: Amount,
    ) -> Result<Result<(), Refusal>, EngineError> {
        if self.merchants.hold(merchant, amount)? {
            return Ok(Ok(()));
        }
        let balance = self
            .merchants
            .get(merchant)
            .map(|m| m.balance)
            .unwrap_or(Amount::ZERO);
        Ok(Err(Refusal::funds(format!(
            "merchant {merchant} holds {balance} (refunds in progress included), less than the refund of {amount}"
        ))))
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

/// A place-order command with typed fields (for callers that hold an `Amount` and a
/// `Release` already: the simulator, an API layer after its own parsing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaceCmd {
    pub id: String,
    pub consumer: String,
    pub merchant: String,
    pub amount: Amount,
    pub release: Release,
}

/// A refund command with a typed amount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundCmd {
    pub id: String,
    pub order: String,
    pub amount: Amount,
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
    /// The passivation sweeper's thread and the sender whose drop stops it.
    sweeper: Option<(crossbeam_channel::Sender<()>, std::thread::JoinHandle<()>)>,
    shared: Arc<Shared>,
    arbiters: Vec<Arbiter>,
    journal: Option<Journal>,
    clock: AtomicU64,
    /// Names being opened right now (`acct:NAME`, `bank:NAME`), so that two concurrent opens
    /// of one name cannot both succeed while opens of different names run in parallel.
    opening: DashMap<String, ()>,
    data_dir: PathBuf,
    recovery: RecoveryInfo,
    /// The authentication center, when an issuer key is configured. Its durable changes are
    /// journaled, in the order they were made, before the call that made them answers.
    auth: Option<Arc<std::sync::Mutex<AuthCenter>>>,
}

/// A card to issue (F1): its number, its holder (an existing consumer), the PIN (kept only as
/// an Argon2id hash) and the holder's registered delivery address.
#[derive(Clone, Serialize, Deserialize)]
pub struct IssueCard {
    pub number: String,
    pub holder: String,
    pub pin: String,
    pub registered_address: String,
}

impl std::fmt::Debug for IssueCard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssueCard")
            .field("number", &crate::cards::mask_card_number(&self.number))
            .field("holder", &self.holder)
            .finish_non_exhaustive()
    }
}

/// What opening the data directory found.
#[derive(Debug, Clone, Default)]
pub struct RecoveryInfo {
    /// The last record of the journal, where the account-state view is.
    pub last_seq: u64,
    pub entries: u64,
    pub consumers: usize,
    pub merchants: usize,
    /// Consumers that will have time-driven work (a tick visits them once it is due).
    pub timed_consumers: usize,
    pub open_orders: usize,
    pub bank_ops_confirmed: usize,
    pub bank_ops_reversed: usize,
    /// Records of the log's tail replayed over the view's checkpoint.
    pub replayed: u64,
    /// Bytes of a torn tail (a record never acknowledged) cut off the log.
    pub torn_bytes: u64,
    /// Opening the store (checkpoint + tail), in milliseconds.
    pub store_ms: f64,
    /// The pass over the consumer records (open orders, reserved credit), in milliseconds.
    pub scan_ms: f64,
}

/// Records an authorisation durably with its order id (the address decision included), before
/// the caller hears of it.
async fn record_authorisation(
    journal: &JournalHandle,
    now: Secs,
    outcome: &AuthOutcome,
) -> Result<(), EngineError> {
    if let AuthOutcome::Authorised(a) = outcome {
        let entry = Entry::new(
            now,
            vec![Event::new(EventKind::PaymentAuthorised(a.clone()))],
        );
        journal
            .append(&entry, vec![view::authorisation_write(a)])
            .await?;
    }
    Ok(())
}

/// Security log of an authentication's outcome (the card appears only masked: I10).
fn log_auth_outcome(account: Option<&str>, outcome: &AuthOutcome) {
    let account = account.unwrap_or("?");
    match outcome {
        AuthOutcome::Authorised(a) => tracing::info!(
            account,
            card = %format!("************{}", a.card_last4),
            order = a.order_id,
            temporary_address_change = a.temporary_address_change,
            "payment authorised"
        ),
        AuthOutcome::ConfirmAddressChange => {
            tracing::info!(account, "delivery address differs: asking the consumer")
        }
        AuthOutcome::CreditRefused { .. } | AuthOutcome::AddressChangeDeclined => {
            tracing::info!(account, outcome = ?outcome, "payment not authorised")
        }
        other => tracing::warn!(account, outcome = ?other, "authentication refused"),
    }
}

/// An id claimed by a command in progress; released on drop.
struct IdClaim<'a, K> {
    map: &'a DashMap<String, K>,
    id: Option<String>,
}

impl<K> Drop for IdClaim<'_, K> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.map.remove(&id);
        }
    }
}

/// Claims `id` for `key` in `map`: `Err(())` if it is claimed with other content; a guard
/// that releases the claim if this call made it.
fn claim_id<'a, K: PartialEq + Clone>(
    map: &'a DashMap<String, K>,
    id: &str,
    key: &K,
) -> Result<IdClaim<'a, K>, ()> {
    match map.entry(id.to_string()) {
        MapEntry::Occupied(o) if o.get() != key => Err(()),
        MapEntry::Occupied(_) => Ok(IdClaim { map, id: None }),
        MapEntry::Vacant(v) => {
            v.insert(key.clone());
            Ok(IdClaim {
                map,
                id: Some(id.to_string()),
            })
        }
    }
}

impl Engine {
    /// Opens (or creates) a data directory: opens the journal at its head (nothing is
    /// replayed; the account-state view is current), reconciles with the bank, and starts the
    /// merchant actors. Consumer actors start on their first message. Must be called inside
    /// an actix `System`.
    pub async fn open(
        dir: &Path,
        cfg: EngineConfig,
        bank: Arc<dyn BankPort>,
    ) -> Result<Engine, EngineError> {
        cfg.rules.validate().map_err(EngineError::Config)?;
        std::fs::create_dir_all(dir)?;
        let started = Instant::now();
        let (journal, recovered) = Journal::open(dir, cfg.journal.clone())?;
        let store_ms = started.elapsed().as_secs_f64() * 1e3;
        let handle = journal.handle();
        let view = handle.view();
        let meta = recovered.meta;
        if meta.entries > 0 && cfg.rules.wallet_cap < meta.config.wallet_cap {
            // Only a lowered cap can be below an existing wallet: look, once.
            for rec in view.consumer_records() {
                let c = rec?;
                if c.wallet > cfg.rules.wallet_cap {
                    return Err(EngineError::Config(format!(
                        "wallet_cap {} is below the wallet of {} ({}); lowering the cap below existing wallets is refused",
                        cfg.rules.wallet_cap, c.id, c.wallet
                    )));
                }
            }
        }

        let mut info = RecoveryInfo {
            last_seq: recovered.last_seq,
            replayed: recovered.replayed,
            torn_bytes: recovered.torn_bytes,
            entries: meta.entries,
            store_ms,
            ..Default::default()
        };

        let arbiters: Vec<Arbiter> = (0..cfg.arbiters.max(1)).map(|_| Arbiter::new()).collect();
        let merchant_book = handle.merchants().clone();
        let shared = Arc::new(Shared {
            rules: cfg.rules.clone(),
            journal: handle,
            view: view.clone(),
            bank,
            mailbox_capacity: cfg.mailbox_capacity.max(1),
            residents: DashMap::new(),
            merchants: merchant_book,
            placing: DashMap::new(),
            refunding: DashMap::new(),
            open_orders: DashMap::new(),
            timed: DashMap::new(),
            arbiters: arbiters.iter().map(|a| a.handle()).collect(),
            bank_op_prefix: format!("{:016x}", rand::random::<u64>()),
            bank_op_counter: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: cfg.max_in_flight.max(1),
            residency: ResidencyStats::default(),
            data_key: cfg.data_key.clone(),
            bank_accounts: DashMap::new(),
        });
        // The only start-up work that grows with the accounts: one pass over the consumer
        // records for the open orders and the consumers with reserved credit.
        let scan = Instant::now();
        // What the ledger moved to or from each bank account: its clearing balance.
        let mut moved: std::collections::HashMap<String, Amount> = Default::default();
        for rec in view.consumer_records() {
            let c = rec?;
            info.consumers += 1;
            if !c.bank_clearing.is_zero() {
                moved.insert(c.bank.clone(), c.bank_clearing);
            }
            // A store is written with a data key from its start or never: a mix would let one
            // bank account be designated twice (once by name, once by reference).
            if c.bank_sealed.is_some() != cfg.data_key.is_some() {
                return Err(EngineError::Config(format!(
                    "consumer {} was stored {} a data key, and the node is opened {} one; set ONECARD_DATA_KEY as when the store was created",
                    c.id,
                    if c.bank_sealed.is_some() { "with" } else { "without" },
                    if cfg.data_key.is_some() { "with" } else { "without" },
                )));
            }
            if let Some(at) = next_time_work(c.open_orders.iter(), &cfg.rules) {
                shared.timed.insert(c.id.clone(), at);
            }
            for o in &c.open_orders {
                shared
                    .open_orders
                    .insert(o.id.clone(), OrderKey::of(&c.id, o));
            }
        }
        let names: crate::bank::AccountNames = match cfg.data_key.clone() {
            None => Arc::new(|account: &str| account.to_string()),
            Some(key) => Arc::new(move |account: &str| seal::bank_ref(&key, account)),
        };
        let durable_with_log = shared.bank.attach(&shared.journal, names, &moved)?;
        drop(moved);
        shared.journal.index_bank_ops(!durable_with_log);
        // Reconcile: bank operations the journal does not hold belong to commands that were
        // never acknowledged, and are undone.
        for op in shared.bank.unconfirmed()? {
            if shared.journal.has_bank_op(&op.id)? {
                shared.bank.confirm(std::slice::from_ref(&op.id));
                info.bank_ops_confirmed += 1;
            } else {
                shared.bank.reverse(&op.id)?;
                info.bank_ops_reversed += 1;
            }
        }
        info.timed_consumers = shared.timed.len();
        info.open_orders = shared.open_orders.len();
        info.scan_ms = scan.elapsed().as_secs_f64() * 1e3;
        info.merchants = shared.merchants.len();
        let auth = match &cfg.issuer_key {
            None => None,
            Some(key) => {
                let state = view.auth_state(cfg.rules.auth.clone())?;
                let center = AuthCenter::from_state(key.clone(), state).map_err(|e| {
                    EngineError::Config(format!("the stored cards and readers: {e}"))
                })?;
                Some(Arc::new(std::sync::Mutex::new(center)))
            }
        };
        let mut engine = Engine {
            auth,
            sweeper: None,
            shared,
            arbiters,
            journal: Some(journal),
            clock: AtomicU64::new(meta.clock),
            opening: DashMap::new(),
            data_dir: dir.to_path_buf(),
            recovery: info,
        };
        if meta.entries == 0 || meta.config != cfg.rules {
            let entry = Entry::new(
                meta.clock,
                vec![Event::new(EventKind::Configured(cfg.rules.clone()))],
            );
            engine.shared.journal.append(&entry, vec![]).await?;
        }
        engine.start_passivation(cfg.passivate_after)?;
        Ok(engine)
    }

    /// Every `passivate_after / 2` (at least every 10 ms, at most every second), passivates
    /// the consumer actors idle for `passivate_after`, on a thread of its own.
    fn start_passivation(&mut self, passivate_after: Duration) -> Result<(), EngineError> {
        let period = (passivate_after / 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let shared = Arc::downgrade(&self.shared);
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        // Its own thread, not an arbiter: a sweep over many resident consumers must not hold
        // up the actors of an arbiter. Ends when `stop` is dropped (at close).
        let sweeper = std::thread::Builder::new()
            .name("passivation".into())
            .spawn(move || {
                while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(period)
                {
                    match shared.upgrade() {
                        Some(s) => {
                            s.passivate_idle(passivate_after);
                        }
                        None => return,
                    }
                }
            })?;
        self.sweeper = Some((stop, sweeper));
        Ok(())
    }

    /// Consumer actors in memory now.
    pub fn resident_consumers(&self) -> usize {
        self.shared.residents.len()
    }

    /// How many consumer actors were activated and passivated since the engine opened.
    pub fn residency(&self) -> &ResidencyStats {
        &self.shared.residency
    }

    /// Passivates now every consumer actor idle for at least `idle` (tests, operators).
    pub fn passivate_idle(&self, idle: Duration) -> usize {
        self.shared.passivate_idle(idle)
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

    pub fn has_consumer(&self, id: &str) -> Result<bool, EngineError> {
        if self
            .shared
            .residents
            .get(id)
            .is_some_and(|s| s.addr.initialized())
        {
            return Ok(true);
        }
        Ok(self.shared.view.has_consumer(id)?)
    }
    pub fn has_merchant(&self, id: &str) -> bool {
        self.shared.merchants.contains(id)
    }
    /// Whether a bank account is already designated for a consumer.
    pub fn has_bank_account(&self, bank: &str) -> Result<bool, EngineError> {
        let bank_ref = self.shared.bank_ref(bank);
        Ok(self.shared.view.bank_owner(&bank_ref)?.is_some())
    }

    /// The real bank account designated for `consumer` (for operators; unsealed with the
    /// data key). `None` if there is no such consumer.
    pub fn bank_account_of(&self, consumer: &str) -> Result<Option<String>, EngineError> {
        match self.shared.view.consumer_record(consumer)? {
            None => Ok(None),
            Some(r) => self.shared.real_bank_account(&r.bank).map(Some),
        }
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
        // With a data key the node knows the account only by its reference (I10).
        let bank_ref = self.shared.bank_ref(&req.bank);
        let keys = [format!("acct:{}", req.consumer), format!("bank:{bank_ref}")];
        let claim = self.claim(&keys);
        if claim.is_none() || self.has_consumer(&req.consumer)? || self.has_merchant(&req.consumer)
        {
            return Ok(Err(Refusal::conflict(format!(
                "account {:?} already exists",
                req.consumer
            ))));
        }
        if self.has_bank_account(&req.bank)? {
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
        let bank_sealed = self
            .shared
            .data_key
            .as_ref()
            .map(|key| seal::seal(key, &bank_ref, &req.bank, &mut rand::thread_rng()));
        let ev = sealed_consumer_opened_event(
            &req.consumer,
            credit_limit,
            &bank_ref,
            wallet,
            bank_op,
            bank_sealed,
        );
        let mut c = ConsumerState::new(req.consumer.clone(), credit_limit, bank_ref.clone());
        c.apply(&ev, now)
            .map_err(|e| EngineError::Internal(e.to_string()))?;
        let entry = Entry::new(now, vec![ev]);
        self.shared
            .journal
            .append(&entry, view::opened_consumer_writes(&c))
            .await?;
        self.shared
            .bank
            .confirm(&entry.bank_ops().cloned().collect::<Vec<_>>());
        if self.shared.data_key.is_some() {
            self.shared.bank_accounts.insert(bank_ref, req.bank);
        }
        // No actor yet: the consumer's first command activates one from the view.
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
        if claim.is_none() || self.has_merchant(merchant) || self.has_consumer(merchant)? {
            return Ok(Err(Refusal::conflict(format!(
                "account {merchant:?} already exists"
            ))));
        }
        if let Err(r) = check_id("merchant", merchant) {
            return Ok(Err(r));
        }
        // With a data key the node keeps only the account's reference and its sealed form.
        let bank_ref = bank.map(|b| self.shared.bank_ref(b));
        let bank_sealed = match (&self.shared.data_key, bank, &bank_ref) {
            (Some(key), Some(b), Some(r)) => Some(seal::seal(key, r, b, &mut rand::thread_rng())),
            _ => None,
        };
        let ev = Event::new(EventKind::MerchantOpened {
            merchant: merchant.to_string(),
            bank: bank_ref,
            bank_sealed,
        });
        self.shared
            .journal
            .append(&Entry::new(now, vec![ev]), vec![])
            .await?;
        // The journal writer has put the merchant in the book before answering.
        Ok(Ok(Outcome::Ok))
    }

    async fn ask_consumer(
        &self,
        consumer: &str,
        cmd: ConsumerCmd,
        now: Secs,
    ) -> Result<CommandResult, EngineError> {
        let Some((addr, lease)) = self.shared.route(consumer).await? else {
            return Ok(Err(Refusal::unknown(format!("no consumer {consumer:?}"))));
        };
        let ConsumerReply::Done(r) = addr.send(ConsumerMsg { cmd, now, lease }).await??;
        Ok(r)
    }

    /// Places an order: credit check and reservation, or direct settlement for small amounts.
    /// The request as it arrives from outside: amount and release as text and JSON.
    pub async fn place_order(
        &self,
        req: PlaceOrder,
        now: Secs,
    ) -> Result<CommandResult, EngineError> {
        let amount = Amount::parse_positive(&req.amount);
        let release = parse_release(&req.release);
        let cmd = PlaceCmd {
            id: req.id,
            consumer: req.consumer,
            merchant: req.merchant,
            amount: Amount::ZERO,
            release: Release::Receipt,
        };
        self.place_parsed(cmd, amount, release, now).await
    }

    /// [`Engine::place_order`] with its fields already typed.
    pub async fn place(&self, cmd: PlaceCmd, now: Secs) -> Result<CommandResult, EngineError> {
        let amount = if cmd.amount.is_positive() {
            Ok(cmd.amount)
        } else {
            Err(AmountError::NotPositive(cmd.amount))
        };
        let release = Ok(cmd.release.clone());
        self.place_parsed(cmd, amount, release, now).await
    }

    /// Places an order whose amount and release were parsed (or failed to parse): the checks
    /// in FORMAT.md's precedence, then the consumer's actor.
    async fn place_parsed(
        &self,
        req: PlaceCmd,
        amount: Result<Amount, AmountError>,
        release: Result<Release, Refusal>,
        now: Secs,
    ) -> Result<CommandResult, EngineError> {
        let _admission = self.admit()?;
        let now = self.advance_clock(now);
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
        let mut _claim = None;
        if let Some(k) = self.order_key(&req.id)? {
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
            // An unknown consumer is found by the routing below, which reads the consumer
            // once (and activates it), instead of a read here and another there.
            if !self.has_merchant(&req.merchant) {
                return Ok(Err(Refusal::unknown(format!(
                    "no merchant {:?}",
                    req.merchant
                ))));
            }
            // Claim the id until the order is in the view; a concurrent claim with the same
            // content goes to the same actor, which answers the repeat with the first outcome.
            // (One that finished in between is in the view, and the actor finds it there.)
            let key = key_of(amount, release);
            match claim_id(&self.shared.placing, &req.id, &key) {
                Ok(c) => _claim = Some(c),
                Err(()) => return Ok(Err(conflict())),
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
            // Claimed above: no order has this id, so the actor need not look for one.
            fresh: _claim.is_some(),
        };
        self.ask_consumer(&req.consumer, cmd, now).await
    }

    /// The content an order id was first used with: being placed now, open, or closed in
    /// the view.
    fn order_key(&self, order: &str) -> Result<Option<OrderKey>, EngineError> {
        if let Some(k) = self.shared.placing.get(order) {
            return Ok(Some(k.clone()));
        }
        if let Some(k) = self.shared.open_orders.get(order) {
            return Ok(Some(k.clone()));
        }
        Ok(self
            .shared
            .view
            .closed_order(order)?
            .map(|s| OrderKey::of(&s.consumer, &s.order)))
    }

    fn owner_of_order(&self, order: &str) -> Result<Result<String, Refusal>, EngineError> {
        Ok(self
            .order_key(order)?
            .map(|k| k.consumer)
            .ok_or_else(|| Refusal::unknown(format!("no order {order:?}"))))
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
        match self.owner_of_order(order)? {
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
        match self.owner_of_order(order)? {
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
        match self.owner_of_order(order)? {
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
        let amount = Amount::parse_positive(&req.amount);
        let cmd = RefundCmd {
            id: req.id,
            order: req.order,
            amount: Amount::ZERO,
        };
        self.refund_parsed(cmd, amount, now).await
    }

    /// [`Engine::refund`] with its amount already typed.
    pub async fn refund_typed(
        &self,
        cmd: RefundCmd,
        now: Secs,
    ) -> Result<CommandResult, EngineError> {
        let amount = if cmd.amount.is_positive() {
            Ok(cmd.amount)
        } else {
            Err(AmountError::NotPositive(cmd.amount))
        };
        self.refund_parsed(cmd, amount, now).await
    }

    async fn refund_parsed(
        &self,
        req: RefundCmd,
        amount: Result<Amount, AmountError>,
        now: Secs,
    ) -> Result<CommandResult, EngineError> {
        let _admission = self.admit()?;
        let now = self.advance_clock(now);
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
        let recorded = match self.shared.refunding.get(&req.id) {
            Some(k) => Some(k.clone()),
            None => self.shared.view.refund(&req.id)?.map(|s| RefundKey {
                order: s.refund.order,
                amount: s.refund.amount,
            }),
        };
        if let Some(k) = recorded {
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
        let consumer = match self.owner_of_order(&req.order)? {
            Ok(c) => c,
            Err(r) => return Ok(Err(r)),
        };
        let key = RefundKey {
            order: req.order.clone(),
            amount,
        };
        // Claimed until it is in the view. A refused refund leaves no trace: its id stays free.
        let Ok(_claim) = claim_id(&self.shared.refunding, &req.id, &key) else {
            return Ok(Err(conflict()));
        };
        let cmd = ConsumerCmd::Refund {
            id: req.id.clone(),
            order: req.order,
            amount,
        };
        self.ask_consumer(&consumer, cmd, now).await
    }

    fn auth_center(&self) -> Result<Arc<std::sync::Mutex<AuthCenter>>, EngineError> {
        self.auth.clone().ok_or_else(|| {
            EngineError::Config(
                "no card issuer key is configured (ONECARD_ISSUER_KEY): cards are disabled".into(),
            )
        })
    }

    /// Runs `op` on the authentication center on a blocking thread (PIN hashing and checks
    /// take Argon2id's time), queues its durable changes to the journal while still holding
    /// the center (so that changes reach the journal in the order they were made), then waits
    /// until they are on disk before returning the result.
    async fn with_auth<T: Send + 'static>(
        &self,
        now: Secs,
        op: impl FnOnce(&mut AuthCenter) -> T + Send + 'static,
    ) -> Result<T, EngineError> {
        let center = self.auth_center()?;
        let journal = self.shared.journal.clone();
        let (result, durable) = tokio::task::spawn_blocking(move || {
            let mut c = center
                .lock()
                .map_err(|_| EngineError::Internal("the authentication center panicked".into()))?;
            let result = op(&mut c);
            let changes: Vec<AuthChange> = c.take_changes();
            let durable = (!changes.is_empty()).then(|| {
                let writes = view::auth_writes(&changes);
                let events = changes
                    .into_iter()
                    .map(|ch| Event::new(EventKind::Auth(ch)))
                    .collect();
                journal.append(&Entry::new(now, events), writes)
            });
            Ok::<_, EngineError>((result, durable))
        })
        .await
        .map_err(|e| EngineError::Internal(format!("authentication task: {e}")))??;
        if let Some(d) = durable {
            d.await?;
        }
        Ok(result)
    }

    /// Issues a card to an existing consumer (F1). Returns the card's key, derived from the
    /// issuer master key, for personalising the card; the node keeps only the PIN's hash.
    pub async fn issue_card(
        &self,
        req: IssueCard,
        now: Secs,
    ) -> Result<Result<CardKey, CardError>, EngineError> {
        let _admission = self.admit()?;
        let now = self.advance_clock(now);
        if !self.has_consumer(&req.holder)? {
            return Ok(Err(CardError::InvalidField { field: "holder" }));
        }
        self.with_auth(now, move |c| {
            c.issue_card(
                &req.number,
                &req.holder,
                &req.pin,
                &req.registered_address,
                &mut rand::rngs::OsRng,
            )
        })
        .await
    }

    /// Registers a reader and binds it 1:1 to its card and account (F2). The node stores the
    /// reader with the card's token, not its number.
    pub async fn register_reader(
        &self,
        reader: NewReader,
        now: Secs,
    ) -> Result<Result<(), CardError>, EngineError> {
        let _admission = self.admit()?;
        let now = self.advance_clock(now);
        self.with_auth(now, move |c| c.register_reader(reader))
            .await
    }

    /// Administrator: unlocks a card locked by wrong PINs.
    pub async fn unlock_card(
        &self,
        number: &str,
        now: Secs,
    ) -> Result<Result<(), CardError>, EngineError> {
        let _admission = self.admit()?;
        let now = self.advance_clock(now);
        let number = number.to_string();
        self.with_auth(now, move |c| c.unlock_card(&number)).await
    }

    /// The holder reports the card lost: it never authenticates again.
    pub async fn report_lost(
        &self,
        number: &str,
        now: Secs,
    ) -> Result<Result<(), CardError>, EngineError> {
        let _admission = self.admit()?;
        let now = self.advance_clock(now);
        let number = number.to_string();
        self.with_auth(now, move |c| c.report_lost(&number)).await
    }

    /// Step 2 (F2, I9): a reader, from `peer`, presents a card for an order. A challenge if
    /// reader, card and address are bound to each other; a refusal (rate-limited) otherwise.
    pub async fn swipe(
        &self,
        reader_id: &str,
        card_number: &str,
        peer: std::net::IpAddr,
        order_id: &str,
        amount: Amount,
        now: Secs,
    ) -> Result<Result<ChallengeIssued, SwipeRefusal>, EngineError> {
        let _admission = self.admit()?;
        let now = self.advance_clock(now);
        let Ok(amount_cents) = u64::try_from(amount.cents()) else {
            return Ok(Err(SwipeRefusal::InvalidOrder));
        };
        let masked = crate::cards::mask_card_number(card_number);
        let (reader, card_number, order_id) = (
            reader_id.to_string(),
            card_number.to_string(),
            order_id.to_string(),
        );
        let result = self
            .with_auth(now, move |c| {
                c.swipe(
                    &reader,
                    &card_number,
                    peer,
                    &order_id,
                    amount_cents,
                    now,
                    &mut rand::rngs::OsRng,
                )
            })
            .await?;
        // Security log: every refused swipe, with the card masked (I10). Refusals of a reader
        // already rate-limited are logged at debug only, so that a flood cannot flood the log.
        match &result {
            Err(SwipeRefusal::RateLimited { retry_at }) => {
                tracing::debug!(reader = reader_id, card = %masked, %peer, retry_at, "swipe refused: rate-limited")
            }
            Err(refusal) => {
                tracing::warn!(reader = reader_id, card = %masked, %peer, reason = %refusal, "swipe refused")
            }
            Ok(_) => {
                tracing::info!(reader = reader_id, card = %masked, "swipe accepted: challenge issued")
            }
        }
        Ok(result)
    }

    /// The account an outstanding challenge is for, and its available credit now in cents.
    fn challenge_credit(&self, challenge_id: &str) -> Result<(Option<String>, u64), EngineError> {
        let account = self
            .auth_center()?
            .lock()
            .map_err(|_| EngineError::Internal("the authentication center panicked".into()))?
            .challenge_account(challenge_id);
        let credit = self.available_credit_cents(account.as_deref())?;
        Ok((account, credit))
    }

    /// The available credit of a consumer now, in cents (0 if unknown).
    fn available_credit_cents(&self, consumer: Option<&str>) -> Result<u64, EngineError> {
        let Some(consumer) = consumer else {
            return Ok(0);
        };
        Ok(match self.shared.view.consumer_record(consumer)? {
            None => 0,
            Some(c) => {
                let available = c.credit_limit.cents().saturating_sub(c.reserved.cents());
                u64::try_from(available.max(0)).unwrap_or(u64::MAX)
            }
        })
    }

    /// Step 3: the card's cryptogram, the encrypted PIN, the delivery address; checked in the
    /// order SPEC F18 gives (card, PIN, address, credit against the account's available credit
    /// now). Counter, PIN failures and a lock are durable before the answer.
    #[allow(clippy::too_many_arguments)]
    pub async fn authenticate(
        &self,
        challenge_id: &str,
        counter: u32,
        cryptogram: &[u8],
        pin: &EncryptedPin,
        delivery_address: &str,
        confirm_address_change: Option<bool>,
        now: Secs,
    ) -> Result<AuthOutcome, EngineError> {
        let _admission = self.admit()?;
        let now = self.advance_clock(now);
        let (account, credit) = self.challenge_credit(challenge_id)?;
        let (challenge_id, cryptogram, pin, delivery_address) = (
            challenge_id.to_string(),
            cryptogram.to_vec(),
            pin.clone(),
            delivery_address.to_string(),
        );
        let outcome = self
            .with_auth(now, move |c| {
                c.authenticate(
                    &challenge_id,
                    counter,
                    &cryptogram,
                    &pin,
                    &delivery_address,
                    confirm_address_change,
                    credit,
                    now,
                )
            })
            .await?;
        record_authorisation(&self.shared.journal, now, &outcome).await?;
        log_auth_outcome(account.as_deref(), &outcome);
        Ok(outcome)
    }

    /// The authorisation given at a reader for the payment of `order`, if any: card (last
    /// four), reader, account, and whether a one-time delivery address was confirmed.
    pub fn authorisation(
        &self,
        order: &str,
    ) -> Result<Option<crate::cards::Authorisation>, EngineError> {
        Ok(self.shared.view.authorisation(order)?)
    }

    /// The consumer's answer to `ConfirmAddressChange`.
    pub async fn confirm_address_change(
        &self,
        challenge_id: &str,
        accept: bool,
        now: Secs,
    ) -> Result<AuthOutcome, EngineError> {
        let _admission = self.admit()?;
        let now = self.advance_clock(now);
        let (account, credit) = self.challenge_credit(challenge_id)?;
        let challenge_id = challenge_id.to_string();
        let outcome = self
            .with_auth(now, move |c| {
                c.confirm_address_change(&challenge_id, accept, credit, now)
            })
            .await?;
        record_authorisation(&self.shared.journal, now, &outcome).await?;
        log_auth_outcome(account.as_deref(), &outcome);
        Ok(outcome)
    }

    /// A card as the node holds it now (token, last four, status, counter, failures), if
    /// issued; looked up by its number's token.
    pub fn card(&self, number: &str) -> Result<Option<crate::cards::Card>, EngineError> {
        Ok(self
            .auth_center()?
            .lock()
            .map_err(|_| EngineError::Internal("the authentication center panicked".into()))?
            .card(number)
            .cloned())
    }

    /// Activates a consumer's actor if it is passivated and waits for it to answer: to warm
    /// an account before a burst, or to probe that its actor is alive. `false`: no such
    /// consumer.
    pub async fn touch(&self, consumer: &str) -> Result<bool, EngineError> {
        let _admission = self.admit()?;
        let now = self.clock();
        Ok(self
            .ask_consumer(consumer, ConsumerCmd::Touch, now)
            .await?
            .is_ok())
    }

    /// The journal as a feed: the durable records after `after` (at most `max`), each with its
    /// sequence number and entries. The node's outbox follows it with a cursor of its own, so
    /// that every change of an order reaches the printer and the merchant's webhook, even
    /// across a crash.
    pub fn records_after(
        &self,
        after: u64,
        max: usize,
    ) -> Result<Vec<(u64, Vec<crate::ledger::Entry>)>, EngineError> {
        Ok(self
            .shared
            .journal
            .records_after(after, max)?
            .into_iter()
            .map(|r| (r.seq, r.entries))
            .collect())
    }

    /// The last durable record's sequence number.
    pub fn last_seq(&self) -> Result<u64, EngineError> {
        Ok(self.shared.journal.last_seq())
    }

    /// Runs the time-driven work due at `now` for every consumer, then records the clock.
    pub async fn tick(&self, now: Secs) -> Result<CommandResult, EngineError> {
        let now = self.advance_clock(now);
        let due: Vec<String> = self
            .shared
            .timed
            .iter()
            .filter(|e| *e.value() <= now)
            .map(|e| e.key().clone())
            .collect();
        // At most TICK_FAN_OUT consumers at once, so that a tick with much due work does not
        // flood the mailboxes and the journal's queue ahead of everyone else's commands.
        // `unconstrained`: the stream is polled as one task; tokio's cooperative budget would
        // make it re-poll pending sends on every wake-up.
        let visits = futures::stream::iter(due.iter().map(|id| async move {
            let Some((addr, lease)) = self.shared.route(id).await? else {
                return Ok(());
            };
            let msg = ConsumerMsg {
                cmd: ConsumerCmd::Tick,
                now,
                lease,
            };
            addr.send(msg).await??;
            Ok::<(), EngineError>(())
        }))
        .buffer_unordered(TICK_FAN_OUT)
        .collect::<Vec<_>>();
        for r in tokio::task::unconstrained(visits).await {
            r?;
        }
        self.shared
            .journal
            .append(
                &Entry::new(now, vec![Event::new(EventKind::ClockAdvanced)]),
                vec![],
            )
            .await?;
        Ok(Ok(Outcome::Ok))
    }

    /// A consumer's account as acknowledged, with its open orders (closed ones: [`Engine::order`]),
    /// if it exists. Read from the account-state view: no actor is activated for a query.
    pub async fn consumer(&self, id: &str) -> Result<Option<ConsumerState>, EngineError> {
        Ok(self.shared.view.consumer(id)?)
    }

    /// A merchant's balance as acknowledged.
    pub async fn merchant(&self, id: &str) -> Result<Option<MerchantState>, EngineError> {
        Ok(self.shared.merchants.get(id))
    }

    /// An order, if it exists.
    /// Orders open now (pending, awaiting funds, disputed), across every consumer.
    pub fn open_order_count(&self) -> usize {
        self.shared.open_orders.len()
    }

    /// The consumer an order belongs to, if the order exists.
    pub fn order_owner(&self, id: &str) -> Result<Option<String>, EngineError> {
        Ok(self.order_key(id)?.map(|k| k.consumer))
    }

    /// The order an outstanding challenge is for (`None`: unknown, used or expired).
    pub fn challenge_order(&self, challenge_id: &str) -> Result<Option<String>, EngineError> {
        Ok(self
            .auth_center()?
            .lock()
            .map_err(|_| EngineError::Internal("the authentication center panicked".into()))?
            .challenge_order(challenge_id))
    }

    pub async fn order(&self, id: &str) -> Result<Option<Order>, EngineError> {
        let owner = self.shared.open_orders.get(id).map(|k| k.consumer.clone());
        if let Some(consumer) = owner {
            if let Some(c) = self.shared.view.consumer_record(&consumer)? {
                if let Some(o) = c.open_orders.into_iter().find(|o| o.id == id) {
                    return Ok(Some(o));
                }
            }
            // Closed in the meantime: it is among the closed orders now.
        }
        Ok(self.shared.view.closed_order(id)?.map(|s| s.order))
    }

    /// The whole ledger as acknowledged, read from the account-state view. Costly with many
    /// accounts: for checks and tests.
    pub async fn ledger_state(&self) -> Result<LedgerState, EngineError> {
        Ok(self.shared.view.ledger()?)
    }

    /// Stops the actors, writes what is queued and closes the store.
    pub async fn close(mut self) -> Result<(), EngineError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), EngineError> {
        if let Some((stop, sweeper)) = self.sweeper.take() {
            drop(stop);
            let _ = sweeper.join();
        }
        for a in &self.arbiters {
            a.stop();
        }
        for a in self.arbiters.drain(..) {
            let _ = a.join();
        }
        self.shared.residents.clear();
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
