//! `PUT`: creates a stream, or a fork of one, or confirms an identical existing one (200).
//! Creating needs a token with a `sub` (its owner) or an administrator; forking needs read access
//! to the source; re-confirming needs write access. A stream the caller may not write is answered
//! as every refused creation is, whatever its configuration.

use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{header, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Utc};

use super::access::{self, Verb};
use super::offset::Offset;
use super::reply::{self, Req};
use super::state::{self, DsStream, Entry, ForkOf, Meta, State};
use super::{now_ms, Durable, Found};

/// A creation request, validated.
struct Create {
    content_type: Option<String>,
    ttl: Option<u64>,
    expires_at: Option<DateTime<Utc>>,
    closed: bool,
    fork: Option<(String, Option<Offset>, u64)>,
}

fn whole_number(s: &str) -> Option<u64> {
    let ok =
        s == "0" || (!s.starts_with('0') && !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()));
    if ok {
        s.parse().ok()
    } else {
        None
    }
}

fn parse(req: &Req) -> Result<Create, &'static str> {
    let ttl = req.header("stream-ttl");
    let expires = req.header("stream-expires-at");
    if ttl.is_some() && expires.is_some() {
        return Err("Stream-TTL and Stream-Expires-At are exclusive");
    }
    let ttl = match ttl {
        Some(t) => Some(whole_number(t).ok_or("Stream-TTL must be whole seconds")?),
        None => None,
    };
    let expires_at = match expires {
        Some(e) => Some(
            DateTime::parse_from_rfc3339(e)
                .map_err(|_| "Stream-Expires-At must be an RFC 3339 time")?
                .with_timezone(&Utc),
        ),
        None => None,
    };
    let source = req.header("stream-forked-from").map(str::to_owned);
    let sub = match req.header("stream-fork-sub-offset") {
        Some(_) if source.is_none() => {
            return Err("Stream-Fork-Sub-Offset needs Stream-Forked-From")
        }
        Some(s) => whole_number(s).ok_or("Stream-Fork-Sub-Offset must be a whole number")?,
        None => 0,
    };
    let at = match req.header("stream-fork-offset") {
        Some(o) => Some(Offset::parse(o).ok_or("malformed Stream-Fork-Offset")?),
        None => None,
    };
    let content_type = req
        .header("content-type")
        .filter(|c| !c.trim().is_empty())
        .map(str::to_owned);
    Ok(Create {
        content_type,
        ttl,
        expires_at,
        closed: req.flag("stream-closed"),
        fork: source.map(|s| (s, at, sub)),
    })
}

/// The refusal of a creation the caller may not make: the same for a token without `sub` and for
/// a path another owner holds, so it tells nothing about the path.
fn not_yours(d: &Durable) -> Response {
    d.metrics.edge_rejected(
        "forbidden",
        "durable: PUT on a path this token may not create",
    );
    reply::error(
        StatusCode::FORBIDDEN,
        "this token may not create or change a stream at this path",
    )
}

/// Handles `PUT`.
pub async fn put(d: &Arc<Durable>, req: &Req, body: Bytes) -> Response {
    let c = match parse(req) {
        Ok(c) => c,
        Err(e) => return reply::error(StatusCode::BAD_REQUEST, e),
    };
    let Ok(owner) = access::creator(&req.caller) else {
        return not_yours(d);
    };
    let _creating = d.creating.lock().await;
    match d.find(&req.path).await {
        Found::Gone(s) if access::allows(&req.caller, &s, Verb::Write) => {
            return reply::error(StatusCode::CONFLICT, "stream was deleted")
        }
        Found::Live(s) if access::allows(&req.caller, &s, Verb::Write) => {
            return same_or_conflict(&s, &c).await
        }
        Found::Gone(_) | Found::Live(_) => return not_yours(d),
        Found::Missing => {}
    }
    if d.count() >= d.settings.max_streams {
        return reply::error(StatusCode::SERVICE_UNAVAILABLE, "too many streams");
    }
    if !req.caller.is_admin() {
        if let Err(e) = d.rate.check(&req.rate_key) {
            d.metrics
                .edge_rejected(e.code(), "durable: stream creations over the request rate");
            return reply::refused(&e);
        }
    }
    let slot = match d.quotas.admit_stream(owner.as_deref()) {
        Ok(slot) => slot,
        Err(over) => return d.over_quota(over),
    };
    match create(d, req, c, owner, body).await {
        Ok(r) => {
            slot.keep();
            r
        }
        Err(r) => r,
    }
}

/// An identical re-creation is 200; anything else about the existing stream differing is 409.
async fn same_or_conflict(existing: &Arc<DsStream>, c: &Create) -> Response {
    let mut st = existing.state.lock().await;
    let m = &st.meta;
    let type_matches = c
        .content_type
        .as_deref()
        .is_none_or(|t| state::normalise(t) == state::normalise(&m.content_type));
    let fork_matches = match (&c.fork, &m.fork_of) {
        (None, None) => true,
        (Some((src, at, sub)), Some(f)) => {
            *src == f.source && at.is_none_or(|a| a == f.offset) && *sub == f.sub_offset
        }
        _ => false,
    };
    let expiry_matches = if m.fork_of.is_some() && c.ttl.is_none() && c.expires_at.is_none() {
        true
    } else {
        c.ttl == m.ttl && c.expires_at == m.expires_at
    };
    if !(type_matches && fork_matches && expiry_matches && c.closed == m.closed) {
        return reply::error(
            StatusCode::CONFLICT,
            "stream exists with another configuration",
        );
    }
    st.touch(now_ms());
    let b = reply::builder(StatusCode::OK).header("stream-next-offset", st.tail.to_string());
    let b = reply::typed(b, &st.meta.content_type);
    let b = if st.meta.closed {
        b.header("stream-closed", "true")
    } else {
        b
    };
    reply::finish(b, axum::body::Body::empty())
}

