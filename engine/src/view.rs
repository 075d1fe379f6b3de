//! The account-state view: the current state of every account. Each log record carries the
//! view's writes it causes; right after the record's sync they go into an in-memory
//! [`Overlay`], and a checkpointer writes them behind the log as one sorted run of the
//! checkpoint store ([`write_checkpoint`], [`onecard_storage::runs`]), stamped with the last
//! record covered.
//!
//! Why: with a million consumers and years of orders, neither "replay the journal at start-up"
//! nor "keep every account and order in memory" scales. The view makes start-up independent of
//! the journal's length (only the log's tail after the checkpoint is replayed) and lets an
//! account actor be passivated at any time it is idle (its state is the view's) and activated
//! again by one read. Orders and ids live here, not in memory.
//!
//! Keys (one byte of prefix, then the id):
//!
//! | key | value | written by |
//! | --- | --- | --- |
//! | `c` consumer | the consumer with its *open* orders inline ([`ConsumerRecord`]) | the consumer's actor |
//! | `d` order | a *closed* order (settled, cancelled, expired, refused) and its consumer ([`StoredOrder`]) | the consumer's actor |
//! | `f` refund | the refund and its consumer ([`StoredRefund`]) | the consumer's actor |
//! | `w` credit or funding id | what it was first used for ([`CreditRecord`]) | the consumer's actor (credits), the engine (fundings) |
//! | `b` bank account | the consumer it is designated for | the engine, at opening |
//! | `m` merchant | [`MerchantState`] | the journal writer, from the postings |
//! | `n` card token | the card ([`crate::cards::Card`]: token, last four digits, status, PIN hash, counter, failures; never the full number, I10) | the engine's authentication center |
//! | `q` reader id | the reader and its binding ([`crate::cards::Reader`]) | the engine's authentication center |
//! | `z` order id | the payment's authorisation at a reader ([`crate::cards::Authorisation`]) | the engine |
//! | `s` stored account name | the simulated bank's account: base balance and refuse flag (`bank::SimRecord`) | the simulated bank's own records |
//! | `o` bank operation | the record holding it (only for a bank that reconciles at opening) | the journal writer |
//! | `k` | [`ViewMeta`]: rules, clock, entries, last record | the journal writer |
//! | `h` | the checkpoint's stamp: last record covered and its hash | the journal writer, after the sync |
//! | `i` | the store id (as in the log's segment headers) | opening, once |
//! | `x` record key | a record of the layer above ([`crate::records`]: the node's checkouts, idempotency records, sessions, queues), opaque to the engine | whoever commits it through [`crate::records::RecordStore`] |
//!
//! Each key written is carried into a run at its checkpoint and rewritten again by a few merges
//! over its life, so a command writes as few keys as it can: the consumer record
//! always, an order record only when an order closes (or a closed one is refunded); the
//! checkpoint coalesces a key written many times. Which open orders exist, and which consumers
//! have reserved credit (for ticks), the engine rebuilds at start-up from the consumer records.
//!
//! Architecture invariant: the view (checkpoint + tail) always equals the replay of the journal
//! up to its head. `verify` checks exactly that, account by account and order by order, and
//! the keys no replay derives (`s`, `o`) against the log's own writes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::fast_map::{FastDashMap, FastMap};
use crate::ledger::{AccountRef, CreditRecord, LedgerItem, RefundRecord};
use crate::ledger::{ConsumerState, Entry, EventKind, LedgerState, MerchantState, Order};
use crate::model::{RulesConfig, Secs};
use crate::money::Amount;
use onecard_storage::runs::RunStore;

const CONSUMER: u8 = b'c';
const ORDER: u8 = b'd';
const REFUND: u8 = b'f';
const BANK: u8 = b'b';
const MERCHANT: u8 = b'm';
const CARD: u8 = b'n';
const AUTHORISATION: u8 = b'z';
const READER: u8 = b'q';
const BANK_OP: u8 = b'o';
const SIM_ACCOUNT: u8 = b's';
/// The clearing accounts of merchants' bank accounts (payouts), by clearing account name.
const MERCHANT_CLEARING: u8 = b'g';
/// Credit and funding ids ([`CreditRecord`]): what each was first used for (I6).
const CREDIT: u8 = b'w';
/// The records of the layer above (see [`crate::records`]): kept in key order in the overlay,
/// since they are scanned by prefix (queues, listings), and never interpreted here.
pub(crate) const UPPER_RECORD: u8 = b'x';
const META_KEY: &[u8] = b"k";
/// The id of the store the checkpoint belongs to, the same as in the log's segment headers.
const STORE_ID_KEY: &[u8] = b"i";
/// The checkpoint's stamp: the last record it covers and that record's hash, so that opening
/// and `verify` can check the log still holds that very record (nothing chains to the log's
/// last record; this is what catches it altered).
const STAMP_KEY: &[u8] = b"h";

/// The stamp write for record `seq` with hash `hash` (added to the overlay after the sync,
/// not part of the record's redo: the hash is known only once the record is framed).
pub fn stamp_write(seq: u64, hash: &[u8; 32]) -> ViewWrite {
    let mut v = Vec::with_capacity(40);
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(hash);
    ViewWrite::Put(STAMP_KEY.to_vec(), v)
}

/// Why the view could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("account-state view: storage: {}", describe_sled(.0))]
    Storage(#[from] sled::Error),
    #[error("the view's checkpoint: {0}")]
    Runs(#[from] onecard_storage::runs::RunError),
    #[error("account-state view: {0}")]
    Invalid(String),
}

fn describe_sled(e: &sled::Error) -> String {
    match e {
        sled::Error::Io(io) if onecard_storage::is_disk_full(io) => format!("disk full: {e}"),
        _ => e.to_string(),
    }
}

impl ViewError {
    /// Whether sled reported a failure of the disk under it (I/O or corruption), rather than
    /// a bad value.
    pub fn is_storage_failure(&self) -> bool {
        matches!(
            self,
            ViewError::Storage(sled::Error::Io(_) | sled::Error::Corruption { .. })
                | ViewError::Runs(_)
        )
    }

    fn is_disk_full(&self) -> bool {
        match self {
            ViewError::Storage(sled::Error::Io(io)) => onecard_storage::is_disk_full(io),
            ViewError::Runs(e) => e.is_disk_full(),
            _ => false,
        }
    }
}

/// The first storage failure sled reported, on a read or on a checkpoint. sled 0.34 keeps its
/// first I/O error until it is reopened (a read can meet it too: sled finishes page splits and
/// flushes while reading), so no later checkpoint could succeed and the overlay would grow
/// until memory runs out. The journal's writer checks this before every record and accepts
/// nothing more once it is set, like after a failed sync: a restart recovers.
#[derive(Debug, Default)]
pub struct ViewFailure(std::sync::OnceLock<onecard_storage::group_commit::SinkFailure>);

impl ViewFailure {
    /// Records `e` if it is a storage failure (the first one wins) and gives it back.
    pub fn note(&self, doing: &str, e: ViewError) -> ViewError {
        if e.is_storage_failure() {
            let reason = format!("{doing}: {e}");
            let _ = self.0.set(if e.is_disk_full() {
                onecard_storage::group_commit::SinkFailure::disk_full(reason)
            } else {
                onecard_storage::group_commit::SinkFailure::new(reason)
            });
        }
        e
    }

    /// Records a failure that is not sled's (the first one wins).
    pub fn set(&self, failure: onecard_storage::group_commit::SinkFailure) {
        let _ = self.0.set(failure);
    }

    pub fn get(&self) -> Option<&onecard_storage::group_commit::SinkFailure> {
        self.0.get()
    }
}

/// One change to the view: a key set to a value, or removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViewWrite {
    Put(Vec<u8>, Vec<u8>),
    Remove(Vec<u8>),
}

/// What the journal writer keeps about the node as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ViewMeta {
    pub config: RulesConfig,
    pub clock: Secs,
    pub entries: u64,
    /// The record the view is at; always the head's record.
    pub last_seq: u64,
}

/// A consumer as the view keeps it: the account and its open orders (pending, awaiting funds,
/// disputed), which is exactly what its actor holds while idle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerRecord {
    pub id: String,
    pub credit_limit: Amount,
    pub reserved: Amount,
    pub wallet: Amount,
    pub bank: String,
    /// With a data key, the designated account sealed under it (`bank` is its reference).
    pub bank_sealed: Option<Vec<u8>>,
    pub bank_clearing: Amount,
    pub next_placement: u64,
    pub open_orders: Vec<Order>,
    /// The other linked bank accounts (SPEC F5), the payment-gateway rules (SPEC F9) and the
    /// day's spending they count. Records written before they existed end before these fields
    /// ([`LegacyConsumerRecord`]).
    pub linked: BTreeMap<String, crate::ledger::LinkedBank>,
    pub gateway: Option<crate::ledger::GatewayRules>,
    pub gateway_spent: crate::ledger::DaySpend,
}

/// A consumer record as written before the gateway rules (2026-12-06): read as one with none.
#[derive(Deserialize)]
struct LegacyConsumerRecord {
    id: String,
    credit_limit: Amount,
    reserved: Amount,
    wallet: Amount,
    bank: String,
    bank_sealed: Option<Vec<u8>>,
    bank_clearing: Amount,
    next_placement: u64,
    open_orders: Vec<Order>,
}

/// Reads a consumer record, in its current form or the one before.
fn decode_consumer(bytes: &[u8]) -> Result<ConsumerRecord, ViewError> {
    decode::<ConsumerRecord>("consumer", bytes).or_else(|e| {
        // The old form only if it is the whole record: a newer record that failed to decode
        // must not be read as an old one with its newer fields dropped.
        use bincode::Options;
        let whole = bincode::DefaultOptions::new()
            .with_fixint_encoding()
            .reject_trailing_bytes();
        let Ok(old) = whole.deserialize::<LegacyConsumerRecord>(bytes) else {
            return Err(e);
        };
        Ok(ConsumerRecord {
            id: old.id,
            credit_limit: old.credit_limit,
            reserved: old.reserved,
            wallet: old.wallet,
            bank: old.bank,
            bank_sealed: old.bank_sealed,
            bank_clearing: old.bank_clearing,
            next_placement: old.next_placement,
            open_orders: old.open_orders,
            linked: BTreeMap::new(),
            gateway: None,
            gateway_spent: Default::default(),
        })
    })
}

impl ConsumerRecord {
    pub fn of(c: &ConsumerState) -> ConsumerRecord {
        let open_orders = c.open_orders_by_placement().into_iter().cloned().collect();
        ConsumerRecord {
            id: c.id.clone(),
            credit_limit: c.credit_limit,
            reserved: c.reserved,
            wallet: c.wallet,
            bank: c.bank.clone(),
            bank_sealed: c.bank_sealed.clone(),
            bank_clearing: c.bank_clearing,
            next_placement: c.next_placement,
            open_orders,
            linked: c.linked.clone(),
            gateway: c.gateway.as_deref().cloned(),
            gateway_spent: c.gateway_spent,
        }
    }

