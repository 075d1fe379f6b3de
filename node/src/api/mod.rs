//! The HTTP API: every route in one table ([`ROUTES`], with credentials and body kind in
//! [`ROUTE_TABLE`]), which both registers the handlers and is what the OpenAPI document and
//! the HTTP conformance test are checked against.
//!
//! Common to every route:
//! - HEAD wherever there is GET (the same headers, no body), OPTIONS on every path (204 with
//!   `Allow`), and any other method 405 `method_not_allowed` with `Allow` (RFC 9110, 15.5.6);
//! - a 401 carries `WWW-Authenticate: Bearer realm="onecard-…"` naming the credentials the
//!   route asks for ([`Realm`]);
//! - a body must be declared `Content-Type: application/json` (415 `unsupported_media_type`
//!   otherwise): always on a route that reads JSON, on the others only when a body is sent;
//! - bodies are read with a size limit (413) and parsed with clear errors: 400 `invalid_json`
//!   for malformed JSON, 422 `invalid_field` for a missing field or a wrong type;
//! - mutating routes honour `Idempotency-Key` ([`idem`]);
//! - every answer carries `X-Request-Id` (the caller's, or a fresh one; an invalid one is
//!   refused with 400 `invalid_request_id`), and every request is logged with it, its route,
//!   status and time, never with a body (no secret is logged, I10).

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
pub mod analysis;
pub mod banks;
pub mod bills;
pub mod consumer;
pub mod credit;
pub mod error;
pub mod gateway;
pub mod idem;
pub mod merchant;
pub mod notifications;
pub mod ops;
pub mod payroll;
pub mod reader;
pub mod recharge;

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use futures::StreamExt;
use serde::de::DeserializeOwned;

pub use error::{ApiError, Realm};

use crate::records;
use crate::state::Node;

/// Who may call a route: the credentials it asks for in `Authorization: Bearer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No credentials (`/healthz`, `/metrics`, `/openapi.json`, the reader API).
    Open,
    /// The administrator's token.
    Admin,
    /// A merchant's API key.
    Merchant,
    /// A consumer's session token.
    Consumer,
}

impl Access {
    /// The realm of its `WWW-Authenticate` challenge (none for an open route).
    pub fn realm(self) -> Option<Realm> {
        match self {
            Access::Open => None,
            Access::Admin => Some(Realm::Admin),
            Access::Merchant => Some(Realm::Merchant),
            Access::Consumer => Some(Realm::Consumer),
        }
    }
}

/// What a route reads from the request's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// Nothing: an empty body is fine with any `Content-Type` or none; a non-empty one (it is
    /// ignored, but counts for `Idempotency-Key`) must still be declared JSON.
    None,
    /// A JSON document: `Content-Type: application/json` is required (415 otherwise).
    Json,
    /// A file that is either a JSON document or CSV (`text/csv`): one of the two is required
    /// (415 otherwise). A payroll (F12).
    JsonOrCsv,
}

/// One route of the table: method (lower case, as OpenAPI spells it), path template, the
/// credentials it asks for and what it reads from the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub access: Access,
    pub body: BodyKind,
}

macro_rules! body_kind {
    () => {
        BodyKind::None
    };
    (json) => {
        BodyKind::Json
    };
    (json_or_csv) => {
        BodyKind::JsonOrCsv
    };
}

/// A GET route answers HEAD too, with the same handler (the server sends no body for HEAD).
macro_rules! add_route {
    ($resource:expr, get, $handler:path) => {
        $resource
            .route(web::get().to($handler))
            .route(web::head().to($handler))
    };
    ($resource:expr, $method:ident, $handler:path) => {
        $resource.route(web::$method().to($handler))
    };
}

