//! The stream store: one RocksDB record per stream (request, state, next `seq`, last offset,
//! handler cursor, timestamps, attempts).
//!
//! Durability: a record's creation and its terminal state are written with a synced WAL, because
//! an intake offset is committed (or a client told "done") on the strength of them. Progress
//! checkpoints use the unsynced WAL: they survive a process crash, and a checkpoint lost to a
//! machine crash only moves the resume point back, which the provider's dedup against the stream
//! topic absorbs. Every call runs on the blocking pool.

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rocksdb::{Options, WriteOptions, DB};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::Request;

mod changelog;
mod durable;
pub use durable::DurableDoc;
mod index;
mod owners;

pub use changelog::Applied;

pub use index::{Cursor, ListQuery, Page, MAX_SCAN};

const STREAM_PREFIX: &str = "stream/";
const GONE_PREFIX: &str = "gone/";

/// Store failures, naming the stream where there is one.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database could not be opened.
    #[error("open stream store at {path}: {source}")]
    Open {
        /// The directory.
        path: String,
        /// RocksDB's error.
        #[source]
        source: rocksdb::Error,
    },
    /// A read or write failed.
    #[error("stream store: {0}")]
    Db(#[from] rocksdb::Error),
    /// A record could not be decoded.
    #[error("stream record {stream_id} is corrupt: {reason}")]
    Corrupt {
        /// The stream.
        stream_id: String,
        /// Why it could not be decoded.
        reason: String,
    },
    /// The blocking task failed.
    #[error("stream store task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A stream's lifecycle as recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamState {
    /// Registered, not yet started.
    Pending,
    /// Its handler runs (or ran when the process stopped).
    Running,
    /// Ended in `success`.
    Success,
    /// Ended in `failed`.
    Failed,
    /// Ended in `timeout`.
    Timeout,
    /// Ended in `cancelled`.
    Cancelled,
}

impl StreamState {
    /// Whether the stream has ended.
    pub fn is_terminal(self) -> bool {
        !matches!(self, StreamState::Pending | StreamState::Running)
    }
}

/// One stream's record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StreamRecord {
    /// The stream id.
    pub stream_id: String,
    /// The request that started it.
    pub request: Request,
    /// Lifecycle state.
    pub state: StreamState,
    /// The next `seq` to write (0 before `started`).
    pub next_seq: u64,
    /// Offset of the newest acknowledged event covered by this record.
    pub last_offset: Option<i64>,
    /// The handler's last checkpoint cursor.
    pub cursor: Option<Value>,
    /// The `seq` of the last chunk the cursor covers.
    pub cursor_seq: u64,
    /// Consecutive handler runs that stored nothing new: a run that finds more events in the
    /// stream topic than the previous run started with counts as the first again, so crashes
    /// of the process never exhaust a stream that makes progress.
    pub attempts: u32,
    /// How many events the stream topic held when the counted run started (`attempts`' baseline).
    #[serde(default)]
    pub stored_at_attempt: u64,
    /// How many handler runs have started in all (never reset).
    #[serde(default)]
    pub runs: u32,
    /// When the stream was registered.
    pub created_at: DateTime<Utc>,
    /// When the record last changed.
    pub updated_at: DateTime<Utc>,
    /// When the stream ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// The intake partition the request arrived on: the stream belongs to whichever instance owns
    /// it, and its record lives in the same partition of the changelog. Absent in records written
    /// before partitions were recorded; see [`StreamRecord::partition_in`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<i32>,
    /// The Kafka topic holding the stream's events, named when it was registered. Absent in
    /// records written before records named their topic: those streams keep the raw-id name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
}

impl StreamRecord {
    /// A new pending record for a request.
    pub fn new(stream_id: &str, request: Request) -> StreamRecord {
        let now = Utc::now();
        StreamRecord {
            stream_id: stream_id.to_owned(),
            request,
            state: StreamState::Pending,
            next_seq: 0,
            last_offset: None,
            cursor: None,
            cursor_seq: 0,
            attempts: 0,
            stored_at_attempt: 0,
            runs: 0,
            created_at: now,
            updated_at: now,
            finished_at: None,
            partition: None,
            topic: None,
        }
    }

    /// The stream's partition among `partitions`: the recorded one, else a stable hash of the id
    /// (records written before partitions were recorded).
    pub fn partition_in(&self, partitions: i32) -> i32 {
        match self.partition {
            Some(p) => p,
            None => {
                let h = self.stream_id.bytes().fold(0x811c_9dc5_u32, |h, b| {
                    (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
                });
                (h % partitions.max(1) as u32) as i32
            }
        }
    }
}

/// Whether a write must reach the disk before it returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Fsync the WAL: survives a machine crash.
    Sync,
    /// Write the WAL without fsync: survives a process crash.
    Buffered,
}

