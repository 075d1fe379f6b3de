//! The spending analysis (SPEC F6): a per-consumer history index, kept off the hot path.
//!
//! A follower of the engine's journal ([`onecard_engine::Engine::feed_after`]), like the
//! outbox but apart from it, with its own durable cursor (`analysis/cursor`): payments never
//! wait for it, and the API's analysis reads a handful of aggregate records instead of
//! scanning a consumer's history. Per consumer and calendar month (UTC, of the journal entry's
//! time) it keeps a [`MonthAggregate`]:
//!
//! - **spending**: settled orders (what the wallet and the bank paid together), by the
//!   merchant's category ([`category_of`]) and by merchant. Refunds subtract, in the month they
//!   happen (as a bank statement shows them), so a month's net spending can be negative.
//! - **income**: credits to the consumer ([`FeedKind::Credited`]: recharge cards, salaries,
//!   bank transfers). Top-ups of the wallet from the consumer's designated bank account are
//!   *not* income: they move the consumer's own money from one of their accounts to another.
//! - counts of settlements, refunds and credits.
//!
//! **Exactly once.** One step reads a batch of records after the cursor, updates the
//! aggregates in memory and writes them, the alerts they fire and the new cursor in one
//! commit of the node store (one journal record, one sync). A crash before the commit loses
//! the whole step and the batch is read again from the old cursor; after it, the cursor is past
//! the batch. So no event is counted twice or lost, with no per-event bookkeeping.
//!
//! **Alerts.** A consumer sets monthly spending limits (overall and per category,
//! [`AlertSettings`]). When a settlement makes a month's spending go from below a limit to at
//! or above it, an alert is recorded ([`alert_fired`]) in the same commit, once per limit per
//! month: more spending, or spending that dips below after a refund and crosses again, fires
//! nothing more that month. A limit set below what is already spent fires nothing until a
//! later month (nothing crossed it).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use onecard_engine::feed::{FeedKind, FeedRecord};
use onecard_engine::{Amount, AmountError, EngineError};

use crate::notify::{self, Notification, Recipient};
use crate::records::{self, AlertSettings, FiredAlert, MonthAggregate};
use crate::state::Node;
use crate::store::{self, NodeStore, StoreError, Write};

/// Journal records read per step.
const BATCH: usize = 512;

/// When only records with nothing for the index went by, the cursor is written once this many
/// lie behind it (as the outbox does): a restart reads back at most this many, and finds
/// nothing to count in them again.
const SAVE_CURSOR_EVERY: u64 = 10_000;

/// Why the history index could not take a step. The step is retried as a whole.
#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("the analysis' arithmetic: {0}")]
    Amount(#[from] AmountError),
}

// ---------------------------------------------------------------------------------------------
// Months.

/// A calendar month (UTC): what the index is keyed by and the API is asked for (`YYYY-MM`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct YearMonth {
    year: i32,
    /// 1 to 12.
    month: u8,
}

/// Why a month in a request is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MonthError {
    #[error("month {0:?} is not of the form YYYY-MM (such as 2026-03)")]
    Malformed(String),
    #[error("month {0:?} is out of range: YYYY-MM with a year from 1970 to 9999 and a month from 01 to 12")]
    OutOfRange(String),
}

impl YearMonth {
    /// The last month the index can name; a time beyond it (the engine's clock never gets
    /// there) is counted in it rather than lost.
    const LAST: YearMonth = YearMonth {
        year: 9999,
        month: 12,
    };

    /// `YYYY-MM`, exactly: four digits, a dash, two digits; years 1970 to 9999.
    pub fn parse(text: &str) -> Result<YearMonth, MonthError> {
        let malformed = || MonthError::Malformed(text.chars().take(40).collect());
        let b = text.as_bytes();
        if b.len() != 7 || b[4] != b'-' {
            return Err(malformed());
        }
        let digits = |s: &[u8]| -> Option<u32> {
            s.iter().try_fold(0u32, |n, &c| {
                c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
            })
        };
        let (Some(year), Some(month)) = (digits(&b[..4]), digits(&b[5..])) else {
            return Err(malformed());
        };
        if !(1970..=9999).contains(&year) || !(1..=12).contains(&month) {
            return Err(MonthError::OutOfRange(text.to_string()));
        }
        Ok(YearMonth {
            year: year as i32,
            month: month as u8,
        })
    }

