//! The account-state view: the current state of every account, kept in the journal's sled tree
//! next to the records, and written in the same atomic batch as the record that produced it.
//!
//! Why: with a million consumers and years of orders, neither "replay the journal at start-up"
//! nor "keep every account and order in memory" scales. The view makes start-up independent of
//! the journal's length (nothing is replayed: the view is already at the head) and lets an
//! account actor be passivated at any time it is idle (its state is the view's) and activated
//! again by one read. Orders and ids live here, not in memory.
//!
//! Keys (one byte of prefix, then the id; ids never contain control characters, so `\0` is a
//! safe separator):
//!
//! | key | value | written by |
//! | --- | --- | --- |
//! | `c` consumer | the consumer with its *open* orders inline ([`ConsumerRecord`]) | the consumer's actor |
//! | `d` order | the order and its consumer ([`StoredOrder`]) | the consumer's actor |
//! | `f` refund | the refund and its consumer ([`StoredRefund`]) | the consumer's actor |
//! | `e` consumer `\0` `o`/`f` id | (empty): the consumer's orders and refunds | the consumer's actor |
//! | `b` bank account | the consumer it is designated for | the engine, at opening |
//! | `w` consumer | (empty): has reserved credit, so a tick must visit it | the consumer's actor |
//! | `m` merchant | [`MerchantState`] | the journal writer, from the postings |
//! | `k` | [`ViewMeta`]: rules, clock, entries, last record | the journal writer |
//!
//! Architecture invariant: the view always equals the replay of the journal up to its head.
//! `verify` checks exactly that, account by account and order by order.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::journal::JournalError;
use crate::ledger::{AccountRef, RefundRecord};
use crate::ledger::{ConsumerState, Entry, EventKind, LedgerState, MerchantState, Order};
use crate::model::{RulesConfig, Secs};
use crate::money::Amount;

const CONSUMER: u8 = b'c';
const ORDER: u8 = b'd';
const REFUND: u8 = b'f';
const INDEX: u8 = b'e';
const BANK: u8 = b'b';
const TIMED: u8 = b'w';
const MERCHANT: u8 = b'm';
const META_KEY: &[u8] = b"k";

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
    pub bank_clearing: Amount,
    pub next_placement: u64,
    pub open_orders: Vec<Order>,
}

impl ConsumerRecord {
    pub fn of(c: &ConsumerState) -> ConsumerRecord {
        let mut open_orders: Vec<Order> = c
            .orders
            .values()
            .filter(|o| o.state.is_open())
            .cloned()
            .collect();
        open_orders.sort_by_key(|o| o.placement);
        ConsumerRecord {
            id: c.id.clone(),
            credit_limit: c.credit_limit,
            reserved: c.reserved,
            wallet: c.wallet,
            bank: c.bank.clone(),
            bank_clearing: c.bank_clearing,
            next_placement: c.next_placement,
            open_orders,
        }
    }

