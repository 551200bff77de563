//! Authentication and authorisation on every surface, against the real server and broker: a
//! matrix of callers (no token, expired, wrong signature, wrong audience, a token for another
//! stream, a token for the stream, its owner, an administrator) × every route and transport (HTTP
//! status, cancel, list and request; SSE with a header and with `?access_token=`; WebSocket; gRPC),
//! each cell asserting the exact status and error code. Also: owners from Kafka and the edge,
//! unknown ids answering like forbidden ones, JWKS reloads and the metrics token.

mod common;

use std::time::Duration;

use common::grpc::{expect_refusal, refusal};
use common::*;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};
use sluice::edge::grpc::proto::streams_client::StreamsClient;
use sluice::edge::grpc::proto::{StreamRef, SubscribeRequest};
use tokio_tungstenite::tungstenite::Error as WsError;
use tonic::Code;

const SECRET: &[u8] = b"matrix-secret";
const ADMIN: &str = "static-admin-token";
const ISSUER: &str = "https://issuer.test";

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn jwt(claims: Value, secret: &[u8]) -> String {
    let mut c = json!({"exp": now() + 600, "iss": ISSUER, "aud": "sluice"});
    for (k, v) in claims.as_object().unwrap() {
        c[k] = v.clone();
    }
    encode(&Header::default(), &c, &EncodingKey::from_secret(secret)).unwrap()
}

async fn start_secured() -> TestApp {
    start(|s| {
        s.edge.api_tokens = vec![ADMIN.into()];
        s.auth.jwt_secret = String::from_utf8(SECRET.to_vec()).unwrap();
        s.auth.issuers = vec![ISSUER.into()];
        s.auth.audiences = vec!["sluice".into()];
        s.edge.early_connect_wait = Duration::from_millis(300);
    })
    .await
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Who {
    Nobody,
    Expired,
    BadSignature,
    WrongAudience,
    OtherStream,
    ForStream,
    Owner,
    Admin,
}

const EVERYONE: [Who; 8] = [
    Who::Nobody,
    Who::Expired,
    Who::BadSignature,
    Who::WrongAudience,
    Who::OtherStream,
    Who::ForStream,
    Who::Owner,
    Who::Admin,
];

#[derive(Debug, PartialEq)]
enum Expect {
    Unauthorized(&'static str),
    Forbidden,
    Allowed,
}

impl Who {
    fn token(self, stream: &str) -> Option<String> {
        let alice = json!({"sub": "alice", "types": ["demo:*"]});
        Some(match self {
            Who::Nobody => return None,
            Who::Expired => jwt(json!({"sub": "alice", "exp": now() - 3600}), SECRET),
            Who::BadSignature => jwt(alice, b"not-the-secret"),
            Who::WrongAudience => jwt(json!({"sub": "alice", "aud": "elsewhere"}), SECRET),
            Who::OtherStream => jwt(
                json!({"sub": "mallory", "streams": ["other-*"], "types": ["demo:*"]}),
                SECRET,
            ),
            Who::ForStream => jwt(json!({"sub": "carol", "streams": [stream]}), SECRET),
            Who::Owner => jwt(alice, SECRET),
            Who::Admin => ADMIN.into(),
        })
    }

    fn expect(self) -> Expect {
        match self {
            Who::Nobody => Expect::Unauthorized("missing_token"),
            Who::Expired => Expect::Unauthorized("token_expired"),
            Who::BadSignature => Expect::Unauthorized("token_signature"),
            Who::WrongAudience => Expect::Unauthorized("token_audience"),
            Who::OtherStream => Expect::Forbidden,
            Who::ForStream | Who::Owner | Who::Admin => Expect::Allowed,
        }
    }
}

/// Asserts an HTTP refusal's exact status and code; returns the body.
async fn refused(resp: reqwest::Response, status: u16, code: &str, cell: &str) -> Value {
    assert_eq!(resp.status().as_u16(), status, "{cell}");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], code, "{cell}: {body}");
    body
}

async fn expect_http(resp: reqwest::Response, expect: &Expect, ok: u16, cell: &str) -> String {
    match expect {
        Expect::Unauthorized(code) => {
            refused(resp, 401, code, cell).await;
            String::new()
        }
        Expect::Forbidden => {
            refused(resp, 403, "forbidden", cell).await;
            String::new()
        }
        Expect::Allowed => {
            assert_eq!(resp.status().as_u16(), ok, "{cell}");
            tokio::time::timeout(WAIT, resp.text())
                .await
                .unwrap()
                .unwrap()
        }
    }
}

/// Waits until the stream's record exists (intake has registered it).
async fn wait_recorded(app: &TestApp, id: &str) {
    wait_until(|| async {
        let r = app.http.get(app.url(&format!("/v1/streams/{id}")));
        r.bearer_auth(ADMIN).send().await.unwrap().status() == 200
    })
    .await;
}

