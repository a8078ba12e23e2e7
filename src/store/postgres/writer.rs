//! The write path: a bounded FIFO queue and one writer thread that commits groups of batches,
//! each group in ONE PostgreSQL transaction (`synchronous_commit = on`), then answers them.
//!
//! Invariants:
//! - **One writer per store.** A dedicated thread (`parley-store-writer`, as for redb, with its own
//!   single-threaded tokio runtime) owns one connection and opens every write transaction, so
//!   writes never wait for the actix workers and `shutdown` can join it like the redb writer.
//! - **Ack after durable commit.** A batch is answered `Ok` only after `COMMIT` of the
//!   transaction holding all of its ops returned; the connection runs with
//!   `synchronous_commit = on`, so the commit record was flushed to disk first.
//! - **FIFO, group commit.** Batches leave the queue in order; a group is every batch already
//!   queued (up to [`MAX_GROUP_BATCHES`] / [`MAX_GROUP_OPS`]), applied with a few multi-row
//!   statements (`unnest`), committed once.
//! - **Retried where safe.** Every group is idempotent (upserts of whole rows and deletes, applied
//!   in op order), so after a connection loss, a server restart, a serialization failure or a
//!   statement timeout the writer reconnects and applies the same group again, even when the
//!   outcome of the lost `COMMIT` is unknown. It keeps trying for [`RETRY_FOR`]; then the group
//!   and every batch queued behind it are answered with the error (a later batch never
//!   succeeds while an earlier one failed), and the writer goes on with new batches: the store
//!   recovers by itself when the database comes back.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_postgres::{Client, NoTls, Statement, Transaction};

use super::Op;
use crate::store::{AckSender, StoreError};

/// `enqueue`/`write` wait while this many batches are queued.
pub const QUEUE_SOFT_CAP: usize = 1024;
/// `submit` refuses a batch while this many batches are queued.
pub const QUEUE_HARD_CAP: usize = 16 * 1024;
/// At most this many batches are committed together.
pub const MAX_GROUP_BATCHES: usize = 1024;
/// At most this many ops are committed together (a single larger batch is taken whole).
pub const MAX_GROUP_OPS: usize = 4096;
/// How long a group is retried while the database is unreachable before its waiters get the
/// error.
pub const RETRY_FOR: Duration = Duration::from_secs(5);

pub(super) struct Batch {
    pub ops: Vec<Op>,
    pub done: Option<AckSender>,
}

impl Batch {
    fn answer(self, result: Result<(), StoreError>) {
        if let Some(done) = self.done {
            let _ = done.send(result);
        }
    }
}

pub(super) use crate::store::WriterMetrics as Metrics;

struct QueueState {
    batches: VecDeque<Batch>,
    closed: bool,
}

/// The bounded FIFO between every producer and the writer thread.
pub(super) struct Queue {
    state: Mutex<QueueState>,
    arrived: Notify,
    room: Notify,
}

impl Queue {
    pub(super) fn new() -> Queue {
        Queue {
            state: Mutex::new(QueueState {
                batches: VecDeque::new(),
                closed: false,
            }),
            arrived: Notify::new(),
            room: Notify::new(),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.state.lock().batches.len()
    }

    /// Appends now, or refuses (closed, or at the hard cap). Never waits.
    pub(super) fn push_now(&self, batch: Batch) -> Result<(), StoreError> {
        self.try_push(batch, QUEUE_HARD_CAP).map_err(|(_, e)| e)
    }

    /// Waits while the queue is at its soft cap, then appends.
    pub(super) async fn push_when_room(&self, mut batch: Batch) -> Result<(), StoreError> {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.try_push(batch, QUEUE_SOFT_CAP) {
                Ok(()) => return Ok(()),
                Err((_, StoreError::Closed)) => return Err(StoreError::Closed),
                Err((back, _)) => batch = back,
            }
            room.await;
        }
    }

