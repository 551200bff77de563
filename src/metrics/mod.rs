//! Prometheus metrics: the registry, every `sluice_*` metric, and the observable events that
//! write a log line and bump a metric in one place so the two never drift apart.
//!
//! Labels are bounded: service, action, outcome, reason and transport. A stream id is never a label.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Metric names, public so that dashboards and tests can refer to them.
pub mod names {
    /// Build information gauge, always 1.
    pub const BUILD_INFO: &str = "sluice_build_info";
    /// Streams started.
    pub const STREAMS_STARTED: &str = "sluice_streams_started_total";
    /// Streams finished, by outcome.
    pub const STREAMS_FINISHED: &str = "sluice_streams_finished_total";
    /// Stream duration histogram.
    pub const STREAM_DURATION: &str = "sluice_stream_duration_seconds";
    /// Chunks stored.
    pub const STREAM_CHUNKS: &str = "sluice_stream_chunks_total";
    /// Streams running now.
    pub const STREAMS_ACTIVE: &str = "sluice_streams_active";
    /// Handler panics caught.
    pub const HANDLER_PANICS: &str = "sluice_handler_panics_total";
    /// Intake messages sent to the DLQ or refused.
    pub const INTAKE_REJECTED: &str = "sluice_intake_rejected_total";
    /// Messages behind on the intake topic.
    pub const INTAKE_LAG: &str = "sluice_intake_consumer_lag";
    /// Kafka produce latency histogram.
    pub const PRODUCE_DURATION: &str = "sluice_kafka_produce_duration_seconds";
    /// Stream topic creation latency histogram.
    pub const TOPIC_CREATE_DURATION: &str = "sluice_kafka_topic_create_duration_seconds";
    /// Open edge connections.
    pub const EDGE_CONNECTIONS: &str = "sluice_edge_connections";
    /// Events sent to edge clients.
    pub const EDGE_EVENTS_SENT: &str = "sluice_edge_events_sent_total";
    /// Edge requests refused, by reason.
    pub const EDGE_REJECTED: &str = "sluice_edge_rejected_total";
    /// Reloads of the JWKS file, by result.
    pub const JWKS_RELOADS: &str = "sluice_auth_jwks_reloads_total";
    /// Intake partitions this instance owns.
    pub const PARTITIONS_OWNED: &str = "sluice_partitions_owned";
    /// Intake partitions assigned or revoked, by kind.
    pub const REBALANCES: &str = "sluice_rebalances_total";
    /// Time to restore an assigned partition's records from the changelog.
    pub const CHANGELOG_RESTORE: &str = "sluice_changelog_restore_seconds";
    /// Streams running elsewhere that local subscribers follow live.
    pub const REMOTE_TAILS: &str = "sluice_remote_tails";
    /// Writes refused because another instance owns the partition.
    pub const FENCED_WRITES: &str = "sluice_fenced_writes_total";
    /// Time to commit one partition transaction.
    pub const TRANSACTION_COMMIT: &str = "sluice_transaction_commit_seconds";
    /// Writes sent into a transaction after waiting for the previous commit.
    pub const TRANSACTION_PARKED: &str = "sluice_transaction_parked_writes_total";
    /// Changelog records applied to the local store (other owners' writes).
    pub const CHANGELOG_APPLIED: &str = "sluice_changelog_records_applied_total";
    /// Events replayed from Kafka to edge clients.
    pub const REPLAYED_EVENTS: &str = "sluice_replayed_events_total";
    /// Streams resumed after a restart.
    pub const STREAMS_RESUMED: &str = "sluice_streams_resumed_total";
    /// Stream topics in use against the cap.
    pub const STREAM_TOPICS: &str = "sluice_stream_topics";
    /// Finished streams deleted by retention.
    pub const STREAMS_SWEPT: &str = "sluice_streams_swept_total";
    /// Open consumers of source topics, by role.
    pub const SOURCE_CONSUMERS: &str = "sluice_source_consumers";
    /// Source topics waited for.
    pub const SOURCE_TOPICS_WAITING: &str = "sluice_source_topics_waiting";
    /// HTTP upstream requests, by result.
    pub const UPSTREAM_REQUESTS: &str = "sluice_upstream_requests_total";
    /// SSE reconnects answered 204 after the stream ended.
    pub const SSE_ENDED_RECONNECTS: &str = "sluice_sse_ended_reconnects_total";
    /// Open event-type subscriptions.
    pub const TYPE_SUBSCRIBERS: &str = "sluice_type_subscribers";
    /// Event-type subscriptions ended for lagging.
    pub const TYPE_SUBSCRIBERS_LAGGED: &str = "sluice_type_subscribers_lagged_total";
    /// Durable Streams held.
    pub const DURABLE_STREAMS: &str = "sluice_durable_streams";
    /// Durable Streams subscription wakes, by kind.
    pub const DURABLE_WAKES: &str = "sluice_durable_wakes_total";
    /// Durable Streams webhook deliveries, by result.
    pub const DURABLE_WEBHOOKS: &str = "sluice_durable_webhooks_total";
    /// Durable Streams subscription requests refused, by code.
    pub const DURABLE_SUBSCRIPTION_REFUSED: &str = "sluice_durable_subscription_refused_total";
}

