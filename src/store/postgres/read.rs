//! Reads through the connection pool: async all the way (never a blocked worker), each one
//! statement on an index, retried once on a fresh connection when the connection was lost.

use super::pg_error;
use bytes::Bytes;
use deadpool_postgres::Pool;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::writer::retryable;
use crate::store::chunk::events_after;
use crate::store::{
    ConversationPage, ConversationRecord, IdempotencyRecord, MessageRecord, RunStatus, StoreError,
};

/// Runs one query, retrying once on a new connection after a connection-level error.
pub(super) async fn query(
    pool: &Pool,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, StoreError> {
    let mut attempt = 0;
    loop {
        let result = async {
            let client = pool.get().await.map_err(|e| match e {
                // A failed connect is a PostgreSQL error like any other (and retryable).
                deadpool_postgres::PoolError::Backend(e) => pg_error(e),
                other => StoreError::db(other),
            })?;
            let stmt = client.prepare_cached(sql).await.map_err(pg_error)?;
            client.query(&stmt, params).await.map_err(pg_error)
        }
        .await;
        match result {
            Err(e) if attempt == 0 && retryable(&e) => attempt += 1,
            other => return other,
        }
    }
}

pub(super) fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn decode_conversation(row: &Row) -> Result<ConversationRecord, StoreError> {
    let id: String = row.get(0);
    let json: String = row.get(1);
    serde_json::from_str(&json).map_err(|e| StoreError::corrupt(format!("conversation {id}"), e))
}

pub(super) async fn get_conversation(
    pool: &Pool,
    id: &str,
) -> Result<Option<ConversationRecord>, StoreError> {
    let rows = query(
        pool,
        "SELECT id, record FROM conversations WHERE id = $1",
        &[&id],
    )
    .await?;
    rows.first().map(decode_conversation).transpose()
}

/// A cursor is the hex of `updated_at` and id of the last item of a page.
fn encode_cursor(record: &ConversationRecord) -> String {
    hex::encode(format!("{}\n{}", record.updated_at, record.id))
}

fn decode_cursor(cursor: &str) -> Result<(i64, String), StoreError> {
    let bytes = hex::decode(cursor).map_err(|_| StoreError::InvalidCursor)?;
    let text = String::from_utf8(bytes).map_err(|_| StoreError::InvalidCursor)?;
    let (at, id) = text.split_once('\n').ok_or(StoreError::InvalidCursor)?;
    let at = at.parse().map_err(|_| StoreError::InvalidCursor)?;
    Ok((at, id.to_owned()))
}

pub(super) async fn list_conversations(
    pool: &Pool,
    owner: &str,
    assistant: Option<&str>,
    limit: usize,
    cursor: Option<&str>,
) -> Result<ConversationPage, StoreError> {
    let limit = limit.max(1);
    let after = cursor.map(decode_cursor).transpose()?;
    let (at, id) = match &after {
        Some((at, id)) => (Some(*at), Some(id.as_str())),
        None => (None, None),
    };
    let fetch = clamp(limit as u64 + 1);
    let rows = query(
        pool,
        "SELECT id, record FROM conversations
         WHERE owner = $1 AND ($2::text IS NULL OR assistant = $2)
           AND ($3::int8 IS NULL OR updated_at < $3 OR (updated_at = $3 AND id > $4))
         ORDER BY updated_at DESC, id
         LIMIT $5",
        &[&owner, &assistant, &at, &id, &fetch],
    )
    .await?;
    let more = rows.len() > limit;
    let mut items = Vec::with_capacity(limit);
    for row in rows.iter().take(limit) {
        match decode_conversation(row) {
            Ok(record) => items.push(record),
            Err(e) => tracing::error!(error = %e, "skipping an undecodable conversation"),
        }
    }
    let next_cursor = if more {
        items.last().map(encode_cursor)
    } else {
        None
    };
    Ok(ConversationPage { items, next_cursor })
}

pub(super) async fn messages(
    pool: &Pool,
    conversation: &str,
    before: Option<u64>,
    limit: usize,
) -> Result<Vec<MessageRecord>, StoreError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let before = before.map_or(i64::MAX, clamp);
    let rows = query(
        pool,
        "SELECT no, record FROM messages WHERE conversation = $1 AND no < $2
         ORDER BY no DESC LIMIT $3",
        &[&conversation, &before, &clamp(limit as u64)],
    )
    .await?;
    rows.iter()
        .map(|row| {
            let no: i64 = row.get(0);
            let json: String = row.get(1);
            serde_json::from_str(&json).map_err(|e| {
                StoreError::corrupt(format!("message {no} of conversation {conversation}"), e)
            })
        })
        .collect()
}

pub(super) async fn events_since(
    pool: &Pool,
    conversation: &str,
    since: u64,
    limit: usize,
) -> Result<Vec<(u64, Bytes)>, StoreError> {
    if nothing_after(since, limit) {
        return Ok(Vec::new());
    }
    let rows = query(
        pool,
        EVENT_CHUNKS,
        &[&conversation, &clamp(since), &clamp(limit as u64)],
    )
    .await?;
    events_from_rows(conversation, since, limit, &rows)
}

