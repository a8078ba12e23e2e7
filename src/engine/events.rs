//! The events a run emits (CONTRACT §2, AG-UI vocabulary) and the interrupts that pause it.
//!
//! Events are plain data: the engine produces them, the conversation actor numbers (`seq`),
//! stores and fans them out. Serialization here is the wire form (`"type": "TEXT_MESSAGE_CONTENT"`,
//! camelCase fields).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ErrorCode;
use crate::llm::Usage;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "SCREAMING_SNAKE_CASE",
    rename_all_fields = "camelCase"
)]
pub enum Event {
    RunStarted {
        run_id: String,
    },
    StepStarted {
        step_name: String,
        node_type: String,
    },
    StepFinished {
        step_name: String,
        node_type: String,
        #[serde(default)]
        output: Value,
    },
    TextMessageStart {
        message_id: String,
        role: String,
    },
    TextMessageContent {
        message_id: String,
        delta: String,
    },
    TextMessageEnd {
        message_id: String,
    },
    ReasoningMessageContent {
        message_id: String,
        delta: String,
    },
    ToolCallStart {
        tool_call_id: String,
        tool_call_name: String,
    },
    ToolCallArgs {
        tool_call_id: String,
        delta: String,
    },
    ToolCallEnd {
        tool_call_id: String,
    },
    ToolCallResult {
        tool_call_id: String,
        tool_call_name: String,
        content: String,
    },
    Custom {
        name: String,
        value: Value,
    },
    RunFinished {
        run_id: String,
        outcome: Outcome,
        #[serde(default)]
        usage: Usage,
    },
    RunError {
        run_id: String,
        code: ErrorCode,
        message: String,
    },
}

impl Event {
    /// The wire `type` name.
    pub fn type_name(&self) -> &'static str {
        match self {
            Event::RunStarted { .. } => "RUN_STARTED",
            Event::StepStarted { .. } => "STEP_STARTED",
            Event::StepFinished { .. } => "STEP_FINISHED",
            Event::TextMessageStart { .. } => "TEXT_MESSAGE_START",
            Event::TextMessageContent { .. } => "TEXT_MESSAGE_CONTENT",
            Event::TextMessageEnd { .. } => "TEXT_MESSAGE_END",
            Event::ReasoningMessageContent { .. } => "REASONING_MESSAGE_CONTENT",
            Event::ToolCallStart { .. } => "TOOL_CALL_START",
            Event::ToolCallArgs { .. } => "TOOL_CALL_ARGS",
            Event::ToolCallEnd { .. } => "TOOL_CALL_END",
            Event::ToolCallResult { .. } => "TOOL_CALL_RESULT",
            Event::Custom { .. } => "CUSTOM",
            Event::RunFinished { .. } => "RUN_FINISHED",
            Event::RunError { .. } => "RUN_ERROR",
        }
    }
}

/// How a run segment ended (inside `RUN_FINISHED`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Outcome {
    Success { result: Value },
    Interrupt { interrupts: Vec<Interrupt> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InterruptReason {
    ConversationAction,
    PageAction,
    ToolConfirmation,
}

/// A pending question to a person or a page. Answered once, by `id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interrupt {
    pub id: String,
    pub reason: InterruptReason,
    pub node_id: String,
    pub message: String,
    #[serde(default)]
    pub payload: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buttons: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Value>,
    /// RFC 3339; after it the page action takes its `timeout` port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub editable: bool,
    /// For tool confirmations and page tools: the call this interrupt is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn wire_form() {
        let e = Event::TextMessageContent {
            message_id: "m1".into(),
            delta: "Hi".into(),
        };
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            json!({"type": "TEXT_MESSAGE_CONTENT", "messageId": "m1", "delta": "Hi"})
        );
        let e = Event::RunFinished {
            run_id: "r".into(),
            outcome: Outcome::Success {
                result: json!({"a": 1}),
            },
            usage: Usage::default(),
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["outcome"], json!({"type": "success", "result": {"a": 1}}));
        assert_eq!(v["runId"], "r");
        let e = Event::RunError {
            run_id: "r".into(),
            code: ErrorCode::Cancelled,
            message: "x".into(),
        };
        assert_eq!(serde_json::to_value(&e).unwrap()["code"], "cancelled");
        let back: Event = serde_json::from_value(v).unwrap();
        assert_eq!(back.type_name(), "RUN_FINISHED");
    }
}
