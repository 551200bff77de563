//! A stream handler written in Rust, registered next to the configured sources.
//!
//! `clock:stream_countdown` counts down from `from` (default 10), one chunk per `every_ms`
//! (default 500). It checkpoints after every chunk, and a resumed run (after a crash or restart)
//! starts after its cursor. The handler is deterministic from its cursor, so Sluice stores each
//! chunk exactly once whatever moment the process dies.
//!
//! ```sh
//! scripts/kafka.sh start
//! cargo run --example countdown_handler -- settings.toml
//! curl -s -XPOST localhost:8080/v1/streams -d '{"type":"clock:stream_countdown:v1:requested","payload":{"from":5}}'
//! curl -N localhost:8080/v1/streams/<stream_id>/events
//! ```

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};
use sluice::{App, HandlerError, Registry, Settings, StreamContext, StreamHandler};

struct Countdown;

#[async_trait]
impl StreamHandler for Countdown {
    async fn run(&self, ctx: StreamContext) -> Result<(), HandlerError> {
        let payload = &ctx.request().payload;
        let from = payload.get("from").and_then(Value::as_u64).unwrap_or(10);
        let every = payload
            .get("every_ms")
            .and_then(Value::as_u64)
            .unwrap_or(500);
        if from > 10_000 || every > 60_000 {
            return Err(HandlerError::new(
                "invalid_payload",
                "from is at most 10000 and every_ms at most 60000",
            ));
        }
        // Resume after the last checkpoint: the cursor is the last value emitted.
        let start = match ctx.resume_from().and_then(|c| c.get("left")) {
            Some(left) => left.as_u64().unwrap_or(from).saturating_sub(1),
            None => from,
        };
        let mut tick = tokio::time::interval(Duration::from_millis(every.max(1)));
        for left in (0..=start).rev() {
            tokio::select! {
                _ = ctx.cancelled() => return Ok(()),
                _ = tick.tick() => {}
            }
            ctx.emit(json!({ "left": left })).await?;
            ctx.checkpoint(json!({ "left": left })).await?;
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "settings.toml".into());
    let settings = Settings::load(Some(std::path::Path::new(&path)))?;
    sluice::telemetry::init(&settings.log);
    let mut handlers = Registry::new();
    handlers.register("clock:stream_countdown", Countdown);
    let app = App::build_with(settings, handlers).await?;
    app.run(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}
