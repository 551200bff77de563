//! End-to-end benchmark: Sluice figures beside raw rdkafka baselines, measured in one run against
//! the same broker. `cargo bench --bench e2e` (full) or `cargo bench --bench e2e -- --quick`
//! (seconds-long smoke run). Writes `target/bench/e2e.json` and `target/bench/e2e.md`.
//!
//! Figures:
//! * B1 raw produce + concurrent consume, ~256-byte messages, Sluice's producer settings (msgs/s)
//! * B2 raw produce → consume latency at a fixed open-loop rate (p50/p99/p99.9)
//! * B3 raw single-partition replay from the beginning (msgs/s)
//! * S1 end-to-end chunks/s, handler emit → SSE clients, many concurrent streams; ratio to B1
//! * S2 emit → SSE latency at a fixed open-loop rate; ratio to B2
//! * S3 stream start latency, request produced → `started` at the SSE client (p50/p99)
//! * S6 replay of a long stream over SSE: time to first event and catch-up rate; ratio to B3
//! * topic creation cost (p50/p99)

use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::{json, Value};
use sluice::{App, Settings};
use tokio_util::sync::CancellationToken;

struct Scale {
    s4_steps: &'static [usize],
    s5_clients: usize,
    cp_chunks: u64,
    b1_msgs: usize,
    b2_rate: u64,
    b2_secs: u64,
    s1_streams: usize,
    s1_chunks: u64,
    s3_samples: usize,
    s6_events: u64,
    topics: usize,
}

const FULL: Scale = Scale {
    s4_steps: &[100, 1000],
    s5_clients: 4000,
    cp_chunks: 20_000,
    b1_msgs: 200_000,
    b2_rate: 1000,
    b2_secs: 10,
    s1_streams: 50,
    s1_chunks: 2000,
    s3_samples: 200,
    s6_events: 100_000,
    topics: 100,
};
const QUICK: Scale = Scale {
    s4_steps: &[10],
    s5_clients: 50,
    cp_chunks: 300,
    b1_msgs: 5_000,
    b2_rate: 200,
    b2_secs: 2,
    s1_streams: 4,
    s1_chunks: 200,
    s3_samples: 10,
    s6_events: 2_000,
    topics: 5,
};

fn brokers() -> String {
    std::env::var("SLUICE_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

fn tag() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..10].to_owned()
}

fn producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "200000")
        .create()
        .expect("producer")
}

fn consumer(topic: &str) -> StreamConsumer {
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("bench-{}", tag()))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    c
}

async fn create_topic(admin: &AdminClient<DefaultClientContext>, topic: &str) -> Duration {
    let t = Instant::now();
    let nt = NewTopic::new(topic, 1, TopicReplication::Fixed(1));
    admin
        .create_topics([&nt], &AdminOptions::new())
        .await
        .unwrap();
    t.elapsed()
}

fn micros_now() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

