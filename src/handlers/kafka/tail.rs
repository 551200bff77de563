//! Shared tails of source topics: one consumer per source topic per process, routing each record
//! by key to the streams that want it, plus bounded private catch-up reads for streams that start
//! behind the tail (an `earliest` start, a resume, or a stream the tail dropped for lagging).
//!
//! The replay-then-live discipline is the SSE edge's: a stream registers with the tail under its
//! lock, learning the tail's position `H` per partition; it reads `[next, H)` privately, then takes
//! the tail's records from `H` on, dropping anything below its own next offset. Nothing is missed
//! or repeated. A subscriber whose queue is full is dropped rather than stalling the tail; it sees
//! its queue close and registers again, catching up privately. This module does not emit chunks;
//! the Kafka source handler does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::{mpsc, OnceCell, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::kafka::is_transient;
use crate::kafka::producer::client_config;
use crate::metrics::Metrics;
use crate::settings::KafkaSettings;

/// Records queued per subscriber before the tail drops it (it then catches up privately).
const SUB_QUEUE: usize = 1024;
/// Private catch-up consumers open at once in the process.
const CATCH_UP_CONSUMERS: usize = 4;

/// Per-partition next offsets.
pub type Positions = HashMap<i32, i64>;

/// One source record, as routed to a stream.
#[derive(Clone, Debug)]
pub struct Record {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Broker or producer timestamp, in milliseconds.
    pub timestamp: Option<i64>,
    /// Value bytes; `None` for a tombstone.
    pub value: Option<Arc<[u8]>>,
    /// Header names; each stream checks for its own end header.
    pub headers: Arc<[Box<str>]>,
}

impl Record {
    fn from_message(m: &BorrowedMessage<'_>) -> Record {
        let headers = m
            .headers()
            .map(|hs| hs.iter().map(|h| Box::from(h.key)).collect())
            .unwrap_or_default();
        Record {
            partition: m.partition(),
            offset: m.offset(),
            timestamp: m.timestamp().to_millis(),
            value: m.payload().map(Arc::from),
            headers,
        }
    }

    /// Whether the record carries a header named `name`.
    pub fn has_header(&self, name: &str) -> bool {
        self.headers.iter().any(|h| &**h == name)
    }
}

/// Why a tail could not be had.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The process is shutting down or the stream was cancelled while waiting.
    #[error("stopped while waiting for source topic {0}")]
    Stopped(String),
    /// A Kafka client failed.
    #[error("source topic {topic}: {source}")]
    Kafka {
        /// The source topic.
        topic: String,
        /// The client error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
}

/// Every source topic's tail in this process. Cheap to share behind an `Arc`.
pub struct Tails {
    kafka: KafkaSettings,
    metrics: Arc<Metrics>,
    tails: Mutex<HashMap<String, Arc<OnceCell<Arc<Tail>>>>>,
    catch_up: Semaphore,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

struct Sub {
    key: Option<Vec<u8>>,
    from: Positions,
    tx: mpsc::Sender<Record>,
}

#[derive(Default)]
struct Routing {
    positions: Positions,
    subs: HashMap<u64, Sub>,
    by_key: HashMap<Option<Vec<u8>>, Vec<u64>>,
    next_id: u64,
}

/// One source topic's shared consumer and its subscribers.
pub struct Tail {
    topic: String,
    routing: Mutex<Routing>,
}

/// A stream's registration with a tail; dropping it unregisters.
pub struct Subscription {
    tail: Arc<Tail>,
    id: u64,
    /// Records from the tail's position at registration on.
    pub rx: mpsc::Receiver<Record>,
    /// The tail's position at registration: catch up privately below it.
    pub tail_at: Positions,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.tail.unsubscribe(self.id);
    }
}

