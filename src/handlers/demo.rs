//! The built-in `demo:stream_ticks` handler used by tests, examples and benchmarks.
//!
//! Request payload (all optional):
//! `{"count": 10, "interval_ms": 100, "fail_at": null, "panic_at": null, "checkpoint_every": 1, "pad_bytes": 0, "start_at_us": null}`.
//! `start_at_us` (unix microseconds, at most an hour ahead) delays the first tick, so that many
//! streams can begin their schedules together.
//! Each chunk is `{"n": <1-based>, "at": <unix microseconds>}` plus `"pad"` when `pad_bytes > 0`.
//! With an interval, `at` is the tick's scheduled time, not the time the handler got to emit it,
//! and late ticks are caught up at once: the ticks are an open-loop load, so a latency measured
//! from `at` includes any time the stream spent behind schedule. `pad` is text of words (see
//! [`pad_text`]), compressible like real messages rather than a run of one character.
//! It resumes from a `{"n": <last>}` cursor.
//!
//! The payload is untrusted: `count`, `interval_ms` and `pad_bytes` are checked against limits
//! before anything is allocated, and a violation fails the stream with `invalid_payload`.

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::handlers::{HandlerError, StreamContext, StreamHandler};

/// Most chunks one demo stream may ask for.
pub const MAX_COUNT: u64 = 10_000_000;
/// Longest interval between demo chunks.
pub const MAX_INTERVAL_MS: u64 = 3_600_000;
/// Furthest ahead `start_at_us` may be.
pub const MAX_START_DELAY_US: i64 = 3_600_000_000;

/// The `demo:stream_ticks` handler.
pub struct Ticks {
    /// Largest `pad_bytes` accepted: the provider's `max_chunk_bytes`.
    max_pad_bytes: usize,
}

impl Ticks {
    /// A handler whose padded chunks stay within `max_chunk_bytes`.
    pub fn new(max_chunk_bytes: usize) -> Ticks {
        Ticks {
            max_pad_bytes: max_chunk_bytes,
        }
    }
}

#[derive(Deserialize)]
#[serde(default)]
struct Params {
    count: u64,
    interval_ms: u64,
    fail_at: Option<u64>,
    panic_at: Option<u64>,
    checkpoint_every: u64,
    pad_bytes: u64,
    start_at_us: Option<i64>,
}

impl Params {
    fn check(&self, max_pad_bytes: usize) -> Result<(), HandlerError> {
        let over = |field: &str, value: u64, max: u64| {
            HandlerError::new(
                "invalid_payload",
                format!("{field} is {value}; the most accepted is {max}"),
            )
        };
        if self.count > MAX_COUNT {
            return Err(over("count", self.count, MAX_COUNT));
        }
        if self.interval_ms > MAX_INTERVAL_MS {
            return Err(over("interval_ms", self.interval_ms, MAX_INTERVAL_MS));
        }
        if self.pad_bytes > max_pad_bytes as u64 {
            return Err(over("pad_bytes", self.pad_bytes, max_pad_bytes as u64));
        }
        if let Some(at) = self.start_at_us {
            let ahead = at.saturating_sub(now_micros());
            if ahead > MAX_START_DELAY_US {
                return Err(over(
                    "start_at_us ahead of now",
                    ahead as u64,
                    MAX_START_DELAY_US as u64,
                ));
            }
        }
        Ok(())
    }
}

impl Default for Params {
    fn default() -> Self {
        Params {
            count: 10,
            interval_ms: 100,
            fail_at: None,
            panic_at: None,
            checkpoint_every: 1,
            pad_bytes: 0,
            start_at_us: None,
        }
    }
}

/// Microseconds since the Unix epoch, the `at` field of each tick.
pub fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// Words the padding is drawn from: common English, so it compresses like chat text.
const WORDS: [&str; 32] = [
    "the",
    "stream",
    "of",
    "events",
    "arrives",
    "in",
    "order",
    "and",
    "every",
    "client",
    "can",
    "resume",
    "from",
    "where",
    "it",
    "left",
    "off",
    "after",
    "a",
    "restart",
    "message",
    "with",
    "some",
    "longer",
    "words",
    "like",
    "conversation",
    "delivery",
    "offset",
    "broker",
    "topic",
    "partition",
];

/// `len` bytes of words chosen by a small generator seeded with `n`: the same text for the same
/// chunk number, different text for different chunks.
pub fn pad_text(n: u64, len: usize) -> String {
    let mut state = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = String::with_capacity(len + 16);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.push_str(WORDS[(state % WORDS.len() as u64) as usize]);
        out.push(' ');
    }
    out.truncate(len);
    out
}

