//! The HTTP edge (axum): routes, shared state, the authentication middleware, rejection counting,
//! `/metrics` and the health endpoints. Transports live in `sse` and `ws`, the stream API in `api`,
//! token verification in `auth`, authorisation in `access`, abuse limits in `limits` and the
//! connection-level server (accept, header timeout, connection caps) in `serve`.
//!
//! The edge never writes stream topics; it produces requests to the intake topic and reads streams
//! through subscriptions.

pub mod access;
mod api;
pub mod auth;
mod console;
pub mod durable;
mod error;
pub mod grpc;
pub mod limits;
pub mod serve;
mod sse;
mod ws;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
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
use crate::settings::{EdgeSettings, GrpcSettings, IntakeSettings, LimitsSettings};
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
    /// Partitions of the intake topic (and of the changelog).
    pub intake_partitions: i32,
    /// The cap on live stream topics.
    pub budget: Arc<crate::retention::TopicBudget>,
    /// Token verification.
    pub auth: Arc<auth::Authenticator>,
    /// `[limits]` settings.
    pub limits: LimitsSettings,
    /// The connection caps, shared by the HTTP and gRPC listeners.
    pub gate: Arc<limits::Gate>,
    /// Stream requests (and Durable Stream creations) per identity.
    pub rate: Arc<limits::RequestRate>,
    /// Live subscribers per stream.
    pub subscribers: limits::Slots<String>,
    /// Owners of streams requested here and not yet recorded.
    pub pending: access::PendingOwners,
    /// The Durable Streams server, unless `durable.enabled` is false.
    pub durable: Option<Arc<durable::Durable>>,
}

/// The event name of the history-lost notice (SSE `event:`, gRPC and WebSocket `type`).
pub const HISTORY_LOST: &str = "sluice:history_lost";

/// Shared handle to the edge state.
pub type Shared = Arc<EdgeState>;

/// The full router.
pub fn router(state: Shared) -> Router {
    let mut api = Router::new()
        .route("/v1/streams", get(api::list).post(api::create))
        .route("/v1/streams/{id}", get(api::status).delete(api::cancel))
        .route("/v1/streams/{id}/events", get(sse::events))
        .route("/ws", get(ws::upgrade));
    if let Some(d) = &state.durable {
        // Sluice's own streams through the Durable Streams read API.
        let base = d.settings.base_path.trim_end_matches('/');
        api = api.route(
            &format!("{base}/v1/sluice/{{id}}"),
            get(durable::bridge::get),
        );
    }
    let api = api.route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    let operator = Router::new()
        .route("/metrics", get(metrics))
        .route("/readyz", get(ready))
        .route_layer(middleware::from_fn_with_state(state.clone(), operator_only));
    let router = Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .merge(operator)
        .merge(api)
        .merge(console::routes())
        // Bounds the time to a response head: an SSE or WebSocket body runs on after it.
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            state.limits.request_timeout,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_rejections,
        ));
    let router = match cors(&state.edge) {
        Some(layer) => router.layer(layer),
        None => router,
    };
    // Outside the request timeout (a long-poll answers when its own timeout says; Durable
    // Streams bound their request bodies by it); behind authentication, inside the edge's CORS
    // policy widened to the protocol's methods and headers.
    let durable = state.durable.clone();
    let auth = middleware::from_fn_with_state(state.clone(), authenticate);
    let (ds_cors, timeout) = (
        cors(&state.edge).map(durable::cors),
        state.limits.request_timeout,
    );
    let router = router.with_state(state);
    match durable {
        Some(d) => {
            let ds = durable::routes(d.clone(), timeout).route_layer(auth);
            let tokens = durable::token_routes(d);
            match ds_cors {
                Some(c) => router.merge(ds.layer(c.clone())).merge(tokens.layer(c)),
                None => router.merge(ds).merge(tokens),
            }
        }
        None => router,
    }
}

