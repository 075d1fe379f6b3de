//! Dynamic credit (SPEC F10) over HTTP: a consumer's credit as they see it
//! (`GET /v1/consumer/credit`) and as the operator does
//! (`GET /v1/admin/consumers/{consumer}/credit`), and the operator recording the credit line of
//! a consumer's bank card (`PUT /v1/admin/consumers/{consumer}/credit-line`), which the bank
//! adapter has no query for. The policy and the follower are [`crate::credit`]'s.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use onecard_engine::Amount;
use serde::{Deserialize, Serialize};

use super::idem::Reply;
use super::{consumer_of, parse_json, require_admin, ApiError};
use crate::credit::{self, CreditPolicy, CreditRecord, LimitChange, PolicyKind, Score};
use crate::state::Node;

/// The longest page of history.
const MAX_PAGE: usize = 100;
const DEFAULT_PAGE: usize = 20;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// A history entry's `cursor`: the page starts after it.
    pub after: Option<String>,
    pub limit: Option<usize>,
}

/// The policy as the API shows it: its name, and for a dynamic policy its bounds and steps.
#[derive(Debug, Serialize, Deserialize)]
pub struct PolicyView {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deposit_multiple: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raise_after: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raise_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lower_on_failed_debit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lower_on_dispute: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lower_on_overdue_bill: Option<String>,
}

