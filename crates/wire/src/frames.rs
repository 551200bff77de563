//! What clients send besides requests: resume points (`Last-Event-ID`, `?last_event_id=`, a
//! WebSocket `last_event_id`) and WebSocket client frames, decoded from untrusted text into typed
//! values. Every refusal carries a bounded code for the metric label and a message for the client.

use serde::Deserialize;
use serde_json::Value;

/// Why client input was refused: a bounded `code` and a message safe to echo.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FrameError {
    /// Bounded code, also the metric reason.
    pub code: &'static str,
    /// Details for the client, with any echoed input truncated.
    pub message: String,
}

fn refuse(code: &'static str, message: String) -> FrameError {
    FrameError { code, message }
}

/// Parses a resume point: a non-negative Kafka offset below `i64::MAX` (the next offset after it
/// must still be representable).
pub fn parse_event_id(raw: &str) -> Result<i64, FrameError> {
    raw.trim()
        .parse::<i64>()
        .ok()
        .filter(|v| (0..i64::MAX).contains(v))
        .ok_or_else(|| {
            refuse(
                "invalid_last_event_id",
                format!(
                    "last event id {:?} must be an integer offset from 0 to {}",
                    raw.chars().take(40).collect::<String>(),
                    i64::MAX - 1
                ),
            )
        })
}

/// A frame a WebSocket client sent.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientFrame {
    /// `{"type":"ping"}`: answered with `pong`.
    Ping,
    /// `{"type":"subscribe","stream_id":…,"last_event_id":…}`: follow a stream.
    Subscribe {
        /// The stream to follow, not yet validated as a stream id.
        stream_id: String,
        /// Resume after this event (a number or a numeric string), if given.
        last_event_id: Option<i64>,
    },
    /// `{"type":"cancel","stream_id":…}`: cancel a stream.
    Cancel {
        /// The stream to cancel, not yet validated as a stream id.
        stream_id: String,
    },
    /// Any other `type`: a stream request, to be parsed by `Request::parse` from the same text.
    Request,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Control {
    Ping,
    Subscribe {
        stream_id: String,
        #[serde(default)]
        last_event_id: Option<Value>,
    },
    Cancel {
        stream_id: String,
    },
}

impl ClientFrame {
    /// Decodes one text frame. The `stream_id` of a refused frame is returned with the error when
    /// it could be read, so the error frame can name the stream.
    pub fn decode(text: &str) -> Result<ClientFrame, (Option<String>, FrameError)> {
        let value: Value = match serde_json::from_str(text) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => {
                let e = refuse("malformed_json", "a frame must be a JSON object".into());
                return Err((None, e));
            }
            Err(e) => {
                return Err((
                    None,
                    refuse("malformed_json", format!("malformed JSON: {e}")),
                ))
            }
        };
        let stream_id = value.get("stream_id").and_then(Value::as_str).map(|s| {
            s.chars()
                .take(crate::event::MAX_STREAM_ID_LEN + 1)
                .collect()
        });
        let kind = value.get("type").and_then(Value::as_str).unwrap_or("");
        if !matches!(kind, "ping" | "subscribe" | "cancel") {
            return Ok(ClientFrame::Request);
        }
        let kind = kind.to_owned();
        let control = serde_json::from_value::<Control>(value).map_err(|e| {
            (
                stream_id.clone(),
                refuse("invalid_frame", format!("{kind} frame: {e}")),
            )
        })?;
        Ok(match control {
            Control::Ping => ClientFrame::Ping,
            Control::Cancel { stream_id } => ClientFrame::Cancel { stream_id },
            Control::Subscribe {
                stream_id: id,
                last_event_id,
            } => {
                let last_event_id = match last_event_id {
                    None | Some(Value::Null) => None,
                    Some(Value::String(s)) => Some(parse_event_id(&s)),
                    Some(other) => Some(parse_event_id(&other.to_string())),
                }
                .transpose()
                .map_err(|e| (stream_id, e))?;
                ClientFrame::Subscribe {
                    stream_id: id,
                    last_event_id,
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_at_the_edge_of_i64_are_refused_not_overflowed() {
        assert_eq!(parse_event_id("0").unwrap(), 0);
        assert_eq!(parse_event_id(" 42 ").unwrap(), 42);
        assert_eq!(parse_event_id("9223372036854775806").unwrap(), i64::MAX - 1);
        for bad in [
            "9223372036854775807",
            "9223372036854775808",
            "99999999999999999999",
            "-1",
            "x",
            "",
        ] {
            let err = parse_event_id(bad).expect_err(bad);
            assert_eq!(err.code, "invalid_last_event_id", "{bad}");
        }
    }

    #[test]
    fn frames_decode_to_their_kind_or_a_precise_refusal() {
        assert_eq!(
            ClientFrame::decode(r#"{"type":"ping"}"#),
            Ok(ClientFrame::Ping)
        );
        assert_eq!(
            ClientFrame::decode(r#"{"type":"subscribe","stream_id":"s","last_event_id":"7"}"#),
            Ok(ClientFrame::Subscribe {
                stream_id: "s".into(),
                last_event_id: Some(7)
            })
        );
        assert_eq!(
            ClientFrame::decode(r#"{"type":"subscribe","stream_id":"s","last_event_id":8}"#),
            Ok(ClientFrame::Subscribe {
                stream_id: "s".into(),
                last_event_id: Some(8)
            })
        );
        assert_eq!(
            ClientFrame::decode(r#"{"type":"a:stream_b:v1:requested"}"#),
            Ok(ClientFrame::Request)
        );
        let code = |t: &str| ClientFrame::decode(t).unwrap_err();
        assert_eq!(code("[1]").1.code, "malformed_json");
        assert_eq!(code("{").1.code, "malformed_json");
        assert_eq!(code(r#"{"type":"cancel"}"#).1.code, "invalid_frame");
        let (id, e) = code(r#"{"type":"subscribe","stream_id":"s","last_event_id":-1}"#);
        assert_eq!(
            (id.as_deref(), e.code),
            (Some("s"), "invalid_last_event_id")
        );
    }
}
