//! The stream writer: the ordered, deduplicating writer of one stream's topic.
//!
//! It assigns `seq`s, pipelines produces on the shared idempotent producer (bounded by the caller),
//! publishes each event to live subscribers once Kafka acknowledged it, records a checkpoint only
//! when every chunk it covers is acknowledged, and, for a resumed run, skips the chunks the topic
//! already holds. It does not run handlers or decide when a stream ends; the provider does.
//!
//! An event is serialised once: the bytes sent to Kafka are what subscribers get, with the id
//! spliced in. Checkpoints after the first are written by a background task that always writes
//! the newest one, so a stream checkpointing every chunk neither waits for RocksDB in its loop nor
//! writes more often than RocksDB keeps up with; a checkpoint is still never ahead of Kafka.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, StreamExt};
use futures::FutureExt;
use serde_json::{Map, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::event::{Envelope, EventType, State, StreamId};
use crate::kafka::producer::{self as journal, Journal, Stored};
use crate::kafka::txn::TxnProducer;
use crate::metrics::Metrics;
use crate::store::{Durability, StreamRecord};
use crate::stream::hub::{Live, LiveStream, StoredEvent};
use crate::stream::records::Records;

/// An event handed to Kafka: its `seq`, state, envelope and the bytes sent.
pub struct Written {
    seq: u64,
    state: State,
    envelope: Envelope,
    bytes: Vec<u8>,
}

/// What an acknowledgement future yields: the event, and where it landed.
pub type Acked = (Written, Result<Stored, journal::Error>);

/// An acknowledgement future.
pub type Ack = BoxFuture<'static, Acked>;

/// The background writer of buffered checkpoints: it writes the newest snapshot it was given.
struct Checkpoints {
    newest: watch::Sender<Option<StreamRecord>>,
    task: JoinHandle<()>,
}

impl Checkpoints {
    fn start(records: Records, id: StreamId) -> Checkpoints {
        let (newest, mut rx) = watch::channel::<Option<StreamRecord>>(None);
        let task = tokio::spawn(async move {
            // Ends once the sender is gone and the last snapshot is written.
            while rx.changed().await.is_ok() {
                let Some(record) = rx.borrow_and_update().clone() else {
                    continue;
                };
                if let Err(e) = records.save(record, Durability::Buffered).await {
                    tracing::warn!(stream_id = %id, error = %e, "checkpoint not recorded");
                }
            }
        });
        Checkpoints { newest, task }
    }
}

/// Writes one stream's events in order.
pub struct StreamWriter {
    txn: Arc<TxnProducer>,
    records: Records,
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
    background: Option<Checkpoints>,
    /// On a resumed run, the highest `seq` the topic already holds.
    pub skip_through: Option<u64>,
    terminal: Option<Arc<StoredEvent>>,
}

impl StreamWriter {
    /// A writer for `record`'s stream.
    pub fn new(
        journal: Arc<Journal>,
        txn: Arc<TxnProducer>,
        records: Records,
        metrics: Arc<Metrics>,
        id: StreamId,
        record: StreamRecord,
        live: Arc<LiveStream>,
    ) -> StreamWriter {
        StreamWriter {
            topic: journal.topic_of(&id, Some(&record)),
            requested: record.request.event_type.clone(),
            txn,
            records,
            metrics,
            id,
            record,
            live,
            inflight: FuturesOrdered::new(),
            checkpoints: VecDeque::new(),
            background: None,
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
        let first = self.record.cursor.is_none();
        self.record.cursor = Some(cursor);
        self.record.cursor_seq = seq;
        if first {
            self.persist(Durability::Sync).await;
        } else {
            self.record_in_background(self.record.clone());
        }
    }

    /// Hands a snapshot to the background checkpoint writer, replacing any not yet written.
    fn record_in_background(&mut self, snapshot: StreamRecord) {
        let (records, id) = (&self.records, &self.id);
        self.background
            .get_or_insert_with(|| Checkpoints::start(records.clone(), id.clone()))
            .newest
            .send_replace(Some(snapshot));
    }

    /// Waits until every checkpoint handed to the background writer is written.
    async fn settle_checkpoints(&mut self) {
        if let Some(bg) = self.background.take() {
            drop(bg.newest);
            if let Err(e) = bg.task.await {
                tracing::error!(stream_id = %self.id, error = %e, "checkpoint writer failed");
            }
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
        let mut env = self.envelope(state, seq, payload);
        if metadata.is_some() {
            env.metadata = self.merged_metadata(metadata);
        }
        let bytes = serde_json::to_vec(&env).unwrap_or_default();
        loop {
            match self.txn.enqueue(
                &self.topic,
                None,
                self.id.as_str(),
                Some(&bytes),
                &[("type", &env.event_type)],
                "stream",
            ) {
                Ok(ack) => {
                    // The seq is taken only once the event is enqueued: a write abandoned while
                    // it waited (the run timed out or was cancelled) leaves no hole.
                    self.record.next_seq = seq + 1;
                    let written = Written {
                        seq,
                        state,
                        envelope: env,
                        bytes,
                    };
                    self.inflight
                        .push_back(ack.map(move |r| (written, r)).boxed());
                    return Ok(());
                }
                Err(journal::Error::QueueFull) => match self.inflight.next().await {
                    Some(ack) => self.on_ack(ack)?,
                    None => tokio::time::sleep(Duration::from_millis(1)).await,
                },
                Err(e) => return Err(e),
            }
        }
    }

    /// Handles an acknowledgement and every further one already available, in order.
    pub fn on_acks(&mut self, first: Acked) -> Result<(), journal::Error> {
        self.on_ack(first)?;
        while let Some(Some(ack)) = self.inflight.next().now_or_never() {
            self.on_ack(ack)?;
        }
        Ok(())
    }

    /// Handles one acknowledgement: publish to live subscribers, record covered checkpoints.
    fn on_ack(&mut self, (written, res): Acked) -> Result<(), journal::Error> {
        let Written {
            seq,
            state,
            envelope,
            bytes,
        } = written;
        let stored = res?;
        self.record.last_offset = Some(stored.offset);
        if let Some(ev) = StoredEvent::from_stored(stored.offset, envelope, &bytes) {
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
            self.record_in_background(snapshot);
        }
        Ok(())
    }

    /// Waits for every enqueued event to be acknowledged.
    pub async fn drain(&mut self) -> Result<(), journal::Error> {
        while let Some(ack) = self.inflight.next().await {
            self.on_ack(ack)?;
        }
        Ok(())
    }

    /// Writes the record, after any checkpoint still being written in the background.
    pub async fn persist(&mut self, durability: Durability) {
        self.settle_checkpoints().await;
        if let Err(e) = self.records.save(self.record.clone(), durability).await {
            tracing::error!(stream_id = %self.id, error = %e, "stream record not written");
        }
    }
}
