//! The write path: a bounded FIFO queue and one writer thread that commits groups of batches,
//! each group in ONE PostgreSQL transaction (`synchronous_commit = on`), then answers them.
//! Up to `writer_connections` groups are in flight at once, each on its own connection
//! (`conn.rs`), so one group's statements run while another waits for its WAL flush.
//!
//! Invariants:
//! - **One writer per store.** A dedicated thread (`parley-store-writer`, as for redb, with its own
//!   single-threaded tokio runtime) owns the write connections and opens every write
//!   transaction, so writes never wait for the actix workers and `shutdown` can join it like
//!   the redb writer.
//! - **Ack after durable commit.** A batch is answered `Ok` only after `COMMIT` of the
//!   transaction holding all of its ops returned; the connections run with
//!   `synchronous_commit = on`, so the commit record was flushed to disk first.
//! - **FIFO, group commit.** Batches leave the queue in order; a group is a prefix of the queue
//!   (up to [`MAX_GROUP_BATCHES`] / [`MAX_GROUP_OPS`]), applied with at most one statement per
//!   table (multi-row, `unnest`) and committed once, all in ONE round trip (`BEGIN`,
//!   statements, `COMMIT` pipelined: `group.rs`).
//! - **Overlapped groups, disjoint and answered in order.** Groups in flight together never
//!   touch the same conversation or idempotency key (`overlap.rs`): a group ends before the
//!   first batch that conflicts with one in flight, and that batch waits for it. So a
//!   conversation's batches still commit one after the other, in queue order. Whatever order the
//!   commits finish in, groups are ANSWERED in queue order: a group's acks are released only
//!   after every earlier group was answered, so a successful ack still implies that every batch
//!   queued before it is resolved.
//! - **Failures.** A connection retries its group for [`RETRY_FOR`] (`conn.rs`: every group is
//!   idempotent, so a retry after an unknown commit outcome is safe); then the group, every
//!   group in flight after it (even one that committed: its ack says "not known to be durable",
//!   which stays true) and every batch queued behind it are answered with the error (a later
//!   batch never succeeds while an earlier one failed; [`StoreError::Unavailable`] when the
//!   database is unreachable), and the writer goes on with new batches, each tried once (no
//!   waiting out the retries again) until one commits or a probe succeeds: the store recovers
//!   by itself when the database comes back.
//! - **Probed while idle.** After [`PROBE_EVERY`] without a batch the writer runs `SELECT 1` on a
//!   connection (reconnecting if needed); a failure marks the store unavailable (`/healthz`
//!   says `degraded`), a success clears it, so an outage shows without any write.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::conn::{Conn, Refused};
use super::lease::Fences;
use super::overlap::Touches;
use super::Op;
use crate::store::StoreError;

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
/// Groups in flight at once when the configuration does not say (`[storage]
/// writer_connections`).
pub const DEFAULT_WRITER_CONNECTIONS: usize = 1;

pub(super) use super::batch::Batch;
pub(super) use super::conn::retryable;

pub(super) use crate::store::WriterMetrics as Metrics;