macro_rules! routes {
    ($( $path:literal => $access:ident {
        $( $method:ident $( ( $body:ident ) )? : $handler:path ),+ $(,)?
    } ),* $(,)?) => {
        /// Every route the server answers: (method, path template). HEAD (on every path with
        /// GET) and OPTIONS (on every path) are answered too and are not listed.
        pub const ROUTES: &[(&str, &str)] = &[ $( $( (stringify!($method), $path) ),+ ),* ];

        /// Every route with its credentials and body: the same routes as [`ROUTES`].
        pub const ROUTE_TABLE: &[Route] = &[ $( $( Route {
            method: stringify!($method),
            path: $path,
            access: Access::$access,
            body: body_kind!($( $body )?),
        } ),+ ),* ];

        /// Registers every route of [`ROUTES`], HEAD wherever there is GET, OPTIONS on every
        /// path, and a 405 with `Allow` for any other method.
        pub fn configure(cfg: &mut web::ServiceConfig) {
            // Paths without segments first: actix tries services in the order they were
            // registered, and a fixed path is a string comparison. A path with segments runs
            // a regex, so those sit in one scope per fixed prefix (`/v1/orders` for
            // `/v1/orders/{order}/cancel`): a request tries only the regexes of its own
            // prefix, not all of them. No fixed path here is also matched by a path with
            // segments, and a path no resource of its scope matches gets the app's default
            // answer (`no_such_route`), as without scopes.
            let mut scopes: std::collections::BTreeMap<&'static str, actix_web::Scope> =
                Default::default();
            let mut fixed: Vec<(&'static str, actix_web::Resource)> = Vec::new();
            $(
                let resource = web::resource(segment_scope($path).1)
                    .app_data(RoutePattern($path));
                $( let resource = add_route!(resource, $method, $handler); )+
                let resource = resource
                    .route(
                        web::route()
                            .method(Method::OPTIONS)
                            .to(|| async { options($path) }),
                    )
                    .default_service(web::to(|req: HttpRequest| async move {
                        method_not_allowed(req, $path)
                    }));
                match segment_scope($path).0 {
                    "" => fixed.push(($path, resource)),
                    prefix => {
                        let scope = scopes.remove(prefix).unwrap_or_else(|| web::scope(prefix));
                        scopes.insert(prefix, scope.service(resource));
                    }
                }
            )*
            // The busiest fixed paths first: each path tried before the right one costs a
            // match attempt (about 1 % of a card payment's CPU with them in table order).
            fixed.sort_by_key(|(path, _)| {
                BUSIEST_FIXED_PATHS
                    .iter()
                    .position(|busy| busy == path)
                    .unwrap_or(BUSIEST_FIXED_PATHS.len())
            });
            // The busiest scopes before the fixed paths even: no fixed path lies under them, so
            // trying them first routes every request as before.
            for prefix in BUSIEST_SCOPES {
                if let Some(scope) = scopes.remove(prefix) {
                    cfg.service(scope);
                }
            }
            for (_, resource) in fixed {
                cfg.service(resource);
            }
            for scope in scopes.into_values() {
                cfg.service(scope);
            }
        }
    };
}

/// The fixed paths of a card payment and of an order creation, in the order they are tried.
const BUSIEST_FIXED_PATHS: [&str; 4] = [
    "/v1/reader/authenticate",
    "/v1/reader/swipe",
    "/v1/orders",
    "/v1/reader/confirm-address",
];

/// The scopes of the paths with segments of a card payment (the checkout, the receipt),
/// registered before everything else. None may hold a fixed path or another scope.
const BUSIEST_SCOPES: [&str; 2] = ["/v1/reader/checkouts", "/v1/consumer/orders"];

/// Where a route's path is registered: a fixed path as it is (`("", path)`); a path with
/// segments in the scope of its fixed part up to the last `/` before the first segment, and
/// the rest under it (`("/v1/orders", "/{order}/cancel")`).
fn segment_scope(path: &'static str) -> (&'static str, &'static str) {
    match path.find('{') {
        None => ("", path),
        Some(first) => {
            let cut = path[..first].trim_end_matches('/').len();
            (&path[..cut], &path[cut..])
        }
    }
}

routes! {
    "/healthz" => Open { get: ops::healthz },
    "/metrics" => Open { get: ops::metrics },
    "/openapi.json" => Open { get: ops::openapi },
    "/v1/admin/bank" => Admin { get: admin::bank_status },
    "/v1/admin/bank-accounts" => Admin { post(json): admin::open_bank_account },
    "/v1/admin/reconciliations" => Admin { post(json): admin::reconcile },
    "/v1/admin/consumers" => Admin { post(json): admin::open_consumer },
    "/v1/admin/consumers/{consumer}/credit" => Admin { get: credit::admin_credit },
    "/v1/admin/consumers/{consumer}/credit-line" => Admin { put(json): credit::set_credit_line },
    "/v1/admin/merchants" => Admin { post(json): admin::open_merchant },
    "/v1/admin/billers" => Admin { post(json): admin::open_biller },
    "/v1/admin/employers" => Admin { post(json): admin::open_employer },
    "/v1/admin/merchants/{merchant}" => Admin { patch(json): admin::update_merchant },
    "/v1/admin/merchants/{merchant}/api-key" => Admin { post: admin::rotate_api_key },
    "/v1/admin/cards" => Admin { post(json): admin::issue_card },
    "/v1/admin/cards/unlock" => Admin { post(json): admin::unlock_card },
    "/v1/admin/readers" => Admin { post(json): admin::register_reader },
    "/v1/admin/recharge-batches" => Admin { post(json): recharge::issue_batch },
    "/v1/merchant" => Merchant { get: merchant::account },
    "/v1/merchant/payouts" => Merchant { post(json): merchant::request_payout },
    "/v1/biller/bills" => Merchant { post(json): bills::post_bill },
    "/v1/employer/payrolls" => Merchant { post(json_or_csv): payroll::post_payroll, get: payroll::list_payrolls },
    "/v1/employer/payrolls/{batch}" => Merchant { get: payroll::get_payroll },
    "/v1/orders" => Merchant { post(json): merchant::create_order, get: merchant::list_orders },
    "/v1/orders/{order}" => Merchant { get: merchant::get_order },
    "/v1/orders/{order}/cancel" => Merchant { post: merchant::cancel_order },
    "/v1/orders/{order}/refunds" => Merchant { post(json): merchant::refund_order },
    "/v1/orders/{order}/reprint" => Merchant { post: merchant::reprint },
    "/v1/orders/{order}/shipped" => Merchant { post: merchant::mark_shipped },
    "/v1/reader/checkouts/{order}" => Open { get: reader::checkout },
    "/v1/reader/swipe" => Open { post(json): reader::swipe },
    "/v1/reader/authenticate" => Open { post(json): reader::authenticate },
    "/v1/reader/confirm-address" => Open { post(json): reader::confirm_address },
    "/v1/consumer/account" => Consumer { get: consumer::account },
    "/v1/consumer/statement" => Consumer { get: consumer::statement },
    "/v1/consumer/credit" => Consumer { get: credit::consumer_credit },
    "/v1/consumer/orders/{order}" => Consumer { get: consumer::order },
    "/v1/consumer/orders/{order}/receipt" => Consumer { post(json): consumer::confirm_receipt },
    "/v1/consumer/orders/{order}/code" => Consumer { post(json): consumer::enter_code },
    "/v1/consumer/bills" => Consumer { get: bills::list_bills },
    "/v1/consumer/bills/{bill}/approve" => Consumer { post: bills::approve_bill },
    "/v1/consumer/bills/{bill}/decline" => Consumer { post: bills::decline_bill },
    "/v1/consumer/autopay" => Consumer { get: bills::list_autopay },
    "/v1/consumer/autopay/{biller}" => Consumer { put(json): bills::set_autopay },
    "/v1/consumer/notifications" => Consumer { get: notifications::inbox },
    "/v1/consumer/notification-settings" => Consumer { put(json): notifications::set_settings },
    "/v1/consumer/gateway-rules" => Consumer { get: gateway::get_rules, put(json): gateway::put_rules },
    "/v1/consumer/analysis/{month}" => Consumer { get: analysis::month },
    "/v1/consumer/analysis/{month}/statement" => Consumer { get: analysis::statement },
    "/v1/consumer/alerts" => Consumer { get: analysis::get_alerts, put(json): analysis::put_alerts },
    "/v1/consumer/alerts/fired" => Consumer { get: analysis::fired_alerts },
    "/v1/consumer/recharges" => Consumer { post(json): recharge::redeem },
    "/v1/consumer/deposits" => Consumer { post(json): recharge::deposit },
    "/v1/consumer/bank-accounts" => Consumer { get: banks::list, post(json): banks::link },
    "/v1/consumer/bank-accounts/{bank}/designate" => Consumer { post: banks::designate },
    "/v1/consumer/transfers" => Consumer { post(json): banks::transfer },
    "/v1/consumer/transfer-rules/{rule}" => Consumer { put(json): banks::put_rule, delete: banks::delete_rule },
}

/// The route table, for tests and tools ([`ROUTE_TABLE`]).
pub fn routes() -> &'static [Route] {
    ROUTE_TABLE
}

