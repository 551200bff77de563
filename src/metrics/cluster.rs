//! Scale-out metrics and logs: owned intake partitions (`sluice_partitions_owned`), rebalances
//! (`sluice_rebalances_total{kind}`), changelog restores (`sluice_changelog_restore_seconds`) and
//! records applied from the changelog (`sluice_changelog_records_applied_total`), fenced writes
//! (`sluice_fenced_writes_total`), transaction commits (`sluice_transaction_commit_seconds`) and
//! writes that arrived during a commit (`sluice_transaction_parked_writes_total`).

use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use super::{names, Metrics};

/// The scale-out metric families.
pub(super) struct ClusterMetrics {
    owned: IntGauge,
    rebalances: IntCounterVec,
    restore: Histogram,
    applied: IntCounter,
    fenced: IntCounter,
    commits: Histogram,
    parked: IntCounter,
    remote: IntGauge,
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
        let fenced = IntCounter::new(
            names::FENCED_WRITES,
            "Writes refused because another instance owns the stream's intake partition now \
             (fenced by Kafka, or refused here after the partition was revoked).",
        )?;
        let commits = Histogram::with_opts(
            HistogramOpts::new(
                names::TRANSACTION_COMMIT,
                "Time to commit one transaction of an owned intake partition.",
            )
            .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5]),
        )?;
        let parked = IntCounter::new(
            names::TRANSACTION_PARKED,
            "Writes that arrived while their partition's transaction was committing, sent into \
             the next transaction as it began.",
        )?;
        let remote = IntGauge::new(
            names::REMOTE_TAILS,
            "Streams running on other instances that local subscribers follow live.",
        )?;
        registry.register(Box::new(remote.clone()))?;
        registry.register(Box::new(fenced.clone()))?;
        registry.register(Box::new(commits.clone()))?;
        registry.register(Box::new(parked.clone()))?;
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
            fenced,
            commits,
            parked,
            remote,
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

    /// A write was refused: another instance owns its partition now.
    pub fn fenced_write(&self) {
        self.cluster.fenced.inc();
    }

    /// A partition's transaction committed after `elapsed`.
    pub fn transaction_committed(&self, elapsed: Duration) {
        self.cluster.commits.observe(elapsed.as_secs_f64());
    }

    /// `n` writes that waited for a commit were sent into the next transaction.
    pub fn transaction_parked(&self, n: u64) {
        self.cluster.parked.inc_by(n);
    }

    /// A partition's writer failed: its streams stop and resume from what was committed.
    pub fn transaction_failed(&self, partition: i32, fenced: bool, reason: &str) {
        if fenced {
            tracing::error!(
                partition,
                reason,
                "fenced: another instance owns this intake partition now; its streams stop here"
            );
        } else {
            tracing::warn!(
                partition,
                reason,
                "transaction aborted; the partition's streams restart from what was committed"
            );
        }
    }

    /// The remote tail now follows `n` streams.
    pub fn remote_tails(&self, n: usize) {
        self.cluster.remote.set(n as i64);
    }
}
