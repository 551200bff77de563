//! `ClientFrame::decode` (WebSocket client frames) on arbitrary text: never a panic; resume points
//! are in range and echoed stream ids are bounded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_wire::event::MAX_STREAM_ID_LEN;
use sluice_wire::frames::ClientFrame;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match ClientFrame::decode(text) {
        Ok(ClientFrame::Subscribe { last_event_id, .. }) => {
            if let Some(id) = last_event_id {
                assert!(
                    (0..i64::MAX).contains(&id),
                    "resume point {id} out of range"
                );
            }
        }
        Ok(ClientFrame::Ping | ClientFrame::Cancel { .. } | ClientFrame::Request) => {}
        Err((stream_id, e)) => {
            assert!(matches!(
                e.code,
                "malformed_json" | "invalid_frame" | "invalid_last_event_id"
            ));
            if let Some(id) = stream_id {
                assert!(id.chars().count() <= MAX_STREAM_ID_LEN + 1);
            }
        }
    }
});
