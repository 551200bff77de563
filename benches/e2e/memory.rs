//! S5: server memory per live SSE subscriber. The server runs as its own process; the subscribers
//! are held by `benches/s5/hold_sse.py` in another process. The figure is the slope of the
//! server's RSS between two subscriber counts, with the count confirmed by the server (Sluice's
//! `sluice_edge_connections{transport="sse"}`) and by the holder (every connection open and
//! receiving events). Centrifugo, the peer, is measured the same way in the same run.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::server::{rss_kib, Server};

fn script(name: &str) -> PathBuf {
    // Where the package is when the bench runs (a reused build may come from another checkout).
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or(env!("CARGO_MANIFEST_DIR").into()))
        .join("benches/s5")
        .join(name)
}

/// A client process holding SSE connections.
struct Holder {
    child: Child,
    stdin: ChildStdin,
    out: Lines<BufReader<ChildStdout>>,
}

impl Holder {
    /// Opens `n` connections to `url`; returns once all were attempted, asserting all held.
    async fn open(url: &str, n: usize) -> Holder {
        let mut child = Command::new("python3")
            .arg(script("hold_sse.py"))
            .args(["--url", url, "--n", &n.to_string(), "--rate", "2000"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 benches/s5/hold_sse.py");
        let stdin = child.stdin.take().expect("stdin");
        let out = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut h = Holder { child, stdin, out };
        let ready = h.line().await;
        assert_eq!(
            ready["held"],
            json!(n),
            "every subscriber connected: {ready}"
        );
        h
    }

    async fn line(&mut self) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(300), self.out.next_line())
            .await
            .expect("holder answered")
            .expect("holder output")
            .expect("holder alive");
        serde_json::from_str(&line).expect("holder JSON")
    }

    /// Asks for stats until every connection is open and received an event since last asked
    /// (a subscriber first replays the stream's history, then follows it live); asserts that this
    /// happens within three minutes.
    async fn assert_live(&mut self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
        loop {
            tokio::time::sleep(Duration::from_secs(3)).await;
            self.stdin.write_all(b"stats\n").await.expect("stats");
            let stats = self.line().await;
            assert_eq!(stats["held"], json!(n), "subscribers still held: {stats}");
            if stats["live"] == json!(n) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "every subscriber got events within 3 minutes: {stats}"
            );
        }
    }

    async fn close(mut self) {
        drop(self.stdin);
        let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
    }
}

/// The server side of one S5 run.
pub trait Subject {
    /// Its process id.
    fn pid(&self) -> u32;
    /// The URL a subscriber GETs.
    fn url(&self) -> String;
    /// Confirms from the server's side that `n` subscribers are connected.
    async fn confirm(&self, n: usize);
}

impl Subject for (Server, String) {
    fn pid(&self) -> u32 {
        self.0.pid()
    }

    fn url(&self) -> String {
        format!("{}/v1/streams/{}/events", self.0.base, self.1)
    }

    async fn confirm(&self, n: usize) {
        let gauge = self
            .0
            .metric("sluice_edge_connections{transport=\"sse\"}")
            .await;
        assert_eq!(
            gauge as usize, n,
            "sluice_edge_connections{{transport=\"sse\"}}"
        );
    }
}

/// Resident memory per subscriber (KiB) from the RSS at `n1` and at `n2` subscribers.
pub async fn slope(subject: &impl Subject, n1: usize, n2: usize) -> f64 {
    let settle = Duration::from_secs(3);
    let mut first = Holder::open(&subject.url(), n1).await;
    first.assert_live(n1).await;
    first.assert_live(n1).await;
    tokio::time::sleep(settle).await;
    subject.confirm(n1).await;
    let rss1 = rss_kib(subject.pid());
    let mut second = Holder::open(&subject.url(), n2 - n1).await;
    second.assert_live(n2 - n1).await;
    second.assert_live(n2 - n1).await;
    first.assert_live(n1).await;
    tokio::time::sleep(settle).await;
    subject.confirm(n2).await;
    let rss2 = rss_kib(subject.pid());
    first.close().await;
    second.close().await;
    rss2.saturating_sub(rss1) as f64 / (n2 - n1) as f64
}

/// Sluice with one live stream (a chunk per second); returns it and the stream id.
pub async fn sluice() -> (Server, String) {
    let s = Server::start("[edge]\nkeepalive_interval = \"25s\"\n").await;
    let id = s
        .request(json!({"count": 100_000, "interval_ms": 1000, "checkpoint_every": 0}))
        .await;
    (s, id)
}

/// Centrifugo v6.9.1 (memory engine, `uni_sse`), with a publication per second on the channel.
pub struct Centrifugo {
    child: Child,
    port: u16,
    publisher: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Centrifugo {
    /// Starts it; fails loudly when it is not installed.
    pub async fn start() -> Centrifugo {
        let sh = script("centrifugo.sh");
        let out = std::process::Command::new(&sh)
            .arg("install")
            .output()
            .expect("benches/s5/centrifugo.sh install");
        assert!(
            out.status.success(),
            "Centrifugo is needed for S5: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bin = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .expect("binary path")
            .trim()
            .to_owned();
        let dir = tempfile::tempdir().expect("tempdir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let ok = std::process::Command::new(&sh)
            .arg("config")
            .arg(dir.path())
            .arg(port.to_string())
            .status()
            .expect("centrifugo.sh config");
        assert!(ok.success(), "centrifugo.sh config");
        let child = Command::new(bin)
            .arg("--config")
            .arg(dir.path().join("config.json"))
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start centrifugo");
        let http = reqwest::Client::new();
        let publish = move |http: reqwest::Client| async move {
            http.post(format!("http://127.0.0.1:{port}/api/publish"))
                .header("X-API-Key", "bench-api-key")
                .json(&json!({"channel": "bench", "data": {"n": 1, "text": "tick"}}))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        };
        let mut up = false;
        for _ in 0..200 {
            if publish(http.clone()).await {
                up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(up, "Centrifugo answered its publish API");
        let publisher = tokio::spawn(async move {
            loop {
                publish(http.clone()).await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        Centrifugo {
            child,
            port,
            publisher,
            _dir: dir,
        }
    }

    /// Stops it.
    pub async fn stop(mut self) {
        self.publisher.abort();
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

impl Subject for Centrifugo {
    fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    fn url(&self) -> String {
        format!(
            "http://127.0.0.1:{}/connection/uni_sse?cf_connect=%7B%22subs%22%3A%7B%22bench%22%3A%7B%7D%7D%7D",
            self.port
        )
    }

    async fn confirm(&self, _n: usize) {
        // Centrifugo's count is confirmed by the holder: every connection open and live.
    }
}
