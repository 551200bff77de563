//! WebSocket transport: `GET /ws`, JSON text frames `{type, stream_id, id, seq, payload}`.
//!
//! Client frames: a request (`{"type":"svc:action:v1:requested","payload":{…}}`), `subscribe`
//! (`stream_id`, optional `last_event_id`), `cancel` (`stream_id`) and `ping`. Several streams may
//! be followed on one socket. A bad frame gets an `error` frame and the socket stays open.
//!
//! The caller is authenticated once, at the upgrade; each subscribe, cancel and request is then
//! authorised like its HTTP twin. The server pings every third of `limits.ws_idle_timeout`, and a
//! socket from which nothing arrives (not even the pong a browser sends by itself) for that long is
//! closed with 1008. A frame over `intake.max_request_bytes` closes it with 1009, and the socket's
//! authorisation lasts no longer than its token: when a JWT's `exp` (plus the leeway) passes, the
//! socket is closed with 4401 ("token expired"), and the client reconnects with a fresh token.
//!
//! Two paths lead to the socket, and neither can wait on the other. Followers push stream events
//! into a bounded queue that the socket task drains. Replies to client frames (`pong`, `accepted`,
//! `cancelling`, errors) never enter that queue: the socket task writes them to the socket itself.

use std::collections::HashMap;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, State};
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sluice_wire::frames::ClientFrame;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;

use super::access::{self, authorize, Caller};
use super::{api, parse_id, ApiError, Shared};
use crate::event::StreamId;
use crate::stream::subscription::Delivery;

/// `GET /ws`
pub async fn upgrade(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    ws: WebSocketUpgrade,
) -> Response {
    let limit = state.intake.max_request_bytes;
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| serve(state, caller, socket))
}

/// The close code of a frame over the size limit (RFC 6455 "message too big").
const CLOSE_TOO_BIG: u16 = 1009;
/// The close code of a socket whose token expired (application range; mirrors HTTP 401).
const CLOSE_TOKEN_EXPIRED: u16 = 4401;

/// Whether a receive error is a message or frame over the size limit.
fn too_big(e: &axum::Error) -> bool {
    use std::error::Error as _;
    use tungstenite::error::{CapacityError, Error};
    e.source()
        .and_then(|inner| inner.downcast_ref::<Error>())
        .is_some_and(|e| matches!(e, Error::Capacity(CapacityError::MessageTooLong { .. })))
}

/// When a token expiring at `exp` (unix seconds) stops being honoured, on the runtime's clock.
fn token_deadline(exp: Option<i64>) -> Option<Instant> {
    let now = chrono::Utc::now().timestamp_millis();
    exp.map(|t| {
        let left = t.saturating_mul(1000).saturating_sub(now).max(0) as u64;
        Instant::now() + std::time::Duration::from_millis(left)
    })
}

fn error_frame(stream_id: Option<&str>, err: &ApiError) -> String {
    json!({"type": "error", "stream_id": stream_id, "id": null, "seq": null,
           "payload": {"code": err.code(), "status": err.status().as_u16(), "message": err.to_string()}})
    .to_string()
}

fn delivery_frame(stream_id: &str, d: &Delivery) -> String {
    match d {
        Delivery::Event(ev) if ev.envelope.stream_id.as_deref() == Some(stream_id) => {
            return ev.ws_frame().to_owned()
        }
        Delivery::Event(ev) => json!({"type": ev.envelope.event_type, "stream_id": stream_id,
            "id": ev.offset, "seq": ev.envelope.seq, "payload": ev.envelope.payload}),
        Delivery::Heartbeat(h) => json!({"type": h.event_type, "stream_id": stream_id,
            "id": null, "seq": null, "payload": h.payload}),
        Delivery::HistoryLost {
            requested,
            earliest,
        } => json!({"type": "history_lost",
            "stream_id": stream_id, "id": null, "seq": null,
            "payload": {"requested_id": requested, "earliest_id": earliest}}),
    }
    .to_string()
}

