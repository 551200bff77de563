//! `[durable]`: the Durable Streams protocol server.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The largest `durable.max_append_bytes`.
pub const MAX_APPEND_LIMIT: usize = 16 * 1024 * 1024;
/// The longest `durable.topic_prefix`: a topic is the prefix and 32 hex digits, within Kafka's 249.
const MAX_TOPIC_PREFIX: usize = 100;

/// `[durable]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DurableSettings {
    /// Serve the protocol at all.
    pub enabled: bool,
    /// Where it is served: streams are `{base_path}/v1/stream/{name}`.
    pub base_path: String,
    /// How long a long-poll waits at the tail before answering 204.
    #[serde(with = "humantime_serde")]
    pub long_poll_timeout: Duration,
    /// How long an SSE response runs before the server ends it (clients reconnect).
    #[serde(with = "humantime_serde")]
    pub sse_max_duration: Duration,
    /// Largest append (or initial body), bytes, at most 16 MiB: each is one Kafka message, and
    /// Durable Streams topics are created with a `max.message.bytes` that fits it. Larger bodies
    /// get 413.
    pub max_append_bytes: usize,
    /// Most bytes of its own one stream may hold; appends past it get 413.
    pub max_stream_bytes: usize,
    /// Most streams held at once; creations past it get 503.
    pub max_streams: usize,
    /// Most bytes all streams hold in memory together; appends past it get 507.
    pub max_total_bytes: usize,
    /// Most streams one owner (a token's `sub`) holds; creations past it get 507. An
    /// administrator's streams without an owner count only against `max_streams`.
    pub max_streams_per_owner: usize,
    /// Most bytes of their own one owner's streams hold together; appends past it get 507.
    pub max_bytes_per_owner: usize,
    /// The URL clients reach this server's base path at (`https://streams.example.com/ds`), for
    /// `Location` and the callback and key URLs subscriptions hand out. Empty: `http://` + the
    /// bound `http.listen` address + `base_path` (development); never the request's `Host`.
    pub public_url: String,
    /// Prefix of Durable Streams topics (`<prefix><uuid>`): disjoint from
    /// `kafka.stream_topic_prefix`, so no Sluice stream id can name a Durable Stream's topic.
    pub topic_prefix: String,
    /// Most idempotent producers (`Producer-Id`s) one stream remembers; a new one past it is
    /// refused (400 `too many producers`), since forgetting one would break its retries.
    pub max_producers_per_stream: usize,
    /// Most subscriptions at once; creations past it get 503.
    pub max_subscriptions: usize,
    /// Most subscriptions one owner holds; creations past it get 507.
    pub max_subscriptions_per_owner: usize,
    /// Most explicit streams one subscription names.
    pub max_subscription_streams: usize,
    /// Accept `http://localhost` and `http://127.0.0.x` webhooks (development only: otherwise
    /// webhooks must be `https://` to a public address).
    pub webhook_allow_localhost: bool,
    /// How long one webhook delivery may take before it counts as failed.
    #[serde(with = "humantime_serde")]
    pub webhook_timeout: Duration,
}

impl Default for DurableSettings {
    fn default() -> Self {
        DurableSettings {
            enabled: true,
            base_path: "/ds".into(),
            long_poll_timeout: Duration::from_secs(20),
            sse_max_duration: Duration::from_secs(60),
            max_append_bytes: 4 * 1024 * 1024,
            max_stream_bytes: 64 * 1024 * 1024,
            max_streams: 10_000,
            max_total_bytes: 1024 * 1024 * 1024,
            max_streams_per_owner: 1_000,
            max_bytes_per_owner: 256 * 1024 * 1024,
            public_url: String::new(),
            topic_prefix: "sluice.ds.".into(),
            max_producers_per_stream: 1_024,
            max_subscriptions: 1_000,
            max_subscriptions_per_owner: 100,
            max_subscription_streams: 1_000,
            webhook_allow_localhost: false,
            webhook_timeout: Duration::from_secs(10),
        }
    }
}

