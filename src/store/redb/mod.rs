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
//! - **FIFO.** Groups are committed one after another in queue order.
//! - **Recovery without a restart.** redb latches an I/O failure (every later transaction,
//!   reads too, fails until the database is reopened). The writer reopens the file
//!   (`handle.rs`), retries the failed group a few times, then answers it with
//!   [`StoreError::Unavailable`] and keeps trying each later group once, plus a probe write
//!   every second while idle; the first success makes the store writable again
//!   ([`StoreStats::writable`]). Reads work again as soon as the reopen succeeds.
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
//! | `conversations` | storage key | JSON of [`ConversationRecord`] |
//! | `conversations_by_owner` | (owner, `u64::MAX - updated_at`, id) | () |
//! | `conversations_by_owner_assistant` | (owner, assistant, `u64::MAX - updated_at`, id) | () |
//! | `messages` | (storage key, no) | JSON of [`MessageRecord`] |
//! | `event_chunks` | (storage key, last seq of the chunk) | consecutive events, as sent to clients (see `encode.rs`) |
//! | `checkpoints` | storage key | opaque bytes |
//! | `storage_keys` | conversation id | its storage key; an entry for every stored conversation |
//! | `idempotency_keys` | scoped key | JSON of [`IdempotencyRecord`] |
//!
//! A conversation's rows are keyed by its *storage key*: its id when the id is a UUID v7 (the
//! server's, time-ordered), else a key of its own, `~` and a UUID v7 made when its first row is
//! written. A client's random id (an AG-UI `threadId`) would otherwise scatter every new
//! conversation's rows over four tables, and each leaf a commit touches costs a page copy, a
//! checksum and a write; this way only its small `storage_keys` entry does (`tables.rs`). Files
//! written before `storage_keys` get an entry per conversation, its id, when opened.
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
//! Each read is one short read transaction (MVCC: it never waits for the writer) in `read.rs`.
//! A range read (history, replay, listing, sweeping) runs on tokio's blocking pool
//! (`spawn_blocking`), never on an async worker: it may touch many pages, and a read that goes
//! to the disk would stall the actors and sockets of that worker. The read's arguments are
//! copied into the task; nothing is locked while it runs.
//!
//! The one exception is `get_conversation`, a point read (one `storage_keys` lookup, one
//! record), which runs on the caller. Its B-tree pages are normally in redb's cache or the
//! OS's (~5 µs), and the hop to the pool and back costs more than that: two thread wake-ups,
//! ~11 µs of CPU. Every AG-UI run reads its thread this way; with the hop, it was the largest
//! single AG-UI-only cost in load scenario 7 (BENCHMARKS.md, session 8). The price: on a cold
//! cache it blocks its worker for the few page reads of two lookups (at most the depth of two
//! trees).

mod encode;
mod handle;
mod read;
mod schema;
mod tables;
#[cfg(test)]
mod tests;
mod writer;

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use ::redb::{Builder, Database, StorageBackend};
use bytes::Bytes;
use parking_lot::Mutex;

pub use super::chunk::{CHUNK_MAX_BYTES, CHUNK_MAX_EVENTS};
pub use writer::{
    MAX_GROUP_BATCHES, MAX_GROUP_OPS, PROBE_EVERY, QUEUE_HARD_CAP, QUEUE_SOFT_CAP, RETRY_BACKOFF,
};

use super::{
    Ack, ConversationPage, ConversationRecord, IdempotencyRecord, MessageRecord, RunStatus, Store,
    StoreError, StoreFuture, StoreStats, WriteOp,
};
use handle::{DbHandle, Opener};
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
    db: Arc<DbHandle>,
    /// The file, when there is one (for its size in `/metrics`).
    path: Option<std::path::PathBuf>,
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
    /// Creates or opens the redb file at `path` (creating its parent directories) with redb's
    /// default cache, creates the tables (moving an older file's events into chunks) and starts
    /// the writer thread.
    pub fn open(path: &Path) -> Result<RedbStore, StoreError> {
        Self::open_with_cache(path, None)
    }

    /// Like [`RedbStore::open`], with a page cache of `cache_bytes` (`[storage] cache_mb`).
    pub fn open_with_cache(
        path: &Path,
        cache_bytes: Option<usize>,
    ) -> Result<RedbStore, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::io(format!("cannot create directory {}", parent.display()), e)
            })?;
        }
        let file = path.to_owned();
        let path = path.to_owned();
        let opener: Opener = Box::new(move || {
            let mut builder = Builder::new();
            if let Some(bytes) = cache_bytes {
                builder.set_cache_size(bytes);
            }
            builder.create(&path)
        });
        let db = opener()?;
        tracing::info!(cache_bytes, "store opened");
        let mut store = Self::from_database(db, Some(opener))?;
        if let Some(inner) = Arc::get_mut(&mut store.inner) {
            inner.path = Some(file);
        }
        Ok(store)
    }

    /// Like [`RedbStore::open`] over any redb storage backend (tests use in-memory ones). It
    /// cannot be reopened: after a failed commit it stays unavailable.
    pub fn open_with_backend(backend: impl StorageBackend) -> Result<RedbStore, StoreError> {
        let db = Database::builder().create_with_backend(backend)?;
        Self::from_database(db, None)
    }

    /// Like [`RedbStore::open_with_backend`], reopening with `backend()` after a storage fault
    /// (each call must give a backend over the same storage).
    pub fn open_with_backend_factory<B: StorageBackend>(
        backend: impl Fn() -> B + Send + Sync + 'static,
    ) -> Result<RedbStore, StoreError> {
        let opener: Opener = Box::new(move || Database::builder().create_with_backend(backend()));
        let db = opener()?;
        Self::from_database(db, Some(opener))
    }

    fn from_database(db: Database, opener: Option<Opener>) -> Result<RedbStore, StoreError> {
        schema::create_all(&db)?;
        let db = Arc::new(DbHandle::new(db, opener));
        let queue = Arc::new(Queue::new(QUEUE_SOFT_CAP, QUEUE_HARD_CAP));
        let metrics = Arc::new(Metrics::default());
        let handle = writer::spawn(db.clone(), queue.clone(), metrics.clone())?;
        Ok(RedbStore {
            inner: Arc::new(Inner {
                db,
                path: None,
                queue,
                metrics,
                writer: Mutex::new(Some(handle)),
            }),
        })
    }

    /// Runs one point read on the caller, when the future is first polled (see "Reads" in
    /// the module docs).
    fn read_here<'a, T: Send + 'a>(
        &self,
        f: impl FnOnce(&Reader) -> Result<T, StoreError> + Send + 'a,
    ) -> StoreFuture<'a, T> {
        let reader = Reader {
            db: self.inner.db.clone(),
        };
        Box::pin(async move { f(&reader) })
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
        let queued = self.inner.queue.len() as u64;
        self.inner.metrics.stats(queued, self.size_bytes())
    }

    fn idle_conversations<'a>(
        &'a self,
        updated_before: i64,
        after: Option<&'a str>,
        limit: usize,
    ) -> StoreFuture<'a, Vec<ConversationRecord>> {
        let after = after.map(str::to_owned);
        self.read(move |r| r.idle_conversations(updated_before, after.as_deref(), limit))
    }

    fn size_bytes(&self) -> u64 {
        self.inner
            .path
            .as_ref()
            .and_then(|p| std::fs::metadata(p).ok())
            .map_or(0, |m| m.len())
    }

    fn conversation_count(&self) -> StoreFuture<'_, u64> {
        self.read(|r| r.conversation_count())
    }

    fn get_conversation<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<ConversationRecord>> {
        self.read_here(|r| r.get_conversation(id))
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
