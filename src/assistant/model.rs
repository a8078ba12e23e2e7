//! The typed form of an assistant definition file (CONTRACT §1).
//!
//! These types mirror the JSON one to one (camelCase on the wire). Parsing a file into them is
//! [`super::compile`]'s job, which also checks the graph. The engine only ever sees
//! a [`super::Assistant`], which is a definition that passed validation.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use crate::schema::JsonSchema;

/// The definition file as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Definition {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// Name of the `[llm.<name>]` provider used by default for this assistant's nodes.
    #[serde(default)]
    pub llm: Option<String>,
    #[serde(default)]
    pub welcome_message: Option<String>,
    #[serde(default)]
    pub prologues: Vec<String>,
    /// Seconds an idle actor stays in memory. History never expires by it.
    #[serde(default)]
    pub session_timeout: Option<u64>,
    /// Days a finished conversation is kept after its last activity (fractions allowed; the
    /// sweeper deletes it then). Overrides `[storage] retention_days`; `0` keeps forever.
    #[serde(default)]
    pub retention_days: Option<f64>,
    #[serde(default)]
    pub input_args: Vec<ArgSpec>,
    #[serde(default)]
    pub output_args: Vec<ArgSpec>,
    /// What a `send` does while a run is active.
    #[serde(default)]
    pub on_busy: OnBusy,
    /// Upper bound on node executions in one run (guards loops). Defaults to the server's.
    #[serde(default)]
    pub max_steps: Option<u32>,
    #[serde(default)]
    pub tools: BTreeMap<String, ToolSpec>,
    pub nodes: Vec<Value>,
    #[serde(default)]
    pub edges: Vec<Edge>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnBusy {
    /// Refuse with `conversation_busy`.
    #[default]
    Reject,
    /// Queue the message; it starts a run when the current one ends.
    Enqueue,
    /// Cancel the active run (it ends with `RUN_ERROR` code `cancelled`), then start this one.
    Interrupt,
}

/// An input or output argument.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ArgSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: ArgType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub required: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    #[serde(default, rename = "enum", skip_serializing_if = "Option::is_none")]
    pub choices: Option<Vec<Value>>,
}

/// The JSON type of an argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ArgType {
    String,
    Number,
    Integer,
    Boolean,
    Object,
    Array,
}

impl ArgType {
    pub fn as_str(self) -> &'static str {
        match self {
            ArgType::String => "string",
            ArgType::Number => "number",
            ArgType::Integer => "integer",
            ArgType::Boolean => "boolean",
            ArgType::Object => "object",
            ArgType::Array => "array",
        }
    }

    /// Whether a JSON value has this type.
    pub fn accepts(self, v: &Value) -> bool {
        match self {
            ArgType::String => v.is_string(),
            ArgType::Number => v.is_number(),
            ArgType::Integer => {
                v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0)
            }
            ArgType::Boolean => v.is_boolean(),
            ArgType::Object => v.is_object(),
            ArgType::Array => v.is_array(),
        }
    }
}

/// An edge of the process graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Edge {
    pub from: String,
    pub to: String,
    /// The branch of `from` this edge leaves by (a condition branch, a button, `body`/`done`,
    /// `timeout`). For a `router`, the port is the target's id and may be omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    /// `{"targetInput": "node.path"}`: values copied from state into the target's `input`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arg_mapping: Option<BTreeMap<String, String>>,
}

/// The ports the engine itself gives a node, as written in an edge's `port` (a condition's
/// branch ports and a card's buttons are the author's own names).
pub mod port {
    /// A `condition` whose branches all failed.
    pub const ELSE: &str = "else";
    /// An `iteration` with an item to run its body for.
    pub const BODY: &str = "body";
    /// An `iteration` whose list is exhausted.
    pub const DONE: &str = "done";
    /// A `page_action` with `timeoutSeconds` whose time ran out.
    pub const TIMEOUT: &str = "timeout";
    /// A `conversation_action` answered by a plain message (every card has it).
    pub const REPLY: &str = "reply";
}

/// The actions of an answer (`resume`'s `action`) the engine knows by name.
pub mod action {
    /// A card answered by a plain `send` (also the card's `reply` port).
    pub const REPLY: &str = super::port::REPLY;
    /// A tool confirmation: run the call.
    pub const APPROVE: &str = "approve";
    /// A tool confirmation: do not run the call.
    pub const REJECT: &str = "reject";
    /// The buttons of a tool confirmation, in order.
    pub const CONFIRM_BUTTONS: [&str; 2] = [APPROVE, REJECT];
}

