//! The stream writer: the ordered, deduplicating writer of one stream's topic.
//!
//! It assigns `seq`s, pipelines produces on the shared idempotent producer (bounded by the caller),
//! publishes each event to live subscribers once Kafka acknowledged it, records a checkpoint only
//! when every chunk it covers is acknowledged, and, for a resumed run, skips the chunks the topic
//! already holds. It does not run handlers or decide when a stream ends; the provider does.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, StreamExt};
use futures::FutureExt;
use serde_json::{Map, Value};

use crate::event::{Envelope, EventType, State, StreamId};
use crate::kafka::producer::{self as journal, Journal, Stored};
use crate::metrics::Metrics;
use crate::store::{Durability, Store, StreamRecord};
use crate::stream::hub::{Live, LiveStream, StoredEvent};

/// An acknowledgement future: the event's `seq`, state and envelope, and where it landed.
pub type Ack = BoxFuture<'static, (u64, State, Envelope, Result<Stored, journal::Error>)>;

/// Writes one stream's events in order.
pub struct StreamWriter {
    journal: Arc<Journal>,
    store: Store,
    metrics: Arc<Metrics>,
    /// The stream.
    pub id: StreamId,
    /// Its topic.
    pub topic: String,
    /// The requested type (state `requested`).
    pub requested: EventType,
    /// The stream's record, kept current as events are acknowledged.
    pub record: StreamRecord,
    /// The stream's live fan-out.
    pub live: Arc<LiveStream>,
    /// Enqueued events waiting for Kafka, in `seq` order.
    pub inflight: FuturesOrdered<Ack>,
    checkpoints: VecDeque<(u64, Value)>,
    /// On a resumed run, the highest `seq` the topic already holds.
    pub skip_through: Option<u64>,
    terminal: Option<Arc<StoredEvent>>,
}

impl StreamWriter {
    /// A writer for `record`'s stream.
    pub fn new(
        journal: Arc<Journal>,
        store: Store,
        metrics: Arc<Metrics>,
        id: StreamId,
        record: StreamRecord,
        live: Arc<LiveStream>,
    ) -> StreamWriter {
        StreamWriter {
            topic: journal.topic_for(&id),
            requested: record.request.event_type.clone(),
            journal,
            store,
            metrics,
            id,
            record,
            live,
            inflight: FuturesOrdered::new(),
            checkpoints: VecDeque::new(),
            skip_through: None,
            terminal: None,
        }
    }

    /// Notes a handler checkpoint covering every chunk written so far. It is recorded once Kafka
    /// acknowledged all of them: at once when nothing is in flight (so a source's start position
    /// is durable before its first chunk; a stream's first checkpoint is synced), otherwise with
    /// the acknowledgement that covers it.
    pub async fn checkpoint(&mut self, cursor: Value) {
        let seq = self.record.next_seq.saturating_sub(1);
        if !self.inflight.is_empty() {
            self.checkpoints.push_back((seq, cursor));
            return;
        }
        let durability = if self.record.cursor.is_none() {
            Durability::Sync
        } else {
            Durability::Buffered
        };
        self.record.cursor = Some(cursor);
        self.record.cursor_seq = seq;
        if let Err(e) = self.store.put(&self.record, durability).await {
            tracing::warn!(stream_id = %self.id, error = %e, "checkpoint not recorded");
        }
    }

    /// Publishes the terminal event, held back until the record says the stream ended.
    pub fn publish_terminal(&mut self) {
        if let Some(ev) = self.terminal.take() {
            self.live.publish(Live::Event(ev));
        }
    }

    /// An envelope of this stream in `state`.
    pub fn envelope(&self, state: State, seq: u64, payload: Value) -> Envelope {
        Envelope {
            event_type: self.requested.with_state(state).to_string(),
            id: None,
            stream_id: Some(self.id.to_string()),
            seq: Some(seq),
            payload,
            metadata: self.record.request.metadata.clone(),
            time: Some(chrono::Utc::now()),
        }
    }

