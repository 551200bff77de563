//! `kind = "kafka"`: a stream fed from a Kafka topic.
//!
//! Each record whose key equals the request's rendered `key` template (every record, without one)
//! becomes a chunk: a JSON value as it is, other UTF-8 as `{"text": …}`, other bytes as
//! `{"base64": …}`, a tombstone as `null`. The chunk's metadata carries
//! `{"source": {"topic","partition","offset","timestamp"}}` (and `"end": true` on the end record).
//!
//! The cursor is the next offset per partition. A new stream's start position (`latest` is the
//! shared tail's position, `earliest` the topic's low watermarks) is checkpointed, synced, before
//! its first chunk. On resume the stream continues after every record its topic already holds
//! (`ResumeMode::AfterStored`), so each matching record is emitted exactly once in source order per
//! partition, however records of different partitions interleave. Records come from the shared
//! tail (`tail`), one consumer per source topic per process.

mod tail;

use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine;
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

use tail::{Positions, Record};
pub use tail::{Tail, Tails};

use super::template::Template;
use super::{Chunk, Closed, HandlerError, ResumeMode, StreamContext, StreamHandler};
use crate::settings::{KafkaSourceSettings, StartAt};

/// A Kafka-sourced stream handler for one `service:action`.
pub struct KafkaSource {
    settings: KafkaSourceSettings,
    key: Option<Template>,
    tails: Arc<Tails>,
}

impl KafkaSource {
    /// A handler for validated `settings`, reading through the process's shared `tails`.
    pub fn new(settings: KafkaSourceSettings, tails: Arc<Tails>) -> KafkaSource {
        let key = settings
            .key
            .as_deref()
            .and_then(|k| Template::parse(k).ok());
        KafkaSource {
            settings,
            key,
            tails,
        }
    }
}

/// The chunk payload of a record value.
pub fn chunk_payload(value: Option<&[u8]>) -> Value {
    let Some(bytes) = value else {
        return Value::Null;
    };
    if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
        return v;
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => json!({ "text": text }),
        Err(_) => json!({ "base64": base64::engine::general_purpose::STANDARD.encode(bytes) }),
    }
}

fn cursor_of(next: &Positions) -> Value {
    let offsets: Map<String, Value> = next
        .iter()
        .map(|(p, o)| (p.to_string(), Value::from(*o)))
        .collect();
    json!({ "offsets": offsets })
}

fn positions_of(cursor: &Value) -> Option<Positions> {
    cursor
        .get("offsets")?
        .as_object()?
        .iter()
        .map(|(p, o)| Some((p.parse().ok()?, o.as_i64()?)))
        .collect()
}

/// One run's reading state.
struct Reader<'a> {
    ctx: &'a StreamContext,
    topic: &'a str,
    end_header: Option<&'a str>,
    next: Positions,
    since_checkpoint: u64,
    checkpoint_every: u64,
}

/// What reading one record led to.
enum Step {
    Go,
    End,
}

impl Reader<'_> {
    async fn emit(&mut self, r: Record) -> Result<Step, Closed> {
        if self.next.get(&r.partition).is_some_and(|n| r.offset < *n) {
            return Ok(Step::Go);
        }
        self.next.insert(r.partition, r.offset + 1);
        let end = self.end_header.is_some_and(|h| r.has_header(h));
        let mut source = json!({"topic": self.topic, "partition": r.partition,
            "offset": r.offset, "timestamp": r.timestamp});
        if end {
            source["end"] = Value::Bool(true);
        }
        self.ctx
            .emit_chunk(Chunk {
                payload: chunk_payload(r.value.as_deref()),
                metadata: Some(Map::from_iter([("source".to_owned(), source)])),
            })
            .await?;
        self.since_checkpoint += 1;
        if end {
            return Ok(Step::End);
        }
        if self.since_checkpoint >= self.checkpoint_every {
            self.checkpoint().await?;
        }
        Ok(Step::Go)
    }

    async fn checkpoint(&mut self) -> Result<(), Closed> {
        self.since_checkpoint = 0;
        self.ctx.checkpoint(cursor_of(&self.next)).await
    }

    /// Moves past the chunks an earlier run stored after the cursor; true if one was the end.
    fn skip_stored(&mut self) -> bool {
        let mut ended = false;
        for chunk in self.ctx.stored_since_checkpoint() {
            let Some(src) = chunk.metadata.as_ref().and_then(|m| m.get("source")) else {
                continue;
            };
            let (Some(p), Some(o)) = (src["partition"].as_i64(), src["offset"].as_i64()) else {
                continue;
            };
            let n = self.next.entry(p as i32).or_insert(0);
            *n = (*n).max(o + 1);
            ended |= src["end"] == true;
        }
        ended
    }
}

