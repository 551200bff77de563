//! Abuse limits against the real server: each test crosses one limit, checks the precise refusal
//! (status, code, `Retry-After`, metric), and shows that other clients carry on unaffected.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use futures::{SinkExt, StreamExt};
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// A raw connection from `local` (any 127.0.0.0/8 address) to the app.
async fn connect_from(local: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{local}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

/// Sends `GET path` on a raw connection (keep-alive) and returns the status and body.
async fn get_raw(tcp: &mut TcpStream, path: &str) -> (u16, String) {
    let req = format!("GET {path} HTTP/1.1\r\nhost: sluice\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(WAIT, tcp.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head.lines().find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(|v| v.trim().parse::<usize>().unwrap())
            });
            if n == 0 || len.is_some_and(|l| body.len() >= l) {
                let status = head.split(' ').nth(1).unwrap().parse().unwrap();
                return (status, text);
            }
        }
        assert!(n > 0, "connection closed before a full response: {text}");
    }
}

/// Opens raw connections from `local` until one is refused; returns the admitted ones (each
/// served a 200) and the refusal. Fails if more than `cap` were admitted or fewer than `cap - 1`
/// (the test client may hold one pooled connection of its own).
async fn fill(app: &TestApp, local: &str, cap: usize) -> (Vec<TcpStream>, String) {
    let mut held = Vec::new();
    loop {
        let mut c = connect_from(local, app.addr).await;
        let (status, response) = get_raw(&mut c, "/healthz").await;
        if status != 200 {
            assert!(
                held.len() + 1 >= cap,
                "refused after only {} connections",
                held.len()
            );
            return (held, response);
        }
        held.push(c);
        assert!(held.len() <= cap, "more than {cap} connections admitted");
    }
}

