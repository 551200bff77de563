//! One repetition of each Sluice figure, driven over HTTP and SSE against a [`Server`].
//! Every chunk the demo handler emits carries its scheduled send time (`at`), so latencies are
//! open loop: time spent behind schedule counts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use rdkafka::producer::FutureRecord;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::raw::PAD;
use crate::server::{sse, Server};
use crate::support::{micros_now, tag};

/// Most HTTP requests the benchmark has in flight while setting streams up.
const SETUP_CONCURRENCY: usize = 64;

/// What one reader saw of its stream.
pub struct Followed {
    chunks: u64,
    started: Option<Instant>,
    ended: Option<Instant>,
    reconnects: u64,
    latency: Histogram<u64>,
}

/// Reads one stream's SSE from the start to its terminal event, as a browser's `EventSource`
/// would: a response that ends early is resumed with `Last-Event-ID`, and counted.
async fn follow(
    http: reqwest::Client,
    base: String,
    id: String,
    deadline: Instant,
    latency: bool,
) -> Followed {
    let mut f = Followed {
        chunks: 0,
        started: None,
        ended: None,
        reconnects: 0,
        latency: Histogram::<u64>::new(3).expect("histogram"),
    };
    let limit = tokio::time::Instant::from_std(deadline);
    let mut after: Option<i64> = None;
    while f.ended.is_none() && Instant::now() < deadline {
        if after.is_some() || f.started.is_some() {
            f.reconnects += 1;
        }
        let mut events = sse(&http, &base, &id, after).await;
        while let Ok(Some((ev, event_id, data))) =
            tokio::time::timeout_at(limit, events.next()).await
        {
            after = event_id.or(after);
            if ev.ends_with(":stream") {
                f.chunks += 1;
                if latency {
                    let v: serde_json::Value = serde_json::from_str(&data).expect("event JSON");
                    let at = v["payload"]["at"].as_i64().expect("at");
                    f.latency
                        .record((micros_now() - at).max(0) as u64)
                        .expect("record");
                }
            } else if ev.ends_with(":started") {
                f.started = Some(Instant::now());
            } else if !ev.ends_with(":heartbeat") {
                f.ended = Some(Instant::now());
                break;
            }
        }
    }
    f
}

/// Result of running streams to their end.
pub struct Run {
    /// Chunks delivered to the SSE clients.
    pub chunks: u64,
    /// Chunks the streams were asked for.
    pub expected: u64,
    /// Seconds from the first `started` (or scheduled start) to the last terminal event.
    pub secs: f64,
    /// Emit → SSE latency, µs (when measured).
    pub latency: Histogram<u64>,
    /// Responses that ended before the terminal event and were resumed.
    pub reconnects: u64,
    /// Streams whose terminal event did not arrive before the deadline.
    pub unfinished: u64,
}

impl Run {
    /// Resumed responses and unfinished streams, if any, for the parameters column.
    pub fn faults(&self) -> String {
        if self.reconnects == 0 && self.unfinished == 0 {
            return String::new();
        }
        format!(
            "; a repeat: {} responses resumed, {} streams unfinished",
            self.reconnects, self.unfinished
        )
    }

    /// Delivered chunks per second.
    pub fn rate(&self) -> f64 {
        self.chunks as f64 / self.secs
    }
}

/// Starts `streams` demo streams with `payload`, one SSE reader each from the start, and waits
/// for all of them to end (or `deadline`).
pub async fn run_streams(
    s: &Server,
    streams: usize,
    payload: serde_json::Value,
    latency: bool,
    deadline: Duration,
) -> Run {
    let expected = payload["count"].as_u64().unwrap_or(0) * streams as u64;
    let scheduled = payload["start_at_us"].as_i64();
    let until = Instant::now() + deadline;
    let gate = Arc::new(Semaphore::new(SETUP_CONCURRENCY));
    let http = reqwest::Client::new();
    let mut readers = Vec::with_capacity(streams);
    for _ in 0..streams {
        let permit = gate.clone().acquire_owned().await.expect("gate");
        let id = s.request(payload.clone()).await;
        let (http, base) = (http.clone(), s.base.clone());
        readers.push(tokio::spawn(async move {
            drop(permit);
            follow(http, base, id, until, latency).await
        }));
    }
    let mut run = Run {
        chunks: 0,
        expected,
        secs: 0.0,
        latency: Histogram::<u64>::new(3).expect("histogram"),
        reconnects: 0,
        unfinished: 0,
    };
    let (mut first, mut last): (Option<Instant>, Option<Instant>) = (None, None);
    for r in futures::future::join_all(readers).await {
        let f = r.expect("reader");
        run.chunks += f.chunks;
        run.reconnects += f.reconnects;
        run.unfinished += u64::from(f.ended.is_none());
        run.latency.add(f.latency).expect("merge");
        first = match (first, f.started) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        last = last.max(f.ended.or(Some(Instant::now().min(until))));
    }
    let start = match scheduled {
        // The schedule's start, converted from wall-clock micros to this process's clock.
        Some(at) => Instant::now() - Duration::from_micros((micros_now() - at).max(0) as u64),
        None => first.unwrap_or_else(Instant::now),
    };
    run.secs = last
        .unwrap_or_else(Instant::now)
        .duration_since(start)
        .as_secs_f64()
        .max(1e-3);
    run
}

/// Throughput: `streams` streams of `chunks` chunks each, emitted as fast as the handler can, each
/// with 200 bytes of word padding and a checkpoint every `checkpoint_every` chunks (0: never).
pub async fn throughput(s: &Server, streams: usize, chunks: u64, checkpoint_every: u64) -> Run {
    let payload = json!({"count": chunks, "interval_ms": 0,
        "checkpoint_every": checkpoint_every, "pad_bytes": PAD});
    run_streams(s, streams, payload, false, Duration::from_secs(600)).await
}

