//! Kafka storage: the shared idempotent producers (`acks=all`), stream topic creation through the
//! admin client, and the base client configuration every Kafka client in Sluice uses.
//!
//! Each stream's events live in its own single-partition topic; the offset there is the event id.
//! Stream topics are spread over `kafka.producer_shards` producer handles by a hash of the message
//! key (the stream id), so one stream always goes through one handle and stays in order, while no
//! handle has to keep track of every stream topic (librdkafka's per-message work grows with that).
//! This module does not decide what to write; the provider and the edge do.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

use tokio::sync::oneshot;

use crate::event::StreamId;
use crate::metrics::Metrics;
use crate::settings::KafkaSettings;

/// Kafka storage failures, naming the topic involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A client could not be created.
    #[error("kafka client: {0}")]
    Client(#[source] KafkaError),
    /// A topic could not be created or deleted.
    #[error("{op} topic {topic}: {code}")]
    Topic {
        /// `create` or `delete`.
        op: &'static str,
        /// The topic.
        topic: String,
        /// Kafka's error code.
        code: RDKafkaErrorCode,
    },
    /// An admin request failed as a whole.
    #[error("admin request for {topic}: {source}")]
    Admin {
        /// The topic.
        topic: String,
        /// The client error.
        #[source]
        source: KafkaError,
    },
    /// The producer's queue is full; retry after some deliveries.
    #[error("producer queue full")]
    QueueFull,
    /// Another instance owns the intake partition now and fenced this one's transactions.
    #[error("intake partition {partition} is owned by another instance; this write was fenced")]
    Fenced {
        /// The intake partition.
        partition: i32,
    },
    /// This instance does not own the intake partition (any more).
    #[error("intake partition {partition} is not owned by this instance")]
    NotOwner {
        /// The intake partition.
        partition: i32,
    },
    /// The transaction holding the write was aborted; nothing of it is visible.
    #[error("transaction of intake partition {partition} aborted: {reason}")]
    Aborted {
        /// The intake partition.
        partition: i32,
        /// Why.
        reason: String,
    },
    /// A message could not be delivered.
    #[error("produce to {topic}: {source}")]
    Produce {
        /// The topic.
        topic: String,
        /// The client error.
        #[source]
        source: KafkaError,
    },
}

impl Error {
    /// Whether the write failed because the partition's writes now belong elsewhere (fenced, not
    /// owned) or its transaction was aborted: the stream stops without a terminal event and
    /// resumes from what was committed.
    pub fn is_handover(&self) -> bool {
        matches!(
            self,
            Error::Fenced { .. } | Error::NotOwner { .. } | Error::Aborted { .. }
        )
    }
}

/// Most stream topics created by one admin request.
pub const CREATE_BATCH: usize = 100;

/// A topic waiting to be created, and who to tell.
type PendingCreate = (
    String,
    Vec<(String, String)>,
    oneshot::Sender<Result<(), Error>>,
);

/// Where a delivered message landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// The partition.
    pub partition: i32,
    /// The offset: the event id.
    pub offset: i64,
}

/// The first per-topic failure of an admin request, ignoring the `tolerated` code.
fn admin_outcome(
    results: Vec<rdkafka::admin::TopicResult>,
    tolerated: RDKafkaErrorCode,
    op: &'static str,
) -> Result<(), Error> {
    for r in results {
        match r {
            Ok(_) => {}
            Err((_, code)) if code == tolerated => {}
            Err((topic, code)) => return Err(Error::Topic { op, topic, code }),
        }
    }
    Ok(())
}

/// The base configuration of every Kafka client: brokers plus `kafka.client_config`.
pub fn client_config(settings: &KafkaSettings) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &settings.brokers);
    cfg.set("client.id", "sluice");
    for (k, v) in &settings.client_config {
        cfg.set(k, v);
    }
    cfg
}

/// A message to `topic` (to `partition`, else the key's), with `None` as a tombstone's payload.
pub fn record<'a>(
    topic: &'a str,
    partition: Option<i32>,
    key: &'a str,
    payload: Option<&'a [u8]>,
    headers: &[(&str, &str)],
) -> FutureRecord<'a, str, [u8]> {
    let mut hs = OwnedHeaders::new_with_capacity(headers.len());
    for (k, v) in headers {
        hs = hs.insert(Header {
            key: k,
            value: Some(v.as_bytes()),
        });
    }
    let mut record = FutureRecord::<str, [u8]>::to(topic).key(key).headers(hs);
    if let Some(payload) = payload {
        record = record.payload(payload);
    }
    if let Some(p) = partition {
        record = record.partition(p);
    }
    record
}