/// CORS for browser pages on other origins (`edge.cors_allowed_origins`), so the TypeScript
/// client can send `Authorization` and `Last-Event-ID` from them; credentials (cookies) only with
/// `edge.cors_allow_credentials`. None when the list is empty.
fn cors(edge: &EdgeSettings) -> Option<tower_http::cors::CorsLayer> {
    let origins = &edge.cors_allowed_origins;
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
            .allow_credentials(edge.cors_allow_credentials)
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

/// The bearer token of a request: `Authorization: Bearer …` or, for browsers' `EventSource` and
/// WebSocket, which cannot set headers, a percent-encoded `?access_token=`.
pub fn presented_token(req: &Request) -> Option<String> {
    if let Some(v) = req.headers().get(header::AUTHORIZATION) {
        return bearer(v.to_str().ok()?).map(str::to_owned);
    }
    req.uri().query().and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "access_token")
            .map(|(_, v)| {
                let plus_as_space = v.replace('+', " ");
                percent_encoding::percent_decode_str(&plus_as_space)
                    .decode_utf8_lossy()
                    .into_owned()
            })
    })
}

/// The token of an `Authorization` value with the `Bearer` scheme (any case, RFC 6750).
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

async fn authenticate(State(state): State<Shared>, mut req: Request, next: Next) -> Response {
    let token = presented_token(&req);
    match state.auth.identify(token.as_deref()) {
        Ok(identity) => {
            let peer = req
                .extensions()
                .get::<ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0);
            req.extensions_mut()
                .insert(access::Caller::new(identity, peer));
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

/// `/metrics` and `/readyz` answer only `edge.metrics_token` when one is set.
async fn operator_only(State(state): State<Shared>, req: Request, next: Next) -> Response {
    if state.auth.metrics_allowed(presented_token(&req).as_deref()) {
        next.run(req).await
    } else {
        ApiError::Unauthorized("invalid_token").into_response()
    }
}

async fn count_rejections(State(state): State<Shared>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    let resp = next.run(req).await;
    if let Some(r) = resp.extensions().get::<Rejection>() {
        state
            .metrics
            .edge_rejected(r.code, &format!("{path}: {}", r.message));
    } else if resp.status() == StatusCode::REQUEST_TIMEOUT {
        let limit = state.limits.request_timeout;
        state.metrics.edge_rejected(
            "request_timeout",
            &format!("{path}: no response within {limit:?} (limits.request_timeout)"),
        );
    }
    resp
}

impl EdgeState {
    /// Validates a request from `caller` and produces it to the intake topic, owned by the
    /// caller's subject. Returns the stream id and whether a stream with that id already existed
    /// (in which case nothing was produced).
    pub async fn submit(
        &self,
        bytes: &[u8],
        caller: &access::Caller,
    ) -> Result<(StreamId, bool), ApiError> {
        let mut request = StreamRequest::parse(bytes, self.intake.max_request_bytes)?;
        access::authorize_type(&caller.identity, &request.event_type)?;
        if self.registry.get(&request.event_type).is_none() {
            return Err(ApiError::Unprocessable {
                code: "unknown_handler",
                message: format!("no handler is registered for {}", request.event_type.kind()),
            });
        }
        if !caller.identity.is_admin() {
            self.rate.check(&caller.rate_key)?;
        }
        self.check_owner_quota(&caller.identity).await?;
        let id = request.stream_id.clone().unwrap_or_else(StreamId::random);
        let who = &caller.identity;
        if let Some(record) = self.store.get(id.as_str()).await? {
            if !who.may_access(id.as_str(), record.request.owner.as_deref()) {
                return Err(access::forbidden(&id));
            }
            return Ok((id, true));
        }
        if !self.budget.has_room() {
            return Err(ApiError::Capacity(format!(
                "{} stream topics exist, the configured maximum (retention.max_stream_topics)",
                self.budget.cap()
            )));
        }
        let owner = who.subject().unwrap_or("");
        // The first request for an id claims it, atomically; a later one is told the stream
        // exists only if it may read the claimant's streams, and is refused like an unknown id
        // otherwise. A stream registered between the record lookup and the claim (its claim
        // has expired, or it came over Kafka) is authorised by its record.
        match self.pending.claim(&id, owner) {
            access::Claim::Held(held) if who.may_access(id.as_str(), Some(held.as_str())) => {
                return Ok((id, true));
            }
            access::Claim::Held(_) => return Err(access::forbidden(&id)),
            access::Claim::New if self.hub.get(id.as_str()).is_some() => {
                // Registering here from another request: its record decides.
                let allowed = access::authorize(self, who, &id).await;
                self.pending.release(&id);
                return allowed.map(|()| (id, true));
            }
            access::Claim::New => {}
        }
        request.stream_id = Some(id.clone());
        let type_text = request.event_type.to_string();
        // The owner header is always written (empty for no subject), so a client's
        // `metadata.owner` can never claim a stream for someone else.
        self.journal
            .produce(
                &self.intake.topic,
                id.as_str(),
                &request.to_json(),
                &[
                    ("type", &type_text),
                    (crate::kafka::intake::OWNER_HEADER, owner),
                ],
                "intake",
            )
            .await
            .map_err(|e| {
                self.pending.release(&id);
                ApiError::Unavailable(e.to_string())
            })?;
        Ok((id, false))
    }

    /// Refuses a subject that already has `limits.max_streams_per_owner` unfinished streams.
    /// Counted from the owner index every instance keeps (records arrive through the changelog),
    /// so the cap holds across instances, give or take requests still on their way to intake,
    /// which the request rate bounds.
    async fn check_owner_quota(&self, who: &auth::Identity) -> Result<(), ApiError> {
        let (Some(owner), false) = (who.subject(), who.is_admin()) else {
            return Ok(());
        };
        let cap = self.limits.max_streams_per_owner;
        if self.store.active_streams(owner, cap).await? < cap {
            return Ok(());
        }
        Err(ApiError::TooMany {
            code: "owner_quota",
            message: format!(
                "this subject has {cap} unfinished streams, the most one owner may have (limits.max_streams_per_owner)"
            ),
            retry_after: 1,
        })
    }

    /// Sends a cancel for `record`'s stream to the owner of its intake partition: a control
    /// message keyed by the stream id, in the partition the stream's request arrived on.
    pub async fn route_cancel(&self, record: &crate::store::StreamRecord) -> Result<(), ApiError> {
        use crate::kafka::intake::{CONTROL_CANCEL, CONTROL_HEADER};
        let partition = record.partition_in(self.intake_partitions);
        self.journal
            .produce_at(
                &self.intake.topic,
                Some(partition),
                &record.stream_id,
                None,
                &[(CONTROL_HEADER, CONTROL_CANCEL)],
                "intake",
            )
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?;
        Ok(())
    }

    /// A subscriber slot of stream `id`, refused past `limits.max_subscribers_per_stream`.
    pub fn subscriber_slot(&self, id: &StreamId) -> Result<limits::Slot<String>, ApiError> {
        self.subscribers
            .take(&id.to_string())
            .ok_or_else(|| ApiError::Overloaded {
                code: "too_many_subscribers",
                message: format!(
                    "stream {id} has its maximum of {} live subscribers (limits.max_subscribers_per_stream)",
                    self.limits.max_subscribers_per_stream
                ),
            })
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

/// Parses a resume point (see `sluice_wire::frames::parse_event_id`).
fn parse_event_id(raw: &str) -> Result<i64, ApiError> {
    sluice_wire::frames::parse_event_id(raw).map_err(ApiError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_come_from_a_bearer_header_or_a_percent_decoded_query() {
        let req = |uri: &str, auth: Option<&str>| {
            let mut b = axum::http::Request::builder().uri(uri);
            if let Some(a) = auth {
                b = b.header(header::AUTHORIZATION, a);
            }
            b.body(axum::body::Body::empty()).unwrap()
        };
        assert_eq!(
            presented_token(&req("/", Some("Bearer abc"))).as_deref(),
            Some("abc")
        );
        assert_eq!(
            presented_token(&req("/", Some("bearer  abc "))).as_deref(),
            Some("abc")
        );
        assert_eq!(presented_token(&req("/", Some("Basic abc"))), None);
        assert_eq!(
            presented_token(&req("/x?a=1&access_token=a%2Bb%3D%3D", None)).as_deref(),
            Some("a+b==")
        );
        assert_eq!(presented_token(&req("/x?a=1", None)), None);
    }
}
