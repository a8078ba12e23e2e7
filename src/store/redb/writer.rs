//! The write path: the bounded queue, the single writer thread and group commit.
//!
//! Invariants:
//! - **One writer.** Only the thread started by [`spawn`] begins write transactions.
//! - **Ack after durable commit.** A waiter is answered only after the commit of the transaction
//!   holding its whole batch returned (`Durability::Immediate`: fsync done), or with the error
//!   that prevented it. A batch never spans two transactions.
//! - **FIFO.** Batches leave the queue in the order they entered it and groups are committed
//!   one after another, so a successful answer implies every earlier batch was resolved. After a
//!   failed commit every later batch is refused: no later success can hide an earlier loss.
//! - **Bounded.** The queue refuses `push_now` above its hard cap and makes `push_when_room`
//!   wait above its soft cap; a group is at most [`MAX_GROUP_BATCHES`] batches or
//!   [`MAX_GROUP_OPS`] ops (a single larger batch is still taken whole).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};
use redb::{Database, Durability, ReadableTable, Table, WriteTransaction};
use tokio::sync::Notify;

use super::encode::Encoded;
use super::tables::{
    inverted_time, IndexFields, BY_OWNER, BY_OWNER_ASSISTANT, CHECKPOINTS, CONVERSATIONS, EVENTS,
    IDEMPOTENCY, MESSAGES,
};
use crate::store::{AckSender, StoreError};

/// `enqueue`/`write` wait while this many batches are queued.
pub const QUEUE_SOFT_CAP: usize = 1024;
/// `submit` refuses a batch while this many batches are queued.
pub const QUEUE_HARD_CAP: usize = 16 * 1024;
/// At most this many batches are committed together.
pub const MAX_GROUP_BATCHES: usize = 1024;
/// At most this many ops are committed together (a single larger batch is taken whole).
pub const MAX_GROUP_OPS: usize = 4096;

pub(super) type Reply = AckSender;

/// Ops that are committed atomically, and who to tell.
pub(super) struct Batch {
    pub ops: Vec<Encoded>,
    pub done: Option<Reply>,
}

impl Batch {
    fn answer(self, result: Result<(), StoreError>) {
        if let Some(done) = self.done {
            // The waiter may have gone away; its batch is committed (or not) all the same.
            let _ = done.send(result);
        }
    }
}

/// Counters, updated by the writer, read by `Store::stats`.
#[derive(Debug, Default)]
pub(super) struct Metrics {
    pub commits: AtomicU64,
    pub failed_commits: AtomicU64,
    pub ops_committed: AtomicU64,
    pub batches_committed: AtomicU64,
    pub last_group_ops: AtomicU64,
    pub last_group_batches: AtomicU64,
    pub commit_micros: AtomicU64,
}

/// Why the queue did not take a batch.
pub(super) struct Refused {
    closed: bool,
    cap: usize,
}

impl Refused {
    pub(super) fn into_error(self) -> StoreError {
        if self.closed {
            StoreError::Closed
        } else {
            StoreError::QueueFull { waiting: self.cap }
        }
    }
}

struct QueueState {
    batches: VecDeque<Batch>,
    closed: bool,
}

/// The bounded FIFO between every producer and the writer thread.
pub(super) struct Queue {
    state: Mutex<QueueState>,
    /// Wakes the writer when a batch arrives or the queue closes.
    arrived: Condvar,
    /// Wakes `push_when_room` waiters when the writer takes batches or the queue closes.
    room: Notify,
    soft_cap: usize,
    hard_cap: usize,
}

impl Queue {
    pub(super) fn new(soft_cap: usize, hard_cap: usize) -> Queue {
        Queue {
            state: Mutex::new(QueueState {
                batches: VecDeque::new(),
                closed: false,
            }),
            arrived: Condvar::new(),
            room: Notify::new(),
            soft_cap,
            hard_cap: hard_cap.max(soft_cap),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.state.lock().batches.len()
    }

    /// Appends the batch now, or refuses it (closed, or at the hard cap). Never waits.
    pub(super) fn push_now(&self, batch: Batch) -> Result<(), Refused> {
        self.try_push(batch, self.hard_cap)
            .map_err(|(_, refused)| refused)
    }

    /// Waits while the queue is at its soft cap, then appends the batch.
    pub(super) async fn push_when_room(&self, batch: Batch) -> Result<(), StoreError> {
        let mut batch = batch;
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            // Register before looking, so that a wake-up between the look and the await is kept.
            room.as_mut().enable();
            match self.try_push(batch, self.soft_cap) {
                Ok(()) => return Ok(()),
                Err((_, refused)) if refused.closed => return Err(StoreError::Closed),
                Err((back, _)) => batch = back,
            }
            room.await;
        }
    }

