//! Start-up validation of [`Settings`]: every value whose zero, negative or malformed form would
//! panic, spin or misbehave at run time is refused here, with an error naming its key.
//!
//! This module only checks; it does not load or default anything.

use std::time::Duration;

use super::{Error, Settings};

/// librdkafka's default `message.max.bytes`: a chunk's envelope must fit in one message.
pub(super) const KAFKA_MESSAGE_LIMIT: usize = 1_000_000;

fn invalid(key: &'static str, reason: impl Into<String>) -> Error {
    Error::Invalid {
        key,
        reason: reason.into(),
    }
}

fn at_least_one(key: &'static str, v: usize) -> Result<(), Error> {
    if v == 0 {
        return Err(invalid(key, "must be at least 1"));
    }
    Ok(())
}

fn nonzero(key: &'static str, v: Duration) -> Result<(), Error> {
    if v.is_zero() {
        return Err(invalid(key, "must be longer than zero"));
    }
    Ok(())
}

impl Settings {
    /// Checks ranges and cross-field rules.
    pub fn validate(&self) -> Result<(), Error> {
        let (p, e, k, r) = (&self.provider, &self.edge, &self.kafka, &self.retention);
        for (key, v) in [
            ("provider.max_concurrent_streams", p.max_concurrent_streams),
            ("provider.chunk_channel_capacity", p.chunk_channel_capacity),
            ("provider.max_inflight_produces", p.max_inflight_produces),
            ("provider.max_chunk_bytes", p.max_chunk_bytes),
            ("provider.max_attempts", p.max_attempts as usize),
            ("intake.max_request_bytes", self.intake.max_request_bytes),
            ("kafka.replay_readers", k.replay_readers),
            ("kafka.producer_shards", k.producer_shards),
            ("edge.max_streams_per_socket", e.max_streams_per_socket),
            ("grpc.max_event_types", self.grpc.max_event_types),
            ("retention.max_stream_topics", r.max_stream_topics),
            ("retention.delete_batch", r.delete_batch),
            ("limits.max_connections", self.limits.max_connections),
            (
                "limits.max_connections_per_ip",
                self.limits.max_connections_per_ip,
            ),
            (
                "limits.max_subscribers_per_stream",
                self.limits.max_subscribers_per_stream,
            ),
            (
                "limits.requests_per_second",
                self.limits.requests_per_second as usize,
            ),
            ("limits.request_burst", self.limits.request_burst as usize),
            (
                "limits.max_tracked_identities",
                self.limits.max_tracked_identities,
            ),
            (
                "limits.max_streams_per_owner",
                self.limits.max_streams_per_owner,
            ),
        ] {
            at_least_one(key, v)?;
        }
        for (key, v) in [
            ("provider.heartbeat_interval", p.heartbeat_interval),
            ("provider.stream_timeout", p.stream_timeout),
            ("edge.keepalive_interval", e.keepalive_interval),
            ("edge.remote_poll_interval", e.remote_poll_interval),
            ("edge.sse_retry", e.sse_retry),
            ("kafka.message_timeout", k.message_timeout),
            ("kafka.operation_timeout", k.operation_timeout),
            ("retention.sweep_interval", r.sweep_interval),
            ("shutdown.grace_period", self.shutdown.grace_period),
            ("limits.request_timeout", self.limits.request_timeout),
            (
                "limits.header_read_timeout",
                self.limits.header_read_timeout,
            ),
            ("limits.ws_idle_timeout", self.limits.ws_idle_timeout),
            ("auth.jwks_reload_interval", self.auth.jwks_reload_interval),
        ] {
            nonzero(key, v)?;
        }
        if !(8 * 1024..=1024 * 1024).contains(&self.limits.max_header_bytes) {
            return Err(invalid(
                "limits.max_header_bytes",
                "must be between 8192 and 1048576 bytes",
            ));
        }
        if p.max_chunk_bytes >= KAFKA_MESSAGE_LIMIT {
            return Err(invalid(
                "provider.max_chunk_bytes",
                format!(
                    "must be below {} bytes, the largest message Sluice produces",
                    KAFKA_MESSAGE_LIMIT
                ),
            ));
        }
        for origin in &e.cors_allowed_origins {
            // An origin is scheme://host[:port]: no path, no trailing slash.
            let host = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"));
            let ok = origin == "*"
                || host.is_some_and(|h| !h.is_empty() && !h.contains('/'))
                    && axum::http::HeaderValue::from_str(origin).is_ok();
            if !ok {
                return Err(invalid(
                    "edge.cors_allowed_origins",
                    format!(
                        "{origin:?} is not \"*\" or an origin such as \"https://app.example.com\""
                    ),
                ));
            }
        }
        if e.cors_allow_credentials && e.cors_allowed_origins.iter().any(|o| o == "*") {
            return Err(invalid(
                "edge.cors_allow_credentials",
                "cannot be true while edge.cors_allowed_origins contains \"*\"",
            ));
        }
        self.durable.validate()?;
        if k.brokers.trim().is_empty() {
            return Err(invalid("kafka.brokers", "must name at least one broker"));
        }
        let prefix = &k.stream_topic_prefix;
        let prefix_ok = prefix.len() + crate::event::MAX_STREAM_ID_LEN <= 249
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !prefix_ok {
            return Err(invalid(
                "kafka.stream_topic_prefix",
                "must be at most 49 characters of [A-Za-z0-9._-]",
            ));
        }
        if self.durable.enabled {
            self.durable.validate_disjoint(prefix)?;
        }
        if k.stream_topic_replication < 1 {
            return Err(invalid(
                "kafka.stream_topic_replication",
                "must be at least 1",
            ));
        }
        if self.intake.topic_partitions < 1 {
            return Err(invalid("intake.topic_partitions", "must be at least 1"));
        }
        let changelog = self.intake.changelog();
        for (key, topic) in [
            ("intake.topic", &self.intake.topic),
            ("intake.dlq_topic", &self.intake.dlq_topic),
            ("intake.changelog_topic", &changelog),
        ] {
            if crate::event::StreamId::parse(topic).is_err() {
                return Err(invalid(
                    key,
                    format!("{topic:?} is not a valid Kafka topic name"),
                ));
            }
            // Stream topics are the prefix and a client-chosen id: a topic under the prefix is
            // one a client could write to by naming its stream after it.
            if topic
                .replace('.', "_")
                .starts_with(&prefix.replace('.', "_"))
            {
                return Err(invalid(
                    key,
                    format!("{topic:?} lies under kafka.stream_topic_prefix {prefix:?}, where stream ids name topics"),
                ));
            }
        }
        if self.intake.group_id.is_empty() {
            return Err(invalid("intake.group_id", "must not be empty"));
        }
        if changelog == self.intake.topic || changelog == self.intake.dlq_topic {
            return Err(invalid(
                "intake.changelog_topic",
                "must differ from intake.topic and intake.dlq_topic",
            ));
        }
        let session = self.intake.session_timeout;
        if !(Duration::from_secs(1)..=Duration::from_secs(300)).contains(&session) {
            return Err(invalid(
                "intake.session_timeout",
                "must be between 1s and 300s",
            ));
        }
        if self.intake.instance_id.as_deref() == Some("") {
            return Err(invalid(
                "intake.instance_id",
                "must not be empty; leave it out for dynamic membership",
            ));
        }
        self.handlers.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_zero_that_would_panic_or_spin_is_refused_by_key() {
        type Set = fn(&mut Settings);
        let cases: &[(&str, Set)] = &[
            ("limits.max_connections", |s| s.limits.max_connections = 0),
            ("limits.requests_per_second", |s| {
                s.limits.requests_per_second = 0
            }),
            ("limits.ws_idle_timeout", |s| {
                s.limits.ws_idle_timeout = Duration::ZERO
            }),
            ("auth.jwks_reload_interval", |s| {
                s.auth.jwks_reload_interval = Duration::ZERO
            }),
            ("edge.sse_retry", |s| s.edge.sse_retry = Duration::ZERO),
            ("grpc.max_event_types", |s| s.grpc.max_event_types = 0),
            ("edge.cors_allowed_origins", |s| {
                s.edge.cors_allowed_origins = vec!["https://app.example.com/path".into()]
            }),
            ("edge.cors_allow_credentials", |s| {
                s.edge.cors_allowed_origins = vec!["*".into()];
                s.edge.cors_allow_credentials = true;
            }),
            ("edge.cors_allowed_origins", |s| {
                s.edge.cors_allowed_origins = vec!["app.example.com".into()]
            }),
            ("retention.delete_batch", |s| s.retention.delete_batch = 0),
            ("retention.sweep_interval", |s| {
                s.retention.sweep_interval = Duration::ZERO
            }),
            ("retention.max_stream_topics", |s| {
                s.retention.max_stream_topics = 0
            }),
            ("provider.chunk_channel_capacity", |s| {
                s.provider.chunk_channel_capacity = 0
            }),
            ("provider.max_inflight_produces", |s| {
                s.provider.max_inflight_produces = 0
            }),
            ("provider.heartbeat_interval", |s| {
                s.provider.heartbeat_interval = Duration::ZERO
            }),
            ("provider.max_attempts", |s| s.provider.max_attempts = 0),
            ("edge.keepalive_interval", |s| {
                s.edge.keepalive_interval = Duration::ZERO
            }),
            ("edge.remote_poll_interval", |s| {
                s.edge.remote_poll_interval = Duration::ZERO
            }),
            ("kafka.replay_readers", |s| s.kafka.replay_readers = 0),
            ("kafka.producer_shards", |s| s.kafka.producer_shards = 0),
            ("kafka.operation_timeout", |s| {
                s.kafka.operation_timeout = Duration::ZERO
            }),
            ("provider.max_chunk_bytes", |s| {
                s.provider.max_chunk_bytes = 2_000_000
            }),
        ];
        for (key, set) in cases {
            let mut s = Settings::default();
            set(&mut s);
            let err = s.validate().expect_err(key).to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn cors_origins_take_star_or_scheme_and_host() {
        let mut s = Settings::default();
        s.edge.cors_allowed_origins = vec![
            "*".into(),
            "https://app.example.com".into(),
            "http://localhost:5173".into(),
        ];
        s.validate().unwrap();
    }
}
