//! Table definitions, key encodings, the listing cursor and the conversions of redb's errors
//! (each kept as the [`StoreError`]'s source).
//!
//! Invariants kept here: every key is a tuple whose first element is the conversation (or the
//! owner), so replay, history and listing are range scans on a prefix; the activity index key
//! orders newest `updated_at` first and breaks ties by conversation id, which makes it a total
//! order and lets a cursor name an exact position (stable paging under equal timestamps).
//! Only the writer thread (see `writer.rs`) opens these tables for writing.

use std::borrow::Cow;

use redb::{ReadableTable, TableDefinition};
use serde::Deserialize;

use crate::store::{ConversationRecord, StoreError};

/// storage key (see [`storage_key`]) → JSON of `ConversationRecord`.
pub(super) const CONVERSATIONS: TableDefinition<&str, &[u8]> =
    TableDefinition::new("conversations");
/// (owner, inverted updated_at, id) → ().
pub(super) const BY_OWNER: TableDefinition<(&str, u64, &str), ()> =
    TableDefinition::new("conversations_by_owner");
/// (owner, assistant, inverted updated_at, id) → ().
pub(super) const BY_OWNER_ASSISTANT: TableDefinition<(&str, &str, u64, &str), ()> =
    TableDefinition::new("conversations_by_owner_assistant");
/// (conversation, no) → JSON of `MessageRecord`.
pub(super) const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
/// (conversation, last seq of the chunk) → a chunk of consecutive events (see `encode.rs`).
pub(super) const EVENTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("event_chunks");
/// The format before event chunks: (conversation, seq) → one event's JSON bytes. Read once, by
/// `schema::create_all`, to move its rows into chunks.
pub(super) const EVENTS_V1: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("events");
/// conversation → checkpoint bytes.
pub(super) const CHECKPOINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("checkpoints");

/// conversation id → its storage key (see [`storage_key`]), for every stored conversation.
pub(super) const STORAGE_KEYS: TableDefinition<&str, &str> = TableDefinition::new("storage_keys");

/// scoped idempotency key → `IdempotencyRecord` JSON.
pub(super) const IDEMPOTENCY: TableDefinition<&str, &[u8]> =
    TableDefinition::new("idempotency_keys");

// ---- storage keys -----------------------------------------------------------------------------
//
// A conversation's record, messages, event chunks and checkpoint are keyed by its *storage
// key*. For an id the server made (a UUID v7, which orders by creation time) the storage key is
// the id itself. An id a client chose (an AG-UI `threadId`, typically a random UUID v4) would
// scatter each new conversation's rows over the whole of those tables, and a copy-on-write
// B-tree pays for every leaf a commit touches (copy, checksum, write): such a conversation gets
// a storage key of its own when its first row is written, `~` and a fresh UUID v7 (a client's
// id cannot hold `~`), so its rows are appended at the end like the server's. Only its entry in
// `storage_keys` (a few dozen bytes) lands at a random place.
//
// Invariant: `storage_keys` holds an entry for every stored conversation (id → key; the id
// itself for a UUID v7), so the retention sweeper can page through conversations in id order.
// A file written before `storage_keys` existed gets the entries of its conversations (each
// keyed by its id) when it is opened (`schema.rs`).

/// Whether `id` orders by creation time by itself (a UUID v7, as the server makes them).
pub(super) fn time_ordered(id: &str) -> bool {
    uuid::Uuid::try_parse(id).is_ok_and(|u| u.get_version_num() == 7)
}

/// The storage key of conversation `id`, `None` when it has none (it does not exist). A UUID
/// v7 is its own key: no lookup, no copy.
pub(super) fn storage_key<'a>(
    keys: &impl ReadableTable<&'static str, &'static str>,
    id: &'a str,
) -> Result<Option<Cow<'a, str>>, StoreError> {
    if time_ordered(id) {
        return Ok(Some(Cow::Borrowed(id)));
    }
    Ok(keys.get(id)?.map(|k| Cow::Owned(k.value().to_owned())))
}

/// The storage key of conversation `id` in a read, `None` when it does not exist. (Never the
/// id itself then: an id someone made up could be another conversation's storage key.) The
/// keys table is opened only for an id that is not time-ordered.
pub(super) fn read_key<'a>(
    txn: &redb::ReadTransaction,
    id: &'a str,
) -> Result<Option<Cow<'a, str>>, StoreError> {
    if time_ordered(id) {
        return Ok(Some(Cow::Borrowed(id)));
    }
    storage_key(&txn.open_table(STORAGE_KEYS)?, id)
}

/// `storage_keys` as the writer sees it during one group: each id that is not time-ordered is
/// looked up once per group, not once per row (a run writes about five rows).
pub(super) struct WriteKeys<'t> {
    table: redb::Table<'t, &'static str, &'static str>,
    seen: std::collections::HashMap<String, String>,
}

