//! The live hub: in-memory fan-out of a running stream's events to its local subscribers, the
//! registry of streams running on this process, their cancel switches, and the feed of every
//! stream's live events (and each new stream's `requested` event) for subscribers by event type.
//!
//! Only acknowledged events enter the hub, each with its Kafka offset, so live delivery never shows
//! a client something Kafka does not hold. Heartbeats pass through the hub only. The hub does not
//! replay; a subscriber that falls behind is told it lagged and re-reads from Kafka.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::{broadcast, Notify};
use tokio_util::sync::CancellationToken;

pub use sluice_wire::stored::StoredEvent;

use crate::event::{Envelope, State};

/// Capacity of each stream's broadcast ring; slower subscribers lag and re-read from Kafka.
pub const LIVE_CAPACITY: usize = 256;
/// Newest events of a running stream kept for subscribers that join or fall behind: a replay
/// within them is served from memory, shared by every subscriber, instead of from Kafka.
pub const RECENT_CAPACITY: usize = 256;
/// Capacity of the all-streams feed; a subscriber further behind is told it lagged.
pub const FEED_CAPACITY: usize = 4096;

/// One item of the all-streams feed.
#[derive(Debug, Clone)]
pub enum FeedItem {
    /// A stored event, with its offset.
    Stored(Arc<StoredEvent>),
    /// An event that is never stored in the stream topic: a heartbeat or a `requested` event.
    Unstored(Arc<Envelope>),
}

impl FeedItem {
    /// The event's envelope (`id` is set on stored events).
    pub fn envelope(&self) -> &Envelope {
        match self {
            FeedItem::Stored(e) => &e.envelope,
            FeedItem::Unstored(h) => h,
        }
    }
}

/// What live subscribers receive.
#[derive(Debug, Clone)]
pub enum Live {
    /// A stored event.
    Event(Arc<StoredEvent>),
    /// A heartbeat: never stored, no id.
    Heartbeat(Arc<Envelope>),
}

/// A stream running on this process.
pub struct LiveStream {
    tx: broadcast::Sender<Live>,
    recent: Mutex<VecDeque<Arc<StoredEvent>>>,
    feed: broadcast::Sender<FeedItem>,
    cancel: CancellationToken,
    chunks: AtomicU64,
    last_offset: AtomicI64,
    finished: AtomicBool,
    started: Instant,
}

/// What a cancel request found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The stream runs here and was asked to cancel.
    Cancelling,
    /// The stream runs here but its terminal event is already stored.
    AlreadyFinished,
    /// The stream does not run here.
    NotHere,
}

impl LiveStream {
    /// Sends to current subscribers; having none is fine.
    pub fn publish(&self, live: Live) {
        if let Live::Event(e) = &live {
            {
                let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
                if recent.len() == RECENT_CAPACITY {
                    recent.pop_front();
                }
                recent.push_back(e.clone());
            }
            self.last_offset.store(e.offset, Ordering::Release);
            if e.state == State::Stream {
                self.chunks.fetch_add(1, Ordering::Relaxed);
            }
            if e.state.is_terminal() {
                self.finished.store(true, Ordering::Release);
            }
        }
        if self.feed.receiver_count() > 0 {
            let _ = self.feed.send(match &live {
                Live::Event(e) => FeedItem::Stored(e.clone()),
                Live::Heartbeat(h) => FeedItem::Unstored(h.clone()),
            });
        }
        let _ = self.tx.send(live);
    }

    /// The published events with offsets in `[from, until)`, if the recent window reaches back to
    /// `from` (`None` when replay has to read Kafka). May end before `until`: events not yet
    /// published are not in it.
    pub fn recent(&self, from: i64, until: i64) -> Option<Vec<Arc<StoredEvent>>> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.front().is_none_or(|e| e.offset > from) {
            return None;
        }
        Some(
            recent
                .iter()
                .filter(|e| e.offset >= from && e.offset < until)
                .cloned()
                .collect(),
        )
    }

    /// The client-cancel switch of this stream.
    pub fn cancel_token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Chunks published by this process so far.
    pub fn chunks(&self) -> u64 {
        self.chunks.load(Ordering::Relaxed)
    }

    /// The offset of the newest published event, or -1.
    pub fn last_offset(&self) -> i64 {
        self.last_offset.load(Ordering::Acquire)
    }

    /// When this process started running the stream.
    pub fn started(&self) -> Instant {
        self.started
    }
}