impl PolicyView {
    fn of(p: &CreditPolicy) -> PolicyView {
        let dynamic = p.is_dynamic();
        let shown = |a: Amount| dynamic.then(|| a.to_string());
        PolicyView {
            name: p.kind.as_str().to_string(),
            deposit_multiple: (p.kind == PolicyKind::DepositMultiple)
                .then(|| p.deposit_multiple.to_string()),
            min: shown(p.min),
            max: shown(p.max),
            raise_after: dynamic.then_some(p.raise_after),
            raise_by: shown(p.raise_by),
            lower_on_failed_debit: shown(p.lower_on_failed_debit),
            lower_on_dispute: shown(p.lower_on_dispute),
            lower_on_overdue_bill: shown(p.lower_on_overdue_bill),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ScoreView {
    pub on_time_settlements: u64,
    pub late_settlements: u64,
    pub failed_bank_debits: u64,
    pub disputes: u64,
    pub overdue_bills: u64,
}

impl From<Score> for ScoreView {
    fn from(s: Score) -> Self {
        ScoreView {
            on_time_settlements: s.on_time,
            late_settlements: s.late,
            failed_bank_debits: s.failed_debits,
            disputes: s.disputes,
            overdue_bills: s.overdue_bills,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ChangeView {
    /// Pass as `after` to read on from this change.
    pub cursor: String,
    pub at: u64,
    pub limit: String,
    pub reason: String,
}

/// A consumer's credit: the engine's limit, reservations and what is left; the policy; what
/// the base comes from; the score; and the history of changes, newest first.
#[derive(Debug, Serialize, Deserialize)]
pub struct CreditView {
    pub consumer: String,
    pub currency: String,
    pub limit: String,
    pub reserved: String,
    pub available: String,
    pub policy: PolicyView,
    /// The policy's base for this consumer (absent under `fixed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// What the wallet was opened with, if this node recorded it.
    pub deposit: Option<String>,
    /// The card's credit line as the operator recorded it.
    pub credit_line: Option<String>,
    pub score: ScoreView,
    pub history: Vec<ChangeView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

async fn view(node: &Node, consumer: &str, req: &HttpRequest) -> Result<CreditView, ApiError> {
    let q = web::Query::<HistoryQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::invalid(format!("query: {e}")))?;
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::invalid(format!("limit must be 1 to {MAX_PAGE}")));
    }
    if q.after.as_ref().is_some_and(|a| a.len() > 64) {
        return Err(ApiError::invalid("after is not a cursor this node gave"));
    }
    let account = node
        .engine
        .account_summary(consumer)
        .await?
        .ok_or_else(|| {
            ApiError::not_found("unknown_consumer", format!("no consumer {consumer:?}"))
        })?;
    let record = node
        .store
        .get::<CreditRecord>(&credit::record_key(consumer))?
        .unwrap_or_else(|| CreditRecord {
            opening_limit: account.credit_limit,
            ..CreditRecord::default()
        });
    let policy = &node.credit;
    let base = if policy.is_dynamic() {
        Some(
            policy
                .base(&record)
                .map_err(|e| ApiError::internal(e.to_string()))?
                .to_string(),
        )
    } else {
        None
    };
    let (changes, more) = credit::history(node, consumer, q.after.as_deref(), limit)?;
    let history: Vec<ChangeView> = changes
        .into_iter()
        .map(|(cursor, c): (String, LimitChange)| ChangeView {
            cursor,
            at: c.at,
            limit: c.limit.to_string(),
            reason: c.reason,
        })
        .collect();
    let next_after = more
        .then(|| history.last().map(|c| c.cursor.clone()))
        .flatten();
    Ok(CreditView {
        consumer: consumer.to_string(),
        currency: node.currency.clone(),
        limit: account.credit_limit.to_string(),
        reserved: account.reserved.to_string(),
        // A limit lowered below what is reserved leaves nothing available (the engine's
        // difference is negative then): nothing reserved is cancelled, nothing new fits.
        available: if account.available_credit.is_negative() {
            Amount::ZERO
        } else {
            account.available_credit
        }
        .to_string(),
        policy: PolicyView::of(policy),
        base,
        deposit: record.deposit.map(|d| d.to_string()),
        credit_line: record.credit_line.map(|d| d.to_string()),
        score: record.score.into(),
        history,
        next_after,
    })
}

/// `GET /v1/consumer/credit`.
pub async fn consumer_credit(
    req: HttpRequest,
    node: web::Data<Node>,
) -> Result<HttpResponse, ApiError> {
    let consumer = consumer_of(&node, &req)?;
    Ok(HttpResponse::Ok().json(view(&node, &consumer, &req).await?))
}

/// `GET /v1/admin/consumers/{consumer}/credit`.
pub async fn admin_credit(
    req: HttpRequest,
    node: web::Data<Node>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&node, &req)?;
    Ok(HttpResponse::Ok().json(view(&node, &path, &req).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreditLineBody {
    pub amount: String,
}

/// `PUT /v1/admin/consumers/{consumer}/credit-line`: the credit line of the consumer's linked
/// bank card, as the card's bank gave it to the operator (the bank adapter has no query for
/// it). Recorded under any policy; the limit follows it under `card_credit_line`.
pub async fn set_credit_line(
    req: HttpRequest,
    node: web::Data<Node>,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    require_admin(&node, &req)?;
    let (idem, body) = begin_idempotent!(node, req, payload, "admin");
    let b: CreditLineBody = match parse_json(&body) {
        Ok(b) => b,
        Err(e) => return idem.finish(Reply::error(&e)).await,
    };
    let line = match Amount::parse_non_negative(&b.amount) {
        Ok(a) => a,
        Err(e) => {
            return idem
                .finish(Reply::error(&ApiError::invalid(format!("amount: {e}"))))
                .await
        }
    };
    let consumer = path.into_inner();
    let Some(record) = credit::set_credit_line(&node, &consumer, line).await? else {
        let e = ApiError::not_found("unknown_consumer", format!("no consumer {consumer:?}"));
        return idem.finish(Reply::error(&e)).await;
    };
    let limit = node
        .engine
        .account_summary(&consumer)
        .await?
        .map(|a| a.credit_limit.to_string());
    let reply = Reply::new(
        StatusCode::OK,
        &serde_json::json!({
            "consumer": consumer,
            "credit_line": line.to_string(),
            "policy": node.credit.kind.as_str(),
            "applies": node.credit.kind == PolicyKind::CardCreditLine,
            "limit": limit,
            "score": ScoreView::from(record.score),
        }),
    );
    idem.finish(reply).await
}
