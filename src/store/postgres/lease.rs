//! Cluster mode: who owns a conversation, and the fence that keeps a node that lost it from
//! writing (CONTRACT §9).
//!
//! # Invariants
//!
//! - **One row per conversation** in `leases (conversation, node, epoch, lease_until)`. A node
//!   claims a conversation with one atomic upsert that succeeds only if the row is missing, its
//!   lease has expired (`lease_until < now()`, the database's clock, so nodes' clocks do not
//!   matter) or it is the node's own; every successful claim increments `epoch`.
//! - **The fence is in the writer's transaction.** [`Fences`] is what this node believes it
//!   holds (conversation → epoch). Before the writer applies a group, it locks the lease rows of
//!   the group's fenced conversations `FOR SHARE` ([`check`]) and drops every batch whose row
//!   names another node or epoch: such a batch is answered [`StoreError::Fenced`] and nothing
//!   of it is stored. A concurrent claim (an `UPDATE` of the row) waits for the writer's
//!   transaction, or the writer's `FOR SHARE` sees the claim's new epoch: one or the other, so a
//!   node never writes after another claimed.
//! - A belief is only added by a claim (or by a node creating a new conversation: its first
//!   commit claims the row in the same transaction, and a row held by another node refuses it;
//!   the next renewal confirms it as held). A lost lease
//!   leaves a [`Belief::Lost`] behind, which refuses every later write of the conversation on
//!   this node until the belief is dropped (the actor has stopped).
//! - Conversations without a belief are not fenced (a single node has none at all, and pays
//!   nothing: no statement runs).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use parking_lot::Mutex;
use tokio_postgres::Client;

use super::Op;
use crate::store::StoreError;

/// What this node believes about one conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Belief {
    /// Claimed at this epoch.
    Held(i64),
    /// Created here and not stored yet: the first commit inserts the row (epoch 1).
    New,
    /// The lease was lost: every write is refused.
    Lost,
}

/// The conversations this node believes it owns, shared by the cluster (which claims, renews
/// and releases) and the store's writer (which checks).
#[derive(Debug)]
pub struct Fences {
    node: String,
    lease: Duration,
    beliefs: Mutex<HashMap<String, Belief>>,
}

