//! The node's shared state: the engine, the node store, the simulated bank, the settings, and
//! the in-memory indexes the API reads on every request (API keys, merchant profiles).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use onecard_adapters::iso20022::bank::Iso20022Bank;
use onecard_engine::fast_map::FastDashMap;
use onecard_engine::{Engine, SimBank};

use crate::metrics::Metrics;
use crate::records::{self, MerchantProfile};
use crate::settings::NodeSettings;
use crate::store::{self, NodeStore, StoreError};

pub struct Node {
    pub engine: Arc<Engine>,
    pub store: NodeStore,
    /// The simulated bank, when the node runs with it (`[bank] kind = "simulated"`).
    pub bank: Option<Arc<SimBank>>,
    /// The ISO 20022 bank adapter, when the node runs with a real bank: its counters.
    pub bank_adapter: Option<Iso20022Bank>,
    pub settings: NodeSettings,
    pub currency: String,
    /// SHA-256 of the administrator's token.
    pub admin_token_hash: String,
    /// SHA-256 of an API key → merchant id.
    pub api_keys: FastDashMap<String, String>,
    pub merchants: FastDashMap<String, MerchantProfile>,
    /// `Idempotency-Key`s whose first request is in progress; with the stored answer (its
    /// record's bytes) once a request answered ahead of its record's sync
    /// (`Idem::finish_without_waiting`).
    pub idem_in_flight: FastDashMap<String, Option<std::sync::Arc<[u8]>>>,
    /// Checkouts as last decoded: each step of a payment reads its checkout ([`Node::checkout`]).
    pub checkouts: store::DecodedCache<records::Checkout>,
    /// Orders with a payment or a cancellation in progress: the two never run at once.
    /// One payment or cancellation of an order at a time.
    pub order_locks: crate::app::OrderLocks,
    pub metrics: Metrics,
    /// Wakes the outbox when the journal has grown.
    pub outbox_wake: tokio::sync::Notify,
    /// Wakes the history index ([`crate::analysis`]) when the outbox has read on: the index
    /// follows the journal at its own pace, behind the outbox.
    pub analysis_wake: tokio::sync::Notify,
    /// The last journal record the history index has read (0 until it has started): for
    /// `/healthz` and `/metrics`.
    pub analysis_read: std::sync::atomic::AtomicU64,
    /// The credit policy (`[credit]`, SPEC F10): see [`crate::credit`]. `fixed` unless set
    /// after [`Node::new`].
    pub credit: crate::credit::CreditPolicy,
    /// Every read-modify-write of a consumer's credit record, and every limit set after it,
    /// one at a time (the follower, the overdue scan, the operator): no count is lost and
    /// limits reach the engine in the order they were computed.
    pub credit_lock: tokio::sync::Mutex<()>,
    /// Wakes the credit follower when the outbox has read on.
    pub credit_wake: tokio::sync::Notify,
    /// The last journal record the credit follower has read: for `/healthz` and `/metrics`.
    pub credit_read: std::sync::atomic::AtomicU64,
    /// Limits computed but not yet set may be waiting (`cq/`): set at start and after a failure.
    pub credit_retry: AtomicBool,
    /// The last journal record the outbox has read (`u64::MAX` until it is loaded from the
    /// durable cursor), and the last one the durable cursor names: see [`crate::outbox`].
    pub outbox_read: std::sync::atomic::AtomicU64,
    pub outbox_saved: std::sync::atomic::AtomicU64,
    /// Wakes the print and webhook workers when their queues have grown.
    pub work_wake: crate::workers::Wake,
    /// Wakes the payroll worker when a batch was stored (`crate::payroll`).
    pub payroll_wake: tokio::sync::Notify,
    pub stopping: AtomicBool,
    /// Registering, changing and re-keying merchants, one at a time: each reads, then writes
    /// a merchant's profile and key.
    pub merchant_admin: tokio::sync::Mutex<()>,
    /// The key recharge codes are hashed under, derived from a configured secret
    /// ([`crate::recharge::RechargeKey::from_config`]); `None` without one: no batches.
    pub recharge_key: Option<crate::recharge::RechargeKey>,
    /// Wrong recharge codes per consumer and per address (in memory).
    pub recharge_throttle: crate::recharge::Throttle,
    /// Issuing recharge batches, one at a time: each reads, then writes its batch.
    pub recharge_admin: tokio::sync::Mutex<()>,
    /// Web sign-ins, one at a time: each reads its one-time code, then removes it.
    pub web_sign_in: tokio::sync::Mutex<()>,
    /// What the operator's dashboard keeps between views: the throughput's samples, the last
    /// `verify` of the journal.
    pub web_ops: crate::pages::OpsState,
    /// Where the next sweep of expired sessions starts (it goes round the sessions in turns).
    pub session_sweep_from: parking_lot::Mutex<Option<String>>,
    /// Where the next sweep of old idempotency records starts.
    pub idem_sweep_from: parking_lot::Mutex<Option<String>>,
}

