//! Recovery: what `Engine::open` does to bring a data directory back before it takes
//! commands.
//!
//! In order: open the journal at its head (the view's checkpoint plus the log's tail; a torn
//! tail cut), refuse a lowered wallet cap that existing wallets exceed, one pass over the
//! consumer records (the open-order and time-work directories, the data key's consistency,
//! what the ledger moved to or from each bank account), the bank's attach and the
//! reconciliation of its unconfirmed operations, and the authentication center's cards and
//! readers. [`RecoveryInfo`] says what it found. Kept apart from the engine's commands because
//! it runs once, before any of them, and is the one start-up path whose cost grows with the
//! accounts; the engine wires its results (journal, shared state, router, sweeper) together.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cards::{AuthCenter, IssuerKey};
use crate::directory::OrderKey;
use crate::error::EngineError;
use crate::journal::{Journal, JournalConfig, JournalHandle};
use crate::ledger::next_time_work;
use crate::model::RulesConfig;
use crate::money::Amount;
use crate::router::Shared;
use crate::seal::{self, DataKey};
use crate::view::{StateView, ViewMeta};

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
    /// The pass over the consumer records (open orders, reserved credit) and the bank's
    /// attach, in milliseconds.
    pub scan_ms: f64,
    /// Of which the bank's attach (the simulated bank loads its accounts), in milliseconds.
    pub bank_ms: f64,
}

/// The journal opened at its head, and what opening it found.
pub(crate) struct OpenedStore {
    pub(crate) journal: Journal,
    pub(crate) handle: JournalHandle,
    pub(crate) view: StateView,
    pub(crate) meta: ViewMeta,
    pub(crate) info: RecoveryInfo,
}

/// Opens the journal in `dir` at its head (nothing is replayed beyond the log's tail after
/// the checkpoint; the account-state view is current) and refuses `rules` whose wallet cap
/// is below an existing wallet.
pub(crate) fn open_store(
    dir: &Path,
    rules: &RulesConfig,
    journal_cfg: JournalConfig,
) -> Result<OpenedStore, EngineError> {
    let started = Instant::now();
    let (journal, recovered) = Journal::open(dir, journal_cfg)?;
    let store_ms = started.elapsed().as_secs_f64() * 1e3;
    let handle = journal.handle();
    let view = handle.view();
    let meta = recovered.meta;
    if meta.entries > 0 && rules.wallet_cap < meta.config.wallet_cap {
        // Only a lowered cap can be below an existing wallet: look, once.
        for rec in view.consumer_records() {
            let c = rec?;
            if c.wallet > rules.wallet_cap {
                return Err(EngineError::Config(format!(
                    "wallet_cap {} is below the wallet of {} ({}); lowering the cap below existing wallets is refused",
                    rules.wallet_cap, c.id, c.wallet
                )));
            }
        }
    }

    let info = RecoveryInfo {
        last_seq: recovered.last_seq,
        replayed: recovered.replayed,
        torn_bytes: recovered.torn_bytes,
        entries: meta.entries,
        store_ms,
        ..Default::default()
    };
    Ok(OpenedStore {
        journal,
        handle,
        view,
        meta,
        info,
    })
}

