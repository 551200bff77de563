//! Ownership of intake partitions: what happens when the intake consumer group assigns or revokes
//! partitions of this instance, and when a partition's transactional writer fails.
//!
//! * **Assign:** open the partition's transactional writer first (its `init_transactions` fences
//!   the previous owner, however alive it still is, and aborts its open transaction), then wait
//!   until the changelog follower has applied the partition's changelog up to its high watermark
//!   (the records of every stream the previous owner ran), mark the partition owned (the follower
//!   skips it from then on), open its run group, and resume its interrupted streams. Intake
//!   handles the partition's requests only after this, so a redelivered request finds its record.
//! * **Revoke:** stop the partition's runs (each checkpoints through the writer) and wait for
//!   them, commit and close the writer, then let the follower apply the partition.
//! * **Fenced:** another instance took the partition over while this one was not looking (a long
//!   pause): stop its runs, which can no longer write anything, and give it up.
//! * **Aborted:** a transaction failed (a broker restart): restart the partition's runs on a fresh
//!   writer, from what was committed.
//!
//! Assign and revoke are called from the intake consumer's rebalance callback, which blocks until
//! they finish; a lock keeps them and writer failures from interleaving.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::BaseConsumer;
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::kafka::changelog::{self, follower::Owned, Positions};
use crate::kafka::txn::{self, Event, Transactions, TxnProducer};
use crate::metrics::Metrics;
use crate::settings::{IntakeSettings, KafkaSettings};
use crate::stream::pool::Pool;

/// The longest a restore waits for the follower before the partition's streams run anyway.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long an assignment keeps trying to open a partition's writer.
const OPEN_TIMEOUT: Duration = Duration::from_secs(60);

/// An open writer and its committer.
struct Writer {
    producer: Arc<TxnProducer>,
    stop: CancellationToken,
    committer: JoinHandle<()>,
}

/// What ownership works with besides the pool.
pub struct Parts {
    /// Owned partitions, shared with the follower.
    pub owned: Arc<Owned>,
    /// The follower's positions.
    pub positions: Arc<Positions>,
    /// The follower's client, for the changelog's watermarks.
    pub client: Arc<BaseConsumer>,
    /// The changelog topic.
    pub changelog_topic: String,
    /// The transactional writers, shared with the provider and the changelog.
    pub txns: Arc<Transactions>,
}

/// Reacts to assignments, revocations and writer failures. Shared behind an `Arc`.
pub struct Ownership {
    pool: Pool,
    parts: Parts,
    kafka: KafkaSettings,
    intake: IntakeSettings,
    metrics: Arc<Metrics>,
    handover: Duration,
    tasks: TaskTracker,
    writers: Mutex<HashMap<i32, Writer>>,
    events: mpsc::UnboundedSender<Event>,
}

impl Ownership {
    /// Ownership over `pool`. Background work is tracked by `tasks`; `handover` bounds the wait
    /// for revoked runs. Writer failures arrive on the returned receiver; pass it to
    /// [`Ownership::watch`].
    pub fn new(
        pool: Pool,
        parts: Parts,
        kafka: &KafkaSettings,
        intake: &IntakeSettings,
        metrics: Arc<Metrics>,
        handover: Duration,
        tasks: TaskTracker,
    ) -> (Ownership, mpsc::UnboundedReceiver<Event>) {
        let (events, rx) = mpsc::unbounded_channel();
        let o = Ownership {
            pool,
            parts,
            kafka: kafka.clone(),
            intake: intake.clone(),
            metrics,
            handover,
            tasks,
            writers: Mutex::new(HashMap::new()),
            events,
        };
        (o, rx)
    }

    /// `partitions` were assigned: fence and restore, take ownership, resume their streams.
    pub async fn assign(&self, partitions: &[i32]) {
        let started = Instant::now();
        let mut writers = self.writers.lock().await;
        let mut opened = Vec::new();
        for &p in partitions {
            if self.open_writer(&mut writers, p).await {
                opened.push(p);
            }
        }
        self.restore(&opened).await;
        let owned = self.parts.owned.insert(&opened);
        self.seed(&opened).await;
        self.pool.open(&opened);
        self.metrics
            .partitions_assigned(&opened, owned, started.elapsed());
        self.resume(&opened);
    }

    /// `partitions` are being revoked: stop their streams, commit, then give them up.
    pub async fn revoke(&self, partitions: &[i32]) {
        let mut writers = self.writers.lock().await;
        let stopped = self.pool.close(partitions, self.handover).await;
        for &p in partitions {
            self.close_writer(&mut writers, p).await;
        }
        let owned = self.parts.owned.remove(partitions);
        self.metrics.partitions_revoked(partitions, owned, stopped);
    }

    /// Gives up every partition still held (at shutdown, after intake stopped).
    pub async fn release_all(&self) {
        let held: Vec<i32> = self.writers.lock().await.keys().copied().collect();
        if !held.is_empty() {
            self.revoke(&held).await;
        }
    }

