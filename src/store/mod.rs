//! The redb store: conversations, messages, the event log, checkpoints.
//!
//! API CONTRACT (implementation pending in this file; signatures are fixed):
//! - One writer thread owns every write transaction. Callers send it [`WriteOp`]s; it groups
//!   everything that is queued into one durable commit and then answers every waiter.
//! - Readers use short read transactions on the shared `Database`.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage error: {0}")]
    Db(String),
    #[error("the store is shut down")]
    Closed,
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
}

/// Run status of a conversation (CONTRACT §1), plus `idle` before the first run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