/// The configuration of an idempotent producer (`acks=all`) named `client_id` unless the settings
/// name it.
pub fn producer_config(settings: &KafkaSettings, client_id: &str) -> ClientConfig {
    let mut cfg = client_config(settings);
    if !settings.client_config.contains_key("client.id") {
        cfg.set("client.id", client_id);
    }
    cfg.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("max.in.flight.requests.per.connection", "5")
        .set("linger.ms", settings.linger.as_millis().to_string())
        .set(
            "message.timeout.ms",
            settings.message_timeout.as_millis().to_string(),
        )
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "200000")
        // Room for the largest Durable Streams append; stream topics keep the broker's 1 MB limit
        // (and `max_chunk_bytes` stays below it), Durable Streams topics raise theirs.
        .set("message.max.bytes", PRODUCER_MESSAGE_LIMIT.to_string());
    cfg
}

/// The producers' largest message (librdkafka `message.max.bytes`): a 16 MiB Durable Streams
/// append with room for its headers and batch framing.
pub const PRODUCER_MESSAGE_LIMIT: usize = 16 * 1024 * 1024 + 64 * 1024;

/// The shared producers and admin client. Cheap to share behind an `Arc`.
pub struct Journal {
    creator: tokio::sync::Mutex<()>,
    create_queue: Mutex<Vec<PendingCreate>>,
    producers: Vec<FutureProducer>,
    admin: AdminClient<DefaultClientContext>,
    settings: KafkaSettings,
    metrics: Arc<Metrics>,
}

impl Journal {
    /// Creates the idempotent producers and the admin client.
    pub fn new(settings: &KafkaSettings, metrics: Arc<Metrics>) -> Result<Journal, Error> {
        let producers = (0..settings.producer_shards.max(1))
            .map(|shard| Journal::producer(settings, shard))
            .collect::<Result<Vec<_>, _>>()?;
        let admin: AdminClient<DefaultClientContext> =
            client_config(settings).create().map_err(Error::Client)?;
        Ok(Journal {
            creator: tokio::sync::Mutex::new(()),
            create_queue: Mutex::new(Vec::new()),
            producers,
            admin,
            settings: settings.clone(),
            metrics,
        })
    }

    fn producer(settings: &KafkaSettings, shard: usize) -> Result<FutureProducer, Error> {
        producer_config(settings, &format!("sluice-{shard}"))
            .create()
            .map_err(Error::Client)
    }

    /// The producer handle for messages with `key`: the same handle for the same key.
    fn shard(&self, key: &str) -> &FutureProducer {
        // FNV-1a: stable, cheap, and spreads stream ids evenly.
        let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        &self.producers[(hash % self.producers.len() as u64) as usize]
    }

    /// The topic of a new stream (see [`naming`](super::naming)).
    pub fn topic_for(&self, id: &StreamId) -> String {
        super::naming::stream_topic(&self.settings.stream_topic_prefix, id)
    }

    /// The topic of a stream with `record` (none yet for a stream being registered): the one the
    /// record names, else, for records from before records named topics, the raw-id name.
    pub fn topic_of(&self, id: &StreamId, record: Option<&crate::store::StreamRecord>) -> String {
        match record {
            Some(r) => r.topic.clone().unwrap_or_else(|| self.legacy_topic_for(id)),
            None => self.topic_for(id),
        }
    }

    /// The topic a stream created before its record named its topic has.
    pub fn legacy_topic_for(&self, id: &StreamId) -> String {
        super::naming::legacy(&self.settings.stream_topic_prefix, id)
    }

    /// Creates a stream's topic; an existing topic is success.
    ///
    /// Concurrent calls are batched: whoever holds the creator lock sends one CreateTopics request
    /// for everything queued (up to [`CREATE_BATCH`]), so a burst of new streams costs a few admin
    /// round trips instead of one each, and a lone stream waits for nothing.
    pub async fn ensure_stream_topic(&self, id: &StreamId, topic: &str) -> Result<(), Error> {
        self.ensure_topic(id, topic, Vec::new()).await
    }

    /// [`Journal::ensure_stream_topic`] with topic configuration beyond
    /// `kafka.stream_topic_config` (a Durable Stream's larger `max.message.bytes`).
    pub async fn ensure_stream_topic_with(
        &self,
        id: &StreamId,
        config: Vec<(String, String)>,
    ) -> Result<(), Error> {
        self.ensure_topic(id, &self.topic_for(id), config).await
    }