    /// The consumer with its open orders only: what an actor starts from.
    pub fn into_state(self) -> ConsumerState {
        let mut c = ConsumerState::new(self.id, self.credit_limit, self.bank);
        c.reserved = self.reserved;
        c.wallet = self.wallet;
        c.bank_sealed = self.bank_sealed;
        c.bank_clearing = self.bank_clearing;
        c.next_placement = self.next_placement;
        c.linked = self.linked;
        c.gateway = self.gateway.map(Box::new);
        c.gateway_spent = self.gateway_spent;
        c.orders = self
            .open_orders
            .into_iter()
            .map(|o| (o.id.clone(), Box::new(o)))
            .collect();
        c
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredOrder {
    pub consumer: String,
    pub order: Order,
}

/// [`StoredOrder`] borrowed, for writing: the same encoding without copying the order.
#[derive(Serialize)]
struct StoredOrderRef<'a> {
    consumer: &'a str,
    order: &'a Order,
}

/// [`ConsumerRecord`] borrowed, for writing: the same encoding (bincode writes a `&str` as a
/// `String` and a `Vec<&Order>` as a `Vec<Order>`) without copying the open orders, on every
/// command's path.
#[derive(Serialize)]
struct ConsumerRecordRef<'a> {
    id: &'a str,
    credit_limit: Amount,
    reserved: Amount,
    wallet: Amount,
    bank: &'a str,
    bank_sealed: &'a Option<Vec<u8>>,
    bank_clearing: Amount,
    next_placement: u64,
    open_orders: Vec<&'a Order>,
    linked: &'a BTreeMap<String, crate::ledger::LinkedBank>,
    gateway: Option<&'a crate::ledger::GatewayRules>,
    gateway_spent: crate::ledger::DaySpend,
}

/// A consumer's record as the view stores it (a [`ConsumerRecord`], encoded).
fn encoded_record(c: &ConsumerState) -> Vec<u8> {
    let open_orders = c.open_orders_by_placement();
    encode(&ConsumerRecordRef {
        id: &c.id,
        credit_limit: c.credit_limit,
        reserved: c.reserved,
        wallet: c.wallet,
        bank: &c.bank,
        bank_sealed: &c.bank_sealed,
        bank_clearing: c.bank_clearing,
        next_placement: c.next_placement,
        open_orders,
        linked: &c.linked,
        gateway: c.gateway.as_deref(),
        gateway_spent: c.gateway_spent,
    })
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRefund {
    pub consumer: String,
    pub refund: RefundRecord,
}

fn key(prefix: u8, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + id.len());
    k.push(prefix);
    k.extend_from_slice(id.as_bytes());
    k
}

/// [`key`] for a lookup: on the stack when the id is short (every id a command names is read
/// at least once per command), so a read allocates nothing.
enum LookupKey {
    Inline {
        bytes: [u8; LookupKey::INLINE],
        len: usize,
    },
    Heap(Vec<u8>),
}

impl LookupKey {
    const INLINE: usize = 64;

    fn new(prefix: u8, id: &str) -> LookupKey {
        let len = 1 + id.len();
        if len > Self::INLINE {
            return LookupKey::Heap(key(prefix, id));
        }
        let mut bytes = [0u8; Self::INLINE];
        bytes[0] = prefix;
        bytes[1..len].copy_from_slice(id.as_bytes());
        LookupKey::Inline { bytes, len }
    }
}

impl std::ops::Deref for LookupKey {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            LookupKey::Inline { bytes, len } => &bytes[..*len],
            LookupKey::Heap(k) => k,
        }
    }
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing plain data into a Vec cannot fail.
    bincode::serialize(v).unwrap_or_default()
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, ViewError> {
    bincode::deserialize(bytes).map_err(|e| ViewError::Invalid(format!("{what}: {e}")))
}

fn id_of(prefix_len: usize, k: &[u8]) -> Result<String, ViewError> {
    String::from_utf8(k[prefix_len..].to_vec())
        .map_err(|_| ViewError::Invalid(format!("key {k:?} is not text")))
}

/// The view's writes for one consumer after an entry of its own: the consumer record (with
/// its open orders), the orders the entry closed or refunded, and new refunds.
pub fn consumer_writes(c: &ConsumerState, entry: &Entry) -> Vec<ViewWrite> {
    let mut writes = vec![ViewWrite::Put(key(CONSUMER, &c.id), encoded_record(c))];
    let mut touched = BTreeSet::new();
    for ev in &entry.events {
        use EventKind::*;
        match &ev.kind {
            Refunded { refund, order, .. } => {
                if let Some(r) = c.refunds.get(refund) {
                    writes.push(ViewWrite::Put(
                        key(REFUND, refund),
                        encode(&StoredRefund {
                            consumer: c.id.clone(),
                            refund: r.clone(),
                        }),
                    ));
                }
                touched.insert(order.as_str());
            }
            OrderPlaced { order, .. }
            | OrderSettled { order, .. }
            | OrderCancelled { order, .. }
            | OrderExpired { order, .. } => {
                touched.insert(order.as_str());
            }
            BankLinked { bank, .. } => {
                writes.push(ViewWrite::Put(key(BANK, bank), c.id.as_bytes().to_vec()));
            }
            other => {
                if let Some(w) = credit_write(other) {
                    writes.push(w);
                }
            }
        }
    }
    for id in touched {
        match c.orders.get(id) {
            // Open orders travel inside the consumer record.
            Some(o) if !o.state.is_open() => writes.push(ViewWrite::Put(
                key(ORDER, id),
                encode(&StoredOrderRef {
                    consumer: &c.id,
                    order: o,
                }),
            )),
            _ => {}
        }
    }
    writes
}

/// The view's write for a credit or funding id, if the event takes one.
pub fn credit_write(kind: &EventKind) -> Option<ViewWrite> {
    CreditRecord::of(kind).map(|(id, record)| ViewWrite::Put(key(CREDIT, id), encode(&record)))
}

/// The bank-operation index: `op` is recorded in record `seq`.
pub fn bank_op_write(op: &str, seq: u64) -> ViewWrite {
    ViewWrite::Put(key(BANK_OP, op), seq.to_be_bytes().to_vec())
}

/// An account of the simulated bank as it is durable now (`bank::SimAccount`, encoded).
pub fn sim_account_write(stored_name: &str, account: Vec<u8>) -> ViewWrite {
    ViewWrite::Put(key(SIM_ACCOUNT, stored_name), account)
}

/// The view's writes for a newly opened consumer: its record and its bank account.
pub fn opened_consumer_writes(c: &ConsumerState) -> Vec<ViewWrite> {
    vec![
        ViewWrite::Put(key(CONSUMER, &c.id), encoded_record(c)),
        ViewWrite::Put(key(BANK, &c.bank), c.id.as_bytes().to_vec()),
    ]
}

/// The view's writes for changes of the authentication center: each card or reader as it now
/// is.
pub fn auth_writes(changes: &[crate::cards::AuthChange]) -> Vec<ViewWrite> {
    use crate::cards::AuthChange;
    changes
        .iter()
        .map(|c| match c {
            AuthChange::Card(card) => ViewWrite::Put(key(CARD, &card.token), encode(card)),
            AuthChange::Reader(r) => ViewWrite::Put(key(READER, &r.id), encode(r)),
        })
        .collect()
}

/// The view's write for a payment authorised at a reader.
pub fn authorisation_write(a: &crate::cards::Authorisation) -> ViewWrite {
    ViewWrite::Put(key(AUTHORISATION, &a.order_id), encode(a))
}

/// What the journal writer derives from an entry for the parts of the view it keeps itself:
/// merchants opened, merchant postings, the rules, the clock.
#[derive(Debug, Default)]
pub struct WriterDelta {
    pub at: Secs,
    pub config: Option<Box<RulesConfig>>,
    pub merchants_opened: Vec<MerchantState>,
    pub merchant_postings: Vec<(String, Amount)>,
    /// Refunds and payouts taken from merchants: each was held in the [`MerchantBook`] until
    /// now.
    pub merchant_refunds: Vec<(String, Amount)>,
    /// Postings on merchants' bank clearing accounts (payouts): clearing account, amount.
    pub merchant_clearing: Vec<(String, Amount)>,
}

impl WriterDelta {
    pub fn of(entry: &Entry) -> WriterDelta {
        let mut d = WriterDelta {
            at: entry.at,
            ..Default::default()
        };
        for ev in &entry.events {
            match &ev.kind {
                EventKind::Configured(cfg) => d.config = Some(Box::new(cfg.clone())),
                EventKind::MerchantOpened {
                    merchant,
                    bank,
                    bank_sealed,
                } => d.merchants_opened.push(MerchantState {
                    id: merchant.clone(),
                    bank: bank.clone(),
                    bank_sealed: bank_sealed.clone(),
                    balance: Amount::ZERO,
                }),
                _ => {}
            }
            // A refund, a payout and a salary (a credit from an employer) each held their
            // amount in the book while they ran.
            let refund = matches!(
                ev.kind,
                EventKind::Refunded { .. }
                    | EventKind::PayoutMade { .. }
                    | EventKind::ConsumerCredited {
                        source: crate::ledger::CreditSource::Employer { .. },
                        ..
                    }
            );
            for p in &ev.postings {
                match &p.account {
                    AccountRef::Merchant(m) => {
                        d.merchant_postings.push((m.clone(), p.amount));
                        if refund && p.amount.is_negative() {
                            d.merchant_refunds.push((m.clone(), p.amount.checked_neg()));
                        }
                    }
                    // A consumer's clearing account is in its record; any other is a
                    // merchant's or a recharge batch's (as the ledger keeps them).
                    AccountRef::BankClearing(b) if ev.is_external_clearing(p) => {
                        d.merchant_clearing.push((b.clone(), p.amount));
                    }
                    _ => {}
                }
            }
        }
        d
    }
}

/// Merchants' balances as durable, for everyone: published by the journal writer right after
/// each record's sync, from the postings it has just written. A refund holds its amount here
/// while it runs, so that two refunds cannot both spend the same balance; the writer releases
/// the hold when it publishes the refund's own posting (in the same step, so the amount is
/// never counted twice).
#[derive(Default)]
pub struct MerchantBook {
    merchants: FastDashMap<String, BookEntry>,
}

struct BookEntry {
    durable: MerchantState,
    held: Amount,
}

impl MerchantBook {
    pub fn contains(&self, id: &str) -> bool {
        self.merchants.contains_key(id)
    }

    pub fn len(&self) -> usize {
        self.merchants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.merchants.is_empty()
    }

