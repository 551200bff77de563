//! The built-in `demo:stream_ticks` handler used by tests, examples and benchmarks.
//!
//! Request payload (all optional):
//! `{"count": 10, "interval_ms": 100, "fail_at": null, "panic_at": null, "checkpoint_every": 1, "pad_bytes": 0}`.
//! Each chunk is `{"n": <1-based>, "at": <unix microseconds>}` plus `"pad"` when `pad_bytes > 0`.
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
        }
    }
}

/// Microseconds since the Unix epoch, the `at` field of each tick.
pub fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
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
        let pad = "x".repeat(p.pad_bytes as usize);
        let mut ticker = tokio::time::interval(Duration::from_millis(p.interval_ms.max(1)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for n in first..=p.count {
            if p.interval_ms > 0 {
                ticker.tick().await;
            }
            if p.fail_at == Some(n) {
                return Err(HandlerError::new(
                    "demo_failure",
                    format!("failed at chunk {n} as requested"),
                ));
            }
            if p.panic_at == Some(n) {
                panic!("demo panic at chunk {n}");
            }
            let mut chunk = json!({"n": n, "at": now_micros()});
            if !pad.is_empty() {
                chunk["pad"] = Value::from(pad.as_str());
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

    #[tokio::test]
    async fn out_of_range_parameters_fail_before_allocating() {
        for payload in [
            json!({"count": 1, "pad_bytes": 100_000_000_000u64}),
            json!({"count": 1, "pad_bytes": 1001}),
            json!({"count": MAX_COUNT + 1}),
            json!({"count": 1, "interval_ms": MAX_INTERVAL_MS + 1}),
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
