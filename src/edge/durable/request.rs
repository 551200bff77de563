//! Routing a Durable Streams request: its caller, its path (bounded: at most
//! [`MAX_PATH_BYTES`] bytes and [`MAX_SEGMENTS`] segments below `/v1/stream/`) and its body
//! (refused by `Content-Length` before it is read, read no further than
//! `durable.max_append_bytes`, within `limits.request_timeout`), then the handler of its method.
//! Also the CORS policy of these routes: the edge's, with the protocol's methods and headers.
//!
//! The response itself is not bounded by the request timeout: a long-poll answers when
//! `durable.long_poll_timeout` says, and a write is never cut off between Kafka and the state.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Extension, Request, State};
use axum::http::{header, HeaderMap, HeaderName, Method, StatusCode};
use axum::response::Response;
use axum::routing::any;
use axum::Router;
use futures::StreamExt;

use super::{append, create, read, reply, subs, Durable};
use crate::edge::access::Caller;

/// Longest stream path below `/v1/stream/`, bytes.
pub const MAX_PATH_BYTES: usize = 1_024;
/// Most segments of a stream path.
pub const MAX_SEGMENTS: usize = 64;

/// The Durable Streams routes, under the configured base path. Bodies are read within
/// `request_timeout`.
pub fn routes(durable: Arc<Durable>, request_timeout: Duration) -> Router {
    let base = durable.settings.base_path.trim_end_matches('/').to_owned();
    Router::new()
        .route(
            &format!("{base}/v1/stream/{{*name}}"),
            any(
                move |State(d): State<Arc<Durable>>,
                      Extension(caller): Extension<Caller>,
                      req: Request| dispatch(d, caller, req, request_timeout),
            ),
        )
        .with_state(durable)
}

/// The edge's CORS layer widened to the protocol: its methods, request headers and the response
/// headers a browser may read.
pub fn cors(edge: tower_http::cors::CorsLayer) -> tower_http::cors::CorsLayer {
    let names = |list: &[&'static str]| -> Vec<HeaderName> {
        list.iter().map(|n| HeaderName::from_static(n)).collect()
    };
    edge.allow_methods([
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::DELETE,
    ])
    .allow_headers(names(&[
        "authorization",
        "content-type",
        "if-none-match",
        "stream-ttl",
        "stream-expires-at",
        "stream-closed",
        "stream-seq",
        "stream-forked-from",
        "stream-fork-offset",
        "stream-fork-sub-offset",
        "producer-id",
        "producer-epoch",
        "producer-seq",
    ]))
    .expose_headers(names(reply::EXPOSE))
}

async fn dispatch(d: Arc<Durable>, caller: Caller, req: Request, timeout: Duration) -> Response {
    let (parts, body) = req.into_parts();
    let base = d.settings.base_path.trim_end_matches('/');
    let raw = parts.uri.path();
    let path = raw.strip_prefix(base).unwrap_or(raw).to_owned();
    let has_body = matches!(parts.method, Method::PUT | Method::POST);
    let body = match has_body {
        true => match read_body(&d, &parts.headers, body, timeout).await {
            Ok(b) => b,
            Err(r) => return r,
        },
        false => Bytes::new(),
    };
    if let Some(rest) = path.strip_prefix("/v1/stream/__ds") {
        if rest.is_empty() || rest.starts_with('/') {
            let (id, method, headers) = (&caller.identity, &parts.method, &parts.headers);
            return subs::routes::control(&d, id, method, rest, headers, &body).await;
        }
    }
    if let Err(why) = check_path(&path) {
        d.metrics
            .edge_rejected("ds_bad_path", &format!("{path:.80}: {why}"));
        return reply::error(StatusCode::BAD_REQUEST, why);
    }
    let req = reply::Req {
        path,
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers,
        caller: caller.identity,
        rate_key: caller.rate_key,
    };
    match parts.method {
        Method::PUT => create::put(&d, &req, body).await,
        Method::POST => append::post(&d, &req, body).await,
        Method::GET => read::get(&d, &req).await,
        Method::HEAD => read::head(&d, &req).await,
        Method::DELETE => read::delete(&d, &req).await,
        Method::OPTIONS => reply::preflight(),
        _ => reply::error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
    }
}

/// Checks a stream path (`/v1/stream/...`) against the bounds.
pub fn check_path(path: &str) -> Result<(), &'static str> {
    let rel = path.strip_prefix("/v1/stream/").unwrap_or(path);
    if rel.len() > MAX_PATH_BYTES {
        return Err("stream path longer than 1024 bytes");
    }
    if rel.split('/').filter(|s| !s.is_empty()).count() > MAX_SEGMENTS {
        return Err("stream path deeper than 64 segments");
    }
    Ok(())
}

/// Reads a body of at most `durable.max_append_bytes`: refused by its `Content-Length` before
/// any of it is read, and a chunked one as soon as it passes the limit; 408 when it does not
/// arrive within `timeout`.
async fn read_body(
    d: &Durable,
    headers: &HeaderMap,
    body: Body,
    timeout: Duration,
) -> Result<Bytes, Response> {
    let limit = d.settings.max_append_bytes;
    let too_large = |what: &str| {
        d.metrics.edge_rejected("too_large", what);
        reply::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body larger than durable.max_append_bytes",
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large("durable: declared Content-Length over the limit"));
    }
    let read = async {
        let mut out = Vec::new();
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|_| None)?;
            if out.len() + chunk.len() > limit {
                return Err(Some(()));
            }
            out.extend_from_slice(&chunk);
        }
        Ok::<_, Option<()>>(Bytes::from(out))
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(Some(()))) => Err(too_large("durable: body over the limit")),
        Ok(Err(None)) => Err(reply::error(StatusCode::BAD_REQUEST, "body not read")),
        Err(_) => {
            d.metrics.edge_rejected(
                "request_timeout",
                &format!("durable: body not received within {timeout:?} (limits.request_timeout)"),
            );
            Err(reply::error(
                StatusCode::REQUEST_TIMEOUT,
                "request not received in time (limits.request_timeout)",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_bounded_in_bytes_and_segments() {
        assert!(check_path("/v1/stream/a/b").is_ok());
        let long = format!("/v1/stream/{}", "x".repeat(MAX_PATH_BYTES + 1));
        assert_eq!(check_path(&long), Err("stream path longer than 1024 bytes"));
        let exact = format!("/v1/stream/{}", "x".repeat(MAX_PATH_BYTES));
        assert!(check_path(&exact).is_ok());
        let deep = format!("/v1/stream/{}", "a/".repeat(MAX_SEGMENTS + 1));
        assert_eq!(
            check_path(&deep),
            Err("stream path deeper than 64 segments")
        );
        let max = format!("/v1/stream/{}", "a/".repeat(MAX_SEGMENTS));
        assert!(check_path(&max).is_ok());
    }
}
