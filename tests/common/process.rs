//! The real `sluice` binary as a child process: a settings file with unique topics, start-up
//! detection from its JSON log, and SIGKILL or SIGTERM.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::{brokers, require_kafka, unique, wait_ready, SseClient, WAIT};

/// A running `sluice` process.
pub struct Proc {
    pub child: Child,
    pub base: String,
    pub http: reqwest::Client,
}

/// Writes a settings file for a process with its store in `dir`, unique topics, and `extra`
/// TOML appended (sections not named below).
pub fn write_config(dir: &Path, provider: &str, extra: &str) -> PathBuf {
    write_config_in(dir, &unique("d"), "topic_partitions = 1", provider, extra)
}

/// Settings files for `n` instances of one cluster: the same topics and consumer group, an intake
/// topic of `partitions` partitions, a 6 s group session (the broker's default minimum; a dead
/// instance's partitions move after it), and a store of their own each (in `dir/<i>`).
pub fn write_cluster_configs(
    dir: &Path,
    n: usize,
    partitions: i32,
    provider: &str,
    extra: &str,
) -> Vec<PathBuf> {
    let tag = unique("c");
    (0..n)
        .map(|i| {
            let d = dir.join(i.to_string());
            std::fs::create_dir_all(&d).unwrap();
            let intake = format!("topic_partitions = {partitions}\nsession_timeout = \"6s\"");
            write_config_in(&d, &tag, &intake, provider, extra)
        })
        .collect()
}

fn write_config_in(dir: &Path, tag: &str, intake: &str, provider: &str, extra: &str) -> PathBuf {
    let path = dir.join("settings.toml");
    let toml = format!(
        r#"
[http]
listen = "127.0.0.1:0"
[grpc]
listen = "127.0.0.1:0"
[kafka]
brokers = "{brokers}"
stream_topic_prefix = "sluice.test.{tag}.stream."
[intake]
topic = "sluice.test.{tag}.requests"
dlq_topic = "sluice.test.{tag}.dlq"
group_id = "sluice-test-{tag}"
{intake}
[provider]
heartbeat_interval = "200ms"
{provider}
[store]
path = "{db}"
[log]
format = "json"
level = "info"
[shutdown]
grace_period = "5s"
{extra}
"#,
        brokers = brokers(),
        db = dir.join("db").display()
    );
    std::fs::write(&path, toml).unwrap();
    path
}

/// The first string value of `key` written into `config`.
pub fn config_str(config: &Path, key: &str) -> String {
    let text = std::fs::read_to_string(config).unwrap();
    let line = text
        .lines()
        .find(|l| l.split('=').next().map(str::trim) == Some(key))
        .unwrap_or_else(|| panic!("{key} in {}", config.display()));
    line.split('"').nth(1).unwrap().to_owned()
}

/// The stream topic prefix written into `config`.
pub fn topic_prefix(config: &Path) -> String {
    config_str(config, "stream_topic_prefix")
}

/// Starts the binary and waits until its edge answers and `/readyz` is ready.
pub async fn spawn(config: &Path) -> Proc {
    require_kafka();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--config")
        .arg(config)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn sluice");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if v["message"] == "sluice is running" {
                    return v["addr"].as_str().unwrap().to_owned();
                }
            }
        }
        panic!("sluice exited before it was running");
    })
    .await
    .expect("sluice start in time");
    // Keep draining the log so the pipe never fills; `SLUICE_TEST_LOG=<file>` keeps a copy.
    let mut copy = std::env::var("SLUICE_TEST_LOG").ok().and_then(|path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .ok()
    });
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(f) = copy.as_mut() {
                use std::io::Write;
                let _ = writeln!(f, "{line}");
            }
        }
    });
    let p = Proc {
        child,
        base: format!("http://{addr}"),
        http: reqwest::Client::new(),
    };
    wait_ready(&p.http, &p.base).await;
    p
}

impl Proc {
    /// `POST /v1/streams`, expecting 202; returns the stream id.
    pub async fn request(&self, body: Value) -> String {
        let r = self
            .http
            .post(format!("{}/v1/streams", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "POST /v1/streams");
        r.json::<Value>().await.unwrap()["stream_id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// `GET /v1/streams/{id}` as JSON.
    pub async fn status(&self, id: &str) -> Value {
        self.http
            .get(format!("{}/v1/streams/{id}", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// An SSE subscription.
    pub async fn sse(&self, id: &str, after: Option<i64>) -> SseClient {
        SseClient::connect(&format!("{}/v1/streams/{id}/events", self.base), after).await
    }

    /// An SSE subscription, or the refusal's status and body.
    pub async fn try_sse(&self, id: &str, after: Option<i64>) -> Result<SseClient, String> {
        SseClient::try_connect(&format!("{}/v1/streams/{id}/events", self.base), after).await
    }

    /// SIGKILL, and wait for the process to be gone.
    pub async fn kill(mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }

    /// Sends `signal` (a `kill` name such as `STOP` or `CONT`) to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("process running").to_string();
        let ok = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{signal} {pid}");
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}
