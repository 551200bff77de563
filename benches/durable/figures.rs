//! The figures, each run the same way against either server: only the base URL differs.

use std::time::{Duration, Instant};

use futures::future::join_all;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::support::{micros_now, pct, tag};
use crate::{Results, Scale, Target};

/// Writers of the small-append figure, each with a stream of its own.
const WRITERS: usize = 8;
/// Writers of the 1 MiB figure.
const BIG_WRITERS: usize = 4;
const MIB: usize = 1024 * 1024;
/// Messages per append when a stream is prefilled for the catch-up read.
const PREFILL_BATCH: usize = 100;

/// Runs every figure against `t` and records them as server `which`.
pub async fn run(t: &Target, which: usize, s: &Scale, r: &mut Results) {
    let http = reqwest::Client::new();
    let run = tag();
    let small = small_appends(&http, t, &run, s.small_appends).await;
    r.add(
        0,
        "small appends (100 B), 8 writers",
        "appends/s",
        0,
        which,
        small,
    );
    let big = big_appends(&http, t, &run, s.big_appends).await;
    r.add(1, "1 MiB appends, 4 writers", "MiB/s", 1, which, big);
    let (p50, p99) = long_poll(&http, t, &run, s.poll_rate, s.poll_secs).await;
    let label = format!("{}/s", s.poll_rate);
    eprintln!(
        "durable: {} long-poll at {label}: p50 {p50:.2} ms, p99 {p99:.2} ms",
        t.name
    );
    r.add(2, "long-poll round trip, p50", "ms", 2, which, p50);
    r.add(3, "long-poll round trip, p99", "ms", 2, which, p99);
    let catch = catch_up(&http, t, &run, s.catch_up).await;
    r.add(
        4,
        "catch-up read from the start",
        "messages/s",
        0,
        which,
        catch,
    );
}

fn url(t: &Target, name: &str) -> String {
    format!("{}/v1/stream/{name}", t.base)
}

/// Creates a stream; its tail offset.
async fn create(http: &reqwest::Client, url: &str, content_type: &str) -> String {
    let res = http
        .put(url)
        .header("content-type", content_type)
        .send()
        .await
        .expect("create");
    assert_eq!(res.status(), 201, "create {url}");
    next_offset(&res)
}

/// Creates `n` streams named after `what`; their URLs.
async fn create_each(
    http: &reqwest::Client,
    t: &Target,
    what: &str,
    n: usize,
    content_type: &str,
) -> Vec<String> {
    let urls: Vec<String> = (0..n)
        .map(|i| url(t, &format!("bench-{what}-{i}")))
        .collect();
    for u in &urls {
        create(http, u, content_type).await;
    }
    urls
}

fn next_offset(res: &reqwest::Response) -> String {
    res.headers()["stream-next-offset"]
        .to_str()
        .expect("offset")
        .to_owned()
}

async fn append(http: &reqwest::Client, url: &str, content_type: &str, body: Vec<u8>) {
    let res = http
        .post(url)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("append");
    assert!(
        res.status().is_success(),
        "append to {url}: {}",
        res.status()
    );
}

/// One writer per stream, each appending `body` `each` times one at a time; how long it took.
async fn write_all(
    http: &reqwest::Client,
    urls: &[String],
    content_type: &str,
    body: &[u8],
    each: usize,
) -> Duration {
    let started = Instant::now();
    join_all(urls.iter().map(|u| async move {
        for _ in 0..each {
            append(http, u, content_type, body.to_vec()).await;
        }
    }))
    .await;
    started.elapsed()
}

async fn delete(http: &reqwest::Client, urls: &[String]) {
    for u in urls {
        let _ = http.delete(u).send().await;
    }
}

/// Appends/s of `n` 100-byte appends by `WRITERS` writers.
async fn small_appends(http: &reqwest::Client, t: &Target, run: &str, n: usize) -> f64 {
    let urls = create_each(http, t, &format!("{run}-small"), WRITERS, "text/plain").await;
    let body = "the quick brown fox jumps over the lazy dog, again and again, until the end of it"
        .repeat(2)
        .as_bytes()[..100]
        .to_vec();
    let elapsed = write_all(http, &urls, "text/plain", &body, n / WRITERS).await;
    let rate = (n / WRITERS * WRITERS) as f64 / elapsed.as_secs_f64();
    eprintln!("durable: {} small appends: {n} in {elapsed:?}", t.name);
    delete(http, &urls).await;
    rate
}