/// Open-loop latency: `streams` streams each emitting `rate` chunks/s for `secs`, all starting on
/// one schedule once every stream is set up.
pub async fn open_loop(s: &Server, streams: usize, rate: u64, secs: u64) -> Run {
    // Set-up time: about 20 ms per stream on this kind of machine, plus a margin.
    let lead = Duration::from_millis(2000 + 20 * streams as u64);
    let payload = json!({"count": rate * secs, "interval_ms": 1000 / rate,
        "checkpoint_every": 10, "pad_bytes": PAD,
        "start_at_us": micros_now() + lead.as_micros() as i64});
    let deadline = lead + Duration::from_secs(secs * 3 + 30);
    run_streams(s, streams, payload, true, deadline).await
}

/// Stream start: the request produced to the intake topic → `started` at an SSE client that was
/// already waiting for the stream (µs per sample).
pub async fn start_latency(s: &Server, samples: usize) -> Histogram<u64> {
    let p = crate::raw::producer();
    let http = reqwest::Client::new();
    let mut h = Histogram::<u64>::new(3).expect("histogram");
    for _ in 0..samples {
        let id = format!("s3-{}", tag());
        let (http2, base, id2) = (http.clone(), s.base.clone(), id.clone());
        let waiter = tokio::spawn(async move {
            // The edge holds the response until the stream registers (`edge.early_connect_wait`).
            let mut events = sse(&http2, &base, &id2, None).await;
            while let Some((ev, _, _)) = events.next().await {
                if ev.ends_with(":started") {
                    return Instant::now();
                }
            }
            panic!("no started event");
        });
        // Let the subscription's request reach the edge first.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let body = json!({"type": "demo:stream_ticks:v1:requested", "stream_id": id,
            "payload": {"count": 1, "interval_ms": 0}})
        .to_string();
        let t0 = Instant::now();
        p.send(
            FutureRecord::<(), _>::to(&s.intake).payload(&body),
            Duration::from_secs(30),
        )
        .await
        .expect("produce request");
        let t1 = waiter.await.expect("waiter");
        h.record(t1.duration_since(t0).as_micros() as u64)
            .expect("record");
    }
    h
}

/// Replay: a stream of `n` chunks runs to its end, then a new SSE client reads it all from the
/// start. Returns (ms to the first event, events/s).
pub async fn replay(s: &Server, n: u64) -> (f64, f64) {
    let id = s
        .request(json!({"count": n, "interval_ms": 0, "checkpoint_every": 1000, "pad_bytes": PAD}))
        .await;
    let mut live = s.sse(&id, None).await;
    while let Some((ev, _, _)) = live.next().await {
        if ev.ends_with(":success") {
            break;
        }
    }
    let t0 = Instant::now();
    let mut events = s.sse(&id, None).await;
    let (mut first, mut got) = (None, 0u64);
    while let Some((ev, _, _)) = events.next().await {
        first.get_or_insert_with(|| t0.elapsed());
        if ev.ends_with(":stream") {
            got += 1;
        }
    }
    assert_eq!(got, n, "replay delivered every chunk");
    let secs = t0.elapsed().as_secs_f64();
    (
        first.expect("an event").as_secs_f64() * 1000.0,
        got as f64 / secs,
    )
}

/// Resume: stop Sluice gracefully mid-stream, start it on the same store, and time from the new
/// process's start to the first chunk it adds, at a reader (ms).
pub async fn resume(s: Server) -> (f64, Server) {
    let id = s
        .request(json!({"count": 100_000, "interval_ms": 10, "checkpoint_every": 10}))
        .await;
    let mut events = s.sse(&id, None).await;
    let mut seen = 0;
    while let Some((ev, _, _)) = events.next().await {
        if ev.ends_with(":stream") {
            seen += 1;
            if seen == 50 {
                break;
            }
        }
    }
    drop(events);
    let t0 = Instant::now();
    let (_, s) = s.restart().await;
    let before = s.status(&id).await["chunks"].as_u64().unwrap_or(0);
    let mut events = s.sse(&id, None).await;
    let mut ms = f64::NAN;
    while let Some((ev, _, data)) = events.next().await {
        let seq = serde_json::from_str::<serde_json::Value>(&data)
            .ok()
            .and_then(|v| v["seq"].as_u64())
            .unwrap_or(0);
        if ev.ends_with(":stream") && seq > before.max(50) {
            ms = t0.elapsed().as_secs_f64() * 1000.0;
            break;
        }
    }
    let _ = reqwest::Client::new()
        .delete(format!("{}/v1/streams/{id}", s.base))
        .send()
        .await;
    (ms, s)
}

/// Memory kept per finished stream: runs `k` short streams twice, waiting after each batch for
/// retention to delete them, and returns the RSS growth of the second batch per stream (KiB).
pub async fn retained(s: &Server, k: usize, settle: Duration) -> (f64, u64, u64) {
    let batch = || async {
        for _ in 0..k / 100 {
            let payload = json!({"count": 5, "interval_ms": 0, "checkpoint_every": 1});
            run_streams(s, 100, payload, false, Duration::from_secs(120)).await;
        }
        tokio::time::sleep(settle).await;
    };
    batch().await;
    let before = s.rss_kib();
    batch().await;
    let after = s.rss_kib();
    (
        after.saturating_sub(before) as f64 / k as f64,
        before,
        after,
    )
}
