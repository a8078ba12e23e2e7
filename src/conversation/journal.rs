//! The durability journal of one conversation: seqs, write batches, the durable high-water mark.
//!
//! A plain struct (no actix): the actor feeds it events and changes, asks it when and what to
//! commit, spawns the commit, and tells it how the commit ended. The journal answers what became
//! deliverable and which waiters to answer.
//!
//! # Invariants
//!
//! - **Seqs are contiguous.** Every event gets `seq + 1`; the events queued for the next commit
//!   are exactly the seqs `upto - events.len() + 1 ..= upto`, and a batch stores them as one
//!   `AppendEvents` with its `first_seq`.
//! - **At most one commit in flight.** [`Journal::begin_commit`] takes everything queued;
//!   whatever is queued meanwhile waits for [`Journal::commit_landed`] or
//!   [`Journal::commit_failed`].
//! - **Delivery only up to durable** (ARCHITECTURE invariant 2). An event is deliverable once the
//!   commit holding it landed (`seq <= durable_seq`); [`Journal::deliverable`] hands them out in
//!   seq order. The events of a failed commit are never delivered: they are not in the store, so
//!   a replay would not show them either (invariant 3, replay = live).
//! - **Waiters are answered by the commit that holds everything queued before them.** A waiter
//!   added while a commit is in flight waits for the next one.
//! - **Bounded ahead of the store.** The engine's sink ([`Backpressure`]) waits once more than
//!   [`MAX_UNDURABLE`] of its events are not durable, until at most half are.
//!
//! # When to commit
//!
//! [`Journal::kick`] decides, with what the actor knows ([`Conditions`]):
//!
//! - nothing is written before the conversation is stored (its first message), and nothing while
//!   a commit is in flight (it follows when that one lands);
//! - a synchronous call that no socket follows and nobody waits on is *lazy*: its records are
//!   committed together with the run's end, unless half of [`MAX_UNDURABLE`] piles up first;
//! - with no run, a commit starts at once; while the engine runs, it first *coalesces*: it waits
//!   scheduler rounds ([`Journal::round`]) while the engine still produces, so a user's message
//!   and the run it starts share one fsync. Three quiet rounds in a row (the engine waits for a
//!   model, a tool or a person), [`COALESCE_ROUNDS`] rounds, or [`COALESCE_OPS`] queued writes
//!   end the wait.

use std::collections::vec_deque::Drain;
use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{oneshot, watch};

use super::error::ConversationError;
use crate::engine::{Checkpoint, Event};
use crate::store::{ConversationRecord, WriteOp};

/// Events queued ahead of durability before the engine is made to wait.
pub const MAX_UNDURABLE: u64 = 2048;
/// At most this many scheduler rounds are waited for more of a running engine's output before
/// a commit starts.
pub const COALESCE_ROUNDS: u32 = 256;
/// A commit starts without waiting once this many writes are queued.
pub const COALESCE_OPS: usize = 512;
/// This many scheduler rounds in a row without new output end the wait for more.
pub const COALESCE_QUIET_ROUNDS: u32 = 3;

/// Answered when the commit holding everything queued before it lands (or fails).
pub(crate) type Waiter = oneshot::Sender<Result<(), ConversationError>>;

/// What the actor knows that decides whether a commit may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conditions {
    /// The conversation is stored: nothing is written before its first message.
    pub stored: bool,
    /// A run is active, so the engine may still produce.
    pub running: bool,
    /// The active run is a synchronous call that no socket follows.
    pub unobserved_call: bool,
}

/// What [`Journal::kick`] asks the actor to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    /// Nothing now (nothing queued, not stored, lazy, or a commit is in flight or coalescing).
    Nothing,
    /// Call [`Journal::begin_commit`] and spawn the write.
    Commit,
    /// Yield one scheduler round, then call [`Journal::round`] with this.
    Coalesce(Coalescing),
}

/// A coalescing wait: the seq seen before the round, rounds so far, quiet ones in a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coalescing {
    seen: u64,
    total: u32,
    quiet: u32,
}

/// What to do after one coalescing round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Round {
    /// Yield another round, then call [`Journal::round`] again.
    Again(Coalescing),
    /// The wait is over: call [`Journal::begin_commit`] and spawn the write.
    Commit,
    /// The wait is over and nothing needs a commit now.
    Nothing,
}

/// The commit in flight: the last seq it holds and the waiters it answers.
#[derive(Debug)]
struct InFlight {
    upto: u64,
    waiters: Vec<Waiter>,
}

