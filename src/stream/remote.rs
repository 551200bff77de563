//! Live tails of streams that run on another instance: one consumer per process, assigned the
//! topics of the remote streams that local subscribers follow, long-polling Kafka, fanning each
//! committed event out to those subscribers. A stream's topic is assigned while at least one local
//! subscriber follows it ([`Follow`] is the guard) and unassigned when the last one leaves.
//!
//! Each event carries the offset of the event the tail delivered before it, so a subscriber that
//! already has everything up to that one knows the gap between them is only transaction markers,
//! and reads Kafka only when it really missed something. This module does not merge replay with
//! live events; the subscription does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::kafka::producer::client_config;
use crate::metrics::Metrics;
use crate::settings::KafkaSettings;
use crate::stream::hub::StoredEvent;

/// Events one remote stream buffers for slow subscribers before they lag (and re-read Kafka).
const CAPACITY: usize = 1024;

/// An event of a remote stream, and the offset of the one the tail delivered before it.
#[derive(Clone)]
pub struct RemoteEvent {
    /// The event.
    pub event: Arc<StoredEvent>,
    /// The previous event's offset, if the tail delivered one since the topic was assigned.
    pub prev: Option<i64>,
}

struct Entry {
    tx: broadcast::Sender<RemoteEvent>,
    followers: usize,
    last: Option<i64>,
}

/// The process's tail of remote streams. Shared behind an `Arc`.
pub struct RemoteTails {
    consumer: BaseConsumer,
    topics: Mutex<HashMap<String, Entry>>,
    metrics: Arc<Metrics>,
}

/// A subscriber's hold on a remote stream's tail; leaving drops it.
pub struct Follow {
    tails: Arc<RemoteTails>,
    topic: String,
    /// The stream's events from the tail.
    pub rx: broadcast::Receiver<RemoteEvent>,
}

impl Drop for Follow {
    fn drop(&mut self) {
        self.tails.leave(&self.topic);
    }
}

impl RemoteTails {
    /// Creates the tail consumer (`read_committed`, no group).
    pub fn new(
        kafka: &KafkaSettings,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<RemoteTails>, rdkafka::error::KafkaError> {
        let consumer: BaseConsumer = client_config(kafka)
            .set("group.id", "sluice-remote-tail")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("isolation.level", "read_committed")
            .set("fetch.wait.max.ms", "100")
            .set("auto.offset.reset", "latest")
            .create()?;
        Ok(Arc::new(RemoteTails {
            consumer,
            topics: Mutex::new(HashMap::new()),
            metrics,
        }))
    }

    /// Follows `topic` from its current end (events before it are the subscriber's to replay).
    pub fn follow(self: &Arc<Self>, topic: &str) -> Follow {
        let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        let rx = match topics.get_mut(topic) {
            Some(e) => {
                e.followers += 1;
                e.tx.subscribe()
            }
            None => {
                let (tx, rx) = broadcast::channel(CAPACITY);
                self.assign(topic, true);
                topics.insert(
                    topic.to_owned(),
                    Entry {
                        tx,
                        followers: 1,
                        last: None,
                    },
                );
                self.metrics.remote_tails(topics.len());
                rx
            }
        };
        Follow {
            tails: self.clone(),
            topic: topic.to_owned(),
            rx,
        }
    }

    fn leave(&self, topic: &str) {
        let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        let Some(e) = topics.get_mut(topic) else {
            return;
        };
        e.followers -= 1;
        if e.followers == 0 {
            topics.remove(topic);
            self.assign(topic, false);
            self.metrics.remote_tails(topics.len());
        }
    }

    fn assign(&self, topic: &str, add: bool) {
        let mut tpl = TopicPartitionList::new();
        let res = tpl
            .add_partition_offset(topic, 0, Offset::End)
            .and_then(|()| {
                if add {
                    self.consumer.incremental_assign(&tpl)
                } else {
                    self.consumer.incremental_unassign(&tpl)
                }
            });
        if let Err(e) = res {
            tracing::warn!(topic, add, error = %e, "remote tail assignment failed; followers fall back to periodic reads");
        }
    }

    /// Polls until `stop` fires, routing each event to its stream's followers. Blocking.
    pub fn run(&self, stop: CancellationToken) {
        while !stop.is_cancelled() {
            let Some(msg) = self.consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let m = match msg {
                Ok(m) => m,
                Err(e) => {
                    tracing::debug!(error = %e, "remote tail poll error");
                    continue;
                }
            };
            let Some(ev) = m.payload().and_then(|p| StoredEvent::parse(m.offset(), p)) else {
                continue;
            };
            let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(e) = topics.get_mut(m.topic()) {
                let prev = e.last.replace(ev.offset);
                let _ = e.tx.send(RemoteEvent {
                    event: Arc::new(ev),
                    prev,
                });
            }
        }
    }
}
