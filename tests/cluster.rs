//! Several Sluice instances in one consumer group, as real binaries against the real broker:
//! streams belong to intake partitions, their records live in the changelog, and the loss of an
//! instance moves its streams to the survivors with each `seq` stored exactly once.
//!
//! Every scenario starts several processes, so they run one at a time.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::process::{spawn, topic_prefix, write_cluster_configs, Proc};
use common::*;
use serde_json::{json, Value};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The sum of every sample of metric `name` (any labels) in a `/metrics` text.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Partitions each process owns, once the group has spread all `partitions` over every process.
async fn wait_spread(procs: &[&Proc], partitions: i32) -> Vec<i64> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut owned = Vec::new();
        for p in procs {
            owned.push(metric(&p.metrics().await, "sluice_partitions_owned") as i64);
        }
        if owned.iter().sum::<i64>() == i64::from(partitions) && owned.iter().all(|n| *n > 0) {
            return owned;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "partitions never spread over every instance: {owned:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until `id` has ended, as `p` sees it, and returns its status.
async fn wait_finished(p: &Proc, id: &str, deadline: tokio::time::Instant) -> Value {
    loop {
        let st = p.status(id).await;
        let state = st["state"].as_str().unwrap_or("");
        if !state.is_empty() && state != "pending" && state != "running" {
            return st;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "stream {id} never finished: {st}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The fields of a status every instance must agree on once the stream has ended.
fn settled(st: &Value) -> Value {
    json!({
        "state": st["state"], "chunks": st["chunks"], "last_event_id": st["last_event_id"],
        "attempts": st["attempts"], "partition": st["partition"], "finished_at": st["finished_at"],
        "updated_at": st["updated_at"], "cursor": st["cursor"],
    })
}

/// Reads an SSE subscription at `bases[at]` until the stream ends; when the response breaks (its
/// instance died), reconnects to another instance with `Last-Event-ID`. Returns every event and
/// how many reconnects it took.
async fn follow(
    bases: Vec<String>,
    mut at: usize,
    id: String,
    dead: usize,
) -> (Vec<SseEvent>, usize) {
    let mut events: Vec<SseEvent> = Vec::new();
    let mut reconnects = 0;
    loop {
        let after = events.last().and_then(|e| e.id);
        let url = format!("{}/v1/streams/{id}/events", bases[at]);
        // A connection to the instance being killed may fail outright: that is a break too.
        if let Ok(mut sse) = SseClient::try_connect(&url, after).await {
            while let Some(ev) = sse.next_event_or_end().await {
                let terminal = !matches!(ev.state(), "started" | "stream");
                events.push(ev);
                if terminal {
                    return (events, reconnects);
                }
            }
        }
        reconnects += 1;
        assert!(reconnects < 20, "{id}: too many reconnects");
        if at == dead {
            at = (dead + 1) % bases.len();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_an_owner_moves_its_streams_and_every_topic_stays_exact() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let configs = write_cluster_configs(dir.path(), 3, 6, "max_attempts = 50", "");
    let prefix = topic_prefix(&configs[0]);
    let mut procs = Vec::new();
    for c in &configs {
        procs.push(spawn(c).await);
    }
    let owned = wait_spread(&procs.iter().collect::<Vec<_>>(), 6).await;
    eprintln!("partitions owned: {owned:?}");

    // 60 streams over all three instances, with mixed checkpoint rates (none included).
    const COUNT: u64 = 40;
    let mut ids = Vec::new();
    for i in 0..60 {
        let every = [0, 1, 3, 7, 20][i % 5];
        let id = procs[i % 3]
            .request(json!({"type": "demo:stream_ticks:v1:requested",
                "payload": {"count": COUNT, "interval_ms": 60, "checkpoint_every": every}}))
            .await;
        ids.push(id);
    }
    // The victim is the instance running the most streams now.
    let mut running = vec![0usize; 3];
    for id in &ids {
        for (i, p) in procs.iter().enumerate() {
            if p.status(id).await["running_here"] == true {
                running[i] += 1;
            }
        }
    }
    let victim = (0..3).max_by_key(|i| running[*i]).unwrap();
    assert!(running[victim] > 0, "no stream runs anywhere: {running:?}");
    let victims: Vec<String> = {
        let mut v = Vec::new();
        for id in &ids {
            if procs[victim].status(id).await["running_here"] == true {
                v.push(id.clone());
            }
        }
        v
    };
    // SSE clients of some of the victim's streams, connected to the victim itself and to a
    // survivor; they must see every event once across the kill.
    let followed: Vec<String> = victims.iter().take(4).cloned().collect();
    let bases: Vec<String> = procs.iter().map(|p| p.base.clone()).collect();
    let mut readers = Vec::new();
    for (k, id) in followed.iter().enumerate() {
        let at = if k % 2 == 0 { victim } else { (victim + 1) % 3 };
        readers.push(tokio::spawn(follow(bases.clone(), at, id.clone(), victim)));
    }
    // Kill mid-stream: once the victim's streams have stored some chunks, none has finished.
    let probe = &victims[0];
    wait_until(|| async {
        procs[victim].status(probe).await["chunks"]
            .as_u64()
            .unwrap_or(0)
            >= 5
    })
    .await;
    let assigned_before = {
        let mut n = 0.0;
        for (i, p) in procs.iter().enumerate() {
            if i != victim {
                n += metric(
                    &p.metrics().await,
                    r#"sluice_rebalances_total{kind="assign"}"#,
                );
            }
        }
        n
    };
    let victim_owned = owned[victim] as f64;
    let mut dead = procs.remove(victim);
    dead.signal("KILL");
    dead.child.wait().await.unwrap();
    eprintln!(
        "killed instance {victim}, which ran {} streams",
        victims.len()
    );

    // Every stream ends, on the survivors, with each seq exactly once in its topic.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    for id in &ids {
        let st = wait_finished(&procs[0], id, deadline).await;
        assert_eq!(st["state"], "success", "{id}: {st}");
    }
    for id in &ids {
        let topic = format!("{prefix}{id}");
        let events: Vec<Value> = read_topic(&topic).await.iter().map(json_of).collect();
        assert_topic_exact(&topic, &events, COUNT, "success");
    }
    let resumed = {
        let mut n = 0;
        for id in &victims {
            if procs[0].status(id).await["runs"].as_u64().unwrap_or(0) > 1 {
                n += 1;
            }
        }
        n
    };
    assert!(
        resumed > 0,
        "no stream of the dead instance was resumed elsewhere"
    );

    // Every survivor gives the same answer for every stream.
    for id in &ids {
        let a = settled(&procs[0].status(id).await);
        let b = settled(&procs[1].status(id).await);
        assert_eq!(a, b, "{id}: status differs between instances");
        assert_eq!(
            a["partition"].as_i64().map(|p| (0..6).contains(&p)),
            Some(true),
            "{a}"
        );
    }

    // The followers saw every event once, across the kill and a reconnect to a survivor.
    let mut reconnected = 0;
    for r in readers {
        let (events, reconnects) = r.await.unwrap();
        assert_complete(&events, COUNT, "success");
        reconnected += reconnects;
    }
    assert!(
        reconnected > 0,
        "no SSE client was connected to the dead instance"
    );

    // The survivors took the dead instance's partitions.
    let mut assigned = 0.0;
    let mut restores = 0.0;
    for p in &procs {
        let m = p.metrics().await;
        assigned += metric(&m, r#"sluice_rebalances_total{kind="assign"}"#);
        restores += metric(&m, "sluice_changelog_restore_seconds_count");
    }
    assert!(
        assigned - assigned_before >= victim_owned,
        "the dead instance's {victim_owned} partitions moved: {assigned_before} → {assigned}"
    );
    assert!(restores >= 3.0, "restores observed: {restores}");
    let owned = wait_spread(&procs.iter().collect::<Vec<_>>(), 6).await;
    eprintln!("after the kill: {owned:?}, {resumed} streams resumed elsewhere");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_sent_to_a_non_owner_cancels_the_stream() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let configs = write_cluster_configs(dir.path(), 2, 4, "", "");
    let prefix = topic_prefix(&configs[0]);
    let a = spawn(&configs[0]).await;
    let b = spawn(&configs[1]).await;
    wait_spread(&[&a, &b], 4).await;
    let procs = [&a, &b];
    // Streams until one runs on each instance, so each instance cancels one it does not run.
    let mut by_owner: HashMap<usize, String> = HashMap::new();
    for i in 0..40 {
        if by_owner.len() == 2 {
            break;
        }
        let id = procs[i % 2]
            .request(json!({"type": "demo:stream_ticks:v1:requested",
                "payload": {"count": 500, "interval_ms": 50}}))
            .await;
        wait_until(|| async {
            let (x, y) = (a.status(&id).await, b.status(&id).await);
            x["running_here"] == true || y["running_here"] == true
        })
        .await;
        let owner = if a.status(&id).await["running_here"] == true {
            0
        } else {
            1
        };
        by_owner.entry(owner).or_insert(id);
    }
    assert_eq!(by_owner.len(), 2, "streams landed on both instances");
    for (owner, id) in &by_owner {
        let other = procs[1 - owner];
        let r = other
            .http
            .delete(format!("{}/v1/streams/{id}", other.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["routed_to_owner"], true, "{body}");
        let deadline = tokio::time::Instant::now() + WAIT;
        let st = wait_finished(other, id, deadline).await;
        assert_eq!(st["state"], "cancelled", "{id}: {st}");
        let events: Vec<Value> = read_topic(&format!("{prefix}{id}"))
            .await
            .iter()
            .map(json_of)
            .collect();
        let last = events.last().unwrap();
        assert!(
            last["type"].as_str().unwrap().ends_with(":cancelled"),
            "{id}: terminal event {last}"
        );
        assert!(
            (events.len() as u64) < 500,
            "{id}: cancelled long before its end, {} events",
            events.len()
        );
    }
}

/// Requests streams through `procs` in turn until `want` of them run on `procs[on]`; returns
/// every stream requested and those running there.
async fn streams_on(
    procs: &[&Proc],
    on: usize,
    want: usize,
    payload: Value,
) -> (Vec<String>, Vec<String>) {
    let (mut all, mut there) = (Vec::new(), Vec::new());
    for i in 0..200 {
        if there.len() >= want {
            break;
        }
        let id = procs[i % procs.len()]
            .request(json!({"type": "demo:stream_ticks:v1:requested", "payload": payload}))
            .await;
        wait_until(|| async {
            let mut any = false;
            for p in procs {
                any |= p.status(&id).await["running_here"] == true;
            }
            any
        })
        .await;
        if procs[on].status(&id).await["running_here"] == true {
            there.push(id.clone());
        }
        all.push(id);
    }
    assert_eq!(there.len(), want, "streams landed on instance {on}");
    (all, there)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_owner_is_fenced_when_it_wakes_and_every_topic_stays_exact() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let configs = write_cluster_configs(dir.path(), 2, 2, "max_attempts = 50", "");
    let prefix = topic_prefix(&configs[0]);
    let mut a = spawn(&configs[0]).await;
    let b = spawn(&configs[1]).await;
    wait_spread(&[&a, &b], 2).await;
    const COUNT: u64 = 150;
    let payload = json!({"count": COUNT, "interval_ms": 40, "checkpoint_every": 5});
    let (all, on_a) = streams_on(&[&a, &b], 0, 6, payload).await;
    let probe = on_a[0].clone();
    wait_until(|| async { a.status(&probe).await["chunks"].as_u64().unwrap_or(0) >= 10 }).await;

    // Pause A past its 6 s session: the group gives its partition to B, whose transactional
    // writer fences A's and which resumes A's streams.
    a.signal("STOP");
    let paused_at = b.status(&probe).await["chunks"].as_u64().unwrap_or(0);
    wait_until(|| async { metric(&b.metrics().await, "sluice_partitions_owned") == 2.0 }).await;
    wait_until(|| async {
        let st = b.status(&probe).await;
        st["running_here"] == true && st["chunks"].as_u64().unwrap_or(0) >= paused_at + 10
    })
    .await;

    // A wakes up with writes of its own still queued and its handlers still ticking.
    a.signal("CONT");
    wait_until(|| async { metric(&a.metrics().await, "sluice_fenced_writes_total") > 0.0 }).await;
    assert!(a.alive(), "the fenced instance stays up");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    for id in &all {
        let st = wait_finished(&b, id, deadline).await;
        assert_eq!(st["state"], "success", "{id}: {st}");
    }
    let mut aborted = 0;
    for id in &all {
        let topic = format!("{prefix}{id}");
        let committed = read_topic(&topic).await;
        let events: Vec<Value> = committed.iter().map(json_of).collect();
        assert_topic_exact(&topic, &events, COUNT, "success");
        aborted += read_partition_as(&topic, 0, "read_uncommitted").await.len() - committed.len();
    }
    let fenced = metric(&a.metrics().await, "sluice_fenced_writes_total");
    eprintln!("fenced writes refused on the paused instance: {fenced}; aborted records in the topics: {aborted}");
    // Both instances agree on every stream afterwards.
    wait_until(|| async {
        let mut same = true;
        for id in &all {
            same &= settled(&a.status(id).await) == settled(&b.status(id).await);
        }
        same
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_added_under_load_takes_partitions_and_nothing_is_lost() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let configs = write_cluster_configs(dir.path(), 4, 6, "max_attempts = 50", "");
    let prefix = topic_prefix(&configs[0]);
    let mut procs = Vec::new();
    for c in &configs[..3] {
        procs.push(spawn(c).await);
    }
    wait_spread(&procs.iter().collect::<Vec<_>>(), 6).await;
    const COUNT: u64 = 100;
    let mut ids = Vec::new();
    for i in 0..30 {
        let every = [0, 1, 4, 9][i % 4];
        ids.push(
            procs[i % 3]
                .request(json!({"type": "demo:stream_ticks:v1:requested",
                    "payload": {"count": COUNT, "interval_ms": 50, "checkpoint_every": every}}))
                .await,
        );
    }
    let probe = ids[0].clone();
    wait_until(|| async {
        procs[0].status(&probe).await["chunks"]
            .as_u64()
            .unwrap_or(0)
            >= 5
    })
    .await;
    procs.push(spawn(&configs[3]).await);
    let owned = wait_spread(&procs.iter().collect::<Vec<_>>(), 6).await;
    eprintln!("after scale-up: {owned:?}");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    for id in &ids {
        let st = wait_finished(&procs[3], id, deadline).await;
        assert_eq!(st["state"], "success", "{id}: {st}");
    }
    for id in &ids {
        let topic = format!("{prefix}{id}");
        let events: Vec<Value> = read_topic(&topic).await.iter().map(json_of).collect();
        assert_topic_exact(&topic, &events, COUNT, "success");
    }
    let mut revoked = 0.0;
    for p in &procs[..3] {
        revoked += metric(
            &p.metrics().await,
            r#"sluice_rebalances_total{kind="revoke"}"#,
        );
    }
    assert!(
        revoked >= 1.0,
        "partitions moved off the old instances: {revoked}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_on_a_non_owner_follows_the_stream_live() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    // Without a live tail, a follower on a non-owner would re-check only every hour.
    let extra = "[edge]\nremote_poll_interval = \"1h\"";
    let configs = write_cluster_configs(dir.path(), 2, 2, "", extra);
    let a = spawn(&configs[0]).await;
    let b = spawn(&configs[1]).await;
    wait_spread(&[&a, &b], 2).await;
    // Long enough to be still running after the resume-point check below (about 2 s).
    let payload = json!({"count": 120, "interval_ms": 50});
    let (_, on_a) = streams_on(&[&a, &b], 0, 1, payload).await;
    let id = on_a[0].clone();
    // Beyond what Kafka shows of a stream running elsewhere: perhaps only not visible yet (a
    // broker that just restarted reports an older watermark), so "try again", not "refused".
    let far = Some(1_000_000);
    match b.try_sse(&id, far).await {
        Err(e) => assert!(
            e.starts_with("503") && e.contains("not visible yet"),
            "a resume point ahead of an unfinished stream elsewhere: {e}"
        ),
        Ok(_) => panic!("a resume point far ahead was accepted"),
    }
    let mut sse = b.sse(&id, None).await;
    let mut events = Vec::new();
    while let Some(ev) = sse.next_event().await {
        let state = ev.state().to_owned();
        events.push(ev);
        if events.len() == 5 {
            assert_eq!(
                metric(&b.metrics().await, "sluice_remote_tails"),
                1.0,
                "the non-owner tails the stream"
            );
        }
        if state != "started" && state != "stream" {
            break;
        }
    }
    assert_complete(&events, 120, "success");
    wait_until(|| async { metric(&b.metrics().await, "sluice_remote_tails") == 0.0 }).await;
    // Ahead of a finished stream: certain, refused.
    match b.try_sse(&id, far).await {
        Err(e) => assert!(
            e.starts_with("400") && e.contains("last_event_id_ahead"),
            "a resume point ahead of a finished stream: {e}"
        ),
        Ok(_) => panic!("a resume point far ahead of a finished stream was accepted"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_from_before_the_changelog_are_seeded_into_it_once() {
    let _serial = SERIAL.lock().await;
    use rdkafka::Message;
    // A store written before the changelog existed: a finished stream only it knows.
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(dir.path());
    let legacy = unique("legacy-");
    {
        let store = sluice::store::Store::open(&settings.store.path).unwrap();
        let request = sluice::event::Request::parse(
            br#"{"type":"demo:stream_ticks:v1:requested","payload":{"count":1}}"#,
            1024,
        )
        .unwrap();
        let mut record = sluice::store::StreamRecord::new(&legacy, request);
        record.state = sluice::store::StreamState::Success;
        record.finished_at = Some(chrono::Utc::now());
        store
            .put(&record, sluice::store::Durability::Sync)
            .await
            .unwrap();
    }
    let changelog = settings.intake.changelog();
    let app = start_exact(settings.clone(), dir, sluice::Registry::new()).await;
    let copies = |messages: &[rdkafka::message::OwnedMessage]| {
        messages
            .iter()
            .filter(|m| m.key() == Some(legacy.as_bytes()) && m.payload().is_some())
            .count()
    };
    wait_until(|| async { copies(&read_partition_as(&changelog, 0, "read_committed").await) > 0 })
        .await;
    let dir = app.shutdown().await;

    // Another instance, with an empty store, knows the stream from the changelog.
    let other_dir = tempfile::tempdir().unwrap();
    let mut other = settings.clone();
    other.store.path = other_dir.path().join("db");
    let app = start_exact(other, other_dir, sluice::Registry::new()).await;
    let status = app.status(&legacy).await;
    assert_eq!(status["state"], "success", "{status}");
    app.shutdown().await;

    // Restarting the first instance does not seed the record again.
    let app = start_exact(settings, dir, sluice::Registry::new()).await;
    app.shutdown().await;
    assert_eq!(
        copies(&read_partition_as(&changelog, 0, "read_committed").await),
        1,
        "seeded exactly once"
    );
}
