//! What every Durable Streams response carries, and the request parts the handlers read.
//!
//! Responses are built here by hand, not with axum's conveniences: the content type must be the
//! stream's, byte for byte, never one with a charset added.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;

use super::offset::Offset;

/// The request parts the handlers use.
pub struct Req {
    /// The stream's path below the base path (`/v1/stream/...`): its key.
    pub path: String,
    /// The full request path, for `Location`.
    pub full_path: String,
    /// The raw query string.
    pub query: Option<String>,
    /// The request headers.
    pub headers: HeaderMap,
}

impl Req {
    /// A header's value, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Whether a `true` flag header (`Stream-Closed`) is set.
    pub fn flag(&self, name: &str) -> bool {
        self.header(name)
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
    }
}

/// Headers a browser may read.
const EXPOSE: &str = "Stream-Next-Offset, Stream-Cursor, Stream-Up-To-Date, Stream-Closed, \
    Stream-TTL, Stream-Expires-At, Producer-Epoch, Producer-Seq, Producer-Expected-Seq, \
    Producer-Received-Seq, ETag, Content-Type, Location";

/// A response builder with the headers every response carries.
pub fn builder(status: StatusCode) -> axum::http::response::Builder {
    Response::builder()
        .status(status)
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header("cross-origin-resource-policy", "cross-origin")
        .header(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")
        .header(header::ACCESS_CONTROL_EXPOSE_HEADERS, EXPOSE)
}

/// Finishes a builder.
pub fn finish(b: axum::http::response::Builder, body: impl Into<Body>) -> Response {
    b.body(body.into()).unwrap_or_else(|_| {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        r
    })
}

/// An error response with a short text body.
pub fn error(status: StatusCode, message: &str) -> Response {
    finish(
        builder(status).header(header::CONTENT_TYPE, "text/plain"),
        message.to_owned(),
    )
}

/// A 409 for a closed stream: where it ends, and that it is closed.
pub fn closed_conflict(tail: Offset) -> Response {
    finish(
        builder(StatusCode::CONFLICT)
            .header("stream-closed", "true")
            .header("stream-next-offset", tail.to_string())
            .header(header::CONTENT_TYPE, "text/plain"),
        "stream is closed",
    )
}

/// The answer to a CORS preflight.
pub fn preflight() -> Response {
    finish(
        builder(StatusCode::NO_CONTENT)
            .header(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                "GET, POST, PUT, DELETE, HEAD, OPTIONS",
            )
            .header(header::ACCESS_CONTROL_ALLOW_HEADERS, "*")
            .header(header::ACCESS_CONTROL_MAX_AGE, "86400"),
        Body::empty(),
    )
}

/// A header value from text that may hold anything a client sent.
pub fn value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s)
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"))
}