/// The methods a path template answers, in the order of `Allow`: its routes' methods and
/// HEAD wherever there is GET, then OPTIONS.
pub fn allowed_methods(path: &str) -> Vec<&'static str> {
    const ORDER: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
    let has = |m: &str| {
        m == "OPTIONS"
            || ROUTE_TABLE.iter().any(|r| {
                r.path == path
                    && (r.method.eq_ignore_ascii_case(m) || (m == "HEAD" && r.method == "get"))
            })
    };
    ORDER.into_iter().filter(|m| has(m)).collect()
}

/// The value of `Allow` for a path template.
fn allow(path: &str) -> String {
    allowed_methods(path).join(", ")
}

/// OPTIONS on a path: 204 with the methods it allows (no CORS: the API is not for browsers).
fn options(path: &'static str) -> HttpResponse {
    HttpResponse::NoContent()
        .insert_header((header::ALLOW, allow(path)))
        .finish()
}

/// A method the path does not have: 405 with `Allow` (RFC 9110, 15.5.6).
fn method_not_allowed(req: HttpRequest, path: &'static str) -> Result<HttpResponse, ApiError> {
    let allowed = allow(path);
    Err(ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} is not allowed on {}; allowed: {allowed}",
            req.method(),
            req.path()
        ),
    )
    .with_header("Allow", allowed))
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

