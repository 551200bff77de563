//! Durable Streams metrics and logs: streams held (`sluice_durable_streams`), subscription wakes
//! (`sluice_durable_wakes_total{kind}`), webhook deliveries
//! (`sluice_durable_webhooks_total{result}`) and refused subscription requests
//! (`sluice_durable_subscription_refused_total{code}`).

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};

use super::{names, Metrics};

/// Wake kinds.
const KINDS: [&str; 2] = ["webhook", "pull_wake"];
/// Webhook results, and an unwritten wake event.
const RESULTS: [&str; 3] = ["delivered", "failed", "wake_unwritten"];
/// The protocol's subscription error codes; anything else counts as `other`.
const CODES: [&str; 11] = [
    "INVALID_REQUEST",
    "FORBIDDEN",
    "SUBSCRIPTION_NOT_FOUND",
    "SUBSCRIPTION_ALREADY_EXISTS",
    "WEBHOOK_URL_REJECTED",
    "TOKEN_INVALID",
    "TOKEN_EXPIRED",
    "FENCED",
    "ALREADY_CLAIMED",
    "NO_PENDING_WORK",
    "INVALID_OFFSET",
];

/// The Durable Streams metric families.
pub(super) struct DurableMetrics {
    streams: IntGauge,
    wakes: IntCounterVec,
    webhooks: IntCounterVec,
    refused: IntCounterVec,
}

impl DurableMetrics {
    pub(super) fn new(registry: &Registry) -> Result<DurableMetrics, prometheus::Error> {
        let streams = IntGauge::new(names::DURABLE_STREAMS, "Durable Streams held.")?;
        let wakes = IntCounterVec::new(
            Opts::new(
                names::DURABLE_WAKES,
                "Subscription wakes issued, by kind (webhook, pull_wake).",
            ),
            &["kind"],
        )?;
        let webhooks = IntCounterVec::new(
            Opts::new(
                names::DURABLE_WEBHOOKS,
                "Subscription deliveries, by result (delivered, failed: retried with backoff, \
                 wake_unwritten: a pull-wake event that could not be appended).",
            ),
            &["result"],
        )?;
        let refused = IntCounterVec::new(
            Opts::new(
                names::DURABLE_SUBSCRIPTION_REFUSED,
                "Subscription requests refused, by protocol error code.",
            ),
            &["code"],
        )?;
        for k in KINDS {
            wakes.with_label_values(&[k]).inc_by(0);
        }
        for r in RESULTS {
            webhooks.with_label_values(&[r]).inc_by(0);
        }
        for c in CODES {
            refused.with_label_values(&[c]).inc_by(0);
        }
        registry.register(Box::new(streams.clone()))?;
        registry.register(Box::new(wakes.clone()))?;
        registry.register(Box::new(webhooks.clone()))?;
        registry.register(Box::new(refused.clone()))?;
        Ok(DurableMetrics {
            streams,
            wakes,
            webhooks,
            refused,
        })
    }
}

impl Metrics {
    /// How many Durable Streams are held now.
    pub fn durable_streams(&self, n: usize) {
        self.durable.streams.set(n as i64);
    }

    /// A subscription wake was issued.
    pub fn durable_wake(&self, subscription: &str, generation: u64, pull: bool) {
        tracing::debug!(subscription, generation, pull, "subscription wake issued");
        let kind = if pull { "pull_wake" } else { "webhook" };
        self.durable.wakes.with_label_values(&[kind]).inc();
    }

    /// A webhook answered 2xx.
    pub fn durable_webhook_delivered(&self, subscription: &str) {
        tracing::debug!(subscription, "webhook delivered");
        self.durable
            .webhooks
            .with_label_values(&["delivered"])
            .inc();
    }

    /// A webhook delivery failed and will be retried after `retry_ms`.
    pub fn durable_webhook_failed(
        &self,
        subscription: &str,
        retries: u32,
        retry_ms: i64,
        why: &str,
    ) {
        tracing::warn!(
            subscription,
            retries,
            retry_ms,
            error = why,
            "webhook delivery failed; retrying"
        );
        self.durable.webhooks.with_label_values(&["failed"]).inc();
    }

    /// A pull-wake event could not be appended to its wake stream.
    pub fn durable_wake_unwritten(&self, subscription: &str, wake_stream: &str, why: &str) {
        tracing::warn!(
            subscription,
            wake_stream,
            error = why,
            "wake event not written"
        );
        self.durable
            .webhooks
            .with_label_values(&["wake_unwritten"])
            .inc();
    }

    /// A subscription request was refused with a protocol error `code`.
    pub fn durable_refused(&self, code: &str, message: &str) {
        tracing::debug!(code, message, "subscription request refused");
        let code = if CODES.contains(&code) {
            code
        } else {
            super::OTHER
        };
        self.durable.refused.with_label_values(&[code]).inc();
    }
}
