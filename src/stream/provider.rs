//! The provider: runs one stream from `started` to exactly one terminal event.
//!
//! It owns the handler task (a panic becomes `failed`), the bounded chunk channel, the timeout,
//! heartbeats, the bound on unacknowledged produces, resume preparation (finding what an earlier
//! run already stored) and the terminal outcome. Writing the topic in order is the stream writer's
//! job. It does not decide which streams run; the pool and intake do.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::StreamExt;
use futures::FutureExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::event::{Envelope, EventType, State, StreamId};
use crate::handlers::{
    Chunk, HandlerError, Output, Registry, ResumeMode, StreamContext, StreamHandler,
};
use crate::kafka::producer::{self as journal, Journal};
use crate::kafka::reader::Reader;
use crate::kafka::txn::Transactions;
use crate::metrics::Metrics;
use crate::settings::ProviderSettings;
use crate::store::{Durability, StreamRecord, StreamState};
use crate::stream::hub::{Hub, Live, LiveStream};
use crate::stream::records::Records;
use crate::stream::writer::StreamWriter;

/// Shared services a stream run needs. Cheap to share behind an `Arc`.
pub struct Provider {
    /// Kafka storage.
    pub journal: Arc<Journal>,
    /// Replay reads, used to find what a resumed stream already wrote.
    pub reader: Arc<Reader>,
    /// Stream records: the local store and the changelog.
    pub records: Records,
    /// The transactional writers of the owned intake partitions.
    pub txns: Arc<Transactions>,
    /// Live fan-out.
    pub hub: Hub,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Handlers.
    pub registry: Arc<Registry>,
    /// `[provider]` settings.
    pub settings: ProviderSettings,
}

/// Why a run starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launch {
    /// A stream just admitted from a request.
    New,
    /// A stream relaunched after this or an earlier process stopped.
    Resume,
}

/// Removes a stream from the hub however its run ends: return, early exit or panic.
struct Registration<'a> {
    hub: &'a Hub,
    id: &'a str,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.hub.remove(self.id);
    }
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
    w: StreamWriter,
    started: Instant,
    /// For `ResumeMode::AfterStored`: chunks the topic holds after the cursor.
    stored: Vec<Chunk>,
    /// How many events the stream topic held when this run started (found on resume).
    topic_events: u64,
}

