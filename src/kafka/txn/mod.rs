//! Transactional writers, one per owned intake partition: every write of that partition's streams
//! (their events and their changelog records) goes through the partition's producer, whose
//! `transactional.id` is derived from the partition. When another instance takes the partition
//! over, its `init_transactions` bumps the producer epoch: whatever the old owner still sends,
//! however long it was paused, is refused by the brokers, and its open transaction is aborted.
//!
//! Writes are committed in batches: a committer commits the open transaction a few milliseconds
//! after the first write into it, then opens the next. A write's future resolves only once its
//! transaction committed, so nothing is published to subscribers, and no intake offset stored, on
//! the strength of a write that could still be aborted. Readers use `read_committed`. A write that
//! arrives while a commit runs is parked, and sent into the next transaction as it begins, ahead
//! of any later write: writers never wait for a commit to enqueue (see `commit`).
//!
//! This module does not decide ownership; `stream::ownership` opens and closes the writers.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, Producer};
use rdkafka::util::Timeout;
use tokio::sync::{oneshot, watch, Notify};

mod commit;
pub use commit::COMMIT_LINGER;

use crate::kafka::producer::{producer_config, record, Error, Stored};
use crate::metrics::Metrics;
use crate::settings::KafkaSettings;

/// Aborted generations remembered for writers still waiting on them.
const ABORTED_KEPT: usize = 256;

/// What became of the transactions so far.
#[derive(Default)]
struct Settled {
    /// Every generation up to this one is settled (committed unless listed in `aborted`).
    upto: Option<u64>,
    aborted: VecDeque<u64>,
    /// From this generation on, every write is refused: another owner fenced this producer.
    fenced_from: Option<u64>,
}

/// What the committer reports to ownership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A transaction failed and was aborted (or the producer broke): the partition's streams lost
    /// writes they believed sent and must be restarted from what is committed.
    Aborted {
        /// The intake partition.
        partition: i32,
        /// The writer that failed ([`TxnProducer::id`]).
        writer: u64,
        /// Why.
        reason: String,
    },
    /// Another instance took the partition over.
    Fenced {
        /// The intake partition.
        partition: i32,
        /// The writer that was fenced ([`TxnProducer::id`]).
        writer: u64,
        /// Kafka's error.
        reason: String,
    },
}

/// A write that arrived while a commit ran, with everything needed to send it later.
struct Parked {
    topic: String,
    partition: Option<i32>,
    key: String,
    payload: Option<Vec<u8>>,
    headers: Vec<(String, String)>,
    arrived: Instant,
    sent: oneshot::Sender<Result<(DeliveryFuture, u64), Error>>,
}

/// How a write entered its transaction: sent at once, or parked until the next one began.
enum Entry {
    Sent(DeliveryFuture, u64),
    Parked(oneshot::Receiver<Result<(DeliveryFuture, u64), Error>>),
}

/// Numbers the writers of this process, so a failure report of a replaced writer is told apart.
static WRITERS: AtomicU64 = AtomicU64::new(0);

/// One partition's transactional producer. Shared behind an `Arc`.
pub struct TxnProducer {
    id: u64,
    partition: i32,
    producer: FutureProducer,
    /// The open transaction's generation; the committer holds it exclusively while committing.
    open: RwLock<u64>,
    pending: AtomicU64,
    /// When the open transaction's first write arrived (a parked write's arrival, if it was one).
    first_write: Mutex<Option<Instant>>,
    /// Writes that arrived while a commit ran, sent into the next transaction as it begins.
    parked: Mutex<Vec<Parked>>,
    /// A write could not be sent into the open transaction: it must be aborted, not committed.
    doomed: AtomicBool,
    wake: Notify,
    settled: watch::Sender<Settled>,
    broken: AtomicBool,
    metrics: Arc<Metrics>,
    timeout: Duration,
}

/// The transactional id of `partition`'s producer, for intake group `group` on `topic`.
pub fn transactional_id(group: &str, topic: &str, partition: i32) -> String {
    format!("sluice.{group}.{topic}.{partition}")
}

