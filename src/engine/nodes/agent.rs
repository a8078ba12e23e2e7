//! `agent`: a model with tools, in a loop: each turn the model either answers (the node's
//! output) or asks for tool calls, which run one by one and go back to it.
//!
//! A call of a page tool or a confirmed tool pauses the run inside the loop; the loop's state
//! ([`AgentState`]: messages, steps, the calls not executed yet, the approved ones) is kept in
//! the checkpoint, and the answer continues the loop where it stopped. Arguments that are not
//! JSON or do not fit the tool's parameters go back to the model, never to the tool.

use serde_json::{json, Value};

use super::{text, Answered, Here, NodeExec, Run, Step, StepErr, StepResult};
use crate::assistant::model::{action, AgentNode, OutputMode, ToolSpec};
use crate::engine::{AgentState, Interrupt, InterruptReason};
use crate::llm::{ChatMessage, ChatRequest, Role, ToolCall, ToolDef};

/// Turns of an agent without `maxSteps`.
const DEFAULT_MAX_STEPS: u32 = 8;

impl NodeExec for AgentNode {
    async fn exec(&self, run: &mut Run<'_>, here: Here<'_>) -> StepResult {
        let t = &run.a.templates;
        let instructions = text(t, "instructions", &self.instructions, here.ctx)?;
        let mut messages = vec![ChatMessage::system(instructions)];
        if self.history {
            messages.extend(run.history.iter().cloned());
        }
        let prompt = match &self.prompt {
            Some(p) => text(t, "prompt", p, here.ctx)?,
            None => run.user_input(),
        };
        messages.push(ChatMessage::user(prompt));
        let st = AgentState {
            messages,
            ..Default::default()
        };
        agent_loop(run, here.id, self, st).await
    }

    async fn resume(&self, run: &mut Run<'_>, a: Answered) -> StepResult {
        let mut st = a.agent.unwrap_or_default();
        let Some(call) = st.pending.first().cloned() else {
            return agent_loop(run, &a.node, self, st).await;
        };
        match a.interrupt.reason {
            InterruptReason::ToolConfirmation if a.action.as_deref() == Some(action::APPROVE) => {
                st.approved.push(call.id.clone());
            }
            InterruptReason::ToolConfirmation => {
                run.tool_result(&mut st, &call, "The user declined this tool call.".into())
                    .await;
            }
            _ => {
                let text = match &a.value {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                run.tool_result(&mut st, &call, text).await;
            }
        }
        agent_loop(run, &a.node, self, st).await
    }
}

/// Run the pending calls, then ask the model again, until it answers without calls.
async fn agent_loop(run: &mut Run<'_>, id: &str, ag: &AgentNode, mut st: AgentState) -> StepResult {
    let provider = ag.llm.clone().unwrap_or_else(|| run.a.llm.clone());
    let max = ag.max_steps.unwrap_or(DEFAULT_MAX_STEPS);
    let defs = tool_defs(run, ag);
    loop {
        if let Some(interrupt) = run_pending(run, id, ag, &mut st).await? {
            return Ok(Step::Pause {
                interrupt,
                agent: Some(st),
            });
        }
        if st.steps >= max {
            return Err(StepErr::failed(format!(
                "the agent used all {max} of its steps without a final answer"
            )));
        }
        st.steps += 1;
        let req = ChatRequest {
            messages: st.messages.clone(),
            tools: defs.clone(),
            ..Default::default()
        };
        let json_mode = ag.output == OutputMode::Json;
        let ans = run.call_llm(&provider, req.clone(), !json_mode).await?;
        st.text.push_str(&ans.text);
        if ans.calls.is_empty() {
            return match (&ag.schema, json_mode) {
                (Some(schema), true) => {
                    let mut req = req;
                    req.tools.clear();
                    Step::out(
                        run.checked_or_repaired(&provider, req, &ans.text, schema)
                            .await?,
                    )
                }
                _ => Step::out(json!({ "text": st.text })),
            };
        }
        let mut m = ChatMessage::assistant(ans.text);
        m.tool_calls = ans.calls.clone();
        st.messages.push(m);
        st.pending = ans.calls;
    }
}

/// The node's tools as the model sees them.
fn tool_defs(run: &Run<'_>, ag: &AgentNode) -> Vec<ToolDef> {
    ag.tools
        .iter()
        .filter_map(|n| {
            run.a.tools.get(n).map(|s| ToolDef {
                name: n.clone(),
                description: s.description.clone().unwrap_or_default(),
                parameters: s
                    .parameters
                    .as_ref()
                    .map(|p| p.source().clone())
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
            })
        })
        .collect()
}

/// Execute the model's pending calls in order; `Some` is the interrupt the next one waits on.
async fn run_pending(
    run: &mut Run<'_>,
    id: &str,
    ag: &AgentNode,
    st: &mut AgentState,
) -> Result<Option<Interrupt>, StepErr> {
    while let Some(call) = st.pending.first().cloned() {
        if run.cancel.is_cancelled() {
            return Err(StepErr::cancelled());
        }
        let (spec, args) = match check_call(run, ag, &call) {
            Ok(ok) => ok,
            Err(msg) => {
                run.tool_result(st, &call, msg).await;
                continue;
            }
        };
        if !st.approved.contains(&call.id) {
            if let Some(interrupt) = run.tool_pause(id, &call.name, &spec, &call.id, &args) {
                return Ok(Some(interrupt));
            }
        }
        // Each call of one agent step gets its own key: the how-many-th tool call of this
        // node it is (the same again if the node is retried after a crash).
        let nth = st.messages.iter().filter(|m| m.role == Role::Tool).count();
        let result = run
            .call_tool(id, &call.name, &spec, args, &format!(":{nth}"))
            .await;
        if run.cancel.is_cancelled() {
            return Err(StepErr::cancelled());
        }
        let content = match result {
            Ok(v) => v.to_string(),
            Err(e) => format!("error: {e}"),
        };
        run.tool_result(st, &call, content).await;
    }
    Ok(None)
}

/// The tool and the parsed arguments of a call, or the error the model is told.
fn check_call(run: &Run<'_>, ag: &AgentNode, call: &ToolCall) -> Result<(ToolSpec, Value), String> {
    let spec = run
        .a
        .tools
        .get(&call.name)
        .filter(|_| ag.tools.contains(&call.name))
        .ok_or_else(|| format!("error: there is no tool named '{}'", call.name))?
        .clone();
    let raw = if call.arguments.trim().is_empty() {
        "{}"
    } else {
        &call.arguments
    };
    let args: Value = serde_json::from_str(raw)
        .map_err(|e| format!("error: the arguments are not valid JSON ({e})"))?;
    // Arguments that do not fit the tool's declared parameters go back to the model (it can
    // correct them) instead of reaching the tool or a person.
    if let Some(params) = &spec.parameters {
        if let Err(problems) = params.validate(&args) {
            return Err(format!(
                "error: the arguments do not match the tool's parameters: {}",
                problems.join("; ")
            ));
        }
    }
    Ok((spec, args))
}
