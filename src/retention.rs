//! Retention and limits: the budget of live stream topics, and the background sweeper that
//! deletes finished streams' topics and records after `retention.stream_retention`.
//!
//! A deleted stream leaves a "gone" marker so subscribers get 410 rather than 404. Topic deletion
//! is batched. This module does not create topics; the provider does, within the budget.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::kafka::changelog::follower::Owned;
use crate::kafka::producer::Journal;
use crate::metrics::Metrics;
use crate::settings::RetentionSettings;
use crate::stream::records::Records;

/// How many stream topics exist (or are about to), against the configured cap.
pub struct TopicBudget {
    used: AtomicUsize,
    cap: usize,
}

impl TopicBudget {
    /// A budget of `cap` topics with `used` already taken.
    pub fn new(cap: usize, used: usize) -> TopicBudget {
        TopicBudget {
            used: AtomicUsize::new(used),
            cap,
        }
    }

    /// Takes one topic from the budget; false at the cap.
    pub fn try_take(&self) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u < self.cap).then_some(u + 1)
            })
            .is_ok()
    }

    /// Returns `n` topics to the budget.
    pub fn release(&self, n: usize) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(n))
            });
    }

    /// Whether another topic fits.
    pub fn has_room(&self) -> bool {
        self.used.load(Ordering::Acquire) < self.cap
    }

    /// Topics in use.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// The cap.
    pub fn cap(&self) -> usize {
        self.cap
    }
}

/// The background sweeper.
pub struct Sweeper {
    /// Stream records.
    pub records: Records,
    /// The partitions this instance owns: it sweeps only their streams.
    pub owned: Arc<Owned>,
    /// Topic deletion.
    pub journal: Arc<Journal>,
    /// The budget to give deleted topics back to.
    pub budget: Arc<TopicBudget>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// `[retention]` settings.
    pub settings: RetentionSettings,
}

impl Sweeper {
    /// Sweeps every `sweep_interval` until `cancel` fires.
    pub async fn run(self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.settings.sweep_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.sweep_once().await {
                tracing::warn!(error = %e, "retention sweep failed; will retry");
            }
        }
    }

    /// Deletes every stream that finished more than `stream_retention` ago. Returns how many.
    pub async fn sweep_once(&self) -> anyhow::Result<usize> {
        let retention = chrono::Duration::from_std(self.settings.stream_retention)?;
        let cutoff = chrono::Utc::now() - retention;
        let n = self.records.partitions();
        let expired: Vec<(String, i32, Option<String>)> = self
            .records
            .store()
            .scan()
            .await?
            .into_iter()
            .filter_map(|(id, rec)| {
                let r = rec.ok()?;
                let p = r.partition_in(n);
                let due = r.finished_at.is_some_and(|t| t < cutoff) && self.owned.contains(p);
                let topic = crate::event::StreamId::parse(&id)
                    .ok()
                    .map(|sid| self.journal.topic_of(&sid, Some(&r)));
                due.then_some((id, p, topic))
            })
            .collect();
        let mut swept = 0;
        for batch in expired.chunks(self.settings.delete_batch) {
            let refs: Vec<&str> = batch.iter().filter_map(|(_, _, t)| t.as_deref()).collect();
            self.journal.delete_topics(&refs).await?;
            let buried = batch.iter().map(|(id, p, _)| (id.clone(), *p)).collect();
            self.records.bury(buried).await?;
            self.budget.release(batch.len());
            swept += batch.len();
        }
        let tomb_cutoff =
            chrono::Utc::now() - chrono::Duration::from_std(self.settings.tombstone_retention)?;
        let purged = self.records.store().purge_gone(tomb_cutoff).await?;
        self.metrics
            .streams_swept(swept, purged, self.budget.used());
        Ok(swept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_refuses_at_the_cap_and_frees_on_release() {
        let b = TopicBudget::new(2, 1);
        assert!(b.try_take());
        assert!(!b.try_take() && !b.has_room());
        b.release(1);
        assert!(b.has_room() && b.try_take());
        b.release(10);
        assert_eq!(b.used(), 0);
    }
}
