//! The Durable Streams protocol (ElectricSQL's open HTTP protocol for resumable, append-only
//! streams), served under `durable.base_path` (`/ds`: `PUT /ds/v1/stream/{name}` creates a
//! stream). Each stream is stored in a Kafka topic of its own, one record per append; its
//! metadata and the records it serves are held here.
//!
//! * `registry` (this file): the streams by path, lookup with lazy expiry, deletion with forks;
//!   `request`: routing, bounded request bodies and paths; `access`: who may do what.
//! * `create`: PUT, including forks; `append`: POST; `read`: GET (catch-up and long-poll), HEAD
//!   and DELETE; `sse`: GET with `live=sse`; `reply`: the headers every response carries.
//! * `bridge`: Sluice's own streams, read through the same API at `{base}/v1/sluice/{id}`.
//! * `offset`, `state` and `log`: offsets, one stream's state, and its Kafka topic; `restore`:
//!   its metadata in the store, and rebuilding every stream at start-up.
//!
//! This module does not run handlers or touch Sluice's own streams.

mod access;
mod append;
pub(crate) mod bridge;
mod create;
pub mod log;
pub mod offset;
mod quota;
mod read;
mod reply;
mod request;
mod restore;
mod sse;
pub mod state;
mod subs;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use axum::response::Response;

use crate::settings::DurableSettings;
use log::Log;
use state::DsStream;

pub use request::{cors, routes};

/// What a lookup found.
pub enum Found {
    /// No such stream (or it expired).
    Missing,
    /// Deleted, but its forks still read it.
    Gone(Arc<DsStream>),
    /// A live stream.
    Live(Arc<DsStream>),
}

/// A byte budget a write would cross.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    /// `durable.max_total_bytes`.
    Server,
    /// One of the owner's budgets.
    Owner(quota::Over),
}

impl Full {
    /// The 507 answer, with the refusal counted and logged.
    fn reply(self, d: &Durable) -> Response {
        match self {
            Full::Server => reply::error(
                StatusCode::INSUFFICIENT_STORAGE,
                "server memory for streams is full",
            ),
            Full::Owner(over) => d.over_quota(over),
        }
    }
}

/// The Durable Streams server's state. Shared behind an `Arc`.
pub struct Durable {
    streams: Mutex<HashMap<String, Arc<DsStream>>>,
    /// Serialises creations, which take a topic creation each.
    creating: tokio::sync::Mutex<()>,
    log: Log,
    store: crate::store::Store,
    pub(crate) settings: DurableSettings,
    /// Bytes all streams hold, against `durable.max_total_bytes`.
    held: std::sync::atomic::AtomicUsize,
    /// Each owner's streams and bytes, against the per-owner budgets.
    quotas: quota::Quotas,
    /// Creations per identity, the bucket stream requests draw from too.
    rate: Arc<crate::edge::limits::RequestRate>,
    /// SSE responses' feeders.
    tasks: tokio_util::task::TaskTracker,
    /// Fires when the edge stops: SSE responses end.
    stop: tokio_util::sync::CancellationToken,
    /// Subscriptions (the `__ds` APIs).
    subs: subs::Subscriptions,
    metrics: Arc<crate::metrics::Metrics>,
    /// `http://<bound http.listen>`, the origin of public URLs when `durable.public_url` is empty.
    listen_origin: std::sync::OnceLock<String>,
}

