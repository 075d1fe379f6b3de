//! The reader API, used by `onecard-terminal` (steps 1 to 4): open the checkout, swipe (card
//! and reader bound, I9), authenticate (card cryptogram, PIN, address, credit), answer the
//! address question; on authorisation the node places the order (step 4) and issues a session
//! for the consumer API.
//!
//! A sign-in is the same flow for an order id starting `signin-` (chosen by the reader
//! program), an amount of zero and no delivery address: card and PIN give a consumer session
//! and nothing is placed.
//!
//! A reader needs no key of its own: the swipe checks the reader's id, its bound card and the
//! network it connects from; the card proves itself with a cryptogram, the consumer with the
//! PIN, which arrives encrypted to the challenge's key and is never logged (I10).

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use onecard_engine::cards::{is_sign_in, AuthOutcome};
use onecard_engine::commands::ReaderPayment;
use onecard_engine::Amount;
use onecard_protocol::wire::{
    self, AuthAnswer, AuthenticateBody, CheckoutView, ConfirmAddressBody, PlacedOrder, SessionBody,
    SwipeAnswer, SwipeBody, WebCodeBody,
};

use super::idem::{Idem, Reply};
use super::{parse_json, ApiError};
use crate::app::{awaiting_payment, checkout_of, order_view, place};
use crate::records::{self, Checkout, Session};
use crate::state::Node;
use crate::store;

pub async fn checkout(
    node: web::Data<Node>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let c = checkout_of(&node, &path)?;
    let view = order_view(&node, &c).await?;
    Ok(HttpResponse::Ok().json(CheckoutView {
        order_id: c.order_id.clone(),
        merchant: node
            .merchants
            .get(&c.merchant)
            .map(|m| m.name.clone())
            .unwrap_or_else(|| c.merchant.clone()),
        amount: view.amount,
        amount_cents: u64::try_from(c.amount_cents).unwrap_or(0),
        currency: c.currency.clone(),
        delivery_name: c.delivery.name.clone(),
        delivery_address: c.delivery.address.clone(),
        status: view.state,
    }))
}

/// A reader's idempotency keys are its network address's.
fn reader_principal(req: &HttpRequest) -> String {
    let peer = req
        .peer_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_default();
    format!("r:{peer}")
}

pub async fn swipe(
    req: HttpRequest,
    node: web::Data<Node>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (idem, body) = begin_idempotent!(node, req, payload, reader_principal(&req));
    let s: SwipeBody = match parse_json(&body) {
        Ok(s) => s,
        Err(e) => return idem.finish_without_waiting(&node, Reply::error(&e)).await,
    };
    let peer = req
        .peer_addr()
        .map(|a| a.ip())
        .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
    if is_sign_in(&s.order_id) {
        // A sign-in: card and PIN for a consumer session, nothing to pay.
        let result = node
            .engine
            .swipe(
                &s.reader_id,
                &s.card_number,
                peer,
                &s.order_id,
                Amount::from_cents(i64::try_from(s.amount_cents).unwrap_or(i64::MAX)),
                node.now(),
            )
            .await?;
        return idem
            .finish_without_waiting(
                &node,
                Reply::new(StatusCode::OK, &SwipeAnswer::from_result(result)),
            )
            .await;
    }
    let c = match checkout_of(&node, &s.order_id) {
        Ok(c) => c,
        Err(e) => {
            return idem
                .finish_without_waiting(&node, Reply::error(&ApiError::from(e)))
                .await
        }
    };
    if u64::try_from(c.amount_cents).ok() != Some(s.amount_cents) {
        let e = ApiError::invalid(format!(
            "amount_cents {} is not the order's amount ({} cents)",
            s.amount_cents, c.amount_cents
        ));
        return idem.finish_without_waiting(&node, Reply::error(&e)).await;
    }
    if !awaiting_payment(&node, &c)? {
        let state = order_view(&node, &c).await?.state;
        let e = ApiError::conflict(
            "order_not_payable",
            format!("the order is {state}; it cannot be paid"),
        );
        return idem.finish_without_waiting(&node, Reply::error(&e)).await;
    }
    let result = node
        .engine
        .swipe(
            &s.reader_id,
            &s.card_number,
            peer,
            &s.order_id,
            Amount::from_cents(c.amount_cents),
            node.now(),
        )
        .await?;
    idem.finish_without_waiting(
        &node,
        Reply::new(StatusCode::OK, &SwipeAnswer::from_result(result)),
    )
    .await
}

