//! Shared integration-test helpers: start the real app on port 0 against the real Kafka broker,
//! with a temporary RocksDB directory and unique topic and group names, plus SSE and Kafka clients.
#![allow(dead_code)]

pub mod ds;
pub mod grpc;
pub mod process;
pub mod source;
pub mod ws;

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::{Stream, StreamExt};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::Value;
use sluice::{App, Registry, Settings};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Generous bound for anything a test waits on.
pub const WAIT: Duration = Duration::from_secs(60);

/// Polls `f` until it holds, failing the test after [`WAIT`].
pub async fn wait_until<F, Fut>(mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The broker under test: `SLUICE_TEST_BROKERS`, else the local script's default.
pub fn brokers() -> String {
    std::env::var("SLUICE_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// Fails the test loudly when Kafka is not reachable; integration tests never skip.
pub fn require_kafka() {
    let b = brokers();
    let first = b.split(',').next().unwrap_or_default().to_owned();
    let reachable = first
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .map(|a| TcpStream::connect_timeout(&a, Duration::from_secs(3)).is_ok())
        .unwrap_or(false);
    assert!(
        reachable,
        "Kafka is required and not reachable at {b}. Start it with `scripts/kafka.sh start` \
         (or run `scripts/test.sh`, which does)."
    );
}

/// Waits until `{base}/readyz` answers 200: broker reachable, store open, intake assigned.
pub async fn wait_ready(http: &reqwest::Client, base: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let ready = http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .map(|r| r.status().is_success())
            .unwrap_or(false);
        if ready {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sluice never became ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A `demo:stream_ticks` request body.
pub fn ticks(payload: Value) -> Value {
    serde_json::json!({"type": "demo:stream_ticks:v1:requested", "payload": payload})
}

/// A seed for randomised tests: `SLUICE_CHAOS_SEED`, else the clock. Tests print it so a failure
/// can be replayed.
pub fn seed() -> u64 {
    std::env::var("SLUICE_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        })
}

/// A short unique name.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// A path in the repository, found where the test runs, not where it was built: a build reused
/// from another checkout (one target directory, several clones) would point into that checkout.
pub fn repo_path(rel: &str) -> std::path::PathBuf {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or(env!("CARGO_MANIFEST_DIR").into());
    std::path::Path::new(&dir).join(rel)
}

/// Settings for a test: port 0, unique topics and group, a fresh store directory.
pub fn test_settings(dir: &std::path::Path) -> Settings {
    let mut s = Settings::default();
    let tag = unique("t");
    s.http.listen = "127.0.0.1:0".parse().unwrap();
    s.grpc.listen = "127.0.0.1:0".parse().unwrap();
    s.kafka.brokers = brokers();
    s.kafka.stream_topic_prefix = format!("sluice.test.{tag}.stream.");
    s.intake.topic = format!("sluice.test.{tag}.requests");
    s.intake.dlq_topic = format!("sluice.test.{tag}.dlq");
    s.intake.group_id = format!("sluice-test-{tag}");
    s.intake.topic_partitions = 1;
    s.store.path = dir.join("db");
    s.provider.heartbeat_interval = Duration::from_millis(200);
    s.edge.early_connect_wait = Duration::from_secs(5);
    s.shutdown.grace_period = Duration::from_secs(5);
    s
}

/// A running Sluice.
pub struct TestApp {
    pub addr: SocketAddr,
    pub grpc: SocketAddr,
    pub settings: Settings,
    pub http: reqwest::Client,
    stop: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
    pub dir: tempfile::TempDir,
}

/// Starts Sluice with the built-in handlers; `tweak` adjusts the settings.
pub async fn start(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(dir.path());
    tweak(&mut settings);
    let registry = Registry::new();
    start_exact(settings, dir, registry).await
}

/// Starts Sluice with a custom registry.
pub async fn start_with(tweak: impl FnOnce(&mut Settings), registry: Registry) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(dir.path());
    tweak(&mut settings);
    start_exact(settings, dir, registry).await
}

/// Starts Sluice with exactly these settings, owning `dir` (used to restart on the same store).
pub async fn start_exact(
    settings: Settings,
    dir: tempfile::TempDir,
    registry: Registry,
) -> TestApp {
    require_kafka();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn,sluice=info"))
        .with_test_writer()
        .try_init();
    let app = App::build_with(settings.clone(), registry)
        .await
        .expect("build app");
    let addr = app.http_addr();
    let grpc = app.grpc_addr();
    let stop = CancellationToken::new();
    let s2 = stop.clone();
    let handle = tokio::spawn(async move { app.run(s2.cancelled_owned()).await });
    let t = TestApp {
        addr,
        grpc,
        settings,
        http: reqwest::Client::new(),
        stop,
        handle,
        dir,
    };
    t.wait_ready().await;
    t
}

impl TestApp {
    /// `http://addr/path`
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Waits until `/readyz` says the intake consumer has its assignment.
    pub async fn wait_ready(&self) {
        let token = &self.settings.edge.metrics_token;
        if token.is_empty() {
            return wait_ready(&self.http, &self.url("")).await;
        }
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .unwrap();
        wait_ready(&http, &self.url("")).await;
    }

    /// Produces raw bytes to the intake topic, as an external service would.
    pub async fn produce_raw(&self, bytes: &[u8]) {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .create()
            .unwrap();
        producer
            .send(
                FutureRecord::<(), [u8]>::to(&self.settings.intake.topic).payload(bytes),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produce to intake");
    }

    /// The `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// `GET /v1/streams/{id}` as JSON.
    pub async fn status(&self, id: &str) -> Value {
        self.http
            .get(self.url(&format!("/v1/streams/{id}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Requests a stream over HTTP and returns its id.
    pub async fn request(&self, body: Value) -> String {
        let resp = self
            .http
            .post(self.url("/v1/streams"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202, "POST /v1/streams");
        let v: Value = resp.json().await.unwrap();
        v["stream_id"].as_str().unwrap().to_owned()
    }

    /// `DELETE /v1/streams/{id}`.
    pub async fn cancel(&self, id: &str) -> reqwest::Response {
        self.http
            .delete(self.url(&format!("/v1/streams/{id}")))
            .send()
            .await
            .unwrap()
    }

    /// Opens an SSE subscription.
    pub async fn sse(&self, stream_id: &str, last_event_id: Option<i64>) -> SseClient {
        SseClient::connect(
            &self.url(&format!("/v1/streams/{stream_id}/events")),
            last_event_id,
        )
        .await
    }

    /// Stops the app and waits for its orderly shutdown.
    pub async fn shutdown(self) -> tempfile::TempDir {
        self.stop.cancel();
        tokio::time::timeout(WAIT, self.handle)
            .await
            .expect("shutdown in time")
            .unwrap()
            .unwrap();
        self.dir
    }
}

/// One SSE event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: Option<i64>,
    pub event: String,
    pub data: Value,
}

impl SseEvent {
    pub fn state(&self) -> &str {
        self.event.rsplit(':').next().unwrap_or("")
    }
}

type EventStream = std::pin::Pin<
    Box<
        dyn Stream<
                Item = Result<
                    eventsource_stream::Event,
                    eventsource_stream::EventStreamError<reqwest::Error>,
                >,
            > + Send,
    >,
>;

/// An SSE response being read.
pub struct SseClient {
    inner: EventStream,
}

impl SseClient {
    /// Opens an SSE subscription at `url`, resuming after `last_event_id`.
    pub async fn connect(url: &str, last_event_id: Option<i64>) -> SseClient {
        match SseClient::try_connect(url, last_event_id).await {
            Ok(c) => c,
            Err(e) => panic!("SSE subscribe to {url}: {e}"),
        }
    }

    /// [`SseClient::connect`] with a bearer token.
    pub async fn connect_with(url: &str, token: &str) -> SseClient {
        let req = reqwest::Client::new().get(url).bearer_auth(token);
        match SseClient::open(req).await {
            Ok(c) => c,
            Err(e) => panic!("SSE subscribe to {url}: {e}"),
        }
    }

    /// [`SseClient::connect`], with a failed connection or a status other than 200 as an error.
    pub async fn try_connect(url: &str, last_event_id: Option<i64>) -> Result<SseClient, String> {
        let mut req = reqwest::Client::new().get(url);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        SseClient::open(req).await
    }

    async fn open(req: reqwest::RequestBuilder) -> Result<SseClient, String> {
        let resp = req.send().await.map_err(|e| e.to_string())?;
        if resp.status() != 200 {
            let status = resp.status();
            return Err(format!(
                "{status} {}",
                resp.text().await.unwrap_or_default()
            ));
        }
        Ok(SseClient {
            inner: Box::pin(resp.bytes_stream().eventsource()),
        })
    }

    /// The next event, heartbeats included; `None` when the response ends.
    pub async fn next_any(&mut self) -> Option<SseEvent> {
        let ev = tokio::time::timeout(WAIT, self.inner.next())
            .await
            .expect("SSE event in time")?;
        let ev = ev.expect("valid SSE");
        Some(SseEvent {
            id: if ev.id.is_empty() {
                None
            } else {
                Some(ev.id.parse().expect("numeric id"))
            },
            event: ev.event,
            data: serde_json::from_str(&ev.data).unwrap_or(Value::Null),
        })
    }

    /// The next stored event (heartbeats skipped); `None` when the response ends or breaks (its
    /// server died).
    pub async fn next_event_or_end(&mut self) -> Option<SseEvent> {
        loop {
            let ev = tokio::time::timeout(WAIT, self.inner.next())
                .await
                .expect("SSE event in time")?
                .ok()?;
            if ev.event.ends_with(":heartbeat") {
                continue;
            }
            return Some(SseEvent {
                id: ev.id.parse().ok(),
                event: ev.event,
                data: serde_json::from_str(&ev.data).unwrap_or(Value::Null),
            });
        }
    }

    /// The next stored event (heartbeats skipped).
    pub async fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            let ev = self.next_any().await?;
            if !ev.event.ends_with(":heartbeat") {
                return Some(ev);
            }
        }
    }

    /// Every stored event until the response ends.
    pub async fn collect(&mut self) -> Vec<SseEvent> {
        let mut out = Vec::new();
        while let Some(ev) = self.next_event().await {
            out.push(ev);
        }
        out
    }
}

/// Asserts a complete, well-formed stream: started, chunks 1..=n, then `terminal`, ids increasing.
pub fn assert_complete(events: &[SseEvent], n: u64, terminal: &str) {
    assert!(
        events.len() as u64 == n + 2,
        "expected {} events, got {}: {:?}",
        n + 2,
        events.len(),
        events
            .iter()
            .map(|e| format!("{}@{:?}#{}", e.state(), e.id, e.data["seq"]))
            .collect::<Vec<_>>()
    );
    assert_eq!(events[0].state(), "started");
    for (i, e) in events[1..=n as usize].iter().enumerate() {
        assert_eq!(e.state(), "stream");
        assert_eq!(e.data["seq"].as_u64(), Some(i as u64 + 1));
        assert_eq!(e.data["payload"]["n"].as_u64(), Some(i as u64 + 1));
    }
    assert_eq!(events.last().unwrap().state(), terminal);
    let ids: Vec<i64> = events
        .iter()
        .map(|e| e.id.expect("stored events carry ids"))
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids strictly increasing: {ids:?}"
    );
    for e in events {
        assert_eq!(e.data["id"].as_i64(), e.id, "envelope id equals SSE id");
    }
}

/// Reads every message of a single-partition topic, from its low to its high watermark, so a
/// duplicate or extra message at the end is seen too.
pub async fn read_topic(topic: &str) -> Vec<rdkafka::message::OwnedMessage> {
    read_partition(topic, 0).await
}

/// Waits until `topic` holds at least `n` messages, then reads all of it (to the high watermark,
/// so messages beyond `n` are returned too).
pub async fn wait_topic(topic: &str, n: usize) -> Vec<rdkafka::message::OwnedMessage> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let all = read_topic(topic).await;
        if all.len() >= n {
            return all;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{topic}: {n} messages in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads one partition of `topic` from its low to its high watermark, as a `read_committed`
/// consumer sees it (the way every Sluice reader does).
pub async fn read_partition(topic: &str, partition: i32) -> Vec<rdkafka::message::OwnedMessage> {
    read_partition_as(topic, partition, "read_committed").await
}

/// Reads one partition of `topic` from its low to its high watermark with `isolation.level` set to
/// `isolation`: `read_uncommitted` also returns records of aborted transactions. Transaction
/// markers take offsets but are never returned, so the read ends when the consumer's position
/// reaches the high watermark.
pub async fn read_partition_as(
    topic: &str,
    partition: i32,
    isolation: &str,
) -> Vec<rdkafka::message::OwnedMessage> {
    use rdkafka::{Message, Offset, TopicPartitionList};
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("reader-"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .create()
        .unwrap();
    let (low, high) = consumer
        .fetch_watermarks(topic, partition, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("watermarks of {topic}: {e}"));
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(low))
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut out: Vec<rdkafka::message::OwnedMessage> = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    let position = |c: &StreamConsumer| {
        c.position()
            .ok()
            .and_then(|tpl| tpl.find_partition(topic, partition)?.offset().to_raw())
            .unwrap_or(low)
    };
    while position(&consumer) < high {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{topic}: offset {} of {high} in time",
            position(&consumer)
        );
        if let Ok(m) = tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await {
            let Some(m) = consumed(m) else { continue };
            if let Some(prev) = out.last() {
                assert!(m.offset() > prev.offset(), "{topic}: offsets increase");
            }
            out.push(m.detach());
        }
    }
    out
}

/// A read's next message, or `None` on an error the consumer recovers from by itself (the broker
/// connection dropped for a moment under load): the caller reads on until its deadline. Any other
/// error fails the test.
pub fn consumed<'a>(
    m: Result<rdkafka::message::BorrowedMessage<'a>, rdkafka::error::KafkaError>,
) -> Option<rdkafka::message::BorrowedMessage<'a>> {
    match m {
        Ok(m) => Some(m),
        Err(e) if sluice::kafka::is_transient(&e) => {
            eprintln!("test consumer reconnecting: {e}");
            None
        }
        Err(e) => panic!("test consumer: {e}"),
    }
}

/// The `sluice.reason` header of a dead-lettered message.
pub fn dlq_reason(m: &rdkafka::message::OwnedMessage) -> Vec<u8> {
    use rdkafka::message::{Headers, Message};
    m.headers()
        .and_then(|h| h.iter().find(|h| h.key == "sluice.reason"))
        .and_then(|h| h.value)
        .expect("sluice.reason header")
        .to_vec()
}

/// Asserts the events' `seq`s are 0, 1, 2, … with nothing repeated or skipped.
pub fn assert_gapless_seqs(events: &[SseEvent], what: &str) {
    let seqs: Vec<u64> = events
        .iter()
        .map(|e| e.data["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>(), "{what}");
}

/// Whether the broker has `topic`.
pub fn topic_exists(topic: &str) -> bool {
    let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    md.topics()
        .iter()
        .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
}

/// The broker's topics whose names start with `prefix`, sorted.
pub fn topics_with_prefix(prefix: &str) -> Vec<String> {
    let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let md = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .expect("metadata");
    let mut names: Vec<String> = md
        .topics()
        .iter()
        .filter(|t| t.name().starts_with(prefix) && t.error().is_none())
        .map(|t| t.name().to_owned())
        .collect();
    names.sort();
    names
}

/// The JSON value of a Kafka message.
pub fn json_of(m: &rdkafka::message::OwnedMessage) -> Value {
    use rdkafka::Message;
    serde_json::from_slice(m.payload().unwrap_or_default()).unwrap_or(Value::Null)
}

/// Asserts a stored stream topic holds exactly: `started` (seq 0), chunks `1..=n` with
/// `payload.n == seq`, then one `terminal` event last, each `seq` once and in order.
pub fn assert_topic_exact(topic: &str, events: &[Value], n: u64, terminal: &str) {
    let seqs: Vec<u64> = events
        .iter()
        .map(|e| e["seq"].as_u64().unwrap_or(u64::MAX))
        .collect();
    let want: Vec<u64> = (0..=n + 1).collect();
    assert_eq!(seqs, want, "{topic}: every seq exactly once, in order");
    let state = |e: &Value| {
        e["type"]
            .as_str()
            .unwrap_or("")
            .rsplit(':')
            .next()
            .unwrap_or("")
            .to_owned()
    };
    assert_eq!(state(&events[0]), "started", "{topic}");
    for e in &events[1..=n as usize] {
        assert_eq!(state(e), "stream", "{topic}: {e}");
        assert_eq!(
            e["payload"]["n"], e["seq"],
            "{topic}: chunk payload matches its seq"
        );
    }
    let last = events.last().unwrap();
    assert_eq!(
        state(last),
        terminal,
        "{topic}: terminal event last: {last}"
    );
}
