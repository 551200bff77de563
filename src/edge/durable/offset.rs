//! Durable Streams offsets and the read position a request asks for.
//!
//! An offset is `SSSSSSSSSSSSSSSS_PPPPPPPPPPPPPPPP`: a segment (a stream's fork depth: 0 for a
//! stream that is not a fork) and a position (the Kafka offset after the record, in the segment's
//! own topic), both zero-padded to 16 digits, so offsets sort as strings exactly as they sort as
//! numbers. Every stream starts at `0000000000000000_0000000000000000`, and a fork's own records
//! sort after everything it inherited because its segment is one deeper than its source's.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Digits of each half.
const WIDTH: usize = 16;

/// A position in a stream: after the record that ends there.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Offset {
    /// The fork depth of the stream that wrote the record.
    pub seg: u64,
    /// The Kafka offset after the record, in that stream's topic.
    pub pos: u64,
}

impl Offset {
    /// The start of every stream.
    pub const ZERO: Offset = Offset { seg: 0, pos: 0 };

    /// Parses `SSSSSSSSSSSSSSSS_PPPPPPPPPPPPPPPP`; anything else is `None`.
    pub fn parse(s: &str) -> Option<Offset> {
        let (seg, pos) = s.split_once('_')?;
        let digits = |p: &str| p.len() == WIDTH && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(seg) || !digits(pos) {
            return None;
        }
        Some(Offset {
            seg: seg.parse().ok()?,
            pos: pos.parse().ok()?,
        })
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016}_{:016}", self.seg, self.pos)
    }
}

/// Where a read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    /// `-1`, or no offset: the start.
    Start,
    /// `now`: the current tail.
    Now,
    /// After this offset.
    At(Offset),
}

/// How a read follows the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Live {
    /// Return what is there.
    No,
    /// Wait at the tail for new data, up to the long-poll timeout.
    LongPoll,
    /// Server-sent events.
    Sse,
}

/// A read request's query, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadQuery {
    /// Where to start.
    pub from: ReadFrom,
    /// How to follow.
    pub live: Live,
    /// The client's cursor, echoed for cache busting.
    pub cursor: Option<u64>,
}

/// Parses a raw query string. Errors name what is wrong; every error is a 400.
pub fn parse_query(raw: Option<&str>) -> Result<ReadQuery, String> {
    let mut offset: Option<String> = None;
    let mut live = Live::No;
    let mut cursor = None;
    for (k, v) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match &*k {
            "offset" => {
                if offset.is_some() {
                    return Err("offset given more than once".into());
                }
                offset = Some(v.into_owned());
            }
            "live" => {
                live = match &*v {
                    "long-poll" => Live::LongPoll,
                    "sse" => Live::Sse,
                    _ => Live::No,
                }
            }
            "cursor" => cursor = v.parse().ok(),
            _ => {}
        }
    }
    let from = match offset.as_deref() {
        None if live != Live::No => return Err("live reads need an offset".into()),
        None | Some("-1") => ReadFrom::Start,
        Some("now") => ReadFrom::Now,
        Some(s) => ReadFrom::At(Offset::parse(s).ok_or_else(|| format!("malformed offset {s:?}"))?),
    };
    Ok(ReadQuery { from, live, cursor })
}

/// The cursor a live response carries: the current 20-second interval since 2024-10-09, or,
/// when the client's cursor is not behind it, a little past the client's, so a response is
/// never cached under a cursor a client already used.
pub fn next_cursor(client: Option<u64>, now_ms: i64) -> u64 {
    const EPOCH_MS: i64 = 1_728_432_000_000;
    let interval = ((now_ms - EPOCH_MS).max(0) / 20_000) as u64;
    match client {
        Some(c) if c >= interval => c + 1 + (now_ms.unsigned_abs() % 180),
        _ => interval,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_round_trip_and_sort_as_strings() {
        let a = Offset { seg: 0, pos: 9 };
        let b = Offset { seg: 0, pos: 10 };
        let c = Offset { seg: 1, pos: 0 };
        assert_eq!(a.to_string(), "0000000000000000_0000000000000009");
        assert_eq!(Offset::parse(&b.to_string()), Some(b));
        assert!(a.to_string() < b.to_string() && b.to_string() < c.to_string());
        assert!(a < b && b < c);
        for bad in [
            "",
            "0_0",
            "0000000000000000_000000000000000a",
            "0000000000000000-0000000000000000",
            "0000000000000000_0000000000000000\n",
            " 0000000000000000_0000000000000000",
        ] {
            assert_eq!(Offset::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn queries_are_strict() {
        assert_eq!(parse_query(None).unwrap().from, ReadFrom::Start);
        assert_eq!(
            parse_query(Some("offset=-1")).unwrap().from,
            ReadFrom::Start
        );
        assert_eq!(
            parse_query(Some("offset=now&foo=bar")).unwrap().from,
            ReadFrom::Now
        );
        for bad in [
            "offset=",
            "offset=a&offset=b",
            "offset=0,1",
            "offset=0%201",
            "live=sse",
            "live=long-poll",
            "offset=../x",
        ] {
            assert!(parse_query(Some(bad)).is_err(), "{bad}");
        }
        let q = parse_query(Some(
            "offset=0000000000000000_0000000000000003&live=sse&cursor=7",
        ))
        .unwrap();
        assert_eq!(q.live, Live::Sse);
        assert_eq!(q.cursor, Some(7));
    }

    #[test]
    fn an_echoed_cursor_always_moves_forward() {
        let now = 1_800_000_000_000;
        let current = next_cursor(None, now);
        assert!(next_cursor(Some(current), now) > current);
        assert!(next_cursor(Some(current + 50), now) > current + 50);
        assert_eq!(next_cursor(Some(1), now), current);
    }
}
