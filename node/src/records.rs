//! The records the node keeps in its store, and their keys.
//!
//! | key                         | record                 |
//! |-----------------------------|------------------------|
//! | `ck/<order>`                | [`Checkout`]           |
//! | `mo/<merchant>/<order>`     | `()`: a merchant's orders, in creation order |
//!
//! (Ids inside keys go through [`seg`]: `/` and `%` escaped.)
//!
//! | `me/<merchant>`             | [`MerchantProfile`]    |
//! | `ak/<sha256(api key)>`      | merchant id            |
//! | `ik/<principal>/<key>`      | [`IdemRecord`]         |
//! | `pj/<order>`                | [`PrintJob`]           |
//! | `pq/<due ms:020>/<order>`   | `()`: while the job waits to print |
//! | `wh/<event id>`             | [`WebhookDelivery`]    |
//! | `wq/<due ms:020>/<event id>` | `()`: while the delivery waits |
//! | `ss/<sha256(token)>`        | [`Session`]            |
//! | `st/<consumer>/<seq:020>/<entry>/<event>` | [`StatementLine`] |
//! | `outbox/cursor`             | the last journal record the outbox has handled |
//! | `bl/<bill ref>`             | [`Bill`]               |
//! | `cb/<consumer>/<~posted ms:020>/<bill ref>` | `()`: a consumer's bills, newest first |
//! | `bd/<due secs:020>/<bill ref>` | `()`: while the bill may still become overdue |
//! | `ap/<consumer>/<biller>`    | [`AutopayRule`]        |
//! | `tr/<consumer>/<rule>`      | [`crate::transfers::TransferRule`]: a standing transfer rule (F5) |
//! | `td/<due secs:020>/<consumer>/<rule>` | `()`: the rule's next run, for the scheduler |
//! | `nt/<notification id>`      | the inbox key of a consumer's notification (its id taken) |
//! | `ni/<consumer>/<~created ms:020>/<notification id>` | [`crate::notify::Notification`]: the inbox, newest first |
//! | `cs/<consumer>`             | [`ConsumerNotifySettings`] |
//! | `pb/<payroll ref>`          | [`PayrollBatch`]: a payroll batch, its state and counts |
//! | `pl/<payroll ref>/<line:06>` | [`PayrollLine`]: one line of it and its outcome |
//! | `pe/<employer>/<~created ms:020>/<payroll ref>` | `()`: an employer's batches, newest first |
//! | `po/<created ms:020>/<payroll ref>` | `()`: while the batch is not finished (the worker's queue) |
//! | `rb/<batch>`                | [`RechargeBatch`]      |
//! | `rc/<hex HMAC-SHA256(code)>` | [`RechargeCode`]: a recharge code, known only by its keyed hash |
//! | `dp/<credit id>`            | [`Deposit`]: a deposit by bank transfer |
//! | `mp/<merchant>/<~seq:020>/<entry>/<event>` | [`MerchantPayout`]: a merchant's payouts, newest first |
//! | `ss/w/<sha256(cookie token)>` | [`WebSession`]: a session of the web pages |
//! | `ss/c/<sha256(code)>`       | [`Session`]: a one-time web sign-in code |
//!
//! `~t` is `u64::MAX - t`, so that a forward scan reads newest first. A bill's reference
//! ([`bill_ref`]) is also the id of the engine order that pays it.
//! | `am/<consumer>/<YYYY-MM>`   | [`MonthAggregate`]: the history index (F6) |
//! | `al/<consumer>`             | [`AlertSettings`]: the consumer's spending limits |
//! | `af/<consumer>/<YYYY-MM>/<threshold>` | [`FiredAlert`]: once per limit per month |
//! | `analysis/cursor`           | the last journal record the history index has handled |
//! | `cr/<consumer>`             | [`crate::credit::CreditRecord`]: deposit, card credit line, score, limit computed (F10) |
//! | `cq/<consumer>`             | [`crate::credit::PendingLimit`]: a limit computed, not yet known to be the engine's |
//! | `cl/<order>`                | `()`: the order waited for funds; its settlement is not on time |
//! | `ch/<consumer>/<~seq:020>/<~entry>/<~event>` | [`crate::credit::LimitChange`]: the limit's history, newest first |
//! | `credit/cursor`             | the last journal record the credit follower has handled |
//!
//! Order ids are `ord_` + 12 hex digits of milliseconds + 16 random hex digits, so that a
//! merchant's orders list in creation order.

use crate::store::Codec;
use onecard_protocol::wire::to_hex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const CURSOR_KEY: &str = "outbox/cursor";
/// The history index's own cursor ([`crate::analysis`]): it follows the journal apart from
/// the outbox, at its own pace.
pub const ANALYSIS_CURSOR_KEY: &str = "analysis/cursor";

/// An id as one segment of a store key: `%` and `/` escaped, so that no id can reach into
/// another's keys (ids may contain `/`: merchant `a/b` must not read merchant `a`'s records).
pub fn seg(id: &str) -> std::borrow::Cow<'_, str> {
    if id.contains(['%', '/']) {
        std::borrow::Cow::Owned(id.replace('%', "%25").replace('/', "%2F"))
    } else {
        std::borrow::Cow::Borrowed(id)
    }
}

pub fn checkout_key(order: &str) -> String {
    format!("ck/{order}")
}
/// The prefix of a merchant's order index.
pub fn merchant_orders_prefix(merchant: &str) -> String {
    format!("mo/{}/", seg(merchant))
}
pub fn merchant_order_key(merchant: &str, order: &str) -> String {
    format!("{}{}", merchant_orders_prefix(merchant), seg(order))
}
pub fn merchant_key(merchant: &str) -> String {
    format!("me/{merchant}")
}
pub fn api_key_key(api_key: &str) -> String {
    api_key_hash_key(&sha256_hex(api_key.as_bytes()))
}
pub fn api_key_hash_key(sha256: &str) -> String {
    format!("ak/{sha256}")
}
/// The prefix of [`idem_key`]s.
pub const IDEM_KEY_PREFIX: &str = "ik/";

pub fn idem_key(principal: &str, key: &str) -> String {
    format!("{IDEM_KEY_PREFIX}{}/{key}", seg(principal))
}
pub fn print_job_key(order: &str) -> String {
    format!("pj/{order}")
}
/// The print queue's keys start with this, the webhook deliveries' with [`WEBHOOK_QUEUE`].
pub const PRINT_QUEUE: &str = "pq/";
pub const WEBHOOK_QUEUE: &str = "wq/";
/// Present while a print job waits, keyed by when it is due: a pass of the print worker reads
/// only what is due, whatever else waits.
pub fn print_queue_key(due_ms: u64, order: &str) -> String {
    format!("{PRINT_QUEUE}{due_ms:020}/{order}")
}
/// Present while a webhook delivery waits, keyed by when it is due.
pub fn webhook_queue_key(due_ms: u64, event_id: &str) -> String {
    format!("{WEBHOOK_QUEUE}{due_ms:020}/{event_id}")
}
/// Whether `write` puts a print job or a webhook delivery on its queue: the only writes the
/// print and webhook workers need waking for.
pub fn queues_work(write: &onecard_engine::records::RecordWrite) -> bool {
    match write {
        onecard_engine::records::RecordWrite::Put(key, _) => {
            key.starts_with(PRINT_QUEUE.as_bytes()) || key.starts_with(WEBHOOK_QUEUE.as_bytes())
        }
        onecard_engine::records::RecordWrite::Remove(_) => false,
    }
}
/// (due time, id) of a queue key (`pq/…` or `wq/…`).
pub fn parse_queue_key(key: &str) -> Option<(u64, &str)> {
    let rest = key.get(3..)?;
    let (due, id) = rest.split_once('/')?;
    Some((due.parse().ok()?, id))
}
pub fn webhook_key(event_id: &str) -> String {
    format!("wh/{event_id}")
}
pub fn session_key(token: &str) -> String {
    format!("ss/{}", sha256_hex(token.as_bytes()))
}
/// The prefix of a consumer's statement.
pub fn statement_prefix(consumer: &str) -> String {
    format!("st/{}/", seg(consumer))
}
/// A statement line: in journal order (record, entry, event).
pub fn statement_key(consumer: &str, seq: u64, entry: usize, event: usize) -> String {
    format!(
        "{}{seq:020}/{entry:06}/{event:06}",
        statement_prefix(consumer)
    )
}

