//! Finds or starts the one actor of a conversation.
//!
//! # Invariants
//!
//! - **At most one actor per id** (ARCHITECTURE invariant 1). The map holds, per id, either the
//!   live actor or the one start in flight (a shared future that loads the conversation from
//!   the store and starts its actor). A caller that finds a start in flight awaits that same
//!   future, so two callers asking for the same id at once get the same actor.
//! - **The lock is never held across a store read.** The mutex only guards the map: looking up
//!   or inserting an entry. The loading runs outside it (its reads are async, off the worker),
//!   so a slow load of one conversation blocks no other id.
//! - **A start is resolved once.** The in-flight entry is replaced by the actor (success) or
//!   removed (failure) by whoever sees the shared result first, and only if the entry is still
//!   that same start. If every caller gives up while a start is in flight, the entry stays
//!   and the next caller for that id drives the same future on.
//! - The registry holds what starting an actor needs (the catalog and the actors' [`Deps`]);
//!   callers pass only an id. It answers in [`ConversationError`]s.
//! - An actor that leaves memory removes itself (only if the entry is still its own address)
//!   before it stops; a caller that raced with that gets a mailbox error and asks again.
//! - **Cluster mode: claim before start.** A start first claims the conversation's lease
//!   (`cluster::Cluster::claim`); if another node's lease is live, the answer is a [`Handle`]
//!   naming that node and nothing is started here. A claimed conversation whose stored status
//!   is `running` lost its owner mid-run: its run is ended with `RUN_ERROR` `interrupted`
//!   (written under the new epoch, and published) before the actor starts, exactly as a
//!   single node does at start-up. A new conversation is believed ours (`Belief::New`) and its
//!   first commit claims its row.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use futures_util::StreamExt;
use parking_lot::Mutex;

use super::actor::{Conversation, HISTORY_TAIL};
use super::{ConversationError, Deps, Handle, Relays, Subscribed, Subscriber};
use crate::assistant::Catalog;
use crate::cluster::Cluster;
use crate::engine::Checkpoint;
use crate::error::ErrorCode;
use crate::store::postgres::lease::Claim;
use crate::store::{RunStatus, Store, StoreError};

/// What a start found: an actor started here, or (cluster mode) the node that owns it and
/// when its lease expires unless renewed.
#[derive(Clone)]
enum Started {
    Here(Addr<Conversation>),
    Elsewhere { node: String, until: Instant },
}

/// A start in flight: every caller for the id awaits a clone.
type Start = Shared<BoxFuture<'static, Result<Started, Arc<ConversationError>>>>;

enum Entry {
    Live(Addr<Conversation>),
    Starting(Start),
}

/// The map of live actors. Shared with every actor (through [`Deps`]) so that an actor can
/// remove its own entry before it stops.
#[derive(Default)]
pub struct LiveMap {
    map: Mutex<HashMap<Arc<str>, Entry>>,
}

impl LiveMap {
    /// Forget an actor, if the entry is still this one.
    pub fn remove(&self, id: &str, addr: &Addr<Conversation>) {
        let mut live = self.map.lock();
        if matches!(live.get(id), Some(Entry::Live(a)) if a == addr) {
            live.remove(id);
        }
    }

    /// Runs `f` if no actor of `id` is live or starting, under the map's lock (so no start
    /// of `id` can begin meanwhile): a stopping actor releases its lease this way.
    pub fn if_absent(&self, id: &str, f: impl FnOnce()) {
        let live = self.map.lock();
        if !live.contains_key(id) {
            f();
        }
    }

    fn local(&self, id: &str) -> Option<Addr<Conversation>> {
        match self.map.lock().get(id) {
            Some(Entry::Live(a)) => Some(a.clone()),
            _ => None,
        }
    }
}

