//! The redb backend: one file, one writer thread, group commit, readers on the blocking pool.
//!
//! # Invariants
//!
//! - **One writer.** A single thread (`parley-store-writer`) owns every write transaction.
//!   Everyone else hands it [`WriteOp`]s in batches through a bounded queue (`writer.rs`).
//! - **Ack after durable commit.** A batch's [`Ack`] resolves `Ok(())` only after the redb
//!   transaction holding all of its ops has been committed with [`::redb::Durability::Immediate`]
//!   (fsync done). A batch never spans two transactions, so it is atomic.
//! - **Group commit.** The writer blocks for the first batch, then takes every batch already
//!   queued (up to [`MAX_GROUP_BATCHES`] batches or [`MAX_GROUP_OPS`] ops), applies them all in
//!   ONE write transaction, commits once and only then answers every waiter of the group. One
//!   fsync serves every conversation with pending records (DESIGN invariant 2).
//! - **FIFO.** Groups are committed one after another in queue order. After a failed commit
//!   the writer refuses every later batch with [`StoreError::Broken`] (redb refuses new write
//!   transactions until the database is reopened).
//! - **Bounded.** `submit` refuses a batch while [`QUEUE_HARD_CAP`] batches are queued (only
//!   reached when the disk stalls); `enqueue` waits while [`QUEUE_SOFT_CAP`] are.
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
//! `DeleteConversation` is range deletes of the conversation's messages, events and checkpoint,
//! plus its record and index keys. Opening a file written before event chunks moves its events
//! into chunks, once (`tables.rs`).
//!
//! # Reads
//!
//! Each read is one short read transaction (MVCC: it never waits for the writer) run by
//! `read.rs` on tokio's blocking pool (`spawn_blocking`), never on an async worker: a read
//! that touches the disk cannot stall the actors and sockets of that worker. The read's
//! arguments are copied into the task; nothing is locked while it runs.

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

use ::redb::{Database, StorageBackend};
use bytes::Bytes;
use parking_lot::Mutex;

pub use encode::{CHUNK_MAX_BYTES, CHUNK_MAX_EVENTS};
pub use writer::{MAX_GROUP_BATCHES, MAX_GROUP_OPS, QUEUE_HARD_CAP, QUEUE_SOFT_CAP};

use super::{
    Ack, ConversationPage, ConversationRecord, IdempotencyRecord, MessageRecord, RunStatus, Store,
    StoreError, StoreFuture, StoreStats, WriteOp,
};
use read::Reader;
use writer::{Batch, Metrics, Queue};

/// The redb store. Cheap to clone; every clone shares one database and one writer thread.
///
/// The writer stops when [`Store::shutdown`] is called or the last clone is dropped; both commit
/// everything already queued first and wait for the writer thread to exit.
#[derive(Clone)]
pub struct RedbStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Database>,
    queue: Arc<Queue>,
    metrics: Arc<Metrics>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore").finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Creates or opens the redb file at `path` (creating its parent directories), creates the
    /// tables (moving an older file's events into chunks) and starts the writer thread.
    pub fn open(path: &Path) -> Result<RedbStore, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::io(format!("cannot create directory {}", parent.display()), e)
            })?;
        }
        let db = Database::builder().create(path)?;
        tracing::info!(path = %path.display(), "store opened");
        Self::from_database(db)
    }

    /// Like [`RedbStore::open`] over any redb storage backend (tests use in-memory ones).
    pub fn open_with_backend(backend: impl StorageBackend) -> Result<RedbStore, StoreError> {
        let db = Database::builder().create_with_backend(backend)?;
        Self::from_database(db)
    }

    fn from_database(db: Database) -> Result<RedbStore, StoreError> {
        tables::create_all(&db)?;
        let db = Arc::new(db);
        let queue = Arc::new(Queue::new(QUEUE_SOFT_CAP, QUEUE_HARD_CAP));
        let metrics = Arc::new(Metrics::default());
        let handle = writer::spawn(db.clone(), queue.clone(), metrics.clone())?;
        Ok(RedbStore {
            inner: Arc::new(Inner {
                db,
                queue,
                metrics,
                writer: Mutex::new(Some(handle)),
            }),
        })
    }

    /// Runs one synchronous read on tokio's blocking pool.
    fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Reader) -> Result<T, StoreError> + Send + 'static,
    ) -> StoreFuture<'static, T> {
        let reader = Reader {
            db: self.inner.db.clone(),
        };
        Box::pin(async move { tokio::task::spawn_blocking(move || f(&reader)).await? })
    }
}

impl Store for RedbStore {
    fn submit(&self, ops: Vec<WriteOp>) -> Ack {
        let ops = match encode::encode(ops) {
            Ok(ops) => ops,
            Err(e) => return Ack::failed(e),
        };
        let (tx, ack) = Ack::channel();
        let batch = Batch {
            ops,
            done: Some(tx),
        };
        match self.inner.queue.push_now(batch) {
            Ok(()) => ack,
            Err(refused) => Ack::failed(refused.into_error()),
        }
    }

    fn enqueue(&self, ops: Vec<WriteOp>) -> StoreFuture<'_, Ack> {
        // Encoded on the caller's thread, before the first poll.
        let encoded = encode::encode(ops);
        Box::pin(async move {
            let (tx, ack) = Ack::channel();
            let batch = Batch {
                ops: encoded?,
                done: Some(tx),
            };
            self.inner.queue.push_when_room(batch).await?;
            Ok(ack)
        })
    }

    fn shutdown(&self) {
        self.inner.stop();
    }

    fn stats(&self) -> StoreStats {
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

    fn get_conversation<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<ConversationRecord>> {
        let id = id.to_owned();
        self.read(move |r| r.get_conversation(&id))
    }

    fn list_conversations<'a>(
        &'a self,
        owner: &'a str,
        assistant: Option<&'a str>,
        limit: usize,
        cursor: Option<&'a str>,
    ) -> StoreFuture<'a, ConversationPage> {
        let owner = owner.to_owned();
        let assistant = assistant.map(str::to_owned);
        let cursor = cursor.map(str::to_owned);
        self.read(move |r| {
            r.list_conversations(&owner, assistant.as_deref(), limit, cursor.as_deref())
        })
    }

    fn messages<'a>(
        &'a self,
        conversation: &'a str,
        before: Option<u64>,
        limit: usize,
    ) -> StoreFuture<'a, Vec<MessageRecord>> {
        let conversation = conversation.to_owned();
        self.read(move |r| r.messages(&conversation, before, limit))
    }

    fn events_since<'a>(
        &'a self,
        conversation: &'a str,
        since: u64,
        limit: usize,
    ) -> StoreFuture<'a, Vec<(u64, Bytes)>> {
        let conversation = conversation.to_owned();
        self.read(move |r| r.events_since(&conversation, since, limit))
    }

    fn last_seq<'a>(&'a self, conversation: &'a str) -> StoreFuture<'a, u64> {
        let conversation = conversation.to_owned();
        self.read(move |r| r.last_seq(&conversation))
    }

    fn checkpoint<'a>(&'a self, conversation: &'a str) -> StoreFuture<'a, Option<Bytes>> {
        let conversation = conversation.to_owned();
        self.read(move |r| r.checkpoint(&conversation))
    }

    fn idempotency_key<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<IdempotencyRecord>> {
        let key = key.to_owned();
        self.read(move |r| r.idempotency_key(&key))
    }

    fn conversations_with_status(
        &self,
        status: RunStatus,
    ) -> StoreFuture<'_, Vec<ConversationRecord>> {
        self.read(move |r| r.conversations_with_status(status))
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
