//! The HTTP API: every route in one table ([`ROUTES`]), which both registers the handlers and
//! is what the OpenAPI document is checked against.
//!
//! Common to every route:
//! - bodies are read with a size limit (413) and parsed with clear errors: 400 `invalid_json`
//!   for malformed JSON, 422 `invalid_field` for a missing field or a wrong type;
//! - mutating routes honour `Idempotency-Key` ([`idem`]);
//! - every answer carries `X-Request-Id` (the caller's, or a fresh one), and every request is
//!   logged with it, its route, status and time, never with a body (no secret is logged, I10).

/// Reads the body and begins an idempotent request as `principal` (see [`idem`]): returns
/// from the handler with the stored answer on a replay; otherwise gives `(Idem, body)`.
macro_rules! begin_idempotent {
    ($node:expr, $req:expr, $payload:expr, $principal:expr) => {{
        let body = $crate::api::read_body(&$node, &$req, $payload).await?;
        match $crate::api::idem::Idem::begin(&$node, &$req, &$principal, &body).await? {
            $crate::api::idem::Begin::Replay(r) => return Ok(r),
            $crate::api::idem::Begin::Run(i) => (i, body),
        }
    }};
}

pub mod admin;
pub mod consumer;
pub mod error;
pub mod idem;
pub mod merchant;
pub mod ops;
pub mod reader;

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use futures::StreamExt;
use serde::de::DeserializeOwned;

pub use error::ApiError;

use crate::records;
use crate::state::Node;

macro_rules! routes {
    ($( $path:literal => { $( $method:ident : $handler:path ),+ $(,)? } ),* $(,)?) => {
        /// Every route the server answers: (method, path template).
        pub const ROUTES: &[(&str, &str)] = &[ $( $( (stringify!($method), $path) ),+ ),* ];

        /// Registers every route of [`ROUTES`].
        pub fn configure(cfg: &mut web::ServiceConfig) {
            $(
                cfg.service(
                    web::resource($path)
                        $( .route(web::$method().to($handler)) )+
                        .default_service(web::to(method_not_allowed)),
                );
            )*
        }
    };
}

routes! {
    "/healthz" => { get: ops::healthz },
    "/metrics" => { get: ops::metrics },
    "/openapi.json" => { get: ops::openapi },
    "/v1/admin/bank-accounts" => { post: admin::open_bank_account },
    "/v1/admin/consumers" => { post: admin::open_consumer },
    "/v1/admin/merchants" => { post: admin::open_merchant },
    "/v1/admin/merchants/{merchant}" => { patch: admin::update_merchant },
    "/v1/admin/merchants/{merchant}/api-key" => { post: admin::rotate_api_key },
    "/v1/admin/cards" => { post: admin::issue_card },
    "/v1/admin/cards/unlock" => { post: admin::unlock_card },
    "/v1/admin/readers" => { post: admin::register_reader },
    "/v1/merchant" => { get: merchant::account },
    "/v1/orders" => { post: merchant::create_order, get: merchant::list_orders },
    "/v1/orders/{order}" => { get: merchant::get_order },
    "/v1/orders/{order}/cancel" => { post: merchant::cancel_order },
    "/v1/orders/{order}/refunds" => { post: merchant::refund_order },
    "/v1/orders/{order}/reprint" => { post: merchant::reprint },
    "/v1/reader/checkouts/{order}" => { get: reader::checkout },
    "/v1/reader/swipe" => { post: reader::swipe },
    "/v1/reader/authenticate" => { post: reader::authenticate },
    "/v1/reader/confirm-address" => { post: reader::confirm_address },
    "/v1/consumer/account" => { get: consumer::account },
    "/v1/consumer/statement" => { get: consumer::statement },
    "/v1/consumer/orders/{order}" => { get: consumer::order },
    "/v1/consumer/orders/{order}/receipt" => { post: consumer::confirm_receipt },
    "/v1/consumer/orders/{order}/code" => { post: consumer::enter_code },
}

async fn method_not_allowed(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on {}", req.method(), req.path()),
    ))
}

/// The answer to a path no route matches.
pub async fn no_such_route(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found(
        "no_such_route",
        format!(
            "no route {} {} (see GET /openapi.json)",
            req.method(),
            req.path()
        ),
    ))
}

/// The id of the request being answered, set by [`request_log`].
#[derive(Clone)]
pub struct RequestId(pub String);

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Middleware: the request id, the access log line and the latency metrics.
pub async fn request_log(
    req: ServiceRequest,
    next: actix_web::middleware::Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| records::random_hex(8));
    req.extensions_mut().insert(RequestId(id.clone()));
    // A label from a closed set: a client cannot grow the metrics with made-up methods.
    let method = match req.method().as_str() {
        m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS") => m,
        _ => "OTHER",
    }
    .to_string();
    let node = req.app_data::<web::Data<Node>>().cloned();
    let mut res = next.call(req).await?.map_into_boxed_body();
    if res.status().as_u16() >= 400 {
        res = with_request_id_in_error(res, &id).await;
    }
    let route = res
        .request()
        .match_pattern()
        .unwrap_or_else(|| "(none)".to_string());
    let status = res.status().as_u16();
    let secs = started.elapsed().as_secs_f64();
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(REQUEST_ID, v);
    }
    if let Some(node) = node {
        node.metrics.request(&route, &method, status, secs);
    }
    tracing::info!(request_id = %id, %method, %route, status, micros = (secs * 1e6) as u64, "request");
    Ok(res)
}