    /// The merchant as durable (balance without the holds).
    pub fn get(&self, id: &str) -> Option<MerchantState> {
        self.merchants.get(id).map(|e| e.durable.clone())
    }

    /// The balance not held for a refund or payout in progress.
    pub fn free(&self, id: &str) -> Option<Amount> {
        self.merchants.get(id).map(|e| {
            e.durable
                .balance
                .checked_sub(e.held)
                .unwrap_or(Amount::ZERO)
        })
    }

    /// Holds `amount` for a refund if the balance not yet held covers it; `Ok(false)` if it
    /// does not.
    pub fn hold(&self, id: &str, amount: Amount) -> Result<bool, ViewError> {
        let mut e = self
            .merchants
            .get_mut(id)
            .ok_or_else(|| ViewError::Invalid(format!("no merchant {id:?}")))?;
        let free = e
            .durable
            .balance
            .checked_sub(e.held)
            .map_err(|x| ViewError::Invalid(x.to_string()))?;
        if free < amount {
            return Ok(false);
        }
        e.held = e
            .held
            .checked_add(amount)
            .map_err(|x| ViewError::Invalid(x.to_string()))?;
        Ok(true)
    }

    /// Gives back a hold whose refund did not happen.
    pub fn release(&self, id: &str, amount: Amount) {
        if let Some(mut e) = self.merchants.get_mut(id) {
            e.held = e.held.checked_sub(amount).unwrap_or(Amount::ZERO);
        }
    }

    fn publish(&self, p: &Published) {
        for m in &p.opened {
            self.merchants.insert(
                m.id.clone(),
                BookEntry {
                    durable: m.clone(),
                    held: Amount::ZERO,
                },
            );
        }
        // The holds the batch's refunds and payouts are taken back, by merchant. Each goes
        // back under the same entry lock as the balance it has now been taken from: in two
        // steps, a refund checked in between would count the amount twice (gone from the
        // balance and still held) and be refused funds the merchant has.
        let mut released: FastMap<&str, Vec<Amount>> = FastMap::default();
        for (id, amount) in &p.refunds {
            released.entry(id.as_str()).or_default().push(*amount);
        }
        for (id, balance) in &p.balances {
            if let Some(mut e) = self.merchants.get_mut(id.as_str()) {
                e.durable.balance = *balance;
                for amount in released.remove(id.as_str()).unwrap_or_default() {
                    e.held = e.held.checked_sub(amount).unwrap_or(Amount::ZERO);
                }
            }
        }
        // A hold whose merchant's balance the batch did not change (none today: a refund or
        // payout always posts on its merchant).
        for (id, amounts) in released {
            for amount in amounts {
                self.release(id, amount);
            }
        }
    }
}

/// What a written batch changes for the [`MerchantBook`], published once it is durable.
#[derive(Default)]
pub struct Published {
    /// Merchants opened by the batch, with their balances after it.
    opened: Vec<MerchantState>,
    /// The new balances of the other merchants the batch credited or debited.
    balances: Vec<(String, Amount)>,
    refunds: Vec<(String, Amount)>,
}

/// The writer's own part of the view: merchants and the meta record, kept in memory (merchants
/// are few) and written for every batch that changes them.
pub struct WriterView {
    merchants: BTreeMap<String, MerchantState>,
    /// Merchants' bank clearing accounts (payouts).
    clearing: BTreeMap<String, Amount>,
    meta: ViewMeta,
    book: Arc<MerchantBook>,
}

impl WriterView {
    /// Loads the merchants and the meta record, and fills the book with the merchants.
    pub fn load(view: &StateView, book: Arc<MerchantBook>) -> Result<WriterView, ViewError> {
        let merchants = view.merchants()?;
        book.publish(&Published {
            opened: merchants.values().cloned().collect(),
            balances: vec![],
            refunds: vec![],
        });
        Ok(WriterView {
            merchants,
            clearing: view.merchant_clearing()?,
            meta: view.meta()?.unwrap_or_default(),
            book,
        })
    }

    /// Makes a written batch's merchants visible in the book (after the record's sync).
    pub fn publish(&self, p: &Published) {
        self.book.publish(p);
    }

    /// Applies the deltas of one batch (record `seq`) and returns the writes for it. On an
    /// error nothing changes: the batch is not written.
    pub fn batch_writes<'a>(
        &mut self,
        seq: u64,
        deltas: impl Iterator<Item = &'a WriterDelta>,
    ) -> Result<(Vec<ViewWrite>, Published), ViewError> {
        // The balances the batch leaves, by merchant (borrowed from the deltas: a merchant's
        // state is not cloned for a posting), each marked if the batch opens its merchant.
        // Nothing of `self` changes until every delta has been checked.
        let mut balances: BTreeMap<&'a str, (Amount, bool)> = BTreeMap::new();
        let mut opened: Vec<&'a MerchantState> = Vec::new();
        let mut meta = self.meta.clone();
        let mut refunds = Vec::new();
        let mut clearing: BTreeMap<String, Amount> = BTreeMap::new();
        for d in deltas {
            refunds.extend(d.merchant_refunds.iter().cloned());
            for (name, amount) in &d.merchant_clearing {
                let now = match clearing.get(name) {
                    Some(a) => *a,
                    None => self.clearing.get(name).copied().unwrap_or(Amount::ZERO),
                };
                let next = now
                    .checked_add(*amount)
                    .map_err(|e| ViewError::Invalid(format!("clearing {name}: {e}")))?;
                clearing.insert(name.clone(), next);
            }
            meta.entries += 1;
            meta.clock = meta.clock.max(d.at);
            if let Some(c) = &d.config {
                meta.config = (**c).clone();
            }
            for m in &d.merchants_opened {
                balances.insert(&m.id, (m.balance, true));
                opened.push(m);
            }
            for (m, amount) in &d.merchant_postings {
                let (now, new) = match balances.get(m.as_str()) {
                    Some(b) => *b,
                    None => (
                        self.merchants
                            .get(m)
                            .ok_or_else(|| {
                                ViewError::Invalid(format!(
                                    "a posting names unknown merchant {m:?}"
                                ))
                            })?
                            .balance,
                        false,
                    ),
                };
                let next = now
                    .checked_add(*amount)
                    .map_err(|e| ViewError::Invalid(format!("merchant {m}: {e}")))?;
                balances.insert(m, (next, new));
            }
        }
        meta.last_seq = seq;
        for m in &opened {
            self.merchants.insert(m.id.clone(), (*m).clone());
        }
        let mut writes = Vec::with_capacity(balances.len() + clearing.len() + 1);
        let mut published = Published {
            opened: Vec::with_capacity(opened.len()),
            balances: Vec::with_capacity(balances.len()),
            refunds,
        };
        for (id, (balance, new)) in balances {
            let state = self
                .merchants
                .get_mut(id)
                .expect("a merchant with a balance is known or opened above");
            state.balance = balance;
            writes.push(ViewWrite::Put(key(MERCHANT, id), encode(&*state)));
            if new {
                published.opened.push(state.clone());
            } else {
                published.balances.push((id.to_string(), balance));
            }
        }
        writes.extend(
            clearing
                .iter()
                .map(|(name, amount)| ViewWrite::Put(key(MERCHANT_CLEARING, name), encode(amount))),
        );
        writes.push(ViewWrite::Put(META_KEY.to_vec(), encode(&meta)));
        self.clearing.extend(clearing);
        self.meta = meta;
        Ok((writes, published))
    }
}

/// The view's changes that are durable in the log but not yet in the checkpoint.
///
/// The journal writer adds every record's writes here right after the log's sync (so a read
/// never sees a change that is not durable) and before it answers anyone. The checkpointer
/// seals the active layer, writes it as one sorted run stamped with the last record it covers,
/// synced, and only then drops the sealed layer: a key is always in the active layer, the
/// sealed one or the checkpoint, newest first.
///
/// Behind the layers sits a cache of consumer records that are already checkpointed (see
/// [`Overlay::with_record_cache`]): activating a consumer is the hot path's one read, and a
/// read of the checkpoint (a block of a run, through the runs' filters) costs more than a hash
/// lookup.
#[derive(Default)]
pub struct Overlay {
    layers: parking_lot::RwLock<Layers>,
    /// Checkpointed consumer records, behind the layers.
    cache: RecordCache,
    /// Bytes of consumer records the cache may hold (0: no cache).
    record_cache_bytes: usize,
}

/// The writes of the records since a checkpoint, a later write of a key replacing an earlier
/// one (`None`: removed). The engine's keys are looked up one at a time, so they sit in a hash
/// map; the upper layer's records (`x`) are scanned by prefix, so they sit in key order and a
/// scan reads only its range.
#[derive(Default)]
pub struct Layer {
    hashed: FastMap<Vec<u8>, Option<Vec<u8>>>,
    ordered: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

type LayerEntry<'a> = (&'a Vec<u8>, &'a Option<Vec<u8>>);

/// The checkpoint's side of a scan.
type StoredScan<'a> = Box<dyn Iterator<Item = Result<Kv, onecard_storage::runs::RunError>> + 'a>;

fn is_ordered_key(k: &[u8]) -> bool {
    k.first() == Some(&UPPER_RECORD)
}

impl Layer {
    pub fn get(&self, k: &[u8]) -> Option<&Option<Vec<u8>>> {
        if is_ordered_key(k) {
            self.ordered.get(k)
        } else {
            self.hashed.get(k)
        }
    }

    fn set(&mut self, k: Vec<u8>, v: Option<Vec<u8>>) {
        if is_ordered_key(&k) {
            self.ordered.insert(k, v);
        } else {
            self.hashed.insert(k, v);
        }
    }

    pub fn len(&self) -> usize {
        self.hashed.len() + self.ordered.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashed.is_empty() && self.ordered.is_empty()
    }

    /// The entries under `prefix` from `start` on (inclusive), in key order for the ordered
    /// part; the hashed part is filtered whole (its prefixes are only scanned by checks).
    fn under_from<'a>(
        &'a self,
        prefix: &'a [u8],
        start: &'a [u8],
    ) -> Box<dyn Iterator<Item = LayerEntry<'a>> + 'a> {
        if is_ordered_key(prefix) {
            Box::new(
                self.ordered
                    .range::<[u8], _>((
                        std::ops::Bound::Included(start),
                        std::ops::Bound::Unbounded,
                    ))
                    .take_while(move |(k, _)| k.starts_with(prefix)),
            )
        } else {
            Box::new(
                self.hashed
                    .iter()
                    .filter(move |(k, _)| k.starts_with(prefix) && k.as_slice() >= start),
            )
        }
    }
}

#[derive(Default)]
struct Layers {
    active: Layer,
    /// The last record whose writes are in `active`.
    active_seq: u64,
    sealed: Option<(Arc<Layer>, u64)>,
}

