//! The HTTP edge (axum): routes, shared state, bearer-token authentication, rejection counting,
//! `/metrics` and the health endpoints. Transports live in `sse` and `ws`, the stream API in `api`.
//!
//! The edge never writes stream topics; it produces requests to the intake topic and reads streams
//! through subscriptions.

mod api;
mod console;
mod error;
pub mod grpc;
mod sse;
mod ws;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

pub use error::{ApiError, Rejection};

use crate::event::{Request as StreamRequest, StreamId};
use crate::handlers::Registry;
use crate::kafka::producer::Journal;
use crate::metrics::Metrics;
use crate::settings::{EdgeSettings, GrpcSettings, IntakeSettings};
use crate::store::Store;
use crate::stream::hub::Hub;
use crate::stream::subscription::Subscriptions;

/// Everything the handlers share.
pub struct EdgeState {
    /// Subscriptions for SSE and WebSocket.
    pub subs: Arc<Subscriptions>,
    /// Producer for intake requests.
    pub journal: Arc<Journal>,
    /// Stream records.
    pub store: Store,
    /// Streams running here.
    pub hub: Hub,
    /// Handlers, to refuse unknown types early.
    pub registry: Arc<Registry>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// `[intake]` settings: topic and size limit.
    pub intake: IntakeSettings,
    /// `[edge]` settings.
    pub edge: EdgeSettings,
    /// `[grpc]` settings.
    pub grpc: GrpcSettings,
    /// Whether intake holds a partition assignment.
    pub intake_assigned: Arc<AtomicBool>,
    /// The cap on live stream topics.
    pub budget: Arc<crate::retention::TopicBudget>,
}

/// The event name of the history-lost notice (SSE `event:`, gRPC and WebSocket `type`).
pub const HISTORY_LOST: &str = "sluice:history_lost";

/// Shared handle to the edge state.
pub type Shared = Arc<EdgeState>;

/// The full router.
pub fn router(state: Shared) -> Router {
    let api = Router::new()
        .route("/v1/streams", get(api::list).post(api::create))
        .route("/v1/streams/{id}", get(api::status).delete(api::cancel))
        .route("/v1/streams/{id}/events", get(sse::events))
        .route("/ws", get(ws::upgrade))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(ready))
        .merge(api)
        .merge(console::routes())
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_rejections,
        ));
    let router = match cors(&state.edge.cors_allowed_origins) {
        Some(layer) => router.layer(layer),
        None => router,
    };
    router.with_state(state)
}

/// CORS for browser pages on other origins (`edge.cors_allowed_origins`), so the TypeScript
/// client can send `Authorization` and `Last-Event-ID` from them. None when the list is empty.
fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::{HeaderName, HeaderValue, Method};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("last-event-id"),
            ])
            .max_age(Duration::from_secs(3600)),
    )
}

async fn metrics(State(state): State<Shared>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn ready(State(state): State<Shared>) -> Response {
    let broker = state
        .journal
        .broker_reachable(&state.intake.topic, Duration::from_secs(2))
        .await;
    let store = state.store.get("__readiness_probe__").await.is_ok();
    let intake = state.intake_assigned.load(Ordering::Acquire);
    let ok = broker && store && intake;
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if ok { "ready" } else { "not_ready" },
        "checks": {"broker": broker, "store": store, "intake_assigned": intake},
    });
    (status, Json(body)).into_response()
}

/// Token from `Authorization: Bearer …` or, for browsers' EventSource and WebSocket, `?access_token=`.
fn presented_token(req: &Request) -> Option<String> {
    if let Some(v) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        return v.strip_prefix("Bearer ").map(str::to_owned);
    }
    req.uri().query().and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "access_token")
            .map(|(_, v)| v.to_owned())
    })
}