/// An error's JSON body with the request id in it (`error.request_id`), so that the id a
/// client quotes is the one in the node's log. Other bodies are left as they are.
async fn with_request_id_in_error(
    res: ServiceResponse<actix_web::body::BoxBody>,
    id: &str,
) -> ServiceResponse<actix_web::body::BoxBody> {
    let (req, res) = res.into_parts();
    let (head, body) = res.into_parts();
    let bytes = actix_web::body::to_bytes_limited(body, 64 * 1024).await;
    let patched = match bytes {
        Ok(Ok(b)) => match serde_json::from_slice::<serde_json::Value>(&b) {
            Ok(mut v) if v.pointer("/error/code").is_some() => {
                v["error"]["request_id"] = serde_json::Value::String(id.to_string());
                serde_json::to_vec(&v).map(web::Bytes::from).unwrap_or(b)
            }
            _ => b,
        },
        // Not readable or too large for an error: leave it empty rather than fail the answer.
        _ => web::Bytes::new(),
    };
    let res = head.set_body(actix_web::body::BoxBody::new(patched));
    ServiceResponse::new(req, res)
}

/// How long a client may take to send a body once its headers are in.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Reads a body of at most the configured size: refused at once (413) when its declared
/// length is over the limit, and with 408 when it does not arrive in time, so that a client
/// cannot hold a worker's connection by promising a body it never sends.
pub async fn read_body(
    node: &Node,
    req: &HttpRequest,
    mut payload: web::Payload,
) -> Result<web::Bytes, ApiError> {
    let limit = node.settings.max_body_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body is larger than {limit} bytes"),
        )
    };
    let declared = req
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let read = async {
        let mut body = web::BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| ApiError::bad_request("bad_body", e.to_string()))?;
            if body.len() + chunk.len() > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    };
    tokio::time::timeout(BODY_TIMEOUT, read)
        .await
        .unwrap_or_else(|_| {
            Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the body did not arrive within {} s",
                    BODY_TIMEOUT.as_secs()
                ),
            ))
        })
}

/// Parses a JSON body: 400 for malformed JSON, 422 for the wrong shape.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            // A shape error may come before the syntax error further on (`{"a":1} junk`
            // misses fields before the junk is read): malformed JSON is 400 whatever else.
            Category::Data => match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                Err(syntax) if !syntax.is_data() => ApiError::bad_request(
                    "invalid_json",
                    format!("the body is not valid JSON: {syntax}"),
                ),
                _ => ApiError::invalid(format!("the body does not fit: {e}")),
            },
            Category::Syntax | Category::Eof | Category::Io => {
                ApiError::bad_request("invalid_json", format!("the body is not valid JSON: {e}"))
            }
        }
    })
}

fn bearer(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get("authorization")?.to_str().ok()?;
    // The scheme is case-insensitive (RFC 9110, 11.1): `bearer <key>` is a key too.
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The merchant an API key belongs to (401 otherwise).
pub fn merchant_of(node: &Node, req: &HttpRequest) -> Result<String, ApiError> {
    let key = bearer(req).ok_or_else(|| {
        ApiError::unauthenticated("send the merchant's API key as `Authorization: Bearer <key>`")
    })?;
    node.api_keys
        .get(records::api_key_key(key).trim_start_matches("ak/"))
        .map(|m| m.clone())
        .ok_or_else(|| ApiError::unauthenticated("unknown API key"))
}

/// Checks the administrator's token (401 otherwise).
pub fn require_admin(node: &Node, req: &HttpRequest) -> Result<(), ApiError> {
    let token = bearer(req).ok_or_else(|| {
        ApiError::unauthenticated(
            "send the administrator's token as `Authorization: Bearer <token>`",
        )
    })?;
    let given = records::sha256_hex(token.as_bytes());
    // Both are SHA-256 digests; comparing them leaks nothing useful about the token.
    if given == node.admin_token_hash {
        Ok(())
    } else {
        Err(ApiError::unauthenticated("wrong administrator token"))
    }
}

/// The consumer a session token belongs to (401 otherwise).
pub fn consumer_of(node: &Node, req: &HttpRequest) -> Result<String, ApiError> {
    let token = bearer(req).ok_or_else(|| {
        ApiError::unauthenticated(
            "send the session issued at your reader as `Authorization: Bearer <token>`",
        )
    })?;
    match node
        .store
        .get::<records::Session>(&records::session_key(token))?
    {
        Some(s) if s.expires_at > node.now() => Ok(s.consumer),
        Some(_) => Err(ApiError::unauthenticated(
            "the session has expired: authenticate at your reader again",
        )),
        None => Err(ApiError::unauthenticated("unknown session")),
    }
}

/// A JSON answer.
pub fn json(status: StatusCode, body: &impl serde::Serialize) -> HttpResponse {
    HttpResponse::build(status).json(body)
}