    fn try_push(&self, batch: Batch, cap: usize) -> Result<(), (Batch, StoreError)> {
        let mut state = self.state.lock();
        if state.closed {
            return Err((batch, StoreError::Closed));
        }
        if state.batches.len() >= cap {
            return Err((batch, StoreError::QueueFull { waiting: cap }));
        }
        state.batches.push_back(batch);
        drop(state);
        self.arrived.notify_one();
        Ok(())
    }

    pub(super) fn close(&self) {
        self.state.lock().closed = true;
        self.arrived.notify_one();
        self.room.notify_waiters();
    }

    /// Waits for the first batch, then takes every batch already queued up to the group caps.
    /// `None` once closed and empty.
    async fn next_group(&self) -> Option<Vec<Batch>> {
        loop {
            let arrived = self.arrived.notified();
            {
                let mut state = self.state.lock();
                if let Some(first) = state.batches.pop_front() {
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
                    return Some(group);
                }
                if state.closed {
                    return None;
                }
            }
            arrived.await;
        }
    }

    /// Every batch queued right now (answered with a failure of the batches before them).
    fn drain(&self) -> Vec<Batch> {
        let out: Vec<Batch> = self.state.lock().batches.drain(..).collect();
        self.room.notify_waiters();
        out
    }

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
        self.room.notify_waiters();
    }
}

struct ExitGuard(Arc<Queue>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        self.0.abandon();
    }
}

/// Starts the writer thread; it connects on its own (and reconnects after any loss).
pub(super) fn spawn(
    config: tokio_postgres::Config,
    queue: Arc<Queue>,
    metrics: Arc<Metrics>,
    fences: Arc<super::lease::Fences>,
) -> Result<JoinHandle<()>, StoreError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StoreError::io("cannot start the postgres writer runtime", e))?;
    std::thread::Builder::new()
        .name("parley-store-writer".to_owned())
        .spawn(move || {
            let _exit = ExitGuard(queue.clone());
            let mut writer = Writer {
                config,
                client: None,
                metrics,
                fences,
            };
            runtime.block_on(async move {
                while let Some(group) = queue.next_group().await {
                    writer.commit_group(group, &queue).await;
                }
            });
            tracing::debug!("postgres store writer stopped");
        })
        .map_err(|e| StoreError::io("cannot start the postgres writer thread", e))
}

struct Writer {
    config: tokio_postgres::Config,
    client: Option<(Client, Statements)>,
    metrics: Arc<Metrics>,
    /// Cluster mode's fence (`lease.rs`): batches of conversations this node lost are refused.
    fences: Arc<super::lease::Fences>,
}

