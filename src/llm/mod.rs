//! Language-model providers behind one trait.
//!
//! The engine asks an [`LlmProvider`] for a chat completion and receives a stream of
//! [`LlmDelta`]s (text, reasoning, tool-call pieces), ending with [`LlmDelta::Done`]. Dropping the
//! stream aborts the request (that is how `cancel` stops a model mid-answer).
//!
//! - [`builtin`]: the offline, deterministic model (`provider = "builtin"`), the embedded default.
//! - [`openai`]: any OpenAI-compatible chat-completions endpoint (OpenAI, Ollama, vLLM,
//!   llama.cpp server, DeepSeek, ...), streaming over SSE.
//!
//! [`LlmRegistry`] holds the named providers of `config.toml` (`[llm.default]`, `[llm.fast]`, ...).

pub mod breaker;
pub mod builtin;
pub mod metrics;
pub mod openai;

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::stream::BoxStream;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

/// One message of a chat request (OpenAI's shape, simplified).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChatMessage {
    pub role: Role,
    #[serde(default)]
    pub content: String,
    /// Tool calls the assistant asked for (role `assistant`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// The call this message answers (role `tool`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        ChatMessage {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new(Role::Assistant, content)
    }
    pub fn tool_result(call_id: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: Role::Tool,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: Some(call_id.into()),
        }
    }
}

/// A complete tool call: `arguments` is the JSON text the model produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// A tool offered to the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolDef {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments.
    pub parameters: Value,
}

/// What shape the answer must have.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum ResponseFormat {
    #[default]
    Text,
    /// A JSON object matching `schema` (JSON Schema). Providers use JSON mode / structured output
    /// when the endpoint supports it; the engine validates the result either way.
    Json { schema: Value },
}

/// One chat-completion request.
#[derive(Debug, Clone, Default)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    pub tools: Vec<ToolDef>,
    pub response_format: ResponseFormat,
    pub temperature: Option<f32>,
    pub max_tokens: Option<u32>,
}

/// Tokens used by one call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

impl Usage {
    pub fn add(&mut self, other: Usage) {
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.total_tokens += other.total_tokens;
    }
}

/// A piece of a streamed answer.
#[derive(Debug, Clone, PartialEq)]
pub enum LlmDelta {
    /// Answer text.
    Text(String),
    /// Reasoning text (`reasoning_content`), when the model returns it.
    Reasoning(String),
    /// A tool call begins. `index` identifies the call among this answer's calls.
    ToolCallStart {
        index: usize,
        id: String,
        name: String,
    },
    /// More of a tool call's JSON arguments.
    ToolCallArgs { index: usize, delta: String },
    /// The answer is complete.
    Done {
        usage: Usage,
        finish_reason: Option<String>,
    },
}

/// Why a model call failed. The message is for a person: it says what to fix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LlmError {
    #[error("the model provider refused the API key ({0}); check the key in the environment variable named by api_key_env")]
    Auth(String),
    #[error("the model provider does not know this model: {0}")]
    UnknownModel(String),
    #[error("the model provider is rate limiting us: {0}")]
    RateLimited(String),
    /// HTTP 5xx or 408, after the retries.
    #[error("the model provider failed (HTTP {status}): {message}")]
    Status { status: u16, message: String },
    #[error("the model provider timed out: {phase} within {ms} ms (the limit is {})", phase.setting())]
    Timeout { phase: TimeoutPhase, ms: u64 },
    /// The answer went on past `max_stream_ms` or `max_output_chars`; what came before is kept.
    #[error("the model's answer was cut off: {0}")]
    TooLong(String),
    /// The circuit breaker is open: no request was sent.
    #[error("the model provider is failing and is not being called for now: {0}")]
    Unavailable(String),
    #[error("could not reach the model provider: {0}")]
    Connection(String),
    #[error("the model provider refused the request: {0}")]
    Refused(String),
    #[error("the model provider answered something we cannot read: {0}")]
    Protocol(String),
    #[error("no LLM named '{0}' is configured")]
    NotConfigured(String),
}

/// Which limit a [`LlmError::Timeout`] hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutPhase {
    /// No connection was made.
    Connect,
    /// The request was sent but no answer began.
    FirstByte,
    /// The answer began, then went silent.
    Stall,
}

impl TimeoutPhase {
    /// The `[llm.<name>]` setting that bounds this phase.
    pub fn setting(self) -> &'static str {
        match self {
            TimeoutPhase::Connect => "timeout_seconds",
            TimeoutPhase::FirstByte => "first_byte_timeout_ms",
            TimeoutPhase::Stall => "stall_timeout_ms",
        }
    }
}

