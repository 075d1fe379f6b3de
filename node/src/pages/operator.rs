//! The operator's dashboard: throughput and latency (the node's metrics), the journal's batch
//! size and the queues behind it, top-ups and bank operations waiting, locked cards, and the
//! last check of the journal. It reloads itself every few seconds (a `Refresh` header: no
//! script, which the pages' CSP forbids anyway).
//!
//! The check: `onecard verify` cannot run beside a running node (the account-state view's
//! store is the engine's, and locked). The dashboard's action runs the same checks on the log
//! alone instead ([`onecard_engine::Engine::verify_log`]: hash chain, replay, invariants, up
//! to the last durable record), on a thread of its own, one at a time; its last result is kept
//! in memory and shown with the journal's own state (stopped or not, what opening it found).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use askama::Template;
use onecard_protocol::mask_last4;
use parking_lot::Mutex;
use serde::Deserialize;

use super::merchant::time_of;
use super::{
    csrf_ok, fault, forbidden, key_sign_in_page, message, open_session, operator_binding, render,
    see_other, signed_in, CsrfForm,
};
use crate::metrics::LatencySummary;
use crate::records::{WebParty, WebSession};
use crate::state::Node;

/// How often the dashboard reloads itself, in seconds.
pub const REFRESH_SECS: u64 = 5;
/// The window the request rate is measured over.
const RATE_WINDOW: Duration = Duration::from_secs(60);
/// Rows shown in a list (awaiting funds, bank operations, locked cards, routes).
const LISTED: usize = 20;
/// Orders awaiting funds counted.
const COUNT_CAP: usize = 100_000;

/// What the dashboard keeps between views (in memory; one per node).
pub struct OpsState {
    /// When the node started (its state was made).
    started: Instant,
    /// (when, API requests answered so far), oldest first, within [`RATE_WINDOW`].
    samples: Mutex<VecDeque<(Instant, u64)>>,
    /// A check of the journal is running; shared with its thread.
    verifying: Arc<AtomicBool>,
    last_verify: Arc<Mutex<Option<VerifyRun>>>,
}

impl Default for OpsState {
    fn default() -> OpsState {
        OpsState {
            started: Instant::now(),
            samples: Mutex::new(VecDeque::new()),
            verifying: Arc::new(AtomicBool::new(false)),
            last_verify: Arc::new(Mutex::new(None)),
        }
    }
}

/// A check of the journal and how it ended.
#[derive(Debug, Clone)]
pub struct VerifyRun {
    /// Unix seconds it finished.
    pub at: u64,
    pub millis: u64,
    /// The report's lines, or the error.
    pub outcome: Result<Vec<String>, String>,
}

impl OpsState {
    /// Requests per second over the last [`RATE_WINDOW`] (or since the first view in it),
    /// with the seconds it was measured over; `None` before there are two samples a second
    /// apart.
    fn rate(&self, total: u64) -> Option<(f64, f64)> {
        let now = Instant::now();
        let mut samples = self.samples.lock();
        while samples.len() > 1
            && samples
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW)
        {
            samples.pop_front();
        }
        if samples
            .back()
            .is_none_or(|(t, _)| now.duration_since(*t) >= Duration::from_secs(1))
        {
            samples.push_back((now, total));
        }
        let (t0, n0) = *samples.front()?;
        let secs = now.duration_since(t0).as_secs_f64();
        (secs >= 1.0).then(|| (total.saturating_sub(n0) as f64 / secs, secs))
    }
}

/// Registers the operator's pages.
pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/web/ops/sign-in", web::get().to(sign_in_page))
        .route("/web/ops/sign-in", web::post().to(sign_in))
        .route("/web/ops", web::get().to(dashboard))
        .route("/web/ops/verify", web::post().to(verify));
}

async fn sign_in_page() -> HttpResponse {
    key_sign_in_page(StatusCode::OK, WebParty::Operator, None)
}

#[derive(Debug, Deserialize)]
struct TokenForm {
    token: String,
}

async fn sign_in(
    node: web::Data<Node>,
    req: HttpRequest,
    form: Option<web::Form<TokenForm>>,
) -> HttpResponse {
    let token = form.map(|f| f.into_inner().token).unwrap_or_default();
    // The API's own check: the token that opens the admin API opens the dashboard.
    if !crate::api::is_admin_token(&node, token.trim()) {
        return key_sign_in_page(
            StatusCode::UNAUTHORIZED,
            WebParty::Operator,
            Some("This is not the administrator's token."),
        );
    }
    open_session(
        &node,
        &req,
        WebParty::Operator,
        "operator".into(),
        |cookie| Some(operator_binding(&node, cookie)),
        Vec::new(),
    )
    .await
}

