//! The router and passivation, and what the actors share.
//!
//! [`Shared`] is what every consumer actor holds: the rules, the journal and its view, the
//! bank, the merchants' book (`credit_merchant_back`, `debit_merchant_for_refund`), the id
//! directories (`note_order`, `note_time_work`), bank operation ids and bank references.
//!
//! Consumer actors are activated on their first message and passivated when idle: the router
//! (`Router::route`) keeps a slot per resident consumer, counting the messages handed to its
//! actor and not yet handled. A slot is removed only while that count is zero, under the map's
//! lock, so a message either reaches the live actor or finds no slot and activates a fresh one
//! from the account-state view. Messages arriving while an actor is being activated wait on
//! the slot until it is up. No message can reach an actor that is being retired.
//!
//! **Where an actor runs.** By default on the arbiter its consumer id hashes to. A thread that
//! serves requests and is itself an actix arbiter (the node's HTTP workers) can ask for the
//! actors it activates to run on its own arbiter ([`host_actors_here`]): a request's message to
//! its consumer's actor and the answer then stay on the thread, instead of waking another
//! thread each way. If such a thread's arbiter stops (the HTTP server stopping) while the
//! engine runs on, its actors stop with it; the next message for one of them finds its
//! mailbox closed, waits until the journal has applied everything queued before (whatever the
//! stopped actor had submitted), and activates a fresh actor from the view
//! ([`Routed::HostStopped`]).
//!
//! A module of its own so that the actors can import what they share and the lease their
//! messages carry without importing the engine: `engine` → `actors` → `router`, one way. The
//! router is generic over the actor it keeps resident, and the engine passes the activation
//! (read the consumer record, start the actor), so this module needs nothing from `actors`.

use std::cell::Cell;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use actix::prelude::*;
use dashmap::mapref::entry::Entry as MapEntry;

use crate::bank::BankPort;
use crate::directory::Directory;
use crate::error::EngineError;
use crate::fast_map::FastDashMap;
use crate::journal::JournalHandle;
use crate::ledger::Order;
use crate::model::{Refusal, RulesConfig, Secs};
use crate::money::Amount;
use crate::seal::{self, DataKey};
use crate::view::StateView;

/// Milliseconds since the first call: a cheap clock for idle times.
fn monotonic_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

thread_local! {
    /// Whether consumer actors activated from this thread start on its own arbiter.
    static HOSTS_ACTORS: Cell<bool> = const { Cell::new(false) };
}

/// Makes the calling thread the home of the consumer actors it activates: they start on its
/// own actix arbiter, not on the engine's arbiter their id hashes to. For threads that serve
/// requests and are arbiters themselves (the node's HTTP workers, from their app factory): a
/// command and its answer then stay on the thread. On 2 cores this took about 15 % off the
/// node's CPU per card payment (BENCHMARKS.md, issue 11, seventh session). On a thread that
/// is not an arbiter it has no effect: the hashed placement stays.
pub fn host_actors_here() {
    HOSTS_ACTORS.with(|h| h.set(true));
}

/// What [`Router::route`] found for a consumer.
pub(crate) enum Routed<A: Actor> {
    /// Its actor, resident or just activated, with a lease on it.
    Lease(Lease<A>),
    /// No such consumer.
    NoSuchConsumer,
    /// Its actor had stopped with the arbiter it ran on (a host thread's, [`host_actors_here`]),
    /// and its slot is gone: route again once the journal has applied what that actor queued.
    HostStopped,
}

/// The router's slot for one resident consumer.
pub(crate) struct Slot<A: Actor> {
    /// The actor, once activated; messages arriving during activation wait here.
    pub(crate) addr: tokio::sync::OnceCell<Addr<A>>,
    /// Messages handed to the actor and not yet handled (leases alive).
    outstanding: AtomicUsize,
    last_used_ms: AtomicU64,
}

/// A message's claim on its consumer's slot: while any lease is alive the actor is not
/// passivated. It travels inside the message and is dropped when the actor has handled it (or
/// when the message is dropped unhandled), not when the caller stops waiting.
pub struct Lease<A: Actor>(Arc<Slot<A>>);

impl<A: Actor> Lease<A> {
    /// Another lease on the same actor, for work this message starts that outlives it.
    pub(crate) fn another(&self) -> Lease<A> {
        self.0.outstanding.fetch_add(1, Ordering::AcqRel);
        Lease(self.0.clone())
    }

