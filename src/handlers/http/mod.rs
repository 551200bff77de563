//! `kind = "http"`: a stream fed by an HTTP upstream written in any language.
//!
//! Streaming mode sends `{"stream_id","type","payload","metadata","cursor"}` (POST by default) and
//! reads the response as NDJSON or SSE (`format`, else the `Content-Type`); each line or event is
//! one chunk, and a normal end of the body is `success`. The `cursor` field of an item (or the SSE
//! event id) is checkpointed after it; a resumed run, or a reconnect after a dropped body, calls the
//! upstream again with the last cursor in the body and as `Last-Event-ID`, and the items it
//! already emitted after that cursor are not emitted again.
//!
//! Poll mode (`poll_interval`) calls the upstream every interval (GET by default); each response
//! body, one JSON document, is one chunk. It runs until cancel or timeout.
//!
//! Failures: connect errors, dropped bodies and 5xx are retried with backoff up to `retries`
//! consecutive times, then `failed`/`upstream_unavailable`; any other non-2xx is
//! `failed`/`upstream_rejected` with the status; a malformed item is `failed`/`upstream_malformed`
//! with its line. Redirects are not followed, and the URL's origin is fixed by configuration
//! (`target`).

mod body;
mod target;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use reqwest::{Method, Url};
use serde_json::{json, Value};

pub use target::Target;

use self::body::{ndjson_item, Item, Lines, SseParser};
use super::{Closed, HandlerError, ResumeMode, StreamContext, StreamHandler};
use crate::metrics::Metrics;
use crate::settings::{HttpFormat, HttpSourceSettings};

/// An HTTP-sourced stream handler for one `service:action`.
pub struct HttpSource {
    settings: HttpSourceSettings,
    target: Target,
    method: Method,
    client: reqwest::Client,
    metrics: Arc<Metrics>,
    max_item_bytes: usize,
}

/// How one request went wrong.
enum Failure {
    /// Worth another try: connect error, 5xx, or a body that broke off.
    Retry(String),
    /// Ends the stream.
    Fatal(HandlerError),
}

impl From<Closed> for Failure {
    fn from(c: Closed) -> Self {
        Failure::Fatal(c.into())
    }
}

/// Where a streaming run stands, across reconnects.
#[derive(Default)]
struct Progress {
    cursor: Option<Value>,
    /// Items emitted after `cursor`; a reconnect skips that many.
    since_cursor: u64,
    skip: u64,
    progressed: bool,
}

impl HttpSource {
    /// A handler for validated `settings`; items above `max_item_bytes` are malformed.
    pub fn new(
        settings: HttpSourceSettings,
        metrics: Arc<Metrics>,
        max_item_bytes: usize,
    ) -> Result<HttpSource, String> {
        let target = Target::parse(&settings.url)?;
        let poll = settings.poll_interval.is_some();
        let method = match settings.method.as_deref() {
            Some("GET") => Method::GET,
            Some("POST") => Method::POST,
            None if poll => Method::GET,
            None => Method::POST,
            Some(other) => return Err(format!("method {other:?} is not GET or POST")),
        };
        let client = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        Ok(HttpSource {
            settings,
            target,
            method,
            client,
            metrics,
            max_item_bytes,
        })
    }

    fn request(
        &self,
        ctx: &StreamContext,
        url: &Url,
        cursor: Option<&Value>,
    ) -> reqwest::RequestBuilder {
        let mut req = self.client.request(self.method.clone(), url.clone());
        for (k, v) in &self.settings.headers {
            req = req.header(k, v);
        }
        if let Some(c) = cursor {
            let text = c.as_str().map_or_else(|| c.to_string(), str::to_owned);
            req = req.header("Last-Event-ID", text);
        }
        if self.method == Method::POST {
            let r = ctx.request();
            req = req.json(&json!({"stream_id": ctx.stream_id().as_str(),
                "type": r.event_type.to_string(), "payload": r.payload,
                "metadata": r.metadata, "cursor": cursor}));
        }
        req
    }