async fn authenticate(State(state): State<Shared>, req: Request, next: Next) -> Response {
    let tokens = &state.edge.api_tokens;
    if tokens.is_empty() {
        return next.run(req).await;
    }
    match presented_token(&req) {
        Some(t)
            if tokens
                .iter()
                .any(|k| constant_time_eq(k.as_bytes(), t.as_bytes())) =>
        {
            next.run(req).await
        }
        _ => ApiError::Unauthorized.into_response(),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn count_rejections(State(state): State<Shared>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    let resp = next.run(req).await;
    if let Some(r) = resp.extensions().get::<Rejection>() {
        state
            .metrics
            .edge_rejected(r.code, &format!("{path}: {}", r.message));
    }
    resp
}

impl EdgeState {
    /// Validates a request and produces it to the intake topic. Returns the stream id and whether
    /// a stream with that id already existed (in which case nothing was produced).
    pub async fn submit(&self, bytes: &[u8]) -> Result<(StreamId, bool), ApiError> {
        let mut request = StreamRequest::parse(bytes, self.intake.max_request_bytes)?;
        if self.registry.get(&request.event_type).is_none() {
            return Err(ApiError::Unprocessable {
                code: "unknown_handler",
                message: format!("no handler is registered for {}", request.event_type.kind()),
            });
        }
        let id = request.stream_id.clone().unwrap_or_else(StreamId::random);
        if self.store.get(id.as_str()).await?.is_some() || self.hub.get(id.as_str()).is_some() {
            return Ok((id, true));
        }
        if !self.budget.has_room() {
            return Err(ApiError::Capacity(format!(
                "{} stream topics exist, the configured maximum (retention.max_stream_topics)",
                self.budget.cap()
            )));
        }
        request.stream_id = Some(id.clone());
        let type_text = request.event_type.to_string();
        self.journal
            .produce(
                &self.intake.topic,
                id.as_str(),
                &request.to_json(),
                &[("type", &type_text)],
                "intake",
            )
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?;
        Ok((id, false))
    }
}

/// Whether the stream has ended and its terminal event is at or before `after`: the client has
/// seen everything there will ever be.
async fn finished_at_or_before(
    state: &Shared,
    id: &crate::event::StreamId,
    after: i64,
) -> Result<bool, ApiError> {
    let record = match state.store.get(id.as_str()).await {
        Ok(r) => r,
        Err(crate::store::Error::Corrupt { .. }) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    Ok(record.is_some_and(|r| r.state.is_terminal() && r.last_offset.is_some_and(|t| after >= t)))
}

/// Parses a stream id from a path segment.
fn parse_id(raw: &str) -> Result<StreamId, ApiError> {
    StreamId::parse(raw).map_err(|e| ApiError::BadRequest {
        code: "invalid_stream_id",
        message: e.to_string(),
    })
}

/// Parses a resume point: a non-negative Kafka offset below `i64::MAX` (the next offset after it
/// must still be representable).
fn parse_event_id(raw: &str) -> Result<i64, ApiError> {
    raw.trim()
        .parse::<i64>()
        .ok()
        .filter(|v| (0..i64::MAX).contains(v))
        .ok_or_else(|| ApiError::BadRequest {
            code: "invalid_last_event_id",
            message: format!(
                "last event id {:?} must be an integer offset from 0 to {}",
                raw.chars().take(40).collect::<String>(),
                i64::MAX - 1
            ),
        })
}

#[cfg(test)]
mod tests {
    use super::parse_event_id;

    #[test]
    fn event_ids_at_the_edge_of_i64_are_refused_not_overflowed() {
        assert_eq!(parse_event_id("0").unwrap(), 0);
        assert_eq!(parse_event_id(" 42 ").unwrap(), 42);
        assert_eq!(parse_event_id("9223372036854775806").unwrap(), i64::MAX - 1);
        for bad in [
            "9223372036854775807",
            "9223372036854775808",
            "99999999999999999999",
            "-1",
            "x",
            "",
        ] {
            let err = parse_event_id(bad).expect_err(bad);
            assert_eq!(err.code(), "invalid_last_event_id", "{bad}");
            assert_eq!(err.status(), axum::http::StatusCode::BAD_REQUEST, "{bad}");
        }
    }
}