    /// The month (UTC) of a time in unix seconds.
    pub fn of_unix(secs: u64) -> YearMonth {
        i64::try_from(secs)
            .ok()
            .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
            .map(|t| YearMonth {
                year: t.year(),
                month: t.month() as u8,
            })
            .filter(|m| *m <= YearMonth::LAST)
            .unwrap_or(YearMonth::LAST)
    }

    /// The month before.
    pub fn previous(self) -> YearMonth {
        if self.month == 1 {
            YearMonth {
                year: self.year - 1,
                month: 12,
            }
        } else {
            YearMonth {
                year: self.year,
                month: self.month - 1,
            }
        }
    }

    /// The month after.
    pub fn next(self) -> YearMonth {
        if self.month == 12 {
            YearMonth {
                year: self.year + 1,
                month: 1,
            }
        } else {
            YearMonth {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    fn time_month(self) -> time::Month {
        // `month` is 1 to 12 by construction.
        time::Month::try_from(self.month).unwrap_or(time::Month::December)
    }

    /// How many days it has.
    pub fn days(self) -> u8 {
        time::util::days_in_month(self.time_month(), self.year)
    }

    /// In words: `March 2026`.
    pub fn name(self) -> String {
        format!("{} {}", self.time_month(), self.year)
    }
}

impl std::fmt::Display for YearMonth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

// ---------------------------------------------------------------------------------------------
// Categories.

/// The category of a merchant that has none.
pub const UNCATEGORISED: &str = "uncategorised";

/// The longest category, in characters.
pub const MAX_CATEGORY_CHARS: usize = 32;

/// Why a category is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CategoryError {
    #[error("a category is 1 to {MAX_CATEGORY_CHARS} characters")]
    Length,
    #[error(
        "category {0:?} is not a lowercase word: a letter a-z first, then a-z, 0-9, '-' or '_'"
    )]
    NotAWord(String),
}

/// A merchant's category: a lowercase word (`groceries`, `home-garden`) of at most
/// [`MAX_CATEGORY_CHARS`]. No `:`, so that no merchant's category can pass for the kinds of
/// bill (`bill:<kind>`) the analysis also shows.
pub fn validate_category(c: &str) -> Result<(), CategoryError> {
    if c.is_empty() || c.chars().count() > MAX_CATEGORY_CHARS {
        return Err(CategoryError::Length);
    }
    let mut chars = c.chars();
    let first_ok = chars.next().is_some_and(|f| f.is_ascii_lowercase());
    if first_ok && chars.all(|x| x.is_ascii_lowercase() || x.is_ascii_digit() || "-_".contains(x)) {
        Ok(())
    } else {
        Err(CategoryError::NotAWord(c.to_string()))
    }
}

/// What a consumer may set a limit on: a merchant's category ([`validate_category`]) or a kind
/// of bill (`bill:<word>`).
pub fn validate_limit_category(c: &str) -> Result<(), CategoryError> {
    validate_category(c.strip_prefix("bill:").unwrap_or(c))
}

