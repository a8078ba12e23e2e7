//! The request of `POST /agui/{assistant}` (`RunAgentInput`) and what it asks of the
//! conversation: [`plan`] is a pure function of the input and the conversation's stored state.

use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::translate::page_tool_call_id;
use crate::engine::{Interrupt, InterruptReason};
use crate::error::ApiError;

/// AG-UI's `RunAgentInput` (the fields Parley reads; the rest are accepted and ignored).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunAgentInput {
    /// The conversation id (1–128 characters of `A-Z a-z 0-9 . _ : -`).
    #[schema(pattern = "^[A-Za-z0-9._:-]{1,128}$")]
    pub thread_id: String,
    pub run_id: String,
    /// The input args (an object), or absent.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub state: Value,
    #[serde(default)]
    pub messages: Vec<InputMessage>,
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub tools: Vec<Value>,
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub context: Vec<Value>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub forwarded_props: Value,
    #[serde(default)]
    pub resume: Vec<ResumeEntry>,
}

/// One message of the client's history (discriminated on `role`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InputMessage {
    pub id: String,
    pub role: String,
    /// A string, or (for `user`) a list of content parts.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub content: Value,
    #[serde(default)]
    pub tool_call_id: Option<String>,
}

/// An answer to one open interrupt.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResumeEntry {
    pub interrupt_id: String,
    pub status: ResumeStatus,
    /// `{"action", "value"?}`.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub payload: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ResumeStatus {
    Resolved,
    Cancelled,
}

/// Check a `threadId` (CONTRACT §7).
pub fn check_thread_id(id: &str) -> Result<(), ApiError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-');
    if id.is_empty() || id.len() > 128 || !id.chars().all(ok_char) {
        return Err(ApiError::bad_request(
            "threadId must be 1-128 characters of A-Z a-z 0-9 . _ : -",
        ));
    }
    Ok(())
}

/// What one request does to the conversation.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Start a run with this user message.
    Send(String),
    /// Answer a pending interrupt.
    Resume {
        interrupt_id: String,
        action: Option<String>,
        value: Value,
    },
    /// Cancel the paused run.
    Cancel,
    /// Answer `RUN_STARTED` + `RUN_ERROR interrupt_not_pending` with this message.
    Refuse(String),
    /// Nothing new: an empty, successful run.
    Nothing,
}

/// What the conversation holds, as far as planning needs.
#[derive(Debug, Default)]
pub struct Held {
    pub pending: Vec<Interrupt>,
    /// The user messages stored, oldest first.
    pub user_messages: Vec<String>,
}

/// The text of a user message's content (a string, or the text parts of a list).
pub fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// Decide what a request does (see the module doc of `agui`).
pub fn plan(input: &RunAgentInput, held: &Held) -> Plan {
    if !held.pending.is_empty() {
        return plan_paused(input, &held.pending);
    }
    if let Some(r) = input.resume.first() {
        return Plan::Refuse(format!(
            "interrupt '{}' is not pending on this thread",
            r.interrupt_id
        ));
    }
    match new_user_message(input, &held.user_messages) {
        Some(text) => Plan::Send(text),
        None => Plan::Nothing,
    }
}

fn plan_paused(input: &RunAgentInput, pending: &[Interrupt]) -> Plan {
    if let Some(r) = input.resume.first() {
        let Some(i) = pending.iter().find(|i| i.id == r.interrupt_id) else {
            return Plan::Refuse(format!(
                "interrupt '{}' is not pending on this thread",
                r.interrupt_id
            ));
        };
        if let Some(missing) = pending
            .iter()
            .find(|p| !input.resume.iter().any(|r| r.interrupt_id == p.id))
        {
            return Plan::Refuse(format!(
                "interrupt '{}' is open: every open interrupt must be resumed",
                missing.id
            ));
        }
        if r.status == ResumeStatus::Cancelled {
            return Plan::Cancel;
        }
        let action = r
            .payload
            .get("action")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let value = r.payload.get("value").cloned().unwrap_or(Value::Null);
        return Plan::Resume {
            interrupt_id: i.id.clone(),
            action,
            value,
        };
    }
    // A page action is answered by a `tool` message for its tool call.
    for i in pending
        .iter()
        .filter(|i| i.reason == InterruptReason::PageAction)
    {
        let call = page_tool_call_id(i);
        if let Some(m) = input
            .messages
            .iter()
            .rev()
            .find(|m| m.role == "tool" && m.tool_call_id.as_deref() == Some(call))
        {
            let text = text_of(&m.content);
            let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
            return Plan::Resume {
                interrupt_id: i.id.clone(),
                action: None,
                value,
            };
        }
    }
    let first = &pending[0];
    Plan::Refuse(format!(
        "interrupt '{}' is open: answer it with resume[] (or a tool message for a page action)",
        first.id
    ))
}

/// The newest user message the conversation does not hold yet: the last message of the
/// history when it is a user message, unless the conversation already holds as many user
/// messages as the history has and its newest has the same text (a re-sent history).
fn new_user_message(input: &RunAgentInput, held: &[String]) -> Option<String> {
    let last = input.messages.last().filter(|m| m.role == "user")?;
    let text = text_of(&last.content);
    let sent = input.messages.iter().filter(|m| m.role == "user").count();
    let already = sent <= held.len() && held.last() == Some(&text);
    (!already).then_some(text)
}
