//! The PostgreSQL backend: the same promises as redb (`store/mod.rs`), in a database that
//! several Parley nodes can share.
//!
//! # Invariants
//!
//! - **One writer per store, group commit.** A dedicated thread (`writer.rs`) takes the queued
//!   batches, applies each group in ONE transaction and commits with `synchronous_commit = on`
//!   (set on every connection: the commit record is on disk before `COMMIT` returns), then
//!   answers the group's [`Ack`]s. FIFO; a batch never spans two transactions. A group is one
//!   round trip: `BEGIN`, at most one statement per table and `COMMIT`, pipelined (`group.rs`).
//!   Up to `writer_connections` groups are in flight at once, each on its own connection
//!   (`conn.rs`), never two touching the same conversation or key (`overlap.rs`), and they are
//!   answered in queue order. `size_bytes`: `size.rs`.
//! - **Recovery by itself.** The writer retries a group while the database is unreachable for
//!   up to [`RETRY_FOR`] (a group is idempotent, so a retry after an unknown commit outcome is
//!   safe); then that group and everything queued behind it get [`StoreError::Unavailable`]
//!   (clients: `storage_unavailable`, 503), later batches are tried once each, and an idle
//!   writer probes the database every [`PROBE_EVERY`], so `/healthz` shows the outage and its
//!   end without a write. Reads retry once on a fresh pooled connection. Nothing panics.
//! - **Reads never block a worker**: every read is an async query through a `deadpool` pool.
//! - **Encoding before the queue**: records become JSON on the caller's thread (`Op`).
//!
//! A consistent snapshot for `parley export` (one read-only REPEATABLE READ transaction):
//! `snapshot.rs`. Tables and indexes: `schema.rs`. Replay is one range scan of
//! `event_chunks (conversation, last_seq)` (events in chunks, as in redb: `store/chunk.rs`); a listing cursor is the `(updated_at, id)` of a page's last item, hex-encoded.
//!
//! # Configuration
//!
//! [`PgOptions`]: the URL, the pool size, the statement timeout, how long to wait at start
//! for a database that is not reachable yet (`connect_retry`, backing off, logged), and
//! optionally a schema (its `search_path`; tests give each store its own schema).

mod batch;
mod conn;
mod group;
pub mod lease;
mod overlap;
#[cfg(test)]
mod overlap_tests;
mod read;
pub mod schema;
mod size;
mod snapshot;
#[cfg(test)]
pub(crate) mod tests;
mod writer;

use std::str::FromStr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use parking_lot::Mutex;
use tokio_postgres::NoTls;

pub use snapshot::PgSnapshot;
pub use writer::{
    DEFAULT_WRITER_CONNECTIONS, MAX_GROUP_BATCHES, MAX_GROUP_OPS, PROBE_EVERY, QUEUE_HARD_CAP,
    QUEUE_SOFT_CAP, RETRY_FOR,
};

use super::{
    Ack, ConversationPage, ConversationRecord, IdempotencyRecord, MessageRecord, RunStatus, Store,
    StoreError, StoreFuture, StoreStats, WriteOp,
};
use writer::{Batch, Metrics, Queue};

/// How to reach the database.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// `postgres://user@host:port/db`
    pub url: String,
    /// Connections for reads (the writer has `writer_connections` more of its own).
    pub pool_size: usize,
    /// Every statement is cancelled after this long.
    pub statement_timeout: Duration,
    /// Tables live in this schema (created if missing) instead of the user's default.
    pub schema: Option<String>,
    /// At start (and `parley migrate`), how long to keep trying while the database cannot be
    /// reached (refused, starting up, too many connections), with backoff, before giving up.
    pub connect_retry: Duration,
    /// Groups the writer commits at once, each on its own connection (`writer.rs`): while one
    /// waits for its WAL flush, the next one's statements run. At least 1.
    pub writer_connections: usize,
}

impl PgOptions {
    pub fn new(url: impl Into<String>) -> PgOptions {
        PgOptions {
            url: url.into(),
            pool_size: 16,
            statement_timeout: Duration::from_secs(10),
            schema: None,
            connect_retry: Duration::from_secs(30),
            writer_connections: DEFAULT_WRITER_CONNECTIONS,
        }
    }

