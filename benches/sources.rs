//! Stream-source benchmark, each figure beside its raw baseline in the same run and on the same
//! broker. `cargo bench --bench sources` (full) or `cargo bench --bench sources -- --quick`.
//! Writes `target/bench/sources.json` and `target/bench/sources.md`.
//!
//! * K1 source record produced → SSE client, with N concurrent kafka-sourced streams on one source
//!   topic at R records/s in total. Open loop: each record carries its intended send time, and
//!   latency is measured from that, so a stalled producer cannot hide queueing.
//! * K0 baseline: raw rdkafka produce → consume of the same bytes, same topic layout and rate.
//! * H1 NDJSON relay: lines/s through one HTTP-sourced stream (upstream → SSE client), against
//!   H0, the same upstream read directly by an HTTP client.

mod support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Message};
use serde_json::{json, Value};
use sluice::settings::{HttpSourceSettings, SourceSettings};

use support::*;

/// K0: raw produce → consume latency of the same records on the same layout.
async fn k0(keys: &[String], rate: u64, secs: u64) -> Histogram<u64> {
    let topic = format!("bench.src.{}.raw", tag());
    create_topic(&topic, 4).await;
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("bench-{}", tag()))
        .set("auto.offset.reset", "latest")
        .set("fetch.wait.max.ms", "50")
        .create()
        .unwrap();
    // Assigned at explicit offsets, as Sluice's shared tail is: no group join, no offset lookup.
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..4 {
        tpl.add_partition_offset(&topic, p, rdkafka::Offset::Offset(0))
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let total = rate * secs;
    let reader = tokio::spawn(async move {
        let mut h = Histogram::<u64>::new(3).unwrap();
        let mut read = 0;
        while read < total {
            let m = match consumer.recv().await {
                Ok(m) => m,
                Err(e) if sluice::kafka::is_transient(&e) => continue,
                Err(e) => panic!("baseline consumer: {e}"),
            };
            read += 1;
            let v: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            let lat = micros_now() - v["sent_us"].as_i64().unwrap();
            h.record(lat.max(0) as u64).unwrap();
        }
        h
    });
    produce_open_loop(&topic, keys, rate, secs).await;
    reader.await.unwrap()
}

/// K1: N kafka-sourced streams, one key each, R records/s in total; source → SSE latency.
async fn k1(keys: &[String], rate: u64, secs: u64) -> Histogram<u64> {
    let topic = format!("bench.src.{}.k1", tag());
    create_topic(&topic, 4).await;
    let app = run_sluice(kafka_sourced(&topic)).await;
    let total = rate * secs;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<i64>();
    let mut ids = Vec::new();
    for k in keys {
        let id = app
            .request(json!({"type": "bench:stream_messages:v1:requested", "payload": {"conversation_id": k}}))
            .await;
        ids.push(id);
    }
    let mut readers = Vec::new();
    for id in &ids {
        while !app.cursor(id).await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut events = Box::pin(app.sse(id).await);
        // A subscriber is live once its replay delivered `started`; production starts after all
        // are live, so the figure is the steady state, not the cost of opening subscriptions.
        while let Some((event, _)) = events.next().await {
            if event.ends_with(":started") {
                break;
            }
        }
        let tx = tx.clone();
        readers.push(tokio::spawn(async move {
            while let Some((event, data)) = events.next().await {
                if event.ends_with(":stream") {
                    let lat = micros_now() - data["payload"]["sent_us"].as_i64().unwrap_or(0);
                    if tx.send(lat).is_err() {
                        return;
                    }
                }
            }
        }));
    }
    eprintln!(
        "K1: {} streams started, each with a live SSE client",
        ids.len()
    );
    produce_open_loop(&topic, keys, rate, secs).await;
    let mut h = Histogram::<u64>::new(3).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while h.len() < total && Instant::now() < deadline {
        if let Ok(Some(lat)) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            h.record(lat.max(0) as u64).unwrap();
        }
    }
    assert_eq!(h.len(), total, "every record reached its SSE client");
    for r in readers {
        r.abort();
    }
    app.stop().await;
    h
}