mod clients;
mod cluster;
mod durable;
mod security;
mod sources;

pub use clients::TypeSubscriberGuard;
pub use sources::{WaitingGuard, UPSTREAM_RESULTS};

/// Every reason intake dead-letters a message for; each series exists from start-up.
pub const INTAKE_REASONS: [&str; 8] = [
    "malformed_json",
    "invalid_type",
    "wrong_state",
    "invalid_stream_id",
    "too_large",
    "not_streaming",
    "unknown_handler",
    "at_capacity",
];

/// All of Sluice's metrics, registered in one registry. Cheap to share behind an `Arc`.
pub struct Metrics {
    registry: Registry,
    streams_started: IntCounterVec,
    streams_finished: IntCounterVec,
    stream_duration: HistogramVec,
    stream_chunks: IntCounterVec,
    streams_active: IntGaugeVec,
    handler_panics: IntCounter,
    intake_rejected: IntCounterVec,
    /// Messages behind on the intake topic, summed over assigned partitions.
    pub intake_lag: IntGauge,
    produce_duration: HistogramVec,
    topic_create_duration: HistogramVec,
    edge_connections: IntGaugeVec,
    edge_events_sent: IntCounterVec,
    edge_rejected: IntCounterVec,
    replayed_events: IntCounterVec,
    streams_resumed: IntCounterVec,
    stream_topics: IntGauge,
    streams_swept: IntCounter,
    sources: sources::SourceMetrics,
    clients: clients::ClientMetrics,
    security: security::SecurityMetrics,
    cluster: cluster::ClusterMetrics,
    durable: durable::DurableMetrics,
    /// `service:action` pairs that may appear as label values; everything else is `other`.
    kinds: HashMap<String, HashSet<String>>,
}

/// The `service` and `action` label value for a type with no registered handler.
pub const OTHER: &str = "other";

