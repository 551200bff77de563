//! The creation-time index of stream records and the listing query served from it.
//!
//! Each record has an index key `bytime/<i64::MAX - created_at µs, 20 digits>/<stream id>`,
//! written in the same batch as the record, so a forward scan yields streams newest first. A page
//! resumes after an opaque cursor, and one page examines a bounded number of index entries, so a
//! filter that matches rarely costs bounded work per request: the page may come back short with a
//! cursor to continue from. The cursor names the last index entry examined only when that
//! stream is one the caller may see; otherwise it is that entry's creation time and its place
//! among the entries of that microsecond (`<time>/#<n>`), so paging never reveals the id of a
//! stream the caller may not read.

use chrono::{DateTime, Utc};
use rocksdb::{Direction, IteratorMode, DB};

use super::{decode, key, Error, StreamRecord, StreamState};

pub(super) const INDEX_PREFIX: &str = "bytime/";
/// Marks a database whose index covers every record.
pub(super) const INDEX_READY: &str = "meta/bytime_index_v1";
/// Most index entries one page examines.
pub const MAX_SCAN: usize = 10_000;

/// The index key of a record.
pub(super) fn index_key(record: &StreamRecord) -> Vec<u8> {
    let micros = record.created_at.timestamp_micros().max(0);
    format!(
        "{INDEX_PREFIX}{:020}/{}",
        i64::MAX - micros,
        record.stream_id
    )
    .into_bytes()
}

/// Which streams to list.
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    /// Only streams in this state.
    pub state: Option<StreamState>,
    /// Only types starting with this (`service:`, `service:action`, a full type).
    pub type_prefix: Option<String>,
    /// Only streams created strictly after this instant.
    pub created_after: Option<DateTime<Utc>>,
    /// Most streams in the page.
    pub limit: usize,
    /// Continue after this cursor (from a previous page's `next_cursor`).
    pub cursor: Option<Cursor>,
}

/// A position in the listing, opaque to clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor(String);

impl Cursor {
    /// Parses a client's cursor; `None` if it is not one this store could have issued.
    pub fn parse(raw: &str) -> Option<Cursor> {
        let (inv, rest) = raw.split_once('/')?;
        let ok_inv = inv.len() == 20 && inv.bytes().all(|b| b.is_ascii_digit());
        let ok_rest = match rest.strip_prefix('#') {
            Some(n) => (1..=20).contains(&n.len()) && n.parse::<u64>().is_ok(),
            None => {
                (1..=200).contains(&rest.len())
                    && rest
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            }
        };
        (ok_inv && ok_rest).then(|| Cursor(raw.to_owned()))
    }

    /// The cursor's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Where the scan starts, and how many entries of that time to pass over first (a `#<n>`
    /// cursor) or whether the entry at the start is the last one returned (skipped).
    fn start(&self) -> (Vec<u8>, Start) {
        match self.0.split_once("/#") {
            Some((inv, n)) => (
                format!("{INDEX_PREFIX}{inv}/").into_bytes(),
                Start::Pass(n.parse().unwrap_or(0)),
            ),
            None => (
                format!("{INDEX_PREFIX}{}", self.0).into_bytes(),
                Start::After,
            ),
        }
    }
}

enum Start {
    /// Skip the entry the scan starts on, if it is there.
    After,
    /// Pass over this many entries of the start's time.
    Pass(u64),
}

/// The cursor after `last` (an index key without the prefix): the key itself if its stream is
/// in the page, else its time and its place among that time's entries.
fn cursor_after(db: &DB, last: &[u8], returned: bool) -> Result<Option<Cursor>, Error> {
    let Ok(text) = std::str::from_utf8(last) else {
        return Ok(None);
    };
    if returned {
        return Ok(Some(Cursor(text.to_owned())));
    }
    let Some((inv, _)) = text.split_once('/') else {
        return Ok(None);
    };
    let group = format!("{INDEX_PREFIX}{inv}/").into_bytes();
    let mut n = 0u64;
    for item in db.iterator(IteratorMode::From(&group, Direction::Forward)) {
        let (k, _) = item?;
        if !k.starts_with(&group) || k[INDEX_PREFIX.len()..] > *last {
            break;
        }
        n += 1;
    }
    Ok(Some(Cursor(format!("{inv}/#{n}"))))
}

/// One page of the listing.
#[derive(Debug)]
pub struct Page {
    /// Matching records, newest first.
    pub records: Vec<StreamRecord>,
    /// Where the next page starts; `None` when the listing is complete.
    pub next_cursor: Option<Cursor>,
}

impl ListQuery {
    fn matches(&self, r: &StreamRecord) -> bool {
        self.state.is_none_or(|s| s == r.state)
            && self
                .type_prefix
                .as_deref()
                .is_none_or(|p| r.request.event_type.to_string().starts_with(p))
    }
}

