//! The event model: the `{service}:{action}:v{N}:{state}` type grammar, stream ids, the JSON
//! envelope, and requests parsed from untrusted bytes.
//!
//! This module owns validation of everything a client can send. It does not know about Kafka,
//! handlers or transports; callers turn its errors into DLQ entries, HTTP statuses or error frames.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The maximum length of a stream id: Kafka's topic limit (249) minus room for a prefix.
pub const MAX_STREAM_ID_LEN: usize = 200;

/// Substrings that mark an event type as streaming without a registry entry.
pub const STREAMING_PATTERNS: [&str; 7] = [
    "stream_",
    ":stream:",
    ":typing:",
    ":presence:",
    ":chunks:",
    ":live:",
    ":realtime:",
];

/// Where an event sits in a stream's lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// A client asks for a stream.
    Requested,
    /// The stream's handler is about to run.
    Started,
    /// One chunk of data.
    Stream,
    /// A liveness signal to live subscribers; never stored.
    Heartbeat,
    /// The handler finished normally.
    Success,
    /// The handler failed, panicked or could not run.
    Failed,
    /// The stream ran past its timeout.
    Timeout,
    /// A client cancelled the stream.
    Cancelled,
}

impl State {
    /// All states, in grammar order.
    pub const ALL: [State; 8] = [
        State::Requested,
        State::Started,
        State::Stream,
        State::Heartbeat,
        State::Success,
        State::Failed,
        State::Timeout,
        State::Cancelled,
    ];

    /// The state's name as it appears in an event type.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Requested => "requested",
            State::Started => "started",
            State::Stream => "stream",
            State::Heartbeat => "heartbeat",
            State::Success => "success",
            State::Failed => "failed",
            State::Timeout => "timeout",
            State::Cancelled => "cancelled",
        }
    }

    /// Whether this state ends a stream.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            State::Success | State::Failed | State::Timeout | State::Cancelled
        )
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a string is not a valid event type, stream id or request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrammarError {
    /// The type does not have four `:`-separated parts.
    #[error("event type {0:?} must look like service:action:vN:state")]
    Shape(String),
    /// The service or action part breaks `[a-z][a-z0-9_]*`.
    #[error("{part} {value:?} must match [a-z][a-z0-9_]*")]
    Name {
        /// Which part: `service` or `action`.
        part: &'static str,
        /// The offending value.
        value: String,
    },
    /// The version is not `v` followed by a positive number.
    #[error("version {0:?} must be v followed by a positive integer")]
    Version(String),
    /// The state is not one of the known states.
    #[error("state {0:?} is not one of requested, started, stream, heartbeat, success, failed, timeout, cancelled")]
    State(String),
    /// A stream id breaks Kafka's topic name rules.
    #[error("stream id {0:?} must be 1 to 200 characters of [A-Za-z0-9._-] and not . or ..")]
    StreamId(String),
}

impl FromStr for State {
    type Err = GrammarError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        State::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| GrammarError::State(s.to_owned()))
    }
}

/// A parsed `{service}:{action}:v{N}:{state}` event type.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EventType {
    service: String,
    action: String,
    version: u32,
    state: State,
}

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some('a'..='z'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
}

impl EventType {
    /// Parses and validates an event type string.
    pub fn parse(s: &str) -> Result<Self, GrammarError> {
        let parts: Vec<&str> = s.split(':').collect();
        let [service, action, version, state] = parts[..] else {
            return Err(GrammarError::Shape(s.to_owned()));
        };
        for (part, value) in [("service", service), ("action", action)] {
            if !valid_name(value) {
                return Err(GrammarError::Name {
                    part,
                    value: value.to_owned(),
                });
            }
        }
        let version = version
            .strip_prefix('v')
            // Digits only: `u32::from_str` would also take `+1`, a second spelling of `1`.
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<u32>().ok())
            .filter(|n| *n > 0 && !version[1..].starts_with('0'))
            .ok_or_else(|| GrammarError::Version(version.to_owned()))?;
        Ok(EventType {
            service: service.to_owned(),
            action: action.to_owned(),
            version,
            state: state.parse()?,
        })
    }

    /// The service part, such as `messaging`.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The action part, such as `stream_messages`.
    pub fn action(&self) -> &str {
        &self.action
    }

    /// The version number `N` of `vN`.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The lifecycle state.
    pub fn state(&self) -> State {
        self.state
    }

    /// `service:action`, the key of the handler registry.
    pub fn kind(&self) -> String {
        format!("{}:{}", self.service, self.action)
    }

    /// The same service, action and version in another state.
    pub fn with_state(&self, state: State) -> EventType {
        EventType {
            state,
            ..self.clone()
        }
    }

    /// Whether the type's name marks it as streaming by one of [`STREAMING_PATTERNS`].
    pub fn matches_streaming_pattern(&self) -> bool {
        let text = self.to_string();
        STREAMING_PATTERNS.iter().any(|p| text.contains(p))
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:v{}:{}",
            self.service, self.action, self.version, self.state
        )
    }
}