/// What [`Queue::take_group`] found.
enum Take {
    Group(Vec<Batch>),
    /// Nothing queued.
    Empty,
    /// The first batch conflicts with a group in flight.
    Blocked,
    /// Closed and empty: the writer stops.
    Closed,
}

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

    /// Takes the longest prefix of the queue (up to the group caps) whose batches `allowed`
    /// says may be committed now (none conflicts with a group in flight), without waiting.
    fn take_group(&self, allowed: impl Fn(&[Op]) -> bool) -> Take {
        let mut state = self.state.lock();
        let Some(first) = state.batches.front() else {
            return if state.closed {
                Take::Closed
            } else {
                Take::Empty
            };
        };
        if !allowed(&first.ops) {
            return Take::Blocked;
        }
        let mut ops = 0;
        let mut group = Vec::new();
        while group.len() < MAX_GROUP_BATCHES {
            match state.batches.front() {
                Some(next)
                    if (group.is_empty() || ops + next.ops.len() <= MAX_GROUP_OPS)
                        && allowed(&next.ops) =>
                {
                    ops += next.ops.len();
                    group.extend(state.batches.pop_front());
                }
                _ => break,
            }
        }
        drop(state);
        self.room.notify_waiters();
        Take::Group(group)
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

/// Starts the writer thread with `connections` write connections (at least one); they
/// connect on their own (and reconnect after any loss).
pub(super) fn spawn(
    config: tokio_postgres::Config,
    connections: usize,
    queue: Arc<Queue>,
    metrics: Arc<Metrics>,
    fences: Arc<Fences>,
) -> Result<JoinHandle<()>, StoreError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StoreError::io("cannot start the postgres writer runtime", e))?;
    std::thread::Builder::new()
        .name("parley-store-writer".to_owned())
        .spawn(move || {
            let _exit = ExitGuard(queue.clone());
            let free = (0..connections.max(1))
                .map(|_| Conn::new(config.clone(), fences.clone()))
                .collect();
            let writer = Writer {
                config,
                fences,
                queue,
                metrics,
                free,
                in_flight: VecDeque::new(),
                failing: false,
            };
            runtime.block_on(writer.run());
            tracing::debug!("postgres store writer stopped");
        })
        .map_err(|e| StoreError::io("cannot start the postgres writer thread", e))
}

/// Why the writer stopped sending groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Every connection is busy.
    Full,
    /// Nothing queued (a new batch could be sent at once).
    Empty,
    /// The first batch queued conflicts with a group in flight.
    Blocked,
    /// Closed and empty.
    Closed,
}

/// What a commit hands back: its connection (none for a markers-only group, or if the task
/// died), the group, and the outcome.
type Done = (Option<Conn>, Vec<Batch>, Result<Refused, StoreError>);

/// A group sent to a connection, not answered yet.
struct InFlight {
    commit: Pin<Box<dyn Future<Output = Done> + Send>>,
    touches: Touches,
    started: Instant,
    /// Whether the group took a connection (to be given back).
    has_conn: bool,
}

struct Writer {
    config: tokio_postgres::Config,
    fences: Arc<Fences>,
    queue: Arc<Queue>,
    metrics: Arc<Metrics>,
    /// Connections not committing a group right now.
    free: Vec<Conn>,
    /// Groups sent, oldest first: answered strictly in this order.
    in_flight: VecDeque<InFlight>,
    /// The last group failed (its waiters got the error): later groups get one attempt each,
    /// not [`RETRY_FOR`] of retries, until a commit or a probe succeeds.
    failing: bool,
}

impl Writer {
    async fn run(mut self) {
        loop {
            // Fill the free connections with groups that conflict with none in flight.
            let stop = loop {
                if self.free.is_empty() {
                    break Stop::Full;
                }
                let in_flight = &self.in_flight;
                match self
                    .queue
                    .take_group(|ops| in_flight.iter().all(|f| f.touches.allows(ops)))
                {
                    Take::Group(group) => self.send(group),
                    Take::Empty => break Stop::Empty,
                    Take::Blocked => break Stop::Blocked,
                    Take::Closed => break Stop::Closed,
                }
            };
            let queue = self.queue.clone();
            let arrived = queue.arrived.notified();
            let can_send = stop == Stop::Empty;
            let Some(front) = self.in_flight.front_mut() else {
                if stop == Stop::Closed {
                    break;
                }
                // Idle for a while: check the database (health, and the next write finds a
                // live connection).
                if tokio::time::timeout(PROBE_EVERY, arrived).await.is_err() {
                    self.probe().await;
                }
                continue;
            };
            // While a connection is free and the queue was empty, a new batch is sent at once,
            // next to the groups in flight; otherwise the oldest group is awaited.
            let done = if can_send {
                tokio::select! {
                    done = &mut front.commit => Some(done),
                    _ = arrived => None,
                }
            } else {
                Some((&mut front.commit).await)
            };
            if let Some(done) = done {
                if let Some(front) = self.in_flight.pop_front() {
                    self.answer(done, front.started, front.has_conn).await;
                }
            }
        }
    }

