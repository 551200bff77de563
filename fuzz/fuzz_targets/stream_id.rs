//! `StreamId::parse` on arbitrary text: never a panic, and it accepts exactly Kafka-safe ids,
//! 1 to 200 bytes of `[A-Za-z0-9._-]` other than `.` and `..`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_wire::event::{StreamId, MAX_STREAM_ID_LEN};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let legal = !text.is_empty()
        && text.len() <= MAX_STREAM_ID_LEN
        && text != "."
        && text != ".."
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    match StreamId::parse(text) {
        Ok(id) => {
            assert!(legal, "accepted an illegal stream id {text:?}");
            assert_eq!(id.as_str(), text);
            assert!(id.as_str().len() <= 200);
            assert_eq!(id.to_string(), text);
        }
        Err(e) => {
            assert!(!legal, "refused a legal stream id {text:?}");
            // The message echoes at most 64 characters of the input.
            assert!(e.to_string().len() < 64 * 10 + 200);
        }
    }
});
