//! The write path: the bounded queue, the single writer thread and group commit.
//!
//! Invariants:
//! - **One writer.** Only the thread started by [`spawn`] begins write transactions.
//! - **Ack after durable commit.** A waiter is answered only after the commit of the transaction
//!   holding its whole batch returned (`Durability::Immediate`: fsync done), or with the error
//!   that prevented it. A batch never spans two transactions.
//! - **FIFO.** Batches leave the queue in the order they entered it and groups are committed
//!   one after another, so a successful answer implies every earlier batch was resolved.
//! - **Recovery.** A failed group is retried, after reopening the database ([`DbHandle`]), a
//!   few times within [`RETRY_BACKOFF`]; ops are idempotent (puts by key, range deletes), so a
//!   retry of a commit whose outcome was unknown stores the same state. If it still fails its
//!   waiters get [`StoreError::Unavailable`] (never success: nothing acknowledged is lost) and
//!   the store is *unavailable*: each later group is tried once (a success ends it) and, while
//!   the queue is idle, a small probe write every [`PROBE_EVERY`] finds out when writing works
//!   again, so `/readyz` recovers without traffic.
//! - **Bounded.** The queue refuses `push_now` above its hard cap and makes `push_when_room`
//!   wait above its soft cap; a group is at most [`MAX_GROUP_BATCHES`] batches or
//!   [`MAX_GROUP_OPS`] ops (a single larger batch is still taken whole).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use redb::{Durability, ReadableTable, Table, TableDefinition, WriteTransaction};
use tokio::sync::Notify;

