//! Decoding chunks: the typed wire structs of a chat-completions answer and the accumulator
//! that turns `data:` payloads into deltas.

use std::collections::VecDeque;

use serde::Deserialize;
use serde_json::Value;

use super::errors::{clip, ErrorDetail};
use crate::llm::{LlmDelta, LlmError, Usage};

#[derive(Debug, Default, Deserialize)]
pub(super) struct WireChunk {
    #[serde(default)]
    choices: Vec<WireChoice>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct WireChoice {
    #[serde(default)]
    index: Option<u64>,
    /// `delta` when streaming, `message` in a whole answer.
    #[serde(default, alias = "message")]
    delta: Option<WireDelta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct WireDelta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    reasoning_content: Option<String>,
    #[serde(default)]
    reasoning: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<WireToolCall>>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct WireToolCall {
    #[serde(default)]
    index: Option<usize>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<WireFunction>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct WireFunction {
    #[serde(default)]
    name: Option<String>,
    /// A string in the protocol; some servers send an object in whole answers.
    #[serde(default)]
    arguments: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct WireUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    total_tokens: Option<u64>,
}

/// One tool call being assembled.
#[derive(Debug, Default)]
pub(super) struct CallState {
    index: usize,
    id: Option<String>,
    name: Option<String>,
    started: bool,
    /// Argument pieces that arrived before the name.
    early_args: String,
    /// All argument text so far (checked to be whole JSON when the answer ends).
    args: String,
}

/// Turns `data:` payloads into deltas. Pure: no I/O, so it is tested on its own.
#[derive(Debug, Default)]
pub(super) struct Accumulator {
    pub(super) pending: VecDeque<LlmDelta>,
    pub(super) calls: Vec<CallState>,
    pub(super) usage: Option<Usage>,
    pub(super) finish_reason: Option<String>,
    /// `Done` was queued.
    pub(super) done: bool,
    /// Deltas queued so far (text, reasoning, tool pieces).
    pub(super) produced: usize,
    /// Characters of text, reasoning and tool arguments so far.
    pub(super) chars: usize,
}

impl Accumulator {
    /// One SSE event's data.
    pub(super) fn feed(&mut self, data: &str) -> Result<(), LlmError> {
        if self.done {
            return Ok(());
        }
        let data = data.trim();
        if data.is_empty() {
            return Ok(());
        }
        if data == "[DONE]" {
            return self.finish();
        }
        let chunk: WireChunk = serde_json::from_str(data).map_err(|e| {
            LlmError::Protocol(format!("unreadable chunk ({e}): {}", clip(data, 200)))
        })?;
        self.apply(chunk)
    }

    /// A whole (non-streamed) answer.
    pub(super) fn feed_document(&mut self, text: &str) -> Result<(), LlmError> {
        let chunk: WireChunk = serde_json::from_str(text).map_err(|e| {
            LlmError::Protocol(format!("unreadable answer ({e}): {}", clip(text, 200)))
        })?;
        self.apply(chunk)?;
        if self.finish_reason.is_none() && self.produced == 0 {
            return Err(LlmError::Protocol(format!(
                "the answer has no choices: {}",
                clip(text, 200)
            )));
        }
        self.finish()
    }

    fn apply(&mut self, chunk: WireChunk) -> Result<(), LlmError> {
        if let Some(err) = chunk.error {
            let detail = ErrorDetail::from_value(&err);
            let msg = detail.describe_plain();
            return Err(if detail.is_model_not_found() {
                LlmError::UnknownModel(msg)
            } else {
                LlmError::Refused(msg)
            });
        }
        if let Some(u) = chunk.usage {
            let prompt = u.prompt_tokens.unwrap_or(0);
            let completion = u.completion_tokens.unwrap_or(0);
            self.usage = Some(Usage {
                prompt_tokens: prompt,
                completion_tokens: completion,
                total_tokens: u.total_tokens.unwrap_or(prompt + completion),
            });
        }
        for choice in chunk.choices {
            // We always ask for one choice; ignore any others.
            if choice.index.unwrap_or(0) != 0 {
                continue;
            }
            if let Some(delta) = choice.delta {
                self.apply_delta(delta)?;
            }
            if let Some(r) = choice.finish_reason.filter(|r| !r.is_empty()) {
                self.finish_reason = Some(r);
            }
        }
        Ok(())
    }

    fn push(&mut self, d: LlmDelta) {
        self.produced += 1;
        self.pending.push_back(d);
    }

    fn apply_delta(&mut self, delta: WireDelta) -> Result<(), LlmError> {
        let reasoning = delta
            .reasoning_content
            .filter(|r| !r.is_empty())
            .or(delta.reasoning.filter(|r| !r.is_empty()));
        if let Some(r) = reasoning {
            self.chars += r.chars().count();
            self.push(LlmDelta::Reasoning(r));
        }
        if let Some(t) = delta.content.filter(|t| !t.is_empty()) {
            self.chars += t.chars().count();
            self.push(LlmDelta::Text(t));
        }
        if let Some(t) = delta.refusal.filter(|t| !t.is_empty()) {
            self.chars += t.chars().count();
            self.push(LlmDelta::Text(t));
        }
        for (pos, call) in delta.tool_calls.unwrap_or_default().into_iter().enumerate() {
            self.apply_tool_piece(pos, call);
        }
        Ok(())
    }

    /// Which `calls` entry a piece belongs to.
    fn slot_for(&mut self, pos: usize, piece: &WireToolCall) -> usize {
        let index = match piece.index {
            Some(i) => i,
            // No index (some servers): a new id starts a new call, otherwise it continues the
            // call at this position, or the latest one.
            None => match &piece.id {
                Some(id)
                    if !self
                        .calls
                        .iter()
                        .any(|c| c.id.as_deref() == Some(id.as_str())) =>
                {
                    self.calls.iter().map(|c| c.index + 1).max().unwrap_or(0)
                }
                Some(id) => self
                    .calls
                    .iter()
                    .find(|c| c.id.as_deref() == Some(id.as_str()))
                    .map_or(pos, |c| c.index),
                None => self.calls.last().map_or(pos, |c| c.index),
            },
        };
        match self.calls.iter().position(|c| c.index == index) {
            Some(slot) => slot,
            None => {
                self.calls.push(CallState {
                    index,
                    ..CallState::default()
                });
                self.calls.len() - 1
            }
        }
    }

    fn apply_tool_piece(&mut self, pos: usize, piece: WireToolCall) {
        let slot = self.slot_for(pos, &piece);
        let (name, args) = match piece.function {
            Some(f) => (f.name, f.arguments),
            None => (None, None),
        };
        let args = match args {
            Some(Value::String(s)) => s,
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        };
        self.chars += args.chars().count();
        let mut out = Vec::new();
        {
            let call = &mut self.calls[slot];
            call.args.push_str(&args);
            if call.id.is_none() {
                call.id = piece.id.filter(|i| !i.is_empty());
            }
            if call.name.is_none() {
                call.name = name.filter(|n| !n.is_empty());
            }
            if !call.started {
                if let Some(name) = call.name.clone() {
                    call.started = true;
                    let id = call
                        .id
                        .clone()
                        .unwrap_or_else(|| format!("call_{}", call.index));
                    out.push(LlmDelta::ToolCallStart {
                        index: call.index,
                        id,
                        name,
                    });
                    if !call.early_args.is_empty() {
                        out.push(LlmDelta::ToolCallArgs {
                            index: call.index,
                            delta: std::mem::take(&mut call.early_args),
                        });
                    }
                }
            }
            if !args.is_empty() {
                if call.started {
                    out.push(LlmDelta::ToolCallArgs {
                        index: call.index,
                        delta: args,
                    });
                } else {
                    call.early_args.push_str(&args);
                }
            }
        }
        for d in out {
            self.push(d);
        }
    }

    /// Queue `Done`.
    fn finish(&mut self) -> Result<(), LlmError> {
        if self.done {
            return Ok(());
        }
        if let Some(c) = self.calls.iter().find(|c| !c.started) {
            return Err(LlmError::Protocol(format!(
                "tool call {} never got a function name",
                c.index
            )));
        }
        for c in &self.calls {
            let args = c.args.trim();
            if !args.is_empty() && serde_json::from_str::<serde::de::IgnoredAny>(args).is_err() {
                return Err(LlmError::Protocol(format!(
                    "the arguments of tool call {} ({}) are not complete JSON{}: {}",
                    c.index,
                    c.name.as_deref().unwrap_or("?"),
                    match self.finish_reason.as_deref() {
                        Some("length") => " (the answer hit max_tokens)",
                        _ => "",
                    },
                    clip(args, 200)
                )));
            }
        }
        self.done = true;
        self.pending.push_back(LlmDelta::Done {
            usage: self.usage.unwrap_or_default(),
            finish_reason: self.finish_reason.clone(),
        });
        Ok(())
    }

    /// The byte stream ended.
    pub(super) fn end_of_stream(&mut self) -> Result<(), LlmError> {
        if self.done {
            return Ok(());
        }
        if self.finish_reason.is_some() {
            // Some servers stop after the finish reason without `[DONE]`.
            return self.finish();
        }
        Err(LlmError::Protocol(
            "stream ended early, before [DONE] or a finish_reason: the answer is incomplete".into(),
        ))
    }
}