    /// Handles writer failures until `stop` fires.
    pub async fn watch(
        self: Arc<Self>,
        mut events: mpsc::UnboundedReceiver<Event>,
        stop: CancellationToken,
    ) {
        loop {
            let event = tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                e = events.recv() => match e {
                    Some(e) => e,
                    None => return,
                },
            };
            match event {
                Event::Fenced {
                    partition,
                    writer,
                    reason,
                } => {
                    if self.is_current(partition, writer).await {
                        self.metrics.transaction_failed(partition, true, &reason);
                        self.revoke(&[partition]).await;
                    }
                }
                Event::Aborted {
                    partition,
                    writer,
                    reason,
                } => {
                    if self.is_current(partition, writer).await {
                        self.metrics.transaction_failed(partition, false, &reason);
                        self.restart(partition).await;
                    }
                }
            }
        }
    }

    /// Whether `writer` is still `partition`'s writer: a replaced writer's late failure (its own
    /// successor fenced it) concerns nobody.
    async fn is_current(&self, partition: i32, writer: u64) -> bool {
        let writers = self.writers.lock().await;
        let current = writers
            .get(&partition)
            .is_some_and(|w| w.producer.id() == writer);
        if !current {
            tracing::debug!(
                partition,
                writer,
                "failure of a replaced partition writer ignored"
            );
        }
        current
    }

    /// Restarts an owned partition's runs on a fresh writer, from what was committed.
    async fn restart(&self, partition: i32) {
        let mut writers = self.writers.lock().await;
        if !self.parts.owned.contains(partition) {
            return;
        }
        self.pool.close(&[partition], self.handover).await;
        self.close_writer(&mut writers, partition).await;
        if self.open_writer(&mut writers, partition).await {
            self.pool.open(&[partition]);
            self.resume(&[partition]);
        } else {
            self.parts.owned.remove(&[partition]);
        }
    }

    /// Opens `partition`'s transactional writer, retrying while Kafka is unavailable.
    async fn open_writer(&self, writers: &mut HashMap<i32, Writer>, partition: i32) -> bool {
        if writers.contains_key(&partition) {
            return true;
        }
        let id = txn::transactional_id(&self.intake.group_id, &self.intake.topic, partition);
        let deadline = Instant::now() + OPEN_TIMEOUT;
        let mut backoff = Duration::from_millis(100);
        let producer = loop {
            match TxnProducer::open(&self.kafka, &id, partition, self.metrics.clone()).await {
                Ok(p) => break p,
                Err(e) if Instant::now() < deadline => {
                    tracing::warn!(partition, error = %e, "transactional writer not opened; retrying");
                }
                Err(e) => {
                    tracing::error!(partition, error = %e, "transactional writer not opened; the partition's streams do not run here");
                    return false;
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        };
        self.parts.txns.insert(producer.clone());
        let stop = CancellationToken::new();
        let committer = self.tasks.spawn(
            producer
                .clone()
                .commit_until(stop.clone(), self.events.clone()),
        );
        writers.insert(
            partition,
            Writer {
                producer,
                stop,
                committer,
            },
        );
        true
    }

    /// Commits what `partition`'s writer holds and closes it.
    async fn close_writer(&self, writers: &mut HashMap<i32, Writer>, partition: i32) {
        let Some(w) = writers.remove(&partition) else {
            return;
        };
        w.stop.cancel();
        if tokio::time::timeout(self.handover, w.committer)
            .await
            .is_err()
        {
            tracing::warn!(partition, "last transaction not committed in time");
        }
        self.parts.txns.remove(partition, &w.producer);
    }

    /// Seeds records from before the changelog into it, for partitions that have any.
    async fn seed(&self, partitions: &[i32]) {
        for &p in partitions {
            match self.pool.records().seed(p).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(
                        partition = p,
                        records = n,
                        "local records seeded into the changelog"
                    )
                }
                Err(e) => tracing::error!(
                    partition = p,
                    error = %e,
                    "local records not seeded into the changelog; retried at the next assignment"
                ),
            }
        }
    }

    /// Waits until the follower applied `partitions` of the changelog up to their high watermarks.
    async fn restore(&self, partitions: &[i32]) {
        if partitions.is_empty() {
            return;
        }
        let (client, topic, parts) = (
            self.parts.client.clone(),
            self.parts.changelog_topic.clone(),
            partitions.to_vec(),
        );
        let marks = tokio::task::spawn_blocking(move || {
            changelog::high_watermarks(&client, &topic, &parts, Duration::from_secs(10))
        })
        .await;
        match marks {
            Ok(Ok(targets)) => {
                if !self
                    .parts
                    .positions
                    .reached(&targets, RESTORE_TIMEOUT)
                    .await
                {
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
    }

    /// Resumes the interrupted streams of `partitions` in the background.
    fn resume(&self, partitions: &[i32]) {
        if partitions.is_empty() {
            return;
        }
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
}