/// The reference of a biller's bill: `bill_` and 32 hex digits of SHA-256 over biller and bill
/// id. It is the id of the engine order that pays the bill, so it must be deterministic (a
/// repeat of the bill finds the same order, I6) and within the engine's 128 characters
/// whatever the ids' lengths; the separator keeps (`a`, `bc`) and (`ab`, `c`) apart.
pub fn bill_ref(biller: &str, bill_id: &str) -> String {
    let digest = sha256_hex(format!("{biller}\0{bill_id}").as_bytes());
    format!("bill_{}", &digest[..32])
}
pub fn bill_key(reference: &str) -> String {
    format!("bl/{}", seg(reference))
}
/// The prefix of a consumer's bills.
pub fn consumer_bills_prefix(consumer: &str) -> String {
    format!("cb/{}/", seg(consumer))
}
/// A consumer's bill, newest first.
pub fn consumer_bill_key(consumer: &str, posted_ms: u64, reference: &str) -> String {
    format!(
        "{}{:020}/{}",
        consumer_bills_prefix(consumer),
        u64::MAX - posted_ms,
        seg(reference)
    )
}
/// Present while a bill may still become overdue, keyed by its due time: the overdue scan
/// reads only the bills that are due, by key range.
pub fn bill_due_key(due_secs: u64, reference: &str) -> String {
    format!("bd/{due_secs:020}/{}", seg(reference))
}
/// (due time, bill ref) of a `bd/…` key.
pub fn parse_bill_due_key(key: &str) -> Option<(u64, &str)> {
    let (due, reference) = key.strip_prefix("bd/")?.split_once('/')?;
    Some((due.parse().ok()?, reference))
}
/// A consumer's standing transfer rule (F5).
pub fn transfer_rule_key(consumer: &str, rule: &str) -> String {
    format!("{}{}", transfer_rules_prefix(consumer), seg(rule))
}
/// The prefix of a consumer's standing transfer rules.
pub fn transfer_rules_prefix(consumer: &str) -> String {
    format!("tr/{}/", seg(consumer))
}
/// A standing transfer rule's next run, keyed by its time: the scheduler reads only the
/// rules that are due, by key range.
pub fn transfer_due_key(due_secs: u64, consumer: &str, rule: &str) -> String {
    format!("td/{due_secs:020}/{}/{}", seg(consumer), seg(rule))
}
/// (due, consumer, rule) of a [`transfer_due_key`].
pub fn parse_transfer_due_key(key: &str) -> Option<(u64, String, String)> {
    let mut parts = key.strip_prefix("td/")?.splitn(3, '/');
    let due = parts.next()?.parse().ok()?;
    let consumer = unseg(parts.next()?);
    let rule = unseg(parts.next()?);
    Some((due, consumer, rule))
}
/// The inverse of [`seg`].
pub fn unseg(part: &str) -> String {
    part.replace("%2F", "/").replace("%25", "%")
}
/// The prefix of a consumer's autopay rules.
pub fn autopay_prefix(consumer: &str) -> String {
    format!("ap/{}/", seg(consumer))
}
pub fn autopay_key(consumer: &str, biller: &str) -> String {
    format!("{}{}", autopay_prefix(consumer), seg(biller))
}
/// The reference of an employer's payroll batch: `pay_` and 32 hex digits of SHA-256 over
/// employer and batch id, as [`bill_ref`]. The engine ids of the batch's funding and of its
/// lines' credits are made from it ([`crate::payroll::funding_id`],
/// [`crate::payroll::credit_id`]), so they are deterministic (a repeat after a crash finds the
/// same credit, I6), short whatever the ids' lengths, and unambiguous (`a-b`/`c` and `a`/`b-c`
/// would meet if the ids were joined with a dash).
pub fn payroll_ref(employer: &str, batch_id: &str) -> String {
    let digest = sha256_hex(format!("{employer}\0{batch_id}").as_bytes());
    format!("pay_{}", &digest[..32])
}
pub fn payroll_key(reference: &str) -> String {
    format!("pb/{}", seg(reference))
}
/// The prefix of a batch's lines, in line order.
pub fn payroll_lines_prefix(reference: &str) -> String {
    format!("pl/{}/", seg(reference))
}
pub fn payroll_line_key(reference: &str, line: u32) -> String {
    format!("{}{line:06}", payroll_lines_prefix(reference))
}
/// The prefix of an employer's batches.
pub fn employer_payrolls_prefix(employer: &str) -> String {
    format!("pe/{}/", seg(employer))
}
/// An employer's batch, newest first.
pub fn employer_payroll_key(employer: &str, created_ms: u64, reference: &str) -> String {
    format!(
        "{}{:020}/{}",
        employer_payrolls_prefix(employer),
        u64::MAX - created_ms,
        seg(reference)
    )
}
/// Present while a batch is not finished, in the order the batches came: the payroll worker's
/// queue, read again at every start.
pub fn payroll_open_key(created_ms: u64, reference: &str) -> String {
    format!("po/{created_ms:020}/{}", seg(reference))
}
/// The batch reference of a `po/…` key.
pub fn parse_payroll_open_key(key: &str) -> Option<&str> {
    key.strip_prefix("po/")?.split_once('/').map(|(_, r)| r)
}

/// Taken once a consumer's notification of this id is in the inbox (notifications are
/// idempotent by id).
pub fn notification_key(id: &str) -> String {
    format!("nt/{}", seg(id))
}
/// The prefix of a consumer's inbox.
pub fn inbox_prefix(consumer: &str) -> String {
    format!("ni/{}/", seg(consumer))
}
/// A consumer's notification in the inbox, newest first.
pub fn inbox_key(consumer: &str, created_ms: u64, id: &str) -> String {
    format!(
        "{}{:020}/{}",
        inbox_prefix(consumer),
        u64::MAX - created_ms,
        seg(id)
    )
}
pub fn consumer_settings_key(consumer: &str) -> String {
    format!("cs/{}", seg(consumer))
}
/// A consumer's aggregate for a month (`month` is `YYYY-MM`, which sorts in time order).
pub fn month_key(consumer: &str, month: &str) -> String {
    format!("am/{}/{month}", seg(consumer))
}
/// A consumer's spending limits.
pub fn alert_settings_key(consumer: &str) -> String {
    format!("al/{}", seg(consumer))
}
/// The prefix of a consumer's fired alerts (all months, in time order).
pub fn fired_alerts_prefix(consumer: &str) -> String {
    format!("af/{}/", seg(consumer))
}
/// The prefix of a consumer's fired alerts of one month.
pub fn fired_alerts_month_prefix(consumer: &str, month: &str) -> String {
    format!("{}{month}/", fired_alerts_prefix(consumer))
}
/// One alert: `threshold` is `total` or `category:<name>` (names are validated words).
pub fn fired_alert_key(consumer: &str, month: &str, threshold: &str) -> String {
    format!(
        "{}{}",
        fired_alerts_month_prefix(consumer, month),
        seg(threshold)
    )
}

