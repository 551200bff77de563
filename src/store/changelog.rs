//! The store's side of the changelog: records read back from the changelog topic are applied to
//! the local database, together with the position (next offset per changelog partition) they were
//! read up to, in one write batch, so a restarted follower resumes exactly where it stopped.
//!
//! This module does not read Kafka; `kafka::changelog` does, and decides which partitions to skip.

use std::collections::HashMap;

use chrono::Utc;
use rocksdb::WriteOptions;

use super::{decode, index, key, owners, unindex, Error, Store, GONE_PREFIX};

const POSITION_PREFIX: &str = "changelog/";

/// Partitions whose local records may be missing from the changelog: the store held records
/// before it ever followed the changelog (it predates it). Each is seeded once, by its owner.
const UNSEEDED_PREFIX: &str = "changelog-unseeded/";

/// Changelog topics this store has been checked against for records to seed.
const CHECKED_PREFIX: &str = "changelog-checked/";

/// One record read from the changelog topic.
#[derive(Debug)]
pub struct Applied {
    /// Its changelog partition.
    pub partition: i32,
    /// Its offset there.
    pub offset: i64,
    /// The stream (the record's key).
    pub stream_id: String,
    /// The stream record's JSON, or `None` for a tombstone (retention deleted the stream).
    pub value: Option<Vec<u8>>,
}

fn position_key(topic: &str, partition: i32) -> String {
    format!("{POSITION_PREFIX}{topic}/{partition}")
}

