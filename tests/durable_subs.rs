//! Durable Streams subscriptions against the real broker, with a real webhook receiver (an axum
//! server): what the conformance suite cannot see. A failing webhook is retried for the same wake
//! after a backoff; an expired lease wakes again one generation on and fences the old wake;
//! subscriptions, their cursors and the signing key survive a restart.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use common::*;
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// One webhook request as received.
struct Delivery {
    at: Instant,
    signature: String,
    raw: String,
    body: Value,
}

/// A webhook receiver answering each request with the next scripted answer (the last repeats).
struct Receiver {
    url: String,
    got: mpsc::UnboundedReceiver<Delivery>,
}

async fn receiver(script: Vec<(u16, Value)>) -> Receiver {
    let (tx, got) = mpsc::unbounded_channel();
    let script = Arc::new(Mutex::new(script));
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let tx = tx.clone();
            let script = script.clone();
            async move {
                let raw = String::from_utf8(body.to_vec()).unwrap();
                let _ = tx.send(Delivery {
                    at: Instant::now(),
                    signature: headers["webhook-signature"].to_str().unwrap().to_owned(),
                    body: serde_json::from_str(&raw).unwrap(),
                    raw,
                });
                let (status, answer) = {
                    let mut s = script.lock().unwrap();
                    if s.len() > 1 {
                        s.remove(0)
                    } else {
                        s[0].clone()
                    }
                };
                (StatusCode::from_u16(status).unwrap(), answer.to_string())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Receiver { url, got }
}

impl Receiver {
    async fn next(&mut self) -> Delivery {
        tokio::time::timeout(WAIT, self.got.recv())
            .await
            .expect("a webhook delivery in time")
            .expect("receiver open")
    }
}

fn ds(app: &TestApp, rest: &str) -> String {
    app.url(&format!("/ds/v1/stream/{rest}"))
}

async fn put_sub(app: &TestApp, id: &str, body: Value) -> Value {
    let res = app
        .http
        .put(ds(app, &format!("__ds/subscriptions/{id}")))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    res.json().await.unwrap()
}

async fn get_json(app: &TestApp, rest: &str) -> Value {
    let res = app.http.get(ds(app, rest)).send().await.unwrap();
    assert_eq!(res.status(), 200, "GET {rest}");
    res.json().await.unwrap()
}

async fn get_sub(app: &TestApp, id: &str) -> Value {
    let res = app
        .http
        .get(ds(app, &format!("__ds/subscriptions/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

/// Writes `body` to the JSON stream `path` (creating it with PUT when `create`); its tail.
async fn write(app: &TestApp, path: &str, body: Value, create: bool) -> String {
    let req = if create {
        app.http.put(ds(app, path))
    } else {
        app.http.post(ds(app, path))
    };
    let res = req
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    res.headers()["stream-next-offset"]
        .to_str()
        .unwrap()
        .to_owned()
}

async fn post_json(app: &TestApp, rest: &str, token: &str, body: Value) -> reqwest::Response {
    app.http
        .post(ds(app, rest))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn error_code(res: reqwest::Response) -> (u16, String) {
    let status = res.status().as_u16();
    let body: Value = res.json().await.unwrap();
    (
        status,
        body["error"]["code"].as_str().unwrap_or("").to_owned(),
    )
}

/// Checks a delivery's `Webhook-Signature` against the server's published key.
async fn assert_signed(app: &TestApp, d: &Delivery) {
    let jwks: Value = get_json(app, "__ds/jwks.json").await;
    let (head, sig) = d.signature.rsplit_once(",ed25519=").unwrap();
    let (t, kid) = head
        .strip_prefix("t=")
        .unwrap()
        .split_once(",kid=")
        .unwrap();
    let key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .expect("the signing key is published");
    let x = B64.decode(key["x"].as_str().unwrap()).unwrap();
    let public = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, x);
    public
        .verify(
            format!("{t}.{}", d.raw).as_bytes(),
            &B64.decode(sig).unwrap(),
        )
        .expect("the delivery verifies with the published key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_webhook_is_retried_for_the_same_wake_until_it_answers() {
    let app = start(|s| s.durable.webhook_allow_localhost = true).await;
    let mut hook = receiver(vec![(500, json!({})), (200, json!({"done": true}))]).await;
    let root = unique("retry-");
    let id = unique("sub-");
    put_sub(
        &app,
        &id,
        json!({"type": "webhook", "pattern": format!("{root}/*"), "webhook": {"url": hook.url}, "lease_ttl_ms": 1000}),
    )
    .await;
    let path = format!("{root}/a");
    let tail = write(&app, &path, json!({"n": 1}), true).await;

    let first = hook.next().await;
    assert_signed(&app, &first).await;
    let failed = get_sub(&app, &id).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(failed["next_attempt_at"].is_i64(), "{failed}");

    let second = hook.next().await;
    assert_signed(&app, &second).await;
    assert_eq!(
        second.body["wake_id"], first.body["wake_id"],
        "the same wake"
    );
    assert_eq!(second.body["generation"], first.body["generation"]);
    let waited = second.at - first.at;
    assert!(
        waited >= Duration::from_millis(750),
        "retried after {waited:?}, before the backoff"
    );
    assert_eq!(second.body["streams"][0]["tail_offset"], tail.as_str());

    // `done` acked the snapshot; nothing more is pending, so no third delivery comes.
    wait_until(|| async {
        let s = get_sub(&app, &id).await;
        s["status"] == "active" && s["streams"][0]["acked_offset"] == tail.as_str()
    })
    .await;
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), hook.got.recv())
            .await
            .is_err(),
        "no delivery after the acked wake"
    );
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains("sluice_durable_webhooks_total{result=\"failed\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_durable_webhooks_total{result=\"delivered\"} 1"),
        "{metrics}"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_wakes_again_one_generation_on_and_fences_the_old_wake() {
    let app = start(|s| s.durable.webhook_allow_localhost = true).await;
    // Answered, but never `done` and never called back: the lease runs out.
    let mut hook = receiver(vec![(200, json!({}))]).await;
    let root = unique("lease-");
    let id = unique("sub-");
    put_sub(
        &app,
        &id,
        json!({"type": "webhook", "streams": [format!("{root}/x")], "webhook": {"url": hook.url}, "lease_ttl_ms": 1000}),
    )
    .await;
    let path = format!("{root}/x");
    let tail = write(&app, &path, json!([1, 2]), true).await;

    let old = hook.next().await;
    let new = hook.next().await;
    let generation = old.body["generation"].as_u64().unwrap();
    assert_eq!(new.body["generation"].as_u64(), Some(generation + 1));
    assert_ne!(new.body["wake_id"], old.body["wake_id"]);
    assert!(
        new.at - old.at >= Duration::from_millis(750),
        "woken before the lease ended"
    );

    let before = get_sub(&app, &id).await["streams"][0]["acked_offset"].clone();
    assert_ne!(before, tail.as_str());
    let callback = format!("__ds/subscriptions/{id}/callback");
    let ack = |d: &Delivery| {
        json!({"wake_id": d.body["wake_id"], "generation": d.body["generation"],
               "acks": [{"stream": path, "offset": tail}], "done": true})
    };
    let stale = post_json(
        &app,
        &callback,
        old.body["callback_token"].as_str().unwrap(),
        ack(&old),
    )
    .await;
    assert_eq!(error_code(stale).await, (409, "FENCED".to_owned()));
    assert_eq!(
        get_sub(&app, &id).await["streams"][0]["acked_offset"],
        before,
        "a fenced ack moves no cursor"
    );
    // The new wake's token and generation with the old wake's id is fenced too.
    let mut mixed = ack(&new);
    mixed["wake_id"] = old.body["wake_id"].clone();
    let mixed = post_json(
        &app,
        &callback,
        new.body["callback_token"].as_str().unwrap(),
        mixed,
    )
    .await;
    assert_eq!(error_code(mixed).await, (409, "FENCED".to_owned()));
    let forged = post_json(&app, &callback, "not-a-token", ack(&new)).await;
    assert_eq!(error_code(forged).await, (401, "TOKEN_INVALID".to_owned()));

    let ok = post_json(
        &app,
        &callback,
        new.body["callback_token"].as_str().unwrap(),
        ack(&new),
    )
    .await;
    assert_eq!(ok.status(), 200);
    assert_eq!(
        ok.json::<Value>().await.unwrap(),
        json!({"ok": true, "next_wake": false})
    );
    assert_eq!(
        get_sub(&app, &id).await["streams"][0]["acked_offset"],
        tail.as_str()
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_their_cursors_and_the_signing_key_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(dir.path());
    let app = start_exact(settings.clone(), dir, sluice::Registry::new()).await;
    let root = unique("restart-");
    let wake = format!("{root}/wake");
    write(&app, &wake, json!([]), true).await;
    let id = unique("pull-");
    put_sub(
        &app,
        &id,
        json!({"type": "pull-wake", "pattern": format!("{root}/events/*"), "wake_stream": wake}),
    )
    .await;
    let path = format!("{root}/events/a");
    let first_tail = write(&app, &path, json!({"n": 1}), true).await;
    let claim = |worker: &'static str| {
        let app = &app;
        let id = id.clone();
        async move {
            app.http
                .post(ds(app, &format!("__ds/subscriptions/{id}/claim")))
                .json(&json!({"worker": worker}))
                .send()
                .await
                .unwrap()
        }
    };
    let claimed: Value = claim("w1").await.json().await.unwrap();
    let ack = post_json(
        &app,
        &format!("__ds/subscriptions/{id}/ack"),
        claimed["token"].as_str().unwrap(),
        json!({"wake_id": claimed["wake_id"], "generation": claimed["generation"],
               "acks": [{"stream": path, "offset": first_tail}], "done": true}),
    )
    .await;
    assert_eq!(ack.status(), 200);
    // Pending again: a new wake, claimed, then the server restarts under the worker.
    write(&app, &path, json!({"n": 2}), false).await;
    let held: Value = claim("w1").await.json().await.unwrap();
    let kid = get_sub(&app, &id).await["webhook"].clone();
    assert!(kid.is_null(), "a pull-wake subscription has no webhook");
    let jwks_before: Value = get_json(&app, "__ds/jwks.json").await;
    let dir = app.shutdown().await;

    let app = start_exact(settings, dir, sluice::Registry::new()).await;
    let sub = get_sub(&app, &id).await;
    assert_eq!(
        sub["streams"][0]["acked_offset"],
        first_tail.as_str(),
        "{sub}"
    );
    let jwks_after: Value = get_json(&app, "__ds/jwks.json").await;
    assert_eq!(jwks_after, jwks_before, "the signing key is kept");
    // The pre-restart wake is gone: its token is refused, and the pending data is woken again
    // one generation on, with a wake event for it.
    let stale = post_json(
        &app,
        &format!("__ds/subscriptions/{id}/ack"),
        held["token"].as_str().unwrap(),
        json!({"wake_id": held["wake_id"], "generation": held["generation"], "done": true}),
    )
    .await;
    assert_eq!(error_code(stale).await, (401, "TOKEN_INVALID".to_owned()));
    let next = held["generation"].as_u64().unwrap() + 1;
    wait_until(|| async {
        let events: Value = get_json(&app, &wake).await;
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["subscription_id"] == id.as_str() && e["generation"] == next)
    })
    .await;
    let again: Value = claim_after(&app, &id).await;
    assert_eq!(again["generation"].as_u64(), Some(next));
    app.shutdown().await;
}

async fn claim_after(app: &TestApp, id: &str) -> Value {
    let res = app
        .http
        .post(ds(app, &format!("__ds/subscriptions/{id}/claim")))
        .json(&json!({"worker": "w2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}