/// Finds or starts actors. Holds what it needs to start one: the assistants, and the
/// dependencies every actor gets. Cheap to clone (handles keep one to look again).
#[derive(Clone)]
pub struct Registry {
    live: Arc<LiveMap>,
    catalog: Arc<Catalog>,
    deps: Arc<Deps>,
    /// Cluster mode: this node's subscribers' relays.
    relays: Option<Arc<Relays>>,
    /// Cluster mode: owners seen recently (node, when), so that a command for another node's
    /// conversation costs no lease query; a stale entry only costs a retry (the old owner does
    /// not answer, or answers "not owner", and the handle looks again without the cache).
    owners: Arc<Mutex<OwnerCache>>,
    /// Cluster mode: nodes found silent (no responders) whose conversations this node is
    /// taking over, with when that began ([`Registry::owner_silent`]).
    silent: Arc<Mutex<HashMap<String, Instant>>>,
}

/// An owner seen by a claim that failed.
#[derive(Clone)]
struct Seen {
    node: String,
    at: Instant,
    /// When its lease expires unless it renews it.
    until: Instant,
}

/// Conversation → its owner as last seen.
type OwnerCache = HashMap<Arc<str>, Seen>;

/// How far past a lease's expiry (as the database said it) a node waits before claiming, so
/// that the claim does not arrive a moment too early.
pub(super) const PAST_EXPIRY: Duration = Duration::from_millis(20);
/// Rounds of a takeover of a silent node's conversations (a lease renewed just before the
/// node died expires a little later than the others).
const TAKEOVER_ROUNDS: usize = 3;
/// Restores a takeover runs at once (each is four reads; the pool is shared with requests).
const RESTORES_AT_ONCE: usize = 64;

/// Owners remembered at most this many (the oldest are dropped first when it is reached).
const OWNERS_CACHED: usize = 16 * 1024;

impl Registry {
    /// `deps.live` must be `live`'s map (actors remove themselves from it).
    pub fn new(catalog: Arc<Catalog>, deps: Arc<Deps>, relays: Option<Arc<Relays>>) -> Registry {
        Registry {
            live: deps.live.clone(),
            catalog,
            deps,
            relays,
            owners: Arc::default(),
            silent: Arc::default(),
        }
    }

    /// The store (a command that may have run on a dead node looks its idempotency key up).
    pub(super) fn store(&self) -> &Arc<dyn Store> {
        &self.deps.store
    }

    /// This node's live actor of `id`, if it has one.
    pub(super) fn local(&self, id: &str) -> Option<Addr<Conversation>> {
        self.live.local(id).filter(|a| a.connected())
    }

    /// Cluster mode: this node.
    pub fn cluster(&self) -> Option<Arc<Cluster>> {
        self.deps.cluster.clone()
    }

    fn in_cluster(&self) -> Option<Registry> {
        self.deps.cluster.is_some().then(|| self.clone())
    }

    pub(super) async fn relays_follow(
        &self,
        id: &str,
        subscriber: Subscriber,
        owner: &str,
        new_ok: bool,
    ) -> Result<Subscribed, ConversationError> {
        match &self.relays {
            Some(r) => r.follow(id, subscriber, owner, new_ok).await,
            None => Err(ConversationError::Stopped),
        }
    }

    pub(super) fn relays_unfollow(&self, id: &str, subscriber_id: u64) {
        if let Some(r) = &self.relays {
            r.unfollow(id, subscriber_id);
        }
    }

    /// Cluster mode: stop the actors of conversations whose leases this node lost.
    pub fn lost(&self, ids: &[String]) {
        for id in ids {
            if let Some(addr) = self.live.local(id) {
                addr.do_send(super::msg::LeaseLost);
            }
        }
    }

