//! Metrics of stream sources: shared and catch-up consumers of source topics, source topics being
//! waited for, and HTTP upstream requests by result. Each observable event logs and counts in one
//! place. Labels are bounded: `role` and `result` take fixed values; topics are never labels.

use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use super::{names, Metrics};

/// Every `result` of an upstream request; each series exists from start-up.
pub const UPSTREAM_RESULTS: [&str; 5] = [
    "ok",
    "connect_error",
    "server_error",
    "client_error",
    "malformed",
];

/// The source metric families.
pub(super) struct SourceMetrics {
    consumers: IntGaugeVec,
    topics_waiting: IntGauge,
    upstream_requests: IntCounterVec,
}

impl SourceMetrics {
    pub(super) fn new(registry: &Registry) -> Result<SourceMetrics, prometheus::Error> {
        let m = SourceMetrics {
            consumers: IntGaugeVec::new(
                Opts::new(
                    names::SOURCE_CONSUMERS,
                    "Open consumers of source topics: one shared tail per topic, plus catch-ups.",
                ),
                &["role"],
            )?,
            topics_waiting: IntGauge::new(
                names::SOURCE_TOPICS_WAITING,
                "Source topics that streams wait for because they do not exist yet.",
            )?,
            upstream_requests: IntCounterVec::new(
                Opts::new(
                    names::UPSTREAM_REQUESTS,
                    "HTTP upstream requests by result.",
                ),
                &["result"],
            )?,
        };
        registry.register(Box::new(m.consumers.clone()))?;
        registry.register(Box::new(m.topics_waiting.clone()))?;
        registry.register(Box::new(m.upstream_requests.clone()))?;
        for role in ["tail", "catch_up"] {
            m.consumers.with_label_values(&[role]).set(0);
        }
        for r in UPSTREAM_RESULTS {
            m.upstream_requests.with_label_values(&[r]).inc_by(0);
        }
        Ok(m)
    }
}

/// Counts a source topic as waited for until dropped.
pub struct WaitingGuard {
    gauge: IntGauge,
}

impl Drop for WaitingGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

impl Metrics {
    /// A consumer of a source topic opened (`role`: `tail` or `catch_up`).
    pub fn source_consumer_opened(&self, role: &'static str, topic: &str) {
        tracing::debug!(role, topic, "source consumer opened");
        self.sources.consumers.with_label_values(&[role]).inc();
    }

    /// A consumer of a source topic closed.
    pub fn source_consumer_closed(&self, role: &'static str) {
        self.sources.consumers.with_label_values(&[role]).dec();
    }

    /// Open consumers of source topics in `role`.
    pub fn source_consumers(&self, role: &'static str) -> i64 {
        self.sources.consumers.with_label_values(&[role]).get()
    }

    /// A stream waits for a source topic that does not exist yet; counted until the guard drops.
    pub fn source_topic_missing(&self, topic: &str) -> WaitingGuard {
        tracing::warn!(
            topic,
            "source topic does not exist yet; streams wait for it"
        );
        self.sources.topics_waiting.inc();
        WaitingGuard {
            gauge: self.sources.topics_waiting.clone(),
        }
    }

    /// An HTTP upstream request ended with `result` (one of [`UPSTREAM_RESULTS`]).
    pub fn upstream_request(&self, result: &'static str, stream_id: &str, detail: &str) {
        if result != "ok" {
            tracing::warn!(result, stream_id, detail, "upstream request failed");
        }
        self.sources
            .upstream_requests
            .with_label_values(&[result])
            .inc();
    }
}