pub fn recharge_batch_key(batch: &str) -> String {
    format!("rb/{}", seg(batch))
}
/// A recharge code's record, by the hex of its keyed hash ([`crate::recharge::RechargeKey`]):
/// the code itself is never stored.
pub fn recharge_code_key(mac_hex: &str) -> String {
    format!("rc/{mac_hex}")
}
/// A deposit by bank transfer, by the id of the engine credit that moved it.
pub fn deposit_key(credit: &str) -> String {
    format!("dp/{}", seg(credit))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    to_hex(&Sha256::digest(bytes))
}

/// A random token of `bytes` random bytes, hex.
///
/// From the thread's CSPRNG (`rand::thread_rng`: ChaCha, seeded and reseeded from the OS),
/// not a `getrandom` system call per id: ids and tokens are drawn for every request.
pub fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut b);
    to_hex(&b)
}

/// A new order id: creation time first, so that ids sort in creation order.
pub fn new_order_id(now_ms: u64) -> String {
    format!("ord_{now_ms:012x}{}", random_hex(8))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub name: String,
    pub quantity: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub name: String,
    pub address: String,
    pub phone: String,
}

/// An order as the merchant created it (step 1): the checkout session the reader opens. Its
/// money state is the engine's, once the order is placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkout {
    pub order_id: String,
    pub merchant: String,
    /// The merchant's own reference, if it gave one.
    pub reference: Option<String>,
    /// Cents.
    pub amount_cents: i64,
    pub currency: String,
    pub items: Vec<Item>,
    pub delivery: Delivery,
    /// The release condition, typed; stored in the API's form (`{"on":"receipt"}`, …).
    pub release: ReleaseJson,
    pub digital: bool,
    /// Unix seconds.
    pub created_at: u64,
    /// Cancelled by the merchant before it was paid.
    pub cancelled_at: Option<u64>,
    /// When the merchant marked the goods shipped (unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shipped_at: Option<u64>,
}

/// The first byte of a checkout stored in its binary form, version 1 ([`Checkout`]'s
/// [`Codec`]): bincode of [`StoredCheckoutV1`]. A checkout stored as JSON by an earlier version
/// starts with `{` and still reads.
const CHECKOUT_V1: u8 = 1;

/// Largest binary record the decoder accepts (bincode's limit: a corrupt length prefix is an
/// error, not an allocation of whatever it says). The API's body limit keeps records far
/// below it.
const MAX_RECORD_BYTES: u64 = 1 << 20;

/// The bincode options the node's binary records (a checkout, an idempotency record) are
/// written with. No limit: with one, bincode sizes the value in a pass of its own before
/// writing it, and what the node writes is bounded by the API's checks already.
fn record_bincode() -> impl bincode::Options {
    bincode::DefaultOptions::new()
}

/// [`record_bincode`] with the limit for reading (the same encoding: a limit changes none).
fn record_bincode_to_read() -> impl bincode::Options {
    use bincode::Options;
    record_bincode().with_limit(MAX_RECORD_BYTES)
}

/// The binary form of a node record: its `version` byte, then bincode of `stored`.
fn binary_form(version: u8, stored: &impl Serialize) -> Vec<u8> {
    use bincode::Options;
    let mut out = vec![version];
    // Plain data into a Vec: cannot fail; if it ever did, the record would be the version
    // byte alone, which reads as corrupt.
    let _ = record_bincode().serialize_into(&mut out, stored);
    out
}

/// The form a node record's stored bytes are in.
enum StoredForm<'a> {
    /// The binary form's bincode (after the version byte).
    Binary(&'a [u8]),
    /// The JSON an earlier version stored.
    Json(&'a [u8]),
}

/// Which form `bytes` of a `what` record are in, whose binary form is `version`.
fn stored_form<'a>(what: &str, version: u8, bytes: &'a [u8]) -> Result<StoredForm<'a>, String> {
    match bytes.first() {
        Some(&v) if v == version => Ok(StoredForm::Binary(&bytes[1..])),
        Some(b'{') => Ok(StoredForm::Json(bytes)),
        Some(b) => Err(format!("{what}: unknown stored form {b}")),
        None => Err(format!("{what}: empty record")),
    }
}

/// The value of a `what` record's binary form (bincode, bounded by [`MAX_RECORD_BYTES`]).
fn from_binary<T: serde::de::DeserializeOwned>(what: &str, bincode: &[u8]) -> Result<T, String> {
    use bincode::Options;
    record_bincode_to_read()
        .deserialize(bincode)
        .map_err(|e| format!("{what}: {e}"))
}

/// The value of a `what` record's JSON form.
fn from_json<T: serde::de::DeserializeOwned>(what: &str, json: &[u8]) -> Result<T, String> {
    serde_json::from_slice(json).map_err(|e| format!("{what}: {e}"))
}

/// A `what` record whose binary form is bincode of the whole value after its `version` byte,
/// or the JSON of earlier versions.
fn decode_whole<T: serde::de::DeserializeOwned>(
    what: &str,
    version: u8,
    bytes: &[u8],
) -> Result<T, String> {
    match stored_form(what, version, bytes)? {
        StoredForm::Binary(b) => from_binary(what, b),
        StoredForm::Json(j) => from_json(what, j),
    }
}

/// [`Checkout`]'s fields in its stored order, borrowed for encoding. Read back as
/// [`StoredCheckoutV1`]: the two must list the same fields in the same order.
#[derive(Serialize)]
struct StoredCheckoutRef<'a> {
    order_id: &'a str,
    merchant: &'a str,
    reference: Option<&'a str>,
    amount_cents: i64,
    currency: &'a str,
    items: &'a [Item],
    delivery: &'a Delivery,
    release: &'a onecard_engine::Release,
    digital: bool,
    created_at: u64,
    cancelled_at: Option<u64>,
    shipped_at: Option<u64>,
}

#[derive(Deserialize)]
struct StoredCheckoutV1 {
    order_id: String,
    merchant: String,
    reference: Option<String>,
    amount_cents: i64,
    currency: String,
    items: Vec<Item>,
    delivery: Delivery,
    release: onecard_engine::Release,
    digital: bool,
    created_at: u64,
    cancelled_at: Option<u64>,
    shipped_at: Option<u64>,
}

