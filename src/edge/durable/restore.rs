//! Keeping Durable Streams across restarts: each stream's metadata is saved in the store (synced
//! for creation, close and deletion; unsynced for appends), and at start-up every stream is
//! rebuilt from its document and its topic. The topic is the authority for appends: a producer's
//! sequence or a `Stream-Seq` that reached Kafka but not the store (a crash between the two) is
//! taken from the records' headers, so a retried append is still recognised as a duplicate.
//! A stream is read from the topic its document names, whatever `durable.topic_prefix` says now,
//! and keeps the owner its document names (none for documents saved before owners).

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::offset::Offset;
use super::state::{self, DsStream, Entry, Meta, ProducerState, State};
use super::{now_ms, Durable};
use crate::store::DurableDoc;

/// A stream's saved document.
#[derive(Serialize, Deserialize)]
struct Saved {
    meta: Meta,
    deleted: bool,
}

/// How long restoring one stream's records may take.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

impl Durable {
    /// Saves `st` as `path`'s document. Failures are logged: the stream goes on, and a restart
    /// rebuilds appends from the topic.
    pub(super) async fn save(&self, path: &str, st: &State, sync: bool) {
        let doc = serde_json::to_vec(&Saved {
            meta: st.meta.clone(),
            deleted: st.deleted,
        })
        .unwrap_or_default();
        if let Err(e) = self
            .store
            .durable_put(DurableDoc::Stream, path, doc, sync)
            .await
        {
            tracing::error!(path, error = %e, "durable stream metadata not saved");
        }
    }

    /// Forgets `path`'s document.
    pub(super) async fn forget(&self, path: &str) {
        if let Err(e) = self.store.durable_delete(DurableDoc::Stream, path).await {
            tracing::error!(path, error = %e, "durable stream metadata not deleted");
        }
    }

    /// Rebuilds every saved stream. Returns how many were restored.
    pub async fn restore(&self) -> usize {
        let docs = match self.store.durable_all(DurableDoc::Stream).await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "durable streams not restored: store unreadable");
                return 0;
            }
        };
        let mut saved: Vec<(String, Saved)> = docs
            .into_iter()
            .filter_map(|(path, doc)| match serde_json::from_slice(&doc) {
                Ok(s) => Some((path, s)),
                Err(e) => {
                    tracing::error!(path, error = %e, "durable stream metadata undecodable; skipped");
                    None
                }
            })
            .collect();
        // Sources before their forks: a fork is one segment deeper than its source.
        saved.sort_by_key(|(_, s)| s.meta.seg);
        let mut restored = 0;
        for (path, s) in saved {
            match self.rebuild(&path, s).await {
                Ok(stream) => {
                    self.insert(stream);
                    restored += 1;
                }
                Err(e) => tracing::error!(path, error = %e, "durable stream not restored"),
            }
        }
        restored
    }

    async fn rebuild(&self, path: &str, saved: Saved) -> Result<Arc<DsStream>, String> {
        let (log, topic) = (self.log.clone(), saved.meta.topic.clone());
        let records = tokio::task::spawn_blocking(move || log.read_all(&topic, READ_TIMEOUT))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let mut st = State::new(saved.meta, now_ms());
        st.deleted = saved.deleted;
        if let Some(fork) = st.meta.fork_of.clone() {
            let source = self
                .get(&fork.source)
                .ok_or_else(|| format!("fork source {} is gone", fork.source))?;
            let mut ss = source.state.lock().await;
            st.entries = ss.entries[..ss.first_after(fork.offset)].to_vec();
            ss.forks += 1;
            drop(ss);
            st.source = Some(source);
        }
        let json = state::is_json(&st.meta.content_type);
        let seg = st.meta.seg;
        for r in records {
            let items = if json {
                state::json_items(format!("[{}]", String::from_utf8_lossy(&r.data)).as_bytes())
                    .map_or(0, |(_, n)| n)
            } else {
                0
            };
            if let Some((id, epoch, seq)) = r.producer {
                let p = st
                    .meta
                    .producers
                    .entry(id)
                    .or_insert(ProducerState { epoch, seq });
                if (epoch, seq) > (p.epoch, p.seq) {
                    *p = ProducerState { epoch, seq };
                }
            }
            if let Some(q) = r.stream_seq {
                if st
                    .meta
                    .stream_seq
                    .as_deref()
                    .is_none_or(|s| q.as_bytes() > s.as_bytes())
                {
                    st.meta.stream_seq = Some(q);
                }
            }
            // Already stored: counted against the budget even past it.
            self.held
                .fetch_add(r.data.len(), std::sync::atomic::Ordering::AcqRel);
            st.push(Entry {
                end: Offset {
                    seg,
                    pos: r.offset as u64 + 1,
                },
                data: r.data.into(),
                items,
            });
        }
        // The producer table counts against the budgets as appends do.
        let table = st.producer_bytes();
        st.own_bytes += table;
        self.held
            .fetch_add(table, std::sync::atomic::Ordering::AcqRel);
        self.quotas.restored(st.meta.owner.as_deref(), st.own_bytes);
        Ok(DsStream::new(path, st))
    }
}