impl std::fmt::Display for TimeoutPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TimeoutPhase::Connect => "no connection was made",
            TimeoutPhase::FirstByte => "no answer began",
            TimeoutPhase::Stall => "the answer stalled, nothing more came",
        })
    }
}

pub type DeltaStream = BoxStream<'static, Result<LlmDelta, LlmError>>;

/// A language model.
#[async_trait::async_trait]
pub trait LlmProvider: Send + Sync + std::fmt::Debug {
    /// Start a chat completion. Retries (before any delta was produced) happen inside; the
    /// returned stream yields deltas and ends with `Done`, or with an error. Dropping the stream
    /// aborts the request.
    async fn chat(&self, req: ChatRequest) -> Result<DeltaStream, LlmError>;

    /// True for the offline built-in model (the demo page says so).
    fn is_builtin(&self) -> bool {
        false
    }

    /// This provider's figures for `/metrics`, if it keeps any.
    fn metrics(&self) -> Option<Arc<metrics::ProviderMetrics>> {
        None
    }
}

/// The named providers of `config.toml`.
#[derive(Debug, Clone, Default)]
pub struct LlmRegistry {
    providers: BTreeMap<String, Arc<dyn LlmProvider>>,
}

impl LlmRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, name: impl Into<String>, p: Arc<dyn LlmProvider>) {
        self.providers.insert(name.into(), p);
    }

    pub fn get(&self, name: &str) -> Result<Arc<dyn LlmProvider>, LlmError> {
        self.providers
            .get(name)
            .cloned()
            .ok_or_else(|| LlmError::NotConfigured(name.to_string()))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.providers.keys().map(String::as_str)
    }

    /// The figures of every provider that keeps them, by name.
    pub fn metrics(&self) -> Vec<(String, Arc<metrics::ProviderMetrics>)> {
        self.providers
            .iter()
            .filter_map(|(n, p)| p.metrics().map(|m| (n.clone(), m)))
            .collect()
    }

    pub fn is_builtin(&self, name: &str) -> bool {
        self.providers.get(name).is_some_and(|p| p.is_builtin())
    }

    /// One provider per `[llm.<name>]` section: the built-in model or an OpenAI-compatible
    /// endpoint. Fails on a section that cannot be used (e.g. a `base_url` that is not a URL).
    pub fn from_config(cfg: &BTreeMap<String, crate::config::LlmConfig>) -> Result<Self, LlmError> {
        let mut reg = Self::new();
        for (name, c) in cfg {
            let p: Arc<dyn LlmProvider> = match c.provider {
                crate::config::LlmProviderKind::Builtin => {
                    Arc::new(builtin::BuiltinModel::from_config(c))
                }
                crate::config::LlmProviderKind::Openai => {
                    Arc::new(openai::OpenAiProvider::from_config(name, c)?)
                }
            };
            tracing::debug!(llm = %name, builtin = p.is_builtin(), "model provider ready");
            reg.insert(name.clone(), p);
        }
        Ok(reg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LlmConfig, LlmProviderKind};

    fn section(provider: LlmProviderKind, base_url: Option<&str>) -> LlmConfig {
        LlmConfig {
            base_url: base_url.map(str::to_string),
            model: Some("m".into()),
            timeout_seconds: 5,
            max_concurrency: 1,
            max_retries: 0,
            ..LlmConfig::new(provider)
        }
    }

    #[test]
    fn registry_from_config() {
        let mut cfg = BTreeMap::new();
        cfg.insert(
            "default".to_string(),
            section(LlmProviderKind::Builtin, None),
        );
        cfg.insert(
            "local".to_string(),
            section(LlmProviderKind::Openai, Some("http://127.0.0.1:11434/v1")),
        );
        let reg = LlmRegistry::from_config(&cfg).unwrap();
        assert_eq!(reg.names().collect::<Vec<_>>(), vec!["default", "local"]);
        assert!(reg.is_builtin("default"));
        assert!(!reg.is_builtin("local"));
        // The OpenAI-compatible provider keeps figures; the offline model does not.
        let names: Vec<String> = reg.metrics().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, vec!["local".to_string()]);
        assert!(matches!(reg.get("nope"), Err(LlmError::NotConfigured(_))));

        cfg.insert(
            "broken".to_string(),
            section(LlmProviderKind::Openai, Some("not a url")),
        );
        assert!(LlmRegistry::from_config(&cfg).is_err());
    }
}
