//! Durable Streams benchmark: Sluice beside the protocol's Node reference server
//! (`@durable-streams/server` 0.3.7, file-backed), both on this machine, driven by the same client
//! code in this process with the same payloads and concurrency, in one run, each figure repeated
//! (the servers' order alternating) and reported as median (min–max).
//!
//! * small appends: `WRITERS` writers, each appending 100-byte `text/plain` bodies one at a time to
//!   a stream of its own; appends/s over all of them.
//! * 1 MiB appends: 4 writers, incompressible 1 MiB bodies; MiB/s.
//! * long-poll round trip: a writer appends `{"t": <intended send time>}` at a fixed rate (open
//!   loop) while a reader long-polls the tail; latency from the intended send time to the reader
//!   holding the message, p50/p99; every message must arrive once.
//! * catch-up: a JSON stream prefilled with 100,000 messages of about 100 bytes (appended as
//!   arrays of 100), read from the start until `Stream-Up-To-Date`; messages/s, and the count is
//!   checked.
//!
//! `cargo bench --bench durable` (full) or `-- --quick`; `-- --repeats N`. Installs the reference
//! server into `benches/durable/node_modules` (`npm ci`) when it is missing. Writes
//! `target/bench/durable.json` and `target/bench/durable.md`.

#[path = "../support/mod.rs"]
mod support;

#[allow(dead_code)]
#[path = "../e2e/raw.rs"]
mod raw;

#[allow(dead_code)]
#[path = "../e2e/server.rs"]
mod server;

mod figures;
mod reference;

use std::collections::BTreeMap;

use serde_json::{json, Value};

/// How much each figure does.
#[derive(Clone, Copy)]
pub struct Scale {
    pub repeats: usize,
    pub small_appends: usize,
    pub big_appends: usize,
    pub poll_rate: u64,
    pub poll_secs: u64,
    pub catch_up: usize,
}

const FULL: Scale = Scale {
    repeats: 3,
    small_appends: 20_000,
    big_appends: 64,
    poll_rate: 50,
    poll_secs: 10,
    catch_up: 100_000,
};

const QUICK: Scale = Scale {
    repeats: 1,
    small_appends: 400,
    big_appends: 4,
    poll_rate: 20,
    poll_secs: 2,
    catch_up: 2_000,
};

/// One figure's repeats for one server.
#[derive(Default)]
struct Samples(Vec<f64>);

impl Samples {
    fn sorted(&self) -> Vec<f64> {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        v
    }
    fn median(&self) -> f64 {
        let v = self.sorted();
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }
    fn show(&self, digits: usize) -> String {
        let v = self.sorted();
        match v.len() {
            0 => "–".into(),
            1 => format!("{:.digits$}", v[0]),
            n => format!(
                "{:.digits$} ({:.digits$}–{:.digits$})",
                self.median(),
                v[0],
                v[n - 1]
            ),
        }
    }
}

/// Every figure's samples, by figure then server.
#[derive(Default)]
pub struct Results(BTreeMap<(usize, &'static str), (&'static str, usize, [Samples; 2])>);

impl Results {
    /// Records `value` of figure `order`/`name` (in `unit`, shown with `digits` decimals) for
    /// server `which` (0: Sluice, 1: reference).
    pub fn add(
        &mut self,
        order: usize,
        name: &'static str,
        unit: &'static str,
        digits: usize,
        which: usize,
        value: f64,
    ) {
        let e = self
            .0
            .entry((order, name))
            .or_insert_with(|| (unit, digits, Default::default()));
        e.2[which].0.push(value);
    }

    fn markdown(&self, header: &str) -> String {
        let mut out = format!("{header}\n\n| figure | Sluice | reference server | Sluice ÷ reference |\n|---|---|---|---|\n");
        for ((_, name), (unit, digits, s)) in &self.0 {
            let ratio = s[0].median() / s[1].median();
            out += &format!(
                "| {name} ({unit}) | {} | {} | {ratio:.2}× |\n",
                s[0].show(*digits),
                s[1].show(*digits)
            );
        }
        out
    }

    fn json(&self) -> Value {
        let figs: Vec<Value> = self
            .0
            .iter()
            .map(|((_, name), (unit, _, s))| {
                json!({"figure": name, "unit": unit,
                    "sluice": {"median": s[0].median(), "samples": s[0].0},
                    "reference": {"median": s[1].median(), "samples": s[1].0}})
            })
            .collect();
        json!({ "figures": figs })
    }
}

/// A Durable Streams server under test: its base URL (`.../v1/stream/` follows).
pub struct Target {
    pub name: &'static str,
    pub base: String,
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let mut scale = if quick { QUICK } else { FULL };
    if let Some(n) = args
        .iter()
        .position(|a| a == "--repeats")
        .and_then(|i| args.get(i + 1)?.parse().ok())
    {
        scale.repeats = n;
    }
    reference::install();
    let left = raw::delete_prefixed("bench.").await;
    if left > 0 {
        eprintln!("durable: deleted {left} topics an earlier run left behind");
    }
    let sluice = server::Server::start("[durable]\nmax_append_bytes = 2097152\n").await;
    let node = reference::Reference::start().await;
    let targets = [
        Target {
            name: "sluice",
            base: format!("{}/ds", sluice.base),
        },
        Target {
            name: "reference",
            base: node.base.clone(),
        },
    ];
    let mut results = Results::default();
    for rep in 0..scale.repeats {
        eprintln!("durable: repeat {} of {}", rep + 1, scale.repeats);
        // Alternate which server goes first, so neither always meets a warmer machine.
        let order: [usize; 2] = if rep % 2 == 0 { [0, 1] } else { [1, 0] };
        for which in order {
            figures::run(&targets[which], which, &scale, &mut results).await;
        }
    }
    let header =
        format!(
        "Machine: {} cores; broker: local single-node Kafka; Sluice: {} build, Durable Streams \
         records acknowledged by Kafka (acks=all, no fsync per record); reference: \
         @durable-streams/server 0.3.7 file-backed (fdatasync per append, coalesced); repeats: {}; \
         mode: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if server::binary().components().any(|c| c.as_os_str() == "release") {
            "release"
        } else {
            "debug"
        },
        scale.repeats,
        if quick { "quick" } else { "full" },
    );
    let md = results.markdown(&header);
    println!("{md}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join("durable.md"), &md);
    let _ = std::fs::write(
        dir.join("durable.json"),
        serde_json::to_string_pretty(&results.json()).unwrap_or_default(),
    );
    node.stop().await;
    sluice.stop().await;
}