/// The operator's live session; the answer to send instead without one (a redirect to the
/// sign-in page).
fn operator_session(node: &Node, req: &HttpRequest) -> Result<WebSession, Box<HttpResponse>> {
    match signed_in(node, req, WebParty::Operator) {
        Ok(Some(s)) => Ok(s),
        Ok(None) => Err(Box::new(see_other("/web/ops/sign-in"))),
        Err(e) => Err(Box::new(fault(e))),
    }
}

/// A labelled number.
struct Stat {
    id: String,
    label: &'static str,
    value: String,
}

fn stat(id: &'static str, label: &'static str, value: impl ToString) -> Stat {
    Stat {
        id: id.to_string(),
        label,
        value: value.to_string(),
    }
}

struct RouteRow {
    route: String,
    method: String,
    count: u64,
    mean: String,
    p95: String,
}

struct AwaitingRow {
    order: String,
    consumer: String,
    merchant: String,
    amount: String,
}

struct BankOpRow {
    id: String,
    direction: String,
    amount: String,
    age: String,
    booked: bool,
}

struct CardRow {
    card: String,
    holder: String,
    failures: u32,
}

struct VerifyView {
    at: String,
    millis: u64,
    ok: bool,
    lines: Vec<String>,
}

#[derive(Template)]
#[template(path = "ops_dashboard.html")]
struct Dashboard {
    csrf: String,
    refresh_secs: u64,
    now: String,
    journal_ok: bool,
    journal_failure: String,
    opened: Vec<Stat>,
    throughput: Vec<Stat>,
    latency: Vec<Stat>,
    routes: Vec<RouteRow>,
    journal: Vec<Stat>,
    queues: Vec<Stat>,
    awaiting_count: usize,
    awaiting_more: bool,
    awaiting: Vec<AwaitingRow>,
    bank_kind: String,
    bank_unresolved: usize,
    bank_overdue: u64,
    bank_ops: Vec<BankOpRow>,
    cards_enabled: bool,
    locked_count: usize,
    locked: Vec<CardRow>,
    verifying: bool,
    verify: Option<VerifyView>,
    notice: Option<String>,
}

/// Seconds as people read a latency bound.
fn secs_words(s: f64) -> String {
    if s.is_infinite() {
        "> 2.5 s".into()
    } else if s < 1.0 {
        format!("≤ {} ms", trim_float(s * 1000.0))
    } else {
        format!("≤ {} s", trim_float(s))
    }
}