/// Handle to the hub; cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    streams: Mutex<HashMap<String, Arc<LiveStream>>>,
    registered: Notify,
    feed: broadcast::Sender<FeedItem>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new()
    }
}

impl Hub {
    /// An empty hub.
    pub fn new() -> Self {
        let (feed, _) = broadcast::channel(FEED_CAPACITY);
        Hub {
            inner: Arc::new(Inner {
                streams: Mutex::new(HashMap::new()),
                registered: Notify::new(),
                feed,
            }),
        }
    }

    /// Follows the live events of every stream running here, from now on.
    pub fn feed(&self) -> broadcast::Receiver<FeedItem> {
        self.inner.feed.subscribe()
    }

    /// Tells feed subscribers that a stream was requested (the `requested` event is never stored
    /// in the stream topic, so it has no id).
    pub fn announce(&self, stream_id: &str, request: &crate::event::Request) {
        if self.inner.feed.receiver_count() == 0 {
            return;
        }
        let envelope = Envelope {
            event_type: request.event_type.to_string(),
            id: None,
            stream_id: Some(stream_id.to_owned()),
            seq: None,
            payload: request.payload.clone(),
            metadata: request.metadata.clone(),
            time: Some(chrono::Utc::now()),
        };
        let _ = self.inner.feed.send(FeedItem::Unstored(Arc::new(envelope)));
    }

    fn streams(&self) -> MutexGuard<'_, HashMap<String, Arc<LiveStream>>> {
        self.inner
            .streams
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a stream as running here; `None` if it already is.
    pub fn register(&self, stream_id: &str) -> Option<Arc<LiveStream>> {
        let mut map = self.streams();
        if map.contains_key(stream_id) {
            return None;
        }
        let (tx, _) = broadcast::channel(LIVE_CAPACITY);
        let live = Arc::new(LiveStream {
            tx,
            recent: Mutex::new(VecDeque::new()),
            feed: self.inner.feed.clone(),
            cancel: CancellationToken::new(),
            chunks: AtomicU64::new(0),
            last_offset: AtomicI64::new(-1),
            finished: AtomicBool::new(false),
            started: Instant::now(),
        });
        map.insert(stream_id.to_owned(), live.clone());
        drop(map);
        self.inner.registered.notify_waiters();
        Some(live)
    }

    /// Forgets a stream; its subscribers see the channel close after the buffered events.
    pub fn remove(&self, stream_id: &str) {
        self.streams().remove(stream_id);
    }

    /// The running stream, if it runs here.
    pub fn get(&self, stream_id: &str) -> Option<Arc<LiveStream>> {
        self.streams().get(stream_id).cloned()
    }

    /// Subscribes to a stream running here.
    pub fn subscribe(&self, stream_id: &str) -> Option<broadcast::Receiver<Live>> {
        self.streams().get(stream_id).map(|s| s.tx.subscribe())
    }

    /// Asks a stream running here to cancel.
    pub fn cancel(&self, stream_id: &str) -> CancelOutcome {
        match self.get(stream_id) {
            Some(s) if s.finished.load(Ordering::Acquire) => CancelOutcome::AlreadyFinished,
            Some(s) => {
                s.cancel.cancel();
                CancelOutcome::Cancelling
            }
            None => CancelOutcome::NotHere,
        }
    }

    /// Number of streams running here.
    pub fn active(&self) -> usize {
        self.streams().len()
    }

    /// Waits until any stream registers, or `deadline` passes. Returns false on timeout.
    pub async fn registration(&self, deadline: tokio::time::Instant) -> bool {
        tokio::time::timeout_at(deadline, self.inner.registered.notified())
            .await
            .is_ok()
    }

