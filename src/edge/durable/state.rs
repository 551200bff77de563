//! One Durable Streams stream in memory: its configuration, its records (inherited ones of a fork
//! included, shared with the source), its writers' state, and its expiry.
//!
//! This module decides nothing about HTTP; the handlers do. It does not write Kafka either:
//! `log` does, and a record is added here only once Kafka acknowledged it.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Mutex};

use super::offset::Offset;

/// One append: the bytes of a text or binary stream, or the items of a JSON stream joined by
/// commas (no brackets), and where the stream stands after it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The offset after this record.
    pub end: Offset,
    /// The record's bytes (JSON: items joined by `,`).
    pub data: Bytes,
    /// JSON items in the record (0 for other types).
    pub items: usize,
}

/// An idempotent producer's last accepted write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerState {
    /// Its epoch.
    pub epoch: u64,
    /// Its last accepted sequence number.
    pub seq: u64,
}

/// The producer tuple that closed a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClosedBy {
    /// `Producer-Id`.
    pub id: String,
    /// `Producer-Epoch`.
    pub epoch: u64,
    /// `Producer-Seq`.
    pub seq: u64,
}

/// What a stream was forked from, as its creation gave it (compared by an idempotent re-create).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForkOf {
    /// The source's path.
    pub source: String,
    /// The fork point.
    pub offset: Offset,
    /// Bytes or items of the first record after the fork point that the fork took.
    pub sub_offset: u64,
}

/// A stream's durable metadata: kept in the store, and enough with its topic to rebuild it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    /// The content type, as the creator sent it.
    pub content_type: String,
    /// The sliding time-to-live in seconds, renewed by reads and writes.
    pub ttl: Option<u64>,
    /// The absolute expiry.
    pub expires_at: Option<DateTime<Utc>>,
    /// Closed: no more appends.
    pub closed: bool,
    /// Who closed it, for idempotent retries of the closing append.
    pub closed_by: Option<ClosedBy>,
    /// The last `Stream-Seq` accepted.
    pub stream_seq: Option<String>,
    /// Idempotent producers by `Producer-Id`.
    pub producers: HashMap<String, ProducerState>,
    /// The fork's origin, for forks.
    pub fork_of: Option<ForkOf>,
    /// Its fork depth: the segment of its own offsets.
    pub seg: u64,
    /// The Kafka topic of its own records.
    pub topic: String,
    /// The `sub` of the token that created it; none for an administrator's without one, and for
    /// streams saved before streams had owners (only administrators and patterns reach those).
    #[serde(default)]
    pub owner: Option<String>,
}

/// Bytes a producer's entry is counted as, beyond its id: its numbers and the map's overhead.
pub const PRODUCER_OVERHEAD: usize = 64;

/// The mutable part of a stream.
pub struct State {
    /// Durable metadata.
    pub meta: Meta,
    /// Every record readable from this stream, inherited ones first, in offset order.
    pub entries: Vec<Arc<Entry>>,
    /// The offset after the last record.
    pub tail: Offset,
    /// Bytes of the stream's own records held in memory, and of its producer table.
    pub own_bytes: usize,
    /// When it was last read or written (for the sliding TTL), in ms since the epoch.
    pub touched_ms: i64,
    /// Live forks of this stream.
    pub forks: usize,
    /// Deleted while forks still read it: gone for clients, kept for its forks.
    pub deleted: bool,
    /// The stream it was forked from, kept while this fork lives.
    pub source: Option<Arc<DsStream>>,
}

/// A stream. Shared behind an `Arc`.
pub struct DsStream {
    /// Its path (`/v1/stream/...`).
    pub path: String,
    /// Its path and owner, then its source's, and so on (a fork's readers must read them all).
    lineage: Vec<(String, Option<String>)>,
    /// State, locked for each request; appends hold it across their Kafka write, so one stream's
    /// appends are ordered and checked against the state they change.
    pub state: Mutex<State>,
    /// Bumped on every append and on close: wakes long-polls and SSE readers.
    pub changed: watch::Sender<u64>,
}

impl DsStream {
    /// A new stream, owned by `state.meta.owner`, below `state.source` if it is a fork.
    pub fn new(path: &str, state: State) -> Arc<DsStream> {
        let mut lineage = vec![(path.to_owned(), state.meta.owner.clone())];
        if let Some(src) = &state.source {
            lineage.extend(src.lineage.iter().cloned());
        }
        Arc::new(DsStream {
            path: path.to_owned(),
            lineage,
            state: Mutex::new(state),
            changed: watch::Sender::new(0),
        })
    }

    /// Its owner.
    pub fn owner(&self) -> Option<&str> {
        self.lineage.first().and_then(|(_, o)| o.as_deref())
    }

    /// Its path and owner, then those of its source, its source's source, and so on.
    pub fn lineage(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.lineage.iter().map(|(p, o)| (p.as_str(), o.as_deref()))
    }

    /// Wakes its waiters.
    pub fn notify(&self) {
        self.changed.send_modify(|v| *v += 1);
    }
}

