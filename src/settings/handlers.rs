//! `[handlers]`: the built-in demo handler and the configured stream sources, one table per
//! `service:action`, each of `kind = "kafka"` (a Kafka topic) or `kind = "http"` (an HTTP
//! upstream). Validation here refuses, naming the key, anything that would fail per request: an
//! unknown kind, a malformed template, a URL whose scheme, host or port is templated.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Error;
use crate::handlers::template::Template;

/// `[handlers]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(try_from = "BTreeMap<String, serde_json::Value>")]
pub struct HandlersSettings {
    /// The built-in `demo:stream_ticks` handler.
    pub demo: DemoSettings,
    /// Configured sources by `service:action`.
    #[serde(flatten)]
    pub sources: BTreeMap<String, SourceSettings>,
}

/// `[handlers.demo]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DemoSettings {
    /// Whether `demo:stream_ticks` is registered. Turn it off in production.
    pub enabled: bool,
}

impl Default for DemoSettings {
    fn default() -> Self {
        DemoSettings { enabled: true }
    }
}

/// One configured source.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SourceSettings {
    /// A stream fed from a Kafka topic.
    Kafka(KafkaSourceSettings),
    /// A stream fed by an HTTP upstream.
    Http(HttpSourceSettings),
}

/// Where a Kafka-sourced stream starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    /// Records produced after the stream starts.
    #[default]
    Latest,
    /// Every record the topic still holds.
    Earliest,
}

/// `kind = "kafka"`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceSettings {
    /// The source topic.
    pub topic: String,
    /// Template over the request payload; only records with this key are emitted. None: all.
    #[serde(default)]
    pub key: Option<String>,
    /// Where a new stream starts reading.
    #[serde(default)]
    pub start: StartAt,
    /// A record carrying this header ends the stream in `success`, after it is emitted.
    #[serde(default = "default_end_header")]
    pub end_header: Option<String>,
    /// `success` after this long without a record; zero means never.
    #[serde(default, with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A checkpoint every this many records (resume is exact at any rate).
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
}

fn default_end_header() -> Option<String> {
    Some("sluice-end".into())
}

fn default_checkpoint_every() -> u64 {
    100
}

/// Body format of an HTTP upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpFormat {
    /// One JSON document per line.
    Ndjson,
    /// Server-Sent Events; each event's `data` is one JSON chunk.
    Sse,
}

/// `kind = "http"`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSourceSettings {
    /// The upstream URL. Templates may fill only the path and query.
    pub url: String,
    /// `POST` (default for streaming) or `GET` (default in poll mode).
    #[serde(default)]
    pub method: Option<String>,
    /// Body format; taken from `Content-Type` when absent.
    #[serde(default)]
    pub format: Option<HttpFormat>,
    /// NDJSON field (or, for SSE, the event id when absent) that becomes the checkpoint cursor.
    #[serde(default)]
    pub cursor: Option<String>,
    /// Connection timeout.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Retries of connect failures and 5xx answers, with backoff, before `upstream_unavailable`.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Poll mode: call the upstream every interval; each response body is one chunk.
    #[serde(default, with = "humantime_serde::option")]
    pub poll_interval: Option<Duration>,
    /// Extra request headers, such as an upstream token.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_retries() -> u32 {
    5
}

impl Default for HandlersSettings {
    /// The guide's predefined streaming types, each fed from a Kafka topic.
    fn default() -> Self {
        let kafka = |topic: &str, key: Option<&str>| {
            SourceSettings::Kafka(KafkaSourceSettings {
                topic: topic.into(),
                key: key.map(str::to_owned),
                start: StartAt::Latest,
                end_header: default_end_header(),
                idle_timeout: Duration::ZERO,
                checkpoint_every: default_checkpoint_every(),
            })
        };
        let sources = [
            (
                "messaging:stream_messages",
                kafka("messaging.messages", Some("{conversation_id}")),
            ),
            (
                "messaging:stream_typing",
                kafka("messaging.typing", Some("{conversation_id}")),
            ),
            (
                "messaging:stream_presence",
                kafka("messaging.presence", Some("{user_id}")),
            ),
            (
                "notification:stream_asset_chunks",
                kafka("notification.asset_chunks", Some("{asset_id}")),
            ),
            (
                "media:stream_media_content",
                kafka("media.content", Some("{media_id}")),
            ),
            (
                "media:stream_upload_progress",
                kafka("media.upload_progress", Some("{upload_id}")),
            ),
            (
                "search:stream_results",
                kafka("search.results", Some("{query_id}")),
            ),
            ("analytics:stream_metrics", kafka("analytics.metrics", None)),
        ];
        HandlersSettings {
            demo: DemoSettings::default(),
            sources: sources
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        }
    }
}

impl TryFrom<BTreeMap<String, serde_json::Value>> for HandlersSettings {
    type Error = String;