impl TxnProducer {
    /// Creates the producer and initialises its transactions, which fences any earlier producer
    /// with the same id (a previous owner) and aborts its open transaction.
    pub async fn open(
        settings: &KafkaSettings,
        transactional_id: &str,
        partition: i32,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<TxnProducer>, Error> {
        let timeout = settings.operation_timeout.max(Duration::from_secs(10));
        let producer: FutureProducer =
            producer_config(settings, &format!("sluice-txn-{partition}"))
                .set("transactional.id", transactional_id)
                // librdkafka requires message.timeout.ms <= transaction.timeout.ms; the broker
                // caps the latter at transaction.max.timeout.ms (15 min by default).
                .set(
                    "transaction.timeout.ms",
                    settings
                        .message_timeout
                        .clamp(Duration::from_secs(60), Duration::from_secs(900))
                        .as_millis()
                        .to_string(),
                )
                .set(
                    "message.timeout.ms",
                    settings
                        .message_timeout
                        .min(Duration::from_secs(900))
                        .as_millis()
                        .to_string(),
                )
                .create()
                .map_err(Error::Client)?;
        let p = producer.clone();
        tokio::task::spawn_blocking(move || {
            p.init_transactions(Timeout::After(timeout))?;
            p.begin_transaction()
        })
        .await
        .unwrap_or(Err(KafkaError::Canceled))
        .map_err(Error::Client)?;
        Ok(Arc::new(TxnProducer {
            id: WRITERS.fetch_add(1, Ordering::Relaxed),
            partition,
            producer,
            open: RwLock::new(0),
            pending: AtomicU64::new(0),
            first_write: Mutex::new(None),
            parked: Mutex::new(Vec::new()),
            doomed: AtomicBool::new(false),
            wake: Notify::new(),
            settled: watch::Sender::new(Settled::default()),
            broken: AtomicBool::new(false),
            metrics,
            timeout,
        }))
    }

    /// This writer's number in the process.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The intake partition this producer writes for.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// Enqueues a message into the open transaction and returns a future that resolves once that
    /// transaction committed (or failed). A write arriving while a commit runs is parked and sent
    /// into the next transaction as soon as it begins, ahead of any later write. `QueueFull` means
    /// "try again shortly": the producer's queue is full.
    pub fn enqueue(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: &str,
        payload: Option<&[u8]>,
        headers: &[(&str, &str)],
        topic_kind: &'static str,
    ) -> Result<impl Future<Output = Result<Stored, Error>> + Send + 'static, Error> {
        if self.broken.load(Ordering::Acquire) {
            self.metrics.fenced_write();
            return Err(Error::Fenced {
                partition: self.partition,
            });
        }
        let started = Instant::now();
        let entry = {
            // Taken before the gate: the committer drains the parked writes and opens the gate
            // while it holds this lock, so a write is parked only if the drain will see it.
            let mut parked = self.parked.lock().unwrap_or_else(|p| p.into_inner());
            // Once a write is parked, every later one parks behind it until the drain, even if
            // the gate would let it through: the last reader leaving hands the lock to the
            // waiting committer only after a moment in which it looks free, and a write sent in
            // that moment would land in the current transaction, ahead of the parked ones.
            let gate = if parked.is_empty() {
                self.open.try_read().ok()
            } else {
                None
            };
            match gate {
                Some(open) => {
                    drop(parked);
                    let generation = *open;
                    Entry::Sent(
                        self.send(topic, partition, key, payload, headers)?,
                        generation,
                    )
                }
                None => {
                    let (sent, rx) = oneshot::channel();
                    parked.push(Parked {
                        topic: topic.to_owned(),
                        partition,
                        key: key.to_owned(),
                        payload: payload.map(<[u8]>::to_vec),
                        headers: headers
                            .iter()
                            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                            .collect(),
                        arrived: started,
                        sent,
                    });
                    Entry::Parked(rx)
                }
            }
        };
        if matches!(entry, Entry::Sent(..)) {
            if self.pending.fetch_add(1, Ordering::AcqRel) == 0 {
                self.first_write
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert(started);
            }
            self.wake.notify_one();
        }
        let mut settled = self.settled.subscribe();
        let (metrics, topic, part) = (self.metrics.clone(), topic.to_owned(), self.partition);
        Ok(async move {
            let (delivery, generation) = match entry {
                Entry::Sent(d, g) => (d, g),
                Entry::Parked(rx) => match rx.await {
                    Ok(Ok(sent)) => sent,
                    Ok(Err(e)) => return Err(e),
                    // Dropped unsent: the producer was fenced or broke while the write waited.
                    Err(_) => {
                        metrics.fenced_write();
                        return Err(Error::Fenced { partition: part });
                    }
                },
            };
            let res = delivery.await;
            metrics.produce_observed(topic_kind, started.elapsed());
            let stored = match res {
                Ok(Ok(d)) => Stored {
                    partition: d.partition,
                    offset: d.offset,
                },
                Ok(Err((source, _))) if is_fenced(&source) => {
                    metrics.fenced_write();
                    return Err(Error::Fenced { partition: part });
                }
                // A failed write dooms its transaction: the committer aborts it.
                Ok(Err((source, _))) => {
                    return Err(Error::Aborted {
                        partition: part,
                        reason: format!("produce to {topic}: {source}"),
                    })
                }
                Err(_) => {
                    return Err(Error::Produce {
                        topic,
                        source: KafkaError::Canceled,
                    })
                }
            };
            let s = settled
                .wait_for(|s| {
                    s.upto.is_some_and(|u| u >= generation)
                        || s.fenced_from.is_some_and(|f| f <= generation)
                })
                .await;
            let Ok(s) = s else {
                return Err(Error::NotOwner { partition: part });
            };
            if s.fenced_from.is_some_and(|f| f <= generation) {
                metrics.fenced_write();
                return Err(Error::Fenced { partition: part });
            }
            if s.aborted.contains(&generation) {
                return Err(Error::Aborted {
                    partition: part,
                    reason: "its transaction was aborted".into(),
                });
            }
            Ok(stored)
        })
    }

