//! Dynamic credit (SPEC F10): the credit policy of `[credit]` in `config.toml`, each
//! consumer's credit score, and the follower of the journal that keeps both and sets the
//! virtual account's limit through the engine.
//!
//! **The policy** ([`CreditPolicy`]) gives a consumer's limit as
//! `clamp(base + raises − lowerings, min, max)`:
//! - the base: `fixed` — the limit given at opening, never adjusted (the default: today's
//!   behaviour); `card_credit_line` — the credit line of the consumer's linked bank card, as the
//!   operator records it (`PUT /v1/admin/consumers/{consumer}/credit-line`: the bank adapter
//!   has no credit-line query); `deposit_multiple` — a multiple of what the wallet was opened
//!   with ([`CreditRecord::deposit`]);
//! - raises: `raise_by` per `raise_after` settlements on time;
//! - lowerings: `lower_on_failed_debit`, `lower_on_dispute`, `lower_on_overdue_bill` for each.
//!
//! The limit is an **absolute** value computed from durable counters ([`Score`]), never an
//! increment of the engine's current limit: computing it again, or asking the engine for the
//! same limit twice (it journals nothing for an unchanged limit), is harmless. That is what
//! makes a crash anywhere in a step safe.
//!
//! **The follower** ([`run`]) reads the engine's feed after its own cursor (`credit/cursor`),
//! like the history index of [`crate::analysis`], and counts per consumer: settlements on time
//! (an `OrderSettled` of an order that never waited for funds), late settlements (one that
//! did: `cl/<order>` marks it between the two records), failed bank debits (`TopUpRefused`,
//! `OrderChanged{AwaitingFunds}`) and disputes (`OrderChanged{Disputed}`). Overdue bills are
//! the node's own (the overdue scan of [`crate::bills`] reports them), so the scan counts
//! them itself, in the commit that reports the bill ([`overdue_bill`]). The engine's
//! `CreditLimitChanged` events, whoever caused them, become the history index
//! (`ch/<consumer>/…`, newest first) and a `credit.limit_changed` notification.
//!
//! **One commit per step**: the scores changed, the history, the notifications, the limits to
//! set (`cq/<consumer>`) and the cursor. After the commit the new limits are asked of the
//! engine ([`Engine::set_credit_limit`](onecard_engine::Engine::set_credit_limit)) with a
//! reason naming what changed, and each `cq/` key is removed once the engine has it. A crash
//! between the commit and the engine leaves the `cq/` key: the follower sets it when it
//! starts ([`reconcile`]), and again after any failed attempt. Every read-modify-write of a
//! consumer's record and every limit set runs under one lock (`Node::credit_lock`), so the
//! follower, the overdue scan and the operator never overwrite each other's counts, and limits
//! reach the engine in the order they were computed.

use std::collections::{BTreeMap, HashSet};
use std::str::FromStr;

use onecard_engine::feed::{FeedKind, FeedRecord, OrderChange};
use onecard_engine::{Amount, AmountError, EngineError};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::notify::{self, Notification, Recipient};
use crate::records::seg;
use crate::state::Node;
use crate::store::{self, StoreError, Write};

/// Journal records read per step.
const BATCH: usize = 512;

/// As in the outbox and the history index: with nothing to count, the cursor is saved once
/// this many records lie behind it.
const SAVE_CURSOR_EVERY: u64 = 10_000;

/// The engine keeps reasons of at most this many characters.
const MAX_REASON_CHARS: usize = 200;

/// Why the credit follower, the overdue scan's bump or the operator's change failed. A step
/// that fails is done again whole, from the same cursor.
#[derive(Debug, thiserror::Error)]
pub enum CreditError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("the credit policy's arithmetic: {0}")]
    Amount(#[from] AmountError),
}

impl From<CreditError> for crate::app::AppError {
    fn from(e: CreditError) -> Self {
        match e {
            CreditError::Store(e) => crate::app::AppError::Store(e),
            CreditError::Engine(e) => crate::app::AppError::Engine(e),
            CreditError::Amount(e) => crate::app::AppError::Internal(e.to_string()),
        }
    }
}

impl From<CreditError> for crate::api::ApiError {
    fn from(e: CreditError) -> Self {
        crate::app::AppError::from(e).into()
    }
}

// ---------------------------------------------------------------------------------------------
// The policy.

/// Where a consumer's base limit comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    /// The limit given at opening, never adjusted.
    Fixed,
    /// The credit line of the consumer's linked bank card (recorded by the operator).
    CardCreditLine,
    /// A multiple of the wallet's deposit at opening.
    DepositMultiple,
}

impl PolicyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::Fixed => "fixed",
            PolicyKind::CardCreditLine => "card_credit_line",
            PolicyKind::DepositMultiple => "deposit_multiple",
        }
    }
}

/// `[credit]` of `config.toml`, checked. Every key is optional (see the repository's
/// `config.toml` for the defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditPolicy {
    pub kind: PolicyKind,
    /// `deposit_multiple`'s factor: an exact decimal (up to 4 places), never a float.
    pub deposit_multiple: Decimal,
    pub min: Amount,
    pub max: Amount,
    /// On-time settlements per step up; at least 1.
    pub raise_after: u64,
    pub raise_by: Amount,
    pub lower_on_failed_debit: Amount,
    pub lower_on_dispute: Amount,
    pub lower_on_overdue_bill: Amount,
}

impl Default for CreditPolicy {
    fn default() -> Self {
        CreditPolicy {
            kind: PolicyKind::Fixed,
            deposit_multiple: Decimal::new(20, 1),
            min: Amount::ZERO,
            max: Amount::from_cents(1_000_000),
            raise_after: 10,
            raise_by: Amount::from_cents(10_000),
            lower_on_failed_debit: Amount::from_cents(20_000),
            lower_on_dispute: Amount::from_cents(10_000),
            lower_on_overdue_bill: Amount::from_cents(10_000),
        }
    }
}

