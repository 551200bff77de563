//! The handler API: the [`StreamHandler`] trait, the [`StreamContext`] a handler runs with, and the
//! [`Registry`] that maps `service:action` to a handler.
//!
//! This module does not run handlers; the provider does, and turns what they emit into events. It
//! does not know the handler kinds either: `app` registers them.

pub mod demo;
pub mod http;
pub mod kafka;
pub mod template;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::event::{EventType, Request, StreamId};

/// A handler's failure; it becomes a `failed` event with `{code, message}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct HandlerError {
    /// A short machine-readable code.
    pub code: String,
    /// A human-readable explanation.
    pub message: String,
}

impl HandlerError {
    /// A handler error with the given code and message.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        HandlerError {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// The stream stopped listening: it was cancelled, timed out or the process is shutting down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stream closed")]
pub struct Closed;

impl From<Closed> for HandlerError {
    fn from(_: Closed) -> Self {
        HandlerError::new("closed", "stream closed")
    }
}

/// What a handler sends to the provider, in order.
#[derive(Debug)]
pub enum Output {
    /// A chunk of data, stored as the next `stream` event.
    Chunk(Chunk),
    /// An opaque cursor covering every chunk emitted before it.
    Checkpoint(Value),
}

/// One chunk: its payload, and metadata of its own (such as where a source record came from),
/// merged over the request's metadata on the stored event.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    /// The `payload` of the `stream` event.
    pub payload: Value,
    /// Extra `metadata` keys of this chunk's event.
    pub metadata: Option<serde_json::Map<String, Value>>,
}

/// How a handler resumes an interrupted stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResumeMode {
    /// The handler re-emits every chunk after its cursor (or from the start), the same chunks in
    /// the same order; the provider drops those the stream topic already holds, by `seq`.
    #[default]
    Replay,
    /// The handler is told which chunks the topic holds after its cursor
    /// ([`StreamContext::stored_since_checkpoint`]) and continues after them; nothing is dropped.
    /// For sources whose replay order is not deterministic, such as several Kafka partitions.
    AfterStored,
}

/// Everything a running handler may use.
pub struct StreamContext {
    stream_id: StreamId,
    request: Arc<Request>,
    resume_from: Option<Value>,
    stored: Vec<Chunk>,
    tx: mpsc::Sender<Output>,
    cancel: CancellationToken,
}

impl StreamContext {
    /// Builds a context; used by the provider and by handler unit tests.
    pub fn new(
        stream_id: StreamId,
        request: Arc<Request>,
        resume_from: Option<Value>,
        tx: mpsc::Sender<Output>,
        cancel: CancellationToken,
    ) -> Self {
        StreamContext {
            stream_id,
            request,
            resume_from,
            stored: Vec::new(),
            tx,
            cancel,
        }
    }

    /// Sets the chunks the stream topic holds after the resume cursor (`ResumeMode::AfterStored`).
    pub fn with_stored(mut self, stored: Vec<Chunk>) -> Self {
        self.stored = stored;
        self
    }

    /// Emits one chunk. Waits while the bounded channel is full (backpressure).
    pub async fn emit(&self, payload: Value) -> Result<(), Closed> {
        self.emit_chunk(Chunk {
            payload,
            metadata: None,
        })
        .await
    }

    /// Emits one chunk with metadata of its own.
    pub async fn emit_chunk(&self, chunk: Chunk) -> Result<(), Closed> {
        self.tx.send(Output::Chunk(chunk)).await.map_err(|_| Closed)
    }

    /// Records a cursor that covers every chunk emitted so far; a resumed run starts from it.
    pub async fn checkpoint(&self, cursor: Value) -> Result<(), Closed> {
        self.tx
            .send(Output::Checkpoint(cursor))
            .await
            .map_err(|_| Closed)
    }

