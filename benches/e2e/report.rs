//! The benchmark's table: each figure with its repeats (median, min, max), its same-layout
//! baseline, the ratio between them, the offered rate and the target; written as JSON with numeric
//! fields and as Markdown.

use serde_json::{json, Map, Value};

/// Repeated measurements of one quantity.
#[derive(Debug, Clone, Default)]
pub struct Samples(pub Vec<f64>);

impl Samples {
    /// Adds one repetition's value.
    pub fn push(&mut self, v: f64) {
        self.0.push(v);
    }

    /// The median (the mean of the middle two for an even count).
    pub fn median(&self) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    fn min(&self) -> f64 {
        self.0.iter().copied().fold(f64::NAN, f64::min)
    }

    fn max(&self) -> f64 {
        self.0.iter().copied().fold(f64::NAN, f64::max)
    }

    fn json(&self) -> Value {
        json!({"median": num(self.median()), "min": num(self.min()), "max": num(self.max()),
            "samples": self.0.iter().map(|v| num(*v)).collect::<Vec<_>>()})
    }

    /// `median (min–max)` with `digits` decimals.
    fn show(&self, digits: usize) -> String {
        if self.0.len() < 2 {
            return format!("{:.digits$}", self.median());
        }
        format!(
            "{:.digits$} ({:.digits$}–{:.digits$})",
            self.median(),
            self.min(),
            self.max()
        )
    }
}

fn num(v: f64) -> Value {
    if v.is_finite() {
        json!((v * 1000.0).round() / 1000.0)
    } else {
        Value::Null
    }
}

/// How a figure is judged.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// Informational.
    None,
    /// `value / baseline` at least this.
    RatioAtLeast(f64),
    /// `value / baseline` at most this.
    RatioAtMost(f64),
    /// `value` at most this, in the figure's unit.
    AtMost(f64),
}

/// One row of the table.
#[derive(Debug, Clone)]
pub struct Figure {
    /// Short id such as `S1`.
    pub id: &'static str,
    /// What is measured.
    pub name: String,
    /// Unit of `value` and `baseline`.
    pub unit: &'static str,
    /// Sluice's measurement per repeat.
    pub value: Samples,
    /// The baseline's name, if any.
    pub baseline_name: Option<String>,
    /// The baseline per repeat, measured in the same run.
    pub baseline: Samples,
    /// Offered load, per second, if the figure runs at a fixed rate.
    pub rate: Option<f64>,
    /// Median latency per repeat (ms), for latency figures.
    pub p50_ms: Samples,
    /// p99 latency per repeat (ms).
    pub p99_ms: Samples,
    /// How it is judged.
    pub target: Target,
    /// Parameters in words.
    pub params: String,
}

impl Figure {
    /// A figure with no baseline yet.
    pub fn new(id: &'static str, name: impl Into<String>, unit: &'static str) -> Figure {
        Figure {
            id,
            name: name.into(),
            unit,
            value: Samples::default(),
            baseline_name: None,
            baseline: Samples::default(),
            rate: None,
            p50_ms: Samples::default(),
            p99_ms: Samples::default(),
            target: Target::None,
            params: String::new(),
        }
    }

    /// Names the baseline.
    pub fn against(mut self, baseline: impl Into<String>) -> Figure {
        self.baseline_name = Some(baseline.into());
        self
    }

    /// Sets the target.
    pub fn target(mut self, t: Target) -> Figure {
        self.target = t;
        self
    }

    /// Sets the parameters text.
    pub fn params(mut self, p: impl Into<String>) -> Figure {
        self.params = p.into();
        self
    }

    /// Sets the offered rate.
    pub fn rate(mut self, r: f64) -> Figure {
        self.rate = Some(r);
        self
    }

    /// `value / baseline`, from the medians.
    pub fn ratio(&self) -> Option<f64> {
        (!self.baseline.0.is_empty()).then(|| self.value.median() / self.baseline.median())
    }

