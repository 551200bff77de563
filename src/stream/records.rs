//! Stream record writes: the local store and the changelog together, in the order that keeps the
//! changelog the durable copy. Reads go to the local store, which the changelog follower keeps
//! current for streams owned elsewhere.
//!
//! Every write is committed to the changelog before it is written locally: an intake offset is
//! never stored for a stream another instance could not find, and a write of a partition this
//! instance no longer owns (refused by the changelog) never lands in the local store.

use std::sync::Arc;

use crate::kafka::changelog::{self, Changelog};
use crate::store::{self, Durability, Store, StreamRecord};

/// Records of one partition written to the changelog at once while seeding it.
const SEED_BATCH: usize = 256;

/// Record write failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// The changelog did not acknowledge the record.
    #[error(transparent)]
    Changelog(#[from] changelog::Error),
}

impl Error {
    /// Whether the write was refused because the partition is owned elsewhere now, or its
    /// transaction was aborted.
    pub fn is_handover(&self) -> bool {
        match self {
            Error::Changelog(changelog::Error::Write { source, .. }) => source.is_handover(),
            _ => false,
        }
    }
}

/// The writer of stream records. Cheap to clone.
#[derive(Clone)]
pub struct Records {
    store: Store,
    changelog: Arc<Changelog>,
}

impl Records {
    /// Records written to `store` and `changelog`.
    pub fn new(store: Store, changelog: Arc<Changelog>) -> Records {
        Records { store, changelog }
    }

    /// The local store, for reads.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Partitions of the changelog (and of the intake topic).
    pub fn partitions(&self) -> i32 {
        self.changelog.partitions()
    }

    /// Registers a new stream: acknowledged by the changelog, then synced locally.
    pub async fn register(&self, record: &StreamRecord) -> Result<(), Error> {
        self.changelog.write(record).await?;
        self.store.put(record, Durability::Sync).await?;
        Ok(())
    }

    /// Writes a record to the changelog, then, once that committed, locally with `durability`.
    /// A write the changelog refuses (the partition is owned elsewhere now) never reaches the
    /// local store either, where it would shadow the new owner's records.
    pub async fn save(&self, record: StreamRecord, durability: Durability) -> Result<(), Error> {
        let mut stamped = record;
        stamped.updated_at = chrono::Utc::now();
        self.changelog.write(&stamped).await?;
        self.store.put(&stamped, durability).await?;
        Ok(())
    }

    /// Writes every local record of `partition` to the changelog, once, if the store holds records
    /// from before it followed the changelog (see `Store::mark_unseeded`). Run by the partition's
    /// new owner after its restore, so a local record is at least as new as the changelog's.
    /// Returns how many records were written.
    pub async fn seed(&self, partition: i32) -> Result<usize, Error> {
        let topic = self.changelog.topic();
        if !self.store.is_unseeded(topic, partition).await? {
            return Ok(0);
        }
        let n = self.changelog.partitions();
        let records: Vec<StreamRecord> = self
            .store
            .scan()
            .await?
            .into_iter()
            .filter_map(|(_, r)| r.ok())
            .filter(|r| r.partition_in(n) == partition)
            .collect();
        for batch in records.chunks(SEED_BATCH) {
            let writes = batch.iter().map(|r| self.changelog.write(r));
            for w in futures::future::join_all(writes).await {
                w?;
            }
        }
        self.store.mark_seeded(topic, partition).await?;
        Ok(records.len())
    }

    /// Replaces deleted streams' records with "gone" markers, here and (as tombstones) in the
    /// changelog. `streams` are `(stream id, partition)`.
    pub async fn bury(&self, streams: Vec<(String, i32)>) -> Result<(), Error> {
        self.changelog.bury(&streams).await?;
        self.store
            .bury(streams.into_iter().map(|(id, _)| id).collect())
            .await?;
        Ok(())
    }
}
