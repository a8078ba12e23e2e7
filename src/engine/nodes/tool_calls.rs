//! Calling tools, shared by `function` and `agent`: the tool's spec, the interrupt a page tool
//! or a confirmed tool pauses on, the `TOOL_CALL_*` events and the call itself (with its
//! idempotency key `runId:nodeId:step[:nth]`).

use serde_json::{json, Value};

use super::{Run, Step, StepErr, StepResult};
use crate::assistant::model::{action, ToolKind, ToolSpec};
use crate::engine::{AgentState, Event, Interrupt, InterruptReason, ToolCallCtx};
use crate::error::ErrorCode;
use crate::llm::{ChatMessage, ToolCall};

impl Run<'_> {
    pub(super) fn tool(&self, name: &str) -> Result<&ToolSpec, StepErr> {
        self.a
            .tools
            .get(name)
            .ok_or_else(|| StepErr::new(ErrorCode::ToolError, format!("unknown tool '{name}'")))
    }

    /// If calling this tool must wait for someone, the interrupt to wait on.
    pub(super) fn tool_pause(
        &self,
        node: &str,
        name: &str,
        spec: &ToolSpec,
        call_id: &str,
        args: &Value,
    ) -> Option<Interrupt> {
        if let ToolKind::Page { action } = &spec.kind {
            let message = spec
                .description
                .clone()
                .unwrap_or_else(|| format!("The page is asked to run '{name}'."));
            let action = action.clone().unwrap_or_else(|| name.to_string());
            return Some(
                Interrupt::new(InterruptReason::PageAction, node, message)
                    .page_action(action, args.clone())
                    .tool_call(call_id),
            );
        }
        if spec.confirm {
            let message = format!("Allow the assistant to call '{name}'?");
            return Some(
                Interrupt::new(InterruptReason::ToolConfirmation, node, message)
                    .payload(json!({"tool": name, "arguments": args}))
                    .buttons(action::CONFIRM_BUTTONS.map(String::from).to_vec())
                    .tool_call(call_id),
            );
        }
        None
    }

    /// `TOOL_CALL_START`, `_ARGS` and `_END` of a call the engine makes itself.
    pub(super) async fn emit_call(&mut self, call_id: &str, name: &str, args: &Value) {
        self.emit(Event::ToolCallStart {
            tool_call_id: call_id.to_string(),
            tool_call_name: name.to_string(),
        })
        .await;
        self.emit(Event::ToolCallArgs {
            tool_call_id: call_id.to_string(),
            delta: args.to_string(),
        })
        .await;
        self.emit(Event::ToolCallEnd {
            tool_call_id: call_id.to_string(),
        })
        .await;
    }

    pub(super) async fn call_tool(
        &mut self,
        node: &str,
        name: &str,
        spec: &ToolSpec,
        args: Value,
        key_suffix: &str,
    ) -> Result<Value, String> {
        let state = Value::Object(self.cp.state.clone());
        let key = format!("{}:{}:{}{key_suffix}", self.run_id, node, self.cp.steps);
        let ctx = ToolCallCtx {
            templates: &self.a.templates,
            state: &state,
            idempotency_key: key,
            cancel: self.cancel,
        };
        let tools = self.engine.tools.clone();
        tokio::select! {
            r = tools.call(name, spec, args, ctx) => r,
            _ = self.cancel.cancelled() => Err("cancelled".into()),
        }
    }

    /// A `function` node's call ended: its result is the node's output.
    pub(super) async fn finish_function(
        &mut self,
        call_id: &str,
        name: &str,
        result: Result<Value, String>,
    ) -> StepResult {
        if self.cancel.is_cancelled() {
            return Err(StepErr::cancelled());
        }
        match result {
            Ok(v) => {
                self.emit(Event::ToolCallResult {
                    tool_call_id: call_id.to_string(),
                    tool_call_name: name.to_string(),
                    content: v.to_string(),
                })
                .await;
                Step::out(v)
            }
            Err(e) => Err(StepErr::new(
                ErrorCode::ToolError,
                format!("tool '{name}' failed: {e}"),
            )),
        }
    }

    /// An agent's call ended: its result goes back to the model, and the call is done.
    pub(super) async fn tool_result(
        &mut self,
        st: &mut AgentState,
        call: &ToolCall,
        content: String,
    ) {
        self.emit(Event::ToolCallResult {
            tool_call_id: call.id.clone(),
            tool_call_name: call.name.clone(),
            content: content.clone(),
        })
        .await;
        st.messages
            .push(ChatMessage::tool_result(call.id.clone(), content));
        if !st.pending.is_empty() {
            st.pending.remove(0);
        }
    }
}