    /// Queues the message `make` builds around this lease in the actor's mailbox, through the
    /// slot's own address. Not `Addr::send` on a clone of it: a clone allocates a sender (two
    /// `Arc`s and a compare-and-swap on the sender count, and as much again to drop it) for
    /// every command, and `send` on a shared address would stop at a full mailbox without a
    /// wake-up. Queued regardless of the mailbox's capacity, as a fresh clone's `send` does
    /// too; the message carries its own way back. An actor that has stopped drops the message,
    /// and with it the way back.
    pub(crate) fn deliver<M>(self, make: impl FnOnce(Lease<A>) -> M)
    where
        A: Handler<M>,
        A::Context: actix::dev::ToEnvelope<A, M>,
        M: Message + Send + 'static,
        M::Result: Send,
    {
        let slot = self.0.clone();
        match slot.addr.get() {
            Some(addr) => addr.do_send(make(self)),
            // Not reachable: a lease is handed out only once its actor is up. Dropping the
            // message drops its way back, which its sender sees as an unreachable actor.
            None => drop(make(self)),
        }
    }
}

impl<A: Actor> Drop for Lease<A> {
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

/// What the actors share: the rules, the journal and its view, the bank and the directories.
pub struct Shared {
    pub rules: RulesConfig,
    pub journal: JournalHandle,
    pub view: StateView,
    pub bank: Arc<dyn BankPort>,
    pub mailbox_capacity: usize,
    /// Merchants' durable balances, published by the journal writer.
    pub(crate) merchants: Arc<crate::view::MerchantBook>,
    /// Ids being placed or refunded now, open orders, consumers with time-driven work.
    pub(crate) directory: Directory,
    pub(crate) bank_op_prefix: String,
    pub(crate) bank_op_counter: AtomicU64,
    pub(crate) in_flight: AtomicUsize,
    pub(crate) max_in_flight: usize,
    /// The data key, if bank accounts are stored sealed.
    pub(crate) data_key: Option<DataKey>,
    /// Bank reference → the account it stands for, unsealed on first use. Memory only.
    pub(crate) bank_accounts: FastDashMap<String, String>,
    /// Whether top-ups run after their settlement is acknowledged (an external bank, whose
    /// answer takes a message round trip) rather than inside it (the simulated bank, durable
    /// in the same record). Set at opening from the bank's `attach`.
    pub(crate) async_topups: std::sync::atomic::AtomicBool,
    /// Top-ups asked for after their settlement whose answer has not been handled yet:
    /// closing waits for them (up to a bound), so that a clean stop leaves none behind.
    pub(crate) topups_pending: AtomicUsize,
    /// Consumer actors alive (started and not yet dropped), wherever they run: closing waits
    /// for them, since each holds the view's store open.
    pub(crate) live_actors: AtomicUsize,
}

/// Counts one live actor in [`Shared::live_actors`] for as long as it is held: a field of the
/// actor, so that the count falls whether the actor stops or its arbiter drops it.
pub(crate) struct LiveActor(Arc<Shared>);

impl LiveActor {
    pub(crate) fn new(shared: Arc<Shared>) -> LiveActor {
        shared.live_actors.fetch_add(1, Ordering::AcqRel);
        LiveActor(shared)
    }
}

impl Drop for LiveActor {
    fn drop(&mut self) {
        self.0.live_actors.fetch_sub(1, Ordering::AcqRel);
    }
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
            .and_then(|r| {
                if r.bank == bank_ref {
                    r.bank_sealed
                } else {
                    r.linked.get(bank_ref).and_then(|l| l.sealed.clone())
                }
            })
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
        // Not `format!`: one of these is made for every top-up, and the formatting machinery
        // cost more than the rest of this.
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(n);
        let mut id = String::with_capacity(self.bank_op_prefix.len() + 1 + digits.len());
        id.push_str(&self.bank_op_prefix);
        id.push('-');
        id.push_str(digits);
        id
    }

    /// Keeps the open-order directory up to date after an order changed durably.
    pub fn note_order(&self, consumer: &str, order: &Order) {
        self.directory.note_order(consumer, order);
    }

    /// Keeps the consumers a tick must visit up to date: `next` is when this one will first
    /// have time-driven work, if ever.
    pub fn note_time_work(&self, consumer: &str, next: Option<Secs>) {
        self.directory.note_time_work(consumer, next);
    }

    /// Gives back a refund's hold on the merchant's balance: the refund did not happen.
    pub fn credit_merchant_back(&self, merchant: &str, amount: Amount) {
        self.merchants.release(merchant, amount);
    }

