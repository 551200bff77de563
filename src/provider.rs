//! The provider: runs one stream from `started` to exactly one terminal event.
//!
//! It owns the handler task (a panic becomes `failed`), the bounded chunk channel, the timeout,
//! heartbeats, pipelined produces to the stream topic, publishing acknowledged events to the hub,
//! checkpoints, and the dedup that makes a resumed run write each `seq` once. It does not decide
//! which streams run; the pool and intake do.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, StreamExt};
use futures::FutureExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::event::{Envelope, EventType, State, StreamId};
use crate::handler::{HandlerError, Output, Registry, StreamContext};
use crate::hub::{Hub, Live, LiveStream, StoredEvent};
use crate::journal::{self, Journal, Stored};
use crate::metrics::Metrics;
use crate::reader::Reader;
use crate::settings::ProviderSettings;
use crate::store::{Durability, Store, StreamRecord, StreamState};

type Ack = BoxFuture<'static, (u64, State, Envelope, Result<Stored, journal::Error>)>;

/// Shared services a stream run needs. Cheap to share behind an `Arc`.
pub struct Provider {
    /// Kafka storage.
    pub journal: Arc<Journal>,
    /// Replay reads, used to find what a resumed stream already wrote.
    pub reader: Arc<Reader>,
    /// The stream store.
    pub store: Store,
    /// Live fan-out.
    pub hub: Hub,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Handlers.
    pub registry: Arc<Registry>,
    /// `[provider]` settings.
    pub settings: ProviderSettings,
}

/// How a run's main loop ended.
enum End {
    HandlerDone,
    Cancelled,
    Timeout,
    Shutdown,
    Failed(HandlerError),
    Storage(journal::Error),
}

/// One stream's run.
struct Run<'a> {
    p: &'a Provider,
    id: StreamId,
    topic: String,
    requested: EventType,
    record: StreamRecord,
    live: Arc<LiveStream>,
    inflight: FuturesOrdered<Ack>,
    checkpoints: VecDeque<(u64, Value)>,
    skip_through: Option<u64>,
    terminal: Option<Arc<StoredEvent>>,
    started: Instant,
}

fn panic_message(err: tokio::task::JoinError) -> String {
    match err.try_into_panic() {
        Ok(p) => p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "handler panicked".into()),
        Err(e) => e.to_string(),
    }
}

impl Provider {
    /// Runs a registered stream until it ends or `shutdown` fires, then unregisters it.
    pub async fn run(
        self: Arc<Self>,
        record: StreamRecord,
        live: Arc<LiveStream>,
        shutdown: CancellationToken,
    ) {
        let id = record.stream_id.clone();
        let Ok(stream_id) = StreamId::parse(&id) else {
            tracing::error!(
                stream_id = id,
                "refusing to run a stream with an invalid id"
            );
            self.hub.remove(&id);
            return;
        };
        let mut run = Run {
            p: &self,
            topic: self.journal.topic_for(&stream_id),
            id: stream_id,
            requested: record.request.event_type.clone(),
            record,
            live,
            inflight: FuturesOrdered::new(),
            checkpoints: VecDeque::new(),
            skip_through: None,
            terminal: None,
            started: Instant::now(),
        };
        run.execute(&shutdown).await;
        self.hub.remove(&id);
    }
}

