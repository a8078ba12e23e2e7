//! The process interpreter: a pure function of (definition, checkpoint, input) that advances a
//! run node by node.
//!
//! It emits [`Event`]s and [`Checkpoint`]s to a [`Sink`], calls models through
//! [`crate::llm::LlmRegistry`] and tools through [`ToolRunner`], and knows nothing of actors,
//! sockets or storage. A checkpoint is taken at every node boundary; a run that pauses at an
//! interaction node leaves a checkpoint from which a fresh engine resumes *after* the wait point,
//! so no finished node runs again. Cancellation is checked between steps and while a model
//! streams.
//!
//! # Invariants
//!
//! - An input is checked ([`Engine::check_input`]) before anything runs; a refused input leaves
//!   the checkpoint as it was.
//! - A pause is in the checkpoint before the `RUN_FINISHED` that announces it; an answer is
//!   applied only to the interrupt the checkpoint waits on, and continues *after* it.
//! - Every run segment ends with exactly one `RUN_FINISHED` or `RUN_ERROR`.
//! - Tools get `runId:nodeId:step[:nth]` as an idempotency key (the same after a crash).
//!
//! # Layout
//!
//! - `mod.rs`: the traits the engine is given ([`Sink`], [`ToolRunner`]) and its plain data
//!   ([`Checkpoint`], [`Position`], [`Input`], [`RunEnd`]).
//! - `events.rs`: the AG-UI events of a run and the [`Interrupt`] (built only by
//!   [`Interrupt::new`] and its builder methods).
//! - `run.rs`: checking inputs, starting and resuming, and the loop around the nodes (steps,
//!   `STEP_*` events, state, edges, checkpoints, the end of a run).
//! - `nodes/`: one file per node kind (`start.rs` … `page_action.rs`), each a `NodeExec` impl
//!   on the kind's settings; `tool_calls.rs` and `llm_call.rs` are shared by the kinds that call
//!   tools and models.
//!
//! # Adding a node kind
//!
//! 1. `assistant/model.rs`: the settings struct, a [`NodeKind`](crate::assistant::model::NodeKind)
//!    variant, its `type_name` and its entry in `TYPES`.
//! 2. `assistant/validate/nodes.rs`: its arm in `parse_kind`, a `check_<kind>` for its settings
//!    and, if it leaves by named ports, its arm in `check_port` (reserved port names go in
//!    `assistant::model::port`).
//! 3. `engine/nodes/<kind>.rs`: `impl NodeExec` (`exec`, and `resume` if it pauses), and its arm
//!    in `nodes::exec` (and `nodes::resume`).
//! 4. If it can pause, `assistant/validate/mod.rs`'s `pause_points`, so the assistant is not
//!    taken for automated.

pub mod events;
mod nodes;
mod run;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::assistant::model::ToolSpec;
use crate::error::ErrorCode;
use crate::llm::{ChatMessage, LlmRegistry, ToolCall, Usage};
use crate::template::Templates;
pub use events::{Event, Interrupt, InterruptReason, Outcome};

/// Where events and checkpoints go. The conversation actor's sink numbers, stores and fans
/// them out; tests collect them.
#[async_trait]
pub trait Sink: Send {
    async fn event(&mut self, event: Event);
    /// Called at every node boundary with the state from which the run can continue.
    async fn checkpoint(&mut self, checkpoint: &Checkpoint);
}

/// What the tool runner is told about a call.
pub struct ToolCallCtx<'a> {
    pub templates: &'a Templates,
    /// The process state (template context for URL/body templates, alongside `args`).
    pub state: &'a Value,
    /// `runId:nodeId:attempt`: the same for a retried call after a crash (at-least-once rule).
    pub idempotency_key: String,
    pub cancel: &'a CancellationToken,
}

/// Runs `http` and `builtin` tools (page tools and confirmations never reach it: the engine
/// pauses for those).
#[async_trait]
pub trait ToolRunner: Send + Sync {
    /// The tool's JSON result, or a message saying why it failed.
    async fn call(
        &self,
        name: &str,
        spec: &ToolSpec,
        args: Value,
        ctx: ToolCallCtx<'_>,
    ) -> Result<Value, String>;
}

/// Where a run stands.
// One in every live conversation's memory: the waiting variant's large parts are boxed so
// that an idle or running conversation does not carry their room (serialized the same).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "at", rename_all = "snake_case")]
pub enum Position {
    /// No run, or the last one ended.
    #[default]
    Idle,
    /// About to run `node` (with the inputs its incoming edge mapped).
    Node {
        node: String,
        #[serde(default)]
        inputs: Map<String, Value>,
    },
    /// Paused at `node`, waiting for the answer to `interrupt`.
    Waiting {
        node: String,
        #[serde(default)]
        inputs: Map<String, Value>,
        interrupt: Box<Interrupt>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent: Option<Box<AgentState>>,
    },
}

/// An agent paused inside its loop (at a tool confirmation or a page tool).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentState {
    pub messages: Vec<ChatMessage>,
    pub steps: u32,
    /// Calls of the model's last turn not executed yet (the first is the one asked about).
    pub pending: Vec<ToolCall>,
    /// Calls the user approved.
    #[serde(default)]
    pub approved: Vec<String>,
    /// Text the agent streamed so far.
    #[serde(default)]
    pub text: String,
}

/// An active loop of an `iteration` node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoopFrame {
    pub node: String,
    /// Shared: checkpoints are taken at every step and must not copy the list each time.
    pub items: Arc<Vec<Value>>,
    pub index: usize,
}

/// Everything needed to continue a process: a plain serde value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    pub run_id: Option<String>,
    /// `start` and every finished node's outputs, by node id.
    pub state: Map<String, Value>,
    pub position: Position,
    pub loops: Vec<LoopFrame>,
    /// Node executions in this run (bounded by the assistant's `maxSteps`).
    pub steps: u32,
    pub usage: Usage,
}

impl Checkpoint {
    /// The interrupt the run waits on, if paused.
    pub fn pending_interrupt(&self) -> Option<&Interrupt> {
        match &self.position {
            Position::Waiting { interrupt, .. } => Some(interrupt),
            _ => None,
        }
    }

    pub fn is_paused(&self) -> bool {
        matches!(self.position, Position::Waiting { .. })
    }
}

/// What starts or continues a run.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A user message starting a new run (args already checked against the definition).
    Message {
        run_id: String,
        content: String,
        args: Map<String, Value>,
    },
    /// The answer to a pending interrupt.
    Answer {
        interrupt_id: String,
        action: Option<String>,
        value: Value,
    },
    /// A page action's time ran out.
    Timeout { interrupt_id: String },
}

/// How a call to [`Engine::run`] ended.
// One per run segment; kept unboxed so callers can match on the interrupt directly.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum RunEnd {
    Completed { result: Value },
    Paused { interrupt: Interrupt },
    Failed { code: ErrorCode, message: String },
    Cancelled,
}

/// Why an input was refused before anything ran.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Refused {
    pub code: ErrorCode,
    pub message: String,
}

/// The interpreter. Cheap to clone; one serves every conversation.
#[derive(Clone)]
pub struct Engine {
    pub(crate) llms: Arc<LlmRegistry>,
    pub(crate) tools: Arc<dyn ToolRunner>,
}

impl Engine {
    pub fn new(llms: Arc<LlmRegistry>, tools: Arc<dyn ToolRunner>) -> Self {
        Engine { llms, tools }
    }

    pub fn llms(&self) -> &LlmRegistry {
        &self.llms
    }
}
