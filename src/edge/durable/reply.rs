//! What every Durable Streams response carries, and the request parts the handlers read.
//!
//! Responses are built here by hand, not with axum's conveniences: the content type must be the
//! stream's, byte for byte, never one with a charset added. Every response is inert: a stream's
//! body is never sniffed (`nosniff`), never runs as a document (`Content-Security-Policy:
//! sandbox`), and types a browser would render actively (HTML, SVG, XML, scripts) are
//! attachments. CORS comes from the edge's policy (`request::cors`), not from here.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;

use super::offset::Offset;

/// The request parts the handlers use.
pub struct Req {
    /// The stream's path below the base path (`/v1/stream/...`): its key.
    pub path: String,
    /// The raw query string.
    pub query: Option<String>,
    /// The request headers.
    pub headers: HeaderMap,
    /// Who is asking.
    pub caller: crate::edge::auth::Identity,
    /// The key the caller's request rate is counted under.
    pub rate_key: String,
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

/// Headers a browser may read (with the edge's CORS policy).
pub const EXPOSE: &[&str] = &[
    "stream-next-offset",
    "stream-cursor",
    "stream-up-to-date",
    "stream-closed",
    "stream-ttl",
    "stream-expires-at",
    "stream-sse-data-encoding",
    "producer-epoch",
    "producer-seq",
    "producer-expected-seq",
    "producer-received-seq",
    "etag",
    "content-type",
    "location",
];

/// A response builder with the headers every response carries.
pub fn builder(status: StatusCode) -> axum::http::response::Builder {
    Response::builder()
        .status(status)
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::CONTENT_SECURITY_POLICY, "sandbox")
        .header("cross-origin-resource-policy", "same-origin")
}

/// Types served as they are; any other (HTML, SVG, XML, scripts, …) is an attachment.
const PASSIVE: &[&str] = &[
    "application/json",
    "application/octet-stream",
    "application/x-ndjson",
    "application/ndjson",
    "text/plain",
    "text/csv",
    "text/event-stream",
];

/// A builder's `Content-Type` for a stream of `content_type`, with `Content-Disposition:
/// attachment` for a type a browser would render actively.
pub fn typed(
    b: axum::http::response::Builder,
    content_type: &str,
) -> axum::http::response::Builder {
    let b = b.header(header::CONTENT_TYPE, value(content_type));
    let n = super::state::normalise(content_type);
    if PASSIVE.contains(&n.as_str()) || (n.starts_with("image/") && !n.contains("svg")) {
        b
    } else {
        b.header(header::CONTENT_DISPOSITION, "attachment")
    }
}

/// The answer for a stream that is missing or that the caller may not reach: the same either way.
pub fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "stream not found")
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

/// The answer to an edge refusal (a rate limit, say): its status, `Retry-After` if it has one,
/// and its message.
pub fn refused(e: &crate::edge::ApiError) -> Response {
    let b = builder(e.status()).header(header::CONTENT_TYPE, "text/plain");
    let b = match e.retry_after() {
        Some(secs) => b.header(header::RETRY_AFTER, secs.to_string()),
        None => b,
    };
    finish(b, e.to_string())
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

/// The answer to an `OPTIONS` request the edge's CORS policy did not answer (no CORS origins
/// configured, or not a preflight): the methods and headers, without allowing any origin.
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