    /// Cluster mode: claim conversations whose owner died mid-run (one of the nodes wins each;
    /// its start ends the run with `RUN_ERROR` `interrupted` and publishes it).
    pub fn adopt(&self, ids: Vec<String>) {
        for id in ids {
            let me = self.clone();
            actix::spawn(async move {
                match me.get_uncached(&id).await {
                    Ok(h) if h.local_addr().is_some() => {
                        tracing::info!(conversation = %id, "adopted a conversation whose node died mid-run")
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(conversation = %id, error = %e, "could not adopt an orphaned conversation")
                    }
                }
            });
        }
    }

    /// Cluster mode: `node` did not answer a forwarded command (no responders: it is gone, or
    /// cut off from NATS). Once its lease expires (`until`), this node claims and restores, all
    /// at once, every conversation it last saw `node` hold, so that the commands that follow
    /// (one socket's frames come one after another) find their actors here already. Several
    /// nodes may do this at once: each conversation's claim has one winner, the others learn
    /// the new owner. A node that is alive but cut off from NATS keeps renewing its leases:
    /// then nothing is claimed. One takeover per node at a time.
    pub(super) fn owner_silent(&self, node: &str, until: Instant) {
        {
            let mut silent = self.silent.lock();
            if silent.contains_key(node) {
                return;
            }
            silent.insert(node.to_owned(), Instant::now());
        }
        let me = self.clone();
        let node = node.to_owned();
        actix::spawn(async move {
            let began = Instant::now();
            let mut wake = until;
            let mut taken = 0usize;
            for round in 1..=TAKEOVER_ROUNDS {
                tokio::time::sleep_until((wake.max(Instant::now()) + PAST_EXPIRY).into()).await;
                let ids: Vec<Arc<str>> = me
                    .owners
                    .lock()
                    .iter()
                    .filter(|(_, s)| s.node == node)
                    .map(|(id, _)| id.clone())
                    .collect();
                if ids.is_empty() {
                    break;
                }
                let (won, later) = me.claim_silent(&node, &ids).await;
                let starts = won.iter().map(|id| me.find_or_start(id, true));
                let handles: Vec<_> = futures_util::stream::iter(starts)
                    .buffer_unordered(RESTORES_AT_ONCE)
                    .collect()
                    .await;
                taken += handles
                    .into_iter()
                    .flatten()
                    .filter(|h| h.local_addr().is_some())
                    .count();
                tracing::debug!(%node, round, asked = ids.len(), taken, "taking over a silent node's conversations");
                match later {
                    Some(t) => wake = t,
                    None => break,
                }
            }
            if taken > 0 {
                tracing::info!(%node, conversations = taken, took_ms = began.elapsed().as_millis() as u64, "took over the conversations of a node that stopped answering");
            }
            me.silent.lock().remove(&node);
        });
    }

