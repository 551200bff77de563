//! Intake: the Kafka consumer of requested events (and of cancel requests routed to the owner of
//! a stream's partition), the dead-letter path for malformed ones, at-least-once offset handling,
//! and the rebalance callbacks that hand partitions between instances (`context`).
//!
//! An offset is stored only after its message is durably handled: the stream registered (or found
//! to exist already), or the message written to the DLQ. Redelivery is harmless because a request
//! without a `stream_id` gets one derived from its Kafka coordinates. The consumer runs on a
//! blocking thread so that a rebalance callback can wait for streams to stop or for the changelog
//! to be restored before the group moves on. This module does not run streams; the pool does.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::Message;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use crate::event::{Request, StreamId};
use crate::handlers::Registry;
use crate::kafka::producer::{client_config, Journal};
use crate::metrics::Metrics;
use crate::settings::{IntakeSettings, KafkaSettings};
use crate::stream::hub::{CancelOutcome, Hub};
use crate::stream::ownership::Ownership;
use crate::stream::pool::{Admission, Pool};

mod context;

use context::IntakeContext;

/// Intake failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The consumer could not be created or subscribed.
    #[error("intake consumer for {topic}: {source}")]
    Consumer {
        /// The intake topic.
        topic: String,
        /// The client error.
        #[source]
        source: KafkaError,
    },
}

/// How often the stored intake offsets are committed while consuming.
const COMMIT_INTERVAL: Duration = Duration::from_secs(1);

/// The intake record header that marks a control message; its value names the command.
pub const CONTROL_HEADER: &str = "sluice.control";

/// The control command that cancels the stream named by the message key.
pub const CONTROL_CANCEL: &str = "cancel";

/// What became of one intake message.
enum Handled {
    /// Durably handled: its offset may be stored.
    Done,
    /// Its partition is owned elsewhere now: its offset is not stored.
    NotOwned,
    /// The process is stopping before it was handled.
    Stopping,
}

impl From<bool> for Handled {
    fn from(done: bool) -> Handled {
        if done {
            Handled::Done
        } else {
            Handled::Stopping
        }
    }
}

/// The intake loop's state.
pub struct Intake {
    consumer: BaseConsumer<IntakeContext>,
    journal: Arc<Journal>,
    pool: Pool,
    hub: Hub,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    settings: IntakeSettings,
    assigned: Arc<AtomicBool>,
}

