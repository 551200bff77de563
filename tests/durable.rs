//! The Durable Streams server against the real broker, through real HTTP: what the conformance
//! suite cannot see. Every append is one record in the stream's own Kafka topic; a long-poll at
//! the tail is woken by an append; a deleted stream's name starts over empty; streams and their
//! producers survive a restart, rebuilt from the topic where the saved metadata lags.

mod common;

use std::time::Duration;

use common::*;
use rdkafka::Message;

fn url(app: &TestApp, name: &str) -> String {
    app.url(&format!("/ds/v1/stream/{name}"))
}

/// `method` on stream `name` with a content type and a body.
async fn send(
    app: &TestApp,
    method: reqwest::Method,
    name: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    app.http
        .request(method, url(app, name))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn topic_of(app: &TestApp, name: &str) -> String {
    // The ETag names the incarnation's topic: `"<topic>:<from>:<to>"`.
    let res = app.http.get(url(app, name)).send().await.unwrap();
    let etag = res.headers()["etag"]
        .to_str()
        .unwrap()
        .trim_matches('"')
        .to_owned();
    etag.split(':').next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_append_is_one_record_in_the_streams_own_topic() {
    let app = start(|_| {}).await;
    let name = unique("kafka-");
    let res = send(
        &app,
        reqwest::Method::PUT,
        &name,
        "application/json",
        r#"{"n":0}"#,
    )
    .await;
    assert_eq!(res.status(), 201);
    for body in [r#"[{"n":1},{"n":2}]"#, r#"[[3]]"#] {
        let res = send(&app, reqwest::Method::POST, &name, "application/json", body).await;
        assert_eq!(res.status(), 204);
    }
    let read = app.http.get(url(&app, &name)).send().await.unwrap();
    assert_eq!(read.headers()["content-type"], "application/json");
    let next = read.headers()["stream-next-offset"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        read.text().await.unwrap(),
        r#"[{"n":0},{"n":1},{"n":2},[3]]"#
    );

    let topic = topic_of(&app, &name).await;
    assert!(
        topic.starts_with(&app.settings.kafka.stream_topic_prefix),
        "{topic}"
    );
    let records = read_partition(&topic, 0).await;
    let payloads: Vec<String> = records
        .iter()
        .map(|m| String::from_utf8(m.payload().unwrap().to_vec()).unwrap())
        .collect();
    assert_eq!(
        payloads,
        [r#"{"n":0}"#, r#"{"n":1},{"n":2}"#, "[3]"],
        "one record per append"
    );
    // The offset after the last append is the Kafka offset after its record.
    let last = records.last().unwrap().offset() as u64 + 1;
    assert_eq!(next, format!("{:016}_{:016}", 0, last));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_up_to_max_append_bytes_are_one_record_and_larger_ones_are_413() {
    let app = start(|s| s.durable.max_append_bytes = 2 * 1024 * 1024).await;
    let name = unique("big-");
    let res = send(
        &app,
        reqwest::Method::PUT,
        &name,
        "application/octet-stream",
        "",
    )
    .await;
    assert_eq!(res.status(), 201);
    // Incompressible bytes, so the Kafka batch is as large as the append.
    let mut x: u64 = seed() | 1;
    let mut big = Vec::with_capacity(2 * 1024 * 1024);
    while big.len() < 2 * 1024 * 1024 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        big.extend_from_slice(&x.to_le_bytes());
    }
    for (len, status) in [
        (1024 * 1024, 204),
        (2 * 1024 * 1024, 204),
        (2 * 1024 * 1024 + 1, 413),
    ] {
        let mut body = big.clone();
        body.resize(len, 7);
        let res = send(
            &app,
            reqwest::Method::POST,
            &name,
            "application/octet-stream",
            body,
        )
        .await;
        assert_eq!(res.status(), status, "append of {len} bytes");
    }
    let read = app.http.get(url(&app, &name)).send().await.unwrap();
    let got = read.bytes().await.unwrap();
    assert_eq!(got.len(), 3 * 1024 * 1024);
    assert!(got[..1024 * 1024] == big[..1024 * 1024] && got[1024 * 1024..] == big[..]);
    let records = read_partition(&topic_of(&app, &name).await, 0).await;
    let sizes: Vec<usize> = records.iter().map(|m| m.payload().unwrap().len()).collect();
    assert_eq!(
        sizes,
        [1024 * 1024, 2 * 1024 * 1024],
        "one record per append"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_at_the_tail_wakes_on_an_append_and_times_out_without_one() {
    let app = start(|s| s.durable.long_poll_timeout = Duration::from_secs(10)).await;
    let name = unique("poll-");
    let res = send(&app, reqwest::Method::PUT, &name, "text/plain", "").await;
    let tail = res.headers()["stream-next-offset"]
        .to_str()
        .unwrap()
        .to_owned();
    let poll = {
        let (http, u) = (
            app.http.clone(),
            format!("{}?offset={tail}&live=long-poll", url(&app, &name)),
        );
        tokio::spawn(async move { http.get(u).send().await.unwrap() })
    };
    // The poll is waiting: nothing has been appended and it has not answered.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!poll.is_finished(), "a long-poll at the tail waits");
    let res = send(&app, reqwest::Method::POST, &name, "text/plain", "hello").await;
    assert_eq!(res.status(), 204);
    let woken = tokio::time::timeout(Duration::from_secs(5), poll)
        .await
        .expect("woken by the append, long before its timeout")
        .unwrap();
    assert_eq!(woken.status(), 200);
    assert_eq!(woken.text().await.unwrap(), "hello");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_stream_is_gone_and_its_name_starts_over_in_a_new_topic() {
    let app = start(|_| {}).await;
    let name = unique("del-");
    let put = |body: &'static str| {
        app.http
            .put(url(&app, &name))
            .header("content-type", "text/plain")
            .body(body)
            .send()
    };
    assert_eq!(put("old").await.unwrap().status(), 201);
    let old_topic = topic_of(&app, &name).await;
    let del = app.http.delete(url(&app, &name)).send().await.unwrap();
    assert_eq!(del.status(), 204);
    let gone = app.http.get(url(&app, &name)).send().await.unwrap();
    assert_eq!(gone.status(), 404);
    assert_eq!(put("new").await.unwrap().status(), 201);
    let read = app.http.get(url(&app, &name)).send().await.unwrap();
    assert_eq!(read.text().await.unwrap(), "new");
    assert_ne!(topic_of(&app, &name).await, old_topic);
    // The old incarnation's topic is deleted.
    wait_until(|| async { !topic_exists(&old_topic) }).await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_and_their_producers_survive_a_restart() {
    let app = start(|_| {}).await;
    let name = unique("restart-");
    let post = |app: &TestApp, seq: u64, body: &'static str| {
        app.http
            .post(url(app, &name))
            .header("content-type", "text/plain")
            .header("producer-id", "p1")
            .header("producer-epoch", "0")
            .header("producer-seq", seq.to_string())
            .body(body)
            .send()
    };
    let res = send(&app, reqwest::Method::PUT, &name, "text/plain", "").await;
    assert_eq!(res.status(), 201);
    assert_eq!(post(&app, 0, "a").await.unwrap().status(), 200);
    assert_eq!(post(&app, 1, "b").await.unwrap().status(), 200);
    let settings = app.settings.clone();
    let dir = app.shutdown().await;
    {
        // A crash after Kafka acknowledged the last append but before its metadata was saved:
        // the saved document knows no producer.
        let store = sluice::store::Store::open(&settings.store.path).unwrap();
        let path = format!("/v1/stream/{name}");
        let (_, doc) = store
            .durable_all(sluice::store::DurableDoc::Stream)
            .await
            .unwrap()
            .into_iter()
            .find(|(p, _)| *p == path)
            .expect("the stream's metadata is saved");
        let mut doc: serde_json::Value = serde_json::from_slice(&doc).unwrap();
        assert_eq!(doc["meta"]["producers"]["p1"]["seq"], 1);
        doc["meta"]["producers"] = serde_json::json!({});
        store
            .durable_put(
                sluice::store::DurableDoc::Stream,
                &path,
                serde_json::to_vec(&doc).unwrap(),
                true,
            )
            .await
            .unwrap();
    }

    let app = start_exact(settings, dir, sluice::Registry::new()).await;
    let read = app.http.get(url(&app, &name)).send().await.unwrap();
    assert_eq!(read.status(), 200);
    assert_eq!(read.text().await.unwrap(), "ab");
    // The producer's state came back: a retry is a duplicate, the next seq is new, a gap is not.
    let retry = post(&app, 1, "b").await.unwrap();
    assert_eq!(retry.status(), 204);
    assert_eq!(retry.headers()["producer-seq"], "1");
    assert_eq!(post(&app, 3, "d").await.unwrap().status(), 409);
    assert_eq!(post(&app, 2, "c").await.unwrap().status(), 200);
    let read = app.http.get(url(&app, &name)).send().await.unwrap();
    assert_eq!(read.text().await.unwrap(), "abc");
    app.shutdown().await;
}
