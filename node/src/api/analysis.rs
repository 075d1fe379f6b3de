//! The consumer's spending analysis (F6) over the API: a month's income and spending compared
//! with the month before, as JSON or as a readable statement (text or HTML), and the
//! consumer's spending limits and the alerts they fired. Read from the history index
//! ([`crate::analysis`]), which follows the journal a moment behind it.

use std::collections::{BTreeMap, BTreeSet};

use actix_web::http::header;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use onecard_engine::{Amount, AmountError};
use serde::{Deserialize, Serialize};

use super::idem::Reply;
use super::{consumer_of, parse_json, ApiError};
use crate::analysis::{category_of, validate_limit_category, YearMonth};
use crate::records::{self, AlertSettings, FiredAlert, MonthAggregate};
use crate::state::Node;
use crate::store;

/// At most this many category limits per consumer.
pub const MAX_CATEGORY_LIMITS: usize = 64;

/// At most this many fired alerts in one answer.
const MAX_FIRED: usize = 1000;

/// An amount this month, the month before, and the change (this month less the month before;
/// signed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compared {
    pub amount: String,
    pub previous: String,
    pub change: String,
}

impl Compared {
    fn of(now: Amount, before: Amount) -> Result<Compared, AmountError> {
        Ok(Compared {
            amount: now.to_string(),
            previous: before.to_string(),
            change: now.checked_sub(before)?.to_string(),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceLine {
    /// `recharge`, `salary` or `bank_transfer`.
    pub source: String,
    #[serde(flatten)]
    pub compared: Compared,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CategoryLine {
    pub category: String,
    #[serde(flatten)]
    pub compared: Compared,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MerchantLine {
    pub merchant: String,
    /// The merchant's name, if the node knows it.
    pub name: Option<String>,
    /// The merchant's category now.
    pub category: String,
    #[serde(flatten)]
    pub compared: Compared,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Income {
    pub total: Compared,
    pub by_source: Vec<SourceLine>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spending {
    /// Settled orders less refunds.
    pub total: Compared,
    pub by_category: Vec<CategoryLine>,
    pub by_merchant: Vec<MerchantLine>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub orders_settled: u64,
    pub refunds: u64,
    pub credits: u64,
}

/// A month of a consumer's income and spending, each with the month before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonthAnalysis {
    pub consumer: String,
    /// `YYYY-MM` (UTC).
    pub month: String,
    pub previous_month: String,
    pub currency: String,
    pub income: Income,
    pub spending: Spending,
    pub counts: Counts,
    /// The limits this month's spending crossed.
    pub alerts: Vec<FiredAlert>,
}

/// The lines of a breakdown: every key of either month, the largest this month first (then by
/// name), each compared with the month before.
fn lines<T>(
    now: &BTreeMap<String, Amount>,
    before: &BTreeMap<String, Amount>,
    make: impl Fn(&str, Compared) -> T,
) -> Result<Vec<T>, AmountError> {
    let keys: BTreeSet<&String> = now.keys().chain(before.keys()).collect();
    let get = |m: &BTreeMap<String, Amount>, k: &str| m.get(k).copied().unwrap_or_default();
    let mut rows: Vec<(Amount, &String)> = keys.into_iter().map(|k| (get(now, k), k)).collect();
    rows.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    rows.into_iter()
        .map(|(amount, k)| Ok(make(k, Compared::of(amount, get(before, k))?)))
        .collect()
}

/// The comparison of two months' aggregates (pure); `merchant` gives a merchant's name and
/// category.
pub fn compare(
    now: &MonthAggregate,
    before: &MonthAggregate,
    merchant: impl Fn(&str) -> (Option<String>, String),
) -> Result<(Income, Spending, Counts), AmountError> {
    let income = Income {
        total: Compared::of(now.income, before.income)?,
        by_source: lines(&now.income_by_source, &before.income_by_source, |k, c| {
            SourceLine {
                source: k.to_string(),
                compared: c,
            }
        })?,
    };
    let spending = Spending {
        total: Compared::of(now.spending, before.spending)?,
        by_category: lines(&now.by_category, &before.by_category, |k, c| CategoryLine {
            category: k.to_string(),
            compared: c,
        })?,
        by_merchant: lines(&now.by_merchant, &before.by_merchant, |k, c| {
            let (name, category) = merchant(k);
            MerchantLine {
                merchant: k.to_string(),
                name,
                category,
                compared: c,
            }
        })?,
    };
    let counts = Counts {
        orders_settled: now.orders_settled,
        refunds: now.refunds,
        credits: now.credits,
    };
    Ok((income, spending, counts))
}

/// The month in the path: 400 `invalid_month` when it is not `YYYY-MM`.
fn month_of(path: &str) -> Result<YearMonth, ApiError> {
    YearMonth::parse(path).map_err(|e| ApiError::bad_request("invalid_month", e.to_string()))
}

/// The consumer's analysis of `month`, from the index.
fn analysis(node: &Node, consumer: &str, month: YearMonth) -> Result<MonthAnalysis, ApiError> {
    if !node.engine.has_consumer(consumer)? {
        return Err(ApiError::not_found(
            "unknown_consumer",
            "the account no longer exists",
        ));
    }
    let previous = month.previous();
    let read = |m: YearMonth| {
        node.store
            .get_record::<MonthAggregate>(&records::month_key(consumer, &m.to_string()))
            .map(Option::unwrap_or_default)
    };
    let (now, before) = (read(month)?, read(previous)?);
    let (income, spending, counts) = compare(&now, &before, |m| {
        (
            node.merchants.get(m).map(|p| p.name.clone()),
            category_of(node, m),
        )
    })
    .map_err(|e| ApiError::internal(format!("the analysis' arithmetic: {e}")))?;
    let alerts = node
        .store
        .scan::<FiredAlert>(
            &records::fired_alerts_month_prefix(consumer, &month.to_string()),
            None,
            MAX_FIRED,
        )?
        .into_iter()
        .map(|(_, a)| a)
        .collect();
    Ok(MonthAnalysis {
        consumer: consumer.to_string(),
        month: month.to_string(),
        previous_month: previous.to_string(),
        currency: node.currency.clone(),
        income,
        spending,
        counts,
        alerts,
    })
}

/// `GET /v1/consumer/analysis/{month}`.
pub async fn month(
    req: HttpRequest,
    node: web::Data<Node>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let consumer = consumer_of(&node, &req)?;
    let month = month_of(&path)?;
    Ok(HttpResponse::Ok().json(analysis(&node, &consumer, month)?))
}

/// Whether the `Accept` header asks for HTML rather than text: `text/html` (or XHTML) with a
/// quality above that of `text/plain`. Wildcards and anything else get the default, text.
pub fn wants_html(accept: Option<&str>) -> bool {
    let Some(accept) = accept else {
        return false;
    };
    let (mut html, mut plain) = (0.0f32, 0.0f32);
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
            .and_then(|(_, v)| v.trim().parse::<f32>().ok())
            .filter(|q| (0.0..=1.0).contains(q))
            .unwrap_or(1.0);
        match media.as_str() {
            "text/html" | "application/xhtml+xml" => html = html.max(q),
            "text/plain" => plain = plain.max(q),
            _ => {}
        }
    }
    html > 0.0 && html > plain
}

fn signed(change: &str) -> String {
    if change.starts_with('-') || change == "0.00" {
        change.to_string()
    } else {
        format!("+{change}")
    }
}

/// The rows of a statement: (section, rows of (label, compared)).
fn sections(a: &MonthAnalysis) -> Vec<(&'static str, Vec<(String, &Compared)>)> {
    let mut income = vec![("Total".to_string(), &a.income.total)];
    income.extend(
        a.income
            .by_source
            .iter()
            .map(|l| (l.source.replace('_', " "), &l.compared)),
    );
    vec![
        ("Income", income),
        ("Spending", vec![("Total".to_string(), &a.spending.total)]),
        (
            "Spending by category",
            a.spending
                .by_category
                .iter()
                .map(|l| (l.category.clone(), &l.compared))
                .collect(),
        ),
        (
            "Spending by merchant",
            a.spending
                .by_merchant
                .iter()
                .map(|l| {
                    let label = match &l.name {
                        Some(n) => format!("{n} ({}, {})", l.merchant, l.category),
                        None => format!("{} ({})", l.merchant, l.category),
                    };
                    (label, &l.compared)
                })
                .collect(),
        ),
    ]
}

fn alert_text(alert: &FiredAlert) -> String {
    let what = match &alert.category {
        Some(c) => format!("spending in {c}"),
        None => "spending".to_string(),
    };
    format!(
        "{what} reached {} (your limit: {})",
        alert.spent, alert.limit
    )
}

fn period(a: &MonthAnalysis) -> String {
    match YearMonth::parse(&a.month) {
        Ok(m) => format!(
            "{} ({}-01 to {}-{:02}, UTC)",
            m.name(),
            a.month,
            a.month,
            m.days()
        ),
        Err(_) => a.month.clone(),
    }
}

/// A value on one line of text: a merchant's name may hold a newline (names allow it), which
/// would otherwise start a line of the statement that the node did not write.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The statement as plain text.
pub fn render_text(a: &MonthAnalysis) -> String {
    let mut out = String::new();
    out.push_str("OneCard monthly statement\n");
    out.push_str(&format!("Consumer: {}\n", one_line(&a.consumer)));
    out.push_str(&format!("Period:   {}\n", period(a)));
    out.push_str(&format!(
        "Amounts in {}; compared with {}\n",
        a.currency, a.previous_month
    ));
    for (title, rows) in sections(a) {
        out.push_str(&format!(
            "\n{title:<40} {:>14} {:>14} {:>14}\n",
            "this month", "month before", "change"
        ));
        if rows.is_empty() {
            out.push_str("  (none)\n");
        }
        for (label, c) in rows {
            out.push_str(&format!(
                "  {:<38} {:>14} {:>14} {:>14}\n",
                one_line(&label),
                c.amount,
                c.previous,
                signed(&c.change)
            ));
        }
    }
    out.push_str(&format!(
        "\nOrders settled: {}; refunds: {}; credits: {}\n",
        a.counts.orders_settled, a.counts.refunds, a.counts.credits
    ));
    out.push_str("\nAlerts\n");
    if a.alerts.is_empty() {
        out.push_str("  (none)\n");
    }
    for alert in &a.alerts {
        out.push_str(&format!("  {}\n", alert_text(alert)));
    }
    out.push_str(
        "\nTop-ups of the wallet from your own bank account are not income and not spending.\n",
    );
    out
}

/// Text escaped for HTML: element content and attribute values alike.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The statement as an HTML page; every value escaped.
pub fn render_html(a: &MonthAnalysis) -> String {
    let e = escape_html;
    let mut out = String::new();
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    out.push_str(&format!(
        "<title>OneCard statement {}</title>\n</head>\n<body>\n",
        e(&a.month)
    ));
    out.push_str("<h1>OneCard monthly statement</h1>\n");
    out.push_str(&format!(
        "<p>Consumer: {}<br>\nPeriod: {}<br>\nAmounts in {}; compared with {}</p>\n",
        e(&a.consumer),
        e(&period(a)),
        e(&a.currency),
        e(&a.previous_month)
    ));
    for (title, rows) in sections(a) {
        out.push_str(&format!("<h2>{}</h2>\n<table>\n", e(title)));
        out.push_str("<tr><th></th><th>this month</th><th>month before</th><th>change</th></tr>\n");
        for (label, c) in rows {
            out.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                e(&label),
                e(&c.amount),
                e(&c.previous),
                e(&signed(&c.change))
            ));
        }
        out.push_str("</table>\n");
    }
    out.push_str(&format!(
        "<p>Orders settled: {}; refunds: {}; credits: {}</p>\n<h2>Alerts</h2>\n<ul>\n",
        a.counts.orders_settled, a.counts.refunds, a.counts.credits
    ));
    for alert in &a.alerts {
        out.push_str(&format!("<li>{}</li>\n", e(&alert_text(alert))));
    }
    out.push_str("</ul>\n<p>Top-ups of the wallet from your own bank account are not income and not spending.</p>\n</body>\n</html>\n");
    out
}

/// `GET /v1/consumer/analysis/{month}/statement`: text, or HTML when `Accept` asks for it.
pub async fn statement(
    req: HttpRequest,
    node: web::Data<Node>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let consumer = consumer_of(&node, &req)?;
    let month = month_of(&path)?;
    let a = analysis(&node, &consumer, month)?;
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let (body, kind) = if wants_html(accept) {
        (render_html(&a), "text/html; charset=utf-8")
    } else {
        (render_text(&a), "text/plain; charset=utf-8")
    };
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, kind))
        .insert_header((header::VARY, "Accept"))
        .body(body))
}

/// The consumer's limits, as the API shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertsView {
    pub consumer: String,
    pub monthly_limit: Option<String>,
    pub categories: BTreeMap<String, String>,
}