/// Milliseconds since the epoch, the clock every expiry uses.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Durable {
    /// A server writing through `log`; its SSE responses end when `stop` fires.
    pub fn new(
        log: Log,
        store: crate::store::Store,
        settings: &DurableSettings,
        metrics: Arc<crate::metrics::Metrics>,
        rate: Arc<crate::edge::limits::RequestRate>,
        stop: tokio_util::sync::CancellationToken,
    ) -> Result<Arc<Durable>, String> {
        Ok(Arc::new(Durable {
            streams: Mutex::new(HashMap::new()),
            creating: tokio::sync::Mutex::new(()),
            log: log.with_topic_prefix(&settings.topic_prefix),
            store,
            settings: settings.clone(),
            held: std::sync::atomic::AtomicUsize::new(0),
            quotas: quota::Quotas::new(settings),
            rate,
            tasks: tokio_util::task::TaskTracker::new(),
            stop,
            subs: subs::Subscriptions::new(settings)?,
            metrics,
            listen_origin: std::sync::OnceLock::new(),
        }))
    }

    /// Notes the address the HTTP listener is bound to, for public URLs when
    /// `durable.public_url` is empty (an unspecified address becomes `localhost`).
    pub fn set_listen_addr(&self, addr: std::net::SocketAddr) {
        let host = match addr.ip() {
            ip if ip.is_unspecified() => "localhost".to_owned(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        let _ = self
            .listen_origin
            .set(format!("http://{host}:{}", addr.port()));
    }

    /// The URL `base_path` is reached at: `durable.public_url`, else the bound listen address
    /// and `base_path`. Never taken from a request, so no `Host` header can redirect callbacks.
    pub(crate) fn public_origin(&self) -> String {
        if !self.settings.public_url.is_empty() {
            return self.settings.public_url.clone();
        }
        let origin = self
            .listen_origin
            .get()
            .map_or("http://localhost", String::as_str);
        format!("{origin}{}", self.settings.base_path.trim_end_matches('/'))
    }

    /// The answer to a request past one of the owner's budgets: 507, as a storage quota is.
    fn over_quota(&self, over: quota::Over) -> Response {
        let message = over.message();
        self.metrics
            .edge_rejected("ds_owner_quota", &format!("durable: {message}"));
        reply::error(StatusCode::INSUFFICIENT_STORAGE, &message)
    }

    /// Waits for the SSE feeders, once the edge stopped.
    pub async fn wait(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Every stream's path.
    fn paths(&self) -> Vec<String> {
        let map = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        map.keys().cloned().collect()
    }

    fn get(&self, path: &str) -> Option<Arc<DsStream>> {
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(path)
            .cloned()
    }

    /// Looks `path` up, expiring it first if its time is up.
    pub async fn find(&self, path: &str) -> Found {
        let Some(stream) = self.get(path) else {
            return Found::Missing;
        };
        let st = stream.state.lock().await;
        if st.deleted {
            drop(st);
            return Found::Gone(stream);
        }
        if st.expired(now_ms()) {
            let forks = st.forks;
            drop(st);
            self.remove(&stream).await;
            return if forks > 0 {
                Found::Gone(stream)
            } else {
                Found::Missing
            };
        }
        drop(st);
        Found::Live(stream)
    }

    /// Looks `path` up for `who` to do `verb`: the live stream, or the answer. A stream `who` may
    /// not read is answered as a missing one (404, same body), so existence does not leak; one it
    /// may read but not write is 403 for a write; a deleted one it may read is 410.
    pub(crate) async fn reach(
        &self,
        path: &str,
        who: &crate::edge::auth::Identity,
        verb: access::Verb,
    ) -> Result<Arc<DsStream>, Response> {
        let (stream, gone) = match self.find(path).await {
            Found::Missing => return Err(reply::not_found()),
            Found::Gone(s) => (s, true),
            Found::Live(s) => (s, false),
        };
        if !access::allows(who, &stream, access::Verb::Read) {
            self.metrics
                .edge_rejected("forbidden", "durable: stream not readable by this token");
            return Err(reply::not_found());
        }
        if gone {
            return Err(reply::error(StatusCode::GONE, "stream was deleted"));
        }
        if !access::allows(who, &stream, verb) {
            self.metrics
                .edge_rejected("forbidden", "durable: stream not writable by this token");
            return Err(reply::error(
                StatusCode::FORBIDDEN,
                "this token may read this stream but not write it",
            ));
        }
        Ok(stream)
    }

    /// Deletes a stream: at once if nothing forks it, else it stays, gone for clients, until its
    /// last fork is deleted. Releases its hold on its source, which may then go too.
    pub async fn remove(&self, stream: &Arc<DsStream>) {
        let mut next = Some(stream.clone());
        while let Some(s) = next.take() {
            let mut st = s.state.lock().await;
            st.deleted = true;
            s.notify();
            if st.forks > 0 {
                self.save(&s.path, &st, true).await;
                return;
            }
            self.forget(&s.path).await;
            self.subs.touch(&s.path, true);
            {
                let mut map = self.streams.lock().unwrap_or_else(|p| p.into_inner());
                if map.get(&s.path).is_some_and(|cur| Arc::ptr_eq(cur, &s)) {
                    map.remove(&s.path);
                }
            }
            let topic = st.meta.topic.clone();
            let source = st.source.take();
            self.release(st.meta.owner.as_deref(), st.own_bytes);
            self.quotas.drop_stream(st.meta.owner.as_deref());
            drop(st);
            let log = self.log.clone();
            self.tasks.spawn(async move {
                if let Err(e) = log.delete(&[topic]).await {
                    tracing::warn!(error = %e, "durable stream topic not deleted");
                }
            });
            if let Some(src) = source {
                let mut ss = src.state.lock().await;
                ss.forks = ss.forks.saturating_sub(1);
                if ss.deleted && ss.forks == 0 {
                    drop(ss);
                    next = Some(src);
                }
            }
        }
    }

    /// Reserves `n` bytes of the server's memory budget and `owner`'s, or says which is spent.
    pub(crate) fn reserve(&self, owner: Option<&str>, n: usize) -> Result<(), Full> {
        use std::sync::atomic::Ordering;
        let max = self.settings.max_total_bytes;
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| {
                (h + n <= max).then_some(h + n)
            })
            .map_err(|_| Full::Server)?;
        self.quotas.reserve(owner, n).map_err(|over| {
            self.release_server(n);
            Full::Owner(over)
        })
    }

    /// Returns `n` bytes to the server's memory budget and `owner`'s.
    pub(crate) fn release(&self, owner: Option<&str>, n: usize) {
        self.quotas.release(owner, n);
        self.release_server(n);
    }

    fn release_server(&self, n: usize) {
        use std::sync::atomic::Ordering;
        let _ = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| {
                Some(h.saturating_sub(n))
            });
    }

    fn insert(&self, stream: Arc<DsStream>) {
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(stream.path.clone(), stream);
    }

    /// How many streams are held.
    pub fn count(&self) -> usize {
        self.streams.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Deletes the streams whose time is up (lookups expire them too; this frees the rest).
    pub async fn sweep(&self) {
        let all: Vec<Arc<DsStream>> = self
            .streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let now = now_ms();
        for s in all {
            let expired = {
                let st = s.state.lock().await;
                !st.deleted && st.expired(now)
            };
            if expired {
                self.remove(&s).await;
            }
        }
    }

    /// Runs the sweeper until `stop` fires.
    pub async fn run_sweeper(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                _ = tick.tick() => {
                    self.sweep().await;
                    self.metrics.durable_streams(self.count());
                }
            }
        }
    }
}

pub use subs::routes::token_routes;