/// A caller's `X-Request-Id`: 1 to 128 visible ASCII characters.
pub fn valid_request_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic())
}

/// Middleware: the request id, the access log line and the latency metrics.
///
/// A caller's `X-Request-Id` is kept when it is valid ([`valid_request_id`], one header). An
/// invalid one is refused with 400 `invalid_request_id` before the route runs (nothing is
/// done), under a fresh id: a settlement node does not quietly log a request under another id
/// than the one its caller will quote.
/// The route table's pattern of a resource, kept in its data for the request log and metrics.
struct RoutePattern(&'static str);

pub async fn request_log(
    req: ServiceRequest,
    next: actix_web::middleware::Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let given: Vec<&HeaderValue> = req.headers().get_all(&REQUEST_ID).collect();
    let (id, refused) = match given.as_slice() {
        [] => (records::random_hex(8), None),
        [one] => match one.to_str() {
            Ok(v) if valid_request_id(v) => (v.to_string(), None),
            _ => (
                records::random_hex(8),
                Some("X-Request-Id must be 1 to 128 visible ASCII characters (no spaces)"),
            ),
        },
        _ => (
            records::random_hex(8),
            Some("send at most one X-Request-Id header"),
        ),
    };
    req.extensions_mut().insert(RequestId(id.clone()));
    // A label from a closed set: a client cannot grow the metrics with made-up methods.
    let method: &'static str = match req.method().as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "OTHER",
    };
    let node = req.app_data::<web::Data<Node>>().cloned();
    let mut res = match refused {
        Some(why) => {
            let e = ApiError::bad_request("invalid_request_id", why);
            req.into_response(actix_web::ResponseError::error_response(&e))
        }
        None => next.call(req).await?.map_into_boxed_body(),
    };
    if res.status().as_u16() >= 400 {
        res = with_request_id_in_error(res, &id).await;
    }
    // The matched resource's pattern, from its data: `match_pattern` would run the router's
    // regexes a second time.
    let route = res
        .request()
        .app_data::<RoutePattern>()
        .map_or("(none)", |p| p.0);
    let status = res.status().as_u16();
    let secs = started.elapsed().as_secs_f64();
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(REQUEST_ID, v);
    }
    if let Some(node) = node {
        node.metrics.request(route, method, status, secs);
    }
    tracing::info!(request_id = %id, %method, %route, status, micros = (secs * 1e6) as u64, "request");
    Ok(res)
}

