//! Durable Streams with authentication on, against the real server and broker: streams and
//! subscriptions have owners (two real JWT identities, a token without `sub`, a `ds:` pattern
//! reader and the static administrator, each answer asserted exactly), forks need their source's
//! read access, public URLs never come from the `Host` header, and webhook URLs that carry a
//! refused IPv4 address inside IPv6 are refused.

mod common;

use std::time::Duration;

use common::ds::*;
use common::*;
use reqwest::Method;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_its_owners_and_strangers_get_the_answer_for_a_missing_one() {
    let app = start_secured(|_| {}).await;
    let t = tokens();
    let (mine, missing) = (unique("shared/a-"), unique("shared/none-"));
    assert_eq!(call(&app, Method::PUT, &mine, &t.alice, "one").await.0, 201);
    // A token without `sub` owns nothing: it cannot create anywhere.
    let refused = (403, NOT_YOURS.to_owned());
    assert_eq!(
        call(&app, Method::PUT, &missing, &t.nosub, "").await,
        refused
    );
    // Bob, and the token without `sub`, get for Alice's stream exactly what a missing one gets.
    for token in [&t.bob, &t.nosub] {
        for (method, body) in [
            (Method::GET, ""),
            (Method::POST, "two"),
            (Method::DELETE, ""),
        ] {
            let unknown = call(&app, method.clone(), &missing, token, body).await;
            assert_eq!(unknown, (404, NOT_FOUND.to_owned()), "{method} missing");
            let theirs = call(&app, method.clone(), &mine, token, body).await;
            assert_eq!(theirs, unknown, "{method} on another owner's stream");
        }
        let head = app
            .http
            .head(ds(&app, &mine))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(head.status(), 404);
        // A PUT on Alice's path, identical or not, is the refusal every refused creation gets.
        assert_eq!(call(&app, Method::PUT, &mine, token, "").await, refused);
    }
    let conflicting = app.http.put(ds(&app, &mine)).bearer_auth(&t.bob);
    let res = conflicting
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!((res.status().as_u16(), res.text().await.unwrap()), refused);
    // A `ds:shared/*` reader reads it, but neither appends to it nor deletes it.
    assert_eq!(
        call(&app, Method::GET, &mine, &t.reader, "").await,
        (200, "one".into())
    );
    let read_only = (
        403,
        "this token may read this stream but not write it".to_owned(),
    );
    assert_eq!(
        call(&app, Method::POST, &mine, &t.reader, "x").await,
        read_only
    );
    assert_eq!(
        call(&app, Method::DELETE, &mine, &t.reader, "").await,
        read_only
    );
    // The administrator and the owner do everything; nothing the others tried was written.
    assert_eq!(call(&app, Method::POST, &mine, ADMIN, "two").await.0, 204);
    assert_eq!(
        call(&app, Method::POST, &mine, &t.alice, "three").await.0,
        204
    );
    assert_eq!(
        call(&app, Method::GET, &mine, &t.alice, "").await,
        (200, "onetwothree".into())
    );
    assert_eq!(call(&app, Method::PUT, &mine, &t.alice, "").await.0, 200);
    assert_eq!(call(&app, Method::DELETE, &mine, &t.alice, "").await.0, 204);
    assert_eq!(call(&app, Method::GET, &mine, ADMIN, "").await.0, 404);
    let metrics = app.metrics_text().await;
    assert!(metrics.contains(r#"sluice_edge_rejected_total{reason="forbidden"}"#));
    app.shutdown().await;
}

/// PUTs a fork of `source` at `path` as `token`.
async fn fork(app: &TestApp, path: &str, source: &str, token: &str) -> (u16, String) {
    let res = app
        .http
        .put(ds(app, path))
        .bearer_auth(token)
        .header("content-type", "text/plain")
        .header("stream-forked-from", format!("/v1/stream/{source}"))
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_needs_read_access_to_its_source_to_be_made_and_read() {
    let app = start_secured(|_| {}).await;
    let t = tokens();
    let source = unique("shared/src-");
    assert_eq!(
        call(&app, Method::PUT, &source, &t.alice, "inherited")
            .await
            .0,
        201
    );
    let not_found = (404, "fork source not found".to_owned());
    let nowhere = unique("shared/nowhere-");
    assert_eq!(fork(&app, &unique("b/"), &nowhere, &t.bob).await, not_found);
    assert_eq!(fork(&app, &unique("b/"), &source, &t.bob).await, not_found);
    // Carol reads the source through `ds:shared/*`, so she may fork it; the fork is hers.
    let carols = unique("forks/");
    assert_eq!(fork(&app, &carols, &source, &t.reader).await.0, 201);
    assert_eq!(
        call(&app, Method::POST, &carols, &t.reader, "+own").await.0,
        204
    );
    let whole = (200, "inherited+own".to_owned());
    assert_eq!(call(&app, Method::GET, &carols, &t.reader, "").await, whole);
    // A reader of the fork alone may not read it: its records come from a source it cannot read.
    let fork_reader = jwt(json!({"sub": "dave", "streams": [format!("ds:{carols}")]}));
    let refused = (404, NOT_FOUND.to_owned());
    assert_eq!(
        call(&app, Method::GET, &carols, &fork_reader, "").await,
        refused
    );
    let both = jwt(json!({"sub": "erin", "streams": [format!("ds:{carols}"), "ds:shared/*"]}));
    assert_eq!(call(&app, Method::GET, &carols, &both, "").await, whole);
    app.shutdown().await;
}

fn paths(view: &Value) -> Vec<String> {
    let mut p: Vec<String> = view["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["path"].as_str().unwrap().to_owned())
        .collect();
    p.sort();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_is_its_owners_and_sees_only_its_owners_streams() {
    let app = start_secured(|_| {}).await;
    let t = tokens();
    let root = unique("ev");
    let (a, b) = (format!("{root}/alice"), format!("{root}/bob"));
    assert_eq!(call(&app, Method::PUT, &a, &t.alice, "a").await.0, 201);
    assert_eq!(call(&app, Method::PUT, &b, &t.bob, "b").await.0, 201);
    let wake = unique("wake/");
    let res = app
        .http
        .put(ds(&app, &wake))
        .bearer_auth(&t.bob)
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let id = unique("bobs-");
    let body = json!({"type": "pull-wake", "pattern": format!("{root}/**"), "wake_stream": wake});
    let (status, view) = sub_call(&app, Method::PUT, &id, &t.bob, Some(body.clone())).await;
    assert_eq!(status, 201, "{view}");
    assert_eq!(
        paths(&view),
        vec![b.clone()],
        "the initial listing has only Bob's stream"
    );
    let (status, err) = sub_call(
        &app,
        Method::PUT,
        &unique("x-"),
        &t.nosub,
        Some(body.clone()),
    )
    .await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (403, Some("FORBIDDEN"))
    );
    // Alice gets for Bob's subscription what she gets for a missing one.
    let missing = unique("none-");
    for (method, rest, body) in [
        (Method::GET, String::new(), None),
        (
            Method::POST,
            "/claim".to_owned(),
            Some(json!({"worker": "w"})),
        ),
        (
            Method::POST,
            "/streams".to_owned(),
            Some(json!({"streams": [a.clone()]})),
        ),
    ] {
        let unknown = sub_call(
            &app,
            method.clone(),
            &format!("{missing}{rest}"),
            &t.alice,
            body.clone(),
        )
        .await;
        assert_eq!(
            (unknown.0, unknown.1["error"]["code"].as_str()),
            (404, Some("SUBSCRIPTION_NOT_FOUND"))
        );
        let theirs = sub_call(&app, method, &format!("{id}{rest}"), &t.alice, body).await;
        assert_eq!(theirs, unknown, "{rest}");
    }
    assert_eq!(
        sub_call(&app, Method::DELETE, &id, &t.alice, None).await.0,
        204
    );
    let (status, err) = sub_call(&app, Method::PUT, &id, &t.alice, Some(body)).await;
    assert_eq!(
        (status, err["error"]["message"].as_str()),
        (409, Some("subscription id is taken"))
    );
    // Later streams: Alice's is never linked, Bob's is. Alice's append comes first, so once
    // Bob's stream is linked the driver has looked at Alice's too.
    let (a2, b2) = (format!("{root}/alice2"), format!("{root}/bob2"));
    assert_eq!(call(&app, Method::PUT, &a2, &t.alice, "a2").await.0, 201);
    assert_eq!(call(&app, Method::PUT, &b2, &t.bob, "b2").await.0, 201);
    wait_until(|| async {
        let (_, v) = sub_call(&app, Method::GET, &id, &t.bob, None).await;
        paths(&v).contains(&b2)
    })
    .await;
    let (status, view) = sub_call(&app, Method::GET, &id, ADMIN, None).await;
    assert_eq!((status, paths(&view)), (200, vec![b.clone(), b2.clone()]));
    // An explicit link to Alice's stream shows it as missing: no tail, never pending.
    let (status, _) = sub_call(
        &app,
        Method::POST,
        &format!("{id}/streams"),
        &t.bob,
        Some(json!({"streams": [a.clone()]})),
    )
    .await;
    assert_eq!(status, 204);
    let (status, claim) = sub_call(
        &app,
        Method::POST,
        &format!("{id}/claim"),
        &t.bob,
        Some(json!({"worker": "w1"})),
    )
    .await;
    assert_eq!(status, 200, "{claim}");
    let streams = claim["streams"].as_array().unwrap();
    let alice = streams
        .iter()
        .find(|s| s["path"] == a.as_str())
        .expect("the explicit link");
    assert_eq!(alice["tail_offset"], "0000000000000000_0000000000000000");
    assert_eq!(alice["has_pending"], false);
    let pending: Vec<&str> = streams
        .iter()
        .filter(|s| s["has_pending"] == true)
        .map(|s| s["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        pending,
        [b2.as_str()],
        "only Bob's new stream has data past its cursor"
    );
    assert_eq!(
        sub_call(&app, Method::DELETE, &id, &t.bob, None).await.0,
        204
    );
    assert_eq!(sub_call(&app, Method::GET, &id, &t.bob, None).await.0, 404);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_urls_come_from_configuration_never_from_the_host_header() {
    for public_url in ["", "https://streams.example.com/ds"] {
        let app = start_secured(|s| s.durable.public_url = public_url.into()).await;
        let origin = match public_url {
            "" => format!("http://{}/ds", app.addr),
            url => url.to_owned(),
        };
        let name = unique("host-");
        let res = app
            .http
            .put(ds(&app, &name))
            .bearer_auth(ADMIN)
            .header("host", "evil.example")
            .header("content-type", "text/plain")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        assert_eq!(
            res.headers()["location"],
            format!("{origin}/v1/stream/{name}").as_str()
        );
        // A webhook subscription made with a forged Host: its key URL and the callback URL its
        // wake carries are the configured ones.
        let (hook, mut got) = receiver().await;
        let id = unique("hook-");
        let body = json!({"type": "webhook", "streams": [name], "webhook": {"url": hook}});
        let res = app
            .http
            .put(ds(&app, &format!("__ds/subscriptions/{id}")))
            .bearer_auth(ADMIN)
            .header("host", "evil.example")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        let view: Value = res.json().await.unwrap();
        let jwks = format!("{origin}/v1/stream/__ds/jwks.json");
        assert_eq!(view["webhook"]["signing"]["jwks_url"], jwks.as_str());
        assert_eq!(call(&app, Method::POST, &name, ADMIN, "x").await.0, 204);
        let wake = tokio::time::timeout(WAIT, got.recv())
            .await
            .expect("a wake")
            .unwrap();
        let callback = format!("{origin}/v1/stream/__ds/subscriptions/{id}/callback");
        assert_eq!(wake["callback_url"], callback.as_str());
        app.shutdown().await;
    }
}

/// A webhook receiver answering 200 `{}`; what it got.
async fn receiver() -> (String, tokio::sync::mpsc::UnboundedReceiver<Value>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::Json<Value>| {
            let _ = tx.send(body.0);
            async { "{}" }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_to_ipv6_forms_of_local_addresses_are_refused() {
    let app = start_secured(|s| s.durable.webhook_allow_localhost = false).await;
    for host in [
        "[::127.0.0.1]",
        "[::ffff:127.0.0.1]",
        "[::ffff:0:127.0.0.1]",
        "[64:ff9b::127.0.0.1]",
        "[64:ff9b:1::a00:1]",
        "[2002:7f00:1::1]",
        "[2002:a9fe:a9fe::1]",
        "[fec0::1]",
    ] {
        let body = json!({"type": "webhook", "pattern": "x/*",
                          "webhook": {"url": format!("https://{host}/hook")}});
        let (status, err) = sub_call(&app, Method::PUT, &unique("ssrf-"), ADMIN, Some(body)).await;
        assert_eq!(
            (status, err["error"]["code"].as_str()),
            (400, Some("WEBHOOK_URL_REJECTED")),
            "{host}"
        );
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_streams_follow_the_edges_cors_policy() {
    let app = start_secured(|s| {
        s.edge.cors_allowed_origins = vec!["https://app.example".into()];
        s.edge.early_connect_wait = Duration::from_millis(100);
    })
    .await;
    let name = unique("cors-");
    assert_eq!(call(&app, Method::PUT, &name, ADMIN, "x").await.0, 201);
    let get = |origin: &'static str, path: String| {
        app.http
            .get(path)
            .bearer_auth(ADMIN)
            .header("origin", origin)
            .send()
    };
    let other = get("https://evil.example", ds(&app, &name)).await.unwrap();
    assert_eq!(other.status(), 200);
    assert!(other.headers().get("access-control-allow-origin").is_none());
    let bridge = app.url(&format!("/ds/v1/sluice/{}", unique("none-")));
    let other = get("https://evil.example", bridge).await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    let allowed = get("https://app.example", ds(&app, &name)).await.unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let exposed = allowed.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap();
    assert!(exposed.contains("stream-next-offset"), "{exposed}");
    // A preflight for an append with a producer, from the allowed origin, without a token.
    let pre = app
        .http
        .request(Method::OPTIONS, ds(&app, &name))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "producer-id,content-type")
        .send()
        .await
        .unwrap();
    assert_eq!(pre.status(), 200);
    assert_eq!(
        pre.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let allow = pre.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap();
    assert!(allow.contains("producer-id"), "{allow}");
    app.shutdown().await;
    // With no origins configured, no origin is allowed at all.
    let app = start_secured(|_| {}).await;
    let name = unique("cors-");
    assert_eq!(call(&app, Method::PUT, &name, ADMIN, "x").await.0, 201);
    let res = app
        .http
        .get(ds(&app, &name))
        .bearer_auth(ADMIN)
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("access-control-allow-origin").is_none());
    app.shutdown().await;
}
