//! Scale-out benchmark: real `sluice` processes on the local broker, each figure beside a raw
//! rdkafka baseline measured in the same run. `cargo bench --bench cluster` (3 runs) or
//! `-- --quick` (one small run). Writes `target/bench/cluster.json` and `target/bench/cluster.md`.
//!
//! * C1/C2 throughput: 40 demo streams of N chunks at full speed (1 chunk per ms each) through one
//!   instance, then two; chunks/s from the first request to the last terminal event. Baseline: the
//!   same bytes produced by one idempotent rdkafka producer to 40 single-partition topics.
//! * Resume: two instances; a subscriber on the survivor follows a stream of the other; SIGKILL the
//!   owner; the time from the kill to the first new event of that stream (dominated by the group's
//!   session timeout, here 6 s, the broker's minimum).
//! * Restore: K synthetic stream records in a changelog topic; a new instance starts on it; records/s
//!   until its follower applied all of them. Baseline: a raw consumer reading the same topic.

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureRecord;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use support::*;

const PARTITIONS: i32 = 4;

struct Proc {
    child: Child,
    base: String,
}

fn config(dir: &Path, tag: &str, name: &str, changelog: &str) -> PathBuf {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    let path = d.join("settings.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[http]
listen = "127.0.0.1:0"
[grpc]
listen = "127.0.0.1:0"
[kafka]
brokers = "{b}"
stream_topic_prefix = "bench.cl.{tag}.stream."
[intake]
topic = "bench.cl.{tag}.requests"
dlq_topic = "bench.cl.{tag}.dlq"
group_id = "bench-cl-{tag}"
changelog_topic = "{changelog}"
topic_partitions = {PARTITIONS}
session_timeout = "6s"
[provider]
max_concurrent_streams = 200
[store]
path = "{db}"
[log]
format = "json"
level = "info"
[limits]
requests_per_second = 100000
request_burst = 100000
"#,
            b = brokers(),
            db = d.join("db").display()
        ),
    )
    .unwrap();
    path
}

async fn spawn(config: &Path) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--config")
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn sluice");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = tokio::time::timeout(Duration::from_secs(60), async {
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
    .expect("sluice start");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Proc {
        child,
        base: format!("http://{addr}"),
    }
}