/// The durability bookkeeping of one conversation (see the module docs).
#[derive(Debug)]
pub struct Journal {
    id: Arc<str>,
    /// Highest seq assigned.
    seq: u64,
    /// Highest seq known durable.
    durable_seq: u64,
    /// The same, watched by the engine's sink; only while a run is active.
    durable_watch: Option<watch::Sender<u64>>,
    /// Assigned, not yet delivered: (seq, event JSON as stored, the event itself).
    undelivered: VecDeque<(u64, Bytes, Arc<Event>)>,
    /// Writes queued for the next commit (messages; checkpoint, record and events are added
    /// when it starts).
    ops: Vec<WriteOp>,
    /// Events queued for the next commit: seqs `upto - len + 1 ..= upto`.
    events: Vec<Bytes>,
    /// Waiters of the next commit.
    waiters: Vec<Waiter>,
    /// The seq of the last event queued, or of the last one committed.
    upto: u64,
    record_dirty: bool,
    /// The newest checkpoint, serialized only when the next commit starts (boxed: usually none).
    checkpoint: Option<Box<Checkpoint>>,
    in_flight: Option<InFlight>,
    coalescing: bool,
}

impl Journal {
    /// The journal of conversation `id`, whose last stored seq is `last_seq`.
    pub fn new(id: Arc<str>, last_seq: u64) -> Self {
        Journal {
            id,
            seq: last_seq,
            durable_seq: last_seq,
            durable_watch: None,
            undelivered: VecDeque::new(),
            ops: Vec::new(),
            events: Vec::new(),
            waiters: Vec::new(),
            upto: last_seq,
            record_dirty: false,
            checkpoint: None,
            in_flight: None,
            coalescing: false,
        }
    }

    /// Highest seq assigned.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Highest seq durable: every event up to it is in the store.
    pub fn durable_seq(&self) -> u64 {
        self.durable_seq
    }

    /// Assign the next seq to an event and queue it for the next commit and for delivery.
    /// Nothing is assigned if the event cannot be serialized.
    /// The event is kept beside its JSON until it is delivered: a front that translates it
    /// (AG-UI) reads it as it is instead of parsing its JSON again.
    pub fn push_event(&mut self, event: impl Into<Arc<Event>>) -> Result<u64, serde_json::Error> {
        let event = event.into();
        let mut buf = Vec::with_capacity(128);
        serde_json::to_writer(&mut buf, &*event)?;
        let json = Bytes::from(buf);
        self.seq += 1;
        self.undelivered.push_back((self.seq, json.clone(), event));
        self.events.push(json);
        self.upto = self.seq;
        Ok(self.seq)
    }

    /// Queue a write for the next commit.
    pub fn push_op(&mut self, op: WriteOp) {
        self.ops.push(op);
    }

    /// The conversation's record changed: the next commit stores it.
    pub fn touch_record(&mut self) {
        self.record_dirty = true;
    }

    /// The newest checkpoint: the next commit stores it (an older one not yet stored is
    /// replaced).
    pub fn put_checkpoint(&mut self, cp: Checkpoint) {
        self.checkpoint = Some(Box::new(cp));
    }

    /// Answer `w` once everything queued so far is durable. The caller kicks.
    pub fn add_waiter(&mut self, w: Waiter) {
        self.waiters.push(w);
    }

