//! `sluice.v1.Streams`: request, status, cancel and `SubscribeEvents`, on the same state, rules
//! and subscriptions as the HTTP edge.
//!
//! `SubscribeEvents` follows one stream exactly like SSE (replay after `last_event_id`, then live,
//! ending after the terminal event), or every stream of some event types live from the hub's
//! feed. A type subscriber that falls further behind than the feed holds is ended with `ABORTED`
//! (`subscriber_lagged`) rather than silently missing events.
//!
//! Every call carries the `Caller` the `Auth` interceptor put in its extensions and is authorised
//! like its HTTP twin; subscribing to whole event types crosses every owner, so it needs an
//! administrator.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use serde_json::json;
use tokio::sync::broadcast;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};

use super::convert::{self, from_struct, timestamp};
use super::proto::{self, streams_server::Streams};
use super::{detailed, refuse};
use crate::edge::access::{authorize, Caller};
use crate::edge::{api, finished_at_or_before, parse_event_id, parse_id, ApiError, Shared};
use crate::event::{EventType, State};
use crate::stream::hub::FeedItem;

/// The event stream a `SubscribeEvents` call returns.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<proto::Event, Status>> + Send>>;

/// The `sluice.v1.Streams` implementation.
pub struct StreamsService {
    state: Shared,
}

impl StreamsService {
    /// A service on the edge's shared state.
    pub fn new(state: Shared) -> StreamsService {
        StreamsService { state }
    }

    fn refuse(&self, rpc: &str, err: ApiError) -> Status {
        refuse(&self.state, rpc, err)
    }
}

/// The caller the `Auth` interceptor attached; a call without one is refused.
fn caller_of<T>(req: &Request<T>) -> Result<Caller, ApiError> {
    req.extensions()
        .get::<Caller>()
        .cloned()
        .ok_or(ApiError::Unauthorized("missing_token"))
}

fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::BadRequest {
        code,
        message: message.into(),
    }
}