/// A checkout is read by every step of its payment: stored in a binary form (about half the
/// bytes of its JSON, and no JSON to parse on the first read of each payment).
impl Codec for Checkout {
    fn encode(&self) -> Vec<u8> {
        let stored = StoredCheckoutRef {
            order_id: &self.order_id,
            merchant: &self.merchant,
            reference: self.reference.as_deref(),
            amount_cents: self.amount_cents,
            currency: &self.currency,
            items: &self.items,
            delivery: &self.delivery,
            release: &self.release.0,
            digital: self.digital,
            created_at: self.created_at,
            cancelled_at: self.cancelled_at,
            shipped_at: self.shipped_at,
        };
        binary_form(CHECKOUT_V1, &stored)
    }

    fn decode(bytes: &[u8]) -> Result<Self, String> {
        match stored_form("checkout", CHECKOUT_V1, bytes)? {
            StoredForm::Binary(b) => {
                let c: StoredCheckoutV1 = from_binary("checkout", b)?;
                Ok(Checkout {
                    order_id: c.order_id,
                    merchant: c.merchant,
                    reference: c.reference,
                    amount_cents: c.amount_cents,
                    currency: c.currency,
                    items: c.items,
                    delivery: c.delivery,
                    release: ReleaseJson(c.release),
                    digital: c.digital,
                    created_at: c.created_at,
                    cancelled_at: c.cancelled_at,
                    shipped_at: c.shipped_at,
                })
            }
            StoredForm::Json(j) => from_json("checkout", j),
        }
    }
}

/// A release condition, typed, in the API's JSON form on the wire and in the store:
/// `{"on":"receipt"}`, `{"on":"code","code":"…"}`, `{"on":"time","after_secs":…}`. A stored
/// form that does not parse is an error when the record is read, never a panic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "serde_json::Value", into = "serde_json::Value")]
pub struct ReleaseJson(pub onecard_engine::Release);

impl TryFrom<serde_json::Value> for ReleaseJson {
    type Error = String;

    fn try_from(v: serde_json::Value) -> Result<Self, String> {
        onecard_engine::engine::parse_release(&v)
            .map(ReleaseJson)
            .map_err(|r| r.message)
    }
}

impl From<ReleaseJson> for serde_json::Value {
    fn from(r: ReleaseJson) -> Self {
        use onecard_engine::Release;
        match r.0 {
            Release::Receipt => serde_json::json!({"on": "receipt"}),
            Release::Code(code) => serde_json::json!({"on": "code", "code": code}),
            Release::Time { after_secs } => {
                serde_json::json!({"on": "time", "after_secs": after_secs})
            }
        }
    }
}

/// A merchant's API settings. The API key is kept only as its SHA-256 (`ak/…`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MerchantProfile {
    pub id: String,
    pub name: String,
    pub webhook_url: Option<String>,
    /// The secret the webhooks are signed with (HMAC-SHA256); given to the merchant once.
    pub webhook_secret: String,
    /// The printer's address (`host:port`, port 9100 by default).
    pub printer: Option<String>,
    /// The SHA-256 of the merchant's API key (hex), so that rotating the key can revoke it.
    #[serde(default)]
    pub api_key_sha256: Option<String>,
    /// When the node pays the merchant's balance out to its bank account by itself.
    #[serde(default)]
    pub payout: Option<PayoutPolicy>,
    /// Set for a biller (F7): a merchant that posts bills to consumers' virtual accounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub biller: Option<BillerKind>,
    /// What the merchant sells, for the consumers' spending analysis (F6): a lowercase word
    /// (`groceries`); none is `uncategorised` there ([`crate::analysis::category_of`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// Set for an employer (F12): a merchant that uploads payroll batches, paid from its
    /// balance, which each batch funds from its bank account first.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub employer: bool,
}

/// What a biller bills for (F7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BillerKind {
    Water,
    Electricity,
    Gas,
    Phone,
}

impl BillerKind {
    /// The kind as the API writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            BillerKind::Water => "water",
            BillerKind::Electricity => "electricity",
            BillerKind::Gas => "gas",
            BillerKind::Phone => "phone",
        }
    }
}

/// A consumer's rule for paying one biller's bills (F7). Without one, bills wait for the
/// consumer ([`AutopayRule::Ask`]).
///
/// JSON: `{"rule":"always"}`, `{"rule":"up_to","amount":"50.00"}`, `{"rule":"on_due_date"}`,
/// `{"rule":"ask"}`; any other field is refused (serde's `deny_unknown_fields` does not reach
/// the unit variants of a tagged enum, hence [`RawAutopayRule`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case", try_from = "RawAutopayRule")]
pub enum AutopayRule {
    /// Pay every bill at once.
    Always,
    /// Pay at once up to `amount`; a larger bill waits for the consumer.
    UpTo { amount: onecard_engine::Amount },
    /// Reserve at once against credit, settle on the due date.
    OnDueDate,
    /// Every bill waits for the consumer to approve or decline it.
    Ask,
}

/// An autopay rule as sent, checked into an [`AutopayRule`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAutopayRule {
    rule: String,
    #[serde(default)]
    amount: Option<onecard_engine::Amount>,
}

impl TryFrom<RawAutopayRule> for AutopayRule {
    type Error = String;

    fn try_from(r: RawAutopayRule) -> Result<Self, String> {
        match (r.rule.as_str(), r.amount) {
            ("up_to", Some(amount)) => Ok(AutopayRule::UpTo { amount }),
            ("up_to", None) => Err("rule up_to needs an \"amount\"".into()),
            (_, Some(_)) => Err(format!("rule {:?} takes no \"amount\"", r.rule)),
            ("always", None) => Ok(AutopayRule::Always),
            ("on_due_date", None) => Ok(AutopayRule::OnDueDate),
            ("ask", None) => Ok(AutopayRule::Ask),
            (other, None) => Err(format!(
                "rule {other:?} is not one of always, up_to, on_due_date, ask"
            )),
        }
    }
}

/// Where a bill stands in the node. Its money is the engine's: once the node has decided to
/// pay it (`Paying`), the engine order of the bill's reference is the truth (pending,
/// settled, refused, ...), read, never copied here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BillState {
    /// Waiting for the consumer to approve or decline it.
    AwaitingApproval,
    /// Declined by the consumer: nothing is paid.
    Declined,
    /// Being paid: the engine order is placed (or, after a crash right before placing, is
    /// placed again by a repeat of the request or by the overdue scan).
    Paying,
}

/// A bill a biller posted to a consumer's virtual account (F7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bill {
    /// [`bill_ref`]: also the engine order's id.
    pub reference: String,
    pub biller: String,
    pub bill_id: String,
    pub consumer: String,
    pub amount: onecard_engine::Amount,
    /// Unix seconds.
    pub due_date: u64,
    pub period: String,
    /// Unix milliseconds.
    pub posted_ms: u64,
    pub state: BillState,
    /// The engine order's release once paying: when it settles, in seconds after placement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_after_secs: Option<u64>,
    /// The rule that decided what happened to it when it was posted.
    pub rule: String,
    /// When the consumer approved or declined it (unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<u64>,
}

/// Where an employee's salary goes (F12).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayAccount {
    /// The employee's wallet; what the cap has no room for goes on to their designated bank
    /// account (the engine's `WalletOverflowToBank`).
    Wallet,
    /// The employee's linked bank account: today the one designated bank account a consumer
    /// has (several linked accounts come later, and then a line names one).
    Bank,
}

impl PayAccount {
    pub fn as_str(self) -> &'static str {
        match self {
            PayAccount::Wallet => "wallet",
            PayAccount::Bank => "bank",
        }
    }
}

