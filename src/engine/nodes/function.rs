//! `function`: calls one tool with templated `args` (plus the mapped inputs). A page tool or a
//! tool with `confirm` pauses first; the answer then finishes the call.

use serde_json::{json, Value};

use super::{new_id, value, Answered, Here, NodeExec, Run, Step, StepResult};
use crate::assistant::model::{action, FunctionNode};
use crate::engine::InterruptReason;

impl NodeExec for FunctionNode {
    async fn exec(&self, run: &mut Run<'_>, here: Here<'_>) -> StepResult {
        let mut args = value(&run.a.templates, "args", &self.args, here.ctx)?;
        if !here.inputs.is_empty() {
            match &mut args {
                Value::Object(m) => m.extend(here.inputs.clone()),
                Value::Null => args = Value::Object(here.inputs.clone()),
                _ => {}
            }
        }
        if args.is_null() {
            args = json!({});
        }
        let spec = run.tool(&self.tool)?.clone();
        let call_id = new_id();
        run.emit_call(&call_id, &self.tool, &args).await;
        if let Some(interrupt) = run.tool_pause(here.id, &self.tool, &spec, &call_id, &args) {
            return Step::pause(interrupt);
        }
        let result = run.call_tool(here.id, &self.tool, &spec, args, "").await;
        run.finish_function(&call_id, &self.tool, result).await
    }

    async fn resume(&self, run: &mut Run<'_>, a: Answered) -> StepResult {
        let call_id = a.interrupt.tool_call_id.clone().unwrap_or_else(new_id);
        let spec = run.tool(&self.tool)?.clone();
        match a.interrupt.reason {
            // The page ran the tool: its answer is the result.
            InterruptReason::PageAction => {
                run.finish_function(&call_id, &self.tool, Ok(a.value)).await
            }
            _ if a.action.as_deref() == Some(action::APPROVE) => {
                let args = a
                    .interrupt
                    .payload
                    .get("arguments")
                    .cloned()
                    .unwrap_or(Value::Null);
                let result = run.call_tool(&a.node, &self.tool, &spec, args, "").await;
                run.finish_function(&call_id, &self.tool, result).await
            }
            _ => {
                let v = json!({"declined": true, "message": "the user declined the call"});
                run.finish_function(&call_id, &self.tool, Ok(v)).await
            }
        }
    }
}