impl<'t> WriteKeys<'t> {
    pub(super) fn open(txn: &'t redb::WriteTransaction) -> Result<Self, StoreError> {
        Ok(WriteKeys {
            table: txn.open_table(STORAGE_KEYS)?,
            seen: std::collections::HashMap::new(),
        })
    }

    /// The storage key of conversation `id`. A new conversation whose id is not time-ordered
    /// gets its key and entry here, whichever of its rows is written first (a new UUID v7 gets
    /// its entry with its record: [`WriteKeys::record_created`]).
    pub(super) fn key<'a>(&mut self, id: &'a str) -> Result<Cow<'a, str>, StoreError> {
        if time_ordered(id) {
            return Ok(Cow::Borrowed(id));
        }
        if let Some(key) = self.seen.get(id) {
            return Ok(Cow::Owned(key.clone()));
        }
        let key = match storage_key(&self.table, id)? {
            Some(key) => key.into_owned(),
            None => {
                let key = format!("~{}", uuid::Uuid::now_v7());
                self.table.insert(id, key.as_str())?;
                key
            }
        };
        self.seen.insert(id.to_owned(), key.clone());
        Ok(Cow::Owned(key))
    }

    /// The first record of conversation `id` (stored under `key`) is being written.
    pub(super) fn record_created(&mut self, id: &str, key: &str) -> Result<(), StoreError> {
        if key == id {
            // A UUID v7: its entry, for paging in id order.
            self.table.insert(id, id)?;
        }
        Ok(())
    }

    /// Removes the entry of conversation `id` and answers its storage key; `None` when it
    /// has none (nothing is stored for it: never the id itself, which could be another
    /// conversation's key).
    pub(super) fn remove<'a>(&mut self, id: &'a str) -> Result<Option<Cow<'a, str>>, StoreError> {
        self.seen.remove(id);
        let removed = self.table.remove(id)?;
        Ok(match removed {
            Some(k) => Some(Cow::Owned(k.value().to_owned())),
            // A UUID v7 whose rows came before its record has no entry yet.
            None => time_ordered(id).then_some(Cow::Borrowed(id)),
        })
    }
}

/// Newest first: a later `updated_at` gives a smaller key. Negative times sort as 0.
pub(super) fn inverted_time(updated_at: i64) -> u64 {
    u64::MAX - u64::try_from(updated_at).unwrap_or(0)
}

/// The fields of a stored conversation record that locate its index keys. Decoded on its own
/// so that the writer does not depend on the rest of the record being readable.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct IndexFields {
    pub owner: String,
    pub assistant: String,
    pub updated_at: i64,
}

impl IndexFields {
    pub(super) fn of(record: &ConversationRecord) -> IndexFields {
        IndexFields {
            owner: record.owner.clone(),
            assistant: record.assistant.clone(),
            updated_at: record.updated_at,
        }
    }
}

pub(super) fn decode_conversation(
    id: &str,
    bytes: &[u8],
) -> Result<ConversationRecord, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::corrupt(format!("conversation {id:?}: {e}"), e))
}

/// A position in a listing: the last index entry returned. Opaque to clients: 16 hex digits of
/// the inverted time followed by the hex of the conversation id's UTF-8 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Cursor {
    pub inverted_time: u64,
    pub id: String,
}

impl Cursor {
    pub(super) fn encode(&self) -> String {
        format!(
            "{:016x}{}",
            self.inverted_time,
            hex::encode(self.id.as_bytes())
        )
    }

    pub(super) fn decode(text: &str) -> Result<Cursor, StoreError> {
        let time = text.get(..16).ok_or(StoreError::InvalidCursor)?;
        let id = text.get(16..).ok_or(StoreError::InvalidCursor)?;
        if !time.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(StoreError::InvalidCursor);
        }
        let inverted_time = u64::from_str_radix(time, 16).map_err(|_| StoreError::InvalidCursor)?;
        let id = hex::decode(id).map_err(|_| StoreError::InvalidCursor)?;
        let id = String::from_utf8(id).map_err(|_| StoreError::InvalidCursor)?;
        Ok(Cursor { inverted_time, id })
    }
}

impl From<redb::StorageError> for StoreError {
    fn from(e: redb::StorageError) -> Self {
        match e {
            redb::StorageError::Corrupted(what) => StoreError::Corrupt { what, source: None },
            other => StoreError::db(other),
        }
    }
}

macro_rules! redb_error_into_db {
    ($($t:ty),* $(,)?) => {
        $(impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::db(e)
            }
        })*
    };
}

redb_error_into_db!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::CommitError,
    redb::SetDurabilityError,
);