/// Where a payroll batch stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayrollState {
    /// Stored; being funded and paid by the worker (`po/` holds it).
    Paying,
    /// Every line paid.
    Done,
    /// Every line decided, some failed (each with its reason).
    DoneWithFailures,
    /// Not funded (the employer's bank refused): no line paid.
    Failed,
}

impl PayrollState {
    pub fn as_str(self) -> &'static str {
        match self {
            PayrollState::Paying => "paying",
            PayrollState::Done => "done",
            PayrollState::DoneWithFailures => "done_with_failures",
            PayrollState::Failed => "failed",
        }
    }
}

/// Why a line or a batch failed: a stable code and the engine's or bank's message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureReason {
    pub code: String,
    pub message: String,
}

/// A payroll batch an employer uploaded (F12). Its lines are records of their own
/// ([`PayrollLine`]): each line's outcome is one small commit, not a rewrite of the batch.
/// The counts here move in the same commit as the line they count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayrollBatch {
    /// [`payroll_ref`].
    pub reference: String,
    pub employer: String,
    pub batch_id: String,
    /// SHA-256 over the lines (employee, amount, account, in order): the same batch id with
    /// the same lines is the same batch, whatever the file's format.
    pub digest: String,
    pub total: onecard_engine::Amount,
    pub lines: u32,
    pub state: PayrollState,
    /// Whether the employer's balance was funded with `total` from its bank account.
    pub funded: bool,
    pub paid: u32,
    pub failed: u32,
    pub paid_total: onecard_engine::Amount,
    /// Why the batch failed (it was not funded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<FailureReason>,
    /// Unix milliseconds.
    pub created_ms: u64,
    /// Unix seconds, once finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<u64>,
}

/// A payroll line's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineState {
    Pending,
    Paid,
    Failed,
}

impl LineState {
    pub fn as_str(self) -> &'static str {
        match self {
            LineState::Pending => "pending",
            LineState::Paid => "paid",
            LineState::Failed => "failed",
        }
    }
}

/// One line of a payroll batch: an employee's salary, and what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayrollLine {
    /// The line's number in the file (CSV: the header is line 1) or its position in the JSON
    /// `lines` (from 1); part of the engine credit's id.
    pub line: u32,
    pub employee: String,
    pub amount: onecard_engine::Amount,
    pub account: PayAccount,
    pub state: LineState,
    /// Once paid: what went into the wallet and what to the bank account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_wallet: Option<onecard_engine::Amount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_bank: Option<onecard_engine::Amount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<FailureReason>,
}

/// A consumer's notification settings: the webhook their notifications are also sent to,
/// signed with the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerNotifySettings {
    pub webhook_url: Option<String>,
    pub webhook_secret: String,
}

/// A batch of prepaid recharge cards (F8), as the operator issued it. Its codes are given to
/// the operator once, in the answer to the issuing request; the node keeps each only as its
/// keyed hash ([`RechargeCode`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RechargeBatch {
    pub id: String,
    pub count: u32,
    /// The value of each card of the batch.
    pub value: onecard_engine::Amount,
    /// Unix seconds: a code is refused from then on.
    pub expires_at: u64,
    /// Unix seconds.
    pub created_at: u64,
    /// Which configured secret the codes' key is derived from (`data_key`, `issuer_key`): the
    /// codes match only while the node runs with it.
    pub key_source: String,
    /// A check value of the key (16 hex digits of an HMAC of a fixed label under it), so that
    /// a node opened with another key can be told apart from codes that were never issued.
    pub key_check: String,
}

/// One prepaid recharge code, known only by its keyed hash (the key of the record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RechargeCode {
    pub batch: String,
    pub value: onecard_engine::Amount,
    /// Unix seconds.
    pub expires_at: u64,
    /// Set once the code is redeemed (the engine's credit id makes it once, I6; this mark is
    /// what the node answers from and shows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redeemed: Option<Redemption>,
}

/// Who redeemed a recharge code, when, and where its value went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redemption {
    pub consumer: String,
    /// Unix seconds.
    pub at: u64,
    /// The engine credit's id.
    pub credit: String,
    pub to_wallet: onecard_engine::Amount,
    pub to_bank: onecard_engine::Amount,
}

/// A deposit by bank transfer from the consumer's designated bank account into the wallet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deposit {
    /// The engine credit's id.
    pub credit: String,
    pub consumer: String,
    pub amount: onecard_engine::Amount,
    /// Unix seconds.
    pub at: u64,
}

/// When a merchant's balance is paid out by itself (the node's scheduler, `payouts.rs`): once
/// it reaches `threshold`, and/or every `every_secs` (at each multiple of it since the Unix
/// epoch) when there is anything to pay. The whole balance not held for a refund goes out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayoutPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<onecard_engine::Amount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_secs: Option<u64>,
}

impl PayoutPolicy {
    /// An empty policy (`{}`) means none.
    pub fn is_empty(&self) -> bool {
        self.threshold.is_none() && self.every_secs.is_none()
    }
}

/// The JSON `null`: what an [`IdemRecord`] holds when it rebuilds its answer.
pub fn null_json() -> Box<serde_json::value::RawValue> {
    serde_json::value::RawValue::NULL.to_owned()
}

/// SHA-256 of a request (method, path, body): what tells a repeat from another request under
/// the same `Idempotency-Key`.
pub type Fingerprint = [u8; 32];

pub fn sha256(bytes: &[u8]) -> Fingerprint {
    Sha256::digest(bytes).into()
}

/// What a request with an `Idempotency-Key` got: replayed for the same request, refused (422)
/// for another. Stored in a binary form ([`Codec`]); the JSON of earlier versions still reads.
#[derive(Debug, Clone)]
pub struct IdemRecord {
    pub fingerprint: Fingerprint,
    pub status: u16,
    /// The answer's JSON, as it was sent; null when `new_order` says how to rebuild it.
    pub body: Box<serde_json::value::RawValue>,
    /// An order creation's answer in a few fields: with the checkout (written in the same
    /// commit, never removed) it rebuilds the answer exactly, so the record does not hold it.
    pub new_order: Option<NewOrderAnswer>,
    /// When it was stored (unix seconds); swept after `[node] idempotency_ttl_secs`.
    pub at: u64,
}

/// The first byte of an [`IdemRecord`] in its binary form, version 1: bincode of
/// [`StoredIdemV1`]. Earlier versions stored JSON, which starts with `{`.
const IDEM_V1: u8 = 1;

/// [`IdemRecord`]'s fields in their stored order, borrowed for encoding; read back as
/// [`StoredIdemV1`] (the two must list the same fields in the same order).
#[derive(Serialize)]
struct StoredIdemRef<'a> {
    fingerprint: &'a Fingerprint,
    status: u16,
    at: u64,
    new_order: Option<&'a NewOrderAnswer>,
    body: &'a str,
}

#[derive(Deserialize)]
struct StoredIdemV1 {
    fingerprint: Fingerprint,
    status: u16,
    at: u64,
    new_order: Option<NewOrderAnswer>,
    body: String,
}

/// The JSON form of an [`IdemRecord`] that earlier versions stored (the fingerprint in hex).
#[derive(Deserialize)]
struct IdemRecordJson {
    fingerprint: String,
    status: u16,
    #[serde(default = "null_json")]
    body: Box<serde_json::value::RawValue>,
    #[serde(default)]
    new_order: Option<NewOrderAnswer>,
    #[serde(default)]
    at: u64,
}

