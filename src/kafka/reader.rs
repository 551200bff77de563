//! Replay reads: a small pool of Kafka consumers, shared by every subscriber, that read a range of
//! a stream topic by manual assignment (no consumer group).
//!
//! Reads are done in bounded batches, and a consumer is returned to the pool between batches, so a
//! slow client never holds a Kafka client hostage. This module does not know about clients or the
//! live hub; the subscription merges replayed and live events.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::Semaphore;

use crate::kafka::producer::client_config;
use crate::settings::KafkaSettings;
use crate::stream::hub::StoredEvent;

/// Replay failures, naming the topic.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A consumer could not be created.
    #[error("replay consumer: {0}")]
    Client(#[source] KafkaError),
    /// The topic does not exist (never created, or deleted by retention).
    #[error("topic {0} does not exist")]
    UnknownTopic(String),
    /// Kafka did not answer in time or answered with an error.
    #[error("read {topic}: {source}")]
    Read {
        /// The topic.
        topic: String,
        /// The client error.
        #[source]
        source: KafkaError,
    },
    /// No message arrived although the range says one should.
    #[error("read {topic}: no message at offset {offset} within the timeout")]
    Timeout {
        /// The topic.
        topic: String,
        /// The offset waited for.
        offset: i64,
    },
}

/// A topic's retained range: `low` is the earliest offset, `high` the next offset to be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermarks {
    /// Earliest retained offset.
    pub low: i64,
    /// Offset the next event will get.
    pub high: i64,
}

/// The pool of replay consumers. Cheap to share behind an `Arc`.
pub struct Reader {
    idle: Mutex<Vec<Arc<StreamConsumer>>>,
    permits: Semaphore,
    metadata: Arc<BaseConsumer>,
    settings: KafkaSettings,
}

/// Most events read per batch before the consumer goes back to the pool.
pub const BATCH: usize = 2000;

fn map_err(topic: &str, source: KafkaError) -> Error {
    match source.rdkafka_error_code() {
        Some(
            RDKafkaErrorCode::UnknownTopicOrPartition
            | RDKafkaErrorCode::UnknownTopic
            | RDKafkaErrorCode::UnknownPartition,
        ) => Error::UnknownTopic(topic.to_owned()),
        _ => Error::Read {
            topic: topic.to_owned(),
            source,
        },
    }
}

impl Reader {
    /// Creates the pool (consumers are created lazily, up to `kafka.replay_readers`).
    pub fn new(settings: &KafkaSettings) -> Result<Reader, Error> {
        let metadata: BaseConsumer = client_config(settings)
            .set("group.id", "sluice-replay")
            .create()
            .map_err(Error::Client)?;
        Ok(Reader {
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(settings.replay_readers),
            metadata: Arc::new(metadata),
            settings: settings.clone(),
        })
    }

    fn consumer(&self) -> Result<Arc<StreamConsumer>, Error> {
        if let Some(c) = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Ok(c);
        }
        let c: StreamConsumer = client_config(&self.settings)
            .set("group.id", "sluice-replay")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", "50")
            .set("auto.offset.reset", "earliest")
            .create()
            .map_err(Error::Client)?;
        Ok(Arc::new(c))
    }

    fn give_back(&self, c: Arc<StreamConsumer>) {
        let _ = c.unassign();
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(c);
    }

    /// The topic's retained offset range. When the client's metadata cache does not know the topic
    /// (it may have been created moments ago), a metadata request for it refreshes the cache; a
    /// topic the broker does not have is `UnknownTopic`.
    pub async fn watermarks(&self, topic: &str) -> Result<Watermarks, Error> {
        let mut delay = Duration::from_millis(20);
        for _ in 0..5 {
            match self.query_watermarks(topic).await {
                Err(Error::UnknownTopic(_)) => {
                    if !self.topic_exists(topic).await? {
                        return Err(Error::UnknownTopic(topic.to_owned()));
                    }
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                other => return other,
            }
        }
        self.query_watermarks(topic).await
    }

    /// Asks the broker whether `topic` exists, refreshing the client's metadata cache.
    async fn topic_exists(&self, topic: &str) -> Result<bool, Error> {
        let md = self.metadata.clone();
        let t = topic.to_owned();
        let timeout = self.settings.operation_timeout;
        let res = tokio::task::spawn_blocking(move || {
            md.fetch_metadata(Some(&t), timeout).map(|m| {
                m.topics()
                    .iter()
                    .any(|mt| mt.name() == t && mt.error().is_none() && !mt.partitions().is_empty())
            })
        })
        .await
        .unwrap_or(Err(KafkaError::Canceled));
        res.map_err(|e| map_err(topic, e))
    }

    async fn query_watermarks(&self, topic: &str) -> Result<Watermarks, Error> {
        let md = self.metadata.clone();
        let t = topic.to_owned();
        let timeout = self.settings.operation_timeout;
        let res = tokio::task::spawn_blocking(move || md.fetch_watermarks(&t, 0, timeout))
            .await
            .unwrap_or(Err(KafkaError::Canceled));
        let (low, high) = res.map_err(|e| map_err(topic, e))?;
        Ok(Watermarks { low, high })
    }

    /// Reads events with offsets in `[from, until)`, at most [`BATCH`] of them.
    pub async fn read(
        &self,
        topic: &str,
        from: i64,
        until: i64,
    ) -> Result<Vec<StoredEvent>, Error> {
        if from >= until {
            return Ok(Vec::new());
        }
        let _permit = self.permits.acquire().await.map_err(|_| Error::Read {
            topic: topic.to_owned(),
            source: KafkaError::Canceled,
        })?;
        let consumer = self.consumer()?;
        let res = self.read_with(&consumer, topic, from, until).await;
        self.give_back(consumer);
        res
    }

    async fn read_with(
        &self,
        consumer: &StreamConsumer,
        topic: &str,
        from: i64,
        until: i64,
    ) -> Result<Vec<StoredEvent>, Error> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, Offset::Offset(from))
            .map_err(|e| map_err(topic, e))?;
        consumer.assign(&tpl).map_err(|e| map_err(topic, e))?;
        let want = ((until - from) as usize).min(BATCH);
        let mut out = Vec::with_capacity(want);
        let mut next = from;
        let timeout: Duration = self.settings.operation_timeout;
        while out.len() < want && next < until {
            let msg = match tokio::time::timeout(timeout, consumer.recv()).await {
                Err(_) => {
                    return Err(Error::Timeout {
                        topic: topic.to_owned(),
                        offset: next,
                    })
                }
                Ok(Err(e)) => return Err(map_err(topic, e)),
                Ok(Ok(m)) => m,
            };
            if msg.topic() != topic || msg.offset() < next {
                continue;
            }
            next = msg.offset() + 1;
            let parsed = msg
                .payload()
                .and_then(|p| StoredEvent::parse(msg.offset(), p));
            match parsed {
                Some(ev) => out.push(ev),
                None => tracing::warn!(
                    topic,
                    offset = msg.offset(),
                    "skipping undecodable stream event"
                ),
            }
        }
        Ok(out)
    }
}