#[async_trait]
impl StreamHandler for Ticks {
    async fn run(&self, ctx: StreamContext) -> Result<(), HandlerError> {
        let p: Params = serde_json::from_value(ctx.request().payload.clone())
            .map_err(|e| HandlerError::new("invalid_payload", e.to_string()))?;
        p.check(self.max_pad_bytes)?;
        let first = ctx
            .resume_from()
            .and_then(|c| c.get("n"))
            .and_then(Value::as_u64)
            .map_or(1, |n| n + 1);
        let interval = Duration::from_millis(p.interval_ms.max(1));
        let delay = p
            .start_at_us
            .map_or(0, |at| at.saturating_sub(now_micros()).max(0) as u64);
        let mut ticker = tokio::time::interval_at(
            tokio::time::Instant::now() + Duration::from_micros(delay),
            interval,
        );
        // Burst: a tick that fell behind fires at once, keeping its scheduled time.
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let start_us = now_micros() + delay as i64;
        if p.interval_ms == 0 && delay > 0 {
            tokio::time::sleep(Duration::from_micros(delay)).await;
        }
        for n in first..=p.count {
            let at = if p.interval_ms > 0 {
                ticker.tick().await;
                start_us + ((n - first) * interval.as_micros() as u64) as i64
            } else {
                now_micros()
            };
            if p.fail_at == Some(n) {
                return Err(HandlerError::new(
                    "demo_failure",
                    format!("failed at chunk {n} as requested"),
                ));
            }
            if p.panic_at == Some(n) {
                panic!("demo panic at chunk {n}");
            }
            let mut chunk = json!({"n": n, "at": at});
            if p.pad_bytes > 0 {
                chunk["pad"] = Value::from(pad_text(n, p.pad_bytes as usize));
            }
            ctx.emit(chunk).await?;
            if p.checkpoint_every > 0 && n % p.checkpoint_every == 0 {
                ctx.checkpoint(json!({"n": n})).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::event::{Request, StreamId};
    use crate::handlers::Output;

    async fn run(payload: Value, resume: Option<Value>) -> (Result<(), HandlerError>, Vec<Output>) {
        let (tx, mut rx) = mpsc::channel(1000);
        let req = Request {
            event_type: crate::event::EventType::parse("demo:stream_ticks:v1:requested").unwrap(),
            stream_id: None,
            payload,
            metadata: None,
            owner: None,
        };
        let ctx = StreamContext::new(
            StreamId::random(),
            Arc::new(req),
            resume,
            tx,
            CancellationToken::new(),
        );
        let res = Ticks::new(1000).run(ctx).await;
        let mut out = Vec::new();
        while let Ok(o) = rx.try_recv() {
            out.push(o);
        }
        (res, out)
    }

    fn chunk_ns(out: &[Output]) -> Vec<u64> {
        out.iter()
            .filter_map(|o| match o {
                Output::Chunk(c) => c.payload["n"].as_u64(),
                Output::Checkpoint(_) => None,
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn emits_count_ticks_with_checkpoints() {
        let (res, out) = run(
            json!({"count": 3, "interval_ms": 1000, "checkpoint_every": 2}),
            None,
        )
        .await;
        res.unwrap();
        assert_eq!(chunk_ns(&out), vec![1, 2, 3]);
        let cps: Vec<_> = out
            .iter()
            .filter_map(|o| match o {
                Output::Checkpoint(c) => Some(c.clone()),
                Output::Chunk(_) => None,
            })
            .collect();
        assert_eq!(cps, vec![json!({"n": 2})]);
    }

    #[tokio::test(start_paused = true)]
    async fn resumes_after_cursor_and_fails_on_request() {
        let (res, out) = run(
            json!({"count": 5, "interval_ms": 10}),
            Some(json!({"n": 3})),
        )
        .await;
        res.unwrap();
        assert_eq!(chunk_ns(&out), vec![4, 5]);
        let (res, out) = run(json!({"count": 5, "interval_ms": 10, "fail_at": 2}), None).await;
        assert_eq!(res.unwrap_err().code, "demo_failure");
        assert_eq!(chunk_ns(&out), vec![1]);
        let (res, _) = run(json!({"count": "ten"}), None).await;
        assert_eq!(res.unwrap_err().code, "invalid_payload");
    }

    #[tokio::test(start_paused = true)]
    async fn ticks_carry_their_scheduled_time_and_word_padding() {
        let start_at = now_micros() + 30_000_000;
        let (res, out) = run(
            json!({"count": 4, "interval_ms": 250, "pad_bytes": 120, "start_at_us": start_at}),
            None,
        )
        .await;
        res.unwrap();
        let chunks: Vec<&Value> = out
            .iter()
            .filter_map(|o| match o {
                Output::Chunk(c) => Some(&c.payload),
                Output::Checkpoint(_) => None,
            })
            .collect();
        assert_eq!(chunks.len(), 4);
        let at0 = chunks[0]["at"].as_i64().unwrap();
        assert!(
            (at0 - start_at).abs() < 100_000,
            "first tick at start_at_us"
        );
        for (k, c) in chunks.iter().enumerate() {
            // Open loop: each stamp is the schedule, whatever the wall clock did meanwhile.
            assert_eq!(c["at"].as_i64().unwrap() - at0, k as i64 * 250_000);
            let pad = c["pad"].as_str().unwrap();
            assert_eq!(pad.len(), 120);
            assert_eq!(pad, pad_text(k as u64 + 1, 120), "deterministic per chunk");
        }
        assert_ne!(chunks[0]["pad"], chunks[1]["pad"]);
        let distinct: std::collections::HashSet<char> =
            chunks[0]["pad"].as_str().unwrap().chars().collect();
        assert!(distinct.len() > 8, "padding is text, not one repeated byte");
    }

    #[tokio::test]
    async fn out_of_range_parameters_fail_before_allocating() {
        for payload in [
            json!({"count": 1, "pad_bytes": 100_000_000_000u64}),
            json!({"count": 1, "pad_bytes": 1001}),
            json!({"count": MAX_COUNT + 1}),
            json!({"count": 1, "interval_ms": MAX_INTERVAL_MS + 1}),
            json!({"count": 1, "start_at_us": now_micros() + MAX_START_DELAY_US + 60_000_000}),
        ] {
            let (res, out) = run(payload.clone(), None).await;
            let err = res.expect_err("refused");
            assert_eq!(err.code, "invalid_payload", "{payload}");
            assert!(out.is_empty(), "nothing emitted for {payload}");
        }
        let (res, out) = run(
            json!({"count": 1, "interval_ms": 0, "pad_bytes": 1000}),
            None,
        )
        .await;
        res.unwrap();
        assert_eq!(chunk_ns(&out), vec![1]);
    }
}