fn latency_buckets() -> Vec<f64> {
    vec![
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ]
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let reg = |c: Box<dyn prometheus::core::Collector>| registry.register(c);
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels)
        };
        let build_info = IntGaugeVec::new(
            Opts::new(names::BUILD_INFO, "Build information; always 1."),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let m = Metrics {
            streams_started: counter_vec(
                names::STREAMS_STARTED,
                "Streams whose handler started.",
                &["service", "action"],
            )?,
            streams_finished: counter_vec(
                names::STREAMS_FINISHED,
                "Streams that reached a terminal event, by outcome.",
                &["service", "action", "outcome"],
            )?,
            stream_duration: HistogramVec::new(
                HistogramOpts::new(
                    names::STREAM_DURATION,
                    "Stream run time from start to terminal event.",
                )
                .buckets(vec![
                    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0,
                ]),
                &["service", "action", "outcome"],
            )?,
            stream_chunks: counter_vec(
                names::STREAM_CHUNKS,
                "Chunks durably stored.",
                &["service", "action"],
            )?,
            streams_active: IntGaugeVec::new(
                Opts::new(names::STREAMS_ACTIVE, "Streams running now."),
                &["service", "action"],
            )?,
            handler_panics: IntCounter::new(names::HANDLER_PANICS, "Handler panics caught.")?,
            intake_rejected: counter_vec(
                names::INTAKE_REJECTED,
                "Intake messages dead-lettered, by reason.",
                &["reason"],
            )?,
            intake_lag: IntGauge::new(
                names::INTAKE_LAG,
                "Messages behind on the intake topic, summed over assigned partitions.",
            )?,
            produce_duration: HistogramVec::new(
                HistogramOpts::new(
                    names::PRODUCE_DURATION,
                    "Time from produce to broker acknowledgement.",
                )
                .buckets(latency_buckets()),
                &["topic_kind"],
            )?,
            topic_create_duration: HistogramVec::new(
                HistogramOpts::new(
                    names::TOPIC_CREATE_DURATION,
                    "Time to create a stream topic.",
                )
                .buckets(latency_buckets()),
                &["result"],
            )?,
            edge_connections: IntGaugeVec::new(
                Opts::new(
                    names::EDGE_CONNECTIONS,
                    "Open edge connections by transport.",
                ),
                &["transport"],
            )?,
            edge_events_sent: counter_vec(
                names::EDGE_EVENTS_SENT,
                "Events sent to edge clients by transport.",
                &["transport"],
            )?,
            edge_rejected: counter_vec(
                names::EDGE_REJECTED,
                "Edge requests and frames refused, by reason.",
                &["reason"],
            )?,
            replayed_events: counter_vec(
                names::REPLAYED_EVENTS,
                "Events replayed to subscribers, by source: memory (a running stream's recent window) or kafka.",
                &["source"],
            )?,
            streams_resumed: counter_vec(
                names::STREAMS_RESUMED,
                "Streams resumed after a restart.",
                &["service", "action"],
            )?,
            stream_topics: IntGauge::new(
                names::STREAM_TOPICS,
                "Stream topics in use (counted against retention.max_stream_topics).",
            )?,
            streams_swept: IntCounter::new(
                names::STREAMS_SWEPT,
                "Finished streams whose topic and record retention deleted.",
            )?,
            sources: sources::SourceMetrics::new(&registry)?,
            clients: clients::ClientMetrics::new(&registry)?,
            security: security::SecurityMetrics::new(&registry)?,
            cluster: cluster::ClusterMetrics::new(&registry)?,
            durable: durable::DurableMetrics::new(&registry)?,
            registry: registry.clone(),
            kinds: HashMap::new(),
        };
        reg(Box::new(build_info))?;
        reg(Box::new(m.streams_started.clone()))?;
        reg(Box::new(m.streams_finished.clone()))?;
        reg(Box::new(m.stream_duration.clone()))?;
        reg(Box::new(m.stream_chunks.clone()))?;
        reg(Box::new(m.streams_active.clone()))?;
        reg(Box::new(m.handler_panics.clone()))?;
        reg(Box::new(m.intake_rejected.clone()))?;
        reg(Box::new(m.intake_lag.clone()))?;
        reg(Box::new(m.produce_duration.clone()))?;
        reg(Box::new(m.topic_create_duration.clone()))?;
        reg(Box::new(m.edge_connections.clone()))?;
        reg(Box::new(m.edge_events_sent.clone()))?;
        reg(Box::new(m.edge_rejected.clone()))?;
        reg(Box::new(m.replayed_events.clone()))?;
        reg(Box::new(m.streams_resumed.clone()))?;
        reg(Box::new(m.stream_topics.clone()))?;
        reg(Box::new(m.streams_swept.clone()))?;
        for reason in INTAKE_REASONS {
            m.intake_rejected.with_label_values(&[reason]).inc_by(0);
        }
        for t in ["sse", "ws", "grpc"] {
            m.edge_connections.with_label_values(&[t]).set(0);
            m.edge_events_sent.with_label_values(&[t]).inc_by(0);
        }
        Ok(m)
    }

    /// Names the registered handlers (`service:action`): only these become `service`/`action`
    /// label values. Any other pair, which only client input could name, is counted as `other`.
    pub fn with_kinds(mut self, kinds: impl IntoIterator<Item = String>) -> Metrics {
        for kind in kinds {
            if let Some((service, action)) = kind.split_once(':') {
                self.kinds
                    .entry(service.to_owned())
                    .or_default()
                    .insert(action.to_owned());
            }
        }
        self
    }

    /// Bounded label values for a `service`/`action` pair.
    fn kind<'a>(&self, service: &'a str, action: &'a str) -> [&'a str; 2] {
        if self.kinds.get(service).is_some_and(|a| a.contains(action)) {
            [service, action]
        } else {
            [OTHER, OTHER]
        }
    }

    /// The registry in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(err) = encoder.encode(&self.registry.gather(), &mut buf) {
            tracing::error!(%err, "metrics encoding failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    /// A stream's handler is about to run.
    pub fn stream_started(
        &self,
        service: &str,
        action: &str,
        stream_id: &str,
        event_type: &str,
        attempt: u32,
    ) {
        tracing::info!(stream_id, event_type, attempt, "Processing streaming event");
        self.streams_started
            .with_label_values(&self.kind(service, action))
            .inc();
        self.streams_active
            .with_label_values(&self.kind(service, action))
            .inc();
    }

    /// A stream reached its terminal event (`event_type` is the terminal type).
    pub fn stream_finished(
        &self,
        event_type: &crate::event::EventType,
        stream_id: &str,
        chunks: u64,
        duration: Duration,
        detail: Option<&str>,
    ) {
        let duration_ms = duration.as_millis() as u64;
        let [service, action_label] = self.kind(event_type.service(), event_type.action());
        let (action, outcome) = (event_type.action(), event_type.state().as_str());
        let event_type = event_type.to_string();
        if outcome == "success" {
            tracing::info!(
                stream_id,
                event_type,
                action,
                stream_count = chunks,
                duration_ms,
                "Event processing succeeded"
            );
        } else {
            tracing::warn!(
                stream_id,
                event_type,
                action,
                stream_count = chunks,
                duration_ms,
                outcome,
                detail,
                "Event processing ended without success"
            );
        }
        self.streams_finished
            .with_label_values(&[service, action_label, outcome])
            .inc();
        self.stream_duration
            .with_label_values(&[service, action_label, outcome])
            .observe(duration.as_secs_f64());
    }

    /// A started stream stopped running on this process (finished or handed over at shutdown).
    pub fn stream_inactive(&self, service: &str, action: &str) {
        self.streams_active
            .with_label_values(&self.kind(service, action))
            .dec();
    }

    /// A chunk was durably stored.
    pub fn chunk_stored(&self, service: &str, action: &str) {
        self.stream_chunks
            .with_label_values(&self.kind(service, action))
            .inc();
    }

    /// A handler panicked; the panic became a `failed` event.
    pub fn handler_panicked(&self, stream_id: &str, message: &str) {
        tracing::error!(stream_id, panic = message, "stream handler panicked");
        self.handler_panics.inc();
    }

    /// An intake message was dead-lettered.
    pub fn intake_rejected(&self, reason: &str, partition: i32, offset: i64, detail: &str) {
        tracing::warn!(
            reason,
            partition,
            offset,
            detail,
            "intake message rejected to the DLQ"
        );
        self.intake_rejected.with_label_values(&[reason]).inc();
    }

    /// A produce was acknowledged (or failed) after `elapsed`.
    pub fn produce_observed(&self, topic_kind: &str, elapsed: Duration) {
        self.produce_duration
            .with_label_values(&[topic_kind])
            .observe(elapsed.as_secs_f64());
    }

    /// A stream topic creation finished.
    pub fn topic_created(&self, topic: &str, elapsed: Duration, ok: bool) {
        tracing::debug!(
            topic,
            elapsed_ms = elapsed.as_millis() as u64,
            ok,
            "stream topic create"
        );
        self.topic_create_duration
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .observe(elapsed.as_secs_f64());
    }

    /// An edge connection opened; the gauge drops when the guard does.
    pub fn edge_connected(&self, transport: &'static str) -> ConnectionGuard {
        let gauge = self.edge_connections.with_label_values(&[transport]);
        gauge.inc();
        ConnectionGuard { gauge }
    }

    /// `n` events were sent to an edge client.
    pub fn edge_sent(&self, transport: &'static str, n: u64) {
        self.edge_events_sent
            .with_label_values(&[transport])
            .inc_by(n);
    }

    /// `n` events were replayed from Kafka.
    pub fn replayed(&self, n: u64) {
        self.replayed_events.with_label_values(&["kafka"]).inc_by(n);
    }

    /// `n` events were replayed from a running stream's recent window in memory.
    pub fn replayed_from_memory(&self, n: u64) {
        self.replayed_events
            .with_label_values(&["memory"])
            .inc_by(n);
    }

    /// A stream was resumed after a restart.
    pub fn stream_resumed(&self, service: &str, action: &str, stream_id: &str, attempt: u32) {
        tracing::info!(stream_id, attempt, "resuming interrupted stream");
        self.streams_resumed
            .with_label_values(&self.kind(service, action))
            .inc();
    }
}