    /// Sends `group` to a free connection (the caller checked there is one).
    fn send(&mut self, group: Vec<Batch>) {
        let mut touches = Touches::default();
        for batch in &group {
            touches.add(&batch.ops);
        }
        let started = Instant::now();
        let has_conn = group.iter().any(|b| !b.ops.is_empty()) && !self.free.is_empty();
        let commit: Pin<Box<dyn Future<Output = Done> + Send>> =
            if group.iter().all(|b| b.ops.is_empty()) {
                // Only flush markers: resolved once every group before them is (FIFO).
                Box::pin(std::future::ready((None, group, Ok(Refused::new()))))
            } else if let Some(mut conn) = self.free.pop() {
                // While the database is known to be down, answer at once instead of making
                // every request wait out the retries; the probe notices when it is back.
                let deadline = if self.failing {
                    started
                } else {
                    started + RETRY_FOR
                };
                let task = tokio::spawn(async move {
                    let result = conn.commit(&group, deadline).await;
                    (conn, group, result)
                });
                Box::pin(async move {
                    match task.await {
                        Ok((conn, group, result)) => (Some(conn), group, result),
                        // A commit does not panic; if it did, its waiters' senders went with
                        // the task (they see the writer as gone) and a new connection replaces
                        // it (`answer`).
                        Err(e) => (
                            None,
                            Vec::new(),
                            Err(StoreError::io(
                                "a postgres commit task died",
                                std::io::Error::other(e.to_string()),
                            )),
                        ),
                    }
                })
            } else {
                Box::pin(std::future::ready((None, group, Err(StoreError::Closed))))
            };
        self.in_flight.push_back(InFlight {
            commit,
            touches,
            started,
            has_conn,
        });
    }

    /// Answers the oldest group in flight (already popped) with its outcome; after a failure,
    /// every later group in flight and everything queued get the error too.
    async fn answer(&mut self, (conn, group, result): Done, started: Instant, has_conn: bool) {
        self.give_back(conn, has_conn);
        let markers_only = group.iter().all(|b| b.ops.is_empty());
        let m = &self.metrics;
        match result {
            Ok(refused) if markers_only => {
                drop(refused);
                for batch in group {
                    batch.answer(Ok(()));
                }
            }
            Ok(mut refused) => {
                let ops: u64 = group.iter().map(|b| b.ops.len() as u64).sum();
                self.failing = false;
                m.commits.fetch_add(1, Ordering::Relaxed);
                m.unavailable.store(false, Ordering::Relaxed);
                m.ops_committed.fetch_add(ops, Ordering::Relaxed);
                m.batches_committed
                    .fetch_add(group.len() as u64, Ordering::Relaxed);
                m.last_group_ops.store(ops, Ordering::Relaxed);
                m.last_group_batches
                    .store(group.len() as u64, Ordering::Relaxed);
                m.commit_micros
                    .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
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
                for batch in group {
                    batch.answer(Err(error.clone()));
                }
                // The later groups in flight: waited for (their connections come back), then
                // answered with the same error, whatever their outcome.
                while let Some(later) = self.in_flight.pop_front() {
                    let (conn, group, _) = later.commit.await;
                    self.give_back(conn, later.has_conn);
                    for batch in group {
                        batch.answer(Err(error.clone()));
                    }
                }
                for batch in self.queue.drain() {
                    batch.answer(Err(error.clone()));
                }
            }
        }
    }

    /// Returns a group's connection to the free ones; one lost with a dead task is replaced.
    fn give_back(&mut self, conn: Option<Conn>, has_conn: bool) {
        match conn {
            Some(conn) => self.free.push(conn),
            None if has_conn => self
                .free
                .push(Conn::new(self.config.clone(), self.fences.clone())),
            None => {}
        }
    }

    /// Checks the database while idle: sets or clears "unavailable" (what `/healthz` shows)
    /// and, once it answers again, lets later groups be retried as usual.
    async fn probe(&mut self) {
        let Some(conn) = self.free.first_mut() else {
            return;
        };
        let m = &self.metrics;
        match conn.probe().await {
            Ok(()) => {
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
                m.unavailable.store(true, Ordering::Relaxed);
            }
        }
    }
}
