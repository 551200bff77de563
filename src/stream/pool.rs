//! The worker pool: admits streams under a bound on concurrent runs, registers them (hub first,
//! then a synced store record), launches their runs as tracked tasks, and resumes interrupted
//! streams at start-up.
//!
//! When every permit is taken, `admit` waits: requests are never dropped. This module does not read
//! Kafka; intake calls it.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::event::{Request, StreamId};
use crate::retention::TopicBudget;
use crate::store::{self, Durability, StreamRecord};
use crate::stream::provider::{Launch, Provider};

/// What `admit` did with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A new stream was registered and launched.
    Started,
    /// The stream already exists (a redelivery or a repeated idempotency key); nothing ran.
    Duplicate,
    /// The process is shutting down; the request was not registered.
    ShuttingDown,
    /// `retention.max_stream_topics` stream topics exist; the request was refused.
    AtCapacity,
}

/// The pool. Cheap to clone.
#[derive(Clone)]
pub struct Pool {
    provider: Arc<Provider>,
    permits: Arc<Semaphore>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    budget: Arc<TopicBudget>,
}

impl Pool {
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
        }
    }

    async fn permit(&self) -> Option<OwnedSemaphorePermit> {
        tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => None,
            p = self.permits.clone().acquire_owned() => p.ok(),
        }
    }

    /// Registers and launches a stream unless it already exists. Waits while the pool is full.
    pub async fn admit(
        &self,
        stream_id: &StreamId,
        request: Request,
    ) -> Result<Admission, store::Error> {
        let Some(permit) = self.permit().await else {
            return Ok(Admission::ShuttingDown);
        };
        let p = &self.provider;
        if p.store.get(stream_id.as_str()).await?.is_some() {
            return Ok(Admission::Duplicate);
        }
        if !self.budget.try_take() {
            return Ok(Admission::AtCapacity);
        }
        let Some(live) = p.hub.register(stream_id.as_str()) else {
            self.budget.release(1);
            return Ok(Admission::Duplicate);
        };
        let record = StreamRecord::new(stream_id.as_str(), request);
        if let Err(e) = p.store.put(&record, Durability::Sync).await {
            p.hub.remove(stream_id.as_str());
            self.budget.release(1);
            return Err(e);
        }
        p.metrics.stream_topics_in_use(self.budget.used());
        p.hub.announce(stream_id.as_str(), &record.request);
        self.launch(permit, record, live, Launch::New);
        Ok(Admission::Started)
    }

    fn launch(
        &self,
        permit: OwnedSemaphorePermit,
        record: StreamRecord,
        live: Arc<crate::stream::hub::LiveStream>,
        launch: Launch,
    ) {
        let provider = self.provider.clone();
        let shutdown = self.shutdown.clone();
        let id = record.stream_id.clone();
        self.tracker.spawn(async move {
            let run = AssertUnwindSafe(provider.run(record, live, shutdown, launch));
            if run.catch_unwind().await.is_err() {
                // The provider already left the hub (drop guard); the record is not terminal,
                // so the stream resumes, from what its topic holds, on the next start.
                tracing::error!(
                    stream_id = id,
                    "stream run panicked outside its handler; it resumes on the next start"
                );
            }
            drop(permit);
        });
    }

    /// Relaunches every stream that was pending or running when the process stopped. Records that
    /// cannot be decoded are reported and skipped; the rest resume.
    pub async fn resume_interrupted(&self) -> Result<usize, store::Error> {
        let mut resumed = 0;
        for (id, rec) in self.provider.store.scan().await? {
            let rec = match rec {
                Ok(r) if !r.state.is_terminal() => r,
                Ok(_) => continue,
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
            let Some(live) = self.provider.hub.register(&id) else {
                continue;
            };
            // The scan is a snapshot: a stream admitted after start-up may have finished since.
            let rec = match self.provider.store.get(&id).await {
                Ok(Some(now)) if !now.state.is_terminal() => now,
                Ok(_) => {
                    self.provider.hub.remove(&id);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(stream_id = id, error = %e, "stream record re-read failed; resuming from the scanned copy");
                    rec
                }
            };
            self.launch(permit, rec, live, Launch::Resume);
            resumed += 1;
        }
        Ok(resumed)
    }

    /// Streams running now.
    pub fn active(&self) -> usize {
        self.provider.hub.active()
    }
}
