//! Conversions between Sluice's JSON events and the protobuf messages of `sluice.v1`.
//!
//! JSON maps to `google.protobuf.Value` as the protobuf JSON mapping defines. Numbers are doubles
//! there, so a whole number coming back from a client becomes a JSON integer again (a handler that
//! reads `count: 3` must not see `3.0`).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Timestamp, Value};
use serde_json::Value as Json;

use super::proto;
use crate::event::Envelope;
use crate::stream::hub::StoredEvent;
use crate::stream::subscription::Delivery;

/// The largest integer a double holds exactly.
const EXACT_INT: f64 = 9_007_199_254_740_992.0;

/// JSON to a protobuf `Value`.
pub fn to_value(json: &Json) -> Value {
    let kind = match json {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(*b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Json::String(s) => Kind::StringValue(s.clone()),
        Json::Array(items) => Kind::ListValue(ListValue {
            values: items.iter().map(to_value).collect(),
        }),
        Json::Object(map) => Kind::StructValue(to_struct(map)),
    };
    Value { kind: Some(kind) }
}

fn to_struct(map: &serde_json::Map<String, Json>) -> Struct {
    Struct {
        fields: map.iter().map(|(k, v)| (k.clone(), to_value(v))).collect(),
    }
}

/// A JSON object to a protobuf `Struct`; anything else is wrapped as `{"value": …}`.
pub fn to_struct_any(json: &Json) -> Option<Struct> {
    match json {
        Json::Null => None,
        Json::Object(map) => Some(to_struct(map)),
        other => Some(Struct {
            fields: [("value".to_owned(), to_value(other))].into(),
        }),
    }
}

/// A protobuf `Value` to JSON.
pub fn from_value(value: &Value) -> Json {
    match &value.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(b)) => Json::Bool(*b),
        Some(Kind::NumberValue(n)) => number(*n),
        Some(Kind::StringValue(s)) => Json::String(s.clone()),
        Some(Kind::ListValue(l)) => Json::Array(l.values.iter().map(from_value).collect()),
        Some(Kind::StructValue(s)) => from_struct(s),
    }
}

/// A protobuf `Struct` to a JSON object.
pub fn from_struct(s: &Struct) -> Json {
    Json::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), from_value(v)))
            .collect(),
    )
}

fn number(n: f64) -> Json {
    if n.fract() == 0.0 && n.abs() <= EXACT_INT {
        Json::from(n as i64)
    } else {
        serde_json::Number::from_f64(n).map_or(Json::Null, Json::Number)
    }
}

/// A time to a protobuf `Timestamp`.
pub fn timestamp(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// An envelope to an `Event`, with `id` when it was stored.
pub fn event(stream_id: &str, env: &Envelope, id: Option<i64>) -> proto::Event {
    proto::Event {
        r#type: env.event_type.clone(),
        id,
        stream_id: env
            .stream_id
            .clone()
            .unwrap_or_else(|| stream_id.to_owned()),
        seq: env.seq,
        payload: Some(to_value(&env.payload)),
        metadata: env.metadata.as_ref().and_then(to_struct_any),
        time: env.time.map(timestamp),
    }
}

/// A stored event to an `Event`.
pub fn stored(stream_id: &str, ev: &Arc<StoredEvent>) -> proto::Event {
    event(stream_id, &ev.envelope, Some(ev.offset))
}

/// A subscription's delivery to an `Event`.
pub fn delivery(stream_id: &str, d: &Delivery) -> proto::Event {
    match d {
        Delivery::Event(ev) => stored(stream_id, ev),
        Delivery::Heartbeat(h) => event(stream_id, h, None),
        Delivery::HistoryLost {
            requested,
            earliest,
        } => proto::Event {
            r#type: crate::edge::HISTORY_LOST.to_owned(),
            id: None,
            stream_id: stream_id.to_owned(),
            seq: None,
            payload: Some(to_value(
                &serde_json::json!({"requested_id": requested, "earliest_id": earliest}),
            )),
            metadata: None,
            time: Some(timestamp(Utc::now())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_round_trips_and_whole_numbers_stay_integers() {
        let doc = json!({"count": 3, "ratio": 0.5, "big": 1764190000123456u64, "neg": -7,
                         "list": [1, "a", null, true], "nested": {"x": {}}});
        assert_eq!(from_value(&to_value(&doc)), doc);
        // What a client sends for `count: 3` is a double; the handler must see an integer.
        let three = Value {
            kind: Some(Kind::NumberValue(3.0)),
        };
        assert_eq!(serde_json::to_string(&from_value(&three)).unwrap(), "3");
        assert_eq!(to_struct_any(&json!([1])).unwrap().fields.len(), 1);
        assert!(to_struct_any(&Json::Null).is_none());
    }
}