/// Adds `authorization: Bearer <token>` to every call, when there is a token.
#[derive(Clone)]
struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(b) = &self.0 {
            r.metadata_mut().insert("authorization", b.clone());
        }
        Ok(r)
    }
}

type Client = StreamsClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>,
>;

/// A gRPC client of the app presenting `token`.
async fn grpc_as(app: &TestApp, token: Option<&str>) -> Client {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let bearer = token.map(|t| format!("Bearer {t}").parse().unwrap());
    StreamsClient::with_interceptor(channel, Bearer(bearer))
}

/// The stored events an SSE body carries: `id:` lines.
fn sse_ids(body: &str) -> usize {
    body.lines().filter(|l| l.starts_with("id:")).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_surface_answers_every_kind_of_caller_exactly() {
    let app = start_secured().await;
    let owner = Who::Owner.token("").unwrap();
    let r = app
        .http
        .post(app.url("/v1/streams"))
        .bearer_auth(&owner)
        .json(&ticks(json!({"count": 2, "interval_ms": 1})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["stream_id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_until(|| async {
        let r = app
            .http
            .get(app.url(&format!("/v1/streams/{id}")))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        r.status() == 200 && r.json::<Value>().await.unwrap()["state"] == "success"
    })
    .await;

    for who in EVERYONE {
        let token = who.token(&id);
        let expect = who.expect();
        let cell = |surface: &str| format!("{who:?} × {surface}");
        let auth = |req: reqwest::RequestBuilder| match &token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };

        // HTTP status and cancel (the stream has ended: an allowed cancel is a 409).
        let r = auth(app.http.get(app.url(&format!("/v1/streams/{id}"))));
        let body = expect_http(r.send().await.unwrap(), &expect, 200, &cell("status")).await;
        if expect == Expect::Allowed {
            assert_eq!(
                serde_json::from_str::<Value>(&body).unwrap()["stream_id"],
                id
            );
        }
        let r = auth(app.http.delete(app.url(&format!("/v1/streams/{id}"))));
        let r = r.send().await.unwrap();
        if expect == Expect::Allowed {
            refused(r, 409, "already_finished", &cell("cancel")).await;
        } else {
            expect_http(r, &expect, 0, &cell("cancel")).await;
        }

        // SSE, header token and query token.
        let r = auth(app.http.get(app.url(&format!("/v1/streams/{id}/events"))));
        let body = expect_http(r.send().await.unwrap(), &expect, 200, &cell("sse header")).await;
        if expect == Expect::Allowed {
            assert_eq!(sse_ids(&body), 4, "{}: {body}", cell("sse header"));
        }
        let mut url = app.url(&format!("/v1/streams/{id}/events"));
        if let Some(t) = &token {
            url.push_str(&format!("?access_token={t}"));
        }
        let body = expect_http(
            app.http.get(url).send().await.unwrap(),
            &expect,
            200,
            &cell("sse query"),
        )
        .await;
        if expect == Expect::Allowed {
            assert_eq!(sse_ids(&body), 4, "{}: {body}", cell("sse query"));
        }

        // List: anyone authenticated may list, and sees only what it may read.
        let r = auth(app.http.get(app.url("/v1/streams")));
        let r = r.send().await.unwrap();
        match &expect {
            Expect::Unauthorized(code) => drop(refused(r, 401, code, &cell("list")).await),
            other => {
                assert_eq!(r.status(), 200, "{}", cell("list"));
                let page: Value = r.json().await.unwrap();
                let listed = page["streams"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|s| s["stream_id"] == id);
                assert_eq!(
                    listed,
                    *other == Expect::Allowed,
                    "{}: {page}",
                    cell("list")
                );
            }
        }

        // Request: needs a `types` claim matching demo:stream_ticks.
        let r = auth(app.http.post(app.url("/v1/streams")));
        let r = r.json(&ticks(json!({"count": 1}))).send().await.unwrap();
        match (&expect, who) {
            (Expect::Unauthorized(code), _) => drop(refused(r, 401, code, &cell("request")).await),
            (_, Who::ForStream) => drop(refused(r, 403, "forbidden", &cell("request")).await),
            _ => assert_eq!(r.status(), 202, "{}", cell("request")),
        }

        ws_cell(&app, &id, token.as_deref(), &expect, &cell("websocket")).await;
        grpc_cell(&app, &id, token.as_deref(), &expect, &cell("grpc")).await;
    }

    // Refusals were counted by reason.
    let metrics = app.metrics_text().await;
    for reason in [
        "missing_token",
        "token_expired",
        "token_signature",
        "token_audience",
        "forbidden",
    ] {
        assert!(
            metrics.contains(&format!(
                "sluice_edge_rejected_total{{reason=\"{reason}\"}}"
            )),
            "{reason} not counted"
        );
    }
    app.shutdown().await;
}

async fn ws_cell(app: &TestApp, id: &str, token: Option<&str>, expect: &Expect, cell: &str) {
    let mut url = format!("ws://{}/ws", app.addr);
    if let Some(t) = token {
        url.push_str(&format!("?access_token={t}"));
    }
    let connected = tokio_tungstenite::connect_async(url.as_str()).await;
    let mut ws = match (expect, connected) {
        (Expect::Unauthorized(code), Err(WsError::Http(resp))) => {
            assert_eq!(resp.status(), 401, "{cell}");
            let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["error"]["code"], *code, "{cell}");
            return;
        }
        (Expect::Unauthorized(_), other) => panic!("{cell}: expected a 401, got {other:?}"),
        (_, Ok((ws, _))) => ws,
        (_, Err(e)) => panic!("{cell}: upgrade refused: {e}"),
    };
    common::ws::send(&mut ws, json!({"type": "subscribe", "stream_id": id})).await;
    let mut stored = 0;
    loop {
        let frame = common::ws::recv(&mut ws).await;
        match expect {
            Expect::Forbidden => {
                assert_eq!(frame["type"], "error", "{cell}: {frame}");
                assert_eq!(frame["payload"]["code"], "forbidden", "{cell}");
                assert_eq!(frame["payload"]["status"], 403, "{cell}");
                return;
            }
            _ => {
                assert_ne!(frame["type"], "error", "{cell}: {frame}");
                if frame["id"].is_i64() {
                    stored += 1;
                }
                if frame["type"] == "demo:stream_ticks:v1:success" {
                    assert_eq!(stored, 4, "{cell}");
                    return;
                }
            }
        }
    }
}