    /// Sends a message into the open transaction; the caller holds the gate.
    fn send(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: &str,
        payload: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) -> Result<DeliveryFuture, Error> {
        match self
            .producer
            .send_result(record(topic, partition, key, payload, headers))
        {
            Ok(d) => Ok(d),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                Err(Error::QueueFull)
            }
            Err((source, _)) if is_fenced(&source) => {
                self.metrics.fenced_write();
                Err(Error::Fenced {
                    partition: self.partition,
                })
            }
            Err((source, _)) => Err(Error::Produce {
                topic: topic.to_owned(),
                source,
            }),
        }
    }

    /// Enqueues (waiting while the queue is full or a commit runs) and waits for the commit.
    pub async fn produce(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: &str,
        payload: Option<&[u8]>,
        topic_kind: &'static str,
    ) -> Result<Stored, Error> {
        loop {
            match self.enqueue(topic, partition, key, payload, &[], topic_kind) {
                Ok(ack) => return ack.await,
                Err(Error::QueueFull) => tokio::time::sleep(Duration::from_millis(1)).await,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Whether an error means another producer with the same id took over (or left this one in a
/// fatal state, which only a new producer ends): nothing more may be written with it.
fn is_fenced(e: &KafkaError) -> bool {
    let code = match e {
        KafkaError::Transaction(t) => t.code(),
        other => match other.rdkafka_error_code() {
            Some(c) => c,
            None => return false,
        },
    };
    matches!(
        code,
        RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::Fenced
            | RDKafkaErrorCode::Fatal
    )
}

/// The open transactional producers, by intake partition.
#[derive(Default)]
pub struct Transactions(Mutex<HashMap<i32, Arc<TxnProducer>>>);

impl Transactions {
    /// The producer of `partition`, if this instance owns it.
    pub fn get(&self, partition: i32) -> Option<Arc<TxnProducer>> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&partition)
            .cloned()
    }

    /// Makes `producer` the writer of its partition.
    pub fn insert(&self, producer: Arc<TxnProducer>) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(producer.partition(), producer);
    }

    /// Removes the writer of `partition`, if `current` is still it.
    pub fn remove(&self, partition: i32, current: &Arc<TxnProducer>) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(&partition).is_some_and(|p| Arc::ptr_eq(p, current)) {
            map.remove(&partition);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the test broker (`SLUICE_TEST_BROKERS`, default 127.0.0.1:9092).
    #[tokio::test]
    async fn a_write_never_overtakes_a_parked_one() {
        let kafka = KafkaSettings {
            brokers: std::env::var("SLUICE_TEST_BROKERS")
                .unwrap_or_else(|_| "127.0.0.1:9092".into()),
            ..Default::default()
        };
        let id = format!("sluice.unit.{}", uuid::Uuid::new_v4().simple());
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let txn = TxnProducer::open(&kafka, &id, 0, metrics)
            .await
            .expect("a transactional producer (is the test broker running?)");
        let write = |n: &str| {
            txn.enqueue(
                "sluice.unit.never-sent",
                Some(0),
                "k",
                Some(n.as_bytes()),
                &[],
                "stream",
            )
            .expect("enqueued")
        };
        // A commit holds the gate: the write is parked.
        let first = {
            let _commit = txn.open.write().expect("gate");
            write("1")
        };
        // The gate is free again, but the parked write has not been drained into the next
        // transaction yet: a later write must queue behind it, not go into this one.
        let second = write("2");
        assert_eq!(txn.parked.lock().expect("parked").len(), 2);
        assert_eq!(txn.pending.load(Ordering::Acquire), 0, "nothing sent ahead");
        drop((first, second));
    }
}
