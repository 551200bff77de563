//! Ownership of intake partitions: what happens when the intake consumer group assigns or revokes
//! partitions of this instance.
//!
//! * **Assign:** wait until the changelog follower has applied the partition's changelog up to its
//!   high watermark at assignment (the records of every stream the previous owner ran), then mark
//!   the partition owned (the follower skips it from then on), open its run group, and resume its
//!   interrupted streams in the background. Intake handles the partition's requests only after
//!   this, so a redelivered request finds its record.
//! * **Revoke:** stop the partition's runs (each checkpoints, acknowledged by the changelog) and
//!   wait for them before the consumer gives the partition up, then let the follower apply it.
//!
//! Both are called from the intake consumer's rebalance callback, which blocks until they finish.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::BaseConsumer;
use tokio_util::task::TaskTracker;

use crate::kafka::changelog::{self, follower::Owned, Positions};
use crate::metrics::Metrics;
use crate::stream::pool::Pool;

/// The longest a restore waits for the follower before the partition's streams run anyway.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(60);

/// Reacts to assignments and revocations. Cheap to share behind an `Arc`.
pub struct Ownership {
    pool: Pool,
    owned: Arc<Owned>,
    positions: Arc<Positions>,
    client: Arc<BaseConsumer>,
    topic: String,
    metrics: Arc<Metrics>,
    handover: Duration,
    tasks: TaskTracker,
}

impl Ownership {
    /// Ownership over `pool`, restoring through the follower whose client and positions are given.
    /// Background resumes are tracked by `tasks`; `handover` bounds the wait for revoked runs.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        pool: Pool,
        owned: Arc<Owned>,
        positions: Arc<Positions>,
        client: Arc<BaseConsumer>,
        topic: &str,
        metrics: Arc<Metrics>,
        handover: Duration,
        tasks: TaskTracker,
    ) -> Ownership {
        Ownership {
            pool,
            owned,
            positions,
            client,
            topic: topic.to_owned(),
            metrics,
            handover,
            tasks,
        }
    }

    /// `partitions` were assigned: restore, take ownership, resume their streams.
    pub async fn assign(&self, partitions: &[i32]) {
        let started = Instant::now();
        let (client, topic, parts) = (self.client.clone(), self.topic.clone(), partitions.to_vec());
        let marks = tokio::task::spawn_blocking(move || {
            changelog::high_watermarks(&client, &topic, &parts, Duration::from_secs(10))
        })
        .await;
        match marks {
            Ok(Ok(targets)) => {
                if !self.positions.reached(&targets, RESTORE_TIMEOUT).await {
                    tracing::error!(
                        ?partitions,
                        timeout_s = RESTORE_TIMEOUT.as_secs(),
                        "changelog restore incomplete; running the partitions' streams from what was restored"
                    );
                }
            }
            Ok(Err(e)) => {
                tracing::error!(?partitions, error = %e, "changelog watermarks unavailable; running from the local records")
            }
            Err(e) => tracing::error!(error = %e, "changelog watermark task failed"),
        }
        let owned = self.owned.insert(partitions);
        self.pool.open(partitions);
        self.metrics
            .partitions_assigned(partitions, owned, started.elapsed());
        let (pool, parts) = (self.pool.clone(), partitions.to_vec());
        self.tasks.spawn(async move {
            match pool.resume(&parts).await {
                Ok(resumed) => {
                    tracing::info!(partitions = ?parts, resumed, "interrupted streams relaunched")
                }
                Err(e) => {
                    tracing::error!(partitions = ?parts, error = %e, "interrupted streams could not be listed")
                }
            }
        });
    }

    /// `partitions` are being revoked: stop their streams, then give them up.
    pub async fn revoke(&self, partitions: &[i32]) {
        let stopped = self.pool.close(partitions, self.handover).await;
        let owned = self.owned.remove(partitions);
        self.metrics.partitions_revoked(partitions, owned, stopped);
    }
}
