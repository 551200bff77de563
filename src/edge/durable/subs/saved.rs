//! Subscriptions in the store: each one's configuration, cursors, generation and retry schedule
//! (`dss/<id>`), and the webhook signing key (`dsk/webhook`). A restarted server keeps its
//! cursors and its key; the wake in flight is not kept: pending data gets a new wake, one
//! generation on, so a worker still holding the old one is fenced.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::config::Config;
use super::{keys, Durable, Link, Sub};
use crate::edge::durable::access::SubOwner;
use crate::store::DurableDoc;

/// The signing key's document name.
const KEY: &str = "webhook";

#[derive(Serialize, Deserialize)]
struct Saved {
    config: Config,
    /// Its owner; a document saved before owners has none (see `SubOwner::sees`).
    #[serde(default)]
    access: SubOwner,
    created_at: String,
    links: BTreeMap<String, Link>,
    generation: u64,
    retries: u32,
    retry_at: Option<i64>,
}

/// A subscription's document to write: its id, and its bytes (`None`: delete it).
pub(super) type Doc = (String, Option<Vec<u8>>);

/// `sub`'s document.
pub(super) fn doc(sub: &Sub) -> Doc {
    let saved = Saved {
        config: sub.config.clone(),
        access: sub.access.clone(),
        created_at: sub.created_at.clone(),
        links: sub.links.clone(),
        generation: sub.generation,
        retries: sub.retries,
        retry_at: sub.retry_at,
    };
    (sub.id.clone(), serde_json::to_vec(&saved).ok())
}

impl Durable {
    /// Writes subscription documents. Failures are logged: the subscription goes on in memory.
    pub(super) async fn save_subs(&self, docs: Vec<Doc>) {
        for (id, doc) in docs {
            let done = match doc {
                Some(d) => {
                    self.store
                        .durable_put(DurableDoc::Subscription, &id, d, true)
                        .await
                }
                None => {
                    self.store
                        .durable_delete(DurableDoc::Subscription, &id)
                        .await
                }
            };
            if let Err(e) = done {
                tracing::error!(subscription = id, error = %e, "subscription not saved");
            }
        }
    }

    /// Loads the signing key (making and saving one on first start) and every subscription.
    /// Pending data is woken by the driver's first look. Returns how many were restored.
    pub(crate) async fn restore_subs(self: &Arc<Self>) -> Result<usize, String> {
        let saved_key = self
            .store
            .durable_all(DurableDoc::Key)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .find(|(name, _)| name == KEY)
            .map(|(_, v)| v);
        let (keys, fresh) = keys::Keys::load(saved_key.as_deref())?;
        if let Some(pkcs8) = fresh {
            self.store
                .durable_put(DurableDoc::Key, KEY, pkcs8, true)
                .await
                .map_err(|e| e.to_string())?;
        }
        *self.subs.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
        let docs = self
            .store
            .durable_all(DurableDoc::Subscription)
            .await
            .map_err(|e| e.to_string())?;
        let mut table = self.subs.table.lock().await;
        for (id, doc) in docs {
            let s: Saved = match serde_json::from_slice(&doc) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(subscription = id, error = %e, "subscription undecodable; skipped");
                    continue;
                }
            };
            let sub = Sub {
                id: id.clone(),
                config: s.config,
                access: s.access,
                created_at: s.created_at,
                links: s.links,
                generation: s.generation,
                wake: None,
                retries: s.retries,
                retry_at: s.retry_at,
            };
            table.insert(id, sub);
        }
        let n = table.len();
        self.subs
            .count
            .store(n, std::sync::atomic::Ordering::Release);
        for sub in table.values() {
            for path in sub.links.keys() {
                self.subs
                    .touch(&format!("{}{path}", super::STREAM_ROOT), false);
            }
        }
        Ok(n)
    }
}
