//! The AG-UI events this front writes, as types that borrow their strings: the translator
//! builds an [`AgEvent`] from the stored event it reads and the SSE writer serialises it in
//! place (`sse.rs`), with no `serde_json::Value` in between.
//!
//! # The wire form
//!
//! Field order is part of what clients see (and of the golden test,
//! `golden/translated.sse`): serde writes the `type` tag first, then the fields in the order
//! they are declared here; `None` fields are left out. Interrupts (rare: once per pause) are
//! built as a `Value` by [`agui_interrupt`].

use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::engine::Interrupt;

/// One AG-UI event (`@ag-ui/core`'s `EventType`), borrowing from the stored event or the
/// translator's state.
#[derive(Debug, Serialize)]
#[serde(
    tag = "type",
    rename_all = "SCREAMING_SNAKE_CASE",
    rename_all_fields = "camelCase"
)]
pub enum AgEvent<'a> {
    RunStarted {
        thread_id: &'a str,
        run_id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        metadata: Option<Rejoined>,
    },
    RunFinished {
        thread_id: &'a str,
        run_id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        result: Option<&'a Value>,
        #[serde(skip_serializing_if = "Option::is_none")]
        outcome: Option<RunOutcome>,
        #[serde(skip_serializing_if = "Option::is_none")]
        metadata: Option<MessageMeta<'a>>,
    },
    RunError {
        message: &'a str,
        code: &'a str,
    },
    StepStarted {
        step_name: &'a str,
        metadata: StepMeta<'a>,
    },
    StepFinished {
        step_name: &'a str,
        metadata: StepMeta<'a>,
    },
    TextMessageStart {
        message_id: &'a str,
        role: &'static str,
    },
    TextMessageContent {
        message_id: &'a str,
        delta: &'a str,
    },
    TextMessageEnd {
        message_id: &'a str,
    },
    ReasoningStart {
        message_id: &'a str,
    },
    ReasoningMessageStart {
        message_id: &'a str,
        role: &'static str,
    },
    ReasoningMessageContent {
        message_id: &'a str,
        delta: &'a str,
    },
    ReasoningMessageEnd {
        message_id: &'a str,
    },
    ReasoningEnd {
        message_id: &'a str,
    },
    ToolCallStart {
        tool_call_id: &'a str,
        tool_call_name: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        metadata: Option<ToolMeta<'a>>,
    },
    ToolCallArgs {
        tool_call_id: &'a str,
        delta: &'a str,
    },
    ToolCallEnd {
        tool_call_id: &'a str,
    },
    ToolCallResult {
        message_id: String,
        tool_call_id: &'a str,
        content: &'a str,
        role: &'static str,
        metadata: ToolNameMeta<'a>,
    },
    Custom {
        name: &'a str,
        value: &'a Value,
    },
}

impl AgEvent<'_> {
    /// Whether this event ends a run (`RUN_FINISHED` or `RUN_ERROR`): the response of a run
    /// ends after it.
    pub fn ends_run(&self) -> bool {
        matches!(self, AgEvent::RunFinished { .. } | AgEvent::RunError { .. })
    }
}

/// `metadata` of a `RUN_STARTED` written for a client that rejoined mid-run.
#[derive(Debug, Serialize)]
pub struct Rejoined {
    pub rejoined: bool,
}

/// `metadata` of a cancelled run's `RUN_FINISHED`.
#[derive(Debug, Serialize)]
pub struct MessageMeta<'a> {
    pub message: &'a str,
}

/// `metadata` of `STEP_STARTED` / `STEP_FINISHED`: the node behind the (numbered) step name.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StepMeta<'a> {
    pub node_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<&'a Value>,
    /// A step closed because its run paused or ended while it was open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
}

/// `metadata` of a `TOOL_CALL_START`: a page action's node and message, or a rejoin.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolMeta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejoined: Option<bool>,
}

/// `metadata` of a `TOOL_CALL_RESULT`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolNameMeta<'a> {
    pub tool_call_name: &'a str,
}

/// `outcome` of a `RUN_FINISHED`.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum RunOutcome {
    Success {
        /// The frontend tool calls (page actions) the run waits for.
        #[serde(rename = "pendingToolCallIds", skip_serializing_if = "Option::is_none")]
        pending_tool_call_ids: Option<Vec<String>>,
    },
    Interrupt {
        interrupts: Vec<Value>,
    },
    Cancelled,
}

/// An AG-UI interrupt for a card or a tool confirmation (CONTRACT §7).
pub fn agui_interrupt(i: &Interrupt) -> Value {
    let buttons = i.buttons.clone().unwrap_or_default();
    let reason = if buttons.iter().any(|b| b == "reply") {
        "input_required"
    } else {
        "confirmation"
    };
    let actions: Vec<String> = if buttons.is_empty() {
        vec!["approve".into(), "reject".into()]
    } else {
        buttons.clone()
    };
    let mut meta = Map::new();
    meta.insert("nodeId".into(), json!(i.node_id));
    meta.insert("buttons".into(), json!(actions));
    meta.insert("display".into(), i.payload.clone());
    meta.insert("parleyReason".into(), json!(i.reason));
    if i.editable {
        meta.insert("editable".into(), json!(true));
    }
    let mut v = json!({
        "id": i.id,
        "reason": reason,
        "message": i.message,
        "responseSchema": {
            "type": "object",
            "properties": {"action": {"type": "string", "enum": actions}, "value": {}},
            "required": ["action"],
        },
        "metadata": meta,
    });
    if let Some(t) = &i.tool_call_id {
        v["toolCallId"] = json!(t);
    }
    if let Some(at) = &i.expires_at {
        v["expiresAt"] = json!(at);
    }
    v
}
