//! The API's errors: a status, a stable code and a message a person can act on, always as
//! `{"error":{"code","message"}}` JSON, with the headers HTTP asks of some statuses (`Allow`
//! on a 405, `WWW-Authenticate` on a 401, `Retry-After` on a 503).

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use onecard_engine::{EngineError, Refusal, RefusalKind};
use onecard_protocol::wire::{ErrorBody, ErrorDetail};

use crate::store::StoreError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    /// Headers the answer carries besides the body (`Allow`, `WWW-Authenticate`).
    pub headers: Vec<(&'static str, String)>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code: code.to_string(),
            message: message.into(),
            headers: Vec::new(),
        }
    }
    /// The same error with one more header on the answer.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> ApiError {
        self.headers.push((name, value.into()));
        self
    }
    pub fn bad_request(code: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message)
    }
    pub fn not_found(code: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, code, message)
    }
    pub fn conflict(code: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, code, message)
    }
    /// 401 for a route of `realm` (RFC 9110, 11.6.1: with its `WWW-Authenticate` challenge;
    /// RFC 6750, 3: `error="invalid_token"` when a token was sent and refused).
    pub fn unauthenticated(realm: Realm, token_sent: bool, message: impl Into<String>) -> ApiError {
        let mut challenge = format!("Bearer realm=\"{}\"", realm.name());
        if token_sent {
            challenge.push_str(", error=\"invalid_token\"");
        }
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
            .with_header("WWW-Authenticate", challenge)
    }
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// A business refusal of the engine's, with the status that fits its kind.
    pub fn refusal(r: &Refusal) -> ApiError {
        let status = match r.kind {
            RefusalKind::Conflict | RefusalKind::State | RefusalKind::Funds => StatusCode::CONFLICT,
            RefusalKind::Amount | RefusalKind::Invalid | RefusalKind::Code => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            RefusalKind::Unknown => StatusCode::NOT_FOUND,
            RefusalKind::Credit => StatusCode::PAYMENT_REQUIRED,
            // The consumer's own payment rules forbid it.
            RefusalKind::Gateway => StatusCode::FORBIDDEN,
        };
        ApiError::new(status, &r.code_str().replace(':', "_"), r.message.clone())
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code.clone(),
                message: self.message.clone(),
                request_id: None,
            },
        }
    }
}

/// The protection spaces of the API's three kinds of bearer credentials, named in the
/// `WWW-Authenticate` challenge of a 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Realm {
    /// The administrator's token (`/v1/admin/...`).
    Admin,
    /// A merchant's API key (`/v1/merchant`, `/v1/orders...`).
    Merchant,
    /// A consumer's session token (`/v1/consumer/...`).
    Consumer,
}

impl Realm {
    pub fn name(self) -> &'static str {
        match self {
            Realm::Admin => "onecard-admin",
            Realm::Merchant => "onecard-merchant",
            Realm::Consumer => "onecard-consumer",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut r = HttpResponse::build(self.status);
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.insert_header(("Retry-After", "1"));
        }
        for (name, value) in &self.headers {
            r.append_header((*name, value.as_str()));
        }
        r.json(self.body())
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        match e {
            EngineError::Overloaded(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "the node is at its limit of commands in progress; retry shortly",
            ),
            EngineError::Config(m) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_configured",
                format!("this node is not configured for it: {m}"),
            ),
            EngineError::Unavailable(m) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", m)
            }
            other => {
                tracing::error!(error = %other, "engine error");
                ApiError::internal(format!("the engine failed: {other}"))
            }
        }
    }
}

impl From<crate::app::AppError> for ApiError {
    fn from(e: crate::app::AppError) -> ApiError {
        use crate::app::AppError;
        match e {
            AppError::UnknownOrder(order) => {
                ApiError::not_found("unknown_order", format!("no order {order:?}"))
            }
            AppError::OrderBusy => ApiError::conflict("order_busy", e.to_string()),
            AppError::Engine(e) => e.into(),
            AppError::Store(e) => e.into(),
            AppError::Internal(m) => ApiError::internal(m),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        tracing::error!(error = %e, "node store error");
        ApiError::internal(e.to_string())
    }
}
