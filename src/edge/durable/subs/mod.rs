//! Subscriptions, the protocol's reserved `__ds` APIs: durable cursors over a set of streams (a
//! glob `pattern` and explicit `streams`) that wake a worker when any of them has data past its
//! acknowledged offset, by a signed webhook or by a wake event in a `wake_stream` that workers
//! claim from. Each wake has a `wake_id` and a new `generation`; callbacks, acks and releases
//! naming an older one are fenced.
//!
//! * this file: the table of subscriptions and the wake cycle (link, wake, ack, expire);
//! * `config`: bodies and webhook URL checks; `glob`: patterns; `keys`: signing and tokens;
//! * `deliver`: webhook requests and wake events; `saved`: the store; `routes`: HTTP.
//!
//! Appends reach this module as a path marked touched; a driver task does the rest, so an append
//! never waits for a subscription.
//!
//! A subscription belongs to the `sub` that created it (`access::SubOwner`): only its owner or an
//! administrator manages or claims it, and it links, lists and wakes for only the streams its
//! owner owns (all of them for an administrator's). A stream it may not see looks missing to it.

mod config;
mod cursor;
mod deliver;
mod glob;
mod keys;
mod manage;
pub(super) mod routes;
mod saved;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::access::SubOwner;
use super::offset::Offset;
use super::{now_ms, Durable};
use config::{Config, Kind};

/// Where stream paths start below the base path.
const STREAM_ROOT: &str = "/v1/stream/";
/// The acknowledged offset of a stream linked before its first data.
const BEFORE_FIRST: &str = "-1";
/// How often leases and retries are looked at.
const TICK: Duration = Duration::from_millis(100);

/// A refused subscription request: status, protocol error code, message.
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Extra members of the error object.
    pub extra: Option<Value>,
}

impl Refusal {
    fn new(status: StatusCode, code: &'static str, message: &str) -> Refusal {
        Refusal {
            status,
            code,
            message: message.to_owned(),
            extra: None,
        }
    }
    pub fn invalid(message: &str) -> Refusal {
        Refusal::new(StatusCode::BAD_REQUEST, "INVALID_REQUEST", message)
    }
    pub fn url_rejected(message: &str) -> Refusal {
        Refusal::new(StatusCode::BAD_REQUEST, "WEBHOOK_URL_REJECTED", message)
    }
    fn forbidden(message: &str) -> Refusal {
        Refusal::new(StatusCode::FORBIDDEN, "FORBIDDEN", message)
    }
    fn not_found() -> Refusal {
        Refusal::new(
            StatusCode::NOT_FOUND,
            "SUBSCRIPTION_NOT_FOUND",
            "subscription not found",
        )
    }
    fn fenced() -> Refusal {
        Refusal::new(StatusCode::CONFLICT, "FENCED", "wake generation is stale")
    }
    fn offset(message: &str) -> Refusal {
        Refusal::new(StatusCode::CONFLICT, "INVALID_OFFSET", message)
    }
}

/// One linked stream's cursor.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Link {
    explicit: bool,
    glob: bool,
    /// Last processed offset, inclusive, or `-1`.
    acked: String,
}

/// The wake in flight.
struct Wake {
    id: String,
    /// Each linked stream's tail when the wake was issued, auto-acked by a webhook's `done`.
    snapshot: Vec<(String, String)>,
    /// The pull-wake worker holding the lease.
    holder: Option<String>,
    /// When the lease ends (webhook: from the wake; pull-wake: from the claim).
    lease_until: Option<i64>,
    /// A webhook request is running.
    delivering: bool,
}

/// One subscription.
struct Sub {
    id: String,
    config: Config,
    /// Who owns it, and so which streams it sees.
    access: SubOwner,
    created_at: String,
    links: BTreeMap<String, Link>,
    generation: u64,
    wake: Option<Wake>,
    /// Failed webhook deliveries in a row, and when the next is due.
    retries: u32,
    retry_at: Option<i64>,
}

/// A linked stream as responses show it.
struct Info {
    path: String,
    link: Link,
    tail: String,
}

