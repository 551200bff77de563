//! `StoredEvent::parse` (a stream topic record read from Kafka) on arbitrary bytes, with the
//! offset taken from the first 8 bytes: never a panic, and a decoded event's subscriber JSON is
//! valid JSON whose `id` is the offset, as is its WebSocket frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use sluice_wire::event::EventType;
use sluice_wire::stored::StoredEvent;

/// The subscriber JSON's `id` and `type`; any other field is skipped (and must still be JSON).
#[derive(serde::Deserialize)]
struct Spliced {
    id: i64,
    #[serde(rename = "type")]
    event_type: String,
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (head, record) = data.split_at(8);
    let offset = i64::from_le_bytes(head.try_into().unwrap());
    let Some(event) = StoredEvent::parse(offset, record) else {
        return;
    };
    assert_eq!(event.offset, offset);
    assert_eq!(event.envelope.id, Some(offset));
    let parsed_type = EventType::parse(&event.envelope.event_type).expect("stored type is valid");
    assert_eq!(parsed_type.state(), event.state);

    // Read as a typed record, not a `Value`: the bytes are spliced, so an unknown field keeps a
    // number such as 1e1111 that is valid JSON but that `Value` refuses ("number out of range").
    let json: Spliced = serde_json::from_str(&event.json)
        .unwrap_or_else(|e| panic!("subscriber JSON is not JSON: {e}\n  json: {}", event.json));
    assert_eq!(
        json.id,
        offset,
        "subscriber JSON's id is not the offset {offset}\n  record: {}\n  json: {}",
        String::from_utf8_lossy(record),
        event.json
    );
    assert_eq!(json.event_type, event.envelope.event_type);

    let frame: Value = serde_json::from_str(event.ws_frame()).unwrap_or_else(|e| {
        panic!(
            "WebSocket frame is not JSON: {e}\n  frame: {}",
            event.ws_frame()
        )
    });
    assert_eq!(frame.get("id").and_then(Value::as_i64), Some(offset));
    assert_eq!(frame["type"], Value::String(json.event_type));
});
