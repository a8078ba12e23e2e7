//! The read side: synchronous methods of [`Reader`], one short read transaction each. They
//! block (disk reads), so `RedbStore` runs them on tokio's blocking pool, never on an async
//! worker, except the point read `get_conversation` (see "Reads" in `mod.rs`).
//!
//! Invariants: readers never write and never wait for the writer (redb MVCC snapshots); each
//! method opens one read transaction and drops it before returning, so no snapshot outlives the
//! call. A reader sees only committed data, i.e. data whose waiters have been (or are about to
//! be) answered with success.

use std::ops::Bound;

use bytes::Bytes;
use std::sync::Arc;

use redb::{ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata};

use super::handle::DbHandle;
use super::tables::{
    decode_conversation, inverted_time, read_key, storage_key, Cursor, BY_OWNER,
    BY_OWNER_ASSISTANT, CHECKPOINTS, CONVERSATIONS, EVENTS, IDEMPOTENCY, MESSAGES, STORAGE_KEYS,
};
use crate::store::chunk::events_after;
use crate::store::{
    ConversationPage, ConversationRecord, IdempotencyRecord, MessageRecord, RunStatus, StoreError,
};

/// The synchronous readers over one database (cheap to clone into a blocking task).
#[derive(Clone)]
pub(super) struct Reader {
    pub db: Arc<DbHandle>,
}

impl Reader {
    fn read_txn(&self) -> Result<ReadTransaction, StoreError> {
        // The `Arc<Database>` is released when this returns; the transaction keeps what it needs.
        Ok(self.db.get()?.begin_read()?)
    }

    /// The conversation record, if it exists.
    pub(super) fn get_conversation(
        &self,
        id: &str,
    ) -> Result<Option<ConversationRecord>, StoreError> {
        let txn = self.read_txn()?;
        let Some(key) = read_key(&txn, id)? else {
            return Ok(None);
        };
        let table = txn.open_table(CONVERSATIONS)?;
        let found = table.get(key.as_ref())?;
        found
            .map(|guard| decode_conversation(id, guard.value()))
            .transpose()
    }