    /// Waits until `stream_id` runs here, or `deadline` passes.
    pub async fn wait_for(&self, stream_id: &str, deadline: tokio::time::Instant) -> bool {
        loop {
            let notified = self.inner.registered.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.get(stream_id).is_some() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.get(stream_id).is_some();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_window_serves_the_newest_events_only() {
        let hub = Hub::new();
        let s = hub.register("w").unwrap();
        for offset in 0..300i64 {
            let env = Envelope {
                event_type: "demo:stream_ticks:v1:stream".into(),
                id: None,
                stream_id: Some("w".into()),
                seq: Some(offset as u64),
                payload: serde_json::json!({"n": offset}),
                metadata: None,
                time: None,
            };
            s.publish(Live::Event(Arc::new(
                StoredEvent::new(offset, env).unwrap(),
            )));
        }
        let oldest = 300 - RECENT_CAPACITY as i64;
        assert!(s.recent(oldest - 1, 300).is_none(), "evicted: read Kafka");
        let got: Vec<i64> = s
            .recent(100, 110)
            .unwrap()
            .iter()
            .map(|e| e.offset)
            .collect();
        assert_eq!(got, (100..110).collect::<Vec<_>>());
        assert_eq!(s.recent(oldest, 400).unwrap().len(), RECENT_CAPACITY);
        assert!(
            s.recent(300, 400).unwrap().is_empty(),
            "nothing published yet"
        );
    }

    #[test]
    fn stored_bytes_get_the_id_spliced_in() {
        let env = Envelope {
            event_type: "demo:stream_ticks:v1:stream".into(),
            id: None,
            stream_id: Some("a".into()),
            seq: Some(3),
            payload: serde_json::json!({"n": 3, "text": "a \"quoted\" word"}),
            metadata: Some(serde_json::json!({"trace": "t"})),
            time: Some(chrono::Utc::now()),
        };
        let bytes = serde_json::to_vec(&env).unwrap();
        let spliced = StoredEvent::parse(42, &bytes).unwrap();
        let encoded = StoredEvent::new(42, env.clone()).unwrap();
        assert!(
            spliced.json.starts_with("{\"id\":42,\"type\":"),
            "{}",
            spliced.json
        );
        let a: serde_json::Value = serde_json::from_str(&spliced.json).unwrap();
        let b: serde_json::Value = serde_json::from_str(&encoded.json).unwrap();
        assert_eq!(a, b, "the same event as a re-encoding");
        assert_eq!(spliced.envelope.id, Some(42));
        assert_eq!(spliced.state, State::Stream);
        // A stored record that (wrongly) carries an id is re-encoded with the offset's id.
        let with_id = serde_json::to_vec(&Envelope { id: Some(9), ..env }).unwrap();
        let fixed = StoredEvent::parse(42, &with_id).unwrap();
        let v: serde_json::Value = serde_json::from_str(&fixed.json).unwrap();
        assert_eq!(v["id"], 42);
        assert!(StoredEvent::parse(1, b"not json").is_none());
    }

    #[tokio::test]
    async fn fans_out_and_closes_on_remove() {
        let hub = Hub::new();
        let s = hub.register("a").unwrap();
        assert!(hub.register("a").is_none());
        let mut r1 = hub.subscribe("a").unwrap();
        let mut r2 = hub.subscribe("a").unwrap();
        let env = Envelope {
            event_type: "demo:stream_ticks:v1:stream".into(),
            id: None,
            stream_id: Some("a".into()),
            seq: Some(1),
            payload: serde_json::json!({"n": 1}),
            metadata: None,
            time: None,
        };
        s.publish(Live::Event(Arc::new(StoredEvent::new(7, env).unwrap())));
        for r in [&mut r1, &mut r2] {
            match r.recv().await.unwrap() {
                Live::Event(e) => {
                    assert_eq!(e.offset, 7);
                    assert!(e.json.contains("\"id\":7"));
                }
                Live::Heartbeat(_) => panic!("expected an event"),
            }
        }
        assert_eq!(s.chunks(), 1);
        assert_eq!(hub.cancel("a"), CancelOutcome::Cancelling);
        assert!(s.cancel_token().is_cancelled());
        hub.remove("a");
        drop(s);
        assert!(r1.recv().await.is_err());
        assert_eq!(hub.cancel("a"), CancelOutcome::NotHere);
    }

    #[tokio::test]
    async fn wait_for_sees_a_later_registration() {
        let hub = Hub::new();
        let h2 = hub.clone();
        let waiter = tokio::spawn(async move {
            h2.wait_for(
                "late",
                tokio::time::Instant::now() + std::time::Duration::from_secs(10),
            )
            .await
        });
        tokio::task::yield_now().await;
        hub.register("late").unwrap();
        assert!(waiter.await.unwrap());
        let missing = hub
            .wait_for(
                "never",
                tokio::time::Instant::now() + std::time::Duration::from_millis(10),
            )
            .await;
        assert!(!missing);
    }
}