    /// The consumer with its open orders only: what an actor starts from.
    pub fn into_state(self) -> ConsumerState {
        let mut c = ConsumerState::new(self.id, self.credit_limit, self.bank);
        c.reserved = self.reserved;
        c.wallet = self.wallet;
        c.bank_clearing = self.bank_clearing;
        c.next_placement = self.next_placement;
        c.orders = self
            .open_orders
            .into_iter()
            .map(|o| (o.id.clone(), o))
            .collect();
        c
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredOrder {
    pub consumer: String,
    pub order: Order,
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

fn index_key(consumer: &str, kind: u8, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(3 + consumer.len() + id.len());
    k.push(INDEX);
    k.extend_from_slice(consumer.as_bytes());
    k.push(0);
    k.push(kind);
    k.extend_from_slice(id.as_bytes());
    k
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing plain data into a Vec cannot fail.
    bincode::serialize(v).unwrap_or_default()
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, JournalError> {
    bincode::deserialize(bytes).map_err(|e| JournalError::View(format!("{what}: {e}")))
}

fn id_of(prefix_len: usize, k: &[u8]) -> Result<String, JournalError> {
    String::from_utf8(k[prefix_len..].to_vec())
        .map_err(|_| JournalError::View(format!("key {k:?} is not text")))
}

/// The view's writes for one consumer after an entry of its own: the consumer record, every
/// order the entry touched, new refunds and their index keys, and the tick index when
/// `timed_changed` says whether the consumer has reserved credit now (`None`: unchanged).
pub fn consumer_writes(
    c: &ConsumerState,
    entry: &Entry,
    timed_changed: Option<bool>,
) -> Vec<ViewWrite> {
    let mut writes = vec![ViewWrite::Put(
        key(CONSUMER, &c.id),
        encode(&ConsumerRecord::of(c)),
    )];
    let mut touched = BTreeSet::new();
    for ev in &entry.events {
        use EventKind::*;
        match &ev.kind {
            OrderPlaced { order, .. } => {
                writes.push(ViewWrite::Put(index_key(&c.id, b'o', order), vec![]));
                touched.insert(order.as_str());
            }
            Refunded { refund, order, .. } => {
                if let Some(r) = c.refunds.get(refund) {
                    writes.push(ViewWrite::Put(
                        key(REFUND, refund),
                        encode(&StoredRefund {
                            consumer: c.id.clone(),
                            refund: r.clone(),
                        }),
                    ));
                    writes.push(ViewWrite::Put(index_key(&c.id, b'f', refund), vec![]));
                }
                touched.insert(order.as_str());
            }
            OrderSettled { order, .. }
            | OrderAwaitingFunds { order, .. }
            | CodeRejected { order, .. }
            | OrderDisputed { order, .. }
            | OrderCancelled { order, .. }
            | OrderExpired { order, .. } => {
                touched.insert(order.as_str());
            }
            _ => {}
        }
    }
    for id in touched {
        if let Some(o) = c.orders.get(id) {
            writes.push(ViewWrite::Put(
                key(ORDER, id),
                encode(&StoredOrder {
                    consumer: c.id.clone(),
                    order: o.clone(),
                }),
            ));
        }
    }
    match timed_changed {
        Some(true) => writes.push(ViewWrite::Put(key(TIMED, &c.id), vec![])),
        Some(false) => writes.push(ViewWrite::Remove(key(TIMED, &c.id))),
        None => {}
    }
    writes
}

/// The view's writes for a newly opened consumer: its record and its bank account.
pub fn opened_consumer_writes(c: &ConsumerState) -> Vec<ViewWrite> {
    vec![
        ViewWrite::Put(key(CONSUMER, &c.id), encode(&ConsumerRecord::of(c))),
        ViewWrite::Put(key(BANK, &c.bank), c.id.as_bytes().to_vec()),
    ]
}

/// What the journal writer derives from an entry for the parts of the view it keeps itself:
/// merchants opened, merchant postings, the rules, the clock.
#[derive(Debug, Default)]
pub struct WriterDelta {
    pub at: Secs,
    pub config: Option<Box<RulesConfig>>,
    pub merchants_opened: Vec<MerchantState>,
    pub merchant_postings: Vec<(String, Amount)>,
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
                EventKind::MerchantOpened { merchant, bank } => {
                    d.merchants_opened.push(MerchantState {
                        id: merchant.clone(),
                        bank: bank.clone(),
                        balance: Amount::ZERO,
                    })
                }
                _ => {}
            }
            for p in &ev.postings {
                if let AccountRef::Merchant(m) = &p.account {
                    d.merchant_postings.push((m.clone(), p.amount));
                }
            }
        }
        d
    }
}

/// The writer's own part of the view: merchants and the meta record, kept in memory (merchants
/// are few) and written for every batch that changes them.
pub struct WriterView {
    merchants: BTreeMap<String, MerchantState>,
    meta: ViewMeta,
}

impl WriterView {
    pub fn load(tree: &sled::Tree) -> Result<WriterView, JournalError> {
        let view = StateView::new(tree.clone());
        Ok(WriterView {
            merchants: view.merchants()?,
            meta: view.meta()?.unwrap_or_default(),
        })
    }

    /// Applies the deltas of one batch (record `seq`) and returns the writes for it. On an
    /// error nothing changes: the batch is not written.
    pub fn batch_writes<'a>(
        &mut self,
        seq: u64,
        deltas: impl Iterator<Item = &'a WriterDelta>,
    ) -> Result<Vec<ViewWrite>, JournalError> {
        let mut merchants: BTreeMap<String, MerchantState> = BTreeMap::new();
        let mut meta = self.meta.clone();
        for d in deltas {
            meta.entries += 1;
            meta.clock = meta.clock.max(d.at);
            if let Some(c) = &d.config {
                meta.config = (**c).clone();
            }
            for m in &d.merchants_opened {
                merchants.insert(m.id.clone(), m.clone());
            }
            for (m, amount) in &d.merchant_postings {
                if !merchants.contains_key(m) {
                    let current = self.merchants.get(m).cloned().ok_or_else(|| {
                        JournalError::View(format!("a posting names unknown merchant {m:?}"))
                    })?;
                    merchants.insert(m.clone(), current);
                }
                let state = merchants.get_mut(m).expect("inserted above");
                state.balance = state
                    .balance
                    .checked_add(*amount)
                    .map_err(|e| JournalError::View(format!("merchant {m}: {e}")))?;
            }
        }
        meta.last_seq = seq;
        let mut writes: Vec<ViewWrite> = merchants
            .values()
            .map(|m| ViewWrite::Put(key(MERCHANT, &m.id), encode(m)))
            .collect();
        writes.push(ViewWrite::Put(META_KEY.to_vec(), encode(&meta)));
        self.merchants.extend(merchants);
        self.meta = meta;
        Ok(writes)
    }
}