/// A validated stream id, safe to embed in a Kafka topic name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(String);

impl StreamId {
    /// Validates `s` against Kafka's topic name rules.
    pub fn parse(s: &str) -> Result<Self, GrammarError> {
        let ok = !s.is_empty()
            && s.len() <= MAX_STREAM_ID_LEN
            && s != "."
            && s != ".."
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(StreamId(s.to_owned()))
        } else {
            Err(GrammarError::StreamId(s.chars().take(64).collect()))
        }
    }

    /// A fresh random id (a UUID v4).
    pub fn random() -> Self {
        StreamId(uuid::Uuid::new_v4().to_string())
    }

    /// The id derived from a request's Kafka coordinates, so that redelivery maps to one stream.
    pub fn from_coordinates(topic: &str, partition: i32, offset: i64) -> Self {
        let topic: String = topic.chars().take(120).collect();
        StreamId(format!("{topic}-{partition}-{offset}"))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The JSON envelope every stored and delivered event uses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The full event type, such as `demo:stream_ticks:v1:stream`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The event's Kafka offset in its stream topic; absent in storage and on heartbeats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
    /// The stream the event belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_id: Option<String>,
    /// Position in the stream: 0 for `started`, 1..=N for chunks, N+1 for the terminal event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The event's data.
    #[serde(default)]
    pub payload: Value,
    /// Free-form client metadata, echoed from the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    /// When the event was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<DateTime<Utc>>,
}

/// Why request bytes were rejected; `reason()` is the bounded metric label.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The message is larger than the configured limit.
    #[error("request is {size} bytes, over the limit of {limit}")]
    TooLarge {
        /// The message size in bytes.
        size: usize,
        /// The configured limit in bytes.
        limit: usize,
    },
    /// The bytes are not a JSON object of the request shape.
    #[error("malformed JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The request has no `type`.
    #[error("missing type")]
    MissingType,
    /// The type string is invalid.
    #[error("invalid type: {0}")]
    Type(GrammarError),
    /// The type is valid but its state is not `requested`.
    #[error("state must be requested, got {0}")]
    WrongState(State),
    /// The client-chosen stream id is invalid.
    #[error("invalid stream_id: {0}")]
    StreamId(GrammarError),
}

impl RequestError {
    /// A short, bounded label for metrics and DLQ headers.
    pub fn reason(&self) -> &'static str {
        match self {
            RequestError::TooLarge { .. } => "too_large",
            RequestError::Json(_) => "malformed_json",
            RequestError::MissingType | RequestError::Type(_) => "invalid_type",
            RequestError::WrongState(_) => "wrong_state",
            RequestError::StreamId(_) => "invalid_stream_id",
        }
    }
}

#[derive(Deserialize)]
struct RawRequest {
    #[serde(rename = "type", default)]
    event_type: Option<String>,
    #[serde(default)]
    payload: Value,
    #[serde(default)]
    stream_id: Option<String>,
    #[serde(default)]
    metadata: Option<Value>,
}

/// A validated stream request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// The requested type, with state `requested`.
    #[serde(rename = "type", with = "type_string")]
    pub event_type: EventType,
    /// The client-chosen idempotency key, if any.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_stream_id"
    )]
    pub stream_id: Option<StreamId>,
    /// Handler input.
    #[serde(default)]
    pub payload: Value,
    /// Free-form metadata, echoed on every event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    /// The subject that requested the stream, who may read and cancel it. Never read from request
    /// bytes: the edge sets it from the caller's token, intake from the Kafka record (see
    /// `owner_from_metadata`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// Longest owner (token subject) recorded on a stream.
pub const MAX_OWNER_LEN: usize = 256;

impl Request {
    /// Parses untrusted bytes into a request, enforcing the size limit first.
    pub fn parse(bytes: &[u8], limit: usize) -> Result<Request, RequestError> {
        if bytes.len() > limit {
            return Err(RequestError::TooLarge {
                size: bytes.len(),
                limit,
            });
        }
        let raw: RawRequest = serde_json::from_slice(bytes)?;
        let type_text = raw.event_type.ok_or(RequestError::MissingType)?;
        let event_type = EventType::parse(&type_text).map_err(RequestError::Type)?;
        if event_type.state() != State::Requested {
            return Err(RequestError::WrongState(event_type.state()));
        }
        let stream_id = raw
            .stream_id
            .map(|s| StreamId::parse(&s))
            .transpose()
            .map_err(RequestError::StreamId)?;
        Ok(Request {
            event_type,
            stream_id,
            payload: raw.payload,
            metadata: raw.metadata,
            owner: None,
        })
    }

