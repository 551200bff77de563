//! Property tests of the decoders of untrusted input: the event type grammar round-trips, every
//! decoder survives any input, and resume points and stream ids are accepted exactly as specified.
//! The fuzz targets in `fuzz/` check the same properties from coverage-guided inputs.

use proptest::prelude::*;
use serde_json::{json, Value};
use sluice_wire::event::{EventType, Request, State, StreamId, MAX_STREAM_ID_LEN};
use sluice_wire::frames::{parse_event_id, ClientFrame};
use sluice_wire::stored::StoredEvent;
use sluice_wire::token::glob;

// --- strategies ----------------------------------------------------------------------------------

/// A service or action name: `[a-z][a-z0-9_]*`, as `EventType::parse` requires.
fn name() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9_]{0,24}"
}

fn state() -> impl Strategy<Value = State> {
    prop::sample::select(State::ALL.to_vec())
}

/// Text shaped like an event type but free to break each rule: upper case and digits in names,
/// signs, zeros and overflowing numbers in the version, unknown states, extra or missing parts.
fn type_like() -> impl Strategy<Value = String> {
    let part = "[a-zA-Z0-9_+-]{0,6}";
    let version = "v[+-]?[0-9]{0,12}|[0-9]{1,3}|v";
    let st = prop_oneof![state().prop_map(|s| s.to_string()), "[a-z]{0,10}".boxed()];
    prop_oneof![
        (name(), name(), version, st.clone()).prop_map(|(a, b, v, s)| format!("{a}:{b}:{v}:{s}")),
        (part, part, "v[0-9]{1,3}", st.clone()).prop_map(|(a, b, v, s)| format!("{a}:{b}:{v}:{s}")),
        (name(), name(), 1..1000u32, st).prop_map(|(a, b, v, s)| format!("{a}:{b}:v{v}:{s}")),
        "[a-z0-9:v]{0,40}",
        any::<String>(),
    ]
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from), // NaN and infinities become null
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A JSON object of the request or envelope shape, with each field present, absent or of the
/// wrong kind.
fn envelope_like() -> impl Strategy<Value = String> {
    let field = |strategy: BoxedStrategy<Value>| prop::option::of(strategy);
    (
        field(type_like().prop_map(Value::from).boxed()),
        field(prop_oneof!["[A-Za-z0-9._/-]{0,12}".prop_map(Value::from), json_value()].boxed()),
        field(prop_oneof![any::<u64>().prop_map(Value::from), json_value()].boxed()),
        field(json_value().boxed()),
        field(json_value().boxed()),
        field(
            prop_oneof![
                Just(Value::from("2024-05-01T12:00:00Z")),
                ".{0,25}".prop_map(Value::from),
                json_value()
            ]
            .boxed(),
        ),
    )
        .prop_map(|(t, stream_id, seq, payload, metadata, time)| {
            let mut object = serde_json::Map::new();
            for (key, value) in [
                ("type", t),
                ("stream_id", stream_id),
                ("seq", seq),
                ("payload", payload),
                ("metadata", metadata),
                ("time", time),
            ] {
                if let Some(v) = value {
                    object.insert(key.into(), v);
                }
            }
            Value::Object(object).to_string()
        })
}

/// Bytes that are any of: arbitrary, arbitrary text, or a request/envelope-shaped object.
fn untrusted_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        any::<Vec<u8>>(),
        any::<String>().prop_map(String::into_bytes),
        envelope_like().prop_map(String::into_bytes),
    ]
}

/// A WebSocket client frame: control frames with fields of any kind, requests, or any text.
fn frame_like() -> impl Strategy<Value = String> {
    prop_oneof![
        (
            prop::sample::select(vec!["ping", "subscribe", "cancel", "other", ""]),
            prop::option::of(prop_oneof![".{0,8}".prop_map(Value::from), json_value()]),
            prop::option::of(prop_oneof![
                any::<i64>().prop_map(Value::from),
                any::<i64>().prop_map(|n| Value::from(n.to_string())),
                json_value(),
            ]),
        )
            .prop_map(|(kind, stream_id, last)| {
                let mut frame = json!({ "type": kind });
                if let Some(s) = stream_id {
                    frame["stream_id"] = s;
                }
                if let Some(l) = last {
                    frame["last_event_id"] = l;
                }
                frame.to_string()
            }),
        envelope_like(),
        any::<String>(),
    ]
}

