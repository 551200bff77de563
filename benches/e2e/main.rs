//! End-to-end benchmark: every Sluice figure beside a raw rdkafka baseline with the same bytes,
//! the same topic layout and the same rate, measured in the same run against the same broker, each
//! repeated and reported as median (min–max).
//!
//! `cargo bench --bench e2e` (full), `cargo bench --bench e2e -- --quick` (seconds-long smoke run),
//! `-- --only S1,S5` for a subset, `-- --repeats N` to change the repeat count. Sluice runs as a child process (`SLUICE_BENCH_BIN`, default the
//! binary built with the bench); the clients live in this process, except S5's subscribers, which
//! live in their own. Writes `target/bench/e2e.json` and `target/bench/e2e.md`.

#[path = "../support/mod.rs"]
mod support;

mod figures;
mod memory;
mod raw;
mod report;
mod server;

use std::time::Duration;

use hdrhistogram::Histogram;
use report::{Figure, Target};
use server::Server;

#[derive(Clone, Copy)]
struct Scale {
    repeats: usize,
    raw_total: u64,
    single_chunks: u64,
    s1: (usize, u64),
    layouts: &'static [usize],
    s2: (u64, u64),
    s3_samples: usize,
    s4: &'static [usize],
    s4_secs: u64,
    s5: (usize, usize),
    peer: bool,
    s6_events: u64,
    cp_chunks: u64,
    s7_streams: usize,
}

const FULL: Scale = Scale {
    repeats: 3,
    raw_total: 200_000,
    single_chunks: 200_000,
    s1: (50, 2_000),
    layouts: &[1_000],
    s2: (1_000, 10),
    s3_samples: 60,
    s4: &[1_000, 5_000],
    s4_secs: 10,
    s5: (5_000, 15_000),
    peer: true,
    s6_events: 100_000,
    cp_chunks: 20_000,
    s7_streams: 1_000,
};

const QUICK: Scale = Scale {
    repeats: 1,
    raw_total: 5_000,
    single_chunks: 2_000,
    s1: (4, 500),
    layouts: &[],
    s2: (200, 2),
    s3_samples: 5,
    s4: &[20],
    s4_secs: 2,
    s5: (20, 60),
    peer: false,
    s6_events: 2_000,
    cp_chunks: 300,
    s7_streams: 100,
};

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// Settings every measured Sluice gets: room for the largest figure. Stopping a server deletes
/// its topics, so the broker does not fill up over a run.
const BENCH_SETTINGS: &str = r#"
[provider]
max_concurrent_streams = 10000
[edge]
early_connect_wait = "30s"
"#;

/// S7's server: retention deletes a finished stream's topic and record 2 s after it ends.
const RETAINED_SETTINGS: &str = r#"
[provider]
max_concurrent_streams = 10000
[edge]
early_connect_wait = "30s"
[retention]
stream_retention = "2s"
sweep_interval = "1s"
"#;

struct Bench {
    scale: Scale,
    only: Option<Vec<String>>,
    figures: Vec<Figure>,
}