struct Socket {
    state: Shared,
    caller: Caller,
    /// The followers' queue. Only followers send into it; the socket task only drains it.
    out: mpsc::Sender<String>,
    /// Replies to the frame being handled, written to the socket directly by the socket task.
    replies: Vec<String>,
    followers: JoinSet<String>,
    following: HashMap<String, AbortHandle>,
}

async fn serve(state: Shared, caller: Caller, socket: WebSocket) {
    let _guard = state.metrics.edge_connected("ws");
    let (mut sink, mut incoming) = socket.split();
    let (out, mut out_rx) = mpsc::channel::<String>(256);
    let shutdown = state.subs.shutdown.clone();
    let idle = state.limits.ws_idle_timeout;
    let mut heard = Instant::now();
    // At least 1 ms: a zero period would panic, and validation only refuses a zero timeout.
    let every = (idle / 3).max(std::time::Duration::from_millis(1));
    let mut ping = tokio::time::interval_at(Instant::now() + every, every);
    let expiry = token_deadline(caller.identity.expires_at());
    let mut s = Socket {
        state,
        caller,
        out,
        replies: Vec::new(),
        followers: JoinSet::new(),
        following: HashMap::new(),
    };
    'serve: loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                let _ = sink.send(Message::Close(None)).await;
                break;
            }
            Some(done) = s.followers.join_next(), if !s.followers.is_empty() => {
                if let Ok(id) = done {
                    s.following.remove(&id);
                }
            }
            Some(text) = out_rx.recv() => {
                if sink.send(Message::Text(text.into())).await.is_err() {
                    break;
                }
                s.state.metrics.edge_sent("ws", 1);
            }
            _ = tokio::time::sleep_until(heard + idle) => {
                s.state.metrics.edge_rejected(
                    "ws_idle",
                    &format!("ws: nothing received for {idle:?} (limits.ws_idle_timeout)"),
                );
                let close = CloseFrame { code: 1008, reason: "idle timeout".into() };
                let _ = sink.send(Message::Close(Some(close))).await;
                break;
            }
            _ = tokio::time::sleep_until(expiry.unwrap_or(heard)), if expiry.is_some() => {
                s.state.metrics.edge_rejected(
                    "ws_token_expired",
                    "ws: the socket's token expired",
                );
                let close = CloseFrame { code: CLOSE_TOKEN_EXPIRED, reason: "token expired".into() };
                let _ = sink.send(Message::Close(Some(close))).await;
                break;
            }
            _ = ping.tick() => {
                if sink.send(Message::Ping(Default::default())).await.is_err() {
                    break;
                }
            }
            msg = incoming.next() => match msg.inspect(|_| heard = Instant::now()) {
                Some(Ok(Message::Text(t))) => s.frame(t.as_str()).await,
                Some(Ok(Message::Binary(_))) => s.reject(None, ApiError::BadRequest {
                    code: "binary_frame",
                    message: "only JSON text frames are accepted".into(),
                }),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Err(e)) if too_big(&e) => {
                    let limit = s.state.intake.max_request_bytes;
                    s.state.metrics.edge_rejected(
                        "too_large",
                        &format!("ws: a frame over {limit} bytes (intake.max_request_bytes)"),
                    );
                    let reason = format!("frame over {limit} bytes");
                    let close = CloseFrame { code: CLOSE_TOO_BIG, reason: reason.into() };
                    let _ = sink.send(Message::Close(Some(close))).await;
                    break;
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
            }
        }
        for reply in s.replies.drain(..) {
            if sink.send(Message::Text(reply.into())).await.is_err() {
                break 'serve;
            }
            s.state.metrics.edge_sent("ws", 1);
        }
    }
    s.followers.abort_all();
}

impl Socket {
    fn reply(&mut self, frame: Value) {
        self.replies.push(frame.to_string());
    }

    fn reject(&mut self, stream_id: Option<&str>, err: ApiError) {
        self.state
            .metrics
            .edge_rejected(err.code(), &format!("ws: {err}"));
        self.replies.push(error_frame(stream_id, &err));
    }

