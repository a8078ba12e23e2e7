//! The retention sweeper: deletes finished conversations that have been idle longer than their
//! retention (`retentionDays` of their assistant, else `[storage] retention_days`), in small
//! batches, through the [`Store`](crate::store::Store) trait.
//!
//! # Invariants
//!
//! - **Only finished, unowned conversations.** A conversation is deleted only if its status is
//!   finished (`idle`, `completed`, `failed`, `cancelled`; `paused` only with
//!   `retention_sweeps_paused`), never `running`, and no actor holds it (a live or starting
//!   actor is its owner: ARCHITECTURE invariant 1). Its record is read again right before the
//!   delete batch is built, so activity since the scan keeps it. In cluster mode the sweeping
//!   node first claims the conversation's lease (`Registry::claim_for_sweep`): one another
//!   node holds is skipped, and the delete passes the fence only while the claim holds.
//! - **Small batches.** At most `sweep_batch` deletions per commit, so a sweep never holds the
//!   writer for long; freed pages are reused by redb, so the file stops growing once retention
//!   balances new traffic.
//! - **Zero keeps.** A retention of 0 (server or assistant) keeps forever; with no retention
//!   configured anywhere the sweeper does nothing.
//! - **Expired idempotency keys** (CONTRACT §6: 24 hours) are deleted by every sweep, whatever
//!   the retention settings ([`sweep_idempotency_keys`]).
//! - Counted in `/metrics`: `parley_conversations_swept_total`, and each sweep refreshes
//!   `parley_stored_conversations`.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use crate::services::Services;
use crate::store::{ConversationRecord, RunStatus, StoreError, WriteOp};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Runs sweeps every `sweep_interval_seconds` until the process ends.
pub async fn run(svc: Arc<Services>) {
    let every = Duration::from_secs(svc.config.storage.sweep_interval_seconds.max(1));
    loop {
        tokio::time::sleep(every).await;
        match sweep(&svc).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "retention sweep"),
            Err(e) => tracing::warn!(error = %e, "retention sweep failed; trying again later"),
        }
        if let Err(e) = sweep_idempotency_keys(&svc).await {
            tracing::warn!(error = %e, "idempotency key sweep failed; trying again later");
        }
    }
}

/// Deletes the idempotency keys that have expired (24 hours after they were stored; reads
/// already ignore them). Runs with every sweep, whatever the retention settings.
pub async fn sweep_idempotency_keys(svc: &Services) -> Result<(), StoreError> {
    let op = WriteOp::DeleteExpiredIdempotencyKeys { now_ms: now_ms() };
    svc.store.write(vec![op]).await
}

/// The retention of conversations of `assistant`: its own, else the server's; `None` keeps.
fn retention_of(svc: &Services, assistant: &str) -> Option<Duration> {
    let own = svc.catalog.get(assistant).and_then(|a| a.retention);
    let server = server_retention(svc);
    own.or(server).filter(|d| !d.is_zero())
}

fn server_retention(svc: &Services) -> Option<Duration> {
    let days = svc.config.storage.retention_days;
    (days.is_finite() && days > 0.0)
        .then(|| Duration::try_from_secs_f64(days * 86_400.0).unwrap_or(Duration::MAX))
}

/// The shortest retention anywhere: nothing younger than that can be expired.
fn shortest_retention(svc: &Services) -> Option<Duration> {
    svc.catalog
        .iter()
        .filter_map(|a| a.retention)
        .chain(server_retention(svc))
        .filter(|d| !d.is_zero())
        .min()
}

/// Whether `rec` is expired at `now_ms` under `retention`.
pub fn expired(
    rec: &ConversationRecord,
    retention: Option<Duration>,
    now_ms: i64,
    sweeps_paused: bool,
) -> bool {
    let Some(retention) = retention else {
        return false;
    };
    let finished = match rec.status {
        RunStatus::Running => false,
        RunStatus::Paused => sweeps_paused,
        RunStatus::Idle | RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled => true,
    };
    let age = u64::try_from(now_ms.saturating_sub(rec.updated_at)).unwrap_or(0);
    finished && u128::from(age) > retention.as_millis()
}

/// One sweep over every stored conversation. Returns how many were deleted.
pub async fn sweep(svc: &Arc<Services>) -> Result<u64, StoreError> {
    let store = &svc.store;
    if let Ok(n) = store.conversation_count().await {
        svc.metrics.stored_conversations.store(n, Relaxed);
    }
    let Some(shortest) = shortest_retention(svc) else {
        return Ok(0);
    };
    let now = now_ms();
    let shortest_ms = i64::try_from(shortest.as_millis()).unwrap_or(i64::MAX);
    let before = now.saturating_sub(shortest_ms);
    let batch = svc.config.storage.sweep_batch.max(1);
    let sweeps_paused = svc.config.storage.retention_sweeps_paused;
    let mut after: Option<String> = None;
    let mut deleted = 0u64;
    loop {
        let page = store
            .idle_conversations(before, after.as_deref(), batch)
            .await?;
        let Some(last) = page.last() else {
            break;
        };
        after = Some(last.id.clone());
        let mut claimed = Vec::new();
        for rec in &page {
            if expired(rec, retention_of(svc, &rec.assistant), now, sweeps_paused)
                && svc.registry.claim_for_sweep(&rec.id).await?
            {
                claimed.push(rec.id.clone());
            }
        }
        let ops: Vec<WriteOp> = claimed
            .iter()
            .map(|id| WriteOp::DeleteConversation {
                conversation: id.clone(),
            })
            .collect();
        if !ops.is_empty() {
            let n = ops.len() as u64;
            let written = store.write(ops).await;
            svc.registry.swept(&claimed);
            written?;
            deleted += n;
            svc.metrics.conversations_swept.fetch_add(n, Relaxed);
        }
        if page.len() < batch {
            break;
        }
    }
    if deleted > 0 {
        if let Ok(n) = store.conversation_count().await {
            svc.metrics.stored_conversations.store(n, Relaxed);
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(status: RunStatus, updated_at: i64) -> ConversationRecord {
        ConversationRecord {
            id: "c".into(),
            owner: "u".into(),
            assistant: "a".into(),
            title: String::new(),
            title_set: false,
            status,
            created_at: 0,
            updated_at,
            args: json!({}),
            last_seq: 0,
            message_count: 0,
            pending_interrupts: Vec::new(),
        }
    }

    #[test]
    fn only_finished_conversations_older_than_the_retention_expire() {
        let minute = Some(Duration::from_secs(60));
        let now = 10_000_000;
        let old = now - 61_000;
        let young = now - 59_000;
        for s in [
            RunStatus::Idle,
            RunStatus::Completed,
            RunStatus::Failed,
            RunStatus::Cancelled,
        ] {
            assert!(expired(&rec(s, old), minute, now, false), "{s:?}");
            assert!(!expired(&rec(s, young), minute, now, false), "{s:?}");
        }
        assert!(!expired(&rec(RunStatus::Running, old), minute, now, true));
        assert!(!expired(&rec(RunStatus::Paused, old), minute, now, false));
        assert!(expired(&rec(RunStatus::Paused, old), minute, now, true));
        assert!(!expired(&rec(RunStatus::Completed, 0), None, now, true));
        // A clock that went backwards expires nothing.
        assert!(!expired(
            &rec(RunStatus::Completed, now + 5),
            minute,
            now,
            false
        ));
    }
}
