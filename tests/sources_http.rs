//! HTTP-sourced streams against a real HTTP upstream (an axum server started by each test) and
//! the real broker: NDJSON and SSE relays, resume after a dropped body with the cursor, poll mode,
//! every failure mapping, and request-forgery attempts through payload values.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use common::*;
use serde_json::{json, Value};
use sluice::settings::{HttpFormat, HttpSourceSettings, SourceSettings};

#[derive(Default)]
struct Upstream {
    calls: AtomicU64,
    seen: Mutex<Vec<(String, Option<String>, Value)>>,
}

type Up = Arc<Upstream>;

fn cursor_of(headers: &HeaderMap, body: &Value) -> u64 {
    let header = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    header.or(body["cursor"].as_u64()).unwrap_or(0)
}

fn record(up: &Up, uri: &Uri, headers: &HeaderMap, body: &Value) -> u64 {
    let call = up.calls.fetch_add(1, Ordering::SeqCst) + 1;
    let lei = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    up.seen
        .lock()
        .unwrap()
        .push((uri.path().to_owned(), lei, body.clone()));
    call
}

/// NDJSON items `after+1 ..= total`, each `{"id": n, "q": …}`; with `?drop=1`, a call without
/// a cursor breaks off after three items.
async fn ndjson(
    State(up): State<Up>,
    Path(q): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: axum::Json<Value>,
) -> Response {
    record(&up, &uri, &headers, &body);
    let after = cursor_of(&headers, &body);
    let total = 8u64;
    // The first call (no cursor yet) breaks off.
    let drop_first = uri.query() == Some("drop=1") && after == 0;
    let stream = futures::stream::unfold(after + 1, move |n| {
        let q = q.clone();
        async move {
            if n > total {
                return None;
            }
            if drop_first && n == 4 {
                // Let the first three items reach the client, then break the connection off.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Some((Err(std::io::Error::other("connection reset")), total + 1));
            }
            Some((Ok(format!("{}\n", json!({"id": n, "q": q}))), n + 1))
        }
    });
    (
        [("content-type", "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response()
}

async fn sse(
    State(up): State<Up>,
    uri: Uri,
    headers: HeaderMap,
    body: axum::Json<Value>,
) -> Response {
    record(&up, &uri, &headers, &body);
    let after = cursor_of(&headers, &body);
    let mut text = String::from(": upstream\n\n");
    for n in after + 1..=5 {
        text.push_str(&format!("id: {n}\nevent: item\ndata: {{\"n\": {n}}}\n\n"));
    }
    ([("content-type", "text/event-stream")], text).into_response()
}

async fn status_after(
    State(up): State<Up>,
    Path(code): Path<u16>,
    uri: Uri,
    headers: HeaderMap,
    body: axum::Json<Value>,
) -> Response {
    let call = record(&up, &uri, &headers, &body);
    // `/status/503` fails twice, then streams; other codes always fail.
    if code == 503 && call > 2 {
        return "{\"ok\": true}\n".into_response();
    }
    (StatusCode::from_u16(code).unwrap(), "no").into_response()
}

async fn malformed(
    State(up): State<Up>,
    uri: Uri,
    headers: HeaderMap,
    body: axum::Json<Value>,
) -> Response {
    record(&up, &uri, &headers, &body);
    "{\"a\":1}\n{\"a\":2}\n{not json}\n{\"a\":4}\n".into_response()
}

async fn poll(State(up): State<Up>, uri: Uri, headers: HeaderMap) -> Response {
    let n = record(&up, &uri, &headers, &Value::Null);
    axum::Json(json!({"poll": n, "host": uri.query()})).into_response()
}

async fn echo(
    State(up): State<Up>,
    uri: Uri,
    headers: HeaderMap,
    body: axum::Json<Value>,
) -> Response {
    record(&up, &uri, &headers, &body);
    format!("{}\n", json!({"path": uri.path(), "query": uri.query()})).into_response()
}

async fn upstream() -> (Up, String) {
    let up = Up::default();
    let app = Router::new()
        .route("/ndjson/{q}", post(ndjson))
        .route("/sse", post(sse))
        .route("/status/{code}", post(status_after))
        .route("/malformed", post(malformed))
        .route("/poll", get(poll))
        .route("/seg/{*rest}", post(echo))
        .with_state(up.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (up, format!("http://{addr}"))
}

fn http(url: String, f: impl FnOnce(&mut HttpSourceSettings)) -> SourceSettings {
    let mut s = HttpSourceSettings {
        url,
        method: None,
        format: None,
        cursor: None,
        connect_timeout: Duration::from_secs(2),
        retries: 3,
        poll_interval: None,
        headers: BTreeMap::new(),
    };
    f(&mut s);
    SourceSettings::Http(s)
}

async fn run_stream(app: &TestApp, kind: &str, payload: Value) -> Vec<SseEvent> {
    let id = app
        .request(json!({"type": format!("{kind}:v1:requested"), "payload": payload}))
        .await;
    app.sse(&id, None).await.collect().await
}

fn failure(events: &[SseEvent]) -> (String, String) {
    let last = events.last().unwrap();
    assert_eq!(last.state(), "failed", "{:?}", last.data);
    (
        last.data["payload"]["code"].as_str().unwrap().to_owned(),
        last.data["payload"]["message"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndjson_and_sse_relays_stream_in_order_and_resume_after_a_dropped_body() {
    let (up, base) = upstream().await;
    let app = start(|s| {
        let h = &mut s.handlers.sources;
        h.insert(
            "relay:stream_nd".into(),
            http(format!("{base}/ndjson/{{q}}"), |h| {
                h.cursor = Some("id".into())
            }),
        );
        h.insert(
            "relay:stream_drop".into(),
            http(format!("{base}/ndjson/{{q}}?drop=1"), |h| {
                h.cursor = Some("id".into())
            }),
        );
        h.insert(
            "relay:stream_sse".into(),
            http(format!("{base}/sse"), |h| h.format = Some(HttpFormat::Sse)),
        );
    })
    .await;
    let events = run_stream(&app, "relay:stream_nd", json!({"q": "cats"})).await;
    assert_complete_with(&events, 8, "success", |n, e| {
        assert_eq!(e.data["payload"], json!({"id": n, "q": "cats"}));
    });
    let first = up.seen.lock().unwrap()[0].2.clone();
    assert_eq!(first["payload"], json!({"q": "cats"}));
    assert_eq!(first["type"], "relay:stream_nd:v1:requested");
    assert!(
        first["stream_id"].is_string() && first["cursor"].is_null(),
        "{first}"
    );

    // The body breaks off after three items; the reconnect carries the cursor, and no item repeats.
    let before = up.calls.load(Ordering::SeqCst);
    let events = run_stream(&app, "relay:stream_drop", json!({"q": "dogs"})).await;
    assert_complete_with(&events, 8, "success", |n, e| {
        assert_eq!(e.data["payload"]["id"], n)
    });
    let seen = up.seen.lock().unwrap()[before as usize..].to_vec();
    assert_eq!(seen.len(), 2, "one reconnect: {seen:?}");
    assert_eq!(
        seen[1].1.as_deref(),
        Some("3"),
        "Last-Event-ID is the last cursor"
    );
    assert_eq!(seen[1].2["cursor"], 3, "the body carries the cursor too");

    let events = run_stream(&app, "relay:stream_sse", json!({})).await;
    assert_complete_with(&events, 5, "success", |n, e| {
        assert_eq!(e.data["payload"], json!({"n": n}))
    });
    app.shutdown().await;
}

/// Like `assert_complete`, with a check of each chunk `n` (1-based).
fn assert_complete_with(
    events: &[SseEvent],
    n: u64,
    terminal: &str,
    check: impl Fn(u64, &SseEvent),
) {
    let seqs: Vec<u64> = events
        .iter()
        .map(|e| e.data["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        seqs,
        (0..=n + 1).collect::<Vec<_>>(),
        "{:?}",
        events.iter().map(|e| &e.data).collect::<Vec<_>>()
    );
    assert_eq!(
        events.last().unwrap().state(),
        terminal,
        "{:?}",
        events.last().unwrap().data
    );
    for (i, e) in events[1..=n as usize].iter().enumerate() {
        check(i as u64 + 1, e);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_upstream_failure_maps_to_a_precise_terminal_event() {
    let (up, base) = upstream().await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let app = start(|s| {
        let h = &mut s.handlers.sources;
        h.insert(
            "up:stream_flaky".into(),
            http(format!("{base}/status/503"), |_| {}),
        );
        h.insert(
            "up:stream_down".into(),
            http(format!("{base}/status/502"), |h| h.retries = 2),
        );
        h.insert(
            "up:stream_refused".into(),
            http(format!("http://{closed}/x"), |h| h.retries = 1),
        );
        h.insert(
            "up:stream_forbidden".into(),
            http(format!("{base}/status/403"), |_| {}),
        );
        h.insert(
            "up:stream_missing".into(),
            http(format!("{base}/status/404"), |_| {}),
        );
        h.insert(
            "up:stream_bad".into(),
            http(format!("{base}/malformed"), |_| {}),
        );
    })
    .await;
    // 503 twice, then a good body: retried, and the stream succeeds.
    let events = run_stream(&app, "up:stream_flaky", json!({})).await;
    assert_complete_with(&events, 1, "success", |_, e| {
        assert_eq!(e.data["payload"], json!({"ok": true}))
    });
    assert_eq!(up.calls.load(Ordering::SeqCst), 3);

    let before = up.calls.load(Ordering::SeqCst);
    let (code, msg) = failure(&run_stream(&app, "up:stream_down", json!({})).await);
    assert_eq!(code, "upstream_unavailable", "{msg}");
    assert!(msg.contains("502"), "{msg}");
    assert_eq!(
        up.calls.load(Ordering::SeqCst) - before,
        3,
        "the first call and 2 retries"
    );

    let (code, msg) = failure(&run_stream(&app, "up:stream_refused", json!({})).await);
    assert_eq!(code, "upstream_unavailable", "{msg}");

    for (kind, status) in [("up:stream_forbidden", "403"), ("up:stream_missing", "404")] {
        let before = up.calls.load(Ordering::SeqCst);
        let (code, msg) = failure(&run_stream(&app, kind, json!({})).await);
        assert_eq!(code, "upstream_rejected", "{msg}");
        assert!(msg.contains(status), "{msg}");
        assert_eq!(
            up.calls.load(Ordering::SeqCst) - before,
            1,
            "a 4xx is not retried"
        );
    }

    let events = run_stream(&app, "up:stream_bad", json!({})).await;
    assert_eq!(events.len(), 4, "started, two good lines, failed");
    let (code, msg) = failure(&events);
    assert_eq!(code, "upstream_malformed");
    assert!(msg.contains("line 3"), "{msg}");

    let metrics = app.metrics_text().await;
    for (result, at_least) in [
        ("server_error", 5),
        ("connect_error", 2),
        ("client_error", 2),
        ("malformed", 1),
    ] {
        let line = metrics
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "sluice_upstream_requests_total{{result=\"{result}\"}}"
                ))
            })
            .unwrap_or_else(|| panic!("{result}: {metrics}"));
        let n: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(n >= at_least, "{line}");
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_mode_emits_one_chunk_per_interval_until_cancelled() {
    let (up, base) = upstream().await;
    let app = start(|s| {
        s.handlers.sources.insert(
            "metrics:stream_cpu".into(),
            http(format!("{base}/poll?host={{host}}"), |h| {
                h.poll_interval = Some(Duration::from_millis(100))
            }),
        );
    })
    .await;
    let id = app
        .request(
            json!({"type": "metrics:stream_cpu:v1:requested", "payload": {"host": "db 1&x=2"}}),
        )
        .await;
    let mut sse = app.sse(&id, None).await;
    let mut chunks = Vec::new();
    while chunks.len() < 3 {
        let e = sse.next_event().await.unwrap();
        if e.state() == "stream" {
            chunks.push(e.data["payload"].clone());
        }
    }
    assert_eq!(chunks[0]["poll"], 1);
    assert_eq!(chunks[2]["poll"], 3);
    assert_eq!(
        chunks[0]["host"], "host=db%201%26x%3D2",
        "the value stays one query value"
    );
    let r = app.cancel(&id).await;
    assert_eq!(r.status(), 202);
    let rest = sse.collect().await;
    assert_eq!(rest.last().unwrap().state(), "cancelled");
    assert!(up.calls.load(Ordering::SeqCst) >= 3);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_values_cannot_change_the_upstream_host_or_escape_their_segment() {
    let (up, base) = upstream().await;
    let app = start(|s| {
        s.handlers.sources.insert(
            "x:stream_seg".into(),
            http(format!("{base}/seg/{{a}}/tail?b={{b}}"), |_| {}),
        );
    })
    .await;
    for evil in [
        "../../admin",
        "evil.com/",
        "@evil.com:1/",
        "x?b=admin#f",
        "%2e%2e",
    ] {
        let events = run_stream(&app, "x:stream_seg", json!({"a": evil, "b": evil})).await;
        assert_eq!(
            events.last().unwrap().state(),
            "success",
            "{evil}: {:?}",
            events.last().unwrap().data
        );
        let echoed = &events[1].data["payload"];
        let path = echoed["path"].as_str().unwrap();
        assert!(
            path.starts_with("/seg/") && path.ends_with("/tail"),
            "{evil}: {path}"
        );
        assert_eq!(path.matches('/').count(), 3, "{evil}: one segment: {path}");
        let query = echoed["query"].as_str().unwrap();
        assert!(
            query.starts_with("b=") && !query[2..].contains(['&', '=', '#']),
            "{evil}: {query}"
        );
    }
    for dots in ["..", "."] {
        let (code, msg) =
            failure(&run_stream(&app, "x:stream_seg", json!({"a": dots, "b": 1})).await);
        assert_eq!(code, "invalid_payload", "{dots}: {msg}");
    }
    let (code, msg) = failure(&run_stream(&app, "x:stream_seg", json!({"b": 1})).await);
    assert_eq!(code, "invalid_payload");
    assert!(msg.contains("\"a\""), "{msg}");
    // Every request the upstream saw arrived at this server, under /seg/.
    assert!(up
        .seen
        .lock()
        .unwrap()
        .iter()
        .all(|(p, _, _)| p.starts_with("/seg/")));
    app.shutdown().await;
}