/// Runs a listing query on the database, keeping the records `visible` accepts.
pub(super) fn list(
    db: &DB,
    q: &ListQuery,
    visible: &dyn Fn(&StreamRecord) -> bool,
) -> Result<Page, Error> {
    scan(db, q, visible, MAX_SCAN)
}

/// [`list`], examining at most `max_scan` entries.
fn scan(
    db: &DB,
    q: &ListQuery,
    visible: &dyn Fn(&StreamRecord) -> bool,
    max_scan: usize,
) -> Result<Page, Error> {
    let (start, mut skip) = match &q.cursor {
        Some(c) => c.start(),
        None => (INDEX_PREFIX.as_bytes().to_vec(), Start::Pass(0)),
    };
    let mut records = Vec::new();
    let mut last: Option<(Vec<u8>, bool)> = None;
    let mut examined = 0;
    for item in db.iterator(IteratorMode::From(&start, Direction::Forward)) {
        let (k, _) = item?;
        let Some(rest) = k.strip_prefix(INDEX_PREFIX.as_bytes()) else {
            return Ok(Page {
                records,
                next_cursor: None,
            });
        };
        match &mut skip {
            Start::After if *k == *start => continue,
            Start::Pass(n) if *n > 0 && k.starts_with(&start) => {
                *n -= 1;
                continue;
            }
            _ => {}
        }
        if records.len() >= q.limit || examined >= max_scan {
            break;
        }
        examined += 1;
        last = Some((rest.to_vec(), false));
        let Some(id) = std::str::from_utf8(rest)
            .ok()
            .and_then(|r| r.split_once('/'))
        else {
            continue;
        };
        let Some(bytes) = db.get_pinned(key(id.1))? else {
            continue;
        };
        let Ok(record) = decode(id.1, &bytes) else {
            continue;
        };
        if q.created_after.is_some_and(|t| record.created_at <= t) {
            // Newest first: everything further on is older still.
            return Ok(Page {
                records,
                next_cursor: None,
            });
        }
        if q.matches(&record) && visible(&record) {
            records.push(record);
            last = Some((rest.to_vec(), true));
        }
    }
    let next_cursor = match last {
        Some((key, returned)) => cursor_after(db, &key, returned)?,
        None => None,
    };
    Ok(Page {
        records,
        next_cursor,
    })
}