fn trim_float(x: f64) -> String {
    let t = format!("{x:.2}");
    t.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn bound(l: &LatencySummary, q: f64) -> String {
    l.quantile_bound(q).map_or("–".into(), secs_words)
}

fn mean(l: &LatencySummary) -> String {
    if l.count == 0 {
        "–".into()
    } else {
        format!("{} ms", trim_float(l.mean_secs() * 1000.0))
    }
}

#[derive(Debug, Deserialize)]
struct Notice {
    done: Option<String>,
}

async fn dashboard(
    node: web::Data<Node>,
    req: HttpRequest,
    query: web::Query<Notice>,
) -> HttpResponse {
    let session = match operator_session(&node, &req) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let ops = &node.web_ops;
    let engine = &node.engine;

    // Throughput: the API's requests (the pages' own, and paths no route matches, are not).
    let (api, per_route) = node.metrics.latency_summary(|r| r != "(none)");
    let total = api.count;
    let uptime = ops.started.elapsed().as_secs_f64().max(1e-3);
    let mut throughput = vec![
        stat("requests-total", "API requests answered", api.count),
        stat(
            "requests-rate",
            "requests per second, lately",
            ops.rate(total).map_or("–".into(), |(r, secs)| {
                format!("{} (over {} s)", trim_float(r), secs.round())
            }),
        ),
        stat(
            "requests-rate-start",
            "requests per second since the node started",
            trim_float(total as f64 / uptime),
        ),
        stat(
            "orders-created",
            "orders created by merchants",
            node.metrics
                .orders_created
                .load(std::sync::atomic::Ordering::Relaxed),
        ),
    ];
    for (state, n) in node.metrics.order_event_counts() {
        throughput.push(Stat {
            id: format!("orders-{state}"),
            label: state,
            value: n.to_string(),
        });
    }
    let latency = vec![
        stat("latency-mean", "mean", mean(&api)),
        stat("latency-p50", "median", bound(&api, 0.5)),
        stat("latency-p95", "95th percentile", bound(&api, 0.95)),
        stat("latency-p99", "99th percentile", bound(&api, 0.99)),
    ];
    let mut routes: Vec<RouteRow> = per_route
        .iter()
        .filter(|(_, l)| l.count > 0)
        .map(|((route, method), l)| RouteRow {
            route: route.to_string(),
            method: method.to_string(),
            count: l.count,
            mean: mean(l),
            p95: bound(l, 0.95),
        })
        .collect();
    routes.sort_by_key(|r| std::cmp::Reverse(r.count));
    routes.truncate(LISTED);

    // The journal and the queues behind it.
    let j = engine.journal_stats();
    let n = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    let records = n(&j.records);
    let seq = match engine.last_seq() {
        Ok(s) => s,
        Err(e) => return fault(e),
    };
    let cursor = match crate::outbox::cursor(&node) {
        Ok(c) => c,
        Err(e) => return fault(e),
    };
    let batch = if records > 0 {
        n(&j.commits) as f64 / records as f64
    } else {
        0.0
    };
    let journal = vec![
        stat("journal-seq", "last durable record", seq),
        stat("journal-records", "records written since start", records),
        stat(
            "journal-entries",
            "entries written since start",
            n(&j.entries),
        ),
        stat(
            "journal-batch",
            "mean commits per record (group commit's batch size)",
            trim_float(batch),
        ),
        stat(
            "journal-flushes",
            "flushes (fsync) since start",
            n(&j.flushes),
        ),
    ];
    let (prints, webhooks) = crate::workers::queue_depths(&node);
    let lag = |read: u64| seq.saturating_sub(read);
    let queues = vec![
        stat("queue-print", "delivery slips waiting to print", prints),
        stat("queue-webhook", "webhook events waiting", webhooks),
        stat(
            "lag-outbox",
            "journal records the outbox has not handled",
            lag(cursor),
        ),
        stat(
            "lag-analysis",
            "records the spending analysis has not counted",
            lag(node.analysis_read.load(Ordering::Acquire)),
        ),
        stat(
            "lag-credit",
            "records the credit follower has not counted",
            lag(node.credit_read.load(Ordering::Acquire)),
        ),
        stat(
            "engine-in-flight",
            "engine commands in progress",
            engine.in_flight(),
        ),
        stat(
            "open-orders",
            "orders open in virtual accounts",
            engine.open_order_count(),
        ),
    ];

    // Top-ups waiting for the consumer's bank: orders whose settlement awaits funds.
    let late = crate::credit::late_prefix();
    let awaiting_count = node.store.count_prefix(late, COUNT_CAP);
    let late_keys = match node.store.keys_while(late, LISTED, |_| true) {
        Ok((k, _)) => k,
        Err(e) => return fault(e),
    };
    let mut awaiting = Vec::new();
    for key in late_keys {
        let order = crate::records::unseg(key.get(late.len()..).unwrap_or_default());
        match engine.order(&order).await {
            Ok(Some(o)) if o.state == onecard_engine::OrderState::AwaitingFunds => {
                awaiting.push(AwaitingRow {
                    consumer: engine
                        .order_owner(&order)
                        .ok()
                        .flatten()
                        .unwrap_or_default(),
                    merchant: o.merchant.clone(),
                    amount: o.amount.to_string(),
                    order,
                })
            }
            // Settled or closed since; the follower has not read it yet.
            Ok(_) => {}
            Err(e) => return fault(e),
        }
    }

    // Bank operations whose outcome is unknown (a real bank only).
    let (bank_kind, bank_unresolved, bank_overdue, bank_ops) = match &node.bank_adapter {
        None => (
            "simulated (every operation answered at once)".to_string(),
            0,
            0,
            Vec::new(),
        ),
        Some(bank) => {
            let unresolved = bank.unresolved();
            let overdue = bank
                .stats()
                .unresolved_overdue
                .load(std::sync::atomic::Ordering::Relaxed);
            let rows = unresolved
                .iter()
                .take(LISTED)
                .map(|u| BankOpRow {
                    id: u.id.clone(),
                    direction: format!("{:?}", u.direction).to_lowercase(),
                    amount: u.amount.to_string(),
                    age: format!("{} s", u.secs),
                    booked: u.booked,
                })
                .collect();
            (
                format!("ISO 20022 at {}", bank.settings().endpoint),
                unresolved.len(),
                overdue,
                rows,
            )
        }
    };

    // Locked cards: known by their last four digits only.
    let (cards_enabled, locked_count, locked) = match engine.locked_cards() {
        Ok(cards) => (
            true,
            cards.len(),
            cards
                .iter()
                .take(LISTED)
                .map(|c| CardRow {
                    card: mask_last4(&c.last4),
                    holder: c.holder.clone(),
                    failures: c.pin_failures,
                })
                .collect(),
        ),
        Err(_) => (false, 0, Vec::new()),
    };

    let recovery = engine.recovery();
    let opened = vec![
        stat(
            "opened-seq",
            "journal at opening: last record",
            recovery.last_seq,
        ),
        stat(
            "opened-replayed",
            "records replayed over the checkpoint (checked against its stamp)",
            recovery.replayed,
        ),
        stat(
            "opened-torn",
            "bytes of a torn, never acknowledged tail cut off",
            recovery.torn_bytes,
        ),
    ];
    let failure = engine.journal_failure();
    let verify = ops.last_verify.lock().clone().map(|v| VerifyView {
        at: time_of(v.at),
        millis: v.millis,
        ok: v.outcome.is_ok(),
        lines: match v.outcome {
            Ok(lines) => lines,
            Err(e) => vec![e],
        },
    });
    let notice = query.done.as_deref().and_then(|d| match d {
        "verify" => Some("The check of the journal has started; its result shows below.".into()),
        _ => None,
    });
    let page = Dashboard {
        csrf: session.csrf.clone(),
        refresh_secs: REFRESH_SECS,
        now: time_of(node.now()),
        journal_ok: failure.is_none(),
        journal_failure: failure.unwrap_or_default(),
        opened,
        throughput,
        latency,
        routes,
        journal,
        queues,
        awaiting_count,
        awaiting_more: awaiting_count > LISTED,
        awaiting,
        bank_kind,
        bank_unresolved,
        bank_overdue,
        bank_ops,
        cards_enabled,
        locked_count,
        locked,
        verifying: ops.verifying.load(Ordering::Acquire),
        verify,
        notice,
    };
    let mut r = render(StatusCode::OK, &page);
    if let Ok(v) = HeaderValue::from_str(&REFRESH_SECS.to_string()) {
        r.headers_mut()
            .insert(header::HeaderName::from_static("refresh"), v);
    }
    r
}

/// Starts a check of the journal on a thread of its own (one at a time) and goes back to the
/// dashboard, which shows the result once it is there.
async fn verify(
    node: web::Data<Node>,
    req: HttpRequest,
    form: Option<web::Form<CsrfForm>>,
) -> HttpResponse {
    let session = match operator_session(&node, &req) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    if !form.is_some_and(|f| csrf_ok(&session, &f.csrf)) {
        return forbidden();
    }
    if node.web_ops.verifying.swap(true, Ordering::AcqRel) {
        return message(
            StatusCode::CONFLICT,
            "Already running",
            "A check of the journal is running; its result shows on the dashboard.",
        );
    }
    // A thread of its own, holding neither the node nor the engine: a long check neither holds
    // up a blocking pool nor keeps the engine from closing at a stop (it ends with the process).
    let job = node.engine.verify_log_job();
    let (verifying, last) = (
        node.web_ops.verifying.clone(),
        node.web_ops.last_verify.clone(),
    );
    let spawned = std::thread::Builder::new()
        .name("ops-verify".into())
        .spawn(move || {
            let started = Instant::now();
            let outcome = match job() {
                Ok(report) => Ok(report.to_string().lines().map(str::to_string).collect()),
                Err(e) => Err(format!("verify FAILED: {e}")),
            };
            if let Err(e) = &outcome {
                tracing::error!(error = %e, "the operator's check of the journal failed");
            }
            *last.lock() = Some(VerifyRun {
                at: crate::state::now_ms() / 1000,
                millis: started.elapsed().as_millis() as u64,
                outcome,
            });
            verifying.store(false, Ordering::Release);
        });
    if let Err(e) = spawned {
        node.web_ops.verifying.store(false, Ordering::Release);
        return fault(e);
    }
    see_other("/web/ops?done=verify")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_bounds_read_as_people_read_them() {
        assert_eq!(secs_words(0.0025), "≤ 2.5 ms");
        assert_eq!(secs_words(0.001), "≤ 1 ms");
        assert_eq!(secs_words(1.0), "≤ 1 s");
        assert_eq!(secs_words(f64::INFINITY), "> 2.5 s");
    }

    #[test]
    fn the_rate_needs_a_second_between_samples() {
        let s = OpsState::default();
        assert_eq!(s.rate(10), None);
        s.samples
            .lock()
            .push_front((Instant::now() - Duration::from_secs(10), 0));
        let (rate, secs) = s.rate(100).unwrap();
        assert!((9.5..=10.5).contains(&secs), "{secs}");
        assert!((9.0..=10.5).contains(&rate), "{rate}");
    }
}