impl Bench {
    fn wants(&self, id: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|x| x.eq_ignore_ascii_case(id)))
    }

    /// Prints the table so far, so a long run shows where it is.
    fn progress(&self) {
        for f in &self.figures {
            eprint!("{}", f.row());
        }
    }

    fn figure(&mut self, f: Figure) -> usize {
        if let Some(i) = self.figures.iter().position(|x| x.name == f.name) {
            return i;
        }
        self.figures.push(f);
        self.figures.len() - 1
    }

    /// Throughput figures against N single-partition topics; the keyed alternative beside them.
    async fn throughput(&mut self) {
        let sc = self.scale;
        let (n1, c1) = sc.s1;
        let (total, single, layouts) = (sc.raw_total, sc.single_chunks, sc.layouts);
        let raw_name = |n: usize| format!("raw, {n} single-partition topic(s)");
        let s = Server::start(BENCH_SETTINGS).await;
        if self.wants("single") {
            let b = raw::measure(1, false, total).await;
            let v = figures::throughput(&s, 1, single, 100).await;
            let i = self.figure(
                Figure::new(
                    "single",
                    "one stream, handler emit → SSE client",
                    "chunks/s",
                )
                .against(raw_name(1))
                .target(Target::RatioAtLeast(0.8))
                .params(format!(
                    "{single} chunks of 200 B padding, checkpoint every 100"
                )),
            );
            self.figures[i].value.push(v.rate());
            self.figures[i].baseline.push(b);
            self.figures[i].params.push_str(&v.faults());
        }
        if self.wants("S1") {
            let b = raw::measure(n1, false, total).await;
            let v = figures::throughput(&s, n1, c1, 100).await;
            let i = self.figure(
                Figure::new("S1", format!("{n1} concurrent streams → SSE"), "chunks/s")
                    .against(raw_name(n1))
                    .target(Target::RatioAtLeast(0.8))
                    .params(format!("{n1} × {c1} chunks, checkpoint every 100")),
            );
            self.figures[i].value.push(v.rate());
            self.figures[i].baseline.push(b);
            self.figures[i].params.push_str(&v.faults());
        }
        if self.wants("layout") {
            for &n in [n1].iter().chain(layouts) {
                let spread = raw::measure(n, false, total).await;
                let keyed = raw::measure(n, true, total).await;
                let i = self.figure(
                    Figure::new(
                        "layout",
                        format!("raw, one {n}-partition topic keyed by stream"),
                        "msgs/s",
                    )
                    .against(raw_name(n))
                    .params("produce + consume, same bytes; prices the shared-topic design"),
                );
                self.figures[i].value.push(keyed);
                self.figures[i].baseline.push(spread);
            }
        }
        if self.wants("checkpoint") {
            let never = figures::throughput(&s, 1, sc.cp_chunks, 0).await.rate();
            let every = figures::throughput(&s, 1, sc.cp_chunks, 1).await.rate();
            let i = self.figure(
                Figure::new("checkpoint", "checkpoint after every chunk", "chunks/s")
                    .against("the same stream, no checkpoints")
                    .target(Target::RatioAtLeast(0.8))
                    .params(format!("{} chunks, one stream", sc.cp_chunks)),
            );
            self.figures[i].value.push(every);
            self.figures[i].baseline.push(never);
        }
        if self.wants("S6") {
            let n = sc.s6_events;
            let b = raw::replay(n).await;
            // Its own server: the stream must outlive the replay, so retention is long here.
            let long =
                BENCH_SETTINGS.replace("stream_retention = \"2s\"", "stream_retention = \"10m\"");
            let s6 = Server::start(&long).await;
            let (first_ms, rate) = figures::replay(&s6, n).await;
            s6.stop().await;
            let i = self.figure(
                Figure::new(
                    "S6",
                    format!("replay of a {n}-event stream over SSE"),
                    "events/s",
                )
                .against("raw single-partition replay")
                .target(Target::RatioAtLeast(0.5))
                .params("fresh client from the start"),
            );
            self.figures[i].value.push(rate);
            self.figures[i].baseline.push(b);
            let j = self.figure(Figure::new(
                "S6-first",
                "replay: time to the first event",
                "ms",
            ));
            self.figures[j].value.push(first_ms);
        }
        if self.wants("S3") {
            let h = figures::start_latency(&s, sc.s3_samples).await;
            let i = self.figure(
                Figure::new(
                    "S3",
                    "stream start p99: request → `started` at a waiting client",
                    "ms",
                )
                .target(Target::AtMost(100.0))
                .params(format!("{} starts, topic creation included", sc.s3_samples)),
            );
            self.figures[i].value.push(ms(&h, 0.99));
            self.figures[i].p50_ms.push(ms(&h, 0.5));
            self.figures[i].p99_ms.push(ms(&h, 0.99));
            let mut create = Histogram::<u64>::new(3).expect("histogram");
            for _ in 0..sc.s3_samples.min(20) {
                create.record(raw::create_one().await).expect("record");
            }
            let j = self.figure(Figure::new("topic", "raw topic creation p50", "ms"));
            self.figures[j].value.push(ms(&create, 0.5));
        }
        if self.wants("resume") {
            let (restart_ms, s2) = figures::resume(s).await;
            let i = self.figure(
                Figure::new("resume", "restart → first new chunk at a reader", "ms")
                    .params("graceful stop, same store"),
            );
            self.figures[i].value.push(restart_ms);
            s2.stop().await;
        } else {
            s.stop().await;
        }
    }

    /// Open-loop latency figures, against the raw layout at the same rate.
    async fn latency(&mut self) {
        let (rate, secs) = self.scale.s2;
        let mut runs: Vec<(&'static str, usize, u64, u64)> = Vec::new();
        if self.wants("S2") {
            runs.push(("S2", 1, rate, secs));
        }
        if self.wants("S4") {
            for &n in self.scale.s4 {
                runs.push(("S4", n, 10, self.scale.s4_secs));
            }
        }
        for (id, n, rate, secs) in runs {
            let layout = raw::Layout::create(n, false).await;
            let (b_rate, b) = raw::open_loop(&layout, rate, secs).await;
            layout.delete().await;
            let s = Server::start(BENCH_SETTINGS).await;
            let v = figures::open_loop(&s, n, rate, secs).await;
            s.stop().await;
            let offered = (n as u64 * rate) as f64;
            let i = self.figure(
                Figure::new(
                    id,
                    format!("{n} live stream(s) × {rate} chunks/s: p99 emit → SSE"),
                    "ms",
                )
                .against(format!("raw p99, {n} topic(s), same rate"))
                .target(if id == "S2" {
                    Target::RatioAtMost(1.0)
                } else {
                    Target::AtMost(100.0)
                })
                .rate(offered)
                .params(format!(
                    "open loop, {secs} s, stamped with the scheduled send time"
                )),
            );
            let f = &mut self.figures[i];
            f.params.push_str(&v.faults());
            f.value.push(ms(&v.latency, 0.99));
            f.baseline.push(ms(&b, 0.99));
            f.p50_ms.push(ms(&v.latency, 0.5));
            f.p99_ms.push(ms(&v.latency, 0.99));
            if id == "S4" {
                let j = self.figure(
                    Figure::new(
                        "S4-rate",
                        format!("{n} live streams × 10 chunks/s: delivered"),
                        "chunks/s",
                    )
                    .against(format!("raw, {n} topics, same rate"))
                    .target(Target::RatioAtLeast(0.8))
                    .rate(offered)
                    .params("chunks delivered per repeat:"),
                );
                self.figures[j]
                    .params
                    .push_str(&format!(" {}/{}", v.chunks, v.expected));
                self.figures[j].value.push(v.rate());
                self.figures[j].baseline.push(b_rate);
            }
        }
    }

    /// S5: memory per live SSE subscriber, Sluice and Centrifugo.
    async fn memory(&mut self) {
        if !self.wants("S5") {
            return;
        }
        let (n1, n2) = self.scale.s5;
        let subject = memory::sluice().await;
        let kib = memory::slope(&subject, n1, n2).await;
        subject.0.stop().await;
        let peer = if self.scale.peer {
            let c = memory::Centrifugo::start().await;
            let kib = memory::slope(&c, n1, n2).await;
            c.stop().await;
            Some(kib)
        } else {
            None
        };
        let mut f = Figure::new(
            "S5",
            format!("server RSS per live SSE subscriber, {n2} held"),
            "KiB",
        )
        .target(Target::AtMost(16.0))
        .params(format!(
            "RSS slope {n1} → {n2} subscribers, client in another process"
        ));
        if peer.is_some() {
            f = f.against("Centrifugo v6.9.1 uni_sse, same method");
        }
        let i = self.figure(f);
        self.figures[i].value.push(kib);
        if let Some(p) = peer {
            self.figures[i].baseline.push(p);
        }
    }

    /// S7: memory kept per finished stream once retention has run.
    async fn retained(&mut self) {
        if !self.wants("S7") {
            return;
        }
        let s = Server::start(RETAINED_SETTINGS).await;
        let k = self.scale.s7_streams;
        let (kib, before, after) = figures::retained(&s, k, Duration::from_secs(6)).await;
        s.stop().await;
        let i = self.figure(
            Figure::new("S7", "RSS kept per finished stream", "KiB")
                .target(Target::AtMost(1.0))
                .params(format!(
                    "second batch of {k} streams after a first; retention 2 s"
                )),
        );
        self.figures[i].value.push(kib);
        self.figures[i]
            .params
            .push_str(&format!("; a repeat: RSS {before} → {after} KiB"));
    }
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_default();
    format!("{cores} cores, {cpu}")
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.split(',').map(str::to_owned).collect());
    let mut scale = if quick { QUICK } else { FULL };
    if let Some(n) = args
        .iter()
        .position(|a| a == "--repeats")
        .and_then(|i| args.get(i + 1)?.parse().ok())
    {
        scale.repeats = n;
    }
    let mut bench = Bench {
        scale,
        only,
        figures: Vec::new(),
    };
    // A run that was interrupted leaves its topics behind; thousands of them slow the broker down.
    let left = raw::delete_prefixed("bench.").await;
    if left > 0 {
        eprintln!("e2e: deleted {left} topics an earlier run left behind");
    }
    for rep in 0..bench.scale.repeats {
        eprintln!("e2e: repeat {} of {}", rep + 1, bench.scale.repeats);
        bench.throughput().await;
        bench.progress();
        bench.latency().await;
        bench.progress();
        bench.memory().await;
        bench.retained().await;
        bench.progress();
    }
    let header = format!(
        "Machine: {}; broker: local single-node Kafka; Sluice: {}; mode: {}; repeats: {}",
        machine(),
        server::binary()
            .file_name()
            .map_or("?".into(), |n| n.to_string_lossy().into_owned()),
        if quick { "quick" } else { "full" },
        bench.scale.repeats
    );
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    let md = report::write(&dir, &header, &bench.figures);
    println!("{md}");
}