/// Every request with a key stores one of these (about four a payment): a binary form halves
/// what the JSON cost in bytes (the fingerprint raw, no field names) and in encoding.
impl Codec for IdemRecord {
    fn encode(&self) -> Vec<u8> {
        let stored = StoredIdemRef {
            fingerprint: &self.fingerprint,
            status: self.status,
            at: self.at,
            new_order: self.new_order.as_ref(),
            body: self.body.get(),
        };
        binary_form(IDEM_V1, &stored)
    }

    fn decode(bytes: &[u8]) -> Result<Self, String> {
        const WHAT: &str = "idempotency record";
        match stored_form(WHAT, IDEM_V1, bytes)? {
            StoredForm::Binary(b) => {
                let r: StoredIdemV1 = from_binary(WHAT, b)?;
                Ok(IdemRecord {
                    fingerprint: r.fingerprint,
                    status: r.status,
                    body: serde_json::value::RawValue::from_string(r.body)
                        .map_err(|e| format!("{WHAT}: the answer: {e}"))?,
                    new_order: r.new_order,
                    at: r.at,
                })
            }
            StoredForm::Json(j) => {
                let r: IdemRecordJson = from_json(WHAT, j)?;
                let fingerprint = from_hex_fingerprint(&r.fingerprint)
                    .ok_or("idempotency record: the fingerprint is not 64 hex digits")?;
                Ok(IdemRecord {
                    fingerprint,
                    status: r.status,
                    body: r.body,
                    new_order: r.new_order,
                    at: r.at,
                })
            }
        }
    }
}

fn from_hex_fingerprint(hex: &str) -> Option<Fingerprint> {
    onecard_protocol::wire::from_hex(hex)?.try_into().ok()
}

/// What an order creation answered beyond its checkout: the print status and the payment
/// deadline, which depend on settings that may change later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewOrderAnswer {
    pub order: String,
    pub print: String,
    pub checkout_expires_at: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrintState {
    /// Waiting for its (next) attempt.
    Queued,
    Printed,
}

/// A delivery slip to print (F16): queued when the order is placed, printed exactly once
/// unless a reprint is asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrintJob {
    pub order_id: String,
    pub merchant: String,
    pub printer: String,
    pub state: PrintState,
    pub attempts: u32,
    pub last_error: Option<String>,
    /// Unix milliseconds of the next attempt while queued.
    pub next_attempt_ms: u64,
    pub printed_at: Option<u64>,
    /// Prints asked for after the first.
    pub reprints: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    Pending,
    Delivered,
    /// Not delivered within `[node] webhook_give_up_after_secs`: no more attempts.
    Abandoned,
}

/// One webhook event for one recipient (a merchant, or a consumer with a webhook): delivered
/// at least once, retried with back-off, with the same event id every time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookDelivery {
    pub event_id: String,
    /// Whose endpoint; merchants' when absent (records from before consumers had webhooks).
    #[serde(default)]
    pub party: crate::notify::PartyKind,
    /// The recipient's id (`merchant` in records from before consumers had webhooks).
    #[serde(alias = "merchant")]
    pub recipient: String,
    pub url: String,
    /// The JSON body, exactly as signed and sent.
    pub payload: String,
    pub state: DeliveryState,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub next_attempt_ms: u64,
    pub delivered_at: Option<u64>,
    /// When the event was queued (unix ms): attempts stop after the give-up time.
    #[serde(default)]
    pub created_ms: u64,
}

/// A consumer API session, issued when a card and PIN authenticated at the consumer's reader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub consumer: String,
    pub expires_at: u64,
}

/// What the sessions' sweep reads of every record under `ss/`: when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expiring {
    pub expires_at: u64,
}

/// Who signed in to the web pages: a consumer (with the reader's one-time code), a merchant
/// (with its API key) or the operator (with the administrator's token).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebParty {
    #[default]
    Consumer,
    Merchant,
    Operator,
}

/// A session of the web pages (`ss/w/<SHA-256 of the cookie's token>`: under `ss/`, so that
/// the sessions' sweep removes it when expired). It opens the pages of its party only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebSession {
    /// Whose pages it opens (a consumer's in records from before merchants and the operator
    /// signed in).
    #[serde(default)]
    pub party: WebParty,
    /// The consumer's or the merchant's id; `operator` for the operator.
    #[serde(alias = "consumer")]
    pub id: String,
    pub expires_at: u64,
    /// The token every form of the session carries (synchroniser token against CSRF).
    pub csrf: String,
    /// What ties the session to the credential it was opened with, so that it ends when the
    /// credential no longer opens the API: for a merchant, the SHA-256 of its API key (as
    /// `ak/…` holds it: a rotated key ends the session); for the operator, the SHA-256 of the
    /// administrator token's SHA-256 and the cookie's token (a changed token ends it, and the
    /// token's own hash is not stored). None for a consumer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

pub fn web_session_key(token: &str) -> String {
    format!("ss/w/{}", sha256_hex(token.as_bytes()))
}

/// A one-time web sign-in code shown at the reader (`ss/c/<SHA-256 of the code>`, a
/// [`Session`] record: whose, and until when), removed when used.
pub fn web_code_key(code: &str) -> String {
    format!("ss/c/{}", sha256_hex(code.as_bytes()))
}

/// The prefix of a merchant's payouts.
pub fn merchant_payouts_prefix(merchant: &str) -> String {
    format!("mp/{}/", seg(merchant))
}
/// A merchant's payout, newest first: by the journal record, entry and event that made it.
pub fn merchant_payout_key(merchant: &str, seq: u64, entry: usize, event: usize) -> String {
    format!(
        "{}{:020}/{entry:06}/{event:06}",
        merchant_payouts_prefix(merchant),
        u64::MAX - seq
    )
}

/// A payout of a merchant's balance to its bank account, as the outbox read it from the
/// journal (paid, or refused by the bank): what the merchant's pages list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MerchantPayout {
    /// The bank operation's id.
    pub payout: String,
    pub amount: onecard_engine::Amount,
    /// Unix seconds (the engine's clock).
    pub at: u64,
    /// Why the bank refused it; none when it was paid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// A line of a consumer's statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatementLine {
    pub at: u64,
    pub event: String,
    pub order_id: Option<String>,
    pub merchant: Option<String>,
    /// Signed, from the consumer's point of view, as text ("-12.50").
    pub amount: Option<String>,
    pub detail: Option<String>,
}

/// The first byte of a [`StatementLine`] in its binary form, version 1: bincode of the line.
/// Earlier versions stored JSON, which starts with `{`.
const STATEMENT_LINE_V1: u8 = 1;

/// A settled payment writes three lines (placed, settled, topped up): a binary form is about
/// half the bytes of their JSON, in the log and in the view's checkpoint.
impl Codec for StatementLine {
    fn encode(&self) -> Vec<u8> {
        binary_form(STATEMENT_LINE_V1, self)
    }

    fn decode(bytes: &[u8]) -> Result<Self, String> {
        decode_whole("statement line", STATEMENT_LINE_V1, bytes)
    }
}

