//! The bytes Parley's tables take in the database (`/metrics`' `parley_store_size_bytes`).
//!
//! # Invariants
//!
//! - **What is counted.** `pg_total_relation_size` (heap, indexes, TOAST) of every table in the
//!   store's schema (`current_schema()`: the configured schema, or the user's default), summed:
//!   Parley's data only, not the rest of a shared database.
//! - **Never per scrape.** [`StatsSize::get`] answers the cached figure at once (`stats()` is a
//!   plain `fn`); when the figure is older than [`MAX_AGE`] it starts ONE background query on
//!   the read pool (never two at a time), so scraping `/metrics` often costs nothing more. The
//!   store measures once when it opens, so the first scrape is already a real figure.
//! - **A failed measurement keeps the last figure** (logged at debug; the next scrape after
//!   [`MAX_AGE`] tries again).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use parking_lot::Mutex;

use super::read::query;
use crate::store::StoreError;

/// A figure older than this is refreshed (in the background) by the next read of it.
pub(super) const MAX_AGE: Duration = Duration::from_secs(10);

const SIZE: &str = "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::int8
     FROM pg_class c
     WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'm')";

/// Measures now: the bytes of every table of the store's schema.
pub(super) async fn measure(pool: &Pool) -> Result<u64, StoreError> {
    let rows = query(pool, SIZE, &[]).await?;
    Ok(rows
        .first()
        .map_or(0, |r| u64::try_from(r.get::<_, i64>(0)).unwrap_or(0)))
}

/// The cached size and when it was measured.
#[derive(Default)]
pub(super) struct StatsSize {
    bytes: AtomicU64,
    measured: Mutex<Option<Instant>>,
    refreshing: AtomicBool,
}

impl StatsSize {
    /// Stores a measurement.
    pub(super) fn set(&self, bytes: u64) {
        self.bytes.store(bytes, Ordering::Relaxed);
        *self.measured.lock() = Some(Instant::now());
    }

    /// The last figure; starts a refresh in the background when it is stale (and none runs).
    pub(super) fn get(self: &Arc<Self>, pool: &Pool) -> u64 {
        let stale = self
            .measured
            .lock()
            .is_none_or(|at| at.elapsed() >= MAX_AGE);
        if stale && !self.refreshing.swap(true, Ordering::AcqRel) {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    let me = self.clone();
                    let pool = pool.clone();
                    runtime.spawn(async move {
                        match measure(&pool).await {
                            Ok(bytes) => me.set(bytes),
                            Err(error) => {
                                tracing::debug!(error = %error, "cannot measure the postgres store's size");
                                *me.measured.lock() = Some(Instant::now());
                            }
                        }
                        me.refreshing.store(false, Ordering::Release);
                    });
                }
                // Not on a runtime (a blocking caller): the last figure, refreshed later.
                Err(_) => self.refreshing.store(false, Ordering::Release),
            }
        }
        self.bytes.load(Ordering::Relaxed)
    }
}
