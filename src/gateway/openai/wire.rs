//! The OpenAI wire format as typed structs: the request of `POST /v1/chat/completions`, the
//! `chat.completion` answer, the `chat.completion.chunk` stream messages, the model list and
//! the error body. Field names are OpenAI's (snake_case), except inside the `parley` extension
//! object, which follows Parley's camelCase.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// The body of `POST /v1/chat/completions`. Fields OpenAI defines that Parley does not use
/// (`temperature`, `tools`, `n`, ...) are accepted and ignored: the assistant decides.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ChatRequest {
    /// An assistant id (see `GET /v1/models`).
    pub model: String,
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Parley's own fields (through the client's `extra_body`).
    #[serde(default)]
    pub parley: Option<ParleyExtension>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// `parley` in the request body.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ParleyExtension {
    /// Continue this conversation (the header `X-Parley-Conversation-Id` wins).
    #[serde(default)]
    pub conversation_id: Option<String>,
    /// The assistant's input args.
    #[serde(default)]
    pub args: Option<Value>,
}

/// Who wrote a message of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChatRole {
    System,
    Developer,
    User,
    Assistant,
    Tool,
}

/// One message of the request.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ChatMessage {
    pub role: ChatRole,
    /// A string, or a list of content parts (only the `text` parts are read).
    #[serde(default)]
    pub content: Option<Value>,
    /// On `tool` messages: the tool call (interrupt) this message answers.
    #[serde(default)]
    pub tool_call_id: Option<String>,
    /// On `assistant` messages: the tool calls it made (echoed back by clients; ignored).
    #[serde(default)]
    pub tool_calls: Option<Value>,
    #[serde(default)]
    pub name: Option<String>,
}

impl ChatMessage {
    /// The text of the content: the string, or its `text` parts joined.
    pub fn text(&self) -> Option<String> {
        match self.content.as_ref()? {
            Value::String(s) => Some(s.clone()),
            Value::Array(parts) => {
                let texts: Vec<&str> = parts
                    .iter()
                    .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect();
                (!texts.is_empty()).then(|| texts.join("\n"))
            }
            _ => None,
        }
    }
}

/// Why the answer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The run completed.
    Stop,
    /// The run paused: answer the tool calls with `tool` messages.
    ToolCalls,
}

/// The role of an answer (always the assistant).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AnswerRole {
    Assistant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ToolType {
    Function,
}

/// A pause as a tool call: `id` is the interrupt id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: ToolType,
    pub function: FunctionCall,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FunctionCall {
    /// The page action's name, or `parley_confirmation` for cards and tool confirmations.
    pub name: String,
    /// The interrupt object as JSON text.
    pub arguments: String,
}

/// Tokens of the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

/// The answer message of a `chat.completion`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AnswerMessage {
    pub role: AnswerRole,
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Choice {
    pub index: u32,
    pub message: AnswerMessage,
    pub finish_reason: FinishReason,
    /// Always null.
    #[schema(value_type = Option<Object>)]
    pub logprobs: Option<Value>,
}

/// `object` of a non-streamed answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum CompletionObject {
    #[serde(rename = "chat.completion")]
    ChatCompletion,
}

/// A non-streamed answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChatCompletion {
    pub id: String,
    pub object: CompletionObject,
    pub created: i64,
    pub model: String,
    pub choices: Vec<Choice>,
    pub usage: Usage,
}

/// `object` of a stream message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum ChunkObject {
    #[serde(rename = "chat.completion.chunk")]
    ChatCompletionChunk,
}

/// One SSE message of a streamed answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChatCompletionChunk {
    /// The same in every chunk of one answer.
    pub id: String,
    pub object: ChunkObject,
    pub created: i64,
    pub model: String,
    /// One choice; empty in the last chunk, which carries `usage`.
    pub choices: Vec<ChunkChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: Delta,
    pub finish_reason: Option<FinishReason>,
}

/// What a chunk adds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Delta {
    /// Only in the first chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<AnswerRole>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallDelta>,
}

/// A tool call in a chunk (Parley sends each one whole, in one chunk).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ToolCallDelta {
    pub index: u32,
    pub id: String,
    #[serde(rename = "type")]
    pub kind: ToolType,
    pub function: FunctionCall,
}

/// `GET /v1/models`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ModelList {
    pub object: ListObject,
    pub data: Vec<Model>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ListObject {
    List,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ModelObject {
    Model,
}

/// An assistant as a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Model {
    /// The assistant id.
    pub id: String,
    pub object: ModelObject,
    pub created: i64,
    /// Always `parley`.
    pub owned_by: String,
}

/// An error in OpenAI's shape: `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OpenAiErrorBody {
    pub error: OpenAiErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OpenAiErrorDetail {
    pub message: String,
    /// `invalid_request_error` (4xx) or `server_error` (5xx).
    #[serde(rename = "type")]
    pub kind: ErrorType,
    /// The request field at fault, when one is.
    pub param: Option<String>,
    /// Parley's error code (`unknown_assistant`, `invalid_args`, ...).
    pub code: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorType {
    InvalidRequestError,
    ServerError,
}