/// Consumer records exactly as the checkpoint holds them, filled from each checkpointed layer
/// (never from reads, so a read racing a checkpoint cannot put an old value back).
///
/// In [`CACHE_SHARDS`] shards by key, each behind its own lock and apart from the layers' lock:
/// taking in a layer (and a hash table's growth, which rehashes every entry) then holds up only
/// the readers of one shard for the moment of one insert, not every reader and the log writer.
/// With one table under the layers' lock, a checkpoint stalled them for 10–130 ms a second at a
/// million consumers.
struct RecordCache {
    shards: Vec<parking_lot::Mutex<CacheShard>>,
}

const CACHE_SHARDS: usize = 64;

/// Two generations: when the newer one holds half the shard's budget it becomes the older one
/// and the older one is dropped. Bounded, O(1), and a record written in the last half-budget
/// of a shard's writes is always found.
#[derive(Default)]
struct CacheShard {
    newer: FastMap<Vec<u8>, Vec<u8>>,
    newer_bytes: usize,
    older: FastMap<Vec<u8>, Vec<u8>>,
}

/// What a cached entry costs besides its key and value: the map's slot and two `Vec` headers.
const CACHE_ENTRY_OVERHEAD: usize = 64;

/// The bytes a cached record is counted for.
fn cache_cost(k: &[u8], v: &[u8]) -> usize {
    k.len() + v.len() + CACHE_ENTRY_OVERHEAD
}

impl Default for RecordCache {
    fn default() -> Self {
        RecordCache {
            shards: (0..CACHE_SHARDS).map(|_| Default::default()).collect(),
        }
    }
}

impl RecordCache {
    fn shard(&self, k: &[u8]) -> &parking_lot::Mutex<CacheShard> {
        &self.shards[(onecard_storage::bloom::key_hash(k) % CACHE_SHARDS as u64) as usize]
    }

    /// What `read` makes of the cached bytes of `k`, read under the shard's lock.
    fn get_with<T>(&self, k: &[u8], read: impl FnOnce(&[u8]) -> T) -> Option<T> {
        let shard = self.shard(k).lock();
        shard
            .newer
            .get(k)
            .or_else(|| shard.older.get(k))
            .map(|v| read(v))
    }

    /// Takes in a record (`None`: removed) of a layer that the checkpoint now holds, within
    /// `budget` bytes for the whole cache; gives back the generation to drop (outside the lock:
    /// dropping many records takes a while).
    fn absorb(
        &self,
        k: Vec<u8>,
        v: Option<Vec<u8>>,
        budget: usize,
    ) -> Option<FastMap<Vec<u8>, Vec<u8>>> {
        let shard_budget = budget / CACHE_SHARDS;
        let mut shard = self.shard(&k).lock();
        match v {
            Some(v) => {
                shard.older.remove(&k);
                shard.newer_bytes += cache_cost(&k, &v);
                let key_len = k.len();
                if let Some(old) = shard.newer.insert(k, v) {
                    shard.newer_bytes -= key_len + old.len() + CACHE_ENTRY_OVERHEAD;
                }
                if shard.newer_bytes > shard_budget / 2 {
                    let newer = std::mem::take(&mut shard.newer);
                    shard.newer_bytes = 0;
                    return Some(std::mem::replace(&mut shard.older, newer));
                }
            }
            None => {
                if let Some(old) = shard.newer.remove(&k) {
                    shard.newer_bytes -= cache_cost(&k, &old);
                }
                shard.older.remove(&k);
            }
        }
        None
    }

    /// Records held and their bytes (with overhead).
    fn usage(&self) -> (usize, usize) {
        self.shards.iter().fold((0, 0), |(n, bytes), shard| {
            let shard = shard.lock();
            let older_bytes: usize = shard.older.iter().map(|(k, v)| cache_cost(k, v)).sum();
            (
                n + shard.newer.len() + shard.older.len(),
                bytes + shard.newer_bytes + older_bytes,
            )
        })
    }
}

/// A piece of the overlay's range for a scan: every entry before `resume` (all of them when
/// `complete`), newest layer winning.
struct OverlayChunk {
    entries: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    resume: Option<Vec<u8>>,
    complete: bool,
}

/// What a layer says about a key.
enum Found<T> {
    Value(T),
    Removed,
    NotHere,
}

impl Overlay {
    /// An overlay that also keeps up to `bytes` of checkpointed consumer records in memory.
    pub fn with_record_cache(bytes: usize) -> Overlay {
        Overlay {
            layers: Default::default(),
            cache: RecordCache::default(),
            record_cache_bytes: bytes,
        }
    }

    /// What the overlay holds for `k`, as `read` makes of its bytes. A layer's bytes are copied
    /// out of the layers' lock before `read` runs (the log writer waits for that lock); the
    /// cache's are read in place under their shard's lock.
    fn lookup<T>(&self, k: &[u8], read: impl FnOnce(&[u8]) -> T) -> Found<T> {
        let layered = {
            let layers = self.layers.read();
            let hit = layers
                .active
                .get(k)
                .or_else(|| layers.sealed.as_ref().and_then(|(sealed, _)| sealed.get(k)));
            match hit {
                None => None,
                Some(None) => return Found::Removed,
                Some(Some(v)) => Some(v.clone()),
            }
        };
        if let Some(v) = layered {
            return Found::Value(read(&v));
        }
        // Not in the layers: the cache holds what the checkpoint holds, or something newer if
        // a checkpoint was taken in since (a layer leaves the overlay only once the cache has
        // its records, see `checkpointed`), never something older.
        match self.cache.get_with(k, read) {
            Some(v) => Found::Value(v),
            None => Found::NotHere,
        }
    }

    /// Consumer records held by the cache behind the layers, and their bytes (with overhead).
    pub fn cached_records(&self) -> (usize, usize) {
        self.cache.usage()
    }

    /// Adds the writes of record `seq`, in order (a later write of a key wins).
    pub fn apply(&self, seq: u64, writes: impl IntoIterator<Item = ViewWrite>) {
        let mut layers = self.layers.write();
        for w in writes {
            match w {
                ViewWrite::Put(k, v) => layers.active.set(k, Some(v)),
                ViewWrite::Remove(k) => layers.active.set(k, None),
            };
        }
        layers.active_seq = seq;
    }

