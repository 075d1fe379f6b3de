//! Bills on the consumer's account page (SPEC F7): the newest bills with their status, the
//! approve and decline forms of those waiting for the consumer, and the autopay rule per
//! biller. The decision is the application layer's (`bills::consumer_decides`), as the API's.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::{csrf_ok, fault, forbidden, message, see_other, session_of};
use crate::app::AppError;
use crate::bills::{self, Decided};
use crate::records::{self, AutopayRule, Bill};
use crate::state::Node;

/// How many of the newest bills the account page lists.
const NEWEST: usize = 20;

pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/web/bills/{bill}/approve", web::post().to(approve))
        .route("/web/bills/{bill}/decline", web::post().to(decline));
}

/// A bill as the account page lists it.
pub(super) struct BillRow {
    pub reference: String,
    pub biller: String,
    pub period: String,
    pub amount: String,
    pub due: String,
    pub status: String,
    pub waiting: bool,
    pub overdue: bool,
}

/// An autopay rule, in words.
pub(super) struct RuleRow {
    pub biller: String,
    pub rule: String,
}

/// The consumer's newest bills and autopay rules.
pub(super) async fn of(
    node: &Node,
    consumer: &str,
) -> Result<(Vec<BillRow>, Vec<RuleRow>), AppError> {
    let prefix = records::consumer_bills_prefix(consumer);
    let mut rows = Vec::new();
    for (key, ()) in node.store.scan::<()>(&prefix, None, NEWEST)? {
        // `<~posted ms>/<bill ref>`: bill refs are `bill_` and hex.
        let Some((_, reference)) = key.get(prefix.len()..).and_then(|c| c.split_once('/')) else {
            continue;
        };
        let Some(bill) = node.store.get::<Bill>(&records::bill_key(reference))? else {
            continue;
        };
        let view = bills::view(node, &bill).await?;
        rows.push(BillRow {
            reference: view.reference,
            biller: node
                .merchants
                .get(&view.biller)
                .map_or_else(|| view.biller.clone(), |p| p.name.clone()),
            period: view.period,
            amount: view.amount,
            due: date(view.due_date),
            waiting: view.status == "awaiting_approval",
            status: view.status.replace('_', " "),
            overdue: view.overdue,
        });
    }
    let prefix = records::autopay_prefix(consumer);
    let rules = node
        .store
        .scan::<AutopayRule>(&prefix, None, 1_000)?
        .into_iter()
        .map(|(k, rule)| {
            let biller = k
                .get(prefix.len()..)
                .unwrap_or_default()
                .replace("%2F", "/")
                .replace("%25", "%");
            RuleRow {
                biller: node
                    .merchants
                    .get(&biller)
                    .map_or_else(|| biller.clone(), |p| p.name.clone()),
                rule: match rule {
                    AutopayRule::Always => "pay every bill at once".into(),
                    AutopayRule::UpTo { amount } => {
                        format!("pay at once up to {amount}, ask above")
                    }
                    AutopayRule::OnDueDate => "reserve at once, pay on the due date".into(),
                    AutopayRule::Ask => "ask me for every bill".into(),
                },
            }
        })
        .collect();
    Ok((rows, rules))
}

/// `YYYY-MM-DD` (UTC) of unix seconds.
fn date(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .map_or_else(String::new, |t| t.date().to_string())
}

#[derive(Debug, Deserialize)]
struct DecisionForm {
    csrf: String,
}

async fn approve(
    node: web::Data<Node>,
    req: HttpRequest,
    path: web::Path<String>,
    form: Option<web::Form<DecisionForm>>,
) -> HttpResponse {
    decide(&node, &req, &path, form, true).await
}

async fn decline(
    node: web::Data<Node>,
    req: HttpRequest,
    path: web::Path<String>,
    form: Option<web::Form<DecisionForm>>,
) -> HttpResponse {
    decide(&node, &req, &path, form, false).await
}

async fn decide(
    node: &Node,
    req: &HttpRequest,
    reference: &str,
    form: Option<web::Form<DecisionForm>>,
    approve: bool,
) -> HttpResponse {
    let session = match session_of(node, req) {
        Ok(Some(s)) => s,
        Ok(None) => return see_other("/web/sign-in"),
        Err(e) => return fault(e),
    };
    if !form.is_some_and(|f| csrf_ok(&session, &f.csrf)) {
        return forbidden();
    }
    match bills::consumer_decides(node, &session.consumer, reference, approve).await {
        Ok(Decided::Done(_)) => see_other(if approve {
            "/web/account?done=bill_approved"
        } else {
            "/web/account?done=bill_declined"
        }),
        Ok(Decided::Unknown) => message(
            StatusCode::NOT_FOUND,
            "No such bill",
            "You have no bill with this reference.",
        ),
        Ok(Decided::Already(state)) => message(
            StatusCode::CONFLICT,
            "Decided already",
            &format!("This bill is {state} already."),
        ),
        Err(e) => fault(e),
    }
}
