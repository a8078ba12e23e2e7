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
//!   queued (up to [`MAX_GROUP_BATCHES`] / [`MAX_GROUP_OPS`]), applied with at most one
//!   statement per table (multi-row, `unnest`) and committed once, all in ONE round trip
//!   (`BEGIN`, statements, `COMMIT` pipelined: `group.rs`).
//! - **Retried where safe.** Every group is idempotent (upserts of whole rows and deletes, applied
//!   in op order), so after a connection loss, a server restart, a serialization failure or a
//!   statement timeout the writer reconnects and applies the same group again, even when the
//!   outcome of the lost `COMMIT` is unknown. It keeps trying for [`RETRY_FOR`]; then the group
//!   and every batch queued behind it are answered with [`StoreError::Unavailable`] (a later
//!   batch never succeeds while an earlier one failed), and the writer goes on with new batches,
//!   each tried once (no waiting out the retries again) until one commits or a probe succeeds:
//!   the store recovers by itself when the database comes back.
//! - **Bounded waits.** A silent database (no answer, no reset) cannot hold the writer: a probe
//!   gives up after 5 s, an attempt at a group after 60 s (then handled as a lost connection).
//! - **Probed while idle.** After [`PROBE_EVERY`] without a batch the writer runs `SELECT 1`
//!   (reconnecting if needed); a failure marks the store unavailable (`/healthz` says
//!   `degraded`), a success clears it, so an outage shows without any write.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_postgres::{Client, NoTls};

