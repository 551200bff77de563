//! End-to-end pipeline against the real broker: Kafka intake → handler → stream topic → SSE.

mod common;

use std::time::Duration;

use common::*;
use rdkafka::Message;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_request_streams_to_sse_with_increasing_ids() {
    let app = start(|_| {}).await;
    let id = unique("k");
    let req = json!({"type": "demo:stream_ticks:v1:requested", "stream_id": id,
                     "payload": {"count": 5, "interval_ms": 20}, "metadata": {"trace": "abc"}});
    app.produce_raw(req.to_string().as_bytes()).await;
    let events = app.sse(&id, None).await.collect().await;
    assert_complete(&events, 5, "success");
    assert_eq!(events[0].event, "demo:stream_ticks:v1:started");
    let done = &events.last().unwrap().data;
    assert_eq!(done["payload"]["chunks"], 5);
    assert!(done["payload"]["duration_ms"].is_u64());
    assert_eq!(done["metadata"]["trace"], "abc");
    assert_eq!(done["seq"], 6);

    let status: serde_json::Value = app.status(&id).await;
    assert_eq!(status["state"], "success");
    assert_eq!(status["chunks"], 5);
    assert_eq!(status["last_event_id"].as_i64(), events.last().unwrap().id);

    let stored = read_topic(&format!("{}{}", app.settings.kafka.stream_topic_prefix, id)).await;
    let seqs: Vec<u64> = stored
        .iter()
        .map(|m| {
            serde_json::from_slice::<serde_json::Value>(m.payload().unwrap()).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(
        seqs,
        (0..=6).collect::<Vec<_>>(),
        "topic holds each seq once, in order"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_without_stream_id_gets_one_from_kafka_coordinates() {
    let app = start(|_| {}).await;
    app.produce_raw(
        br#"{"type":"demo:stream_ticks:v1:requested","payload":{"count":1,"interval_ms":1}}"#,
    )
    .await;
    let id = format!("{}-0-0", app.settings.intake.topic);
    let events = app.sse(&id, None).await.collect().await;
    assert_complete(&events, 1, "success");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_reconnect_with_last_event_id_gets_exactly_the_rest() {
    let app = start(|_| {}).await;
    let id = app
        .request(ticks(json!({"count": 12, "interval_ms": 30})))
        .await;
    let mut first = app.sse(&id, None).await;
    let mut seen = Vec::new();
    while seen.len() < 5 {
        seen.push(first.next_event().await.expect("event before disconnect"));
    }
    drop(first);
    let last = seen.last().unwrap().id.unwrap();
    let rest = app.sse(&id, Some(last)).await.collect().await;
    let mut all = seen.clone();
    all.extend(rest.iter().cloned());
    assert_complete(&all, 12, "success");
    // Ids increase with gaps (transaction markers take offsets): the seq tells the next event.
    assert_eq!(
        rest.first().unwrap().data["seq"],
        seen.last().unwrap().data["seq"].as_u64().unwrap() + 1,
        "no gap after the resume point"
    );
    assert!(rest.first().unwrap().id > Some(last));

    // After the end, a reconnect replays what follows its id and ends.
    let mid = all[3].id.unwrap();
    let tail = app.sse(&id, Some(mid)).await.collect().await;
    assert_eq!(tail.len(), all.len() - 4);
    assert_eq!(tail.first().unwrap().id, all[4].id);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sse_clients_both_get_every_event() {
    let app = start(|_| {}).await;
    let id = app
        .request(ticks(json!({"count": 8, "interval_ms": 25})))
        .await;
    let (mut a, mut b) = (app.sse(&id, None).await, app.sse(&id, None).await);
    let (ea, eb) = tokio::join!(a.collect(), b.collect());
    assert_complete(&ea, 8, "success");
    assert_complete(&eb, 8, "success");
    let ids = |v: &[SseEvent]| v.iter().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(ids(&ea), ids(&eb));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_subscribers_get_heartbeats_without_ids() {
    let app = start(|s| s.provider.heartbeat_interval = Duration::from_millis(50)).await;
    let id = app
        .request(ticks(json!({"count": 3, "interval_ms": 300})))
        .await;
    // Raw frames: an SSE client library carries the last id forward, so look at the wire itself.
    let body = app
        .http
        .get(app.url(&format!("/v1/streams/{id}/events")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let frames: Vec<&str> = body
        .split("\n\n")
        .filter(|f| f.contains("event:"))
        .collect();
    let heartbeats: Vec<&&str> = frames
        .iter()
        .filter(|f| f.contains(":heartbeat\n"))
        .collect();
    assert!(
        !heartbeats.is_empty(),
        "a stream running ~900ms with 50ms heartbeats sends some: {body}"
    );
    for hb in &heartbeats {
        assert!(
            !hb.lines().any(|l| l.starts_with("id:")),
            "heartbeat frame carries no id: {hb}"
        );
        assert!(
            !hb.contains("\"id\":"),
            "heartbeat envelope carries no id: {hb}"
        );
    }
    let stored_frames = frames
        .iter()
        .filter(|f| !f.contains(":heartbeat\n"))
        .count();
    assert_eq!(stored_frames, 5, "started, 3 chunks, success");
    assert!(frames
        .iter()
        .filter(|f| !f.contains(":heartbeat\n"))
        .all(|f| f.lines().any(|l| l.starts_with("id:"))));
    let stored = read_topic(&format!("{}{}", app.settings.kafka.stream_topic_prefix, id)).await;
    assert_eq!(
        stored.len(),
        5,
        "started, 3 chunks, success: nothing else stored"
    );
    assert!(stored
        .iter()
        .all(|m| !String::from_utf8_lossy(m.payload().unwrap()).contains(":heartbeat")));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_panic_fails_the_stream_and_others_keep_running() {
    let app = start(|_| {}).await;
    let bad = app
        .request(ticks(json!({"count": 5, "interval_ms": 10, "panic_at": 3})))
        .await;
    let good = app
        .request(ticks(json!({"count": 4, "interval_ms": 10})))
        .await;
    let failed = app.sse(&bad, None).await.collect().await;
    assert_complete(&failed, 2, "failed");
    let payload = &failed.last().unwrap().data["payload"];
    assert_eq!(payload["code"], "handler_panic");
    assert!(payload["message"]
        .as_str()
        .unwrap()
        .contains("demo panic at chunk 3"));
    assert_complete(&app.sse(&good, None).await.collect().await, 4, "success");
    let after = app
        .request(ticks(json!({"count": 2, "interval_ms": 1})))
        .await;
    assert_complete(&app.sse(&after, None).await.collect().await, 2, "success");
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains("sluice_handler_panics_total 1"),
        "panic counted"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_error_and_short_timeout_end_the_stream() {
    let app = start(|s| s.provider.stream_timeout = Duration::from_millis(400)).await;
    let failing = app
        .request(ticks(json!({"count": 5, "interval_ms": 10, "fail_at": 2})))
        .await;
    let slow = app
        .request(ticks(json!({"count": 1000, "interval_ms": 50})))
        .await;
    let f = app.sse(&failing, None).await.collect().await;
    assert_complete(&f, 1, "failed");
    assert_eq!(f.last().unwrap().data["payload"]["code"], "demo_failure");
    let t = app.sse(&slow, None).await.collect().await;
    let last = t.last().unwrap();
    assert_eq!(last.state(), "timeout");
    let chunks = last.data["payload"]["chunks"].as_u64().unwrap();
    assert!(chunks < 1000);
    assert_complete(&t, chunks, "timeout");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_intake_goes_to_the_dlq_and_the_consumer_goes_on() {
    let app = start(|s| s.intake.max_request_bytes = 512).await;
    let oversized = format!(
        r#"{{"type":"demo:stream_ticks:v1:requested","payload":{{"pad":"{}"}}}}"#,
        "x".repeat(600)
    );
    let bad: Vec<(&[u8], &str)> = vec![
        (b"not json at all", "malformed_json"),
        (br#"{"payload":{}}"#, "invalid_type"),
        (br#"{"type":"demo:stream_ticks:v1:stream"}"#, "wrong_state"),
        (
            br#"{"type":"billing:charge:v1:requested"}"#,
            "not_streaming",
        ),
        (
            br#"{"type":"foo123:stream_x:v1:requested"}"#,
            "unknown_handler",
        ),
        (oversized.as_bytes(), "too_large"),
    ];
    for (bytes, _) in &bad {
        app.produce_raw(bytes).await;
    }
    let id = unique("after-dlq");
    app.produce_raw(json!({"type": "demo:stream_ticks:v1:requested", "stream_id": id, "payload": {"count": 2, "interval_ms": 1}}).to_string().as_bytes()).await;
    assert_complete(&app.sse(&id, None).await.collect().await, 2, "success");

    let dlq = read_topic(&app.settings.intake.dlq_topic).await;
    assert_eq!(dlq.len(), bad.len(), "one DLQ record per bad message");
    for (m, (bytes, reason)) in dlq.iter().zip(&bad) {
        assert_eq!(m.payload().unwrap(), *bytes, "original bytes kept");
        assert_eq!(std::str::from_utf8(&dlq_reason(m)).unwrap(), *reason);
    }
    let metrics = app.metrics_text().await;
    for (_, reason) in &bad {
        assert!(
            metrics.contains(&format!(
                r#"sluice_intake_rejected_total{{reason="{reason}"}} 1"#
            )),
            "{reason}: {metrics}"
        );
    }
    assert!(
        !metrics.contains("foo123") && !metrics.contains("stream_x"),
        "client input never becomes a label value: {metrics}"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_handler_is_refused_before_any_topic_and_redelivery_runs_once() {
    let app = start(|_| {}).await;
    let id = unique("nohandler");
    app.produce_raw(
        json!({"type": "widgets:stream_parts:v1:requested", "stream_id": id})
            .to_string()
            .as_bytes(),
    )
    .await;
    let dlq = wait_topic(&app.settings.intake.dlq_topic, 1).await;
    assert_eq!(dlq.len(), 1);
    let reason = dlq_reason(&dlq[0]);
    assert_eq!(reason, b"unknown_handler");
    let status = app
        .http
        .get(app.url(&format!("/v1/streams/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 404, "no record was created");
    let topic = format!("{}{}", app.settings.kafka.stream_topic_prefix, id);
    assert!(
        !topic_exists(&topic),
        "no stream topic was created for {topic}"
    );

    let dup = unique("dup");
    let req = json!({"type": "demo:stream_ticks:v1:requested", "stream_id": dup, "payload": {"count": 3, "interval_ms": 1}});
    app.produce_raw(req.to_string().as_bytes()).await;
    app.produce_raw(req.to_string().as_bytes()).await;
    let first = app.sse(&dup, None).await.collect().await;
    assert_complete(&first, 3, "success");
    // A third copy after the run ended is also ignored; a marker stream proves intake passed it.
    app.produce_raw(req.to_string().as_bytes()).await;
    let marker = unique("marker");
    app.produce_raw(json!({"type": "demo:stream_ticks:v1:requested", "stream_id": marker, "payload": {"count": 1, "interval_ms": 1}}).to_string().as_bytes()).await;
    assert_complete(&app.sse(&marker, None).await.collect().await, 1, "success");
    let again = app.sse(&dup, None).await.collect().await;
    assert_eq!(
        again.len(),
        first.len(),
        "a redelivered request never starts a second run"
    );
    let status: serde_json::Value = app.status(&dup).await;
    assert_eq!(status["attempts"], 1);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_last_event_id_is_told_history_was_lost() {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};

    let app = start(|_| {}).await;
    let id = app
        .request(ticks(json!({"count": 5, "interval_ms": 1})))
        .await;
    let all = app.sse(&id, None).await.collect().await;
    assert_complete(&all, 5, "success");

    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    let topic = format!("{}{}", app.settings.kafka.stream_topic_prefix, id);
    tpl.add_partition_offset(&topic, 0, Offset::Offset(3))
        .unwrap();
    admin
        .delete_records(&tpl, &AdminOptions::new())
        .await
        .expect("delete records");

    let mut sse = app.sse(&id, Some(0)).await;
    let notice = sse.next_event().await.unwrap();
    assert_eq!(notice.event, "sluice:history_lost");
    assert_eq!(notice.data["requested_id"], 1);
    assert_eq!(notice.data["earliest_id"], 3);
    let rest = sse.collect().await;
    // Exactly the events the full read saw at offsets from 3 on (ids skip transaction markers).
    let ids: Vec<i64> = rest.iter().map(|e| e.id.unwrap()).collect();
    let retained: Vec<i64> = all
        .iter()
        .filter_map(|e| e.id)
        .filter(|i| *i >= 3)
        .collect();
    assert!(!retained.is_empty());
    assert_eq!(
        ids, retained,
        "replay starts at the earliest retained event"
    );
    app.shutdown().await;
}

/// The members the broker lists for consumer group `group`.
fn group_members(group: &str) -> usize {
    use rdkafka::consumer::Consumer;
    let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let list = consumer
        .fetch_group_list(Some(group), Duration::from_secs(10))
        .expect("group list");
    list.groups()
        .iter()
        .find(|g| g.name() == group)
        .map_or(0, |g| g.members().len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_instance_leaves_the_intake_group_at_once() {
    let app = start(|_| {}).await;
    let id = app
        .request(ticks(json!({"count": 3, "interval_ms": 10})))
        .await;
    assert_complete(&app.sse(&id, None).await.collect().await, 3, "success");
    let group = app.settings.intake.group_id.clone();
    assert_eq!(group_members(&group), 1, "the running instance is a member");
    app.shutdown().await;
    // A member that only stops heartbeating is listed until its session times out, and the
    // instance that replaces it waits that long for the partitions.
    assert_eq!(
        group_members(&group),
        0,
        "a graceful stop leaves the group instead of waiting out the session timeout"
    );
}
