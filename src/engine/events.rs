//! The events a run emits (CONTRACT §2, AG-UI vocabulary) and the interrupts that pause it.
//!
//! Events are plain data: the engine produces them, the conversation actor numbers (`seq`),
//! stores and fans them out. Serialization here is the wire form (`"type": "TEXT_MESSAGE_CONTENT"`,
//! camelCase fields).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ErrorCode;
use crate::llm::{Role, Usage};

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
        /// `"assistant"` for the model's and reply nodes' text, `"user"` for the user's.
        role: Role,
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

impl Event {
    /// An event from its stored JSON (what subscribers receive). The same as
    /// `serde_json::from_slice::<Event>`, faster for the kinds every run has many of: serde
    /// writes the `type` tag first, so when it is there the fields are read as a plain struct
    /// (an internally tagged enum is first buffered whole, every string copied twice); any
    /// other shape or kind is read as a whole.
    pub fn from_stored(json: &[u8]) -> Result<Event, serde_json::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Message {
            message_id: String,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Delta {
            message_id: String,
            delta: String,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Start {
            message_id: String,
            role: Role,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Step {
            step_name: String,
            node_type: String,
            #[serde(default)]
            output: Value,
        }
        match stored_tag(json) {
            Some("TEXT_MESSAGE_CONTENT") => {
                let d: Delta = serde_json::from_slice(json)?;
                Ok(Event::TextMessageContent {
                    message_id: d.message_id,
                    delta: d.delta,
                })
            }
            Some("TEXT_MESSAGE_START") => {
                let s: Start = serde_json::from_slice(json)?;
                Ok(Event::TextMessageStart {
                    message_id: s.message_id,
                    role: s.role,
                })
            }
            Some("TEXT_MESSAGE_END") => {
                let m: Message = serde_json::from_slice(json)?;
                Ok(Event::TextMessageEnd {
                    message_id: m.message_id,
                })
            }
            Some("STEP_STARTED") => {
                let s: Step = serde_json::from_slice(json)?;
                Ok(Event::StepStarted {
                    step_name: s.step_name,
                    node_type: s.node_type,
                })
            }
            Some("STEP_FINISHED") => {
                let s: Step = serde_json::from_slice(json)?;
                Ok(Event::StepFinished {
                    step_name: s.step_name,
                    node_type: s.node_type,
                    output: s.output,
                })
            }
            _ => serde_json::from_slice(json),
        }
    }
}

/// The `type` of a stored event when it is the first field and has no escapes (as serde
/// writes it), else `None`: read without parsing the rest.
pub fn stored_tag(json: &[u8]) -> Option<&str> {
    let rest = json.strip_prefix(br#"{"type":""#)?;
    let end = rest.iter().position(|&b| b == b'"' || b == b'\\')?;
    if rest[end] != b'"' {
        return None;
    }
    std::str::from_utf8(&rest[..end]).ok()
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

impl Interrupt {
    /// The one place an interrupt is made: a fresh id, the node that waits, and what the person
    /// or page is told; the optional parts are set with the builder methods below.
    pub fn new(reason: InterruptReason, node_id: &str, message: impl Into<String>) -> Self {
        Interrupt {
            id: uuid::Uuid::now_v7().to_string(),
            reason,
            node_id: node_id.to_string(),
            message: message.into(),
            payload: Value::Null,
            buttons: None,
            action: None,
            params: None,
            expires_at: None,
            editable: false,
            tool_call_id: None,
        }
    }

    /// What the card or page shows (`payload`).
    pub fn payload(mut self, payload: Value) -> Self {
        self.payload = payload;
        self
    }

    /// The buttons a person may answer with.
    pub fn buttons(mut self, buttons: Vec<String>) -> Self {
        self.buttons = Some(buttons);
        self
    }

    /// For the page: the action to run and its parameters (also the `payload`).
    pub fn page_action(mut self, action: String, params: Value) -> Self {
        self.payload = params.clone();
        self.action = Some(action);
        self.params = Some(params);
        self
    }

    /// When a page action's time runs out (RFC 3339).
    pub fn expires_at(mut self, at: Option<String>) -> Self {
        self.expires_at = at;
        self
    }

    /// Whether the answer may replace the shown data.
    pub fn editable(mut self, editable: bool) -> Self {
        self.editable = editable;
        self
    }

    /// The tool call this interrupt is about.
    pub fn tool_call(mut self, call_id: &str) -> Self {
        self.tool_call_id = Some(call_id.to_string());
        self
    }

    /// The wire form (as stored in a conversation's `pendingInterrupts`). Every field is a
    /// string, a bool or already JSON, so this cannot fail.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
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
        let e = Event::TextMessageStart {
            message_id: "m1".into(),
            role: Role::Assistant,
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(
            v,
            json!({"type": "TEXT_MESSAGE_START", "messageId": "m1", "role": "assistant"})
        );
        assert_eq!(serde_json::from_value::<Event>(v).unwrap(), e);
    }

    #[test]
    fn stored_events_read_fast_are_the_events_read_whole() {
        let events = [
            Event::TextMessageContent {
                message_id: "m\"1".into(),
                delta: "a\\b\u{2603}\n".into(),
            },
            Event::TextMessageStart {
                message_id: "u".into(),
                role: Role::User,
            },
            Event::TextMessageEnd {
                message_id: "u".into(),
            },
            Event::StepStarted {
                step_name: "s".into(),
                node_type: "llm".into(),
            },
            Event::StepFinished {
                step_name: "s".into(),
                node_type: "llm".into(),
                output: json!({"text": "x", "n": [1, 2.5]}),
            },
            Event::StepFinished {
                step_name: "s".into(),
                node_type: "llm".into(),
                output: Value::Null,
            },
            Event::RunStarted { run_id: "r".into() },
        ];
        for e in events {
            let json = serde_json::to_vec(&e).unwrap();
            assert_eq!(Event::from_stored(&json).unwrap(), e);
            assert_eq!(serde_json::from_slice::<Event>(&json).unwrap(), e);
        }
        // Another field order, an escaped tag, a missing field, a missing output.
        let other = br#"{"messageId":"m","type":"TEXT_MESSAGE_CONTENT","delta":"d"}"#;
        assert!(matches!(
            Event::from_stored(other),
            Ok(Event::TextMessageContent { .. })
        ));
        let escaped = br#"{"type":"TEXT_MESSAGE_EN\u0044","messageId":"m"}"#;
        assert_eq!(
            Event::from_stored(escaped).unwrap(),
            Event::TextMessageEnd {
                message_id: "m".into()
            }
        );
        assert!(Event::from_stored(br#"{"type":"TEXT_MESSAGE_CONTENT","messageId":"m"}"#).is_err());
        assert!(
            Event::from_stored(br#"{"type":"STEP_FINISHED","stepName":"s","nodeType":"t"}"#)
                .is_ok_and(|e| matches!(
                    e,
                    Event::StepFinished {
                        output: Value::Null,
                        ..
                    }
                ))
        );
        assert!(Event::from_stored(br#"{"type":"NOPE"}"#).is_err());
        assert!(Event::from_stored(b"not json").is_err());
    }

    #[test]
    fn interrupts_are_built_in_one_place_with_the_same_wire_form() {
        let i = Interrupt::new(InterruptReason::ToolConfirmation, "n1", "Allow?")
            .payload(json!({"tool": "t"}))
            .buttons(vec!["approve".into(), "reject".into()])
            .tool_call("c1");
        let v = i.to_json();
        assert_eq!(v["reason"], "tool_confirmation");
        assert_eq!(v["nodeId"], "n1");
        assert_eq!(v["toolCallId"], "c1");
        assert_eq!(v["buttons"], json!(["approve", "reject"]));
        // Unset optional parts are left out, as before.
        for absent in ["action", "params", "expiresAt", "editable"] {
            assert!(v.get(absent).is_none(), "{absent} in {v}");
        }
        let p = Interrupt::new(InterruptReason::PageAction, "n2", "")
            .page_action("pick".into(), json!({"a": 1}));
        assert_eq!(p.payload, json!({"a": 1}));
        assert_eq!(p.params, Some(json!({"a": 1})));
        assert_ne!(p.id, i.id);
    }
}
