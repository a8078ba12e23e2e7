//! Claims, releases and the renewal loop (the SQL and the fence are
//! `store::postgres::lease`).
//!
//! Renewal runs every third of `lease_seconds`, one `UPDATE` for every lease the node holds
//! (and one `SELECT` for runs orphaned by a dead node, which the node then claims);
//! conversations it no longer holds are handed to `on_lost`, which stops their actors (their
//! writes are already refused by the fence). A failed renewal (database unreachable) is retried
//! at the next tick; if the database stays away longer than the lease, the leases may be taken
//! over and the fence refuses this node's writes.
//!
//! Releases of stopped actors are batched: [`Cluster::release`] queues one, and one task sends
//! everything queued meanwhile as one `UPDATE` ([`release_in_batches`]). One statement (and one
//! WAL flush) per release was the largest cost of a cluster's invoke traffic: a call creates a
//! conversation whose actor stops when it ends (BENCHMARKS.md, session 11). The queue is
//! bounded ([`RELEASE_QUEUE`]); a release that does not fit is dropped, and that lease expires
//! by itself (`lease_seconds`), as it would after a crash. A hand-over ([`Cluster::release_now`])
//! and shutdown ([`Cluster::release_all`], which first flushes the queue) do not wait for a batch.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::Cluster;
use crate::store::postgres::lease::{Belief, Claim, Leases};
use crate::store::StoreError;

/// Releases waiting for the batch task, at most (beyond: dropped, the lease expires by itself).
pub(super) const RELEASE_QUEUE: usize = 65_536;
/// Releases in one statement, at most.
const RELEASE_BATCH: usize = 4_096;
/// How long the first release of a batch waits for others. Nobody waits for a release (a node
/// that wants the conversation meanwhile forwards to this one, which still holds the lease), so
/// a few milliseconds cost nothing and let one statement carry the releases of many calls.
const RELEASE_LINGER: std::time::Duration = std::time::Duration::from_millis(10);

/// What the release task is asked.
pub(super) enum Release {
    /// Give this lease up (`None`: a conversation created here, whatever its epoch).
    One(String, Option<i64>),
    /// Answer once everything queued before this is sent.
    Flush(oneshot::Sender<()>),
}

/// The release task: everything queued within [`RELEASE_LINGER`] of a batch's first release,
/// or while the previous statement ran, goes in one statement; a flush is answered without the
/// linger.
/// Ends when the [`Cluster`] (the only sender) is dropped.
pub(super) async fn release_in_batches(leases: Leases, mut queue: mpsc::Receiver<Release>) {
    let mut asked = Vec::with_capacity(RELEASE_BATCH);
    while queue.recv_many(&mut asked, RELEASE_BATCH).await > 0 {
        if !matches!(asked.last(), Some(Release::Flush(_))) {
            tokio::time::sleep(RELEASE_LINGER).await;
            while asked.len() < RELEASE_BATCH {
                let Ok(r) = queue.try_recv() else { break };
                asked.push(r);
            }
        }
        let mut held = Vec::with_capacity(asked.len());
        let mut flushed = Vec::new();
        for r in asked.drain(..) {
            match r {
                Release::One(c, epoch) => held.push((c, epoch)),
                Release::Flush(done) => flushed.push(done),
            }
        }
        give_up(&leases, &held).await;
        for done in flushed {
            let _ = done.send(());
        }
    }
}