    /// Whether the target is met, if there is one.
    pub fn met(&self) -> Option<bool> {
        match self.target {
            Target::None => None,
            Target::RatioAtLeast(t) => self.ratio().map(|r| r >= t),
            Target::RatioAtMost(t) => self.ratio().map(|r| r <= t),
            Target::AtMost(t) => Some(self.value.median() <= t),
        }
    }

    fn target_text(&self) -> String {
        match self.target {
            Target::None => String::new(),
            Target::RatioAtLeast(t) => format!("≥ {t}× baseline"),
            Target::RatioAtMost(t) => format!("≤ {t}× baseline"),
            Target::AtMost(t) => format!("≤ {t} {}", self.unit),
        }
    }

    fn json(&self) -> Value {
        let mut m = Map::new();
        m.insert("id".into(), json!(self.id));
        m.insert("name".into(), json!(self.name));
        m.insert("unit".into(), json!(self.unit));
        m.insert("value".into(), num(self.value.median()));
        m.insert("min".into(), num(self.value.min()));
        m.insert("max".into(), num(self.value.max()));
        m.insert("repeats".into(), json!(self.value.0.len()));
        m.insert("samples".into(), self.value.json()["samples"].clone());
        if let Some(b) = &self.baseline_name {
            m.insert("baseline_name".into(), json!(b));
            m.insert("baseline".into(), num(self.baseline.median()));
            m.insert("baseline_min".into(), num(self.baseline.min()));
            m.insert("baseline_max".into(), num(self.baseline.max()));
        }
        m.insert("ratio".into(), self.ratio().map_or(Value::Null, num));
        m.insert("rate_per_s".into(), self.rate.map_or(Value::Null, num));
        if !self.p50_ms.0.is_empty() {
            m.insert("p50_ms".into(), self.p50_ms.json());
            m.insert("p99_ms".into(), self.p99_ms.json());
        }
        m.insert("target".into(), json!(self.target_text()));
        m.insert("target_met".into(), json!(self.met()));
        m.insert("parameters".into(), json!(self.params));
        Value::Object(m)
    }

    /// The figure as a Markdown table row.
    pub fn row(&self) -> String {
        let digits = if self.value.median().abs() >= 100.0 {
            0
        } else {
            2
        };
        let mut value = format!("{} {}", self.value.show(digits), self.unit);
        if !self.p50_ms.0.is_empty() {
            value.push_str(&format!(
                "; p50 {} / p99 {} ms",
                self.p50_ms.show(2),
                self.p99_ms.show(2)
            ));
        }
        let baseline = match &self.baseline_name {
            Some(name) => format!(
                "{name}: {} {}",
                self.baseline
                    .show(if self.baseline.median().abs() >= 100.0 {
                        0
                    } else {
                        2
                    }),
                self.unit
            ),
            None => String::new(),
        };
        let ratio = self.ratio().map_or(String::new(), |r| format!("{r:.2}×"));
        let met = match self.met() {
            Some(true) => "met",
            Some(false) => "missed",
            None => "",
        };
        let rate = self.rate.map_or(String::new(), |r| format!("{r:.0}/s"));
        format!(
            "| {} | {} | {value} | {baseline} | {ratio} | {rate} | {} {met} | {} |\n",
            self.id,
            self.name,
            self.target_text(),
            self.params
        )
    }
}

/// Writes `e2e.json` and `e2e.md` under `dir` and returns the Markdown.
pub fn write(dir: &std::path::Path, header: &str, figures: &[Figure]) -> String {
    let mut md = format!(
        "{header}\n\n| id | figure | Sluice: median (min–max) | baseline, same run | ratio | offered | target | parameters |\n|---|---|---|---|---|---|---|---|\n"
    );
    for f in figures {
        md.push_str(&f.row());
    }
    let report =
        json!({"header": header, "figures": figures.iter().map(Figure::json).collect::<Vec<_>>()});
    std::fs::create_dir_all(dir).expect("bench dir");
    std::fs::write(
        dir.join("e2e.json"),
        serde_json::to_string_pretty(&report).expect("json"),
    )
    .expect("write json");
    std::fs::write(dir.join("e2e.md"), &md).expect("write md");
    md
}
