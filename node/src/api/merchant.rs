//! The merchant API (step 1 and after): create an order (the checkout session the consumer
//! pays at the reader), read, list, cancel, refund, reprint. Authenticated by the merchant's
//! API key; a merchant sees only its own orders (another's is 404, as if it did not exist).
//!
//! F22: an order as a merchant sees it carries what the merchant needs to deliver and nothing
//! of the consumer's: no consumer id, card or bank data.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use onecard_engine::{Amount, RefundRequest};
use serde::{Deserialize, Serialize};

use super::idem::Reply;
use super::{merchant_of, parse_json, ApiError};
use crate::app::{new_order_answer, order_view, order_view_as_created, OrderView};
use crate::records::{self, Checkout, Delivery, Item, ReleaseJson};
use crate::state::{now_ms, Node};
use crate::store;

const MAX_ITEMS: usize = 100;

/// The largest order amount, in cents: 9999999999999999.99 (16 digits before the point). It
/// keeps any amount within the checkout's and the reader's integer cents with room to spare,
/// and is a bound the OpenAPI document can state exactly as a pattern.
pub const MAX_ORDER_CENTS: i128 = 999_999_999_999_999_999;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateOrder {
    pub amount: String,
    #[serde(default)]
    pub items: Vec<Item>,
    pub delivery: Delivery,
    /// `{"on":"receipt"}`, `{"on":"code","code":"…"}` or `{"on":"time","after_secs":N}`.
    pub release: serde_json::Value,
    #[serde(default)]
    pub digital: bool,
    #[serde(default)]
    pub reference: Option<String>,
}