    fn config(&self) -> Result<tokio_postgres::Config, StoreError> {
        let mut config = tokio_postgres::Config::from_str(&self.url).map_err(pg_error)?;
        let mut options = format!(
            "-c synchronous_commit=on -c statement_timeout={}",
            self.statement_timeout.as_millis().max(1)
        );
        if let Some(schema) = &self.schema {
            check_schema_name(schema)?;
            options.push_str(&format!(" -c search_path={schema}"));
        }
        config
            .options(&options)
            .connect_timeout(Duration::from_secs(5))
            .application_name("parley");
        Ok(config)
    }
}

/// A PostgreSQL error that says what the server said: tokio-postgres shows a server error as
/// just "db error", keeping the message, the detail and the SQLSTATE in its source.
#[derive(Debug, thiserror::Error)]
#[error("{text}")]
pub(crate) struct PgError {
    text: String,
    #[source]
    pub(crate) source: tokio_postgres::Error,
}

/// `StoreError::Db` of a PostgreSQL error, with the server's own words in its message.
pub(crate) fn pg_error(source: tokio_postgres::Error) -> StoreError {
    let text = match source.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!(
                "{}: {} ({detail}; SQLSTATE {})",
                db.severity(),
                db.message(),
                db.code().code()
            ),
            None => format!(
                "{}: {} (SQLSTATE {})",
                db.severity(),
                db.message(),
                db.code().code()
            ),
        },
        None => source.to_string(),
    };
    StoreError::db(PgError { text, source })
}

fn check_schema_name(schema: &str) -> Result<(), StoreError> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !schema.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(StoreError::Corrupt {
            what: format!("schema name {schema:?}: use lowercase letters, digits and _"),
            source: None,
        })
    }
}

/// One write, encoded (JSON of records) before it enters the queue.
pub(crate) enum Op {
    Conversation {
        id: String,
        owner: String,
        assistant: String,
        updated_at: i64,
        status: &'static str,
        record: String,
    },
    Message {
        conversation: String,
        no: i64,
        record: String,
    },
    Events {
        conversation: String,
        first_seq: i64,
        events: Vec<Bytes>,
    },
    Checkpoint {
        conversation: String,
        data: Bytes,
    },
    Delete {
        conversation: String,
    },
    IdempotencyKey {
        key: String,
        expires_at: i64,
        record: String,
        /// The conversation the key's request went to: the key's batch is ordered with that
        /// conversation's batches (`overlap.rs`).
        conversation: String,
    },
    DeleteExpiredKeys {
        now_ms: i64,
    },
}

fn encode(ops: Vec<WriteOp>) -> Result<Vec<Op>, StoreError> {
    ops.into_iter()
        .map(|op| {
            Ok(match op {
                WriteOp::PutConversation(r) => Op::Conversation {
                    record: serde_json::to_string(&r)
                        .map_err(|e| StoreError::encode(format!("conversation {}", r.id), e))?,
                    status: read::status_name(r.status),
                    id: r.id,
                    owner: r.owner,
                    assistant: r.assistant,
                    updated_at: r.updated_at,
                },
                WriteOp::AppendMessage {
                    conversation,
                    message,
                } => Op::Message {
                    record: serde_json::to_string(&message).map_err(|e| {
                        StoreError::encode(format!("message {} of {conversation}", message.no), e)
                    })?,
                    no: read::clamp(message.no),
                    conversation,
                },
                WriteOp::AppendEvent {
                    conversation,
                    seq,
                    json,
                } => Op::Events {
                    conversation,
                    first_seq: read::clamp(seq),
                    events: vec![json],
                },
                WriteOp::AppendEvents {
                    conversation,
                    first_seq,
                    events,
                } => Op::Events {
                    conversation,
                    first_seq: read::clamp(first_seq),
                    events,
                },
                WriteOp::PutCheckpoint { conversation, data } => {
                    Op::Checkpoint { conversation, data }
                }
                WriteOp::DeleteConversation { conversation } => Op::Delete { conversation },
                WriteOp::PutIdempotencyKey { key, record } => Op::IdempotencyKey {
                    record: serde_json::to_string(&record)
                        .map_err(|e| StoreError::encode(format!("idempotency key {key:?}"), e))?,
                    expires_at: record.expires_at_ms,
                    conversation: record.conversation_id,
                    key,
                },
                WriteOp::DeleteExpiredIdempotencyKeys { now_ms } => {
                    Op::DeleteExpiredKeys { now_ms }
                }
            })
        })
        .collect()
}