fn alerts_view(consumer: &str, s: &AlertSettings) -> AlertsView {
    AlertsView {
        consumer: consumer.to_string(),
        monthly_limit: s.monthly_limit.map(|a| a.to_string()),
        categories: s
            .categories
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect(),
    }
}

/// `PUT /v1/consumer/alerts`: the limits, replacing the previous ones.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsBody {
    /// The month's spending overall; null or absent: none.
    #[serde(default)]
    pub monthly_limit: Option<String>,
    /// Per category (a merchant's category, or `bill:<kind>`).
    #[serde(default)]
    pub categories: BTreeMap<String, String>,
}

impl AlertsBody {
    fn check(&self) -> Result<AlertSettings, ApiError> {
        let amount = |field: &str, v: &str| {
            Amount::parse_positive(v).map_err(|e| ApiError::invalid(format!("{field}: {e}")))
        };
        let monthly_limit = self
            .monthly_limit
            .as_deref()
            .map(|v| amount("monthly_limit", v))
            .transpose()?;
        if self.categories.len() > MAX_CATEGORY_LIMITS {
            return Err(ApiError::invalid(format!(
                "categories: at most {MAX_CATEGORY_LIMITS} limits"
            )));
        }
        let mut categories = BTreeMap::new();
        for (c, v) in &self.categories {
            validate_limit_category(c)
                .map_err(|e| ApiError::invalid(format!("categories: {e}")))?;
            categories.insert(c.clone(), amount(&format!("categories.{c}"), v)?);
        }
        Ok(AlertSettings {
            monthly_limit,
            categories,
        })
    }
}