/// The attempt number of a run that finds `topic_events` events stored, after `attempts` counted
/// runs the last of which started with `stored_at_attempt`: a run after one that stored something
/// is the first again.
fn next_attempt(attempts: u32, stored_at_attempt: u64, topic_events: u64) -> u32 {
    if attempts > 0 && topic_events > stored_at_attempt {
        1
    } else {
        attempts.saturating_add(1)
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panicked".into())
}

fn panic_message(err: tokio::task::JoinError) -> String {
    match err.try_into_panic() {
        Ok(p) => panic_text(p.as_ref()),
        Err(e) => e.to_string(),
    }
}

impl Provider {
    /// Runs a registered stream until it ends or `shutdown` fires, then unregisters it, also
    /// when the run panics (its record then stays resumable).
    pub async fn run(
        self: Arc<Self>,
        record: StreamRecord,
        live: Arc<LiveStream>,
        shutdown: CancellationToken,
        launch: Launch,
    ) {
        let id = record.stream_id.clone();
        let _registration = Registration {
            hub: &self.hub,
            id: &id,
        };
        let Ok(stream_id) = StreamId::parse(&id) else {
            tracing::error!(
                stream_id = id,
                "refusing to run a stream with an invalid id"
            );
            return;
        };
        let partition = record.partition_in(self.records.partitions());
        let Some(txn) = self.txns.get(partition) else {
            tracing::warn!(
                stream_id = id,
                partition,
                "not running a stream of an intake partition this instance does not own"
            );
            return;
        };
        let w = StreamWriter::new(
            self.journal.clone(),
            txn,
            self.records.clone(),
            self.metrics.clone(),
            stream_id,
            record,
            live,
        );
        let mut run = Run {
            p: &self,
            w,
            started: Instant::now(),
            stored: Vec::new(),
            topic_events: 0,
        };
        run.execute(&shutdown, launch).await;
    }
}

impl Provider {
    /// Ends a stream whose record cannot be decoded: appends `failed` with code `corrupt_record`
    /// after the last event in its topic, unless that event is already terminal.
    pub async fn fail_unreadable(&self, id: &str) -> anyhow::Result<()> {
        let stream_id = StreamId::parse(id)?;
        // The record would name the topic; either naming may hold the stream.
        let mut found = None;
        for topic in [
            self.journal.topic_for(&stream_id),
            self.journal.legacy_topic_for(&stream_id),
        ] {
            match self.reader.read_last(&topic).await {
                Ok(last) => {
                    found = last.map(|l| (topic, l));
                    break;
                }
                Err(crate::kafka::reader::Error::UnknownTopic(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let Some((topic, last)) = found else {
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
    async fn execute(&mut self, shutdown: &CancellationToken, launch: Launch) {
        let (service, action) = (
            self.w.requested.service().to_owned(),
            self.w.requested.action().to_owned(),
        );
        let handler = self.p.registry.get(&self.w.requested);
        let mode = handler
            .as_ref()
            .map_or(ResumeMode::Replay, |h| h.resume_mode());
        if !self.create_topic(shutdown).await {
            return;
        }
        // A run that follows any earlier attempt, whatever the record says about checkpoints,
        // first finds what the topic already holds.
        let resuming = launch == Launch::Resume || self.w.record.attempts > 0;
        self.w.record.state = StreamState::Running;
        if resuming && !self.resume_point(shutdown, mode).await {
            return;
        }
        self.count_attempt();
        // The attempt is counted durably before the handler runs: a stream whose runs keep taking
        // the process down before storing anything reaches `resume_exhausted` instead of
        // crash-looping it.
        self.w.persist(Durability::Sync).await;
        if resuming {
            self.p.metrics.stream_resumed(
                &service,
                &action,
                self.w.id.as_str(),
                self.w.record.attempts,
            );
        }
        self.p.metrics.stream_started(
            &service,
            &action,
            self.w.id.as_str(),
            &self.w.record.request.event_type.to_string(),
            self.w.record.attempts,
        );
        let end = if self.w.record.attempts > self.p.settings.max_attempts {
            Some(End::Failed(HandlerError::new(
                "resume_exhausted",
                format!(
                    "stream did not finish in {} attempts",
                    self.p.settings.max_attempts
                ),
            )))
        } else if self.w.record.next_seq == 0 {
            let attempt = self.w.record.attempts;
            match self
                .w
                .write(State::Started, json!({"attempt": attempt}))
                .await
            {
                Ok(()) => self.w.drain().await.err().map(End::Storage),
                Err(e) => Some(End::Storage(e)),
            }
        } else {
            None
        };
        let end = match (end, handler) {
            (Some(end), _) => end,
            (None, None) => End::Failed(HandlerError::new(
                "unknown_handler",
                format!("no handler is registered for {}", self.w.requested.kind()),
            )),
            (None, Some(handler)) => AssertUnwindSafe(self.run_handler(handler, shutdown))
                .catch_unwind()
                .await
                .unwrap_or_else(|panic| {
                    let msg = panic_text(panic.as_ref());
                    tracing::error!(stream_id = %self.w.id, panic = msg, "stream runtime panicked");
                    End::Failed(HandlerError::new("internal_error", msg))
                }),
        };
        self.finish(end).await;
        self.p.metrics.stream_inactive(&service, &action);
    }

    /// Counts this run against the stream, unless the previous run stored something: a run that
    /// finds more events in the topic than the previous one started with is the first of a new
    /// count. So only runs that end (crash) before storing anything add up to
    /// `provider.max_attempts`; unrelated crashes of the process never fail a stream that makes
    /// progress.
    fn count_attempt(&mut self) {
        let r = &mut self.w.record;
        r.attempts = next_attempt(r.attempts, r.stored_at_attempt, self.topic_events);
        r.stored_at_attempt = self.topic_events;
        r.runs = r.runs.saturating_add(1);
    }

    /// Finds what earlier runs stored, retrying with backoff while the topic cannot be read.
    /// Returns false when nothing should run: the stream had ended, or the process is stopping.
    async fn resume_point(&mut self, shutdown: &CancellationToken, mode: ResumeMode) -> bool {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.prepare_resume(mode).await {
                Ok(run) => return run,
                Err(e) => {
                    tracing::warn!(stream_id = %self.w.id, error = %e, retry_ms = backoff.as_millis() as u64, "cannot read stream topic to resume; retrying");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Creates the stream topic, retrying with backoff while Kafka is unavailable.
    async fn create_topic(&mut self, shutdown: &CancellationToken) -> bool {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self
                .p
                .journal
                .ensure_stream_topic(&self.w.id, &self.w.topic)
                .await
            {
                Ok(()) => return true,
                Err(e) => {
                    tracing::warn!(stream_id = %self.w.id, error = %e, "stream topic not created; retrying");
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
    async fn prepare_resume(
        &mut self,
        mode: ResumeMode,
    ) -> Result<bool, crate::kafka::reader::Error> {
        let marks = self.p.reader.watermarks(&self.w.topic).await?;
        let last = self.p.reader.read_last_in(&self.w.topic, marks).await?;
        let Some(last) = last else {
            // Nothing stored: start from the beginning, `started` included.
            self.topic_events = 0;
            self.w.record.next_seq = 0;
            self.w.record.cursor = None;
            self.w.record.cursor_seq = 0;
            return Ok(true);
        };
        let last_seq = last.envelope.seq.unwrap_or(0);
        self.topic_events = last_seq + 1;
        if self.w.record.cursor_seq > last_seq {
            // A cursor ahead of the topic cannot be trusted: replay the handler from its start.
            tracing::warn!(stream_id = %self.w.id, cursor_seq = self.w.record.cursor_seq, topic_seq = last_seq, "checkpoint is ahead of the stream topic; restarting the handler from the beginning");
            self.w.record.cursor = None;
            self.w.record.cursor_seq = 0;
        }
        if last.state.is_terminal() {
            self.w.record.state = terminal_state(last.state);
            self.w.record.next_seq = last_seq + 1;
            self.w.record.last_offset = Some(last.offset);
            self.w.record.finished_at = Some(chrono::Utc::now());
            self.w.persist(Durability::Sync).await;
            return Ok(false);
        }
        self.w.record.last_offset = Some(last.offset);
        if mode == ResumeMode::AfterStored {
            // Offsets are never below seqs, so every event after the cursor is at or past this one.
            let mut from = self.w.record.cursor_seq as i64 + 1;
            let mut stored = Vec::new();
            while from < marks.high {
                let batch = self.p.reader.read(&self.w.topic, from, marks.high).await?;
                let Some(last) = batch.last() else { break };
                from = last.offset + 1;
                stored.extend(batch);
            }
            self.stored = stored
                .into_iter()
                .filter(|e| e.state == State::Stream)
                .filter(|e| e.envelope.seq.is_some_and(|s| s > self.w.record.cursor_seq))
                .map(|e| Chunk {
                    payload: e.envelope.payload.clone(),
                    metadata: e
                        .envelope
                        .metadata
                        .as_ref()
                        .and_then(Value::as_object)
                        .cloned(),
                })
                .collect();
            self.w.record.next_seq = last_seq + 1;
            tracing::info!(stream_id = %self.w.id, cursor_seq = self.w.record.cursor_seq, topic_seq = last_seq, stored = self.stored.len(), "resuming after what the topic holds");
            return Ok(true);
        }
        self.w.skip_through = Some(last_seq);
        self.w.record.next_seq = self.w.record.cursor_seq + 1;
        tracing::info!(stream_id = %self.w.id, cursor_seq = self.w.record.cursor_seq, topic_seq = last_seq, "resuming from the last checkpoint (or the start); already stored chunks are skipped");
        Ok(true)
    }

    async fn run_handler(
        &mut self,
        handler: Arc<dyn StreamHandler>,
        shutdown: &CancellationToken,
    ) -> End {
        let (tx, mut rx) = mpsc::channel(self.p.settings.chunk_channel_capacity);
        let handler_cancel = CancellationToken::new();
        let ctx = StreamContext::new(
            self.w.id.clone(),
            Arc::new(self.w.record.request.clone()),
            self.w.record.cursor.clone(),
            tx,
            handler_cancel.clone(),
        )
        .with_stored(std::mem::take(&mut self.stored));
        let mut tasks = JoinSet::new();
        tasks.spawn(async move { handler.run(ctx).await });
        let elapsed = (chrono::Utc::now() - self.w.record.created_at)
            .to_std()
            .unwrap_or_default();
        let deadline = tokio::time::sleep(self.p.settings.stream_timeout.saturating_sub(elapsed));
        tokio::pin!(deadline);
        let mut heartbeat = tokio::time::interval(self.p.settings.heartbeat_interval);
        heartbeat.tick().await;
        let max_inflight = self.p.settings.max_inflight_produces;
        let cancel = self.w.live.cancel_token().clone();
        let end = loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break End::Shutdown,
                _ = cancel.cancelled() => break End::Cancelled,
                _ = &mut deadline => break End::Timeout,
                Some(ack) = self.w.inflight.next(), if !self.w.inflight.is_empty() => {
                    if let Err(e) = self.w.on_acks(ack) {
                        break End::Storage(e);
                    }
                }
                _ = heartbeat.tick() => self.heartbeat(),
                out = rx.recv(), if self.w.inflight.len() < max_inflight => match out {
                    Some(Output::Chunk(c)) => {
                        if let Err(end) = self.chunk(c).await {
                            break end;
                        }
                    }
                    Some(Output::Checkpoint(cursor)) => self.w.checkpoint(cursor).await,
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
                    self.p.metrics.handler_panicked(self.w.id.as_str(), &msg);
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

    async fn chunk(&mut self, chunk: Chunk) -> Result<(), End> {
        let limit = self.p.settings.max_chunk_bytes;
        let mut size = ByteCount { n: 0, limit };
        if serde_json::to_writer(&mut size, &chunk.payload).is_err() || size.n > limit {
            return Err(End::Failed(HandlerError::new(
                "chunk_too_large",
                format!("chunk of over {limit} bytes exceeds provider.max_chunk_bytes ({limit})"),
            )));
        }
        self.w
            .write_with(State::Stream, chunk.payload, chunk.metadata)
            .await
            .map_err(End::Storage)
    }

    fn heartbeat(&self) {
        let env = Envelope {
            seq: None,
            payload: json!({"chunks": self.w.chunks(), "elapsed_ms": self.started.elapsed().as_millis() as u64}),
            ..self.w.envelope(State::Heartbeat, 0, Value::Null)
        };
        self.w.live.publish(Live::Heartbeat(Arc::new(env)));
    }

    /// Writes the terminal event (or, at shutdown, only the checkpoint) and records the outcome.
    async fn finish(&mut self, end: End) {
        let drained = self.w.drain().await;
        let chunks = self.w.chunks();
        let duration = self.started.elapsed();
        let duration_ms = duration.as_millis() as u64;
        if matches!(end, End::Shutdown) {
            self.w.persist(Durability::Sync).await;
            tracing::info!(stream_id = %self.w.id, stream_count = chunks, "stream handed over at shutdown; it resumes on next start");
            return;
        }
        let lost = match (&end, &drained) {
            (End::Storage(e), _) | (_, Err(e)) if e.is_handover() => Some(e.to_string()),
            _ => None,
        };
        if let Some(reason) = lost {
            // The partition went to another owner, or its transaction was aborted: nothing more
            // may be written here. The stream resumes from what was committed.
            self.w.persist(Durability::Sync).await;
            tracing::warn!(stream_id = %self.w.id, stream_count = chunks, reason, "stream stopped: its writes were fenced or aborted; it resumes from what was committed");
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
        let written = match self.w.write(state, payload).await {
            Ok(()) => self.w.drain().await,
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            if e.is_handover() {
                // The end is not stored, so it is not recorded either: the stream resumes, and
                // its resumed run finds the same end again.
                self.w.persist(Durability::Sync).await;
                tracing::warn!(stream_id = %self.w.id, error = %e, "terminal event not stored: its transaction was aborted or fenced; the stream resumes from what was committed");
                return;
            }
            tracing::error!(stream_id = %self.w.id, error = %e, "terminal event not stored");
        }
        self.w.record.state = terminal_state(state);
        self.w.record.finished_at = Some(chrono::Utc::now());
        self.w.persist(Durability::Sync).await;
        self.w.publish_terminal();
        self.p.metrics.stream_finished(
            &self.w.requested.with_state(state),
            self.w.id.as_str(),
            chunks,
            duration,
            detail.as_deref(),
        );
    }
}

/// Counts serialised bytes without keeping them, and stops past `limit`.
struct ByteCount {
    n: usize,
    limit: usize,
}

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.n += buf.len();
        if self.n > self.limit {
            return Err(std::io::Error::other("over the limit"));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::next_attempt;

    #[test]
    fn only_runs_that_stored_nothing_add_up() {
        // The first run, and a resume of a stream that never ran.
        assert_eq!(next_attempt(0, 0, 0), 1);
        assert_eq!(next_attempt(0, 0, 7), 1);
        // The previous run stored nothing new: counted.
        assert_eq!(next_attempt(1, 0, 0), 2);
        assert_eq!(next_attempt(3, 12, 12), 4);
        // The previous run stored something: a new count.
        assert_eq!(next_attempt(4, 12, 13), 1);
        assert_eq!(next_attempt(1, 0, 1), 1);
        assert_eq!(next_attempt(u32::MAX, 5, 5), u32::MAX);
    }
}