impl Info {
    fn pending(&self) -> bool {
        self.tail.as_str() > self.link.acked.as_str()
    }
    fn json(&self, with_tail: bool) -> Value {
        let link_type = if self.link.explicit {
            "explicit"
        } else {
            "glob"
        };
        let mut v = json!({
            "path": self.path, "link_type": link_type, "acked_offset": self.link.acked,
        });
        if with_tail {
            v["tail_offset"] = json!(self.tail);
            v["has_pending"] = json!(self.pending());
        }
        v
    }
}

/// The subscription table and what drives it. Owned by [`Durable`].
pub(crate) struct Subscriptions {
    table: tokio::sync::Mutex<HashMap<String, Sub>>,
    keys: std::sync::RwLock<Arc<keys::Keys>>,
    /// Paths appended to (false) or deleted (true) since the driver last looked.
    touched: std::sync::Mutex<HashMap<String, bool>>,
    nudge: tokio::sync::Notify,
    client: reqwest::Client,
    /// How many subscriptions exist: with none, appends skip the bookkeeping altogether.
    count: std::sync::atomic::AtomicUsize,
}

impl Subscriptions {
    /// An empty table with a fresh signing key (replaced by the saved one at restore).
    pub fn new(settings: &crate::settings::DurableSettings) -> Result<Subscriptions, String> {
        let (keys, _) = keys::Keys::load(None)?;
        Ok(Subscriptions {
            table: tokio::sync::Mutex::new(HashMap::new()),
            keys: std::sync::RwLock::new(Arc::new(keys)),
            touched: std::sync::Mutex::new(HashMap::new()),
            nudge: tokio::sync::Notify::new(),
            client: deliver::client(settings)?,
            count: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    fn keys(&self) -> Arc<keys::Keys> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Notes that the stream at `path` (below the base path) has new data, or is gone.
    pub fn touch(&self, path: &str, deleted: bool) {
        // A subscription created later links existing streams when it is created.
        if self.count.load(std::sync::atomic::Ordering::Acquire) == 0 {
            return;
        }
        let Some(rel) = relative(path) else { return };
        let mut t = self.touched.lock().unwrap_or_else(|p| p.into_inner());
        let e = t.entry(rel.to_owned()).or_insert(deleted);
        *e = *e || deleted;
        drop(t);
        self.nudge.notify_one();
    }
}

/// The stream-root-relative path of a stream path, unless it is a control path.
fn relative(path: &str) -> Option<&str> {
    let rel = path.strip_prefix(STREAM_ROOT)?.trim_matches('/');
    (!rel.is_empty() && rel != "__ds" && !rel.starts_with("__ds/")).then_some(rel)
}

fn now_s() -> i64 {
    now_ms() / 1000
}

impl Durable {
    /// A stream's tail as a subscription of `access` sees it (the start of every stream when it
    /// is missing or not the subscription's to see).
    async fn sub_tail(&self, access: &SubOwner, rel: &str) -> String {
        match self.find(&format!("{STREAM_ROOT}{rel}")).await {
            super::Found::Live(s) if access.sees(&s) => s.state.lock().await.tail.to_string(),
            _ => Offset::ZERO.to_string(),
        }
    }

    /// Whether a subscription of `access` sees the stream at `rel` (live or not).
    fn sub_sees(&self, access: &SubOwner, rel: &str) -> bool {
        self.get(&format!("{STREAM_ROOT}{rel}"))
            .is_some_and(|s| access.sees(&s))
    }

    /// The linked streams of `sub`, with their tails.
    async fn infos(&self, sub: &Sub) -> Vec<Info> {
        let mut out = Vec::with_capacity(sub.links.len());
        for (path, link) in &sub.links {
            out.push(Info {
                path: path.clone(),
                link: link.clone(),
                tail: self.sub_tail(&sub.access, path).await,
            });
        }
        out
    }

    /// Starts a wake if `sub` is idle and has pending data. Returns whether it did.
    async fn maybe_wake(self: &Arc<Self>, sub: &mut Sub) -> bool {
        if sub.wake.is_some() {
            return false;
        }
        let infos = self.infos(sub).await;
        let Some(first) = infos.iter().find(|i| i.pending()) else {
            return false;
        };
        let first = first.path.clone();
        sub.generation += 1;
        let keys = self.subs.keys();
        let wake = Wake {
            id: format!("w_{}", keys.random_hex(12)),
            snapshot: infos
                .iter()
                .map(|i| (i.path.clone(), i.tail.clone()))
                .collect(),
            holder: None,
            lease_until: None,
            delivering: false,
        };
        sub.wake = Some(wake);
        match sub.config.kind {
            Kind::Webhook => self.deliver(sub, infos),
            Kind::PullWake => self.write_wake_event(sub, &first),
        }
        let pull = sub.config.kind == Kind::PullWake;
        self.metrics.durable_wake(&sub.id, sub.generation, pull);
        true
    }

    /// Ends `sub`'s wake and starts the next if data is pending. Returns whether it did.
    async fn end_wake(self: &Arc<Self>, sub: &mut Sub) -> bool {
        sub.wake = None;
        self.maybe_wake(sub).await
    }

    /// Links the touched streams to the subscriptions whose patterns match them, wakes the ones
    /// with pending data, and unlinks deleted streams.
    async fn on_touched(self: &Arc<Self>) {
        let touched: Vec<(String, bool)> = {
            let mut t = self.subs.touched.lock().unwrap_or_else(|p| p.into_inner());
            t.drain().collect()
        };
        if touched.is_empty() {
            return;
        }
        let mut table = self.subs.table.lock().await;
        let mut changed = Vec::new();
        for sub in table.values_mut() {
            let mut dirty = false;
            for (path, deleted) in &touched {
                if *deleted {
                    dirty |= unlink_deleted(sub, path);
                    continue;
                }
                if sub
                    .config
                    .pattern
                    .as_deref()
                    .is_some_and(|p| glob::matches(p, path))
                    && self.sub_sees(&sub.access, path)
                {
                    let link = sub.links.entry(path.clone()).or_insert_with(|| {
                        dirty = true;
                        Link {
                            explicit: false,
                            glob: true,
                            acked: BEFORE_FIRST.to_owned(),
                        }
                    });
                    dirty |= !std::mem::replace(&mut link.glob, true);
                }
                if sub.links.contains_key(path) {
                    dirty |= self.maybe_wake(sub).await;
                }
            }
            if dirty {
                changed.push(saved::doc(sub));
            }
        }
        drop(table);
        self.save_subs(changed).await;
    }

    /// Ends expired leases and sends due webhook retries.
    async fn on_tick(self: &Arc<Self>) {
        let now = now_ms();
        let mut table = self.subs.table.lock().await;
        let mut changed = Vec::new();
        for sub in table.values_mut() {
            let Some(w) = &sub.wake else { continue };
            if w.delivering {
                continue;
            }
            if sub.retry_at.is_some_and(|t| t <= now) {
                sub.retry_at = None;
                let infos = self.infos(sub).await;
                self.deliver(sub, infos);
            } else if w.lease_until.is_some_and(|t| t <= now) {
                tracing::debug!(subscription = sub.id, "lease expired");
                self.end_wake(sub).await;
                changed.push(saved::doc(sub));
            }
        }
        drop(table);
        self.save_subs(changed).await;
    }

    /// Runs the subscriptions until `stop` fires.
    pub async fn run_subscriptions(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                _ = self.subs.nudge.notified() => self.on_touched().await,
                _ = tick.tick() => self.on_tick().await,
            }
        }
    }
}

/// Forgets a deleted stream: its glob link goes; an explicit link stays, from before the data of
/// whatever is created there next. Returns whether anything changed.
fn unlink_deleted(sub: &mut Sub, path: &str) -> bool {
    let Some(link) = sub.links.get_mut(path) else {
        return false;
    };
    if link.explicit {
        link.glob = false;
        link.acked = BEFORE_FIRST.to_owned();
    } else {
        sub.links.remove(path);
    }
    true
}