/// The PostgreSQL store. Cheap to clone; clones share the pool and the writer.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    /// Cluster mode's fence (empty on a single node: the writer then runs no lease statement).
    fences: Arc<lease::Fences>,
    queue: Arc<Queue>,
    metrics: Arc<Metrics>,
    /// Bytes of Parley's tables, measured now and then (`size.rs`).
    size: Arc<size::StatsSize>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

/// Connects (creating the schema if one is named) and applies the migrations. While the
/// database cannot be reached it tries again, backing off from 250 ms to 5 s, for up to
/// `connect_retry`; any other error (bad credentials, no such database) fails at once.
pub async fn migrate(options: &PgOptions) -> Result<usize, StoreError> {
    let deadline = std::time::Instant::now() + options.connect_retry;
    let mut pause = Duration::from_millis(250);
    loop {
        match migrate_once(options).await {
            Err(e) if writer::retryable(&e) && std::time::Instant::now() + pause < deadline => {
                tracing::warn!(
                    error = %e,
                    retry_in_ms = pause.as_millis() as u64,
                    "PostgreSQL is not reachable yet; waiting for it"
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(e) if writer::retryable(&e) => {
                tracing::error!(
                    error = %e,
                    waited_s = options.connect_retry.as_secs(),
                    "PostgreSQL still not reachable; giving up"
                );
                return Err(e);
            }
            other => return other,
        }
    }
}

async fn migrate_once(options: &PgOptions) -> Result<usize, StoreError> {
    let mut config = options.config()?;
    if let Some(schema) = &options.schema {
        // The schema must exist before search_path can name it.
        let mut plain = config.clone();
        plain.options("-c synchronous_commit=on");
        let (client, connection) = plain.connect(NoTls).await.map_err(pg_error)?;
        let task = tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
            .await
            .map_err(pg_error)?;
        drop(client);
        let _ = task.await;
        config = options.config()?;
    }
    let (mut client, connection) = config.connect(NoTls).await.map_err(pg_error)?;
    let task = tokio::spawn(connection);
    let applied = schema::migrate(&mut client).await;
    drop(client);
    let _ = task.await;
    applied
}

impl PgStore {
    /// Connects, applies the migrations and starts the writer.
    pub async fn open(options: &PgOptions) -> Result<PgStore, StoreError> {
        Self::open_fenced(options, lease::Fences::new("", Duration::from_secs(10))).await
    }

    /// [`PgStore::open`] for a cluster node: its writer refuses writes `fences` says this node
    /// no longer owns (`lease.rs`).
    pub async fn open_fenced(
        options: &PgOptions,
        fences: Arc<lease::Fences>,
    ) -> Result<PgStore, StoreError> {
        migrate(options).await?;
        let config = options.config()?;
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.statement_timeout))
            .create_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(StoreError::db)?;
        let size = Arc::new(size::StatsSize::default());
        match size::measure(&pool).await {
            Ok(bytes) => size.set(bytes),
            Err(error) => {
                tracing::warn!(error = %error, "cannot measure the postgres store's size")
            }
        }
        let queue = Arc::new(Queue::new());
        let metrics = Arc::new(Metrics::default());
        let handle = writer::spawn(
            config,
            options.writer_connections,
            queue.clone(),
            metrics.clone(),
            fences.clone(),
        )?;
        tracing::info!(schema = ?options.schema, "postgres store opened");
        Ok(PgStore {
            inner: Arc::new(Inner {
                fences,
                pool,
                queue,
                metrics,
                size,
                writer: Mutex::new(Some(handle)),
            }),
        })
    }

    /// The lease statements of cluster mode (`lease.rs`), on this store's pool and fences.
    pub fn leases(&self) -> lease::Leases {
        lease::Leases::new(self.inner.pool.clone(), self.inner.fences.clone())
    }

    fn read<'a, T: Send + 'a>(
        &'a self,
        f: impl std::future::Future<Output = Result<T, StoreError>> + Send + 'a,
    ) -> StoreFuture<'a, T> {
        Box::pin(f)
    }
}

