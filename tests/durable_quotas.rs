//! Durable Streams budgets per owner, against the real server and broker with two real JWT
//! owners and the static administrator: streams per owner, bytes per owner (counted again after
//! a restart from what is stored), subscriptions per owner, and the creation rate per identity.
//! Each refusal is asserted exactly, and so is the owner next door who is not refused.

mod common;

use common::ds::*;
use common::*;
use reqwest::Method;
use serde_json::json;

const STREAMS_FULL: &str =
    "this owner holds 3 streams, the most one owner may (durable.max_streams_per_owner)";
const BYTES_FULL: &str =
    "this owner's streams hold 100 bytes, the most one owner may (durable.max_bytes_per_owner)";

/// How often the edge refused for `reason`, from `/metrics`.
async fn rejected(app: &TestApp, reason: &str) -> u64 {
    let text = app
        .http
        .get(app.url("/metrics"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let key = format!("sluice_edge_rejected_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .map_or(0, |n| n.parse().unwrap())
}

fn quotas(s: &mut sluice::Settings) {
    s.durable.max_streams_per_owner = 3;
    s.durable.max_bytes_per_owner = 100;
    s.limits.requests_per_second = 1_000;
    s.limits.request_burst = 1_000;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_holds_at_most_its_streams_and_a_deleted_one_frees_its_place() {
    let app = start_secured(quotas).await;
    let t = tokens();
    let mine: Vec<String> = (0..4).map(|i| unique(&format!("q/alice-{i}-"))).collect();
    for path in &mine[..3] {
        assert_eq!(call(&app, Method::PUT, path, &t.alice, "").await.0, 201);
    }
    let before = rejected(&app, "ds_owner_quota").await;
    let full = (507, STREAMS_FULL.to_owned());
    assert_eq!(call(&app, Method::PUT, &mine[3], &t.alice, "").await, full);
    assert_eq!(rejected(&app, "ds_owner_quota").await, before + 1);
    // The refused creation made nothing.
    assert_eq!(call(&app, Method::GET, &mine[3], &t.alice, "").await.0, 404);
    // Another owner, and the administrator, are not held to Alice's count.
    for token in [&t.bob, ADMIN] {
        let theirs = unique("q/other-");
        assert_eq!(call(&app, Method::PUT, &theirs, token, "").await.0, 201);
    }
    // Re-confirming an existing stream creates nothing, so it is not refused.
    assert_eq!(call(&app, Method::PUT, &mine[0], &t.alice, "").await.0, 200);
    assert_eq!(
        call(&app, Method::DELETE, &mine[0], &t.alice, "").await.0,
        204
    );
    assert_eq!(call(&app, Method::PUT, &mine[3], &t.alice, "").await.0, 201);
    assert_eq!(
        call(&app, Method::PUT, &unique("q/alice-5-"), &t.alice, "").await,
        full
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owners_bytes_are_capped_across_its_streams_and_counted_again_after_a_restart() {
    let app = start_secured(quotas).await;
    let t = tokens();
    let (a, b) = (unique("q/a-"), unique("q/b-"));
    assert_eq!(
        call(&app, Method::PUT, &a, &t.alice, &"x".repeat(60))
            .await
            .0,
        201
    );
    assert_eq!(call(&app, Method::PUT, &b, &t.alice, "").await.0, 201);
    let full = (507, BYTES_FULL.to_owned());
    // 60 + 41 crosses 100 though each stream alone is far below durable.max_stream_bytes.
    assert_eq!(
        call(&app, Method::POST, &b, &t.alice, &"y".repeat(41)).await,
        full
    );
    assert_eq!(
        call(&app, Method::POST, &b, &t.alice, &"y".repeat(40))
            .await
            .0,
        204
    );
    assert_eq!(call(&app, Method::POST, &a, &t.alice, "z").await, full);
    // Bob's budget is his own.
    let bobs = unique("q/bob-");
    assert_eq!(
        call(&app, Method::PUT, &bobs, &t.bob, &"w".repeat(100))
            .await
            .0,
        201
    );
    // A refused append stored nothing: the stream reads back exactly what was accepted.
    let (status, body) = call(&app, Method::GET, &format!("{b}?offset=-1"), &t.alice, "").await;
    assert_eq!((status, body), (200, "y".repeat(40)));
    let settings = app.settings.clone();
    let dir = app.shutdown().await;
    let app = start_exact(settings, dir, sluice::Registry::new()).await;
    // What was restored counts: Alice is still full, and deleting a stream returns its bytes.
    assert_eq!(call(&app, Method::POST, &b, &t.alice, "z").await, full);
    assert_eq!(call(&app, Method::DELETE, &a, &t.alice, "").await.0, 204);
    assert_eq!(
        call(&app, Method::POST, &b, &t.alice, &"z".repeat(60))
            .await
            .0,
        204
    );
    assert_eq!(call(&app, Method::POST, &b, &t.alice, "z").await, full);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_holds_at_most_its_subscriptions() {
    let app = start_secured(|s| s.durable.max_subscriptions_per_owner = 2).await;
    let t = tokens();
    let mut wakes = Vec::new();
    for token in [&t.alice, &t.bob] {
        let wake = unique("q/wake-");
        let res = app.http.put(ds(&app, &wake)).bearer_auth(token);
        let res = res.header("content-type", "application/json").send();
        assert_eq!(res.await.unwrap().status(), 201);
        wakes.push(wake);
    }
    let sub = |wake: &str| json!({"type": "pull-wake", "pattern": "q/**", "wake_stream": wake});
    let (alices, bobs) = (sub(&wakes[0]), sub(&wakes[1]));
    for (token, body) in [(&t.alice, &alices), (&t.alice, &alices), (&t.bob, &bobs)] {
        let id = unique("qs-");
        let (status, view) = sub_call(&app, Method::PUT, &id, token, Some(body.clone())).await;
        assert_eq!(status, 201, "{view}");
    }
    let (status, err) = sub_call(&app, Method::PUT, &unique("qs-"), &t.alice, Some(alices)).await;
    assert_eq!(status, 507, "{err}");
    assert_eq!(err["error"]["code"], "QUOTA_EXCEEDED", "{err}");
    assert_eq!(
        err["error"]["message"],
        "this owner holds 2 subscriptions, the most one owner may (durable.max_subscriptions_per_owner)"
    );
    let (status, _) = sub_call(&app, Method::PUT, &unique("qs-"), &t.bob, Some(bobs)).await;
    assert_eq!(status, 201, "Bob has one more");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creations_past_the_request_rate_get_429_for_that_identity_only() {
    let app = start_secured(|s| {
        s.limits.requests_per_second = 1;
        s.limits.request_burst = 2;
    })
    .await;
    let t = tokens();
    for _ in 0..2 {
        assert_eq!(
            call(&app, Method::PUT, &unique("r/a-"), &t.alice, "")
                .await
                .0,
            201
        );
    }
    let before = rejected(&app, "rate_limited").await;
    let path = unique("r/a-");
    let res = app
        .http
        .put(ds(&app, &path))
        .bearer_auth(&t.alice)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()["retry-after"], "1");
    assert_eq!(rejected(&app, "rate_limited").await, before + 1);
    assert_eq!(call(&app, Method::GET, &path, &t.alice, "").await.0, 404);
    assert_eq!(
        call(&app, Method::PUT, &unique("r/b-"), &t.bob, "").await.0,
        201
    );
    for _ in 0..5 {
        assert_eq!(
            call(&app, Method::PUT, &unique("r/admin-"), ADMIN, "")
                .await
                .0,
            201
        );
    }
    app.shutdown().await;
}
