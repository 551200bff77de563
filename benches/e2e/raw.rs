//! Raw rdkafka baselines, measured with the bytes, key, header and producer settings Sluice uses,
//! over the same topic layouts: N single-partition topics with one consumer assigned all of them,
//! one N-partition topic keyed by stream id, and single-partition replay.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use sluice::event::{Envelope, StreamId};

use crate::support::{brokers, micros_now, tag};

/// The chunk type every baseline message carries in its `type` header, as Sluice does.
pub const CHUNK_TYPE: &str = "demo:stream_ticks:v1:stream";
/// Padding of each chunk payload, in bytes: the same `pad_bytes` the Sluice figures request.
pub const PAD: usize = 200;

/// The bytes Sluice stores for chunk `seq` of stream `id`, stamped `at`.
pub fn envelope(id: &str, seq: u64, at: i64) -> Vec<u8> {
    let env = Envelope {
        event_type: CHUNK_TYPE.into(),
        id: None,
        stream_id: Some(id.to_owned()),
        seq: Some(seq),
        payload: serde_json::json!({"n": seq, "at": at,
            "pad": sluice::handlers::demo::pad_text(seq, PAD)}),
        metadata: None,
        time: Some(chrono::Utc::now()),
    };
    serde_json::to_vec(&env).expect("envelope")
}

/// A producer with Sluice's settings (`kafka::producer::Journal::new` and the default linger).
pub fn producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("max.in.flight.requests.per.connection", "5")
        .set("linger.ms", "1")
        .set("message.timeout.ms", "300000")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "200000")
        .create()
        .expect("producer")
}

/// One admin client for the whole run, so no figure pays for connecting one.
fn admin() -> &'static AdminClient<DefaultClientContext> {
    static ADMIN: std::sync::OnceLock<AdminClient<DefaultClientContext>> =
        std::sync::OnceLock::new();
    ADMIN.get_or_init(|| {
        ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .create()
            .expect("admin")
    })
}

/// Deletes every topic whose name starts with `prefix` (what a stopped server left behind);
/// returns how many there were.
pub async fn delete_prefixed(prefix: &str) -> usize {
    let p = prefix.to_owned();
    let names: Vec<String> = tokio::task::spawn_blocking(move || {
        let md = admin()
            .inner()
            .fetch_metadata(None, Duration::from_secs(30))
            .expect("metadata");
        md.topics()
            .iter()
            .map(|t| t.name().to_owned())
            .filter(|n| n.starts_with(&p))
            .collect()
    })
    .await
    .expect("metadata task");
    for chunk in names.chunks(100) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let _ = admin().delete_topics(&refs, &AdminOptions::new()).await;
    }
    names.len()
}

/// A set of benchmark topics, removed again by [`Layout::delete`].
pub struct Layout {
    /// Topic names; each single-partition unless `partitions > 1` (then exactly one topic).
    pub topics: Vec<String>,
    /// Partitions per topic.
    pub partitions: i32,
    /// One stream id per stream: the message key.
    pub keys: Vec<String>,
}

impl Layout {
    /// `n` single-partition topics (Sluice's layout), or with `keyed`, one `n`-partition topic.
    pub async fn create(n: usize, keyed: bool) -> Layout {
        let t = tag();
        let (topics, partitions) = if keyed {
            (vec![format!("bench.raw.{t}.keyed")], n as i32)
        } else {
            ((0..n).map(|i| format!("bench.raw.{t}.{i}")).collect(), 1)
        };
        let admin = admin();
        for chunk in topics.chunks(100) {
            let new: Vec<NewTopic> = chunk
                .iter()
                .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
                .collect();
            for r in admin
                .create_topics(&new, &AdminOptions::new())
                .await
                .expect("create topics")
            {
                r.expect("topic created");
            }
        }
        Layout {
            topics,
            partitions,
            keys: (0..n).map(|_| StreamId::random().to_string()).collect(),
        }
    }