impl Store for PgStore {
    fn submit(&self, ops: Vec<WriteOp>) -> Ack {
        let ops = match encode(ops) {
            Ok(ops) => ops,
            Err(e) => return Ack::failed(e),
        };
        let (tx, ack) = Ack::channel();
        match self.inner.queue.push_now(Batch {
            ops,
            done: Some(tx),
        }) {
            Ok(()) => ack,
            Err(e) => Ack::failed(e),
        }
    }

    fn enqueue(&self, ops: Vec<WriteOp>) -> StoreFuture<'_, Ack> {
        let encoded = encode(ops);
        Box::pin(async move {
            let (tx, ack) = Ack::channel();
            self.inner
                .queue
                .push_when_room(Batch {
                    ops: encoded?,
                    done: Some(tx),
                })
                .await?;
            Ok(ack)
        })
    }

    fn shutdown(&self) {
        self.inner.stop();
    }

    fn stats(&self) -> StoreStats {
        // Reopens stay 0 (the writer reconnects); the size is the last measurement (`size.rs`).
        self.inner
            .metrics
            .stats(self.inner.queue.len() as u64, self.size_bytes())
    }

    fn size_bytes(&self) -> u64 {
        self.inner.size.get(&self.inner.pool)
    }

    fn idle_conversations<'a>(
        &'a self,
        updated_before: i64,
        after: Option<&'a str>,
        limit: usize,
    ) -> StoreFuture<'a, Vec<ConversationRecord>> {
        self.read(read::idle_conversations(
            &self.inner.pool,
            updated_before,
            after,
            limit,
        ))
    }

    fn conversation_count(&self) -> StoreFuture<'_, u64> {
        self.read(read::conversation_count(&self.inner.pool))
    }

    fn get_conversation<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<ConversationRecord>> {
        self.read(read::get_conversation(&self.inner.pool, id))
    }

    fn list_conversations<'a>(
        &'a self,
        owner: &'a str,
        assistant: Option<&'a str>,
        limit: usize,
        cursor: Option<&'a str>,
    ) -> StoreFuture<'a, ConversationPage> {
        self.read(read::list_conversations(
            &self.inner.pool,
            owner,
            assistant,
            limit,
            cursor,
        ))
    }

    fn messages<'a>(
        &'a self,
        conversation: &'a str,
        before: Option<u64>,
        limit: usize,
    ) -> StoreFuture<'a, Vec<MessageRecord>> {
        self.read(read::messages(
            &self.inner.pool,
            conversation,
            before,
            limit,
        ))
    }

    fn events_since<'a>(
        &'a self,
        conversation: &'a str,
        since: u64,
        limit: usize,
    ) -> StoreFuture<'a, Vec<(u64, Bytes)>> {
        self.read(read::events_since(
            &self.inner.pool,
            conversation,
            since,
            limit,
        ))
    }

    fn last_seq<'a>(&'a self, conversation: &'a str) -> StoreFuture<'a, u64> {
        self.read(read::last_seq(&self.inner.pool, conversation))
    }

    fn checkpoint<'a>(&'a self, conversation: &'a str) -> StoreFuture<'a, Option<Bytes>> {
        self.read(read::checkpoint(&self.inner.pool, conversation))
    }

    fn idempotency_key<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<IdempotencyRecord>> {
        self.read(read::idempotency_key(&self.inner.pool, key))
    }

    fn conversations_with_status(
        &self,
        status: RunStatus,
    ) -> StoreFuture<'_, Vec<ConversationRecord>> {
        self.read(read::conversations_with_status(&self.inner.pool, status))
    }
}

impl Inner {
    fn stop(&self) {
        self.queue.close();
        let handle = self.writer.lock().take();
        if let Some(handle) = handle {
            if handle.join().is_err() {
                tracing::error!("the postgres store writer thread panicked");
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop();
    }
}
