//! HTTP client surfaces against the real app and broker: SSE's `retry:` field and its 204 after
//! the end, `GET /v1/streams` (filters, cursor pages, errors), and the console's assets.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

async fn get(app: &TestApp, path: &str, headers: &[(&str, String)]) -> reqwest::Response {
    let mut req = app.http.get(app.url(path));
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    req.send().await.unwrap()
}

async fn finished(app: &TestApp, id: &str) {
    wait_until(|| async {
        let s = app.status(id).await;
        ["success", "failed", "timeout", "cancelled"].contains(&s["state"].as_str().unwrap_or(""))
    })
    .await;
}

#[tokio::test]
async fn sse_sends_retry_and_answers_204_at_or_past_the_end() {
    let app = start(|s| s.edge.sse_retry = Duration::from_millis(750)).await;
    let id = app
        .request(json!({"type": "demo:stream_ticks:v1:requested",
                                "payload": {"count": 3, "interval_ms": 5}}))
        .await;
    let path = format!("/v1/streams/{id}/events");
    let body = get(&app, &path, &[]).await.text().await.unwrap();
    assert!(body.starts_with("retry: 750\n"), "{body:?}");
    let ids: Vec<i64> = body
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .map(|v| v.parse().unwrap())
        .collect();
    assert_eq!(ids.len(), 5, "started, 3 chunks, success: {body}");
    let terminal = *ids.last().unwrap();

    // One before the end: exactly the terminal event, then the response ends.
    let resp = get(
        &app,
        &path,
        &[("last-event-id", (terminal - 1).to_string())],
    )
    .await;
    assert_eq!(resp.status(), 200);
    let tail = resp.text().await.unwrap();
    assert_eq!(
        tail.matches("\nid: ").count() + usize::from(tail.starts_with("id: ")),
        1,
        "{tail}"
    );
    assert!(tail.contains(&format!("id: {terminal}\n")), "{tail}");

    // At or past the terminal event: 204, which stops a browser's EventSource.
    for after in [terminal, terminal + 5] {
        for (k, v) in [("last-event-id", after.to_string())] {
            let resp = get(&app, &path, &[(k, v)]).await;
            assert_eq!(resp.status(), 204, "Last-Event-ID {after}");
            assert!(resp.text().await.unwrap().is_empty());
        }
    }
    let q = get(&app, &format!("{path}?last_event_id={terminal}"), &[]).await;
    assert_eq!(q.status(), 204);
    // A running stream's resume point is never answered 204.
    let running = app
        .request(json!({"type": "demo:stream_ticks:v1:requested",
                                     "payload": {"count": 1000, "interval_ms": 50}}))
        .await;
    let mut sse = app.sse(&running, None).await;
    let first = sse.next_event().await.unwrap();
    let resp = get(
        &app,
        &format!("/v1/streams/{running}/events"),
        &[("last-event-id", first.id.unwrap().to_string())],
    )
    .await;
    assert_eq!(resp.status(), 200);
    drop(resp);
    // Ahead of a running stream's newest event: refused, not 204.
    let ahead = get(
        &app,
        &format!("/v1/streams/{running}/events"),
        &[("last-event-id", "999999".into())],
    )
    .await;
    assert_eq!(ahead.status(), 400);
    let body: Value = ahead.json().await.unwrap();
    assert_eq!(body["error"]["code"], "last_event_id_ahead");
    app.cancel(&running).await;
    assert!(app
        .metrics_text()
        .await
        .contains("sluice_sse_ended_reconnects_total 3"));
    app.shutdown().await;
}

