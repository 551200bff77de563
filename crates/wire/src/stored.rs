//! Stored events: a stream topic record decoded into its envelope and offset, with the JSON every
//! subscriber receives built once by splicing `"id":<offset>` into the stored bytes.
//!
//! The bytes come from Kafka and are treated as untrusted: a record that is not an envelope with a
//! valid type decodes to `None`, never a panic.

use std::sync::{Arc, OnceLock};

use crate::event::{Envelope, EventType, State};

/// An event as stored in its stream topic, with its offset and its JSON ready to send.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    /// The Kafka offset: the event's id.
    pub offset: i64,
    /// The event's lifecycle state.
    pub state: State,
    /// The envelope with `id` set.
    pub envelope: Envelope,
    /// `envelope` serialised once for every subscriber.
    pub json: Arc<str>,
    /// The WebSocket frame of this event, built by the first WebSocket subscriber that needs it.
    ws_frame: OnceLock<String>,
}

impl StoredEvent {
    /// Attaches an offset to an envelope read from or written to a stream topic.
    pub fn new(offset: i64, mut envelope: Envelope) -> Option<StoredEvent> {
        let state = EventType::parse(&envelope.event_type).ok()?.state();
        envelope.id = Some(offset);
        let json: Arc<str> = serde_json::to_string(&envelope).ok()?.into();
        Some(StoredEvent {
            offset,
            state,
            envelope,
            json,
            ws_frame: OnceLock::new(),
        })
    }

    /// The event whose stored bytes (the envelope without `id`, as written to Kafka) are `bytes`:
    /// the subscribers' JSON is those bytes with `"id":<offset>` spliced in, not a re-encoding.
    /// Bytes that are not a JSON object, or that already carry an `id`, are re-encoded instead.
    pub fn from_stored(offset: i64, mut envelope: Envelope, bytes: &[u8]) -> Option<StoredEvent> {
        // A record that names an `id` key anywhere (even `"id":null`, which decodes as no id) is
        // re-encoded: splicing would give the JSON two `id`s, and readers keep the last one.
        let names_id = bytes.windows(4).any(|w| w == b"\"id\"");
        if envelope.id.is_some() || names_id || bytes.first() != Some(&b'{') {
            return StoredEvent::new(offset, envelope);
        }
        let state = EventType::parse(&envelope.event_type).ok()?.state();
        envelope.id = Some(offset);
        let rest = std::str::from_utf8(&bytes[1..]).ok()?;
        let mut json = String::with_capacity(bytes.len() + 24);
        json.push_str("{\"id\":");
        json.push_str(&offset.to_string());
        if rest.trim_start().starts_with('}') {
            json.push_str(rest);
        } else {
            json.push(',');
            json.push_str(rest);
        }
        Some(StoredEvent {
            offset,
            state,
            envelope,
            json: json.into(),
            ws_frame: OnceLock::new(),
        })
    }

    /// The event as a WebSocket frame, `{"type","stream_id","id","seq","payload"}`, encoded once
    /// however many clients receive it.
    pub fn ws_frame(&self) -> &str {
        self.ws_frame.get_or_init(|| {
            serde_json::json!({"type": self.envelope.event_type,
                "stream_id": self.envelope.stream_id, "id": self.offset,
                "seq": self.envelope.seq, "payload": self.envelope.payload})
            .to_string()
        })
    }

    /// The event parsed from the bytes of a stream topic record.
    pub fn parse(offset: i64, bytes: &[u8]) -> Option<StoredEvent> {
        let envelope = serde_json::from_slice::<Envelope>(bytes).ok()?;
        StoredEvent::from_stored(offset, envelope, bytes)
    }
}
