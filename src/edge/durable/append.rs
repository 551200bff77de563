//! `POST`: appends to a stream, closes it, or both, with idempotent producers
//! (`Producer-Id`/`-Epoch`/`-Seq`) and writer sequence numbers (`Stream-Seq`).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use axum::response::Response;

use super::access::{SubOwner, Verb};
use super::offset::Offset;
use super::reply::{self, Req};
use super::state::{self, ClosedBy, Entry, ProducerState, State, PRODUCER_OVERHEAD};
use super::{now_ms, Durable, Found};

/// Longest `Producer-Id`, bytes.
const MAX_PRODUCER_ID: usize = 256;

/// An idempotent producer's headers.
#[derive(Clone)]
struct Producer {
    id: String,
    epoch: u64,
    seq: u64,
}

/// What the producer check decided.
enum Verdict {
    /// Write it.
    Accept,
    /// Already written: answer as if written.
    Duplicate(u64),
    /// Refuse with this response.
    Refuse(Response),
}

fn parse_producer(req: &Req) -> Result<Option<Producer>, &'static str> {
    let (id, epoch, seq) = (
        req.header("producer-id"),
        req.header("producer-epoch"),
        req.header("producer-seq"),
    );
    let number = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse::<u64>().ok().filter(|n| *n < (1u64 << 53))
    };
    match (id, epoch, seq) {
        (None, None, None) => Ok(None),
        (Some(id), Some(epoch), Some(seq)) => {
            if id.is_empty() || id.len() > MAX_PRODUCER_ID {
                return Err("Producer-Id must be 1-256 bytes");
            }
            Ok(Some(Producer {
                id: id.to_owned(),
                epoch: number(epoch).ok_or("Producer-Epoch must be a whole number")?,
                seq: number(seq).ok_or("Producer-Seq must be a whole number")?,
            }))
        }
        _ => Err("Producer-Id, Producer-Epoch and Producer-Seq go together"),
    }
}

fn check(st: &State, p: &Producer) -> Verdict {
    let conflict = |expected: u64| {
        Verdict::Refuse(reply::finish(
            reply::builder(StatusCode::CONFLICT)
                .header("producer-expected-seq", expected.to_string())
                .header("producer-received-seq", p.seq.to_string()),
            "producer sequence gap",
        ))
    };
    match st.meta.producers.get(&p.id) {
        None if p.seq == 0 => Verdict::Accept,
        None => conflict(0),
        Some(s) if p.epoch < s.epoch => Verdict::Refuse(reply::finish(
            reply::builder(StatusCode::FORBIDDEN).header("producer-epoch", s.epoch.to_string()),
            "stale producer epoch",
        )),
        Some(s) if p.epoch > s.epoch => {
            if p.seq == 0 {
                Verdict::Accept
            } else {
                Verdict::Refuse(reply::error(
                    StatusCode::BAD_REQUEST,
                    "a new producer epoch starts at seq 0",
                ))
            }
        }
        Some(s) if p.seq <= s.seq => Verdict::Duplicate(s.seq),
        Some(s) if p.seq == s.seq + 1 => Verdict::Accept,
        Some(s) => conflict(s.seq + 1),
    }
}

fn producer_headers(
    b: axum::http::response::Builder,
    epoch: u64,
    seq: u64,
) -> axum::http::response::Builder {
    b.header("producer-epoch", epoch.to_string())
        .header("producer-seq", seq.to_string())
}

fn done(status: StatusCode, st: &State, producer: Option<(u64, u64)>) -> Response {
    let mut b = reply::builder(status).header("stream-next-offset", st.tail.to_string());
    if st.meta.closed {
        b = b.header("stream-closed", "true");
    }
    if let Some((epoch, seq)) = producer {
        b = producer_headers(b, epoch, seq);
    }
    reply::finish(b, Body::empty())
}