    /// One round of [`Registry::owner_silent`]: claims `ids` in one statement. Answers those won
    /// and, if `node` still holds some, when its lease on them expires; the holders of the
    /// others are remembered. A failed statement falls back to one claim per conversation.
    async fn claim_silent(&self, node: &str, ids: &[Arc<str>]) -> (Vec<Arc<str>>, Option<Instant>) {
        let Some(cluster) = &self.deps.cluster else {
            return (Vec::new(), None);
        };
        let mut later: Option<Instant> = None;
        let mut wait_for = |until: Instant| later = Some(later.map_or(until, |l| l.max(until)));
        let names: Vec<&str> = ids.iter().map(|id| &**id).collect();
        let claims = match cluster.claim_many(&names).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "claiming a silent node's conversations together failed; one by one");
                let gets = ids.iter().map(|id| self.get_uncached(id));
                for h in futures_util::future::join_all(gets)
                    .await
                    .into_iter()
                    .flatten()
                {
                    if let Some((_, until)) = h.remote_lease().filter(|(n, _)| *n == node) {
                        wait_for(until);
                    }
                }
                return (Vec::new(), later);
            }
        };
        let now = Instant::now();
        let mut won = Vec::new();
        let mut owners = self.owners.lock();
        for (id, claim) in claims {
            let id: Arc<str> = Arc::from(id.as_str());
            match claim {
                Claim::Won(_) => {
                    owners.remove(&id);
                    won.push(id);
                }
                Claim::HeldBy { node: holder, left } => {
                    let until = now + left;
                    if holder == node {
                        wait_for(until);
                    }
                    let seen = Seen {
                        node: holder,
                        at: now,
                        until,
                    };
                    owners.insert(id, seen);
                }
            }
        }
        drop(owners);
        (won, later)
    }

    /// The owner of a stored conversation: its live actor here, started (restored from the
    /// store) if needed, or in cluster mode the node that holds its lease.
    /// The owner check is the actor's: every message carries the caller.
    pub async fn get(&self, id: &str) -> Result<Handle, ConversationError> {
        if let Some(cluster) = &self.deps.cluster {
            let cached = self.owners.lock().get(id).cloned();
            if let Some(seen) = cached {
                if seen.at.elapsed() < cluster.lease() && self.live.local(id).is_none() {
                    return Ok(Handle::remote(id, seen.node, seen.until, self.clone()));
                }
            }
        }
        self.get_uncached(id).await
    }

    /// [`Registry::get`] without the cache of remote owners (a handle whose owner stopped
    /// answering looks again).
    pub(super) async fn get_uncached(&self, id: &str) -> Result<Handle, ConversationError> {
        self.owners.lock().remove(id);
        self.find_or_start(id, false).await
    }

    /// The live actor, the start in flight, or a new start (`claimed`: this node has just
    /// claimed the conversation's lease, so the start does not claim it again).
    async fn find_or_start(&self, id: &str, claimed: bool) -> Result<Handle, ConversationError> {
        let start = {
            let mut live = self.live.map.lock();
            match live.get(id) {
                Some(Entry::Live(a)) if a.connected() => {
                    return Ok(Handle::local(id, a.clone(), self.in_cluster()))
                }
                Some(Entry::Starting(start)) => start.clone(),
                _ => {
                    let (catalog, deps) = (self.catalog.clone(), self.deps.clone());
                    let load = if claimed {
                        load_claimed(catalog, deps, id.into()).boxed()
                    } else {
                        load_and_start(catalog, deps, id.into()).boxed()
                    };
                    let start = async move { load.await.map_err(Arc::new) }.boxed().shared();
                    live.insert(Arc::from(id), Entry::Starting(start.clone()));
                    start
                }
            }
        };
        let result = start.clone().await;
        let mut live = self.live.map.lock();
        let ours = matches!(live.get(id), Some(Entry::Starting(s)) if s.ptr_eq(&start));
        if ours {
            match &result {
                Ok(Started::Here(addr)) => {
                    live.insert(Arc::from(id), Entry::Live(addr.clone()));
                }
                Ok(Started::Elsewhere { .. }) | Err(_) => {
                    live.remove(id);
                }
            }
        }
        drop(live);
        match result.map_err(ConversationError::Shared)? {
            Started::Here(addr) => Ok(Handle::local(id, addr, self.in_cluster())),
            Started::Elsewhere { node, until } => {
                let mut owners = self.owners.lock();
                if owners.len() >= OWNERS_CACHED {
                    let lease = self.deps.cluster.as_ref().map(|c| c.lease());
                    owners.retain(|_, s| lease.is_some_and(|l| s.at.elapsed() < l));
                    if owners.len() >= OWNERS_CACHED {
                        owners.clear();
                    }
                }
                let seen = Seen {
                    node: node.clone(),
                    at: Instant::now(),
                    until,
                };
                owners.insert(Arc::from(id), seen);
                Ok(Handle::remote(id, node, until, self.clone()))
            }
        }
    }

    /// Like [`Registry::get`] for a caller that names its user: when the conversation cannot be
    /// started because its assistant was uninstalled, its owner is told so (`unknown_assistant`);
    /// anyone else gets `conversation_not_found`, as for an id that does not exist (ownership
    /// is decided before the assistant, so nothing about another user's conversation leaks).
    pub async fn get_as(&self, id: &str, owner: &str) -> Result<Handle, ConversationError> {
        match self.get(id).await {
            Err(e) if e.code() == ErrorCode::ConversationNotFound => {
                if let Ok(Some(rec)) = self.deps.store.get_conversation(id).await {
                    if rec.owner == owner && self.catalog.get(&rec.assistant).is_none() {
                        return Err(ConversationError::AssistantGone(rec.assistant));
                    }
                }
                Err(e)
            }
            other => other,
        }
    }

    /// A new conversation's actor (stored with its first message).
    pub fn create(
        &self,
        owner: &str,
        assistant: &str,
    ) -> Result<(String, Handle), ConversationError> {
        let id = uuid::Uuid::now_v7().to_string();
        let addr = self.create_with_id(owner, assistant, &id)?;
        Ok((id, addr))
    }

    /// A new conversation with an id the client chose (AG-UI's `threadId`), stored with its
    /// first message. The caller has checked that no conversation has this id; if an actor for
    /// it is live (a race with another request), that one is answered instead, and one still
    /// starting is `Starting`, so there is still at most one actor per id.
    pub fn create_with_id(
        &self,
        owner: &str,
        assistant: &str,
        id: &str,
    ) -> Result<Handle, ConversationError> {
        let a = self
            .catalog
            .get(assistant)
            .ok_or_else(|| ConversationError::UnknownAssistant(assistant.to_owned()))?;
        let mut live = self.live.map.lock();
        match live.get(id) {
            Some(Entry::Live(addr)) if addr.connected() => {
                return Ok(Handle::local(id, addr.clone(), self.in_cluster()))
            }
            Some(Entry::Starting(_)) => return Err(ConversationError::Starting(id.to_owned())),
            _ => {}
        }
        if let Some(c) = &self.deps.cluster {
            // Ours from the first commit on (which claims the row, or is refused).
            c.created(id);
        }
        let actor = Conversation::new_unstored(self.deps.clone(), a, id.to_owned(), owner.into());
        let addr = actor.start();
        live.insert(Arc::from(id), Entry::Live(addr.clone()));
        Ok(Handle::local(id, addr, self.in_cluster()))
    }

    /// Whether an actor for `id` is live or starting (the retention sweeper leaves those alone).
    pub fn holds(&self, id: &str) -> bool {
        self.live.map.lock().contains_key(id)
    }

    /// Whether the retention sweeper may delete `id` now: no actor holds it here and, in
    /// cluster mode, no other node holds a live lease on it. In cluster mode this node claims
    /// the lease first, so that its delete passes the fence only while it holds it and no other
    /// node starts the conversation meanwhile; [`Registry::swept`] gives it up afterwards.
    pub async fn claim_for_sweep(&self, id: &str) -> Result<bool, StoreError> {
        if self.holds(id) {
            return Ok(false);
        }
        let Some(cluster) = &self.deps.cluster else {
            return Ok(true);
        };
        Ok(match cluster.claim(id).await? {
            Claim::Won(_) => true,
            Claim::HeldBy { .. } => false,
        })
    }

    /// The sweeper is done with conversations it claimed ([`Registry::claim_for_sweep`]).
    pub fn swept(&self, ids: &[String]) {
        if let Some(cluster) = &self.deps.cluster {
            for id in ids {
                self.live.if_absent(id, || cluster.release(id));
            }
        }
    }

    /// Live actors (starts in flight are not counted).
    pub fn live_count(&self) -> usize {
        self.live
            .map
            .lock()
            .values()
            .filter(|e| matches!(e, Entry::Live(_)))
            .count()
    }

    /// Every live actor (for shutdown).
    pub fn all(&self) -> Vec<Addr<Conversation>> {
        self.live
            .map
            .lock()
            .values()
            .filter_map(|e| match e {
                Entry::Live(a) => Some(a.clone()),
                Entry::Starting(_) => None,
            })
            .collect()
    }
}