impl Fences {
    pub fn new(node: impl Into<String>, lease: Duration) -> Arc<Fences> {
        Arc::new(Fences {
            node: node.into(),
            lease,
            beliefs: Mutex::new(HashMap::new()),
        })
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Whether this node believes it owns nothing (always so on a single node): the writer
    /// then skips the fence check and its round trip.
    pub fn is_empty(&self) -> bool {
        self.beliefs.lock().is_empty()
    }

    pub fn set(&self, conversation: &str, belief: Belief) {
        self.beliefs.lock().insert(conversation.to_owned(), belief);
    }

    /// The transaction that claimed these new conversations' rows has committed: they are held
    /// at these epochs (unless forgotten or lost meanwhile). From now on a release names the
    /// epoch, so a late release cannot give up a lease this node claimed again since.
    pub fn confirm(&self, won: &HashMap<String, i64>) {
        let mut beliefs = self.beliefs.lock();
        for (c, epoch) in won {
            if let Some(b @ Belief::New) = beliefs.get_mut(c) {
                *b = Belief::Held(*epoch);
            }
        }
    }

    pub fn get(&self, conversation: &str) -> Option<Belief> {
        self.beliefs.lock().get(conversation).copied()
    }

    /// Forget a conversation (its actor has stopped); returns what was believed.
    pub fn forget(&self, conversation: &str) -> Option<Belief> {
        self.beliefs.lock().remove(conversation)
    }

    /// Conversations held (with their epochs; `None`: created here, not confirmed yet), for
    /// renewal and release.
    pub fn held(&self) -> Vec<(String, Option<i64>)> {
        self.beliefs
            .lock()
            .iter()
            .filter_map(|(c, b)| match b {
                Belief::Held(e) => Some((c.clone(), Some(*e))),
                Belief::New => Some((c.clone(), None)),
                Belief::Lost => None,
            })
            .collect()
    }

    /// How many conversations this node holds (held or new).
    pub fn owned(&self) -> usize {
        self.beliefs
            .lock()
            .values()
            .filter(|b| !matches!(b, Belief::Lost))
            .count()
    }

    fn lease_ms(&self) -> f64 {
        self.lease.as_secs_f64() * 1000.0
    }
}

/// The conversation an op writes for (`None`: an idempotency key, which goes with its batch).
fn conversation_of(op: &Op) -> Option<&str> {
    match op {
        Op::Conversation { id, .. } => Some(id),
        Op::Message { conversation, .. }
        | Op::Events { conversation, .. }
        | Op::Checkpoint { conversation, .. }
        | Op::Delete { conversation } => Some(conversation),
        Op::IdempotencyKey { .. } | Op::DeleteExpiredKeys { .. } => None,
    }
}

/// What [`check`] found: the batches (by index) to refuse, with their conversation; and the
/// new conversations whose first commit claimed their row, with its epoch (to
/// [`Fences::confirm`] once the transaction has committed).
#[derive(Debug, Default)]
pub(super) struct Checked {
    pub refused: HashMap<usize, String>,
    pub won: HashMap<String, i64>,
}

/// Inside the writer's transaction: which batches must be refused, and which new
/// conversations this transaction claims. Runs no statement when no batch touches a fenced
/// conversation.
pub(super) async fn check<'a>(
    tx: &Client,
    fences: &Fences,
    batches: impl Iterator<Item = &'a [Op]>,
) -> Result<Checked, StoreError> {
    let wanted = fenced_batches(fences, batches);
    if wanted.is_empty() {
        return Ok(Checked::default());
    }
    let new: Vec<&str> = wanted
        .iter()
        .filter(|(_, (b, _))| *b == Belief::New)
        .map(|(c, _)| c.as_str())
        .collect();
    let mut won_new = claim_new(tx, fences, &new).await?;
    let names: Vec<&str> = wanted.keys().map(String::as_str).collect();
    let current = holders(tx, &names).await?;
    let mut refused = HashMap::new();
    for (conversation, (belief, batches)) in wanted {
        let ok = match (belief, current.get(&conversation)) {
            (Belief::Held(e), Some((node, epoch))) => *node == fences.node && *epoch == e,
            // Confirmed (New → Held) by the next renewal, not here: this transaction may
            // still fail and be retried.
            (Belief::New, Some((node, epoch))) => {
                *node == fences.node && won_new.get(&conversation) == Some(epoch)
            }
            _ => false,
        };
        if !ok {
            tracing::warn!(%conversation, node = %fences.node, "write refused: this node no longer holds the conversation's lease");
            for i in batches {
                refused.insert(i, conversation.clone());
            }
        }
    }
    let mut beliefs = fences.beliefs.lock();
    for c in refused.values() {
        if beliefs.contains_key(c) {
            beliefs.insert(c.clone(), Belief::Lost);
        }
    }
    won_new.retain(|c, _| !refused.values().any(|r| r == c));
    Ok(Checked {
        refused,
        won: won_new,
    })
}

/// The conversations of `batches` that this node has a belief about, each with its belief and
/// the batches (by index) that write it. Empty when no fenced conversation is written.
fn fenced_batches<'a>(
    fences: &Fences,
    batches: impl Iterator<Item = &'a [Op]>,
) -> HashMap<String, (Belief, Vec<usize>)> {
    let mut wanted: HashMap<String, (Belief, Vec<usize>)> = HashMap::new();
    let beliefs = fences.beliefs.lock();
    if beliefs.is_empty() {
        return wanted;
    }
    for (i, ops) in batches.enumerate() {
        let mut seen = HashSet::new();
        for c in ops.iter().filter_map(conversation_of) {
            if let Some(b) = beliefs.get(c) {
                if seen.insert(c) {
                    wanted
                        .entry(c.to_owned())
                        .or_insert((*b, Vec::new()))
                        .1
                        .push(i);
                }
            }
        }
    }
    wanted
}

