//! The Kafka side of Durable Streams: each incarnation of a stream (a fork included) has a topic
//! of its own, `<durable.topic_prefix><uuid>`, created with the stream, holding one record per append: its bytes (JSON items
//! joined by commas) and headers naming the writer (`ds-producer`: id, epoch and seq) and the
//! `Stream-Seq`, from which a restarted server rebuilds what its saved metadata may lack.
//!
//! This module neither validates requests nor holds state; `state` and the handlers do.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Headers;
use rdkafka::{Message, Offset as KafkaOffset, TopicPartitionList};

use crate::kafka::producer::{client_config, Error, Journal};
use crate::settings::KafkaSettings;

/// One record read back from a stream's topic.
#[derive(Debug)]
pub struct Stored {
    /// Its Kafka offset.
    pub offset: i64,
    /// Its bytes.
    pub data: Vec<u8>,
    /// The producer that wrote it: id, epoch, seq.
    pub producer: Option<(String, u64, u64)>,
    /// Its `Stream-Seq`.
    pub stream_seq: Option<String>,
}

/// Header with the writing producer: `<epoch> <seq> <id>`.
pub const PRODUCER_HEADER: &str = "ds-producer";
/// Header with the append's `Stream-Seq`.
pub const SEQ_HEADER: &str = "ds-seq";

/// Writes and reads stream topics. Cheap to clone.
#[derive(Clone)]
pub struct Log {
    journal: Arc<Journal>,
    kafka: KafkaSettings,
    /// Each topic's `max.message.bytes`: the largest append and room for its headers.
    max_message: usize,
    /// What new topics' names start with (`durable.topic_prefix`).
    prefix: String,
}

/// Room a record needs beyond its bytes: headers and batch framing.
const RECORD_OVERHEAD: usize = 64 * 1024;

impl Log {
    /// A log writing through `journal`, for appends of up to `max_append` bytes.
    pub fn new(journal: Arc<Journal>, kafka: &KafkaSettings, max_append: usize) -> Log {
        Log {
            journal,
            kafka: kafka.clone(),
            max_message: max_append + RECORD_OVERHEAD,
            prefix: crate::settings::DurableSettings::default().topic_prefix,
        }
    }

    /// The same log, naming new topics `<prefix><uuid>`.
    pub fn with_topic_prefix(mut self, prefix: &str) -> Log {
        self.prefix = prefix.to_owned();
        self
    }

    /// Creates the topic of a new incarnation (`kafka.stream_topic_config`, and a
    /// `max.message.bytes` that fits the largest append) and returns its name.
    pub async fn create(&self) -> Result<String, Error> {
        let topic = format!("{}{}", self.prefix, uuid::Uuid::new_v4().simple());
        let max = self.max_message.to_string();
        let config: Vec<(&str, &str)> = self
            .kafka
            .stream_topic_config
            .iter()
            .filter(|(k, _)| k.as_str() != "max.message.bytes")
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain([("max.message.bytes", max.as_str())])
            .collect();
        let replication = self.kafka.stream_topic_replication;
        self.journal
            .create_topic(&topic, 1, replication, &config)
            .await?;
        Ok(topic)
    }

    /// Deletes topics of streams that are gone.
    pub async fn delete(&self, topics: &[String]) -> Result<(), Error> {
        let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        self.journal.delete_topics(&refs).await
    }

    /// Appends a record and returns its Kafka offset once acknowledged.
    pub async fn append(
        &self,
        topic: &str,
        data: &[u8],
        producer: Option<(&str, u64, u64)>,
        stream_seq: Option<&str>,
    ) -> Result<i64, Error> {
        let who = producer.map(|(id, epoch, seq)| format!("{epoch} {seq} {id}"));
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if let Some(w) = &who {
            headers.push((PRODUCER_HEADER, w));
        }
        if let Some(s) = stream_seq {
            headers.push((SEQ_HEADER, s));
        }
        let stored = self
            .journal
            .produce(topic, "", data, &headers, "durable")
            .await?;
        Ok(stored.offset)
    }

    /// Reads every record of `topic`. Blocking: call it on a blocking thread.
    pub fn read_all(&self, topic: &str, timeout: Duration) -> Result<Vec<Stored>, KafkaError> {
        let consumer: BaseConsumer = client_config(&self.kafka)
            .set("group.id", "sluice-durable-restore")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", "10")
            .create()?;
        let (_, high) = consumer.fetch_watermarks(topic, 0, timeout)?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, KafkaOffset::Beginning)?;
        consumer.assign(&tpl)?;
        let mut out = Vec::new();
        let deadline = std::time::Instant::now() + timeout;
        let mut next = 0;
        while next < high {
            if std::time::Instant::now() >= deadline {
                return Err(KafkaError::MessageConsumption(
                    RDKafkaErrorCode::OperationTimedOut,
                ));
            }
            let Some(m) = consumer.poll(Duration::from_millis(50)) else {
                continue;
            };
            let m = m?;
            next = m.offset() + 1;
            let header = |name: &str| {
                m.headers().and_then(|h| {
                    h.iter()
                        .find(|x| x.key == name)
                        .and_then(|x| x.value)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                })
            };
            let producer = header(PRODUCER_HEADER).and_then(|w| {
                let mut parts = w.splitn(3, ' ');
                let epoch = parts.next()?.parse().ok()?;
                let seq = parts.next()?.parse().ok()?;
                Some((parts.next()?.to_owned(), epoch, seq))
            });
            out.push(Stored {
                offset: m.offset(),
                data: m.payload().unwrap_or_default().to_vec(),
                producer,
                stream_seq: header(SEQ_HEADER),
            });
        }
        Ok(out)
    }
}