/// The category a merchant's sales are counted under: its profile's, else
/// [`UNCATEGORISED`]; a biller's is `bill:<kind>`. The one place that decides it (the
/// spending analysis and the gateway rules). The profile at the time the index counts the event: a category changed
/// later does not move what was already counted.
pub fn category_of(node: &Node, merchant: &str) -> String {
    let Some(m) = node.merchants.get(merchant) else {
        return UNCATEGORISED.to_string();
    };
    match (m.biller, &m.category) {
        (Some(kind), _) => format!("bill:{}", kind.as_str()),
        (None, Some(c)) => c.clone(),
        (None, None) => UNCATEGORISED.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Aggregation (pure).

/// What one feed event means to the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item<'a> {
    /// An order settled: spending.
    Spent {
        consumer: &'a str,
        merchant: &'a str,
        category: String,
        order: &'a str,
        amount: Amount,
    },
    /// A refund: spending taken back.
    Refunded {
        consumer: &'a str,
        merchant: &'a str,
        category: String,
        amount: Amount,
    },
    /// A credit: income, by source (`recharge`, `salary`, `bank_transfer`).
    Income {
        consumer: &'a str,
        source: &'static str,
        amount: Amount,
    },
}

impl<'a> Item<'a> {
    /// The event's meaning, if it has one for the index; `category` names a merchant's
    /// category ([`category_of`]). Orders placed but not settled, top-ups, cancellations and
    /// the rest change no spending or income.
    pub fn of(
        kind: &'a FeedKind,
        category: impl Fn(&str) -> String,
    ) -> Result<Option<Item<'a>>, AmountError> {
        Ok(Some(match kind {
            FeedKind::OrderSettled {
                order,
                consumer,
                merchant,
                wallet_paid,
                bank_paid,
            } => Item::Spent {
                consumer,
                merchant,
                category: category(merchant),
                order,
                amount: wallet_paid.checked_add(*bank_paid)?,
            },
            FeedKind::Refunded {
                consumer,
                merchant,
                amount,
                ..
            } => Item::Refunded {
                consumer,
                merchant,
                category: category(merchant),
                amount: *amount,
            },
            FeedKind::Credited {
                consumer,
                source,
                amount,
                ..
            } if source.is_income() => Item::Income {
                consumer,
                source: source.kind(),
                amount: *amount,
            },
            _ => return Ok(None),
        }))
    }

    pub fn consumer(&self) -> &'a str {
        match self {
            Item::Spent { consumer, .. }
            | Item::Refunded { consumer, .. }
            | Item::Income { consumer, .. } => consumer,
        }
    }
}

fn add_to(map: &mut BTreeMap<String, Amount>, key: &str, delta: Amount) -> Result<(), AmountError> {
    let v = map.entry(key.to_string()).or_default();
    *v = v.checked_add(delta)?;
    Ok(())
}

/// Counts one item into a month's aggregate.
pub fn apply(agg: &mut MonthAggregate, item: &Item) -> Result<(), AmountError> {
    match item {
        Item::Spent {
            merchant,
            category,
            amount,
            ..
        } => {
            agg.spending = agg.spending.checked_add(*amount)?;
            add_to(&mut agg.by_category, category, *amount)?;
            add_to(&mut agg.by_merchant, merchant, *amount)?;
            agg.orders_settled += 1;
        }
        Item::Refunded {
            merchant,
            category,
            amount,
            ..
        } => {
            let back = amount.checked_neg();
            agg.spending = agg.spending.checked_add(back)?;
            add_to(&mut agg.by_category, category, back)?;
            add_to(&mut agg.by_merchant, merchant, back)?;
            agg.refunds += 1;
        }
        Item::Income { source, amount, .. } => {
            agg.income = agg.income.checked_add(*amount)?;
            add_to(&mut agg.income_by_source, source, *amount)?;
            agg.credits += 1;
        }
    }
    Ok(())
}

/// Which limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Threshold {
    /// The month's spending overall.
    Total,
    /// The month's spending in one category.
    Category(String),
}

impl Threshold {
    /// Its part of the alert's key: `total` or `category:<name>`.
    pub fn key(&self) -> String {
        match self {
            Threshold::Total => "total".into(),
            Threshold::Category(c) => format!("category:{c}"),
        }
    }
}

/// A limit that one update of spending went across.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crossing {
    pub threshold: Threshold,
    pub limit: Amount,
    /// The spending (overall, or in the category) with the update.
    pub spent: Amount,
}

/// Spending of a month before or after one update: overall, and in the update's category.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Levels {
    pub total: Amount,
    pub in_category: Amount,
}

impl Levels {
    pub fn of(agg: &MonthAggregate, category: &str) -> Levels {
        Levels {
            total: agg.spending,
            in_category: agg.by_category.get(category).copied().unwrap_or_default(),
        }
    }
}

/// The limits an update of spending in `category` crossed, from below to at or above.
pub fn crossings(
    settings: &AlertSettings,
    category: &str,
    before: Levels,
    after: Levels,
) -> Vec<Crossing> {
    let crossed = |from: Amount, to: Amount, limit: Amount| from < limit && to >= limit;
    let mut out = Vec::new();
    if let Some(limit) = settings.monthly_limit {
        if crossed(before.total, after.total, limit) {
            out.push(Crossing {
                threshold: Threshold::Total,
                limit,
                spent: after.total,
            });
        }
    }
    if let Some(&limit) = settings.categories.get(category) {
        if crossed(before.in_category, after.in_category, limit) {
            out.push(Crossing {
                threshold: Threshold::Category(category.to_string()),
                limit,
                spent: after.in_category,
            });
        }
    }
    out
}