impl Provider {
    /// Ends a stream whose record cannot be decoded: appends `failed` with code `corrupt_record`
    /// after the last event in its topic, unless that event is already terminal.
    pub async fn fail_unreadable(&self, id: &str) -> anyhow::Result<()> {
        let stream_id = StreamId::parse(id)?;
        let topic = self.journal.topic_for(&stream_id);
        let marks = match self.reader.watermarks(&topic).await {
            Ok(m) => m,
            Err(crate::reader::Error::UnknownTopic(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        if marks.high <= marks.low {
            return Ok(());
        }
        let Some(last) = self
            .reader
            .read(&topic, marks.high - 1, marks.high)
            .await?
            .pop()
        else {
            return Ok(());
        };
        if last.state.is_terminal() {
            return Ok(());
        }
        let event_type = EventType::parse(&last.envelope.event_type)?;
        let env = Envelope {
            event_type: event_type.with_state(State::Failed).to_string(),
            id: None,
            stream_id: Some(id.to_owned()),
            seq: Some(last.envelope.seq.unwrap_or(0) + 1),
            payload: json!({"code": "corrupt_record", "message": "the stream's checkpoint record could not be decoded"}),
            metadata: last.envelope.metadata.clone(),
            time: Some(chrono::Utc::now()),
        };
        let bytes = serde_json::to_vec(&env)?;
        self.journal
            .produce(&topic, id, &bytes, &[("type", &env.event_type)], "stream")
            .await?;
        self.metrics.stream_finished(
            &event_type.with_state(State::Failed),
            id,
            last.envelope.seq.unwrap_or(0),
            Duration::ZERO,
            Some("corrupt_record"),
        );
        Ok(())
    }
}

impl Run<'_> {
    fn envelope(&self, state: State, seq: u64, payload: Value) -> Envelope {
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

    fn chunks(&self) -> u64 {
        let written = self.skip_through.map_or(0, |s| s + 1);
        self.record.next_seq.max(written).saturating_sub(1)
    }

    async fn execute(&mut self, shutdown: &CancellationToken) {
        let (service, action) = (
            self.requested.service().to_owned(),
            self.requested.action().to_owned(),
        );
        if !self.create_topic(shutdown).await {
            return;
        }
        self.record.attempts += 1;
        self.record.state = StreamState::Running;
        if self.record.next_seq > 0 {
            self.p.metrics.stream_resumed(
                &service,
                &action,
                self.id.as_str(),
                self.record.attempts,
            );
            match self.prepare_resume().await {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    tracing::error!(stream_id = %self.id, error = %e, "cannot read stream topic to resume; will retry on next start");
                    return;
                }
            }
        }
        self.persist(Durability::Buffered).await;
        self.p.metrics.stream_started(
            &service,
            &action,
            self.id.as_str(),
            &self.record.request.event_type.to_string(),
            self.record.attempts,
        );
        let end = if self.record.attempts > self.p.settings.max_attempts {
            Some(End::Failed(HandlerError::new(
                "resume_exhausted",
                format!(
                    "stream did not finish in {} attempts",
                    self.p.settings.max_attempts
                ),
            )))
        } else if self.record.next_seq == 0 {
            let attempt = self.record.attempts;
            match self
                .write(State::Started, json!({"attempt": attempt}))
                .await
            {
                Ok(()) => self.drain().await.err().map(End::Storage),
                Err(e) => Some(End::Storage(e)),
            }
        } else {
            None
        };
        let end = match end {
            Some(end) => end,
            None => self.run_handler(shutdown).await,
        };
        self.finish(end).await;
        self.p.metrics.stream_inactive(&service, &action);
    }

    /// Creates the stream topic, retrying with backoff while Kafka is unavailable.
    async fn create_topic(&mut self, shutdown: &CancellationToken) -> bool {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.p.journal.ensure_stream_topic(&self.id).await {
                Ok(()) => return true,
                Err(e) => {
                    tracing::warn!(stream_id = %self.id, error = %e, "stream topic not created; retrying");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Finds what an interrupted run already wrote. Returns false if the stream had in fact ended.
    async fn prepare_resume(&mut self) -> Result<bool, crate::reader::Error> {
        let marks = self.p.reader.watermarks(&self.topic).await?;
        let last = if marks.high > marks.low {
            self.p
                .reader
                .read(&self.topic, marks.high - 1, marks.high)
                .await?
                .pop()
        } else {
            None
        };
        let Some(last) = last else {
            self.record.next_seq = 0;
            return Ok(true);
        };
        let last_seq = last.envelope.seq.unwrap_or(0);
        if last.state.is_terminal() {
            self.record.state = terminal_state(last.state);
            self.record.next_seq = last_seq + 1;
            self.record.last_offset = Some(last.offset);
            self.record.finished_at = Some(chrono::Utc::now());
            self.persist(Durability::Sync).await;
            return Ok(false);
        }
        self.skip_through = Some(last_seq);
        self.record.last_offset = Some(last.offset);
        self.record.next_seq = self.record.cursor_seq + 1;
        tracing::info!(stream_id = %self.id, cursor_seq = self.record.cursor_seq, topic_seq = last_seq, "resuming after the last checkpoint; already stored chunks are skipped");
        Ok(true)
    }

    async fn run_handler(&mut self, shutdown: &CancellationToken) -> End {
        let Some(handler) = self.p.registry.get(&self.requested) else {
            return End::Failed(HandlerError::new(
                "unknown_handler",
                format!("no handler is registered for {}", self.requested.kind()),
            ));
        };
        let (tx, mut rx) = mpsc::channel(self.p.settings.chunk_channel_capacity);
        let handler_cancel = CancellationToken::new();
        let ctx = StreamContext::new(
            self.id.clone(),
            Arc::new(self.record.request.clone()),
            self.record.cursor.clone(),
            tx,
            handler_cancel.clone(),
        );
        let mut tasks = JoinSet::new();
        tasks.spawn(async move { handler.run(ctx).await });
        let elapsed = (chrono::Utc::now() - self.record.created_at)
            .to_std()
            .unwrap_or_default();
        let deadline = tokio::time::sleep(self.p.settings.stream_timeout.saturating_sub(elapsed));
        tokio::pin!(deadline);
        let mut heartbeat = tokio::time::interval(self.p.settings.heartbeat_interval);
        heartbeat.tick().await;
        let max_inflight = self.p.settings.max_inflight_produces;
        let cancel = self.live.cancel_token().clone();
        let end = loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break End::Shutdown,
                _ = cancel.cancelled() => break End::Cancelled,
                _ = &mut deadline => break End::Timeout,
                Some(ack) = self.inflight.next(), if !self.inflight.is_empty() => {
                    if let Err(e) = self.on_ack(ack).await {
                        break End::Storage(e);
                    }
                }
                _ = heartbeat.tick() => self.heartbeat(),
                out = rx.recv(), if self.inflight.len() < max_inflight => match out {
                    Some(Output::Chunk(v)) => {
                        if let Err(end) = self.chunk(v).await {
                            break end;
                        }
                    }
                    Some(Output::Checkpoint(cursor)) => {
                        let seq = self.record.next_seq.saturating_sub(1);
                        self.checkpoints.push_back((seq, cursor));
                    }
                    None => break End::HandlerDone,
                }
            }
        };
        handler_cancel.cancel();
        drop(rx);
        match end {
            End::HandlerDone => match tasks.join_next().await {
                Some(Ok(Ok(()))) | None => End::HandlerDone,
                Some(Ok(Err(e))) => End::Failed(e),
                Some(Err(join)) => {
                    let msg = panic_message(join);
                    self.p.metrics.handler_panicked(self.id.as_str(), &msg);
                    End::Failed(HandlerError::new("handler_panic", msg))
                }
            },
            other => {
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                other
            }
        }
    }

    async fn chunk(&mut self, payload: Value) -> Result<(), End> {
        let size = serde_json::to_vec(&payload)
            .map(|b| b.len())
            .unwrap_or(usize::MAX);
        if size > self.p.settings.max_chunk_bytes {
            return Err(End::Failed(HandlerError::new(
                "chunk_too_large",
                format!(
                    "chunk of {size} bytes exceeds provider.max_chunk_bytes ({})",
                    self.p.settings.max_chunk_bytes
                ),
            )));
        }
        self.write(State::Stream, payload)
            .await
            .map_err(End::Storage)
    }

    fn heartbeat(&self) {
        let env = Envelope {
            seq: None,
            payload: json!({"chunks": self.chunks(), "elapsed_ms": self.started.elapsed().as_millis() as u64}),
            ..self.envelope(State::Heartbeat, 0, Value::Null)
        };
        self.live.publish(Live::Heartbeat(Arc::new(env)));
    }

    /// Assigns the next `seq` and enqueues the event; skips chunks a previous run already stored.
    async fn write(&mut self, state: State, payload: Value) -> Result<(), journal::Error> {
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
        let env = self.envelope(state, seq, payload);
        let bytes = serde_json::to_vec(&env).unwrap_or_default();
        let event_type = env.event_type.clone();
        loop {
            match self.p.journal.enqueue(
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

    async fn on_ack(
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
            self.p
                .metrics
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
            if let Err(e) = self.p.store.put(&snapshot, Durability::Buffered).await {
                tracing::warn!(stream_id = %self.id, error = %e, "checkpoint not recorded");
            }
        }
        Ok(())
    }

    async fn drain(&mut self) -> Result<(), journal::Error> {
        while let Some(ack) = self.inflight.next().await {
            self.on_ack(ack).await?;
        }
        Ok(())
    }

    async fn persist(&mut self, durability: Durability) {
        if let Err(e) = self.p.store.put(&self.record, durability).await {
            tracing::error!(stream_id = %self.id, error = %e, "stream record not written");
        }
    }

    /// Writes the terminal event (or, at shutdown, only the checkpoint) and records the outcome.
    async fn finish(&mut self, end: End) {
        let drained = self.drain().await;
        let chunks = self.chunks();
        let duration = self.started.elapsed();
        let duration_ms = duration.as_millis() as u64;
        if matches!(end, End::Shutdown) {
            self.persist(Durability::Sync).await;
            tracing::info!(stream_id = %self.id, stream_count = chunks, "stream handed over at shutdown; it resumes on next start");
            return;
        }
        let storage_error = match (&end, drained) {
            (End::Storage(e), _) => Some(e.to_string()),
            (_, Err(e)) => Some(e.to_string()),
            _ => None,
        };
        let (state, payload) = match (&end, storage_error) {
            (_, Some(e)) => (
                State::Failed,
                json!({"code": "storage_unavailable", "message": e, "chunks": chunks}),
            ),
            (End::Shutdown | End::Storage(_), None) | (End::HandlerDone, None) => (
                State::Success,
                json!({"chunks": chunks, "duration_ms": duration_ms}),
            ),
            (End::Failed(h), None) => (
                State::Failed,
                json!({"code": h.code, "message": h.message, "chunks": chunks}),
            ),
            (End::Timeout, None) => (
                State::Timeout,
                json!({"timeout_ms": self.p.settings.stream_timeout.as_millis() as u64, "chunks": chunks}),
            ),
            (End::Cancelled, None) => (
                State::Cancelled,
                json!({"reason": "client", "chunks": chunks}),
            ),
        };
        let detail = payload
            .get("code")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let written = match self.write(state, payload).await {
            Ok(()) => self.drain().await,
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            tracing::error!(stream_id = %self.id, error = %e, "terminal event not stored");
        }
        self.record.state = terminal_state(state);
        self.record.finished_at = Some(chrono::Utc::now());
        self.persist(Durability::Sync).await;
        if let Some(ev) = self.terminal.take() {
            self.live.publish(Live::Event(ev));
        }
        self.p.metrics.stream_finished(
            &self.requested.with_state(state),
            self.id.as_str(),
            chunks,
            duration,
            detail.as_deref(),
        );
    }
}

fn terminal_state(state: State) -> StreamState {
    match state {
        State::Success => StreamState::Success,
        State::Timeout => StreamState::Timeout,
        State::Cancelled => StreamState::Cancelled,
        _ => StreamState::Failed,
    }
}
