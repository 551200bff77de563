//! Sluice's own streams through the Durable Streams read API: `{base}/v1/sluice/{stream_id}` is a
//! read-only JSON-mode stream whose messages are the stream's events, as SSE and WebSocket clients
//! get them, closed at its terminal event. A Durable Streams client can follow any Sluice stream.
//!
//! Offsets are `0000000000000000_<event id + 1>`. Reads come from the stream topic (the replay
//! reader); a read at the tail of a running stream waits for the stream's next event (on the hub
//! when it runs here, else by looking at the topic every 100 ms). Access is checked as for the
//! stream's SSE endpoint.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::Response;
use futures::StreamExt;

use super::offset::{self, Live, Offset, ReadFrom, ReadQuery};
use super::{now_ms, reply, sse};
use crate::edge::access::{authorize, Caller};
use crate::edge::{ApiError, Shared};
use crate::event::StreamId;
use crate::kafka::reader;
use crate::stream::hub::Live as HubLive;
use tokio::sync::broadcast::Receiver;

/// How often a wait for a stream not running here looks at its topic.
const REMOTE_POLL: Duration = Duration::from_millis(100);

/// What a read found.
struct Batch {
    /// The events' JSON, in order.
    items: Vec<std::sync::Arc<str>>,
    /// The offset after the last event read (the tail when everything was read).
    next: Offset,
    /// The stream has ended and the read reached its end.
    closed: bool,
}

fn at(pos: i64) -> Offset {
    Offset {
        seg: 0,
        pos: pos.max(0) as u64,
    }
}

/// Reads the stream's events from `from` to the topic's end.
async fn read(state: &Shared, id: &StreamId, from: Offset) -> Result<Batch, ApiError> {
    let topic = state.subs.topic(id).await?;
    let high = match state.subs.reader.watermarks(&topic).await {
        Ok(m) => m.high,
        Err(reader::Error::UnknownTopic(_)) => 0,
        Err(e) => return Err(ApiError::Unavailable(e.to_string())),
    };
    let mut next = from.pos as i64;
    let mut items = Vec::new();
    let mut terminal = false;
    while next < high {
        let events = state
            .subs
            .reader
            .read(&topic, next, high)
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?;
        let Some(last) = events.last() else {
            break;
        };
        next = last.offset + 1;
        let full = events.len() >= reader::BATCH;
        for ev in events {
            terminal |= ev.state.is_terminal();
            items.push(ev.json.clone());
        }
        if !full {
            break;
        }
    }
    // Ended: its terminal event was read, or it does not run here and its record says it ended.
    let running = state.hub.get(id.as_str()).is_some();
    let finished = terminal
        || (!running
            && match state.subs.store.get(id.as_str()).await {
                Ok(Some(r)) => r.state.is_terminal(),
                Ok(None) => true,
                Err(_) => false,
            });
    // `next` starts at `from` and only grows; an ended stream's tail is past its last marker.
    let tail = if finished { high.max(next) } else { next };
    Ok(Batch {
        items,
        next: at(tail),
        closed: finished,
    })
}

/// Whether the stream is known: running here, or recorded.
async fn registered(state: &Shared, id: &StreamId) -> bool {
    state.hub.get(id.as_str()).is_some()
        || matches!(state.subs.store.get(id.as_str()).await, Ok(Some(_)))
}

/// Where the stream's topic ends now.
async fn tail(state: &Shared, id: &StreamId) -> Result<Offset, ApiError> {
    let topic = state.subs.topic(id).await?;
    match state.subs.reader.watermarks(&topic).await {
        Ok(m) => Ok(at(m.high)),
        Err(reader::Error::UnknownTopic(_)) => Ok(Offset::ZERO),
        Err(e) => Err(ApiError::Unavailable(e.to_string())),
    }
}

/// Waits until `deadline` for the stream to move past what was read: for its next event when it
/// runs here (`live`, subscribed before the read, so nothing falls between), else one
/// `REMOTE_POLL`, after which the caller reads the topic again.
async fn wait(live: Option<&mut Receiver<HubLive>>, deadline: tokio::time::Instant) {
    match live {
        Some(rx) => loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Ok(HubLive::Heartbeat(_))) => continue,
                _ => return,
            }
        },
        None => {
            let next = tokio::time::Instant::now() + REMOTE_POLL;
            tokio::time::sleep_until(deadline.min(next)).await;
        }
    }
}

