//! The edge's error type: every refusal is a precise status with a JSON body
//! `{"error":{"code","message"}}`, logged and counted by the rejection middleware.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::event::RequestError;
use crate::stream::subscription;

/// A refused HTTP request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed input: bad JSON, type, id or resume point.
    #[error("{message}")]
    BadRequest {
        /// Bounded code, also the metric reason.
        code: &'static str,
        /// Details for the client.
        message: String,
    },
    /// Missing or invalid bearer token; the code says which check failed.
    #[error("{}", unauthorized_message(.0))]
    Unauthorized(&'static str),
    /// The caller's token does not grant this stream or type. Unknown streams the caller could
    /// not read anyway answer the same, so ids cannot be probed.
    #[error("{0}")]
    Forbidden(String),
    /// Over a per-client limit; retry after the given seconds.
    #[error("{message}")]
    TooMany {
        /// Bounded code.
        code: &'static str,
        /// Details.
        message: String,
        /// Seconds until a retry may succeed (`Retry-After`).
        retry_after: u64,
    },
    /// Over a server-wide or per-stream limit.
    #[error("{message}")]
    Overloaded {
        /// Bounded code.
        code: &'static str,
        /// Details.
        message: String,
    },
    /// No such stream.
    #[error("{0}")]
    NotFound(String),
    /// The stream existed and its retention expired.
    #[error("{0}")]
    Gone(String),
    /// The request conflicts with the stream's state.
    #[error("{message}")]
    Conflict {
        /// Bounded code.
        code: &'static str,
        /// Details.
        message: String,
    },
    /// The body is over the configured limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// Well-formed but not servable, such as an unknown handler.
    #[error("{message}")]
    Unprocessable {
        /// Bounded code.
        code: &'static str,
        /// Details.
        message: String,
    },
    /// Kafka or the store is unavailable.
    #[error("{0}")]
    Unavailable(String),
    /// The cap on live stream topics is reached.
    #[error("{0}")]
    Capacity(String),
}

/// Marks a response as a refusal, for the counting middleware.
#[derive(Clone, Debug)]
pub struct Rejection {
    /// Bounded reason label.
    pub code: &'static str,
    /// The message sent to the client.
    pub message: String,
}

impl ApiError {
    /// The bounded code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. }
            | ApiError::Conflict { code, .. }
            | ApiError::Unprocessable { code, .. } => code,
            ApiError::Unauthorized(code)
            | ApiError::TooMany { code, .. }
            | ApiError::Overloaded { code, .. } => code,
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::Gone(_) => "gone",
            ApiError::PayloadTooLarge(_) => "too_large",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Capacity(_) => "stream_capacity",
        }
    }

    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::TooMany { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_) | ApiError::Capacity(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The JSON body of this error.
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"code": self.code(), "message": self.to_string()}})
    }
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> Self {
        match e {
            RequestError::TooLarge { .. } => ApiError::PayloadTooLarge(e.to_string()),
            other => ApiError::BadRequest {
                code: other.reason(),
                message: other.to_string(),
            },
        }
    }
}

impl From<sluice_wire::frames::FrameError> for ApiError {
    fn from(e: sluice_wire::frames::FrameError) -> Self {
        ApiError::BadRequest {
            code: e.code,
            message: e.message,
        }
    }
}

impl From<subscription::Error> for ApiError {
    fn from(e: subscription::Error) -> Self {
        match e {
            subscription::Error::NotFound(_) => ApiError::NotFound(e.to_string()),
            subscription::Error::Gone(_) => ApiError::Gone(e.to_string()),
            subscription::Error::ResumePointAhead { .. } => ApiError::BadRequest {
                code: "last_event_id_ahead",
                message: e.to_string(),
            },
            other => ApiError::Unavailable(other.to_string()),
        }
    }
}

impl From<crate::store::Error> for ApiError {
    fn from(e: crate::store::Error) -> Self {
        ApiError::Unavailable(e.to_string())
    }
}

fn unauthorized_message(code: &str) -> String {
    match code {
        "missing_token" => "a bearer token is required".into(),
        "invalid_token" => "the bearer token is not valid here".into(),
        other => format!("the bearer token was refused ({other})"),
    }
}

impl ApiError {
    /// The `Retry-After` seconds of a limit refusal.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::TooMany { retry_after, .. } => Some(*retry_after),
            ApiError::Overloaded { .. } | ApiError::Capacity(_) => Some(1),
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        use axum::http::{header, HeaderValue};
        let mut resp = (self.status(), Json(self.body())).into_response();
        if let ApiError::Unauthorized(code) = &self {
            let value = if *code == "missing_token" {
                HeaderValue::from_static("Bearer")
            } else {
                HeaderValue::from_static("Bearer error=\"invalid_token\"")
            };
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, value);
        }
        if let Some(secs) = self.retry_after() {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp.extensions_mut().insert(Rejection {
            code: self.code(),
            message: self.to_string(),
        });
        resp
    }
}
