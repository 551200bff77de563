//! Intake: the Kafka consumer of requested events, the dead-letter path for malformed ones, and
//! at-least-once offset handling.
//!
//! An offset is stored only after its message is durably handled: the stream registered (or found
//! to exist already), or the message written to the DLQ. Redelivery is harmless because a request
//! without a `stream_id` gets one derived from its Kafka coordinates. This module does not run
//! streams; the pool does.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Message};
use tokio_util::sync::CancellationToken;

use crate::event::{Request, StreamId};
use crate::handlers::Registry;
use crate::kafka::producer::{client_config, Journal};
use crate::metrics::Metrics;
use crate::settings::{IntakeSettings, KafkaSettings};
use crate::stream::pool::{Admission, Pool};

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

/// Consumer callbacks: consumer lag from librdkafka statistics, and assignment state.
pub struct IntakeContext {
    metrics: Arc<Metrics>,
    assigned: Arc<AtomicBool>,
    topic: String,
}

impl ClientContext for IntakeContext {
    fn stats(&self, stats: Statistics) {
        if let Some(t) = stats.topics.get(&self.topic) {
            let lag: i64 = t
                .partitions
                .iter()
                .filter(|(p, _)| **p >= 0)
                .map(|(_, p)| p.consumer_lag.max(0))
                .sum();
            self.metrics.intake_lag.set(lag);
        }
    }
}

impl ConsumerContext for IntakeContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(partitions = tpl.count(), "intake partitions assigned");
                self.assigned.store(true, Ordering::Release);
            }
            Rebalance::Revoke(_) => self.assigned.store(false, Ordering::Release),
            Rebalance::Error(e) => tracing::warn!(error = %e, "intake rebalance error"),
        }
    }
}

/// The intake loop's state.
pub struct Intake {
    consumer: Arc<StreamConsumer<IntakeContext>>,
    journal: Arc<Journal>,
    pool: Pool,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    settings: IntakeSettings,
    assigned: Arc<AtomicBool>,
}

impl Intake {
    /// Creates the consumer and subscribes to the intake topic.
    pub fn new(
        kafka: &KafkaSettings,
        settings: &IntakeSettings,
        journal: Arc<Journal>,
        pool: Pool,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
    ) -> Result<Intake, Error> {
        let assigned = Arc::new(AtomicBool::new(false));
        let ctx = IntakeContext {
            metrics: metrics.clone(),
            assigned: assigned.clone(),
            topic: settings.topic.clone(),
        };
        let err = |source| Error::Consumer {
            topic: settings.topic.clone(),
            source,
        };
        let consumer: StreamConsumer<IntakeContext> = client_config(kafka)
            .set("group.id", &settings.group_id)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("statistics.interval.ms", "5000")
            .set("session.timeout.ms", "10000")
            .set("max.poll.interval.ms", "300000")
            .create_with_context(ctx)
            .map_err(err)?;
        consumer.subscribe(&[&settings.topic]).map_err(err)?;
        Ok(Intake {
            consumer: Arc::new(consumer),
            journal,
            pool,
            registry,
            metrics,
            settings: settings.clone(),
            assigned,
        })
    }

    /// Whether the consumer currently holds an assignment.
    pub fn assigned_flag(&self) -> Arc<AtomicBool> {
        self.assigned.clone()
    }

    /// Consumes until `cancel` fires, then commits the stored offsets.
    pub async fn run(self, cancel: CancellationToken) {
        loop {
            let msg = tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                m = self.consumer.recv() => m,
            };
            match msg {
                Ok(m) => {
                    if !self.handle(&m, &cancel).await {
                        break;
                    }
                    if let Err(e) = self.consumer.store_offset_from_message(&m) {
                        tracing::warn!(error = %e, offset = m.offset(), "intake offset not stored");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "intake consumer error");
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                }
            }
        }
        let consumer = self.consumer.clone();
        let committed =
            tokio::task::spawn_blocking(move || consumer.commit_consumer_state(CommitMode::Sync))
                .await;
        match committed {
            Ok(Ok(())) => tracing::info!("intake offsets committed"),
            Ok(Err(e)) => {
                tracing::info!(error = %e, "intake offsets not committed (nothing new, or broker unavailable)")
            }
            Err(e) => tracing::warn!(error = %e, "intake commit task failed"),
        }
        self.consumer.unsubscribe();
    }

    /// Handles one message durably. Returns false if the process is shutting down before it could.
    async fn handle(&self, m: &BorrowedMessage<'_>, cancel: &CancellationToken) -> bool {
        let bytes = m.payload().unwrap_or_default();
        let mut request = match Request::parse(bytes, self.settings.max_request_bytes) {
            Ok(r) => r,
            Err(e) => {
                return self
                    .dead_letter(m, e.reason(), &e.to_string(), cancel)
                    .await
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
            return self.dead_letter(m, reason, &detail, cancel).await;
        }
        request.owner = owner_of(m, &request);
        let stream_id = request
            .stream_id
            .clone()
            .unwrap_or_else(|| StreamId::from_coordinates(m.topic(), m.partition(), m.offset()));
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.pool.admit(&stream_id, request.clone()).await {
                Ok(Admission::Started) => return true,
                Ok(Admission::Duplicate) => {
                    tracing::info!(stream_id = %stream_id, offset = m.offset(), "duplicate request ignored; the stream exists");
                    return true;
                }
                Ok(Admission::ShuttingDown) => return false,
                Ok(Admission::AtCapacity) => {
                    let detail =
                        format!("stream {stream_id} refused: retention.max_stream_topics reached");
                    return self.dead_letter(m, "at_capacity", &detail, cancel).await;
                }
                Err(e) => {
                    tracing::error!(stream_id = %stream_id, error = %e, "stream not registered; retrying")
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return false,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
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
        let original_type = m
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "type"))
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
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

/// The intake record header carrying the requesting subject.
pub const OWNER_HEADER: &str = "owner";
