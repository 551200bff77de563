//! WebSocket transport: `GET /ws`, JSON text frames `{type, stream_id, id, seq, payload}`.
//!
//! Client frames: a request (`{"type":"svc:action:v1:requested","payload":{…}}`), `subscribe`
//! (`stream_id`, optional `last_event_id`), `cancel` (`stream_id`) and `ping`. Several streams may
//! be followed on one socket. A bad frame gets an `error` frame and the socket stays open.

use std::collections::HashMap;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};

use super::{api, parse_id, ApiError, Shared};
use crate::event::StreamId;
use crate::subscription::Delivery;

/// `GET /ws`
pub async fn upgrade(State(state): State<Shared>, ws: WebSocketUpgrade) -> Response {
    let limit = state.intake.max_request_bytes;
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| serve(state, socket))
}

fn error_frame(stream_id: Option<&str>, err: &ApiError) -> String {
    json!({"type": "error", "stream_id": stream_id, "id": null, "seq": null,
           "payload": {"code": err.code(), "message": err.to_string()}})
    .to_string()
}

fn delivery_frame(stream_id: &str, d: &Delivery) -> String {
    match d {
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
    out: mpsc::Sender<String>,
    followers: JoinSet<String>,
    following: HashMap<String, AbortHandle>,
}

async fn serve(state: Shared, socket: WebSocket) {
    let _guard = state.metrics.edge_connected("ws");
    let (mut sink, mut incoming) = socket.split();
    let (out, mut out_rx) = mpsc::channel::<String>(256);
    let shutdown = state.subs.shutdown.clone();
    let mut s = Socket {
        state,
        out,
        followers: JoinSet::new(),
        following: HashMap::new(),
    };
    loop {
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
            msg = incoming.next() => match msg {
                Some(Ok(Message::Text(t))) => s.frame(t.as_str()).await,
                Some(Ok(Message::Binary(_))) => s.reject(None, ApiError::BadRequest {
                    code: "binary_frame",
                    message: "only JSON text frames are accepted".into(),
                }).await,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
            }
        }
    }
    s.followers.abort_all();
}

impl Socket {
    async fn reject(&self, stream_id: Option<&str>, err: ApiError) {
        self.state
            .metrics
            .edge_rejected(err.code(), &format!("ws: {err}"));
        let _ = self.out.send(error_frame(stream_id, &err)).await;
    }

    async fn frame(&mut self, text: &str) {
        let value: Value = match serde_json::from_str(text) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => {
                return self
                    .reject(
                        None,
                        bad("malformed_json", "a frame must be a JSON object".into()),
                    )
                    .await
            }
            Err(e) => {
                return self
                    .reject(None, bad("malformed_json", format!("malformed JSON: {e}")))
                    .await
            }
        };
        let kind = value.get("type").and_then(Value::as_str).unwrap_or("");
        let stream_id = value
            .get("stream_id")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let result = match kind {
            "ping" => {
                let _ = self.out.send(json!({"type": "pong"}).to_string()).await;
                Ok(())
            }
            "subscribe" => self.subscribe(&value).await,
            "cancel" => self.cancel(&value).await,
            _ => self.request(text).await,
        };
        if let Err(e) = result {
            self.reject(stream_id.as_deref(), e).await;
        }
    }

    async fn request(&mut self, text: &str) -> Result<(), ApiError> {
        self.check_capacity()?;
        let (id, existed) = self.state.submit(text.as_bytes()).await?;
        let ack = json!({"type": "accepted", "stream_id": id.as_str(), "id": null, "seq": null,
                         "payload": {"existing": existed}});
        let _ = self.out.send(ack.to_string()).await;
        self.follow(id, None, self.state.edge.request_start_wait)
    }

    async fn subscribe(&mut self, v: &Value) -> Result<(), ApiError> {
        let id = parse_id(v.get("stream_id").and_then(Value::as_str).unwrap_or(""))?;
        let after = match v.get("last_event_id") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => Some(super::parse_event_id(&n.to_string())?),
            Some(Value::String(s)) => Some(super::parse_event_id(s)?),
            Some(other) => Some(super::parse_event_id(&other.to_string())?),
        };
        self.check_capacity()?;
        self.follow(id, after, self.state.edge.early_connect_wait)
    }

    async fn cancel(&mut self, v: &Value) -> Result<(), ApiError> {
        let id = parse_id(v.get("stream_id").and_then(Value::as_str).unwrap_or(""))?;
        api::cancel_stream(&self.state, &id).await?;
        let ack = json!({"type": "cancelling", "stream_id": id.as_str(), "id": null, "seq": null, "payload": {}});
        let _ = self.out.send(ack.to_string()).await;
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
    ) -> Result<(), ApiError> {
        self.following.retain(|_, h| !h.is_finished());
        if self.following.contains_key(id.as_str()) {
            return Err(ApiError::Conflict {
                code: "already_subscribed",
                message: format!("this socket already follows stream {id}"),
            });
        }
        let key = id.to_string();
        let state = self.state.clone();
        let out = self.out.clone();
        let handle = self.followers.spawn(async move {
            match state.subs.open(&id, after, wait).await {
                Ok(mut rx) => {
                    while let Some(d) = rx.recv().await {
                        if out.send(delivery_frame(id.as_str(), &d)).await.is_err() {
                            break;
                        }
                    }
                }
                Err(e) => {
                    let err = ApiError::from(e);
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

fn bad(code: &'static str, message: String) -> ApiError {
    ApiError::BadRequest { code, message }
}