/// Loads a stored conversation (four short reads, off the worker) and starts its actor; in
/// cluster mode, claims it first (or answers the node that holds it).
async fn load_and_start(
    catalog: Arc<Catalog>,
    deps: Arc<Deps>,
    id: String,
) -> Result<Started, ConversationError> {
    if let Some(cluster) = &deps.cluster {
        let began = Instant::now();
        if let Claim::HeldBy { node, left } = cluster.claim(&id).await? {
            let until = Instant::now() + left;
            return Ok(Started::Elsewhere { node, until });
        }
        let claimed = began.elapsed();
        let started = load_and_start_here(catalog, deps.clone(), id.clone(), true).await;
        if started.is_err() {
            // Nothing started: give the claim back.
            cluster.release(&id);
        }
        tracing::debug!(conversation = %id, claim_ms = claimed.as_millis() as u64, restore_ms = (began.elapsed() - claimed).as_millis() as u64, "claimed and restored");
        return started.map(Started::Here);
    }
    load_and_start_here(catalog, deps, id, false)
        .await
        .map(Started::Here)
}

/// Restores a conversation this node has just claimed (a takeover's batch claim); gives the
/// claim back if that fails.
async fn load_claimed(
    catalog: Arc<Catalog>,
    deps: Arc<Deps>,
    id: String,
) -> Result<Started, ConversationError> {
    let started = load_and_start_here(catalog, deps.clone(), id.clone(), true).await;
    if started.is_err() {
        if let Some(cluster) = &deps.cluster {
            cluster.release(&id);
        }
    }
    started.map(Started::Here)
}