/// The reference model of a resume point: surrounding whitespace, an optional sign and decimal
/// digits whose value is in `0..i64::MAX`.
fn event_id_model(raw: &str) -> Option<i64> {
    let t = raw.trim();
    let (negative, digits) = match t.as_bytes().first() {
        Some(b'+') => (false, &t[1..]),
        Some(b'-') => (true, &t[1..]),
        _ => (false, t),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let significant = digits.trim_start_matches('0');
    if significant.len() > 19 {
        return None;
    }
    let value: u128 = if significant.is_empty() {
        0
    } else {
        significant.parse().unwrap()
    };
    if negative && value != 0 {
        return None;
    }
    (value < i64::MAX as u128).then_some(value as i64)
}

/// The reference model of a stream id.
fn stream_id_model(s: &str) -> bool {
    (1..=MAX_STREAM_ID_LEN).contains(&s.chars().count())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && s != "."
        && s != ".."
}

// --- (a), (b): the event type grammar round-trips ------------------------------------------------

proptest! {
    #[test]
    fn generated_event_types_round_trip(
        service in name(), action in name(), version in 1..1000u32, state in state()
    ) {
        let text = format!("{service}:{action}:v{version}:{state}");
        let parsed = EventType::parse(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(parsed.service(), service.as_str());
        prop_assert_eq!(parsed.action(), action.as_str());
        prop_assert_eq!(parsed.version(), version);
        prop_assert_eq!(parsed.state(), state);
        prop_assert_eq!(parsed.to_string(), text.clone());
        prop_assert_eq!(EventType::parse(&parsed.to_string()), Ok(parsed));
    }

    #[test]
    fn parse_display_parse_is_idempotent(text in type_like()) {
        if let Ok(first) = EventType::parse(&text) {
            let shown = first.to_string();
            let second = EventType::parse(&shown);
            prop_assert_eq!(second.as_ref(), Ok(&first), "display {:?} of {:?}", shown, text);
            prop_assert_eq!(second.unwrap().to_string(), shown);
        }
    }

    #[test]
    fn states_parse_from_their_names_only(text in prop_oneof![
        state().prop_map(|s| s.to_string()), "[a-zA-Z ]{0,10}".boxed()
    ]) {
        match text.parse::<State>() {
            Ok(s) => prop_assert_eq!(s.as_str(), text.as_str()),
            Err(_) => prop_assert!(State::ALL.iter().all(|s| s.as_str() != text)),
        }
    }
}

// --- (c): no decoder panics on any input ---------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn text_decoders_never_panic(text in prop_oneof![type_like(), frame_like(), any::<String>()]) {
        let _ = EventType::parse(&text);
        let _ = text.parse::<State>();
        let _ = StreamId::parse(&text);
        let _ = parse_event_id(&text);
        let _ = ClientFrame::decode(&text);
        let (pattern, subject) = text.split_at(text.char_indices().nth(text.chars().count() / 2)
            .map_or(text.len(), |(i, _)| i));
        let _ = glob(pattern, subject);
        prop_assert!(glob(pattern, pattern));
        prop_assert!(glob("*", subject));
    }

    #[test]
    fn byte_decoders_never_panic(bytes in untrusted_bytes(), offset in any::<i64>(),
                                 limit in prop_oneof![Just(64 * 1024usize), 0..64usize]) {
        let _ = Request::parse(&bytes, limit);
        if let Some(event) = StoredEvent::parse(offset, &bytes) {
            prop_assert_eq!(event.offset, offset);
            let frame: Value = serde_json::from_str(event.ws_frame())
                .map_err(|e| TestCaseError::fail(format!("ws frame not JSON: {e}")))?;
            prop_assert_eq!(&frame["id"], &json!(offset));
            prop_assert!(serde_json::from_str::<serde::de::IgnoredAny>(&event.json).is_ok(), "{}", event.json);
        }
    }

    #[test]
    fn accepted_requests_survive_to_json(body in envelope_like()) {
        if let Ok(first) = Request::parse(body.as_bytes(), 64 * 1024) {
            prop_assert_eq!(first.event_type.state(), State::Requested);
            let again = Request::parse(&first.to_json(), usize::MAX)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(again, first);
        }
    }

    #[test]
    fn frames_decode_to_bounded_values(text in frame_like()) {
        match ClientFrame::decode(&text) {
            Ok(ClientFrame::Subscribe { last_event_id: Some(id), .. }) => {
                prop_assert!((0..i64::MAX).contains(&id));
            }
            Ok(_) => {}
            Err((stream_id, e)) => {
                prop_assert!(
                    matches!(e.code, "malformed_json" | "invalid_frame" | "invalid_last_event_id"),
                    "{}", e.code
                );
                prop_assert!(stream_id.is_none_or(|s| s.chars().count() <= MAX_STREAM_ID_LEN + 1));
            }
        }
    }
}

// --- (d): resume points --------------------------------------------------------------------------