async fn get(url: &str) -> String {
    reqwest::get(url).await.unwrap().text().await.unwrap()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn wait_spread(procs: &[&Proc]) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut owned = Vec::new();
        for p in procs {
            owned.push(metric(
                &get(&format!("{}/metrics", p.base)).await,
                "sluice_partitions_owned",
            ));
        }
        if owned.iter().sum::<f64>() == f64::from(PARTITIONS) && owned.iter().all(|o| *o > 0.0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "partitions never spread: {owned:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn request(p: &Proc, payload: Value) -> String {
    let r: Value = reqwest::Client::new()
        .post(format!("{}/v1/streams", p.base))
        .json(&json!({"type": "demo:stream_ticks:v1:requested", "payload": payload}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["stream_id"].as_str().unwrap().to_owned()
}

async fn finished(p: &Proc, id: &str) -> bool {
    let st: Value = serde_json::from_str(&get(&format!("{}/v1/streams/{id}", p.base)).await)
        .unwrap_or_default();
    st["state"] == "success"
}

/// C1/C2: chunks/s of `streams` streams of `count` chunks through `n` instances.
async fn throughput(n: usize, streams: usize, count: u64) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let t = tag();
    let changelog = format!("bench.cl.{t}.state");
    let mut procs = Vec::new();
    for i in 0..n {
        procs.push(spawn(&config(dir.path(), &t, &i.to_string(), &changelog)).await);
    }
    wait_spread(&procs.iter().collect::<Vec<_>>()).await;
    let started = Instant::now();
    let mut ids = Vec::new();
    for i in 0..streams {
        ids.push(
            request(
                &procs[i % n],
                json!({"count": count, "interval_ms": 1, "checkpoint_every": 100}),
            )
            .await,
        );
    }
    for id in &ids {
        while !finished(&procs[0], id).await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let rate = (streams as u64 * count) as f64 / started.elapsed().as_secs_f64();
    for p in procs {
        drop(p.child);
    }
    rate
}

/// Baseline: the same number of chunk-sized records to `streams` single-partition topics.
async fn raw_throughput(streams: usize, count: u64) -> f64 {
    let t = tag();
    let topics: Vec<String> = (0..streams)
        .map(|i| format!("bench.cl.{t}.raw{i}"))
        .collect();
    for topic in &topics {
        create_topic(topic, 1).await;
    }
    let producer = producer();
    let payload = json!({"type": "demo:stream_ticks:v1:stream", "stream_id": "0123456789abcdef0123",
        "seq": 1, "payload": {"n": 1, "at": 1795879874730678_i64}, "time": "2026-11-28T15:31:14.732404608Z"})
    .to_string();
    let started = Instant::now();
    let mut acks = futures::stream::FuturesUnordered::new();
    for n in 0..count {
        for topic in &topics {
            let key = n.to_string();
            loop {
                let rec = FutureRecord::to(topic).key(&key).payload(&payload);
                match producer.send_result(rec) {
                    Ok(ack) => {
                        acks.push(ack);
                        break;
                    }
                    // Queue full: wait for an acknowledgement, then send again.
                    Err(_) => acks.next().await.unwrap().unwrap().unwrap(),
                };
            }
            while acks.len() > 20_000 {
                acks.next().await.unwrap().unwrap().unwrap();
            }
        }
    }
    while let Some(a) = acks.next().await {
        a.unwrap().unwrap();
    }
    (streams as u64 * count) as f64 / started.elapsed().as_secs_f64()
}

/// Kill → first new event of a moved stream, seen by a subscriber on the survivor.
async fn resume_after_kill() -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let t = tag();
    let changelog = format!("bench.cl.{t}.state");
    let mut a = spawn(&config(dir.path(), &t, "a", &changelog)).await;
    let b = spawn(&config(dir.path(), &t, "b", &changelog)).await;
    wait_spread(&[&a, &b]).await;
    // A stream that runs on A.
    let id = loop {
        let id = request(
            &a,
            json!({"count": 100000, "interval_ms": 20, "checkpoint_every": 10}),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let st: Value =
            serde_json::from_str(&get(&format!("{}/v1/streams/{id}", a.base)).await).unwrap();
        if st["running_here"] == true {
            break id;
        }
    };
    let resp = reqwest::get(format!("{}/v1/streams/{id}/events", b.base))
        .await
        .unwrap();
    let mut events = resp.bytes_stream().eventsource();
    for _ in 0..10 {
        events.next().await.unwrap().unwrap();
    }
    a.child.start_kill().unwrap();
    let killed = Instant::now();
    a.child.wait().await.unwrap();
    let mut last_seq = 0;
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(60), events.next())
            .await
            .expect("an event after the kill")
            .unwrap()
            .unwrap();
        if ev.event.ends_with(":heartbeat") {
            continue;
        }
        let v: Value = serde_json::from_str(&ev.data).unwrap();
        let seq = v["seq"].as_u64().unwrap_or(0);
        // Events before the kill may still be in flight; a new one is past what A stored.
        if killed.elapsed() > Duration::from_millis(200) && seq > last_seq {
            return killed.elapsed().as_secs_f64();
        }
        last_seq = seq;
    }
}

/// Restore: `k` synthetic records in a changelog; records/s applied by a new instance, and by a
/// raw consumer reading the same topic.
async fn restore(k: usize) -> (f64, f64) {
    let t = tag();
    let changelog = format!("bench.cl.{t}.state");
    create_topic(&changelog, PARTITIONS).await;
    let producer = producer();
    let req = sluice::event::Request::parse(
        br#"{"type":"demo:stream_ticks:v1:requested","payload":{"count":10}}"#,
        1024,
    )
    .unwrap();
    let mut acks = futures::stream::FuturesUnordered::new();
    for i in 0..k {
        let mut rec = sluice::store::StreamRecord::new(&format!("r{i}"), req.clone());
        rec.state = sluice::store::StreamState::Success;
        rec.partition = Some((i % PARTITIONS as usize) as i32);
        let bytes = serde_json::to_vec(&rec).unwrap();
        let p = rec.partition.unwrap();
        loop {
            let r = FutureRecord::to(&changelog)
                .key(&rec.stream_id)
                .payload(&bytes)
                .partition(p);
            match producer.send_result(r) {
                Ok(ack) => {
                    acks.push(ack);
                    break;
                }
                Err(_) => acks.next().await.unwrap().unwrap().unwrap(),
            };
        }
        while acks.len() > 10_000 {
            acks.next().await.unwrap().unwrap().unwrap();
        }
    }
    while let Some(a) = acks.next().await {
        a.unwrap().unwrap();
    }
    // Raw baseline: read every record of the topic.
    let raw = {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .set("group.id", "bench-raw")
            .set("isolation.level", "read_committed")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(&changelog, p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let started = Instant::now();
        let mut n = 0;
        while n < k {
            match consumer.poll(Duration::from_secs(10)) {
                Some(Ok(_)) => n += 1,
                Some(Err(e)) if sluice::kafka::is_transient(&e) => {}
                Some(Err(e)) => panic!("baseline consumer: {e}"),
                None => {}
            }
        }
        k as f64 / started.elapsed().as_secs_f64()
    };
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let p = spawn(&config(dir.path(), &t, "r", &changelog)).await;
    loop {
        let applied = metric(
            &get(&format!("{}/metrics", p.base)).await,
            "sluice_changelog_records_applied_total",
        );
        if applied as usize >= k {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "restore of {k} records"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rate = k as f64 / started.elapsed().as_secs_f64();
    drop(p.child);
    (rate, raw)
}

fn median(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (repeats, streams, count, records) = if quick {
        (1, 4, 200, 2_000)
    } else {
        (3, 40, 1_000, 50_000)
    };
    let (mut raw, mut one, mut two, mut resume, mut restored, mut restore_raw) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for r in 0..repeats {
        eprintln!("cluster: run {} of {repeats}", r + 1);
        raw.push(raw_throughput(streams, count).await);
        one.push(throughput(1, streams, count).await);
        two.push(throughput(2, streams, count).await);
        resume.push(resume_after_kill().await);
        let (rate, base) = restore(records).await;
        restored.push(rate);
        restore_raw.push(base);
    }
    let row = |name: &str, v: &mut Vec<f64>, unit: &str, base: Option<f64>| {
        let (m, lo, hi) = median(v);
        let ratio = base.map_or(String::new(), |b| format!("{:.2} × baseline", m / b));
        (
            format!("| {name} | {m:.1} {unit} ({lo:.1}–{hi:.1}) | {ratio} |\n"),
            json!({"value": m, "min": lo, "max": hi, "samples": v.len(), "unit": unit, "baseline": base}),
        )
    };
    let raw_m = median(&mut raw.clone()).0;
    let restore_m = median(&mut restore_raw.clone()).0;
    let rows = [
        row(
            "raw idempotent produce, same bytes (baseline)",
            &mut raw,
            "chunks/s",
            None,
        ),
        row("one instance", &mut one, "chunks/s", Some(raw_m)),
        row("two instances", &mut two, "chunks/s", Some(raw_m)),
        row(
            "resume after SIGKILL of the owner (kill → next chunk)",
            &mut resume,
            "s",
            None,
        ),
        row(
            "raw consumer of the changelog (baseline)",
            &mut restore_raw,
            "records/s",
            None,
        ),
        row(
            "changelog restore by a new instance (start → applied)",
            &mut restored,
            "records/s",
            Some(restore_m),
        ),
    ];
    let mut md = format!(
        "mode: {}; {streams} streams × {count} chunks at 1 per ms each; restore of {records} records; \
         {repeats} run(s), median (min–max)\n\n| figure | value | ratio |\n|---|---|---|\n",
        if quick { "quick" } else { "full" }
    );
    let mut out = serde_json::Map::new();
    for (i, (line, v)) in rows.into_iter().enumerate() {
        md.push_str(&line);
        out.insert(format!("f{i}"), v);
    }
    print!("{md}");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(
        dir.join("cluster.json"),
        serde_json::to_string_pretty(&out).unwrap(),
    );
    let _ = std::fs::write(dir.join("cluster.md"), md);
}