/// A consumer's income and spending in one calendar month (UTC), as the history index
/// ([`crate::analysis`]) has counted them from the journal. Maps are keyed by name and
/// serialised in key order; amounts are exact ([`onecard_engine::Amount`], as strings).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonthAggregate {
    /// Settled orders less refunds, in the month they happened: negative when refunds of
    /// earlier months' orders outweigh this month's purchases.
    pub spending: onecard_engine::Amount,
    #[serde(default)]
    pub by_category: std::collections::BTreeMap<String, onecard_engine::Amount>,
    #[serde(default)]
    pub by_merchant: std::collections::BTreeMap<String, onecard_engine::Amount>,
    /// Credits from outside the consumer's own money: recharge cards and salaries
    /// (`CreditSource::is_income`). Top-ups, deposits and transfers from the consumer's own bank
    /// accounts are not income: they move the consumer's own money.
    pub income: onecard_engine::Amount,
    /// `recharge`, `salary`.
    #[serde(default)]
    pub income_by_source: std::collections::BTreeMap<String, onecard_engine::Amount>,
    #[serde(default)]
    pub orders_settled: u64,
    #[serde(default)]
    pub refunds: u64,
    #[serde(default)]
    pub credits: u64,
}

/// The first byte of a [`MonthAggregate`] in its binary form, version 1: bincode of the
/// aggregate. Earlier versions stored JSON, which starts with `{`.
const MONTH_AGGREGATE_V1: u8 = 1;

/// The analysis follower reads and rewrites the consumer's month for every settlement, refund
/// and credit: a binary form saves parsing the amounts and names from JSON each time.
impl Codec for MonthAggregate {
    fn encode(&self) -> Vec<u8> {
        binary_form(MONTH_AGGREGATE_V1, self)
    }

    fn decode(bytes: &[u8]) -> Result<Self, String> {
        decode_whole("month aggregate", MONTH_AGGREGATE_V1, bytes)
    }
}

/// A consumer's spending limits per calendar month: overall and per category. Set by the
/// consumer (`PUT /v1/consumer/alerts`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertSettings {
    #[serde(default)]
    pub monthly_limit: Option<onecard_engine::Amount>,
    #[serde(default)]
    pub categories: std::collections::BTreeMap<String, onecard_engine::Amount>,
}