    /// The owner's conversations, newest `updated_at` first (ties: by id), optionally only those
    /// of one assistant. `limit` is at least 1. `cursor` is a `next_cursor` of an earlier page
    /// (of the same owner and filter); paging never skips or repeats a conversation that was not
    /// updated in between. A conversation updated between two page reads moves to the front and
    /// may be seen twice or not at all, as with any activity-ordered listing.
    ///
    /// Undecodable records are logged and skipped (see the module docs).
    pub(super) fn list_conversations(
        &self,
        owner: &str,
        assistant: Option<&str>,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<ConversationPage, StoreError> {
        let limit = limit.max(1);
        let after = cursor.map(Cursor::decode).transpose()?;
        let txn = self.read_txn()?;
        let records = Records {
            keys: txn.open_table(STORAGE_KEYS)?,
            table: txn.open_table(CONVERSATIONS)?,
        };

        // Index positions, in listing order, read lazily until the page is full.
        let mut items: Vec<ConversationRecord> = Vec::with_capacity(limit.min(128));
        let mut last: Option<Cursor> = None;
        let mut more = false;
        let mut consider = |time: u64, id: &str| -> Result<bool, StoreError> {
            let Some(record) = load_listed(&records, owner, assistant, time, id)? else {
                return Ok(true);
            };
            if items.len() == limit {
                more = true;
                return Ok(false);
            }
            last = Some(Cursor {
                inverted_time: time,
                id: id.to_owned(),
            });
            items.push(record);
            Ok(true)
        };

        match assistant {
            None => {
                let index = txn.open_table(BY_OWNER)?;
                let start = match &after {
                    Some(c) => Bound::Excluded((owner, c.inverted_time, c.id.as_str())),
                    None => Bound::Included((owner, 0u64, "")),
                };
                for entry in index.range::<(&str, u64, &str)>((start, Bound::Unbounded))? {
                    let (key, _) = entry?;
                    let (key_owner, time, id) = key.value();
                    if key_owner != owner || !consider(time, id)? {
                        break;
                    }
                }
            }
            Some(assistant) => {
                let index = txn.open_table(BY_OWNER_ASSISTANT)?;
                let start = match &after {
                    Some(c) => Bound::Excluded((owner, assistant, c.inverted_time, c.id.as_str())),
                    None => Bound::Included((owner, assistant, 0u64, "")),
                };
                for entry in index.range::<(&str, &str, u64, &str)>((start, Bound::Unbounded))? {
                    let (key, _) = entry?;
                    let (key_owner, key_assistant, time, id) = key.value();
                    if key_owner != owner || key_assistant != assistant || !consider(time, id)? {
                        break;
                    }
                }
            }
        }
        let next_cursor = if more { last.map(|c| c.encode()) } else { None };
        Ok(ConversationPage { items, next_cursor })
    }

    /// Messages with `no < before` (all when `None`), newest first, at most `limit`.
    pub(super) fn messages(
        &self,
        conversation: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<MessageRecord>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let txn = self.read_txn()?;
        let Some(key) = read_key(&txn, conversation)? else {
            return Ok(Vec::new());
        };
        let k = key.as_ref();
        let upper = match before {
            Some(before) => Bound::Excluded((k, before)),
            None => Bound::Included((k, u64::MAX)),
        };
        let table = txn.open_table(MESSAGES)?;
        let range = table.range::<(&str, u64)>((Bound::Included((k, 0u64)), upper))?;
        let mut out = Vec::with_capacity(limit.min(256));
        for entry in range.rev().take(limit) {
            let (key, value) = entry?;
            out.push(decode_message(conversation, key.value().1, value.value())?);
        }
        Ok(out)
    }

    /// Events with `seq > since`, ascending, at most `limit`: `(seq, event JSON)`.
    pub(super) fn events_since(
        &self,
        conversation: &str,
        since: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Bytes)>, StoreError> {
        if limit == 0 || since == u64::MAX {
            return Ok(Vec::new());
        }
        let txn = self.read_txn()?;
        let Some(key) = read_key(&txn, conversation)? else {
            return Ok(Vec::new());
        };
        let k = key.as_ref();
        let table = txn.open_table(EVENTS)?;
        // Chunks are keyed by their last seq: the first one in range holds `since + 1`.
        let range = table.range((k, since + 1)..=(k, u64::MAX))?;
        let chunks = range.map(|entry| {
            let (key, value) = entry?;
            Ok((key.value().1, Stored(value)))
        });
        events_after(conversation, since, limit, chunks)
    }

    /// The highest stored seq of the conversation's events (0 when it has none).
    pub(super) fn last_seq(&self, conversation: &str) -> Result<u64, StoreError> {
        let txn = self.read_txn()?;
        let Some(key) = read_key(&txn, conversation)? else {
            return Ok(0);
        };
        let k = key.as_ref();
        let table = txn.open_table(EVENTS)?;
        let mut range = table.range((k, 0u64)..=(k, u64::MAX))?;
        match range.next_back() {
            Some(entry) => Ok(entry?.0.value().1),
            None => Ok(0),
        }
    }

    /// The conversation's checkpoint, if any.
    pub(super) fn checkpoint(&self, conversation: &str) -> Result<Option<Bytes>, StoreError> {
        let txn = self.read_txn()?;
        let Some(key) = read_key(&txn, conversation)? else {
            return Ok(None);
        };
        let table = txn.open_table(CHECKPOINTS)?;
        let found = table.get(key.as_ref())?;
        Ok(found.map(|guard| Bytes::copy_from_slice(guard.value())))
    }

    /// An idempotency key's record, unless it expired.
    pub(super) fn idempotency_key(
        &self,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        let txn = self.read_txn()?;
        let table = txn.open_table(IDEMPOTENCY)?;
        let Some(found) = table.get(key)? else {
            return Ok(None);
        };
        let record: IdempotencyRecord = serde_json::from_slice(found.value())
            .map_err(|e| StoreError::corrupt(format!("idempotency key {key:?}: {e}"), e))?;
        let now = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
        Ok((record.expires_at_ms > now).then_some(record))
    }

    /// Every conversation whose status is `status`. A FULL SCAN of the conversations table, meant
    /// for startup (finding runs that were active when the process died), not for request paths.
    /// Undecodable records are logged and skipped so that one cannot block the others' recovery.
    pub(super) fn conversations_with_status(
        &self,
        status: RunStatus,
    ) -> Result<Vec<ConversationRecord>, StoreError> {
        let txn = self.read_txn()?;
        let table = txn.open_table(CONVERSATIONS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            match decode_conversation(key.value(), value.value()) {
                Ok(record) if record.status == status => out.push(record),
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "skipping an unreadable conversation"),
            }
        }
        Ok(out)
    }
}

