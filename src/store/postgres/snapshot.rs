//! A consistent, read-only view of the whole PostgreSQL store for `parley export`.
//!
//! # Invariants
//!
//! - **One snapshot.** Every read of an export goes through ONE connection inside ONE
//!   `REPEATABLE READ, READ ONLY` transaction: PostgreSQL fixes the snapshot at its first
//!   statement, so the export shows the database exactly as it was at one instant, even while
//!   nodes keep writing (a record, its messages, events and checkpoint always agree). Nothing
//!   is locked: writers are never blocked by an export, and the export never waits for them.
//! - **Never writes.** `READ ONLY` makes the server refuse any write on this connection.
//! - The transaction ends when the snapshot is dropped (the connection closes).
//!
//! The reads are the [`Source`](crate::store::transfer::Source) that `transfer::export_from`
//! walks; each is one indexed statement, as in `read.rs`.

use super::pg_error;
use bytes::Bytes;
use tokio_postgres::{Client, NoTls, Row, Statement};

use super::read::{clamp, events_from_rows, nothing_after, EVENT_CHUNKS, LAST_SEQ};
use super::PgOptions;
use crate::store::transfer::Source;
use crate::store::{ConversationRecord, MessageRecord, StoreError, StoreFuture};

/// An open snapshot of the store named by a [`PgOptions`].
pub struct PgSnapshot {
    client: Client,
    /// The reads, prepared once: [`CONVERSATIONS`], [`MESSAGES`], [`EVENT_CHUNKS`], [`LAST_SEQ`],
    /// [`CHECKPOINT`].
    statements: Vec<Statement>,
    task: tokio::task::JoinHandle<()>,
}

const CONVERSATIONS: &str = "SELECT id, record FROM conversations ORDER BY id";
const MESSAGES: &str = "SELECT no, record FROM messages WHERE conversation = $1 AND no < $2
     ORDER BY no DESC LIMIT $3";
const CHECKPOINT: &str = "SELECT data FROM checkpoints WHERE conversation = $1";
const ALL: [&str; 5] = [CONVERSATIONS, MESSAGES, EVENT_CHUNKS, LAST_SEQ, CHECKPOINT];

impl std::fmt::Debug for PgSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSnapshot").finish_non_exhaustive()
    }
}

impl PgSnapshot {
    /// Connects and takes the snapshot (the first statement of the transaction fixes it).
    pub async fn begin(options: &PgOptions) -> Result<PgSnapshot, StoreError> {
        let config = options.config()?;
        let (client, connection) = config.connect(NoTls).await.map_err(pg_error)?;
        let task = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "postgres snapshot connection ended");
            }
        });
        // The snapshot is taken by the first statement after BEGIN: take it now, so that
        // "begin" is the instant the export shows.
        client
            .batch_execute(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; \
                 SELECT 1 FROM conversations LIMIT 1",
            )
            .await
            .map_err(pg_error)?;
        let mut statements = Vec::with_capacity(ALL.len());
        for sql in ALL {
            statements.push(client.prepare(sql).await.map_err(pg_error)?);
        }
        Ok(PgSnapshot {
            client,
            statements,
            task,
        })
    }

    async fn query(
        &self,
        sql: &'static str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let index = ALL.iter().position(|s| *s == sql);
        match index.and_then(|i| self.statements.get(i)) {
            Some(stmt) => self.client.query(stmt, params).await,
            None => self.client.query(sql, params).await,
        }
        .map_err(pg_error)
    }
}

impl Drop for PgSnapshot {
    fn drop(&mut self) {
        // Closing the connection ends the read-only transaction.
        self.task.abort();
    }
}

fn decode<T: serde::de::DeserializeOwned>(what: String, json: &str) -> Result<T, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::corrupt(what, e))
}

impl Source for PgSnapshot {
    fn conversations(&self) -> StoreFuture<'_, Vec<ConversationRecord>> {
        Box::pin(async move {
            let rows = self.query(CONVERSATIONS, &[]).await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                let id: &str = row.get(0);
                match decode(format!("conversation {id}"), row.get(1)) {
                    Ok(record) => out.push(record),
                    Err(e) => tracing::error!(error = %e, "skipping an undecodable conversation"),
                }
            }
            Ok(out)
        })
    }

    fn messages<'a>(
        &'a self,
        conversation: &'a str,
        before: Option<u64>,
        limit: usize,
    ) -> StoreFuture<'a, Vec<MessageRecord>> {
        Box::pin(async move {
            let before = before.map_or(i64::MAX, clamp);
            let rows = self
                .query(MESSAGES, &[&conversation, &before, &clamp(limit as u64)])
                .await?;
            rows.iter()
                .map(|row| {
                    let no: i64 = row.get(0);
                    decode(format!("message {no} of {conversation}"), row.get(1))
                })
                .collect()
        })
    }

    fn events_since<'a>(
        &'a self,
        conversation: &'a str,
        since: u64,
        limit: usize,
    ) -> StoreFuture<'a, Vec<(u64, Bytes)>> {
        Box::pin(async move {
            if nothing_after(since, limit) {
                return Ok(Vec::new());
            }
            let rows = self
                .query(
                    EVENT_CHUNKS,
                    &[&conversation, &clamp(since), &clamp(limit as u64)],
                )
                .await?;
            events_from_rows(conversation, since, limit, &rows)
        })
    }

    fn last_seq<'a>(&'a self, conversation: &'a str) -> StoreFuture<'a, u64> {
        Box::pin(async move {
            let rows = self.query(LAST_SEQ, &[&conversation]).await?;
            Ok(rows.first().map_or(0, |r| r.get::<_, i64>(0) as u64))
        })
    }

    fn checkpoint<'a>(&'a self, conversation: &'a str) -> StoreFuture<'a, Option<Bytes>> {
        Box::pin(async move {
            let rows = self.query(CHECKPOINT, &[&conversation]).await?;
            Ok(rows.first().map(|r| Bytes::from(r.get::<_, Vec<u8>>(0))))
        })
    }
}
