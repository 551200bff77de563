//! The gRPC edge's ecosystem against the real app and broker: every refusal with its gRPC code
//! and `ErrorInfo` reason, bearer auth, health, and grpcurl through server reflection.

mod common;

use std::time::Duration;

use prost_types::value::Kind;
use sluice::edge::grpc::proto::streams_client::StreamsClient;
use sluice::edge::grpc::proto::{StreamRef, StreamRequest, SubscribeRequest};
use tonic::transport::Channel;
use tonic::Code;

use common::grpc::*;
use common::start;

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
        "missing_token",
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
        "invalid_token",
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
        "missing_token",
        "invalid_token",
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