    /// Completes when the stream is cancelled, times out or the process shuts down.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.cancel.cancelled()
    }

    /// Whether the stream has been asked to stop.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// The stream's id.
    pub fn stream_id(&self) -> &StreamId {
        &self.stream_id
    }

    /// The request that started the stream.
    pub fn request(&self) -> &Request {
        &self.request
    }

    /// The cursor of the last checkpoint when this run resumes an interrupted stream.
    pub fn resume_from(&self) -> Option<&Value> {
        self.resume_from.as_ref()
    }

    /// For `ResumeMode::AfterStored` handlers: the chunks an earlier run stored after the cursor,
    /// in order. Empty on a first run.
    pub fn stored_since_checkpoint(&self) -> &[Chunk] {
        &self.stored
    }
}

/// A stream handler: produces chunks for one request.
#[async_trait]
pub trait StreamHandler: Send + Sync + 'static {
    /// Runs the stream to completion. Returning `Ok` ends the stream in `success`.
    async fn run(&self, ctx: StreamContext) -> Result<(), HandlerError>;

    /// How an interrupted stream of this handler resumes.
    fn resume_mode(&self) -> ResumeMode {
        ResumeMode::Replay
    }
}

/// Handlers keyed by `service:action`.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: HashMap<String, Arc<dyn StreamHandler>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry::default()
    }

    /// Registers `handler` for `kind` (`service:action`), replacing any earlier one.
    pub fn register(&mut self, kind: &str, handler: impl StreamHandler) {
        self.handlers.insert(kind.to_owned(), Arc::new(handler));
    }

    /// Adds every handler of `other`, replacing any registered for the same kind.
    pub fn extend(&mut self, other: Registry) {
        self.handlers.extend(other.handlers);
    }

    /// The registered `service:action` names.
    pub fn kinds(&self) -> impl Iterator<Item = &str> {
        self.handlers.keys().map(String::as_str)
    }

    /// The handler for an event type, if one is registered.
    pub fn get(&self, event_type: &EventType) -> Option<Arc<dyn StreamHandler>> {
        self.handlers.get(&event_type.kind()).cloned()
    }

    /// Whether an event type is streaming: registered, or named by a streaming pattern.
    pub fn is_streaming(&self, event_type: &EventType) -> bool {
        self.handlers.contains_key(&event_type.kind()) || event_type.matches_streaming_pattern()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nop;

    #[async_trait]
    impl StreamHandler for Nop {
        async fn run(&self, _ctx: StreamContext) -> Result<(), HandlerError> {
            Ok(())
        }
    }

    #[test]
    fn registry_detects_streaming_by_registration_and_pattern() {
        let mut r = Registry::new();
        r.register("billing:charges", Nop);
        let registered = EventType::parse("billing:charges:v1:requested").unwrap();
        let pattern = EventType::parse("media:stream_media_content:v1:requested").unwrap();
        let neither = EventType::parse("billing:refund:v1:requested").unwrap();
        assert!(r.is_streaming(&registered) && r.get(&registered).is_some());
        assert!(r.is_streaming(&pattern) && r.get(&pattern).is_none());
        assert!(!r.is_streaming(&neither));
    }

    #[tokio::test]
    async fn emit_applies_backpressure_and_reports_closed() {
        let (tx, mut rx) = mpsc::channel(1);
        let req = Arc::new(
            Request::parse(br#"{"type":"demo:stream_ticks:v1:requested"}"#, 1024).unwrap(),
        );
        let ctx = StreamContext::new(StreamId::random(), req, None, tx, CancellationToken::new());
        ctx.emit(Value::from(1)).await.unwrap();
        let blocked = tokio::time::timeout(
            std::time::Duration::from_millis(20),
            ctx.emit(Value::from(2)),
        )
        .await;
        assert!(blocked.is_err(), "a full channel must block emit");
        assert!(matches!(rx.recv().await, Some(Output::Chunk(c)) if c.payload == 1));
        drop(rx);
        assert_eq!(ctx.emit(Value::from(3)).await, Err(Closed));
    }
}