/// A text field: 1 to `max` characters (Unicode scalar values, as JSON Schema's `maxLength`
/// counts them), not blank, no control characters but newline.
pub fn validate_text(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.trim().is_empty() || value.chars().count() > max {
        return Err(ApiError::invalid(format!(
            "{field} must be 1 to {max} characters, not blank"
        )));
    }
    if value.chars().any(|c| c.is_control() && c != '\n') {
        return Err(ApiError::invalid(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(())
}

impl CreateOrder {
    /// The amount and the release condition, typed, or why the order is refused.
    fn check(&self) -> Result<(Amount, ReleaseJson), ApiError> {
        let amount = Amount::parse_positive(&self.amount)
            .map_err(|e| ApiError::invalid(format!("amount: {e}")))?;
        if amount.cents() > MAX_ORDER_CENTS {
            return Err(ApiError::invalid(
                "amount: at most 9999999999999999.99 (16 digits before the point)",
            ));
        }
        validate_text("delivery.name", &self.delivery.name, 200)?;
        validate_text("delivery.address", &self.delivery.address, 500)?;
        validate_text("delivery.phone", &self.delivery.phone, 40)?;
        if !self
            .delivery
            .phone
            .chars()
            .all(|c| c.is_ascii_digit() || " +-()./".contains(c))
        {
            return Err(ApiError::invalid(
                "delivery.phone: digits, spaces and + - ( ) . / only",
            ));
        }
        if self.items.len() > MAX_ITEMS {
            return Err(ApiError::invalid(format!("at most {MAX_ITEMS} items")));
        }
        for (i, item) in self.items.iter().enumerate() {
            validate_text(&format!("items[{i}].name"), &item.name, 200)?;
            if item.quantity == 0 || item.quantity > 1_000_000 {
                return Err(ApiError::invalid(format!(
                    "items[{i}].quantity must be 1 to 1000000"
                )));
            }
        }
        if let Some(r) = &self.reference {
            validate_text("reference", r, 128)?;
        }
        let release = onecard_engine::engine::parse_release(&self.release)
            .map_err(|r| ApiError::invalid(r.message))?;
        Ok((amount, ReleaseJson(release)))
    }
}

/// The merchant's own checkout, or 404.
pub fn own_checkout(
    node: &Node,
    merchant: &str,
    order: &str,
) -> Result<std::sync::Arc<Checkout>, ApiError> {
    match node.checkout(order)? {
        Some(c) if c.merchant == merchant => Ok(c),
        _ => Err(ApiError::not_found(
            "unknown_order",
            format!("no order {order:?} for this merchant"),
        )),
    }
}

pub async fn create_order(
    req: HttpRequest,
    node: web::Data<Node>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let merchant = merchant_of(&node, &req)?;
    let (idem, body) = begin_idempotent!(node, req, payload, format!("m:{merchant}"));
    let create: CreateOrder = match parse_json(&body) {
        Ok(c) => c,
        Err(e) => return idem.finish(Reply::error(&e)).await,
    };
    let (amount, release) = match create.check() {
        Ok(checked) => checked,
        Err(e) => return idem.finish(Reply::error(&e)).await,
    };
    let now_ms = now_ms();
    let checkout = Checkout {
        order_id: records::new_order_id(now_ms),
        merchant: merchant.clone(),
        reference: create.reference,
        amount_cents: i64::try_from(amount.cents())
            .map_err(|_| ApiError::invalid("amount: too large"))?,
        currency: node.currency.clone(),
        items: create.items,
        delivery: create.delivery,
        release,
        digital: create.digital,
        created_at: now_ms / 1000,
        cancelled_at: None,
        shipped_at: None,
    };
    let created = new_order_answer(&node, &checkout);
    let view = order_view_as_created(&checkout, &created);
    let writes = vec![
        store::record(records::checkout_key(&checkout.order_id), &checkout),
        store::json(
            records::merchant_order_key(&merchant, &checkout.order_id),
            &(),
        ),
    ];
    let reply = Reply::new(StatusCode::CREATED, &view)
        .with_writes(writes)
        .replayed_as_created(created);
    let response = idem.finish(reply).await?;
    node.metrics
        .orders_created
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(response)
}

#[derive(Debug, Serialize, Deserialize)]
pub struct MerchantAccount {
    pub id: String,
    pub name: String,
    pub currency: String,
    /// What the settlement center holds for the merchant: settled orders less refunds.
    pub balance: String,
    pub webhook_url: Option<String>,
    pub printer: Option<String>,
}

/// The merchant's own account.
pub async fn account(req: HttpRequest, node: web::Data<Node>) -> Result<HttpResponse, ApiError> {
    let merchant = merchant_of(&node, &req)?;
    let state =
        node.engine.merchant(&merchant).await?.ok_or_else(|| {
            ApiError::not_found("unknown_merchant", "the account no longer exists")
        })?;
    let profile = node.merchants.get(&merchant).map(|m| m.clone());
    Ok(HttpResponse::Ok().json(MerchantAccount {
        id: merchant.clone(),
        name: profile.as_ref().map(|p| p.name.clone()).unwrap_or_default(),
        currency: node.currency.clone(),
        balance: state.balance.to_string(),
        webhook_url: profile.as_ref().and_then(|p| p.webhook_url.clone()),
        printer: profile.and_then(|p| p.printer),
    }))
}

pub async fn get_order(
    req: HttpRequest,
    node: web::Data<Node>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let merchant = merchant_of(&node, &req)?;
    let c = own_checkout(&node, &merchant, &path)?;
    Ok(HttpResponse::Ok().json(order_view(&node, &c).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Orders created after this order id.
    pub after: Option<String>,
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct OrderList {
    pub orders: Vec<OrderView>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

pub async fn list_orders(
    req: HttpRequest,
    node: web::Data<Node>,
) -> Result<HttpResponse, ApiError> {
    let merchant = merchant_of(&node, &req)?;
    let q = web::Query::<ListQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::invalid(format!("query: {e}")))?;
    let limit = q.limit.unwrap_or(50);
    if limit == 0 || limit > 500 {
        return Err(ApiError::invalid("limit must be 1 to 500"));
    }
    let prefix = records::merchant_orders_prefix(&merchant);
    let after = q
        .after
        .as_ref()
        .map(|a| records::merchant_order_key(&merchant, a));
    let keys = node
        .store
        .scan::<()>(&prefix, after.as_deref(), limit + 1)?;
    let mut orders = Vec::new();
    let mut last_id = None;
    for (key, ()) in keys.iter().take(limit) {
        // Order ids are `ord_` and hex: nothing in them is escaped.
        let id = key.get(prefix.len()..).unwrap_or_default();
        if let Some(c) = node.checkout(id)? {
            orders.push(order_view(&node, &c).await?);
        }
        last_id = Some(id.to_string());
    }
    // The page ends where the scan ended, whatever was on it.
    let next_after = if keys.len() > limit { last_id } else { None };
    Ok(HttpResponse::Ok().json(OrderList { orders, next_after }))
}

/// Claims an order against a concurrent payment or cancellation; released on drop.
pub async fn cancel_order(
    req: HttpRequest,
    node: web::Data<Node>,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let merchant = merchant_of(&node, &req)?;
    let (idem, _body) = begin_idempotent!(node, req, payload, format!("m:{merchant}"));
    let mut c = match own_checkout(&node, &merchant, &path) {
        Ok(c) => c,
        Err(e) => return idem.finish(Reply::error(&e)).await,
    };
    let _busy = node.order_locks.lock(&c.order_id).await?;
    let mut writes = Vec::new();
    if node.engine.order_owner(&c.order_id)?.is_some() {
        if let Err(r) = node.engine.cancel_order(&c.order_id, node.now()).await? {
            return idem.finish(Reply::error(&ApiError::refusal(&r))).await;
        }
    } else if c.cancelled_at.is_none() {
        let view = order_view(&node, &c).await?;
        // An expired checkout can be cancelled too: then no late payment can place it.
        if view.state != "awaiting_payment" && view.state != "expired" {
            let e = ApiError::conflict(
                "order_not_cancellable",
                format!("the order is {} and cannot be cancelled", view.state),
            );
            return idem.finish(Reply::error(&e)).await;
        }
        let mut cancelled = Checkout::clone(&c);
        cancelled.cancelled_at = Some(node.now());
        writes.push(store::record(
            records::checkout_key(&c.order_id),
            &cancelled,
        ));
        c = std::sync::Arc::new(cancelled);
        // The engine never saw this order, so the outbox will not tell the merchant: the
        // webhook goes in with the cancellation itself.
        writes.extend(crate::outbox::webhook_write(
            &node,
            &c.merchant,
            &format!("evt_ck_{}_cancelled", c.order_id),
            "order.cancelled",
            &c.order_id,
            "cancelled",
            node.now(),
        ));
    }
    let mut view = order_view(&node, &c).await?;
    if !writes.is_empty() {
        view.state = "cancelled".into();
    }
    let response = idem
        .finish(Reply::new(StatusCode::OK, &view).with_writes(writes))
        .await?;
    node.work_wake.notify();
    Ok(response)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefundBody {
    pub amount: String,
    /// The refund's id; derived from the `Idempotency-Key` when absent. One of the two is
    /// required, so that a retried refund is never paid twice.
    #[serde(default)]
    pub id: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RefundView {
    pub refund_id: String,
    pub amount: String,
    pub order: OrderView,
}

pub async fn refund_order(
    req: HttpRequest,
    node: web::Data<Node>,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let merchant = merchant_of(&node, &req)?;
    let (idem, body) = begin_idempotent!(node, req, payload, format!("m:{merchant}"));
    let parsed: RefundBody = match parse_json(&body) {
        Ok(b) => b,
        Err(e) => return idem.finish(Reply::error(&e)).await,
    };
    let c = match own_checkout(&node, &merchant, &path) {
        Ok(c) => c,
        Err(e) => return idem.finish(Reply::error(&e)).await,
    };
    let refund_id =
        match (&parsed.id, idem.key()) {
            // Derived, so that two merchants' refund ids can never collide.
            (Some(id), _) => format!(
                "rf_{}",
                &records::sha256_hex(format!("{merchant}\0{id}").as_bytes())[..32]
            ),
            (None, Some(k)) => format!("rf_{}", &records::sha256_hex(k.as_bytes())[..32]),
            (None, None) => return Err(ApiError::bad_request(
                "refund_id_required",
                "a refund needs an `id` in the body or an Idempotency-Key header, so that a retry \
                 is never paid twice",
            )),
        };
    let result = node
        .engine
        .refund(
            RefundRequest {
                id: refund_id.clone(),
                order: c.order_id.clone(),
                amount: parsed.amount.clone(),
            },
            node.now(),
        )
        .await?;
    let reply = match result {
        Ok(_) => Reply::new(
            StatusCode::OK,
            &RefundView {
                refund_id,
                amount: Amount::parse_positive(&parsed.amount)
                    .map(|a| a.to_string())
                    .unwrap_or(parsed.amount),
                order: order_view(&node, &c).await?,
            },
        ),
        Err(r) => Reply::error(&ApiError::refusal(&r)),
    };
    idem.finish(reply).await
}

/// `POST /v1/orders/{order}/shipped`: the merchant marks the goods shipped (see
/// [`crate::app::mark_shipped`]).
pub async fn mark_shipped(
    req: HttpRequest,
    node: web::Data<Node>,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let merchant = merchant_of(&node, &req)?;
    let (idem, _body) = begin_idempotent!(node, req, payload, format!("m:{merchant}"));
    let c = match own_checkout(&node, &merchant, &path) {
        Ok(c) => c,
        Err(e) => return idem.finish(Reply::error(&e)).await,
    };
    let (now, writes) = match crate::app::mark_shipped(&node, &c).await? {
        Ok(done) => done,
        Err(refused) => {
            let e = ApiError::conflict("not_shippable", refused.to_string());
            return idem.finish(Reply::error(&e)).await;
        }
    };
    let view = order_view(&node, &now).await?;
    idem.finish(Reply::new(StatusCode::OK, &view).with_writes(writes))
        .await
}

pub async fn reprint(
    req: HttpRequest,
    node: web::Data<Node>,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let merchant = merchant_of(&node, &req)?;
    let (idem, _body) = begin_idempotent!(node, req, payload, format!("m:{merchant}"));
    let c = match own_checkout(&node, &merchant, &path) {
        Ok(c) => c,
        Err(e) => return idem.finish(Reply::error(&e)).await,
    };
    let (job, writes) = match crate::app::reprint(&node, &c.order_id)? {
        Ok(queued) => queued,
        Err(refused) => {
            let e = ApiError::conflict(refused.code(), refused.to_string());
            return idem.finish(Reply::error(&e)).await;
        }
    };
    let mut view = order_view(&node, &c).await?;
    view.print.status = "queued".into();
    view.print.reprints = Some(job.reprints);
    let response = idem
        .finish(Reply::new(StatusCode::ACCEPTED, &view).with_writes(writes))
        .await?;
    node.work_wake.notify();
    Ok(response)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayoutBody {
    /// How much to pay out; the whole balance not held for a refund when absent.
    #[serde(default)]
    pub amount: Option<String>,
}

/// A payout asked for by the merchant: its balance (or `amount` of it) to its bank account,
/// as a credit transfer. Needs an `Idempotency-Key`, so that a retry is never paid twice.
pub async fn request_payout(
    req: HttpRequest,
    node: web::Data<Node>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let merchant = merchant_of(&node, &req)?;
    let (idem, body) = begin_idempotent!(node, req, payload, format!("m:{merchant}"));
    if idem.key().is_none() {
        return Err(ApiError::bad_request(
            "idempotency_key_required",
            "a payout needs an Idempotency-Key header, so that a retry is never paid twice",
        ));
    }
    let parsed: PayoutBody = match parse_json(&body) {
        Ok(b) => b,
        Err(e) => return idem.finish(Reply::error(&e)).await,
    };
    let amount = match parsed.amount.as_deref().map(Amount::parse_positive) {
        None => None,
        Some(Ok(a)) => Some(a),
        Some(Err(e)) => {
            return idem
                .finish(Reply::error(&ApiError::invalid(format!("amount: {e}"))))
                .await
        }
    };
    let reply = match node.engine.pay_out(&merchant, amount, node.now()).await? {
        Ok(paid) => Reply::new(
            StatusCode::CREATED,
            &serde_json::json!({
                "payout": paid.payout,
                "amount": paid.amount.to_string(),
                "status": "paid",
            }),
        ),
        Err(r) => Reply::error(&ApiError::refusal(&r)),
    };
    idem.finish(reply).await
}
