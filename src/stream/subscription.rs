//! Subscriptions: one client's ordered view of a stream, replay from Kafka after a resume point
//! followed by the live tail, with no gap and no duplicate at the switch-over.
//!
//! The live channel is subscribed first, then the topic's high watermark is read and everything
//! below it replayed; live events at or below the last delivered offset are dropped. A subscriber
//! that lags, or a stream running on another process, is served by re-reading Kafka. Transports
//! (SSE, WebSocket) only format what this module yields.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::event::{Envelope, StreamId};
use crate::kafka::producer::Journal;
use crate::kafka::reader::{self, Reader, Watermarks};
use crate::metrics::Metrics;
use crate::settings::EdgeSettings;
use crate::store::{self, Store};
use crate::stream::hub::{Hub, Live, StoredEvent};
use crate::stream::remote::{RemoteEvent, RemoteTails};

/// What a subscriber receives, in order.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// A stored event with its offset id.
    Event(Arc<StoredEvent>),
    /// A heartbeat from a running stream.
    Heartbeat(Arc<Envelope>),
    /// The resume point is older than the retained history; replay starts at `earliest`.
    HistoryLost {
        /// The first offset the client asked for.
        requested: i64,
        /// The earliest offset still retained.
        earliest: i64,
    },
}

/// Why a subscription could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such stream here, in the store or in Kafka.
    #[error("stream {0} not found")]
    NotFound(String),
    /// The stream ended and retention deleted it.
    #[error("stream {0} ended and its retention expired")]
    Gone(String),
    /// The resume point is beyond the end of the stream.
    #[error("last event id {after} is beyond the stream's newest event ({newest})")]
    ResumePointAhead {
        /// The id the client sent.
        after: i64,
        /// The newest offset in the stream, or -1 if empty.
        newest: i64,
    },
    /// The resume point is beyond what Kafka shows of a stream that is still running or
    /// resumable: a broker that just restarted can report an older high watermark for a moment.
    /// The client should try again.
    #[error("last event id {after} is not visible yet (newest shown: {newest}); try again")]
    ResumePointNotVisible {
        /// The id the client sent.
        after: i64,
        /// The newest offset Kafka shows.
        newest: i64,
    },
    /// Kafka could not be read.
    #[error(transparent)]
    Replay(#[from] reader::Error),
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] store::Error),
}

/// Opens subscriptions. Cheap to share behind an `Arc`.
pub struct Subscriptions {
    /// Live fan-out.
    pub hub: Hub,
    /// Stream records.
    pub store: Store,
    /// Replay reads.
    pub reader: Arc<Reader>,
    /// Topic naming.
    pub journal: Arc<Journal>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// `[edge]` settings.
    pub settings: EdgeSettings,
    /// Tracks subscription tasks.
    pub tracker: TaskTracker,
    /// Fires at shutdown.
    pub shutdown: CancellationToken,
    /// Live tails of streams running on other instances.
    pub remote: Arc<RemoteTails>,
}

struct Pump {
    subs: Arc<Subscriptions>,
    id: StreamId,
    topic: String,
    next: i64,
    tx: mpsc::Sender<Delivery>,
}

/// The pump ended: the terminal event was sent, the client left, or the process is stopping.
struct Done;

impl Subscriptions {
    /// Opens a subscription to `id` after offset `after` (all events when `None`), waiting up to
    /// `wait` for a stream that is not registered yet.
    pub async fn open(
        self: &Arc<Self>,
        id: &StreamId,
        after: Option<i64>,
        wait: Duration,
    ) -> Result<mpsc::Receiver<Delivery>, Error> {
        let mut live = self.hub.subscribe(id.as_str());
        if live.is_none() && !self.known(id).await? {
            let deadline = tokio::time::Instant::now() + wait;
            self.hub.wait_for(id.as_str(), deadline).await;
            live = self.hub.subscribe(id.as_str());
            if live.is_none() && !self.known(id).await? {
                if self.store.is_gone(id.as_str()).await? {
                    return Err(Error::Gone(id.to_string()));
                }
                return Err(Error::NotFound(id.to_string()));
            }
        }
        let topic = self.topic(id).await?;
        let mut marks = self.resume_range(id, &topic, live.is_some(), after).await?;
        let start = after.map_or(0, |a| a + 1);
        if let Some(a) = after.filter(|a| *a >= marks.high && *a >= 0) {
            marks.high = self.confirm_ahead(id, &topic, a, marks.high).await?;
        }
        let (tx, rx) = mpsc::channel(64);
        let mut pump = Pump {
            subs: self.clone(),
            id: id.clone(),
            topic,
            next: start.max(marks.low),
            tx,
        };
        let lost = (start < marks.low).then_some((start, marks.low));
        self.tracker.spawn(async move {
            let _ = pump.run(lost, marks.high, live).await;
        });
        Ok(rx)
    }
}

impl Subscriptions {
    /// Whether the store knows the stream (an undecodable record still counts: its topic is readable).
    async fn known(&self, id: &StreamId) -> Result<bool, Error> {
        match self.store.get(id.as_str()).await {
            Ok(r) => Ok(r.is_some()),
            Err(store::Error::Corrupt { .. }) => Ok(true),
            Err(e) => Err(e.into()),
        }
    }