proptest! {
    #[test]
    fn every_offset_below_i64_max_is_a_resume_point(n in 0..i64::MAX) {
        prop_assert_eq!(parse_event_id(&n.to_string()), Ok(n));
    }

    #[test]
    fn negative_offsets_are_refused(n in i64::MIN..0) {
        let err = parse_event_id(&n.to_string()).unwrap_err();
        prop_assert_eq!(err.code, "invalid_last_event_id");
    }

    #[test]
    fn offsets_from_i64_max_up_are_refused(n in (i64::MAX as u128)..u128::MAX) {
        prop_assert!(parse_event_id(&n.to_string()).is_err(), "{} accepted", n);
    }

    #[test]
    fn resume_points_match_the_model(text in prop_oneof![
        "[ \t]{0,2}[+-]?[0-9]{1,22}[ \t]{0,2}",
        "[0-9+ -]{0,6}",
        any::<String>(),
    ]) {
        prop_assert_eq!(parse_event_id(&text).ok(), event_id_model(&text), "{:?}", text);
    }
}

#[test]
fn resume_point_edges() {
    assert_eq!(parse_event_id("0"), Ok(0));
    assert_eq!(
        parse_event_id(&(i64::MAX - 1).to_string()),
        Ok(i64::MAX - 1)
    );
    assert!(parse_event_id(&i64::MAX.to_string()).is_err());
    assert!(parse_event_id(&i64::MIN.to_string()).is_err());
    assert!(parse_event_id("").is_err());
}

// --- (e): stream ids -----------------------------------------------------------------------------

proptest! {
    #[test]
    fn legal_stream_ids_are_accepted(id in "[A-Za-z0-9._-]{1,200}") {
        let parsed = StreamId::parse(&id);
        if id == "." || id == ".." {
            prop_assert!(parsed.is_err());
        } else {
            prop_assert_eq!(parsed.map(|p| p.as_str().to_owned()), Ok(id));
        }
    }

    #[test]
    fn over_long_stream_ids_are_refused(id in "[A-Za-z0-9._-]{201,400}") {
        prop_assert!(StreamId::parse(&id).is_err());
    }

    #[test]
    fn one_illegal_character_refuses_a_stream_id(
        id in "[A-Za-z0-9._-]{0,199}",
        bad in any::<char>().prop_filter("illegal", |c| {
            !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        }),
        at in any::<prop::sample::Index>(),
    ) {
        let mut chars: Vec<char> = id.chars().collect();
        chars.insert(at.index(chars.len() + 1), bad);
        let text: String = chars.into_iter().collect();
        prop_assert!(StreamId::parse(&text).is_err(), "{:?} accepted", text);
    }

    #[test]
    fn stream_ids_match_the_model(text in prop_oneof![
        "[A-Za-z0-9._-]{0,3}", "[A-Za-z0-9._/ -]{0,210}", any::<String>()
    ]) {
        prop_assert_eq!(StreamId::parse(&text).is_ok(), stream_id_model(&text), "{:?}", text);
    }
}

#[test]
fn stream_id_edges() {
    for bad in ["", ".", "..", "a/b", "ü"] {
        assert!(StreamId::parse(bad).is_err(), "{bad:?}");
    }
    for good in ["...", ".a", "a..", "-", "_"] {
        assert!(StreamId::parse(good).is_ok(), "{good:?}");
    }
    assert!(StreamId::parse(&"x".repeat(200)).is_ok());
    assert!(StreamId::parse(&"x".repeat(201)).is_err());
}

// --- regressions: bugs found by fuzzing, now fixed ------------------------------------------------

/// A stored record carrying `"id": null` decodes with `envelope.id == None`, so `from_stored`
/// splices `"id":<offset>` in front of the record's own `"id":null`: the subscriber JSON has the
/// key twice and every JSON reader that keeps the last duplicate (serde_json, JavaScript's
/// `JSON.parse`) saw `id: null` instead of the offset. Fuzz input:
/// fuzz/corpus/stored_record/id-null.
#[test]
fn stored_record_with_null_id_gets_its_offset_as_id() {
    let event = StoredEvent::parse(5, br#"{"id":null,"type":"a:b:v1:stream"}"#).unwrap();
    let json: Value = serde_json::from_str(&event.json).unwrap();
    assert_eq!(json["id"], json!(5), "subscriber JSON: {}", event.json);
}

/// `EventType::parse` refuses `v01` (one spelling per version) and accepted `v+1`, because
/// `u32::from_str` allows a leading `+`: the text of an accepted type was then not its display.
#[test]
fn event_type_versions_have_one_spelling() {
    for text in ["a:b:v+1:requested", "a:b:v+12:stream"] {
        assert!(EventType::parse(text).is_err(), "{text} accepted");
    }
}