/// `[credit]` as written: every value kept as TOML so that a value of the wrong type (a float
/// for an amount, say) is refused naming its key.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredit {
    policy: Option<toml::Value>,
    deposit_multiple: Option<toml::Value>,
    min: Option<toml::Value>,
    max: Option<toml::Value>,
    raise_after: Option<toml::Value>,
    raise_by: Option<toml::Value>,
    lower_on_failed_debit: Option<toml::Value>,
    lower_on_dispute: Option<toml::Value>,
    lower_on_overdue_bill: Option<toml::Value>,
}

/// A string value of `[credit]`, or an error naming the key. Amounts and the multiple are
/// strings so that they are exact: a TOML float is binary floating point.
fn text<'v>(key: &str, v: &'v Option<toml::Value>) -> Result<Option<&'v str>, String> {
    match v {
        None => Ok(None),
        Some(toml::Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(format!(
            "[credit] {key}: expected a string such as \"12.50\" (exact; no float), not {other}"
        )),
    }
}

/// The largest `deposit_multiple`: a limit a thousand times the deposit is already no policy.
const MAX_MULTIPLE: i64 = 1000;

/// `deposit_multiple`: digits, optionally a point and 1 to 4 decimals; above zero and at most
/// [`MAX_MULTIPLE`]. Parsed exactly (no float ever holds it).
pub fn parse_multiple(text: &str) -> Result<Decimal, String> {
    let bad = || {
        format!(
            "[credit] deposit_multiple: {text:?} is not a decimal such as \"2.0\" (digits, at most 4 decimals)"
        )
    };
    let (int, frac) = match text.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (text, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || int.len() > 6 || frac.is_some_and(|f| !digits(f) || f.len() > 4) {
        return Err(bad());
    }
    let d = Decimal::from_str(text).map_err(|_| bad())?;
    if d.is_zero() || d > Decimal::from(MAX_MULTIPLE) {
        return Err(format!(
            "[credit] deposit_multiple: {text} must be above 0 and at most {MAX_MULTIPLE}"
        ));
    }
    Ok(d)
}

impl CreditPolicy {
    /// From the `[credit]` table (kept whole by the engine's config loader). Unknown keys, a
    /// policy that is not one of the three, amounts that are not exact (`"12.34"`), a float
    /// where a string is expected, `min` above `max` or `raise_after` of 0 are refused, naming
    /// the key.
    pub fn from_table(table: &toml::Table) -> Result<CreditPolicy, String> {
        let raw: RawCredit = toml::Value::Table(table.clone())
            .try_into()
            .map_err(|e: toml::de::Error| format!("[credit]: {}", e.message()))?;
        let d = CreditPolicy::default();
        let amount = |key: &str, v: &Option<toml::Value>, default: Amount| match text(key, v)? {
            None => Ok(default),
            Some(s) => Amount::parse_non_negative(s).map_err(|e| format!("[credit] {key}: {e}")),
        };
        let kind = match text("policy", &raw.policy)? {
            None | Some("fixed") => PolicyKind::Fixed,
            Some("card_credit_line") => PolicyKind::CardCreditLine,
            Some("deposit_multiple") => PolicyKind::DepositMultiple,
            Some(other) => {
                return Err(format!(
                    "[credit] policy: {other:?} is not one of \"fixed\", \"card_credit_line\", \"deposit_multiple\""
                ))
            }
        };
        let policy = CreditPolicy {
            kind,
            deposit_multiple: match text("deposit_multiple", &raw.deposit_multiple)? {
                None => d.deposit_multiple,
                Some(s) => parse_multiple(s)?,
            },
            min: amount("min", &raw.min, d.min)?,
            max: amount("max", &raw.max, d.max)?,
            raise_after: match &raw.raise_after {
                None => d.raise_after,
                Some(toml::Value::Integer(n)) => u64::try_from(*n).map_err(|_| {
                    format!("[credit] raise_after: {n} is not a count of settlements")
                })?,
                Some(other) => {
                    return Err(format!(
                        "[credit] raise_after: expected a whole number, not {other}"
                    ))
                }
            },
            raise_by: amount("raise_by", &raw.raise_by, d.raise_by)?,
            lower_on_failed_debit: amount(
                "lower_on_failed_debit",
                &raw.lower_on_failed_debit,
                d.lower_on_failed_debit,
            )?,
            lower_on_dispute: amount(
                "lower_on_dispute",
                &raw.lower_on_dispute,
                d.lower_on_dispute,
            )?,
            lower_on_overdue_bill: amount(
                "lower_on_overdue_bill",
                &raw.lower_on_overdue_bill,
                d.lower_on_overdue_bill,
            )?,
        };
        if policy.min > policy.max {
            return Err(format!(
                "[credit] min {} is above max {}",
                policy.min, policy.max
            ));
        }
        if policy.raise_after == 0 {
            return Err(
                "[credit] raise_after must be at least 1 (raise_by = \"0.00\" never raises)".into(),
            );
        }
        Ok(policy)
    }

    /// Whether the node adjusts limits at all.
    pub fn is_dynamic(&self) -> bool {
        self.kind != PolicyKind::Fixed
    }

    /// The base of a consumer's limit. What the policy cannot know (a deposit from before
    /// this node recorded deposits, a card whose line the operator has not given yet) falls
    /// back to the limit the consumer was opened with.
    pub fn base(&self, r: &CreditRecord) -> Result<Amount, AmountError> {
        match (self.kind, r.deposit, r.credit_line) {
            (PolicyKind::DepositMultiple, Some(deposit), _) => {
                times(self.deposit_multiple, deposit)
            }
            (PolicyKind::CardCreditLine, _, Some(line)) => Ok(line),
            _ => Ok(r.opening_limit),
        }
    }

    /// `base + raises − lowerings` before the bounds, in cents. Saturating: a value beyond
    /// what cents can hold is clamped by the bounds anyway.
    fn unbounded_cents(&self, base: Amount, s: &Score) -> i128 {
        let times = |n: u64, a: Amount| i128::from(n).saturating_mul(a.cents());
        let raises = times(s.on_time / self.raise_after, self.raise_by);
        let lowerings = times(s.failed_debits, self.lower_on_failed_debit)
            .saturating_add(times(s.disputes, self.lower_on_dispute))
            .saturating_add(times(s.overdue_bills, self.lower_on_overdue_bill));
        base.cents()
            .saturating_add(raises)
            .saturating_sub(lowerings)
    }

    /// `clamp(base + raises − lowerings, min, max)`; `None` under `fixed` (never adjusted).
    pub fn limit(&self, r: &CreditRecord) -> Result<Option<Amount>, AmountError> {
        if !self.is_dynamic() {
            return Ok(None);
        }
        let cents = self
            .unbounded_cents(self.base(r)?, &r.score)
            .clamp(self.min.cents(), self.max.cents());
        Amount::from_cents_i128(cents).map(Some)
    }

    /// The limit a consumer opens with, and their record: the policy's limit with nothing
    /// counted yet; the operator's `given` under `fixed` (and as the provisional card credit
    /// line under `card_credit_line`, until the operator records the line).
    pub fn open(
        &self,
        given: Amount,
        deposit: Amount,
    ) -> Result<(Amount, CreditRecord), AmountError> {
        let mut r = CreditRecord::opened(given, deposit, self.kind);
        r.limit = self.limit(&r)?;
        Ok((r.limit.unwrap_or(given), r))
    }
}

/// `multiple × amount`, rounded down to the cent: a policy never gives a cent more than its
/// product.
pub fn times(multiple: Decimal, amount: Amount) -> Result<Amount, AmountError> {
    let product = multiple
        .checked_mul(amount.as_decimal())
        .ok_or(AmountError::Overflow)?;
    let mut cents = product.round_dp_with_strategy(2, rust_decimal::RoundingStrategy::ToZero);
    cents.rescale(2);
    Amount::from_cents_i128(cents.mantissa())
}

// ---------------------------------------------------------------------------------------------
// Records.

/// What a consumer's credit score counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Score {
    /// Settlements of orders that never waited for funds.
    pub on_time: u64,
    /// Settlements of orders that waited for funds first (counted, not rewarded).
    #[serde(default)]
    pub late: u64,
    /// Top-ups refused by the bank, and settlements whose bank part it refused.
    pub failed_debits: u64,
    pub disputes: u64,
    pub overdue_bills: u64,
}