impl Node {
    pub fn new(
        engine: Arc<Engine>,
        store: NodeStore,
        bank: Option<Arc<SimBank>>,
        bank_adapter: Option<Iso20022Bank>,
        settings: NodeSettings,
        currency: String,
        admin_token: &str,
    ) -> Result<Node, StoreError> {
        let node = Node {
            engine,
            store,
            bank,
            bank_adapter,
            settings,
            currency,
            admin_token_hash: records::sha256_hex(admin_token.as_bytes()),
            api_keys: FastDashMap::default(),
            merchants: FastDashMap::default(),
            idem_in_flight: FastDashMap::default(),
            checkouts: store::DecodedCache::new(CHECKOUT_CACHE_ENTRIES),
            order_locks: crate::app::OrderLocks::default(),
            metrics: Metrics::default(),
            outbox_wake: tokio::sync::Notify::new(),
            analysis_wake: tokio::sync::Notify::new(),
            analysis_read: std::sync::atomic::AtomicU64::new(0),
            credit: crate::credit::CreditPolicy::default(),
            credit_lock: tokio::sync::Mutex::new(()),
            credit_wake: tokio::sync::Notify::new(),
            credit_read: std::sync::atomic::AtomicU64::new(0),
            credit_retry: AtomicBool::new(true),
            outbox_read: std::sync::atomic::AtomicU64::new(u64::MAX),
            outbox_saved: std::sync::atomic::AtomicU64::new(0),
            work_wake: crate::workers::Wake::default(),
            payroll_wake: tokio::sync::Notify::new(),
            stopping: AtomicBool::new(false),
            session_sweep_from: parking_lot::Mutex::new(None),
            idem_sweep_from: parking_lot::Mutex::new(None),
            merchant_admin: tokio::sync::Mutex::new(()),
            recharge_key: None,
            recharge_throttle: crate::recharge::Throttle::default(),
            recharge_admin: tokio::sync::Mutex::new(()),
            web_sign_in: tokio::sync::Mutex::new(()),
            web_ops: crate::pages::OpsState::default(),
        };
        for (_, m) in node
            .store
            .scan::<MerchantProfile>("me/", None, usize::MAX)?
        {
            node.merchants.insert(m.id.clone(), m);
        }
        for (k, merchant) in node.store.scan::<String>("ak/", None, usize::MAX)? {
            node.api_keys
                .insert(k.trim_start_matches("ak/").to_string(), merchant);
        }
        Ok(node)
    }