/// Reads of the view. Cheap to clone; reads see every write of a batch once the batch is
/// applied, which is before it is acknowledged.
#[derive(Clone)]
pub struct StateView {
    tree: sled::Tree,
}

impl StateView {
    pub fn new(tree: sled::Tree) -> StateView {
        StateView { tree }
    }

    fn get<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        k: &[u8],
    ) -> Result<Option<T>, JournalError> {
        match self.tree.get(k)? {
            None => Ok(None),
            Some(v) => decode(what, &v).map(Some),
        }
    }

    pub fn meta(&self) -> Result<Option<ViewMeta>, JournalError> {
        self.get("meta", META_KEY)
    }

    pub fn has_consumer(&self, id: &str) -> Result<bool, JournalError> {
        Ok(self.tree.contains_key(key(CONSUMER, id))?)
    }

    /// The consumer with its open orders: what its actor starts from.
    pub fn consumer_record(&self, id: &str) -> Result<Option<ConsumerRecord>, JournalError> {
        self.get("consumer", &key(CONSUMER, id))
    }

    /// The consumer with every order and refund, as a replay would build it.
    pub fn consumer(&self, id: &str) -> Result<Option<ConsumerState>, JournalError> {
        let Some(rec) = self.consumer_record(id)? else {
            return Ok(None);
        };
        let mut c = rec.into_state();
        let mut prefix = key(INDEX, id);
        prefix.push(0);
        for k in self.tree.scan_prefix(&prefix).keys() {
            let k = k?;
            let rest = &k[prefix.len()..];
            let (kind, ident) = rest
                .split_first()
                .ok_or_else(|| JournalError::View(format!("index key {k:?} names nothing")))?;
            let ident = String::from_utf8(ident.to_vec())
                .map_err(|_| JournalError::View(format!("index key {k:?} is not text")))?;
            match kind {
                b'o' => {
                    let o = self.order(&ident)?.ok_or_else(|| {
                        JournalError::View(format!("{id} lists order {ident}, which is missing"))
                    })?;
                    c.orders.insert(ident, o.order);
                }
                b'f' => {
                    let r = self.refund(&ident)?.ok_or_else(|| {
                        JournalError::View(format!("{id} lists refund {ident}, which is missing"))
                    })?;
                    c.refunds.insert(ident, r.refund);
                }
                _ => return Err(JournalError::View(format!("index key {k:?} of no kind"))),
            }
        }
        Ok(Some(c))
    }

    pub fn order(&self, id: &str) -> Result<Option<StoredOrder>, JournalError> {
        self.get("order", &key(ORDER, id))
    }

    pub fn refund(&self, id: &str) -> Result<Option<StoredRefund>, JournalError> {
        self.get("refund", &key(REFUND, id))
    }

    /// The consumer a bank account is designated for.
    pub fn bank_owner(&self, bank: &str) -> Result<Option<String>, JournalError> {
        match self.tree.get(key(BANK, bank))? {
            None => Ok(None),
            Some(v) => Ok(Some(id_of(0, &v)?)),
        }
    }

    pub fn merchant(&self, id: &str) -> Result<Option<MerchantState>, JournalError> {
        self.get("merchant", &key(MERCHANT, id))
    }

    pub fn merchants(&self) -> Result<BTreeMap<String, MerchantState>, JournalError> {
        let mut out = BTreeMap::new();
        for kv in self.tree.scan_prefix([MERCHANT]) {
            let (k, v) = kv?;
            out.insert(id_of(1, &k)?, decode("merchant", &v)?);
        }
        Ok(out)
    }

    /// Consumers with reserved credit: the ones a tick visits.
    pub fn timed_consumers(&self) -> Result<Vec<String>, JournalError> {
        self.tree
            .scan_prefix([TIMED])
            .keys()
            .map(|k| id_of(1, &k?))
            .collect()
    }

    /// Every consumer record, in id order.
    pub fn consumer_records(
        &self,
    ) -> impl Iterator<Item = Result<ConsumerRecord, JournalError>> + '_ {
        self.tree.scan_prefix([CONSUMER]).map(|kv| {
            let (_, v) = kv?;
            decode("consumer", &v)
        })
    }

    /// The whole ledger as the view holds it, built the way a replay builds it, and checked
    /// for consistency on the way: every order, refund, index key and bank key belongs to a
    /// consumer that lists it. For `verify`, tests and end-of-run checks, not the hot path.
    pub fn ledger(&self) -> Result<LedgerState, JournalError> {
        let meta = self.meta()?.unwrap_or_default();
        let mut state = LedgerState::new(meta.config.clone());
        state.clock = meta.clock;
        state.entries = meta.entries;
        for rec in self.consumer_records() {
            let c = rec?.into_state();
            state.bank_owner.insert(c.bank.clone(), c.id.clone());
            state.consumers.insert(c.id.clone(), c);
        }
        let bad = |m: String| JournalError::View(m);
        for kv in self.tree.scan_prefix([ORDER]) {
            let (k, v) = kv?;
            let id = id_of(1, &k)?;
            let s: StoredOrder = decode("order", &v)?;
            let c = state
                .consumers
                .get_mut(&s.consumer)
                .ok_or_else(|| bad(format!("order {id} of unknown consumer {}", s.consumer)))?;
            if let Some(open) = c.orders.get(&id) {
                if *open != s.order {
                    return Err(bad(format!(
                        "order {id}: the consumer's open copy differs from the order record"
                    )));
                }
            } else if s.order.state.is_open() {
                return Err(bad(format!(
                    "order {id} is open but {} does not hold it",
                    s.consumer
                )));
            }
            if s.order.id != id {
                return Err(bad(format!("order record {id} holds order {}", s.order.id)));
            }
            state.order_owner.insert(id.clone(), s.consumer.clone());
            c.orders.insert(id, s.order);
        }
        for kv in self.tree.scan_prefix([REFUND]) {
            let (k, v) = kv?;
            let id = id_of(1, &k)?;
            let s: StoredRefund = decode("refund", &v)?;
            let c = state
                .consumers
                .get_mut(&s.consumer)
                .ok_or_else(|| bad(format!("refund {id} of unknown consumer {}", s.consumer)))?;
            state.refund_owner.insert(id.clone(), s.consumer.clone());
            c.refunds.insert(id, s.refund);
        }
        for c in state.consumers.values() {
            if c.orders
                .values()
                .any(|o| !state.order_owner.contains_key(&o.id))
            {
                return Err(bad(format!("{}: an open order has no order record", c.id)));
            }
        }
        // The per-consumer index lists exactly the consumer's orders and refunds.
        let mut listed = 0usize;
        for k in self.tree.scan_prefix([INDEX]).keys() {
            let k = k?;
            let text = &k[1..];
            let sep = text
                .iter()
                .position(|b| *b == 0)
                .ok_or_else(|| bad(format!("index key {k:?} has no separator")))?;
            let consumer = String::from_utf8(text[..sep].to_vec())
                .map_err(|_| bad(format!("index key {k:?} is not text")))?;
            let (kind, ident) = text[sep + 1..]
                .split_first()
                .ok_or_else(|| bad(format!("index key {k:?} names nothing")))?;
            let ident = String::from_utf8(ident.to_vec())
                .map_err(|_| bad(format!("index key {k:?} is not text")))?;
            let owner = match kind {
                b'o' => state.order_owner.get(&ident),
                b'f' => state.refund_owner.get(&ident),
                _ => None,
            };
            if owner != Some(&consumer) {
                return Err(bad(format!(
                    "index of {consumer} lists {ident}, which is not its own"
                )));
            }
            listed += 1;
        }
        if listed != state.order_owner.len() + state.refund_owner.len() {
            return Err(bad(format!(
                "the consumers' index lists {listed} orders and refunds, the view holds {}",
                state.order_owner.len() + state.refund_owner.len()
            )));
        }
        for kv in self.tree.scan_prefix([BANK]) {
            let (k, v) = kv?;
            let bank = id_of(1, &k)?;
            let owner = id_of(0, &v)?;
            if state.bank_owner.get(&bank) != Some(&owner) {
                return Err(bad(format!(
                    "bank account {bank} designated for {owner}, who does not hold it"
                )));
            }
        }
        if self.tree.scan_prefix([BANK]).count() != state.bank_owner.len() {
            return Err(bad("a consumer's bank account has no bank key".into()));
        }
        for id in self.timed_consumers()? {
            match state.consumers.get(&id) {
                Some(c) if c.reserved.is_positive() => {}
                _ => {
                    return Err(bad(format!(
                        "tick index lists {id}, who has no reserved credit"
                    )))
                }
            }
        }
        let timed = self.tree.scan_prefix([TIMED]).count();
        let reserving = state
            .consumers
            .values()
            .filter(|c| c.reserved.is_positive())
            .count();
        if timed != reserving {
            return Err(bad(format!(
                "tick index lists {timed} consumers, {reserving} have reserved credit"
            )));
        }
        state.merchants = self.merchants()?;
        Ok(state)
    }
}

impl ViewWrite {
    pub fn apply_to(self, batch: &mut sled::Batch) {
        match self {
            ViewWrite::Put(k, v) => batch.insert(k, v),
            ViewWrite::Remove(k) => batch.remove(k),
        }
    }
}
