//! The intake consumer's callbacks: consumer lag from librdkafka statistics, and rebalances.
//!
//! Rebalance callbacks run on the intake thread inside `poll`, and block it until ownership has
//! done its part: a revoked partition's streams are stopped (and its stored offsets committed)
//! before the partition is given up; an assigned partition is restored from the changelog before
//! its first request is handled.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, TopicPartitionList};
use tokio::runtime::Handle;

use crate::metrics::Metrics;
use crate::stream::ownership::Ownership;

/// Consumer callbacks.
pub struct IntakeContext {
    metrics: Arc<Metrics>,
    assigned: Arc<AtomicBool>,
    topic: String,
    ownership: Arc<Ownership>,
    runtime: Handle,
}

impl IntakeContext {
    /// Callbacks for the consumer of `topic`, handing rebalances to `ownership` on `runtime`.
    pub fn new(
        metrics: Arc<Metrics>,
        assigned: Arc<AtomicBool>,
        topic: &str,
        ownership: Arc<Ownership>,
        runtime: Handle,
    ) -> IntakeContext {
        IntakeContext {
            metrics,
            assigned,
            topic: topic.to_owned(),
            ownership,
            runtime,
        }
    }

    fn partitions(&self, tpl: &TopicPartitionList) -> Vec<i32> {
        tpl.elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect()
    }
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
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let parts = self.partitions(tpl);
            if parts.is_empty() {
                return;
            }
            self.runtime.block_on(self.ownership.revoke(&parts));
            // Offsets stored for the stopped streams' requests go with the partition.
            if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                tracing::debug!(error = %e, "no intake offsets committed at revocation");
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let parts = self.partitions(tpl);
                if !parts.is_empty() {
                    self.runtime.block_on(self.ownership.assign(&parts));
                }
                self.assigned.store(true, Ordering::Release);
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "intake rebalance error"),
        }
    }
}