impl Metrics {
    /// A retention sweep finished.
    pub fn streams_swept(&self, swept: usize, tombstones_purged: usize, topics_in_use: usize) {
        if swept > 0 || tombstones_purged > 0 {
            tracing::info!(
                swept,
                tombstones_purged,
                topics_in_use,
                "retention sweep deleted finished streams"
            );
        }
        self.streams_swept.inc_by(swept as u64);
        self.stream_topics.set(topics_in_use as i64);
    }

    /// The number of stream topics in use changed.
    pub fn stream_topics_in_use(&self, n: usize) {
        self.stream_topics.set(n as i64);
    }
}

/// Decrements the edge connection gauge when dropped.
pub struct ConnectionGuard {
    gauge: IntGauge,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_bounded_labels() {
        let m = Metrics::new()
            .unwrap()
            .with_kinds(["demo:stream_ticks".to_owned()]);
        m.stream_started(
            "demo",
            "stream_ticks",
            "s1",
            "demo:stream_ticks:v1:requested",
            1,
        );
        m.chunk_stored("demo", "stream_ticks");
        let t = crate::event::EventType::parse("demo:stream_ticks:v1:success").unwrap();
        m.stream_finished(&t, "s1", 1, Duration::from_millis(5), None);
        m.intake_rejected("malformed_json", 0, 1, "x");
        {
            let _g = m.edge_connected("sse");
        }
        let text = m.render();
        for name in [
            names::BUILD_INFO,
            names::STREAMS_STARTED,
            names::STREAMS_FINISHED,
            names::STREAM_DURATION,
            names::STREAM_CHUNKS,
            names::STREAMS_ACTIVE,
            names::INTAKE_REJECTED,
            names::EDGE_CONNECTIONS,
        ] {
            assert!(text.contains(name), "{name} missing");
        }
        assert!(!text.contains("s1"), "stream ids must never be labels");
        assert!(text.contains("sluice_edge_connections{transport=\"sse\"} 0"));
    }

    #[test]
    fn unregistered_kinds_are_counted_as_other() {
        let m = Metrics::new()
            .unwrap()
            .with_kinds(["demo:stream_ticks".to_owned()]);
        for (service, action) in [
            ("foo123", "stream_x"),
            ("demo", "stream_x"),
            ("x", "stream_ticks"),
        ] {
            m.stream_started(service, action, "s", "t", 1);
            m.chunk_stored(service, action);
            m.stream_resumed(service, action, "s", 2);
            let t =
                crate::event::EventType::parse(&format!("{service}:{action}:v1:failed")).unwrap();
            m.stream_finished(&t, "s", 0, Duration::ZERO, Some("x"));
        }
        let text = m.render();
        for client_value in ["foo123", "stream_x", "\"x\""] {
            assert!(
                !text.contains(client_value),
                "{client_value} became a label value:\n{text}"
            );
        }
        assert!(text.contains(r#"sluice_streams_started_total{action="other",service="other"} 3"#));
        assert!(text.contains(
            r#"sluice_streams_finished_total{action="other",outcome="failed",service="other"} 3"#
        ));
    }
}
