//! Kafka-sourced streams against the real broker: the eight predefined types as shipped in
//! `settings.toml`, requested with the guide's JSON; key filtering; value wrapping; the end header;
//! `earliest` starts; a source topic that appears late; and 1,000 concurrent streams on one source
//! topic sharing one consumer.

mod common;

use std::time::Duration;

use common::source::{create_topic, read_topics, Source};
use common::*;
use serde_json::{json, Value};
use sluice::settings::{KafkaSourceSettings, SourceSettings, StartAt};
use sluice::Settings;

fn kafka_source(topic: &str, key: Option<&str>, start: StartAt) -> SourceSettings {
    SourceSettings::Kafka(KafkaSourceSettings {
        topic: topic.into(),
        key: key.map(str::to_owned),
        start,
        end_header: Some("sluice-end".into()),
        idle_timeout: Duration::ZERO,
        checkpoint_every: 2,
    })
}

/// Waits until `id` has recorded its start position (its first checkpoint): records produced
/// from then on are the stream's.
async fn wait_running(app: &TestApp, id: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let st = app.status(id).await;
        if st["state"] == "running" && !st["cursor"].is_null() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id} never started: {st}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn chunks(events: &[SseEvent]) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e.state() == "stream")
        .map(|e| e.data["payload"].clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_eight_predefined_types_stream_their_own_records_and_end_on_the_header() {
    // The shipped configuration, with each source topic renamed so runs do not share data.
    let shipped = Settings::load(Some(&repo_path("settings.toml"))).unwrap();
    assert_eq!(shipped.handlers.sources.len(), 8);
    let tag = unique("src");
    let mut sources = shipped.handlers.sources.clone();
    for s in sources.values_mut() {
        let SourceSettings::Kafka(k) = s else {
            panic!("default sources are kafka")
        };
        k.topic = format!("{tag}.{}", k.topic);
        create_topic(&k.topic, 3).await;
    }
    let app = start(|s| s.handlers.sources = sources.clone()).await;
    // The guide's request shape, with every id field the defaults template on.
    let payload = json!({"user_id": "user123", "conversation_id": "conv456", "asset_id": "a1",
        "media_id": "m1", "upload_id": "u1", "query_id": "q1"});
    for (kind, source) in &sources {
        let SourceSettings::Kafka(k) = source else {
            unreachable!()
        };
        let id = app
            .request(json!({"type": format!("{kind}:v1:requested"), "payload": payload}))
            .await;
        wait_running(&app, &id).await;
        let own = k.key.as_deref().map(|t| {
            let field = t.trim_matches(['{', '}']);
            payload[field].as_str().unwrap().to_owned()
        });
        let src = Source::new(&k.topic);
        // Kafka orders records within a partition only. A keyless source reads every partition,
        // so its records, and the end record after them, share one key, hence one partition;
        // otherwise the end record could be read before an earlier record of another partition.
        let keyless = k.key.is_none();
        let own = own.or(keyless.then(|| "someone-else".to_owned()));
        let mut want = Vec::new();
        for i in 0..4 {
            src.send(
                Some("someone-else"),
                json!({"other": i}).to_string().as_bytes(),
                false,
            )
            .await;
            let v = json!({"i": i, "kind": kind});
            src.send(own.as_deref(), v.to_string().as_bytes(), false)
                .await;
            want.push(v);
        }
        if !keyless {
            // Another key's end record ends nothing.
            src.send(Some("someone-else"), b"{}", true).await;
        }
        src.send(own.as_deref(), b"not json", false).await;
        src.send(own.as_deref(), &[0xff, 0xfe], false).await;
        src.send(own.as_deref(), br#"{"last":true}"#, true).await;
        want.extend([
            json!({"text": "not json"}),
            json!({"base64": "//4="}),
            json!({"last": true}),
        ]);
        let events = app.sse(&id, None).await.collect().await;
        let got = chunks(&events);
        if !keyless {
            assert_eq!(got, want, "{kind}: exactly its own records, in order");
        } else {
            // No key: every record of the topic, including other keys', until the end record.
            assert_eq!(got.len(), 4 + 4 + 3, "{kind}: {got:?}");
        }
        let last = events.last().unwrap();
        assert_eq!(last.state(), "success", "{kind}: {:?}", last.data);
        let source = &events[events.len() - 2].data["metadata"]["source"];
        assert_eq!(source["topic"], k.topic.as_str(), "{kind}: {source}");
        assert_eq!(source["end"], true);
        assert!(
            source["partition"].is_i64()
                && source["offset"].is_i64()
                && source["timestamp"].is_i64()
        );
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_fields_fail_earliest_reads_history_and_a_late_topic_is_waited_for() {
    let tag = unique("src");
    let (history, late) = (format!("{tag}.history"), format!("{tag}.late"));
    create_topic(&history, 2).await;
    let app = start(|s| {
        let h = &mut s.handlers.sources;
        h.insert(
            "hist:stream_items".into(),
            kafka_source(&history, Some("{k}"), StartAt::Earliest),
        );
        h.insert(
            "late:stream_items".into(),
            kafka_source(&late, Some("{k}"), StartAt::Latest),
        );
    })
    .await;
    let id = app
        .request(json!({"type": "hist:stream_items:v1:requested", "payload": {"other": 1}}))
        .await;
    let events = app.sse(&id, None).await.collect().await;
    let failed = &events.last().unwrap().data["payload"];
    assert_eq!(failed["code"], "invalid_payload");
    assert!(
        failed["message"].as_str().unwrap().contains("\"k\""),
        "{failed}"
    );

    let src = Source::new(&history);
    for i in 0..3 {
        src.send(Some("h"), json!({"i": i}).to_string().as_bytes(), i == 2)
            .await;
    }
    let id = app
        .request(json!({"type": "hist:stream_items:v1:requested", "payload": {"k": "h"}}))
        .await;
    let events = app.sse(&id, None).await.collect().await;
    assert_eq!(
        chunks(&events),
        vec![json!({"i": 0}), json!({"i": 1}), json!({"i": 2})]
    );

    let id = app
        .request(json!({"type": "late:stream_items:v1:requested", "payload": {"k": "x"}}))
        .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !app
        .metrics_text()
        .await
        .contains("sluice_source_topics_waiting 1")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the missing topic is reported"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        app.status(&id).await["state"],
        "running",
        "waiting is not failing"
    );
    create_topic(&late, 1).await;
    wait_running(&app, &id).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !app
        .metrics_text()
        .await
        .contains("sluice_source_topics_waiting 0")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the topic was found"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Source::new(&late)
        .send(Some("x"), b"{\"hello\":1}", true)
        .await;
    let events = app.sse(&id, None).await.collect().await;
    assert_eq!(chunks(&events), vec![json!({"hello": 1})]);
    assert_eq!(events.last().unwrap().state(), "success");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_streams_on_one_source_topic_share_one_consumer_and_get_their_own_records() {
    let topic = format!("{}.load", unique("src"));
    create_topic(&topic, 4).await;
    let app = start(|s| {
        s.handlers.sources.insert(
            "load:stream_items".into(),
            kafka_source(&topic, Some("{k}"), StartAt::Latest),
        );
    })
    .await;
    let n = 1000;
    let mut ids = Vec::new();
    for i in 0..n {
        let id = format!("{}-{i}", unique("load"));
        let body = json!({"type": "load:stream_items:v1:requested", "stream_id": id, "payload": {"k": format!("key-{i}")}});
        let r = app
            .http
            .post(app.url("/v1/streams"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        ids.push(id);
    }
    for id in &ids {
        wait_running(&app, id).await;
    }
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains(r#"sluice_source_consumers{role="tail"} 1"#),
        "{metrics}"
    );
    let src = Source::new(&topic);
    for round in 0..2 {
        for i in 0..n {
            let v = json!({"k": i, "round": round});
            src.send(
                Some(&format!("key-{i}")),
                v.to_string().as_bytes(),
                round == 1,
            )
            .await;
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    for id in &ids {
        loop {
            let st = app.status(id).await;
            if st["state"] != "running" {
                assert_eq!(st["state"], "success", "{id}: {st}");
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{id}: {st}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let topics: Vec<String> = ids
        .iter()
        .map(|id| format!("{}{id}", app.settings.kafka.stream_topic_prefix))
        .collect();
    let stored = read_topics(&topics).await;
    for (i, t) in topics.iter().enumerate() {
        let payloads: Vec<&Value> = stored[t].iter().map(|e| &e["payload"]).collect();
        let want = [
            json!({"attempt": 1}),
            json!({"k": i, "round": 0}),
            json!({"k": i, "round": 1}),
        ];
        assert_eq!(
            payloads.len(),
            4,
            "{t}: started, two chunks, success: {payloads:?}"
        );
        assert_eq!(payloads[..3], want.iter().collect::<Vec<_>>()[..], "{t}");
    }
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains(r#"sluice_source_consumers{role="tail"} 1"#),
        "one consumer throughout: {metrics}"
    );
    assert!(
        metrics.contains(r#"sluice_source_consumers{role="catch_up"} 0"#),
        "{metrics}"
    );
    app.shutdown().await;
}
