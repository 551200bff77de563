//! Crash and restart: the real `sluice` binary as a child process against the real broker,
//! killed with SIGKILL or stopped with SIGTERM mid-stream, then restarted on the same store.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

struct Proc {
    child: Child,
    base: String,
}

fn write_config(dir: &Path) -> PathBuf {
    let tag = unique("d");
    let path = dir.join("settings.toml");
    let toml = format!(
        r#"
[http]
listen = "127.0.0.1:0"
[kafka]
brokers = "{brokers}"
stream_topic_prefix = "sluice.test.{tag}."
[intake]
topic = "sluice.test.{tag}.requests"
dlq_topic = "sluice.test.{tag}.dlq"
group_id = "sluice-test-{tag}"
topic_partitions = 1
[provider]
heartbeat_interval = "200ms"
[store]
path = "{db}"
[log]
format = "json"
level = "info"
[shutdown]
grace_period = "5s"
"#,
        brokers = brokers(),
        db = dir.join("db").display()
    );
    std::fs::write(&path, toml).unwrap();
    path
}

async fn spawn(config: &Path) -> Proc {
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
    // Keep draining the log so the pipe never fills.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let p = Proc {
        child,
        base: format!("http://{addr}"),
    };
    wait_ready(&reqwest::Client::new(), &p.base).await;
    p
}

async fn request(p: &Proc, body: Value) -> String {
    let r = reqwest::Client::new()
        .post(format!("{}/v1/streams", p.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    r.json::<Value>().await.unwrap()["stream_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn sse(p: &Proc, id: &str, after: Option<i64>) -> SseClient {
    SseClient::connect(&format!("{}/v1/streams/{id}/events", p.base), after).await
}

async fn status(p: &Proc, id: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{}/v1/streams/{id}", p.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_then_restart_stores_each_seq_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let mut p1 = spawn(&config).await;
    // Checkpoints every 4 chunks, so the kill lands between produced chunks and their checkpoint.
    let id = request(
        &p1,
        json!({"type": "demo:stream_ticks:v1:requested",
        "payload": {"count": 40, "interval_ms": 30, "checkpoint_every": 4}}),
    )
    .await;
    let mut live = sse(&p1, &id, None).await;
    let mut seen = 0;
    while seen < 11 {
        if live.next_event().await.expect("live event").state() == "stream" {
            seen += 1;
        }
    }
    p1.child.start_kill().unwrap();
    p1.child.wait().await.unwrap();
    drop(live);

    let p2 = spawn(&config).await;
    let events = sse(&p2, &id, None).await.collect().await;
    assert_complete(&events, 40, "success");
    let st = status(&p2, &id).await;
    assert_eq!(st["attempts"], 2, "resumed once: {st}");
    let metrics = reqwest::get(format!("{}/metrics", p2.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"sluice_streams_resumed_total{action="stream_ticks",service="demo"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_streams_over_and_sse_resumes_with_last_event_id() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let p1 = spawn(&config).await;
    let id = request(
        &p1,
        json!({"type": "demo:stream_ticks:v1:requested",
        "payload": {"count": 30, "interval_ms": 30, "checkpoint_every": 1}}),
    )
    .await;
    let mut live = sse(&p1, &id, None).await;
    let mut before = Vec::new();
    while before.len() < 9 {
        before.push(live.next_event().await.expect("live event"));
    }
    let pid = p1.child.id().unwrap().to_string();
    let status_code = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status_code.success());
    // The SSE response ends cleanly, without a terminal event.
    let tail = live.collect().await;
    assert!(tail
        .iter()
        .all(|e| !["success", "failed", "timeout", "cancelled"].contains(&e.state())));
    before.extend(tail);
    let mut p1 = p1;
    let exit = tokio::time::timeout(WAIT, p1.child.wait())
        .await
        .expect("exit in time")
        .unwrap();
    assert!(exit.success(), "graceful exit: {exit:?}");

    let p2 = spawn(&config).await;
    let last = before.last().unwrap().id.unwrap();
    let rest = sse(&p2, &id, Some(last)).await.collect().await;
    let mut all = before;
    all.extend(rest);
    assert_complete(&all, 30, "success");
}
