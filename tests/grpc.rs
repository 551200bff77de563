//! The gRPC edge against the real app and broker, through a tonic client: resume mid-stream,
//! event-type subscriptions that see streams started later, cancel, health, and every error
//! status with its `ErrorInfo` reason.

mod common;

use std::time::Duration;

use prost_types::value::Kind;
use sluice::edge::grpc::proto::streams_client::StreamsClient;
use sluice::edge::grpc::proto::{Event, StreamRef, StreamRequest, SubscribeRequest};
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};
use tonic_types::StatusExt;

use common::{json_of, read_topic, start, TestApp, WAIT};

async fn client(app: &TestApp) -> StreamsClient<Channel> {
    StreamsClient::connect(format!("http://{}", app.grpc))
        .await
        .expect("connect gRPC")
}

fn demo(count: u64, interval_ms: u64) -> StreamRequest {
    let payload = serde_json::json!({"count": count, "interval_ms": interval_ms});
    let Kind::StructValue(payload) = to_value(&payload) else {
        unreachable!()
    };
    StreamRequest {
        r#type: "demo:stream_ticks:v1:requested".into(),
        payload: Some(payload),
        stream_id: None,
        metadata: None,
    }
}

fn to_value(v: &serde_json::Value) -> Kind {
    match v {
        serde_json::Value::Object(m) => Kind::StructValue(prost_types::Struct {
            fields: m
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        prost_types::Value {
                            kind: Some(to_value(v)),
                        },
                    )
                })
                .collect(),
        }),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap()),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        other => panic!("unsupported in tests: {other}"),
    }
}

fn state_of(e: &Event) -> &str {
    e.r#type.rsplit(':').next().unwrap_or("")
}

/// Reads the next message within the test bound; `None` once the server ends the call.
async fn next(stream: &mut Streaming<Event>) -> Option<Event> {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("gRPC event in time")
        .expect("gRPC stream ok")
}

/// Reads every stored event until the server ends the call, skipping heartbeats (checked to have
/// no id).
async fn drain(stream: &mut Streaming<Event>) -> Vec<Event> {
    let mut out = Vec::new();
    while let Some(e) = next(stream).await {
        if state_of(&e) == "heartbeat" {
            assert_eq!(e.id, None, "heartbeats carry no id");
            continue;
        }
        out.push(e);
    }
    out
}

async fn subscribe(
    c: &mut StreamsClient<Channel>,
    id: &str,
    after: Option<i64>,
) -> Streaming<Event> {
    c.subscribe_events(SubscribeRequest {
        stream_id: id.into(),
        last_event_id: after,
        event_types: vec![],
    })
    .await
    .expect("subscribe")
    .into_inner()
}

/// The code, `ErrorInfo` reason and `http_status` of a refusal.
fn refusal(status: &Status) -> (Code, String, String) {
    let info = status
        .get_error_details()
        .error_info()
        .cloned()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.domain, "sluice");
    (
        status.code(),
        info.reason,
        info.metadata
            .get("http_status")
            .cloned()
            .unwrap_or_default(),
    )
}

fn expect_refusal<T: std::fmt::Debug>(r: Result<T, Status>, code: Code, reason: &str, http: u16) {
    let status = r.expect_err(reason);
    assert_eq!(
        refusal(&status),
        (code, reason.to_owned(), http.to_string()),
        "{status:?}"
    );
}