/// A node: its id, optional description (used by routers) and its type-specific settings.
#[derive(Debug, Clone, Serialize)]
pub struct Node {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(flatten)]
    pub kind: NodeKind,
}

/// The node types of CONTRACT §1, with their settings.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum NodeKind {
    Start(StartNode),
    End(EndNode),
    Llm(LlmNode),
    Agent(AgentNode),
    Router(RouterNode),
    Function(FunctionNode),
    Condition(ConditionNode),
    Iteration(IterationNode),
    Reply(ReplyNode),
    ConversationAction(ConversationActionNode),
    PageAction(PageActionNode),
}

impl NodeKind {
    /// The `type` name as written in the file and sent in `STEP_*` events.
    pub fn type_name(&self) -> &'static str {
        match self {
            NodeKind::Start(_) => "start",
            NodeKind::End(_) => "end",
            NodeKind::Llm(_) => "llm",
            NodeKind::Agent(_) => "agent",
            NodeKind::Router(_) => "router",
            NodeKind::Function(_) => "function",
            NodeKind::Condition(_) => "condition",
            NodeKind::Iteration(_) => "iteration",
            NodeKind::Reply(_) => "reply",
            NodeKind::ConversationAction(_) => "conversation_action",
            NodeKind::PageAction(_) => "page_action",
        }
    }

    /// Every node type name, for error messages.
    pub const TYPES: &'static [&'static str] = &[
        "start",
        "end",
        "llm",
        "agent",
        "router",
        "function",
        "condition",
        "iteration",
        "reply",
        "conversation_action",
        "page_action",
    ];
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartNode {}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndNode {
    /// name → template; the run's result.
    #[serde(default)]
    pub outputs: Map<String, Value>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputMode {
    /// Free text, streamed to the chat.
    #[default]
    Text,
    /// A JSON object checked against `schema`; not streamed as chat text.
    Json,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LlmNode {
    #[serde(default)]
    pub system: Option<String>,
    pub prompt: String,
    /// Include earlier turns of the conversation.
    #[serde(default = "yes")]
    pub history: bool,
    #[serde(default)]
    pub output: OutputMode,
    /// JSON Schema of the output when `output` is `json` (compiled when read).
    #[serde(default)]
    pub schema: Option<JsonSchema>,
    /// Provider name overriding the assistant's `llm`.
    #[serde(default)]
    pub llm: Option<String>,
    #[serde(default)]
    pub temperature: Option<f32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentNode {
    pub instructions: String,
    /// The user turn given to the agent; defaults to `{{ start.userInput }}`.
    #[serde(default)]
    pub prompt: Option<String>,
    #[serde(default)]
    pub tools: Vec<String>,
    #[serde(default)]
    pub max_steps: Option<u32>,
    #[serde(default = "yes")]
    pub history: bool,
    #[serde(default)]
    pub output: OutputMode,
    /// JSON Schema of the output when `output` is `json` (compiled when read).
    #[serde(default)]
    pub schema: Option<JsonSchema>,
    #[serde(default)]
    pub llm: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouterNode {
    /// What the router decides on; defaults to `{{ start.userInput }}`.
    #[serde(default)]
    pub prompt: Option<String>,
    #[serde(default)]
    pub instructions: Option<String>,
    #[serde(default)]
    pub llm: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FunctionNode {
    pub tool: String,
    /// Templates (any JSON shape); strings are rendered against the state.
    #[serde(default)]
    pub args: Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConditionNode {
    pub branches: Vec<Branch>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Branch {
    pub port: String,
    /// A MiniJinja expression over the state.
    pub when: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IterationNode {
    /// An expression giving the list to loop over.
    pub over: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplyNode {
    pub text: String,
    #[serde(default)]
    pub data: Option<Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConversationActionNode {
    pub message: String,
    #[serde(default)]
    pub display: Option<Value>,
    pub buttons: Vec<String>,
    #[serde(default)]
    pub editable: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PageActionNode {
    pub action: String,
    #[serde(default)]
    pub params: Value,
    #[serde(default)]
    pub prompt: Option<String>,
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
}

/// A tool an `agent` or `function` node can call.
///
/// Read through [`RawToolSpec`]: serde cannot deny unknown fields next to a flattened enum,
/// so the raw form lists every field of every kind and the conversion refuses the fields that
/// do not belong to the tool's `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", try_from = "RawToolSpec")]
pub struct ToolSpec {
    #[serde(default)]
    pub description: Option<String>,
    /// JSON Schema of the tool's arguments (shown to the LLM; compiled when read, and the
    /// model's arguments are checked against it before the tool runs).
    #[serde(default)]
    pub parameters: Option<JsonSchema>,
    /// Pause for the user's approval before each call (interrupt reason `tool_confirmation`).
    #[serde(default)]
    pub confirm: bool,
    #[serde(flatten)]
    pub kind: ToolKind,
}

/// How a tool runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ToolKind {
    /// Calls a real HTTP endpoint.
    Http(HttpTool),
    /// Executed by the page: pauses the run like a `page_action` until the page answers.
    Page {
        /// The action name the page receives; defaults to the tool's name.
        #[serde(default)]
        action: Option<String>,
    },
    /// A function built into Parley (works offline): `echo`, `calculator`, `clock`, `lookup`.
    Builtin {
        function: String,
        /// Data for `lookup`: key → value.
        #[serde(default)]
        data: Option<Value>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpTool {
    #[serde(default = "default_method")]
    pub method: String,
    /// URL template rendered against the call's arguments (`{{ args.city }}`) and the state.
    pub url: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// JSON body template; strings inside are rendered.
    #[serde(default)]
    pub body: Option<Value>,
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
}

fn default_method() -> String {
    "GET".to_string()
}

/// A tool as written: every field any kind may have. See [`ToolSpec`].
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawToolSpec {
    kind: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    parameters: Option<JsonSchema>,
    #[serde(default)]
    confirm: bool,
    // http
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    headers: Option<BTreeMap<String, String>>,
    #[serde(default)]
    body: Option<Value>,
    #[serde(default)]
    timeout_seconds: Option<u64>,
    // page
    #[serde(default)]
    action: Option<String>,
    // builtin
    #[serde(default)]
    function: Option<String>,
    #[serde(default)]
    data: Option<Value>,
}

impl TryFrom<RawToolSpec> for ToolSpec {
    type Error = String;

    fn try_from(r: RawToolSpec) -> Result<Self, String> {
        let present = |name: &'static str, is: bool| if is { Some(name) } else { None };
        let http_fields = [
            present("method", r.method.is_some()),
            present("url", r.url.is_some()),
            present("headers", r.headers.is_some()),
            present("body", r.body.is_some()),
            present("timeoutSeconds", r.timeout_seconds.is_some()),
        ];
        let page_fields = [present("action", r.action.is_some())];
        let builtin_fields = [
            present("function", r.function.is_some()),
            present("data", r.data.is_some()),
        ];
        let foreign: Vec<&str> = match r.kind.as_str() {
            "http" => page_fields
                .iter()
                .chain(&builtin_fields)
                .flatten()
                .copied()
                .collect(),
            "page" => http_fields
                .iter()
                .chain(&builtin_fields)
                .flatten()
                .copied()
                .collect(),
            "builtin" => http_fields
                .iter()
                .chain(&page_fields)
                .flatten()
                .copied()
                .collect(),
            other => {
                return Err(format!(
                    "unknown tool kind '{other}' (known: http, page, builtin)"
                ))
            }
        };
        if !foreign.is_empty() {
            return Err(format!(
                "a {} tool has no field {}",
                r.kind,
                foreign
                    .iter()
                    .map(|f| format!("'{f}'"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let kind = match r.kind.as_str() {
            "http" => ToolKind::Http(HttpTool {
                method: r.method.unwrap_or_else(default_method),
                url: r.url.ok_or("an http tool needs a 'url'")?,
                headers: r.headers.unwrap_or_default(),
                body: r.body,
                timeout_seconds: r.timeout_seconds,
            }),
            "page" => ToolKind::Page { action: r.action },
            _ => ToolKind::Builtin {
                function: r.function.ok_or("a builtin tool needs a 'function'")?,
                data: r.data,
            },
        };
        Ok(ToolSpec {
            description: r.description,
            parameters: r.parameters,
            confirm: r.confirm,
            kind,
        })
    }
}

impl ToolSpec {
    /// A tool that pauses the run (page tools, and any tool with `confirm`).
    pub fn can_pause(&self) -> bool {
        self.confirm || matches!(self.kind, ToolKind::Page { .. })
    }
}
