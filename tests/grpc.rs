//! The gRPC edge against the real app and broker, through a tonic client: resume mid-stream,
//! event-type subscriptions that see streams started later, and cancel.

mod common;

use std::time::Duration;

use prost_types::value::Kind;
use sluice::edge::grpc::proto::{StreamRef, SubscribeRequest};
use tonic::Code;

use common::grpc::*;
use common::{json_of, read_topic, start};

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
    // Ids increase (with gaps where transaction markers took offsets).
    assert!(ids.windows(2).all(|w| w[1] > w[0]), "{ids:?}");
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
        assert_eq!(Some(rdkafka::Message::offset(m)), e.id, "id is the offset");
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
