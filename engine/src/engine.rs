//! The engine: opens a data directory, recovers, reconciles with the bank, starts the actors
//! and routes commands to them.
//!
//! Commands come in as raw requests (strings from a scenario file, a CLI or an HTTP body) and
//! are checked here in the precedence FORMAT.md fixes — conflict, amount, invalid, unknown —
//! before they reach the actor that owns the account, which decides the rest.
//!
//! This module keeps the [`Engine`] itself, its settings and its command and query methods.
//! The rest of what the engine does lives beside it: [`crate::router`] (what the actors
//! share, the slots of resident actors, leases, passivation), `directory` (the id
//! directories), [`crate::recovery`] (what opening does to recover), `auth_front` (the card
//! and reader operations, as `impl Engine` blocks), [`crate::commands`] (the request types)
//! and [`crate::error`]. The types other crates name through `engine::` are re-exported here.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use dashmap::mapref::entry::Entry as MapEntry;

use crate::actors::{self, ConsumerActor, ConsumerCmd, ConsumerReply};
use crate::bank::{BankAnswer, BankError, BankOp, BankPort};
use crate::cards::{AuthCenter, IssuerKey};
use crate::directory::{claim_id, Directory, OrderKey, RefundKey};
use crate::fast_map::FastDashMap;
use crate::journal::{Journal, JournalConfig};
use crate::ledger::{
    sealed_consumer_opened_event, ConsumerState, Entry, Event, EventKind, LedgerState,
    MerchantState, Order,
};
use crate::model::{CommandResult, Outcome, Refusal, Release, RulesConfig, Secs};
use crate::money::{Amount, AmountError};
use crate::recovery::OpenedStore;
use crate::router::{Routed, Router};
use crate::seal::{self, DataKey};
use crate::view;
use futures::StreamExt;

pub use crate::commands::{
    parse_release, BankTransferCmd, CreditCmd, FundCmd, IssueCard, OpenConsumer, PlaceCmd,
    PlaceOrder, ReaderPayment, RefundCmd, RefundRequest,
};
pub use crate::error::EngineError;
pub use crate::recovery::RecoveryInfo;
pub use crate::router::{host_actors_here, Lease, ResidencyStats, Shared};

use crate::commands::check_id;

/// How many consumers a tick visits at once.
const TICK_FAN_OUT: usize = 64;

/// Engine settings: the rules, the journal's tuning and the actor pool.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub rules: RulesConfig,
    pub journal: JournalConfig,
    /// Arbiters (threads) running the account actors; default one per core. Actors activated
    /// from a thread that called [`host_actors_here`] run on that thread's arbiter instead.
    pub arbiters: usize,
    /// The capacity actix gives every account actor's mailbox. Commands are queued past it
    /// (`Lease::deliver`), never refused or held back there: `max_in_flight` bounds them.
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