    /// Keys changed since the last checkpoint.
    pub fn len(&self) -> usize {
        let layers = self.layers.read();
        layers.active.len() + layers.sealed.as_ref().map_or(0, |(l, _)| l.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The layer to checkpoint next and the last record it covers: the sealed one if an
    /// earlier checkpoint did not finish, else the active one, sealed now. `None`: nothing
    /// changed.
    pub fn seal(&self) -> Option<(Arc<Layer>, u64)> {
        let mut layers = self.layers.write();
        if let Some(sealed) = &layers.sealed {
            return Some(sealed.clone());
        }
        if layers.active.is_empty() {
            return None;
        }
        let active = Arc::new(std::mem::take(&mut layers.active));
        layers.sealed = Some((active, layers.active_seq));
        layers.sealed.clone()
    }

    /// The sealed layer is in the checkpoint now. Its consumer records go into the cache first,
    /// one at a time under their shard's lock; the layer stays in place, in front of the cache,
    /// until the last one is in, so that a read never finds the cache's older value of a key the
    /// layer holds. Then the layer leaves.
    pub fn checkpointed(&self) {
        let sealed = self.layers.read().sealed.clone();
        if let (Some((layer, _)), budget) = (&sealed, self.record_cache_bytes) {
            if budget > 0 {
                for (k, v) in layer
                    .hashed
                    .iter()
                    .filter(|(k, _)| k.first() == Some(&CONSUMER))
                {
                    let retired = self.cache.absorb(k.clone(), v.clone(), budget);
                    drop(retired);
                }
            }
        }
        let retired = self.layers.write().sealed.take();
        drop(retired);
    }

    /// The entries under `prefix` from `start` on (inclusive), newest layer winning, in key
    /// order. For ordered keys at most `limit` keys of each layer are read, so a scan of a long
    /// range copies it piece by piece (see [`StateView::scan_from`]); `complete` says whether
    /// the range was read to its end.
    fn under_from(&self, prefix: &[u8], start: &[u8], limit: usize) -> OverlayChunk {
        let layers = self.layers.read();
        let mut entries = BTreeMap::new();
        let mut complete = true;
        let mut upto: Option<Vec<u8>> = None;
        let layer_list = layers
            .sealed
            .as_ref()
            .map(|(sealed, _)| sealed.as_ref())
            .into_iter()
            .chain(std::iter::once(&layers.active));
        for layer in layer_list {
            for (taken, (k, v)) in layer.under_from(prefix, start).enumerate() {
                if is_ordered_key(prefix) && taken == limit {
                    // This layer goes on past `k`: only keys before it are known to be whole.
                    complete = false;
                    if upto.as_ref().is_none_or(|u| k < u) {
                        upto = Some(k.clone());
                    }
                    break;
                }
                entries.insert(k.clone(), v.clone());
            }
        }
        if let Some(u) = &upto {
            entries.retain(|k, _| k < u);
        }
        OverlayChunk {
            entries,
            resume: upto,
            complete,
        }
    }
}

/// Writes one layer as one new sorted run of the checkpoint, in key order, removals included,
/// durable when this returns. The run is committed whole or not at all (see
/// [`onecard_storage::runs`]); a crash before leaves the old stamp, and the next opening replays
/// the log's tail from it. Nothing is read: the cost is the layer's size, not the store's.
pub fn write_checkpoint(runs: &RunStore, layer: &Layer) -> Result<(), ViewError> {
    // Only the hashed keys need sorting: the upper layer's records are in key order already, and
    // they all start with UPPER_RECORD, so they go whole between the hashed keys below that byte
    // and those above it.
    let mut hashed: Vec<LayerEntry> = layer.hashed.iter().collect();
    hashed.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let below = hashed.partition_point(|(k, _)| k.first() < Some(&UPPER_RECORD));
    let n = hashed.len() + layer.ordered.len();
    let (low, high) = hashed.split_at(below);
    runs.write_run(
        low.iter()
            .copied()
            .chain(layer.ordered.iter())
            .chain(high.iter().copied())
            .map(|(k, v)| (k.as_slice(), v.as_deref())),
        n,
    )?;
    Ok(())
}

/// Reads of the view: the overlay of changes not yet checkpointed, then the checkpoint's runs.
/// Cheap to clone;
/// reads see every write of a record once the record is durable, which is before anyone is
/// answered for it.
#[derive(Clone)]
pub struct StateView {
    runs: Arc<RunStore>,
    overlay: Arc<Overlay>,
    ids: Arc<IdFilter>,
    failure: Arc<ViewFailure>,
}

/// Whether an id may be a closed order or a refund: a Bloom filter over their view keys, so
/// that a new id (nearly every place and refund) is answered from memory instead of a store
/// read that finds nothing. False positives only cost that read; there are no false
/// negatives once the filter is ready: every key the writer adds is inserted before the
/// record is acknowledged, and the stored ones by [`StateView::fill_id_filter`] at opening
/// (in the background: until it is done, the filter answers "maybe").
pub struct IdFilter {
    bloom: onecard_storage::bloom::Bloom,
    ready: std::sync::atomic::AtomicBool,
    /// View keys of the layer above's records the filter covers too (each starting with
    /// [`UPPER_RECORD`]).
    upper_prefixes: Vec<Vec<u8>>,
}

impl IdFilter {
    /// A filter for about `capacity` ids at 16 bits each, 6 probes: about 1 % false positives
    /// (beyond `capacity` they grow, never the misses). It covers closed orders, refunds, and
    /// the layer above's records under `record_prefixes` (their keys as that layer names them).
    pub fn with_capacity(capacity: usize, record_prefixes: &[Vec<u8>]) -> IdFilter {
        IdFilter {
            bloom: onecard_storage::bloom::Bloom::new(capacity.max(1024), 16, 6),
            ready: Default::default(),
            upper_prefixes: record_prefixes
                .iter()
                .map(|p| [&[UPPER_RECORD][..], p].concat())
                .collect(),
        }
    }

    pub fn insert(&self, k: &[u8]) {
        self.bloom.insert(k);
    }

    /// `true` only when the key was never inserted (and the filter is ready).
    pub fn surely_absent(&self, k: &[u8]) -> bool {
        self.ready.load(std::sync::atomic::Ordering::Acquire) && !self.bloom.may_contain(k)
    }

    pub fn set_ready(&self) {
        self.ready.store(true, std::sync::atomic::Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether a view key is one the filter covers.
    pub fn covers(&self, k: &[u8]) -> bool {
        match k.first() {
            Some(&ORDER) | Some(&REFUND) => true,
            Some(&UPPER_RECORD) => self.upper_prefixes.iter().any(|p| k.starts_with(p)),
            _ => false,
        }
    }
}

type Kv = (Vec<u8>, Vec<u8>);

/// Keys of the overlay copied per piece of a scan.
const SCAN_CHUNK: usize = 256;

/// A scan of the view: the overlay's entries (a piece at a time) merged over the checkpoint's,
/// the overlay winning on equal keys and its removals hiding the checkpoint's keys.
struct MergedScan<'a> {
    view: &'a StateView,
    prefix: Vec<u8>,
    changed: std::iter::Peekable<std::collections::btree_map::IntoIter<Vec<u8>, Option<Vec<u8>>>>,
    /// Where the overlay's next piece starts, while there may be one.
    resume: Option<Vec<u8>>,
    /// The checkpoint's side, from `stored_from` on: a snapshot of its runs, taken after each
    /// piece of the overlay is read if a checkpoint has written a run since the last one. A key
    /// leaves the overlay only once its run is in the store, so a key missing from a piece is
    /// in the runs read after it: a checkpoint running beside the scan loses nothing.
    stored: Option<std::iter::Peekable<StoredScan<'a>>>,
    stored_generation: u64,
    /// The first key the checkpoint's side has not been read past.
    stored_from: Vec<u8>,
}

impl<'a> MergedScan<'a> {
    fn refresh_stored(&mut self) {
        let generation = self.view.runs.generation();
        if self.stored.is_some() && generation == self.stored_generation {
            return;
        }
        let prefix = self.prefix.clone();
        let stored: StoredScan<'a> = Box::new(
            self.view
                .runs
                .scan_from(&self.stored_from)
                .take_while(move |r| r.as_ref().map_or(true, |(k, _)| k.starts_with(&prefix))),
        );
        self.stored = Some(stored.peekable());
        self.stored_generation = generation;
    }

    /// The checkpoint's side has been read past `k`.
    fn stored_past(&mut self, k: &[u8]) {
        self.stored_from.clear();
        self.stored_from.extend_from_slice(k);
        self.stored_from.push(0);
    }
}

impl Iterator for MergedScan<'_> {
    type Item = Result<Kv, ViewError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.changed.peek().is_none() {
                if let Some(from) = self.resume.take() {
                    let chunk = self
                        .view
                        .overlay
                        .under_from(&self.prefix, &from, SCAN_CHUNK);
                    self.resume = if chunk.complete { None } else { chunk.resume };
                    self.changed = chunk.entries.into_iter().peekable();
                    self.refresh_stored();
                }
            }
            let stored = self.stored.as_mut()?;
            let next_stored = match stored.peek() {
                None => None,
                Some(Ok((k, _))) => Some(k.clone()),
                Some(Err(_)) => {
                    let e = stored.next().and_then(|r| r.err())?;
                    return Some(Err(self.view.failure.note("a scan of the view", e.into())));
                }
            };
            let take_changed = match (self.changed.peek(), &next_stored) {
                (None, None) => return None,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some((ck, _)), Some(sk)) => ck.as_slice() <= sk.as_slice(),
            };
            if take_changed {
                let (k, v) = self.changed.next()?;
                if next_stored.as_deref() == Some(k.as_slice()) {
                    stored.next();
                }
                self.stored_past(&k);
                match v {
                    Some(v) => return Some(Ok((k, v))),
                    None => continue,
                }
            }
            let (k, v) = stored.next()?.ok()?;
            self.stored_past(&k);
            return Some(Ok((k, v)));
        }
    }
}

impl StateView {
    /// A view whose id filter is never ready (every id is looked up): for checks and tools.
    pub fn new(runs: Arc<RunStore>, overlay: Arc<Overlay>) -> StateView {
        StateView::with_filter(runs, overlay, Arc::new(IdFilter::with_capacity(0, &[])))
    }

    pub fn with_filter(
        runs: Arc<RunStore>,
        overlay: Arc<Overlay>,
        ids: Arc<IdFilter>,
    ) -> StateView {
        StateView {
            runs,
            overlay,
            ids,
            failure: Arc::default(),
        }
    }

    /// Where a storage failure met by a read is recorded: the journal shares it with its
    /// writer and its checkpointer.
    pub fn failure(&self) -> &Arc<ViewFailure> {
        &self.failure
    }

    pub fn overlay(&self) -> &Arc<Overlay> {
        &self.overlay
    }

    pub(crate) fn get_raw(&self, k: &[u8]) -> Result<Option<Vec<u8>>, ViewError> {
        self.get_read(k, |v| Ok(v.to_vec()))
    }

    /// What `read` makes of the bytes the view holds for `k`: without copying them first
    /// where they sit in memory.
    fn get_read<T>(
        &self,
        k: &[u8],
        read: impl Fn(&[u8]) -> Result<T, ViewError>,
    ) -> Result<Option<T>, ViewError> {
        match self.overlay.lookup(k, &read) {
            Found::Value(v) => v.map(Some),
            Found::Removed => Ok(None),
            Found::NotHere => match self.runs.get(k) {
                Ok(v) => v.map(|v| read(&v)).transpose(),
                Err(e) => Err(self.failure.note("a read of the view", e.into())),
            },
        }
    }

