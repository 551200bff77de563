//! Exactly-once for configured sources under SIGKILL, with the real binary: Kafka-sourced streams
//! while their source topic is being written, and HTTP-sourced streams while their upstream is
//! streaming. After restarts on the same store, every stream topic holds each source record (or
//! upstream item) exactly once, in order, and one terminal event last.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::post;
use common::process::{spawn, topic_prefix, write_config, Proc};
use common::source::{create_topic, Source};
use common::*;
use serde_json::{json, Value};

async fn wait_cursor(p: &Proc, id: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while p.status(id).await["cursor"].is_null() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id} recorded no start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for every stream to succeed; asserts the kills interrupted at least one of them.
async fn wait_finished(p: &Proc, ids: &[String]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut resumed = 0;
    for id in ids {
        loop {
            let st = p.status(id).await;
            if st["state"] != "running" && st["state"] != "pending" {
                assert_eq!(st["state"], "success", "{id}: {st}");
                resumed += usize::from(st["runs"].as_u64().unwrap_or(0) > 1);
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{id}: {st}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(
        resumed > 0,
        "no stream was interrupted: the kills did not overlap the work"
    );
}

fn payloads(topic: &str, events: &[Value], n: usize) -> Vec<Value> {
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (0..=n as u64 + 1).collect::<Vec<_>>(),
        "{topic}: each seq once"
    );
    let last = events.last().unwrap();
    assert!(
        last["type"].as_str().unwrap().ends_with(":success"),
        "{topic}: {last}"
    );
    events[1..=n].iter().map(|e| e["payload"].clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_sourced_streams_survive_sigkill_with_every_record_once() {
    let seed = seed();
    eprintln!("seed {seed} (replay with SLUICE_CHAOS_SEED={seed})");
    let source = format!("{}.feed", unique("chaos"));
    create_topic(&source, 3).await;
    let dir = tempfile::tempdir().unwrap();
    // Keyed streams read one partition each; the unkeyed one interleaves all three, in an order
    // that differs between runs, so only resuming after what is stored keeps it exact.
    let handler = format!(
        "[handlers.\"feed:stream_items\"]\nkind = \"kafka\"\ntopic = \"{source}\"\nkey = \"{{k}}\"\ncheckpoint_every = 3\n\
         [handlers.\"feed:stream_all\"]\nkind = \"kafka\"\ntopic = \"{source}\"\nend_header = \"never\"\nidle_timeout = \"3s\"\ncheckpoint_every = 5\n"
    );
    let config = write_config(dir.path(), "max_attempts = 50", &handler);
    let prefix = topic_prefix(&config);
    let mut p = spawn(&config).await;
    let keys: Vec<String> = (0..6).map(|i| format!("key-{i}")).collect();
    let mut ids = Vec::new();
    for k in &keys {
        let id = unique("feed-");
        p.request(
            json!({"type": "feed:stream_items:v1:requested", "stream_id": id, "payload": {"k": k}}),
        )
        .await;
        ids.push(id);
    }
    let all = unique("all-");
    p.request(json!({"type": "feed:stream_all:v1:requested", "stream_id": all}))
        .await;
    for id in ids.iter().chain([&all]) {
        wait_cursor(&p, id).await;
    }
    let per_key = 150;
    let writer = {
        let (source, keys) = (source.clone(), keys.clone());
        tokio::spawn(async move {
            let src = Source::new(&source);
            for i in 0..per_key {
                for k in &keys {
                    let v = json!({"k": k, "i": i}).to_string();
                    src.send(Some(k), v.as_bytes(), i == per_key - 1).await;
                }
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };
    let mut rng = seed;
    for _ in 0..3 {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        tokio::time::sleep(Duration::from_millis(100 + (rng >> 33) % 900)).await;
        p.kill().await;
        p = spawn(&config).await;
    }
    writer.await.unwrap();
    wait_finished(&p, &ids).await;
    for (id, k) in ids.iter().zip(&keys) {
        let topic = format!("{prefix}{id}");
        let events: Vec<Value> = read_topic(&topic).await.iter().map(json_of).collect();
        let got = payloads(&topic, &events, per_key);
        let want: Vec<Value> = (0..per_key).map(|i| json!({"k": k, "i": i})).collect();
        assert_eq!(got, want, "{topic}: every record of {k} once, in order");
    }
    wait_finished(&p, std::slice::from_ref(&all)).await;
    let topic = format!("{prefix}{all}");
    let events: Vec<Value> = read_topic(&topic).await.iter().map(json_of).collect();
    let mut seen = std::collections::BTreeMap::new();
    for (at, e) in events.iter().enumerate() {
        if e["type"].as_str().unwrap().ends_with(":stream") {
            let k = (
                e["payload"]["k"].as_str().unwrap().to_owned(),
                e["payload"]["i"].as_u64().unwrap(),
            );
            seen.entry(k)
                .or_insert_with(Vec::new)
                .push((at, e["metadata"]["source"].clone()));
        }
    }
    let dups: Vec<_> = seen.iter().filter(|(_, v)| v.len() > 1).take(5).collect();
    let missing = per_key * keys.len() - seen.len();
    assert!(
        dups.is_empty() && missing == 0,
        "{topic}: {missing} missing, duplicated: {dups:?}"
    );
    let got = payloads(&topic, &events, per_key * keys.len());
    for k in &keys {
        let of_k: Vec<&Value> = got.iter().filter(|v| v["k"] == k.as_str()).collect();
        let want: Vec<Value> = (0..per_key).map(|i| json!({"k": k, "i": i})).collect();
        assert_eq!(
            of_k,
            want.iter().collect::<Vec<_>>(),
            "{topic}: {k} once each, in partition order"
        );
    }
    p.kill().await;
}

/// NDJSON items `after+1 ..= 120`, one every 15 ms, continuing after `Last-Event-ID`.
async fn slow_items(headers: HeaderMap) -> impl IntoResponse {
    let after: u64 = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let stream = futures::stream::unfold(after + 1, |n| async move {
        if n > 120 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
        Some((
            Ok::<_, std::io::Error>(format!("{}\n", json!({"id": n}))),
            n + 1,
        ))
    });
    (
        [("content-type", "application/x-ndjson")],
        Body::from_stream(stream),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_sourced_streams_survive_sigkill_with_every_item_once() {
    let seed = seed();
    eprintln!("seed {seed} (replay with SLUICE_CHAOS_SEED={seed})");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let upstream = axum::Router::new().route("/items/{q}", post(slow_items));
    tokio::spawn(async move { axum::serve(listener, upstream).await.unwrap() });
    let dir = tempfile::tempdir().unwrap();
    let handler = format!(
        "[handlers.\"relay:stream_items\"]\nkind = \"http\"\nurl = \"http://{addr}/items/{{q}}\"\ncursor = \"id\"\nretries = 10\n"
    );
    let config = write_config(dir.path(), "max_attempts = 50", &handler);
    let prefix = topic_prefix(&config);
    let mut p = spawn(&config).await;
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(
            p.request(json!({"type": "relay:stream_items:v1:requested", "payload": {"q": i}}))
                .await,
        );
    }
    let mut rng = seed;
    for _ in 0..2 {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        tokio::time::sleep(Duration::from_millis(200 + (rng >> 33) % 800)).await;
        p.kill().await;
        p = spawn(&config).await;
    }
    wait_finished(&p, &ids).await;
    for id in &ids {
        let topic = format!("{prefix}{id}");
        let events: Vec<Value> = read_topic(&topic).await.iter().map(json_of).collect();
        let got = payloads(&topic, &events, 120);
        let want: Vec<Value> = (1..=120).map(|n| json!({"id": n})).collect();
        assert_eq!(got, want, "{topic}: every item once, in order");
    }
    p.kill().await;
}
