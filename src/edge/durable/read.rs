//! `GET` (catch-up and long-poll; `live=sse` goes to `sse`), `HEAD` and `DELETE`.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::Response;

use super::access::Verb;
use super::offset::{self, Live, Offset, ReadFrom};
use super::reply::{self, Req};
use super::state::{self, DsStream, State};
use super::{now_ms, Durable};

/// Looks the request's stream up for `verb`: the stream, or the 403/404/410 to answer.
async fn live(d: &Durable, req: &Req, verb: Verb) -> Result<Arc<DsStream>, Response> {
    d.reach(&req.path, &req.caller, verb).await
}

/// Where a read starts, given the stream's state.
pub fn start(st: &State, from: ReadFrom) -> Offset {
    match from {
        ReadFrom::Start => st.start(),
        ReadFrom::Now => st.tail,
        ReadFrom::At(o) => o,
    }
}

/// Handles `GET`.
pub async fn get(d: &Arc<Durable>, req: &Req) -> Response {
    let q = match offset::parse_query(req.query.as_deref()) {
        Ok(q) => q,
        Err(e) => return reply::error(StatusCode::BAD_REQUEST, &e),
    };
    let stream = match live(d, req, Verb::Read).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if q.live == Live::Sse {
        return super::sse::respond(d, stream, q).await;
    }
    let mut changed = stream.changed.subscribe();
    let from = {
        let mut st = stream.state.lock().await;
        st.touch(now_ms());
        let from = start(&st, q.from);
        if q.live == Live::No || !st.after(from).is_empty() || st.meta.closed {
            return answer(req, &st, from, &q);
        }
        let _ = changed.borrow_and_update();
        from
    };
    let _ = tokio::time::timeout(d.settings.long_poll_timeout, changed.changed()).await;
    let st = stream.state.lock().await;
    if st.deleted {
        return reply::error(StatusCode::GONE, "stream was deleted");
    }
    answer(req, &st, from, &q)
}

/// The response to a read from `from`, with what the stream holds now.
fn answer(req: &Req, st: &State, from: Offset, q: &offset::ReadQuery) -> Response {
    let entries = st.after(from);
    let json = state::is_json(&st.meta.content_type);
    let mut b = reply::builder(StatusCode::OK)
        .header("stream-next-offset", st.tail.to_string())
        .header("stream-up-to-date", "true");
    if st.meta.closed {
        b = b.header("stream-closed", "true");
    }
    if q.live == Live::LongPoll {
        let cursor = offset::next_cursor(q.cursor, now_ms());
        b = b.header("stream-cursor", cursor.to_string());
        if entries.is_empty() {
            return reply::finish(b.status(StatusCode::NO_CONTENT), Body::empty());
        }
    }
    if q.from == ReadFrom::Now {
        b = b.header(header::CACHE_CONTROL, "no-store");
    }
    let etag = etag(st, from);
    if q.live == Live::No && req.header("if-none-match") == Some(etag.as_str()) {
        return reply::finish(
            reply::builder(StatusCode::NOT_MODIFIED).header(header::ETAG, etag),
            Body::empty(),
        );
    }
    b = reply::typed(b.header(header::ETAG, etag), &st.meta.content_type);
    reply::finish(b, state::body(entries, json))
}

/// The ETag of a read from `from`: a digest of the incarnation (its topic), the range and
/// whether the stream is closed, so it changes with any of them and names nothing internal.
fn etag(st: &State, from: Offset) -> String {
    let closed = if st.meta.closed { "c" } else { "o" };
    let text = format!("{}\n{from}\n{}\n{closed}", st.meta.topic, st.tail);
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    let hex: String = digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("\"{hex}\"")
}

/// Handles `HEAD`: the stream's metadata; it does not renew the TTL.
pub async fn head(d: &Arc<Durable>, req: &Req) -> Response {
    let stream = match live(d, req, Verb::Read).await {
        Ok(s) => s,
        Err(r) => {
            return reply::finish(
                reply::builder(r.status()).header(header::CACHE_CONTROL, "no-store"),
                Body::empty(),
            )
        }
    };
    let st = stream.state.lock().await;
    let b = reply::builder(StatusCode::OK)
        .header("stream-next-offset", st.tail.to_string())
        .header(header::CACHE_CONTROL, "no-store");
    let mut b = reply::typed(b, &st.meta.content_type);
    if let Some(ttl) = st.meta.ttl {
        b = b.header("stream-ttl", ttl.to_string());
    }
    if let Some(at) = st.meta.expires_at {
        b = b.header("stream-expires-at", at.to_rfc3339());
    }
    if st.meta.closed {
        b = b.header("stream-closed", "true");
    }
    reply::finish(b, Body::empty())
}

/// Handles `DELETE`.
pub async fn delete(d: &Arc<Durable>, req: &Req) -> Response {
    let stream = match live(d, req, Verb::Write).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    d.remove(&stream).await;
    reply::finish(reply::builder(StatusCode::NO_CONTENT), Body::empty())
}
