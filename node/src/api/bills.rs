//! Bills (F7) over HTTP: billers post bills (`POST /v1/biller/bills`, a biller's API key);
//! consumers see their bills, approve or decline those that wait for them, and set an autopay
//! rule per biller (`/v1/consumer/bills…`, `/v1/consumer/autopay…`, the session).
//!
//! A bill id is idempotent per biller: the same bill id with the same content answers the bill
//! as it is now (200), with other content 409 `bill_conflict`; nothing is paid twice, since the
//! engine order that pays it has the bill's reference as its id.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use onecard_engine::Amount;
use serde::{Deserialize, Serialize};

use super::idem::Reply;
use super::merchant::{validate_text, MAX_ORDER_CENTS};
use super::{consumer_of, merchant_of, parse_json, ApiError};
use crate::bills::{self, BillAction, BillView};
use crate::notify;
use crate::records::{self, AutopayRule, Bill, BillState};
use crate::state::{now_ms, Node};
use crate::store::{self, Write};

/// The latest due date accepted: 9999-12-31T23:59:59Z.
const MAX_DUE_DATE: u64 = 253_402_300_799;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostBill {
    /// The biller's own id of the bill: idempotent per biller.
    pub bill_id: String,
    /// The consumer's account id (their virtual account receives the bill).
    pub consumer: String,
    pub amount: String,
    /// When the bill falls due: unix seconds (UTC). A bill due on a calendar day is sent as
    /// the moment that day ends where the biller is.
    pub due_date: u64,
    /// What it bills for, as the biller names it (`2026-11`).
    pub period: String,
}

/// An id from outside: 1 to 128 characters, no control characters (the engine's rule).
fn check_id(field: &str, id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.chars().count() > 128 || id.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!(
            "{field} must be 1 to 128 characters with no control characters"
        )));
    }
    Ok(())
}

impl PostBill {
    fn check(&self) -> Result<Amount, ApiError> {
        check_id("bill_id", &self.bill_id)?;
        check_id("consumer", &self.consumer)?;
        let amount = Amount::parse_positive(&self.amount)
            .map_err(|e| ApiError::invalid(format!("amount: {e}")))?;
        if amount.cents() > MAX_ORDER_CENTS {
            return Err(ApiError::invalid(
                "amount: at most 9999999999999999.99 (16 digits before the point)",
            ));
        }
        if self.due_date == 0 || self.due_date > MAX_DUE_DATE {
            return Err(ApiError::invalid(
                "due_date must be unix seconds between 1 and 253402300799 (9999-12-31)",
            ));
        }
        validate_text("period", &self.period, 32)?;
        Ok(amount)
    }
}

/// The biller an API key belongs to: 401 for no or a wrong key, 403 `not_a_biller` for a
/// merchant that is not one.
fn biller_check(node: &Node, merchant: &str) -> Result<(), ApiError> {
    match node.merchants.get(merchant).and_then(|m| m.biller) {
        Some(_) => Ok(()),
        None => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "not_a_biller",
            "only billers post bills; an operator registers billers (POST /v1/admin/billers)",
        )),
    }
}