    fn try_push(&self, batch: Batch, cap: usize) -> Result<(), (Batch, Refused)> {
        let mut state = self.state.lock();
        if state.closed || state.batches.len() >= cap {
            let refused = Refused {
                closed: state.closed,
                cap,
            };
            return Err((batch, refused));
        }
        state.batches.push_back(batch);
        drop(state);
        self.arrived.notify_one();
        Ok(())
    }

    /// Refuses new batches; the writer still commits those already queued, then exits.
    pub(super) fn close(&self) {
        self.state.lock().closed = true;
        self.arrived.notify_all();
        self.room.notify_waiters();
    }

    /// Blocks for the first batch, then takes every batch already queued up to the group caps.
    /// `None` once the queue is closed and empty.
    pub(super) fn next_group(&self) -> Option<Vec<Batch>> {
        let mut state = self.state.lock();
        while state.batches.is_empty() && !state.closed {
            self.arrived.wait(&mut state);
        }
        let first = state.batches.pop_front()?;
        let mut ops = first.ops.len();
        let mut group = vec![first];
        while group.len() < MAX_GROUP_BATCHES {
            match state.batches.front() {
                Some(next) if ops + next.ops.len() <= MAX_GROUP_OPS => {
                    ops += next.ops.len();
                    group.extend(state.batches.pop_front());
                }
                _ => break,
            }
        }
        drop(state);
        self.room.notify_waiters();
        Some(group)
    }

    /// Marks the queue closed and drops every queued batch: their waiters see `Closed`.
    fn abandon(&self) {
        let dropped = {
            let mut state = self.state.lock();
            state.closed = true;
            std::mem::take(&mut state.batches)
        };
        if !dropped.is_empty() {
            tracing::error!(
                batches = dropped.len(),
                "store writer exited with batches queued"
            );
        }
        drop(dropped);
        self.arrived.notify_all();
        self.room.notify_waiters();
    }
}

/// Starts the writer thread.
pub(super) fn spawn(
    db: Arc<Database>,
    queue: Arc<Queue>,
    metrics: Arc<Metrics>,
) -> Result<JoinHandle<()>, StoreError> {
    std::thread::Builder::new()
        .name("parley-store-writer".to_owned())
        .spawn(move || {
            // Whatever the exit (shutdown, or a panic inside redb), close the queue so that no
            // producer waits for a writer that is gone.
            let _exit = ExitGuard(queue.clone());
            let mut writer = Writer {
                db,
                metrics,
                broken: None,
            };
            tracing::debug!("store writer started");
            while let Some(group) = queue.next_group() {
                writer.commit_group(group);
            }
            tracing::debug!("store writer stopped");
        })
        .map_err(|e| StoreError::io("cannot start the store writer thread", e))
}

struct ExitGuard(Arc<Queue>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        self.0.abandon();
    }
}

struct Writer {
    db: Arc<Database>,
    metrics: Arc<Metrics>,
    /// Set after a failed commit: redb refuses further write transactions until reopened, and
    /// answering later batches (flushes especially) with success would hide the loss.
    broken: Option<Arc<StoreError>>,
}

impl Writer {
    fn commit_group(&mut self, group: Vec<Batch>) {
        if let Some(reason) = &self.broken {
            let error = StoreError::Broken(reason.clone());
            answer_all(group, &error);
            return;
        }
        let ops: usize = group.iter().map(|b| b.ops.len()).sum();
        if ops == 0 {
            // Only flush markers: everything before them is already resolved (FIFO).
            for batch in group {
                batch.answer(Ok(()));
            }
            return;
        }
        let started = Instant::now();
        match self.apply_and_commit(&group) {
            Ok(()) => {
                let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                let m = &self.metrics;
                m.commits.fetch_add(1, Ordering::Relaxed);
                m.ops_committed.fetch_add(ops as u64, Ordering::Relaxed);
                m.batches_committed
                    .fetch_add(group.len() as u64, Ordering::Relaxed);
                m.last_group_ops.store(ops as u64, Ordering::Relaxed);
                m.last_group_batches
                    .store(group.len() as u64, Ordering::Relaxed);
                m.commit_micros.fetch_add(micros, Ordering::Relaxed);
                if micros > 1_000_000 {
                    tracing::warn!(ops, batches = group.len(), micros, "slow store commit");
                } else {
                    tracing::trace!(ops, batches = group.len(), micros, "store commit");
                }
                for batch in group {
                    batch.answer(Ok(()));
                }
            }
            Err(failure) => {
                self.metrics.failed_commits.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    error = %failure.error,
                    ops,
                    batches = group.len(),
                    "store commit failed; its waiters get the error"
                );
                if failure.at_commit {
                    self.broken = Some(Arc::new(failure.error.clone()));
                }
                answer_all(group, &failure.error);
            }
        }
    }

    fn apply_and_commit(&self, group: &[Batch]) -> Result<(), Failure> {
        let mut txn = self.db.begin_write().map_err(Failure::before_commit)?;
        txn.set_durability(Durability::Immediate)
            .map_err(Failure::before_commit)?;
        apply_group(&txn, group).map_err(Failure::before_commit)?;
        // Dropping `txn` on an error above aborts it; nothing of the group is committed.
        txn.commit().map_err(|e| Failure {
            error: e.into(),
            at_commit: true,
        })
    }
}