impl Reader {
    /// Conversations with `updated_at < updated_before`, id order, after `after`, at most `limit`.
    pub(super) fn idle_conversations(
        &self,
        updated_before: i64,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ConversationRecord>, StoreError> {
        let txn = self.read_txn()?;
        let keys = txn.open_table(STORAGE_KEYS)?;
        let table = txn.open_table(CONVERSATIONS)?;
        let range = match after {
            Some(after) => keys.range::<&str>((Bound::Excluded(after), Bound::Unbounded))?,
            None => keys.range::<&str>(..)?,
        };
        let mut out = Vec::new();
        for entry in range {
            let (id, key) = entry?;
            let Some(value) = table.get(key.value())? else {
                continue; // rows written before their record (see `writer.rs`)
            };
            match decode_conversation(id.value(), value.value()) {
                Ok(record) if record.updated_at < updated_before => {
                    out.push(record);
                    if out.len() >= limit {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "skipping an unreadable conversation"),
            }
        }
        Ok(out)
    }

    /// Stored conversations.
    pub(super) fn conversation_count(&self) -> Result<u64, StoreError> {
        let txn = self.read_txn()?;
        let table = txn.open_table(CONVERSATIONS)?;
        Ok(table.len()?)
    }
}

/// The conversation records of a read and the keys they are stored under.
struct Records {
    keys: redb::ReadOnlyTable<&'static str, &'static str>,
    table: redb::ReadOnlyTable<&'static str, &'static [u8]>,
}

/// The record behind an index key, if the key is current: the record exists, decodes, and still
/// has this owner, assistant and time (a key left behind by an unreadable old record is not).
fn load_listed(
    records: &Records,
    owner: &str,
    assistant: Option<&str>,
    time: u64,
    id: &str,
) -> Result<Option<ConversationRecord>, StoreError> {
    let found = match storage_key(&records.keys, id)? {
        Some(key) => records.table.get(key.as_ref())?,
        None => None,
    };
    let Some(guard) = found else {
        tracing::warn!(conversation = id, "index key without a conversation record");
        return Ok(None);
    };
    let record = match decode_conversation(id, guard.value()) {
        Ok(record) => record,
        Err(e) => {
            tracing::error!(error = %e, "skipping an unreadable conversation in a listing");
            return Ok(None);
        }
    };
    let current = record.owner == owner
        && inverted_time(record.updated_at) == time
        && assistant.is_none_or(|a| a == record.assistant);
    Ok(current.then_some(record))
}

fn decode_message(conversation: &str, no: u64, bytes: &[u8]) -> Result<MessageRecord, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| {
        StoreError::corrupt(
            format!("message {no} of conversation {conversation:?}: {e}"),
            e,
        )
    })
}

/// A stored chunk, read in place.
struct Stored<'a>(redb::AccessGuard<'a, &'static [u8]>);

impl AsRef<[u8]> for Stored<'_> {
    fn as_ref(&self) -> &[u8] {
        self.0.value()
    }
}
