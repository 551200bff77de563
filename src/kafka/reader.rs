//! Replay reads: a small pool of Kafka consumers, shared by every subscriber, that read a range of
//! a stream topic by manual assignment (no consumer group).
//!
//! Reads are done in bounded batches, and a consumer is returned to the pool between batches, so a
//! slow client never holds a Kafka client hostage. A consumer stays assigned where its last batch
//! ended, and the next batch that starts there takes it back: a subscriber catching up through many
//! batches pays for one assignment, and reads what the consumer already prefetched. This module does not know about clients or the
//! live hub; the subscription merges replayed and live events.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
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

/// An idle replay consumer, and where its assignment stands: the topic and the offset its next
/// message has.
struct Idle {
    consumer: Arc<BaseConsumer>,
    at: Option<(String, i64)>,
}

/// The pool of replay consumers. Cheap to share behind an `Arc`.
pub struct Reader {
    idle: Mutex<Vec<Idle>>,
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

    /// An idle consumer positioned at `from` in `topic` if there is one (true), else any idle
    /// or new consumer, to be assigned (false).
    fn consumer(&self, topic: &str, from: i64) -> Result<(Arc<BaseConsumer>, bool), Error> {
        {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            let here = idle
                .iter()
                .position(|c| c.at.as_ref().is_some_and(|(t, o)| t == topic && *o == from));
            if let Some(i) = here {
                return Ok((idle.swap_remove(i).consumer, true));
            }
            // Prefer one that is not positioned, so positioned ones wait for their next batch.
            idle.sort_by_key(|c| c.at.is_none());
            if let Some(c) = idle.pop() {
                return Ok((c.consumer, false));
            }
        }
        let c: BaseConsumer = client_config(&self.settings)
            .set("group.id", "sluice-replay")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            // Stream topics are written in transactions: aborted writes (a fenced owner's) are
            // never read, and reads stop at the last stable offset.
            .set("isolation.level", "read_committed")
            .set("fetch.wait.max.ms", "10")
            .set("auto.offset.reset", "earliest")
            // Prefetch for the batch that continues where this one ends, within bounds.
            .set("queued.max.messages.kbytes", "8192")
            .set("fetch.queue.backoff.ms", "5")
            .create()
            .map_err(Error::Client)?;
        Ok((Arc::new(c), false))
    }

    fn give_back(&self, consumer: Arc<BaseConsumer>, at: Option<(String, i64)>) {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Idle { consumer, at });
    }

    /// The topic's retained offset range. When the client's metadata cache does not know the topic
    /// (it may have been created moments ago), a metadata request for it refreshes the cache; a
    /// topic the broker does not have is `UnknownTopic`. A passing error (a broker that just
    /// restarted and does not lead the partition yet) is asked again, within
    /// `kafka.operation_timeout`.
    pub async fn watermarks(&self, topic: &str) -> Result<Watermarks, Error> {
        let deadline = tokio::time::Instant::now() + self.settings.operation_timeout;
        let mut delay = Duration::from_millis(20);
        let mut unknown = 0;
        loop {
            match self.query_watermarks(topic).await {
                Err(Error::UnknownTopic(_)) if unknown < 5 => {
                    if !self.topic_exists(topic).await? {
                        return Err(Error::UnknownTopic(topic.to_owned()));
                    }
                    unknown += 1;
                }
                Err(Error::Read { source, .. })
                    if super::is_transient(&source)
                        && tokio::time::Instant::now() + delay < deadline =>
                {
                    tracing::debug!(topic, error = %source, "watermarks asked again");
                }
                other => return other,
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(500));
        }
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

    /// The newest event in `topic`, if it holds any. Offsets are not contiguous (transaction
    /// markers take some), so this reads backwards in growing windows.
    pub async fn read_last(&self, topic: &str) -> Result<Option<StoredEvent>, Error> {
        let marks = self.watermarks(topic).await?;
        self.read_last_in(topic, marks).await
    }

    /// [`Reader::read_last`] within `marks`, already read by the caller.
    pub async fn read_last_in(
        &self,
        topic: &str,
        marks: Watermarks,
    ) -> Result<Option<StoredEvent>, Error> {
        let mut span = 8;
        loop {
            let from = (marks.high - span).max(marks.low);
            let mut last = None;
            let mut at = from;
            while at < marks.high {
                let mut batch = self.read(topic, at, marks.high).await?;
                match batch.pop() {
                    Some(ev) => {
                        at = ev.offset + 1;
                        last = Some(ev);
                    }
                    None => break,
                }
            }
            if last.is_some() || from <= marks.low {
                return Ok(last);
            }
            span = span.saturating_mul(8);
        }
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
        let (consumer, positioned) = self.consumer(topic, from)?;
        // A blocking poll on a dedicated thread: it sleeps on librdkafka's own queue, so no wake-up
        // between Kafka's threads and the runtime can be missed, and a batch costs one hop.
        let (c, t, timeout) = (
            consumer.clone(),
            topic.to_owned(),
            self.settings.operation_timeout,
        );
        let res = tokio::task::spawn_blocking(move || {
            read_with(&c, &t, from, until, positioned, timeout)
        })
        .await
        .unwrap_or_else(|_| {
            Err(Error::Read {
                topic: topic.to_owned(),
                source: KafkaError::Canceled,
            })
        });
        let at = res.as_ref().ok().map(|(_, next)| (topic.to_owned(), *next));
        self.give_back(consumer, at);
        res.map(|(events, _)| events)
    }
}

