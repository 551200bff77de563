//! What the benchmarks share: the broker, unique names, open-loop production of records stamped
//! with their intended send time, an in-process Sluice, and percentile formatting.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;
use serde_json::{json, Value};
use sluice::settings::{KafkaSourceSettings, SourceSettings, StartAt};
use sluice::{App, Settings};
use tokio_util::sync::CancellationToken;

pub fn brokers() -> String {
    std::env::var("SLUICE_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn tag() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..10].to_owned()
}

pub fn micros_now() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

pub fn pct(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

pub fn producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        .create()
        .unwrap()
}

pub async fn create_topic(topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let res = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    for r in res {
        r.unwrap();
    }
}

/// A realistic record: the intended send time, the key and some chat-like text.
pub fn record(key: &str, intended: i64, n: u64) -> String {
    json!({"sent_us": intended, "conversation_id": key, "n": n,
           "text": format!("message {n} in {key}: the quick brown fox jumps over the lazy dog")})
    .to_string()
}

/// Produces `rate` records/s for `secs` round-robin over `keys`, open loop: each record is stamped
/// with the time it was due, whether or not the producer got to it on time.
pub async fn produce_open_loop(topic: &str, keys: &[String], rate: u64, secs: u64) {
    let p = producer();
    // Learn the topic's leaders first, so the first second is not spent on metadata.
    let (warm, t) = (p.clone(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        warm.client()
            .fetch_metadata(Some(&t), Duration::from_secs(10))
            .unwrap()
    })
    .await
    .unwrap();
    let start = Instant::now();
    let start_us = micros_now();
    let total = rate * secs;
    let mut acks = futures::stream::FuturesUnordered::new();
    for n in 0..total {
        let due = Duration::from_micros(n * 1_000_000 / rate);
        tokio::time::sleep_until((start + due).into()).await;
        let key = &keys[(n % keys.len() as u64) as usize];
        let v = record(key, start_us + due.as_micros() as i64, n);
        let p = p.clone();
        let topic = topic.to_owned();
        let key = key.clone();
        acks.push(async move {
            p.send(
                FutureRecord::to(&topic).key(&key).payload(&v),
                Duration::from_secs(30),
            )
            .await
            .map(|_| ())
            .map_err(|(e, _)| e)
        });
        while let Some(Some(r)) = futures::FutureExt::now_or_never(acks.next()) {
            r.unwrap();
        }
    }
    while let Some(r) = acks.next().await {
        r.unwrap();
    }
}

pub struct Running {
    pub grpc: String,
    pub base: String,
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

pub async fn run_sluice(tweak: impl FnOnce(&mut Settings)) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let t = tag();
    let mut s = Settings::default();
    s.http.listen = "127.0.0.1:0".parse().unwrap();
    s.grpc.listen = "127.0.0.1:0".parse().unwrap();
    s.kafka.brokers = brokers();
    s.kafka.stream_topic_prefix = format!("bench.{t}.stream.");
    s.intake.topic = format!("bench.{t}.requests");
    s.intake.dlq_topic = format!("bench.{t}.dlq");
    s.intake.group_id = format!("bench-{t}");
    s.intake.topic_partitions = 1;
    s.store.path = dir.path().join("db");
    s.provider.max_concurrent_streams = 10_000;
    tweak(&mut s);
    let app = App::build(s).await.unwrap();
    let base = format!("http://{}", app.http_addr());
    let grpc = format!("http://{}", app.grpc_addr());
    let stop = CancellationToken::new();
    let s2 = stop.clone();
    let handle = tokio::spawn(async move { app.run(s2.cancelled_owned()).await });
    let http = reqwest::Client::new();
    while !http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Running {
        base,
        grpc,
        stop,
        handle,
        _dir: dir,
    }
}

impl Running {
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(60), self.handle).await;
    }

    pub async fn request(&self, body: Value) -> String {
        let r = reqwest::Client::new()
            .post(format!("{}/v1/streams", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        r.json::<Value>().await.unwrap()["stream_id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub async fn sse(&self, id: &str) -> impl futures::Stream<Item = (String, Value)> {
        let resp = reqwest::Client::new()
            .get(format!("{}/v1/streams/{id}/events", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.bytes_stream()
            .eventsource()
            .filter_map(|e| async move {
                let e = e.ok()?;
                Some((
                    e.event,
                    serde_json::from_str(&e.data).unwrap_or(Value::Null),
                ))
            })
    }

    pub async fn cursor(&self, id: &str) -> bool {
        let st: Value = reqwest::get(format!("{}/v1/streams/{id}", self.base))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        !st["cursor"].is_null()
    }
}

pub fn lat(h: &Histogram<u64>) -> String {
    format!(
        "p50 {:.2} / p99 {:.2} / p99.9 {:.2} ms",
        pct(h, 0.5),
        pct(h, 0.99),
        pct(h, 0.999)
    )
}

/// Settings for `bench:stream_messages`: a Kafka source on `topic`, keyed by `conversation_id`,
/// from the latest record, checkpointing every 100 records.
pub fn kafka_sourced(topic: &str) -> impl FnOnce(&mut Settings) {
    let topic = topic.to_owned();
    move |s| {
        s.handlers.sources.insert(
            "bench:stream_messages".into(),
            SourceSettings::Kafka(KafkaSourceSettings {
                topic,
                key: Some("{conversation_id}".into()),
                start: StartAt::Latest,
                end_header: None,
                idle_timeout: Duration::ZERO,
                checkpoint_every: 100,
            }),
        );
    }
}