/// New conversations take their rows as a claim would (missing, expired or already ours):
/// the ones won, with their epochs.
async fn claim_new(
    tx: &Client,
    fences: &Fences,
    new: &[&str],
) -> Result<HashMap<String, i64>, StoreError> {
    if new.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = tx
        .query(
            "INSERT INTO leases AS l (conversation, node, epoch, lease_until)
             SELECT c, $2, 1, now() + $3 * interval '1 millisecond' FROM unnest($1::text[]) AS c
             ON CONFLICT (conversation) DO UPDATE
               SET node = EXCLUDED.node, epoch = l.epoch + 1, lease_until = EXCLUDED.lease_until
               WHERE l.lease_until < now() OR l.node = EXCLUDED.node
             RETURNING conversation, epoch",
            &[&new, &fences.node, &fences.lease_ms()],
        )
        .await
        .map_err(StoreError::db)?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Who holds each of `names` now, and with which epoch; the rows stay locked (`FOR SHARE`)
/// until the transaction ends, so no claim can slip in before the commit.
async fn holders(
    tx: &Client,
    names: &[&str],
) -> Result<HashMap<String, (String, i64)>, StoreError> {
    let rows = tx
        .query(
            "SELECT conversation, node, epoch FROM leases WHERE conversation = ANY($1) FOR SHARE",
            &[&names],
        )
        .await
        .map_err(StoreError::db)?;
    Ok(rows
        .iter()
        .map(|row| (row.get(0), (row.get(1), row.get(2))))
        .collect())
}

/// The lease statements, through the store's read pool.
#[derive(Clone)]
pub struct Leases {
    pool: Pool,
    fences: Arc<Fences>,
}

/// Who holds a conversation, when a claim failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This node holds it now, at this epoch.
    Won(i64),
    /// Another node's lease is live, for `left` more (by the database's clock; zero when the
    /// holder could not be read, e.g. a row another claim inserted at the same moment).
    HeldBy { node: String, left: Duration },
}

impl Leases {
    pub(super) fn new(pool: Pool, fences: Arc<Fences>) -> Leases {
        Leases { pool, fences }
    }

    pub fn fences(&self) -> &Arc<Fences> {
        &self.fences
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(StoreError::db)
    }