async fn grpc_cell(app: &TestApp, id: &str, token: Option<&str>, expect: &Expect, cell: &str) {
    let mut c = grpc_as(app, token).await;
    let stream_ref = || StreamRef {
        stream_id: id.into(),
    };
    let status = c.status(stream_ref()).await;
    let cancel = c.cancel(stream_ref()).await;
    let sub = c
        .subscribe_events(SubscribeRequest {
            stream_id: id.into(),
            last_event_id: None,
            event_types: vec![],
        })
        .await;
    match expect {
        Expect::Unauthorized(code) => {
            expect_refusal(status, Code::Unauthenticated, code, 401);
            expect_refusal(cancel, Code::Unauthenticated, code, 401);
            expect_refusal(sub, Code::Unauthenticated, code, 401);
        }
        Expect::Forbidden => {
            expect_refusal(status, Code::PermissionDenied, "forbidden", 403);
            expect_refusal(cancel, Code::PermissionDenied, "forbidden", 403);
            expect_refusal(sub, Code::PermissionDenied, "forbidden", 403);
        }
        Expect::Allowed => {
            assert_eq!(status.unwrap().into_inner().stream_id, id, "{cell}");
            let (code, reason, _) = refusal(&cancel.unwrap_err());
            assert_eq!(
                (code, reason.as_str()),
                (Code::FailedPrecondition, "already_finished")
            );
            let mut events = sub.unwrap().into_inner();
            let mut n = 0;
            while let Some(e) = tokio::time::timeout(WAIT, events.message())
                .await
                .unwrap()
                .unwrap()
            {
                assert_eq!(e.stream_id, id);
                n += 1;
            }
            assert_eq!(n, 4, "{cell}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_streams_answer_like_forbidden_ones_and_types_need_an_admin() {
    let app = start_secured().await;
    let mallory = Who::OtherStream.token("").unwrap();
    let admin_id = app
        .http
        .post(app.url("/v1/streams"))
        .bearer_auth(ADMIN)
        .json(&ticks(json!({"count": 1})))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["stream_id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_recorded(&app, &admin_id).await;
    let status = |id: String, token: String| {
        let req = app.http.get(app.url(&format!("/v1/streams/{id}")));
        async move { req.bearer_auth(token).send().await.unwrap() }
    };
    let existing = refused(
        status(admin_id.clone(), mallory.clone()).await,
        403,
        "forbidden",
        "existing",
    )
    .await;
    let unknown = refused(
        status("no-such-stream".into(), mallory.clone()).await,
        403,
        "forbidden",
        "unknown",
    )
    .await;
    let strip = |b: &Value, id: &str| b["error"]["message"].as_str().unwrap().replace(id, "ID");
    assert_eq!(
        strip(&existing, &admin_id),
        strip(&unknown, "no-such-stream")
    );
    // A pattern the caller holds lets it see that its own stream does not exist.
    refused(
        status("other-missing".into(), mallory.clone()).await,
        404,
        "not_found",
        "own pattern",
    )
    .await;
    refused(
        status("no-such-stream".into(), ADMIN.into()).await,
        404,
        "not_found",
        "admin",
    )
    .await;

    let mut c = grpc_as(&app, Some(&mallory)).await;
    let types = c
        .subscribe_events(SubscribeRequest {
            stream_id: String::new(),
            last_event_id: None,
            event_types: vec!["demo:stream_ticks:v1".into()],
        })
        .await;
    expect_refusal(types, Code::PermissionDenied, "forbidden", 403);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_come_from_kafka_metadata_or_the_token_never_from_the_body() {
    let app = start_secured().await;
    let dave = jwt(json!({"sub": "dave"}), SECRET);
    let alice = Who::Owner.token("").unwrap();
    let from_kafka = unique("kafka-owned-");
    let body = json!({"type": "demo:stream_ticks:v1:requested", "stream_id": from_kafka,
                      "payload": {"count": 1}, "metadata": {"owner": "dave"}});
    app.produce_raw(body.to_string().as_bytes()).await;
    wait_recorded(&app, &from_kafka).await;
    let get = |id: &str, token: &str| {
        let req = app
            .http
            .get(app.url(&format!("/v1/streams/{id}")))
            .bearer_auth(token);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(
        get(&from_kafka, &dave).await,
        200,
        "metadata.owner from Kafka is trusted"
    );
    assert_eq!(get(&from_kafka, &alice).await, 403);

    // Over HTTP, a body claiming dave as owner still belongs to the caller.
    let spoofed = unique("spoofed-");
    let r = app
        .http
        .post(app.url("/v1/streams"))
        .bearer_auth(&alice)
        .json(
            &json!({"type": "demo:stream_ticks:v1:requested", "stream_id": spoofed,
                      "payload": {"count": 1}, "metadata": {"owner": "dave"}, "owner": "dave"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // Subscribing at once works for the owner: the edge remembers what it just submitted.
    let r = app
        .http
        .get(app.url(&format!("/v1/streams/{spoofed}/events")))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = tokio::time::timeout(WAIT, r.text()).await.unwrap().unwrap();
    assert_eq!(sse_ids(&body), 3, "{body}");
    assert_eq!(
        get(&spoofed, &dave).await,
        403,
        "a body cannot name another owner"
    );
    let record = app
        .http
        .get(app.url(&format!("/v1/streams/{spoofed}")))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(record.status(), 200);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_file_is_reloaded_when_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    let fixtures = repo_path("tests/fixtures/jwt");
    let fixtures = fixtures.display();
    let full: Value =
        serde_json::from_slice(&std::fs::read(format!("{fixtures}/jwks.json")).unwrap()).unwrap();
    let rsa_only = json!({"keys": [full["keys"][0].clone()]});
    std::fs::write(&jwks, rsa_only.to_string()).unwrap();
    let path = jwks.clone();
    let app = start(move |s| {
        s.auth.jwks_file = Some(path);
        s.auth.jwks_reload_interval = Duration::from_millis(100);
    })
    .await;
    let es =
        EncodingKey::from_ec_pem(&std::fs::read(format!("{fixtures}/es256-private.pem")).unwrap())
            .unwrap();
    let mut header = Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("ec-1".into());
    let token = encode(
        &header,
        &json!({"sub": "erin", "exp": now() + 600, "streams": ["*"]}),
        &es,
    )
    .unwrap();
    let list = || {
        app.http
            .get(app.url("/v1/streams"))
            .bearer_auth(&token)
            .send()
    };
    refused(list().await.unwrap(), 401, "token_no_key", "before reload").await;
    std::fs::write(&jwks, b"{ not json").unwrap();
    wait_until(|| async {
        app.metrics_text()
            .await
            .contains("sluice_auth_jwks_reloads_total{result=\"error\"} 1")
    })
    .await;
    refused(
        list().await.unwrap(),
        401,
        "token_no_key",
        "a broken file keeps the old keys",
    )
    .await;
    std::fs::write(&jwks, full.to_string()).unwrap();
    wait_until(|| async { list().await.unwrap().status() == 200 }).await;
    assert!(app
        .metrics_text()
        .await
        .contains("sluice_auth_jwks_reloads_total{result=\"ok\"} 1"));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_token_guards_metrics_and_readiness_but_not_health() {
    let app = start(|s| s.edge.metrics_token = "scrape-me".into()).await;
    for path in ["/metrics", "/readyz"] {
        let r = app.http.get(app.url(path)).send().await.unwrap();
        refused(r, 401, "invalid_token", path).await;
        let r = app
            .http
            .get(app.url(path))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap();
        refused(r, 401, "invalid_token", path).await;
        let r = app
            .http
            .get(app.url(path))
            .bearer_auth("scrape-me")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    assert_eq!(
        app.http
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // The stream API stays open: the metrics token is not an API token.
    assert_eq!(
        app.http
            .get(app.url("/v1/streams"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    app.shutdown().await;
}
