//! The API's errors: a status, a stable code and a message a person can act on, always as
//! `{"error":{"code","message"}}` JSON.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use onecard_engine::{EngineError, Refusal, RefusalKind};
use onecard_terminal::wire::{ErrorBody, ErrorDetail};

use crate::store::StoreError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
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
        }
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
    pub fn unauthenticated(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
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

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut r = HttpResponse::build(self.status);
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.insert_header(("Retry-After", "1"));
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

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        tracing::error!(error = %e, "node store error");
        ApiError::internal(e.to_string())
    }
}
