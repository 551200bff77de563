//! Retention, limits and damaged state, in process against the real broker and real RocksDB.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use sluice::Registry;

async fn topic_exists(topic: &str) -> bool {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let t = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let md = c.fetch_metadata(Some(&t), Duration::from_secs(10)).unwrap();
        md.topics()
            .iter()
            .any(|m| m.name() == t && m.error().is_none() && !m.partitions().is_empty())
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_sweep_deletes_topic_and_record_then_sse_is_gone() {
    let app = start(|s| {
        s.retention.stream_retention = Duration::from_millis(300);
        s.retention.sweep_interval = Duration::from_millis(100);
    })
    .await;
    let id = app
        .request(ticks(json!({"count": 2, "interval_ms": 1})))
        .await;
    assert_complete(&app.sse(&id, None).await.collect().await, 2, "success");
    let topic = format!("{}{}", app.settings.kafka.stream_topic_prefix, id);
    let url = app.url(&format!("/v1/streams/{id}/events"));
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let status = app.http.get(&url).send().await.unwrap().status();
        if status == 410 {
            break;
        }
        assert_eq!(status, 200, "until the sweep the stream replays");
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention never swept the stream"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let body: serde_json::Value = app
        .http
        .get(&url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["error"]["code"], "gone");
    assert_eq!(
        app.http
            .get(app.url(&format!("/v1/streams/{id}")))
            .send()
            .await
            .unwrap()
            .status(),
        410
    );
    assert!(!topic_exists(&topic).await, "the stream topic is deleted");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_on_live_topics_refuses_new_streams_clearly() {
    let app = start(|s| s.retention.max_stream_topics = 2).await;
    let long = ticks(json!({"count": 100000, "interval_ms": 50}));
    let a = app.request(long.clone()).await;
    let b = app.request(long.clone()).await;
    for id in [&a, &b] {
        let mut s = app.sse(id, None).await;
        assert_eq!(s.next_event().await.unwrap().state(), "started");
    }
    let r = app
        .http
        .post(app.url("/v1/streams"))
        .json(&long)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "stream_capacity");

    // Through Kafka the refusal is a DLQ entry with reason at_capacity; intake keeps going.
    app.produce_raw(
        json!({"type": "demo:stream_ticks:v1:requested", "stream_id": unique("over")})
            .to_string()
            .as_bytes(),
    )
    .await;
    let dlq = wait_topic(&app.settings.intake.dlq_topic, 1).await;
    assert_eq!(dlq.len(), 1, "one refusal");
    let reason = dlq_reason(&dlq[0]);
    assert_eq!(reason, b"at_capacity");
    let metrics = app.metrics_text().await;
    assert!(metrics.contains("sluice_stream_topics 2"), "{metrics}");
    app.http
        .delete(app.url(&format!("/v1/streams/{a}")))
        .send()
        .await
        .unwrap();
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_record_fails_its_stream_and_the_others_resume() {
    let app = start(|_| {}).await;
    let body = ticks(json!({"count": 25, "interval_ms": 40}));
    let broken = app.request(body.clone()).await;
    let healthy = app.request(body).await;
    for id in [&broken, &healthy] {
        let mut s = app.sse(id, None).await;
        while s.next_event().await.unwrap().state() != "stream" {}
    }
    let settings = app.settings.clone();
    let dir = app.shutdown().await;
    {
        let db = rocksdb::DB::open_default(&settings.store.path).unwrap();
        db.put(format!("stream/{broken}"), b"\x00not a record")
            .unwrap();
    }
    let app = start_exact(settings, dir, Registry::new()).await;
    let failed = app.sse(&broken, None).await.collect().await;
    let last = failed.last().unwrap();
    assert_eq!(last.state(), "failed");
    assert_eq!(last.data["payload"]["code"], "corrupt_record");
    assert_gapless_seqs(&failed, "no gap before the failure");
    assert_complete(
        &app.sse(&healthy, None).await.collect().await,
        25,
        "success",
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_stream_topics_is_created_in_batches_and_all_exist() {
    require_kafka();
    let mut kafka = sluice::settings::KafkaSettings {
        brokers: brokers(),
        ..Default::default()
    };
    kafka.stream_topic_prefix = format!("sluice.test.{}.", unique("b"));
    let metrics = std::sync::Arc::new(sluice::metrics::Metrics::new().unwrap());
    let journal = sluice::kafka::producer::Journal::new(&kafka, metrics.clone()).unwrap();
    let ids: Vec<sluice::event::StreamId> = (0..60)
        .map(|i| sluice::event::StreamId::parse(&format!("burst-{i}")).unwrap())
        .collect();
    let results = futures::future::join_all(ids.iter().map(|id| async {
        journal
            .ensure_stream_topic(id, &journal.topic_for(id))
            .await
    }))
    .await;
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    for id in &ids {
        assert!(topic_exists(&journal.topic_for(id)).await, "{id} exists");
    }
    // Creating them again is success (already exists), not an error.
    assert!(journal
        .ensure_stream_topic(&ids[0], &journal.topic_for(&ids[0]))
        .await
        .is_ok());
    let text = metrics.render();
    assert!(
        text.contains(r#"sluice_kafka_topic_create_duration_seconds_count{result="ok"} 61"#),
        "{text}"
    );
}