/// MiB/s of `n` incompressible 1 MiB appends by `BIG_WRITERS` writers.
async fn big_appends(http: &reqwest::Client, t: &Target, run: &str, n: usize) -> f64 {
    let urls = create_each(
        http,
        t,
        &format!("{run}-big"),
        BIG_WRITERS,
        "application/octet-stream",
    )
    .await;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut body = Vec::with_capacity(MIB);
    while body.len() < MIB {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        body.extend_from_slice(&x.to_le_bytes());
    }
    let elapsed = write_all(
        http,
        &urls,
        "application/octet-stream",
        &body,
        n / BIG_WRITERS,
    )
    .await;
    let rate = (n / BIG_WRITERS * BIG_WRITERS) as f64 / elapsed.as_secs_f64();
    delete(http, &urls).await;
    rate
}

/// Open loop: `rate` appends/s for `secs`, each stamped with its intended send time and sent on
/// time whether or not earlier ones were answered; a reader long-polls the tail. Latency from the
/// intended time to the reader holding the message: (p50, p99) in ms.
async fn long_poll(
    http: &reqwest::Client,
    t: &Target,
    run: &str,
    rate: u64,
    secs: u64,
) -> (f64, f64) {
    let u = url(t, &format!("bench-{run}-poll"));
    let tail = create(http, &u, "application/json").await;
    let total = (rate * secs) as usize;
    let reader = {
        let (http, u) = (reqwest::Client::new(), u.clone());
        tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3).expect("histogram");
            let (mut offset, mut seen) = (tail, 0usize);
            while seen < total {
                let res = http
                    .get(format!("{u}?offset={offset}&live=long-poll"))
                    .send()
                    .await
                    .expect("long-poll");
                let now = micros_now();
                offset = next_offset(&res);
                if res.status() == 204 {
                    continue;
                }
                let items: Vec<Value> = res.json().await.expect("json");
                for item in items {
                    let sent = item["t"].as_i64().expect("t");
                    h.record((now - sent).max(0) as u64).expect("record");
                    seen += 1;
                }
            }
            assert_eq!(seen, total, "every message arrives once");
            h
        })
    };
    // Let the first long-poll reach the server before the clock starts.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let period = Duration::from_micros(1_000_000 / rate);
    let start = tokio::time::Instant::now();
    let start_us = micros_now();
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..total as u32 {
        tokio::time::sleep_until(start + period * i).await;
        let intended = start_us + (period * i).as_micros() as i64;
        let (http, u) = (http.clone(), u.clone());
        sends.spawn(async move {
            append(
                &http,
                &u,
                "application/json",
                json!({"t": intended}).to_string().into_bytes(),
            )
            .await
        });
    }
    while sends.join_next().await.is_some() {}
    let h = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("the reader got every message in time")
        .expect("reader");
    delete(http, &[u]).await;
    (pct(&h, 0.5), pct(&h, 0.99))
}

/// Messages/s reading a stream of `n` messages from the start until it is up to date.
async fn catch_up(http: &reqwest::Client, t: &Target, run: &str, n: usize) -> f64 {
    let u = url(t, &format!("bench-{run}-catchup"));
    create(http, &u, "application/json").await;
    let batches: Vec<Vec<u8>> = (0..n / PREFILL_BATCH)
        .map(|b| {
            let items: Vec<Value> = (0..PREFILL_BATCH)
                .map(|i| json!({"n": b * PREFILL_BATCH + i, "text": "a message of about one hundred bytes, as a chat line might be"}))
                .collect();
            serde_json::to_vec(&items).expect("json")
        })
        .collect();
    for chunk in batches.chunks(4) {
        join_all(
            chunk
                .iter()
                .map(|b| append(http, &u, "application/json", b.clone())),
        )
        .await;
    }
    let expected = n / PREFILL_BATCH * PREFILL_BATCH;
    let started = Instant::now();
    let (mut offset, mut seen) = ("-1".to_owned(), 0usize);
    loop {
        let res = http
            .get(format!("{u}?offset={offset}"))
            .send()
            .await
            .expect("read");
        assert_eq!(res.status(), 200, "catch-up read");
        offset = next_offset(&res);
        let up_to_date = res.headers().contains_key("stream-up-to-date");
        let items: Vec<Value> = res.json().await.expect("json");
        seen += items.len();
        if up_to_date {
            break;
        }
    }
    let rate = seen as f64 / started.elapsed().as_secs_f64();
    assert_eq!(seen, expected, "every message read once");
    delete(http, &[u]).await;
    rate
}