use super::encode::Encoded;
use super::handle::DbHandle;
use super::tables::{
    inverted_time, IndexFields, WriteKeys, BY_OWNER, BY_OWNER_ASSISTANT, CHECKPOINTS,
    CONVERSATIONS, EVENTS, IDEMPOTENCY, MESSAGES,
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

/// Waits between the retries of a failed group while the store was writable.
pub const RETRY_BACKOFF: [Duration; 3] = [
    Duration::from_millis(50),
    Duration::from_millis(200),
    Duration::from_millis(500),
];
/// While unavailable and idle, the writer probes this often.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

/// The probe's one key (a write that reaches the disk like any other commit).
const PROBE: TableDefinition<&str, u64> = TableDefinition::new("probe");

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

pub(super) use crate::store::WriterMetrics as Metrics;

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

    /// Blocks for the first batch (at most `idle` when given), then takes every batch already
    /// queued up to the group caps.
    pub(super) fn next_group(&self, idle: Option<Duration>) -> Next {
        let mut state = self.state.lock();
        while state.batches.is_empty() && !state.closed {
            match idle {
                None => self.arrived.wait(&mut state),
                Some(idle) => {
                    if self.arrived.wait_for(&mut state, idle).timed_out() {
                        if state.batches.is_empty() && !state.closed {
                            return Next::Idle;
                        }
                        break;
                    }
                }
            }
        }
        let Some(first) = state.batches.pop_front() else {
            return Next::Closed;
        };
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
        Next::Group(group)
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

/// What [`Queue::next_group`] found.
pub(super) enum Next {
    Group(Vec<Batch>),
    /// Nothing arrived within the idle wait.
    Idle,
    /// Closed and empty: the writer exits.
    Closed,
}

#[cfg(test)]
impl Next {
    /// The group; panics on `Idle` or `Closed` (tests of the queue).
    pub(super) fn unwrap(self) -> Vec<Batch> {
        match self {
            Next::Group(group) => group,
            Next::Idle => panic!("no group: idle"),
            Next::Closed => panic!("no group: closed"),
        }
    }
}

/// Starts the writer thread.
pub(super) fn spawn(
    db: Arc<DbHandle>,
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
                needs_reopen: false,
            };
            tracing::debug!("store writer started");
            loop {
                let idle = writer.unavailable().then_some(PROBE_EVERY);
                match queue.next_group(idle) {
                    Next::Group(group) => writer.commit_group(group),
                    Next::Idle => writer.probe(),
                    Next::Closed => break,
                }
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
    db: Arc<DbHandle>,
    metrics: Arc<Metrics>,
    /// Set after a failed attempt: redb latches I/O failures until the database is reopened.
    needs_reopen: bool,
}

impl Writer {
    fn unavailable(&self) -> bool {
        self.metrics.unavailable.load(Ordering::Relaxed)
    }

    fn commit_group(&mut self, group: Vec<Batch>) {
        let ops: usize = group.iter().map(|b| b.ops.len()).sum();
        if ops == 0 {
            // Only flush markers: everything before them is already resolved (FIFO).
            for batch in group {
                batch.answer(Ok(()));
            }
            return;
        }
        // Retry a transient fault quietly; once unavailable, one attempt per group (fail fast).
        let retries = if self.unavailable() {
            &[][..]
        } else {
            &RETRY_BACKOFF[..]
        };
        let mut retry = retries.iter();
        loop {
            let started = Instant::now();
            match self.attempt(|txn| apply_group(txn, &group)) {
                Ok(()) => {
                    self.landed(&group, ops, started);
                    for batch in group {
                        batch.answer(Ok(()));
                    }
                    return;
                }
                Err(error) => match retry.next() {
                    Some(wait) => {
                        tracing::warn!(%error, ops, batches = group.len(), "store commit failed; retrying");
                        std::thread::sleep(*wait);
                    }
                    None => {
                        tracing::error!(
                            %error,
                            ops,
                            batches = group.len(),
                            "store cannot write; its waiters get storage_unavailable"
                        );
                        self.metrics.unavailable.store(true, Ordering::Relaxed);
                        answer_all(group, &StoreError::Unavailable(Arc::new(error)));
                        return;
                    }
                },
            }
        }
    }

    fn landed(&self, group: &[Batch], ops: usize, started: Instant) {
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let m = &self.metrics;
        if m.unavailable.swap(false, Ordering::Relaxed) {
            tracing::info!("store writes again");
        }
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
    }

    /// While unavailable and idle: can a small commit be made now?
    fn probe(&mut self) {
        let result = self.attempt(|txn| {
            let mut probe = txn.open_table(PROBE)?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            probe.insert("last", now)?;
            Ok(())
        });
        match result {
            Ok(()) => {
                self.metrics.unavailable.store(false, Ordering::Relaxed);
                tracing::info!("store writes again (probe)");
            }
            Err(error) => tracing::debug!(%error, "store probe failed; still unavailable"),
        }
    }

    /// One write transaction (reopening the database first if an earlier attempt failed):
    /// `apply`, then a durable commit. A failure counts and marks the database for reopening.
    fn attempt(
        &mut self,
        apply: impl FnOnce(&WriteTransaction) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let result = self.try_attempt(apply);
        if result.is_err() {
            self.metrics.failed_commits.fetch_add(1, Ordering::Relaxed);
            // Reopen at once, not at the next attempt: until then reads fail too (redb latches).
            self.needs_reopen = self.db.can_reopen();
            if self.needs_reopen {
                self.reopen();
            }
        }
        result
    }

    /// Reopens the database now; on failure the next attempt tries again.
    fn reopen(&mut self) {
        self.metrics.reopens.fetch_add(1, Ordering::Relaxed);
        match self.db.reopen() {
            Ok(()) => self.needs_reopen = false,
            Err(error) => tracing::warn!(%error, "cannot reopen the store yet"),
        }
    }

    fn try_attempt(
        &mut self,
        apply: impl FnOnce(&WriteTransaction) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        if self.needs_reopen {
            self.metrics.reopens.fetch_add(1, Ordering::Relaxed);
            self.db.reopen()?;
            self.needs_reopen = false;
        }
        let db = self.db.get()?;
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        // Dropping `txn` on an error aborts it; nothing of the group is committed.
        apply(&txn)?;
        txn.commit()?;
        Ok(())
    }
}

fn answer_all(group: Vec<Batch>, error: &StoreError) {
    for batch in group {
        batch.answer(Err(error.clone()));
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
    let mut keys = WriteKeys::open(txn)?;

    for batch in group {
        for op in &batch.ops {
            match op {
                Encoded::PutConversation { id, index, json } => {
                    let id = id.as_str();
                    let key = keys.key(id)?;
                    if !unindex(&conversations, &mut by_owner, &mut by_assistant, id, &key)? {
                        keys.record_created(id, &key)?;
                    }
                    conversations.insert(key.as_ref(), json.as_slice())?;
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
                    let key = keys.key(conversation)?;
                    messages.insert((key.as_ref(), *no), json.as_slice())?;
                }
                Encoded::AppendEvents {
                    conversation,
                    last,
                    chunk,
                } => {
                    let key = keys.key(conversation)?;
                    events.insert((key.as_ref(), *last), chunk.as_slice())?;
                }
                Encoded::PutCheckpoint { conversation, data } => {
                    let key = keys.key(conversation)?;
                    checkpoints.insert(key.as_ref(), data.as_ref())?;
                }
                Encoded::PutIdempotencyKey { key, json } => {
                    idempotency.insert(key.as_str(), json.as_slice())?;
                }
                Encoded::DeleteExpiredIdempotencyKeys { now_ms } => {
                    // A scan of the keys table (one day of keys at most); an unreadable
                    // record is deleted too (reads report it as corrupt forever otherwise).
                    idempotency.retain(|_, json| {
                        serde_json::from_slice::<crate::store::IdempotencyRecord>(json)
                            .is_ok_and(|r| r.expires_at_ms > *now_ms)
                    })?;
                }
                Encoded::DeleteConversation { conversation } => {
                    let id = conversation.as_str();
                    let Some(key) = keys.remove(id)? else {
                        continue;
                    };
                    if unindex(&conversations, &mut by_owner, &mut by_assistant, id, &key)? {
                        conversations.remove(key.as_ref())?;
                    }
                    let k = key.as_ref();
                    messages.retain_in((k, 0u64)..=(k, u64::MAX), |_, _| false)?;
                    events.retain_in((k, 0u64)..=(k, u64::MAX), |_, _| false)?;
                    checkpoints.remove(k)?;
                }
            }
        }
    }
    Ok(())
}

/// Removes the index keys of conversation `id`'s current record (stored under `key`). Returns
/// whether a record exists.
fn unindex(
    conversations: &Table<&str, &[u8]>,
    by_owner: &mut Table<(&str, u64, &str), ()>,
    by_assistant: &mut Table<(&str, &str, u64, &str), ()>,
    id: &str,
    key: &str,
) -> Result<bool, StoreError> {
    let previous = match conversations.get(key)? {
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