/// The largest error body [`with_request_id_in_error`] reads to add the request id: a
/// refused payroll file names every bad line (`error.problems`), up to a few per line of
/// `payroll::file::MAX_LINES` lines.
const MAX_ERROR_BODY_BYTES: usize = 8 * 1024 * 1024;

/// An error's JSON body with the request id in it (`error.request_id`), so that the id a
/// client quotes is the one in the node's log. Other bodies are left as they are.
async fn with_request_id_in_error(
    res: ServiceResponse<actix_web::body::BoxBody>,
    id: &str,
) -> ServiceResponse<actix_web::body::BoxBody> {
    let (req, res) = res.into_parts();
    let (head, body) = res.into_parts();
    let bytes = actix_web::body::to_bytes_limited(body, MAX_ERROR_BODY_BYTES).await;
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

/// The media type of a JSON body: `application/json`, any case, with parameters; a `charset`
/// parameter, if any, must be UTF-8 (RFC 8259, 8.1: JSON between systems is UTF-8).
pub fn is_json_media_type(content_type: &str) -> bool {
    let mut parts = content_type.split(';');
    let essence = parts.next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return false;
    }
    parts.all(|param| match param.split_once('=') {
        Some((name, value)) if name.trim().eq_ignore_ascii_case("charset") => {
            let value = value.trim().trim_matches('"');
            value.eq_ignore_ascii_case("utf-8") || value.eq_ignore_ascii_case("utf8")
        }
        Some(_) => true,
        // `application/json;` (an empty parameter) is harmless; a bare word is not a parameter.
        None => param.trim().is_empty(),
    })
}

/// What the route being answered reads from the body ([`ROUTE_TABLE`]). Its pattern comes
/// from the matched resource's data ([`RoutePattern`]): `match_pattern` would run the router's
/// regexes again.
fn body_kind(req: &HttpRequest) -> BodyKind {
    let Some(RoutePattern(pattern)) = req.app_data::<RoutePattern>() else {
        return BodyKind::None;
    };
    ROUTE_TABLE
        .iter()
        .find(|r| r.path == *pattern && r.method.eq_ignore_ascii_case(req.method().as_str()))
        .map_or(BodyKind::None, |r| r.body)
}

/// The media type of a CSV body: `text/csv`, any case, with parameters; a `charset`, if any,
/// must be UTF-8 (the file is read as UTF-8 text).
pub fn is_csv_media_type(content_type: &str) -> bool {
    let mut parts = content_type.split(';');
    let essence = parts.next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("text/csv")
        && parts.all(|param| match param.split_once('=') {
            Some((name, value)) if name.trim().eq_ignore_ascii_case("charset") => {
                let value = value.trim().trim_matches('"');
                value.eq_ignore_ascii_case("utf-8") || value.eq_ignore_ascii_case("utf8")
            }
            Some(_) => true,
            None => param.trim().is_empty(),
        })
}

/// Whether the request's one `Content-Type` is CSV ([`is_csv_media_type`]).
pub fn declared_csv(req: &HttpRequest) -> bool {
    let values: Vec<&HeaderValue> = req.headers().get_all(header::CONTENT_TYPE).collect();
    matches!(values.as_slice(), [one] if one.to_str().is_ok_and(is_csv_media_type))
}

