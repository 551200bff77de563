//! The subscription routes under `{base}/v1/stream/__ds/`, routed before streams so no
//! application stream can be named `__ds`:
//!
//! | route | method | |
//! |---|---|---|
//! | `jwks.json` | GET | the webhook signing keys |
//! | `subscriptions/{id}` | PUT, GET, DELETE | create or re-confirm, read, delete |
//! | `subscriptions/{id}/streams` | POST | link explicit streams |
//! | `subscriptions/{id}/streams/{path}` | DELETE | unlink one |
//! | `subscriptions/{id}/claim` | POST | a pull-wake worker claims the wake |
//! | `subscriptions/{id}/{callback,ack,release}` | POST | carry the wake's own token |
//!
//! The last three answer to the wake's token, not the edge's authentication, so they are served
//! by [`token_routes`], outside it. The others answer to the caller: only a subscription's owner
//! or an administrator reaches it.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

use super::cursor::{Via, WakeReply};
use super::{Durable, Refusal};
use crate::edge::auth::Identity;
use crate::edge::durable::reply;

/// Longest subscription id.
const MAX_ID: usize = 256;

/// A JSON answer with the protocol's usual headers.
fn answer(status: StatusCode, body: &Value, content_type: &str) -> Response {
    let b = reply::builder(status).header(header::CONTENT_TYPE, content_type);
    reply::finish(b, body.to_string())
}

fn refused(d: &Durable, r: Refusal) -> Response {
    d.metrics.durable_refused(r.code, &r.message);
    let mut err = json!({"code": r.code, "message": r.message});
    if let Some(Value::Object(extra)) = r.extra {
        for (k, v) in extra {
            err[k] = v;
        }
    }
    answer(r.status, &json!({ "error": err }), "application/json")
}

fn done(d: &Durable, r: Result<(StatusCode, Value), Refusal>) -> Response {
    match r {
        Ok((status, body)) => answer(status, &body, "application/json"),
        Err(e) => refused(d, e),
    }
}

fn no_content(d: &Durable, r: Result<(), Refusal>) -> Response {
    match r {
        Ok(()) => reply::finish(
            reply::builder(StatusCode::NO_CONTENT),
            axum::body::Body::empty(),
        ),
        Err(e) => refused(d, e),
    }
}

/// A subscription id from the path: percent-decoded, 1-256 bytes, no slash or control byte.
fn decode_id(raw: &str) -> Result<String, Refusal> {
    let id = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| Refusal::invalid("subscription id is not UTF-8"))?;
    if id.is_empty() || id.len() > MAX_ID || id.chars().any(|c| c == '/' || c.is_control()) {
        return Err(Refusal::invalid(
            "subscription id must be 1-256 bytes, no slash",
        ));
    }
    Ok(id.into_owned())
}

fn jwks(d: &Durable) -> Response {
    let b = reply::builder(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/jwk-set+json")
        .header(header::CACHE_CONTROL, "public, max-age=300");
    reply::finish(b, d.subs.keys().jwks().to_string())
}

/// Handles a request below `{base}/v1/stream/__ds` (`rest` is what follows it).
pub(in crate::edge::durable) async fn control(
    d: &Arc<Durable>,
    who: &Identity,
    method: &Method,
    rest: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    let parts: Vec<&str> = rest.trim_start_matches('/').splitn(4, '/').collect();
    let r = match (method, parts.as_slice()) {
        (&Method::GET, ["jwks.json"]) => return jwks(d),
        (_, ["subscriptions", id, tail @ ..]) => match decode_id(id) {
            Ok(id) => subscription(d, who, method, &id, tail, headers, body).await,
            Err(e) => return refused(d, e),
        },
        _ => None,
    };
    r.unwrap_or_else(|| {
        let nf = Refusal::not_found();
        refused(
            d,
            Refusal {
                message: "no such Durable Streams control route".into(),
                ..nf
            },
        )
    })
}

async fn subscription(
    d: &Arc<Durable>,
    who: &Identity,
    method: &Method,
    id: &str,
    tail: &[&str],
    headers: &HeaderMap,
    body: &Bytes,
) -> Option<Response> {
    Some(match (method, tail) {
        (&Method::PUT, []) => done(
            d,
            d.sub_put(id, who, body).await.map(|(created, v)| {
                (
                    if created {
                        StatusCode::CREATED
                    } else {
                        StatusCode::OK
                    },
                    v,
                )
            }),
        ),
        (&Method::GET, []) => done(d, d.sub_get(id, who).await.map(|v| (StatusCode::OK, v))),
        (&Method::DELETE, []) => {
            d.sub_delete(id, who).await;
            no_content(d, Ok(()))
        }
        (&Method::POST, ["streams"]) => no_content(d, d.sub_add_streams(id, who, body).await),
        (&Method::DELETE, ["streams", path]) => {
            let path = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
            no_content(d, d.sub_remove_stream(id, who, &path).await)
        }
        (&Method::POST, ["claim"]) => {
            #[derive(serde::Deserialize)]
            struct Claim {
                worker: String,
            }
            match serde_json::from_slice::<Claim>(body) {
                Ok(c) if !c.worker.is_empty() && c.worker.len() <= MAX_ID => done(
                    d,
                    d.sub_claim(id, who, &c.worker)
                        .await
                        .map(|v| (StatusCode::OK, v)),
                ),
                _ => refused(
                    d,
                    Refusal::invalid("body must be {\"worker\": \"name\"} (1-256 bytes)"),
                ),
            }
        }
        (&Method::POST, [action]) => wake_reply(d, id, action, headers, body).await?,
        _ => return None,
    })
}

async fn wake_reply(
    d: &Arc<Durable>,
    id: &str,
    action: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Option<Response> {
    let via = match action {
        "callback" => Via::Callback,
        "ack" => Via::Ack,
        "release" => Via::Release,
        _ => return None,
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(crate::edge::bearer)
        .unwrap_or("");
    let reply: WakeReply = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(_) => return Some(refused(d, Refusal::invalid("body must be a wake reply"))),
    };
    Some(match d.sub_reply(id, via, token, reply).await {
        Ok(Some(v)) => answer(StatusCode::OK, &v, "application/json"),
        Ok(None) => no_content(d, Ok(())),
        Err(e) => refused(d, e),
    })
}

/// The routes that answer to their own credentials (a wake's token) or to none (the public
/// keys), served outside the edge's authentication.
pub fn token_routes(d: Arc<Durable>) -> Router {
    let base = d.settings.base_path.trim_end_matches('/').to_owned();
    let at = |action: &str| format!("{base}/v1/stream/__ds/subscriptions/{{id}}/{action}");
    Router::new()
        .route(
            &format!("{base}/v1/stream/__ds/jwks.json"),
            get(|State(d): State<Arc<Durable>>| async move { jwks(&d) }),
        )
        .route(&at("callback"), post(by_token))
        .route(&at("ack"), post(by_token))
        .route(&at("release"), post(by_token))
        .with_state(d)
}

async fn by_token(
    State(d): State<Arc<Durable>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // The id as sent (the `Path` extractor would decode it before `decode_id` does).
    let mut back = uri.path().rsplit('/');
    let action = back.next().unwrap_or("");
    let id = match decode_id(back.next().unwrap_or("")) {
        Ok(id) => id,
        Err(e) => return refused(&d, e),
    };
    match wake_reply(&d, &id, action, &headers, &body).await {
        Some(r) => r,
        None => refused(&d, Refusal::not_found()),
    }
}