/// A consumer's credit record (`cr/<consumer>`): what the policy's base is computed from, the
/// score, and the limit last computed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditRecord {
    /// What the wallet was opened with (the deposit of `deposit_multiple`); unknown for a
    /// consumer opened before this node recorded it.
    #[serde(default)]
    pub deposit: Option<Amount>,
    /// The limit the consumer was opened with, or had when first counted here.
    pub opening_limit: Amount,
    /// The credit line of the linked bank card, as the operator gave it.
    #[serde(default)]
    pub credit_line: Option<Amount>,
    #[serde(default)]
    pub score: Score,
    /// The limit this node last computed (none under `fixed`, or before anything was counted).
    #[serde(default)]
    pub limit: Option<Amount>,
}

impl CreditRecord {
    /// The record of a consumer opened now with `given` as limit and `deposit` in the wallet.
    pub fn opened(given: Amount, deposit: Amount, kind: PolicyKind) -> CreditRecord {
        CreditRecord {
            deposit: Some(deposit),
            opening_limit: given,
            // Under `card_credit_line` the operator's limit at opening is the card's line
            // until the line is recorded.
            credit_line: (kind == PolicyKind::CardCreditLine).then_some(given),
            score: Score::default(),
            limit: None,
        }
    }
}

/// A limit computed but not yet known to be the engine's (`cq/<consumer>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingLimit {
    /// Whose (kept in the value so that no key has to be decoded back into an id).
    #[serde(default)]
    pub consumer: String,
    pub limit: Amount,
    pub reason: String,
}

/// One change of a consumer's limit, as the history index keeps it (`ch/…`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitChange {
    /// Unix seconds (the engine's clock).
    pub at: u64,
    pub limit: Amount,
    pub reason: String,
}

pub const CURSOR_KEY: &str = "credit/cursor";

pub fn record_key(consumer: &str) -> String {
    format!("cr/{}", seg(consumer))
}
pub fn pending_prefix() -> &'static str {
    "cq/"
}
pub fn pending_key(consumer: &str) -> String {
    format!("cq/{}", seg(consumer))
}
/// The prefix of [`late_key`]: the orders waiting for funds from their consumer's bank (as far
/// as the follower has read), for the operator's dashboard.
pub fn late_prefix() -> &'static str {
    "cl/"
}
/// Present while an order that waited for funds is not settled: its settlement is late.
pub fn late_key(order: &str) -> String {
    format!("cl/{}", seg(order))
}
pub fn history_prefix(consumer: &str) -> String {
    format!("ch/{}/", seg(consumer))
}
/// A change of limit, newest first: the journal position, each part inverted.
pub fn history_key(consumer: &str, seq: u64, entry: usize, event: usize) -> String {
    format!(
        "{}{:020}/{:06}/{:06}",
        history_prefix(consumer),
        u64::MAX - seq,
        999_999usize.saturating_sub(entry),
        999_999usize.saturating_sub(event)
    )
}

