//! The edge against the real broker: WebSocket requests, cancel and errors; HTTP API statuses;
//! SSE resume-point errors; authentication.

mod common;

use common::*;
use futures::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use common::ws::{connect as ws_connect, recv, send};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_request_streams_events_and_cancel_produces_cancelled() {
    let app = start(|_| {}).await;
    let mut ws = ws_connect(&app).await;
    send(&mut ws, ticks(json!({"count": 3, "interval_ms": 10}))).await;
    let accepted = recv(&mut ws).await;
    assert_eq!(accepted["type"], "accepted");
    let quick = accepted["stream_id"].as_str().unwrap().to_owned();
    let mut frames = Vec::new();
    loop {
        let f = recv(&mut ws).await;
        assert_eq!(f["stream_id"], quick.as_str());
        let done = f["type"].as_str().unwrap().ends_with(":success");
        frames.push(f);
        if done {
            break;
        }
    }
    let types: Vec<&str> = frames.iter().map(|f| f["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "demo:stream_ticks:v1:started",
            "demo:stream_ticks:v1:stream",
            "demo:stream_ticks:v1:stream",
            "demo:stream_ticks:v1:stream",
            "demo:stream_ticks:v1:success"
        ]
    );
    let seqs: Vec<u64> = frames.iter().map(|f| f["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [0, 1, 2, 3, 4]);
    assert!(frames
        .windows(2)
        .all(|w| w[0]["id"].as_i64() < w[1]["id"].as_i64()));

    // A long stream on the same socket, cancelled once it has started.
    send(&mut ws, ticks(json!({"count": 10000, "interval_ms": 20}))).await;
    let long = recv(&mut ws).await["stream_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let started = recv(&mut ws).await;
    assert_eq!(started["type"], "demo:stream_ticks:v1:started");
    send(&mut ws, json!({"type": "cancel", "stream_id": long})).await;
    let mut saw_cancelling = false;
    let last = loop {
        let f = recv(&mut ws).await;
        if f["type"] == "cancelling" {
            saw_cancelling = true;
            continue;
        }
        if f["type"].as_str().unwrap().ends_with(":stream") {
            continue;
        }
        break f;
    };
    assert!(saw_cancelling);
    assert_eq!(last["type"], "demo:stream_ticks:v1:cancelled");
    assert_eq!(last["stream_id"], long.as_str());

    // Resume over the socket: subscribe after the started event replays the rest, ending in cancelled.
    send(
        &mut ws,
        json!({"type": "subscribe", "stream_id": long, "last_event_id": started["id"]}),
    )
    .await;
    let first = recv(&mut ws).await;
    assert_eq!(first["stream_id"], long.as_str(), "{first}");
    // The next stored event: ids increase but are not contiguous (transaction markers take
    // offsets), so it is told by its seq.
    assert_eq!(first["seq"], 1, "{first}");
    assert!(first["id"].as_i64() > started["id"].as_i64(), "{first}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_bad_frames_get_error_frames_and_the_socket_stays_open() {
    let app = start(|_| {}).await;
    let mut ws = ws_connect(&app).await;
    let cases = [
        ("{not json", "malformed_json"),
        ("[1,2]", "malformed_json"),
        (r#"{"type":"nope"}"#, "invalid_type"),
        (r#"{"type":"demo:stream_ticks:v1:success"}"#, "wrong_state"),
        (
            r#"{"type":"billing:charge:v1:requested"}"#,
            "unknown_handler",
        ),
        (
            r#"{"type":"subscribe","stream_id":"bad/id"}"#,
            "invalid_stream_id",
        ),
        (
            r#"{"type":"subscribe","stream_id":"ok","last_event_id":"x"}"#,
            "invalid_last_event_id",
        ),
        (
            r#"{"type":"cancel","stream_id":"missing-stream"}"#,
            "not_found",
        ),
        (r#"{"type":"cancel"}"#, "invalid_frame"),
        (
            r#"{"type":"subscribe","stream_id":"ok","last_event_id":"9223372036854775807"}"#,
            "invalid_last_event_id",
        ),
    ];
    for (frame, code) in cases {
        ws.send(Message::Text(frame.into())).await.unwrap();
        let f = recv(&mut ws).await;
        assert_eq!(f["type"], "error", "{frame}");
        assert_eq!(f["payload"]["code"], code, "{frame}");
    }
    send(&mut ws, json!({"type": "foo123:stream_x:v1:requested"})).await;
    let f = recv(&mut ws).await;
    assert_eq!(f["payload"]["code"], "unknown_handler", "{f}");
    assert_eq!(f["payload"]["status"], 422, "{f}");
    send(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(recv(&mut ws).await["type"], "pong");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_api_statuses() {
    let app = start(|s| s.intake.max_request_bytes = 256).await;
    let post = |body: String| app.http.post(app.url("/v1/streams")).body(body).send();
    let code = |v: Value| v["error"]["code"].as_str().unwrap().to_owned();

    let r = post("{oops".into()).await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(code(r.json().await.unwrap()), "malformed_json");
    let r = post(json!({"type": "a:b:v1:requested"}).to_string())
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(code(r.json().await.unwrap()), "unknown_handler");
    let r = post(ticks(json!({"pad": "x".repeat(400)})).to_string())
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let r = post(
        json!({"type": "demo:stream_ticks:v1:requested", "stream_id": "no/slash"}).to_string(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(code(r.json().await.unwrap()), "invalid_stream_id");

    let id = unique("api");
    let body = json!({"type": "demo:stream_ticks:v1:requested", "stream_id": id, "payload": {"count": 2, "interval_ms": 1}});
    let r = post(body.to_string()).await.unwrap();
    assert_eq!(r.status(), 202);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["links"]["events"], format!("/v1/streams/{id}/events"));
    let events = app.sse(&id, None).await.collect().await;
    assert_complete(&events, 2, "success");
    let r = post(body.to_string()).await.unwrap();
    assert_eq!(
        r.status(),
        200,
        "same idempotency key returns the existing stream"
    );

    let r = app.cancel(&id).await;
    assert_eq!(r.status(), 409);
    let r = app
        .http
        .get(app.url("/v1/streams/unknown-stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = app
        .http
        .get(app.url("/v1/streams/unknown-stream/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(code(r.json().await.unwrap()), "not_found");
    let bad_id = app
        .http
        .get(app.url(&format!("/v1/streams/{id}/events")))
        .header("Last-Event-ID", "abc")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_id.status(), 400);
    for huge in ["9223372036854775807", "18446744073709551616"] {
        let r = app
            .http
            .get(app.url(&format!("/v1/streams/{id}/events")))
            .header("Last-Event-ID", huge)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "Last-Event-ID {huge}");
        assert_eq!(code(r.json().await.unwrap()), "invalid_last_event_id");
    }
    let ahead = app
        .http
        .get(app.url(&format!("/v1/streams/{id}/events?last_event_id=999999")))
        .send()
        .await
        .unwrap();
    // The stream has ended: a resume point past its end is answered 204, as at its end.
    assert_eq!(ahead.status(), 204);

    let metrics = app.metrics_text().await;
    assert!(metrics.contains(r#"sluice_edge_rejected_total{reason="unknown_handler"} 1"#));
    assert!(metrics.contains(r#"sluice_edge_rejected_total{reason="too_large"} 1"#));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_tokens_guard_the_stream_endpoints() {
    let app = start(|s| s.edge.api_tokens = vec!["s3cret".into()]).await;
    let body = ticks(json!({"count": 1, "interval_ms": 1}));
    let post = |token: Option<&'static str>| {
        let req = app.http.post(app.url("/v1/streams")).json(&body);
        match token {
            Some(t) => req.bearer_auth(t).send(),
            None => req.send(),
        }
    };
    assert_eq!(post(None).await.unwrap().status(), 401);
    assert_eq!(post(Some("wrong")).await.unwrap().status(), 401);
    let r = post(Some("s3cret")).await.unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["stream_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = app
        .http
        .get(app.url(&format!("/v1/streams/{id}/events?access_token=s3cret")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    use tokio_tungstenite::tungstenite::Error as WsError;
    for url in [
        format!("ws://{}/ws", app.addr),
        format!("ws://{}/ws?access_token=wrong", app.addr),
    ] {
        match tokio_tungstenite::connect_async(url.as_str()).await {
            Err(WsError::Http(resp)) => assert_eq!(resp.status(), 401, "{url}"),
            other => panic!("{url}: expected an HTTP 401 refusal, got {other:?}"),
        }
    }
    let (mut ws, resp) =
        tokio_tungstenite::connect_async(format!("ws://{}/ws?access_token=s3cret", app.addr))
            .await
            .expect("a valid token upgrades");
    assert_eq!(resp.status(), 101);
    send(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(recv(&mut ws).await["type"], "pong");
    assert_eq!(
        app.http
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "health stays open"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_cancels_a_running_stream() {
    let app = start(|_| {}).await;
    let id = app
        .request(ticks(json!({"count": 10_000, "interval_ms": 20})))
        .await;
    let mut sse = app.sse(&id, None).await;
    let mut events = Vec::new();
    while events.len() < 3 {
        events.push(sse.next_event().await.expect("running"));
    }
    let r = app.cancel(&id).await;
    assert_eq!(r.status(), 202);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "cancelling");
    events.extend(sse.collect().await);
    let last = events.last().unwrap();
    assert_eq!(last.state(), "cancelled", "{:?}", last.data);
    let chunks = last.data["payload"]["chunks"].as_u64().unwrap();
    assert!(chunks < 10_000, "stopped early");
    assert_complete_prefix(&events, chunks);
    let st = app.status(&id).await;
    assert_eq!(st["state"], "cancelled");
    let again = app.cancel(&id).await;
    assert_eq!(again.status(), 409, "a finished stream cannot be cancelled");
    app.shutdown().await;
}

/// started, chunks 1..=n, then one terminal event.
fn assert_complete_prefix(events: &[SseEvent], n: u64) {
    let seqs: Vec<u64> = events
        .iter()
        .map(|e| e.data["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (0..=n + 1).collect::<Vec<_>>());
}

/// Several fast streams fill the socket's outgoing queue while the client is not reading; control
/// frames sent then must still be answered, and every event must still arrive once the client
/// reads again. A socket task that waited on its own queue to reply would deadlock here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_control_replies_never_wait_on_a_full_event_queue() {
    let app = start(|_| {}).await;
    let mut ws = ws_connect(&app).await;
    let (streams, count) = (4, 2_000u64);
    for _ in 0..streams {
        send(
            &mut ws,
            ticks(json!({"count": count, "interval_ms": 0, "pad_bytes": 200})),
        )
        .await;
    }
    // Do not read while the streams run: the queue and the socket buffers fill up.
    let mut ids = std::collections::HashSet::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut done = 0;
        let metrics = app.metrics_text().await;
        if let Some(line) = metrics.lines().find(|l| {
            l.starts_with(
                "sluice_streams_finished_total{action=\"stream_ticks\",outcome=\"success\"",
            )
        }) {
            done = line.rsplit(' ').next().unwrap().parse::<u64>().unwrap();
        }
        if done == streams {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "streams finished");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Control frames while the queue is full. A request's reply waits on Kafka first, so the
    // followers refill the queue before the reply is ready.
    let extra = 10u64;
    for _ in 0..extra {
        send(&mut ws, json!({"type": "ping"})).await;
        send(&mut ws, ticks(json!({"count": 1, "interval_ms": 0}))).await;
    }
    send(&mut ws, json!({"type": "subscribe", "stream_id": "bad/id"})).await;
    let mut pongs = 0;
    let mut errors = 0;
    let mut per_stream: std::collections::HashMap<String, Vec<u64>> = Default::default();
    let mut terminals = 0;
    while pongs < extra || errors < 1 || terminals < streams + extra {
        let f = recv(&mut ws).await;
        match f["type"].as_str().unwrap() {
            "pong" => pongs += 1,
            "error" => {
                assert_eq!(f["payload"]["code"], "invalid_stream_id");
                errors += 1;
            }
            "accepted" => {
                ids.insert(f["stream_id"].as_str().unwrap().to_owned());
            }
            t => {
                let sid = f["stream_id"].as_str().unwrap().to_owned();
                per_stream
                    .entry(sid)
                    .or_default()
                    .push(f["seq"].as_u64().unwrap());
                if t.ends_with(":success") {
                    terminals += 1;
                }
            }
        }
    }
    assert_eq!(ids.len() as u64, streams + extra);
    for (sid, seqs) in &per_stream {
        let n = if seqs.len() == 3 { 1 } else { count };
        assert_eq!(
            seqs,
            &(0..=n + 1).collect::<Vec<_>>(),
            "{sid}: every event once, in order"
        );
    }
    app.shutdown().await;
}