/// The writes that record an alert: the one place an alert is created (a notifier to tell the
/// consumer adds its delivery here, in the same commit).
pub fn alert_fired(
    consumer: &str,
    month: YearMonth,
    crossing: &Crossing,
    at: u64,
    order: Option<&str>,
) -> (Vec<Write>, Notification) {
    let month = month.to_string();
    let (scope, category) = match &crossing.threshold {
        Threshold::Total => ("total", None),
        Threshold::Category(c) => ("category", Some(c.clone())),
    };
    let key = records::fired_alert_key(consumer, &month, &crossing.threshold.key());
    let alert = FiredAlert {
        month,
        scope: scope.to_string(),
        category,
        limit: crossing.limit,
        spent: crossing.spent,
        at,
        order_id: order.map(str::to_string),
    };
    // The id comes from the alert's own key: the same alert, counted again after a crash,
    // is the same notification (delivered once).
    let notification = Notification {
        id: format!("alert_{}", &records::sha256_hex(key.as_bytes())[..32]),
        recipient: Recipient::consumer(consumer),
        event_type: "spending.alert".into(),
        payload: serde_json::to_value(&alert).unwrap_or_default(),
        created_at: at,
    };
    (vec![store::json(key, &alert)], notification)
}

// ---------------------------------------------------------------------------------------------
// One step's work, over what the store holds.

/// What a step reads of the index besides what it is changing.
pub trait IndexReads {
    fn aggregate(
        &self,
        consumer: &str,
        month: YearMonth,
    ) -> Result<Option<MonthAggregate>, StoreError>;
    fn alert_settings(&self, consumer: &str) -> Result<Option<AlertSettings>, StoreError>;
    fn has_alert(&self, key: &str) -> Result<bool, StoreError>;
}

impl IndexReads for NodeStore {
    fn aggregate(
        &self,
        consumer: &str,
        month: YearMonth,
    ) -> Result<Option<MonthAggregate>, StoreError> {
        self.get_record(&records::month_key(consumer, &month.to_string()))
    }
    fn alert_settings(&self, consumer: &str) -> Result<Option<AlertSettings>, StoreError> {
        self.get(&records::alert_settings_key(consumer))
    }
    fn has_alert(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self.get_raw(key)?.is_some())
    }
}

/// The changes of one step: the aggregates it touched (read once, changed in memory) and the
/// alerts they fired, written together.
pub struct Batch<'r, R: IndexReads> {
    reads: &'r R,
    months: BTreeMap<(String, YearMonth), MonthAggregate>,
    settings: HashMap<String, AlertSettings>,
    fired: BTreeSet<String>,
    alerts: Vec<Write>,
    /// The consumers to tell of the alerts fired, through the notifier.
    notifications: Vec<Notification>,
}

impl<'r, R: IndexReads> Batch<'r, R> {
    pub fn new(reads: &'r R) -> Self {
        Batch {
            reads,
            months: BTreeMap::new(),
            settings: HashMap::new(),
            fired: BTreeSet::new(),
            alerts: Vec::new(),
            notifications: Vec::new(),
        }
    }