impl Store {
    /// Applies records read from `topic`, skipping those of partitions for which `skip` is true
    /// (this instance writes them itself), and records the next offset of every partition seen.
    /// Blocking: call it from a blocking thread. Returns how many records were applied.
    pub fn apply_changelog(
        &self,
        topic: &str,
        entries: &[Applied],
        skip: impl Fn(i32) -> bool,
    ) -> Result<usize, Error> {
        let db = &*self.db;
        let mut batch = rocksdb::WriteBatch::default();
        let mut next: HashMap<i32, i64> = HashMap::new();
        // Only the newest entry of each stream counts: earlier ones would leave stale index entries.
        let mut newest: HashMap<&str, &Applied> = HashMap::new();
        for e in entries {
            let n = next.entry(e.partition).or_insert(0);
            *n = (*n).max(e.offset + 1);
            if !skip(e.partition) {
                newest.insert(&e.stream_id, e);
            }
        }
        let mut applied = 0;
        for (id, e) in newest {
            unindex(db, id, &mut batch)?;
            match &e.value {
                Some(bytes) => match decode(id, bytes) {
                    Ok(record) if record.stream_id == id => {
                        batch.put(key(id), bytes);
                        batch.put(index::index_key(&record), b"");
                        owners::index(&mut batch, &record);
                        batch.delete(format!("{GONE_PREFIX}{id}"));
                    }
                    Ok(_) | Err(_) => {
                        tracing::error!(
                            stream_id = id,
                            partition = e.partition,
                            offset = e.offset,
                            code = "corrupt_changelog_record",
                            "changelog record cannot be decoded or names another stream; skipped"
                        );
                        continue;
                    }
                },
                None => {
                    batch.delete(key(id));
                    batch.put(format!("{GONE_PREFIX}{id}"), Utc::now().to_rfc3339());
                }
            }
            applied += 1;
        }
        for (p, offset) in next {
            batch.put(position_key(topic, p), offset.to_be_bytes());
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(false);
        db.write_opt(batch, &wo)?;
        Ok(applied)
    }

    /// On the first start with `topic`: if this store already holds stream records, they were
    /// written before the changelog existed and only this store has them, so every partition of
    /// `topic` is marked unseeded. Later starts leave the marks as they are. Blocking. Returns
    /// whether any partition is still unseeded.
    pub fn mark_unseeded(&self, topic: &str, partitions: i32) -> Result<bool, Error> {
        let prefix = format!("{UNSEEDED_PREFIX}{topic}/");
        let checked = format!("{CHECKED_PREFIX}{topic}");
        let first = |db: &rocksdb::DB, p: &str| {
            db.prefix_iterator(p.as_bytes())
                .next()
                .is_some_and(|i| i.is_ok_and(|(k, _)| k.starts_with(p.as_bytes())))
        };
        if self.db.get(&checked)?.is_some() {
            return Ok(first(&self.db, &prefix));
        }
        let legacy =
            first(&self.db, super::STREAM_PREFIX) && self.changelog_positions(topic)?.is_empty();
        let mut batch = rocksdb::WriteBatch::default();
        if legacy {
            for p in 0..partitions {
                batch.put(format!("{prefix}{p}"), b"");
            }
        }
        batch.put(&checked, b"");
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(batch, &wo)?;
        Ok(legacy)
    }

    /// Whether partition `p` of `topic` still has records to seed into the changelog.
    pub async fn is_unseeded(&self, topic: &str, p: i32) -> Result<bool, Error> {
        let k = format!("{UNSEEDED_PREFIX}{topic}/{p}");
        self.blocking(move |db| Ok(db.get(k)?.is_some())).await
    }

    /// Records that partition `p` of `topic` was seeded into the changelog.
    pub async fn mark_seeded(&self, topic: &str, p: i32) -> Result<(), Error> {
        let k = format!("{UNSEEDED_PREFIX}{topic}/{p}");
        self.blocking(move |db| {
            let mut wo = WriteOptions::default();
            wo.set_sync(true);
            db.delete_opt(k, &wo)?;
            Ok(())
        })
        .await
    }

    /// The next offset to read in each partition of `topic`, as last applied (blocking).
    pub fn changelog_positions(&self, topic: &str) -> Result<HashMap<i32, i64>, Error> {
        let prefix = format!("{POSITION_PREFIX}{topic}/");
        let mut out = HashMap::new();
        for item in self.db.prefix_iterator(prefix.as_bytes()) {
            let (k, v) = item?;
            let Some(p) = k.strip_prefix(prefix.as_bytes()) else {
                break;
            };
            let p = std::str::from_utf8(p)
                .ok()
                .and_then(|p| p.parse::<i32>().ok());
            let o = <[u8; 8]>::try_from(&*v).ok().map(i64::from_be_bytes);
            if let (Some(p), Some(o)) = (p, o) {
                out.insert(p, o);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Request;
    use crate::store::{StreamRecord, StreamState};

    fn record(id: &str, state: StreamState) -> Vec<u8> {
        let req = Request::parse(br#"{"type":"demo:stream_ticks:v1:requested"}"#, 1024).unwrap();
        let mut r = StreamRecord::new(id, req);
        r.state = state;
        serde_json::to_vec(&r).unwrap()
    }

    fn entry(partition: i32, offset: i64, id: &str, value: Option<Vec<u8>>) -> Applied {
        Applied {
            partition,
            offset,
            stream_id: id.into(),
            value,
        }
    }

    #[tokio::test]
    async fn applies_newest_per_stream_skips_owned_partitions_and_keeps_positions() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let batch = [
            entry(0, 5, "a", Some(record("a", StreamState::Running))),
            entry(0, 6, "a", Some(record("a", StreamState::Success))),
            entry(1, 2, "b", Some(record("b", StreamState::Running))),
            entry(0, 7, "c", Some(record("c", StreamState::Running))),
            entry(0, 8, "c", None),
            entry(0, 9, "d", Some(b"{not json".to_vec())),
        ];
        let applied = store.apply_changelog("t", &batch, |p| p == 1).unwrap();
        assert_eq!(applied, 2, "a and the tombstone of c; b skipped, d corrupt");
        assert_eq!(
            store.get("a").await.unwrap().unwrap().state,
            StreamState::Success
        );
        assert!(store.get("b").await.unwrap().is_none());
        assert!(store.get("c").await.unwrap().is_none());
        assert!(store.is_gone("c").await.unwrap());
        assert!(store.get("d").await.unwrap().is_none());
        let pos = store.changelog_positions("t").unwrap();
        assert_eq!(pos, HashMap::from([(0, 10), (1, 3)]));
        assert!(store.changelog_positions("other").unwrap().is_empty());
        // One index entry per stream: the list shows `a` once.
        let query = crate::store::ListQuery {
            state: None,
            type_prefix: None,
            created_after: None,
            limit: 10,
            cursor: None,
        };
        let page = store.list(query).await.unwrap();
        assert_eq!(page.records.len(), 1);
    }
}
