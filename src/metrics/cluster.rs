//! Scale-out metrics and logs: owned intake partitions (`sluice_partitions_owned`), rebalances
//! (`sluice_rebalances_total{kind}`), changelog restores (`sluice_changelog_restore_seconds`) and
//! records applied from the changelog (`sluice_changelog_records_applied_total`).

use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use super::{names, Metrics};

/// The scale-out metric families.
pub(super) struct ClusterMetrics {
    owned: IntGauge,
    rebalances: IntCounterVec,
    restore: Histogram,
    applied: IntCounter,
}

impl ClusterMetrics {
    pub(super) fn new(registry: &Registry) -> Result<ClusterMetrics, prometheus::Error> {
        let owned = IntGauge::new(
            names::PARTITIONS_OWNED,
            "Intake partitions this instance owns (it runs their streams).",
        )?;
        let rebalances = IntCounterVec::new(
            Opts::new(
                names::REBALANCES,
                "Intake partitions assigned to or revoked from this instance, by kind (assign, revoke).",
            ),
            &["kind"],
        )?;
        let restore = Histogram::with_opts(
            HistogramOpts::new(
                names::CHANGELOG_RESTORE,
                "Time from a partition's assignment until its records are restored from the changelog.",
            )
            .buckets(vec![0.005, 0.025, 0.1, 0.25, 1.0, 2.5, 10.0, 30.0, 60.0]),
        )?;
        let applied = IntCounter::new(
            names::CHANGELOG_APPLIED,
            "Changelog records of partitions owned elsewhere applied to the local store.",
        )?;
        registry.register(Box::new(owned.clone()))?;
        registry.register(Box::new(rebalances.clone()))?;
        registry.register(Box::new(restore.clone()))?;
        registry.register(Box::new(applied.clone()))?;
        for k in ["assign", "revoke"] {
            rebalances.with_label_values(&[k]).inc_by(0);
        }
        Ok(ClusterMetrics {
            owned,
            rebalances,
            restore,
            applied,
        })
    }
}

impl Metrics {
    /// Intake partitions were assigned to this instance and restored from the changelog.
    pub fn partitions_assigned(&self, partitions: &[i32], owned: usize, restore: Duration) {
        tracing::info!(
            ?partitions,
            owned,
            restore_ms = restore.as_millis() as u64,
            "intake partitions assigned; records restored from the changelog"
        );
        let c = &self.cluster;
        c.rebalances
            .with_label_values(&["assign"])
            .inc_by(partitions.len() as u64);
        c.owned.set(owned as i64);
        c.restore.observe(restore.as_secs_f64());
    }

    /// Intake partitions were revoked; their streams were stopped and checkpointed.
    pub fn partitions_revoked(&self, partitions: &[i32], owned: usize, stopped: usize) {
        tracing::info!(
            ?partitions,
            owned,
            stopped,
            "intake partitions revoked; their streams were checkpointed and handed over"
        );
        let c = &self.cluster;
        c.rebalances
            .with_label_values(&["revoke"])
            .inc_by(partitions.len() as u64);
        c.owned.set(owned as i64);
    }

    /// Records read from the changelog were applied to the local store.
    pub fn changelog_applied(&self, n: usize) {
        self.cluster.applied.inc_by(n as u64);
    }
}
