//! The counters a backend's writer keeps, and the [`StoreStats`] they give. Shared by every
//! backend so that `/metrics` means the same thing whichever store runs.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::StoreStats;

/// Updated by the writer, read by `Store::stats`.
#[derive(Debug, Default)]
pub(crate) struct WriterMetrics {
    pub commits: AtomicU64,
    pub failed_commits: AtomicU64,
    pub ops_committed: AtomicU64,
    pub batches_committed: AtomicU64,
    pub last_group_ops: AtomicU64,
    pub last_group_batches: AtomicU64,
    pub commit_micros: AtomicU64,
    /// Reopens of the database after a failed commit (backends that reconnect instead keep 0).
    pub reopens: AtomicU64,
    /// Set while the store cannot write (the last attempt failed); cleared by a success.
    pub unavailable: AtomicBool,
}

impl WriterMetrics {
    /// The stats of this moment, with what only the backend knows: the batches queued and the
    /// bytes on disk (0 when unknown).
    pub fn stats(&self, queued_batches: u64, size_bytes: u64) -> StoreStats {
        StoreStats {
            commits: self.commits.load(Ordering::Relaxed),
            failed_commits: self.failed_commits.load(Ordering::Relaxed),
            ops_committed: self.ops_committed.load(Ordering::Relaxed),
            batches_committed: self.batches_committed.load(Ordering::Relaxed),
            last_group_ops: self.last_group_ops.load(Ordering::Relaxed),
            last_group_batches: self.last_group_batches.load(Ordering::Relaxed),
            commit_time: Duration::from_micros(self.commit_micros.load(Ordering::Relaxed)),
            queued_batches,
            reopens: self.reopens.load(Ordering::Relaxed),
            writable: !self.unavailable.load(Ordering::Relaxed),
            size_bytes,
        }
    }
}
