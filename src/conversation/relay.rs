//! Cluster mode: a node's subscribers of a conversation, fed from the owner's published
//! batches (CONTRACT §9: every node, in seq order, no gaps).
//!
//! # Invariants
//!
//! - **One relay per conversation per node**, a task that owns the conversation's local
//!   subscribers, its NATS subscription and `mark`: every event up to `mark` has been handed to
//!   the subscribers (or was in the store before they came). A subscriber that joins gets
//!   `high = mark` (it replays `(since, mark]` from the store) and every later event live.
//! - **In order, once.** The task subscribes to NATS *before* it reads its first mark from the
//!   store, so nothing committed after that read is missed. A batch event at `mark + 1` is
//!   delivered; one at or below `mark` is dropped (already delivered); one beyond `mark + 1`
//!   reveals a gap, which is read from the store (the truth) before it. While it has
//!   subscribers, the relay also reads the store every [`CATCH_UP`] and whenever NATS
//!   reconnects, so an event whose batch was lost (the last one of a run, during a NATS
//!   restart) still arrives.
//! - Only durable events exist here: owners publish after the commit, the store holds only
//!   committed events.
//! - `running` (for SSE's `until_idle`) is the record's status at the first mark, then follows
//!   the delivered events (`RUN_STARTED` → running; `RUN_FINISHED` / `RUN_ERROR` → not).
//! - A relay with no subscriber left removes itself from the map (only if the entry is still
//!   its own, and no request is waiting in its queue) and ends; a follow that raced with that
//!   finds its queue closed and starts a new relay.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use super::fanout::Fanout;
use super::{ConversationError, Subscribed, Subscriber};
use crate::cluster::{subjects, Cluster};
use crate::store::{RunStatus, Store};

/// How often a relay with subscribers reads the store for events it may have missed.
pub const CATCH_UP: Duration = Duration::from_secs(2);
/// Events read from the store per query.
const PAGE: usize = 512;

enum Ctl {
    Follow {
        subscriber: Subscriber,
        owner: String,
        /// A `send` to a conversation that may not be stored yet.
        new_ok: bool,
        done: oneshot::Sender<Result<Subscribed, ConversationError>>,
    },
    Unfollow(u64),
}

/// Every relay of this node.
pub struct Relays {
    map: Mutex<HashMap<Arc<str>, mpsc::Sender<Ctl>>>,
    cluster: Arc<Cluster>,
    store: Arc<dyn Store>,
    /// Bumped on every NATS (re)connect: relays read the store then.
    reconnects: tokio::sync::watch::Receiver<u64>,
}

impl Relays {
    pub fn new(
        cluster: Arc<Cluster>,
        store: Arc<dyn Store>,
        reconnects: tokio::sync::watch::Receiver<u64>,
    ) -> Arc<Relays> {
        Arc::new(Relays {
            map: Mutex::new(HashMap::new()),
            cluster,
            store,
            reconnects,
        })
    }

    /// Adds a local subscriber; answers where its live events begin. The conversation must
    /// be `owner`'s (or, with `new_ok`, not stored yet: a `send` that creates it).
    pub async fn follow(
        self: &Arc<Self>,
        id: &str,
        subscriber: Subscriber,
        owner: &str,
        new_ok: bool,
    ) -> Result<Subscribed, ConversationError> {
        for _ in 0..8 {
            let tx = {
                let mut map = self.map.lock();
                match map.get(id) {
                    Some(tx) if !tx.is_closed() => tx.clone(),
                    _ => {
                        let (tx, rx) = mpsc::channel(64);
                        map.insert(Arc::from(id), tx.clone());
                        let relay = Relay {
                            id: Arc::from(id),
                            relays: self.clone(),
                            fanout: Fanout::default(),
                            mark: 0,
                            running: false,
                            owner: None,
                        };
                        tokio::spawn(relay.run(rx, tx.clone()));
                        tx
                    }
                }
            };
            let (done, answer) = oneshot::channel();
            let ctl = Ctl::Follow {
                subscriber: subscriber.clone(),
                owner: owner.to_owned(),
                new_ok,
                done,
            };
            if tx.send(ctl).await.is_err() {
                continue;
            }
            if let Ok(r) = answer.await {
                return r;
            }
        }
        Err(ConversationError::Stopped)
    }

    pub fn unfollow(&self, id: &str, subscriber_id: u64) {
        if let Some(tx) = self.map.lock().get(id) {
            let _ = tx.try_send(Ctl::Unfollow(subscriber_id));
        }
    }