impl Intake {
    /// Creates the consumer and subscribes to the intake topic. Rebalances are handed to
    /// `ownership`; this must be called inside the Tokio runtime.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        kafka: &KafkaSettings,
        settings: &IntakeSettings,
        journal: Arc<Journal>,
        pool: Pool,
        hub: Hub,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        ownership: Arc<Ownership>,
    ) -> Result<Intake, Error> {
        let assigned = Arc::new(AtomicBool::new(false));
        let ctx = IntakeContext::new(
            metrics.clone(),
            assigned.clone(),
            &settings.topic,
            ownership,
            Handle::current(),
        );
        let err = |source| Error::Consumer {
            topic: settings.topic.clone(),
            source,
        };
        let mut config = client_config(kafka);
        config
            .set("group.id", &settings.group_id)
            // Committed by `run_blocking` every `COMMIT_INTERVAL`, and at revocation by the
            // rebalance callback. Auto-commit would also commit on unassign, and a consumer that
            // closes with that commit in flight never leaves its group: its successor then waits
            // out the session timeout before it is given the partitions.
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("statistics.interval.ms", "5000")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set(
                "session.timeout.ms",
                settings.session_timeout.as_millis().to_string(),
            )
            .set("max.poll.interval.ms", "300000");
        if let Some(id) = &settings.instance_id {
            config.set("group.instance.id", id);
        }
        let consumer: BaseConsumer<IntakeContext> = config.create_with_context(ctx).map_err(err)?;
        consumer.subscribe(&[&settings.topic]).map_err(err)?;
        Ok(Intake {
            consumer,
            journal,
            pool,
            hub,
            registry,
            metrics,
            settings: settings.clone(),
            assigned,
        })
    }

    /// Whether the consumer has joined its group and received its (possibly empty) assignment.
    pub fn assigned_flag(&self) -> Arc<AtomicBool> {
        self.assigned.clone()
    }

    /// Consumes until `cancel` fires, then commits the stored offsets and leaves the group (the
    /// revocation stops this instance's streams and hands their partitions over).
    pub async fn run(self, cancel: CancellationToken) {
        let handle = Handle::current();
        let res = tokio::task::spawn_blocking(move || self.run_blocking(&handle, &cancel)).await;
        if let Err(e) = res {
            tracing::error!(error = %e, "intake consumer thread failed");
        }
    }

    fn run_blocking(self, handle: &Handle, cancel: &CancellationToken) {
        let mut committed = Instant::now();
        while !cancel.is_cancelled() {
            if committed.elapsed() >= COMMIT_INTERVAL {
                committed = Instant::now();
                // Nothing stored since the last commit is the usual "error" here.
                let _ = self.consumer.commit_consumer_state(CommitMode::Async);
            }
            match self.consumer.poll(Duration::from_millis(100)) {
                None => {}
                Some(Ok(m)) => {
                    match handle.block_on(self.handle(&m, cancel)) {
                        Handled::Done => {
                            if let Err(e) = self.consumer.store_offset_from_message(&m) {
                                tracing::warn!(error = %e, offset = m.offset(), "intake offset not stored");
                            }
                        }
                        // Its offset is not stored: the partition's owner reads it again.
                        Handled::NotOwned => {
                            tracing::info!(partition = m.partition(), offset = m.offset(), "request of a partition this instance no longer owns left to its owner");
                        }
                        Handled::Stopping => break,
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "intake consumer error");
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => tracing::info!("intake offsets committed"),
            Err(e) => {
                tracing::info!(error = %e, "intake offsets not committed (nothing new, or broker unavailable)")
            }
        }
        self.consumer.unsubscribe();
        // Serve the revocation that leaving the group causes, so it runs before the consumer closes.
        for _ in 0..20 {
            if self.consumer.poll(Duration::from_millis(50)).is_none()
                && self.consumer.assignment().is_ok_and(|a| a.count() == 0)
            {
                break;
            }
        }
    }

    /// Handles one message durably. Returns false if the process is shutting down before it could.
    async fn handle(&self, m: &BorrowedMessage<'_>, cancel: &CancellationToken) -> Handled {
        if let Some(command) = header(m, CONTROL_HEADER) {
            self.control(m, &command);
            return Handled::Done;
        }
        let bytes = m.payload().unwrap_or_default();
        let mut request = match Request::parse(bytes, self.settings.max_request_bytes) {
            Ok(r) => r,
            Err(e) => {
                return self
                    .dead_letter(m, e.reason(), &e.to_string(), cancel)
                    .await
                    .into()
            }
        };
        if self.registry.get(&request.event_type).is_none() {
            // Refused before any topic, record or label exists for it.
            let (reason, detail) = if self.registry.is_streaming(&request.event_type) {
                let kind = request.event_type.kind();
                (
                    "unknown_handler",
                    format!("no handler is registered for {kind}"),
                )
            } else {
                let t = &request.event_type;
                (
                    "not_streaming",
                    format!("{t} is not a streaming type and has no handler"),
                )
            };
            return self.dead_letter(m, reason, &detail, cancel).await.into();
        }
        request.owner = owner_of(m, &request);
        let stream_id = request
            .stream_id
            .clone()
            .unwrap_or_else(|| StreamId::from_coordinates(m.topic(), m.partition(), m.offset()));
        let mut backoff = Duration::from_millis(100);
        loop {
            match self
                .pool
                .admit(&stream_id, request.clone(), m.partition())
                .await
            {
                Ok(Admission::Started) => return Handled::Done,
                Ok(Admission::Duplicate) => {
                    tracing::info!(stream_id = %stream_id, offset = m.offset(), "duplicate request ignored; the stream exists");
                    return Handled::Done;
                }
                Ok(Admission::ShuttingDown) => return Handled::Stopping,
                Ok(Admission::NotOwned) => return Handled::NotOwned,
                Ok(Admission::AtCapacity) => {
                    let detail =
                        format!("stream {stream_id} refused: retention.max_stream_topics reached");
                    return self
                        .dead_letter(m, "at_capacity", &detail, cancel)
                        .await
                        .into();
                }
                Err(e) => {
                    tracing::error!(stream_id = %stream_id, error = %e, "stream not registered; retrying")
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return Handled::Stopping,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Carries out a control message routed to this partition's owner. Unknown commands and
    /// cancels of streams not running here are logged and dropped: a control message is a request
    /// to the running owner, not a record.
    fn control(&self, m: &BorrowedMessage<'_>, command: &str) {
        let id = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
        if command != CONTROL_CANCEL {
            let command: String = command.chars().take(40).collect();
            tracing::warn!(
                stream_id = id,
                command,
                offset = m.offset(),
                "unknown intake control command ignored"
            );
            return;
        }
        let outcome = self.hub.cancel(&id);
        tracing::info!(
            stream_id = id,
            ?outcome,
            partition = m.partition(),
            "cancel routed to this owner"
        );
        if outcome == CancelOutcome::NotHere {
            tracing::warn!(
                stream_id = id,
                "routed cancel for a stream not running here ignored"
            );
        }
    }

    /// Writes a malformed message to the DLQ with its reason; retries until stored or shut down.
    async fn dead_letter(
        &self,
        m: &BorrowedMessage<'_>,
        reason: &str,
        detail: &str,
        cancel: &CancellationToken,
    ) -> bool {
        self.metrics
            .intake_rejected(reason, m.partition(), m.offset(), detail);
        let key = m
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default();
        let source = format!("{}/{}/{}", m.topic(), m.partition(), m.offset());
        let original_type = header(m, "type").unwrap_or_default();
        let headers = [
            ("sluice.reason", reason),
            ("sluice.error", detail),
            ("sluice.source", source.as_str()),
            ("type", original_type.as_str()),
        ];
        let payload = m.payload().unwrap_or_default();
        let mut backoff = Duration::from_millis(100);
        loop {
            match self
                .journal
                .produce(&self.settings.dlq_topic, &key, payload, &headers, "dlq")
                .await
            {
                Ok(_) => return true,
                Err(e) => tracing::error!(error = %e, "DLQ write failed; retrying"),
            }
            tokio::select! {
                _ = cancel.cancelled() => return false,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

/// The owner of a request read from Kafka: its `owner` header if it has one (the edge always
/// writes it, empty for a caller without a subject), else `metadata.owner`. Kafka is trusted: only
/// producers with access to the intake topic can write either.
fn owner_of(m: &BorrowedMessage<'_>, request: &Request) -> Option<String> {
    let header = m
        .headers()
        .and_then(|h| h.iter().find(|h| h.key == OWNER_HEADER));
    match header {
        Some(h) => h
            .value
            .and_then(|v| std::str::from_utf8(v).ok())
            .filter(|v| crate::event::valid_owner(v))
            .map(str::to_owned),
        None => request.owner_from_metadata(),
    }
}

/// A header's value as text (lossily decoded).
fn header(m: &BorrowedMessage<'_>, key: &str) -> Option<String> {
    m.headers()
        .and_then(|h| h.iter().find(|h| h.key == key))
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// The intake record header carrying the requesting subject.
pub const OWNER_HEADER: &str = "owner";