/// Handles `POST`.
pub async fn post(d: &Arc<Durable>, req: &Req, body: Bytes) -> Response {
    let producer = match parse_producer(req) {
        Ok(p) => p,
        Err(e) => return reply::error(StatusCode::BAD_REQUEST, e),
    };
    let close = req.flag("stream-closed");
    if body.is_empty() && !close {
        return reply::error(StatusCode::BAD_REQUEST, "empty body");
    }
    let content_type = req.header("content-type").filter(|c| !c.trim().is_empty());
    if !body.is_empty() && content_type.is_none() {
        return reply::error(StatusCode::BAD_REQUEST, "Content-Type is required");
    }
    let stream = match d.reach(&req.path, &req.caller, Verb::Write).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let mut st = stream.state.lock().await;
    st.touch(now_ms());
    let tuple = producer.as_ref().map(|p| ClosedBy {
        id: p.id.clone(),
        epoch: p.epoch,
        seq: p.seq,
    });
    if st.meta.closed {
        if tuple.is_some() && st.meta.closed_by == tuple {
            let p = producer.as_ref().map(|p| (p.epoch, p.seq));
            return done(StatusCode::NO_CONTENT, &st, p);
        }
        if body.is_empty() && producer.is_none() {
            return done(StatusCode::NO_CONTENT, &st, None);
        }
        return reply::closed_conflict(st.tail);
    }
    if let Some(t) = content_type.filter(|_| !body.is_empty()) {
        if state::normalise(t) != state::normalise(&st.meta.content_type) {
            return reply::error(
                StatusCode::CONFLICT,
                "content type differs from the stream's",
            );
        }
    }
    // Bytes a new producer was admitted with, returned if the write fails.
    let mut admitted = 0;
    if let Some(p) = &producer {
        match check(&st, p) {
            Verdict::Accept if !st.meta.producers.contains_key(&p.id) => {
                match admit_producer(d, &mut st, &p.id) {
                    Ok(n) => admitted = n,
                    Err(r) => return *r,
                }
            }
            Verdict::Accept => {}
            Verdict::Duplicate(last) => {
                let epoch = st.meta.producers.get(&p.id).map_or(p.epoch, |s| s.epoch);
                return done(StatusCode::NO_CONTENT, &st, Some((epoch, last)));
            }
            Verdict::Refuse(r) => return r,
        }
    }
    let stream_seq = req.header("stream-seq");
    if let (Some(new), Some(last)) = (stream_seq, st.meta.stream_seq.as_deref()) {
        if new.as_bytes() <= last.as_bytes() {
            return reply::error(StatusCode::CONFLICT, "Stream-Seq is not above the last one");
        }
    }
    if !body.is_empty() {
        let who = producer.as_ref().map(|p| (p.id.as_str(), p.epoch, p.seq));
        if let Err(r) = write(d, &stream.path, &mut st, &body, who, stream_seq).await {
            st.own_bytes -= admitted;
            d.release(st.meta.owner.as_deref(), admitted);
            return r;
        }
    }
    if let Some(s) = stream_seq {
        st.meta.stream_seq = Some(s.to_owned());
    }
    if let Some(p) = &producer {
        st.meta.producers.insert(
            p.id.clone(),
            ProducerState {
                epoch: p.epoch,
                seq: p.seq,
            },
        );
    }
    if close {
        st.meta.closed = true;
        st.meta.closed_by = tuple;
    }
    d.save(&stream.path, &st, close).await;
    stream.notify();
    if !body.is_empty() {
        d.subs.touch(&stream.path, false);
    }
    let status = if producer.is_some() && !body.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::NO_CONTENT
    };
    done(status, &st, producer.map(|p| (p.epoch, p.seq)))
}

