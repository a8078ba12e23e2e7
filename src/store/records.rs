//! What the store keeps, as types: conversation and message records, the write ops, a listing
//! page and the writer's counters. Every backend stores exactly these; their JSON shape (camelCase)
//! is also the shape of stored redb values, so a field added here needs `#[serde(default)]`.

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::llm::Role;

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
    /// Stored as `"user"`, `"assistant"`, ... (lowercase), as it always was.
    pub role: Role,
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    pub created_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

/// A request accepted under an idempotency key (CONTRACT §6), stored in the same commit as the
/// message or answer it guards, so that a retry after a restart is still recognised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdempotencyRecord {
    /// The request's fingerprint (hex SHA-256): the same key with another request is refused.
    pub fingerprint: String,
    pub conversation_id: String,
    /// The run the request started; empty when none was (a queued message).
    pub run_id: String,
    /// Unix milliseconds after which the key is forgotten (24 hours after it was stored).
    pub expires_at_ms: i64,
}

/// One write.
#[derive(Debug, Clone)]
pub enum WriteOp {
    /// Remember an idempotency key (its scoped key: user, route and key in one string).
    PutIdempotencyKey {
        key: String,
        record: IdempotencyRecord,
    },
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// Reopens of the database after storage faults.
    pub reopens: u64,
    /// False while the store cannot write (the last attempt failed); `/readyz` is 503 then.
    pub writable: bool,
    /// Bytes the store takes on disk (0 when unknown).
    pub size_bytes: u64,
}

impl Default for StoreStats {
    fn default() -> Self {
        StoreStats {
            commits: 0,
            failed_commits: 0,
            ops_committed: 0,
            batches_committed: 0,
            last_group_ops: 0,
            last_group_batches: 0,
            commit_time: Duration::ZERO,
            queued_batches: 0,
            reopens: 0,
            writable: true,
            size_bytes: 0,
        }
    }
}
