//! gRPC test helpers: a tonic client of the app under test, demo requests, bounded reads of
//! `SubscribeEvents`, refusal checks by code and `ErrorInfo` reason, and grpcurl.

use prost_types::value::Kind;
use sluice::edge::grpc::proto::streams_client::StreamsClient;
use sluice::edge::grpc::proto::{Event, StreamRequest, SubscribeRequest};
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};
use tonic_types::StatusExt;

use super::{TestApp, WAIT};

pub async fn client(app: &TestApp) -> StreamsClient<Channel> {
    StreamsClient::connect(format!("http://{}", app.grpc))
        .await
        .expect("connect gRPC")
}

pub fn demo(count: u64, interval_ms: u64) -> StreamRequest {
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

pub fn to_value(v: &serde_json::Value) -> Kind {
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

pub fn state_of(e: &Event) -> &str {
    e.r#type.rsplit(':').next().unwrap_or("")
}

/// Reads the next message within the test bound; `None` once the server ends the call.
pub async fn next(stream: &mut Streaming<Event>) -> Option<Event> {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("gRPC event in time")
        .expect("gRPC stream ok")
}

/// Reads every stored event until the server ends the call, skipping heartbeats (checked to have
/// no id).
pub async fn drain(stream: &mut Streaming<Event>) -> Vec<Event> {
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

pub async fn subscribe(
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
pub fn refusal(status: &Status) -> (Code, String, String) {
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

pub fn expect_refusal<T: std::fmt::Debug>(
    r: Result<T, Status>,
    code: Code,
    reason: &str,
    http: u16,
) {
    let status = r.expect_err(reason);
    assert_eq!(
        refusal(&status),
        (code, reason.to_owned(), http.to_string()),
        "{status:?}"
    );
}

/// grpcurl, as installed by `scripts/setup.sh`; the test fails loudly without it.
pub fn grpcurl() -> std::path::PathBuf {
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

pub async fn run_grpcurl(args: &[&str]) -> String {
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