async fn load_and_start_here(
    catalog: Arc<Catalog>,
    deps: Arc<Deps>,
    id: String,
    claimed: bool,
) -> Result<Addr<Conversation>, ConversationError> {
    let store = &deps.store;
    // Four independent reads, at once (a takeover restores many conversations together).
    let (rec, cp, last_seq, recent) = futures_util::try_join!(
        store.get_conversation(&id),
        store.checkpoint(&id),
        store.last_seq(&id),
        store.recent_messages(&id, HISTORY_TAIL),
    )?;
    let mut rec = rec.ok_or_else(|| ConversationError::NotFound(id.clone()))?;
    // Whose conversation this is, is not known here: a missing assistant answers as a missing
    // conversation, so that another user learns nothing (`get_as` tells the owner the truth).
    let assistant = catalog
        .get(&rec.assistant)
        .ok_or_else(|| ConversationError::NotFound(id.clone()))?;
    let mut cp: Checkpoint = match cp {
        Some(bytes) => serde_json::from_slice(&bytes).map_err(|source| {
            ConversationError::CorruptCheckpoint {
                id: id.clone(),
                source,
            }
        })?,
        None => Checkpoint::default(),
    };
    let mut last_seq = last_seq;
    let mut recent = recent;
    if claimed && rec.status == RunStatus::Running {
        // Its owner died mid-run: the single-node crash outcome, under our epoch.
        let ops = super::actor::interrupted_ops(&mut rec, &mut cp, last_seq);
        let published = super::actor::appended_events(&ops);
        store.write(ops).await?;
        last_seq += published.len() as u64;
        if let Some(c) = &deps.cluster {
            c.publish(&id, &published);
        }
        tracing::warn!(conversation = %id, "took over a conversation whose run was active on a lost node; it ended with RUN_ERROR 'interrupted'");
        recent = store.recent_messages(&id, HISTORY_TAIL).await?;
    }
    let actor = Conversation::restore(deps.clone(), assistant, rec, cp, last_seq, recent);
    Ok(actor.start())
}

