//! Server-Sent Events: `GET /v1/streams/{id}/events`, replay after `Last-Event-ID` (or
//! `?last_event_id=`), then the live tail. Each stored event is sent with `id: <offset>`,
//! `event: <type>` and the envelope as `data:`; heartbeats carry no id. The response opens with
//! `retry: <edge.sse_retry>` and ends after the terminal event. A reconnect whose resume point is
//! at or past a finished stream's terminal event gets `204 No Content`, which is how a browser's
//! `EventSource` learns to stop reconnecting.

use std::collections::HashMap;
use std::convert::Infallible;

use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::json;
use tokio_stream::wrappers::ReceiverStream;

use super::access::{authorize, Caller};
use super::{finished_at_or_before, parse_event_id, parse_id, ApiError, Shared, HISTORY_LOST};
use crate::stream::subscription::Delivery;

fn frame(d: Delivery) -> Event {
    match d {
        Delivery::Event(ev) => Event::default()
            .id(ev.offset.to_string())
            .event(ev.envelope.event_type.as_str())
            .data(&*ev.json),
        Delivery::Heartbeat(h) => Event::default()
            .event(h.event_type.as_str())
            .data(serde_json::to_string(&*h).unwrap_or_default()),
        Delivery::HistoryLost {
            requested,
            earliest,
        } => Event::default()
            .event(HISTORY_LOST)
            .data(json!({"requested_id": requested, "earliest_id": earliest}).to_string()),
    }
}

/// `GET /v1/streams/{id}/events`
pub async fn events(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = parse_id(&raw)?;
    authorize(&state, &caller.identity, &id).await?;
    let resume = headers
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or("?").to_owned())
        .or_else(|| query.get("last_event_id").cloned());
    let after = resume.as_deref().map(parse_event_id).transpose()?;
    if let Some(after) = after {
        if finished_at_or_before(&state, &id, after).await? {
            state.metrics.sse_ended_reconnect(id.as_str(), after);
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
    }
    let slot = state.subscriber_slot(&id)?;
    let rx = state
        .subs
        .open(&id, after, state.edge.early_connect_wait)
        .await?;
    let guard = (state.metrics.edge_connected("sse"), slot);
    let metrics = state.metrics.clone();
    let retry = Event::default().retry(state.edge.sse_retry);
    let events = ReceiverStream::new(rx).map(move |d| {
        let _keep = &guard;
        metrics.edge_sent("sse", 1);
        frame(d)
    });
    let stream = futures::stream::once(async move { retry })
        .chain(events)
        .map(Ok::<_, Infallible>);
    let sse = Sse::new(stream).keep_alive(KeepAlive::new().interval(state.edge.keepalive_interval));
    Ok(sse.into_response())
}