#[tokio::test]
async fn stream_list_filters_pages_newest_first_and_refuses_bad_parameters() {
    let app = start(|_| {}).await;
    let before = chrono::Utc::now();
    let mut ids = Vec::new();
    for payload in [
        json!({"count": 1}),
        json!({"count": 3, "fail_at": 2}),
        json!({"count": 2}),
    ] {
        let id = app
            .request(json!({"type": "demo:stream_ticks:v1:requested", "payload": payload}))
            .await;
        finished(&app, &id).await;
        ids.push(id);
    }
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    let list = |q: String| {
        let app = &app;
        async move {
            let resp = get(app, &format!("/v1/streams{q}"), &[]).await;
            assert_eq!(resp.status(), 200, "{q}");
            resp.json::<Value>().await.unwrap()
        }
    };
    let names = |v: &Value| -> Vec<String> {
        v["streams"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["stream_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let all = list(String::new()).await;
    assert_eq!(names(&all), newest_first);
    assert_eq!(all["next_cursor"], Value::Null);
    let first = &all["streams"][0];
    assert_eq!(first["state"], "success");
    assert_eq!(first["chunks"], 2);
    assert_eq!(first["type"], "demo:stream_ticks:v1:requested");

    let p1 = list("?limit=2".into()).await;
    assert_eq!(names(&p1), newest_first[..2]);
    let cursor = p1["next_cursor"].as_str().expect("a cursor").to_owned();
    let p2 = list(format!("?limit=2&cursor={cursor}")).await;
    assert_eq!(names(&p2), newest_first[2..]);
    assert_eq!(p2["next_cursor"], Value::Null);

    assert_eq!(names(&list("?state=failed".into()).await), [ids[1].clone()]);
    assert_eq!(
        names(&list("?type=demo:stream_ticks".into()).await),
        newest_first
    );
    assert!(names(&list("?type=messaging:".into()).await).is_empty());
    let after = (before - chrono::Duration::seconds(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    assert_eq!(
        names(&list(format!("?created_after={after}")).await),
        newest_first
    );
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    assert!(names(&list(format!("?created_after={now}")).await).is_empty());

    for (q, code) in [
        ("?limit=0", "invalid_limit"),
        ("?limit=501", "invalid_limit"),
        ("?limit=x", "invalid_limit"),
        ("?state=bogus", "invalid_state"),
        ("?cursor=garbage", "invalid_cursor"),
        ("?created_after=yesterday", "invalid_created_after"),
        ("?sort=asc", "invalid_query"),
    ] {
        let resp = get(&app, &format!("/v1/streams{q}"), &[]).await;
        assert_eq!(resp.status(), 400, "{q}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{q}");
    }
    app.shutdown().await;
}

#[tokio::test]
async fn the_console_is_served_with_a_strict_policy_and_its_api_calls_need_the_token() {
    let app = start(|s| s.edge.api_tokens = vec!["console-token".into()]).await;
    let page = get(&app, "/console", &[]).await;
    assert_eq!(page.status(), 200, "the page itself needs no token");
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    let html = page.text().await.unwrap();
    assert!(html.contains("/console/app.js"), "{html}");
    for (path, kind) in [
        ("/console/app.js", "text/javascript"),
        ("/console/app.css", "text/css"),
    ] {
        let r = get(&app, path, &[]).await;
        assert_eq!(r.status(), 200, "{path}");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with(kind),
            "{path}"
        );
        assert!(
            !r.text().await.unwrap().trim().is_empty(),
            "{path} has content"
        );
    }
    let list = get(&app, "/v1/streams", &[]).await;
    assert_eq!(list.status(), 401);
    let body: Value = list.json().await.unwrap();
    assert_eq!(body["error"]["code"], "missing_token");
    let ok = get(
        &app,
        "/v1/streams",
        &[("authorization", "Bearer console-token".into())],
    )
    .await;
    assert_eq!(ok.status(), 200);
    app.shutdown().await;
}

#[tokio::test]
async fn cors_answers_preflights_only_for_configured_origins() {
    let app = start(|s| s.edge.cors_allowed_origins = vec!["https://app.example.com".into()]).await;
    let preflight = |origin: &'static str| {
        app.http
            .request(reqwest::Method::OPTIONS, app.url("/v1/streams/x/events"))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header(
                "access-control-request-headers",
                "authorization,last-event-id",
            )
            .send()
    };
    let ok = preflight("https://app.example.com").await.unwrap();
    let h = ok.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    let allowed = h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        allowed.contains("authorization") && allowed.contains("last-event-id"),
        "{allowed}"
    );
    let other = preflight("https://evil.example.net").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    // A real request from the allowed origin carries the header too.
    let get = app
        .http
        .get(app.url("/v1/streams"))
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(
        get.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    app.shutdown().await;
}
