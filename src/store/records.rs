//! What the store keeps, as types: conversation and message records, the write ops, a listing
//! page and the writer's counters. Every backend stores exactly these; their JSON shape (camelCase)
//! is also the shape of stored redb values, so a field added here needs `#[serde(default)]`.

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::engine::Interrupt;
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
    /// The paused run's interrupts, stored as the engine's [`Interrupt`] JSON (the shape the
    /// API shows). An entry that is not an interrupt (records written before this was typed
    /// could hold `null`) is dropped when read, with a warning; the record still loads.
    #[serde(default, deserialize_with = "lenient_interrupts")]
    pub pending_interrupts: Vec<Interrupt>,
}

/// `pendingInterrupts` as read: every entry that is an [`Interrupt`], the others dropped.
fn lenient_interrupts<'de, D>(d: D) -> Result<Vec<Interrupt>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let raw: Option<Vec<Value>> = Deserialize::deserialize(d)?;
    Ok(raw
        .unwrap_or_default()
        .into_iter()
        .filter_map(|v| match serde_json::from_value::<Interrupt>(v) {
            Ok(i) => Some(i),
            Err(e) => {
                tracing::warn!(error = %e, "a stored pending interrupt is not an interrupt; dropped");
                None
            }
        })
        .collect())
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
    /// Unix milliseconds after which the key is forgotten (24 hours after it was stored) and
    /// may be deleted ([`WriteOp::DeleteExpiredIdempotencyKeys`]).
    pub expires_at_ms: i64,
    /// What a `cancel` answered (whether a run was cancelled); absent for other commands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled: Option<bool>,
}

/// One write.
#[derive(Debug, Clone)]
pub enum WriteOp {
    /// Remember an idempotency key (its scoped key: user, route and key in one string).
    PutIdempotencyKey {
        key: String,
        record: IdempotencyRecord,
    },
    /// Delete every idempotency key whose `expires_at_ms` is at or before `now_ms` (the
    /// sweep of expired keys; reads already answer them as absent).
    DeleteExpiredIdempotencyKeys { now_ms: i64 },
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::InterruptReason;
    use serde_json::json;

    /// A record as the untyped code wrote it (`pendingInterrupts` were `to_value(..)` of the
    /// interrupt, or `null` when that failed) still loads, and writes back the same JSON.
    #[test]
    fn records_with_untyped_pending_interrupts_still_load() {
        let card = json!({"id": "i1", "reason": "conversation_action", "nodeId": "confirm",
            "message": "Submit?", "payload": {"amount": 3}, "buttons": ["approve", "reject"],
            "editable": true});
        let old = json!({"id": "c1", "owner": "u", "assistant": "a", "title": "t",
            "status": "paused", "createdAt": 1, "updatedAt": 2, "args": {}, "lastSeq": 4,
            "messageCount": 1, "pendingInterrupts": [card, null, {"id": "x"}]});
        let rec: ConversationRecord = serde_json::from_value(old).unwrap();
        assert_eq!(rec.pending_interrupts.len(), 1, "{rec:?}");
        let i = &rec.pending_interrupts[0];
        assert_eq!(
            (i.id.as_str(), i.reason, i.node_id.as_str()),
            ("i1", InterruptReason::ConversationAction, "confirm")
        );
        assert_eq!(
            i.buttons.as_deref(),
            Some(&["approve".to_string(), "reject".into()][..])
        );
        // The typed field writes the same JSON as before.
        let back = serde_json::to_value(&rec).unwrap();
        assert_eq!(back["pendingInterrupts"], json!([card]));
        // Records older still: no field, or `null`.
        for missing in [json!(null), json!("absent")] {
            let mut v = back.clone();
            if missing.is_null() {
                v["pendingInterrupts"] = missing;
            } else if let Some(o) = v.as_object_mut() {
                o.remove("pendingInterrupts");
            }
            let rec: ConversationRecord = serde_json::from_value(v).unwrap();
            assert!(rec.pending_interrupts.is_empty());
        }
    }
}
