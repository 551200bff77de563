//! `GET` with `live=sse`: every batch of new records as one `data` event, each followed at once by
//! a `control` event with the offset to resume from; a closed stream ends with a control event
//! saying so, then the response ends. Connections end after `durable.sse_max_duration`, so
//! clients reconnect with the last offset and intermediaries never hold a response forever.
//!
//! Frames are written by hand (`data:` with no space, as the protocol's clients expect). Text is
//! split into lines, each prefixed, so no record can inject an event; binary types are base64.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::Response;
use base64::Engine;
use futures::StreamExt;

use super::offset::{self, Offset, ReadQuery};
use super::reply;
use super::state::{self, DsStream};
use super::{now_ms, read, Durable};

/// A `data` event carrying `payload`, one `data:` line per line of it.
pub(super) fn data_event(payload: &str, out: &mut String) {
    out.push_str("event: data\n");
    for line in payload.split("\r\n").flat_map(|l| l.split(['\r', '\n'])) {
        out.push_str("data:");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
}

/// A `control` event.
pub(super) fn control_event(next: Offset, cursor: Option<u64>, closed: bool, out: &mut String) {
    let body = if closed {
        format!(r#"{{"streamNextOffset":"{next}","upToDate":true,"streamClosed":true}}"#)
    } else {
        format!(
            r#"{{"streamNextOffset":"{next}","streamCursor":"{}","upToDate":true}}"#,
            cursor.unwrap_or_default()
        )
    };
    out.push_str("event: control\ndata:");
    out.push_str(&body);
    out.push_str("\n\n");
}

/// Answers an SSE read of `stream`.
pub async fn respond(d: &Arc<Durable>, stream: Arc<DsStream>, q: ReadQuery) -> Response {
    let (from, base64) = {
        let mut st = stream.state.lock().await;
        st.touch(now_ms());
        (
            read::start(&st, q.from),
            !state::is_text(&st.meta.content_type),
        )
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let (max, stop) = (d.settings.sse_max_duration, d.stop.clone());
    d.tasks.spawn(async move {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::timeout(max, follow(stream, from, q.cursor, base64, tx)) => {}
        }
    });
    let body = Body::from_stream(
        tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, std::io::Error>),
    );
    let mut b = reply::builder(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache");
    if base64 {
        b = b.header("stream-sse-data-encoding", "base64");
    }
    reply::finish(b, body)
}

async fn follow(
    stream: Arc<DsStream>,
    mut at: Offset,
    mut cursor: Option<u64>,
    base64: bool,
    tx: tokio::sync::mpsc::Sender<Bytes>,
) {
    let mut changed = stream.changed.subscribe();
    let mut first = true;
    loop {
        let mut out = String::new();
        let finished = {
            let st = stream.state.lock().await;
            let _ = changed.borrow_and_update();
            if st.deleted {
                return;
            }
            let entries = st.after(at);
            let c = offset::next_cursor(cursor, now_ms());
            if !entries.is_empty() {
                let json = state::is_json(&st.meta.content_type);
                let body = state::body(entries, json);
                let payload = if base64 {
                    base64::engine::general_purpose::STANDARD.encode(&body)
                } else {
                    String::from_utf8_lossy(&body).into_owned()
                };
                data_event(&payload, &mut out);
                at = st.tail;
                control_event(at, Some(c), false, &mut out);
                cursor = Some(c);
            } else if first {
                control_event(st.tail, Some(c), false, &mut out);
                cursor = Some(c);
            }
            first = false;
            let finished = st.meta.closed && st.after(at).is_empty();
            if finished {
                control_event(st.tail, None, true, &mut out);
            }
            finished
        };
        if !out.is_empty() && tx.send(Bytes::from(out)).await.is_err() {
            return;
        }
        if finished {
            return;
        }
        tokio::select! {
            _ = tx.closed() => return,
            r = changed.changed() => if r.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_is_prefixed_so_nothing_is_injected() {
        let mut out = String::new();
        data_event("a\r\nevent: control\rb\n\nc", &mut out);
        assert_eq!(
            out,
            "event: data\ndata:a\ndata:event: control\ndata:b\ndata:\ndata:c\n\n"
        );
    }

    #[test]
    fn control_events_are_flat_json() {
        let mut out = String::new();
        control_event(Offset { seg: 0, pos: 3 }, Some(9), false, &mut out);
        assert_eq!(out, "event: control\ndata:{\"streamNextOffset\":\"0000000000000000_0000000000000003\",\"streamCursor\":\"9\",\"upToDate\":true}\n\n");
    }
}