#[tokio::test]
async fn resume_mid_stream_has_no_gap_or_duplicate_and_matches_the_topic() {
    let app = start(|_| {}).await;
    let mut c = client(&app).await;
    let acc = c.request(demo(20, 30)).await.unwrap().into_inner();
    assert!(!acc.existing);
    let id = acc.stream_id;

    let mut first = subscribe(&mut c, &id, None).await;
    let mut seen = Vec::new();
    while seen.len() < 6 {
        let e = next(&mut first).await.expect("event before the end");
        if state_of(&e) != "heartbeat" {
            seen.push(e);
        }
    }
    drop(first);
    let resume_at = seen.last().unwrap().id.unwrap();
    let mut second = subscribe(&mut c, &id, Some(resume_at)).await;
    seen.extend(drain(&mut second).await);

    let seqs: Vec<u64> = seen.iter().map(|e| e.seq.unwrap()).collect();
    assert_eq!(
        seqs,
        (0..=21).collect::<Vec<_>>(),
        "every seq once, in order"
    );
    let ids: Vec<i64> = seen.iter().map(|e| e.id.unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");
    assert_eq!(state_of(seen.last().unwrap()), "success");
    for e in seen.iter().filter(|e| state_of(e) == "stream") {
        let Some(Kind::StructValue(p)) = e.payload.as_ref().and_then(|p| p.kind.clone()) else {
            panic!("chunk payload is a struct: {e:?}")
        };
        let n = p.fields.get("n").and_then(|v| v.kind.clone());
        assert_eq!(n, Some(Kind::NumberValue(e.seq.unwrap() as f64)));
    }
    // What the client saw is exactly what the stream topic holds, id for offset.
    let topic = read_topic(&format!("{}{}", app.settings.kafka.stream_topic_prefix, id)).await;
    assert_eq!(topic.len(), seen.len(), "no extra or missing event");
    for (m, e) in topic.iter().zip(&seen) {
        assert_eq!(json_of(m)["seq"].as_u64(), e.seq);
    }
    // A resume at the terminal event ends at once, with nothing more.
    let mut after_end = subscribe(&mut c, &id, Some(*ids.last().unwrap())).await;
    assert!(next(&mut after_end).await.is_none());
    app.shutdown().await;
}

#[tokio::test]
async fn an_event_type_subscription_sees_streams_that_start_after_it() {
    let app = start(|_| {}).await;
    let mut c = client(&app).await;
    let mut feed = c
        .subscribe_events(SubscribeRequest {
            stream_id: String::new(),
            last_event_id: None,
            event_types: vec![
                "demo:stream_ticks:v1:requested".into(),
                "demo:stream_ticks:v1:success".into(),
            ],
        })
        .await
        .expect("subscribe to types")
        .into_inner();
    // A stream of another version first: none of its events may come through.
    let mut other = demo(2, 10);
    other.r#type = "demo:stream_ticks:v2:requested".into();
    let other_id = c.request(other).await.unwrap().into_inner().stream_id;
    let id = c.request(demo(3, 10)).await.unwrap().into_inner().stream_id;

    let requested = next(&mut feed).await.expect("requested event");
    assert_eq!(requested.r#type, "demo:stream_ticks:v1:requested");
    assert_eq!(requested.stream_id, id);
    assert_eq!(
        requested.id, None,
        "requested events are not stored in the stream topic"
    );
    let done = next(&mut feed).await.expect("success event");
    assert_eq!(done.r#type, "demo:stream_ticks:v1:success");
    assert_eq!(done.stream_id, id);
    assert_eq!(done.seq, Some(4));
    assert!(done.id.is_some());
    // The v2 stream has ended too by now; still nothing of it arrives.
    common::wait_until(|| async {
        c.clone()
            .status(StreamRef {
                stream_id: other_id.clone(),
            })
            .await
            .map(|s| s.into_inner().state == "success")
            .unwrap_or(false)
    })
    .await;
    let extra = tokio::time::timeout(Duration::from_millis(500), feed.message()).await;
    assert!(extra.is_err(), "nothing else matches: {extra:?}");
    assert!(app
        .metrics_text()
        .await
        .contains("sluice_type_subscribers 1"));
    app.shutdown().await;
}

#[tokio::test]
async fn cancel_ends_the_stream_with_cancelled() {
    let app = start(|_| {}).await;
    let mut c = client(&app).await;
    let id = c
        .request(demo(1000, 50))
        .await
        .unwrap()
        .into_inner()
        .stream_id;
    let mut events = subscribe(&mut c, &id, None).await;
    loop {
        let e = next(&mut events).await.expect("a chunk before the end");
        if state_of(&e) == "stream" {
            break;
        }
    }
    let r = c
        .cancel(StreamRef {
            stream_id: id.clone(),
        })
        .await
        .unwrap();
    assert_eq!(r.into_inner().stream_id, id);
    let rest = drain(&mut events).await;
    let last = rest.last().expect("terminal event");
    assert_eq!(state_of(last), "cancelled");
    assert!(rest.len() < 900, "the stream stopped early");
    let status = c
        .status(StreamRef {
            stream_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.state, "cancelled");
    assert!(status.finished_at.is_some());
    expect_refusal(
        c.cancel(StreamRef { stream_id: id }).await,
        Code::FailedPrecondition,
        "already_finished",
        409,
    );
    app.shutdown().await;
}

#[tokio::test]
async fn every_refusal_has_its_grpc_code_and_api_reason() {
    let token = "grpc-secret";
    let app = start(|s| {
        s.edge.api_tokens = vec![token.into()];
        s.retention.max_stream_topics = 2;
        s.retention.stream_retention = Duration::from_millis(300);
        s.retention.sweep_interval = Duration::from_millis(100);
        s.intake.max_request_bytes = 4096;
    })
    .await;
    let channel = Channel::from_shared(format!("http://{}", app.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    // Health needs no token, and reports the service as serving.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let h = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "sluice.v1.Streams".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        h.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    let bearer = |t: &str| -> tonic::metadata::MetadataValue<tonic::metadata::Ascii> {
        format!("Bearer {t}").parse().unwrap()
    };
    let mut anonymous = StreamsClient::new(channel.clone());
    expect_refusal(
        anonymous.request(demo(1, 1)).await,
        Code::Unauthenticated,
        "unauthorized",
        401,
    );
    let wrong = bearer("nope");
    let mut wrong_client =
        StreamsClient::with_interceptor(channel.clone(), move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", wrong.clone());
            Ok(r)
        });
    expect_refusal(
        wrong_client
            .status(StreamRef {
                stream_id: "x".into(),
            })
            .await,
        Code::Unauthenticated,
        "unauthorized",
        401,
    );

    let good = bearer(token);
    let mut c = StreamsClient::with_interceptor(channel, move |mut r: tonic::Request<()>| {
        r.metadata_mut().insert("authorization", good.clone());
        Ok(r)
    });
    let typed = |t: &str| StreamRequest {
        r#type: t.into(),
        ..demo(1, 1)
    };
    expect_refusal(
        c.request(typed("not a type")).await,
        Code::InvalidArgument,
        "invalid_type",
        400,
    );
    expect_refusal(
        c.request(typed("demo:stream_ticks:v1:started")).await,
        Code::InvalidArgument,
        "wrong_state",
        400,
    );
    expect_refusal(
        c.request(typed("nothing:stream_x:v1:requested")).await,
        Code::Unimplemented,
        "unknown_handler",
        422,
    );
    let mut big = demo(1, 1);
    big.metadata = Some(prost_types::Struct {
        fields: [(
            "pad".to_owned(),
            prost_types::Value {
                kind: Some(Kind::StringValue("x".repeat(5000))),
            },
        )]
        .into(),
    });
    expect_refusal(
        c.request(big).await,
        Code::InvalidArgument,
        "too_large",
        413,
    );
    let mut bad_id = demo(1, 1);
    bad_id.stream_id = Some("no spaces allowed".into());
    expect_refusal(
        c.request(bad_id).await,
        Code::InvalidArgument,
        "invalid_stream_id",
        400,
    );
    expect_refusal(
        c.status(StreamRef {
            stream_id: "bad id".into(),
        })
        .await,
        Code::InvalidArgument,
        "invalid_stream_id",
        400,
    );
    expect_refusal(
        c.status(StreamRef {
            stream_id: "missing-stream".into(),
        })
        .await,
        Code::NotFound,
        "not_found",
        404,
    );
    expect_refusal(
        c.cancel(StreamRef {
            stream_id: "missing-stream".into(),
        })
        .await,
        Code::NotFound,
        "not_found",
        404,
    );
    let sub = |stream_id: &str, after: Option<i64>, types: &[&str]| SubscribeRequest {
        stream_id: stream_id.into(),
        last_event_id: after,
        event_types: types.iter().map(|t| t.to_string()).collect(),
    };
    expect_refusal(
        c.subscribe_events(sub("", None, &[])).await,
        Code::InvalidArgument,
        "invalid_subscription",
        400,
    );
    expect_refusal(
        c.subscribe_events(sub("a", None, &["demo:stream_ticks:v1"]))
            .await,
        Code::InvalidArgument,
        "invalid_subscription",
        400,
    );
    expect_refusal(
        c.subscribe_events(sub("", None, &["demo:stream_ticks"]))
            .await,
        Code::InvalidArgument,
        "invalid_type",
        400,
    );
    let many: Vec<String> = (0..65)
        .map(|i| format!("demo:stream_ticks:v{}", i + 1))
        .collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    expect_refusal(
        c.subscribe_events(sub("", None, &many)).await,
        Code::InvalidArgument,
        "too_many_event_types",
        400,
    );
    expect_refusal(
        c.subscribe_events(sub("missing-stream", None, &[])).await,
        Code::NotFound,
        "not_found",
        404,
    );

    // A short stream: a resume point past its end, then 410-equivalent once retention deletes it.
    let done = c.request(demo(1, 1)).await.unwrap().into_inner().stream_id;
    let state_of_stream = |c: &StreamsClient<_>, id: &str| {
        let (mut c, id) = (c.clone(), id.to_owned());
        async move {
            c.status(StreamRef { stream_id: id })
                .await
                .map(|s| s.into_inner().state)
                .unwrap_or_default()
        }
    };
    common::wait_until(|| async { state_of_stream(&c, &done).await == "success" }).await;
    expect_refusal(
        c.subscribe_events(sub(&done, Some(-1), &[])).await,
        Code::InvalidArgument,
        "invalid_last_event_id",
        400,
    );
    // Past the end of a finished stream: the call ends at once and cleanly, as SSE answers 204.
    let mut past = c
        .subscribe_events(sub(&done, Some(99), &[]))
        .await
        .unwrap()
        .into_inner();
    assert!(next(&mut past).await.is_none());
    common::wait_until(|| async {
        c.clone()
            .status(StreamRef {
                stream_id: done.clone(),
            })
            .await
            .is_err()
    })
    .await;
    expect_refusal(
        c.status(StreamRef {
            stream_id: done.clone(),
        })
        .await,
        Code::NotFound,
        "gone",
        410,
    );
    expect_refusal(
        c.subscribe_events(sub(&done, None, &[])).await,
        Code::NotFound,
        "gone",
        410,
    );

    // The topic cap (2): two running streams fill it, a third is refused.
    let a = c
        .request(demo(1000, 50))
        .await
        .unwrap()
        .into_inner()
        .stream_id;
    let b = c
        .request(demo(1000, 50))
        .await
        .unwrap()
        .into_inner()
        .stream_id;
    common::wait_until(|| async { state_of_stream(&c, &b).await == "running" }).await;
    // Ahead of a running stream's newest event: refused.
    expect_refusal(
        c.subscribe_events(sub(&b, Some(1_000_000), &[])).await,
        Code::InvalidArgument,
        "last_event_id_ahead",
        400,
    );
    expect_refusal(
        c.request(demo(1, 1)).await,
        Code::ResourceExhausted,
        "stream_capacity",
        503,
    );
    for id in [a, b] {
        c.cancel(StreamRef { stream_id: id }).await.unwrap();
    }
    // Each refusal was counted like an HTTP one.
    let metrics = app.metrics_text().await;
    for reason in [
        "unauthorized",
        "unknown_handler",
        "invalid_subscription",
        "stream_capacity",
        "gone",
    ] {
        let line = metrics
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "sluice_edge_rejected_total{{reason=\"{reason}\"}}"
                ))
            })
            .unwrap_or_else(|| panic!("{reason} counted"));
        assert!(!line.ends_with(" 0"), "{line}");
    }
    app.shutdown().await;
}

