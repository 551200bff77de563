//! The stream API: request (`POST /v1/streams`), list (`GET /v1/streams`), status
//! (`GET /v1/streams/{id}`) and cancel (`DELETE /v1/streams/{id}`).

use axum::body::{to_bytes, Body};
use std::collections::HashMap;

use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::access::{authorize, Caller};
use super::{parse_id, ApiError, Shared};
use crate::event::StreamId;
use crate::store::{Cursor, ListQuery, StreamRecord, StreamState};
use crate::stream::hub::CancelOutcome;

/// Streams in one list page unless `limit` says otherwise.
pub const DEFAULT_LIMIT: usize = 50;
/// Most streams in one list page.
pub const MAX_LIMIT: usize = 500;

fn links(id: &StreamId) -> serde_json::Value {
    json!({
        "status": format!("/v1/streams/{id}"),
        "events": format!("/v1/streams/{id}/events"),
        "websocket": "/ws",
    })
}

/// `POST /v1/streams`: 202 with the stream id and URLs; 200 if the id already exists.
pub async fn create(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    body: Body,
) -> Result<Response, ApiError> {
    let limit = state.intake.max_request_bytes;
    let bytes = to_bytes(body, limit).await.map_err(|_| {
        ApiError::PayloadTooLarge(format!("request body is over the limit of {limit} bytes"))
    })?;
    let (id, existed) = state.submit(&bytes, &caller).await?;
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
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&raw)?;
    authorize(&state, &caller.identity, &id).await?;
    let record = lookup(&state, &id).await?;
    Ok(Json(summary(&state, &record, true)).into_response())
}

/// A stream's record: 404 if unknown, 410 if retention deleted it.
pub async fn lookup(state: &Shared, id: &StreamId) -> Result<StreamRecord, ApiError> {
    match state.store.get(id.as_str()).await? {
        Some(record) => Ok(record),
        None if state.store.is_gone(id.as_str()).await? => Err(ApiError::Gone(format!(
            "stream {id} ended and its retention expired"
        ))),
        None => Err(ApiError::NotFound(format!("stream {id} not found"))),
    }
}

/// Progress of a stream: from the record, overtaken by the live stream if it runs here.
pub struct Progress {
    /// Chunks stored so far.
    pub chunks: u64,
    /// The newest stored event's id.
    pub last_event_id: Option<i64>,
    /// Whether the stream runs on this process.
    pub running_here: bool,
}

/// The progress of a recorded stream.
pub fn progress(state: &Shared, record: &StreamRecord) -> Progress {
    let live = state.hub.get(&record.stream_id);
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
    Progress {
        chunks,
        last_event_id,
        running_here: live.is_some(),
    }
}

/// A stream's public view. `full` adds the fields only the single-stream status carries.
pub fn summary(state: &Shared, record: &StreamRecord, full: bool) -> serde_json::Value {
    let p = progress(state, record);
    let mut body = json!({
        "stream_id": record.stream_id,
        "type": record.request.event_type.to_string(),
        "state": record.state,
        "chunks": p.chunks,
        "last_event_id": p.last_event_id,
        "running_here": p.running_here,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "finished_at": record.finished_at,
    });
    if full {
        if let (Some(map), Ok(id)) = (body.as_object_mut(), StreamId::parse(&record.stream_id)) {
            map.insert("attempts".into(), json!(record.attempts));
            map.insert("runs".into(), json!(record.runs));
            map.insert("partition".into(), json!(record.partition));
            map.insert("cursor".into(), json!(record.cursor));
            map.insert("links".into(), links(&id));
        }
    }
    body
}

/// `GET /v1/streams?state=&type=&created_after=&limit=&cursor=`: streams newest first, one page.
/// A caller that is not an administrator sees only the streams it may read, so a page may hold
/// fewer than `limit` streams while `next_cursor` still leads on.
pub async fn list(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let query = list_query(&params)?;
    let who = caller.identity.clone();
    let page = state
        .store
        .list_visible(query, move |r| {
            who.may_access(&r.stream_id, r.request.owner.as_deref())
        })
        .await?;
    let streams: Vec<_> = page
        .records
        .iter()
        .map(|r| summary(&state, r, false))
        .collect();
    let body = json!({
        "streams": streams,
        "next_cursor": page.next_cursor.as_ref().map(Cursor::as_str),
    });
    Ok(Json(body).into_response())
}

fn bad(code: &'static str, message: String) -> ApiError {
    ApiError::BadRequest { code, message }
}

/// Validates the list parameters; every refusal names the parameter.
fn list_query(params: &HashMap<String, String>) -> Result<ListQuery, ApiError> {
    let mut q = ListQuery {
        limit: DEFAULT_LIMIT,
        ..ListQuery::default()
    };
    for (k, v) in params {
        let shown: String = v.chars().take(60).collect();
        match k.as_str() {
            "state" => {
                q.state = Some(
                    serde_json::from_value::<StreamState>(json!(v)).map_err(|_| {
                        bad("invalid_state", format!("state {shown:?} is not one of pending, running, success, failed, timeout, cancelled"))
                    })?,
                )
            }
            "type" => {
                if v.is_empty() || v.len() > 200 {
                    return Err(bad("invalid_type", "type must be 1 to 200 characters".into()));
                }
                q.type_prefix = Some(v.clone());
            }
            "created_after" => {
                q.created_after = Some(
                    chrono::DateTime::parse_from_rfc3339(v)
                        .map_err(|_| {
                            bad("invalid_created_after", format!("created_after {shown:?} is not an RFC 3339 time"))
                        })?
                        .to_utc(),
                )
            }
            "limit" => {
                q.limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        bad("invalid_limit", format!("limit {shown:?} must be an integer from 1 to {MAX_LIMIT}"))
                    })?
            }
            "cursor" => {
                q.cursor = Some(Cursor::parse(v).ok_or_else(|| {
                    bad("invalid_cursor", "cursor is not one this server issued".into())
                })?)
            }
            "access_token" => {}
            other => {
                let other: String = other.chars().take(40).collect();
                return Err(bad(
                    "invalid_query",
                    format!("unknown parameter {other:?}; use state, type, created_after, limit, cursor"),
                ));
            }
        }
    }
    Ok(q)
}

/// `DELETE /v1/streams/{id}`: asks a running stream to cancel; it ends with a `cancelled` event.
pub async fn cancel(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&raw)?;
    authorize(&state, &caller.identity, &id).await?;
    let routed = cancel_stream(&state, &id).await?;
    let body = json!({"stream_id": id.as_str(), "status": "cancelling", "routed_to_owner": routed});
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// Cancels a stream: at once if it runs here, otherwise by a control message on the intake topic
/// to the owner of its partition. Returns whether it was routed to another owner.
pub async fn cancel_stream(state: &Shared, id: &StreamId) -> Result<bool, ApiError> {
    let finished = || ApiError::Conflict {
        code: "already_finished",
        message: format!("stream {id} already ended"),
    };
    match state.hub.cancel(id.as_str()) {
        CancelOutcome::Cancelling => return Ok(false),
        CancelOutcome::AlreadyFinished => return Err(finished()),
        CancelOutcome::NotHere => {}
    }
    match state.store.get(id.as_str()).await? {
        Some(r) if r.state.is_terminal() => Err(ApiError::Conflict {
            code: "already_finished",
            message: format!("stream {id} already ended ({:?})", r.state).to_lowercase(),
        }),
        Some(r) => {
            state.route_cancel(&r).await?;
            Ok(true)
        }
        None => Err(ApiError::NotFound(format!("stream {id} not found"))),
    }
}
