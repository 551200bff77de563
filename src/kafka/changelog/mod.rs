//! The changelog: every stream record is also written to a compacted topic (`sluice.state` by
//! default), keyed by stream id, in the partition of the intake topic the stream's request arrived
//! on. The local RocksDB store is a materialisation of it: the owner of a partition writes its
//! streams' records to both, and every instance's [`follower`] applies the records of the
//! partitions it does not own, so any instance can answer for any stream and a new owner finds the
//! records of the streams it takes over.
//!
//! This module does not decide who owns what (`stream::ownership` does) or run streams.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::util::Timeout;

use crate::kafka::producer::{self as journal, Journal};
use crate::kafka::txn::Transactions;
use crate::store::StreamRecord;

pub mod follower;

pub use follower::{Follower, Positions};

/// Changelog failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A record could not be written.
    #[error("changelog {topic}: {source}")]
    Write {
        /// The changelog topic.
        topic: String,
        /// The producer error.
        #[source]
        source: Box<journal::Error>,
    },
    /// The changelog topic exists with another partition count than the intake topic.
    #[error(
        "changelog topic {topic} has {found} partitions but the intake topic has {expected}: \
         a stream's record must live in the partition its request arrived on; \
         set intake.changelog_topic to a new topic or repartition"
    )]
    Partitions {
        /// The changelog topic.
        topic: String,
        /// Partitions of the intake topic.
        expected: i32,
        /// Partitions of the changelog topic.
        found: i32,
    },
    /// Kafka did not answer a metadata or watermark request.
    #[error("changelog {topic}: {source}")]
    Kafka {
        /// The changelog topic.
        topic: String,
        /// The client error.
        #[source]
        source: KafkaError,
    },
}

/// Writes stream records to the changelog, each through the transactional writer of its
/// partition. Cheap to share behind an `Arc`.
pub struct Changelog {
    journal: Arc<Journal>,
    txns: Arc<Transactions>,
    topic: String,
    partitions: i32,
}

impl Changelog {
    /// A writer to `topic`, which has `partitions` partitions (as many as the intake topic).
    pub fn new(
        journal: Arc<Journal>,
        txns: Arc<Transactions>,
        topic: &str,
        partitions: i32,
    ) -> Changelog {
        Changelog {
            journal,
            txns,
            topic: topic.to_owned(),
            partitions: partitions.max(1),
        }
    }

    /// Writes `value` (a tombstone when `None`) for `stream_id` into `partition`, in that
    /// partition's transaction, and waits until it committed.
    async fn put(
        &self,
        partition: i32,
        stream_id: &str,
        value: Option<&[u8]>,
    ) -> Result<(), Error> {
        let err = |source| Error::Write {
            topic: self.topic.clone(),
            source: Box::new(source),
        };
        let Some(txn) = self.txns.get(partition) else {
            return Err(err(journal::Error::NotOwner { partition }));
        };
        txn.produce(&self.topic, Some(partition), stream_id, value, "changelog")
            .await
            .map(|_| ())
            .map_err(err)
    }

    /// The changelog topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Its partition count (the intake topic's).
    pub fn partitions(&self) -> i32 {
        self.partitions
    }

    /// Creates the compacted changelog topic unless it exists, and checks that an existing one
    /// has the intake topic's partition count.
    pub async fn ensure(&self, replication: i32) -> Result<(), Error> {
        let config = [
            ("cleanup.policy", "compact"),
            ("min.compaction.lag.ms", "60000"),
        ];
        self.journal
            .create_topic(&self.topic, self.partitions, replication, &config)
            .await
            .map_err(|source| Error::Write {
                topic: self.topic.clone(),
                source: Box::new(source),
            })?;
        let found = self
            .journal
            .partition_count(&self.topic)
            .await
            .map_err(|source| Error::Write {
                topic: self.topic.clone(),
                source: Box::new(source),
            })?;
        if found != self.partitions {
            return Err(Error::Partitions {
                topic: self.topic.clone(),
                expected: self.partitions,
                found,
            });
        }
        Ok(())
    }

    /// Writes a record and waits until its transaction committed.
    pub async fn write(&self, record: &StreamRecord) -> Result<(), Error> {
        let bytes = serde_json::to_vec(record).unwrap_or_default();
        let partition = record.partition_in(self.partitions);
        self.put(partition, &record.stream_id, Some(&bytes)).await
    }

    /// Writes tombstones for streams retention deleted, given as `(stream id, partition)`.
    pub async fn bury(&self, streams: &[(String, i32)]) -> Result<(), Error> {
        let puts = streams.iter().map(|(id, p)| self.put(*p, id, None));
        for put in futures::future::join_all(puts).await {
            put?;
        }
        Ok(())
    }
}

/// The high watermark of each of `partitions` of `topic`, read with `client` (blocking).
pub fn high_watermarks(
    client: &BaseConsumer<impl rdkafka::consumer::ConsumerContext>,
    topic: &str,
    partitions: &[i32],
    timeout: Duration,
) -> Result<Vec<(i32, i64)>, Error> {
    partitions
        .iter()
        .map(|&p| {
            client
                .fetch_watermarks(topic, p, Timeout::After(timeout))
                .map(|(_, high)| (p, high))
                .map_err(|source| Error::Kafka {
                    topic: topic.to_owned(),
                    source,
                })
        })
        .collect()
}
