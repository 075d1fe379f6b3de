//! The consumer API, authenticated by the session the reader flow issues (card and PIN):
//! confirm receipt and satisfaction or enter a special code (F19), and see the virtual account,
//! the wallet, the bank link and the statement.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use onecard_engine::query::OrderSummary;
use onecard_engine::CommandResult;
// The bank account is shown by its last four, with the one masking rule of the workspace.
use onecard_protocol::mask_card_number as mask;
use serde::{Deserialize, Serialize};

use super::idem::Reply;
use super::{consumer_of, parse_json, ApiError};
use crate::records::{self, StatementLine};
use crate::state::Node;

#[derive(Debug, Serialize, Deserialize)]
pub struct ConsumerOrder {
    pub id: String,
    pub merchant: String,
    pub amount: String,
    pub state: String,
    /// `receipt`, `code` or `time`.
    pub release: String,
    pub placed_at: u64,
    pub refunded: String,
    /// The delivery as the merchant was given it (when the order came through the API).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery_address: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AccountView {
    pub consumer: String,
    pub currency: String,
    pub credit_limit: String,
    pub reserved: String,
    pub available_credit: String,
    pub wallet: String,
    pub wallet_cap: String,
    /// The designated bank account, masked to its last four characters.
    pub bank_account: String,
    pub open_orders: Vec<ConsumerOrder>,
}

fn order_json(node: &Node, o: &OrderSummary) -> ConsumerOrder {
    let delivery_address = node
        .checkout(&o.id)
        .ok()
        .flatten()
        .map(|c| c.delivery.address.clone());
    ConsumerOrder {
        id: o.id.clone(),
        merchant: o.merchant.clone(),
        amount: o.amount.to_string(),
        state: o.state.as_str().to_string(),
        release: o.release.kind().to_string(),
        placed_at: o.placed_at,
        refunded: o.refunded.to_string(),
        delivery_address,
    }
}

pub async fn account(req: HttpRequest, node: web::Data<Node>) -> Result<HttpResponse, ApiError> {
    let consumer = consumer_of(&node, &req)?;
    let c = node
        .engine
        .account_summary(&consumer)
        .await?
        .ok_or_else(|| ApiError::not_found("unknown_consumer", "the account no longer exists"))?;
    let bank = node
        .engine
        .bank_account_of(&consumer)?
        .unwrap_or_else(|| c.bank.clone());
    Ok(HttpResponse::Ok().json(AccountView {
        consumer: c.id.clone(),
        currency: node.currency.clone(),
        credit_limit: c.credit_limit.to_string(),
        reserved: c.reserved.to_string(),
        // A limit lowered below what is reserved (SPEC F10) leaves nothing available, not a
        // negative amount: nothing reserved is cancelled, nothing new fits.
        available_credit: if c.available_credit.is_negative() {
            onecard_engine::Amount::ZERO
        } else {
            c.available_credit
        }
        .to_string(),
        wallet: c.wallet.to_string(),
        wallet_cap: node.engine.rules().wallet_cap.to_string(),
        bank_account: mask(&bank),
        open_orders: c.open_orders.iter().map(|o| order_json(&node, o)).collect(),
    }))
}

/// The consumer's own order, or 404.
pub(crate) async fn own_order(
    node: &Node,
    consumer: &str,
    order: &str,
) -> Result<OrderSummary, ApiError> {
    owns_order(node, consumer, order)?;
    node.engine
        .order_summary(order)
        .await?
        .ok_or_else(|| unknown_order(order))
}

/// Whether `consumer` owns `order` (404 `unknown_order` if not), without reading the order.
fn owns_order(node: &Node, consumer: &str, order: &str) -> Result<(), ApiError> {
    match node.engine.order_owner(order)?.as_deref() == Some(consumer) {
        true => Ok(()),
        false => Err(unknown_order(order)),
    }
}

fn unknown_order(order: &str) -> ApiError {
    ApiError::not_found("unknown_order", format!("no order {order:?} of yours"))
}

pub async fn order(
    req: HttpRequest,
    node: web::Data<Node>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let consumer = consumer_of(&node, &req)?;
    let o = own_order(&node, &consumer, &path).await?;
    Ok(HttpResponse::Ok().json(order_json(&node, &o)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptBody {
    /// `true`: goods received and satisfied (the money is released); `false`: disputed.
    pub satisfied: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeBody {
    pub code: String,
}

async fn release(
    req: HttpRequest,
    node: web::Data<Node>,
    order: String,
    payload: web::Payload,
    code: bool,
) -> Result<HttpResponse, ApiError> {
    let consumer = consumer_of(&node, &req)?;
    let (idem, body) = begin_idempotent!(node, req, payload, format!("c:{consumer}"));
    if let Err(e) = owns_order(&node, &consumer, &order) {
        return idem.finish(Reply::error(&e)).await;
    }
    let result: CommandResult = if code {
        let b: CodeBody = match parse_json(&body) {
            Ok(b) => b,
            Err(e) => return idem.finish(Reply::error(&e)).await,
        };
        node.engine.enter_code(&order, &b.code, node.now()).await?
    } else {
        let b: ReceiptBody = match parse_json(&body) {
            Ok(b) => b,
            Err(e) => return idem.finish(Reply::error(&e)).await,
        };
        node.engine
            .confirm_receipt(&order, b.satisfied, node.now())
            .await?
    };
    let reply = match result {
        Ok(_) => {
            let o = own_order(&node, &consumer, &order).await?;
            Reply::new(StatusCode::OK, &order_json(&node, &o))
        }
        Err(r) => Reply::error(&ApiError::refusal(&r)),
    };
    let response = idem.finish(reply).await?;
    node.outbox_wake.notify_one();
    Ok(response)
}

pub async fn confirm_receipt(
    req: HttpRequest,
    node: web::Data<Node>,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    release(req, node, path.into_inner(), payload, false).await
}

pub async fn enter_code(
    req: HttpRequest,
    node: web::Data<Node>,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    release(req, node, path.into_inner(), payload, true).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatementQuery {
    pub after: Option<String>,
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Statement {
    pub consumer: String,
    pub lines: Vec<StatementLineView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct StatementLineView {
    /// Pass as `after` to read on from this line.
    pub cursor: String,
    #[serde(flatten)]
    pub line: StatementLine,
}

pub async fn statement(req: HttpRequest, node: web::Data<Node>) -> Result<HttpResponse, ApiError> {
    let consumer = consumer_of(&node, &req)?;
    let q = web::Query::<StatementQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::invalid(format!("query: {e}")))?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::invalid("limit must be 1 to 1000"));
    }
    let prefix = records::statement_prefix(&consumer);
    let after = q.after.as_ref().map(|a| format!("{prefix}{a}"));
    let rows = node
        .store
        .scan_records::<StatementLine>(&prefix, after.as_deref(), limit + 1)?;
    let more = rows.len() > limit;
    let lines: Vec<StatementLineView> = rows
        .into_iter()
        .take(limit)
        .map(|(k, line)| StatementLineView {
            cursor: k[prefix.len()..].to_string(),
            line,
        })
        .collect();
    let next_after = more
        .then(|| lines.last().map(|l| l.cursor.clone()))
        .flatten();
    Ok(HttpResponse::Ok().json(Statement {
        consumer,
        lines,
        next_after,
    }))
}