    /// Deletes the topics.
    pub async fn delete(self) {
        let admin = admin();
        for chunk in self.topics.chunks(100) {
            let names: Vec<&str> = chunk.iter().map(String::as_str).collect();
            let _ = admin.delete_topics(&names, &AdminOptions::new()).await;
        }
    }

    /// Where stream `i`'s messages go: its own topic, or the shared topic (partitioned by key).
    fn topic_of(&self, i: usize) -> &str {
        if self.partitions > 1 {
            &self.topics[0]
        } else {
            &self.topics[i]
        }
    }

    /// One consumer assigned every partition of the layout, from the beginning.
    pub fn consumer(&self) -> StreamConsumer {
        let c: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .set("group.id", format!("bench-{}", tag()))
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            .create()
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        for t in &self.topics {
            for p in 0..self.partitions {
                tpl.add_partition_offset(t, p, Offset::Beginning)
                    .expect("partition");
            }
        }
        c.assign(&tpl).expect("assign");
        c
    }

    /// Learns the layout's leaders before a timed run, so metadata is not part of it.
    async fn warm(&self, p: &FutureProducer) {
        for t in self.topics.iter().take(1) {
            let (p, t) = (p.clone(), t.clone());
            tokio::task::spawn_blocking(move || {
                p.client()
                    .fetch_metadata(Some(&t), Duration::from_secs(10))
                    .expect("metadata")
            })
            .await
            .expect("metadata task");
        }
    }

    /// One message to every stream, read back by `c` before any clock starts: the consumer has
    /// then found every partition's position and is fetching.
    async fn prime(&self, p: &FutureProducer, c: &StreamConsumer) {
        let mut acks = futures::stream::FuturesUnordered::new();
        for i in 0..self.keys.len() {
            let bytes = envelope(&self.keys[i], 0, micros_now());
            match p.send_result(self.record(i, &bytes)) {
                Ok(f) => acks.push(f),
                Err((e, _)) => panic!("prime: {e}"),
            }
        }
        while let Some(r) = acks.next().await {
            r.expect("delivery").expect("primed");
        }
        for _ in 0..self.keys.len() {
            c.recv().await.expect("primed");
        }
    }

    fn record<'a>(&'a self, i: usize, bytes: &'a [u8]) -> FutureRecord<'a, str, [u8]> {
        FutureRecord::to(self.topic_of(i))
            .key(self.keys[i].as_str())
            .payload(bytes)
            .headers(OwnedHeaders::new().insert(Header {
                key: "type",
                value: Some(CHUNK_TYPE),
            }))
    }
}

/// Deliveries waiting for their acknowledgement.
type Acks = futures::stream::FuturesUnordered<rdkafka::producer::DeliveryFuture>;

/// Enqueues `rec`; while the producer's queue is full, waits for a delivery and tries again
/// (a late message keeps whatever stamp it carries, so the delay shows in its latency).
async fn enqueue(p: &FutureProducer, acks: &mut Acks, mut rec: FutureRecord<'_, str, [u8]>) {
    loop {
        match p.send_result(rec) {
            Ok(f) => return acks.push(f),
            Err((_, back)) => {
                rec = back;
                acks.next().await;
            }
        }
    }
}

/// [`throughput`] over a fresh layout of `n` streams, deleted afterwards.
pub async fn measure(n: usize, keyed: bool, total: u64) -> f64 {
    let layout = Layout::create(n, keyed).await;
    let rate = throughput(&layout, total).await;
    layout.delete().await;
    rate
}

