//! The node kinds: one file per kind, each a [`NodeExec`] impl on the kind's settings
//! (`assistant::model::*Node`), the way mini-redis has one `cmd/*.rs` per command.
//!
//! [`exec`] and [`resume`] are the only places that match on [`NodeKind`]. A node's execution
//! returns a [`Step`]: its output and the port it leaves by, a pause (an [`Interrupt`], built
//! with [`Interrupt::new`] and its builder methods), or the run's result (`end`). The loop in
//! `run.rs` does everything around it: step counting, `STEP_*` events, state, edges and
//! checkpoints. A node that pauses implements [`NodeExec::resume`], which gets the answer
//! and finishes the node (or pauses again); a time-out is handled by the loop (port `timeout`).
//!
//! Shared by several kinds: `tool_calls.rs` (calling and pausing for tools: `function` and
//! `agent`) and `llm_call.rs` (streaming a model's answer, JSON answers with one repair).

mod agent;
mod condition;
mod conversation_action;
mod end;
mod function;
mod iteration;
mod llm;
mod llm_call;
mod page_action;
mod reply;
mod router;
mod start;
mod tool_calls;

use serde_json::{Map, Value};

use super::run::Run;
use super::{AgentState, Interrupt};
use crate::assistant::model::NodeKind;
use crate::error::ErrorCode;
use crate::template::Templates;

/// A step that could not finish.
#[derive(Debug)]
pub(super) struct StepErr {
    pub(super) code: ErrorCode,
    pub(super) message: String,
}

impl StepErr {
    pub(super) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        StepErr {
            code,
            message: message.into(),
        }
    }
    pub(super) fn failed(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::StepFailed, message)
    }
    pub(super) fn cancelled() -> Self {
        Self::new(ErrorCode::Cancelled, "the run was cancelled")
    }
}

/// What a node did.
// One per node execution, consumed at once.
#[allow(clippy::large_enum_variant)]
pub(super) enum Step {
    /// Finished with `output`, leaving by `port`.
    Next { output: Value, port: Option<String> },
    /// Waits for a person or the page.
    Pause {
        interrupt: Interrupt,
        agent: Option<AgentState>,
    },
    /// An `end` node: the run's result.
    End { result: Value },
}

pub(super) type StepResult = Result<Step, StepErr>;

impl Step {
    /// Finished with `output` by the normal way out.
    fn out(output: Value) -> StepResult {
        Ok(Step::Next { output, port: None })
    }

    /// Finished with `output`, leaving by `port`.
    fn by(port: impl Into<String>, output: Value) -> StepResult {
        Ok(Step::Next {
            output,
            port: Some(port.into()),
        })
    }

    /// Waits on `interrupt` (outside an agent's loop).
    fn pause(interrupt: Interrupt) -> StepResult {
        Ok(Step::Pause {
            interrupt,
            agent: None,
        })
    }
}

/// An answer given to the node that waited for it.
pub(super) struct Answered {
    pub(super) node: String,
    pub(super) interrupt: Interrupt,
    pub(super) agent: Option<AgentState>,
    pub(super) action: Option<String>,
    pub(super) value: Value,
}

/// Where a node runs: its id, the inputs its incoming edge mapped, and the template context
/// (the state plus `input`).
pub(super) struct Here<'h> {
    pub(super) id: &'h str,
    pub(super) inputs: &'h Map<String, Value>,
    pub(super) ctx: &'h Value,
}

/// What every node kind does. Crate-private: the futures are only ever awaited on concrete
/// kinds (by [`exec`] and [`resume`]), so they stay `Send` where the run is.
pub(super) trait NodeExec {
    /// Execute the node once.
    async fn exec(&self, run: &mut Run<'_>, here: Here<'_>) -> StepResult;

    /// Finish the node with the answer to the interrupt it paused on.
    async fn resume(&self, _run: &mut Run<'_>, a: Answered) -> StepResult {
        Err(StepErr::failed(format!(
            "node '{}' cannot take an answer",
            a.node
        )))
    }
}

/// Execute node `id` once.
pub(super) async fn exec(
    run: &mut Run<'_>,
    id: &str,
    inputs: &Map<String, Value>,
    ctx: &Value,
) -> StepResult {
    // The definition outlives the run; holding it apart lets the node borrow the run mutably.
    let a = run.a;
    let node = a.node(id).ok_or_else(|| missing_node(id))?;
    let here = Here { id, inputs, ctx };
    match &node.kind {
        NodeKind::Start(n) => n.exec(run, here).await,
        NodeKind::End(n) => n.exec(run, here).await,
        NodeKind::Llm(n) => n.exec(run, here).await,
        NodeKind::Agent(n) => n.exec(run, here).await,
        NodeKind::Router(n) => n.exec(run, here).await,
        NodeKind::Function(n) => n.exec(run, here).await,
        NodeKind::Condition(n) => n.exec(run, here).await,
        NodeKind::Iteration(n) => n.exec(run, here).await,
        NodeKind::Reply(n) => n.exec(run, here).await,
        NodeKind::ConversationAction(n) => n.exec(run, here).await,
        NodeKind::PageAction(n) => n.exec(run, here).await,
    }
}

/// Give the answer to the node that waited for it.
pub(super) async fn resume(run: &mut Run<'_>, answered: Answered) -> StepResult {
    let a = run.a;
    let node = a
        .node(&answered.node)
        .ok_or_else(|| missing_node(&answered.node))?;
    match &node.kind {
        NodeKind::ConversationAction(n) => n.resume(run, answered).await,
        NodeKind::PageAction(n) => n.resume(run, answered).await,
        NodeKind::Function(n) => n.resume(run, answered).await,
        NodeKind::Agent(n) => n.resume(run, answered).await,
        NodeKind::Start(n) => n.resume(run, answered).await,
        NodeKind::End(n) => n.resume(run, answered).await,
        NodeKind::Llm(n) => n.resume(run, answered).await,
        NodeKind::Router(n) => n.resume(run, answered).await,
        NodeKind::Condition(n) => n.resume(run, answered).await,
        NodeKind::Iteration(n) => n.resume(run, answered).await,
        NodeKind::Reply(n) => n.resume(run, answered).await,
    }
}

/// A node the definition no longer has.
pub(super) fn missing_node(id: &str) -> StepErr {
    StepErr::failed(format!(
        "the definition has no node '{id}' (was it changed while this run was paused?)"
    ))
}

pub(super) fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Render a node's text field; an error names the field.
fn text(t: &Templates, field: &str, src: &str, ctx: &Value) -> Result<String, StepErr> {
    t.render_text(src, ctx)
        .map_err(|e| StepErr::failed(format!("{field}: {e}")))
}

/// Evaluate a node's JSON field (templates inside keep their types); an error names the field.
fn value(t: &Templates, field: &str, v: &Value, ctx: &Value) -> Result<Value, StepErr> {
    t.eval_value(v, ctx)
        .map_err(|e| StepErr::failed(format!("{field}: {e}")))
}

/// A value cut to 60 characters, for error messages.
fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        format!("{}…", s.chars().take(60).collect::<String>())
    } else {
        s
    }
}
