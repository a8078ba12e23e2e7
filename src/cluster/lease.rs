//! Claims, releases and the renewal loop (the SQL and the fence are
//! `store::postgres::lease`).
//!
//! Renewal runs every third of `lease_seconds`, one `UPDATE` for every lease the node holds
//! (and one `SELECT` for runs orphaned by a dead node, which the node then claims);
//! conversations it no longer holds are handed to `on_lost`, which stops their actors (their
//! writes are already refused by the fence). A failed renewal (database unreachable) is retried
//! at the next tick; if the database stays away longer than the lease, the leases may be taken
//! over and the fence refuses this node's writes.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use super::Cluster;
use crate::store::postgres::lease::{Belief, Claim};
use crate::store::StoreError;

impl Cluster {
    /// Claims `conversation` for this node unless another node's lease is live.
    pub async fn claim(&self, conversation: &str) -> Result<Claim, StoreError> {
        let claim = self.leases.claim(conversation).await?;
        if matches!(claim, Claim::Won(_)) {
            self.metrics.claims.fetch_add(1, Relaxed);
        }
        Ok(claim)
    }

    /// Claims many conversations in one statement (see `Leases::claim_many`).
    pub async fn claim_many(
        &self,
        conversations: &[&str],
    ) -> Result<Vec<(String, Claim)>, StoreError> {
        let claims = self.leases.claim_many(conversations).await?;
        let won = claims
            .iter()
            .filter(|(_, c)| matches!(c, Claim::Won(_)))
            .count();
        self.metrics.claims.fetch_add(won as u64, Relaxed);
        Ok(claims)
    }

    /// A conversation created on this node: its first commit claims its row.
    pub fn created(&self, conversation: &str) {
        self.fences().set(conversation, Belief::New);
    }

    /// The conversation's actor has stopped: forget it, and give its lease up now.
    pub fn release(&self, conversation: &str) {
        if let Some(release) = self.release_soon(conversation) {
            tokio::spawn(release);
        }
    }

    /// [`Cluster::release`], answered once the database has the lease released (a hand-over:
    /// the node that asked claims right after the answer).
    pub async fn release_now(&self, conversation: &str) {
        if let Some(release) = self.release_soon(conversation) {
            release.await;
        }
    }

    /// Forgets `conversation` now (nothing of it is fenced any more) and returns the statement
    /// that releases its lease; `None` if this node does not hold it.
    fn release_soon(
        &self,
        conversation: &str,
    ) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        let epoch = match self.fences().get(conversation) {
            Some(Belief::Held(e)) => Some(e),
            Some(Belief::New) => None,
            // Lost: kept, so that nothing of this node is ever written for it again.
            Some(Belief::Lost) | None => return None,
        };
        self.fences().forget(conversation);
        self.metrics.leases_released.fetch_add(1, Relaxed);
        let leases = self.leases.clone();
        let held = vec![(conversation.to_owned(), epoch)];
        Some(async move {
            if let Err(e) = leases.release(&held).await {
                tracing::warn!(error = %e, "lease release failed (it expires by itself)");
            }
        })
    }

    /// Gives up every lease (graceful shutdown, after the store was flushed). Every belief
    /// becomes `Lost` first, so nothing this node still had running can write afterwards.
    pub async fn release_all(&self) {
        let held = self.fences().held();
        for (c, _) in &held {
            self.fences().set(c, Belief::Lost);
        }
        self.metrics
            .leases_released
            .fetch_add(held.len() as u64, Relaxed);
        if let Err(e) = self.leases.release(&held).await {
            tracing::warn!(error = %e, "releasing leases at shutdown failed (they expire by themselves)");
        }
    }

    /// Who holds `conversation`'s lease, and for how long still (zero: expired).
    pub async fn lease_of(
        &self,
        conversation: &str,
    ) -> Result<Option<(String, std::time::Duration)>, StoreError> {
        self.leases.lease_of(conversation).await
    }

    /// The node whose lease on `conversation` is live.
    pub async fn owner(&self, conversation: &str) -> Result<Option<String>, StoreError> {
        self.leases.owner(conversation).await
    }

    /// Renews this node's leases every third of `lease_seconds`, until the process ends (on
    /// the current actix arbiter: `on_orphans` may start actors); and
    /// hands `on_orphans` the conversations whose owner died mid-run (their lease expired
    /// while their run was active), so that some node claims them and ends the run with
    /// `RUN_ERROR` `interrupted` without waiting for their next request.
    pub fn spawn_renewal(
        self: &Arc<Self>,
        on_lost: impl Fn(Vec<String>) + Send + 'static,
        on_orphans: impl Fn(Vec<String>) + Send + 'static,
    ) {
        let me = self.clone();
        actix::spawn(async move {
            let mut tick = tokio::time::interval(me.lease / 3);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match me.leases.renew().await {
                    Ok(lost) => {
                        me.metrics.leases_renewed.fetch_add(1, Relaxed);
                        if !lost.is_empty() {
                            me.metrics.leases_lost.fetch_add(lost.len() as u64, Relaxed);
                            tracing::warn!(node = %me.node, conversations = ?lost, "leases lost; stopping those actors");
                            on_lost(lost);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "lease renewal failed; retrying"),
                }
                match me.leases.orphans(16).await {
                    Ok(orphans) if !orphans.is_empty() => on_orphans(orphans),
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, "looking for orphaned runs failed"),
                }
            }
        });
    }
}
