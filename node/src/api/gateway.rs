//! The consumer's payment-gateway rules (SPEC F9) through the consumer API: read them, set
//! them, remove them. The consumer signs in at the reader (card and PIN) first; the rules are
//! the engine's (journaled with the account), checked at every authorisation and again when the
//! order is placed.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use onecard_engine::ledger::GatewayRules;
use serde::Serialize;

use super::idem::Reply;
use super::{consumer_of, parse_json, ApiError};
use crate::state::Node;

/// The rules as the API shows them, with what payments at readers spent today under them.
#[derive(Debug, Serialize)]
pub struct GatewayView {
    /// `null`: no rules, every payment within credit goes through.
    pub rules: Option<GatewayRules>,
    pub spent_today: String,
}

fn view(node: &Node, consumer: &str) -> Result<GatewayView, ApiError> {
    let (rules, spent) = node
        .engine
        .gateway_rules(consumer, node.now())?
        .ok_or_else(|| ApiError::not_found("unknown_consumer", "the account no longer exists"))?;
    Ok(GatewayView {
        rules,
        spent_today: spent.to_string(),
    })
}

pub async fn get_rules(req: HttpRequest, node: web::Data<Node>) -> Result<HttpResponse, ApiError> {
    let consumer = consumer_of(&node, &req)?;
    Ok(HttpResponse::Ok().json(view(&node, &consumer)?))
}

/// `PUT`: the whole set of rules (every field optional; unknown fields refused); `null`
/// removes them. Setting the rules the consumer has already changes nothing.
pub async fn put_rules(
    req: HttpRequest,
    node: web::Data<Node>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let consumer = consumer_of(&node, &req)?;
    let (idem, body) = begin_idempotent!(node, req, payload, format!("c:{consumer}"));
    let rules: Option<GatewayRules> = match parse_json(&body) {
        Ok(r) => r,
        Err(e) => return idem.finish(Reply::error(&e)).await,
    };
    let set = node
        .engine
        .set_gateway_rules(&consumer, rules, node.now())
        .await?;
    if let Err(r) = set {
        return idem.finish(Reply::error(&ApiError::refusal(&r))).await;
    }
    let shown = view(&node, &consumer)?;
    idem.finish(Reply::new(StatusCode::OK, &shown)).await
}
