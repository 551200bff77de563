//! `parse_event_id` (Last-Event-ID, `?last_event_id=`) on arbitrary text: never a panic, and an
//! accepted id is an offset in `0..i64::MAX`, so that the next offset is still representable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_wire::frames::parse_event_id;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_event_id(text) {
        Ok(id) => {
            assert!((0..i64::MAX).contains(&id), "{text:?} gave {id}");
            assert!(id.checked_add(1).is_some());
            assert_eq!(parse_event_id(&id.to_string()).ok(), Some(id));
            let digits = text.trim().trim_start_matches(['+', '-']);
            assert!(
                !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()),
                "{text:?} is not a decimal number but gave {id}"
            );
        }
        Err(e) => {
            assert_eq!(e.code, "invalid_last_event_id");
            // The echoed input is cut to 40 characters.
            assert!(e.message.chars().count() < 40 * 10 + 100);
        }
    }
});
