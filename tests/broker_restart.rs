//! A broker restart in the middle of a stream: producers retry, the handler sees backpressure,
//! nothing is lost, and the stream completes; and a replay read caught by the outage waits for the
//! broker instead of failing. Restarts the local broker with `scripts/kafka.sh`, so it lives in its
//! own test binary (cargo runs test binaries one at a time) and its tests take turns.

mod common;

use std::net::{TcpStream, ToSocketAddrs};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::source::{create_topic, Source};
use common::*;
use rdkafka::Message;
use serde_json::json;
use sluice::kafka::reader::Reader;

/// One outage at a time: the tests of this binary stop the shared broker.
static OUTAGE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn kafka_script(cmd: &str) {
    let script = repo_path("scripts/kafka.sh");
    let status = Command::new("bash")
        .arg(script)
        .arg(cmd)
        .env("SLUICE_KAFKA_BROKERS", brokers())
        // A restart must keep the broker's data: that is what this test is about.
        .env_remove("SLUICE_KAFKA_FRESH")
        .status()
        .expect("run kafka.sh");
    assert!(status.success(), "kafka.sh {cmd} failed");
}

fn reachable() -> bool {
    let addr = brokers()
        .split(',')
        .next()
        .unwrap()
        .to_socket_addrs()
        .unwrap()
        .next()
        .unwrap();
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

/// Starts the broker again even if the test fails half-way, so later test binaries have it.
struct Restart;

impl Drop for Restart {
    fn drop(&mut self) {
        if !reachable() {
            kafka_script("start");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_stream_loses_nothing() {
    let _turn = OUTAGE.lock().await;
    let app = start(|s| s.kafka.message_timeout = Duration::from_secs(120)).await;
    let id = app.request(json!({"type": "demo:stream_ticks:v1:requested", "payload": {"count": 60, "interval_ms": 50}})).await;
    let mut sse = app.sse(&id, None).await;
    let mut seen = Vec::new();
    while seen.len() < 10 {
        seen.push(sse.next_event().await.expect("event before the outage"));
    }
    let _guard = Restart;
    kafka_script("stop");
    assert!(!reachable(), "the broker must really be down for this test to mean anything (is it one kafka.sh did not start?)");
    // Sluice itself must see the outage while the stream is still running: its chunks are then
    // produced into a broker that is down, and wait in the producer's queue.
    let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "not ready while the broker is down");
    let checks: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(checks["checks"]["broker"], false, "{checks}");
    let st = app.status(&id).await;
    assert_eq!(
        st["state"], "running",
        "the outage overlaps the stream: {st}"
    );
    let stored_before = st["last_event_id"].as_i64().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let st = app.status(&id).await;
    assert_eq!(
        st["last_event_id"].as_i64().unwrap(),
        stored_before,
        "nothing can be acknowledged while the broker is down: {st}"
    );
    assert!(
        stored_before < 61,
        "chunks were still to come when the broker went down"
    );
    kafka_script("start");

    // Keep reading; if the response ended during the outage, resume from the last id.
    loop {
        match sse.next_event().await {
            Some(ev) => {
                let done = ["success", "failed", "timeout", "cancelled"].contains(&ev.state());
                seen.push(ev);
                if done {
                    break;
                }
            }
            // Right after the restart the broker may not lead the topic yet: the edge answers
            // 503 `unavailable`, and a client tries again.
            None => {
                let url = app.url(&format!("/v1/streams/{id}/events"));
                let after = seen.last().and_then(|e| e.id);
                let deadline = tokio::time::Instant::now() + WAIT;
                sse = loop {
                    match SseClient::try_connect(&url, after).await {
                        Ok(c) => break c,
                        Err(e) => {
                            assert!(e.starts_with("503"), "reconnect refused: {e}");
                            assert!(tokio::time::Instant::now() < deadline, "reconnect: {e}");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                };
            }
        }
    }
    assert_complete(&seen, 60, "success");
    let fresh = app.sse(&id, None).await.collect().await;
    assert_complete(&fresh, 60, "success");
    let topic = format!("{}{}", app.settings.kafka.stream_topic_prefix, id);
    let stored: Vec<_> = read_topic(&topic).await.iter().map(json_of).collect();
    assert_topic_exact(&topic, &stored, 60, "success");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_read_caught_by_an_outage_waits_for_the_broker() {
    let _turn = OUTAGE.lock().await;
    // Real stored records: those of a finished demo stream.
    let app = start(|_| {}).await;
    let id = app
        .request(ticks(json!({"count": 9, "interval_ms": 10})))
        .await;
    assert_complete(&app.sse(&id, None).await.collect().await, 9, "success");
    let stored = read_topic(&format!("{}{id}", app.settings.kafka.stream_topic_prefix)).await;
    let mut kafka = app.settings.kafka.clone();
    app.shutdown().await;
    assert_eq!(stored.len(), 11, "started, 9 chunks, success");

    // A plain topic holding the first six; the reader's consumer is left positioned after them.
    let topic = unique("sluice.test.outage-");
    create_topic(&topic, 1).await;
    let source = Source::new(&topic);
    for m in &stored[..6] {
        source.send(None, m.payload().unwrap(), false).await;
    }
    kafka.operation_timeout = Duration::from_secs(60);
    let reader = Arc::new(Reader::new(&kafka).unwrap());
    assert_eq!(reader.read(&topic, 0, 6).await.unwrap().len(), 6);

    let _guard = Restart;
    kafka_script("stop");
    assert!(!reachable(), "the broker is down");
    let rest = tokio::spawn({
        let (reader, topic) = (reader.clone(), topic.clone());
        async move { reader.read(&topic, 6, 11).await }
    });
    // The consumer learns that every connection is gone while the read is waiting.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !rest.is_finished(),
        "the read still waits, not failed, while the broker is down: {:?}",
        if rest.is_finished() {
            Some(rest.await)
        } else {
            None
        }
    );
    kafka_script("start");
    let source = Source::new(&topic);
    for m in &stored[6..] {
        source.send(None, m.payload().unwrap(), false).await;
    }
    let read = rest
        .await
        .unwrap()
        .expect("the read completes once the broker is back");
    let offsets: Vec<i64> = read.iter().map(|e| e.offset).collect();
    assert_eq!(offsets, (6..11).collect::<Vec<_>>());
    assert_eq!(
        read.last().unwrap().envelope.event_type,
        "demo:stream_ticks:v1:success"
    );
}
