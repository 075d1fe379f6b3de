//! Salaries (F12) over HTTP: an employer (a merchant registered as one, its API key) uploads a
//! payroll batch, lists its batches and reads a batch's report.
//!
//! `POST /v1/employer/payrolls` takes the file as CSV (`Content-Type: text/csv`, the batch id
//! in the query: `?batch_id=2026-11`) or as JSON (`{"batch_id", "lines": [...]}`; a `batch_id`
//! in the query, if any, must be the same). The whole file is checked first: any bad line →
//! 422 `invalid_payroll` naming every problem (`error.problems`: line, code, message); nothing
//! is stored and nothing paid (and the answer is not kept for the `Idempotency-Key`: fix the
//! file and send it again under the same key). A valid batch is stored in one commit and
//! answered 202 with its summary and its report's `url`; the payroll worker
//! (`crate::payroll`) pays it.
//!
//! The batch id is idempotent per employer: the same id with the same lines (the same content
//! in either format) answers the batch as it is now (200); with other lines 409
//! `payroll_conflict`.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::bills::page;
use super::idem::{Begin, Idem, Reply};
use super::{declared_csv, merchant_of, parse_json, read_body, ApiError};
use crate::payroll::file::{self, JsonPayroll};
use crate::payroll::{self, PayrollSummary};
use crate::records::{self, PayrollBatch};
use crate::state::Node;

/// 403 `not_an_employer` for a merchant that is not one.
fn employer_check(node: &Node, merchant: &str) -> Result<(), ApiError> {
    if node.merchants.get(merchant).is_some_and(|m| m.employer) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "not_an_employer",
            "only employers pay salaries; an operator registers employers (POST /v1/admin/employers)",
        ))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadQuery {
    #[serde(default)]
    batch_id: Option<String>,
}

/// The 422 of a refused file: every problem, in line order.
fn refused(r: &file::Refused) -> Reply {
    let lines = r
        .problems
        .iter()
        .filter_map(|p| p.line)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    Reply::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        &serde_json::json!({"error": {
            "code": "invalid_payroll",
            "message": format!(
                "the payroll has {} problem(s) on {lines} line(s): nothing was stored or paid; fix them and send the whole file again",
                r.problems.len()
            ),
            "problems": r.problems,
        }}),
    )
    // The employer fixes the file and sends it again under the same key.
    .refusing_the_body()
}