    /// The stream's topic: the one its record names (a stream registering now has the new name).
    pub async fn topic(&self, id: &StreamId) -> Result<String, Error> {
        match self.store.get(id.as_str()).await {
            Ok(r) => Ok(self.journal.topic_of(id, r.as_ref())),
            Err(store::Error::Corrupt { .. }) => Ok(self.journal.topic_for(id)),
            Err(e) => Err(e.into()),
        }
    }

    /// Confirms a resume point `after` beyond `high`, the newest offset known, or returns the
    /// higher watermark that shows it. A run here that has published events knows the stream's
    /// newest one, so the client is ahead. Otherwise Kafka may be behind for a moment (a broker
    /// that just restarted reports an older high watermark): it is asked again for about two
    /// seconds. Still ahead of a finished stream is certain (400); of one still running or
    /// resumable, it may only not be visible yet (503, try again).
    async fn confirm_ahead(
        &self,
        id: &StreamId,
        topic: &str,
        after: i64,
        high: i64,
    ) -> Result<i64, Error> {
        let ahead = |newest| Error::ResumePointAhead { after, newest };
        // A run here that has published knows its newest offset; one that has not published yet
        // may do so while Kafka is asked again, so it is looked at before every ask.
        let published_here = || {
            self.hub
                .get(id.as_str())
                .map(|s| s.last_offset())
                .filter(|o| *o >= 0)
        };
        let mut newest = high - 1;
        for ms in [0, 100, 200, 400, 800, 500] {
            if let Some(last) = published_here() {
                if after > last {
                    return Err(ahead(last.max(newest)));
                }
                return Ok(last + 1);
            }
            tokio::time::sleep(Duration::from_millis(ms)).await;
            match self.reader.watermarks(topic).await {
                Ok(m) if after < m.high => return Ok(m.high),
                Ok(m) => newest = newest.max(m.high - 1),
                Err(reader::Error::UnknownTopic(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        match self.store.get(id.as_str()).await {
            Ok(Some(r)) if !r.state.is_terminal() => {
                tracing::warn!(stream_id = %id, after, newest, "resume point beyond what Kafka shows of an unfinished stream; the client is asked to try again");
                Err(Error::ResumePointNotVisible { after, newest })
            }
            _ => Err(ahead(newest)),
        }
    }

    /// The offsets to replay below. For a stream running here the hub knows the newest offset it
    /// published (read after subscribing, so nothing falls between); that is enough unless the
    /// client resumes from further on, as after a restart, when a resumed run has not yet
    /// published anything. Then, and for streams not running here, Kafka is asked.
    async fn resume_range(
        &self,
        id: &StreamId,
        topic: &str,
        live: bool,
        after: Option<i64>,
    ) -> Result<Watermarks, Error> {
        // Stream topics keep their whole history while the stream runs (retention is Sluice's
        // sweeper, after the end), so a running stream's range starts at 0.
        let local_high = self
            .hub
            .get(id.as_str())
            .filter(|_| live)
            .map(|s| s.last_offset() + 1);
        if let Some(high) = local_high.filter(|h| after.is_none_or(|a| a < *h)) {
            return Ok(Watermarks { low: 0, high });
        }
        match self.reader.watermarks(topic).await {
            Ok(m) => Ok(Watermarks {
                low: m.low,
                high: m.high.max(local_high.unwrap_or(0)),
            }),
            Err(reader::Error::UnknownTopic(_)) => Ok(Watermarks {
                low: 0,
                high: local_high.unwrap_or(0),
            }),
            Err(e) => Err(e.into()),
        }
    }
}

impl Pump {
    async fn send(&self, d: Delivery) -> Result<(), Done> {
        tokio::select! {
            biased;
            _ = self.subs.shutdown.cancelled() => Err(Done),
            r = self.tx.send(d) => r.map_err(|_| Done),
        }
    }

    /// Sends one event if it is the next one; returns Err(Done) after the terminal event.
    async fn deliver(&mut self, ev: Arc<StoredEvent>) -> Result<(), Done> {
        if ev.offset < self.next {
            return Ok(());
        }
        self.next = ev.offset + 1;
        let terminal = ev.state.is_terminal();
        self.send(Delivery::Event(ev)).await?;
        if terminal {
            return Err(Done);
        }
        Ok(())
    }

    /// Replays `[next, until)`: from the stream's recent window in memory while it reaches back
    /// far enough, otherwise from Kafka.
    async fn replay(&mut self, until: i64) -> Result<(), Done> {
        while self.next < until {
            let recent = self
                .subs
                .hub
                .get(self.id.as_str())
                .and_then(|s| s.recent(self.next, until))
                .filter(|events| !events.is_empty());
            if let Some(events) = recent {
                self.subs.metrics.replayed_from_memory(events.len() as u64);
                for ev in events {
                    self.deliver(ev).await?;
                }
                continue;
            }
            let batch = match self.subs.reader.read(&self.topic, self.next, until).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(stream_id = %self.id, error = %e, "replay failed; ending subscription");
                    return Err(Done);
                }
            };
            if batch.is_empty() {
                return Ok(());
            }
            self.subs.metrics.replayed(batch.len() as u64);
            for ev in batch {
                self.deliver(Arc::new(ev)).await?;
            }
        }
        Ok(())
    }

    /// Delivers what lies between the next expected offset and a live event at `until`. Offsets
    /// skip transaction markers, so a gap is usually empty: when the stream's recent window reaches
    /// back to the next offset it holds every event before `until` (live events are published in
    /// order), and Kafka is read only when it does not.
    async fn fill_gap(&mut self, until: i64) -> Result<(), Done> {
        let recent = self
            .subs
            .hub
            .get(self.id.as_str())
            .and_then(|s| s.recent(self.next, until));
        match recent {
            Some(events) => {
                for ev in events {
                    self.deliver(ev).await?;
                }
                Ok(())
            }
            None => Box::pin(self.replay(until)).await,
        }
    }

    /// Replays up to the current high watermark.
    async fn catch_up(&mut self) -> Result<(), Done> {
        match self.subs.reader.watermarks(&self.topic).await {
            Ok(m) => self.replay(m.high).await,
            Err(reader::Error::UnknownTopic(_)) => Ok(()),
            Err(e) => {
                tracing::warn!(stream_id = %self.id, error = %e, "watermarks unavailable; ending subscription");
                Err(Done)
            }
        }
    }

    async fn run(
        &mut self,
        lost: Option<(i64, i64)>,
        high: i64,
        mut live: Option<broadcast::Receiver<Live>>,
    ) -> Result<(), Done> {
        if let Some((requested, earliest)) = lost {
            self.send(Delivery::HistoryLost {
                requested,
                earliest,
            })
            .await?;
        }
        // Reading Kafka takes much more state than waiting for live events; boxed, it is held
        // only while a read runs, and a subscriber that only waits stays small.
        Box::pin(self.replay(high)).await?;
        loop {
            match live.take() {
                Some(rx) => self.follow_live(rx).await?,
                None => live = Some(Box::pin(self.poll_remote()).await?),
            }
        }
    }

    /// Follows the local live channel until it closes.
    async fn follow_live(&mut self, mut rx: broadcast::Receiver<Live>) -> Result<(), Done> {
        loop {
            let item = tokio::select! {
                biased;
                _ = self.subs.shutdown.cancelled() => return Err(Done),
                _ = self.tx.closed() => return Err(Done),
                r = rx.recv() => r,
            };
            match item {
                Ok(Live::Event(ev)) => {
                    if ev.offset > self.next {
                        self.fill_gap(ev.offset).await?;
                    }
                    self.deliver(ev).await?;
                }
                Ok(Live::Heartbeat(h)) => self.send(Delivery::Heartbeat(h)).await?,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::debug!(stream_id = %self.id, skipped = n, "subscriber lagged; re-reading from Kafka");
                    Box::pin(self.catch_up()).await?;
                }
                Err(broadcast::error::RecvError::Closed) => {
                    Box::pin(self.catch_up()).await?;
                    return Ok(());
                }
            }
        }
    }

    /// Tails a stream that does not run here through the process's remote tail, until it runs
    /// here or ends. Every `edge.remote_poll_interval` without an event it also checks the local
    /// record, in case the stream ended without the tail seeing its terminal event.
    async fn poll_remote(&mut self) -> Result<broadcast::Receiver<Live>, Done> {
        let mut follow = self.subs.remote.follow(&self.topic);
        self.catch_up().await?;
        loop {
            if let Some(rx) = self.subs.hub.subscribe(self.id.as_str()) {
                self.catch_up().await?;
                return Ok(rx);
            }
            let deadline = tokio::time::Instant::now() + self.subs.settings.remote_poll_interval;
            let item = tokio::select! {
                biased;
                _ = self.subs.shutdown.cancelled() => return Err(Done),
                _ = self.tx.closed() => return Err(Done),
                r = follow.rx.recv() => Some(r),
                _ = self.subs.hub.registration(deadline) => None,
            };
            match item {
                Some(Ok(RemoteEvent { event, prev })) => {
                    // Only a gap the tail did not account for needs a read.
                    let contiguous = prev.is_some_and(|p| p < self.next);
                    if event.offset > self.next && !contiguous {
                        Box::pin(self.replay(event.offset)).await?;
                    }
                    self.deliver(event).await?;
                }
                Some(Err(broadcast::error::RecvError::Lagged(_))) => self.catch_up().await?,
                Some(Err(broadcast::error::RecvError::Closed)) => return Err(Done),
                None => match self.subs.store.get(self.id.as_str()).await {
                    Ok(Some(r)) if !r.state.is_terminal() => {}
                    Ok(_) => {
                        // The terminal event may be committed but not yet tailed: read it.
                        self.catch_up().await?;
                        return Err(Done);
                    }
                    // An unreadable record says nothing; the topic does. A stream whose record
                    // is corrupt is ended with a `failed` event that the tail may have missed.
                    Err(_) => self.catch_up().await?,
                },
            }
        }
    }
}
