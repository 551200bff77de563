//! The worker pool: admits streams under a bound on concurrent runs, registers them (hub first,
//! then the record, acknowledged by the changelog and synced locally), and launches their runs as
//! tracked tasks, grouped by the intake partition that owns them.
//!
//! Runs exist only for partitions this instance owns: `open` starts a partition's group when it is
//! assigned, `resume` relaunches its interrupted streams, and `close` stops them (they checkpoint
//! and hand over, as at shutdown) and waits before the partition is given up. When every permit is
//! taken, `admit` waits: requests are never dropped. This module does not read Kafka; intake calls
//! it.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::event::{Request, StreamId};
use crate::retention::TopicBudget;
use crate::store::StreamRecord;
use crate::stream::provider::{Launch, Provider};
use crate::stream::records;

/// What `admit` did with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A new stream was registered and launched.
    Started,
    /// The stream already exists (a redelivery or a repeated idempotency key); nothing ran.
    Duplicate,
    /// The process is shutting down; nothing was registered.
    ShuttingDown,
    /// This instance does not own the request's partition (any more); nothing was registered.
    NotOwned,
    /// `retention.max_stream_topics` stream topics exist; the request was refused.
    AtCapacity,
}

/// The runs of one owned partition: stopped together when it is revoked.
struct Partition {
    stop: CancellationToken,
    runs: TaskTracker,
}

/// The pool. Cheap to clone.
#[derive(Clone)]
pub struct Pool {
    provider: Arc<Provider>,
    permits: Arc<Semaphore>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    budget: Arc<TopicBudget>,
    partitions: Arc<Mutex<HashMap<i32, Partition>>>,
}

impl Pool {
    /// The record writer its runs use.
    pub fn records(&self) -> &crate::stream::records::Records {
        &self.provider.records
    }

    /// A pool running at most `provider.settings.max_concurrent_streams` streams.
    pub fn new(
        provider: Arc<Provider>,
        tracker: TaskTracker,
        shutdown: CancellationToken,
        budget: Arc<TopicBudget>,
    ) -> Pool {
        let permits = Arc::new(Semaphore::new(provider.settings.max_concurrent_streams));
        Pool {
            provider,
            permits,
            tracker,
            shutdown,
            budget,
            partitions: Arc::default(),
        }
    }