    /// The owner a request carries in `metadata.owner`, for requests that arrived over Kafka
    /// (trusted because only producers with access to the intake topic can write it). Empty or
    /// over-long values are ignored.
    pub fn owner_from_metadata(&self) -> Option<String> {
        let owner = self.metadata.as_ref()?.get("owner")?.as_str()?;
        valid_owner(owner).then(|| owner.to_owned())
    }
}

/// Whether `owner` may be recorded as a stream's owner: 1 to `MAX_OWNER_LEN` bytes.
pub fn valid_owner(owner: &str) -> bool {
    !owner.is_empty() && owner.len() <= MAX_OWNER_LEN
}

impl Request {
    /// The request serialised for the intake topic.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

mod type_string {
    use super::EventType;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &EventType, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(t)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<EventType, D::Error> {
        let s = String::deserialize(d)?;
        EventType::parse(&s).map_err(serde::de::Error::custom)
    }
}

mod opt_stream_id {
    use super::StreamId;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<StreamId>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(id) => s.serialize_str(id.as_str()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<StreamId>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| StreamId::parse(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_round_trips_types() {
        let t = EventType::parse("messaging:stream_messages:v1:requested").unwrap();
        assert_eq!(t.service(), "messaging");
        assert_eq!(t.action(), "stream_messages");
        assert_eq!(t.version(), 1);
        assert_eq!(t.state(), State::Requested);
        assert_eq!(t.kind(), "messaging:stream_messages");
        assert_eq!(t.to_string(), "messaging:stream_messages:v1:requested");
        assert_eq!(
            t.with_state(State::Stream).to_string(),
            "messaging:stream_messages:v1:stream"
        );
    }

    #[test]
    fn rejects_bad_types() {
        for bad in [
            "",
            "a:b:v1",
            "a:b:v1:requested:x",
            "A:b:v1:requested",
            "a:1b:v1:requested",
            "a:b-c:v1:requested",
            "a:b:1:requested",
            "a:b:v0:requested",
            "a:b:v01:requested",
            "a:b:vx:requested",
            "a:b:v1:done",
        ] {
            assert!(EventType::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn detects_streaming_patterns() {
        let yes = [
            "messaging:stream_messages:v1:requested",
            "messaging:stream_typing:v1:requested",
            "notification:stream_asset_chunks:v1:requested",
            "analytics:stream_metrics:v2:requested",
            "chat:typing:v1:stream",
            "room:presence:v1:stream",
        ];
        for s in yes {
            assert!(
                EventType::parse(s).unwrap().matches_streaming_pattern(),
                "{s}"
            );
        }
        let no = EventType::parse("billing:charge:v1:requested").unwrap();
        assert!(!no.matches_streaming_pattern());
    }

    #[test]
    fn validates_stream_ids() {
        assert!(StreamId::parse("abc-DEF_1.2").is_ok());
        assert!(StreamId::parse(&"a".repeat(200)).is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "ü", &"a".repeat(201)] {
            assert!(StreamId::parse(bad).is_err(), "{bad:?}");
        }
        let derived = StreamId::from_coordinates("sluice.requests", 3, 42);
        assert_eq!(derived.as_str(), "sluice.requests-3-42");
        assert!(StreamId::parse(derived.as_str()).is_ok());
    }

    #[test]
    fn parses_requests_and_classifies_errors() {
        let ok = br#"{"type":"messaging:stream_messages:v1:requested","payload":{"user_id":"user123","conversation_id":"conv456"}}"#;
        let r = Request::parse(ok, 1024).unwrap();
        assert_eq!(r.payload["user_id"], "user123");
        assert!(r.stream_id.is_none());
        let back = Request::parse(&r.to_json(), 1024).unwrap();
        assert_eq!(back, r);

        let cases: [(&[u8], &str); 5] = [
            (b"not json", "malformed_json"),
            (br#"{"payload":{}}"#, "invalid_type"),
            (br#"{"type":"nope"}"#, "invalid_type"),
            (br#"{"type":"a:stream_b:v1:stream"}"#, "wrong_state"),
            (
                br#"{"type":"a:stream_b:v1:requested","stream_id":"a/b"}"#,
                "invalid_stream_id",
            ),
        ];
        for (bytes, reason) in cases {
            assert_eq!(Request::parse(bytes, 1024).unwrap_err().reason(), reason);
        }
        assert_eq!(Request::parse(ok, 10).unwrap_err().reason(), "too_large");
    }

    #[test]
    fn payload_numbers_survive_re_encoding() {
        // A long mantissa with an exponent: serde_json's default float parser may round it to a
        // neighbouring f64, which then prints and parses back to a different value.
        let raw = br#"{"type":"demo:stream_ticks:v1:requested","payload":{"x":[444444444444444444444444444444444441e11,0.30000000000000004,1.7976931348623157e308]}}"#;
        let r = Request::parse(raw, 1024).unwrap();
        let back = Request::parse(&r.to_json(), 1024).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.to_json(), r.to_json());
        assert_eq!(r.payload["x"][0].as_f64(), Some(4.444444444444444e46));
    }
}