    /// Whether a commit is in flight.
    pub fn flushing(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Nothing in flight and no write or event queued.
    pub fn is_quiet(&self) -> bool {
        self.in_flight.is_none() && self.ops.is_empty() && self.events.is_empty()
    }

    /// Whether commits may wait: a synchronous call that no socket follows and nobody waits
    /// on, with fewer than half of [`MAX_UNDURABLE`] events not durable.
    fn lazy(&self, c: Conditions) -> bool {
        c.unobserved_call && self.seq.saturating_sub(self.durable_seq) < MAX_UNDURABLE / 2
    }

    /// Whether a commit should start now: something is queued, none is in flight, the
    /// conversation is stored, and someone needs it.
    pub fn wants_commit(&self, c: Conditions) -> bool {
        let queued = !self.events.is_empty()
            || !self.ops.is_empty()
            || !self.waiters.is_empty()
            || self.record_dirty
            || self.checkpoint.is_some();
        queued && self.in_flight.is_none() && c.stored && !(self.waiters.is_empty() && self.lazy(c))
    }

    /// Something was queued: decide whether to commit now, coalesce first, or do nothing.
    pub fn kick(&mut self, c: Conditions) -> Kick {
        if self.coalescing || !self.wants_commit(c) {
            return Kick::Nothing;
        }
        if !c.running {
            return Kick::Commit;
        }
        self.coalescing = true;
        Kick::Coalesce(Coalescing {
            seen: self.seq,
            total: 0,
            quiet: 0,
        })
    }

    /// One scheduler round of a coalescing wait is over.
    ///
    /// A round can end before the engine had its turn (the actor is also woken by its
    /// mailbox), so only several quiet rounds in a row mean the engine is waiting.
    pub fn round(&mut self, w: Coalescing, c: Conditions) -> Round {
        let quiet = if self.seq == w.seen { w.quiet + 1 } else { 0 };
        let more = c.running
            && quiet < COALESCE_QUIET_ROUNDS
            && w.total < COALESCE_ROUNDS
            && self.events.len() + self.ops.len() < COALESCE_OPS;
        if more {
            return Round::Again(Coalescing {
                seen: self.seq,
                total: w.total + 1,
                quiet,
            });
        }
        self.coalescing = false;
        if self.wants_commit(c) {
            Round::Commit
        } else {
            Round::Nothing
        }
    }

    /// Take everything queued as one write batch (checkpoint, record `rec` if it changed,
    /// messages, events as one chunk) and mark it in flight with its waiters.
    pub fn begin_commit(&mut self, rec: &ConversationRecord) -> Vec<WriteOp> {
        if let Some(cp) = self.checkpoint.take() {
            match serde_json::to_vec(&*cp) {
                Ok(data) => self.ops.push(WriteOp::PutCheckpoint {
                    conversation: self.id.to_string(),
                    data: Bytes::from(data),
                }),
                Err(e) => {
                    tracing::error!(conversation = %self.id, "checkpoint not serializable: {e}")
                }
            }
        }
        if self.record_dirty {
            self.record_dirty = false;
            self.ops.push(WriteOp::PutConversation(rec.clone()));
        }
        if !self.events.is_empty() {
            let events = std::mem::take(&mut self.events);
            self.ops.push(WriteOp::AppendEvents {
                conversation: self.id.to_string(),
                first_seq: self.upto + 1 - events.len() as u64,
                events,
            });
        }
        self.in_flight = Some(InFlight {
            upto: self.upto,
            waiters: std::mem::take(&mut self.waiters),
        });
        std::mem::take(&mut self.ops)
    }

    /// The commit in flight is durable: the mark moves up (the sink is told), its events
    /// become [`deliverable`](Self::deliverable), and its waiters are returned to be answered
    /// (after delivery). The caller kicks again: what was queued meanwhile follows.
    pub fn commit_landed(&mut self) -> Vec<Waiter> {
        let Some(done) = self.in_flight.take() else {
            return Vec::new();
        };
        self.durable_seq = done.upto;
        if let Some(w) = &self.durable_watch {
            w.send_replace(done.upto);
        }
        done.waiters
    }

    /// The commit in flight failed: its events are dropped undelivered (they are not in the
    /// store), and its waiters are returned to be told.
    pub fn commit_failed(&mut self) -> Vec<Waiter> {
        let Some(failed) = self.in_flight.take() else {
            return Vec::new();
        };
        while self
            .undelivered
            .front()
            .is_some_and(|(seq, ..)| *seq <= failed.upto)
        {
            self.undelivered.pop_front();
        }
        failed.waiters
    }

    /// Every waiter, queued or in flight (the actor is stopping: it tells them why).
    pub fn take_waiters(&mut self) -> Vec<Waiter> {
        let mut out: Vec<Waiter> = self
            .in_flight
            .as_mut()
            .map(|f| std::mem::take(&mut f.waiters))
            .unwrap_or_default();
        out.append(&mut self.waiters);
        out
    }

    /// The events that are durable and not delivered yet, in seq order (removed as iterated).
    pub fn deliverable(&mut self) -> Drain<'_, (u64, Bytes, Arc<Event>)> {
        let n = self
            .undelivered
            .iter()
            .take_while(|(seq, ..)| *seq <= self.durable_seq)
            .count();
        self.undelivered.drain(..n)
    }

    /// A receiver of the durable mark for a run's sink (the channel lives until
    /// [`end_watch`](Self::end_watch)).
    pub fn watch(&mut self) -> watch::Receiver<u64> {
        let durable = self.durable_seq;
        self.durable_watch
            .get_or_insert_with(|| watch::channel(durable).0)
            .subscribe()
    }

    /// The run's sink is done: no one watches the mark until the next run.
    pub fn end_watch(&mut self) {
        self.durable_watch = None;
    }

    /// The conversation is being deleted: forget every queued write and undelivered event.
    pub fn discard(&mut self) {
        self.ops.clear();
        self.events.clear();
        self.undelivered.clear();
    }

    /// Between runs, once everything is delivered: give back what a run's buffers grew to.
    pub fn trim(&mut self) {
        if self.undelivered.is_empty() {
            self.undelivered = VecDeque::new();
        }
    }
}

/// The engine sink's side of the bound: it counts the events it sent and waits while more
/// than [`MAX_UNDURABLE`] of them may not be durable, until at most half are.
pub struct Backpressure {
    durable: watch::Receiver<u64>,
    /// The journal's last seq when the run started: the run's n-th event gets a seq of at
    /// least `base + n` (other events, e.g. queued messages, may come in between).
    base: u64,
    sent: u64,
}

impl Backpressure {
    pub fn new(durable: watch::Receiver<u64>, base: u64) -> Self {
        Backpressure {
            durable,
            base,
            sent: 0,
        }
    }

    /// One more event was sent; wait if the store is too far behind. `base + sent` is at most
    /// the seq of the event just sent, so the wait always ends once the store catches up (or
    /// the journal's watch is gone).
    pub async fn sent_one(&mut self) {
        self.sent += 1;
        let reached = self.base + self.sent;
        if reached.saturating_sub(*self.durable.borrow()) > MAX_UNDURABLE {
            let _ = self
                .durable
                .wait_for(|d| reached.saturating_sub(*d) <= MAX_UNDURABLE / 2)
                .await;
        }
    }
}

#[cfg(test)]
#[path = "journal_tests.rs"]
mod tests;
