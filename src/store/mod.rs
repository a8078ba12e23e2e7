//! The redb store: conversations, messages, the event log, checkpoints.
//!
//! # Invariants
//!
//! - **One writer.** A single thread (`parley-store-writer`) owns every write transaction.
//!   Everyone else hands it [`WriteOp`]s in batches through a bounded queue.
//! - **Ack after durable commit.** A batch's [`Ack`] resolves `Ok(())` only after the redb
//!   transaction holding all of its ops has been committed with [`redb::Durability::Immediate`]
//!   (fsync done). An error means "not known to be durable"; a batch is atomic (all of its ops
//!   or none are committed, because a batch never spans two transactions).
//! - **Group commit.** The writer blocks for the first batch, then takes every batch already
//!   queued (up to [`MAX_GROUP_BATCHES`] batches or [`MAX_GROUP_OPS`] ops), applies them all in
//!   ONE write transaction, commits once and only then answers every waiter of the group. One
//!   fsync serves every conversation with pending records (DESIGN invariant 2).
//! - **FIFO.** Batches are committed in the order they entered the queue, so a successful ack
//!   implies that every batch queued before it has been resolved too: committed, or answered with
//!   an error. After a failed commit the writer refuses every later batch (redb refuses new write
//!   transactions until the database is reopened), so "my ack succeeded" really means "everything
//!   queued before me is durable".
//!
//! # Ordering of the hand-off (read this before calling the write API)
//!
//! The order that counts is the order in which batches *enter the queue*:
//!
//! - [`Store::submit`] is a plain `fn`: the batch enters the queue before `submit` returns, so
//!   successive `submit` calls from one caller (an actor handler, say) are committed in call
//!   order, whether or not, and in whatever order, the returned [`Ack`]s are awaited. It never
//!   waits: above the queue's hard bound ([`QUEUE_HARD_CAP`] batches, only reached when the disk
//!   stalls) the batch is refused and its `Ack` resolves to [`StoreError::Db`]. A caller that
//!   pipelines dependent batches (events with consecutive seqs) must treat such a refusal as fatal
//!   for that conversation's run, since a later batch could otherwise commit after a refused one.
//! - [`Store::enqueue`] is the back-pressured variant: it waits (asynchronously) while the queue
//!   holds [`QUEUE_SOFT_CAP`] batches or more, then hands the batch off and returns its [`Ack`].
//!   Successive `enqueue(..).await` calls from one caller are committed in that order. Two
//!   `enqueue` futures alive at the same time have no order between them, and a `submit` made
//!   while an earlier `enqueue` of the same caller is still waiting for room goes first.
//! - [`Store::write`] is `enqueue` followed by awaiting the `Ack`.
//! - [`Store::flush`] waits until everything queued before it is durable.
//!
//! # Encoding happens before the queue
//!
//! `submit`/`enqueue` encode a batch on the caller's thread (JSON of records and messages,
//! events packed into chunks: `encode.rs`), so that the single writer thread only inserts
//! bytes and commits.
//!
//! # Tables
//!
//! | table | key | value |
//! |---|---|---|
//! | `conversations` | id | JSON of [`ConversationRecord`] |
//! | `conversations_by_owner` | (owner, `u64::MAX - updated_at`, id) | () |
//! | `conversations_by_owner_assistant` | (owner, assistant, `u64::MAX - updated_at`, id) | () |
//! | `messages` | (conversation, no) | JSON of [`MessageRecord`] |
//! | `event_chunks` | (conversation, last seq of the chunk) | consecutive events, as sent to clients (see `encode.rs`) |
//! | `checkpoints` | conversation | opaque bytes |
//!
//! Replay and history are range scans on a `(conversation, n)` prefix; listing is a range scan on
//! an owner prefix, newest activity first. `PutConversation` reads the previous record in the
//! same write transaction and removes its index keys, so a conversation appears once in listings.
//! If a previous record cannot be decoded its index keys may be left behind; listings verify each
//! index key against the record and skip stale ones, so such leftovers never show.
//!
//! `DeleteConversation` removes what exists when it is applied (range deletes of the
//! conversation's messages, events and checkpoint, plus its record and index keys). Ops for the
//! same conversation queued after it would recreate data, so its owner (the actor) stops first.
//!
//! # Reads
//!
//! Readers are synchronous methods using one short read transaction each (MVCC: they never wait
//! for the writer). Point reads ([`Store::get_conversation`], messages, checkpoints) turn an
//! undecodable record into [`StoreError::Corrupt`]. The scans over many conversations
//! ([`Store::list_conversations`], [`Store::conversations_with_status`]) log and skip an
//! undecodable record instead, so one bad record cannot hide all the others or block recovery.