use super::group::{pipeline, step, Group, Statements};
use super::{pg_error, Op};
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
/// While no batch arrives, the writer checks the database this often (`SELECT 1` on its
/// connection, or a reconnect), so that `/healthz` shows an outage, and the recovery from one,
/// without waiting for a write.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
/// A probe that gets no answer in this long counts as a failure.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// One attempt at a group (connect, statements, commit) that takes longer than this is
/// abandoned (its connection dropped, which rolls it back unless COMMIT already ran) and
/// retried like a lost connection: the database went silent. Generous: statements have their
/// own `statement_timeout` on the server.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);

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
                failing: false,
                fences,
            };
            runtime.block_on(async move {
                loop {
                    match tokio::time::timeout(PROBE_EVERY, queue.next_group()).await {
                        Ok(Some(group)) => writer.commit_group(group, &queue).await,
                        Ok(None) => break,
                        // Idle for a while: check the database (health, and the next write
                        // finds a live connection).
                        Err(_) => writer.probe().await,
                    }
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
    /// The last group failed (its waiters got the error): later groups get one attempt each,
    /// not [`RETRY_FOR`] of retries, until a commit or a probe succeeds.
    failing: bool,
    /// Cluster mode's fence (`lease.rs`): batches of conversations this node lost are refused.
    fences: Arc<super::lease::Fences>,
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
        // While the database is known to be down, answer at once instead of making every
        // request wait out the retries; the probe notices when it is back.
        let deadline = if self.failing {
            started
        } else {
            started + RETRY_FOR
        };
        let mut pause = Duration::from_millis(20);
        let result = loop {
            let error = match bounded(ATTEMPT_TIMEOUT, self.try_commit(&group)).await {
                Ok(refused) => break Ok(refused),
                Err(e) => e,
            };
            // After any failure the connection may still be inside the group's transaction
            // (a request that was never sent, so no COMMIT or ROLLBACK followed), or broken
            // without saying so: drop it (which rolls back) and start over on a fresh one.
            self.client = None;
            if !retryable(&error) || Instant::now() + pause > deadline {
                break Err(error);
            }
            tracing::warn!(error = %error, "postgres commit failed; retrying");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        };
        let m = &self.metrics;
        match result {
            Ok(mut refused) => {
                self.failing = false;
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
                // A database that cannot be reached is "storage unavailable"; anything else
                // (a constraint, bad data) is this group's own problem and says nothing about
                // the store's health.
                let error = if retryable(&error) {
                    self.failing = true;
                    m.unavailable.store(true, Ordering::Relaxed);
                    StoreError::Unavailable(Arc::new(error))
                } else {
                    error
                };
                tracing::error!(error = %error, "postgres commit failed; its batches and those queued behind them get the error");
                drop(ops);
                for batch in group.into_iter().chain(queue.drain()) {
                    batch.answer(Err(error.clone()));
                }
            }
        }
    }

    /// Checks the database while idle: sets or clears "unavailable" (what `/healthz` shows)
    /// and, once it answers again, lets later groups be retried as usual.
    async fn probe(&mut self) {
        let check = async {
            let (client, _) = self.client().await?;
            client.simple_query("SELECT 1").await.map_err(pg_error)
        };
        let result = bounded(PROBE_TIMEOUT, check).await;
        let m = &self.metrics;
        match result {
            Ok(_) => {
                if self.failing || m.unavailable.load(Ordering::Relaxed) {
                    tracing::info!("postgres is reachable again; the store writes again");
                }
                self.failing = false;
                m.unavailable.store(false, Ordering::Relaxed);
            }
            Err(error) => {
                if !m.unavailable.load(Ordering::Relaxed) {
                    tracing::warn!(error = %error, "postgres is not reachable; the store cannot write");
                }
                self.client = None;
                m.unavailable.store(true, Ordering::Relaxed);
            }
        }
    }

    async fn client(&mut self) -> Result<&mut (Client, Statements), StoreError> {
        if self.client.is_none() {
            let (client, connection) = self.config.connect(NoTls).await.map_err(pg_error)?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "postgres writer connection ended");
                }
            });
            let stmts = Statements::prepare(&client).await.map_err(pg_error)?;
            self.client = Some((client, stmts));
        }
        self.client.as_mut().ok_or_else(|| StoreError::Closed)
    }

    /// One transaction for the whole group, in one round trip: `BEGIN`, at most one statement
    /// per table (`group.rs`), `COMMIT`, pipelined. Answers the batches the cluster fence
    /// refused (they stored nothing).
    ///
    /// In cluster mode the fence's answer decides in Rust what the group writes, so `BEGIN`
    /// and the fence check (`lease::check`, which locks the lease rows for the transaction)
    /// are awaited first; the statements of the batches kept and `COMMIT` are pipelined after
    /// that decision. `COMMIT` is never sent before it. On a single node there is no fence
    /// and no extra round trip.
    async fn try_commit(&mut self, group: &[Batch]) -> Result<HashMap<usize, String>, StoreError> {
        let fences = self.fences.clone();
        let (client, stmts) = self.client().await?;
        let fenced = !fences.is_empty();
        let mut refused = HashMap::new();
        if fenced {
            client.batch_execute("BEGIN").await.map_err(pg_error)?;
            refused = super::lease::check(client, &fences, group.iter().map(|b| b.ops.as_slice()))
                .await?;
        }
        let ops: Vec<&Op> = group
            .iter()
            .enumerate()
            .filter(|(i, _)| !refused.contains_key(i))
            .flat_map(|(_, b)| b.ops.iter())
            .collect();
        let columns = Group::of(&ops).columns();
        let mut steps = Vec::new();
        if !fenced {
            steps.push(step(client.batch_execute("BEGIN")));
        }
        columns.steps(client, stmts, &mut steps);
        steps.push(step(client.batch_execute("COMMIT")));
        pipeline(steps).await.map_err(pg_error)?;
        Ok(refused)
    }
}

/// `f`, or a retryable time-out error after `limit`: a silent network (no reset, no answer)
/// must not hold the writer forever.
async fn bounded<T>(
    limit: Duration,
    f: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(limit, f).await {
        Ok(result) => result,
        Err(_) => Err(StoreError::db(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer from PostgreSQL within {} s", limit.as_secs()),
        ))),
    }
}

/// Whether an error may go away by itself (connection lost, server restarting or shutting
/// down, serialization failure, deadlock, statement timeout): safe to retry, since a group is
/// idempotent.
pub(super) fn retryable(error: &StoreError) -> bool {
    let StoreError::Db { source } = error else {
        return false;
    };
    let pg = match source.downcast_ref::<super::PgError>() {
        Some(e) => &e.source,
        None => match source.downcast_ref::<tokio_postgres::Error>() {
            Some(e) => e,
            // `bounded`'s time-out: the outcome is unknown, and a group may be applied again.
            None => {
                return source
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::TimedOut)
            }
        },
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