/// Throughput: `total` chunks produced round-robin over the layout's streams as fast as the
/// producer takes them, while one consumer reads them all; chunks/s until the last is consumed.
pub async fn throughput(layout: &Layout, total: u64) -> f64 {
    let p = producer();
    layout.warm(&p).await;
    let c = layout.consumer();
    layout.prime(&p, &c).await;
    let n = layout.keys.len();
    // Chunks differ in their padding, as Sluice's do; built before the clock starts.
    let payloads: Vec<Vec<u8>> = (1..=64)
        .map(|s| envelope(&layout.keys[0], s, micros_now()))
        .collect();
    let start = Instant::now();
    let reader = tokio::spawn(async move {
        let mut got = 0;
        while got < total {
            c.recv().await.expect("consume");
            got += 1;
        }
    });
    let mut acks = Acks::new();
    for k in 0..total {
        let i = (k % n as u64) as usize;
        let rec = layout.record(i, &payloads[(k / n as u64 % 64) as usize]);
        enqueue(&p, &mut acks, rec).await;
    }
    while acks.next().await.is_some() {}
    reader.await.expect("reader");
    total as f64 / start.elapsed().as_secs_f64()
}

/// Latency, open loop: each stream gets `rate` chunks/s for `secs`, every chunk stamped with its
/// intended send time; latency is consume time minus that stamp. Returns (chunks/s consumed,
/// histogram in µs).
pub async fn open_loop(layout: &Layout, rate: u64, secs: u64) -> (f64, Histogram<u64>) {
    let p = producer();
    layout.warm(&p).await;
    let c = layout.consumer();
    layout.prime(&p, &c).await;
    let n = layout.keys.len() as u64;
    let total = n * rate * secs;
    let deadline = Duration::from_secs(secs * 3 + 30);
    let reader = tokio::spawn(async move {
        let mut h = Histogram::<u64>::new(3).expect("histogram");
        let start = Instant::now();
        while (h.len()) < total {
            let Ok(m) = tokio::time::timeout(deadline, c.recv()).await else {
                break;
            };
            let m = m.expect("consume");
            let at = serde_json::from_slice::<serde_json::Value>(m.payload().unwrap_or_default())
                .ok()
                .and_then(|v| v["payload"]["at"].as_i64())
                .expect("stamped");
            h.record((micros_now() - at).max(0) as u64).expect("record");
        }
        (h.len() as f64 / start.elapsed().as_secs_f64(), h)
    });
    let start = Instant::now();
    let start_us = micros_now();
    let mut acks = Acks::new();
    let mut seq: HashMap<usize, u64> = HashMap::new();
    for k in 0..total {
        let due = Duration::from_nanos(k * 1_000_000_000 / (n * rate));
        tokio::time::sleep_until((start + due).into()).await;
        let i = (k % n) as usize;
        let s = seq.entry(i).or_insert(0);
        *s += 1;
        let bytes = envelope(&layout.keys[i], *s, start_us + due.as_micros() as i64);
        // A full queue means the producer is behind schedule: the chunk keeps its stamp.
        enqueue(&p, &mut acks, layout.record(i, &bytes)).await;
        while let Some(Some(_)) = futures::FutureExt::now_or_never(acks.next()) {}
    }
    while acks.next().await.is_some() {}
    reader.await.expect("reader")
}

/// Replay: fills one single-partition topic with `total` chunks, then times a fresh consumer
/// reading all of them from the beginning (chunks/s).
pub async fn replay(total: u64) -> f64 {
    let layout = Layout::create(1, false).await;
    let p = producer();
    let mut acks = Acks::new();
    for s in 1..=total {
        let bytes = envelope(&layout.keys[0], s, micros_now());
        enqueue(&p, &mut acks, layout.record(0, &bytes)).await;
        if acks.len() > 10_000 {
            acks.next().await;
        }
    }
    while acks.next().await.is_some() {}
    drop(acks);
    let c = layout.consumer();
    let start = Instant::now();
    for _ in 0..total {
        c.recv().await.expect("consume");
    }
    let rate = total as f64 / start.elapsed().as_secs_f64();
    layout.delete().await;
    rate
}

/// Time to create one single-partition topic (µs), as a new stream does.
pub async fn create_one() -> u64 {
    let t = Instant::now();
    let layout = Layout::create(1, false).await;
    let us = t.elapsed().as_micros() as u64;
    layout.delete().await;
    us
}