fn answer_all(group: Vec<Batch>, error: &StoreError) {
    for batch in group {
        batch.answer(Err(error.clone()));
    }
}

struct Failure {
    error: StoreError,
    /// The commit itself failed (its outcome is unknown and redb refuses later writes).
    at_commit: bool,
}

impl Failure {
    fn before_commit(error: impl Into<StoreError>) -> Failure {
        Failure {
            error: error.into(),
            at_commit: false,
        }
    }
}

/// Applies every op of the group, in order, inside one write transaction.
fn apply_group(txn: &WriteTransaction, group: &[Batch]) -> Result<(), StoreError> {
    let mut conversations = txn.open_table(CONVERSATIONS)?;
    let mut by_owner = txn.open_table(BY_OWNER)?;
    let mut by_assistant = txn.open_table(BY_OWNER_ASSISTANT)?;
    let mut messages = txn.open_table(MESSAGES)?;
    let mut events = txn.open_table(EVENTS)?;
    let mut checkpoints = txn.open_table(CHECKPOINTS)?;
    let mut idempotency = txn.open_table(IDEMPOTENCY)?;

    for batch in group {
        for op in &batch.ops {
            match op {
                Encoded::PutConversation { id, index, json } => {
                    let id = id.as_str();
                    unindex(&conversations, &mut by_owner, &mut by_assistant, id)?;
                    conversations.insert(id, json.as_slice())?;
                    let time = inverted_time(index.updated_at);
                    by_owner.insert((index.owner.as_str(), time, id), ())?;
                    by_assistant.insert(
                        (index.owner.as_str(), index.assistant.as_str(), time, id),
                        (),
                    )?;
                }
                Encoded::AppendMessage {
                    conversation,
                    no,
                    json,
                } => {
                    messages.insert((conversation.as_str(), *no), json.as_slice())?;
                }
                Encoded::AppendEvents {
                    conversation,
                    last,
                    chunk,
                } => {
                    events.insert((conversation.as_str(), *last), chunk.as_slice())?;
                }
                Encoded::PutCheckpoint { conversation, data } => {
                    checkpoints.insert(conversation.as_str(), data.as_ref())?;
                }
                Encoded::PutIdempotencyKey { key, json } => {
                    idempotency.insert(key.as_str(), json.as_slice())?;
                }
                Encoded::DeleteConversation { conversation } => {
                    let id = conversation.as_str();
                    if unindex(&conversations, &mut by_owner, &mut by_assistant, id)? {
                        conversations.remove(id)?;
                    }
                    messages.retain_in((id, 0u64)..=(id, u64::MAX), |_, _| false)?;
                    events.retain_in((id, 0u64)..=(id, u64::MAX), |_, _| false)?;
                    checkpoints.remove(id)?;
                }
            }
        }
    }
    Ok(())
}

/// Removes the index keys of the conversation's current record. Returns whether a record exists.
fn unindex(
    conversations: &Table<&str, &[u8]>,
    by_owner: &mut Table<(&str, u64, &str), ()>,
    by_assistant: &mut Table<(&str, &str, u64, &str), ()>,
    id: &str,
) -> Result<bool, StoreError> {
    let previous = match conversations.get(id)? {
        None => return Ok(false),
        Some(guard) => serde_json::from_slice::<IndexFields>(guard.value()),
    };
    match previous {
        Ok(old) => {
            let time = inverted_time(old.updated_at);
            by_owner.remove((old.owner.as_str(), time, id))?;
            by_assistant.remove((old.owner.as_str(), old.assistant.as_str(), time, id))?;
        }
        Err(e) => {
            // Listings skip index keys that do not match their record, so a leftover key is
            // harmless; a new record (if any) replaces the unreadable one.
            tracing::warn!(conversation = id, error = %e, "replacing an unreadable conversation record");
        }
    }
    Ok(true)
}