// ---------------------------------------------------------------------------------------------
// What changed, in words.

/// What one step (or one overdue bill, or the operator) adds to a consumer's score.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delta {
    pub on_time: u64,
    pub late: u64,
    pub failed_debits: u64,
    /// The orders disputed.
    pub disputes: Vec<String>,
    /// The bills (the biller's bill ids) reported overdue.
    pub overdue_bills: Vec<String>,
    /// The operator recorded the card's credit line.
    pub credit_line: Option<Amount>,
}

impl Delta {
    fn is_empty(&self) -> bool {
        *self == Delta::default()
    }
}

/// Names up to two ids, then how many more.
fn name_some(ids: &[String]) -> String {
    let mut s = ids
        .iter()
        .take(2)
        .map(|i| i.chars().filter(|c| !c.is_control()).take(40).collect())
        .collect::<Vec<String>>()
        .join(", ");
    if ids.len() > 2 {
        s.push_str(&format!(" and {} more", ids.len() - 2));
    }
    s
}

fn times_n(n: u64, a: Amount) -> Amount {
    Amount::from_cents_i128(i128::from(n).saturating_mul(a.cents())).unwrap_or(a)
}

/// The reason of a change: each cause with its effect (`3 settlements on time: +100.00`,
/// `failed bank debit: -200.00`, `dispute on order X: -100.00`, `overdue bill Y: -100.00`),
/// and a note when the bounds held the limit back; `first` for the first limit the policy
/// sets for a consumer it did not open. At most [`MAX_REASON_CHARS`].
pub fn reason(
    policy: &CreditPolicy,
    before: &Score,
    d: &Delta,
    bounded: bool,
    first: bool,
) -> String {
    let mut parts = Vec::new();
    if first {
        parts.push(format!("credit policy {} applied", policy.kind.as_str()));
    }
    if let Some(line) = d.credit_line {
        parts.push(format!("card credit line set to {line}"));
    }
    let steps =
        (before.on_time + d.on_time) / policy.raise_after - before.on_time / policy.raise_after;
    if steps > 0 && policy.raise_by.is_positive() {
        parts.push(format!(
            "{} settlements on time: +{}",
            steps * policy.raise_after,
            times_n(steps, policy.raise_by)
        ));
    }
    let lower = |n: u64, a: Amount| times_n(n, a);
    match d.failed_debits {
        0 => {}
        1 => parts.push(format!(
            "failed bank debit: -{}",
            policy.lower_on_failed_debit
        )),
        n => parts.push(format!(
            "{n} failed bank debits: -{}",
            lower(n, policy.lower_on_failed_debit)
        )),
    }
    match d.disputes.len() {
        0 => {}
        1 => parts.push(format!(
            "dispute on order {}: -{}",
            name_some(&d.disputes),
            policy.lower_on_dispute
        )),
        n => parts.push(format!(
            "{n} disputes (orders {}): -{}",
            name_some(&d.disputes),
            lower(n as u64, policy.lower_on_dispute)
        )),
    }
    match d.overdue_bills.len() {
        0 => {}
        1 => parts.push(format!(
            "overdue bill {}: -{}",
            name_some(&d.overdue_bills),
            policy.lower_on_overdue_bill
        )),
        n => parts.push(format!(
            "{n} overdue bills ({}): -{}",
            name_some(&d.overdue_bills),
            lower(n as u64, policy.lower_on_overdue_bill)
        )),
    }
    if parts.is_empty() {
        parts.push("credit policy applied".into());
    }
    let mut r = parts.join("; ");
    if bounded {
        r.push_str(&format!(
            " (within the policy's bounds {} to {})",
            policy.min, policy.max
        ));
    }
    if r.chars().count() > MAX_REASON_CHARS {
        r = r.chars().take(MAX_REASON_CHARS - 1).collect::<String>() + "…";
    }
    r
}

/// Counts `d` into `r` and gives the new limit to set, with its reason, if the limit changed.
pub fn apply(
    policy: &CreditPolicy,
    r: &mut CreditRecord,
    d: &Delta,
) -> Result<Option<PendingLimit>, AmountError> {
    let before = r.score;
    // No limit computed yet: a consumer this node did not open under this policy (opened
    // under `fixed`, by an earlier version): the policy's limit is set at the first count,
    // whatever it is (the engine journals nothing if it is the limit already).
    let previous = r.limit;
    r.score.on_time = r.score.on_time.saturating_add(d.on_time);
    r.score.late = r.score.late.saturating_add(d.late);
    r.score.failed_debits = r.score.failed_debits.saturating_add(d.failed_debits);
    r.score.disputes = r.score.disputes.saturating_add(d.disputes.len() as u64);
    r.score.overdue_bills = r
        .score
        .overdue_bills
        .saturating_add(d.overdue_bills.len() as u64);
    if let Some(line) = d.credit_line {
        r.credit_line = Some(line);
    }
    let Some(limit) = policy.limit(r)? else {
        return Ok(None);
    };
    r.limit = Some(limit);
    if previous == Some(limit) {
        return Ok(None);
    }
    // The bounds held the limit when it is not what the score alone makes it.
    let bounded = policy.unbounded_cents(policy.base(r)?, &r.score) != limit.cents();
    Ok(Some(PendingLimit {
        consumer: String::new(),
        limit,
        reason: reason(policy, &before, d, bounded, previous.is_none()),
    }))
}

// ---------------------------------------------------------------------------------------------
// Reading and changing a consumer's record (under `Node::credit_lock`).