/// Whether a read of events after `since` (at most `limit`) can only be empty: seqs are stored
/// as `int8`, so none is above `i64::MAX`.
pub(super) fn nothing_after(since: u64, limit: usize) -> bool {
    limit == 0 || since >= i64::MAX as u64
}

/// The chunks holding events after `$2`, enough for `$3` events (each chunk adds at least one:
/// `store/chunk.rs`).
pub(super) const EVENT_CHUNKS: &str = "SELECT last_seq, data FROM event_chunks
     WHERE conversation = $1 AND last_seq > $2 ORDER BY last_seq LIMIT $3";

/// The highest stored seq of a conversation.
pub(super) const LAST_SEQ: &str =
    "SELECT last_seq FROM event_chunks WHERE conversation = $1 ORDER BY last_seq DESC LIMIT 1";

/// The events after `since` in the rows of [`EVENT_CHUNKS`].
pub(super) fn events_from_rows(
    conversation: &str,
    since: u64,
    limit: usize,
    rows: &[Row],
) -> Result<Vec<(u64, Bytes)>, StoreError> {
    let chunks = rows.iter().map(|row| {
        let last: i64 = row.try_get(0).map_err(pg_error)?;
        let data: &[u8] = row.try_get(1).map_err(pg_error)?;
        Ok((last as u64, data))
    });
    events_after(conversation, since, limit, chunks)
}

pub(super) async fn last_seq(pool: &Pool, conversation: &str) -> Result<u64, StoreError> {
    let rows = query(pool, LAST_SEQ, &[&conversation]).await?;
    Ok(rows.first().map_or(0, |r| r.get::<_, i64>(0) as u64))
}

pub(super) async fn checkpoint(
    pool: &Pool,
    conversation: &str,
) -> Result<Option<Bytes>, StoreError> {
    let rows = query(
        pool,
        "SELECT data FROM checkpoints WHERE conversation = $1",
        &[&conversation],
    )
    .await?;
    Ok(rows.first().map(|r| Bytes::from(r.get::<_, Vec<u8>>(0))))
}

/// A stored idempotency key, unless it has expired.
pub(super) async fn idempotency_key(
    pool: &Pool,
    key: &str,
) -> Result<Option<IdempotencyRecord>, StoreError> {
    let now = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
    let rows = query(
        pool,
        "SELECT record FROM idempotency_keys WHERE key = $1 AND expires_at > $2",
        &[&key, &now],
    )
    .await?;
    rows.first()
        .map(|r| {
            serde_json::from_str(r.get::<_, &str>(0))
                .map_err(|e| StoreError::corrupt(format!("idempotency key {key:?}: {e}"), e))
        })
        .transpose()
}

pub(super) fn status_name(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Idle => "idle",
        RunStatus::Running => "running",
        RunStatus::Paused => "paused",
        RunStatus::Completed => "completed",
        RunStatus::Failed => "failed",
        RunStatus::Cancelled => "cancelled",
    }
}

pub(super) async fn conversations_with_status(
    pool: &Pool,
    status: RunStatus,
) -> Result<Vec<ConversationRecord>, StoreError> {
    let rows = query(
        pool,
        "SELECT id, record FROM conversations WHERE status = $1 ORDER BY id",
        &[&status_name(status)],
    )
    .await?;
    Ok(rows
        .iter()
        .filter_map(|row| match decode_conversation(row) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::error!(error = %e, "skipping an undecodable conversation");
                None
            }
        })
        .collect())
}

/// The retention sweep's page: both conditions are index conditions of `conversations_idle`.
pub(super) const IDLE_CONVERSATIONS: &str = "SELECT id, record FROM conversations
     WHERE id > $1 AND updated_at < $2
     ORDER BY id LIMIT $3";

/// Conversations with `updated_at < updated_before`, in id order after `after`, at most `limit`
/// (the retention sweep's pages): a range scan of `conversations_idle`.
pub(super) async fn idle_conversations(
    pool: &Pool,
    updated_before: i64,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<ConversationRecord>, StoreError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let rows = query(
        pool,
        IDLE_CONVERSATIONS,
        &[&after.unwrap_or(""), &updated_before, &clamp(limit as u64)],
    )
    .await?;
    Ok(rows
        .iter()
        .filter_map(|row| match decode_conversation(row) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::error!(error = %e, "skipping an undecodable conversation");
                None
            }
        })
        .collect())
}

/// Stored conversations (a count of the primary key: for the sweeper, not for request paths).
pub(super) async fn conversation_count(pool: &Pool) -> Result<u64, StoreError> {
    let rows = query(pool, "SELECT count(*) FROM conversations", &[]).await?;
    Ok(rows
        .first()
        .map_or(0, |r| u64::try_from(r.get::<_, i64>(0)).unwrap_or(0)))
}