    async fn permit(&self) -> Option<OwnedSemaphorePermit> {
        tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => None,
            p = self.permits.clone().acquire_owned() => p.ok(),
        }
    }

    /// The stop switch and task group of an owned partition, if it is owned.
    fn partition(&self, p: i32) -> Option<(CancellationToken, TaskTracker)> {
        let map = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&p).map(|g| (g.stop.clone(), g.runs.clone()))
    }

    /// Starts the run group of newly owned partitions.
    pub fn open(&self, partitions: &[i32]) {
        let mut map = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
        for &p in partitions {
            map.entry(p).or_insert_with(|| Partition {
                stop: self.shutdown.child_token(),
                runs: TaskTracker::new(),
            });
        }
    }

    /// Stops the runs of revoked partitions (each checkpoints and hands over) and waits up to
    /// `grace` for them. Returns how many runs were stopped.
    pub async fn close(&self, partitions: &[i32], grace: Duration) -> usize {
        let groups: Vec<Partition> = {
            let mut map = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
            partitions.iter().filter_map(|p| map.remove(p)).collect()
        };
        let mut stopped = 0;
        for g in &groups {
            stopped += g.runs.len();
            g.stop.cancel();
            g.runs.close();
        }
        let all = futures::future::join_all(groups.iter().map(|g| g.runs.wait()));
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!(
                ?partitions,
                grace_ms = grace.as_millis() as u64,
                "revoked partitions' streams did not stop in time"
            );
        }
        stopped
    }

    /// Registers and launches a stream of intake partition `partition` unless it already exists.
    /// Waits while the pool is full.
    pub async fn admit(
        &self,
        stream_id: &StreamId,
        request: Request,
        partition: i32,
    ) -> Result<Admission, records::Error> {
        let Some(permit) = self.permit().await else {
            return Ok(Admission::ShuttingDown);
        };
        let p = &self.provider;
        let store = p.records.store();
        if store.get(stream_id.as_str()).await?.is_some() {
            return Ok(Admission::Duplicate);
        }
        let Some(group) = self.partition(partition) else {
            return Ok(Admission::NotOwned);
        };
        if !self.budget.try_take() {
            return Ok(Admission::AtCapacity);
        }
        let Some(live) = p.hub.register(stream_id.as_str()) else {
            self.budget.release(1);
            return Ok(Admission::Duplicate);
        };
        let mut record = StreamRecord::new(stream_id.as_str(), request);
        record.partition = Some(partition);
        record.topic = Some(p.journal.topic_for(stream_id));
        if let Err(e) = p.records.register(&record).await {
            p.hub.remove(stream_id.as_str());
            self.budget.release(1);
            if e.is_handover() {
                return Ok(Admission::NotOwned);
            }
            return Err(e);
        }
        p.metrics.stream_topics_in_use(self.budget.used());
        p.hub.announce(stream_id.as_str(), &record.request);
        self.launch(permit, record, live, Launch::New, group);
        Ok(Admission::Started)
    }

    fn launch(
        &self,
        permit: OwnedSemaphorePermit,
        record: StreamRecord,
        live: Arc<crate::stream::hub::LiveStream>,
        launch: Launch,
        (stop, runs): (CancellationToken, TaskTracker),
    ) {
        let provider = self.provider.clone();
        let id = record.stream_id.clone();
        let pool = self.clone();
        let run = runs.track_future(async move {
            let run = AssertUnwindSafe(provider.run(record, live, stop.clone(), launch));
            if run.catch_unwind().await.is_err() {
                // The provider already left the hub (drop guard); the record is not terminal,
                // so the stream resumes, from what its topic holds, when its partition is next
                // assigned.
                tracing::error!(
                    stream_id = id,
                    "stream run panicked outside its handler; it resumes on the next assignment"
                );
            }
            drop(permit);
            if stop.is_cancelled() {
                pool.relaunch(&id).await;
            }
        });
        self.tracker.spawn(run);
    }

    /// Relaunches a stream whose run was stopped with its partition but ended only after the
    /// partition was owned here again: `resume` passed it over then, because the stopping run was
    /// still registered. Nothing happens if the stream ended, its partition is not owned (its
    /// next owner resumes it), or another run of it has started since.
    async fn relaunch(&self, id: &str) {
        if self.shutdown.is_cancelled() {
            return;
        }
        let rec = match self.provider.records.store().get(id).await {
            Ok(Some(rec)) if !rec.state.is_terminal() => rec,
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(stream_id = id, error = %e, "stream record not read; the stream resumes on the next assignment");
                return;
            }
        };
        let Some(group) = self
            .partition(rec.partition_in(self.provider.records.partitions()))
            .filter(|(stop, _)| !stop.is_cancelled())
        else {
            return;
        };
        let Some(permit) = self.permit().await else {
            return;
        };
        if self.start_resumed(permit, rec, group).await {
            tracing::info!(
                stream_id = id,
                "stream relaunched: its stopped run ended after its partition was owned here again"
            );
        }
    }

    /// Registers and launches the resumed run of `rec`'s stream unless another run holds it, or
    /// the stream ended since `rec` was read. Whether it was launched.
    async fn start_resumed(
        &self,
        permit: OwnedSemaphorePermit,
        rec: StreamRecord,
        group: (CancellationToken, TaskTracker),
    ) -> bool {
        let id = rec.stream_id.clone();
        let Some(live) = self.provider.hub.register(&id) else {
            return false;
        };
        // Read again now that no other run can start: one may have run and ended since.
        let rec = match self.provider.records.store().get(&id).await {
            Ok(Some(now)) if !now.state.is_terminal() => now,
            Ok(_) => {
                self.provider.hub.remove(&id);
                return false;
            }
            Err(e) => {
                tracing::warn!(stream_id = id, error = %e, "stream record re-read failed; resuming from the copy read before");
                rec
            }
        };
        self.launch(permit, rec, live, Launch::Resume, group);
        true
    }

    /// Relaunches every stream of `partitions` that was pending or running when its last owner
    /// stopped. Records that cannot be decoded are reported and skipped; the rest resume.
    pub async fn resume(&self, partitions: &[i32]) -> Result<usize, crate::store::Error> {
        let store = self.provider.records.store();
        let n = self.provider.records.partitions();
        let mut resumed = 0;
        for (id, rec) in store.scan().await? {
            let rec = match rec {
                Ok(r) if r.state.is_terminal() => continue,
                Ok(r) if !partitions.contains(&r.partition_in(n)) => continue,
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(stream_id = id, error = %e, code = "corrupt_record", "stream record cannot be resumed");
                    if let Err(e) = self.provider.fail_unreadable(&id).await {
                        tracing::error!(stream_id = id, error = %e, "could not end the stream with a failed event");
                    }
                    continue;
                }
            };
            let Some(permit) = self.permit().await else {
                break;
            };
            let Some(group) = self.partition(rec.partition_in(n)) else {
                continue; // revoked again meanwhile
            };
            // The scan is a snapshot: a stream admitted since may have finished.
            if self.start_resumed(permit, rec, group).await {
                resumed += 1;
            }
        }
        Ok(resumed)
    }

    /// Streams running now.
    pub fn active(&self) -> usize {
        self.provider.hub.active()
    }
}