    /// Creates `topic` for the stream `id` (whose producer handle learns it).
    async fn ensure_topic(
        &self,
        id: &StreamId,
        topic: &str,
        config: Vec<(String, String)>,
    ) -> Result<(), Error> {
        let topic = topic.to_owned();
        let (tx, mut rx) = oneshot::channel();
        self.create_queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((topic.clone(), config, tx));
        let started = Instant::now();
        let res = loop {
            match rx.try_recv() {
                Ok(r) => break r,
                Err(oneshot::error::TryRecvError::Closed) => {
                    break Err(Error::Admin {
                        topic: topic.clone(),
                        source: KafkaError::Canceled,
                    })
                }
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            let _leader = self.creator.lock().await;
            if let Ok(r) = rx.try_recv() {
                break r;
            }
            let batch: Vec<PendingCreate> = {
                let mut q = self.create_queue.lock().unwrap_or_else(|p| p.into_inner());
                let n = q.len().min(CREATE_BATCH);
                q.drain(..n).collect()
            };
            self.create_batch(batch).await;
        };
        if res.is_ok() {
            self.learn_topic(id, &topic).await;
        }
        self.metrics
            .topic_created(&topic, started.elapsed(), res.is_ok());
        res
    }

    /// Has the stream's producer handle learn the new topic's leader now, so the first event does
    /// not wait for librdkafka's own metadata retry (100 ms and more). Gives up quietly after
    /// `operation_timeout`: the producer then finds the leader itself.
    async fn learn_topic(&self, id: &StreamId, topic: &str) {
        let client = self.shard(id.as_str()).clone();
        let topic = topic.to_owned();
        let deadline = Instant::now() + self.settings.operation_timeout;
        let _ = tokio::task::spawn_blocking(move || {
            while Instant::now() < deadline {
                let known = client
                    .client()
                    .fetch_metadata(Some(&topic), Timeout::After(Duration::from_secs(1)))
                    .is_ok_and(|m| {
                        m.topics().iter().any(|t| {
                            t.name() == topic
                                && t.error().is_none()
                                && t.partitions().first().is_some_and(|p| p.leader() >= 0)
                        })
                    });
                if known {
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
        .await;
    }

    async fn create_batch(&self, batch: Vec<PendingCreate>) {
        if batch.is_empty() {
            return;
        }
        let new: Vec<NewTopic> = batch
            .iter()
            .map(|(t, extra, _)| {
                self.settings
                    .stream_topic_config
                    .iter()
                    .chain(extra.iter().map(|(k, v)| (k, v)))
                    .fold(
                        NewTopic::new(
                            t,
                            1,
                            TopicReplication::Fixed(self.settings.stream_topic_replication),
                        ),
                        |nt, (k, v)| nt.set(k, v),
                    )
            })
            .collect();
        let opts = AdminOptions::new().operation_timeout(Some(self.settings.operation_timeout));
        match self.admin.create_topics(&new, &opts).await {
            Err(source) => {
                for (topic, _, tx) in batch {
                    let _ = tx.send(Err(Error::Admin {
                        topic,
                        source: source.clone(),
                    }));
                }
            }
            Ok(results) => {
                let mut codes: std::collections::HashMap<String, RDKafkaErrorCode> = results
                    .into_iter()
                    .filter_map(|r| r.err())
                    .filter(|(_, code)| *code != RDKafkaErrorCode::TopicAlreadyExists)
                    .collect();
                for (topic, _, tx) in batch {
                    let res = match codes.remove(&topic) {
                        Some(code) => Err(Error::Topic {
                            op: "create",
                            topic,
                            code,
                        }),
                        None => Ok(()),
                    };
                    let _ = tx.send(res);
                }
            }
        }
    }

    /// Creates a topic with `partitions` partitions; an existing topic is success.
    pub async fn create_topic(
        &self,
        topic: &str,
        partitions: i32,
        replication: i32,
        config: &[(&str, &str)],
    ) -> Result<(), Error> {
        let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
        for (k, v) in config {
            new = new.set(k, v);
        }
        let opts = AdminOptions::new().operation_timeout(Some(self.settings.operation_timeout));
        let results = self
            .admin
            .create_topics([&new], &opts)
            .await
            .map_err(|source| Error::Admin {
                topic: topic.to_owned(),
                source,
            })?;
        admin_outcome(results, RDKafkaErrorCode::TopicAlreadyExists, "create")
    }

    /// Deletes topics; missing ones are ignored.
    pub async fn delete_topics(&self, topics: &[&str]) -> Result<(), Error> {
        if topics.is_empty() {
            return Ok(());
        }
        let opts = AdminOptions::new().operation_timeout(Some(self.settings.operation_timeout));
        let results = self
            .admin
            .delete_topics(topics, &opts)
            .await
            .map_err(|source| Error::Admin {
                topic: topics.join(","),
                source,
            })?;
        admin_outcome(results, RDKafkaErrorCode::UnknownTopicOrPartition, "delete")
    }

    /// Enqueues a message now and returns a future for its acknowledgement. Messages enqueued in
    /// order to one partition are stored in that order (the producer is idempotent).
    pub fn enqueue(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        headers: &[(&str, &str)],
        topic_kind: &'static str,
    ) -> Result<impl Future<Output = Result<Stored, Error>> + Send + 'static, Error> {
        self.enqueue_at(topic, None, key, Some(payload), headers, topic_kind)
    }

    /// [`Journal::enqueue`] to a chosen partition (else the key's), with `None` as the payload of a
    /// tombstone.
    pub fn enqueue_at(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: &str,
        payload: Option<&[u8]>,
        headers: &[(&str, &str)],
        topic_kind: &'static str,
    ) -> Result<impl Future<Output = Result<Stored, Error>> + Send + 'static, Error> {
        let record = record(topic, partition, key, payload, headers);
        let started = Instant::now();
        let delivery = match self.shard(key).send_result(record) {
            Ok(d) => d,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                return Err(Error::QueueFull)
            }
            Err((source, _)) => {
                return Err(Error::Produce {
                    topic: topic.to_owned(),
                    source,
                })
            }
        };
        let metrics = self.metrics.clone();
        let topic = topic.to_owned();
        Ok(async move {
            let res = delivery.await;
            metrics.produce_observed(topic_kind, started.elapsed());
            match res {
                Ok(Ok(d)) => Ok(Stored {
                    partition: d.partition,
                    offset: d.offset,
                }),
                Ok(Err((source, _))) => Err(Error::Produce { topic, source }),
                Err(_) => Err(Error::Produce {
                    topic,
                    source: KafkaError::Canceled,
                }),
            }
        })
    }

    /// Enqueues (waiting while the queue is full) and waits for the acknowledgement.
    pub async fn produce(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        headers: &[(&str, &str)],
        topic_kind: &'static str,
    ) -> Result<Stored, Error> {
        self.produce_at(topic, None, key, Some(payload), headers, topic_kind)
            .await
    }

    /// [`Journal::produce`] to a chosen partition, with `None` as a tombstone's payload.
    pub async fn produce_at(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: &str,
        payload: Option<&[u8]>,
        headers: &[(&str, &str)],
        topic_kind: &'static str,
    ) -> Result<Stored, Error> {
        loop {
            match self.enqueue_at(topic, partition, key, payload, headers, topic_kind) {
                Ok(ack) => return ack.await,
                Err(Error::QueueFull) => tokio::time::sleep(Duration::from_millis(5)).await,
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits up to `timeout` for every queued message to be acknowledged.
    pub async fn flush(self: &Arc<Self>, timeout: Duration) -> Result<(), Error> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + timeout;
            me.producers.iter().try_for_each(|p| {
                p.flush(Timeout::After(
                    deadline.saturating_duration_since(Instant::now()),
                ))
            })
        })
        .await
        .unwrap_or(Err(KafkaError::Canceled))
        .map_err(|source| Error::Produce {
            topic: "*".into(),
            source,
        })
    }

    /// Whether the broker answers a metadata request for `topic` within `timeout`.
    pub async fn broker_reachable(self: &Arc<Self>, topic: &str, timeout: Duration) -> bool {
        let me = self.clone();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            me.producers[0]
                .client()
                .fetch_metadata(Some(&topic), Timeout::After(timeout))
                .is_ok()
        })
        .await
        .unwrap_or(false)
    }

    /// How many partitions `topic` has, from the broker's metadata.
    pub async fn partition_count(self: &Arc<Self>, topic: &str) -> Result<i32, Error> {
        let me = self.clone();
        let name = topic.to_owned();
        let timeout = self.settings.operation_timeout;
        // A topic created a moment ago may not be in every broker's metadata yet: ask again until
        // it has partitions or `operation_timeout` passes.
        let found = tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + timeout;
            loop {
                let md = me.producers[0]
                    .client()
                    .fetch_metadata(Some(&name), Timeout::After(timeout))?;
                let n = md
                    .topics()
                    .iter()
                    .find(|t| t.name() == name && t.error().is_none())
                    .map_or(0, |t| t.partitions().len() as i32);
                if n > 0 || Instant::now() >= deadline {
                    return Ok::<_, KafkaError>(n);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
        .await
        .unwrap_or(Err(KafkaError::Canceled));
        found.map_err(|source| Error::Admin {
            topic: topic.to_owned(),
            source,
        })
    }
}