/// The only start-up work that grows with the accounts: one pass over the consumer records
/// for the open orders and the consumers with reserved credit (into `shared`'s directories),
/// then the bank's attach and the reconciliation of its unconfirmed operations. Counts go
/// into `info`.
pub(crate) fn scan_and_reconcile(
    shared: &Shared,
    rules: &RulesConfig,
    data_key: Option<&DataKey>,
    info: &mut RecoveryInfo,
) -> Result<(), EngineError> {
    let scan = Instant::now();
    let names: crate::bank::AccountNames = match data_key.cloned() {
        None => Arc::new(|account: &str| account.to_string()),
        Some(key) => Arc::new(move |account: &str| seal::bank_ref(&key, account)),
    };
    // The bank loads its accounts on another thread while this one scans the consumers: the
    // two passes over the view (a million keys each at a million consumers) are the bulk of
    // a restart.
    let (attached, moved) = std::thread::scope(|scope| {
        let bank = scope.spawn(|| {
            let started = Instant::now();
            let r = shared.bank.attach(&shared.journal, names);
            (r, started.elapsed())
        });
        let moved = scan_consumers(shared, rules, data_key, info);
        let attached = bank.join().unwrap_or_else(|_| {
            (
                Err(crate::bank::BankError::Unavailable(
                    "the bank's attach panicked".into(),
                )),
                Duration::ZERO,
            )
        });
        (attached, moved)
    });
    let (durable_with_log, bank_took) = attached;
    info.bank_ms = bank_took.as_secs_f64() * 1e3;
    let durable_with_log = durable_with_log?;
    shared.bank.add_moved(&moved?)?;
    shared.journal.index_bank_ops(!durable_with_log);
    shared
        .async_topups
        .store(!durable_with_log, std::sync::atomic::Ordering::Relaxed);
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
    info.timed_consumers = shared.directory.timed.len();
    info.open_orders = shared.directory.open_orders.len();
    info.scan_ms = scan.elapsed().as_secs_f64() * 1e3;
    info.merchants = shared.merchants.len();
    Ok(())
}

/// One pass over the consumer records: the open orders and the consumers with time-driven
/// work into `shared`'s directories; returns what the ledger moved to or from each bank
/// account (its clearing balance), by stored name.
fn scan_consumers(
    shared: &Shared,
    rules: &RulesConfig,
    data_key: Option<&DataKey>,
    info: &mut RecoveryInfo,
) -> Result<std::collections::HashMap<String, Amount>, EngineError> {
    let mut moved: std::collections::HashMap<String, Amount> = Default::default();
    // Payouts and fundings: what the ledger moved to and from merchants' bank accounts.
    for (name, amount) in shared.view.merchant_clearing()? {
        let Some(account) = crate::ledger::merchant_clearing_bank(&name) else {
            continue;
        };
        let m = moved.entry(account.to_string()).or_insert(Amount::ZERO);
        *m = m
            .checked_add(amount)
            .map_err(|e| EngineError::Internal(e.to_string()))?;
    }
    for rec in shared.view.consumer_records() {
        let c = rec?;
        info.consumers += 1;
        let accounts = std::iter::once((&c.bank, c.bank_clearing))
            .chain(c.linked.iter().map(|(b, l)| (b, l.clearing)));
        for (bank, clearing) in accounts {
            if !clearing.is_zero() {
                let m = moved.entry(bank.clone()).or_insert(Amount::ZERO);
                *m = m
                    .checked_add(clearing)
                    .map_err(|e| EngineError::Internal(e.to_string()))?;
            }
        }
        // A store is written with a data key from its start or never: a mix would let one
        // bank account be designated twice (once by name, once by reference).
        if c.bank_sealed.is_some() != data_key.is_some() {
            return Err(EngineError::Config(format!(
                "consumer {} was stored {} a data key, and the node is opened {} one; set ONECARD_DATA_KEY as when the store was created",
                c.id,
                if c.bank_sealed.is_some() { "with" } else { "without" },
                if data_key.is_some() { "with" } else { "without" },
            )));
        }
        if let Some(at) = next_time_work(c.open_orders.iter(), rules) {
            shared.directory.timed.insert(c.id.clone(), at);
        }
        for o in &c.open_orders {
            shared
                .directory
                .open_orders
                .insert(o.id.clone(), OrderKey::of(&c.id, o));
        }
    }
    Ok(moved)
}

/// The authentication center with the cards and readers the view holds, when an issuer key
/// is configured; `None` (cards disabled) otherwise.
pub(crate) fn load_auth_center(
    view: &StateView,
    issuer_key: Option<&IssuerKey>,
    rules: &RulesConfig,
) -> Result<Option<Arc<AuthCenter>>, EngineError> {
    Ok(match issuer_key {
        None => None,
        Some(key) => {
            let state = view.auth_state(rules.auth.clone())?;
            let center = AuthCenter::from_state(key.clone(), state)
                .map_err(|e| EngineError::Config(format!("the stored cards and readers: {e}")))?;
            Some(Arc::new(center))
        }
    })
}