mod encode;
mod read;
mod tables;
#[cfg(test)]
mod tests;
mod writer;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use redb::{Database, StorageBackend};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::oneshot;

pub use encode::{CHUNK_MAX_BYTES, CHUNK_MAX_EVENTS};
pub use writer::{Ack, MAX_GROUP_BATCHES, MAX_GROUP_OPS, QUEUE_HARD_CAP, QUEUE_SOFT_CAP};

use writer::{Batch, Metrics, Queue};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage error: {0}")]
    Db(String),
    #[error("the store is shut down")]
    Closed,
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
    /// A paging cursor that this store did not produce (client input: a bad request).
    #[error("invalid paging cursor")]
    InvalidCursor,
}

/// Run status of a conversation (CONTRACT §1), plus `idle` before the first run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Idle,
    Running,
    Paused,
    Completed,
    Failed,
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationRecord {
    pub id: String,
    pub owner: String,
    pub assistant: String,
    pub title: String,
    /// True once renamed: the title no longer follows the first message.
    #[serde(default)]
    pub title_set: bool,
    pub status: RunStatus,
    /// Unix milliseconds.
    pub created_at: i64,
    pub updated_at: i64,
    pub args: Value,
    pub last_seq: u64,
    pub message_count: u64,
    #[serde(default)]
    pub pending_interrupts: Vec<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageRecord {
    /// Position in the conversation, from 1; the paging cursor.
    pub no: u64,
    pub id: String,
    pub role: String,
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    pub created_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

/// One write.
#[derive(Debug, Clone)]
pub enum WriteOp {
    /// Insert or replace the conversation record (and move it in the owner/activity index).
    PutConversation(ConversationRecord),
    AppendMessage {
        conversation: String,
        message: MessageRecord,
    },
    /// `json` is the event object exactly as sent to clients.
    AppendEvent {
        conversation: String,
        seq: u64,
        json: Bytes,
    },
    /// Consecutive events: `events[i]` has seq `first_seq + i`.
    AppendEvents {
        conversation: String,
        first_seq: u64,
        events: Vec<Bytes>,
    },
    /// Replace the conversation's checkpoint (opaque bytes).
    PutCheckpoint { conversation: String, data: Bytes },
    /// Remove the conversation, its messages, events and checkpoint.
    DeleteConversation { conversation: String },
}

/// A page of conversations, newest activity first.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationPage {
    pub items: Vec<ConversationRecord>,
    pub next_cursor: Option<String>,
}

/// A snapshot of the writer's counters (for `/metrics`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Durable commits done (each is one fsync).
    pub commits: u64,
    /// Commits that failed; their waiters got an error.
    pub failed_commits: u64,
    /// Ops in all successful commits (the sum of group sizes, in ops).
    pub ops_committed: u64,
    /// Batches (waiters) answered by successful commits (the sum of group sizes, in batches).
    pub batches_committed: u64,
    /// Ops in the last successful commit.
    pub last_group_ops: u64,
    /// Batches in the last successful commit.
    pub last_group_batches: u64,
    /// Total time spent in successful commits (apply + commit + fsync).
    pub commit_time: Duration,
    /// Batches waiting in the queue right now.
    pub queued_batches: u64,
}