/// Posts a bill to a consumer's virtual account; the consumer's autopay rule for the biller
/// decides at once whether it is paid now, on its due date, or waits for the consumer.
pub async fn post_bill(
    req: HttpRequest,
    node: web::Data<Node>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let biller = merchant_of(&node, &req)?;
    let (idem, body) = begin_idempotent!(node, req, payload, format!("m:{biller}"));
    if let Err(e) = biller_check(&node, &biller) {
        return idem.finish(Reply::error(&e)).await;
    }
    let posted: PostBill = match parse_json(&body) {
        Ok(b) => b,
        Err(e) => return idem.finish(Reply::error(&e)).await,
    };
    let amount = match posted.check() {
        Ok(a) => a,
        Err(e) => return idem.finish(Reply::error(&e)).await,
    };
    let reference = records::bill_ref(&biller, &posted.bill_id);
    // One post, approval or decision of a bill at a time (the bill's reference is its order's
    // id, so this is the order's lock too).
    let _busy = node.order_locks.lock(&reference).await?;
    if let Some(existing) = node.store.get::<Bill>(&records::bill_key(&reference))? {
        let same = existing.consumer == posted.consumer
            && existing.amount == amount
            && existing.due_date == posted.due_date
            && existing.period == posted.period;
        if !same {
            let e = ApiError::conflict(
                "bill_conflict",
                format!(
                    "bill {:?} was posted already with other content (consumer, amount, due date or period)",
                    posted.bill_id
                ),
            );
            return idem.finish(Reply::error(&e)).await;
        }
        // A placement a crash (or an overload) interrupted is finished by the repeat.
        if existing.state == BillState::Paying && node.engine.order_owner(&reference)?.is_none() {
            bills::pay(&node, &existing, existing.release_after_secs.unwrap_or(0)).await?;
        }
        let view = bills::view(&node, &existing).await?;
        return idem.finish(Reply::new(StatusCode::OK, &view)).await;
    }
    if !node.engine.has_consumer(&posted.consumer)? {
        let e = ApiError::not_found(
            "unknown_consumer",
            format!("no consumer {:?} to post the bill to", posted.consumer),
        );
        return idem.finish(Reply::error(&e)).await;
    }
    let rule = node
        .store
        .get::<AutopayRule>(&records::autopay_key(&posted.consumer, &biller))?;
    let action = bills::decide(rule.as_ref(), amount);
    let now = node.now();
    let posted_ms = now_ms();
    let release_after_secs = bills::release_after(action, now, posted.due_date);
    let bill = Bill {
        reference: reference.clone(),
        biller: biller.clone(),
        bill_id: posted.bill_id.clone(),
        consumer: posted.consumer.clone(),
        amount,
        due_date: posted.due_date,
        period: posted.period.clone(),
        posted_ms,
        state: match action {
            BillAction::Ask => BillState::AwaitingApproval,
            BillAction::PayNow | BillAction::PayOnDueDate => BillState::Paying,
        },
        release_after_secs,
        rule: bills::rule_name(rule.as_ref()).to_string(),
        decided_at: None,
    };
    let received = bills::notifications(
        &node,
        &bill,
        "bill.received",
        &format!("ntf_{reference}_received"),
        false,
        serde_json::json!({
            "rule": bill.rule,
            "action": match action {
                BillAction::Ask => "approve_or_decline",
                BillAction::PayNow => "paid_now",
                BillAction::PayOnDueDate => "paid_on_due_date",
            },
        }),
    );
    let mut writes: Vec<Write> = vec![
        store::json(records::bill_key(&reference), &bill),
        store::json(
            records::consumer_bill_key(&bill.consumer, posted_ms, &reference),
            &(),
        ),
        store::json(records::bill_due_key(bill.due_date, &reference), &()),
    ];
    writes.extend(notify::writes_all(&node, &received)?);
    // The bill is durable before its order exists, so that the outbox, which reports the
    // order's outcome, always finds the bill; a crash in between is finished by a repeat
    // of the post or by the overdue scan.
    node.store.commit(writes).await?;
    node.work_wake.notify();
    if let Some(after) = release_after_secs {
        bills::pay(&node, &bill, after).await?;
    }
    let view = bills::view(&node, &bill).await?;
    idem.finish(Reply::new(StatusCode::CREATED, &view)).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub after: Option<String>,
    pub limit: Option<usize>,
}

/// A page of a list, newest first.
#[derive(Debug, Serialize, Deserialize)]
pub struct BillList {
    pub bills: Vec<BillView>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

/// `after` and `limit` of a list (1 to `max`, `default` when absent).
pub fn page(req: &HttpRequest, default: usize, max: usize) -> Result<ListQuery, ApiError> {
    let q = web::Query::<ListQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::invalid(format!("query: {e}")))?
        .into_inner();
    let limit = q.limit.unwrap_or(default);
    if limit == 0 || limit > max {
        return Err(ApiError::invalid(format!("limit must be 1 to {max}")));
    }
    Ok(ListQuery {
        after: q.after,
        limit: Some(limit),
    })
}

/// The consumer's bills, newest first.
pub async fn list_bills(req: HttpRequest, node: web::Data<Node>) -> Result<HttpResponse, ApiError> {
    let consumer = consumer_of(&node, &req)?;
    let q = page(&req, 50, 500)?;
    let limit = q.limit.unwrap_or(50);
    let prefix = records::consumer_bills_prefix(&consumer);
    let after = q.after.as_ref().map(|a| format!("{prefix}{a}"));
    let keys = node
        .store
        .scan::<()>(&prefix, after.as_deref(), limit + 1)?;
    let mut list = Vec::new();
    let mut last = None;
    for (key, ()) in keys.iter().take(limit) {
        let cursor = key.get(prefix.len()..).unwrap_or_default();
        // `<~posted ms>/<bill ref>`: bill refs are `bill_` and hex, nothing escaped.
        if let Some((_, reference)) = cursor.split_once('/') {
            if let Some(b) = node.store.get::<Bill>(&records::bill_key(reference))? {
                list.push(bills::view(&node, &b).await?);
            }
        }
        last = Some(cursor.to_string());
    }
    let next_after = if keys.len() > limit { last } else { None };
    Ok(HttpResponse::Ok().json(BillList {
        bills: list,
        next_after,
    }))
}

