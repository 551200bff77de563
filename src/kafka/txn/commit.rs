//! The committer of one partition's transactions: it commits the open transaction a few
//! milliseconds after its first write, aborts it if a write failed, begins the next one and sends
//! the writes that arrived meanwhile into it. Writers never wait for a commit to enqueue; their
//! acknowledgements wait for it.
//!
//! This module does not send writes of its own; it only settles what [`TxnProducer`] enqueued.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{Producer, PurgeConfig};
use rdkafka::util::Timeout;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{is_fenced, Event, TxnProducer, ABORTED_KEPT};
use crate::kafka::producer::Error;

/// How long after its first write a transaction is committed: the batch window. Writes that
/// arrived during the previous commit open the next transaction with their arrival time, so under
/// load commits follow each other back to back. Live subscribers see an event at most about this
/// much, plus a commit, later than without transactions.
pub const COMMIT_LINGER: Duration = Duration::from_millis(5);

/// How often the committer checks that a transaction's deliveries are all acknowledged.
const DELIVERY_POLL: Duration = Duration::from_micros(200);

impl TxnProducer {
    /// Commits until `stop` fires (then commits what is left and closes), or until the producer is
    /// fenced or broken, reporting failures on `events`.
    pub async fn commit_until(
        self: Arc<Self>,
        stop: CancellationToken,
        events: mpsc::UnboundedSender<Event>,
    ) {
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = self.wake.notified() => {}
            }
            let first = *self.first_write.lock().unwrap_or_else(|p| p.into_inner());
            let due = first.unwrap_or_else(Instant::now) + COMMIT_LINGER;
            tokio::time::sleep_until(due.into()).await;
            if let Some(event) = self.commit().await {
                let last =
                    matches!(event, Event::Fenced { .. }) || self.broken.load(Ordering::Acquire);
                let _ = events.send(event);
                if last {
                    break;
                }
            }
        }
        // Stopped: the partition is being given up. Writes from now on are refused, what was
        // sent commits, and then nothing is left waiting on this producer.
        if !self.broken.swap(true, Ordering::AcqRel) {
            if let Some(event) = self.commit().await {
                let _ = events.send(event);
            }
        }
        self.close();
    }

    /// Settles every write still open once the last commit is done: a write sent after it (its
    /// writer passed the check just before the producer stopped) is in a transaction that never
    /// commits, so it is refused as fenced, and whatever is still queued for the brokers is
    /// purged. A stream whose partition is revoked while the brokers are away then stops at once,
    /// instead of waiting out `message_timeout` on writes nobody will commit.
    fn close(&self) {
        let gate = self.open.write().unwrap_or_else(|p| p.into_inner());
        self.parked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let open = *gate;
        self.settled.send_modify(|s| {
            // The first generation that did not commit.
            let next = s.upto.map_or(open, |u| open.max(u + 1));
            s.fenced_from = Some(s.fenced_from.map_or(next, |f| f.min(next)));
        });
        self.producer
            .purge(PurgeConfig::default().queue().inflight());
        drop(gate);
    }

    async fn commit(self: &Arc<Self>) -> Option<Event> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.commit_blocking())
            .await
            .unwrap_or_else(|e| {
                Some(Event::Aborted {
                    partition: self.partition,
                    writer: self.id,
                    reason: e.to_string(),
                })
            })
    }

    /// Waits until every message of the open transaction is acknowledged and its delivery report
    /// served (by the producer's own polling thread), or until `deadline`.
    ///
    /// `commit_transaction` flushes first, and the client's flush, finding anything outstanding,
    /// polls the event queue for a fixed 100 ms before it looks again: waited for here, the flush
    /// finds nothing outstanding and a commit costs its EndTxn round trip, not 100 ms.
    fn await_deliveries(&self, deadline: Instant) {
        while self.producer.flush(Timeout::After(Duration::ZERO)).is_err() {
            if Instant::now() >= deadline {
                return; // the commit's own flush reports the timeout
            }
            std::thread::sleep(DELIVERY_POLL);
        }
    }

    /// Commits once every delivery is in, retrying what the client calls retriable.
    fn commit_transaction(&self, started: Instant) -> Result<(), KafkaError> {
        self.await_deliveries(started + self.timeout);
        let mut result = self
            .producer
            .commit_transaction(Timeout::After(self.timeout));
        for _ in 0..3 {
            match &result {
                Err(KafkaError::Transaction(e)) if e.is_retriable() => {
                    result = self
                        .producer
                        .commit_transaction(Timeout::After(self.timeout));
                }
                _ => break,
            }
        }
        result
    }

    /// Commits the open transaction if it holds anything and opens the next one, into which it
    /// sends the writes parked meanwhile.
    fn commit_blocking(&self) -> Option<Event> {
        let mut open = self.open.write().unwrap_or_else(|p| p.into_inner());
        let event = self.commit_locked(&mut open);
        // The gate opens while the parked list is held, so no write is parked after this drain.
        let mut parked = self.parked.lock().unwrap_or_else(|p| p.into_inner());
        let waiting = std::mem::take(&mut *parked);
        if !self.broken.load(Ordering::Acquire) {
            let generation = *open;
            let first_parked = waiting.first().map(|w| w.arrived);
            let mut sent = 0;
            for w in waiting {
                let headers: Vec<(&str, &str)> = w
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                match self.send(
                    &w.topic,
                    w.partition,
                    &w.key,
                    w.payload.as_deref(),
                    &headers,
                ) {
                    Ok(d) => {
                        sent += 1;
                        let _ = w.sent.send(Ok((d, generation)));
                    }
                    // A later write of the same stream must not commit without this one: the
                    // whole transaction is aborted, and ownership restarts its streams.
                    Err(e) => {
                        tracing::warn!(partition = self.partition, error = %e, "a parked write could not be sent; its transaction will be aborted");
                        self.doomed.store(true, Ordering::Release);
                        let _ = w.sent.send(Err(Error::Aborted {
                            partition: self.partition,
                            reason: format!("not sent into its transaction: {e}"),
                        }));
                    }
                }
            }
            if sent > 0 {
                *self.first_write.lock().unwrap_or_else(|p| p.into_inner()) = first_parked;
                self.metrics.transaction_parked(sent);
                self.pending.fetch_add(sent, Ordering::AcqRel);
                self.wake.notify_one();
            }
        } // else: dropped unsent, and their writers see the producer fenced or broken
        drop(open);
        drop(parked);
        event
    }

    fn commit_locked(&self, open: &mut u64) -> Option<Event> {
        let pending = self.pending.swap(0, Ordering::AcqRel);
        *self.first_write.lock().unwrap_or_else(|p| p.into_inner()) = None;
        if pending == 0 && !self.doomed.load(Ordering::Acquire) {
            return None;
        }
        let generation = *open;
        let started = Instant::now();
        let result = if self.doomed.swap(false, Ordering::AcqRel) {
            Err(None)
        } else {
            self.commit_transaction(started).map_err(Some)
        };
        let event = match result {
            Ok(()) => {
                self.metrics.transaction_committed(started.elapsed());
                None
            }
            Err(Some(e)) if is_fenced(&e) => {
                self.broken.store(true, Ordering::Release);
                self.settled
                    .send_modify(|s| s.fenced_from = Some(generation));
                // A fatal error that is not a fencing needs a new producer, not a new owner.
                let fatal = self.producer.client().fatal_error();
                let taken_over = fatal.as_ref().is_none_or(|(code, _)| {
                    matches!(
                        code,
                        RDKafkaErrorCode::ProducerFenced
                            | RDKafkaErrorCode::InvalidProducerEpoch
                            | RDKafkaErrorCode::Fenced
                    )
                });
                let reason = match fatal {
                    Some((code, text)) => format!("{e} ({code:?}: {text})"),
                    None => e.to_string(),
                };
                let (partition, writer) = (self.partition, self.id);
                return Some(if taken_over {
                    Event::Fenced {
                        partition,
                        writer,
                        reason,
                    }
                } else {
                    Event::Aborted {
                        partition,
                        writer,
                        reason,
                    }
                });
            }
            Err(e) => {
                let e = e.map_or_else(
                    || "a write could not be sent into it".to_owned(),
                    |e| e.to_string(),
                );
                let aborted = self
                    .producer
                    .abort_transaction(Timeout::After(self.timeout));
                if let Err(abort) = aborted {
                    // The producer cannot go on: its writers fail, and ownership replaces it.
                    self.broken.store(true, Ordering::Release);
                    self.settled.send_modify(|s| {
                        s.aborted.push_back(generation);
                        s.upto = Some(generation);
                        s.fenced_from = Some(generation + 1);
                    });
                    return Some(Event::Aborted {
                        partition: self.partition,
                        writer: self.id,
                        reason: format!("{e}; abort failed too: {abort}"),
                    });
                }
                self.settled.send_modify(|s| {
                    s.aborted.push_back(generation);
                    while s.aborted.len() > ABORTED_KEPT {
                        s.aborted.pop_front();
                    }
                });
                // The streams that wrote into the aborted transaction lost those writes, and a
                // later write of theirs (parked meanwhile, or sent before they learn of it) must
                // not commit without them: a chunk would be missing from its topic for good. So
                // this producer takes nothing more, and ownership restarts the partition's
                // streams, from what was committed, on a new one.
                self.broken.store(true, Ordering::Release);
                Some(Event::Aborted {
                    partition: self.partition,
                    writer: self.id,
                    reason: e,
                })
            }
        };
        if let Err(e) = self.producer.begin_transaction() {
            self.broken.store(true, Ordering::Release);
            self.settled.send_modify(|s| {
                s.upto = Some(generation);
                s.fenced_from = Some(generation + 1);
            });
            return Some(Event::Aborted {
                partition: self.partition,
                writer: self.id,
                reason: format!("next transaction not begun: {e}"),
            });
        }
        *open = generation + 1;
        self.settled.send_modify(|s| s.upto = Some(generation));
        event
    }
}