/// Reads `[from, until)` (at most [`BATCH`] events) with `consumer`, assigning it first unless it
/// is `positioned` there; returns the events and the offset the consumer's next message has.
fn read_with(
    consumer: &BaseConsumer,
    topic: &str,
    from: i64,
    until: i64,
    positioned: bool,
    timeout: Duration,
) -> Result<(Vec<StoredEvent>, i64), Error> {
    if !positioned {
        // Ask for the topic's metadata first: a consumer meeting a stream topic for the first time
        // would otherwise wait for librdkafka's own metadata refresh (hundreds of ms) to fetch.
        consumer
            .fetch_metadata(Some(topic), timeout)
            .map_err(|e| map_err(topic, e))?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, Offset::Offset(from))
            .map_err(|e| map_err(topic, e))?;
        consumer.assign(&tpl).map_err(|e| map_err(topic, e))?;
    }
    let want = ((until - from) as usize).min(BATCH);
    let mut out = Vec::with_capacity(want);
    let mut next = from;
    let deadline = std::time::Instant::now() + timeout;
    while out.len() < want && next < until {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let msg = match consumer.poll(left.min(POSITION_CHECK)) {
            None => {
                // Transaction markers and aborted records are never delivered; the consumer's
                // position moves past them.
                if let Some(at) = position(consumer, topic) {
                    next = next.max(at);
                }
                if next >= until {
                    break;
                }
                if left.is_zero() {
                    return Err(Error::Timeout {
                        topic: topic.to_owned(),
                        offset: next,
                    });
                }
                continue;
            }
            // The consumer reconnects by itself; the deadline still bounds the read.
            Some(Err(e)) if super::is_transient(&e) => {
                tracing::debug!(topic, error = %e, "replay consumer reconnecting");
                continue;
            }
            Some(Err(e)) => return Err(map_err(topic, e)),
            Some(Ok(m)) => m,
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
    Ok((out, next))
}

/// How long a read waits for a message before it checks whether the consumer's position already
/// passed the end of the range (over transaction markers).
const POSITION_CHECK: Duration = Duration::from_millis(20);

/// The consumer's position in partition 0 of `topic`: the offset of the next record it returns.
fn position(consumer: &BaseConsumer, topic: &str) -> Option<i64> {
    let tpl = consumer.position().ok()?;
    let elem = tpl.find_partition(topic, 0)?;
    match elem.offset() {
        Offset::Offset(o) => Some(o),
        _ => None,
    }
}