/// Releases `held` in the database; a failure is logged only, since each lease expires by
/// itself after `lease_seconds`.
async fn give_up(leases: &Leases, held: &[(String, Option<i64>)]) {
    if let Err(e) = leases.release(held).await {
        tracing::warn!(error = %e, leases = held.len(), "lease release failed (they expire by themselves)");
    }
}

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

    /// The conversation's actor has stopped: forget it, and give its lease up with the next
    /// batch of releases (see the module docs).
    pub fn release(&self, conversation: &str) {
        let Some(epoch) = self.forget(conversation) else {
            return;
        };
        let queued = self
            .releases
            .try_send(Release::One(conversation.to_owned(), epoch));
        if queued.is_err() {
            tracing::debug!("lease release queue full; the lease expires by itself");
        }
    }

    /// [`Cluster::release`], answered once the database has the lease released (a hand-over:
    /// the node that asked claims right after the answer).
    pub async fn release_now(&self, conversation: &str) {
        let Some(epoch) = self.forget(conversation) else {
            return;
        };
        give_up(&self.leases, &[(conversation.to_owned(), epoch)]).await;
    }

    /// Forgets `conversation` now (nothing of it is fenced any more) and answers the epoch its
    /// release names (`Some(None)`: created here, any epoch); `None` if this node does not hold
    /// it.
    fn forget(&self, conversation: &str) -> Option<Option<i64>> {
        let epoch = match self.fences().get(conversation) {
            Some(Belief::Held(e)) => Some(e),
            Some(Belief::New) => None,
            // Lost: kept, so that nothing of this node is ever written for it again.
            Some(Belief::Lost) | None => return None,
        };
        self.fences().forget(conversation);
        self.metrics.leases_released.fetch_add(1, Relaxed);
        Some(epoch)
    }

    /// Gives up every lease (graceful shutdown, after the store was flushed): the queued
    /// releases first, then every lease still held. Every belief becomes `Lost` first, so
    /// nothing this node still had running can write afterwards.
    pub async fn release_all(&self) {
        let (flushed, done) = oneshot::channel();
        if self.releases.send(Release::Flush(flushed)).await.is_ok() {
            let _ = done.await;
        }
        let held = self.fences().held();
        for (c, _) in &held {
            self.fences().set(c, Belief::Lost);
        }
        self.metrics
            .leases_released
            .fetch_add(held.len() as u64, Relaxed);
        give_up(&self.leases, &held).await;
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::postgres::lease::Fences;
    use crate::store::postgres::tests::fresh_options;
    use crate::store::postgres::PgStore;

    /// Releases queued one by one go out together, and a flush is answered only after every
    /// release queued before it is in the database; dropping the sender ends the task.
    #[tokio::test]
    async fn queued_releases_go_out_in_one_batch_and_a_flush_waits_for_them() {
        let lease = Duration::from_secs(30);
        let store = PgStore::open_fenced(&fresh_options().await, Fences::new("a", lease))
            .await
            .expect("open");
        let leases = store.leases().clone();
        let names = ["c1", "c2", "c3"];
        let mut epochs = Vec::new();
        for c in names {
            match leases.claim(c).await.unwrap() {
                Claim::Won(e) => epochs.push(e),
                other => panic!("{other:?}"),
            }
        }
        let (tx, rx) = mpsc::channel(RELEASE_QUEUE);
        let task = tokio::spawn(release_in_batches(leases.clone(), rx));
        for (c, e) in names.iter().zip(&epochs) {
            tx.send(Release::One(c.to_string(), Some(*e)))
                .await
                .unwrap();
        }
        // A release naming an older epoch gives nothing up.
        assert_eq!(leases.claim("c4").await.unwrap(), Claim::Won(1));
        tx.send(Release::One("c4".into(), Some(0))).await.unwrap();
        let (done, flushed) = oneshot::channel();
        tx.send(Release::Flush(done)).await.unwrap();
        flushed.await.expect("the flush is answered");
        for c in names {
            let (node, left) = leases.lease_of(c).await.unwrap().expect("a row");
            assert_eq!((node.as_str(), left), ("a", Duration::ZERO), "{c}");
        }
        let (_, left) = leases.lease_of("c4").await.unwrap().expect("a row");
        assert!(left > Duration::ZERO, "c4 is still held");
        drop(tx);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the task ends with its queue")
            .unwrap();
    }
}