/// A consumer's record; one is made for a consumer this node did not see opened (an earlier
/// version, the CLI), from the limit they have now. `None` for an unknown consumer.
pub async fn record_of(node: &Node, consumer: &str) -> Result<Option<CreditRecord>, CreditError> {
    if let Some(r) = node.store.get::<CreditRecord>(&record_key(consumer))? {
        return Ok(Some(r));
    }
    Ok(node
        .engine
        .account_summary(consumer)
        .await?
        .map(|a| CreditRecord {
            opening_limit: a.credit_limit,
            ..CreditRecord::default()
        }))
}

/// Counts `d` into the consumer's record: the writes (the record, and the limit to set if it
/// changed) and the change. Call under `Node::credit_lock` and commit the writes before
/// [`set_limits`].
pub async fn count(
    node: &Node,
    consumer: &str,
    d: &Delta,
) -> Result<(Vec<Write>, Option<(String, PendingLimit)>), CreditError> {
    let Some(mut r) = record_of(node, consumer).await? else {
        return Ok((Vec::new(), None));
    };
    let change = apply(&node.credit, &mut r, d)?.map(|p| PendingLimit {
        consumer: consumer.to_string(),
        ..p
    });
    let mut writes = vec![store::json(record_key(consumer), &r)];
    if let Some(p) = &change {
        writes.push(store::json(pending_key(consumer), p));
    }
    Ok((writes, change.map(|p| (consumer.to_string(), p))))
}

/// Asks the engine for each limit; removes the `cq/` key of each it took (or refused for good:
/// an unknown consumer). One that failed stays for the next attempt. Call under
/// `Node::credit_lock`, after the commit that wrote the keys.
pub async fn set_limits(
    node: &Node,
    changes: &[(String, PendingLimit)],
) -> Result<(), CreditError> {
    if changes.is_empty() {
        return Ok(());
    }
    let mut done = Vec::new();
    for (consumer, p) in changes {
        match node
            .engine
            .set_credit_limit(consumer, p.limit, &p.reason, node.now())
            .await
        {
            Ok(Ok(_)) => {
                tracing::info!(%consumer, limit = %p.limit, reason = %p.reason, "credit limit set");
                done.push(store::remove(pending_key(consumer)));
            }
            Ok(Err(r)) => {
                tracing::warn!(%consumer, limit = %p.limit, reason = %r.message, "the engine refused a credit limit");
                done.push(store::remove(pending_key(consumer)));
            }
            Err(e) => {
                tracing::error!(%consumer, error = %e, "setting a credit limit failed; it is tried again");
                node.credit_retry
                    .store(true, std::sync::atomic::Ordering::Release);
            }
        }
    }
    if !done.is_empty() {
        if let Err(e) = node.store.commit(done).await {
            // The keys stay: set again (harmlessly, the same limits) at the next attempt.
            node.credit_retry
                .store(true, std::sync::atomic::Ordering::Release);
            return Err(e.into());
        }
        node.outbox_wake.notify_one();
    }
    Ok(())
}

/// Sets the limits a crash or a failure left computed but not set (`cq/`).
pub async fn reconcile(node: &Node) -> Result<usize, CreditError> {
    let _one = node.credit_lock.lock().await;
    node.credit_retry
        .store(false, std::sync::atomic::Ordering::Release);
    const PAGE: usize = 1000;
    let mut after: Option<String> = None;
    let mut n = 0;
    loop {
        let pending = node
            .store
            .scan::<PendingLimit>(pending_prefix(), after.as_deref(), PAGE)?;
        let full = pending.len() == PAGE;
        after = pending.last().map(|(k, _)| k.clone());
        let changes: Vec<(String, PendingLimit)> = pending
            .into_iter()
            .map(|(_, p)| (p.consumer.clone(), p))
            .collect();
        n += changes.len();
        set_limits(node, &changes).await?;
        if !full {
            return Ok(n);
        }
    }
}

/// The overdue scan reports `bill_id` of `consumer`: counted, and committed with `writes` (the
/// report's own) in one commit; then the new limit is set. So the bill lowers the limit once,
/// exactly when it is reported.
pub async fn overdue_bill(
    node: &Node,
    consumer: &str,
    bill_id: &str,
    mut writes: Vec<Write>,
) -> Result<(), CreditError> {
    let _one = node.credit_lock.lock().await;
    let d = Delta {
        overdue_bills: vec![bill_id.to_string()],
        ..Delta::default()
    };
    let (more, change) = count(node, consumer, &d).await?;
    writes.extend(more);
    node.store.commit(writes).await?;
    set_limits(node, change.as_slice()).await
}

/// The operator records the credit line of a consumer's card: the record and, under
/// `card_credit_line`, the new limit. `None` for an unknown consumer.
pub async fn set_credit_line(
    node: &Node,
    consumer: &str,
    line: Amount,
) -> Result<Option<CreditRecord>, CreditError> {
    let _one = node.credit_lock.lock().await;
    if !node.engine.has_consumer(consumer)? {
        return Ok(None);
    }
    let d = Delta {
        credit_line: Some(line),
        ..Delta::default()
    };
    let (writes, change) = count(node, consumer, &d).await?;
    node.store.commit(writes).await?;
    set_limits(node, change.as_slice()).await?;
    Ok(node.store.get::<CreditRecord>(&record_key(consumer))?)
}

// ---------------------------------------------------------------------------------------------
// The follower.

/// Where the follower is: the last record read, and the last the durable cursor names.
#[derive(Debug, Default)]
pub struct Follower {
    read: Option<u64>,
    saved: u64,
}

impl Follower {
    fn read_through(&mut self, node: &Node, seq: u64) {
        self.read = Some(seq);
        node.credit_read
            .store(seq, std::sync::atomic::Ordering::Release);
    }
}

