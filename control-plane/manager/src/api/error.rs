//! Every API error is JSON `{code, message}` with the status the E2B SDK maps to its exception
//! classes; transient errors carry `Retry-After` (and the SDK retries them), the others
//! `Should-Retry: false` where the SDK would otherwise retry.

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde_json::json;

use crate::keys::KeyError;
use crate::model::BackendError;

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub retry_after: Option<Duration>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            retry_after: None,
        }
    }
    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, m)
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, m)
    }
    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Invalid API key")
    }
    pub fn conflict(m: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, m)
    }
    pub fn internal(m: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, m)
    }
    pub fn unavailable(m: impl Into<String>, retry_after: Duration) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: m.into(),
            retry_after: Some(retry_after),
        }
    }
}

impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::NotFound(m) => ApiError::not_found(m),
            BackendError::BadRequest(m) => ApiError::bad_request(m),
            BackendError::Conflict(m) => ApiError::conflict(m),
            BackendError::Unavailable {
                message,
                retry_after,
            } => ApiError::unavailable(message, retry_after),
            BackendError::Internal(m) => ApiError::internal(m),
        }
    }
}

impl From<KeyError> for ApiError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::BadRequest(m) => ApiError::bad_request(m),
            KeyError::Forbidden(m) => ApiError::new(StatusCode::FORBIDDEN, m),
            KeyError::NotFound(m) => ApiError::not_found(m),
            KeyError::Internal(m) => ApiError::internal(m),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "code": self.status.as_u16(), "message": self.message });
        let mut resp = (self.status, axum::Json(body)).into_response();
        let headers = resp.headers_mut();
        match self.retry_after {
            Some(d) => {
                let secs = d.as_secs().max(1).to_string();
                if let Ok(v) = HeaderValue::from_str(&secs) {
                    headers.insert(header::RETRY_AFTER, v);
                }
            }
            // The SDK retries 429/502/503/504 unless told not to.
            None if matches!(self.status.as_u16(), 429 | 502 | 503 | 504) => {
                headers.insert("should-retry", HeaderValue::from_static("false"));
            }
            None => {}
        }
        resp
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn errors_are_json_with_retry_hints() {
        let r = ApiError::unavailable("pool empty", Duration::from_millis(200)).into_response();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "1");
        let b = r.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v, json!({"code": 503, "message": "pool empty"}));
        let r = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "slow down").into_response();
        assert_eq!(r.headers()["should-retry"], "false");
        let r = ApiError::from(BackendError::Conflict("x".into())).into_response();
        assert_eq!(r.status(), 409);
    }
}
