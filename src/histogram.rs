//! A latency histogram in the Prometheus text format: fixed buckets, plain atomics (recording
//! is a relaxed add on the hot path). Used by the server's metrics and by each LLM provider's.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Upper bounds (seconds) of the latency histogram buckets.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

/// Observations by bucket, their count and sum.
#[derive(Default)]
pub struct Histogram {
    counts: [AtomicU64; 12],
    inf: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, seconds: f64) {
        match BUCKETS.iter().position(|&b| seconds <= b) {
            Some(i) => self.counts[i].fetch_add(1, Relaxed),
            None => self.inf.fetch_add(1, Relaxed),
        };
        self.sum_micros
            .fetch_add((seconds * 1e6).max(0.0) as u64, Relaxed);
    }

    /// The whole family of one unlabelled series.
    pub(crate) fn render(&self, out: &mut String, name: &str, help: &str) {
        Self::render_header(out, name, help);
        self.render_series(out, name, "");
    }

    /// `# HELP` and `# TYPE` of a histogram family.
    pub(crate) fn render_header(out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    }

    /// One series of a family; `labels` is `k="v",...` without braces (may be empty).
    pub(crate) fn render_series(&self, out: &mut String, name: &str, labels: &str) {
        let (pre, sep) = if labels.is_empty() {
            (String::new(), "")
        } else {
            (format!("{{{labels}}}"), ",")
        };
        let mut cum = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cum += self.counts[i].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cum}");
        }
        cum += self.inf.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cum}");
        let _ = writeln!(
            out,
            "{name}_sum{pre} {}",
            self.sum_micros.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{pre} {cum}");
    }
}