pub async fn get_alerts(req: HttpRequest, node: web::Data<Node>) -> Result<HttpResponse, ApiError> {
    let consumer = consumer_of(&node, &req)?;
    let s = node
        .store
        .get::<AlertSettings>(&records::alert_settings_key(&consumer))?
        .unwrap_or_default();
    Ok(HttpResponse::Ok().json(alerts_view(&consumer, &s)))
}

pub async fn put_alerts(
    req: HttpRequest,
    node: web::Data<Node>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let consumer = consumer_of(&node, &req)?;
    let (idem, body) = begin_idempotent!(node, req, payload, format!("c:{consumer}"));
    let settings = match parse_json::<AlertsBody>(&body).and_then(|b| b.check()) {
        Ok(s) => s,
        Err(e) => return idem.finish(Reply::error(&e)).await,
    };
    let key = records::alert_settings_key(&consumer);
    let write = if settings == AlertSettings::default() {
        store::remove(key)
    } else {
        store::json(key, &settings)
    };
    idem.finish(
        Reply::new(StatusCode::OK, &alerts_view(&consumer, &settings)).with_writes(vec![write]),
    )
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FiredQuery {
    /// `YYYY-MM`: that month's only.
    pub month: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FiredAlerts {
    pub consumer: String,
    /// Oldest month first.
    pub alerts: Vec<FiredAlert>,
}

/// `GET /v1/consumer/alerts/fired`: the alerts the limits fired, oldest month first (at most
/// 1000), or those of one month (`?month=YYYY-MM`).
pub async fn fired_alerts(
    req: HttpRequest,
    node: web::Data<Node>,
) -> Result<HttpResponse, ApiError> {
    let consumer = consumer_of(&node, &req)?;
    let q = web::Query::<FiredQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::invalid(format!("query: {e}")))?;
    let prefix = match &q.month {
        Some(m) => records::fired_alerts_month_prefix(&consumer, &month_of(m)?.to_string()),
        None => records::fired_alerts_prefix(&consumer),
    };
    let alerts = node
        .store
        .scan::<FiredAlert>(&prefix, None, MAX_FIRED)?
        .into_iter()
        .map(|(_, a)| a)
        .collect();
    Ok(HttpResponse::Ok().json(FiredAlerts { consumer, alerts }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Amount {
        Amount::parse(s).unwrap()
    }

    fn sample() -> MonthAnalysis {
        let now = MonthAggregate {
            spending: a("142.50"),
            by_category: BTreeMap::from([
                ("groceries".into(), a("42.50")),
                ("electronics".into(), a("100.00")),
            ]),
            by_merchant: BTreeMap::from([
                ("shop".into(), a("42.50")),
                ("gadgets".into(), a("100.00")),
            ]),
            income: a("0.00"),
            income_by_source: BTreeMap::new(),
            orders_settled: 3,
            refunds: 1,
            credits: 0,
        };
        let before = MonthAggregate {
            spending: a("30.00"),
            by_category: BTreeMap::from([
                ("groceries".into(), a("30.00")),
                ("toys".into(), a("5.00")),
            ]),
            income: a("2500.00"),
            income_by_source: BTreeMap::from([("salary".into(), a("2500.00"))]),
            ..MonthAggregate::default()
        };
        let (income, spending, counts) = compare(&now, &before, |m| match m {
            "shop" => (Some("Tom & Jerry's <Shop>".into()), "groceries".into()),
            _ => (None, "electronics".into()),
        })
        .unwrap();
        MonthAnalysis {
            consumer: "alice".into(),
            month: "2026-03".into(),
            previous_month: "2026-02".into(),
            currency: "EUR".into(),
            income,
            spending,
            counts,
            alerts: vec![FiredAlert {
                month: "2026-03".into(),
                scope: "category".into(),
                category: Some("groceries".into()),
                limit: a("40.00"),
                spent: a("42.50"),
                at: 1,
                order_id: None,
            }],
        }
    }

    #[test]
    fn each_line_is_compared_with_the_month_before() {
        let s = sample();
        assert_eq!(
            s.spending.total,
            Compared {
                amount: "142.50".into(),
                previous: "30.00".into(),
                change: "112.50".into()
            }
        );
        // Largest first; a category of the month before only shows with 0.00 now.
        let cats: Vec<(&str, &str, &str)> = s
            .spending
            .by_category
            .iter()
            .map(|l| {
                (
                    l.category.as_str(),
                    l.compared.amount.as_str(),
                    l.compared.change.as_str(),
                )
            })
            .collect();
        assert_eq!(
            cats,
            [
                ("electronics", "100.00", "100.00"),
                ("groceries", "42.50", "12.50"),
                ("toys", "0.00", "-5.00")
            ]
        );
        assert_eq!(s.income.total.change, "-2500.00");
        assert_eq!(s.income.by_source[0].source, "salary");
        assert_eq!(
            s.spending.by_merchant[1].name.as_deref(),
            Some("Tom & Jerry's <Shop>")
        );
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(
            json["spending"]["by_category"][0]["category"],
            "electronics"
        );
        assert_eq!(json["spending"]["by_category"][0]["previous"], "0.00");
    }

    #[test]
    fn the_statement_reads_as_text_and_escapes_every_value_in_html() {
        let s = sample();
        let text = render_text(&s);
        assert!(
            text.contains("March 2026 (2026-03-01 to 2026-03-31, UTC)"),
            "{text}"
        );
        assert!(text.contains("+112.50"), "{text}");
        assert!(text.contains("-5.00"), "{text}");
        assert!(
            text.contains("Tom & Jerry's <Shop> (shop, groceries)"),
            "{text}"
        );
        assert!(text.contains("spending in groceries reached 42.50 (your limit: 40.00)"));
        let mut forged = s.clone();
        forged.spending.by_merchant[0].name = Some("Shop\n  Total  0.00".into());
        let text = render_text(&forged);
        assert!(text.contains("Shop   Total  0.00"), "{text}");
        assert!(
            !text.lines().any(|l| l.starts_with("  Total  0.00")),
            "{text}"
        );
        let html = render_html(&s);
        assert!(
            html.contains("Tom &amp; Jerry&#39;s &lt;Shop&gt; (shop, groceries)"),
            "{html}"
        );
        assert!(!html.contains("<Shop>"), "{html}");
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert_eq!(
            escape_html("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn html_only_when_accept_prefers_it() {
        assert!(!wants_html(None));
        assert!(!wants_html(Some("*/*")));
        assert!(!wants_html(Some("text/plain")));
        assert!(!wants_html(Some("application/json")));
        assert!(wants_html(Some("text/html")));
        assert!(wants_html(Some("Text/HTML; charset=utf-8")));
        assert!(wants_html(Some(
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
        )));
        assert!(!wants_html(Some("text/html;q=0.5, text/plain")));
        assert!(!wants_html(Some("text/plain, text/html")));
        assert!(wants_html(Some("text/plain;q=0.2, text/html;q=0.9")));
        assert!(!wants_html(Some("text/html;q=0")));
        assert!(!wants_html(Some("text/html;q=nonsense, text/plain")));
    }

    #[test]
    fn limits_are_exact_positive_amounts_on_known_shapes_of_category() {
        let body = |v: serde_json::Value| serde_json::from_value::<AlertsBody>(v).unwrap().check();
        let ok = body(serde_json::json!({"monthly_limit": "500", "categories": {"groceries": "40.5", "bill:water": "30.00"}}))
            .unwrap();
        assert_eq!(ok.monthly_limit, Some(a("500.00")));
        assert_eq!(ok.categories["groceries"], a("40.50"));
        for bad in [
            serde_json::json!({"monthly_limit": "0"}),
            serde_json::json!({"monthly_limit": "1.234"}),
            serde_json::json!({"monthly_limit": "-5.00"}),
            serde_json::json!({"categories": {"Groceries": "1.00"}}),
            serde_json::json!({"categories": {"groceries": "1e3"}}),
        ] {
            assert_eq!(body(bad.clone()).unwrap_err().status, 422, "{bad}");
        }
        let many: BTreeMap<String, String> = (0..=MAX_CATEGORY_LIMITS)
            .map(|i| (format!("c{i}"), "1.00".to_string()))
            .collect();
        assert!(body(serde_json::json!({ "categories": many })).is_err());
    }
}