/// The writer's prepared statements, per connection.
#[derive(Default)]
struct Statements(HashMap<&'static str, Statement>);

impl Statements {
    async fn get(
        &mut self,
        tx: &Transaction<'_>,
        sql: &'static str,
    ) -> Result<Statement, StoreError> {
        if let Some(stmt) = self.0.get(sql) {
            return Ok(stmt.clone());
        }
        let stmt = tx.prepare(sql).await.map_err(StoreError::db)?;
        self.0.insert(sql, stmt.clone());
        Ok(stmt)
    }
}

impl Writer {
    async fn commit_group(&mut self, group: Vec<Batch>, queue: &Queue) {
        let ops: Vec<&Op> = group.iter().flat_map(|b| b.ops.iter()).collect();
        if ops.is_empty() {
            // Only flush markers: everything queued before them is already resolved (FIFO).
            for batch in group {
                batch.answer(Ok(()));
            }
            return;
        }
        let started = Instant::now();
        let deadline = started + RETRY_FOR;
        let mut pause = Duration::from_millis(20);
        let result = loop {
            let error = match self.try_commit(&group).await {
                Ok(refused) => break Ok(refused),
                Err(e) => e,
            };
            if self.client.as_ref().is_some_and(|(c, _)| c.is_closed()) {
                self.client = None;
            }
            if !retryable(&error) || Instant::now() + pause > deadline {
                break Err(error);
            }
            tracing::warn!(error = %error, "postgres commit failed; retrying");
            // A statement that failed inside a transaction leaves nothing behind, but a broken
            // connection may not say so: start over on a fresh one.
            self.client = None;
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        };
        let m = &self.metrics;
        match result {
            Ok(mut refused) => {
                m.commits.fetch_add(1, Ordering::Relaxed);
                m.unavailable.store(false, Ordering::Relaxed);
                m.ops_committed
                    .fetch_add(ops.len() as u64, Ordering::Relaxed);
                m.batches_committed
                    .fetch_add(group.len() as u64, Ordering::Relaxed);
                m.last_group_ops.store(ops.len() as u64, Ordering::Relaxed);
                m.last_group_batches
                    .store(group.len() as u64, Ordering::Relaxed);
                m.commit_micros
                    .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                drop(ops);
                for (i, batch) in group.into_iter().enumerate() {
                    // Cluster fence: a refused batch stored nothing (`lease.rs`).
                    batch.answer(match refused.remove(&i) {
                        Some(conversation) => Err(StoreError::Fenced { conversation }),
                        None => Ok(()),
                    });
                }
            }
            Err(error) => {
                m.failed_commits.fetch_add(1, Ordering::Relaxed);
                m.unavailable.store(true, Ordering::Relaxed);
                tracing::error!(error = %error, "postgres commit failed; its batches and those queued behind them get the error");
                drop(ops);
                for batch in group.into_iter().chain(queue.drain()) {
                    batch.answer(Err(error.clone()));
                }
            }
        }
    }

    async fn client(&mut self) -> Result<&mut (Client, Statements), StoreError> {
        if self.client.is_none() {
            let (client, connection) = self.config.connect(NoTls).await.map_err(StoreError::db)?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "postgres writer connection ended");
                }
            });
            self.client = Some((client, Statements::default()));
        }
        self.client.as_mut().ok_or_else(|| StoreError::Closed)
    }

    /// Applies the group in one transaction; answers the batches the cluster fence refused.
    async fn try_commit(&mut self, group: &[Batch]) -> Result<HashMap<usize, String>, StoreError> {
        let fences = self.fences.clone();
        let (client, stmts) = self.client().await?;
        let tx = client.transaction().await.map_err(StoreError::db)?;
        // The cluster hook: which batches this node may no longer write (no statement on a
        // single node).
        let refused =
            super::lease::check(&tx, &fences, group.iter().map(|b| b.ops.as_slice())).await?;
        let ops = group
            .iter()
            .enumerate()
            .filter(|(i, _)| !refused.contains_key(i))
            .flat_map(|(_, b)| b.ops.iter());
        let mut pending = Pending::default();
        for op in ops {
            match op {
                Op::Delete { conversation } => {
                    pending.apply(&tx, stmts).await?;
                    for sql in [
                        "DELETE FROM conversations WHERE id = $1",
                        "DELETE FROM messages WHERE conversation = $1",
                        "DELETE FROM events WHERE conversation = $1",
                        "DELETE FROM checkpoints WHERE conversation = $1",
                    ] {
                        let stmt = stmts.get(&tx, sql).await?;
                        tx.execute(&stmt, &[conversation])
                            .await
                            .map_err(StoreError::db)?;
                    }
                }
                other => pending.add(other),
            }
        }
        pending.apply(&tx, stmts).await?;
        tx.commit().await.map_err(StoreError::db)?;
        Ok(refused)
    }
}

/// The columns of a multi-row upsert of conversations.
struct ConversationColumns<'a> {
    id: Vec<&'a str>,
    owner: Vec<&'a str>,
    assistant: Vec<&'a str>,
    updated_at: Vec<i64>,
    status: Vec<&'a str>,
    record: Vec<&'a str>,
}

