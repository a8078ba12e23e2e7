//! The JSON views of stored records that the HTTP API answers with: a conversation and a
//! message. Times are RFC 3339 (the store keeps milliseconds since the epoch).

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::engine::Interrupt;
use crate::services::Services;
use crate::store::{ConversationRecord, MessageRecord, RunStatus};

/// A message of a conversation.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageView {
    pub id: String,
    /// Position in the conversation, from 1; the `before` cursor of the messages page.
    pub no: u64,
    /// `user`, `assistant`, ...
    pub role: String,
    pub content: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    /// The run that wrote it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Structured data attached to the message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl From<&MessageRecord> for MessageView {
    fn from(m: &MessageRecord) -> Self {
        MessageView {
            id: m.id.clone(),
            no: m.no,
            role: m.role.as_str().to_owned(),
            content: m.content.clone(),
            created_at: rfc3339(m.created_at),
            run_id: m.run_id.clone(),
            data: m.data.clone(),
        }
    }
}

fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// A conversation.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConversationView {
    pub id: String,
    /// The assistant's id.
    pub assistant: String,
    /// The first 20 characters of its first message until renamed.
    pub title: String,
    pub status: RunStatus,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// The input args it was started with.
    pub args: Value,
    /// Interrupts waiting for an answer (see docs/protocol.md).
    #[schema(value_type = Vec<Value>)]
    pub pending_interrupts: Vec<Interrupt>,
    /// The seq of its last event.
    pub last_seq: u64,
    pub message_count: u64,
}

pub(super) async fn conversation_view(svc: &Services, r: &ConversationRecord) -> ConversationView {
    ConversationView {
        id: r.id.clone(),
        assistant: r.assistant.clone(),
        title: r.title.clone(),
        status: r.status,
        created_at: rfc3339(r.created_at),
        updated_at: rfc3339(r.updated_at),
        args: r.args.clone(),
        pending_interrupts: r.pending_interrupts.clone(),
        last_seq: svc.store.last_seq(&r.id).await.unwrap_or(r.last_seq),
        message_count: r.message_count,
    }
}
