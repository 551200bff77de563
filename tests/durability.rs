//! Crash and restart: the real `sluice` binary as a child process against the real broker,
//! killed with SIGKILL or stopped with SIGTERM mid-stream, then restarted on the same store.

mod common;

use common::process::{self, spawn, write_config};
use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_then_restart_stores_each_seq_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "", "");
    let mut p1 = spawn(&config).await;
    // Checkpoints every 4 chunks, so the kill lands between produced chunks and their checkpoint.
    let id = p1
        .request(json!({"type": "demo:stream_ticks:v1:requested",
        "payload": {"count": 40, "interval_ms": 30, "checkpoint_every": 4}}))
        .await;
    let mut live = p1.sse(&id, None).await;
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
    let events = p2.sse(&id, None).await.collect().await;
    assert_complete(&events, 40, "success");
    let st = p2.status(&id).await;
    // The killed run stored chunks, so the resumed one counts as a first attempt again.
    assert_eq!(st["attempts"], 1, "no attempt held against it: {st}");
    assert_eq!(st["runs"], 2, "resumed once: {st}");
    let metrics = p2.metrics().await;
    assert!(
        metrics.contains(r#"sluice_streams_resumed_total{action="stream_ticks",service="demo"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_streams_over_and_sse_resumes_with_last_event_id() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "", "");
    let p1 = spawn(&config).await;
    let id = p1
        .request(json!({"type": "demo:stream_ticks:v1:requested",
        "payload": {"count": 30, "interval_ms": 30, "checkpoint_every": 1}}))
        .await;
    let mut live = p1.sse(&id, None).await;
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
    let rest = p2.sse(&id, Some(last)).await.collect().await;
    let mut all = before;
    all.extend(rest);
    assert_complete(&all, 30, "success");
}

/// The request that used to abort the process on allocation, and crash-loop it on every restart.
fn poison(stream_id: &str) -> serde_json::Value {
    json!({"type": "demo:stream_ticks:v1:requested", "stream_id": stream_id,
           "payload": {"count": 1, "pad_bytes": 100_000_000_000u64}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_request_over_http_and_kafka_fails_the_stream_and_the_process_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "", "");
    let mut p = spawn(&config).await;
    let over_http = p.request(poison(&unique("poison-http"))).await;
    let over_kafka = unique("poison-kafka");
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let intake = process::config_str(&config, "topic");
    producer
        .send(
            rdkafka::producer::FutureRecord::<(), str>::to(&intake)
                .payload(&poison(&over_kafka).to_string()),
            std::time::Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    for id in [&over_http, &over_kafka] {
        let events = p.sse(id, None).await.collect().await;
        assert_complete(&events, 0, "failed");
        let failed = &events.last().unwrap().data["payload"];
        assert_eq!(failed["code"], "invalid_payload", "{id}: {failed}");
        assert!(
            failed["message"].as_str().unwrap().contains("pad_bytes"),
            "{failed}"
        );
    }
    assert!(p.alive(), "the process survived both poison requests");
    let health = p
        .http
        .get(format!("{}/healthz", p.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    p.kill().await;
}

/// Waits until `p` has durably counted a resumed run of a demo stream (the metric follows the
/// synced record write).
async fn resumed_once(p: &process::Proc) {
    let want = r#"sluice_streams_resumed_total{action="stream_ticks",service="demo"} 1"#;
    wait_until(|| async { p.metrics().await.contains(want) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_runs_keep_dying_before_storing_anything_ends_resume_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "max_attempts = 2", "");
    let mut p = spawn(&config).await;
    // Its first tick is an hour away: every run stores nothing after `started`.
    let later = chrono::Utc::now().timestamp_micros() + 3_600_000_000;
    let id = p
        .request(json!({"type": "demo:stream_ticks:v1:requested",
            "payload": {"count": 3, "interval_ms": 10, "checkpoint_every": 0, "start_at_us": later}}))
        .await;
    let first = p.sse(&id, None).await.next_event().await.expect("started");
    assert_eq!(first.state(), "started");
    assert_eq!(p.status(&id).await["attempts"], 1);
    // The run after the first stored `started` begins a new count; the runs after it stored
    // nothing new, so each one counts, until the third exceeds max_attempts.
    for attempt in [1, 2] {
        p.kill().await;
        p = spawn(&config).await;
        resumed_once(&p).await;
        assert_eq!(p.status(&id).await["attempts"], attempt);
    }
    p.kill().await;
    p = spawn(&config).await;
    let events = p.sse(&id, None).await.collect().await;
    let last = events.last().unwrap();
    assert_eq!(last.state(), "failed");
    assert_eq!(
        last.data["payload"]["code"], "resume_exhausted",
        "{:?}",
        last.data
    );
    assert_eq!(events.len(), 2, "started, then failed: {events:?}");
    assert_gapless_seqs(&events, "no seq repeated or skipped");
    assert_eq!(p.status(&id).await["attempts"], 3);
    p.kill().await;
}