/// Follows the journal until the node stops (and then until it has caught up).
pub async fn run(node: actix_web::web::Data<Node>) {
    let mut f = Follower::default();
    loop {
        if node.credit_retry.load(std::sync::atomic::Ordering::Acquire) {
            if let Err(e) = reconcile(&node).await {
                tracing::error!(error = %e, "setting pending credit limits failed");
                node.credit_retry
                    .store(true, std::sync::atomic::Ordering::Release);
            }
        }
        let r = step(&node, &mut f).await;
        if !crate::state::after_follower_step(
            &node,
            &node.credit_wake,
            "credit",
            BATCH,
            crate::state::FOLLOWER_BACKSTOP,
            r,
        )
        .await
        {
            return;
        }
    }
}

/// What a batch of the feed means: the score deltas per consumer, the late-settlement markers
/// to write or remove, and the changes of limit the engine journaled.
#[derive(Debug, Default)]
struct Batch {
    deltas: BTreeMap<String, Delta>,
    /// Orders that waited for funds, in this batch (no marker read needed).
    late: HashSet<String>,
    writes: Vec<Write>,
    notifications: Vec<Notification>,
}

/// Counts the next records; returns how many were read. Scores, history, notifications, the
/// limits to set and the cursor are one commit; a step that fails is done again whole.
pub async fn step(node: &Node, f: &mut Follower) -> Result<usize, CreditError> {
    let cursor = match f.read {
        Some(c) => c,
        None => {
            let saved = node.store.get::<u64>(CURSOR_KEY)?.unwrap_or(0);
            f.saved = saved;
            f.read_through(node, saved);
            saved
        }
    };
    let feed = node.engine.feed_after(cursor, BATCH)?;
    if feed.through <= cursor {
        return Ok(0);
    }
    let read = (feed.through - cursor) as usize;
    let mut b = Batch::default();
    for FeedRecord { seq, entries } in feed.records.iter().map(|r| &**r) {
        for (ei, entry) in entries.iter().enumerate() {
            for ev in &entry.events {
                see(node, &mut b, *seq, ei, ev.index, entry.at, &ev.kind)?;
            }
        }
    }
    if b.deltas.is_empty()
        && b.writes.is_empty()
        && b.notifications.is_empty()
        && feed.through - f.saved < SAVE_CURSOR_EVERY
    {
        f.read_through(node, feed.through);
        return Ok(read);
    }
    let _one = node.credit_lock.lock().await;
    let mut writes = std::mem::take(&mut b.writes);
    writes.extend(notify::writes_all(node, &b.notifications)?);
    let mut changes = Vec::new();
    for (consumer, d) in &b.deltas {
        if d.is_empty() {
            continue;
        }
        let (w, change) = count(node, consumer, d).await?;
        writes.extend(w);
        changes.extend(change);
    }
    writes.push(store::json(CURSOR_KEY, &feed.through));
    node.store.commit(writes).await?;
    f.saved = feed.through;
    f.read_through(node, feed.through);
    set_limits(node, &changes).await?;
    Ok(read)
}

/// One event of the feed into the batch.
fn see(
    node: &Node,
    b: &mut Batch,
    seq: u64,
    entry: usize,
    event: usize,
    at: u64,
    kind: &FeedKind,
) -> Result<(), CreditError> {
    fn delta<'b>(b: &'b mut Batch, c: &str) -> &'b mut Delta {
        b.deltas.entry(c.to_string()).or_default()
    }
    match kind {
        FeedKind::OrderSettled {
            order, consumer, ..
        } => {
            let late = b.late.remove(order) || node.store.get_raw(&late_key(order))?.is_some();
            if late {
                b.writes.push(store::remove(late_key(order)));
                delta(b, consumer).late += 1;
            } else {
                delta(b, consumer).on_time += 1;
            }
        }
        FeedKind::OrderChanged {
            order,
            consumer,
            change,
        } => match change {
            OrderChange::AwaitingFunds { .. } => {
                delta(b, consumer).failed_debits += 1;
                b.late.insert(order.clone());
                b.writes.push(store::json(late_key(order), &()));
            }
            OrderChange::Disputed => delta(b, consumer).disputes.push(order.clone()),
            // An order that waited for funds and then went away: no settlement to judge.
            OrderChange::Cancelled | OrderChange::Expired => {
                if b.late.remove(order) || node.store.get_raw(&late_key(order))?.is_some() {
                    b.writes.push(store::remove(late_key(order)));
                }
            }
        },
        FeedKind::TopUpRefused { consumer, .. } => delta(b, consumer).failed_debits += 1,
        FeedKind::CreditLimitChanged {
            consumer,
            limit,
            reason,
        } => {
            let change = LimitChange {
                at,
                limit: *limit,
                reason: reason.clone(),
            };
            b.writes.push(store::json(
                history_key(consumer, seq, entry, event),
                &change,
            ));
            b.notifications.push(Notification {
                // From the journal position: the same change read again is the same
                // notification.
                id: format!("credit_{seq}_{entry}_{event}"),
                recipient: Recipient::consumer(consumer),
                event_type: "credit.limit_changed".into(),
                payload: serde_json::json!({
                    "consumer": consumer,
                    "limit": limit.to_string(),
                    "currency": node.currency,
                    "reason": reason,
                    "at": at,
                }),
                created_at: at,
            });
        }
        _ => {}
    }
    Ok(())
}

