//! Counters and histograms exposed at `GET /metrics` in the Prometheus text format.
//!
//! Plain atomics: recording is a relaxed add on the hot path; rendering reads them.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use crate::llm::metrics::ProviderMetrics;

/// Upper bounds (seconds) of the latency histogram buckets.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

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

    fn render(&self, out: &mut String, name: &str, help: &str) {
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

#[derive(Default)]
pub struct Metrics {
    pub runs_completed: AtomicU64,
    pub runs_paused: AtomicU64,
    pub runs_failed: AtomicU64,
    pub runs_cancelled: AtomicU64,
    pub run_seconds: Histogram,
    pub live_actors: AtomicU64,
    pub open_sockets: AtomicU64,
    pub events_emitted: AtomicU64,
    /// Each model provider's figures (`crate::llm::metrics`), by provider name.
    pub llm: Vec<(String, Arc<ProviderMetrics>)>,
    pub slow_consumers_closed: AtomicU64,
    /// Conversations deleted by the retention sweeper (`crate::retention`).
    pub conversations_swept: AtomicU64,
    /// Stored conversations, as of the last sweep.
    pub stored_conversations: AtomicU64,
}

impl Metrics {
    /// Metrics that also render the given providers' figures.
    pub fn with_llm(llm: Vec<(String, Arc<ProviderMetrics>)>) -> Self {
        Metrics {
            llm,
            ..Metrics::default()
        }
    }

    /// The Prometheus text. `store` adds the store's own figures (commits, batch sizes).
    pub fn render(&self, store: &crate::store::StoreStats) -> String {
        let mut o = String::with_capacity(4096);
        let _ = writeln!(o, "# HELP parley_runs_total Runs by how they ended (a paused run counts when it pauses).\n# TYPE parley_runs_total counter");
        for (status, c) in [
            ("completed", &self.runs_completed),
            ("paused", &self.runs_paused),
            ("failed", &self.runs_failed),
            ("cancelled", &self.runs_cancelled),
        ] {
            let _ = writeln!(
                o,
                "parley_runs_total{{status=\"{status}\"}} {}",
                c.load(Relaxed)
            );
        }
        self.run_seconds.render(
            &mut o,
            "parley_run_duration_seconds",
            "Wall time of run segments.",
        );
        let l = |c: &AtomicU64| c.load(Relaxed);
        // One row a figure: its type, name, help and value.
        #[rustfmt::skip]
        let figures = [
            (Gauge, "parley_live_actors", "Conversation actors in memory.", l(&self.live_actors)),
            (Gauge, "parley_open_sockets", "Open WebSocket connections.", l(&self.open_sockets)),
            (Counter, "parley_events_total", "Events emitted.", l(&self.events_emitted)),
            (Counter, "parley_slow_consumers_closed_total", "Sockets closed for falling behind.", l(&self.slow_consumers_closed)),
            (Counter, "parley_store_commits_total", "Durable store commits.", store.commits),
            (Counter, "parley_store_ops_total", "Writes committed.", store.ops_committed),
            (Gauge, "parley_store_last_batch_ops", "Writes in the last commit.", store.last_group_ops),
            (Counter, "parley_conversations_swept_total", "Conversations deleted by the retention sweeper.", l(&self.conversations_swept)),
            (Gauge, "parley_stored_conversations", "Stored conversations (refreshed by each retention sweep).", l(&self.stored_conversations)),
            (Gauge, "parley_store_size_bytes", "Bytes the store takes on disk.", store.size_bytes),
            (Counter, "parley_store_failed_commits_total", "Store write attempts that failed (disk full, I/O errors); retries count too.", store.failed_commits),
            (Counter, "parley_store_reopens_total", "Reopens of the database after a storage fault.", store.reopens),
            (Gauge, "parley_store_writable", "1 while the store can write, 0 while writes answer storage_unavailable.", u64::from(store.writable)),
            (Gauge, "parley_store_queued_batches", "Write batches waiting for the store's writer.", store.queued_batches),
        ];
        for (kind, name, help, v) in figures {
            let kind = match kind {
                Gauge => "gauge",
                Counter => "counter",
            };
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        }
        let _ = writeln!(o, "# HELP parley_store_commit_seconds_sum Time spent committing.\n# TYPE parley_store_commit_seconds_sum counter\nparley_store_commit_seconds_sum {}", store.commit_time.as_secs_f64());
        crate::llm::metrics::render(&mut o, &self.llm);
        o
    }
}

/// A figure's Prometheus type.
enum Kind {
    Gauge,
    Counter,
}
use Kind::{Counter, Gauge};