fn code_of(response: &str) -> String {
    let body = response.split_once("\r\n\r\n").unwrap().1;
    serde_json::from_str::<Value>(body).unwrap()["error"]["code"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_total_get_503_and_open_ones_keep_working() {
    let app = start(|s| s.limits.max_connections = 3).await;
    // The test client may keep one pooled connection open: fill up with raw ones until refused.
    let (mut held, response) = fill(&app, "127.0.0.1", 3).await;
    assert_eq!(code_of(&response), "too_many_connections", "{response}");
    assert!(response.starts_with("HTTP/1.1 503"), "{response}");
    assert!(
        response.to_ascii_lowercase().contains("retry-after: 1"),
        "{response}"
    );
    for c in &mut held {
        assert_eq!(
            get_raw(c, "/healthz").await.0,
            200,
            "admitted connections are unaffected"
        );
    }
    drop(held.pop());
    wait_until(|| async {
        let mut c = connect_from("127.0.0.1", app.addr).await;
        get_raw(&mut c, "/healthz").await.0 == 200
    })
    .await;
    let mut m = held.pop().unwrap();
    let (_, metrics) = get_raw(&mut m, "/metrics").await;
    assert!(metrics.contains("sluice_edge_rejected_total{reason=\"too_many_connections\"}"));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_per_ip_cap_get_429_and_other_addresses_are_admitted() {
    let app = start(|s| s.limits.max_connections_per_ip = 2).await;
    let (mut held, response) = fill(&app, "127.0.0.1", 2).await;
    assert!(response.starts_with("HTTP/1.1 429"), "{response}");
    assert_eq!(code_of(&response), "too_many_connections_per_ip");
    let mut other = connect_from("127.0.0.2", app.addr).await;
    assert_eq!(
        get_raw(&mut other, "/healthz").await.0,
        200,
        "another address is admitted"
    );
    for c in &mut held {
        assert_eq!(
            get_raw(c, "/healthz").await.0,
            200,
            "admitted connections are unaffected"
        );
    }
    // gRPC shares the caps: a third connection from 127.0.0.1 is closed at once.
    let mut g = connect_from("127.0.0.1", app.grpc).await;
    let mut byte = [0u8; 1];
    let n = tokio::time::timeout(WAIT, g.read(&mut byte))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "the gRPC listener closes a connection over the cap");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_over_the_per_stream_cap_get_503_and_others_keep_receiving() {
    let app = start(|s| s.limits.max_subscribers_per_stream = 2).await;
    let busy = app
        .request(ticks(json!({"count": 600, "interval_ms": 50})))
        .await;
    let quiet = app
        .request(ticks(json!({"count": 600, "interval_ms": 50})))
        .await;
    let mut first = app.sse(&busy, None).await;
    let mut second = app.sse(&busy, None).await;
    let r = app
        .http
        .get(app.url(&format!("/v1/streams/{busy}/events")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "too_many_subscribers"
    );
    let mut ws = common::ws::connect(&app).await;
    common::ws::send(&mut ws, json!({"type": "subscribe", "stream_id": busy})).await;
    let frame = common::ws::recv(&mut ws).await;
    assert_eq!(frame["payload"]["code"], "too_many_subscribers", "{frame}");
    assert_eq!(frame["payload"]["status"], 503);
    let mut other = app.sse(&quiet, None).await;
    for sub in [&mut first, &mut second, &mut other] {
        let a = sub.next_event().await.unwrap();
        let b = sub.next_event().await.unwrap();
        assert!(b.id > a.id, "subscribers keep receiving");
    }
    drop(first);
    wait_until(|| async {
        let r = app
            .http
            .get(app.url(&format!("/v1/streams/{busy}/events")))
            .send();
        r.await.unwrap().status() == 200
    })
    .await;
    app.shutdown().await;
}

fn jwt(sub: &str) -> String {
    let claims =
        json!({"sub": sub, "exp": chrono::Utc::now().timestamp() + 600, "types": ["demo:*"]});
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(b"rate-secret"),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_the_rate_get_429_with_retry_after_per_identity() {
    let app = start(|s| {
        s.auth.jwt_secret = "rate-secret".into();
        s.edge.api_tokens = vec!["admin".into()];
        s.limits.requests_per_second = 1;
        s.limits.request_burst = 2;
    })
    .await;
    let post = |token: String| {
        let req = app.http.post(app.url("/v1/streams")).bearer_auth(token);
        async move { req.json(&ticks(json!({"count": 1}))).send().await.unwrap() }
    };
    let alice = jwt("alice");
    assert_eq!(post(alice.clone()).await.status(), 202);
    assert_eq!(post(alice.clone()).await.status(), 202);
    let r = post(alice.clone()).await;
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "rate_limited"
    );
    assert_eq!(
        post(jwt("bob")).await.status(),
        202,
        "another identity is unaffected"
    );
    for _ in 0..5 {
        assert_eq!(
            post("admin".into()).await.status(),
            202,
            "administrators are not rate-limited"
        );
    }
    // The same bucket guards WebSocket requests.
    let url = format!("ws://{}/ws?access_token={alice}", app.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    common::ws::send(&mut ws, ticks(json!({"count": 1}))).await;
    let frame = common::ws::recv(&mut ws).await;
    assert_eq!(frame["payload"]["code"], "rate_limited", "{frame}");
    assert!(app
        .metrics_text()
        .await
        .contains("sluice_edge_rejected_total{reason=\"rate_limited\"} 2"));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_requests_get_408_and_slow_headers_are_cut_off() {
    let app = start(|s| {
        s.limits.request_timeout = Duration::from_millis(500);
        s.limits.header_read_timeout = Duration::from_millis(500);
        s.edge.early_connect_wait = Duration::from_secs(10);
    })
    .await;
    // A subscription to a stream that never appears waits past the request timeout.
    let slow = app
        .http
        .get(app.url("/v1/streams/never-appears/events"))
        .send();
    let healthy = app.http.get(app.url("/healthz")).send();
    let (slow, healthy) = tokio::join!(slow, healthy);
    assert_eq!(
        healthy.unwrap().status(),
        200,
        "others are served meanwhile"
    );
    assert_eq!(slow.unwrap().status(), 408);
    // gRPC has the same bound on the time to a response.
    let mut grpc = common::grpc::client(&app).await;
    let call = grpc.subscribe_events(sluice::edge::grpc::proto::SubscribeRequest {
        stream_id: "never-appears".into(),
        last_event_id: None,
        event_types: vec![],
    });
    let status = tokio::time::timeout(WAIT, call).await.unwrap().unwrap_err();
    assert_eq!(status.code(), tonic::Code::Cancelled, "{status:?}");
    // A client that never finishes its headers is disconnected.
    let mut c = connect_from("127.0.0.1", app.addr).await;
    c.write_all(b"GET /healthz HTTP/1.1\r\nhost: sl")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, c.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "cut off by the header timeout"
    );
    assert_eq!(
        app.http
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(app
        .metrics_text()
        .await
        .contains("sluice_edge_rejected_total{reason=\"request_timeout\"} 1"));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_that_never_send_are_closed_and_answering_ones_stay() {
    let app = start(|s| s.limits.ws_idle_timeout = Duration::from_millis(900)).await;
    let url = format!("ws://{}/ws", app.addr);
    // `silent` completes the handshake by hand and then reads nothing, so it answers no ping.
    let mut silent = connect_from("127.0.0.1", app.addr).await;
    let upgrade = "GET /ws HTTP/1.1\r\nhost: sluice\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
                   sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n";
    silent.write_all(upgrade.as_bytes()).await.unwrap();
    let (mut lively, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    // `lively` only reads: the library answers the server's pings, which is all a browser does.
    let lively_task = tokio::spawn(async move {
        let until = tokio::time::Instant::now() + Duration::from_secs(3);
        while tokio::time::Instant::now() < until {
            match tokio::time::timeout(Duration::from_millis(200), lively.next()).await {
                Ok(Some(Ok(Message::Close(f)))) => panic!("lively socket closed: {f:?}"),
                Ok(Some(Err(e))) => panic!("lively socket failed: {e}"),
                Ok(None) => panic!("lively socket ended"),
                _ => {}
            }
        }
        lively
            .send(Message::Text(json!({"type": "ping"}).to_string().into()))
            .await
            .unwrap();
        loop {
            if let Message::Text(t) = lively.next().await.unwrap().unwrap() {
                assert!(t.as_str().contains("pong"));
                break;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut bytes = Vec::new();
    tokio::time::timeout(WAIT, silent.read_to_end(&mut bytes))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&bytes);
    let (head, _) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let mut frames = &bytes[head.len() + 4..];
    let mut close = None;
    while frames.len() >= 2 {
        let (opcode, len) = (frames[0] & 0x0f, (frames[1] & 0x7f) as usize);
        let payload = &frames[2..2 + len];
        if opcode == 0x8 {
            close = Some(u16::from_be_bytes([payload[0], payload[1]]));
        }
        frames = &frames[2 + len..];
    }
    assert_eq!(
        close,
        Some(1008),
        "the server closes an idle socket with 1008"
    );
    lively_task.await.unwrap();
    assert!(app
        .metrics_text()
        .await
        .contains("sluice_edge_rejected_total{reason=\"ws_idle\"} 1"));
    app.shutdown().await;
}
