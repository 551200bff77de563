//! `EventType::parse` and `State::from_str` on arbitrary text: never a panic, and every accepted
//! type displays as text that parses back to the same type (and displays identically again).
#![no_main]

use std::str::FromStr;

use libfuzzer_sys::fuzz_target;
use sluice_wire::event::{EventType, State};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(state) = State::from_str(text) {
        assert_eq!(
            state.as_str(),
            text,
            "a state parses only from its own name"
        );
        assert_eq!(State::from_str(&state.to_string()).ok(), Some(state));
    }
    if let Ok(parsed) = EventType::parse(text) {
        let shown = parsed.to_string();
        let again = EventType::parse(&shown)
            .unwrap_or_else(|e| panic!("{text:?} parsed but its display {shown:?} does not: {e}"));
        assert_eq!(again, parsed, "display of {text:?} parses to another type");
        assert_eq!(again.to_string(), shown, "display is not a fixed point");
        assert!(parsed.version() > 0);
        assert_eq!(
            parsed.kind(),
            format!("{}:{}", parsed.service(), parsed.action())
        );
        for state in State::ALL {
            let moved = parsed.with_state(state);
            assert_eq!(EventType::parse(&moved.to_string()).ok(), Some(moved));
        }
    }
});
