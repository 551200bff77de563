//! The changelog follower: one consumer, assigned every changelog partition (no consumer group),
//! that applies the records of partitions this instance does not own to the local store, and
//! publishes how far it has read each partition so a new owner can wait until its partitions are
//! restored.
//!
//! Skipping and applying are decided under the [`Owned`] lock, so a partition that becomes owned
//! never has a record applied after its owner's own local writes began.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Changelog, Error};
use crate::kafka::producer::client_config;
use crate::metrics::Metrics;
use crate::settings::KafkaSettings;
use crate::store::{Applied, Store};

/// Most records applied in one local write batch.
const BATCH: usize = 1000;

/// The intake partitions this instance owns. The follower skips their changelog records: their
/// owner writes them to the local store itself.
#[derive(Default)]
pub struct Owned(RwLock<HashSet<i32>>);

impl Owned {
    /// Marks partitions owned (after they were restored) and returns how many are owned now.
    pub fn insert(&self, partitions: &[i32]) -> usize {
        let mut set = self.0.write().unwrap_or_else(|p| p.into_inner());
        set.extend(partitions.iter().copied());
        set.len()
    }

    /// Marks partitions no longer owned and returns how many are owned now.
    pub fn remove(&self, partitions: &[i32]) -> usize {
        let mut set = self.0.write().unwrap_or_else(|p| p.into_inner());
        for p in partitions {
            set.remove(p);
        }
        set.len()
    }

    /// Whether this instance owns `partition`.
    pub fn contains(&self, partition: i32) -> bool {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&partition)
    }
}

/// How far the follower has read each changelog partition: the next offset it will read.
pub struct Positions(watch::Sender<HashMap<i32, i64>>);

impl Positions {
    /// Waits until every `(partition, offset)` target is reached, or `timeout` passes. Returns
    /// whether all were reached.
    pub async fn reached(&self, targets: &[(i32, i64)], timeout: Duration) -> bool {
        let mut rx = self.0.subscribe();
        let done = rx.wait_for(|m| {
            targets
                .iter()
                .all(|(p, o)| m.get(p).is_some_and(|at| at >= o))
        });
        let reached = matches!(tokio::time::timeout(timeout, done).await, Ok(Ok(_)));
        reached
    }
}

/// The follower. Run it on a blocking thread with [`Follower::run`].
pub struct Follower {
    consumer: Arc<BaseConsumer>,
    store: Store,
    topic: String,
    owned: Arc<Owned>,
    positions: Arc<Positions>,
    metrics: Arc<Metrics>,
}

impl Follower {
    /// Creates the consumer and assigns every partition of the changelog at the position the
    /// local store last applied (from the beginning for a new store).
    pub fn new(
        kafka: &KafkaSettings,
        changelog: &Changelog,
        store: Store,
        owned: Arc<Owned>,
        metrics: Arc<Metrics>,
    ) -> Result<Follower, Error> {
        let topic = changelog.topic().to_owned();
        let err = |source| Error::Kafka {
            topic: topic.clone(),
            source,
        };
        let consumer: BaseConsumer = client_config(kafka)
            // Assigned, never subscribed: the group id is required but no group is joined.
            .set("group.id", "sluice-changelog")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "earliest")
            // A restore waits for the position to pass the last commit marker, which an idle
            // fetch learns of only when the broker answers it: answer soon.
            .set("fetch.wait.max.ms", "50")
            .create()
            .map_err(err)?;
        let stored = store.changelog_positions(&topic).unwrap_or_else(|e| {
            tracing::error!(error = %e, "changelog positions unreadable; following from the start");
            HashMap::new()
        });
        match store.mark_unseeded(&topic, changelog.partitions()) {
            Ok(true) => tracing::info!(
                topic,
                "the local store has records from before the changelog; each partition's owner seeds them into it"
            ),
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "could not check the store for records to seed"),
        }
        let mut tpl = TopicPartitionList::new();
        let mut start = HashMap::new();
        for p in 0..changelog.partitions() {
            let at = stored.get(&p).copied();
            let offset = at.map_or(Offset::Beginning, Offset::Offset);
            tpl.add_partition_offset(&topic, p, offset).map_err(err)?;
            start.insert(p, at.unwrap_or(0));
        }
        consumer.assign(&tpl).map_err(err)?;
        let (tx, _) = watch::channel(start);
        Ok(Follower {
            consumer: Arc::new(consumer),
            store,
            topic,
            owned,
            positions: Arc::new(Positions(tx)),
            metrics,
        })
    }

    /// Where the follower stands, for restore waits.
    pub fn positions(&self) -> Arc<Positions> {
        self.positions.clone()
    }

    /// The follower's client, for watermark requests.
    pub fn client(&self) -> Arc<BaseConsumer> {
        self.consumer.clone()
    }

    /// Follows the changelog until `cancel` fires. Blocking.
    pub fn run(self, cancel: CancellationToken) {
        let mut batch: Vec<Applied> = Vec::with_capacity(BATCH);
        while !cancel.is_cancelled() {
            let mut wait = Duration::from_millis(100);
            while batch.len() < BATCH {
                let Some(m) = self.consumer.poll(wait) else {
                    break;
                };
                wait = Duration::ZERO;
                match m {
                    Ok(m) => batch.push(Applied {
                        partition: m.partition(),
                        offset: m.offset(),
                        stream_id: String::from_utf8_lossy(m.key().unwrap_or_default())
                            .into_owned(),
                        value: m.payload().map(<[u8]>::to_vec),
                    }),
                    Err(e) => {
                        tracing::warn!(topic = self.topic, error = %e, "changelog read failed");
                        break;
                    }
                }
            }
            if !batch.is_empty() && !self.apply(&batch) {
                // Not applied: read the same records again rather than lose them.
                self.rewind(&batch);
                std::thread::sleep(Duration::from_millis(200));
            }
            batch.clear();
            self.publish_positions();
        }
    }

    /// Applies a batch under the ownership lock. Returns false if the store write failed.
    fn apply(&self, batch: &[Applied]) -> bool {
        let owned = self.owned.0.read().unwrap_or_else(|p| p.into_inner());
        match self
            .store
            .apply_changelog(&self.topic, batch, |p| owned.contains(&p))
        {
            Ok(n) => {
                self.metrics.changelog_applied(n);
                true
            }
            Err(e) => {
                tracing::error!(topic = self.topic, error = %e, "changelog records not applied; retrying");
                false
            }
        }
    }

    /// Seeks every partition of `batch` back to its first record in the batch.
    fn rewind(&self, batch: &[Applied]) {
        let mut first: HashMap<i32, i64> = HashMap::new();
        for a in batch {
            first.entry(a.partition).or_insert(a.offset);
        }
        for (p, o) in first {
            if let Err(e) =
                self.consumer
                    .seek(&self.topic, p, Offset::Offset(o), Duration::from_secs(5))
            {
                tracing::error!(topic = self.topic, partition = p, error = %e, "changelog seek failed");
            }
        }
    }

    /// Publishes the consumer's position of every partition (past any record it applied or
    /// skipped, and past transaction markers).
    fn publish_positions(&self) {
        let Ok(tpl) = self.consumer.position() else {
            return;
        };
        self.positions.0.send_if_modified(|m| {
            let mut changed = false;
            for e in tpl.elements() {
                if let Offset::Offset(o) = e.offset() {
                    let at = m.entry(e.partition()).or_insert(0);
                    if o > *at {
                        *at = o;
                        changed = true;
                    }
                }
            }
            changed
        });
    }
}
