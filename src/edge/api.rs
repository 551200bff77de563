//! The stream API: request (`POST /v1/streams`), status (`GET /v1/streams/{id}`) and cancel
//! (`DELETE /v1/streams/{id}`).

use axum::body::{to_bytes, Body};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::{parse_id, ApiError, Shared};
use crate::event::StreamId;
use crate::stream::hub::CancelOutcome;

fn links(id: &StreamId) -> serde_json::Value {
    json!({
        "status": format!("/v1/streams/{id}"),
        "events": format!("/v1/streams/{id}/events"),
        "websocket": "/ws",
    })
}

/// `POST /v1/streams`: 202 with the stream id and URLs; 200 if the id already exists.
pub async fn create(State(state): State<Shared>, body: Body) -> Result<Response, ApiError> {
    let limit = state.intake.max_request_bytes;
    let bytes = to_bytes(body, limit).await.map_err(|_| {
        ApiError::PayloadTooLarge(format!("request body is over the limit of {limit} bytes"))
    })?;
    let (id, existed) = state.submit(&bytes).await?;
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let body = json!({"stream_id": id.as_str(), "existing": existed, "links": links(&id)});
    Ok((status, Json(body)).into_response())
}

/// `GET /v1/streams/{id}`: the stream's recorded state, with live progress if it runs here.
pub async fn status(
    State(state): State<Shared>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&raw)?;
    let Some(record) = state.store.get(id.as_str()).await? else {
        if state.store.is_gone(id.as_str()).await? {
            return Err(ApiError::Gone(format!(
                "stream {id} ended and its retention expired"
            )));
        }
        return Err(ApiError::NotFound(format!("stream {id} not found")));
    };
    let live = state.hub.get(id.as_str());
    let chunks = match &live {
        Some(l) => record.cursor_seq.max(l.chunks()),
        None => record
            .next_seq
            .saturating_sub(if record.state.is_terminal() { 2 } else { 1 }),
    };
    let last_event_id = live
        .as_ref()
        .map(|l| l.last_offset())
        .filter(|o| *o >= 0)
        .or(record.last_offset);
    let body = json!({
        "stream_id": record.stream_id,
        "type": record.request.event_type.to_string(),
        "state": record.state,
        "chunks": chunks,
        "last_event_id": last_event_id,
        "attempts": record.attempts,
        "cursor": record.cursor,
        "running_here": live.is_some(),
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "finished_at": record.finished_at,
        "links": links(&id),
    });
    Ok(Json(body).into_response())
}

/// `DELETE /v1/streams/{id}`: asks a running stream to cancel; it ends with a `cancelled` event.
pub async fn cancel(
    State(state): State<Shared>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&raw)?;
    cancel_stream(&state, &id).await?;
    let body = json!({"stream_id": id.as_str(), "status": "cancelling"});
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// Cancels a stream running here, or explains why it cannot.
pub async fn cancel_stream(state: &Shared, id: &StreamId) -> Result<(), ApiError> {
    let finished = || ApiError::Conflict {
        code: "already_finished",
        message: format!("stream {id} already ended"),
    };
    match state.hub.cancel(id.as_str()) {
        CancelOutcome::Cancelling => return Ok(()),
        CancelOutcome::AlreadyFinished => return Err(finished()),
        CancelOutcome::NotHere => {}
    }
    match state.store.get(id.as_str()).await? {
        Some(r) if r.state.is_terminal() => Err(ApiError::Conflict {
            code: "already_finished",
            message: format!("stream {id} already ended ({:?})", r.state).to_lowercase(),
        }),
        Some(_) => Err(ApiError::Conflict {
            code: "not_running_here",
            message: format!("stream {id} is not running on this instance"),
        }),
        None => Err(ApiError::NotFound(format!("stream {id} not found"))),
    }
}