pub async fn authenticate(
    req: HttpRequest,
    node: web::Data<Node>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (idem, body) = begin_idempotent!(node, req, payload, reader_principal(&req));
    let a: AuthenticateBody = match parse_json(&body) {
        Ok(a) => a,
        Err(e) => return idem.finish(Reply::error(&e)).await,
    };
    let (Some(pin), Some(cryptogram)) = (a.pin.to_pin(), wire::from_hex(&a.cryptogram)) else {
        let e = ApiError::invalid("pin and cryptogram must be hex of the right lengths");
        return idem.finish(Reply::error(&e)).await;
    };
    // The address the node checks is the order's, not whatever the reader says; a reader that
    // shows another one is out of step with the node.
    let order = node.engine.challenge_order(&a.challenge_id)?;
    // The checkout, read once for the gateway rules and the address (the placement reads it
    // again under the order's lock).
    let checkout = match order.as_deref() {
        Some(order) if !is_sign_in(order) => Some(checkout_of(&node, order)?),
        _ => None,
    };
    let at_reader = checkout.as_ref().map(|c| reader_payment_to(&node, c));
    let address = match (order, checkout) {
        (Some(_), Some(c)) => {
            if c.delivery.address != a.delivery_address {
                let e = ApiError::invalid(
                    "delivery_address is not the order's: open the checkout again",
                );
                return idem.finish(Reply::error(&e)).await;
            }
            c.delivery.address.clone()
        }
        (Some(_), None) => {
            // A sign-in.
            if !a.delivery_address.is_empty() {
                let e = ApiError::invalid("a sign-in has no delivery address: send \"\"");
                return idem.finish(Reply::error(&e)).await;
            }
            String::new()
        }
        // Unknown, used or expired challenge: the engine answers `timed_out`.
        (None, _) => a.delivery_address.clone(),
    };
    let queued = node
        .engine
        .authenticate_queued(
            &a.challenge_id,
            a.counter,
            &cryptogram,
            &pin,
            &address,
            None,
            at_reader.as_ref().map(|(m, p)| (m.as_str(), p)),
            node.now(),
        )
        .await?;
    // On authorisation the order is placed at once, behind the authentication's record in the
    // log: one wait for both instead of one after the other.
    let placed = place_authorised(&node, queued.outcome()).await;
    // Always, so that the order is let go whatever came of its placement.
    let outcome = queued.recorded().await?;
    answer(&node, idem, outcome, placed.transpose()?).await
}

pub async fn confirm_address(
    req: HttpRequest,
    node: web::Data<Node>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (idem, body) = begin_idempotent!(node, req, payload, reader_principal(&req));
    let c: ConfirmAddressBody = match parse_json(&body) {
        Ok(c) => c,
        Err(e) => return idem.finish(Reply::error(&e)).await,
    };
    let order = node.engine.challenge_order(&c.challenge_id)?;
    let at_reader = gateway_payment(&node, order.as_deref())?;
    let outcome = node
        .engine
        .confirm_address_change(
            &c.challenge_id,
            c.accept,
            at_reader.as_ref().map(|(m, p)| (m.as_str(), p)),
            node.now(),
        )
        .await?;
    let placed = place_authorised(&node, &outcome).await.transpose()?;
    answer(&node, idem, outcome, placed).await
}

/// Step 4 for an authorised payment: the order placed (`None` for any other outcome and for a
/// sign-in, which places nothing).
async fn place_authorised(
    node: &Node,
    outcome: &AuthOutcome,
) -> Option<Result<PlacedOrder, crate::app::AppError>> {
    match outcome {
        AuthOutcome::Authorised(auth) if !is_sign_in(&auth.order_id) => {
            Some(place(node, auth).await)
        }
        _ => None,
    }
}

/// The merchant of the order a challenge is for and what the consumer's gateway rules see of
/// the payment; `None` for a sign-in or an unknown challenge (nothing to pay).
fn gateway_payment(
    node: &Node,
    order: Option<&str>,
) -> Result<Option<(String, ReaderPayment)>, ApiError> {
    match order {
        Some(order) if !is_sign_in(order) => {
            let c = checkout_of(node, order)?;
            Ok(Some(reader_payment_to(node, &c)))
        }
        _ => Ok(None),
    }
}

/// The merchant of checkout `c` and what the consumer's gateway rules see of its payment.
fn reader_payment_to(node: &Node, c: &Checkout) -> (String, ReaderPayment) {
    (
        c.merchant.clone(),
        crate::app::reader_payment(node, &c.merchant),
    )
}

/// The reader's answer; on authorisation, the order as step 4 placed it (`placed`) and a
/// consumer session.
async fn answer(
    node: &Node,
    idem: Idem<'_>,
    outcome: AuthOutcome,
    placed: Option<PlacedOrder>,
) -> Result<HttpResponse, ApiError> {
    let mut answer = AuthAnswer::of(&outcome);
    let mut writes = Vec::new();
    if let AuthOutcome::Authorised(auth) = &outcome {
        answer.order = placed;
        let token = records::random_hex(32);
        let expires_at = node.now().saturating_add(node.settings.session_ttl_secs);
        writes.push(store::json(
            records::session_key(&token),
            &Session {
                consumer: auth.account.clone(),
                expires_at,
            },
        ));
        answer.session = Some(SessionBody { token, expires_at });
        if is_sign_in(&auth.order_id) {
            // A sign-in also gets a one-time code for the web pages, shown on the reader.
            let (code, expires_at, write) = crate::pages::issue_code(
                &auth.account,
                node.now(),
                node.settings.web_code_ttl_secs,
            );
            writes.push(write);
            answer.web_code = Some(WebCodeBody { code, expires_at });
        }
    }
    // A repeat gets the answer without its secrets: the session token and the web code are
    // never stored.
    let replay = AuthAnswer {
        session: None,
        web_code: None,
        ..answer.clone()
    };
    let response = idem
        .finish(
            Reply::new(StatusCode::OK, &answer)
                .with_writes(writes)
                .replayed_as(&replay),
        )
        .await?;
    node.outbox_wake.notify_one();
    Ok(response)
}