    /// The request's metadata with a chunk's own keys over it.
    fn merged_metadata(&self, own: Option<Map<String, Value>>) -> Option<Value> {
        let Some(own) = own else {
            return self.record.request.metadata.clone();
        };
        let mut merged = match &self.record.request.metadata {
            Some(Value::Object(m)) => m.clone(),
            Some(other) => Map::from_iter([("request".to_owned(), other.clone())]),
            None => Map::new(),
        };
        merged.extend(own);
        Some(Value::Object(merged))
    }

    /// Chunks in the stream so far, counting those a previous run stored.
    pub fn chunks(&self) -> u64 {
        let written = self.skip_through.map_or(0, |s| s + 1);
        self.record.next_seq.max(written).saturating_sub(1)
    }

    /// Assigns the next `seq` and enqueues the event; skips chunks a previous run already stored.
    pub async fn write(&mut self, state: State, payload: Value) -> Result<(), journal::Error> {
        self.write_with(state, payload, None).await
    }

    /// As [`StreamWriter::write`], with metadata of the event's own merged over the request's.
    pub async fn write_with(
        &mut self,
        state: State,
        payload: Value,
        metadata: Option<Map<String, Value>>,
    ) -> Result<(), journal::Error> {
        let mut seq = self.record.next_seq;
        if let Some(stored) = self.skip_through.filter(|s| seq <= *s) {
            if state == State::Stream {
                self.record.next_seq += 1;
                return Ok(());
            }
            // Never reuse a seq the topic already holds, even if a resumed handler emitted fewer chunks.
            seq = stored + 1;
        }
        self.record.next_seq = seq + 1;
        let mut env = self.envelope(state, seq, payload);
        if metadata.is_some() {
            env.metadata = self.merged_metadata(metadata);
        }
        let bytes = serde_json::to_vec(&env).unwrap_or_default();
        let event_type = env.event_type.clone();
        loop {
            match self.journal.enqueue(
                &self.topic,
                self.id.as_str(),
                &bytes,
                &[("type", &event_type)],
                "stream",
            ) {
                Ok(ack) => {
                    self.inflight
                        .push_back(ack.map(move |r| (seq, state, env, r)).boxed());
                    return Ok(());
                }
                Err(journal::Error::QueueFull) => match self.inflight.next().await {
                    Some(ack) => self.on_ack(ack).await?,
                    None => tokio::time::sleep(Duration::from_millis(5)).await,
                },
                Err(e) => return Err(e),
            }
        }
    }

    /// Handles one acknowledgement: publish to live subscribers, record covered checkpoints.
    pub async fn on_ack(
        &mut self,
        (seq, state, env, res): (u64, State, Envelope, Result<Stored, journal::Error>),
    ) -> Result<(), journal::Error> {
        let stored = res?;
        self.record.last_offset = Some(stored.offset);
        if let Some(ev) = StoredEvent::new(stored.offset, env) {
            if state.is_terminal() {
                // Published only after the record says the stream ended, so status never lags it.
                self.terminal = Some(Arc::new(ev));
            } else {
                self.live.publish(Live::Event(Arc::new(ev)));
            }
        }
        if state == State::Stream {
            self.metrics
                .chunk_stored(self.requested.service(), self.requested.action());
        }
        let mut latest = None;
        while self.checkpoints.front().is_some_and(|(s, _)| *s <= seq) {
            latest = self.checkpoints.pop_front();
        }
        if let Some((cp_seq, cursor)) = latest {
            self.record.cursor = Some(cursor);
            self.record.cursor_seq = cp_seq;
            let mut snapshot = self.record.clone();
            snapshot.next_seq = seq + 1;
            if let Err(e) = self.store.put(&snapshot, Durability::Buffered).await {
                tracing::warn!(stream_id = %self.id, error = %e, "checkpoint not recorded");
            }
        }
        Ok(())
    }

    /// Waits for every enqueued event to be acknowledged.
    pub async fn drain(&mut self) -> Result<(), journal::Error> {
        while let Some(ack) = self.inflight.next().await {
            self.on_ack(ack).await?;
        }
        Ok(())
    }

    /// Writes the record.
    pub async fn persist(&mut self, durability: Durability) {
        if let Err(e) = self.store.put(&self.record, durability).await {
            tracing::error!(stream_id = %self.id, error = %e, "stream record not written");
        }
    }
}