/// 415 unless the body is declared JSON (one `Content-Type`, [`is_json_media_type`]), or, on a
/// route that reads a file ([`BodyKind::JsonOrCsv`]), JSON or CSV.
fn check_content_type(req: &HttpRequest, kind: BodyKind) -> Result<(), ApiError> {
    let values: Vec<&HeaderValue> = req.headers().get_all(header::CONTENT_TYPE).collect();
    let declared = match values.as_slice() {
        [one] => one.to_str().ok(),
        _ => None,
    };
    let csv_too = kind == BodyKind::JsonOrCsv;
    if declared.is_some_and(|d| is_json_media_type(d) || (csv_too && is_csv_media_type(d))) {
        return Ok(());
    }
    let got = match values.as_slice() {
        [] => "no Content-Type".to_string(),
        [one] => {
            let shown: String = String::from_utf8_lossy(one.as_bytes())
                .chars()
                .take(100)
                .collect();
            format!("Content-Type {shown:?}")
        }
        _ => "more than one Content-Type".to_string(),
    };
    let wanted = if csv_too {
        "as JSON with `Content-Type: application/json` or as CSV with `Content-Type: text/csv`"
    } else {
        "as JSON with `Content-Type: application/json`"
    };
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        format!("send the body {wanted} (got {got})"),
    ))
}

/// The body limit of a route that reads a file ([`BodyKind::JsonOrCsv`]) when `[node]
/// max_body_bytes` is smaller: a payroll of `payroll::file::MAX_LINES` lines fits.
pub const FILE_BODY_BYTES: usize = 4 * 1024 * 1024;

/// How long a client may take to send a body once its headers are in.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Reads a body of at most the configured size: refused at once (413) when its declared
/// length is over the limit, and with 408 when it does not arrive in time, so that a client
/// cannot hold a worker's connection by promising a body it never sends. A body must be
/// declared `application/json` (415 otherwise): on a route that reads JSON before it is read,
/// on another as soon as there is one.
pub async fn read_body(
    node: &Node,
    req: &HttpRequest,
    mut payload: web::Payload,
) -> Result<web::Bytes, ApiError> {
    let kind = body_kind(req);
    let limit = match kind {
        BodyKind::JsonOrCsv => node.settings.max_body_bytes.max(FILE_BODY_BYTES),
        _ => node.settings.max_body_bytes,
    };
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
    if matches!(kind, BodyKind::Json | BodyKind::JsonOrCsv) || declared.is_some_and(|n| n > 0) {
        check_content_type(req, kind)?;
    }
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
    let body = tokio::time::timeout(BODY_TIMEOUT, read)
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
        })?;
    // A body without a declared length (chunked) on a route that reads none.
    if !body.is_empty() {
        check_content_type(req, kind)?;
    }
    Ok(body)
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
        ApiError::unauthenticated(
            Realm::Merchant,
            false,
            "send the merchant's API key as `Authorization: Bearer <key>`",
        )
    })?;
    merchant_of_key(node, key)
        .ok_or_else(|| ApiError::unauthenticated(Realm::Merchant, true, "unknown API key"))
}

/// The merchant an API key belongs to, if any: looked up by the key's SHA-256 (the API and
/// the merchant's web sign-in both ask here).
pub fn merchant_of_key(node: &Node, key: &str) -> Option<String> {
    node.api_keys
        .get(&records::sha256_hex(key.as_bytes()))
        .map(|m| m.clone())
}

/// Whether `token` is the administrator's token (the API and the operator's web sign-in both
/// ask here).
pub fn is_admin_token(node: &Node, token: &str) -> bool {
    // Both are SHA-256 digests; comparing them leaks nothing useful about the token.
    records::sha256_hex(token.as_bytes()) == node.admin_token_hash
}