    /// Unix seconds now.
    pub fn now(&self) -> u64 {
        now_ms() / 1000
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// The checkout session of `order`, if there is one.
    pub fn checkout(&self, order: &str) -> Result<Option<Arc<records::Checkout>>, StoreError> {
        self.store
            .get_cached(&records::checkout_key(order), &self.checkouts)
    }
}

/// Checkouts kept decoded ([`Node::checkout`]): far more than the payments in progress at once
/// (a payment reads its checkout within a few milliseconds), at about 1 KiB each.
const CHECKOUT_CACHE_ENTRIES: usize = 16_384;

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// How long a follower of the journal (the outbox, the history index, dynamic credit) that has
/// read up to the head waits before its next step. Under load the head grows by a record per
/// group commit, a few hundred microseconds apart: stepping at once would read one or two
/// records a step and pay the step's own reads, commit and wake-ups for each. Waiting lets a
/// step take several records; webhooks, slips and statements come this much later.
pub const FOLLOWER_PACE: std::time::Duration = std::time::Duration::from_millis(2);

/// How long a caught-up follower waits for a wake-up before it looks at the journal anyway.
pub const FOLLOWER_BACKSTOP: std::time::Duration = std::time::Duration::from_millis(250);

/// Records examined per sweep of one kind (one sweep every `[node] sweep_secs`).
const SWEEP: usize = 100_000;

/// A scan of the store by prefix (JSON or [`crate::store::Codec`] records).
type Scan<T> = fn(&NodeStore, &str, Option<&str>, usize) -> Result<Vec<(String, T)>, StoreError>;

/// One pass of a rolling sweep over the records under `prefix` (read with `scan`): removes
/// those `expired` says are, and remembers where to go on next time, so that every record is
/// reached in turn.
async fn sweep<T>(
    node: &Node,
    prefix: &str,
    from: &parking_lot::Mutex<Option<String>>,
    scan: Scan<T>,
    expired: impl Fn(&T) -> bool,
) -> Result<usize, StoreError> {
    let start = from.lock().clone();
    let batch = scan(&node.store, prefix, start.as_deref(), SWEEP)?;
    *from.lock() = if batch.len() < SWEEP {
        None
    } else {
        batch.last().map(|(k, _)| k.clone())
    };
    let gone: Vec<crate::store::Write> = batch
        .into_iter()
        .filter(|(_, r)| expired(r))
        .map(|(k, _)| store::remove(k))
        .collect();
    let n = gone.len();
    if n > 0 {
        node.store.commit(gone).await?;
    }
    Ok(n)
}

/// Removes expired sessions (API and web) and idempotency records past
/// `[node] idempotency_ttl_secs`, so that neither piles up.
pub async fn sweep_expired(node: &Node) -> Result<(usize, usize), StoreError> {
    let now = node.now();
    // Consumer API sessions, web sessions and web sign-in codes: each has its end.
    let sessions = sweep(
        node,
        "ss/",
        &node.session_sweep_from,
        NodeStore::scan::<records::Expiring>,
        |s| s.expires_at <= now,
    )
    .await?;
    let ttl = node.settings.idempotency_ttl_secs;
    let keys = sweep(
        node,
        records::IDEM_KEY_PREFIX,
        &node.idem_sweep_from,
        NodeStore::scan_records::<records::IdemRecord>,
        // Records from before `at` was kept (0) are left alone.
        |r| r.at > 0 && r.at.saturating_add(ttl) <= now,
    )
    .await?;
    Ok((sessions, keys))
}

/// What a follower of the journal (the outbox, the history index, dynamic credit) does after
/// one step: caught up, it waits until `wake` is notified (the outbox when the journal has
/// grown, the others by the outbox), with `backstop` as a timeout; having read the few records at the head, it waits [`FOLLOWER_PACE`] before
/// the next step; catching up (a whole batch read), it lets the other tasks run between
/// batches; after a failure, it tries again in a second. `false` when the node is stopping
/// and the follower is done.
pub async fn after_follower_step<E: std::fmt::Display>(
    node: &Node,
    wake: &tokio::sync::Notify,
    what: &str,
    batch: usize,
    backstop: std::time::Duration,
    step: Result<usize, E>,
) -> bool {
    match step {
        Ok(0) => {
            if node.is_stopping() {
                return false;
            }
            let _ = tokio::time::timeout(backstop, wake.notified()).await;
        }
        Ok(read) if read < batch => tokio::time::sleep(FOLLOWER_PACE).await,
        Ok(_) => tokio::task::yield_now().await,
        Err(e) => {
            tracing::error!(error = %e, "{what} step failed; retrying in 1 s");
            if node.is_stopping() {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }
    true
}