/// Handle to the store; cheap to clone. The database closes when the last handle drops.
#[derive(Clone)]
pub struct Store {
    db: Arc<DB>,
}

fn key(stream_id: &str) -> Vec<u8> {
    format!("{STREAM_PREFIX}{stream_id}").into_bytes()
}

/// Adds the deletion of a record's index entries to `batch` (nothing if the record is unreadable).
fn unindex(db: &DB, stream_id: &str, batch: &mut rocksdb::WriteBatch) -> Result<(), Error> {
    if let Some(bytes) = db.get_pinned(key(stream_id))? {
        if let Ok(r) = decode(stream_id, &bytes) {
            batch.delete(index::index_key(&r));
            owners::unindex(batch, &r);
        }
    }
    Ok(())
}

fn decode(stream_id: &str, bytes: &[u8]) -> Result<StreamRecord, Error> {
    serde_json::from_slice(bytes).map_err(|e| Error::Corrupt {
        stream_id: stream_id.to_owned(),
        reason: e.to_string(),
    })
}

/// Size of one RocksDB memtable.
const MEMTABLE_BYTES: usize = 8 << 20;

impl Store {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Store, Error> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_keep_log_file_num(4);
        // Records are small and rewritten often (every checkpoint): a modest memtable is flushed
        // sooner and keeps the process's memory flat instead of growing to RocksDB's 64 MiB default.
        opts.set_write_buffer_size(MEMTABLE_BYTES);
        opts.set_max_write_buffer_number(2);
        let db = DB::open(&opts, path).map_err(|source| Error::Open {
            path: path.display().to_string(),
            source,
        })?;
        index::backfill(&db)?;
        owners::backfill(&db)?;
        Ok(Store { db: Arc::new(db) })
    }

    /// One page of streams, newest first (see [`ListQuery`]).
    pub async fn list(&self, query: ListQuery) -> Result<Page, Error> {
        self.list_visible(query, |_| true).await
    }

    /// One page of the streams `visible` accepts, newest first. Its cursor names no stream the
    /// page leaves out, so paging reveals only what `visible` lets through.
    pub async fn list_visible(
        &self,
        query: ListQuery,
        visible: impl Fn(&StreamRecord) -> bool + Send + 'static,
    ) -> Result<Page, Error> {
        self.blocking(move |db| index::list(db, &query, &visible))
            .await
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&DB) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db)).await?
    }

    /// Reads a stream's record.
    pub async fn get(&self, stream_id: &str) -> Result<Option<StreamRecord>, Error> {
        let id = stream_id.to_owned();
        self.blocking(move |db| {
            db.get_pinned(key(&id))?
                .map(|bytes| decode(&id, &bytes))
                .transpose()
        })
        .await
    }

    /// Writes a stream's record.
    pub async fn put(&self, record: &StreamRecord, durability: Durability) -> Result<(), Error> {
        self.put_owned(record.clone(), durability).await
    }

    /// Writes a stream's record, taking it (no copy). The caller stamps `updated_at`, so every copy
    /// of a record (local and changelog) carries the same one.
    pub async fn put_owned(
        &self,
        record: StreamRecord,
        durability: Durability,
    ) -> Result<(), Error> {
        self.blocking(move |db| {
            let bytes = serde_json::to_vec(&record).map_err(|e| Error::Corrupt {
                stream_id: record.stream_id.clone(),
                reason: e.to_string(),
            })?;
            let mut batch = rocksdb::WriteBatch::default();
            batch.put(key(&record.stream_id), bytes);
            batch.put(index::index_key(&record), b"");
            owners::index(&mut batch, &record);
            let mut wo = WriteOptions::default();
            wo.set_sync(durability == Durability::Sync);
            db.write_opt(batch, &wo)?;
            Ok(())
        })
        .await
    }

    /// How many unfinished streams `owner` has (counted up to `limit`), on every instance.
    pub async fn active_streams(&self, owner: &str, limit: usize) -> Result<usize, Error> {
        let owner = owner.to_owned();
        self.blocking(move |db| owners::count(db, &owner, limit))
            .await
    }

    /// Removes a stream's record.
    pub async fn delete(&self, stream_id: &str) -> Result<(), Error> {
        let id = stream_id.to_owned();
        self.blocking(move |db| {
            let mut batch = rocksdb::WriteBatch::default();
            unindex(db, &id, &mut batch)?;
            batch.delete(key(&id));
            let mut wo = WriteOptions::default();
            wo.set_sync(true);
            db.write_opt(batch, &wo)?;
            Ok(())
        })
        .await
    }

    /// Every record, with a per-record decode result so one corrupt record does not hide the rest.
    pub async fn scan(&self) -> Result<Vec<(String, Result<StreamRecord, Error>)>, Error> {
        self.blocking(|db| {
            let mut out = Vec::new();
            for item in db.prefix_iterator(STREAM_PREFIX.as_bytes()) {
                let (k, v) = item?;
                let Some(id) = k.strip_prefix(STREAM_PREFIX.as_bytes()) else {
                    break;
                };
                let id = String::from_utf8_lossy(id).into_owned();
                let rec = decode(&id, &v);
                out.push((id, rec));
            }
            Ok(out)
        })
        .await
    }

    /// Replaces the records of deleted streams with "gone" markers, in one synced batch.
    pub async fn bury(&self, stream_ids: Vec<String>) -> Result<(), Error> {
        self.blocking(move |db| {
            let now = Utc::now().to_rfc3339();
            let mut batch = rocksdb::WriteBatch::default();
            for id in &stream_ids {
                unindex(db, id, &mut batch)?;
                batch.delete(key(id));
                batch.put(format!("{GONE_PREFIX}{id}"), now.as_bytes());
            }
            let mut wo = WriteOptions::default();
            wo.set_sync(true);
            db.write_opt(batch, &wo)?;
            Ok(())
        })
        .await
    }

    /// Whether a stream was deleted by retention.
    pub async fn is_gone(&self, stream_id: &str) -> Result<bool, Error> {
        let k = format!("{GONE_PREFIX}{stream_id}");
        self.blocking(move |db| Ok(db.get_pinned(k)?.is_some()))
            .await
    }

    /// Removes "gone" markers written before `cutoff`. Returns how many were removed.
    pub async fn purge_gone(&self, cutoff: DateTime<Utc>) -> Result<usize, Error> {
        self.blocking(move |db| {
            let mut batch = rocksdb::WriteBatch::default();
            for item in db.prefix_iterator(GONE_PREFIX.as_bytes()) {
                let (k, v) = item?;
                if !k.starts_with(GONE_PREFIX.as_bytes()) {
                    break;
                }
                let at = std::str::from_utf8(&v)
                    .ok()
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok());
                if at.is_none_or(|t| t < cutoff) {
                    batch.delete(k);
                }
            }
            let n = batch.len();
            db.write(batch)?;
            Ok(n)
        })
        .await
    }

    /// Flushes memtables and the WAL to disk.
    pub async fn flush(&self) -> Result<(), Error> {
        self.blocking(|db| {
            db.flush_wal(true)?;
            db.flush()?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Request {
        Request::parse(
            br#"{"type":"demo:stream_ticks:v1:requested","payload":{"count":2}}"#,
            1024,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn records_round_trip_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            assert!(store.get("a").await.unwrap().is_none());
            let mut rec = StreamRecord::new("a", request());
            rec.state = StreamState::Running;
            rec.cursor = Some(serde_json::json!({"n": 1}));
            store.put(&rec, Durability::Sync).await.unwrap();
            store
                .put(&StreamRecord::new("b", request()), Durability::Buffered)
                .await
                .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let a = store.get("a").await.unwrap().unwrap();
        assert_eq!(a.state, StreamState::Running);
        assert_eq!(a.cursor, Some(serde_json::json!({"n": 1})));
        let ids: Vec<_> = store
            .scan()
            .await
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(ids, vec!["a", "b"]);
        store.delete("a").await.unwrap();
        assert!(store.get("a").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn corrupt_records_are_reported_per_stream() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.db.put(key("bad"), b"{not json").unwrap();
        store
            .put(&StreamRecord::new("good", request()), Durability::Sync)
            .await
            .unwrap();
        let err = store.get("bad").await.unwrap_err();
        assert!(matches!(err, Error::Corrupt { ref stream_id, .. } if stream_id == "bad"));
        let scanned = store.scan().await.unwrap();
        assert!(scanned.iter().any(|(id, r)| id == "good" && r.is_ok()));
        assert!(scanned.iter().any(|(id, r)| id == "bad" && r.is_err()));
    }
}