/// Rows waiting to be written by one multi-row statement per table; the last write of a key
/// wins, as if the ops had been applied one by one.
#[derive(Default)]
struct Pending<'a> {
    conversations: HashMap<&'a str, &'a Op>,
    messages: HashMap<(&'a str, i64), &'a str>,
    events: HashMap<(&'a str, i64), &'a Bytes>,
    checkpoints: HashMap<&'a str, &'a Bytes>,
    keys: HashMap<&'a str, (i64, &'a str)>,
}

impl<'a> Pending<'a> {
    fn add(&mut self, op: &'a Op) {
        match op {
            Op::Conversation { id, .. } => {
                self.conversations.insert(id, op);
            }
            Op::Message {
                conversation,
                no,
                record,
            } => {
                self.messages.insert((conversation, *no), record);
            }
            Op::Events {
                conversation,
                first_seq,
                events,
            } => {
                for (i, json) in events.iter().enumerate() {
                    self.events
                        .insert((conversation, first_seq + i as i64), json);
                }
            }
            Op::Checkpoint { conversation, data } => {
                self.checkpoints.insert(conversation, data);
            }
            Op::IdempotencyKey {
                key,
                expires_at,
                record,
            } => {
                self.keys.insert(key, (*expires_at, record));
            }
            Op::Delete { .. } => {}
        }
    }

    async fn apply(
        &mut self,
        tx: &Transaction<'_>,
        stmts: &mut Statements,
    ) -> Result<(), StoreError> {
        self.put_conversations(tx, stmts).await?;
        self.put_messages(tx, stmts).await?;
        self.put_events(tx, stmts).await?;
        self.put_checkpoints(tx, stmts).await?;
        self.put_keys(tx, stmts).await
    }

    async fn put_conversations(
        &mut self,
        tx: &Transaction<'_>,
        stmts: &mut Statements,
    ) -> Result<(), StoreError> {
        if !self.conversations.is_empty() {
            let n = self.conversations.len();
            let mut cols = ConversationColumns {
                id: Vec::with_capacity(n),
                owner: Vec::with_capacity(n),
                assistant: Vec::with_capacity(n),
                updated_at: Vec::with_capacity(n),
                status: Vec::with_capacity(n),
                record: Vec::with_capacity(n),
            };
            for op in self.conversations.values() {
                if let Op::Conversation {
                    id,
                    owner,
                    assistant,
                    updated_at,
                    status,
                    record,
                } = op
                {
                    cols.id.push(id);
                    cols.owner.push(owner);
                    cols.assistant.push(assistant);
                    cols.updated_at.push(*updated_at);
                    cols.status.push(status);
                    cols.record.push(record);
                }
            }
            let stmt = stmts
                .get(
                    tx,
                    "INSERT INTO conversations (id, owner, assistant, updated_at, status, record)
                     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[], $6::text[])
                     ON CONFLICT (id) DO UPDATE SET owner = excluded.owner,
                       assistant = excluded.assistant, updated_at = excluded.updated_at,
                       status = excluded.status, record = excluded.record",
                )
                .await?;
            tx.execute(
                &stmt,
                &[
                    &cols.id,
                    &cols.owner,
                    &cols.assistant,
                    &cols.updated_at,
                    &cols.status,
                    &cols.record,
                ],
            )
            .await
            .map_err(StoreError::db)?;
            self.conversations.clear();
        }
        Ok(())
    }

    async fn put_messages(
        &mut self,
        tx: &Transaction<'_>,
        stmts: &mut Statements,
    ) -> Result<(), StoreError> {
        if !self.messages.is_empty() {
            let mut cols: (Vec<&str>, Vec<i64>, Vec<&str>) = Default::default();
            for ((conversation, no), record) in self.messages.drain() {
                cols.0.push(conversation);
                cols.1.push(no);
                cols.2.push(record);
            }
            let stmt = stmts
                .get(
                    tx,
                    "INSERT INTO messages (conversation, no, record)
                     SELECT * FROM unnest($1::text[], $2::int8[], $3::text[])
                     ON CONFLICT (conversation, no) DO UPDATE SET record = excluded.record",
                )
                .await?;
            tx.execute(&stmt, &[&cols.0, &cols.1, &cols.2])
                .await
                .map_err(StoreError::db)?;
        }
        Ok(())
    }

    async fn put_events(
        &mut self,
        tx: &Transaction<'_>,
        stmts: &mut Statements,
    ) -> Result<(), StoreError> {
        if !self.events.is_empty() {
            let mut cols: (Vec<&str>, Vec<i64>, Vec<&[u8]>) = Default::default();
            for ((conversation, seq), json) in self.events.drain() {
                cols.0.push(conversation);
                cols.1.push(seq);
                cols.2.push(json.as_ref());
            }
            let stmt = stmts
                .get(
                    tx,
                    "INSERT INTO events (conversation, seq, json)
                     SELECT * FROM unnest($1::text[], $2::int8[], $3::bytea[])
                     ON CONFLICT (conversation, seq) DO UPDATE SET json = excluded.json",
                )
                .await?;
            tx.execute(&stmt, &[&cols.0, &cols.1, &cols.2])
                .await
                .map_err(StoreError::db)?;
        }
        Ok(())
    }

    async fn put_checkpoints(
        &mut self,
        tx: &Transaction<'_>,
        stmts: &mut Statements,
    ) -> Result<(), StoreError> {
        if !self.checkpoints.is_empty() {
            let mut cols: (Vec<&str>, Vec<&[u8]>) = Default::default();
            for (conversation, data) in self.checkpoints.drain() {
                cols.0.push(conversation);
                cols.1.push(data.as_ref());
            }
            let stmt = stmts
                .get(
                    tx,
                    "INSERT INTO checkpoints (conversation, data)
                     SELECT * FROM unnest($1::text[], $2::bytea[])
                     ON CONFLICT (conversation) DO UPDATE SET data = excluded.data",
                )
                .await?;
            tx.execute(&stmt, &[&cols.0, &cols.1])
                .await
                .map_err(StoreError::db)?;
        }
        Ok(())
    }
}