/// Writes the index entry of every record, once, for databases made before the index existed.
pub(super) fn backfill(db: &DB) -> Result<(), Error> {
    if db.get_pinned(INDEX_READY)?.is_some() {
        return Ok(());
    }
    let mut batch = rocksdb::WriteBatch::default();
    for item in db.prefix_iterator(super::STREAM_PREFIX.as_bytes()) {
        let (k, v) = item?;
        let Some(id) = k.strip_prefix(super::STREAM_PREFIX.as_bytes()) else {
            break;
        };
        if let Ok(r) = decode(&String::from_utf8_lossy(id), &v) {
            batch.put(index_key(&r), b"");
        }
    }
    batch.put(INDEX_READY, b"1");
    db.write(batch)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Request;
    use crate::store::{Durability, Store};

    fn record(id: &str, kind: &str, state: StreamState, age_s: i64) -> StreamRecord {
        let body = format!(r#"{{"type":"{kind}:v1:requested"}}"#);
        let mut r = StreamRecord::new(id, Request::parse(body.as_bytes(), 1024).unwrap());
        r.state = state;
        r.created_at = Utc::now() - chrono::Duration::seconds(age_s);
        r
    }

    fn ids(page: &Page) -> Vec<&str> {
        page.records.iter().map(|r| r.stream_id.as_str()).collect()
    }

    #[tokio::test]
    async fn lists_newest_first_with_filters_and_cursor_pages() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let demo = "demo:stream_ticks";
        let msgs = "messaging:stream_messages";
        for (id, kind, state, age) in [
            ("a", demo, StreamState::Success, 50),
            ("b", msgs, StreamState::Running, 40),
            ("c", demo, StreamState::Failed, 30),
            ("d", demo, StreamState::Running, 20),
            ("e", msgs, StreamState::Success, 10),
        ] {
            let r = record(id, kind, state, age);
            store.put(&r, Durability::Buffered).await.unwrap();
            // A second write of the same record must not add a second index entry.
            store.put(&r, Durability::Buffered).await.unwrap();
        }
        let all = |limit| ListQuery {
            limit,
            ..ListQuery::default()
        };
        let page = store.list(all(10)).await.unwrap();
        assert_eq!(ids(&page), ["e", "d", "c", "b", "a"]);
        assert_eq!(page.next_cursor, None);

        let first = store.list(all(2)).await.unwrap();
        assert_eq!(ids(&first), ["e", "d"]);
        let second = store
            .list(ListQuery {
                cursor: first.next_cursor.clone(),
                ..all(2)
            })
            .await
            .unwrap();
        assert_eq!(ids(&second), ["c", "b"]);
        let third = store
            .list(ListQuery {
                cursor: second.next_cursor.clone(),
                ..all(2)
            })
            .await
            .unwrap();
        assert_eq!(ids(&third), ["a"]);
        assert_eq!(third.next_cursor, None);

        let running = store
            .list(ListQuery {
                state: Some(StreamState::Running),
                ..all(10)
            })
            .await
            .unwrap();
        assert_eq!(ids(&running), ["d", "b"]);
        let demo_only = store
            .list(ListQuery {
                type_prefix: Some("demo:".into()),
                ..all(10)
            })
            .await
            .unwrap();
        assert_eq!(ids(&demo_only), ["d", "c", "a"]);
        let recent = store
            .list(ListQuery {
                created_after: Some(Utc::now() - chrono::Duration::seconds(35)),
                ..all(10)
            })
            .await
            .unwrap();
        assert_eq!(ids(&recent), ["e", "d", "c"]);

        store.delete("d").await.unwrap();
        store.bury(vec!["b".into()]).await.unwrap();
        assert_eq!(ids(&store.list(all(10)).await.unwrap()), ["e", "c", "a"]);
    }

    #[tokio::test]
    async fn a_database_from_before_the_index_is_backfilled_once() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .put(
                    &record("old", "demo:stream_ticks", StreamState::Success, 5),
                    Durability::Sync,
                )
                .await
                .unwrap();
            // Simulate the old layout: no index entries and no marker.
            let mut batch = rocksdb::WriteBatch::default();
            batch.delete_range(INDEX_PREFIX.as_bytes(), b"bytime0");
            batch.delete(INDEX_READY);
            store.db.write(batch).unwrap();
            assert!(store
                .list(ListQuery {
                    limit: 5,
                    ..ListQuery::default()
                })
                .await
                .unwrap()
                .records
                .is_empty());
        }
        let store = Store::open(dir.path()).unwrap();
        let page = store
            .list(ListQuery {
                limit: 5,
                ..ListQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(ids(&page), ["old"]);
    }

    #[tokio::test]
    async fn a_page_cursor_never_names_a_stream_the_caller_may_not_see() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let demo = "demo:stream_ticks";
        // Two streams of one microsecond, other owners' between the caller's.
        let same = Utc::now() - chrono::Duration::seconds(5);
        for (id, age) in [
            ("mine-1", 1),
            ("theirs-a", 5),
            ("theirs-b", 5),
            ("theirs-c", 7),
            ("mine-2", 9),
        ] {
            let mut r = record(id, demo, StreamState::Running, age);
            if age == 5 {
                r.created_at = same;
            }
            store.put(&r, Durability::Buffered).await.unwrap();
        }
        let mine = |r: &StreamRecord| r.stream_id.starts_with("mine-");
        // Pages that examine one entry each: most end on another owner's stream.
        let (mut seen, mut cursors, mut cursor) = (Vec::new(), Vec::new(), None);
        loop {
            let q = ListQuery {
                limit: 10,
                cursor: cursor.clone(),
                ..ListQuery::default()
            };
            let page = scan(&store.db, &q, &mine, 1).unwrap();
            seen.extend(ids(&page).iter().map(|s| s.to_string()));
            let Some(next) = page.next_cursor else { break };
            assert!(
                !next.as_str().contains("theirs"),
                "cursor {next:?} names a hidden stream"
            );
            assert_eq!(Cursor::parse(next.as_str()).as_ref(), Some(&next));
            cursors.push(next.as_str().to_owned());
            cursor = Some(next);
            assert!(
                cursors.len() <= 5,
                "a hidden cursor must move on: {cursors:?}"
            );
        }
        assert_eq!(
            seen,
            ["mine-1", "mine-2"],
            "each visible stream once, in order"
        );
        // A page per entry; the last one reaches the end of the index and needs no cursor.
        assert_eq!(cursors.len(), 4, "{cursors:?}");
        assert!(
            cursors[1].ends_with("/#1") && cursors[2].ends_with("/#2"),
            "{cursors:?}"
        );
    }

    #[test]
    fn only_cursors_the_store_could_issue_are_accepted() {
        assert!(Cursor::parse("09223370270000000000/abc-1.x_y").is_some());
        assert!(Cursor::parse("09223370270000000000/#2").is_some());
        assert!(Cursor::parse("09223370270000000000/#").is_none());
        assert!(Cursor::parse("09223370270000000000/#x").is_none());
        for bad in [
            "",
            "abc",
            "123/abc",
            "0922337027000000000x/a",
            "09223370270000000000/",
            "09223370270000000000/a b",
            "09223370270000000000/../x/y",
        ] {
            assert!(Cursor::parse(bad).is_none(), "{bad}");
        }
    }
}