    /// Conversations relayed on this node.
    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

struct Relay {
    id: Arc<str>,
    relays: Arc<Relays>,
    fanout: Fanout,
    mark: u64,
    running: bool,
    /// The conversation's user, once it is stored.
    owner: Option<String>,
}

impl Relay {
    async fn run(mut self, mut rx: mpsc::Receiver<Ctl>, me: mpsc::Sender<Ctl>) {
        let cluster = self.relays.cluster.clone();
        let mut feed = match cluster.subscribe_events(&self.id).await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "relay without a NATS feed; reading the store");
                None
            }
        };
        if let Err(e) = self.load().await {
            tracing::warn!(conversation = %self.id, error = %e, "relay could not read the conversation");
        }
        let mut reconnects = self.relays.reconnects.clone();
        let mut tick = tokio::time::interval(CATCH_UP);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ctl = rx.recv() => match ctl {
                    Some(Ctl::Follow { subscriber, owner, new_ok, done }) => {
                        let r = self.add(subscriber, &owner, new_ok).await;
                        let _ = done.send(r);
                    }
                    Some(Ctl::Unfollow(id)) => self.fanout.remove(id),
                    None => return,
                },
                batch = next(&mut feed) => match batch {
                    Some(payload) => self.on_batch(payload).await,
                    None => feed = None,
                },
                _ = tick.tick() => {
                    if !self.fanout.is_empty() {
                        self.catch_up(u64::MAX).await;
                    }
                }
                changed = reconnects.changed() => {
                    if changed.is_ok() {
                        self.catch_up(u64::MAX).await;
                    }
                }
            }
            if self.fanout.is_empty() && self.leave(&mut rx, &me) {
                return;
            }
        }
    }

    /// No subscriber left: leave the map unless someone is already asking.
    fn leave(&self, rx: &mut mpsc::Receiver<Ctl>, me: &mpsc::Sender<Ctl>) -> bool {
        let mut map = self.relays.map.lock();
        if !rx.is_empty() {
            return false;
        }
        if map.get(&self.id).is_some_and(|tx| tx.same_channel(me)) {
            map.remove(&self.id);
        }
        rx.close();
        true
    }

    /// The first mark: the stored record's last seq and status (one consistent snapshot),
    /// then whatever was committed after it.
    async fn load(&mut self) -> Result<(), crate::store::StoreError> {
        if let Some(rec) = self.relays.store.get_conversation(&self.id).await? {
            self.mark = rec.last_seq;
            self.running = rec.status == RunStatus::Running;
            self.owner = Some(rec.owner);
        }
        self.catch_up(u64::MAX).await;
        Ok(())
    }

    async fn add(
        &mut self,
        subscriber: Subscriber,
        owner: &str,
        new_ok: bool,
    ) -> Result<Subscribed, ConversationError> {
        if self.owner.is_none() {
            // Stored since this relay started?
            if let Ok(Some(rec)) = self.relays.store.get_conversation(&self.id).await {
                self.owner = Some(rec.owner);
                self.catch_up(u64::MAX).await;
            }
        }
        match &self.owner {
            Some(o) if o == owner => {}
            None if new_ok => {}
            // Not the caller's, or not there: the same answer (nothing leaks).
            _ => return Err(ConversationError::NotFound(self.id.to_string())),
        }
        self.fanout.insert(subscriber);
        Ok(Subscribed {
            high: self.mark,
            running: self.running,
        })
    }

    async fn on_batch(&mut self, payload: Bytes) {
        let Some(events) = subjects::decode_batch(payload) else {
            self.catch_up(u64::MAX).await;
            return;
        };
        for (seq, event) in events {
            if seq <= self.mark {
                continue;
            }
            if seq > self.mark + 1 {
                // A gap: the store has what NATS lost.
                self.catch_up(seq - 1).await;
                if seq <= self.mark {
                    continue;
                }
                if seq > self.mark + 1 {
                    // The store does not have it yet either: read it all later.
                    return;
                }
            }
            self.deliver(seq, &event);
        }
    }

    /// Reads the store after `mark` (up to `upto`) and delivers it.
    async fn catch_up(&mut self, upto: u64) {
        loop {
            let events = match self
                .relays
                .store
                .events_since(&self.id, self.mark, PAGE)
                .await
            {
                Ok(e) => e,
                Err(e) => {
                    tracing::debug!(conversation = %self.id, error = %e, "relay catch-up failed");
                    return;
                }
            };
            let n = events.len();
            let mut filled = 0;
            for (seq, event) in events {
                if seq > upto {
                    break;
                }
                if seq == self.mark + 1 {
                    self.deliver(seq, &event);
                    filled += 1;
                }
            }
            if filled > 0 && !self.fanout.is_empty() {
                self.relays
                    .cluster
                    .metrics
                    .gap_events
                    .fetch_add(filled, Relaxed);
            }
            if n < PAGE || self.mark >= upto || filled == 0 {
                return;
            }
        }
    }

    fn deliver(&mut self, seq: u64, event: &Bytes) {
        self.mark = seq;
        if let Some(running) = run_state(event) {
            self.running = running;
        }
        if !self.fanout.is_empty() {
            self.fanout.deliver(&self.id, seq, event, None);
        }
    }
}

async fn next(feed: &mut Option<async_nats::Subscriber>) -> Option<Bytes> {
    match feed {
        Some(f) => f.next().await.map(|m| m.payload),
        None => std::future::pending().await,
    }
}

/// Whether an event starts (`Some(true)`) or ends (`Some(false)`) a run.
fn run_state(event: &[u8]) -> Option<bool> {
    #[derive(serde::Deserialize)]
    struct Kind<'a> {
        #[serde(borrow, rename = "type")]
        kind: &'a str,
    }
    let k: Kind = serde_json::from_slice(event).ok()?;
    match k.kind {
        "RUN_STARTED" => Some(true),
        "RUN_FINISHED" | "RUN_ERROR" => Some(false),
        _ => None,
    }
}