impl Pending<'_> {
    /// Idempotency keys, in the same transaction as what they guard.
    async fn put_keys(
        &mut self,
        tx: &Transaction<'_>,
        stmts: &mut Statements,
    ) -> Result<(), StoreError> {
        if self.keys.is_empty() {
            return Ok(());
        }
        let mut cols: (Vec<&str>, Vec<i64>, Vec<&str>) = Default::default();
        for (key, (expires_at, record)) in self.keys.drain() {
            cols.0.push(key);
            cols.1.push(expires_at);
            cols.2.push(record);
        }
        let stmt = stmts
            .get(
                tx,
                "INSERT INTO idempotency_keys (key, expires_at, record)
                 SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[])
                 ON CONFLICT (key) DO UPDATE
                 SET expires_at = excluded.expires_at, record = excluded.record",
            )
            .await?;
        tx.execute(&stmt, &[&cols.0, &cols.1, &cols.2])
            .await
            .map_err(StoreError::db)?;
        Ok(())
    }
}

/// Whether an error may go away by itself (connection lost, server restarting or shutting
/// down, serialization failure, deadlock, statement timeout): safe to retry, since a group is
/// idempotent.
pub(super) fn retryable(error: &StoreError) -> bool {
    let StoreError::Db { source } = error else {
        return false;
    };
    let Some(pg) = source.downcast_ref::<tokio_postgres::Error>() else {
        return false;
    };
    match pg.code() {
        // No SQLSTATE: an I/O error, a closed connection, a failed connect.
        None => true,
        Some(code) => {
            let c = code.code();
            c.starts_with("08") // connection exception
                || c.starts_with("57") // operator intervention: shutdown, cannot connect now, canceled
                || c.starts_with("53") // insufficient resources (too many connections)
                || c == "40001" // serialization failure
                || c == "40P01" // deadlock detected
        }
    }
}