/// An NDJSON upstream of `lines` small JSON lines, as fast as it can write them.
async fn ndjson_upstream(lines: u64) -> String {
    use axum::body::Body;
    let app = axum::Router::new().route(
        "/lines",
        axum::routing::any(move || async move {
            let stream = futures::stream::iter((1..=lines).map(|n| {
                Ok::<_, std::io::Error>(format!(
                    "{{\"id\":{n},\"text\":\"line {n} of the answer\"}}\n"
                ))
            }));
            (
                [("content-type", "application/x-ndjson")],
                Body::from_stream(stream),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/lines")
}

/// H0 and H1: the upstream read directly, and relayed through one stream to an SSE client.
async fn relay(lines: u64) -> (f64, f64) {
    let url = ndjson_upstream(lines).await;
    let started = Instant::now();
    let body = reqwest::Client::new()
        .post(&url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let direct = lines as f64 / started.elapsed().as_secs_f64();
    assert_eq!(body.iter().filter(|b| **b == b'\n').count() as u64, lines);
    let u = url.clone();
    let app = run_sluice(move |s| {
        s.handlers.sources.insert(
            "bench:stream_answers".into(),
            SourceSettings::Http(HttpSourceSettings {
                url: u,
                method: None,
                format: None,
                cursor: Some("id".into()),
                connect_timeout: Duration::from_secs(5),
                retries: 0,
                poll_interval: None,
                headers: Default::default(),
            }),
        );
    })
    .await;
    let started = Instant::now();
    let id = app
        .request(json!({"type": "bench:stream_answers:v1:requested"}))
        .await;
    let mut events = Box::pin(app.sse(&id).await);
    let mut n = 0;
    while let Some((event, _)) = events.next().await {
        if event.ends_with(":stream") {
            n += 1;
        }
        if event.ends_with(":success") {
            break;
        }
    }
    let relayed = n as f64 / started.elapsed().as_secs_f64();
    assert_eq!(n, lines);
    app.stop().await;
    (direct, relayed)
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (streams, rate, secs, lines) = if quick {
        (20, 100, 2, 2_000)
    } else {
        (1000, 1000, 20, 50_000)
    };
    let keys: Vec<String> = (0..streams).map(|i| format!("conv-{i}")).collect();
    let base = k0(&keys, rate, secs).await;
    let k = k1(&keys, rate, secs).await;
    let (direct, relayed) = relay(lines).await;
    let rows = [
        (
            "K0 raw produce → consume",
            lat(&base),
            String::new(),
            format!("{rate} records/s, 4 partitions, open loop"),
        ),
        (
            "K1 source record → SSE client",
            lat(&k),
            format!(
                "p99 {:.2} × K0",
                pct(&k, 0.99) / pct(&base, 0.99).max(0.001)
            ),
            format!("{streams} kafka-sourced streams, {rate} records/s in total, open loop"),
        ),
        (
            "H0 NDJSON upstream read directly",
            format!("{direct:.0} lines/s"),
            String::new(),
            format!("{lines} lines"),
        ),
        (
            "H1 NDJSON relay, upstream → SSE client",
            format!("{relayed:.0} lines/s"),
            format!("{:.2} × H0", relayed / direct),
            "one stream, a checkpoint per line".into(),
        ),
    ];
    let mut md = format!(
        "mode: {}\n\n| figure | result | vs baseline | parameters |\n|---|---|---|---|\n",
        if quick { "quick" } else { "full" }
    );
    for (name, result, ratio, params) in &rows {
        md.push_str(&format!("| {name} | {result} | {ratio} | {params} |\n"));
    }
    print!("{md}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    let _ = std::fs::create_dir_all(&dir);
    let json: Vec<Value> = rows
        .iter()
        .map(|(n, r, v, p)| json!({"figure": n, "result": r, "vs": v, "parameters": p}))
        .collect();
    let _ = std::fs::write(
        dir.join("sources.json"),
        serde_json::to_string_pretty(&json).unwrap(),
    );
    let _ = std::fs::write(dir.join("sources.md"), md);
}
