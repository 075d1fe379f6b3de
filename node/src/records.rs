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
//! | `am/<consumer>/<YYYY-MM>`   | [`MonthAggregate`]: the history index (F6) |
//! | `al/<consumer>`             | [`AlertSettings`]: the consumer's spending limits |
//! | `af/<consumer>/<YYYY-MM>/<threshold>` | [`FiredAlert`]: once per limit per month |
//! | `analysis/cursor`           | the last journal record the history index has handled |
//!
//! Order ids are `ord_` + 12 hex digits of milliseconds + 16 random hex digits, so that a
//! merchant's orders list in creation order.

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
pub fn idem_key(principal: &str, key: &str) -> String {
    format!("ik/{}/{key}", seg(principal))
}
pub fn print_job_key(order: &str) -> String {
    format!("pj/{order}")
}
/// Present while a print job waits, keyed by when it is due: a pass of the print worker reads
/// only what is due, whatever else waits.
pub fn print_queue_key(due_ms: u64, order: &str) -> String {
    format!("pq/{due_ms:020}/{order}")
}
/// Present while a webhook delivery waits, keyed by when it is due.
pub fn webhook_queue_key(due_ms: u64, event_id: &str) -> String {
    format!("wq/{due_ms:020}/{event_id}")
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

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A random token of `bytes` random bytes, hex.
///
/// From the thread's CSPRNG (`rand::thread_rng`: ChaCha, seeded and reseeded from the OS),
/// not a `getrandom` system call per id: ids and tokens are drawn for every request.
pub fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut b);
    hex::encode(b)
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
    /// What the merchant sells, for the consumers' spending analysis (F6): a lowercase word
    /// (`groceries`); none is `uncategorised` there ([`crate::analysis::category_of`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
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

/// What a request with an `Idempotency-Key` got: replayed for the same request, refused (422)
/// for another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdemRecord {
    /// SHA-256 of method, path and body.
    pub fingerprint: String,
    pub status: u16,
    /// The answer; null when `new_order` says how to rebuild it.
    #[serde(default)]
    pub body: serde_json::Value,
    /// An order creation's answer in a few fields: with the checkout (written in the same
    /// commit, never removed) it rebuilds the answer exactly, so the record does not hold it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_order: Option<NewOrderAnswer>,
    /// When it was stored (unix seconds); swept after `[node] idempotency_ttl_secs`.
    #[serde(default)]
    pub at: u64,
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

/// One webhook event for one merchant: delivered at least once, retried with back-off, with
/// the same event id every time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookDelivery {
    pub event_id: String,
    pub merchant: String,
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
    /// Credits (recharge cards, salaries, bank transfers). Top-ups of the wallet from the
    /// consumer's own bank account are not income: they move the consumer's own money.
    pub income: onecard_engine::Amount,
    /// `recharge`, `salary`, `bank_transfer`.
    #[serde(default)]
    pub income_by_source: std::collections::BTreeMap<String, onecard_engine::Amount>,
    #[serde(default)]
    pub orders_settled: u64,
    #[serde(default)]
    pub refunds: u64,
    #[serde(default)]
    pub credits: u64,
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
        assert!(!fired_alert_key("c/x", "2026-01", "total").starts_with(&fired_alerts_prefix("c")));
        assert_ne!(month_key("c/x", "2026-01"), month_key("c", "x/2026-01"));
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
    fn order_ids_sort_in_creation_order() {
        let a = new_order_id(1_000);
        let b = new_order_id(1_001);
        let c = new_order_id(0x1_0000_0000);
        assert!(a < b && b < c, "{a} {b} {c}");
        assert_eq!(a.len(), 4 + 12 + 16);
    }
}
