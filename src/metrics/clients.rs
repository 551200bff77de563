//! Metrics of client surfaces beyond the per-transport counters: SSE reconnects refused with 204
//! because their stream had ended, and gRPC `event_types` subscriptions (open, and ended because
//! the subscriber fell behind). Labels are fixed; stream ids and types are never labels.

use prometheus::{IntCounter, IntGauge, Registry};

use super::{names, Metrics};

/// The client-surface metric families.
pub(super) struct ClientMetrics {
    sse_ended: IntCounter,
    type_subscribers: IntGauge,
    type_lagged: IntCounter,
}

impl ClientMetrics {
    pub(super) fn new(registry: &Registry) -> Result<ClientMetrics, prometheus::Error> {
        let m = ClientMetrics {
            sse_ended: IntCounter::new(
                names::SSE_ENDED_RECONNECTS,
                "SSE reconnects answered 204 because the stream had ended at or before their resume point.",
            )?,
            type_subscribers: IntGauge::new(
                names::TYPE_SUBSCRIBERS,
                "Open subscriptions to event types (gRPC SubscribeEvents with event_types).",
            )?,
            type_lagged: IntCounter::new(
                names::TYPE_SUBSCRIBERS_LAGGED,
                "Event-type subscriptions ended because the subscriber fell behind the live feed.",
            )?,
        };
        registry.register(Box::new(m.sse_ended.clone()))?;
        registry.register(Box::new(m.type_subscribers.clone()))?;
        registry.register(Box::new(m.type_lagged.clone()))?;
        Ok(m)
    }
}

/// Counts an open event-type subscription until dropped.
pub struct TypeSubscriberGuard {
    gauge: IntGauge,
}

impl Drop for TypeSubscriberGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

impl Metrics {
    /// An SSE reconnect came at or after its finished stream's terminal event and got 204.
    pub fn sse_ended_reconnect(&self, stream_id: &str, last_event_id: i64) {
        tracing::debug!(
            stream_id,
            last_event_id,
            "SSE reconnect after the terminal event; 204"
        );
        self.clients.sse_ended.inc();
    }

    /// An event-type subscription opened; counted until the guard drops.
    pub fn type_subscriber(&self, types: usize) -> TypeSubscriberGuard {
        tracing::debug!(types, "event-type subscription opened");
        self.clients.type_subscribers.inc();
        TypeSubscriberGuard {
            gauge: self.clients.type_subscribers.clone(),
        }
    }

    /// An event-type subscription fell `skipped` events behind and was ended.
    pub fn type_subscriber_lagged(&self, skipped: u64) {
        tracing::warn!(
            skipped,
            "event-type subscriber fell behind the live feed; ended"
        );
        self.clients.type_lagged.inc();
    }
}