/// Checks the administrator's token (401 otherwise).
pub fn require_admin(node: &Node, req: &HttpRequest) -> Result<(), ApiError> {
    let token = bearer(req).ok_or_else(|| {
        ApiError::unauthenticated(
            Realm::Admin,
            false,
            "send the administrator's token as `Authorization: Bearer <token>`",
        )
    })?;
    if is_admin_token(node, token) {
        Ok(())
    } else {
        Err(ApiError::unauthenticated(
            Realm::Admin,
            true,
            "wrong administrator token",
        ))
    }
}

/// The consumer a session token belongs to (401 otherwise).
pub fn consumer_of(node: &Node, req: &HttpRequest) -> Result<String, ApiError> {
    let token = bearer(req).ok_or_else(|| {
        ApiError::unauthenticated(
            Realm::Consumer,
            false,
            "send the session issued at your reader as `Authorization: Bearer <token>`",
        )
    })?;
    match node
        .store
        .get::<records::Session>(&records::session_key(token))?
    {
        Some(s) if s.expires_at > node.now() => Ok(s.consumer),
        Some(_) => Err(ApiError::unauthenticated(
            Realm::Consumer,
            true,
            "the session has expired: authenticate at your reader again",
        )),
        None => Err(ApiError::unauthenticated(
            Realm::Consumer,
            true,
            "unknown session",
        )),
    }
}

/// A JSON answer.
pub fn json(status: StatusCode, body: &impl serde::Serialize) -> HttpResponse {
    HttpResponse::build(status).json(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busiest_scopes_tried_first_hold_no_other_route() {
        for busy in BUSIEST_SCOPES {
            let under = |p: &str| p == busy || p.starts_with(&format!("{busy}/"));
            for (_, path) in ROUTES {
                let (scope, _) = segment_scope(path);
                if scope == busy {
                    continue;
                }
                assert!(!under(path), "{path} lies under the scope {busy}");
                assert!(
                    scope.is_empty() || !busy.starts_with(&format!("{scope}/")),
                    "{busy} lies under the scope {scope}"
                );
            }
            assert!(
                ROUTES.iter().any(|(_, p)| segment_scope(p).0 == busy),
                "no route in {busy}"
            );
        }
    }

    #[test]
    fn the_busiest_paths_tried_first_are_fixed_paths_of_the_table() {
        for busy in BUSIEST_FIXED_PATHS {
            assert!(
                ROUTES.iter().any(|(_, path)| *path == busy),
                "{busy} is not a route"
            );
            assert_eq!(segment_scope(busy).0, "", "{busy} has segments");
        }
    }

    /// `configure` registers fixed paths before paths with segments; that is only the same
    /// routing if no path with segments also matches a fixed path.
    #[test]
    fn no_path_with_segments_matches_a_fixed_path() {
        let fixed: Vec<&str> = ROUTES
            .iter()
            .map(|(_, p)| *p)
            .filter(|p| !p.contains('{'))
            .collect();
        for (_, pattern) in ROUTES.iter().filter(|(_, p)| p.contains('{')) {
            let def = actix_web::dev::ResourceDef::new(*pattern);
            for path in &fixed {
                assert!(
                    !def.is_match(path),
                    "{pattern} matches the fixed path {path}"
                );
            }
        }
        // The check can fail: a pattern with a segment does match a path of its shape.
        let def = actix_web::dev::ResourceDef::new("/v1/orders/{order}");
        assert!(def.is_match("/v1/orders/cancel"));
    }

    /// A path with segments is registered in a scope of its fixed part; scope and rest make
    /// the path again, and the scope ends before a `/`.
    #[test]
    fn paths_with_segments_split_into_scope_and_rest() {
        assert_eq!(segment_scope("/v1/orders"), ("", "/v1/orders"));
        assert_eq!(
            segment_scope("/v1/orders/{order}/cancel"),
            ("/v1/orders", "/{order}/cancel")
        );
        for (_, path) in ROUTES {
            let (scope, rest) = segment_scope(path);
            assert_eq!(format!("{scope}{rest}"), *path);
            assert!(rest.starts_with('/'), "{path}");
            assert_eq!(scope.is_empty(), !path.contains('{'), "{path}");
        }
    }
}