#[async_trait]
impl StreamHandler for KafkaSource {
    async fn run(&self, ctx: StreamContext) -> Result<(), HandlerError> {
        let key = match &self.key {
            Some(t) => Some(
                t.render(&ctx.request().payload, str::to_owned)?
                    .into_bytes(),
            ),
            None => None,
        };
        let cancel = CancellationToken::new();
        let _stop = cancel.clone().drop_guard();
        let topic = self.settings.topic.as_str();
        let tail = tokio::select! {
            _ = ctx.cancelled() => return Err(Closed.into()),
            t = self.tails.tail(topic, &cancel) => t
                .map_err(|e| HandlerError::new("source_unavailable", e.to_string()))?,
        };
        let mut r = Reader {
            ctx: &ctx,
            topic,
            end_header: self.settings.end_header.as_deref(),
            next: ctx.resume_from().and_then(positions_of).unwrap_or_default(),
            since_checkpoint: 0,
            checkpoint_every: self.settings.checkpoint_every,
        };
        if r.skip_stored() {
            return Ok(());
        }
        let fresh = ctx.resume_from().is_none();
        let mut sub = tail.subscribe(key.clone(), &r.next);
        if fresh {
            r.next = match self.settings.start {
                StartAt::Latest => sub.tail_at.clone(),
                StartAt::Earliest => self
                    .tails
                    .earliest(&tail)
                    .await
                    .map_err(|e| HandlerError::new("source_unavailable", e.to_string()))?,
            };
            // The start position is durable before the first chunk.
            r.checkpoint().await?;
        }
        loop {
            if self
                .catch_up(&tail, &mut r, key.as_deref(), &sub.tail_at)
                .await?
            {
                return Ok(());
            }
            match self.follow(&mut r, &mut sub).await? {
                Step::End => return Ok(()),
                // Dropped by the tail for lagging: register again and catch up privately.
                Step::Go => sub = tail.subscribe(key.clone(), &r.next),
            }
        }
    }

    fn resume_mode(&self) -> ResumeMode {
        ResumeMode::AfterStored
    }
}

impl KafkaSource {
    /// Reads `[next, tail_at)` privately. Returns true if the end record was among them.
    async fn catch_up(
        &self,
        tail: &Tail,
        r: &mut Reader<'_>,
        key: Option<&[u8]>,
        tail_at: &Positions,
    ) -> Result<bool, HandlerError> {
        let mut batch: Vec<Record> = Vec::new();
        let mut cursor = r.next.clone();
        // Read in bounded slices so a long catch-up never buffers the whole backlog.
        loop {
            let done = self
                .tails
                .catch_up(tail, key, &cursor, tail_at, |rec| {
                    batch.push(rec);
                    batch.len() < 1024
                })
                .await
                .map_err(|e| HandlerError::new("source_unavailable", e.to_string()))?;
            for rec in &batch {
                cursor.insert(rec.partition, rec.offset + 1);
            }
            for rec in batch.drain(..) {
                if let Step::End = r.emit(rec).await? {
                    return Ok(true);
                }
            }
            if done {
                return Ok(false);
            }
        }
    }

    /// Follows the shared tail until the end record (`End`) or until the tail drops this
    /// subscriber (`Go`). Applies the idle timeout.
    async fn follow(
        &self,
        r: &mut Reader<'_>,
        sub: &mut tail::Subscription,
    ) -> Result<Step, HandlerError> {
        let idle = self.settings.idle_timeout;
        loop {
            let rec = tokio::select! {
                biased;
                _ = r.ctx.cancelled() => return Err(Closed.into()),
                _ = tokio::time::sleep(idle), if !idle.is_zero() => return Ok(Step::End),
                rec = sub.rx.recv() => rec,
            };
            let Some(rec) = rec else {
                return Ok(Step::Go);
            };
            if let Step::End = r.emit(rec).await? {
                return Ok(Step::End);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_values_become_json_text_or_base64() {
        assert_eq!(chunk_payload(Some(br#"{"a":1}"#)), json!({"a": 1}));
        assert_eq!(chunk_payload(Some(b"hello")), json!({"text": "hello"}));
        assert_eq!(
            chunk_payload(Some(&[0xff, 0x00])),
            json!({"base64": "/wA="})
        );
        assert_eq!(chunk_payload(None), Value::Null);
    }

    #[test]
    fn cursors_round_trip() {
        let next: Positions = [(0, 5), (2, 9)].into_iter().collect();
        assert_eq!(positions_of(&cursor_of(&next)), Some(next));
        assert_eq!(positions_of(&json!({"n": 3})), None);
    }
}