    /// Counts `item`, which happened at `at` (unix seconds).
    pub fn add(&mut self, at: u64, item: &Item) -> Result<(), AnalysisError> {
        let month = YearMonth::of_unix(at);
        let consumer = item.consumer();
        let key = (consumer.to_string(), month);
        let agg = match self.months.entry(key) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(self.reads.aggregate(consumer, month)?.unwrap_or_default())
            }
        };
        let Item::Spent {
            category, order, ..
        } = item
        else {
            apply(agg, item)?;
            return Ok(());
        };
        let before = Levels::of(agg, category);
        apply(agg, item)?;
        let after = Levels::of(agg, category);
        if !self.settings.contains_key(consumer) {
            let s = self.reads.alert_settings(consumer)?.unwrap_or_default();
            self.settings.insert(consumer.to_string(), s);
        }
        let Some(settings) = self.settings.get(consumer) else {
            return Ok(());
        };
        for c in crossings(settings, category, before, after) {
            let key = records::fired_alert_key(consumer, &month.to_string(), &c.threshold.key());
            if self.fired.contains(&key) || self.reads.has_alert(&key)? {
                continue;
            }
            let (writes, notification) = alert_fired(consumer, month, &c, at, Some(order));
            self.alerts.extend(writes);
            self.notifications.push(notification);
            self.fired.insert(key);
        }
        Ok(())
    }

    /// The notifications of the alerts fired so far, taken out of the batch.
    pub fn take_notifications(&mut self) -> Vec<Notification> {
        std::mem::take(&mut self.notifications)
    }

    /// The aggregates changed and the alerts fired.
    pub fn into_writes(self) -> Vec<Write> {
        let mut writes: Vec<Write> = self
            .months
            .iter()
            .map(|((consumer, month), agg)| {
                store::record(records::month_key(consumer, &month.to_string()), agg)
            })
            .collect();
        writes.extend(self.alerts);
        writes
    }
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
    /// Everything up to `seq` is counted (durably, or it had nothing to count).
    fn read_through(&mut self, node: &Node, seq: u64) {
        self.read = Some(seq);
        node.analysis_read
            .store(seq, std::sync::atomic::Ordering::Release);
    }
}