/// Makes room for a new producer in a stream's table: within
/// `durable.max_producers_per_stream` (400 past it: forgetting one would break its retries), and
/// with its bytes counted in the stream's and the server's byte budgets (413, 507).
fn admit_producer(d: &Durable, st: &mut State, id: &str) -> Result<usize, Box<Response>> {
    let max = d.settings.max_producers_per_stream;
    if st.meta.producers.len() >= max {
        d.metrics.edge_rejected(
            "ds_too_many_producers",
            &format!("durable: a stream has {max} producers (durable.max_producers_per_stream)"),
        );
        return Err(Box::new(reply::error(
            StatusCode::BAD_REQUEST,
            "too many producers on this stream (durable.max_producers_per_stream)",
        )));
    }
    let bytes = id.len() + PRODUCER_OVERHEAD;
    if st.own_bytes + bytes > d.settings.max_stream_bytes {
        return Err(Box::new(reply::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "stream is full",
        )));
    }
    d.reserve(st.meta.owner.as_deref(), bytes)
        .map_err(|full| Box::new(full.reply(d)))?;
    st.own_bytes += bytes;
    Ok(bytes)
}

/// Appends `body` to a stream's state and topic: JSON split into items, within the stream's and
/// the server's byte budgets, acknowledged by Kafka before it is held.
async fn write(
    d: &Durable,
    path: &str,
    st: &mut State,
    body: &[u8],
    who: Option<(&str, u64, u64)>,
    stream_seq: Option<&str>,
) -> Result<(), Response> {
    let json = state::is_json(&st.meta.content_type);
    let (data, items) = if json {
        match state::json_items(body) {
            Ok((_, 0)) => return Err(reply::error(StatusCode::BAD_REQUEST, "empty JSON array")),
            Ok(x) => x,
            Err(_) => return Err(reply::error(StatusCode::BAD_REQUEST, "body is not JSON")),
        }
    } else {
        (body.to_vec(), 0)
    };
    if st.own_bytes + data.len() > d.settings.max_stream_bytes {
        return Err(reply::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "stream is full",
        ));
    }
    store(d, path, st, data, items, who, stream_seq).await
}

/// Holds one record: reserves its bytes in the server's budget, writes it to the stream's topic
/// and, once Kafka acknowledged it, adds it to the stream's state (returning the bytes if the
/// write failed). Appends and the initial body of a `PUT` both come through here.
pub(super) async fn store(
    d: &Durable,
    path: &str,
    st: &mut State,
    data: Vec<u8>,
    items: usize,
    who: Option<(&str, u64, u64)>,
    stream_seq: Option<&str>,
) -> Result<(), Response> {
    let owner = st.meta.owner.clone();
    d.reserve(owner.as_deref(), data.len())
        .map_err(|full| full.reply(d))?;
    let k = match d.log.append(&st.meta.topic, &data, who, stream_seq).await {
        Ok(k) => k,
        Err(e) => {
            d.release(owner.as_deref(), data.len());
            tracing::warn!(error = %e, path, "durable append failed");
            return Err(reply::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "stream storage unavailable",
            ));
        }
    };
    let seg = st.meta.seg;
    st.push(Entry {
        end: Offset {
            seg,
            pos: k as u64 + 1,
        },
        data: data.into(),
        items,
    });
    Ok(())
}

impl Durable {
    /// Appends `body` to the JSON stream at `path` on behalf of subscription owner `by` (a
    /// wake event). Refused, with why, when the stream is missing, not `by`'s to write, closed or
    /// not JSON.
    pub(super) async fn append_internal(
        &self,
        path: &str,
        by: &SubOwner,
        body: Vec<u8>,
    ) -> Result<(), String> {
        let stream = match self.find(path).await {
            Found::Live(s) if by.may_write(&s) => s,
            _ => return Err("no such stream, or not the subscription owner's".into()),
        };
        let mut st = stream.state.lock().await;
        if st.meta.closed {
            return Err("stream is closed".into());
        }
        if !state::is_json(&st.meta.content_type) {
            return Err("stream is not application/json".into());
        }
        if let Err(r) = write(self, path, &mut st, &body, None, None).await {
            return Err(format!("append refused: {}", r.status()));
        }
        st.touch(now_ms());
        self.save(path, &st, false).await;
        stream.notify();
        drop(st);
        self.subs.touch(path, false);
        Ok(())
    }
}
