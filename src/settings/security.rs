//! `[auth]` and `[limits]`: who may call Sluice, and how much any one caller may take.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[auth]`: JWT verification. Static admin tokens stay in `edge.api_tokens`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// HS256 shared secret; empty: HS256 tokens are not accepted.
    pub jwt_secret: String,
    /// PEM public keys (RS256 for RSA, ES256 for P-256) that verify tokens.
    pub jwt_public_keys: Vec<PathBuf>,
    /// A JWKS file whose RS256/ES256 keys verify tokens, re-read when it changes.
    pub jwks_file: Option<PathBuf>,
    /// How often `jwks_file` is checked for changes.
    #[serde(with = "humantime_serde")]
    pub jwks_reload_interval: Duration,
    /// Accepted `iss` values; empty: not checked.
    pub issuers: Vec<String>,
    /// Accepted `aud` values; empty: not checked.
    pub audiences: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
}

impl AuthSettings {
    /// Whether any JWT key source is configured.
    pub fn jwt_enabled(&self) -> bool {
        !self.jwt_secret.is_empty() || !self.jwt_public_keys.is_empty() || self.jwks_file.is_some()
    }
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            jwt_secret: String::new(),
            jwt_public_keys: Vec::new(),
            jwks_file: None,
            jwks_reload_interval: Duration::from_secs(10),
            issuers: Vec::new(),
            audiences: Vec::new(),
            leeway: Duration::from_secs(30),
        }
    }
}

/// `[limits]`: caps that keep one client from starving the others.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsSettings {
    /// Open HTTP connections in all; past it new ones get 503.
    pub max_connections: usize,
    /// Open HTTP connections from one IP address; past it new ones get 429.
    pub max_connections_per_ip: usize,
    /// Live SSE and WebSocket subscribers of one stream; past it 503.
    pub max_subscribers_per_stream: usize,
    /// Concurrent HTTP/2 streams (gRPC calls, h2c requests) on one connection; more wait.
    pub max_streams_per_connection: u32,
    /// Stream requests per second per identity (token subject, static token or client IP).
    pub requests_per_second: u32,
    /// Requests an identity may make at once before the rate applies.
    pub request_burst: u32,
    /// Most identities whose request rate is tracked; the idlest are forgotten past it.
    pub max_tracked_identities: usize,
    /// Unfinished streams one subject may have at once, on all instances together; requests
    /// past it get 429. Administrators and requests over Kafka are not counted against it.
    pub max_streams_per_owner: usize,
    /// Longest time a non-streaming HTTP request may take (408 after it).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Longest time a client may take to send a request's headers, and a new connection its
    /// first request (protocol detection included); then the connection is closed.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers) on HTTP/1.1, and header list on HTTP/2
    /// and gRPC; over it: 431 on HTTP/1.1, a refused stream on HTTP/2.
    pub max_header_bytes: usize,
    /// A WebSocket from which nothing (not even a pong) arrives for this long is closed; an HTTP/2
    /// connection (gRPC included) that does not answer the server's pings for this long too.
    #[serde(with = "humantime_serde")]
    pub ws_idle_timeout: Duration,
}

impl Default for LimitsSettings {
    fn default() -> Self {
        LimitsSettings {
            max_connections: 20_000,
            max_connections_per_ip: 1_000,
            max_subscribers_per_stream: 10_000,
            max_streams_per_connection: 256,
            requests_per_second: 20,
            request_burst: 40,
            max_tracked_identities: 100_000,
            max_streams_per_owner: 100,
            request_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 32 * 1024,
            ws_idle_timeout: Duration::from_secs(90),
        }
    }
}