    async fn frame(&mut self, text: &str) {
        let (stream_id, result) = match ClientFrame::decode(text) {
            Err((stream_id, e)) => (stream_id, Err(e.into())),
            Ok(ClientFrame::Ping) => {
                self.reply(json!({"type": "pong"}));
                (None, Ok(()))
            }
            Ok(ClientFrame::Subscribe {
                stream_id,
                last_event_id,
            }) => {
                let r = self.subscribe(&stream_id, last_event_id).await;
                (Some(stream_id), r)
            }
            Ok(ClientFrame::Cancel { stream_id }) => {
                let r = self.cancel(&stream_id).await;
                (Some(stream_id), r)
            }
            Ok(ClientFrame::Request) => (None, self.request(text).await),
        };
        if let Err(e) = result {
            self.reject(stream_id.as_deref(), e);
        }
    }

    async fn request(&mut self, text: &str) -> Result<(), ApiError> {
        self.check_capacity()?;
        let (id, existed) = self.state.submit(text.as_bytes(), &self.caller).await?;
        self.reply(
            json!({"type": "accepted", "stream_id": id.as_str(), "id": null, "seq": null,
                         "payload": {"existing": existed}}),
        );
        // Followed only once the stream's record names an owner this caller may read: the
        // request may have lost the id to one made at the same moment elsewhere.
        self.follow(id, None, self.state.edge.request_start_wait, true)
    }

    async fn subscribe(&mut self, stream_id: &str, after: Option<i64>) -> Result<(), ApiError> {
        let id = parse_id(stream_id)?;
        authorize(&self.state, &self.caller.identity, &id).await?;
        self.check_capacity()?;
        self.follow(id, after, self.state.edge.early_connect_wait, false)
    }

    async fn cancel(&mut self, stream_id: &str) -> Result<(), ApiError> {
        let id = parse_id(stream_id)?;
        authorize(&self.state, &self.caller.identity, &id).await?;
        api::cancel_stream(&self.state, &id).await?;
        self.reply(json!({"type": "cancelling", "stream_id": id.as_str(), "id": null, "seq": null, "payload": {}}));
        Ok(())
    }

    fn check_capacity(&mut self) -> Result<(), ApiError> {
        self.following.retain(|_, h| !h.is_finished());
        if self.following.len() >= self.state.edge.max_streams_per_socket {
            return Err(ApiError::Conflict {
                code: "too_many_streams",
                message: format!(
                    "a socket may follow at most {} streams",
                    self.state.edge.max_streams_per_socket
                ),
            });
        }
        Ok(())
    }

    fn follow(
        &mut self,
        id: StreamId,
        after: Option<i64>,
        wait: std::time::Duration,
        authorize_first: bool,
    ) -> Result<(), ApiError> {
        self.following.retain(|_, h| !h.is_finished());
        if self.following.contains_key(id.as_str()) {
            return Err(ApiError::Conflict {
                code: "already_subscribed",
                message: format!("this socket already follows stream {id}"),
            });
        }
        let key = id.to_string();
        let slot = self.state.subscriber_slot(&id)?;
        let state = self.state.clone();
        let out = self.out.clone();
        let who = self.caller.identity.clone();
        let handle = self.followers.spawn(async move {
            let _slot = slot;
            let allowed = match authorize_first {
                true => access::authorize_within(&state, &who, &id, wait).await,
                false => Ok(()),
            };
            let opened = match allowed {
                Ok(()) => state
                    .subs
                    .open(&id, after, wait)
                    .await
                    .map_err(ApiError::from),
                Err(e) => Err(e),
            };
            match opened {
                Ok(mut rx) => {
                    while let Some(d) = rx.recv().await {
                        if out.send(delivery_frame(id.as_str(), &d)).await.is_err() {
                            break;
                        }
                    }
                }
                Err(err) => {
                    state
                        .metrics
                        .edge_rejected(err.code(), &format!("ws: {err}"));
                    let _ = out.send(error_frame(Some(id.as_str()), &err)).await;
                }
            }
            id.to_string()
        });
        self.following.insert(key, handle);
        Ok(())
    }
}
