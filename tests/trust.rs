//! Owners and edges, attacked from outside with two real JWT identities against the running app:
//! a stream id requested by one owner is never handed to another (first request wins, over HTTP
//! and WebSocket, however close together), listing pages never name another owner's streams,
//! stream ids that Kafka would take for one topic get topics of their own, oversized request heads
//! get 431, connections that never begin a request are closed, an oversized WebSocket frame closes
//! its socket with 1009, and a WebSocket ends when its token expires.

mod common;

use std::time::Duration;

use common::*;
use futures::{SinkExt, StreamExt};
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &[u8] = b"trust-secret";
const ADMIN: &str = "trust-admin-token";

fn jwt(sub: &str, ttl_secs: i64) -> String {
    let claims = json!({"sub": sub, "types": ["demo:*"], "aud": "sluice",
                        "exp": chrono::Utc::now().timestamp() + ttl_secs});
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

async fn start_secured(tweak: impl FnOnce(&mut sluice::settings::Settings)) -> TestApp {
    start(|s| {
        s.edge.api_tokens = vec![ADMIN.into()];
        s.auth.jwt_secret = String::from_utf8(SECRET.to_vec()).unwrap();
        s.auth.audiences = vec!["sluice".into()];
        s.auth.leeway = Duration::ZERO;
        s.limits.requests_per_second = 1000;
        s.limits.request_burst = 1000;
        tweak(s);
    })
    .await
}

fn demo(id: &str) -> Value {
    json!({"type": "demo:stream_ticks:v1:requested", "stream_id": id,
           "payload": {"count": 3, "interval_ms": 20}})
}

async fn post(app: &TestApp, token: &str, body: &Value) -> (u16, Value) {
    let resp = app
        .http
        .post(app.url("/v1/streams"))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

async fn get(app: &TestApp, token: &str, path: &str) -> (u16, Value) {
    let resp = app
        .http
        .get(app.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

/// The refusal a caller gets for a stream id it may not see, with `id` written as `<id>`.
fn wording(body: &Value, id: &str) -> String {
    body["error"]["message"]
        .as_str()
        .unwrap_or("")
        .replace(id, "<id>")
}

async fn ws_as(app: &TestApp, token: &str) -> common::ws::Ws {
    let url = format!("ws://{}/ws?access_token={token}", app.addr);
    tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect("upgrade")
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_request_for_an_id_wins_and_nobody_else_reads_it_over_http() {
    let app = start_secured(|_| {}).await;
    let (alice, bob) = (jwt("alice", 600), jwt("bob", 600));
    let unknown = unique("never-");
    let (status, body) = get(&app, &bob, &format!("/v1/streams/{unknown}")).await;
    assert_eq!(status, 403);
    let refusal = wording(&body, &unknown);
    for round in 0..20 {
        let id = unique(&format!("race{round}-"));
        let body = demo(&id);
        let ((sa, ba), (sb, bb)) = tokio::join!(post(&app, &alice, &body), post(&app, &bob, &body));
        let (winner, loser, lost) = match (sa, sb) {
            (202, 403) => (&alice, &bob, bb),
            (403, 202) => (&bob, &alice, ba),
            other => panic!(
                "round {round}: one request must win and one be refused: {other:?} {ba} {bb}"
            ),
        };
        assert_eq!(lost["error"]["code"], "forbidden", "{lost}");
        assert_eq!(wording(&lost, &id), refusal, "worded like an unknown id");
        let owner = if winner == &alice { "alice" } else { "bob" };
        let events = SseClient::connect_with(&app.url(&format!("/v1/streams/{id}/events")), winner)
            .await
            .collect()
            .await;
        assert_complete(&events, 3, "success");
        let (status, body) = get(&app, loser, &format!("/v1/streams/{id}/events")).await;
        assert_eq!(
            (status, wording(&body, &id)),
            (403, refusal.clone()),
            "round {round}: the loser reads nothing"
        );
        let (_, st) = get(&app, ADMIN, &format!("/v1/streams/{id}")).await;
        assert_eq!(st["state"], "success");
        // Asked again by the winner: it exists; by the loser: refused like an unknown id.
        assert_eq!(post(&app, winner, &demo(&id)).await.0, 200);
        assert_eq!(
            post(&app, loser, &demo(&id)).await.0,
            403,
            "{owner}'s stream"
        );
    }
    app.shutdown().await;
}

/// Frames until the socket answers a ping, none of which may be an event of `id`.
async fn no_events_until_pong(ws: &mut common::ws::Ws, id: &str) {
    common::ws::send(ws, json!({"type": "ping"})).await;
    loop {
        let frame = common::ws::recv(ws).await;
        if frame["type"] == "pong" {
            return;
        }
        assert_ne!(frame["stream_id"], id, "the loser received {frame}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_request_for_an_id_someone_else_requested_follows_nothing() {
    let app = start_secured(|_| {}).await;
    let (alice, bob) = (jwt("alice", 600), jwt("bob", 600));
    let (mut wa, mut wb) = (ws_as(&app, &alice).await, ws_as(&app, &bob).await);
    for round in 0..10 {
        let id = unique(&format!("wsrace{round}-"));
        let frame = serde_json::to_value(demo(&id)).unwrap();
        tokio::join!(
            common::ws::send(&mut wa, frame.clone()),
            common::ws::send(&mut wb, frame)
        );
        let (fa, fb) = tokio::join!(common::ws::recv(&mut wa), common::ws::recv(&mut wb));
        let (winner, loser, refused) = match (fa["type"].as_str(), fb["type"].as_str()) {
            (Some("accepted"), Some("error")) => (&mut wa, &mut wb, fb),
            (Some("error"), Some("accepted")) => (&mut wb, &mut wa, fa),
            other => panic!("round {round}: one accepted, one refused: {other:?}"),
        };
        assert_eq!(refused["payload"]["code"], "forbidden", "{refused}");
        assert_eq!(refused["payload"]["status"], 403);
        let mut states = Vec::new();
        while !states
            .last()
            .is_some_and(|s: &String| s.ends_with(":success"))
        {
            let f = common::ws::recv(winner).await;
            assert_eq!(f["stream_id"], id.as_str(), "{f}");
            states.push(f["type"].as_str().unwrap_or("").to_owned());
        }
        assert_eq!(states.len(), 5, "started, 3 chunks, success: {states:?}");
        no_events_until_pong(loser, &id).await;
        common::ws::send(loser, json!({"type": "subscribe", "stream_id": id})).await;
        let f = common::ws::recv(loser).await;
        assert_eq!(
            (f["type"].as_str(), f["payload"]["code"].as_str()),
            (Some("error"), Some("forbidden"))
        );
        no_events_until_pong(loser, &id).await;
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_pages_never_name_another_owners_stream() {
    let app = start_secured(|_| {}).await;
    let (alice, bob) = (jwt("alice", 600), jwt("bob", 600));
    let mut ids = Vec::new();
    for i in 0..3 {
        let id = unique(&format!("alist{i}-"));
        assert_eq!(post(&app, &alice, &demo(&id)).await.0, 202);
        ids.push(id);
    }
    let mine = unique("blist-");
    assert_eq!(post(&app, &bob, &demo(&mine)).await.0, 202);
    wait_until(|| async {
        get(&app, ADMIN, "/v1/streams?limit=10").await.1["streams"]
            .as_array()
            .is_some_and(|s| s.len() >= 4)
    })
    .await;
    let (mut cursor, mut seen) = (None::<String>, Vec::new());
    for _ in 0..10 {
        let path = match &cursor {
            Some(c) => format!("/v1/streams?limit=1&cursor={c}"),
            None => "/v1/streams?limit=1".into(),
        };
        let (status, body) = get(&app, &bob, &path).await;
        assert_eq!(status, 200, "{body}");
        let text = body.to_string();
        for id in &ids {
            assert!(
                !text.contains(id.as_str()),
                "bob's page names alice's {id}: {text}"
            );
        }
        seen.extend(
            body["streams"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["stream_id"].to_string()),
        );
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, [format!("{mine:?}")], "bob sees his own stream once");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_kafka_would_confuse_get_topics_of_their_own() {
    let app = start(|_| {}).await;
    let base = unique("ns");
    let (dotted, underscored) = (format!("{base}.x"), format!("{base}_x"));
    for (id, count) in [(&dotted, 2), (&underscored, 3)] {
        let body = json!({"type": "demo:stream_ticks:v1:requested", "stream_id": id,
                          "payload": {"count": count, "interval_ms": 1}});
        app.request(body).await;
    }
    for (id, count) in [(&dotted, 2), (&underscored, 3)] {
        let events = app.sse(id, None).await.collect().await;
        assert_complete(&events, count, "success");
    }
    let prefix = &app.settings.kafka.stream_topic_prefix;
    let topics = [format!("{prefix}{base}_2ex"), format!("{prefix}{base}_5fx")];
    for (topic, count) in topics.iter().zip([2, 3]) {
        let events: Vec<Value> = read_topic(topic).await.iter().map(json_of).collect();
        assert_topic_exact(topic, &events, count, "success");
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_head_gets_431() {
    let app = start(|_| {}).await;
    let big = "a".repeat(300 * 1024);
    let resp = app
        .http
        .get(app.url("/v1/streams"))
        .header("x-filler", &big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 431);
    let ok = app
        .http
        .get(app.url("/v1/streams"))
        .header("x-filler", "a".repeat(16 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(
        ok.status(),
        200,
        "a head within limits.max_header_bytes is served"
    );
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains(r#"sluice_edge_rejected_total{reason="header_too_large"} 1"#),
        "{metrics}"
    );
    app.shutdown().await;
}

/// Whether the server closes `tcp` (end of stream or reset) before the test bound.
async fn closed_by_server(mut tcp: tokio::net::TcpStream) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(WAIT, tcp.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_begins_a_request_is_closed() {
    let app = start(|s| s.limits.header_read_timeout = Duration::from_secs(1)).await;
    let idle = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let mut partial = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    partial.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let (a, b) = tokio::join!(closed_by_server(idle), closed_by_server(partial));
    assert!(a, "an idle connection was held open");
    assert!(b, "a partial HTTP/2 preface was held open");
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains(r#"sluice_edge_rejected_total{reason="header_timeout"} 2"#),
        "{metrics}"
    );
    app.shutdown().await;
}

/// The close frame the server sends next, skipping other frames.
async fn close_frame(ws: &mut common::ws::Ws) -> Option<(CloseCode, String)> {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
        {
            Some(Ok(Message::Close(frame))) => {
                return frame.map(|f| (f.code, f.reason.to_string()))
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_websocket_frame_closes_the_socket_with_1009() {
    let app = start(|_| {}).await;
    let mut ws = common::ws::connect(&app).await;
    let limit = app.settings.intake.max_request_bytes;
    let frame = json!({"type": "ping", "pad": "x".repeat(limit)}).to_string();
    ws.send(Message::Text(frame.into())).await.unwrap();
    let (code, reason) = close_frame(&mut ws)
        .await
        .expect("a close frame, not a dropped socket");
    assert_eq!(code, CloseCode::Size, "{reason}");
    assert!(reason.contains(&limit.to_string()), "{reason}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_ends_when_its_token_expires() {
    let app = start_secured(|s| s.limits.ws_idle_timeout = Duration::from_secs(600)).await;
    let mut ws = ws_as(&app, &jwt("alice", 3)).await;
    common::ws::send(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(
        common::ws::recv(&mut ws).await["type"],
        "pong",
        "the token works at first"
    );
    let (code, reason) = close_frame(&mut ws).await.expect("a close frame at expiry");
    assert_eq!((u16::from(code), reason.as_str()), (4401, "token expired"));
    let mut lasting = ws_as(&app, &jwt("bob", 600)).await;
    common::ws::send(&mut lasting, json!({"type": "ping"})).await;
    assert_eq!(
        common::ws::recv(&mut lasting).await["type"],
        "pong",
        "a valid token's socket stays open"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_owner_cannot_hold_more_than_its_share_of_streams() {
    let app = start_secured(|s| s.limits.max_streams_per_owner = 2).await;
    let (alice, bob) = (jwt("alice", 600), jwt("bob", 600));
    let long = |id: &str| {
        json!({"type": "demo:stream_ticks:v1:requested", "stream_id": id,
               "payload": {"count": 1000, "interval_ms": 1000}})
    };
    let held: Vec<String> = (0..2).map(|i| unique(&format!("held{i}-"))).collect();
    for id in &held {
        assert_eq!(post(&app, &alice, &long(id)).await.0, 202);
        wait_until(|| async { get(&app, &alice, &format!("/v1/streams/{id}")).await.0 == 200 })
            .await;
    }
    let (status, body) = post(&app, &alice, &long(&unique("third-"))).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("owner_quota")),
        "{body}"
    );
    assert_eq!(
        post(&app, &bob, &long(&unique("bobs-"))).await.0,
        202,
        "other owners are not held up"
    );
    let resp = app
        .http
        .delete(app.url(&format!("/v1/streams/{}", held[0])))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    wait_until(|| async {
        get(&app, &alice, &format!("/v1/streams/{}", held[0]))
            .await
            .1["state"]
            == "cancelled"
    })
    .await;
    assert_eq!(
        post(&app, &alice, &long(&unique("fourth-"))).await.0,
        202,
        "a finished stream frees its place"
    );
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains(r#"sluice_edge_rejected_total{reason="owner_quota"} 1"#),
        "{metrics}"
    );
    app.shutdown().await;
}