    /// Sends a request and maps its status. `Ok` is a 2xx response.
    async fn send(
        &self,
        ctx: &StreamContext,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, Failure> {
        let sent = tokio::select! {
            _ = ctx.cancelled() => return Err(Closed.into()),
            r = req.send() => r,
        };
        let id = ctx.stream_id().as_str();
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                self.metrics
                    .upstream_request("connect_error", id, &e.to_string());
                return Err(Failure::Retry(format!("upstream request failed: {e}")));
            }
        };
        let status = resp.status();
        if status.is_server_error() {
            self.metrics
                .upstream_request("server_error", id, status.as_str());
            return Err(Failure::Retry(format!("upstream answered {status}")));
        }
        if !status.is_success() {
            self.metrics
                .upstream_request("client_error", id, status.as_str());
            return Err(Failure::Fatal(HandlerError::new(
                "upstream_rejected",
                format!("upstream answered {status}"),
            )));
        }
        self.metrics.upstream_request("ok", id, "");
        Ok(resp)
    }

    fn malformed(&self, ctx: &StreamContext, detail: String) -> Failure {
        self.metrics
            .upstream_request("malformed", ctx.stream_id().as_str(), &detail);
        Failure::Fatal(HandlerError::new("upstream_malformed", detail))
    }

    /// One streaming request, read to its end.
    async fn attempt(
        &self,
        ctx: &StreamContext,
        url: &Url,
        p: &mut Progress,
    ) -> Result<(), Failure> {
        let resp = self
            .send(ctx, self.request(ctx, url, p.cursor.as_ref()))
            .await?;
        let sse = match self.settings.format {
            Some(f) => f == HttpFormat::Sse,
            None => resp
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("text/event-stream")),
        };
        let mut body = resp.bytes_stream();
        let mut lines = Lines::new(self.max_item_bytes);
        let mut parser = SseParser::default();
        loop {
            let next = tokio::select! {
                _ = ctx.cancelled() => return Err(Closed.into()),
                b = body.next() => b,
            };
            let at_end = match next {
                None => true,
                Some(Ok(bytes)) => {
                    lines.push(&bytes);
                    false
                }
                Some(Err(e)) => {
                    return Err(Failure::Retry(format!("upstream body broke off: {e}")))
                }
            };
            while let Some((n, text)) = lines
                .next_line(at_end)
                .map_err(|e| self.malformed(ctx, e.to_string()))?
            {
                let item = if sse {
                    parser.line(n, &text)
                } else {
                    ndjson_item(n, &text)
                };
                if let Some(item) = item.map_err(|e| self.malformed(ctx, e.to_string()))? {
                    self.emit(ctx, item, p).await?;
                }
            }
            if at_end {
                if sse {
                    // A final event without its blank line still counts.
                    if let Some(item) = parser
                        .line(u64::MAX, "")
                        .map_err(|e| self.malformed(ctx, e.to_string()))?
                    {
                        self.emit(ctx, item, p).await?;
                    }
                }
                return Ok(());
            }
        }
    }

    async fn emit(&self, ctx: &StreamContext, item: Item, p: &mut Progress) -> Result<(), Failure> {
        if p.skip > 0 {
            p.skip -= 1;
            return Ok(());
        }
        let cursor = match &self.settings.cursor {
            Some(field) => item.payload.get(field).filter(|v| !v.is_null()).cloned(),
            None => None,
        }
        .or(item.id.map(Value::String));
        ctx.emit(item.payload).await?;
        p.progressed = true;
        match cursor {
            Some(c) => {
                ctx.checkpoint(c.clone()).await?;
                p.cursor = Some(c);
                p.since_cursor = 0;
            }
            None => p.since_cursor += 1,
        }
        Ok(())
    }

    async fn stream(&self, ctx: &StreamContext) -> Result<(), HandlerError> {
        let url = self.target.render(&ctx.request().payload)?;
        let mut p = Progress {
            cursor: ctx.resume_from().cloned(),
            ..Progress::default()
        };
        let mut failures = 0;
        loop {
            p.progressed = false;
            let detail = match self.attempt(ctx, &url, &mut p).await {
                Ok(()) => return Ok(()),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Retry(detail)) => detail,
            };
            failures = if p.progressed { 1 } else { failures + 1 };
            if failures > self.settings.retries {
                return Err(HandlerError::new(
                    "upstream_unavailable",
                    format!("{detail} ({failures} attempts in a row)"),
                ));
            }
            p.skip = p.since_cursor;
            let backoff =
                Duration::from_millis(200 * 2u64.pow(failures.min(6))).min(Duration::from_secs(10));
            tokio::select! {
                _ = ctx.cancelled() => return Err(Closed.into()),
                _ = tokio::time::sleep(backoff) => {}
            }
        }
    }

    async fn poll(&self, ctx: &StreamContext, every: Duration) -> Result<(), HandlerError> {
        let url = self.target.render(&ctx.request().payload)?;
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failures = 0;
        for n in 1u64.. {
            tokio::select! {
                _ = ctx.cancelled() => return Err(Closed.into()),
                _ = ticker.tick() => {}
            }
            match self.poll_once(ctx, &url, n).await {
                Ok(v) => {
                    failures = 0;
                    ctx.emit(v).await?;
                }
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Retry(detail)) => {
                    failures += 1;
                    if failures > self.settings.retries {
                        return Err(HandlerError::new(
                            "upstream_unavailable",
                            format!("{detail} ({failures} polls in a row)"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    async fn poll_once(&self, ctx: &StreamContext, url: &Url, n: u64) -> Result<Value, Failure> {
        let mut resp = self.send(ctx, self.request(ctx, url, None)).await?;
        let mut bytes = Vec::new();
        loop {
            let chunk = tokio::select! {
                _ = ctx.cancelled() => return Err(Closed.into()),
                c = resp.chunk() => c.map_err(|e| Failure::Retry(format!("upstream body broke off: {e}")))?,
            };
            let Some(chunk) = chunk else { break };
            bytes.extend_from_slice(&chunk);
            if bytes.len() > self.max_item_bytes {
                return Err(self.malformed(
                    ctx,
                    format!(
                        "poll response {n} is longer than {} bytes",
                        self.max_item_bytes
                    ),
                ));
            }
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            self.malformed(ctx, format!("poll response {n}: not a JSON document: {e}"))
        })
    }
}

#[async_trait]
impl StreamHandler for HttpSource {
    async fn run(&self, ctx: StreamContext) -> Result<(), HandlerError> {
        match self.settings.poll_interval {
            Some(every) => self.poll(&ctx, every).await,
            None => self.stream(&ctx).await,
        }
    }

    fn resume_mode(&self) -> ResumeMode {
        // Polls are not repeatable: a resumed poll stream continues after what is stored.
        if self.settings.poll_interval.is_some() {
            ResumeMode::AfterStored
        } else {
            ResumeMode::Replay
        }
    }
}
