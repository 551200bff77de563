//! Reading an upstream's streaming body as items: NDJSON (one JSON document per line) or
//! Server-Sent Events (each event's `data` is one JSON document, its `id` a possible cursor).
//!
//! Memory is bounded: a line longer than the limit is an error, not a growing buffer. Line numbers
//! count from 1 over the whole body, so a malformed line is reported where it is.

use bytes::{Buf, BytesMut};
use serde_json::Value;

/// One item of an upstream body.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// The chunk payload.
    pub payload: Value,
    /// The SSE event id, if any.
    pub id: Option<String>,
}

/// Why a body could not be read as items.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// A line (or SSE data) that is not JSON.
    #[error("line {line}: not a JSON document: {error}")]
    NotJson {
        /// 1-based line number.
        line: u64,
        /// The parser's message.
        error: String,
    },
    /// A line over the limit.
    #[error("line {line} is longer than {limit} bytes")]
    TooLong {
        /// 1-based line number.
        line: u64,
        /// The limit.
        limit: usize,
    },
}

/// Splits bytes into lines, with a bound on line length.
pub struct Lines {
    buf: BytesMut,
    line: u64,
    limit: usize,
}

impl Lines {
    /// A splitter that refuses lines longer than `limit` bytes.
    pub fn new(limit: usize) -> Lines {
        Lines {
            buf: BytesMut::new(),
            line: 0,
            limit,
        }
    }

    /// Adds bytes from the body.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete line (without `\n` or `\r\n`) and its number; `at_end` takes a final
    /// unterminated line too.
    pub fn next_line(&mut self, at_end: bool) -> Result<Option<(u64, String)>, Malformed> {
        let end = match self.buf.iter().position(|b| *b == b'\n') {
            Some(i) => i,
            None if at_end && !self.buf.is_empty() => self.buf.len(),
            None => {
                if self.buf.len() > self.limit {
                    return Err(Malformed::TooLong {
                        line: self.line + 1,
                        limit: self.limit,
                    });
                }
                return Ok(None);
            }
        };
        self.line += 1;
        if end > self.limit {
            return Err(Malformed::TooLong {
                line: self.line,
                limit: self.limit,
            });
        }
        let mut line = self.buf.split_to(end).to_vec();
        if self.buf.has_remaining() {
            self.buf.advance(1);
        }
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let text = String::from_utf8(line).map_err(|e| Malformed::NotJson {
            line: self.line,
            error: e.to_string(),
        })?;
        Ok(Some((self.line, text)))
    }
}

/// NDJSON: each non-blank line is an item.
pub fn ndjson_item(line: u64, text: &str) -> Result<Option<Item>, Malformed> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    let payload = serde_json::from_str(text).map_err(|e| Malformed::NotJson {
        line,
        error: e.to_string(),
    })?;
    Ok(Some(Item { payload, id: None }))
}

/// SSE: accumulates fields; a blank line dispatches an event with data.
#[derive(Default)]
pub struct SseParser {
    data: Option<String>,
    id: Option<String>,
    first_line: u64,
}

impl SseParser {
    /// Feeds one line; returns an item when the line ends an event.
    pub fn line(&mut self, line: u64, text: &str) -> Result<Option<Item>, Malformed> {
        if text.is_empty() {
            let Some(data) = self.data.take() else {
                return Ok(None);
            };
            let payload = serde_json::from_str(&data).map_err(|e| Malformed::NotJson {
                line: self.first_line,
                error: e.to_string(),
            })?;
            return Ok(Some(Item {
                payload,
                id: self.id.clone(),
            }));
        }
        if text.starts_with(':') {
            return Ok(None);
        }
        let (field, value) = text.split_once(':').unwrap_or((text, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "data" => match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => {
                    self.first_line = line;
                    self.data = Some(value.to_owned());
                }
            },
            // The last event id persists across events, as in the SSE specification.
            "id" if !value.contains('\0') => self.id = Some(value.to_owned()),
            _ => {}
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn lines(input: &[&[u8]], limit: usize) -> Vec<Result<(u64, String), Malformed>> {
        let mut l = Lines::new(limit);
        let mut out = Vec::new();
        for part in input {
            l.push(part);
            while let Some(x) = l.next_line(false).transpose() {
                let stop = x.is_err();
                out.push(x);
                if stop {
                    return out;
                }
            }
        }
        while let Some(x) = l.next_line(true).transpose() {
            out.push(x);
        }
        out
    }

    #[test]
    fn lines_split_across_reads_and_are_bounded() {
        let got = lines(&[b"{\"a\":", b"1}\r\n{\"b\"", b":2}\n{\"c\":3}"], 100);
        let texts: Vec<_> = got.into_iter().map(|r| r.unwrap()).collect();
        assert_eq!(
            texts,
            vec![
                (1, r#"{"a":1}"#.to_owned()),
                (2, r#"{"b":2}"#.to_owned()),
                (3, r#"{"c":3}"#.to_owned())
            ]
        );
        let got = lines(&[b"ok\n", &[b'x'; 50]], 10);
        assert_eq!(
            got.last().unwrap(),
            &Err(Malformed::TooLong { line: 2, limit: 10 })
        );
    }

    #[test]
    fn ndjson_reports_the_malformed_line_number() {
        assert_eq!(ndjson_item(1, "").unwrap(), None);
        assert_eq!(
            ndjson_item(2, r#"{"x":1}"#).unwrap().unwrap().payload,
            json!({"x": 1})
        );
        match ndjson_item(7, "{nope") {
            Err(Malformed::NotJson { line: 7, .. }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sse_events_carry_data_and_ids() {
        let mut p = SseParser::default();
        let mut items = Vec::new();
        for (n, l) in [
            ": hi",
            "id: 4",
            "event: x",
            "data: {\"a\":",
            "data: 1}",
            "",
            "",
            "data: 2",
            "",
        ]
        .iter()
        .enumerate()
        {
            if let Some(i) = p.line(n as u64 + 1, l).unwrap() {
                items.push(i);
            }
        }
        assert_eq!(items[0].payload, json!({"a": 1}));
        assert_eq!(items[0].id.as_deref(), Some("4"));
        assert_eq!(items[1].payload, json!(2));
        let mut p = SseParser::default();
        p.line(3, "data: nope").unwrap();
        assert!(matches!(
            p.line(4, ""),
            Err(Malformed::NotJson { line: 3, .. })
        ));
    }
}