/// What a fork starts with: its source, the records it inherits, and the part of the next record
/// a sub-offset takes.
struct Inherited {
    source: Arc<DsStream>,
    entries: Vec<Arc<Entry>>,
    prefix: Option<(Vec<u8>, usize)>,
    fork: ForkOf,
    seg: u64,
    content_type: String,
    ttl: Option<u64>,
    expires_at: Option<DateTime<Utc>>,
}

async fn inherit(d: &Durable, req: &Req, c: &Create) -> Result<Option<Inherited>, Response> {
    let Some((src_path, at, sub)) = &c.fork else {
        return Ok(None);
    };
    // A source the caller may not read is answered as a missing one.
    let source = match d.reach(src_path, &req.caller, Verb::Read).await {
        Ok(s) => s,
        Err(r) if r.status() == StatusCode::GONE => {
            return Err(reply::error(
                StatusCode::CONFLICT,
                "fork source was deleted",
            ))
        }
        Err(_) => return Err(reply::error(StatusCode::NOT_FOUND, "fork source not found")),
    };
    let st = source.state.lock().await;
    if let Some(t) = &c.content_type {
        if state::normalise(t) != state::normalise(&st.meta.content_type) {
            return Err(reply::error(
                StatusCode::CONFLICT,
                "content type differs from the source's",
            ));
        }
    }
    let at = at.unwrap_or(st.tail);
    if at > st.tail {
        return Err(reply::error(
            StatusCode::BAD_REQUEST,
            "fork offset beyond the source's tail",
        ));
    }
    let upto = st.first_after(at);
    let json = state::is_json(&st.meta.content_type);
    let prefix = if *sub > 0 {
        let Some(next) = st.entries.get(upto) else {
            return Err(reply::error(
                StatusCode::BAD_REQUEST,
                "no record after the fork offset",
            ));
        };
        match state::prefix(next, *sub, json) {
            Some(p) => Some(p),
            None => {
                return Err(reply::error(
                    StatusCode::BAD_REQUEST,
                    "sub-offset beyond the record",
                ))
            }
        }
    } else {
        None
    };
    let (ttl, expires_at) = if c.ttl.is_none() && c.expires_at.is_none() {
        (st.meta.ttl, st.meta.expires_at)
    } else {
        (c.ttl, c.expires_at)
    };
    let entries = st.entries[..upto].to_vec();
    let seg = st.meta.seg + 1;
    let content_type = c
        .content_type
        .clone()
        .unwrap_or_else(|| st.meta.content_type.clone());
    drop(st);
    Ok(Some(Inherited {
        source,
        entries,
        prefix,
        fork: ForkOf {
            source: src_path.clone(),
            offset: at,
            sub_offset: *sub,
        },
        seg,
        content_type,
        ttl,
        expires_at,
    }))
}

async fn create(
    d: &Arc<Durable>,
    req: &Req,
    c: Create,
    owner: Option<String>,
    body: Bytes,
) -> Result<Response, Response> {
    let inherited = inherit(d, req, &c).await?;
    let content_type = inherited
        .as_ref()
        .map(|i| i.content_type.clone())
        .or(c.content_type.clone())
        .unwrap_or_else(|| "application/octet-stream".to_owned());
    let json = state::is_json(&content_type);
    let items = if json && !body.is_empty() {
        let (data, n) = state::json_items(&body)
            .map_err(|_| reply::error(StatusCode::BAD_REQUEST, "body is not JSON"))?;
        Some((data, n))
    } else if body.is_empty() {
        None
    } else {
        Some((body.to_vec(), 0))
    };
    let topic = d.log.create().await.map_err(|e| {
        tracing::warn!(error = %e, "durable stream topic not created");
        reply::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "stream storage unavailable",
        )
    })?;
    let meta = Meta {
        content_type: content_type.clone(),
        ttl: inherited.as_ref().map_or(c.ttl, |i| i.ttl),
        expires_at: inherited.as_ref().map_or(c.expires_at, |i| i.expires_at),
        closed: false,
        closed_by: None,
        stream_seq: None,
        producers: Default::default(),
        fork_of: inherited.as_ref().map(|i| i.fork.clone()),
        seg: inherited.as_ref().map_or(0, |i| i.seg),
        topic: topic.clone(),
        owner,
    };
    let mut st = State::new(meta, now_ms());
    if let Some(i) = &inherited {
        st.entries = i.entries.clone();
    }
    let own: Vec<(Vec<u8>, usize)> = inherited
        .as_ref()
        .and_then(|i| i.prefix.clone())
        .into_iter()
        .chain(items.filter(|(_, n)| !json || *n > 0))
        .collect();
    for (data, n) in own {
        super::append::store(d, &req.path, &mut st, data, n, None, None).await?;
    }
    st.meta.closed = c.closed;
    if let Some(i) = &inherited {
        i.source.state.lock().await.forks += 1;
        st.source = Some(i.source.clone());
    }
    let tail = st.tail;
    let has_data = st.own_bytes > 0;
    d.save(&req.path, &st, true).await;
    let stream = DsStream::new(&req.path, st);
    d.insert(stream);
    if has_data {
        d.subs.touch(&req.path, false);
    }
    let location = format!("{}{}", d.public_origin(), req.path);
    let b = reply::builder(StatusCode::CREATED)
        .header(header::LOCATION, reply::value(&location))
        .header("stream-next-offset", tail.to_string());
    let b = reply::typed(b, &content_type);
    let b = if c.closed {
        b.header("stream-closed", "true")
    } else {
        b
    };
    Ok(reply::finish(b, axum::body::Body::empty()))
}