#[tonic::async_trait]
impl Streams for StreamsService {
    async fn request(
        &self,
        req: Request<proto::StreamRequest>,
    ) -> Result<Response<proto::Accepted>, Status> {
        let caller = caller_of(&req).map_err(|e| self.refuse("Request", e))?;
        let r = req.into_inner();
        let mut body = json!({"type": r.r#type});
        if let Some(p) = &r.payload {
            body["payload"] = from_struct(p);
        }
        if let Some(m) = &r.metadata {
            body["metadata"] = from_struct(m);
        }
        if let Some(id) = r.stream_id {
            body["stream_id"] = json!(id);
        }
        let bytes = serde_json::to_vec(&body)
            .map_err(|e| self.refuse("Request", bad("malformed_json", e.to_string())))?;
        let (id, existing) = self
            .state
            .submit(&bytes, &caller)
            .await
            .map_err(|e| self.refuse("Request", e))?;
        Ok(Response::new(proto::Accepted {
            stream_id: id.to_string(),
            existing,
        }))
    }

    async fn status(
        &self,
        req: Request<proto::StreamRef>,
    ) -> Result<Response<proto::StreamStatus>, Status> {
        let result = async {
            let caller = caller_of(&req)?;
            let id = parse_id(&req.get_ref().stream_id)?;
            authorize(&self.state, &caller.identity, &id).await?;
            api::lookup(&self.state, &id).await
        }
        .await;
        let record = result.map_err(|e| self.refuse("Status", e))?;
        let p = api::progress(&self.state, &record);
        let state = serde_json::to_value(record.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        Ok(Response::new(proto::StreamStatus {
            stream_id: record.stream_id.clone(),
            r#type: record.request.event_type.to_string(),
            state,
            chunks: p.chunks,
            last_event_id: p.last_event_id,
            attempts: record.attempts,
            running_here: p.running_here,
            created_at: Some(timestamp(record.created_at)),
            updated_at: Some(timestamp(record.updated_at)),
            finished_at: record.finished_at.map(timestamp),
        }))
    }

    async fn cancel(
        &self,
        req: Request<proto::StreamRef>,
    ) -> Result<Response<proto::Cancelling>, Status> {
        let result = async {
            let caller = caller_of(&req)?;
            let id = parse_id(&req.get_ref().stream_id)?;
            authorize(&self.state, &caller.identity, &id).await?;
            api::cancel_stream(&self.state, &id).await.map(|_| id)
        }
        .await;
        let id = result.map_err(|e| self.refuse("Cancel", e))?;
        Ok(Response::new(proto::Cancelling {
            stream_id: id.to_string(),
        }))
    }

    type SubscribeEventsStream = EventStream;

    async fn subscribe_events(
        &self,
        req: Request<proto::SubscribeRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let caller = caller_of(&req).map_err(|e| self.refuse("SubscribeEvents", e))?;
        let r = req.into_inner();
        let stream = match (r.stream_id.is_empty(), r.event_types.is_empty()) {
            (false, true) => {
                self.follow_stream(&caller, &r.stream_id, r.last_event_id)
                    .await
            }
            (true, false) if !caller.identity.is_admin() => Err(ApiError::Forbidden(
                "subscribing to event types needs an administrator token".into(),
            )),
            (true, false) => self.follow_types(&r.event_types),
            _ => Err(bad(
                "invalid_subscription",
                "give either stream_id (with an optional last_event_id) or event_types",
            )),
        };
        stream
            .map(Response::new)
            .map_err(|e| self.refuse("SubscribeEvents", e))
    }
}

impl StreamsService {
    /// One stream: replay after `last_event_id`, then live, ending after the terminal event.
    async fn follow_stream(
        &self,
        caller: &Caller,
        raw_id: &str,
        last_event_id: Option<i64>,
    ) -> Result<EventStream, ApiError> {
        let id = parse_id(raw_id)?;
        authorize(&self.state, &caller.identity, &id).await?;
        let after = last_event_id
            .map(|v| parse_event_id(&v.to_string()))
            .transpose()?;
        if let Some(after) = after {
            if finished_at_or_before(&self.state, &id, after).await? {
                return Ok(Box::pin(futures::stream::empty()));
            }
        }
        let slot = self.state.subscriber_slot(&id)?;
        let rx = self
            .state
            .subs
            .open(&id, after, self.state.edge.early_connect_wait)
            .await?;
        let guard = (self.state.metrics.edge_connected("grpc"), slot);
        let metrics = self.state.metrics.clone();
        let stream_id = id.to_string();
        Ok(Box::pin(ReceiverStream::new(rx).map(move |d| {
            let _keep = &guard;
            metrics.edge_sent("grpc", 1);
            Ok(convert::delivery(&stream_id, &d))
        })))
    }

    /// Every stream of some types, live from now on.
    fn follow_types(&self, types: &[String]) -> Result<EventStream, ApiError> {
        let max = self.state.grpc.max_event_types;
        if types.len() > max {
            return Err(bad(
                "too_many_event_types",
                format!(
                    "{} event types named; at most {max} (grpc.max_event_types)",
                    types.len()
                ),
            ));
        }
        let filter = TypeFilter::parse(types)?;
        let rx = self.state.hub.feed();
        let stop = self.state.subs.shutdown.clone();
        let metrics = self.state.metrics.clone();
        let guards = (
            metrics.type_subscriber(types.len()),
            metrics.edge_connected("grpc"),
        );
        let stream = futures::stream::unfold(Some((rx, guards)), move |st| {
            let stop = stop.clone();
            let filter = filter.clone();
            let metrics = metrics.clone();
            async move {
                let (mut rx, guards) = st?;
                loop {
                    let item = tokio::select! {
                        biased;
                        _ = stop.cancelled() => return None,
                        r = rx.recv() => r,
                    };
                    match item {
                        Ok(item) if filter.matches(item.envelope()) => {
                            metrics.edge_sent("grpc", 1);
                            return Some((Ok(feed_event(&item)), Some((rx, guards))));
                        }
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            metrics.type_subscriber_lagged(n);
                            let status = detailed(
                                Code::Aborted,
                                "subscriber_lagged",
                                503,
                                format!("the subscriber fell {n} events behind the live feed; subscribe again"),
                            );
                            return Some((Err(status), None));
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        });
        Ok(Box::pin(stream))
    }
}

fn feed_event(item: &FeedItem) -> proto::Event {
    match item {
        FeedItem::Stored(ev) => convert::stored("", ev),
        FeedItem::Unstored(env) => convert::event("", env, None),
    }
}

/// The event types a subscriber asked for: full types, or types without a state (every state).
#[derive(Clone)]
struct TypeFilter {
    exact: Vec<String>,
    prefixes: Vec<String>,
}

impl TypeFilter {
    fn parse(types: &[String]) -> Result<TypeFilter, ApiError> {
        let mut f = TypeFilter {
            exact: Vec::new(),
            prefixes: Vec::new(),
        };
        for t in types {
            if EventType::parse(t).is_ok() {
                f.exact.push(t.clone());
            } else if EventType::parse(&format!("{t}:{}", State::Requested)).is_ok() {
                f.prefixes.push(format!("{t}:"));
            } else {
                let shown: String = t.chars().take(80).collect();
                return Err(bad(
                    "invalid_type",
                    format!("{shown:?} is neither {{service}}:{{action}}:v{{N}}:{{state}} nor {{service}}:{{action}}:v{{N}}"),
                ));
            }
        }
        Ok(f)
    }

    fn matches(&self, env: &crate::event::Envelope) -> bool {
        let t = env.event_type.as_str();
        self.exact.iter().any(|e| e == t) || self.prefixes.iter().any(|p| t.starts_with(p.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(t: &str) -> crate::event::Envelope {
        crate::event::Envelope {
            event_type: t.into(),
            id: None,
            stream_id: None,
            seq: None,
            payload: serde_json::Value::Null,
            metadata: None,
            time: None,
        }
    }

    #[test]
    fn type_filters_take_full_types_or_every_state_of_a_version() {
        let f = TypeFilter::parse(&[
            "messaging:stream_messages:v1:requested".into(),
            "demo:stream_ticks:v2".into(),
        ])
        .unwrap();
        assert!(f.matches(&env("messaging:stream_messages:v1:requested")));
        assert!(!f.matches(&env("messaging:stream_messages:v1:started")));
        assert!(f.matches(&env("demo:stream_ticks:v2:stream")));
        assert!(!f.matches(&env("demo:stream_ticks:v20:stream")));
        assert!(!f.matches(&env("demo:stream_ticks:v1:stream")));
        for bad in [
            "",
            "demo",
            "demo:stream_ticks",
            "demo:stream_ticks:v1:bogus",
            "Demo:x:v1",
        ] {
            let err = TypeFilter::parse(&[bad.into()]).err().expect(bad);
            assert_eq!(err.code(), "invalid_type", "{bad}");
        }
    }
}