    /// Every key under `prefix` in key order, the overlay merged over the checkpoint.
    fn scan(&self, prefix: &[u8]) -> impl Iterator<Item = Result<Kv, ViewError>> + '_ {
        self.scan_from(prefix.to_vec(), prefix.to_vec())
    }

    /// Every key under `prefix` from `start` on (inclusive), in key order, the overlay merged
    /// over the checkpoint. The overlay's range is copied a piece at a time, so taking a few keys of a
    /// long range costs a few keys. Not a snapshot: a key written during the scan may or may
    /// not be seen.
    pub(crate) fn scan_from(
        &self,
        prefix: Vec<u8>,
        start: Vec<u8>,
    ) -> impl Iterator<Item = Result<Kv, ViewError>> + '_ {
        MergedScan {
            view: self,
            prefix,
            changed: BTreeMap::new().into_iter().peekable(),
            stored_from: start.clone(),
            resume: Some(start),
            stored: None,
            stored_generation: 0,
        }
    }

    fn get<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        k: &[u8],
    ) -> Result<Option<T>, ViewError> {
        self.get_read(k, |v| decode(what, v))
    }

    /// Every key under `prefix` with its value, the overlay merged over the checkpoint (for verify).
    pub fn entries_under<'a>(
        &'a self,
        prefix: &'a [u8],
    ) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), ViewError>> + 'a {
        self.scan(prefix)
    }

    /// The keys that are not the ledger's: written by records but not derived from the
    /// entries (the simulated bank's accounts, the bank-operation index). `verify` rebuilds
    /// them from the log's writes and compares.
    pub const NON_LEDGER_PREFIXES: [u8; 2] = [SIM_ACCOUNT, BANK_OP];

    /// The simulated bank's accounts: stored name and encoded account.
    pub fn sim_accounts(&self) -> impl Iterator<Item = Result<(String, Vec<u8>), ViewError>> + '_ {
        self.scan(&[SIM_ACCOUNT])
            .map(|kv| kv.and_then(|(k, v)| Ok((id_of(1, &k)?, v))))
    }

    /// Whether a bank operation is recorded in a durable entry (the bank-operation index).
    pub fn has_bank_op(&self, op: &str) -> Result<bool, ViewError> {
        Ok(self.get_raw(&key(BANK_OP, op))?.is_some())
    }

    /// The checkpoint's stamp: the last record it covers and that record's hash.
    pub fn checkpoint_stamp(&self) -> Result<Option<(u64, [u8; 32])>, ViewError> {
        match self.runs.get(STAMP_KEY)? {
            None => Ok(None),
            Some(v) if v.len() == 40 => {
                let mut seq = [0u8; 8];
                seq.copy_from_slice(&v[..8]);
                let mut hash = [0u8; 32];
                hash.copy_from_slice(&v[8..]);
                Ok(Some((u64::from_be_bytes(seq), hash)))
            }
            Some(v) => Err(ViewError::Invalid(format!(
                "the checkpoint's stamp has {} bytes",
                v.len()
            ))),
        }
    }

    /// The id of the store this view belongs to (set when the store was created).
    pub fn store_id(&self) -> Result<Option<[u8; 16]>, ViewError> {
        match self.runs.get(STORE_ID_KEY)? {
            None => Ok(None),
            Some(v) => <[u8; 16]>::try_from(v.as_slice())
                .map(Some)
                .map_err(|_| ViewError::Invalid(format!("store id has {} bytes", v.len()))),
        }
    }

    /// Records the store's id; done once, when the store is created, and flushed at once.
    pub fn set_store_id(&self, id: [u8; 16]) -> Result<(), ViewError> {
        self.runs.write_run([(STORE_ID_KEY, Some(&id[..]))], 1)?;
        Ok(())
    }

    pub fn meta(&self) -> Result<Option<ViewMeta>, ViewError> {
        self.get("meta", META_KEY)
    }

    pub fn has_consumer(&self, id: &str) -> Result<bool, ViewError> {
        Ok(self.get_raw(&key(CONSUMER, id))?.is_some())
    }

    /// The consumer with its open orders: what its actor starts from.
    pub fn consumer_record(&self, id: &str) -> Result<Option<ConsumerRecord>, ViewError> {
        self.get_read(&LookupKey::new(CONSUMER, id), decode_consumer)
    }

    /// The consumer with its open orders; closed orders are read one by one with
    /// [`StateView::closed_order`].
    pub fn consumer(&self, id: &str) -> Result<Option<ConsumerState>, ViewError> {
        Ok(self.consumer_record(id)?.map(ConsumerRecord::into_state))
    }

    /// A closed order (settled, cancelled, expired or refused).
    pub fn closed_order(&self, id: &str) -> Result<Option<StoredOrder>, ViewError> {
        let k = LookupKey::new(ORDER, id);
        if self.ids.surely_absent(&k) {
            return Ok(None);
        }
        self.get("order", &k)
    }

    /// What a credit or funding id was first used for, if it was.
    pub fn credit(&self, id: &str) -> Result<Option<CreditRecord>, ViewError> {
        let k = LookupKey::new(CREDIT, id);
        self.get("credit", &k)
    }

    pub fn refund(&self, id: &str) -> Result<Option<StoredRefund>, ViewError> {
        let k = LookupKey::new(REFUND, id);
        if self.ids.surely_absent(&k) {
            return Ok(None);
        }
        self.get("refund", &k)
    }

    /// The filter of closed order and refund ids.
    pub fn ids(&self) -> &Arc<IdFilter> {
        &self.ids
    }

    /// Fills the id filter from the stored keys (a keys-only pass over closed orders and
    /// refunds) and marks it ready. Until then every id is a "maybe" and is looked up.
    /// Gives up (leaving the filter not ready) once `stop` is set.
    pub fn fill_id_filter(&self, stop: &std::sync::atomic::AtomicBool) -> Result<(), ViewError> {
        let prefixes = [vec![ORDER], vec![REFUND]]
            .into_iter()
            .chain(self.ids.upper_prefixes.iter().cloned());
        for prefix in prefixes {
            let keys = self
                .runs
                .scan_from(&prefix)
                .take_while(|r| r.as_ref().map_or(true, |(k, _)| k.starts_with(&prefix)));
            for (n, kv) in keys.enumerate() {
                if n % 4096 == 0 && stop.load(std::sync::atomic::Ordering::Relaxed) {
                    return Ok(());
                }
                self.ids.insert(&kv?.0);
            }
        }
        self.ids.set_ready();
        Ok(())
    }

    /// The consumer a bank account is designated for.
    pub fn bank_owner(&self, bank: &str) -> Result<Option<String>, ViewError> {
        match self.get_raw(&key(BANK, bank))? {
            None => Ok(None),
            Some(v) => Ok(Some(id_of(0, &v)?)),
        }
    }

    pub fn merchant(&self, id: &str) -> Result<Option<MerchantState>, ViewError> {
        self.get("merchant", &key(MERCHANT, id))
    }

    /// Merchants' bank clearing accounts (payouts): what the ledger paid out to each.
    pub fn merchant_clearing(&self) -> Result<BTreeMap<String, Amount>, ViewError> {
        let mut out = BTreeMap::new();
        for kv in self.scan(&[MERCHANT_CLEARING]) {
            let (k, v) = kv?;
            out.insert(id_of(1, &k)?, decode("merchant clearing", &v)?);
        }
        Ok(out)
    }

    pub fn merchants(&self) -> Result<BTreeMap<String, MerchantState>, ViewError> {
        let mut out = BTreeMap::new();
        for kv in self.scan(&[MERCHANT]) {
            let (k, v) = kv?;
            out.insert(id_of(1, &k)?, decode("merchant", &v)?);
        }
        Ok(out)
    }

    /// The authentication center's durable state: every card, then every reader.
    pub fn auth_state(
        &self,
        config: crate::cards::AuthConfig,
    ) -> Result<crate::cards::AuthState, ViewError> {
        use crate::cards::{AuthChange, AuthState};
        let mut state = AuthState::new(config);
        for kv in self.scan(&[CARD]) {
            let (_, v) = kv?;
            state.apply(&AuthChange::Card(decode("card", &v)?));
        }
        for kv in self.scan(&[READER]) {
            let (_, v) = kv?;
            state.apply(&AuthChange::Reader(decode("reader", &v)?));
        }
        Ok(state)
    }

    /// The authorisation of the payment for `order`, if one was given at a reader.
    pub fn authorisation(
        &self,
        order: &str,
    ) -> Result<Option<crate::cards::Authorisation>, ViewError> {
        self.get("authorisation", &key(AUTHORISATION, order))
    }

    /// Every consumer record, in id order.
    pub fn consumer_records(&self) -> impl Iterator<Item = Result<ConsumerRecord, ViewError>> + '_ {
        self.scan(&[CONSUMER]).map(|kv| {
            let (_, v) = kv?;
            decode_consumer(&v)
        })
    }

    /// The whole ledger as the view holds it, one [`LedgerItem`] at a time, without building
    /// it: the items [`LedgerState::visit`] visits of a replay, in another order (consumers
    /// with their open orders, then closed orders, refunds, merchants, credits). Memory is one
    /// record at a time, so a reader can summarise a million consumers' state beside the
    /// running engine. Returns the ledger's clock. Not the hot path.
    pub fn visit_ledger(&self, mut f: impl FnMut(LedgerItem<'_>)) -> Result<Secs, ViewError> {
        let meta = self.meta()?.unwrap_or_default();
        for rec in self.consumer_records() {
            let c = rec?.into_state();
            f(LedgerItem::Consumer(&c));
            for order in c.orders.values() {
                f(LedgerItem::Order {
                    consumer: &c.id,
                    order,
                });
            }
        }
        for kv in self.scan(&[ORDER]) {
            let (_, v) = kv?;
            let s: StoredOrder = decode("order", &v)?;
            f(LedgerItem::Order {
                consumer: &s.consumer,
                order: &s.order,
            });
        }
        for kv in self.scan(&[REFUND]) {
            let (k, v) = kv?;
            let id = id_of(1, &k)?;
            let s: StoredRefund = decode("refund", &v)?;
            f(LedgerItem::Refund {
                consumer: &s.consumer,
                id: &id,
                refund: &s.refund,
            });
        }
        for kv in self.scan(&[MERCHANT]) {
            let (k, v) = kv?;
            let merchant: MerchantState = decode("merchant", &v)?;
            f(LedgerItem::Merchant {
                id: &id_of(1, &k)?,
                merchant: &merchant,
            });
        }
        for kv in self.scan(&[CREDIT]) {
            let (k, v) = kv?;
            let record: CreditRecord = decode("credit", &v)?;
            f(LedgerItem::Credit {
                id: &id_of(1, &k)?,
                record: &record,
            });
        }
        Ok(meta.clock)
    }

    /// The whole ledger as the view holds it, built the way a replay builds it, and checked
    /// for consistency on the way: every order, refund and bank key belongs to a consumer,
    /// open orders are only inside consumer records, closed ones only outside. For `verify`,
    /// tests and end-of-run checks, not the hot path.
    /// Compares the view with a ledger (the replay of the whole log) without building the
    /// view's own copy: one pass over each kind of key, each compared with its counterpart in
    /// `ledger`, then the counts. `Ok(Err(what))` names the first difference. Memory: the
    /// ledger given, and one record at a time.
    pub fn differs_from(&self, ledger: &LedgerState) -> Result<Result<(), String>, ViewError> {
        let meta = self.meta()?.unwrap_or_default();
        if meta.config != ledger.config
            || meta.clock != ledger.clock
            || meta.entries != ledger.entries
        {
            return Ok(Err(format!(
                "the rules, the clock or the entry count (view: clock {}, {} entries; replay: clock {}, {} entries)",
                meta.clock, meta.entries, ledger.clock, ledger.entries
            )));
        }
        if self.merchant_clearing()? != ledger.merchant_clearing {
            return Ok(Err(
                "the clearing accounts of merchants' bank accounts".into()
            ));
        }
        let (mut consumers, mut orders, mut refunds, mut banks) = (0usize, 0usize, 0usize, 0usize);
        for rec in self.consumer_records() {
            let rec = rec?;
            consumers += 1;
            let Some(c) = ledger.consumers.get(&rec.id) else {
                return Ok(Err(format!(
                    "it holds consumer {}, whom the journal never opened",
                    rec.id
                )));
            };
            let id = rec.id.clone();
            let open = rec.open_orders.len();
            let mine = rec.into_state();
            if (
                mine.credit_limit,
                mine.reserved,
                mine.wallet,
                &mine.bank,
                &mine.bank_sealed,
                mine.bank_clearing,
                mine.next_placement,
                &mine.linked,
                &mine.gateway,
                mine.gateway_spent,
            ) != (
                c.credit_limit,
                c.reserved,
                c.wallet,
                &c.bank,
                &c.bank_sealed,
                c.bank_clearing,
                c.next_placement,
                &c.linked,
                &c.gateway,
                c.gateway_spent,
            ) {
                return Ok(Err(format!("consumer {id}")));
            }
            for (oid, o) in &mine.orders {
                if !o.state.is_open() {
                    return Ok(Err(format!(
                        "consumer {id} holds closed order {oid} inline"
                    )));
                }
                if c.orders.get(oid) != Some(o) {
                    return Ok(Err(format!("consumer {id}, order {oid}")));
                }
            }
            if c.orders.values().filter(|o| o.state.is_open()).count() != open {
                return Ok(Err(format!("consumer {id}: its open orders")));
            }
        }
        for kv in self.scan(&[ORDER]) {
            let (k, v) = kv?;
            let id = id_of(1, &k)?;
            let stored: StoredOrder = decode("order", &v)?;
            orders += 1;
            if stored.order.id != id || stored.order.state.is_open() {
                return Ok(Err(format!(
                    "order record {id} holds order {} ({})",
                    stored.order.id,
                    stored.order.state.as_str()
                )));
            }
            match ledger
                .consumers
                .get(&stored.consumer)
                .and_then(|c| c.orders.get(&id))
            {
                Some(o) if **o == stored.order => {}
                _ => return Ok(Err(format!("consumer {}, order {id}", stored.consumer))),
            }
        }
        let replayed_closed: usize = ledger
            .consumers
            .values()
            .map(|c| c.orders.values().filter(|o| !o.state.is_open()).count())
            .sum();
        if orders != replayed_closed {
            // Rare (damage): name the first closed order the view lacks.
            for c in ledger.consumers.values() {
                for o in c.orders.values().filter(|o| !o.state.is_open()) {
                    if self.get_raw(&key(ORDER, &o.id))?.is_none() {
                        return Ok(Err(format!("consumer {}, order {} is missing", c.id, o.id)));
                    }
                }
            }
            return Ok(Err(format!(
                "it holds {orders} closed orders, the replay {replayed_closed}"
            )));
        }
        for kv in self.scan(&[REFUND]) {
            let (k, v) = kv?;
            let id = id_of(1, &k)?;
            let stored: StoredRefund = decode("refund", &v)?;
            refunds += 1;
            match ledger
                .consumers
                .get(&stored.consumer)
                .and_then(|c| c.refunds.get(&id))
            {
                Some(r) if *r == stored.refund => {}
                _ => return Ok(Err(format!("consumer {}, refund {id}", stored.consumer))),
            }
        }
        let replayed_refunds: usize = ledger.consumers.values().map(|c| c.refunds.len()).sum();
        if refunds != replayed_refunds {
            return Ok(Err(format!(
                "it holds {refunds} refunds, the replay {replayed_refunds}"
            )));
        }
        for kv in self.scan(&[BANK]) {
            let (k, v) = kv?;
            banks += 1;
            let (bank, owner) = (id_of(1, &k)?, id_of(0, &v)?);
            if ledger.bank_owner.get(&bank) != Some(&owner) {
                return Ok(Err(format!("bank account {bank} designated for {owner}")));
            }
        }
        if consumers != ledger.consumers.len() {
            for id in ledger.consumers.keys() {
                if self.get_raw(&key(CONSUMER, id))?.is_none() {
                    return Ok(Err(format!("consumer {id} is missing")));
                }
            }
        }
        if consumers != ledger.consumers.len() || banks != ledger.bank_owner.len() {
            return Ok(Err(format!(
                "it holds {consumers} consumers and {banks} bank designations, the replay {} and {}",
                ledger.consumers.len(),
                ledger.bank_owner.len()
            )));
        }
        let mut credits = 0;
        for kv in self.scan(&[CREDIT]) {
            let (k, v) = kv?;
            let id = id_of(1, &k)?;
            let stored: CreditRecord = decode("credit", &v)?;
            credits += 1;
            if ledger.credits.get(&id) != Some(&stored) {
                return Ok(Err(format!("credit {id}")));
            }
        }
        if credits != ledger.credits.len() {
            return Ok(Err(format!(
                "it holds {credits} credits and fundings, the replay {}",
                ledger.credits.len()
            )));
        }
        let merchants = self.merchants()?;
        if merchants != ledger.merchants {
            let which = ledger
                .merchants
                .iter()
                .find(|(id, m)| merchants.get(*id) != Some(m))
                .map(|(id, _)| format!("merchant {id}"))
                .unwrap_or_else(|| "it holds merchants the journal never opened".into());
            return Ok(Err(which));
        }
        if self.auth_state(meta.config.auth.clone())? != ledger.auth {
            return Ok(Err("the cards and readers".into()));
        }
        let mut authorisations = 0;
        for kv in self.scan(&[AUTHORISATION]) {
            let (_, v) = kv?;
            let a: crate::cards::Authorisation = decode("authorisation", &v)?;
            authorisations += 1;
            if ledger.authorisations.get(&a.order_id) != Some(&a) {
                return Ok(Err(format!("the authorisation of order {}", a.order_id)));
            }
        }
        if authorisations != ledger.authorisations.len() {
            return Ok(Err("the authorisations".into()));
        }
        Ok(Ok(()))
    }

    pub fn ledger(&self) -> Result<LedgerState, ViewError> {
        let bad = ViewError::Invalid;
        let meta = self.meta()?.unwrap_or_default();
        let mut state = LedgerState::new(meta.config.clone());
        state.clock = meta.clock;
        state.entries = meta.entries;
        for rec in self.consumer_records() {
            let c = rec?.into_state();
            if let Some(o) = c.orders.values().find(|o| !o.state.is_open()) {
                return Err(bad(format!("{} holds closed order {} inline", c.id, o.id)));
            }
            state.bank_owner.insert(c.bank.clone(), c.id.clone());
            for bank in c.linked.keys() {
                state.bank_owner.insert(bank.clone(), c.id.clone());
            }
            state.consumers.insert(c.id.clone(), Box::new(c));
        }
        for kv in self.scan(&[ORDER]) {
            let (k, v) = kv?;
            let id = id_of(1, &k)?;
            let s: StoredOrder = decode("order", &v)?;
            let c = state
                .consumers
                .get_mut(&s.consumer)
                .ok_or_else(|| bad(format!("order {id} of unknown consumer {}", s.consumer)))?;
            if s.order.state.is_open() {
                return Err(bad(format!("order record {id} holds an open order")));
            }
            if s.order.id != id {
                return Err(bad(format!("order record {id} holds order {}", s.order.id)));
            }
            if c.orders.insert(id.clone(), Box::new(s.order)).is_some() {
                return Err(bad(format!("order {id} is both open and closed")));
            }
        }
        for c in state.consumers.values() {
            for o in c.orders.keys() {
                if !state.order_ids.insert(o)
                    && state
                        .consumers
                        .values()
                        .filter(|c| c.orders.contains_key(o))
                        .count()
                        > 1
                {
                    return Err(bad(format!("order {o} is held by two consumers")));
                }
            }
        }
        for kv in self.scan(&[REFUND]) {
            let (k, v) = kv?;
            let id = id_of(1, &k)?;
            let s: StoredRefund = decode("refund", &v)?;
            let c = state
                .consumers
                .get_mut(&s.consumer)
                .ok_or_else(|| bad(format!("refund {id} of unknown consumer {}", s.consumer)))?;
            state.refund_ids.insert(&id);
            c.refunds.insert(id, s.refund);
        }
        let mut banks = 0;
        for kv in self.scan(&[BANK]) {
            let (k, v) = kv?;
            let bank = id_of(1, &k)?;
            let owner = id_of(0, &v)?;
            if state.bank_owner.get(&bank) != Some(&owner) {
                return Err(bad(format!(
                    "bank account {bank} designated for {owner}, who does not hold it"
                )));
            }
            banks += 1;
        }
        if banks != state.bank_owner.len() {
            return Err(bad("a consumer's bank account has no bank key".into()));
        }
        for kv in self.scan(&[CREDIT]) {
            let (k, v) = kv?;
            state.credits.insert(id_of(1, &k)?, decode("credit", &v)?);
        }
        state.merchants = self.merchants()?;
        state.merchant_clearing = self.merchant_clearing()?;
        state.auth = self.auth_state(meta.config.auth.clone())?;
        for kv in self.scan(&[AUTHORISATION]) {
            let (k, v) = kv?;
            let a: crate::cards::Authorisation = decode("authorisation", &v)?;
            if a.order_id != id_of(1, &k)? {
                return Err(bad(format!(
                    "authorisation under {k:?} is for {}",
                    a.order_id
                )));
            }
            state.authorisations.insert(a.order_id.clone(), a);
        }
        Ok(state)
    }
}