    /// Claims `conversation` unless another node's lease is live; on success the belief is
    /// recorded (before the first write can happen). One round trip: the claim, and who holds
    /// the row (as it was before the claim) for the answer when it fails.
    pub async fn claim(&self, conversation: &str) -> Result<Claim, StoreError> {
        let client = self.client().await?;
        let f = &self.fences;
        let row = client
            .query_one(
                "WITH won AS (
                   INSERT INTO leases AS l (conversation, node, epoch, lease_until)
                   VALUES ($1, $2, 1, now() + $3 * interval '1 millisecond')
                   ON CONFLICT (conversation) DO UPDATE
                     SET node = EXCLUDED.node, epoch = l.epoch + 1, lease_until = EXCLUDED.lease_until
                     WHERE l.lease_until < now() OR l.node = EXCLUDED.node
                   RETURNING epoch)
                 SELECT (SELECT epoch FROM won),
                        (SELECT node FROM leases WHERE conversation = $1),
                        (SELECT GREATEST(EXTRACT(EPOCH FROM lease_until - now()) * 1000, 0)::float8
                           FROM leases WHERE conversation = $1)",
                &[&conversation, &f.node, &f.lease_ms()],
            )
            .await
            .map_err(StoreError::db)?;
        if let Some(epoch) = row.get::<_, Option<i64>>(0) {
            f.set(conversation, Belief::Held(epoch));
            return Ok(Claim::Won(epoch));
        }
        Ok(Claim::HeldBy {
            node: row.get::<_, Option<String>>(1).unwrap_or_default(),
            left: millis(row.get::<_, Option<f64>>(2)),
        })
    }

    /// [`Leases::claim`] for many conversations in one statement (the takeover of a silent
    /// node's conversations): every one whose lease has expired (or is this node's) is won;
    /// the others answer who holds them and for how long still. Conversations without a lease
    /// row are left out. Rows are locked in id order, so two nodes claiming overlapping sets
    /// wait for each other instead of deadlocking.
    pub async fn claim_many(
        &self,
        conversations: &[&str],
    ) -> Result<Vec<(String, Claim)>, StoreError> {
        if conversations.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let f = &self.fences;
        let rows = client
            .query(
                "WITH free AS (
                   SELECT conversation FROM leases
                   WHERE conversation = ANY($1) AND (lease_until < now() OR node = $2)
                   ORDER BY conversation FOR UPDATE),
                 won AS (
                   UPDATE leases l
                   SET node = $2, epoch = l.epoch + 1,
                       lease_until = now() + $3 * interval '1 millisecond'
                   FROM free WHERE l.conversation = free.conversation
                   RETURNING l.conversation, l.epoch)
                 SELECT l.conversation, w.epoch, l.node,
                        GREATEST(EXTRACT(EPOCH FROM l.lease_until - now()) * 1000, 0)::float8
                 FROM leases l LEFT JOIN won w ON w.conversation = l.conversation
                 WHERE l.conversation = ANY($1)",
                &[&conversations, &f.node, &f.lease_ms()],
            )
            .await
            .map_err(StoreError::db)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let conversation: String = row.get(0);
            let claim = match row.get::<_, Option<i64>>(1) {
                Some(epoch) => {
                    f.set(&conversation, Belief::Held(epoch));
                    Claim::Won(epoch)
                }
                None => Claim::HeldBy {
                    node: row.get(2),
                    left: millis(row.get(3)),
                },
            };
            out.push((conversation, claim));
        }
        Ok(out)
    }

    /// Who holds `conversation`'s lease and for how long still (zero: expired), if it has a
    /// row. Read without claiming (a forward that waits for its answer watches this).
    pub async fn lease_of(
        &self,
        conversation: &str,
    ) -> Result<Option<(String, Duration)>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT node, GREATEST(EXTRACT(EPOCH FROM lease_until - now()) * 1000, 0)::float8
                 FROM leases WHERE conversation = $1",
                &[&conversation],
            )
            .await
            .map_err(StoreError::db)?;
        Ok(row.map(|r| (r.get(0), millis(r.get(1)))))
    }

    /// The node whose lease on `conversation` is live, if any.
    pub async fn owner(&self, conversation: &str) -> Result<Option<String>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT node FROM leases WHERE conversation = $1 AND lease_until >= now()",
                &[&conversation],
            )
            .await
            .map_err(StoreError::db)?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Conversations whose run was active when their owner's lease expired (the owner died
    /// mid-run): nobody will end the run unless a node claims them.
    pub async fn orphans(&self, limit: i64) -> Result<Vec<String>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT l.conversation FROM leases l JOIN conversations c ON c.id = l.conversation
                 WHERE l.lease_until < now() AND c.status = 'running'
                 ORDER BY l.lease_until LIMIT $1",
                &[&limit],
            )
            .await
            .map_err(StoreError::db)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Extends every lease this node holds; returns the conversations it no longer holds
    /// (marked [`Belief::Lost`]).
    pub async fn renew(&self) -> Result<Vec<String>, StoreError> {
        let held = self.fences.held();
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<&str> = held.iter().map(|(c, _)| c.as_str()).collect();
        let client = self.client().await?;
        let rows = client
            .query(
                "UPDATE leases SET lease_until = now() + $3 * interval '1 millisecond'
                 WHERE node = $1 AND conversation = ANY($2) RETURNING conversation, epoch",
                &[&self.fences.node, &names, &self.fences.lease_ms()],
            )
            .await
            .map_err(StoreError::db)?;
        let kept: HashMap<String, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let mut lost = Vec::new();
        let mut beliefs = self.fences.beliefs.lock();
        for (c, epoch) in held {
            match (epoch, kept.get(&c)) {
                (Some(e), Some(k)) if e == *k => {}
                // A new conversation whose first commit claimed its row: confirmed.
                (None, Some(k)) => {
                    if beliefs.get(&c) == Some(&Belief::New) {
                        beliefs.insert(c, Belief::Held(*k));
                    }
                }
                // Not stored yet: nothing to renew.
                (None, None) => {}
                (Some(e), _) => {
                    if beliefs.get(&c) == Some(&Belief::Held(e)) {
                        beliefs.insert(c.clone(), Belief::Lost);
                        lost.push(c);
                    }
                }
            }
        }
        Ok(lost)
    }

    /// Gives conversations up at once (their actors have stopped): their leases expire now,
    /// so another node may claim them without waiting.
    /// (`None`: a conversation created here, whatever its epoch.)
    pub async fn release(&self, conversations: &[(String, Option<i64>)]) -> Result<(), StoreError> {
        if conversations.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = conversations.iter().map(|(c, _)| c.as_str()).collect();
        let epochs: Vec<Option<i64>> = conversations.iter().map(|(_, e)| *e).collect();
        let client = self.client().await?;
        client
            .execute(
                "UPDATE leases l SET lease_until = now() - interval '1 millisecond'
                 FROM unnest($2::text[], $3::bigint[]) AS r(c, e)
                 WHERE l.conversation = r.c AND (r.e IS NULL OR l.epoch = r.e) AND l.node = $1",
                &[&self.fences.node, &names, &epochs],
            )
            .await
            .map_err(StoreError::db)?;
        Ok(())
    }
}

/// Milliseconds from the database as a duration (absent, negative or not a number: zero).
fn millis(ms: Option<f64>) -> Duration {
    match ms {
        Some(ms) if ms.is_finite() && ms > 0.0 => Duration::from_secs_f64(ms / 1000.0),
        _ => Duration::ZERO,
    }
}

#[cfg(test)]
#[path = "lease_tests.rs"]
mod tests;
