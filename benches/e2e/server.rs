//! Sluice under test: the release binary as a child process with throw-away topics and store, its
//! HTTP API, SSE subscriptions, metrics and resident memory. The benchmark's clients live in the
//! benchmark process, never in the server's.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::support::{brokers, tag};

/// The binary measured: `SLUICE_BENCH_BIN`, or the one built with this benchmark.
pub fn binary() -> PathBuf {
    std::env::var_os("SLUICE_BENCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_sluice")))
}

/// A running Sluice process.
pub struct Server {
    child: Child,
    /// `http://host:port` of its edge.
    pub base: String,
    /// Its intake topic.
    pub intake: String,
    /// The tag its topic and group names carry.
    tag: String,
    http: reqwest::Client,
    dir: tempfile::TempDir,
    extra: String,
}

/// SSE events: the `event:` name, the `id:` and the `data:` text (parsed only by figures that
/// need a field, as the raw consumers do).
pub type Events =
    std::pin::Pin<Box<dyn futures::Stream<Item = (String, Option<i64>, String)> + Send>>;

impl Server {
    /// Starts the binary with `extra` TOML appended to the bench settings, and waits for `/readyz`.
    pub async fn start(extra: &str) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        Server::start_in(dir, extra, &tag()).await
    }

    async fn start_in(dir: tempfile::TempDir, extra: &str, t: &str) -> Server {
        let toml = format!(
            r#"
[http]
listen = "127.0.0.1:0"
[grpc]
listen = "127.0.0.1:0"
[kafka]
brokers = "{brokers}"
stream_topic_prefix = "bench.{t}.stream."
[intake]
topic = "bench.{t}.requests"
dlq_topic = "bench.{t}.dlq"
group_id = "bench-{t}"
topic_partitions = 1
[store]
path = "{db}"
[log]
format = "json"
level = "info"
# One load generator on one address holds up to 15,000 connections (S5): lift the caps that
# would otherwise refuse it as one abusive client.
[limits]
max_connections = 100000
max_connections_per_ip = 100000
max_subscribers_per_stream = 100000
{extra}
"#,
            brokers = brokers(),
            db = dir.path().join("db").display(),
        );
        let config = dir.path().join("settings.toml");
        std::fs::write(&config, toml).expect("settings");
        let mut child = Command::new(binary())
            .arg("--config")
            .arg(&config)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn sluice");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let addr = tokio::time::timeout(Duration::from_secs(120), async {
            while let Some(line) = lines.next_line().await.expect("log") {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if v["message"] == "sluice is running" {
                        return v["addr"].as_str().expect("addr").to_owned();
                    }
                }
            }
            panic!("sluice exited before it was running");
        })
        .await
        .expect("sluice started in time");
        // Drain the log so the pipe never fills.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let http = reqwest::Client::new();
        let base = format!("http://{addr}");
        for _ in 0..600 {
            let ok = http.get(format!("{base}/readyz")).send().await;
            if ok.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Server {
            child,
            base,
            intake: format!("bench.{t}.requests"),
            tag: t.to_owned(),
            http,
            dir,
            extra: extra.to_owned(),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Resident memory of the server process, KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }

    /// `POST /v1/streams` with a demo request; returns the stream id.
    pub async fn request(&self, payload: Value) -> String {
        let body = json!({"type": "demo:stream_ticks:v1:requested", "payload": payload});
        let r = self
            .http
            .post(format!("{}/v1/streams", self.base))
            .json(&body)
            .send()
            .await
            .expect("POST /v1/streams");
        assert_eq!(r.status(), 202, "POST /v1/streams");
        r.json::<Value>().await.expect("json")["stream_id"]
            .as_str()
            .expect("stream_id")
            .to_owned()
    }

    /// `GET /v1/streams/{id}`.
    pub async fn status(&self, id: &str) -> Value {
        self.http
            .get(format!("{}/v1/streams/{id}", self.base))
            .send()
            .await
            .expect("status")
            .json()
            .await
            .expect("json")
    }

    /// An SSE subscription from the start (or after `after`).
    pub async fn sse(&self, id: &str, after: Option<i64>) -> Events {
        sse(&self.http, &self.base, id, after).await
    }

    /// The value of a metric line starting with `series` (name and labels), or 0.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    }

    /// SIGTERM, wait for exit, and start again on the same store and topics.
    pub async fn restart(mut self) -> (Duration, Server) {
        let term = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        assert!(term.is_ok_and(|s| s.success()), "SIGTERM sent");
        let _ = tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await;
        let started = std::time::Instant::now();
        let next = Server::start_in(self.dir, &self.extra, &self.tag).await;
        (started.elapsed(), next)
    }

    /// Stops the server (SIGKILL: nothing it holds is needed afterwards) and deletes its topics,
    /// so a run does not leave thousands of topics on the broker.
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        crate::raw::delete_prefixed(&format!("bench.{}.", self.tag)).await;
    }
}

/// Resident memory of a process, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// An SSE subscription to `id` on `base`.
pub async fn sse(http: &reqwest::Client, base: &str, id: &str, after: Option<i64>) -> Events {
    let mut req = http.get(format!("{base}/v1/streams/{id}/events"));
    if let Some(a) = after {
        req = req.header("Last-Event-ID", a.to_string());
    }
    let resp = req.send().await.expect("GET events");
    assert_eq!(resp.status(), 200, "GET events");
    Box::pin(
        resp.bytes_stream()
            .eventsource()
            .filter_map(|e| async move {
                let e = e.ok()?;
                Some((e.event, e.id.parse().ok(), e.data))
            }),
    )
}