/// Handle to the store. Cheap to clone; every clone shares one database and one writer thread.
///
/// The writer stops when [`Store::shutdown`] is called or the last clone is dropped; both commit
/// everything already queued first and wait for the writer thread to exit.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Database>,
    queue: Arc<Queue>,
    metrics: Arc<Metrics>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Creates or opens the redb file at `path` (creating its parent directories), creates the
    /// tables and starts the writer thread.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::Db(format!("cannot create directory {}: {e}", parent.display()))
            })?;
        }
        let db = Database::builder().create(path)?;
        tracing::info!(path = %path.display(), "store opened");
        Self::from_database(db)
    }

    /// Like [`Store::open`] over any redb storage backend (tests use in-memory ones).
    pub fn open_with_backend(backend: impl StorageBackend) -> Result<Store, StoreError> {
        let db = Database::builder().create_with_backend(backend)?;
        Self::from_database(db)
    }

    fn from_database(db: Database) -> Result<Store, StoreError> {
        tables::create_all(&db)?;
        let db = Arc::new(db);
        let queue = Arc::new(Queue::new(QUEUE_SOFT_CAP, QUEUE_HARD_CAP));
        let metrics = Arc::new(Metrics::default());
        let handle = writer::spawn(db.clone(), queue.clone(), metrics.clone())?;
        Ok(Store {
            inner: Arc::new(Inner {
                db,
                queue,
                metrics,
                writer: Mutex::new(Some(handle)),
            }),
        })
    }

    /// Hands `ops` to the writer now, without waiting, and returns the future of their durable
    /// commit. See the module docs for the ordering guarantee and the hard bound.
    pub fn submit(&self, ops: Vec<WriteOp>) -> Ack {
        let ops = match encode::encode(ops) {
            Ok(ops) => ops,
            Err(e) => return Ack::failed(e),
        };
        let (tx, rx) = oneshot::channel();
        let batch = Batch {
            ops,
            done: Some(tx),
        };
        match self.inner.queue.push_now(batch) {
            Ok(()) => Ack::waiting(rx),
            Err(refused) => Ack::failed(refused.into_error()),
        }
    }

    /// Waits for room in the queue (back-pressure), hands `ops` to the writer and returns the
    /// future of their durable commit. Awaiting `enqueue` calls one after another keeps their
    /// order.
    pub async fn enqueue(&self, ops: Vec<WriteOp>) -> Result<Ack, StoreError> {
        let ops = encode::encode(ops)?;
        let (tx, rx) = oneshot::channel();
        let batch = Batch {
            ops,
            done: Some(tx),
        };
        self.inner.queue.push_when_room(batch).await?;
        Ok(Ack::waiting(rx))
    }

    /// Returns after the durable commit holding these ops.
    pub async fn write(&self, ops: Vec<WriteOp>) -> Result<(), StoreError> {
        self.enqueue(ops).await?.await
    }

    /// Waits until everything queued before this call is durable. Fails if any of it was not
    /// committed (or the store is shut down).
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.write(Vec::new()).await
    }

    /// Stops taking writes, lets the writer commit everything already queued, and waits for the
    /// writer thread to exit. Later writes fail with [`StoreError::Closed`]; reads keep working.
    /// Idempotent. It blocks the calling thread for at most the last commits; from async code
    /// prefer `flush().await` first so that little is left to do.
    pub fn shutdown(&self) {
        self.inner.stop();
    }

    /// A snapshot of the writer's counters.
    pub fn stats(&self) -> StoreStats {
        let m = &self.inner.metrics;
        StoreStats {
            commits: m.commits.load(Ordering::Relaxed),
            failed_commits: m.failed_commits.load(Ordering::Relaxed),
            ops_committed: m.ops_committed.load(Ordering::Relaxed),
            batches_committed: m.batches_committed.load(Ordering::Relaxed),
            last_group_ops: m.last_group_ops.load(Ordering::Relaxed),
            last_group_batches: m.last_group_batches.load(Ordering::Relaxed),
            commit_time: Duration::from_micros(m.commit_micros.load(Ordering::Relaxed)),
            queued_batches: self.inner.queue.len() as u64,
        }
    }
}

impl Inner {
    fn stop(&self) {
        self.queue.close();
        let handle = self.writer.lock().take();
        if let Some(handle) = handle {
            if handle.join().is_err() {
                tracing::error!("the store writer thread panicked");
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop();
    }
}