fn lock(m: &Mutex<Routing>) -> MutexGuard<'_, Routing> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Tails {
    /// No tails yet; each starts on first use and stops at `shutdown`.
    pub fn new(
        kafka: KafkaSettings,
        metrics: Arc<Metrics>,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Tails {
        Tails {
            kafka,
            metrics,
            tails: Mutex::new(HashMap::new()),
            catch_up: Semaphore::new(CATCH_UP_CONSUMERS),
            tracker,
            shutdown,
        }
    }

    /// The tail of `topic`, started on first use. Waits, with a warning and a metric, while the
    /// topic does not exist; returns `Stopped` if `cancel` fires or the process shuts down first.
    pub async fn tail(&self, topic: &str, cancel: &CancellationToken) -> Result<Arc<Tail>, Error> {
        let cell = {
            let mut map = self.tails.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(topic.to_owned()).or_default().clone()
        };
        let start = cell.get_or_try_init(|| self.start(topic, cancel));
        tokio::select! {
            biased;
            _ = cancel.cancelled() => Err(Error::Stopped(topic.to_owned())),
            t = start => t.cloned(),
        }
    }

    async fn start(&self, topic: &str, cancel: &CancellationToken) -> Result<Arc<Tail>, Error> {
        let partitions = self.wait_for_topic(topic, cancel).await?;
        let err = |source| Error::Kafka {
            topic: topic.to_owned(),
            source,
        };
        let consumer: Arc<StreamConsumer> = Arc::new(self.consumer_config().create().map_err(err)?);
        let positions = self
            .watermarks(consumer.clone(), topic, &partitions, true)
            .await?;
        consumer
            .assign(&assignment(topic, &positions))
            .map_err(err)?;
        let tail = Arc::new(Tail {
            topic: topic.to_owned(),
            routing: Mutex::new(Routing {
                positions,
                ..Routing::default()
            }),
        });
        self.metrics.source_consumer_opened("tail", topic);
        let (run, metrics, shutdown) = (tail.clone(), self.metrics.clone(), self.shutdown.clone());
        self.tracker.spawn(async move {
            run.run(consumer, shutdown).await;
            metrics.source_consumer_closed("tail");
        });
        Ok(tail)
    }

    fn consumer_config(&self) -> rdkafka::ClientConfig {
        let mut c = client_config(&self.kafka);
        c.set(
            "group.id",
            format!("sluice-source-{}", uuid::Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "50");
        c
    }

    /// The topic's partitions, once it exists.
    async fn wait_for_topic(
        &self,
        topic: &str,
        cancel: &CancellationToken,
    ) -> Result<Vec<i32>, Error> {
        let probe: BaseConsumer =
            self.consumer_config()
                .create()
                .map_err(|source| Error::Kafka {
                    topic: topic.to_owned(),
                    source,
                })?;
        let probe = Arc::new(probe);
        let mut backoff = Duration::from_millis(200);
        let mut waiting = None;
        loop {
            let (p, t, timeout) = (
                probe.clone(),
                topic.to_owned(),
                self.kafka.operation_timeout,
            );
            let md = tokio::task::spawn_blocking(move || {
                p.fetch_metadata(Some(&t), timeout).map(|md| {
                    md.topics()
                        .iter()
                        .find(|x| x.name() == t && x.error().is_none())
                        .map(|x| x.partitions().iter().map(|p| p.id()).collect::<Vec<_>>())
                        .unwrap_or_default()
                })
            })
            .await
            .unwrap_or(Ok(Vec::new()));
            match md {
                Ok(parts) if !parts.is_empty() => return Ok(parts),
                Ok(_) => {
                    waiting.get_or_insert_with(|| self.metrics.source_topic_missing(topic));
                }
                Err(e) => {
                    tracing::warn!(topic, error = %e, "source topic metadata unavailable; retrying")
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return Err(Error::Stopped(topic.to_owned())),
                _ = self.shutdown.cancelled() => return Err(Error::Stopped(topic.to_owned())),
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// High (or low) watermarks of `partitions`, read off the runtime's worker threads.
    async fn watermarks<C: Consumer + Send + Sync + 'static>(
        &self,
        consumer: Arc<C>,
        topic: &str,
        partitions: &[i32],
        high: bool,
    ) -> Result<Positions, Error> {
        let (t, parts, timeout) = (
            topic.to_owned(),
            partitions.to_vec(),
            self.kafka.operation_timeout,
        );
        let res = tokio::task::spawn_blocking(move || {
            parts
                .iter()
                .map(|&p| {
                    let (lo, hi) = consumer.fetch_watermarks(&t, p, timeout)?;
                    Ok((p, if high { hi } else { lo }))
                })
                .collect::<Result<Positions, rdkafka::error::KafkaError>>()
        })
        .await
        .unwrap_or(Err(rdkafka::error::KafkaError::Canceled));
        res.map_err(|source| Error::Kafka {
            topic: topic.to_owned(),
            source,
        })
    }

    /// The earliest offsets the topic holds.
    pub async fn earliest(&self, tail: &Tail) -> Result<Positions, Error> {
        let partitions: Vec<i32> = lock(&tail.routing).positions.keys().copied().collect();
        let probe: BaseConsumer =
            self.consumer_config()
                .create()
                .map_err(|source| Error::Kafka {
                    topic: tail.topic.clone(),
                    source,
                })?;
        self.watermarks(Arc::new(probe), &tail.topic, &partitions, false)
            .await
    }

    /// Reads `[from, until)` of each partition privately, passing matching records to `emit` in
    /// order per partition. Bounded by a process-wide limit on catch-up consumers.
    pub async fn catch_up(
        &self,
        tail: &Tail,
        key: Option<&[u8]>,
        from: &Positions,
        until: &Positions,
        mut emit: impl FnMut(Record) -> bool,
    ) -> Result<bool, Error> {
        let mut behind: Positions = until
            .iter()
            .filter(|(p, u)| from.get(p).copied().unwrap_or(**u) < **u)
            .map(|(p, u)| (*p, *u))
            .collect();
        if behind.is_empty() {
            return Ok(true);
        }
        let _permit = self
            .catch_up
            .acquire()
            .await
            .map_err(|_| Error::Stopped(tail.topic.clone()))?;
        let err = |source| Error::Kafka {
            topic: tail.topic.clone(),
            source,
        };
        let consumer: StreamConsumer = self.consumer_config().create().map_err(err)?;
        let start: Positions = behind.keys().map(|p| (*p, from[p])).collect();
        consumer
            .assign(&assignment(&tail.topic, &start))
            .map_err(err)?;
        self.metrics.source_consumer_opened("catch_up", &tail.topic);
        let _closed = CloseGuard(&self.metrics);
        while !behind.is_empty() {
            let m = tokio::select! {
                _ = self.shutdown.cancelled() => return Err(Error::Stopped(tail.topic.clone())),
                // The last offsets below `until` may hold no record (a transaction marker): the
                // consumer's position then tells that a partition is read to its end.
                _ = tokio::time::sleep(Duration::from_millis(500)) => {
                    if let Ok(at) = consumer.position() {
                        for e in at.elements() {
                            if let Offset::Offset(o) = e.offset() {
                                if behind.get(&e.partition()).is_some_and(|stop| o >= *stop) {
                                    behind.remove(&e.partition());
                                }
                            }
                        }
                    }
                    continue;
                }
                m = consumer.recv() => match m {
                    Ok(m) => m,
                    // The consumer reconnects by itself; the stream's own timeout bounds the wait.
                    Err(e) if is_transient(&e) => {
                        tracing::warn!(topic = tail.topic, error = %e, "catch-up consumer reconnecting");
                        continue;
                    }
                    Err(e) => return Err(err(e)),
                },
            };
            let Some(&stop) = behind.get(&m.partition()) else {
                continue;
            };
            if m.offset() >= stop {
                behind.remove(&m.partition());
                continue;
            }
            if m.offset() + 1 >= stop {
                behind.remove(&m.partition());
            }
            if (key.is_none() || m.key() == key) && !emit(Record::from_message(&m)) {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

fn assignment(topic: &str, at: &Positions) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for (p, o) in at {
        let _ = tpl.add_partition_offset(topic, *p, Offset::Offset(*o));
    }
    tpl
}

struct CloseGuard<'a>(&'a Metrics);

impl Drop for CloseGuard<'_> {
    fn drop(&mut self) {
        self.0.source_consumer_closed("catch_up");
    }
}

impl Tail {
    /// Registers for records with `key` (all records when `None`) at or after `next`.
    pub fn subscribe(self: &Arc<Self>, key: Option<Vec<u8>>, next: &Positions) -> Subscription {
        let (tx, rx) = mpsc::channel(SUB_QUEUE);
        let mut r = lock(&self.routing);
        let tail_at = r.positions.clone();
        let from = tail_at
            .iter()
            .map(|(p, h)| (*p, next.get(p).copied().unwrap_or(*h).max(*h)))
            .collect();
        let id = r.next_id;
        r.next_id += 1;
        r.by_key.entry(key.clone()).or_default().push(id);
        r.subs.insert(id, Sub { key, from, tx });
        drop(r);
        Subscription {
            tail: self.clone(),
            id,
            rx,
            tail_at,
        }
    }

    fn unsubscribe(&self, id: u64) {
        let mut r = lock(&self.routing);
        if let Some(sub) = r.subs.remove(&id) {
            if let Some(ids) = r.by_key.get_mut(&sub.key) {
                ids.retain(|i| *i != id);
                if ids.is_empty() {
                    r.by_key.remove(&sub.key);
                }
            }
        }
    }

    /// Subscribers registered now.
    pub fn subscribers(&self) -> usize {
        lock(&self.routing).subs.len()
    }

    async fn run(&self, consumer: Arc<StreamConsumer>, shutdown: CancellationToken) {
        loop {
            let m = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                m = consumer.recv() => m,
            };
            match m {
                Ok(m) => self.route(&m),
                Err(e) => {
                    tracing::warn!(topic = self.topic, error = %e, "source tail consumer error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    fn route(&self, m: &BorrowedMessage<'_>) {
        let mut r = lock(&self.routing);
        let key = m.key().map(<[u8]>::to_vec);
        let mut targets: Vec<u64> = r.by_key.get(&None).cloned().unwrap_or_default();
        if key.is_some() {
            targets.extend(r.by_key.get(&key).into_iter().flatten().copied());
        }
        let mut record = None;
        let mut dropped = Vec::new();
        for id in targets {
            let Some(sub) = r.subs.get(&id) else { continue };
            if sub
                .from
                .get(&m.partition())
                .is_some_and(|f| m.offset() < *f)
            {
                continue;
            }
            let rec = record
                .get_or_insert_with(|| Record::from_message(m))
                .clone();
            if sub.tx.try_send(rec).is_err() {
                dropped.push(id);
            }
        }
        for id in dropped {
            // Lagging or gone: it sees its queue close and catches up on its own.
            if let Some(sub) = r.subs.remove(&id) {
                if let Some(ids) = r.by_key.get_mut(&sub.key) {
                    ids.retain(|i| *i != id);
                }
            }
        }
        r.positions.insert(m.partition(), m.offset() + 1);
    }
}