/// A spending limit crossed in a month: recorded once per limit per month, in the same
/// commit as the aggregate whose update crossed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FiredAlert {
    /// `YYYY-MM`.
    pub month: String,
    /// `total`, or the category whose limit it is.
    pub scope: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    pub limit: onecard_engine::Amount,
    /// What the month's spending (overall, or in the category) came to with the crossing.
    pub spent: onecard_engine::Amount,
    /// When the spending that crossed it happened (the journal's time, unix seconds).
    pub at: u64,
    /// The order whose settlement crossed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkout(release: onecard_engine::Release, shipped_at: Option<u64>) -> Checkout {
        Checkout {
            order_id: "ord_1".into(),
            merchant: "shop/1".into(),
            reference: Some("ref \u{e9}".into()),
            amount_cents: 12_345,
            currency: "EUR".into(),
            items: vec![Item {
                name: "Tea".into(),
                quantity: 2,
            }],
            delivery: Delivery {
                name: "Ann".into(),
                address: "1 Road".into(),
                phone: "+44 1".into(),
            },
            release: ReleaseJson(release),
            digital: false,
            created_at: 1_796_000_000,
            cancelled_at: None,
            shipped_at,
        }
    }

    /// A checkout reads back as it was written, in its binary form and in the JSON an earlier
    /// version stored; damaged bytes are an error, never a panic.
    #[test]
    fn a_checkout_reads_back_from_its_binary_form_and_from_the_json_of_earlier_versions() {
        use onecard_engine::Release;
        for c in [
            checkout(Release::Receipt, None),
            checkout(Release::Code("4711".into()), Some(1_796_000_100)),
            checkout(Release::Time { after_secs: 86_400 }, None),
        ] {
            let bytes = c.encode();
            assert_eq!(bytes[0], CHECKOUT_V1);
            assert_eq!(Checkout::decode(&bytes).unwrap(), c);
            let json = serde_json::to_vec(&c).unwrap();
            assert!(
                bytes.len() * 2 < json.len() + 40,
                "{} against {}",
                bytes.len(),
                json.len()
            );
            assert_eq!(Checkout::decode(&json).unwrap(), c);
            for cut in 0..bytes.len() {
                assert!(Checkout::decode(&bytes[..cut]).is_err(), "cut at {cut}");
            }
        }
        assert!(Checkout::decode(&[9, 1, 2, 3]).is_err());
        // A length prefix claiming far more than there is fails without allocating it.
        let mut huge = vec![CHECKOUT_V1, 0xfd];
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(Checkout::decode(&huge).is_err());
    }

    /// An idempotency record reads back as it was written, from its binary form and from the
    /// JSON an earlier version stored; damaged bytes are an error, never a panic.
    #[test]
    fn an_idempotency_record_reads_back_from_its_binary_form_and_from_earlier_json() {
        let created = NewOrderAnswer {
            order: "ord_1".into(),
            print: "queued".into(),
            checkout_expires_at: 1_796_000_900,
        };
        for (body, new_order) in [
            (r#"{"outcome":"authorised","order":{"id":"ord_1"}}"#, None),
            ("null", Some(created)),
        ] {
            let r = IdemRecord {
                fingerprint: sha256(b"POST /v1/orders\n{}"),
                status: 201,
                body: serde_json::value::RawValue::from_string(body.into()).unwrap(),
                new_order,
                at: 1_796_000_000,
            };
            let bytes = r.encode();
            let back = IdemRecord::decode(&bytes).unwrap();
            assert_eq!(
                (
                    back.fingerprint,
                    back.status,
                    back.body.get(),
                    &back.new_order,
                    back.at
                ),
                (r.fingerprint, r.status, r.body.get(), &r.new_order, r.at)
            );
            for cut in 0..bytes.len() {
                assert!(IdemRecord::decode(&bytes[..cut]).is_err(), "cut at {cut}");
            }
            let json = serde_json::json!({
                "fingerprint": to_hex(&r.fingerprint),
                "status": r.status,
                "body": serde_json::from_str::<serde_json::Value>(body).unwrap(),
                "new_order": r.new_order,
                "at": r.at,
            });
            let legacy = IdemRecord::decode(&serde_json::to_vec(&json).unwrap()).unwrap();
            assert_eq!(
                (
                    legacy.fingerprint,
                    legacy.status,
                    &legacy.new_order,
                    legacy.at
                ),
                (r.fingerprint, r.status, &r.new_order, r.at)
            );
            assert!(bytes.len() + 60 < serde_json::to_vec(&json).unwrap().len());
        }
        let bad_fingerprint = br#"{"fingerprint":"abc","status":200,"body":null}"#;
        assert!(IdemRecord::decode(bad_fingerprint).is_err());
        assert!(IdemRecord::decode(&[7]).is_err());
    }

    /// A statement line reads back from its binary form and from the JSON of earlier versions.
    #[test]
    fn a_statement_line_reads_back_from_its_binary_form_and_from_earlier_json() {
        let line = StatementLine {
            at: 1_796_000_000,
            event: "order.settled".into(),
            order_id: Some("ord_1".into()),
            merchant: None,
            amount: Some("-12.50".into()),
            detail: Some("wallet 12.50, bank 0.00".into()),
        };
        let bytes = line.encode();
        assert_eq!(StatementLine::decode(&bytes).unwrap(), line);
        let json = serde_json::to_vec(&line).unwrap();
        assert_eq!(StatementLine::decode(&json).unwrap(), line);
        assert!(bytes.len() * 2 < json.len());
        for cut in 0..bytes.len() {
            assert!(
                StatementLine::decode(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
    }

    /// A month's aggregate reads back from its binary form, amounts exact (negative spending
    /// included), and from the JSON of earlier versions; every cut of the binary form is an
    /// error.
    #[test]
    fn a_month_aggregate_reads_back_from_its_binary_form_and_from_earlier_json() {
        let a = |s: &str| onecard_engine::Amount::parse(s).unwrap();
        let agg = MonthAggregate {
            spending: a("5.25").checked_neg(),
            by_category: [("groceries".to_string(), a("12.50"))].into(),
            by_merchant: [
                ("shop".to_string(), a("12.50")),
                ("gadgets".into(), a("0.01")),
            ]
            .into(),
            income: a("2500.00"),
            income_by_source: [("salary".to_string(), a("2500.00"))].into(),
            orders_settled: 3,
            refunds: 1,
            credits: 1,
        };
        let bytes = agg.encode();
        assert_eq!(bytes[0], MONTH_AGGREGATE_V1);
        assert_eq!(MonthAggregate::decode(&bytes).unwrap(), agg);
        let json = serde_json::to_vec(&agg).unwrap();
        assert_eq!(MonthAggregate::decode(&json).unwrap(), agg);
        assert!(bytes.len() < json.len());
        for cut in 0..bytes.len() {
            assert!(
                MonthAggregate::decode(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
    }

    /// The typed release is stored and answered in the API's own form, and a stored form that
    /// does not parse is an error on reading.
    #[test]
    fn a_release_keeps_the_apis_json_form() {
        for v in [
            serde_json::json!({"on": "receipt"}),
            serde_json::json!({"on": "code", "code": "4711"}),
            serde_json::json!({"on": "time", "after_secs": 86400}),
        ] {
            let typed: ReleaseJson = serde_json::from_value(v.clone()).unwrap();
            assert_eq!(serde_json::to_value(&typed).unwrap(), v);
        }
        assert!(serde_json::from_value::<ReleaseJson>(serde_json::json!({"on": "later"})).is_err());
    }

    #[test]
    fn ids_with_slashes_cannot_reach_into_other_ids_keys() {
        assert_ne!(idem_key("m:a", "b/k1"), idem_key("m:a/b", "k1"));
        assert!(!merchant_order_key("a/b", "ord_1").starts_with(&merchant_orders_prefix("a")));
        assert!(!statement_key("c/x", 1, 0, 0).starts_with(&statement_prefix("c")));
        assert!(!consumer_bill_key("c/x", 1, "bill_1").starts_with(&consumer_bills_prefix("c")));
        assert!(!autopay_key("c/x", "b").starts_with(&autopay_prefix("c")));
        assert!(!transfer_rule_key("c/x", "r").starts_with(&transfer_rules_prefix("c")));
        for (consumer, rule) in [("c/x", "r"), ("c%2F", "r/1"), ("c", "r")] {
            let key = transfer_due_key(7, consumer, rule);
            assert_eq!(
                parse_transfer_due_key(&key),
                Some((7, consumer.to_string(), rule.to_string()))
            );
        }
        assert_ne!(autopay_key("c/x", "b"), autopay_key("c", "x/b"));
        assert!(!inbox_key("c/x", 1, "n").starts_with(&inbox_prefix("c")));
        assert_ne!(bill_ref("a", "bc"), bill_ref("ab", "c"));
        assert_ne!(bill_ref("a/b", "c"), bill_ref("a", "b/c"));
        assert!(!fired_alert_key("c/x", "2026-01", "total").starts_with(&fired_alerts_prefix("c")));
        assert_ne!(month_key("c/x", "2026-01"), month_key("c", "x/2026-01"));
        assert_ne!(payroll_ref("a-b", "c"), payroll_ref("a", "b-c"));
        assert!(!employer_payroll_key("e/x", 1, "p").starts_with(&employer_payrolls_prefix("e")));
        assert!(employer_payroll_key("e", 2, "p") < employer_payroll_key("e", 1, "p"));
        assert!(payroll_line_key("p", 9) < payroll_line_key("p", 10));
        assert!(payroll_open_key(1, "pay_b") < payroll_open_key(2, "pay_a"));
        assert_eq!(
            parse_payroll_open_key(&payroll_open_key(7, "pay_x")),
            Some("pay_x")
        );
        assert_eq!(seg("a%2Fb"), "a%252Fb");
        assert_ne!(seg("a%2Fb"), seg("a/b"));
    }

    #[test]
    fn queue_keys_sort_by_due_time_and_parse_back() {
        let a = print_queue_key(999, "ord_b");
        let b = print_queue_key(1000, "ord_a");
        assert!(a < b);
        assert_eq!(parse_queue_key(&b), Some((1000, "ord_a")));
        assert_eq!(
            parse_queue_key(&webhook_queue_key(7, "evt_1_0_0")),
            Some((7, "evt_1_0_0"))
        );
        assert_eq!(parse_queue_key("pq/x"), None);
    }

    #[test]
    fn bill_keys_sort_as_their_scans_need_and_parse_back() {
        // Due index: by due time, so that the overdue scan stops at the first bill not due.
        let r = bill_ref("water-co", "INV-2026-11/7");
        assert!(r.starts_with("bill_") && r.len() == 37, "{r}");
        assert_eq!(r, bill_ref("water-co", "INV-2026-11/7"), "deterministic");
        assert!(bill_due_key(999, &r) < bill_due_key(1000, &r));
        assert_eq!(
            parse_bill_due_key(&bill_due_key(1000, &r)),
            Some((1000, r.as_str()))
        );
        assert_eq!(parse_bill_due_key("bd/x"), None);
        // Consumers' bills and inbox: newest first.
        assert!(consumer_bill_key("c", 2, "b") < consumer_bill_key("c", 1, "a"));
        assert!(inbox_key("c", 2_000, "n2") < inbox_key("c", 1_000, "n1"));
    }

    #[test]
    fn autopay_rules_have_one_json_form_and_refuse_others() {
        let up_to: AutopayRule =
            serde_json::from_value(serde_json::json!({"rule": "up_to", "amount": "50.00"}))
                .unwrap();
        assert_eq!(
            up_to,
            AutopayRule::UpTo {
                amount: onecard_engine::Amount::parse_positive("50").unwrap()
            }
        );
        assert_eq!(
            serde_json::to_value(&AutopayRule::OnDueDate).unwrap(),
            serde_json::json!({"rule": "on_due_date"})
        );
        for bad in [
            serde_json::json!({"rule": "sometimes"}),
            serde_json::json!({"rule": "always", "amount": "1.00"}),
            serde_json::json!({"rule": "up_to"}),
        ] {
            assert!(
                serde_json::from_value::<AutopayRule>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn order_ids_sort_in_creation_order() {
        let a = new_order_id(1_000);
        let b = new_order_id(1_001);
        let c = new_order_id(0x1_0000_0000);
        assert!(a < b && b < c, "{a} {b} {c}");
        assert_eq!(a.len(), 4 + 12 + 16);
    }
}
