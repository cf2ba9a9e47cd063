//! The one error type of the API, and the status and JSON body each variant is answered with.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::envd::EnvdError;
use crate::kernel::KernelError;
use crate::protocol::BadRequest;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    TooManyContexts(String),
    #[error("{0}")]
    Kernel(#[from] KernelError),
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::TooManyContexts(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Kernel(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl From<BadRequest> for ApiError {
    fn from(e: BadRequest) -> Self {
        Self::BadRequest(e.0)
    }
}

impl From<EnvdError> for ApiError {
    fn from(e: EnvdError) -> Self {
        match e {
            EnvdError::Unauthorized => Self::Unauthorized(e.to_string()),
            EnvdError::Unavailable(_) => Self::Unavailable(e.to_string()),
        }
    }
}

/// `{"code": <status>, "message": "…"}`, the project's error body.
pub fn json_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        json!({"code": status.as_u16(), "message": message}).to_string(),
    )
        .into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(%status, error = %self, "request failed");
        }
        json_error(status, &self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        for (e, s) in [
            (ApiError::BadRequest("x".into()), 400),
            (EnvdError::Unauthorized.into(), 401),
            (ApiError::NotFound("x".into()), 404),
            (ApiError::TooManyContexts("x".into()), 429),
            (KernelError::Died("x".into()).into(), 500),
            (EnvdError::Unavailable("x".into()).into(), 503),
        ] {
            assert_eq!(e.status().as_u16(), s, "{e}");
        }
    }
}