/// At start-up: end every run that was active when the process stopped (see
/// [`super::actor::interrupted_ops`]). Returns how many were ended.
pub async fn recover_interrupted(store: &dyn Store) -> Result<usize, StoreError> {
    let running = store.conversations_with_status(RunStatus::Running).await?;
    let mut ops = Vec::new();
    let n = running.len();
    for mut rec in running {
        let mut cp: Checkpoint = store
            .checkpoint(&rec.id)
            .await?
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let last = store.last_seq(&rec.id).await?;
        ops.extend(super::actor::interrupted_ops(&mut rec, &mut cp, last));
    }
    if !ops.is_empty() {
        store.write(ops).await?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::services::Services;
    use crate::store::{ConversationRecord, WriteOp};

    async fn services(dir: &std::path::Path) -> Arc<Services> {
        let mut config = Config::embedded();
        config.storage.data_dir = dir.to_owned();
        config.assistants.dir = concat!(env!("CARGO_MANIFEST_DIR"), "/assistants").into();
        crate::server::build(config).await.unwrap()
    }

    fn record(id: &str, assistant: &str) -> ConversationRecord {
        ConversationRecord {
            id: id.to_owned(),
            owner: "u".to_owned(),
            assistant: assistant.to_owned(),
            title: "t".to_owned(),
            title_set: false,
            status: RunStatus::Idle,
            created_at: 1,
            updated_at: 1,
            args: serde_json::json!({}),
            last_seq: 0,
            message_count: 0,
            pending_interrupts: Vec::new(),
        }
    }

    #[actix::test]
    async fn concurrent_gets_of_one_id_start_one_actor() {
        let dir = tempfile::tempdir().unwrap();
        let svc = services(dir.path()).await;
        let assistant = svc.catalog.iter().next().unwrap().id.clone();
        let ops = vec![
            WriteOp::PutConversation(record("c1", &assistant)),
            WriteOp::PutConversation(record("c2", &assistant)),
        ];
        svc.store.write(ops).await.unwrap();

        let gets = (0..8).map(|i| svc.registry.get(if i % 2 == 0 { "c1" } else { "c2" }));
        let addrs: Vec<_> = futures_util::future::join_all(gets)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        for (i, addr) in addrs.iter().enumerate() {
            assert_eq!(addr, &addrs[i % 2], "get {i} got another actor");
        }
        assert_ne!(addrs[0], addrs[1]);
        assert_eq!(svc.registry.live_count(), 2);
        // A later get finds the live actor.
        assert_eq!(svc.registry.get("c1").await.unwrap(), addrs[0]);
    }

    #[actix::test]
    async fn a_failed_start_leaves_no_entry_and_keeps_its_error() {
        let dir = tempfile::tempdir().unwrap();
        let svc = services(dir.path()).await;
        let gets = (0..3).map(|_| svc.registry.get("nope"));
        for result in futures_util::future::join_all(gets).await {
            let error = result.unwrap_err();
            assert_eq!(error.code(), ErrorCode::ConversationNotFound);
        }
        svc.store
            .write(vec![WriteOp::PutConversation(record(
                "gone",
                "no_such_assistant",
            ))])
            .await
            .unwrap();
        // Without a caller, a missing assistant is a missing conversation (nothing leaks);
        // its owner is told the truth, anyone else is not.
        let error = svc.registry.get("gone").await.unwrap_err();
        assert_eq!(error.code(), ErrorCode::ConversationNotFound);
        let owner = record("gone", "no_such_assistant").owner;
        let error = svc.registry.get_as("gone", &owner).await.unwrap_err();
        assert_eq!(error.code(), ErrorCode::UnknownAssistant);
        let error = svc.registry.get_as("gone", "mallory").await.unwrap_err();
        assert_eq!(error.code(), ErrorCode::ConversationNotFound);
        assert!(
            svc.registry.live.map.lock().is_empty(),
            "no entry left behind"
        );
    }
}
