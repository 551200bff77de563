//! Client-surface delivery latency. One kafka-sourced stream receives R records/s, produced open
//! loop: each record carries the time it was due, and latency is measured from that, so a stalled
//! producer cannot hide queueing. Three receivers watch the same records in the same run:
//!
//! * raw: an rdkafka consumer of the source topic (the baseline: what Kafka alone costs);
//! * SSE: `GET /v1/streams/{id}/events`;
//! * gRPC: `SubscribeEvents` through a tonic client.
//!
//! The run repeats and reports each repetition and the spread.
//! `cargo bench --bench surfaces` (500 records/s, 20 s, 3 runs) or `-- --quick` (seconds).
//! Writes `target/bench/surfaces.json` and `target/bench/surfaces.md`.

mod support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Message};
use serde_json::{json, Value};
use sluice::edge::grpc::proto::streams_client::StreamsClient;
use sluice::edge::grpc::proto::SubscribeRequest;
use tokio::sync::mpsc;

use support::*;

/// One run's histograms, in microseconds.
struct Run {
    raw: Histogram<u64>,
    sse: Histogram<u64>,
    grpc: Histogram<u64>,
}

/// Collects `total` latencies from `rx` into a histogram, or fails after a minute of silence.
async fn gather(mut rx: mpsc::UnboundedReceiver<i64>, total: u64, what: &str) -> Histogram<u64> {
    let mut h = Histogram::<u64>::new(3).unwrap();
    while h.len() < total {
        match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
            Ok(Some(lat)) => h.record(lat.max(0) as u64).unwrap(),
            _ => panic!("{what}: {} of {total} records arrived", h.len()),
        }
    }
    h
}

async fn run_once(rate: u64, secs: u64) -> Run {
    let topic = format!("bench.src.{}.lat", tag());
    create_topic(&topic, 1).await;
    let app = run_sluice(kafka_sourced(&topic)).await;
    let id = app
        .request(json!({"type": "bench:stream_messages:v1:requested",
                        "payload": {"conversation_id": "conv-0"}}))
        .await;
    while !app.cursor(&id).await {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let total = rate * secs;

    // SSE: live once `started` arrived.
    let (sse_tx, sse_rx) = mpsc::unbounded_channel();
    let mut sse = Box::pin(app.sse(&id).await);
    while let Some((event, _)) = sse.next().await {
        if event.ends_with(":started") {
            break;
        }
    }
    let sse_reader = tokio::spawn(async move {
        while let Some((event, data)) = sse.next().await {
            if event.ends_with(":stream") {
                let lat = micros_now() - data["payload"]["sent_us"].as_i64().unwrap_or(0);
                if sse_tx.send(lat).is_err() {
                    return;
                }
            }
        }
    });

    // gRPC: the same, through tonic.
    let (grpc_tx, grpc_rx) = mpsc::unbounded_channel();
    let mut client = StreamsClient::connect(app.grpc.clone()).await.unwrap();
    let mut grpc = client
        .subscribe_events(SubscribeRequest {
            stream_id: id.clone(),
            last_event_id: None,
            event_types: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    while let Some(e) = grpc.message().await.unwrap() {
        if e.r#type.ends_with(":started") {
            break;
        }
    }
    let grpc_reader = tokio::spawn(async move {
        while let Ok(Some(e)) = grpc.message().await {
            if !e.r#type.ends_with(":stream") {
                continue;
            }
            let sent = e
                .payload
                .as_ref()
                .and_then(|p| match &p.kind {
                    Some(prost_types::value::Kind::StructValue(s)) => s.fields.get("sent_us"),
                    _ => None,
                })
                .and_then(|v| match v.kind {
                    Some(prost_types::value::Kind::NumberValue(n)) => Some(n as i64),
                    _ => None,
                })
                .unwrap_or(0);
            if grpc_tx.send(micros_now() - sent).is_err() {
                return;
            }
        }
    });

    // Raw: the source topic itself, assigned at offset 0 (the topic is new and empty).
    let (raw_tx, raw_rx) = mpsc::unbounded_channel();
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("bench-{}", tag()))
        .set("fetch.wait.max.ms", "50")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, rdkafka::Offset::Offset(0))
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let raw_reader = tokio::spawn(async move {
        loop {
            let m = match consumer.recv().await {
                Ok(m) => m,
                Err(e) if sluice::kafka::is_transient(&e) => continue,
                Err(_) => return,
            };
            let v: Value =
                serde_json::from_slice(m.payload().unwrap_or_default()).unwrap_or_default();
            if raw_tx
                .send(micros_now() - v["sent_us"].as_i64().unwrap_or(0))
                .is_err()
            {
                return;
            }
        }
    });

    let started = Instant::now();
    produce_open_loop(&topic, &["conv-0".to_owned()], rate, secs).await;
    let (raw, sse, grpc) = tokio::join!(
        gather(raw_rx, total, "raw"),
        gather(sse_rx, total, "SSE"),
        gather(grpc_rx, total, "gRPC")
    );
    eprintln!(
        "run of {total} records in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    for r in [sse_reader, grpc_reader, raw_reader] {
        r.abort();
    }
    app.stop().await;
    Run { raw, sse, grpc }
}

fn spread(runs: &[Run], pick: fn(&Run) -> &Histogram<u64>, q: f64) -> String {
    let v: Vec<f64> = runs.iter().map(|r| pct(pick(r), q)).collect();
    let min = v.iter().cloned().fold(f64::INFINITY, f64::min);
    let max = v.iter().cloned().fold(0.0, f64::max);
    format!("{min:.2}–{max:.2}")
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rate, secs, repeat) = if quick { (100, 2, 1) } else { (500, 20, 3) };
    let mut runs = Vec::new();
    for i in 0..repeat {
        eprintln!(
            "surfaces: run {} of {repeat}: {rate} records/s for {secs} s",
            i + 1
        );
        runs.push(run_once(rate, secs).await);
    }
    let mut md = format!(
        "mode: {}; one stream, {rate} records/s for {secs} s, open loop, {repeat} run(s)\n\n\
         | run | raw consumer (baseline) | SSE client | gRPC client |\n|---|---|---|---|\n",
        if quick { "quick" } else { "full" }
    );
    let mut json_runs = Vec::new();
    for (i, r) in runs.iter().enumerate() {
        md.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            i + 1,
            lat(&r.raw),
            lat(&r.sse),
            lat(&r.grpc)
        ));
        json_runs.push(json!({
            "raw": {"p50_ms": pct(&r.raw, 0.5), "p99_ms": pct(&r.raw, 0.99)},
            "sse": {"p50_ms": pct(&r.sse, 0.5), "p99_ms": pct(&r.sse, 0.99)},
            "grpc": {"p50_ms": pct(&r.grpc, 0.5), "p99_ms": pct(&r.grpc, 0.99)},
        }));
    }
    for (name, q) in [("p50 spread (ms)", 0.5), ("p99 spread (ms)", 0.99)] {
        md.push_str(&format!(
            "| {name} | {} | {} | {} |\n",
            spread(&runs, |r| &r.raw, q),
            spread(&runs, |r| &r.sse, q),
            spread(&runs, |r| &r.grpc, q)
        ));
    }
    print!("{md}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(
        dir.join("surfaces.json"),
        serde_json::to_string_pretty(&json!({"rate": rate, "secs": secs, "runs": json_runs}))
            .unwrap(),
    );
    let _ = std::fs::write(dir.join("surfaces.md"), md);
}
