//! `Request::parse` on arbitrary bytes under a 64 KiB limit: never a panic, and an accepted
//! request serialises (`to_json`, as written to the intake topic) to bytes that parse back to the
//! same request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_wire::event::{Request, State};

const LIMIT: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let Ok(first) = Request::parse(data, LIMIT) else {
        return;
    };
    assert_eq!(first.event_type.state(), State::Requested);
    assert!(
        first.owner.is_none(),
        "owner is never read from request bytes"
    );
    let json = first.to_json();
    assert!(!json.is_empty(), "to_json failed for a parsed request");
    // The re-encoding may be longer than the input (an absent payload becomes `null`), so the
    // second parse is not held to the same limit.
    let second = Request::parse(&json, usize::MAX).unwrap_or_else(|e| {
        panic!(
            "to_json of a parsed request does not parse: {e}\n  json: {}",
            String::from_utf8_lossy(&json)
        )
    });
    assert_eq!(second, first, "request changed through to_json");
    assert_eq!(second.to_json(), json, "to_json is not a fixed point");
});