/// The content type without parameters, lower-cased: what types are compared by.
pub fn normalise(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// Whether records of this type are JSON messages.
pub fn is_json(content_type: &str) -> bool {
    normalise(content_type) == "application/json"
}

/// Whether SSE carries this type as text (else base64).
pub fn is_text(content_type: &str) -> bool {
    let n = normalise(content_type);
    n.starts_with("text/") || n == "application/json"
}

impl State {
    /// A stream with no records yet.
    pub fn new(meta: Meta, now_ms: i64) -> State {
        let tail = Offset {
            seg: meta.seg,
            pos: 0,
        };
        State {
            meta,
            entries: Vec::new(),
            tail,
            own_bytes: 0,
            touched_ms: now_ms,
            forks: 0,
            deleted: false,
            source: None,
        }
    }

    /// Whether the stream has expired at `now_ms`.
    pub fn expired(&self, now_ms: i64) -> bool {
        if let Some(at) = self.meta.expires_at {
            if now_ms >= at.timestamp_millis() {
                return true;
            }
        }
        match self.meta.ttl {
            Some(ttl) => now_ms >= self.touched_ms + (ttl as i64) * 1000,
            None => false,
        }
    }

    /// Renews the sliding TTL.
    pub fn touch(&mut self, now_ms: i64) {
        self.touched_ms = now_ms;
    }

    /// Index of the first record that ends after `from`.
    pub fn first_after(&self, from: Offset) -> usize {
        self.entries.partition_point(|e| e.end <= from)
    }

    /// The records after `from`.
    pub fn after(&self, from: Offset) -> &[Arc<Entry>] {
        &self.entries[self.first_after(from)..]
    }

    /// Bytes the producer table is counted as.
    pub fn producer_bytes(&self) -> usize {
        self.meta
            .producers
            .keys()
            .map(|id| id.len() + PRODUCER_OVERHEAD)
            .sum()
    }

    /// Appends a record the log acknowledged.
    pub fn push(&mut self, entry: Entry) {
        self.own_bytes += entry.data.len();
        self.tail = entry.end;
        self.entries.push(Arc::new(entry));
    }

    /// The offset before the first record: where a read from the start begins.
    pub fn start(&self) -> Offset {
        Offset::ZERO
    }
}

/// A body of records: bytes concatenated, or JSON items in one array.
pub fn body(entries: &[Arc<Entry>], json: bool) -> Vec<u8> {
    let mut out = Vec::new();
    if json {
        out.push(b'[');
    }
    let mut first = true;
    for e in entries {
        if json {
            if e.items == 0 {
                continue;
            }
            if !first {
                out.push(b',');
            }
            first = false;
        }
        out.extend_from_slice(&e.data);
    }
    if json {
        out.push(b']');
    }
    out
}

/// Splits a JSON append into its items: a top-level array is flattened one level, anything else
/// is one item. Returns the items joined by commas and their count; `Err` if the body is not
/// JSON.
pub fn json_items(body: &[u8]) -> Result<(Vec<u8>, usize), serde_json::Error> {
    let value: &serde_json::value::RawValue = serde_json::from_slice(body)?;
    let text = value.get().trim_start();
    if text.starts_with('[') {
        let items: Vec<&serde_json::value::RawValue> = serde_json::from_str(text)?;
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(item.get().as_bytes());
        }
        Ok((out, items.len()))
    } else {
        Ok((value.get().as_bytes().to_vec(), 1))
    }
}

/// The first `n` items (JSON) or bytes of a record, as a record of their own.
pub fn prefix(entry: &Entry, n: u64, json: bool) -> Option<(Vec<u8>, usize)> {
    if json {
        if n as usize > entry.items {
            return None;
        }
        let text = format!("[{}]", String::from_utf8_lossy(&entry.data));
        let items: Vec<&serde_json::value::RawValue> = serde_json::from_str(&text).ok()?;
        let mut out = Vec::new();
        for (i, item) in items.iter().take(n as usize).enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(item.get().as_bytes());
        }
        Some((out, n as usize))
    } else {
        if n as usize > entry.data.len() {
            return None;
        }
        Some((entry.data[..n as usize].to_vec(), 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_appends_flatten_one_level() {
        assert_eq!(
            json_items(br#"[1,[2,3],{"a":[4]}]"#).unwrap(),
            (br#"1,[2,3],{"a":[4]}"#.to_vec(), 3)
        );
        assert_eq!(
            json_items(br#" {"a":1} "#).unwrap(),
            (br#"{"a":1}"#.to_vec(), 1)
        );
        assert_eq!(json_items(b"[]").unwrap().1, 0);
        assert!(json_items(b"{nope").is_err());
    }

    #[test]
    fn bodies_join_records() {
        let e = |d: &str, items| {
            Arc::new(Entry {
                end: Offset::ZERO,
                data: Bytes::from(d.to_owned()),
                items,
            })
        };
        assert_eq!(body(&[e("1,2", 2), e("3", 1)], true), b"[1,2,3]");
        assert_eq!(body(&[], true), b"[]");
        assert_eq!(body(&[e("ab", 0), e("c", 0)], false), b"abc");
    }

    #[test]
    fn types_compare_normalised() {
        assert!(is_json("APPLICATION/JSON; charset=utf-8"));
        assert!(is_text("text/plain"));
        assert!(!is_text("application/octet-stream"));
        assert_eq!(normalise(" Text/Plain ;x=1"), "text/plain");
    }
}
