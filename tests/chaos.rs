//! Exactly-once under SIGKILL, with the real binary: 34 concurrent streams with checkpoint rates
//! from none to every chunk are killed at 8 random moments and restarted on the same store each
//! time. Every stream must end `success`: a crash of the process is not the stream's fault, so
//! only runs that store nothing count towards `provider.max_attempts` (default 5), and the kills
//! alternate between a random moment early in a run (often before it stored anything) and a random
//! moment after every unfinished stream stored something new in that run. Every stream topic is
//! then read back to its high watermark: each `seq` once, chunks `1..N` with no gap, `success`
//! last. The kills must have overlapped the work: some stream lived through more kills than
//! `max_attempts`, which a count of every restart would have failed.
//!
//! The kill moments come from a seed, printed at the start; `SLUICE_CHAOS_SEED=<n>` replays one.

mod common;

use std::time::Duration;

use common::process::{spawn, topic_prefix, write_config};
use common::*;
use serde_json::{json, Value};

/// xorshift64*: a small deterministic generator, so a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// Kills in all; even-numbered ones land early in a run, odd-numbered ones after progress.
const KILLS: usize = 8;
/// `provider.max_attempts` by default.
const MAX_ATTEMPTS: usize = 5;

struct Tracked {
    id: String,
    count: u64,
    every: u64,
    requested_us: i64,
    /// The newest event id seen, and whether it was the terminal event.
    last_id: Option<i64>,
    done: bool,
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

fn time_us(event: &Value) -> i64 {
    event["time"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map_or(0, |t| t.timestamp_micros())
}

/// Waits until `s` has stored an event written after `since` (its envelope `time`: events the
/// process replays and drops are never stored, so any such event is new), or has ended.
async fn stored_since(base: &str, s: &mut Tracked, since: i64) {
    let url = format!("{base}/v1/streams/{}/events", s.id);
    // A stream requested just before the last kill registers when intake reads its request again.
    let give_up = tokio::time::Instant::now() + WAIT;
    let mut sse = loop {
        match SseClient::try_connect(&url, s.last_id).await {
            Ok(sse) => break sse,
            Err(e) if e.starts_with("404") && tokio::time::Instant::now() < give_up => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("SSE subscribe to {url}: {e}"),
        }
    };
    loop {
        let Some(ev) = sse.next_event().await else {
            panic!("stream {} ended its SSE without a new event", s.id)
        };
        s.last_id = ev.id.or(s.last_id);
        if ["success", "failed", "timeout", "cancelled"].contains(&ev.state()) {
            s.done = true;
            return;
        }
        if time_us(&ev.data) >= since {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_fails_no_stream_and_stores_each_seq_once() {
    let seed = seed();
    eprintln!("chaos seed {seed} (replay with SLUICE_CHAOS_SEED={seed})");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "", "");
    let prefix = topic_prefix(&config);
    let mut streams: Vec<Tracked> = Vec::new();
    let mut run_start = now_us();
    let mut p = spawn(&config).await;
    let mut kills = Vec::new();
    for k in 0..KILLS {
        // New streams in the first four runs: 16 killed within 100 ms, then 6 more per run.
        let n = match k {
            0 => 16,
            1..=3 => 6,
            _ => 0,
        };
        for _ in 0..n {
            let every = [0, 0, 1, 3, 7, 20][rng.below(6) as usize];
            let (count, interval) = (60 + rng.below(240), 5 + rng.below(25));
            let id = unique(&format!("c{k}-"));
            p.request(
                json!({"type": "demo:stream_ticks:v1:requested", "stream_id": id,
                "payload": {"count": count, "interval_ms": interval, "checkpoint_every": every}}),
            )
            .await;
            streams.push(Tracked {
                id,
                count,
                every,
                requested_us: now_us(),
                last_id: None,
                done: false,
            });
        }
        let delay = if k % 2 == 0 {
            rng.below(if k == 0 { 100 } else { 300 })
        } else {
            let base = p.base.clone();
            let open = streams.iter_mut().filter(|s| !s.done);
            futures::future::join_all(open.map(|s| stored_since(&base, s, run_start))).await;
            rng.below(700)
        };
        tokio::time::sleep(Duration::from_millis(delay)).await;
        kills.push(now_us());
        p.kill().await;
        run_start = now_us();
        p = spawn(&config).await;
    }
    assert!(streams.len() >= 30);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    for s in &streams {
        loop {
            let st = p.status(&s.id).await;
            if st["state"] != "pending" && st["state"] != "running" {
                assert_eq!(
                    st["state"], "success",
                    "stream {} was failed by crashes: {st}",
                    s.id
                );
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "stream {} never finished: {st}",
                s.id
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let mut most = 0;
    for s in &streams {
        let topic = format!("{prefix}{}", s.id);
        let events: Vec<_> = read_topic(&topic).await.iter().map(json_of).collect();
        assert_topic_exact(&topic, &events, s.count, "success");
        let ended = events.last().map_or(0, time_us);
        let lived = kills
            .iter()
            .filter(|&&t| t > s.requested_us && t < ended)
            .count();
        eprintln!(
            "{}: checkpoint_every={} count={} lived through {lived} kills",
            s.id, s.every, s.count
        );
        most = most.max(lived);
    }
    assert!(
        most > MAX_ATTEMPTS,
        "no stream lived through more than {MAX_ATTEMPTS} kills ({most}): the kills did not overlap the work"
    );
    eprintln!(
        "{} streams exact and successful; the longest-lived saw {most} kills",
        streams.len()
    );
    p.kill().await;
}