/// A command's place among those in progress; given back on drop.
pub(crate) struct Admission<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Names claimed by an open in progress; released on drop.
pub(crate) struct Claim<'a> {
    opening: &'a FastDashMap<String, ()>,
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
    pub(crate) shared: Arc<Shared>,
    /// The resident consumer actors and the arbiters they run on.
    router: Arc<Router<ConsumerActor>>,
    arbiters: Vec<Arbiter>,
    journal: Option<Journal>,
    clock: AtomicU64,
    /// The feed's most recent records, decoded once for every follower.
    feed_window: crate::feed::FeedWindow,
    /// Names being opened right now (`acct:NAME`, `bank:NAME`), so that two concurrent opens
    /// of one name cannot both succeed while opens of different names run in parallel.
    opening: FastDashMap<String, ()>,
    data_dir: PathBuf,
    /// Where the log's old segments go (`[journal] archive_dir`), for readers of the whole log.
    archive_dir: Option<PathBuf>,
    recovery: RecoveryInfo,
    /// The authentication center, when an issuer key is configured. Its durable changes are
    /// journaled, in the order they were made, before the call that made them answers.
    pub(crate) auth: Option<Arc<AuthCenter>>,
    /// Fundings of merchants' balances run one at a time (`services.rs`).
    pub(crate) fundings: tokio::sync::Mutex<()>,
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
        let OpenedStore {
            journal,
            handle,
            view,
            meta,
            mut info,
        } = crate::recovery::open_store(dir, &cfg.rules, cfg.journal.clone())?;

        let arbiters: Vec<Arbiter> = (0..cfg.arbiters.max(1)).map(|_| Arbiter::new()).collect();
        let router = Arc::new(Router::new(arbiters.iter().map(|a| a.handle()).collect()));
        let merchant_book = handle.merchants().clone();
        let shared = Arc::new(Shared {
            rules: cfg.rules.clone(),
            journal: handle,
            view: view.clone(),
            bank,
            mailbox_capacity: cfg.mailbox_capacity.max(1),
            merchants: merchant_book,
            directory: Directory::default(),
            bank_op_prefix: format!("{:016x}", rand::random::<u64>()),
            bank_op_counter: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: cfg.max_in_flight.max(1),
            data_key: cfg.data_key.clone(),
            bank_accounts: FastDashMap::default(),
            async_topups: std::sync::atomic::AtomicBool::new(false),
            topups_pending: AtomicUsize::new(0),
            live_actors: AtomicUsize::new(0),
        });
        crate::recovery::scan_and_reconcile(&shared, &cfg.rules, cfg.data_key.as_ref(), &mut info)?;
        let auth = crate::recovery::load_auth_center(&view, cfg.issuer_key.as_ref(), &cfg.rules)?;
        let mut engine = Engine {
            auth,
            sweeper: None,
            shared,
            router,
            arbiters,
            journal: Some(journal),
            clock: AtomicU64::new(meta.clock),
            feed_window: Default::default(),
            opening: FastDashMap::default(),
            data_dir: dir.to_path_buf(),
            archive_dir: cfg.journal.archive_dir.clone(),
            recovery: info,
            fundings: tokio::sync::Mutex::new(()),
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
        let router = Arc::downgrade(&self.router);
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        // Its own thread, not an arbiter: a sweep over many resident consumers must not hold
        // up the actors of an arbiter. Ends when `stop` is dropped (at close).
        let sweeper = std::thread::Builder::new()
            .name("passivation".into())
            .spawn(move || {
                while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(period)
                {
                    match router.upgrade() {
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
        self.router.residents.len()
    }

    /// How many consumer actors were activated and passivated since the engine opened.
    pub fn residency(&self) -> &ResidencyStats {
        &self.router.residency
    }

    /// Passivates now every consumer actor idle for at least `idle` (tests, operators).
    pub fn passivate_idle(&self, idle: Duration) -> usize {
        self.router.passivate_idle(idle)
    }

    /// Why the journal stopped accepting writes, if it did (a full disk, an I/O error): every
    /// command fails until a restart, reads keep working.
    pub fn journal_failure(&self) -> Option<String> {
        self.shared.journal.failure()
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

    /// `verify`'s checks of the log alone ([`crate::verify::verify_log`]), up to the last
    /// durable record, while the engine runs: the hash chain, the replay of every entry into a
    /// fresh ledger and its invariants. The account-state view, which this engine holds, is
    /// not compared. Blocking, and as costly as a full replay: run it on a blocking thread.
    pub fn verify_log(&self) -> Result<crate::verify::VerifyReport, crate::verify::VerifyError> {
        self.verify_log_job()()
    }

    /// [`Engine::verify_log`] as a job for another thread: it holds where the log is and its
    /// last durable record now, not the engine, so that the engine can close while it runs.
    pub fn verify_log_job(
        &self,
    ) -> impl FnOnce() -> Result<crate::verify::VerifyReport, crate::verify::VerifyError> + Send + 'static
    {
        let (dir, archive) = (self.data_dir.clone(), self.archive_dir.clone());
        let upto = self.shared.journal.last_seq();
        move || crate::verify::verify_log(&dir, archive.as_deref(), upto)
    }

    /// Every bank operation the journal holds, read from the log's files (synced records
    /// only): what reconciliation matches against a bank's statement. Blocking; reads the
    /// whole log.
    pub fn bank_operations(&self) -> Result<Vec<crate::bank_ops::JournalBankOp>, EngineError> {
        crate::bank_ops::journal_bank_ops(&self.data_dir, self.archive_dir.as_deref())
            .map_err(EngineError::from)
    }

    pub fn rules(&self) -> &RulesConfig {
        &self.shared.rules
    }

    /// The engine's clock: the latest time any command ran at.
    pub fn clock(&self) -> Secs {
        self.clock.load(Ordering::Acquire)
    }

    pub(crate) fn advance_clock(&self, now: Secs) -> Secs {
        self.clock.fetch_max(now, Ordering::AcqRel).max(now)
    }

    /// Admission control: every command holds a place while it runs, so the work queued in
    /// the engine (mailboxes, the journal's queue, bank calls) stays bounded end to end.
    pub(crate) fn admit(&self) -> Result<Admission<'_>, EngineError> {
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
    pub(crate) fn claim(&self, keys: &[String]) -> Option<Claim<'_>> {
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
            .router
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

    /// The bank account a merchant's payouts go to (unsealed with the data key), for the
    /// merchant's own pages to show masked. `None` for an unknown merchant or one without.
    pub fn merchant_bank_account_of(&self, merchant: &str) -> Result<Option<String>, EngineError> {
        let Some(state) = self.shared.merchants.get(merchant) else {
            return Ok(None);
        };
        match &state.bank {
            None => Ok(None),
            Some(bank_ref) => self
                .merchant_bank_account(merchant, bank_ref, &state.bank_sealed)
                .map(Some),
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

    /// A merchant's balance not held for a refund or payout in progress, as durable; `None`
    /// for an unknown merchant.
    pub fn merchant_free_balance(&self, merchant: &str) -> Option<Amount> {
        self.shared.merchants.free(merchant)
    }

    /// Pays out a merchant's balance to its bank account: all of what is not held for a refund
    /// in progress, or `amount` of it. The amount is held while the bank is asked (a credit
    /// transfer: with the ISO 20022 adapter, part of a pain.001 with whatever else is asked
    /// for meanwhile). The bank booked it: `PayoutMade` is journaled and the merchant's
    /// balance goes down. The bank rejected it: `PayoutRefused` is journaled with the reason,
    /// the hold is given back, and the answer is a refusal. The bank could not be asked or its
    /// answer is unknown: the hold is given back and the error returned (the adapter resolves
    /// the operation with the bank, and reverses it if the bank booked it after all).
    pub async fn pay_out(
        &self,
        merchant: &str,
        amount: Option<Amount>,
        now: Secs,
    ) -> Result<Result<PaidOut, Refusal>, EngineError> {
        let _admission = self.admit()?;
        let now = self.advance_clock(now);
        let Some(state) = self.shared.merchants.get(merchant) else {
            return Ok(Err(Refusal::unknown(format!("no merchant {merchant:?}"))));
        };
        let Some(bank_ref) = state.bank.clone() else {
            return Ok(Err(Refusal::invalid(format!(
                "merchant {merchant} has no bank account to pay out to"
            ))));
        };
        let amount = match amount {
            Some(a) if !a.is_positive() => {
                return Ok(Err(Refusal::amount(format!(
                    "a payout must be greater than zero, not {a}"
                ))))
            }
            Some(a) => a,
            None => self.shared.merchants.free(merchant).unwrap_or(Amount::ZERO),
        };
        if !amount.is_positive() {
            return Ok(Err(Refusal::funds(format!(
                "merchant {merchant} has nothing to pay out"
            ))));
        }
        let account = self.merchant_bank_account(merchant, &bank_ref, &state.bank_sealed)?;
        if let Err(r) = self.shared.debit_merchant_for_refund(merchant, amount)? {
            return Ok(Err(r));
        }
        let payout = self.shared.new_bank_op_id();
        let answer = self
            .shared
            .bank
            .credit(BankOp {
                id: payout.clone(),
                account,
                amount,
            })
            .await;
        match answer {
            Ok(BankAnswer::Done) => {
                let ev = crate::ledger::payout_made_event(&payout, merchant, &bank_ref, amount);
                let entry = Entry::new(now, vec![ev]);
                // The journal writer takes the hold back as it publishes the payout's posting.
                if let Err(e) = self.shared.journal.append(&entry, vec![]).await {
                    self.shared.credit_merchant_back(merchant, amount);
                    return Err(e.into());
                }
                self.shared.bank.confirm(std::slice::from_ref(&payout));
                Ok(Ok(PaidOut { payout, amount }))
            }
            Ok(BankAnswer::Refused(reason)) => {
                self.shared.credit_merchant_back(merchant, amount);
                let ev = Event::new(EventKind::PayoutRefused {
                    payout: payout.clone(),
                    merchant: merchant.to_string(),
                    amount,
                    reason: reason.clone(),
                });
                self.shared
                    .journal
                    .append(&Entry::new(now, vec![ev]), vec![])
                    .await?;
                Ok(Err(Refusal::funds(format!(
                    "the bank refused payout {payout} of {amount}: {reason}"
                ))))
            }
            Err(BankError::UnknownAccount(_)) => {
                self.shared.credit_merchant_back(merchant, amount);
                Ok(Err(Refusal::unknown(format!(
                    "the bank does not know merchant {merchant}'s account"
                ))))
            }
            Err(e) => {
                self.shared.credit_merchant_back(merchant, amount);
                Err(e.into())
            }
        }
    }

    /// A merchant's bank account as the bank knows it: unsealed with the data key (I10).
    pub(crate) fn merchant_bank_account(
        &self,
        merchant: &str,
        bank_ref: &str,
        bank_sealed: &Option<Vec<u8>>,
    ) -> Result<String, EngineError> {
        match (&self.shared.data_key, bank_sealed) {
            (None, _) => Ok(bank_ref.to_string()),
            (Some(key), Some(sealed)) => {
                seal::unseal(key, bank_ref, sealed).map_err(|e| EngineError::Config(e.to_string()))
            }
            (Some(_), None) => Err(EngineError::Internal(format!(
                "no sealed bank account for merchant {merchant}"
            ))),
        }
    }

    /// A lease on the actor of a consumer, activated from the view if it is not resident: it
    /// keeps the actor resident until the message carrying it is handled, and delivers that
    /// message (`actors::ask`). `None` if there is no such consumer.
    async fn route(&self, consumer: &str) -> Result<Option<Lease<ConsumerActor>>, EngineError> {
        loop {
            let routed = self
                .router
                .route(consumer, |arbiter| {
                    let Some(record) = self.shared.view.consumer_record(consumer)? else {
                        return Ok::<_, EngineError>(None);
                    };
                    let state = record.into_state();
                    let shared = self.shared.clone();
                    Ok(Some(ConsumerActor::start_in_arbiter(arbiter, move |_| {
                        ConsumerActor::new(state, shared)
                    })))
                })
                .await?;
            match routed {
                Routed::Lease(lease) => return Ok(Some(lease)),
                Routed::NoSuchConsumer => return Ok(None),
                // The stopped actor may have queued an entry the view does not show yet: an
                // empty submission, answered only once everything queued before it is
                // applied, before the consumer is read from the view again.
                Routed::HostStopped => {
                    self.shared.journal.append_writes(Vec::new()).await?;
                }
            }
        }
    }

    pub(crate) async fn ask_consumer(
        &self,
        consumer: &str,
        cmd: ConsumerCmd,
        now: Secs,
    ) -> Result<CommandResult, EngineError> {
        let Some(lease) = self.route(consumer).await? else {
            return Ok(Err(Refusal::unknown(format!("no consumer {consumer:?}"))));
        };
        let ConsumerReply::Done(r) = actors::ask(lease, cmd, now).await?;
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
            at_reader: None,
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
        let directory = &self.shared.directory;
        loop {
            // Another place of this id with other content in flight: wait for it to finish.
            // It may leave the id taken (then a conflict) or free (an unknown consumer, a crash).
            directory
                .releases
                .wait_while(|| directory.placing.get(&req.id).is_some_and(|k| !same_as(&k)))
                .await;
            if let Some(k) = self.order_key(&req.id)? {
                if !same_as(&k) {
                    return Ok(Err(conflict()));
                }
                break;
            }
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
            // Claimed by another with other content since the wait: wait again.
            if let Ok(c) = claim_id(&directory.placing, &directory.releases, &req.id, &key) {
                _claim = Some(c);
                break;
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
            at_reader: req.at_reader,
        };
        self.ask_consumer(&req.consumer, cmd, now).await
    }

    /// The content an order id was first used with: being placed now, open, or closed in
    /// the view.
    fn order_key(&self, order: &str) -> Result<Option<OrderKey>, EngineError> {
        self.shared.directory.order_key(&self.shared.view, order)
    }

    fn owner_of_order(&self, order: &str) -> Result<Result<String, Refusal>, EngineError> {
        self.shared
            .directory
            .owner_of_order(&self.shared.view, order)
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
        let directory = &self.shared.directory;
        let (amount, consumer, _claim) = loop {
            // Another refund of this id with other content in flight: wait for it to finish.
            // A refused refund leaves no trace, so the id may be free again afterwards.
            directory
                .releases
                .wait_while(|| {
                    directory
                        .refunding
                        .get(&req.id)
                        .is_some_and(|k| Some(&*k) != key.as_ref())
                })
                .await;
            let recorded = match directory.refunding.get(&req.id) {
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
            let amount = match &amount {
                Ok(a) => *a,
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
            // Claimed until it is in the view; claimed by another with other content since
            // the wait: wait again.
            if let Ok(claim) = claim_id(&directory.refunding, &directory.releases, &req.id, &key) {
                break (amount, consumer, claim);
            }
        };
        let cmd = ConsumerCmd::Refund {
            id: req.id.clone(),
            order: req.order,
            amount,
        };
        self.ask_consumer(&consumer, cmd, now).await
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

    /// The typed feed of what happened to orders and wallets after record `after`, reading at
    /// most `max` records (`feed`): what followers outside the engine read instead of the
    /// ledger.
    pub fn feed_after(&self, after: u64, max: usize) -> Result<crate::feed::Feed, EngineError> {
        if let Some(feed) = self.feed_window.read(after, max) {
            return Ok(feed);
        }
        let read = self.shared.journal.records_after(after, max)?;
        let through = read.last().map_or(after, |r| r.seq);
        let all: Vec<Option<Arc<crate::feed::FeedRecord>>> = read
            .into_iter()
            .map(|r| {
                (!r.entries.is_empty()).then(|| {
                    Arc::new(crate::feed::FeedRecord {
                        seq: r.seq,
                        entries: r
                            .entries
                            .into_iter()
                            .map(crate::feed::FeedEntry::of)
                            .collect(),
                    })
                })
            })
            .collect();
        // The window counts records by position: it takes them only as the journal numbers
        // them, one after another.
        if through == after + all.len() as u64 {
            self.feed_window.keep(after, &all);
        }
        Ok(crate::feed::Feed {
            records: all.into_iter().flatten().collect(),
            through,
        })
    }

    /// The records of the layer above, durable in this engine's journal
    /// ([`crate::records`]).
    pub fn records(&self) -> crate::records::RecordStore {
        crate::records::RecordStore::new(self.shared.journal.clone(), self.shared.view.clone())
    }

    /// The last durable record's sequence number.
    pub fn last_seq(&self) -> Result<u64, EngineError> {
        Ok(self.shared.journal.last_seq())
    }

    /// Runs the time-driven work due at `now` for every consumer, then records the clock; and
    /// lets expired challenges and an agreement key whose epoch is over go.
    pub async fn tick(&self, now: Secs) -> Result<CommandResult, EngineError> {
        let now = self.advance_clock(now);
        // Expired challenges hold the card number presented and their agreement key: they go
        // with time, not only with the next swipes.
        if let Some(auth) = &self.auth {
            auth.purge_expired(now);
        }
        let due: Vec<String> = self
            .shared
            .directory
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
            let Some(lease) = self.route(id).await? else {
                return Ok(());
            };
            actors::ask(lease, ConsumerCmd::Tick, now).await?;
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

    /// A consumer's account as the consumer may see it (`query`).
    pub async fn account_summary(
        &self,
        id: &str,
    ) -> Result<Option<crate::query::AccountSummary>, EngineError> {
        Ok(self
            .consumer(id)
            .await?
            .map(|c| crate::query::AccountSummary::from(&c)))
    }

    /// An order as its consumer and merchant may see it (`query`), if it exists.
    pub async fn order_summary(
        &self,
        id: &str,
    ) -> Result<Option<crate::query::OrderSummary>, EngineError> {
        Ok(self
            .order(id)
            .await?
            .map(|o| crate::query::OrderSummary::from(&o)))
    }

    /// A merchant's balance as acknowledged.
    pub async fn merchant(&self, id: &str) -> Result<Option<MerchantState>, EngineError> {
        Ok(self.shared.merchants.get(id))
    }

    /// Orders open now (pending, awaiting funds, disputed), across every consumer.
    pub fn open_order_count(&self) -> usize {
        self.shared.directory.open_orders.len()
    }

    /// The consumer an order belongs to, if the order exists.
    pub fn order_owner(&self, id: &str) -> Result<Option<String>, EngineError> {
        Ok(self.owner_of_order(id)?.ok())
    }

    /// An order, if it exists.
    pub async fn order(&self, id: &str) -> Result<Option<Order>, EngineError> {
        let owner = self
            .shared
            .directory
            .open_orders
            .get(id)
            .map(|k| k.consumer.clone());
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

    /// The whole ledger as it stands, one item at a time (see `StateView::visit_ledger`),
    /// without holding it: for summaries of a large population beside the running engine.
    /// Returns the ledger's clock.
    pub fn visit_ledger(
        &self,
        f: impl FnMut(crate::ledger::LedgerItem<'_>),
    ) -> Result<Secs, EngineError> {
        Ok(self.shared.view.visit_ledger(f)?)
    }

    /// Stops the actors, writes what is queued and closes the store.
    pub async fn close(mut self) -> Result<(), EngineError> {
        // Top-ups still waiting for the bank's answer are journaled first (an external bank):
        // one cut off here is reconciled with the bank at the next opening.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while self.shared.topups_pending.load(Ordering::Acquire) > 0
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Actors hosted by threads the engine does not stop (`host_actors_here`) stop once
        // their slots are gone and their arbiters get to run: the view's store stays open
        // until the last of them has let go of it.
        self.router.residents.clear();
        while self.shared.live_actors.load(Ordering::Acquire) > 0
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
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
        self.router.residents.clear();
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

/// A payout the bank booked ([`Engine::pay_out`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaidOut {
    /// The payout's id: its bank operation's id (the pain.001's end-to-end id).
    pub payout: String,
    pub amount: Amount,
}