fn pct(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// B1: produce N ~256-byte messages while a consumer reads them; rate = N / time until all consumed.
async fn b1(admin: &AdminClient<DefaultClientContext>, n: usize) -> f64 {
    let topic = format!("bench.b1.{}", tag());
    create_topic(admin, &topic).await;
    let p = producer();
    let c = consumer(&topic);
    let payload = vec![b'x'; 256];
    let start = Instant::now();
    let reader = tokio::spawn(async move {
        let mut got = 0;
        while got < n {
            c.recv().await.unwrap();
            got += 1;
        }
    });
    let mut acks = futures::stream::FuturesUnordered::new();
    for _ in 0..n {
        loop {
            match p.send_result(FutureRecord::<(), _>::to(&topic).payload(&payload)) {
                Ok(f) => {
                    acks.push(f);
                    break;
                }
                Err(_) => {
                    acks.next().await;
                }
            }
        }
    }
    while acks.next().await.is_some() {}
    reader.await.unwrap();
    n as f64 / start.elapsed().as_secs_f64()
}

/// B2: open-loop produce at `rate`/s for `secs`, timestamps in the payload; latency at the consumer.
async fn b2(admin: &AdminClient<DefaultClientContext>, rate: u64, secs: u64) -> Histogram<u64> {
    let topic = format!("bench.b2.{}", tag());
    create_topic(admin, &topic).await;
    let p = producer();
    let c = consumer(&topic);
    let n = rate * secs;
    // Warm up: the consumer has fetched once before the measured sends start.
    p.send(
        FutureRecord::<(), _>::to(&topic).payload("0"),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    c.recv().await.unwrap();
    let reader = tokio::spawn(async move {
        let mut h = Histogram::<u64>::new(3).unwrap();
        for _ in 0..n {
            let m = c.recv().await.unwrap();
            let sent: i64 = std::str::from_utf8(m.payload().unwrap())
                .unwrap()
                .parse()
                .unwrap();
            h.record((micros_now() - sent).max(0) as u64).unwrap();
        }
        h
    });
    let interval = Duration::from_nanos(1_000_000_000 / rate);
    let start = tokio::time::Instant::now();
    for i in 0..n {
        // Open loop: each send is due at its scheduled time, and its timestamp is that time.
        let due = start + interval * i as u32;
        tokio::time::sleep_until(due).await;
        let scheduled = micros_now() - due.elapsed().as_micros() as i64;
        let body = scheduled.to_string();
        let f = p
            .send_result(FutureRecord::<(), _>::to(&topic).payload(&body))
            .map_err(|(e, _)| e)
            .unwrap();
        tokio::spawn(f);
    }
    reader.await.unwrap()
}

/// B3: fill a topic with N messages, then time a fresh consumer reading all of them.
async fn b3(admin: &AdminClient<DefaultClientContext>, n: u64) -> (String, f64) {
    let topic = format!("bench.b3.{}", tag());
    create_topic(admin, &topic).await;
    let p = producer();
    let payload = vec![b'x'; 256];
    let mut acks = futures::stream::FuturesUnordered::new();
    for _ in 0..n {
        acks.push(p.send(
            FutureRecord::<(), _>::to(&topic).payload(&payload),
            Duration::from_secs(60),
        ));
        if acks.len() > 10_000 {
            acks.next().await;
        }
    }
    while acks.next().await.is_some() {}
    drop(acks);
    let c = consumer(&topic);
    let start = Instant::now();
    for _ in 0..n {
        c.recv().await.unwrap();
    }
    (topic, n as f64 / start.elapsed().as_secs_f64())
}

struct Running {
    base: String,
    settings: Settings,
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

async fn start_sluice() -> Running {
    let dir = tempfile::tempdir().unwrap();
    let s = bench_settings(dir.path());
    run_sluice(s, dir).await
}

fn bench_settings(dir: &std::path::Path) -> Settings {
    let t = tag();
    let mut s = Settings::default();
    s.http.listen = "127.0.0.1:0".parse().unwrap();
    s.grpc.listen = "127.0.0.1:0".parse().unwrap();
    s.kafka.brokers = brokers();
    s.kafka.stream_topic_prefix = format!("bench.{t}.");
    s.intake.topic = format!("bench.{t}.requests");
    s.intake.dlq_topic = format!("bench.{t}.dlq");
    s.intake.group_id = format!("bench-{t}");
    s.intake.topic_partitions = 1;
    s.store.path = dir.join("db");
    s.edge.early_connect_wait = Duration::from_secs(30);
    s.provider.max_concurrent_streams = 10_000;
    s
}

async fn run_sluice(s: Settings, dir: tempfile::TempDir) -> Running {
    // A restart may briefly find the previous instance's store lock still held by connections
    // that are winding down; retry for a while.
    let deadline = Instant::now() + Duration::from_secs(60);
    let app = loop {
        match App::build(s.clone()).await {
            Ok(app) => break app,
            Err(e) if Instant::now() < deadline => {
                eprintln!("sluice not built yet ({e}); retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("build sluice: {e:?}"),
        }
    };
    let base = format!("http://{}", app.http_addr());
    let stop = CancellationToken::new();
    let s2 = stop.clone();
    let handle = tokio::spawn(async move { app.run(s2.cancelled_owned()).await });
    let http = reqwest::Client::new();
    while !http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .map(|r| r.status().is_success())
        .unwrap_or(false)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Running {
        base,
        settings: s,
        stop,
        handle,
        _dir: dir,
    }
}

type Events = std::pin::Pin<Box<dyn futures::Stream<Item = (String, Value)> + Send>>;

async fn sse(base: &str, id: &str, after: Option<i64>) -> Events {
    let mut req = reqwest::Client::new().get(format!("{base}/v1/streams/{id}/events"));
    if let Some(a) = after {
        req = req.header("Last-Event-ID", a.to_string());
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    Box::pin(
        resp.bytes_stream()
            .eventsource()
            .filter_map(|e| async move {
                let e = e.ok()?;
                Some((
                    e.event,
                    serde_json::from_str(&e.data).unwrap_or(Value::Null),
                ))
            }),
    )
}

async fn post(base: &str, body: Value) -> String {
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/streams"))
        .json(&body)
        .send()
        .await
        .unwrap();
    r.json::<Value>().await.unwrap()["stream_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// S4: `n` concurrent streams at 10 chunks/s for `secs`, one SSE reader each: chunks/s and latency.
async fn s4(app: &Running, n: usize, secs: u64) -> (f64, Histogram<u64>) {
    let body = json!({"type": "demo:stream_ticks:v1:requested",
        "payload": {"count": 10 * secs, "interval_ms": 100, "checkpoint_every": 10}});
    let ids: Vec<String> =
        futures::future::join_all((0..n).map(|_| post(&app.base, body.clone()))).await;
    let start = Instant::now();
    let readers = ids.into_iter().map(|id| {
        let base = app.base.clone();
        tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3).unwrap();
            let mut events = sse(&base, &id, None).await;
            while let Some((ev, data)) = events.next().await {
                if ev.ends_with(":stream") {
                    h.record(
                        (micros_now() - data["payload"]["at"].as_i64().unwrap()).max(0) as u64,
                    )
                    .unwrap();
                }
            }
            h
        })
    });
    let mut all = Histogram::<u64>::new(3).unwrap();
    for h in futures::future::join_all(readers).await {
        all.add(h.unwrap()).unwrap();
    }
    (all.len() as f64 / start.elapsed().as_secs_f64(), all)
}

/// S5: `n` idle SSE clients on one quiet stream, spread over 127.0.x.y source addresses.
async fn s5(app: &Running, n: usize) -> (usize, f64) {
    let id = post(
        &app.base,
        json!({"type": "demo:stream_ticks:v1:requested",
        "payload": {"count": 1, "interval_ms": 3_600_000}}),
    )
    .await;
    let before = rss_kib();
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        let local: std::net::IpAddr = format!("127.0.{}.{}", 1 + i / 250, 1 + i % 250)
            .parse()
            .unwrap();
        let client = reqwest::Client::builder()
            .local_address(local)
            .build()
            .unwrap();
        match client
            .get(format!("{}/v1/streams/{id}/events", app.base))
            .send()
            .await
        {
            Ok(r) if r.status() == 200 => held.push(r),
            _ => break,
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let per = (rss_kib().saturating_sub(before)) as f64 / held.len().max(1) as f64;
    (held.len(), per)
}

/// Single-stream throughput with a checkpoint every `every` chunks (0: never).
async fn checkpoint_rate(app: &Running, chunks: u64, every: u64) -> f64 {
    let id = post(&app.base, json!({"type": "demo:stream_ticks:v1:requested",
        "payload": {"count": chunks, "interval_ms": 0, "checkpoint_every": every, "pad_bytes": 200}})).await;
    let mut events = sse(&app.base, &id, None).await;
    let mut start = None;
    while let Some((ev, _)) = events.next().await {
        if ev.ends_with(":started") {
            start = Some(Instant::now());
        }
    }
    chunks as f64 / start.unwrap().elapsed().as_secs_f64()
}

/// Resume latency: stop Sluice mid-stream, start it again on the same store, and time from the
/// start of the new process's build to the first new chunk at a reader.
async fn resume_latency(app: Running) -> (f64, Running) {
    let id = post(
        &app.base,
        json!({"type": "demo:stream_ticks:v1:requested",
        "payload": {"count": 100_000, "interval_ms": 10, "checkpoint_every": 10}}),
    )
    .await;
    let mut events = sse(&app.base, &id, None).await;
    let mut seen = 0;
    while let Some((ev, _)) = events.next().await {
        if ev.ends_with(":stream") {
            seen += 1;
            if seen == 50 {
                break;
            }
        }
    }
    drop(events);
    let settings = app.settings.clone();
    app.stop.cancel();
    let _ = app.handle.await;
    let t0 = Instant::now();
    let app = run_sluice(settings, app._dir).await;
    let before: u64 = {
        let v: Value = reqwest::get(format!("{}/v1/streams/{id}", app.base))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["chunks"].as_u64().unwrap_or(0)
    };
    let mut events = sse(&app.base, &id, None).await;
    let mut first = 0.0;
    while let Some((ev, data)) = events.next().await {
        if ev.ends_with(":stream") && data["seq"].as_u64().unwrap_or(0) > before.max(50) {
            first = t0.elapsed().as_secs_f64() * 1000.0;
            break;
        }
    }
    let _ = reqwest::Client::new()
        .delete(format!("{}/v1/streams/{id}", app.base))
        .send()
        .await;
    (first, app)
}

/// S3: request produced to the intake topic → `started` at an SSE client already waiting.
async fn s3(app: &Running, samples: usize) -> Histogram<u64> {
    let p = producer();
    let mut h = Histogram::<u64>::new(3).unwrap();
    for _ in 0..samples {
        let id = format!("s3-{}", tag());
        let base = app.base.clone();
        let id2 = id.clone();
        let waiter = tokio::spawn(async move {
            let mut events = sse(&base, &id2, None).await;
            while let Some((ev, _)) = events.next().await {
                if ev.ends_with(":started") {
                    return Instant::now();
                }
            }
            panic!("no started event");
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let body = json!({"type": "demo:stream_ticks:v1:requested", "stream_id": id, "payload": {"count": 1, "interval_ms": 0}}).to_string();
        let t0 = Instant::now();
        p.send(
            FutureRecord::<(), _>::to(&app.settings.intake.topic).payload(&body),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
        let t1 = waiter.await.unwrap();
        h.record(t1.duration_since(t0).as_micros() as u64).unwrap();
    }
    h
}

/// S1: `streams` concurrent streams of `chunks` chunks as fast as the handler can emit, each read
/// by one SSE client; chunks/s over the whole run. Returns (chunks/s, single-stream chunks/s).
async fn s1(app: &Running, streams: usize, chunks: u64) -> f64 {
    let ids: Vec<String> = futures::future::join_all((0..streams).map(|_| {
        post(&app.base, json!({"type": "demo:stream_ticks:v1:requested",
            "payload": {"count": chunks, "interval_ms": 0, "checkpoint_every": 100, "pad_bytes": 200}}))
    }))
    .await;
    let start = Instant::now();
    let readers = ids.into_iter().map(|id| {
        let base = app.base.clone();
        tokio::spawn(async move {
            let mut events = sse(&base, &id, None).await;
            let mut n = 0u64;
            while let Some((ev, _)) = events.next().await {
                if ev.ends_with(":stream") {
                    n += 1;
                }
            }
            n
        })
    });
    let total: u64 = futures::future::join_all(readers)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .sum();
    total as f64 / start.elapsed().as_secs_f64()
}

/// S2: one stream emitting at `rate`/s (open loop, scheduled timestamps); emit → SSE latency.
async fn s2(app: &Running, rate: u64, secs: u64) -> Histogram<u64> {
    let interval = (1000 / rate).max(1);
    let count = rate * secs;
    let id = post(
        &app.base,
        json!({"type": "demo:stream_ticks:v1:requested",
        "payload": {"count": count, "interval_ms": interval, "checkpoint_every": 100}}),
    )
    .await;
    let mut events = sse(&app.base, &id, None).await;
    let mut h = Histogram::<u64>::new(3).unwrap();
    while let Some((ev, data)) = events.next().await {
        if ev.ends_with(":stream") {
            let at = data["payload"]["at"].as_i64().unwrap();
            h.record((micros_now() - at).max(0) as u64).unwrap();
        }
    }
    h
}

/// S6: a stream of `n` events, then a fresh SSE reader from the beginning.
async fn s6(app: &Running, n: u64) -> (f64, f64) {
    let id = post(
        &app.base,
        json!({"type": "demo:stream_ticks:v1:requested",
        "payload": {"count": n, "interval_ms": 0, "checkpoint_every": 1000, "pad_bytes": 200}}),
    )
    .await;
    let mut events = sse(&app.base, &id, None).await;
    while let Some((ev, _)) = events.next().await {
        if ev.ends_with(":success") {
            break;
        }
    }
    let t0 = Instant::now();
    let mut events = sse(&app.base, &id, None).await;
    let mut first = None;
    let mut got = 0u64;
    while let Some(_ev) = events.next().await {
        first.get_or_insert_with(|| t0.elapsed());
        got += 1;
    }
    let total = t0.elapsed().as_secs_f64();
    (first.unwrap().as_secs_f64() * 1000.0, got as f64 / total)
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let scale = if quick { QUICK } else { FULL };
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let mut report = serde_json::Map::new();
    let mut rows: Vec<(String, String, String, String)> = Vec::new();

    let b1 = b1(&admin, scale.b1_msgs).await;
    rows.push((
        "B1 raw produce+consume".into(),
        format!("{b1:.0} msgs/s"),
        "".into(),
        "".into(),
    ));
    let b2h = b2(&admin, scale.b2_rate, scale.b2_secs).await;
    rows.push((
        "B2 raw latency @ rate".into(),
        format!(
            "p50 {:.2} / p99 {:.2} / p99.9 {:.2} ms",
            pct(&b2h, 0.5),
            pct(&b2h, 0.99),
            pct(&b2h, 0.999)
        ),
        "".into(),
        format!("{}/s", scale.b2_rate),
    ));
    let (_b3_topic, b3) = b3(&admin, scale.s6_events).await;
    rows.push((
        "B3 raw replay".into(),
        format!("{b3:.0} msgs/s"),
        "".into(),
        "".into(),
    ));

    let mut create = Histogram::<u64>::new(3).unwrap();
    for _ in 0..scale.topics {
        create
            .record(
                create_topic(&admin, &format!("bench.create.{}", tag()))
                    .await
                    .as_micros() as u64,
            )
            .unwrap();
    }
    rows.push((
        "Topic creation".into(),
        format!(
            "p50 {:.2} / p99 {:.2} ms",
            pct(&create, 0.5),
            pct(&create, 0.99)
        ),
        "".into(),
        format!("n={}", scale.topics),
    ));

    let app = start_sluice().await;
    let s3h = s3(&app, scale.s3_samples).await;
    rows.push((
        "S3 stream start (produce → started)".into(),
        format!("p50 {:.2} / p99 {:.2} ms", pct(&s3h, 0.5), pct(&s3h, 0.99)),
        "".into(),
        format!("n={}", scale.s3_samples),
    ));
    let single = s1(&app, 1, scale.s1_chunks * 5).await;
    rows.push((
        "Single stream chunks/s (emit → SSE)".into(),
        format!("{single:.0} chunks/s"),
        format!("{:.2} × B1", single / b1),
        "".into(),
    ));
    let s1v = s1(&app, scale.s1_streams, scale.s1_chunks).await;
    rows.push((
        "S1 end-to-end chunks/s".into(),
        format!("{s1v:.0} chunks/s"),
        format!("{:.2} × B1", s1v / b1),
        format!("{} streams", scale.s1_streams),
    ));
    let s2h = s2(&app, scale.b2_rate.min(500), scale.b2_secs).await;
    rows.push((
        "S2 emit → SSE latency".into(),
        format!(
            "p50 {:.2} / p99 {:.2} / p99.9 {:.2} ms",
            pct(&s2h, 0.5),
            pct(&s2h, 0.99),
            pct(&s2h, 0.999)
        ),
        format!("p99 {:.2} × B2", pct(&s2h, 0.99) / pct(&b2h, 0.99)),
        format!("{}/s", scale.b2_rate.min(500)),
    ));
    let (first_ms, catchup) = s6(&app, scale.s6_events).await;
    rows.push((
        "S6 replay of a long stream".into(),
        format!("first event {first_ms:.1} ms, {catchup:.0} events/s"),
        format!("{:.2} × B3", catchup / b3),
        format!("{} events", scale.s6_events),
    ));
    let (resume_ms, app) = resume_latency(app).await;
    rows.push((
        "Resume latency (restart → first new chunk)".into(),
        format!("{resume_ms:.0} ms"),
        "".into(),
        "graceful stop, same store".into(),
    ));
    for every in [1u64, 100, 0] {
        let rate = checkpoint_rate(&app, scale.cp_chunks, every).await;
        let label = if every == 0 {
            "never".to_owned()
        } else {
            format!("every {every}")
        };
        rows.push((
            format!("Checkpoint {label}: single stream"),
            format!("{rate:.0} chunks/s"),
            format!("{:.2} × B1", rate / b1),
            format!("{} chunks", scale.cp_chunks),
        ));
    }
    for &n in scale.s4_steps {
        let (rate, h) = s4(&app, n, if quick { 2 } else { 10 }).await;
        rows.push((
            format!("S4 {n} live streams @ 10 chunks/s"),
            format!(
                "{rate:.0} chunks/s, p50 {:.2} / p99 {:.2} ms",
                pct(&h, 0.5),
                pct(&h, 0.99)
            ),
            "".into(),
            format!("target {} chunks/s", n * 10),
        ));
    }
    let (clients, per) = s5(&app, scale.s5_clients).await;
    rows.push((
        "S5 idle SSE clients held".into(),
        format!("{clients} clients, {per:.1} KiB RSS each"),
        "".into(),
        "client and server in one process".into(),
    ));

    app.stop.cancel();
    let _ = app.handle.await;

    let machine = format!(
        "{} cores, {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(
                |c| c.lines().find(|l| l.starts_with("model name")).map(|l| l
                    .split(':')
                    .nth(1)
                    .unwrap_or("")
                    .trim()
                    .to_owned())
            )
            .unwrap_or_default()
    );
    let mut md = format!("Machine: {machine}; broker: local single-node Kafka; mode: {}\n\n| figure | result | vs baseline | parameters |\n|---|---|---|---|\n", if quick { "quick" } else { "full" });
    for (name, value, ratio, params) in &rows {
        md.push_str(&format!("| {name} | {value} | {ratio} | {params} |\n"));
        report.insert(
            name.clone(),
            json!({"result": value, "ratio": ratio, "parameters": params}),
        );
    }
    report.insert("machine".into(), json!(machine));
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("e2e.json"),
        serde_json::to_string_pretty(&Value::Object(report)).unwrap(),
    )
    .unwrap();
    std::fs::write(out.join("e2e.md"), &md).unwrap();
    println!("{md}");
}