/// Reads from `from`, waiting up to `timeout` for something to read or for the end.
async fn read_or_wait(
    state: &Shared,
    id: &StreamId,
    from: Offset,
    timeout: Duration,
) -> Result<Batch, ApiError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let mut live = state.hub.subscribe(id.as_str());
        let batch = read(state, id, from).await?;
        if !batch.items.is_empty() || batch.closed || tokio::time::Instant::now() >= deadline {
            return Ok(batch);
        }
        wait(live.as_mut(), deadline).await;
    }
}

fn body(items: &[std::sync::Arc<str>]) -> String {
    let mut out = String::from("[");
    for (i, it) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(it);
    }
    out.push(']');
    out
}

/// `GET {base}/v1/sluice/{id}`: catch-up, long-poll and SSE reads of a Sluice stream.
pub async fn get(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let id =
        StreamId::parse(&raw).map_err(|_| ApiError::NotFound(format!("stream {raw} not found")))?;
    authorize(&state, &caller.identity, &id).await?;
    let q = offset::parse_query(query.as_deref()).map_err(|message| ApiError::BadRequest {
        code: "bad_offset",
        message,
    })?;
    // A stream requested a moment ago may not be registered yet: wait for it as SSE does.
    if !registered(&state, &id).await {
        let deadline = tokio::time::Instant::now() + state.edge.early_connect_wait;
        state.hub.wait_for(id.as_str(), deadline).await;
        if !registered(&state, &id).await {
            return Err(ApiError::NotFound(format!("stream {id} not found")));
        }
    }
    let timeout = state
        .durable
        .as_ref()
        .map_or(Duration::from_secs(20), |d| d.settings.long_poll_timeout);
    let from = match q.from {
        ReadFrom::Start => Offset::ZERO,
        ReadFrom::At(o) => o,
        ReadFrom::Now => tail(&state, &id).await?,
    };
    match q.live {
        Live::Sse => Ok(follow(state, id, from, q, timeout)),
        Live::LongPoll => Ok(answer(read_or_wait(&state, &id, from, timeout).await?, &q)),
        Live::No => Ok(answer(read(&state, &id, from).await?, &q)),
    }
}

fn answer(batch: Batch, q: &ReadQuery) -> Response {
    let mut b = reply::builder(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header("stream-next-offset", batch.next.to_string())
        .header("stream-up-to-date", "true");
    if batch.closed {
        b = b.header("stream-closed", "true");
    }
    if q.from == ReadFrom::Now {
        b = b.header(header::CACHE_CONTROL, "no-store");
    }
    if q.live == Live::LongPoll {
        b = b.header(
            "stream-cursor",
            offset::next_cursor(q.cursor, now_ms()).to_string(),
        );
        if batch.items.is_empty() {
            return reply::finish(b.status(StatusCode::NO_CONTENT), Body::empty());
        }
    }
    reply::finish(b, body(&batch.items))
}

fn follow(state: Shared, id: StreamId, from: Offset, q: ReadQuery, timeout: Duration) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let tracker = state.subs.tracker.clone();
    let stop = state.subs.shutdown.clone();
    tracker.spawn(async move {
        let mut pos = from;
        let mut cursor = q.cursor;
        let mut first = true;
        loop {
            let got = if first {
                read(&state, &id, pos).await
            } else {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tx.closed() => return,
                    r = read_or_wait(&state, &id, pos, timeout) => r,
                }
            };
            let Ok(batch) = got else {
                return;
            };
            let mut out = String::new();
            let c = offset::next_cursor(cursor, now_ms());
            if !batch.items.is_empty() {
                sse::data_event(&body(&batch.items), &mut out);
            }
            if !batch.items.is_empty() || first {
                sse::control_event(batch.next, Some(c), false, &mut out);
                cursor = Some(c);
            }
            if batch.closed {
                sse::control_event(batch.next, None, true, &mut out);
            }
            first = false;
            pos = batch.next;
            if !out.is_empty() && tx.send(Bytes::from(out)).await.is_err() {
                return;
            }
            if batch.closed {
                return;
            }
        }
    });
    let body = Body::from_stream(
        tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, std::io::Error>),
    );
    reply::finish(
        reply::builder(StatusCode::OK)
            .header(header::CONTENT_TYPE, "text/event-stream")
            .header(header::CACHE_CONTROL, "no-cache"),
        body,
    )
}