async fn decide_bill(
    req: HttpRequest,
    node: web::Data<Node>,
    reference: String,
    payload: web::Payload,
    approve: bool,
) -> Result<HttpResponse, ApiError> {
    let consumer = consumer_of(&node, &req)?;
    let (idem, _body) = begin_idempotent!(node, req, payload, format!("c:{consumer}"));
    let bill = match bills::consumer_decides(&node, &consumer, &reference, approve).await? {
        bills::Decided::Done(bill) => bill,
        bills::Decided::Unknown => {
            let e = ApiError::not_found("unknown_bill", format!("no bill {reference:?} of yours"));
            return idem.finish(Reply::error(&e)).await;
        }
        bills::Decided::Already(state) => {
            let e = ApiError::conflict(
                "bill_decided",
                format!(
                    "the bill is {state} already and cannot be {}",
                    if approve { "approved" } else { "declined" }
                ),
            );
            return idem.finish(Reply::error(&e)).await;
        }
    };
    let view = bills::view(&node, &bill).await?;
    idem.finish(Reply::new(StatusCode::OK, &view)).await
}

/// The consumer approves a bill that waits for them: it is paid at once, as by `always`.
pub async fn approve_bill(
    req: HttpRequest,
    node: web::Data<Node>,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    decide_bill(req, node, path.into_inner(), payload, true).await
}

/// The consumer declines a bill that waits for them: nothing is paid; the biller is told.
pub async fn decline_bill(
    req: HttpRequest,
    node: web::Data<Node>,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    decide_bill(req, node, path.into_inner(), payload, false).await
}

/// An autopay rule as the consumer sees it.
#[derive(Debug, Serialize, Deserialize)]
pub struct AutopayView {
    pub biller: String,
    #[serde(flatten)]
    pub rule: AutopayRule,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AutopayList {
    pub rules: Vec<AutopayView>,
}

/// The consumer's autopay rules, by biller.
pub async fn list_autopay(
    req: HttpRequest,
    node: web::Data<Node>,
) -> Result<HttpResponse, ApiError> {
    let consumer = consumer_of(&node, &req)?;
    let prefix = records::autopay_prefix(&consumer);
    let rows = node.store.scan::<AutopayRule>(&prefix, None, 10_000)?;
    let rules = rows
        .into_iter()
        .map(|(k, rule)| AutopayView {
            biller: unseg(k.get(prefix.len()..).unwrap_or_default()),
            rule,
        })
        .collect();
    Ok(HttpResponse::Ok().json(AutopayList { rules }))
}

/// The id inside a key segment ([`records::seg`] undone).
fn unseg(s: &str) -> String {
    s.replace("%2F", "/").replace("%25", "%")
}

/// Sets the consumer's rule for one biller's bills; it applies to the bills posted from now
/// on (a bill waiting for approval still waits).
pub async fn set_autopay(
    req: HttpRequest,
    node: web::Data<Node>,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let consumer = consumer_of(&node, &req)?;
    let (idem, body) = begin_idempotent!(node, req, payload, format!("c:{consumer}"));
    let rule: AutopayRule = match parse_json(&body) {
        Ok(r) => r,
        Err(e) => return idem.finish(Reply::error(&e)).await,
    };
    if let AutopayRule::UpTo { amount } = &rule {
        if !amount.is_positive() {
            let e = ApiError::invalid("amount must be greater than zero");
            return idem.finish(Reply::error(&e)).await;
        }
    }
    let biller = path.into_inner();
    if node.merchants.get(&biller).and_then(|m| m.biller).is_none() {
        let e = ApiError::not_found("unknown_biller", format!("no biller {biller:?}"));
        return idem.finish(Reply::error(&e)).await;
    }
    let writes = vec![store::json(records::autopay_key(&consumer, &biller), &rule)];
    let view = AutopayView { biller, rule };
    idem.finish(Reply::new(StatusCode::OK, &view).with_writes(writes))
        .await
}