/// A page of a consumer's history of limits, newest first, after the cursor `after` (the part
/// of the key after the consumer's prefix).
pub fn history(
    node: &Node,
    consumer: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<(Vec<(String, LimitChange)>, bool), StoreError> {
    let prefix = history_prefix(consumer);
    let after = after.map(|a| format!("{prefix}{a}"));
    let rows = node
        .store
        .scan::<LimitChange>(&prefix, after.as_deref(), limit + 1)?;
    let more = rows.len() > limit;
    Ok((
        rows.into_iter()
            .take(limit)
            .map(|(k, c)| (k[prefix.len()..].to_string(), c))
            .collect(),
        more,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Amount {
        Amount::parse(s).unwrap()
    }

    fn policy(text: &str) -> CreditPolicy {
        let t: toml::Table = toml::from_str(text).unwrap();
        CreditPolicy::from_table(&t).unwrap()
    }

    fn refused(text: &str) -> String {
        let t: toml::Table = toml::from_str(text).unwrap();
        CreditPolicy::from_table(&t).unwrap_err()
    }

    const DEPOSIT: &str = "policy = \"deposit_multiple\"\ndeposit_multiple = \"2.0\"\nmin = \"100.00\"\nmax = \"1500.00\"\nraise_after = 3\nraise_by = \"100.00\"\nlower_on_failed_debit = \"200.00\"\nlower_on_dispute = \"150.00\"\nlower_on_overdue_bill = \"50.00\"\n";

    #[test]
    fn the_defaults_are_the_fixed_policy_and_the_repository_config_parses() {
        let p = CreditPolicy::from_table(&toml::Table::new()).unwrap();
        assert_eq!(p, CreditPolicy::default());
        assert!(!p.is_dynamic());
        let cfg = onecard_engine::NodeConfig::parse(include_str!("../../config.toml")).unwrap();
        let p = CreditPolicy::from_table(&cfg.credit).unwrap();
        assert_eq!(p, CreditPolicy::default());
        // Fixed never adjusts, whatever is counted.
        let (limit, mut r) = p.open(a("800.00"), a("500.00")).unwrap();
        assert_eq!((limit, r.limit), (a("800.00"), None));
        r.score.disputes = 100;
        assert_eq!(p.limit(&r).unwrap(), None);
        assert_eq!(
            apply(
                &p,
                &mut r,
                &Delta {
                    disputes: vec!["o".into()],
                    ..Delta::default()
                }
            )
            .unwrap(),
            None
        );
    }

    #[test]
    fn bad_values_are_refused_naming_the_key() {
        for (text, key) in [
            ("policy = \"generous\"", "policy"),
            ("deposit_multiple = 2.0", "deposit_multiple"),
            ("deposit_multiple = \"2.00001\"", "deposit_multiple"),
            ("deposit_multiple = \"-2\"", "deposit_multiple"),
            ("deposit_multiple = \"0\"", "deposit_multiple"),
            ("deposit_multiple = \"1e3\"", "deposit_multiple"),
            ("deposit_multiple = \"1001\"", "deposit_multiple"),
            ("deposit_multiple = \".5\"", "deposit_multiple"),
            ("min = \"10.001\"", "min"),
            ("max = \"-1.00\"", "max"),
            ("raise_by = 100", "raise_by"),
            ("lower_on_dispute = \"x\"", "lower_on_dispute"),
            ("raise_after = 0", "raise_after"),
            ("raise_after = -1", "raise_after"),
            ("min = \"10.00\"\nmax = \"9.99\"", "min"),
            ("lowr_on_dispute = \"1.00\"", "lowr_on_dispute"),
        ] {
            let e = refused(text);
            assert!(e.contains(key) && e.contains("[credit]"), "{text}: {e}");
        }
        let p = policy("deposit_multiple = \"1.2345\"\nmin = \"5\"\nmax = \"5\"");
        assert_eq!(p.deposit_multiple.to_string(), "1.2345");
        assert_eq!((p.min, p.max), (a("5.00"), a("5.00")));
    }

    #[test]
    fn a_multiple_of_the_deposit_is_exact_and_rounds_down_to_the_cent() {
        assert_eq!(
            times(parse_multiple("2.0").unwrap(), a("500.00")).unwrap(),
            a("1000.00")
        );
        assert_eq!(
            times(parse_multiple("2.5").unwrap(), a("33.33")).unwrap(),
            a("83.32")
        );
        assert_eq!(
            times(parse_multiple("0.1").unwrap(), a("0.09")).unwrap(),
            a("0.00")
        );
        assert_eq!(
            times(parse_multiple("3").unwrap(), a("0.10")).unwrap(),
            a("0.30")
        );
        assert_eq!(
            times(parse_multiple("1000").unwrap(), a("5000.00")).unwrap(),
            a("5000000.00")
        );
    }

    #[test]
    fn the_limit_is_the_base_plus_steps_less_lowerings_within_the_bounds() {
        let p = policy(DEPOSIT);
        let (limit, mut r) = p.open(a("0.00"), a("500.00")).unwrap();
        assert_eq!((limit, r.limit), (a("1000.00"), Some(a("1000.00"))));
        assert_eq!(p.base(&r).unwrap(), a("1000.00"));
        assert_eq!(p.limit(&r).unwrap(), Some(a("1000.00")));
        // Two on time: no step yet; the third raises by 100.00.
        r.score.on_time = 2;
        assert_eq!(p.limit(&r).unwrap(), Some(a("1000.00")));
        r.score.on_time = 3;
        assert_eq!(p.limit(&r).unwrap(), Some(a("1100.00")));
        // Up to max, never beyond.
        r.score.on_time = 30;
        assert_eq!(p.limit(&r).unwrap(), Some(a("1500.00")));
        // Lowerings take from the unbounded value: 1000 + 1000 - 200 - 150 - 50 = 1600 → max.
        r.score.failed_debits = 1;
        r.score.disputes = 1;
        r.score.overdue_bills = 1;
        assert_eq!(p.limit(&r).unwrap(), Some(a("1500.00")));
        r.score.disputes = 4; // 1000 + 1000 - 200 - 600 - 50 = 1150
        assert_eq!(p.limit(&r).unwrap(), Some(a("1150.00")));
        // Down to min, never below.
        r.score.failed_debits = 1_000;
        assert_eq!(p.limit(&r).unwrap(), Some(a("100.00")));
        // Counts beyond any amount saturate and are bounded.
        r.score.failed_debits = u64::MAX;
        r.score.on_time = u64::MAX;
        assert!(p.limit(&r).unwrap().is_some());
        // A deposit unknown (opened elsewhere): the limit at opening is the base.
        let old = CreditRecord {
            opening_limit: a("700.00"),
            ..CreditRecord::default()
        };
        assert_eq!(p.limit(&old).unwrap(), Some(a("700.00")));
    }

    #[test]
    fn the_card_credit_line_is_the_base_once_recorded() {
        let p = policy("policy = \"card_credit_line\"\nmax = \"5000.00\"\nraise_after = 2\nraise_by = \"10.00\"");
        let (_, mut r) = p.open(a("800.00"), a("0.00")).unwrap();
        assert_eq!(p.limit(&r).unwrap(), Some(a("800.00")));
        let change = apply(
            &p,
            &mut r,
            &Delta {
                credit_line: Some(a("3000.00")),
                ..Delta::default()
            },
        )
        .unwrap()
        .unwrap();
        assert_eq!(change.limit, a("3000.00"));
        assert_eq!(change.reason, "card credit line set to 3000.00");
        // Above max: held at max, and the reason says so.
        let change = apply(
            &p,
            &mut r,
            &Delta {
                credit_line: Some(a("9000.00")),
                ..Delta::default()
            },
        )
        .unwrap()
        .unwrap();
        assert_eq!(change.limit, a("5000.00"));
        assert!(change.reason.contains("bounds"), "{}", change.reason);
    }

    #[test]
    fn applying_a_delta_names_each_cause_and_only_a_change_is_a_change() {
        let p = policy(DEPOSIT);
        let (_, mut r) = p.open(a("0.00"), a("500.00")).unwrap();
        let on_time = |n| Delta {
            on_time: n,
            ..Delta::default()
        };
        assert_eq!(apply(&p, &mut r, &on_time(2)).unwrap(), None);
        let c = apply(&p, &mut r, &on_time(1)).unwrap().unwrap();
        assert_eq!(c.limit, a("1100.00"));
        assert_eq!(c.reason, "3 settlements on time: +100.00");
        let c = apply(
            &p,
            &mut r,
            &Delta {
                failed_debits: 1,
                disputes: vec!["ord_1".into()],
                overdue_bills: vec!["B-7".into()],
                late: 1,
                ..Delta::default()
            },
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.limit, a("700.00"));
        assert_eq!(
            c.reason,
            "failed bank debit: -200.00; dispute on order ord_1: -150.00; overdue bill B-7: -50.00"
        );
        assert_eq!(
            r.score,
            Score {
                on_time: 3,
                late: 1,
                failed_debits: 1,
                disputes: 1,
                overdue_bills: 1
            }
        );
        // At min, more lowering changes nothing: no change to set.
        r.score.failed_debits = 100;
        r.limit = p.limit(&r).unwrap();
        assert_eq!(r.limit, Some(a("100.00")));
        assert_eq!(
            apply(
                &p,
                &mut r,
                &Delta {
                    failed_debits: 2,
                    ..Delta::default()
                }
            )
            .unwrap(),
            None
        );
        // Many causes: the reason stays within what the engine keeps.
        let many = Delta {
            disputes: (0..50)
                .map(|i| format!("ord_{i}_{}", "x".repeat(60)))
                .collect(),
            overdue_bills: (0..50).map(|i| format!("bill\n{i}")).collect(),
            failed_debits: 3,
            ..Delta::default()
        };
        let text = reason(&p, &r.score, &many, true, true);
        assert!(text.chars().count() <= MAX_REASON_CHARS, "{text}");
        assert!(!text.chars().any(char::is_control), "{text}");
    }

    #[test]
    fn a_consumer_the_policy_did_not_open_gets_its_limit_at_the_first_count() {
        let p = policy(DEPOSIT);
        // Opened under `fixed` with 2000.00 (no deposit recorded): the base is that limit,
        // held at max; the first count sets it and says why.
        let mut r = CreditRecord {
            opening_limit: a("2000.00"),
            ..CreditRecord::default()
        };
        let c = apply(
            &p,
            &mut r,
            &Delta {
                on_time: 1,
                ..Delta::default()
            },
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.limit, a("1500.00"));
        assert_eq!(
            c.reason,
            "credit policy deposit_multiple applied (within the policy's bounds 100.00 to 1500.00)"
        );
        assert_eq!(r.limit, Some(a("1500.00")));
        // From then on, only changes are changes.
        let none = apply(
            &p,
            &mut r,
            &Delta {
                on_time: 1,
                ..Delta::default()
            },
        )
        .unwrap();
        assert_eq!(none, None);
    }

    #[test]
    fn history_keys_sort_newest_first() {
        let k1 = history_key("alice", 5, 0, 0);
        let k2 = history_key("alice", 5, 0, 1);
        let k3 = history_key("alice", 6, 0, 0);
        let mut keys = vec![k1.clone(), k2.clone(), k3.clone()];
        keys.sort();
        assert_eq!(keys, [k3, k2, k1]);
        assert!(history_key("a/b", 1, 0, 0).starts_with("ch/a%2Fb/"));
    }
}
