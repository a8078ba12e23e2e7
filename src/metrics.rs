//! Counters and histograms exposed at `GET /metrics` in the Prometheus text format.
//!
//! Plain atomics: recording is a relaxed add on the hot path; rendering reads them.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use crate::histogram::Histogram;
use crate::llm::metrics::ProviderMetrics;

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