impl ViewWrite {
    pub fn key(&self) -> &[u8] {
        match self {
            ViewWrite::Put(k, _) | ViewWrite::Remove(k) => k,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refund that checks a merchant's free balance while the writer publishes another
    /// refund of that merchant sees that refund's amount once: either still held (before) or
    /// gone from the balance (after), never both. Counted twice it would refuse a refund the
    /// merchant can pay (a simulator run met this: "holds 3.84, less than the 3.84 asked for").
    #[test]
    fn a_refund_being_published_is_never_counted_twice() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let cents = Amount::from_cents;
        let book = Arc::new(MerchantBook::default());
        book.publish(&Published {
            opened: vec![MerchantState {
                id: "m1".into(),
                bank: None,
                bank_sealed: None,
                balance: cents(1000),
            }],
            balances: vec![],
            refunds: vec![],
        });
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (book, stop) = (book.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut seen = std::collections::BTreeSet::new();
                while !stop.load(Ordering::Relaxed) {
                    seen.insert(book.free("m1").expect("m1 is open"));
                }
                seen
            })
        };
        for _ in 0..100_000 {
            // A refund of 3.00 holds its amount, is written, and is published: the balance
            // loses it and the hold goes. Then a settlement credits the merchant 3.00 again.
            assert!(book.hold("m1", cents(300)).unwrap());
            book.publish(&Published {
                opened: vec![],
                balances: vec![("m1".into(), cents(700))],
                refunds: vec![("m1".into(), cents(300))],
            });
            book.publish(&Published {
                opened: vec![],
                balances: vec![("m1".into(), cents(1000))],
                refunds: vec![],
            });
        }
        stop.store(true, Ordering::Relaxed);
        let seen = reader.join().unwrap();
        assert!(
            seen.iter().all(|f| *f == cents(700) || *f == cents(1000)),
            "free balances seen: {seen:?}"
        );
    }

    /// The borrowed forms written on the command path encode exactly as the owned forms read
    /// back (a record written by one is read by the other).
    #[test]
    fn borrowed_records_encode_as_the_owned_ones() {
        let mut c = ConsumerState::new("c1".into(), Amount::parse("500.00").unwrap(), "b1".into());
        c.bank_sealed = Some(vec![1, 2, 3]);
        for (i, state) in [
            crate::model::OrderState::Pending,
            crate::model::OrderState::Settled,
            crate::model::OrderState::AwaitingFunds,
        ]
        .into_iter()
        .enumerate()
        {
            let id = format!("o{i}");
            c.orders.insert(
                id.clone(),
                Box::new(Order {
                    id,
                    merchant: "shop".into(),
                    amount: Amount::parse("12.34").unwrap(),
                    release: crate::model::Release::Code("x1".into()),
                    placed_at: 7,
                    placement: 3 - i as u64,
                    state,
                    reserved: true,
                    code_attempts: 1,
                    refunded: Amount::ZERO,
                    first_result: Ok(crate::model::Outcome::Accepted),
                }),
            );
        }
        assert_eq!(encoded_record(&c), encode(&ConsumerRecord::of(&c)));
        let o = &c.orders["o1"];
        assert_eq!(
            encode(&StoredOrderRef {
                consumer: &c.id,
                order: o
            }),
            encode(&StoredOrder {
                consumer: c.id.clone(),
                order: Order::clone(o)
            })
        );
    }

    /// A consumer record written before the gateway rules existed reads as one without rules;
    /// a current one with rules reads back whole (never as an old one with its rules dropped).
    #[test]
    fn consumer_records_of_the_form_before_the_gateway_rules_still_read() {
        #[derive(Serialize)]
        struct Before<'a> {
            id: &'a str,
            credit_limit: Amount,
            reserved: Amount,
            wallet: Amount,
            bank: &'a str,
            bank_sealed: Option<Vec<u8>>,
            bank_clearing: Amount,
            next_placement: u64,
            open_orders: Vec<Order>,
        }
        let old = encode(&Before {
            id: "c1",
            credit_limit: Amount::from_cents(50_000),
            reserved: Amount::ZERO,
            wallet: Amount::from_cents(100),
            bank: "b1",
            bank_sealed: None,
            bank_clearing: Amount::ZERO,
            next_placement: 4,
            open_orders: vec![],
        });
        let read = decode_consumer(&old).unwrap();
        assert_eq!((read.id.as_str(), read.next_placement), ("c1", 4));
        assert_eq!(read.gateway, None);
        let mut c = read.into_state();
        c.gateway = Some(Box::new(crate::ledger::GatewayRules {
            max_per_day: Some(Amount::from_cents(100)),
            ..Default::default()
        }));
        c.gateway_spent = crate::ledger::DaySpend {
            day: 20_000,
            amount: Amount::from_cents(7),
        };
        let back = decode_consumer(&encoded_record(&c)).unwrap().into_state();
        assert_eq!(back, c);
        // Damaged: neither form.
        assert!(decode_consumer(&old[..old.len() - 1]).is_err());
    }

    /// A run store of its own in `dir`.
    fn test_runs(dir: &std::path::Path) -> Arc<RunStore> {
        let db = sled::open(dir.join("catalogue")).unwrap();
        Arc::new(RunStore::open(db, &dir.join("runs")).unwrap())
    }

    /// A checkpoint hands the run its keys in order: the hashed engine keys below and above the
    /// upper layer's byte, and the upper layer's records between them, removals included.
    #[test]
    fn a_checkpoint_writes_hashed_and_ordered_keys_in_one_ascending_run() {
        let dir = tempfile::tempdir().unwrap();
        let runs = test_runs(dir.path());
        let mut layer = Layer::default();
        let mut want: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        for n in (0..300u32).rev() {
            let first = [CONSUMER, ORDER, AUTHORISATION, UPPER_RECORD][n as usize % 4];
            let k = [&[first][..], format!("/{n:04}").as_bytes()].concat();
            let v = (n % 7 != 0).then(|| n.to_le_bytes().to_vec());
            layer.set(k.clone(), v.clone());
            want.insert(k, v);
        }
        write_checkpoint(&runs, &layer).unwrap();
        let stored: Vec<(Vec<u8>, Vec<u8>)> = runs.scan_from(b"").map(|kv| kv.unwrap()).collect();
        let live: Vec<(Vec<u8>, Vec<u8>)> = want
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect();
        assert_eq!(stored, live);
    }

    /// A scan of the upper layer's records while a layer is sealed but not yet checkpointed,
    /// the active layer overwrites and removes keys of it, and sled holds older values: every
    /// key once, in order, with its newest value, whatever the piece size cuts.
    #[test]
    fn a_scan_across_sealed_active_and_sled_sees_each_key_once_with_its_newest_value() {
        // (every n-th key in sled, in the sealed layer, put in the active one, removed there)
        for (sled_step, sealed_step, put_mod, remove_mod) in
            [(3, 2, 5, 7), (2, 3, 1, 11), (5, 1, 2, 3), (1, 1, 1, 13)]
        {
            scan_case(sled_step, sealed_step, put_mod, remove_mod);
        }
    }

    fn scan_case(sled_step: usize, sealed_step: usize, put_mod: u32, remove_mod: u32) {
        let dir = tempfile::tempdir().unwrap();
        let runs = test_runs(dir.path());
        let overlay = Arc::new(Overlay::default());
        let view = StateView::new(runs.clone(), overlay.clone());
        let k = |n: u32| format!("xq/{n:05}").into_bytes();
        let mut want: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        overlay.apply(
            1,
            (0..1_000)
                .step_by(sled_step)
                .map(|n| ViewWrite::Put(k(n), b"sled".to_vec())),
        );
        let (layer, _) = overlay.seal().unwrap();
        write_checkpoint(&runs, &layer).unwrap();
        overlay.checkpointed();
        for n in (0..1_000).step_by(sled_step) {
            want.insert(k(n), b"sled".to_vec());
        }
        overlay.apply(
            2,
            (0..1_000)
                .step_by(sealed_step)
                .map(|n| ViewWrite::Put(k(n), b"sealed".to_vec())),
        );
        overlay.seal().unwrap();
        for n in (0..1_000).step_by(sealed_step) {
            want.insert(k(n), b"sealed".to_vec());
        }
        let mut writes = Vec::new();
        for n in 0..1_000 {
            if n % remove_mod == 0 {
                writes.push(ViewWrite::Remove(k(n)));
                want.remove(&k(n));
            } else if n % put_mod == 0 {
                writes.push(ViewWrite::Put(k(n), format!("active{n}").into_bytes()));
                want.insert(k(n), format!("active{n}").into_bytes());
            }
        }
        overlay.apply(3, writes);
        let case = (sled_step, sealed_step, put_mod, remove_mod);
        for start in [0u32, 1, 255, 256, 257, 511, 512, 999] {
            let got: Vec<_> = view
                .scan_from(b"xq/".to_vec(), k(start))
                .map(|kv| kv.unwrap())
                .collect();
            let expected: Vec<_> = want
                .range(k(start)..)
                .map(|(a, b)| (a.clone(), b.clone()))
                .collect();
            assert_eq!(got, expected, "case {case:?} from {start}");
        }
    }

    /// The overlay over a checkpoint: every read equals a plain map of the newest writes,
    /// whether the key is in the active layer, the sealed one, the record cache (both of its
    /// generations, across many swaps) or only sled.
    #[test]
    fn reads_through_the_record_cache_always_see_the_newest_checkpointed_value() {
        let dir = tempfile::tempdir().unwrap();
        let runs = test_runs(dir.path());
        // A budget of a few records: the generations swap every few checkpoints.
        let budget = 40 * (CACHE_ENTRY_OVERHEAD + 16);
        let overlay = Arc::new(Overlay::with_record_cache(budget));
        let view = StateView::new(runs.clone(), overlay.clone());
        let mut want: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        let mut rng = 7u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for seq in 1..3_000u64 {
            let mut writes = Vec::new();
            for _ in 0..2 {
                let n = next();
                let prefix = if n % 5 == 0 { ORDER } else { CONSUMER };
                let k = key(prefix, &format!("k{}", n % 97));
                if n % 7 == 0 {
                    want.insert(k.clone(), None);
                    writes.push(ViewWrite::Remove(k));
                } else {
                    let v = format!("v{seq}-{n}").into_bytes();
                    want.insert(k.clone(), Some(v.clone()));
                    writes.push(ViewWrite::Put(k, v));
                }
            }
            overlay.apply(seq, writes);
            if seq % 2 == 0 {
                let (layer, _) = overlay.seal().unwrap();
                write_checkpoint(&runs, &layer).unwrap();
                if seq % 20 == 0 {
                    runs.merge_once(&Default::default()).unwrap();
                }
                // Some reads happen while the layer is sealed and already in sled.
                if seq % 10 != 0 {
                    overlay.checkpointed();
                }
            }
            for (k, v) in &want {
                assert_eq!(&view.get_raw(k).unwrap(), v, "key {k:?} after record {seq}");
            }
        }
        let (records, bytes) = overlay.cached_records();
        assert!(records > 0, "the cache holds consumer records");
        // Each shard may go past its share by the record that made it swap (under 128 bytes
        // here).
        assert!(
            bytes <= budget + CACHE_SHARDS * 128,
            "the cache stays within its budget: {bytes}"
        );
    }

    /// Readers racing the log writer and the checkpointer (which takes each layer into the
    /// cache's shards while the layer stays in front) never see a record go back to an older
    /// value, nor vanish.
    #[test]
    fn reads_racing_checkpoints_never_go_back() {
        let dir = tempfile::tempdir().unwrap();
        let runs = test_runs(dir.path());
        // Small: the shards' generations swap all the time.
        let overlay = Arc::new(Overlay::with_record_cache(
            64 * 4 * (CACHE_ENTRY_OVERHEAD + 24),
        ));
        let view = StateView::new(runs.clone(), overlay.clone());
        let keys: Vec<Vec<u8>> = (0..200).map(|i| key(CONSUMER, &format!("c{i}"))).collect();
        let value = |seq: u64| seq.to_be_bytes().to_vec();
        overlay.apply(1, keys.iter().map(|k| ViewWrite::Put(k.clone(), value(1))));
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for seq in 2..40_000u64 {
                    let k = &keys[(seq * 7 % keys.len() as u64) as usize];
                    overlay.apply(seq, [ViewWrite::Put(k.clone(), value(seq))]);
                }
                done.store(true, std::sync::atomic::Ordering::Release);
            });
            scope.spawn(|| {
                while !done.load(std::sync::atomic::Ordering::Acquire) {
                    if let Some((layer, _)) = overlay.seal() {
                        write_checkpoint(&runs, &layer).unwrap();
                        overlay.checkpointed();
                    }
                }
            });
            for _ in 0..2 {
                scope.spawn(|| {
                    let mut seen = vec![0u64; keys.len()];
                    while !done.load(std::sync::atomic::Ordering::Acquire) {
                        for (i, k) in keys.iter().enumerate() {
                            let v = view.get_raw(k).unwrap().expect("a record never vanishes");
                            let seq = u64::from_be_bytes(v.try_into().unwrap());
                            assert!(
                                seq >= seen[i],
                                "key {i} went back from {} to {seq}",
                                seen[i]
                            );
                            seen[i] = seq;
                        }
                    }
                });
            }
        });
    }

    #[test]
    fn the_id_filter_never_misses_an_inserted_key_and_rarely_claims_an_absent_one() {
        let f = IdFilter::with_capacity(10_000, &[b"ik/".to_vec()]);
        let inserted: Vec<Vec<u8>> = (0..10_000).map(|i| key(ORDER, &format!("o{i}"))).collect();
        for k in &inserted {
            f.insert(k);
        }
        // Not ready: every id is a "maybe".
        assert!(!f.surely_absent(&key(ORDER, "never")));
        f.set_ready();
        assert!(inserted.iter().all(|k| !f.surely_absent(k)));
        let maybes = (0..10_000)
            .filter(|i| !f.surely_absent(&key(ORDER, &format!("new{i}"))))
            .count();
        assert!(maybes < 500, "{maybes} false positives in 10,000");
        assert!(f.covers(&key(REFUND, "r")) && !f.covers(&key(CONSUMER, "c")));
        assert!(f.covers(b"xik/r:1/k") && !f.covers(b"xck/o1") && !f.covers(b"ik/x"));
    }
}
