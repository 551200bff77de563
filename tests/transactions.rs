//! A partition's transactional writer against the real broker: writes that arrive while a commit
//! runs wait for the next transaction, and every writer's messages still land exactly once and in
//! the order it enqueued them; once a transaction is aborted, no later write commits without the
//! lost ones.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::*;
use futures::stream::{FuturesOrdered, StreamExt};
use rdkafka::Message;
use sluice::kafka::producer::{Error, Journal};
use sluice::kafka::txn::{Event, TxnProducer};
use sluice::metrics::Metrics;
use tokio_util::sync::CancellationToken;

/// Messages each writer enqueues, and how many of its writes may wait for a commit at once.
const PER_WRITER: usize = 600;
const WINDOW: usize = 64;
/// Concurrent writers per round, and the most rounds tried.
const WRITERS: usize = 4;
const MAX_ROUNDS: usize = 20;
/// Parked writes to see before stopping: the race between a parked write and a later write that
/// slips through the gate as the committer takes it needs many commits to show.
const PARKED_TARGET: f64 = 1_000.0;

/// Enqueues `key`'s messages `0..PER_WRITER` in order, at most `WINDOW` unacknowledged.
async fn write_all(txn: Arc<TxnProducer>, topic: String, key: String) {
    let mut inflight = FuturesOrdered::new();
    for n in 0..PER_WRITER {
        let payload = format!("{key}:{n}");
        loop {
            match txn.enqueue(&topic, None, &key, Some(payload.as_bytes()), &[], "stream") {
                Ok(ack) => {
                    inflight.push_back(ack);
                    break;
                }
                Err(Error::QueueFull) => {
                    inflight.next().await.expect("an ack").expect("committed");
                }
                Err(e) => panic!("enqueue: {e}"),
            }
        }
        if inflight.len() >= WINDOW {
            inflight.next().await.expect("an ack").expect("committed");
        }
        if n % 50 == 0 {
            tokio::task::yield_now().await;
        }
    }
    while let Some(ack) = inflight.next().await {
        ack.expect("committed");
    }
}

/// A transactional writer of partition 0 on a fresh stream topic `name` (created with `config`
/// beyond the defaults), its committer running.
struct Writer {
    topic: String,
    txn: Arc<TxnProducer>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    committer: tokio::task::JoinHandle<()>,
    failures: tokio::sync::mpsc::UnboundedReceiver<Event>,
}

async fn writer(name: &str, config: Vec<(String, String)>) -> Writer {
    require_kafka();
    let mut kafka = sluice::settings::KafkaSettings {
        brokers: brokers(),
        ..Default::default()
    };
    kafka.stream_topic_prefix = format!("sluice.test.{}.", unique("txn"));
    let metrics = Arc::new(Metrics::new().unwrap());
    let journal = Journal::new(&kafka, metrics.clone()).unwrap();
    let id = sluice::event::StreamId::parse(name).unwrap();
    journal.ensure_stream_topic_with(&id, config).await.unwrap();
    let txn = TxnProducer::open(&kafka, &unique("sluice.test.txn"), 0, metrics.clone())
        .await
        .expect("transactional producer");
    let stop = CancellationToken::new();
    let (events, failures) = tokio::sync::mpsc::unbounded_channel();
    let committer = tokio::spawn(txn.clone().commit_until(stop.clone(), events));
    Writer {
        topic: journal.topic_for(&id),
        txn,
        metrics,
        stop,
        committer,
        failures,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_during_a_commit_join_the_next_transaction_in_order() {
    let Writer {
        topic,
        txn,
        metrics,
        stop,
        committer,
        mut failures,
    } = writer("ordered", Vec::new()).await;

    let value = |name: &str| -> f64 {
        metrics
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    // Rounds of concurrent writers until many of their writes arrived during a commit: whether
    // one does in a given round is up to the scheduler, not the test.
    let mut rounds = 0;
    while rounds < MAX_ROUNDS && value("sluice_transaction_parked_writes_total") < PARKED_TARGET {
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let key = format!("r{rounds}w{w}");
                tokio::spawn(write_all(txn.clone(), topic.clone(), key))
            })
            .collect();
        for w in writers {
            w.await.expect("writer");
        }
        rounds += 1;
    }
    stop.cancel();
    committer.await.unwrap();
    assert!(failures.try_recv().is_err(), "no transaction failed");
    assert!(
        value("sluice_transaction_parked_writes_total") > 0.0,
        "no write arrived during a commit in {rounds} rounds"
    );
    assert!(value("sluice_transaction_commit_seconds_count") > 5.0);

    // Committed exactly once each, in each writer's order, and nothing else.
    let messages = read_partition_as(&topic, 0, "read_committed").await;
    let mut next: HashMap<String, usize> = HashMap::new();
    for m in &messages {
        let text = std::str::from_utf8(m.payload().unwrap()).unwrap();
        let (key, n) = text.split_once(':').unwrap();
        let n: usize = n.parse().unwrap();
        let expected = next.entry(key.to_owned()).or_default();
        assert_eq!(n, *expected, "{key}: message {n} out of order or repeated");
        *expected += 1;
    }
    assert_eq!(
        messages.len(),
        rounds * WRITERS * PER_WRITER,
        "every message, once"
    );
    assert_eq!(next.len(), rounds * WRITERS);
    assert!(next.values().all(|n| *n == PER_WRITER), "{next:?}");
}

/// The payloads of `topic`'s partition 0 as text, read with `isolation`.
async fn payloads(topic: &str, isolation: &str) -> Vec<String> {
    read_partition_as(topic, 0, isolation)
        .await
        .iter()
        .map(|m| String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_aborted_transaction_no_later_write_commits() {
    // The broker refuses records over 1 KiB in this topic: such a write fails its transaction.
    let Writer {
        topic,
        txn,
        stop,
        committer,
        mut failures,
        ..
    } = writer("aborted", vec![("max.message.bytes".into(), "1024".into())]).await;
    let write = |payload: Vec<u8>| {
        txn.enqueue(&topic, None, "k", Some(&payload), &[], "stream")
            .expect("enqueued")
    };

    write(b"before".to_vec()).await.expect("committed");
    // Incompressible, so the batch stays over the limit whatever the producer's compression.
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    let noise: Vec<u8> = (0..8192)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let too_large = write(noise);
    let beside = write(b"beside".to_vec());
    let refused = too_large.await;
    assert!(
        matches!(refused, Err(Error::Aborted { .. })),
        "the oversized write fails its transaction: {refused:?}"
    );
    assert!(
        matches!(beside.await, Err(Error::Aborted { .. })),
        "a write of the aborted transaction is reported aborted"
    );
    match tokio::time::timeout(WAIT, failures.recv()).await {
        Ok(Some(Event::Aborted { partition: 0, .. })) => {}
        other => panic!("the committer reports the abort: {other:?}"),
    }
    // A write after the abort would commit in the next transaction, with the aborted ones
    // missing before it: it is refused as a handover instead.
    match txn.enqueue(&topic, None, "k", Some(b"after"), &[], "stream") {
        Err(e @ Error::Fenced { .. }) => assert!(e.is_handover()),
        Err(e) => panic!("refused as fenced, not {e}"),
        Ok(ack) => panic!("a write after the abort was accepted: {:?}", ack.await),
    }
    stop.cancel();
    committer.await.unwrap();

    assert_eq!(payloads(&topic, "read_committed").await, ["before"]);
    assert_eq!(
        payloads(&topic, "read_uncommitted").await,
        ["before"],
        "the refused write was not even sent"
    );
}
