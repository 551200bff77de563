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

async fn read_etag(app: &TestApp, name: &str) -> String {
    let res = app.http.get(url(app, name)).send().await.unwrap();
    res.headers()["etag"].to_str().unwrap().to_owned()
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

/// Starts Sluice with a Durable Streams topic prefix of the test's own.
async fn start_ds(tweak: impl FnOnce(&mut sluice::Settings)) -> TestApp {
    start(|s| {
        s.durable.topic_prefix = unique("sluice.test-ds.") + ".";
        tweak(s)
    })
    .await
}

/// The one Durable Streams topic of `app` (each test's streams have a prefix of their own).
async fn topic_of(app: &TestApp) -> String {
    let topics = topics_with_prefix(&app.settings.durable.topic_prefix);
    assert_eq!(topics.len(), 1, "{topics:?}");
    topics[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_append_is_one_record_in_the_streams_own_topic() {
    let app = start_ds(|_| {}).await;
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

    // The topic has the Durable Streams prefix, not the stream prefix, and the ETag names none.
    let topic = topic_of(&app).await;
    assert!(
        !topic.starts_with(&app.settings.kafka.stream_topic_prefix),
        "{topic}"
    );
    let etag = read_etag(&app, &name).await;
    let incarnation = topic.trim_start_matches(&app.settings.durable.topic_prefix);
    assert!(!etag.contains(incarnation), "{etag} names {topic}");
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
    let app = start_ds(|s| s.durable.max_append_bytes = 2 * 1024 * 1024).await;
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
    let records = read_partition(&topic_of(&app).await, 0).await;
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
    let app = start_ds(|s| s.durable.long_poll_timeout = Duration::from_secs(10)).await;
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
    let app = start_ds(|_| {}).await;
    let name = unique("del-");
    let put = |body: &'static str| {
        app.http
            .put(url(&app, &name))
            .header("content-type", "text/plain")
            .body(body)
            .send()
    };
    assert_eq!(put("old").await.unwrap().status(), 201);
    let old_topic = topic_of(&app).await;
    let del = app.http.delete(url(&app, &name)).send().await.unwrap();
    assert_eq!(del.status(), 204);
    let gone = app.http.get(url(&app, &name)).send().await.unwrap();
    assert_eq!(gone.status(), 404);
    assert_eq!(put("new").await.unwrap().status(), 201);
    let read = app.http.get(url(&app, &name)).send().await.unwrap();
    assert_eq!(read.text().await.unwrap(), "new");
    // The old incarnation's topic is deleted; the new one has a topic of its own.
    wait_until(|| async { !topic_exists(&old_topic) }).await;
    assert_ne!(topic_of(&app).await, old_topic);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_and_their_producers_survive_a_restart() {
    let app = start_ds(|_| {}).await;
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
    let mut settings = app.settings.clone();
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
        // Saved before streams had owners: no `owner` at all.
        doc["meta"].as_object_mut().unwrap().remove("owner");
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

    // Restarted with another topic prefix: the stream is read from the topic its metadata names.
    let old_prefix = settings.durable.topic_prefix.clone();
    settings.durable.topic_prefix = unique("sluice.test-ds.") + ".";
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
    assert_eq!(
        topics_with_prefix(&old_prefix).len(),
        1,
        "still the old topic"
    );
    let fresh = unique("fresh-");
    let res = send(&app, reqwest::Method::PUT, &fresh, "text/plain", "").await;
    assert_eq!(res.status(), 201);
    let new_topics = topics_with_prefix(&app.settings.durable.topic_prefix);
    assert_eq!(new_topics.len(), 1, "a new stream takes the new prefix");
    app.shutdown().await;
}

/// Sends `head` (and `body`) on a raw connection and returns the status line of the answer,
/// which must come within `within` while the connection is left open.
async fn raw_status(app: &TestApp, head: &str, body: &[u8], within: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(body).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(within, async {
        while !got.windows(2).any(|w| w == b"\r\n") {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed without an answer");
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("an answer in time");
    let text = String::from_utf8_lossy(&got).into_owned();
    text.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_refused_by_length_before_they_are_read_and_must_arrive_in_time() {
    let app = start_ds(|s| {
        s.durable.max_append_bytes = 64 * 1024;
        s.limits.request_timeout = Duration::from_secs(1);
        s.durable.long_poll_timeout = Duration::from_secs(3);
    })
    .await;
    let name = unique("limit-");
    let res = send(&app, reqwest::Method::PUT, &name, "text/plain", "").await;
    assert_eq!(res.status(), 201);
    let path = format!("/ds/v1/stream/{name}");
    // A declared 20 MiB body: refused from its head, none of the body sent.
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: text/plain\r\ncontent-length: 20971520\r\n\r\n"
    );
    let status = raw_status(&app, &head, b"", Duration::from_secs(10)).await;
    assert_eq!(status, "HTTP/1.1 413 Payload Too Large");
    // A chunked body past the limit, never finished: refused once the limit is passed.
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    let chunk = format!("{:x}\r\n{}\r\n", 16 * 1024, "y".repeat(16 * 1024));
    let body = chunk.repeat(5);
    let status = raw_status(&app, &head, body.as_bytes(), Duration::from_secs(10)).await;
    assert_eq!(status, "HTTP/1.1 413 Payload Too Large");
    // A body that stops arriving: 408 after limits.request_timeout.
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: text/plain\r\ncontent-length: 100\r\n\r\n"
    );
    let status = raw_status(&app, &head, b"only ten b", Duration::from_secs(10)).await;
    assert_eq!(status, "HTTP/1.1 408 Request Timeout");
    // A long-poll still waits its own timeout, past the request timeout.
    let tail = read_tail(&app, &name).await;
    let started = std::time::Instant::now();
    let poll = app
        .http
        .get(format!("{}?offset={tail}&live=long-poll", url(&app, &name)))
        .send()
        .await
        .unwrap();
    assert_eq!(poll.status(), 204);
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // Nothing was appended by any of it.
    let read = app.http.get(url(&app, &name)).send().await.unwrap();
    assert_eq!(read.text().await.unwrap(), "");
    let metrics = app.metrics_text().await;
    for reason in ["too_large", "request_timeout"] {
        let line = format!("sluice_edge_rejected_total{{reason=\"{reason}\"}}");
        assert!(metrics.contains(&line), "{line}");
    }
    app.shutdown().await;
}

async fn read_tail(app: &TestApp, name: &str) -> String {
    let res = app.http.head(url(app, name)).send().await.unwrap();
    res.headers()["stream-next-offset"]
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_paths_are_bounded_in_bytes_and_depth() {
    let app = start_ds(|_| {}).await;
    let long = "x".repeat(1025);
    let deep = vec!["d"; 65].join("/");
    for (name, why) in [
        (long.as_str(), "stream path longer than 1024 bytes"),
        (deep.as_str(), "stream path deeper than 64 segments"),
    ] {
        let res = send(&app, reqwest::Method::PUT, name, "text/plain", "").await;
        assert_eq!(res.status(), 400);
        assert_eq!(res.text().await.unwrap(), why);
    }
    let longest = "x".repeat(1024);
    let res = send(&app, reqwest::Method::PUT, &longest, "text/plain", "").await;
    assert_eq!(res.status(), 201);
    assert!(app
        .metrics_text()
        .await
        .contains(r#"sluice_edge_rejected_total{reason="ds_bad_path"} 2"#));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producers_per_stream_are_bounded_and_their_table_counts_as_bytes() {
    let app = start_ds(|s| {
        s.durable.max_producers_per_stream = 3;
        s.durable.max_stream_bytes = 500;
    })
    .await;
    let name = unique("producers-");
    let res = send(&app, reqwest::Method::PUT, &name, "text/plain", "").await;
    assert_eq!(res.status(), 201);
    let post = |id: String, seq: u64| {
        app.http
            .post(url(&app, &name))
            .header("content-type", "text/plain")
            .header("producer-id", id)
            .header("producer-epoch", "0")
            .header("producer-seq", seq.to_string())
            .body("x")
            .send()
    };
    // An id of 250 bytes counts 314 bytes: with 315 held, a second such passes 500.
    assert_eq!(post("p".repeat(250), 0).await.unwrap().status(), 200);
    let full = post("q".repeat(250), 0).await.unwrap();
    assert_eq!(full.status(), 413);
    assert_eq!(full.text().await.unwrap(), "stream is full");
    assert_eq!(post("p2".into(), 0).await.unwrap().status(), 200);
    assert_eq!(post("p3".into(), 0).await.unwrap().status(), 200);
    let over = post("p4".into(), 0).await.unwrap();
    assert_eq!(over.status(), 400);
    assert_eq!(
        over.text().await.unwrap(),
        "too many producers on this stream (durable.max_producers_per_stream)"
    );
    // Known producers go on.
    assert_eq!(post("p2".into(), 1).await.unwrap().status(), 200);
    let read = app.http.get(url(&app, &name)).send().await.unwrap();
    assert_eq!(read.text().await.unwrap(), "xxxx");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_bodies_are_served_inertly() {
    let app = start_ds(|s| s.durable.long_poll_timeout = Duration::from_millis(200)).await;
    let name = unique("html-");
    let script = "<script>alert(document.cookie)</script>";
    let res = send(&app, reqwest::Method::PUT, &name, "text/html", script).await;
    assert_eq!(res.status(), 201);
    let tail = read_tail(&app, &name).await;
    let u = url(&app, &name);
    for (what, req) in [
        ("GET", app.http.get(&u)),
        ("HEAD", app.http.head(&u)),
        (
            "long-poll",
            app.http.get(format!("{u}?offset={tail}&live=long-poll")),
        ),
        ("SSE", app.http.get(format!("{u}?offset=-1&live=sse"))),
    ] {
        let res = req.send().await.unwrap();
        assert!(res.status().is_success(), "{what}: {}", res.status());
        let h = res.headers();
        assert_eq!(h["x-content-type-options"], "nosniff", "{what}");
        assert_eq!(h["content-security-policy"], "sandbox", "{what}");
        if what == "GET" || what == "HEAD" {
            assert_eq!(h["content-type"], "text/html", "{what}");
            assert_eq!(h["content-disposition"], "attachment", "{what}");
        }
    }
    let plain = unique("plain-");
    let res = send(
        &app,
        reqwest::Method::PUT,
        &plain,
        "application/json",
        "[1]",
    )
    .await;
    assert_eq!(res.status(), 201);
    let res = app.http.get(url(&app, &plain)).send().await.unwrap();
    assert!(res.headers().get("content-disposition").is_none());
    assert_eq!(res.headers()["content-security-policy"], "sandbox");
    app.shutdown().await;
}
