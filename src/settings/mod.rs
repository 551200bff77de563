//! Configuration: `settings.toml` overridden by `SLUICE__SECTION__KEY` environment variables,
//! loaded once and validated at start-up.
//!
//! Each component receives only its own section. A bad value stops start-up with an error that
//! names the key. This module does not read configuration anywhere else at run time.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod durable;
mod handlers;
mod security;
mod validate;

pub use durable::DurableSettings;
pub use handlers::{
    DemoSettings, HandlersSettings, HttpFormat, HttpSourceSettings, KafkaSourceSettings,
    SourceSettings, StartAt,
};
pub use security::{AuthSettings, LimitsSettings};

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file or the environment could not be read or deserialised.
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    /// A value was read but is out of range.
    #[error("configuration key `{key}`: {reason}")]
    Invalid {
        /// The dotted key, such as `provider.max_concurrent_streams`.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A configured handler is invalid.
    #[error("configuration key `{key}`: {reason}")]
    InvalidHandler {
        /// The dotted key, such as `handlers."search:stream_results".url`.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// All of Sluice's settings.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The HTTP listener.
    pub http: HttpSettings,
    /// The gRPC listener.
    pub grpc: GrpcSettings,
    /// Kafka connection, topics and clients.
    pub kafka: KafkaSettings,
    /// Request intake.
    pub intake: IntakeSettings,
    /// The handler runtime.
    pub provider: ProviderSettings,
    /// SSE, WebSocket and HTTP API behaviour.
    pub edge: EdgeSettings,
    /// The RocksDB stream store.
    pub store: StoreSettings,
    /// Logging.
    pub log: LogSettings,
    /// Graceful shutdown.
    pub shutdown: ShutdownSettings,
    /// Retention of finished streams and the cap on live stream topics.
    pub retention: RetentionSettings,
    /// Built-in and configured stream handlers.
    pub handlers: HandlersSettings,
    /// JWT verification.
    pub auth: AuthSettings,
    /// Connection, subscriber, rate and time limits.
    pub limits: LimitsSettings,
    /// The Durable Streams protocol server.
    pub durable: DurableSettings,
}

/// `[retention]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionSettings {
    /// How long a finished stream's topic and record are kept.
    #[serde(with = "humantime_serde")]
    pub stream_retention: Duration,
    /// How long the "gone" marker of a deleted stream is kept (410 instead of 404).
    #[serde(with = "humantime_serde")]
    pub tombstone_retention: Duration,
    /// How often the sweeper looks for expired streams.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
    /// Most stream topics that may exist at once; new streams are refused at the cap.
    pub max_stream_topics: usize,
    /// Most topics deleted in one admin request.
    pub delete_batch: usize,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        RetentionSettings {
            stream_retention: Duration::from_secs(24 * 3600),
            tombstone_retention: Duration::from_secs(7 * 24 * 3600),
            sweep_interval: Duration::from_secs(60),
            max_stream_topics: 10_000,
            delete_batch: 100,
        }
    }
}

/// `[shutdown]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownSettings {
    /// Time allowed for each shutdown step (streams, producer flush, store flush).
    #[serde(with = "humantime_serde")]
    pub grace_period: Duration,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        ShutdownSettings {
            grace_period: Duration::from_secs(10),
        }
    }
}

/// `[http]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
        }
    }
}

/// `[grpc]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcSettings {
    /// Address of the gRPC listener (`sluice.v1.Streams`, health, reflection); port 0 picks one.
    pub listen: SocketAddr,
    /// Most `event_types` one `SubscribeEvents` call may name.
    pub max_event_types: usize,
}

impl Default for GrpcSettings {
    fn default() -> Self {
        GrpcSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            max_event_types: 64,
        }
    }
}

/// `[kafka]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSettings {
    /// Bootstrap servers, comma separated.
    pub brokers: String,
    /// Prefix of each stream's topic; the stream id follows it.
    pub stream_topic_prefix: String,
    /// Replication factor of stream topics.
    pub stream_topic_replication: i32,
    /// Per-topic configuration applied when a stream topic is created.
    pub stream_topic_config: BTreeMap<String, String>,
    /// How long the producer waits to batch messages.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// How long the producer retries a message before giving up.
    #[serde(with = "humantime_serde")]
    pub message_timeout: Duration,
    /// Timeout of admin and metadata operations.
    #[serde(with = "humantime_serde")]
    pub operation_timeout: Duration,
    /// Number of pooled consumers that replay stream topics.
    pub replay_readers: usize,
    /// Producer handles stream topics are spread over; a stream always uses the same one, so its
    /// events stay in order. librdkafka's per-message work grows with the topics a handle has
    /// seen, so many concurrent streams go faster over several handles.
    pub producer_shards: usize,
    /// Extra librdkafka properties for every client, such as security settings.
    pub client_config: BTreeMap<String, String>,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        let topic_config = [
            ("cleanup.policy", "delete"),
            ("retention.ms", "-1"),
            ("retention.bytes", "-1"),
            ("segment.bytes", "16777216"),
            ("segment.index.bytes", "1048576"),
        ];
        KafkaSettings {
            brokers: "127.0.0.1:9092".into(),
            stream_topic_prefix: "sluice.stream.".into(),
            stream_topic_replication: 1,
            stream_topic_config: topic_config
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            linger: Duration::from_millis(1),
            message_timeout: Duration::from_secs(300),
            operation_timeout: Duration::from_secs(10),
            replay_readers: 4,
            producer_shards: 4,
            client_config: BTreeMap::new(),
        }
    }
}