/// Uploads a payroll batch (CSV or JSON), checked whole; a valid one is stored and paid by the
/// payroll worker.
pub async fn post_payroll(
    req: HttpRequest,
    node: web::Data<Node>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let employer = merchant_of(&node, &req)?;
    let body = read_body(&node, &req, payload).await?;
    // The batch id of a CSV upload is in the query, which the request's fingerprint does not
    // cover (method, path, body): it is put in front of the body so that the same key with
    // another batch id is another request.
    let mut fingerprinted = req.query_string().as_bytes().to_vec();
    fingerprinted.push(b'\n');
    fingerprinted.extend_from_slice(&body);
    let idem = match Idem::begin(&node, &req, &format!("m:{employer}"), &fingerprinted).await? {
        Begin::Replay(r) => return Ok(r),
        Begin::Run(i) => i,
    };
    if let Err(e) = employer_check(&node, &employer) {
        return idem.finish(Reply::error(&e)).await;
    }
    let query = match web::Query::<UploadQuery>::from_query(req.query_string()) {
        Ok(q) => q.into_inner(),
        Err(e) => {
            return idem
                .finish(Reply::error(&ApiError::invalid(format!("query: {e}"))))
                .await
        }
    };
    let (batch_id, read) = if declared_csv(&req) {
        let Some(id) = query.batch_id else {
            let e = ApiError::invalid(
                "a CSV payroll names its batch in the query: POST /v1/employer/payrolls?batch_id=<id>",
            );
            return idem.finish(Reply::error(&e)).await;
        };
        (id, file::read_csv(&body))
    } else {
        let parsed: JsonPayroll = match parse_json(&body) {
            Ok(p) => p,
            Err(e) => return idem.finish(Reply::error(&e)).await,
        };
        if query
            .batch_id
            .as_ref()
            .is_some_and(|q| *q != parsed.batch_id)
        {
            let e = ApiError::invalid("the query's batch_id is not the body's");
            return idem.finish(Reply::error(&e)).await;
        }
        let read = file::read_json(&parsed.lines);
        (parsed.batch_id, read)
    };
    if let Err(why) = file::check_batch_id(&batch_id) {
        return idem.finish(Reply::error(&ApiError::invalid(why))).await;
    }
    let checked = match file::check(read, |e| node.engine.has_consumer(e))? {
        Ok(c) => c,
        Err(r) => return idem.finish(refused(&r)).await,
    };
    let reference = records::payroll_ref(&employer, &batch_id);
    // One upload of a batch at a time: the second finds the first's batch.
    let _busy = node.order_locks.lock(&reference).await?;
    if let Some(existing) = node
        .store
        .get::<PayrollBatch>(&records::payroll_key(&reference))?
    {
        if existing.digest != payroll::digest(&checked) {
            let e = ApiError::conflict(
                "payroll_conflict",
                format!("batch {batch_id:?} was uploaded already with other lines"),
            );
            return idem.finish(Reply::error(&e)).await;
        }
        let summary = payroll::summary(&node, &existing);
        return idem.finish(Reply::new(StatusCode::OK, &summary)).await;
    }
    let (batch, writes) = payroll::new_batch(&employer, &batch_id, &checked);
    let summary: PayrollSummary = payroll::summary(&node, &batch);
    let response = idem
        .finish(Reply::new(StatusCode::ACCEPTED, &summary).with_writes(writes))
        .await?;
    node.payroll_wake.notify_one();
    tracing::info!(batch = %reference, employer = %employer, lines = batch.lines, total = %batch.total, "payroll stored");
    Ok(response)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LinesQuery {
    #[serde(default)]
    after: Option<u32>,
    #[serde(default)]
    limit: Option<usize>,
}

/// Lines per page of a report by default, and at most.
const REPORT_LINES: usize = 1000;
const MAX_REPORT_LINES: usize = file::MAX_LINES;

/// A batch's report: its state, total, funding, counts, and its lines (a page of them: `after`
/// a line number, `limit` lines, 1000 by default).
pub async fn get_payroll(
    req: HttpRequest,
    node: web::Data<Node>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let employer = merchant_of(&node, &req)?;
    employer_check(&node, &employer)?;
    let q = web::Query::<LinesQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::invalid(format!("query: {e}")))?
        .into_inner();
    let limit = q.limit.unwrap_or(REPORT_LINES);
    if limit == 0 || limit > MAX_REPORT_LINES {
        return Err(ApiError::invalid(format!(
            "limit must be 1 to {MAX_REPORT_LINES}"
        )));
    }
    let batch_id = path.into_inner();
    let reference = records::payroll_ref(&employer, &batch_id);
    let Some(batch) = node
        .store
        .get::<PayrollBatch>(&records::payroll_key(&reference))?
    else {
        return Err(ApiError::not_found(
            "unknown_payroll",
            format!("no payroll batch {batch_id:?} of yours"),
        ));
    };
    let report = payroll::report(&node, &batch, q.after, limit)?;
    Ok(HttpResponse::Ok().json(report))
}

/// A page of an employer's batches (summaries, without lines), newest first.
#[derive(Debug, serde::Serialize, Deserialize)]
pub struct PayrollList {
    pub payrolls: Vec<PayrollSummary>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

/// The employer's batches, newest first (`after`, `limit`: 50 by default, at most 500).
pub async fn list_payrolls(
    req: HttpRequest,
    node: web::Data<Node>,
) -> Result<HttpResponse, ApiError> {
    let employer = merchant_of(&node, &req)?;
    employer_check(&node, &employer)?;
    let q = page(&req, 50, 500)?;
    let limit = q.limit.unwrap_or(50);
    let prefix = records::employer_payrolls_prefix(&employer);
    let after = q.after.as_ref().map(|a| format!("{prefix}{a}"));
    let keys = node
        .store
        .scan::<()>(&prefix, after.as_deref(), limit + 1)?;
    let mut list = Vec::new();
    let mut last = None;
    for (key, ()) in keys.iter().take(limit) {
        let cursor = key.get(prefix.len()..).unwrap_or_default();
        // `<~created ms>/<payroll ref>`: references are `pay_` and hex, nothing escaped.
        if let Some((_, reference)) = cursor.split_once('/') {
            if let Some(b) = node
                .store
                .get::<PayrollBatch>(&records::payroll_key(reference))?
            {
                list.push(payroll::summary(&node, &b));
            }
        }
        last = Some(cursor.to_string());
    }
    let next_after = if keys.len() > limit { last } else { None };
    Ok(HttpResponse::Ok().json(PayrollList {
        payrolls: list,
        next_after,
    }))
}
