//! Exactly-once under SIGKILL, with the real binary: 30+ concurrent streams with mixed checkpoint
//! rates (none included) are killed at random moments, one of them within the first 100 ms of a
//! wave of new streams, and restarted on the same store each time. Every stream topic is then read
//! back to its high watermark: each `seq` once, chunks `1..N` with no gap, one terminal event last.
//!
//! The kill moments come from a seed, printed at the start; `SLUICE_CHAOS_SEED=<n>` replays one.

mod common;

use std::time::Duration;

use common::process::{spawn, topic_prefix, write_config};
use common::*;
use serde_json::json;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_leaves_every_stream_exactly_once() {
    let seed = seed();
    eprintln!("chaos seed {seed} (replay with SLUICE_CHAOS_SEED={seed})");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "max_attempts = 50", "");
    let prefix = topic_prefix(&config);
    let mut streams: Vec<(String, u64, u64)> = Vec::new();
    let mut p = spawn(&config).await;
    // Wave 0 starts 16 streams and is killed within 100 ms; later waves add 6 more each and are
    // killed anywhere in their first 1.5 s, while the earlier streams are mid-flight.
    for wave in 0..4 {
        let n = if wave == 0 { 16 } else { 6 };
        for _ in 0..n {
            let every = [0, 0, 1, 3, 7, 20][rng.below(6) as usize];
            let count = 20 + rng.below(60);
            let interval = 5 + rng.below(30);
            let id = unique(&format!("c{wave}-"));
            p.request(
                json!({"type": "demo:stream_ticks:v1:requested", "stream_id": id,
                "payload": {"count": count, "interval_ms": interval, "checkpoint_every": every}}),
            )
            .await;
            streams.push((id, count, every));
        }
        let delay = if wave == 0 {
            rng.below(100)
        } else {
            rng.below(1500)
        };
        tokio::time::sleep(Duration::from_millis(delay)).await;
        p.kill().await;
        p = spawn(&config).await;
    }
    assert!(streams.len() >= 30);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    let mut resumed = 0;
    for (id, _, _) in &streams {
        loop {
            let st = p.status(id).await;
            if st["state"] != "pending" && st["state"] != "running" {
                if st["attempts"].as_u64().unwrap_or(0) > 1 {
                    resumed += 1;
                }
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "stream {id} never finished: {st}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert!(
        resumed > 0,
        "no stream was interrupted: the kills did not overlap the work"
    );
    for (id, count, every) in &streams {
        let topic = format!("{prefix}{id}");
        let events: Vec<_> = read_topic(&topic).await.iter().map(json_of).collect();
        eprintln!(
            "{id}: checkpoint_every={every} count={count} stored={}",
            events.len()
        );
        assert_topic_exact(&topic, &events, *count, "success");
    }
    eprintln!(
        "{} streams exact; {resumed} of them resumed at least once",
        streams.len()
    );
    p.kill().await;
}
