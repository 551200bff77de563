//! The per-owner index of unfinished streams, behind the per-owner cap on running streams.
//!
//! Each record whose stream has an owner and has not ended has a key
//! `active/<owner length, 3 digits>/<owner>/<stream id>`, written in the same batch as the record
//! (and by the changelog follower, so every instance counts every owner's streams) and deleted
//! when the stream ends or its record goes. Counting an owner's streams is a prefix scan that
//! stops at the cap, so it costs at most the cap's worth of keys, however many streams exist.

use rocksdb::{Direction, IteratorMode, WriteBatch, DB};

use super::{decode, Error, StreamRecord, STREAM_PREFIX};

const ACTIVE_PREFIX: &str = "active/";
/// Marks a database whose owner index covers every record.
const ACTIVE_READY: &str = "meta/active_index_v1";

fn owner_prefix(owner: &str) -> String {
    format!("{ACTIVE_PREFIX}{:03}/{owner}/", owner.len())
}

fn active_key(owner: &str, stream_id: &str) -> String {
    format!("{}{stream_id}", owner_prefix(owner))
}

/// Adds `record`'s entry to `batch`: present while its stream has an owner and runs.
pub(super) fn index(batch: &mut WriteBatch, record: &StreamRecord) {
    let Some(owner) = record.request.owner.as_deref().filter(|o| !o.is_empty()) else {
        return;
    };
    let key = active_key(owner, &record.stream_id);
    if record.state.is_terminal() {
        batch.delete(key);
    } else {
        batch.put(key, b"");
    }
}

/// Adds the removal of `record`'s entry to `batch` (its record is being deleted).
pub(super) fn unindex(batch: &mut WriteBatch, record: &StreamRecord) {
    if let Some(owner) = record.request.owner.as_deref().filter(|o| !o.is_empty()) {
        batch.delete(active_key(owner, &record.stream_id));
    }
}

/// How many unfinished streams `owner` has, counting no further than `limit`.
pub(super) fn count(db: &DB, owner: &str, limit: usize) -> Result<usize, Error> {
    let prefix = owner_prefix(owner);
    let mut n = 0;
    for item in db.iterator(IteratorMode::From(prefix.as_bytes(), Direction::Forward)) {
        let (k, _) = item?;
        if !k.starts_with(prefix.as_bytes()) || n >= limit {
            break;
        }
        n += 1;
    }
    Ok(n)
}

/// Writes the entry of every record, once, for databases made before the owner index existed.
pub(super) fn backfill(db: &DB) -> Result<(), Error> {
    if db.get_pinned(ACTIVE_READY)?.is_some() {
        return Ok(());
    }
    let mut batch = WriteBatch::default();
    for item in db.prefix_iterator(STREAM_PREFIX.as_bytes()) {
        let (k, v) = item?;
        let Some(id) = k.strip_prefix(STREAM_PREFIX.as_bytes()) else {
            break;
        };
        if let Ok(r) = decode(&String::from_utf8_lossy(id), &v) {
            index(&mut batch, &r);
        }
    }
    batch.put(ACTIVE_READY, b"1");
    db.write(batch)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::event::Request;
    use crate::store::{Durability, Store, StreamRecord, StreamState};

    fn record(id: &str, owner: &str) -> StreamRecord {
        let body = br#"{"type":"demo:stream_ticks:v1:requested"}"#;
        let mut request = Request::parse(body, 1024).unwrap();
        request.owner = Some(owner.to_owned());
        StreamRecord::new(id, request)
    }

    #[tokio::test]
    async fn an_owner_counts_its_unfinished_streams_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for (id, owner) in [("a1", "al"), ("a2", "al"), ("a3", "al"), ("b1", "alice")] {
            store
                .put(&record(id, owner), Durability::Buffered)
                .await
                .unwrap();
        }
        assert_eq!(store.active_streams("al", 100).await.unwrap(), 3);
        assert_eq!(
            store.active_streams("al", 2).await.unwrap(),
            2,
            "stops at the limit"
        );
        assert_eq!(
            store.active_streams("alice", 100).await.unwrap(),
            1,
            "no prefix overlap"
        );
        let mut done = record("a1", "al");
        done.state = StreamState::Success;
        store.put(&done, Durability::Buffered).await.unwrap();
        store.delete("a2").await.unwrap();
        store.bury(vec!["a3".into()]).await.unwrap();
        assert_eq!(store.active_streams("al", 100).await.unwrap(), 0);
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.active_streams("alice", 100).await.unwrap(),
            1,
            "kept across opens"
        );
    }
}