    /// Decodes each table on its own, so an error names its `service:action`. Without any source
    /// table the predefined types are served.
    fn try_from(mut tables: BTreeMap<String, serde_json::Value>) -> Result<Self, String> {
        let demo = match tables.remove("demo") {
            Some(v) => serde_json::from_value(v).map_err(|e| format!("handlers.demo: {e}"))?,
            None => DemoSettings::default(),
        };
        if tables.is_empty() {
            return Ok(HandlersSettings {
                demo,
                ..HandlersSettings::default()
            });
        }
        let sources = tables
            .into_iter()
            .map(|(kind, v)| {
                serde_json::from_value(v)
                    .map(|s| (kind.clone(), s))
                    .map_err(|e| format!("handlers.\"{kind}\": {e}"))
            })
            .collect::<Result<_, String>>()?;
        Ok(HandlersSettings { demo, sources })
    }
}

fn bad(kind: &str, field: &str, reason: impl Into<String>) -> Error {
    Error::InvalidHandler {
        key: format!("handlers.\"{kind}\".{field}"),
        reason: reason.into(),
    }
}

impl HandlersSettings {
    /// Checks every configured source.
    pub fn validate(&self) -> Result<(), Error> {
        for (kind, source) in &self.sources {
            let valid_kind = kind.split_once(':').is_some_and(|(s, a)| {
                crate::event::EventType::parse(&format!("{s}:{a}:v1:requested")).is_ok()
            });
            if !valid_kind || kind == "demo:stream_ticks" {
                return Err(bad(
                    kind,
                    "kind",
                    "a handler table is named `service:action` ([a-z][a-z0-9_]*), not demo:stream_ticks",
                ));
            }
            match source {
                SourceSettings::Kafka(k) => k.validate(kind)?,
                SourceSettings::Http(h) => h.validate(kind)?,
            }
        }
        Ok(())
    }
}

impl KafkaSourceSettings {
    fn validate(&self, kind: &str) -> Result<(), Error> {
        if crate::event::StreamId::parse(&self.topic).is_err() {
            return Err(bad(
                kind,
                "topic",
                format!("{:?} is not a valid Kafka topic name", self.topic),
            ));
        }
        if let Some(key) = &self.key {
            let t = Template::parse(key).map_err(|e| bad(kind, "key", e.to_string()))?;
            if t.fields().next().is_none() {
                return Err(bad(kind, "key", "the template names no payload field"));
            }
        }
        if self.checkpoint_every == 0 {
            return Err(bad(kind, "checkpoint_every", "must be at least 1"));
        }
        Ok(())
    }
}

impl HttpSourceSettings {
    fn validate(&self, kind: &str) -> Result<(), Error> {
        crate::handlers::http::Target::parse(&self.url).map_err(|e| bad(kind, "url", e))?;
        if let Some(m) = &self.method {
            if !matches!(m.as_str(), "GET" | "POST") {
                return Err(bad(kind, "method", "must be \"GET\" or \"POST\""));
            }
        }
        if self.poll_interval.is_some_and(|d| d.is_zero()) {
            return Err(bad(kind, "poll_interval", "must be longer than zero"));
        }
        if self.connect_timeout.is_zero() {
            return Err(bad(kind, "connect_timeout", "must be longer than zero"));
        }
        if self.retries > 100 {
            return Err(bad(kind, "retries", "must be at most 100"));
        }
        for name in self.headers.keys() {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(bad(
                    kind,
                    "headers",
                    format!("{name:?} is not a header name"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml: &str) -> Result<crate::Settings, Error> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(&path, toml).unwrap();
        crate::Settings::load(Some(&path))
    }

    #[test]
    fn sources_load_by_kind_and_defaults_serve_the_predefined_types() {
        let s = load(
            r#"
[handlers.demo]
enabled = false
[handlers."messaging:stream_messages"]
kind = "kafka"
topic = "messaging.messages"
key = "{conversation_id}"
idle_timeout = "2s"
[handlers."search:stream_results"]
kind = "http"
url = "http://search.internal:8080/stream/{query_id}?page={page}"
format = "ndjson"
cursor = "id"
"#,
        )
        .unwrap();
        assert!(!s.handlers.demo.enabled);
        assert_eq!(s.handlers.sources.len(), 2);
        match &s.handlers.sources["messaging:stream_messages"] {
            SourceSettings::Kafka(k) => {
                assert_eq!(k.idle_timeout, Duration::from_secs(2));
                assert_eq!(k.end_header.as_deref(), Some("sluice-end"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(HandlersSettings::default().sources.len(), 8);
        HandlersSettings::default().validate().unwrap();
    }

    #[test]
    fn configuration_errors_name_the_key() {
        let cases = [
            (r#"kind = "ftp""#, "messaging:stream_x"),
            (
                r#"kind = "kafka"
topic = "t"
key = "{}""#,
                "key",
            ),
            (
                r#"kind = "kafka"
topic = "t"
key = "static""#,
                "key",
            ),
            (
                r#"kind = "http"
url = "http://{host}.internal/x""#,
                "url",
            ),
            (
                r#"kind = "http"
url = "http://h:{port}/x""#,
                "url",
            ),
            (
                r#"kind = "http"
url = "ftp://h/x""#,
                "url",
            ),
            (
                r#"kind = "http"
url = "http://h/x"
method = "DELETE""#,
                "method",
            ),
        ];
        for (body, key) in cases {
            let err = load(&format!("[handlers.\"messaging:stream_x\"]\n{body}\n"))
                .expect_err(body)
                .to_string();
            assert!(err.contains(key), "{body}: {err}");
        }
    }
}