    /// Holds `amount` of the merchant's durable balance for a refund or a payout; the journal
    /// writer takes the hold back when it writes it.
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
            "merchant {merchant} holds {balance} (refunds and payouts in progress included), less than the {amount} asked for"
        ))))
    }
}

/// The router: the resident actors (one slot per activated consumer) and the arbiter pool
/// they run on. `A` is the actor it keeps resident (the consumer actor).
pub struct Router<A: Actor> {
    /// Resident consumers (activated and not yet passivated).
    pub(crate) residents: FastDashMap<String, Arc<Slot<A>>>,
    arbiters: Vec<ArbiterHandle>,
    pub(crate) residency: ResidencyStats,
}

impl<A: Actor> Router<A> {
    /// A router with nothing resident, starting actors on `arbiters`.
    pub(crate) fn new(arbiters: Vec<ArbiterHandle>) -> Router<A> {
        Router {
            residents: FastDashMap::default(),
            arbiters,
            residency: ResidencyStats::default(),
        }
    }

    fn arbiter_for(&self, id: &str) -> &ArbiterHandle {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        id.hash(&mut h);
        &self.arbiters[(h.finish() % self.arbiters.len() as u64) as usize]
    }

    /// A lease on the actor of a consumer, activated by `activate` (from the view, on the
    /// arbiter given to it) if it is not resident: it keeps the actor resident until the
    /// message carrying it is handled, and delivers that message (`Lease::deliver`).
    pub(crate) async fn route<E>(
        &self,
        consumer: &str,
        activate: impl FnOnce(&ArbiterHandle) -> Result<Option<Addr<A>>, E>,
    ) -> Result<Routed<A>, EngineError>
    where
        EngineError: From<E>,
    {
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
        if slot.addr.get().is_some_and(|addr| !addr.connected()) {
            // Its arbiter stopped: the slot goes (unless someone replaced it already).
            slot.outstanding.fetch_sub(1, Ordering::AcqRel);
            self.residents
                .remove_if(consumer, |_, s| Arc::ptr_eq(s, &slot));
            return Ok(Routed::HostStopped);
        }
        let lease = Lease(slot.clone());
        let activated = slot
            .addr
            .get_or_try_init(|| async {
                let here = if HOSTS_ACTORS.with(Cell::get) {
                    Arbiter::try_current()
                } else {
                    None
                };
                match activate(here.as_ref().unwrap_or_else(|| self.arbiter_for(consumer))) {
                    Err(e) => Err(Some(e)),
                    Ok(None) => Err(None),
                    Ok(Some(addr)) => {
                        self.residency.activations.fetch_add(1, Ordering::Relaxed);
                        Ok(addr)
                    }
                }
            })
            .await;
        match activated {
            Ok(_) => Ok(Routed::Lease(lease)),
            Err(e) => {
                drop(lease);
                // Free the empty slot unless another message is waiting on it.
                self.residents.remove_if(consumer, |_, s| {
                    s.outstanding.load(Ordering::Acquire) == 0 && !s.addr.initialized()
                });
                match e {
                    None => Ok(Routed::NoSuchConsumer),
                    Some(e) => Err(e.into()),
                }
            }
        }
    }

    /// Passivates every consumer actor idle for `idle` with nothing outstanding: its slot is
    /// removed, the actor stops when its last address is dropped. Returns how many.
    ///
    /// The idle ones are found under the map's read locks, then removed one by one (checked
    /// again under the write lock of the key's shard) and dropped after it: dropping an actor's
    /// last address wakes its arbiter, and a sweep that held each shard's write lock through
    /// ten thousand of those (`retain`) kept routing to that shard waiting for up to 30 ms.
    pub(crate) fn passivate_idle(&self, idle: Duration) -> usize {
        let now = monotonic_ms();
        let idle = idle.as_millis() as u64;
        let retire = |s: &Slot<A>| {
            s.outstanding.load(Ordering::Acquire) == 0
                && now.saturating_sub(s.last_used_ms.load(Ordering::Acquire)) >= idle
        };
        let idle_ones: Vec<String> = self
            .residents
            .iter()
            .filter(|e| retire(e.value()))
            .map(|e| e.key().clone())
            .collect();
        let mut passivated = 0;
        for consumer in idle_ones {
            if let Some(removed) = self.residents.remove_if(&consumer, |_, s| retire(s)) {
                passivated += 1;
                drop(removed);
            }
        }
        self.residency
            .passivations
            .fetch_add(passivated as u64, Ordering::Relaxed);
        passivated
    }
}