/// `[intake]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct IntakeSettings {
    /// Topic that carries requested events.
    pub topic: String,
    /// Partitions of the intake topic when Sluice creates it.
    pub topic_partitions: i32,
    /// Dead-letter topic for malformed requests.
    pub dlq_topic: String,
    /// Consumer group of the intake consumer.
    pub group_id: String,
    /// Largest accepted request in bytes.
    pub max_request_bytes: usize,
    /// The compacted changelog of stream records; empty derives it from `topic` (see
    /// [`IntakeSettings::changelog`]).
    pub changelog_topic: String,
    /// How long the group waits for a silent instance before moving its partitions.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// Static group membership (`group.instance.id`): a restarted instance with the same id gets
    /// its partitions back without a rebalance. Unique per instance; empty for none.
    pub instance_id: Option<String>,
}

impl IntakeSettings {
    /// The changelog topic: `changelog_topic`, else `topic` with its `.requests` suffix replaced
    /// by `.state` (`sluice.requests` gives `sluice.state`), else `topic` + `.state`.
    pub fn changelog(&self) -> String {
        if !self.changelog_topic.is_empty() {
            return self.changelog_topic.clone();
        }
        match self.topic.strip_suffix(".requests") {
            Some(base) => format!("{base}.state"),
            None => format!("{}.state", self.topic),
        }
    }
}

impl Default for IntakeSettings {
    fn default() -> Self {
        IntakeSettings {
            topic: "sluice.requests".into(),
            topic_partitions: 3,
            dlq_topic: "sluice.requests.dlq".into(),
            group_id: "sluice".into(),
            max_request_bytes: 64 * 1024,
            changelog_topic: String::new(),
            session_timeout: Duration::from_secs(10),
            instance_id: None,
        }
    }
}

/// `[provider]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderSettings {
    /// Most streams running at once; intake waits when all are busy.
    pub max_concurrent_streams: usize,
    /// Capacity of each handler's chunk channel (backpressure).
    pub chunk_channel_capacity: usize,
    /// Most chunks of one stream waiting for Kafka's acknowledgement.
    pub max_inflight_produces: usize,
    /// Interval between heartbeats to live subscribers.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// How long one stream may run.
    #[serde(with = "humantime_serde")]
    pub stream_timeout: Duration,
    /// Largest accepted chunk payload in bytes; a larger one fails the stream.
    pub max_chunk_bytes: usize,
    /// Most handler runs of one stream (first run plus resumes); past it the stream fails.
    pub max_attempts: u32,
}

impl Default for ProviderSettings {
    fn default() -> Self {
        ProviderSettings {
            max_concurrent_streams: 1024,
            chunk_channel_capacity: 100,
            max_inflight_produces: 256,
            heartbeat_interval: Duration::from_secs(1),
            stream_timeout: Duration::from_secs(30 * 60),
            max_chunk_bytes: 512 * 1024,
            max_attempts: 5,
        }
    }
}

/// `[edge]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EdgeSettings {
    /// How long a subscriber waits for an unknown stream to appear before 404.
    #[serde(with = "humantime_serde")]
    pub early_connect_wait: Duration,
    /// How long a WebSocket waits for a stream it just requested to start.
    #[serde(with = "humantime_serde")]
    pub request_start_wait: Duration,
    /// Interval of SSE keep-alive comments.
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// How often a subscriber polls a stream that runs on another process.
    #[serde(with = "humantime_serde")]
    pub remote_poll_interval: Duration,
    /// Most streams one WebSocket may follow at once.
    pub max_streams_per_socket: usize,
    /// Static admin tokens accepted on `/v1`, `/ws` and gRPC. With none of these and no JWT key
    /// configured, every caller is an administrator.
    pub api_tokens: Vec<String>,
    /// The token `/metrics` and `/readyz` require; empty: they are open.
    pub metrics_token: String,
    /// Origins whose browser pages may call the API (CORS); `"*"` allows any; empty: none.
    pub cors_allowed_origins: Vec<String>,
    /// Whether allowed origins may send credentials (cookies); never with `"*"`.
    pub cors_allow_credentials: bool,
    /// The reconnect delay SSE clients are told (`retry:`).
    #[serde(with = "humantime_serde")]
    pub sse_retry: Duration,
}