/// grpcurl, as installed by `scripts/setup.sh`; the test fails loudly without it.
fn grpcurl() -> std::path::PathBuf {
    if let Ok(p) = std::env::var("SLUICE_GRPCURL") {
        return p.into();
    }
    let gopath = std::process::Command::new("go")
        .args(["env", "GOPATH"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let path = std::path::Path::new(&gopath).join("bin/grpcurl");
    assert!(
        path.exists(),
        "grpcurl is required at {} (run scripts/setup.sh, or set SLUICE_GRPCURL)",
        path.display()
    );
    path
}

async fn run_grpcurl(args: &[&str]) -> String {
    let out = tokio::process::Command::new(grpcurl())
        .args(args)
        .output()
        .await
        .expect("run grpcurl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "grpcurl {args:?} failed: {}{}",
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[tokio::test]
async fn grpcurl_works_through_reflection_with_no_proto_file() {
    let app = start(|_| {}).await;
    let addr = app.grpc.to_string();
    let services = run_grpcurl(&["-plaintext", &addr, "list"]).await;
    for s in [
        "sluice.v1.Streams",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(services.lines().any(|l| l == s), "{s} listed: {services}");
    }
    let described = run_grpcurl(&["-plaintext", &addr, "describe", "sluice.v1.Streams"]).await;
    assert!(described.contains("rpc SubscribeEvents"), "{described}");
    let accepted = run_grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"type":"demo:stream_ticks:v1:requested","payload":{"count":2,"interval_ms":5}}"#,
        &addr,
        "sluice.v1.Streams/Request",
    ])
    .await;
    let accepted: serde_json::Value = serde_json::from_str(&accepted).unwrap();
    let id = accepted["streamId"].as_str().expect("streamId").to_owned();
    let events = run_grpcurl(&[
        "-plaintext",
        "-d",
        &format!(r#"{{"stream_id":"{id}"}}"#),
        &addr,
        "sluice.v1.Streams/SubscribeEvents",
    ])
    .await;
    let stored: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&events)
        .into_iter::<serde_json::Value>()
        .map(Result::unwrap)
        .filter(|e| e.get("id").is_some())
        .collect();
    let types: Vec<&str> = stored.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "demo:stream_ticks:v1:started",
            "demo:stream_ticks:v1:stream",
            "demo:stream_ticks:v1:stream",
            "demo:stream_ticks:v1:success"
        ],
        "{events}"
    );
    assert_eq!(stored[1]["payload"]["n"], 1, "{events}");
    // A refusal's details decode through reflection: the API's code, not raw bytes.
    let refused = tokio::process::Command::new(grpcurl())
        .args([
            "-plaintext",
            "-d",
            r#"{"stream_id":"missing"}"#,
            &addr,
            "sluice.v1.Streams/Status",
        ])
        .output()
        .await
        .unwrap();
    assert!(!refused.status.success());
    let text = String::from_utf8_lossy(&refused.stdout).into_owned()
        + &String::from_utf8_lossy(&refused.stderr);
    assert!(text.contains("Code: NotFound"), "{text}");
    assert!(text.contains(r#""reason": "not_found""#), "{text}");
    let health = run_grpcurl(&["-plaintext", &addr, "grpc.health.v1.Health/Check"]).await;
    assert!(health.contains("SERVING"), "{health}");
    app.shutdown().await;
}