/// Follows the journal until the node stops (and then until it has caught up).
pub async fn run(node: actix_web::web::Data<Node>) {
    let mut f = Follower::default();
    loop {
        let r = step(&node, &mut f).await;
        if !crate::state::after_follower_step(
            &node,
            &node.analysis_wake,
            "history index",
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

/// Counts the next records; returns how many were read. Aggregates, alerts and the cursor are
/// one commit: a step that fails is done again whole, from the same cursor.
pub async fn step(node: &Node, f: &mut Follower) -> Result<usize, AnalysisError> {
    let cursor = match f.read {
        Some(c) => c,
        None => {
            let saved = node
                .store
                .get::<u64>(records::ANALYSIS_CURSOR_KEY)?
                .unwrap_or(0);
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
    let mut batch = Batch::new(&node.store);
    for FeedRecord { entries, .. } in feed.records.iter().map(|r| &**r) {
        for entry in entries {
            for ev in &entry.events {
                if let Some(item) = Item::of(&ev.kind, |m| category_of(node, m))? {
                    batch.add(entry.at, &item)?;
                }
            }
        }
    }
    let notifications = batch.take_notifications();
    let mut writes = batch.into_writes();
    writes.extend(notify::writes_all(node, &notifications)?);
    if writes.is_empty() && feed.through - f.saved < SAVE_CURSOR_EVERY {
        // Nothing to count in these records: read past them in memory.
        f.read_through(node, feed.through);
        return Ok(read);
    }
    writes.push(store::json(records::ANALYSIS_CURSOR_KEY, &feed.through));
    node.store.commit(writes).await?;
    f.saved = feed.through;
    f.read_through(node, feed.through);
    Ok(read)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    fn a(s: &str) -> Amount {
        Amount::parse(s).unwrap()
    }

    /// 2026-03-15 12:00 UTC, and other instants.
    const MAR_2026: u64 = 1_773_576_000;
    const FEB_2026: u64 = 1_771_156_800;

    #[test]
    fn months_parse_strictly_and_print_back() {
        let m = YearMonth::parse("2026-03").unwrap();
        assert_eq!(m.to_string(), "2026-03");
        assert_eq!(m.name(), "March 2026");
        for bad in [
            "2026-3",
            "202603",
            "2026/03",
            "26-03",
            "2026-03-01",
            "",
            "２０２６-03",
            "+026-03",
        ] {
            assert!(
                matches!(YearMonth::parse(bad), Err(MonthError::Malformed(_))),
                "{bad}"
            );
        }
        for out in ["2026-00", "2026-13", "1969-12", "0000-01"] {
            assert!(
                matches!(YearMonth::parse(out), Err(MonthError::OutOfRange(_))),
                "{out}"
            );
        }
        assert!(YearMonth::parse("9999-12").is_ok());
        assert!(YearMonth::parse("1970-01").is_ok());
    }

    #[test]
    fn month_arithmetic() {
        let m = |s| YearMonth::parse(s).unwrap();
        assert_eq!(m("2026-03").previous(), m("2026-02"));
        assert_eq!(m("2026-01").previous(), m("2025-12"));
        assert_eq!(m("1970-01").previous().to_string(), "1969-12");
        assert_eq!(m("2024-02").days(), 29);
        assert_eq!(m("2025-02").days(), 28);
        assert_eq!(m("2100-02").days(), 28);
        assert_eq!(m("2000-02").days(), 29);
        assert_eq!(m("2026-04").days(), 30);
        assert_eq!(m("2026-12").days(), 31);
        assert!(m("2025-12") < m("2026-01"));
    }

    #[test]
    fn the_month_of_a_time_is_its_utc_calendar_month() {
        let m = |s| YearMonth::parse(s).unwrap();
        assert_eq!(YearMonth::of_unix(0), m("1970-01"));
        assert_eq!(YearMonth::of_unix(MAR_2026), m("2026-03"));
        assert_eq!(YearMonth::of_unix(FEB_2026), m("2026-02"));
        // 2026-03-01 00:00:00 UTC, and the second before it.
        assert_eq!(YearMonth::of_unix(1_772_323_200), m("2026-03"));
        assert_eq!(YearMonth::of_unix(1_772_323_199), m("2026-02"));
        // 2024-02-29 23:59:59 UTC (leap day), then March.
        assert_eq!(YearMonth::of_unix(1_709_251_199), m("2024-02"));
        assert_eq!(YearMonth::of_unix(1_709_251_200), m("2024-03"));
        // Beyond what a calendar of four-digit years holds: the last month, not a panic.
        assert_eq!(YearMonth::of_unix(u64::MAX), m("9999-12"));
        assert_eq!(YearMonth::of_unix(i64::MAX as u64), m("9999-12"));
    }

    #[test]
    fn categories_are_lowercase_words() {
        for ok in ["groceries", "home-garden", "e2", "a", &"x".repeat(32)] {
            assert_eq!(validate_category(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "Groceries",
            "2fast",
            "bill:water",
            "a b",
            "café",
            "-x",
            &"x".repeat(33),
        ] {
            assert!(validate_category(bad).is_err(), "{bad}");
        }
        assert_eq!(validate_limit_category("bill:water"), Ok(()));
        assert!(validate_limit_category("bill:").is_err());
        assert!(validate_limit_category("bill:bill:water").is_err());
    }

    fn spent<'a>(consumer: &'a str, merchant: &'a str, category: &str, amount: &str) -> Item<'a> {
        Item::Spent {
            consumer,
            merchant,
            category: category.to_string(),
            order: "ord_1",
            amount: a(amount),
        }
    }

    #[test]
    fn settlements_refunds_and_credits_make_the_aggregate() {
        let mut agg = MonthAggregate::default();
        apply(&mut agg, &spent("alice", "shop", "groceries", "30.00")).unwrap();
        apply(
            &mut agg,
            &spent("alice", "gadgets", "electronics", "100.00"),
        )
        .unwrap();
        apply(&mut agg, &spent("alice", "shop", "groceries", "12.50")).unwrap();
        apply(
            &mut agg,
            &Item::Refunded {
                consumer: "alice",
                merchant: "gadgets",
                category: "electronics".into(),
                amount: a("40.00"),
            },
        )
        .unwrap();
        apply(
            &mut agg,
            &Item::Income {
                consumer: "alice",
                source: "salary",
                amount: a("2500.00"),
            },
        )
        .unwrap();
        assert_eq!(agg.spending, a("102.50"));
        assert_eq!(agg.by_category["groceries"], a("42.50"));
        assert_eq!(agg.by_category["electronics"], a("60.00"));
        assert_eq!(agg.by_merchant["shop"], a("42.50"));
        assert_eq!(agg.by_merchant["gadgets"], a("60.00"));
        assert_eq!(agg.income, a("2500.00"));
        assert_eq!(agg.income_by_source["salary"], a("2500.00"));
        assert_eq!((agg.orders_settled, agg.refunds, agg.credits), (3, 1, 1));
        // A refund of an earlier month's order: this month's spending goes negative.
        let mut later = MonthAggregate::default();
        apply(
            &mut later,
            &Item::Refunded {
                consumer: "alice",
                merchant: "shop",
                category: "groceries".into(),
                amount: a("5.00"),
            },
        )
        .unwrap();
        assert_eq!(later.spending, a("5.00").checked_neg());
        // The stored form keeps every amount exact.
        let back: MonthAggregate =
            serde_json::from_slice(&serde_json::to_vec(&later).unwrap()).unwrap();
        assert_eq!(back, later);
    }

    #[test]
    fn feed_events_mean_spending_income_or_nothing() {
        let settled = FeedKind::OrderSettled {
            order: "o1".into(),
            consumer: "alice".into(),
            merchant: "shop".into(),
            wallet_paid: a("10.00"),
            bank_paid: a("2.50"),
        };
        let cat = |m: &str| format!("cat-{m}");
        assert_eq!(
            Item::of(&settled, cat).unwrap(),
            Some(Item::Spent {
                consumer: "alice",
                merchant: "shop",
                category: "cat-shop".into(),
                order: "o1",
                amount: a("12.50"),
            })
        );
        let salary = FeedKind::Credited {
            credit: "c1".into(),
            consumer: "alice".into(),
            source: onecard_engine::CreditSource::Employer {
                employer: "acme".into(),
            },
            amount: a("100.00"),
            to_wallet: a("60.00"),
            to_bank: a("40.00"),
        };
        assert!(matches!(
            Item::of(&salary, cat).unwrap(),
            Some(Item::Income { source: "salary", amount, .. }) if amount == a("100.00")
        ));
        // A top-up moves the consumer's own money: not income.
        let topup = FeedKind::WalletToppedUp {
            consumer: "alice".into(),
            amount: a("50.00"),
        };
        assert_eq!(Item::of(&topup, cat).unwrap(), None);
    }

    #[test]
    fn a_limit_fires_only_when_crossed_from_below() {
        let settings = AlertSettings {
            monthly_limit: Some(a("100.00")),
            categories: BTreeMap::from([("groceries".to_string(), a("40.00"))]),
        };
        let l = |t: &str, c: &str| Levels {
            total: a(t),
            in_category: a(c),
        };
        // Below to exactly at: fires both.
        let c = crossings(
            &settings,
            "groceries",
            l("60.00", "30.00"),
            l("100.00", "40.00"),
        );
        assert_eq!(
            c.iter().map(|c| c.threshold.key()).collect::<Vec<_>>(),
            ["total", "category:groceries"]
        );
        assert_eq!(c[0].spent, a("100.00"));
        assert_eq!(c[1].limit, a("40.00"));
        // Already at or above: nothing.
        assert!(crossings(
            &settings,
            "groceries",
            l("100.00", "40.00"),
            l("120.00", "50.00")
        )
        .is_empty());
        // Below and still below; another category has no limit of its own.
        assert!(crossings(
            &settings,
            "groceries",
            l("10.00", "10.00"),
            l("99.99", "39.99")
        )
        .is_empty());
        let other = crossings(&settings, "toys", l("90.00", "0.00"), l("150.00", "60.00"));
        assert_eq!(other.len(), 1);
        assert_eq!(other[0].threshold, Threshold::Total);
        // No limits, no alerts.
        assert!(crossings(
            &AlertSettings::default(),
            "groceries",
            l("0.00", "0.00"),
            l("1000.00", "1000.00")
        )
        .is_empty());
    }

    /// The store as a map, to run batches one after another as the follower does.
    #[derive(Default)]
    struct Memory {
        kv: RefCell<BTreeMap<String, Vec<u8>>>,
        settings: AlertSettings,
    }

    impl Memory {
        fn commit(&self, writes: Vec<Write>) {
            for w in writes {
                match w {
                    Write::Put(k, v) => {
                        self.kv
                            .borrow_mut()
                            .insert(String::from_utf8(k).unwrap(), v);
                    }
                    Write::Remove(k) => {
                        self.kv.borrow_mut().remove(&String::from_utf8(k).unwrap());
                    }
                }
            }
        }
        fn month(&self, consumer: &str, m: &str) -> MonthAggregate {
            self.aggregate(consumer, YearMonth::parse(m).unwrap())
                .unwrap()
                .unwrap_or_default()
        }
        fn alerts(&self) -> Vec<String> {
            self.kv
                .borrow()
                .keys()
                .filter(|k| k.starts_with("af/"))
                .cloned()
                .collect()
        }
    }

    impl IndexReads for Memory {
        fn aggregate(
            &self,
            consumer: &str,
            month: YearMonth,
        ) -> Result<Option<MonthAggregate>, StoreError> {
            Ok(self
                .kv
                .borrow()
                .get(&records::month_key(consumer, &month.to_string()))
                .map(|v| <MonthAggregate as crate::store::Codec>::decode(v).unwrap()))
        }
        fn alert_settings(&self, _consumer: &str) -> Result<Option<AlertSettings>, StoreError> {
            Ok(Some(self.settings.clone()))
        }
        fn has_alert(&self, key: &str) -> Result<bool, StoreError> {
            Ok(self.kv.borrow().contains_key(key))
        }
    }

    #[test]
    fn batches_keep_months_and_consumers_apart_and_fire_an_alert_once_per_month() {
        let store = Memory {
            settings: AlertSettings {
                monthly_limit: Some(a("50.00")),
                categories: BTreeMap::new(),
            },
            ..Memory::default()
        };
        // February: 30.00, then March: 20.00 + 40.00 (crosses 50.00) in one batch.
        let mut b = Batch::new(&store);
        b.add(FEB_2026, &spent("alice", "shop", "groceries", "30.00"))
            .unwrap();
        b.add(MAR_2026, &spent("alice", "shop", "groceries", "20.00"))
            .unwrap();
        b.add(MAR_2026, &spent("alice", "gadgets", "electronics", "40.00"))
            .unwrap();
        b.add(MAR_2026, &spent("bob", "shop", "groceries", "5.00"))
            .unwrap();
        store.commit(b.into_writes());
        assert_eq!(store.month("alice", "2026-02").spending, a("30.00"));
        assert_eq!(store.month("alice", "2026-03").spending, a("60.00"));
        assert_eq!(store.month("bob", "2026-03").spending, a("5.00"));
        assert_eq!(store.alerts(), ["af/alice/2026-03/total"]);

        // The next batch: a refund takes March below the limit, more spending crosses it
        // again: no second alert that month, in this batch or a later one.
        let mut b = Batch::new(&store);
        b.add(
            MAR_2026,
            &Item::Refunded {
                consumer: "alice",
                merchant: "gadgets",
                category: "electronics".into(),
                amount: a("40.00"),
            },
        )
        .unwrap();
        b.add(MAR_2026, &spent("alice", "shop", "groceries", "45.00"))
            .unwrap();
        store.commit(b.into_writes());
        assert_eq!(store.month("alice", "2026-03").spending, a("65.00"));
        assert_eq!(store.alerts(), ["af/alice/2026-03/total"]);
        // February crosses on its own account.
        let mut b = Batch::new(&store);
        b.add(FEB_2026, &spent("alice", "shop", "groceries", "25.00"))
            .unwrap();
        store.commit(b.into_writes());
        assert_eq!(
            store.alerts(),
            ["af/alice/2026-02/total", "af/alice/2026-03/total"]
        );
        let fired: FiredAlert =
            serde_json::from_slice(store.kv.borrow().get("af/alice/2026-02/total").unwrap())
                .unwrap();
        assert_eq!((fired.limit, fired.spent), (a("50.00"), a("55.00")));
        assert_eq!(fired.order_id.as_deref(), Some("ord_1"));
    }

    /// A batch whose commit never happened (a crash) leaves the store as it was: reading the
    /// same events again counts them once.
    #[test]
    fn a_batch_lost_before_its_commit_counts_once_when_read_again() {
        let store = Memory::default();
        let events = [
            spent("alice", "shop", "groceries", "30.00"),
            spent("alice", "shop", "groceries", "12.00"),
        ];
        let mut lost = Batch::new(&store);
        for e in &events {
            lost.add(MAR_2026, e).unwrap();
        }
        drop(lost);
        let mut again = Batch::new(&store);
        for e in &events {
            again.add(MAR_2026, e).unwrap();
        }
        store.commit(again.into_writes());
        assert_eq!(store.month("alice", "2026-03").spending, a("42.00"));
        assert_eq!(store.month("alice", "2026-03").orders_settled, 2);
    }
}
