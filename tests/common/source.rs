//! Source-topic helpers: create topics, produce keyed records (optionally carrying the end
//! header), and read many single-partition stream topics back with one consumer.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::Value;

use super::{brokers, consumed, unique, WAIT};

/// Creates `topic` with `partitions` partitions.
pub async fn create_topic(topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let res = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .unwrap();
    for r in res {
        r.unwrap_or_else(|(t, e)| panic!("create {t}: {e}"));
    }
}

/// A producer of source records, as an upstream service would write them.
pub struct Source {
    producer: FutureProducer,
    /// The source topic.
    pub topic: String,
}

impl Source {
    /// A producer for `topic`.
    pub fn new(topic: &str) -> Source {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .set("enable.idempotence", "true")
            .set("linger.ms", "0")
            .create()
            .unwrap();
        Source {
            producer,
            topic: topic.to_owned(),
        }
    }

    /// Produces `value` with `key`; with `end`, the record carries the `sluice-end` header.
    pub async fn send(&self, key: Option<&str>, value: &[u8], end: bool) -> (i32, i64) {
        let mut rec = FutureRecord::<str, [u8]>::to(&self.topic).payload(value);
        if let Some(k) = key {
            rec = rec.key(k);
        }
        if end {
            rec = rec.headers(OwnedHeaders::new().insert(Header {
                key: "sluice-end",
                value: Some("1"),
            }));
        }
        self.producer
            .send(rec, Duration::from_secs(30))
            .await
            .map(|d| (d.partition, d.offset))
            .map_err(|(e, _)| e)
            .expect("produce source record")
    }
}

/// Reads every single-partition topic in `topics` to its high watermark with one consumer.
pub async fn read_topics(topics: &[String]) -> HashMap<String, Vec<Value>> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("readall-"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut remaining = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for t in topics {
        let (_, high) = consumer
            .fetch_watermarks(t, 0, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("watermarks of {t}: {e}"));
        if high > 0 {
            remaining.insert(t.clone(), high);
            tpl.add_partition_offset(t, 0, Offset::Beginning).unwrap();
        }
    }
    let mut out: HashMap<String, Vec<Value>> =
        topics.iter().map(|t| (t.clone(), Vec::new())).collect();
    if remaining.is_empty() {
        return out;
    }
    consumer.assign(&tpl).unwrap();
    // Transaction markers take offsets but are never returned: a topic is read once the
    // consumer's position in it reaches its high watermark.
    let deadline = tokio::time::Instant::now() + WAIT;
    while !remaining.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "stream topics read in time"
        );
        if let Ok(m) = tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await {
            let Some(m) = consumed(m) else { continue };
            let v = serde_json::from_slice(m.payload().unwrap_or_default()).unwrap_or(Value::Null);
            out.get_mut(m.topic()).unwrap().push(v);
        }
        if let Ok(pos) = consumer.position() {
            for e in pos.elements() {
                let done = remaining
                    .get(e.topic())
                    .is_some_and(|h| e.offset().to_raw().is_some_and(|o| o >= *h));
                if done {
                    remaining.remove(e.topic());
                }
            }
        }
    }
    out
}
