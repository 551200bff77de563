//! The Durable Streams protocol (ElectricSQL's open HTTP protocol for resumable, append-only
//! streams), served under `durable.base_path` (`/ds`: `PUT /ds/v1/stream/{name}` creates a
//! stream). Each stream is stored in a Kafka topic of its own, one record per append; its
//! metadata and the records it serves are held here.
//!
//! * `registry` (this file): the streams by path, lookup with lazy expiry, deletion with forks.
//! * `create`: PUT, including forks; `append`: POST; `read`: GET (catch-up and long-poll), HEAD
//!   and DELETE; `sse`: GET with `live=sse`; `reply`: the headers every response carries.
//! * `bridge`: Sluice's own streams, read through the same API at `{base}/v1/sluice/{id}`.
//! * `offset`, `state` and `log`: offsets, one stream's state, and its Kafka topic; `restore`:
//!   its metadata in the store, and rebuilding every stream at start-up.
//!
//! This module does not run handlers or touch Sluice's own streams.

mod append;
pub(crate) mod bridge;
mod create;
pub mod log;
pub mod offset;
mod read;
mod reply;
mod restore;
mod sse;
pub mod state;
mod subs;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, RawQuery, State as AxumState};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use axum::routing::any;
use axum::Router;

use crate::settings::DurableSettings;
use log::Log;
use state::DsStream;

/// The largest body read before answering.
const READ_LIMIT: usize = 32 * 1024 * 1024;

/// What a lookup found.
pub enum Found {
    /// No such stream (or it expired).
    Missing,
    /// Deleted, but its forks still read it.
    Gone,
    /// A live stream.
    Live(Arc<DsStream>),
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
    /// SSE responses' feeders.
    tasks: tokio_util::task::TaskTracker,
    /// Fires when the edge stops: SSE responses end.
    stop: tokio_util::sync::CancellationToken,
    /// Subscriptions (the `__ds` APIs).
    subs: subs::Subscriptions,
    metrics: Arc<crate::metrics::Metrics>,
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
        stop: tokio_util::sync::CancellationToken,
    ) -> Result<Arc<Durable>, String> {
        Ok(Arc::new(Durable {
            streams: Mutex::new(HashMap::new()),
            creating: tokio::sync::Mutex::new(()),
            log,
            store,
            settings: settings.clone(),
            held: std::sync::atomic::AtomicUsize::new(0),
            tasks: tokio_util::task::TaskTracker::new(),
            stop,
            subs: subs::Subscriptions::new(settings)?,
            metrics,
        }))
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
            return Found::Gone;
        }
        if st.expired(now_ms()) {
            let forks = st.forks;
            drop(st);
            self.remove(&stream).await;
            return if forks > 0 {
                Found::Gone
            } else {
                Found::Missing
            };
        }
        drop(st);
        Found::Live(stream)
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
            self.release(st.own_bytes);
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

    /// Reserves `n` bytes of the memory budget; false if it is spent.
    pub(crate) fn reserve(&self, n: usize) -> bool {
        use std::sync::atomic::Ordering;
        let max = self.settings.max_total_bytes;
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| {
                (h + n <= max).then_some(h + n)
            })
            .is_ok()
    }

    /// Returns `n` bytes to the memory budget.
    pub(crate) fn release(&self, n: usize) {
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

/// The Durable Streams routes, under the configured base path.
pub fn routes(durable: Arc<Durable>) -> Router {
    let base = durable.settings.base_path.trim_end_matches('/').to_owned();
    // Bodies up to this are read whole and answered (413 past `max_append_bytes`); a client cut
    // off mid-upload would see a broken connection instead of the answer.
    let limit = READ_LIMIT.max(durable.settings.max_append_bytes);
    Router::new()
        .route(&format!("{base}/v1/stream/{{*name}}"), any(dispatch))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(durable)
}

async fn dispatch(
    AxumState(d): AxumState<Arc<Durable>>,
    method: Method,
    uri: Uri,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let base = d.settings.base_path.trim_end_matches('/');
    let path = uri
        .path()
        .strip_prefix(base)
        .unwrap_or(uri.path())
        .to_owned();
    if let Some(rest) = path.strip_prefix("/v1/stream/__ds") {
        if rest.is_empty() || rest.starts_with('/') {
            return subs::routes::control(&d, &method, rest, &headers, &body).await;
        }
    }
    let req = reply::Req {
        path,
        full_path: uri.path().to_owned(),
        query,
        headers,
    };
    match method {
        Method::PUT => create::put(&d, &req, body).await,
        Method::POST => append::post(&d, &req, body).await,
        Method::GET => read::get(&d, &req).await,
        Method::HEAD => read::head(&d, &req).await,
        Method::DELETE => read::delete(&d, &req).await,
        Method::OPTIONS => reply::preflight(),
        _ => reply::error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
    }
}