impl Default for EdgeSettings {
    fn default() -> Self {
        EdgeSettings {
            early_connect_wait: Duration::from_secs(2),
            request_start_wait: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(15),
            remote_poll_interval: Duration::from_millis(500),
            max_streams_per_socket: 64,
            api_tokens: Vec::new(),
            metrics_token: String::new(),
            sse_retry: Duration::from_secs(2),
            cors_allowed_origins: Vec::new(),
            cors_allow_credentials: false,
        }
    }
}

/// `[store]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    /// Directory of the RocksDB database.
    pub path: PathBuf,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            path: PathBuf::from("data/sluice-db"),
        }
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A `tracing` filter, overridden by `RUST_LOG`.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

impl Settings {
    /// Loads `path` (if given; it must exist) and then `SLUICE__*` environment overrides.
    pub fn load(path: Option<&Path>) -> Result<Settings, Error> {
        let mut builder = config::Config::builder();
        if let Some(path) = path {
            builder = builder.add_source(config::File::from(path).required(true));
        }
        builder = builder.add_source(
            config::Environment::with_prefix("SLUICE")
                .prefix_separator("__")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("edge.api_tokens")
                .with_list_parse_key("edge.cors_allowed_origins")
                .with_list_parse_key("auth.jwt_public_keys")
                .with_list_parse_key("auth.issuers")
                .with_list_parse_key("auth.audiences")
                .try_parsing(true),
        );
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// The settings as JSON with secrets (API tokens, SASL passwords) redacted, for the start-up log.
    pub fn redacted(&self) -> serde_json::Value {
        let mut copy = self.clone();
        copy.edge.api_tokens = copy.edge.api_tokens.iter().map(|_| "***".into()).collect();
        for secret in [&mut copy.edge.metrics_token, &mut copy.auth.jwt_secret] {
            if !secret.is_empty() {
                *secret = "***".into();
            }
        }
        for (k, v) in copy.kafka.client_config.iter_mut() {
            if k.contains("password") || k.contains("secret") {
                *v = "***".into();
            }
        }
        for source in copy.handlers.sources.values_mut() {
            if let SourceSettings::Http(h) = source {
                h.headers.values_mut().for_each(|v| *v = "***".into());
            }
        }
        serde_json::to_value(copy).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Settings::default().validate().unwrap();
    }

    #[test]
    fn the_shipped_file_loads_with_the_security_defaults() {
        let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or(env!("CARGO_MANIFEST_DIR").into());
        let path = Path::new(&dir).join("settings.toml");
        let s = Settings::load(Some(&path)).unwrap();
        let (d, f) = (Settings::default(), &s);
        assert_eq!(
            serde_json::to_value(&f.limits).unwrap(),
            serde_json::to_value(&d.limits).unwrap()
        );
        assert_eq!(
            serde_json::to_value(&f.auth).unwrap(),
            serde_json::to_value(&d.auth).unwrap()
        );
        assert_eq!(f.edge.metrics_token, "");
    }

    #[test]
    fn bad_values_name_their_key() {
        let mut s = Settings::default();
        s.provider.max_concurrent_streams = 0;
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("provider.max_concurrent_streams"), "{err}");

        let mut s = Settings::default();
        s.kafka.stream_topic_prefix = "bad/prefix".into();
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("kafka.stream_topic_prefix"), "{err}");

        // A stream named `requests` would write into the intake topic.
        let mut s = Settings::default();
        s.kafka.stream_topic_prefix = "sluice.".into();
        s.durable.topic_prefix = "ds.".into();
        let err = s.validate().unwrap_err().to_string();
        assert!(
            err.contains("intake.topic") && err.contains("lies under"),
            "{err}"
        );
        let mut s = Settings::default();
        s.kafka.stream_topic_prefix = "app_".into();
        s.intake.topic = "app.requests".into();
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("intake.topic"), "Kafka takes . for _: {err}");
    }

    #[test]
    fn file_values_load_and_type_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(
            &path,
            "[provider]\nheartbeat_interval = \"250ms\"\n[edge]\napi_tokens = [\"t\"]\nmetrics_token = \"m\"\n[auth]\njwt_secret = \"hs\"\n",
        )
        .unwrap();
        let s = Settings::load(Some(&path)).unwrap();
        assert_eq!(s.provider.heartbeat_interval, Duration::from_millis(250));
        assert_eq!(s.edge.api_tokens, vec!["t".to_string()]);
        let shown = s.redacted();
        assert_eq!(shown["edge"]["api_tokens"][0], "***");
        assert_eq!(shown["edge"]["metrics_token"], "***");
        assert_eq!(shown["auth"]["jwt_secret"], "***");
        assert_eq!(s.auth.jwt_secret, "hs", "only the copy is redacted");

        std::fs::write(&path, "[provider]\nmax_concurrent_streams = \"many\"\n").unwrap();
        let err = Settings::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("max_concurrent_streams"), "{err}");
    }
}