impl DurableSettings {
    /// Checks the values, naming the key of the first bad one.
    pub(super) fn validate(&self) -> Result<(), super::Error> {
        let invalid = |key: &'static str, reason: &str| super::Error::Invalid {
            key,
            reason: reason.to_owned(),
        };
        let base = &self.base_path;
        let base_ok = base.is_empty()
            || (base.starts_with('/')
                && !base.ends_with('/')
                && base
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.')));
        if !base_ok {
            return Err(invalid(
                "durable.base_path",
                "must be empty or a path such as \"/ds\" (no trailing slash)",
            ));
        }
        if self.max_append_bytes > MAX_APPEND_LIMIT {
            return Err(invalid(
                "durable.max_append_bytes",
                "must be at most 16 MiB (16777216): the producers' message limit",
            ));
        }
        for (key, d) in [
            ("durable.long_poll_timeout", self.long_poll_timeout),
            ("durable.sse_max_duration", self.sse_max_duration),
            ("durable.webhook_timeout", self.webhook_timeout),
        ] {
            if d.is_zero() {
                return Err(invalid(key, "must be greater than zero"));
            }
        }
        for (key, n) in [
            ("durable.max_append_bytes", self.max_append_bytes),
            ("durable.max_stream_bytes", self.max_stream_bytes),
            ("durable.max_streams", self.max_streams),
            ("durable.max_total_bytes", self.max_total_bytes),
            ("durable.max_streams_per_owner", self.max_streams_per_owner),
            ("durable.max_bytes_per_owner", self.max_bytes_per_owner),
            ("durable.max_subscriptions", self.max_subscriptions),
            (
                "durable.max_subscriptions_per_owner",
                self.max_subscriptions_per_owner,
            ),
            (
                "durable.max_producers_per_stream",
                self.max_producers_per_stream,
            ),
            (
                "durable.max_subscription_streams",
                self.max_subscription_streams,
            ),
        ] {
            if n == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        let url_ok = self.public_url.is_empty()
            || ((self.public_url.starts_with("https://")
                || self.public_url.starts_with("http://"))
                && !self.public_url.ends_with('/')
                && reqwest::Url::parse(&self.public_url).is_ok());
        if !url_ok {
            return Err(invalid(
                "durable.public_url",
                "must be empty or an http(s) URL with no trailing slash",
            ));
        }
        let prefix = &self.topic_prefix;
        let prefix_ok = !prefix.is_empty()
            && prefix.len() <= MAX_TOPIC_PREFIX
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !prefix_ok {
            return Err(invalid(
                "durable.topic_prefix",
                "must be 1-100 characters of [A-Za-z0-9._-]",
            ));
        }
        Ok(())
    }

    /// Checks that Durable Streams topics and Sluice's stream topics can never share a name:
    /// neither prefix may be a prefix of the other.
    pub(super) fn validate_disjoint(&self, stream_prefix: &str) -> Result<(), super::Error> {
        let ds = &self.topic_prefix;
        if ds.starts_with(stream_prefix) || stream_prefix.starts_with(ds.as_str()) {
            return Err(super::Error::Invalid {
                key: "durable.topic_prefix",
                reason: format!(
                    "must be disjoint from kafka.stream_topic_prefix {stream_prefix:?} \
                     (neither may be a prefix of the other)"
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::settings::Settings;

    fn refusal(tweak: impl FnOnce(&mut Settings)) -> String {
        let mut s = Settings::default();
        tweak(&mut s);
        s.validate()
            .map_or_else(|e| e.to_string(), |_| "accepted".into())
    }

    #[test]
    fn topic_prefixes_must_be_legal_and_disjoint_from_the_stream_prefix() {
        assert_eq!(refusal(|_| {}), "accepted");
        for bad in ["", "bad/prefix", "sp ace.", &"x".repeat(101)] {
            let err = refusal(|s| s.durable.topic_prefix = bad.to_owned());
            assert!(err.contains("durable.topic_prefix"), "{bad:?}: {err}");
        }
        for (stream, ds) in [
            ("sluice.", "sluice.ds."),
            ("sluice.ds.x.", "sluice.ds."),
            ("same.", "same."),
        ] {
            let err = refusal(|s| {
                s.kafka.stream_topic_prefix = stream.into();
                s.durable.topic_prefix = ds.into();
            });
            assert!(
                err.contains("durable.topic_prefix") && err.contains("disjoint"),
                "{stream} / {ds}: {err}"
            );
        }
        let ok = refusal(|s| {
            s.kafka.stream_topic_prefix = "app.".into();
            s.durable.topic_prefix = "app.ds.".into();
            s.durable.enabled = false;
        });
        assert_eq!(
            ok, "accepted",
            "only checked while Durable Streams are served"
        );
        let err = refusal(|s| s.durable.max_producers_per_stream = 0);
        assert!(err.contains("durable.max_producers_per_stream"), "{err}");
    }
}
