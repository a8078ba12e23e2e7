//! The built-in offline model (`provider = "builtin"`).
//!
//! [`BuiltinModel`] needs no network and no keys, and always gives the same answer to the same
//! request, so example assistants work out of the box and tests are reproducible. It is not a
//! language model: it reads the request with a few rules and streams the result word by word,
//! sleeping `pace_ms` between deltas (0 = only yield to the scheduler).
//!
//! What it answers, in this order:
//!
//! - **Tool calls.** Of the offered tools not yet called since the last user message, the next
//!   one the request mentions, in the order the system prompt names them (then request order),
//!   so a lookup comes before the action it informs. The last user message mentions a tool by
//!   its name (or the name with `_` as spaces), a word of its name no other tool's name has
//!   (generic verbs aside), every word of an option of an `enum` parameter, or two or more
//!   keywords of its description; tool results already in the turn mention one by name or option
//!   words. It calls that one tool with arguments built from the tool's parameter schema (as for
//!   JSON below, where a property named like a field of an earlier result, e.g. `amount`, takes
//!   that field) and finishes with `tool_calls`.
//! - **JSON** (`ResponseFormat::Json`). A value generated from the schema that validates against
//!   it: strings filled from the input by property name (identifiers like `INV-1001` for keys and
//!   ids, arithmetic for `expression`, amounts, e-mails, dates, places, summaries, categories,
//!   purposes, ...), the first number of the input for numbers (never the number inside an
//!   identifier), booleans false unless the input says yes, arrays of one item (keywords: the
//!   text's content words), `enum`/`anyOf`/`oneOf` options picked by the words they share with
//!   the last user message (the router convention: `const` options with a `description`), except
//!   judgements: a sentiment enum by opinion words, a verdict enum (publish / reject, ...) by
//!   signs of spam. Input of "Label: value" lines is read as its longest value.
//! - **Tool results.** "Here is what I found." and each result in words: a text as it is, a
//!   lookup as "key: field value, ...", a calculation as "expression = result".
//! - **Text.** By what the system prompt and the last user message ask for: a summary ("summar"),
//!   a clearly marked pseudo-translation ("translat"), a category word ("classif", "categor"),
//!   an expense-claim draft ("expense", "claim", "reimburs"), or else a reply that quotes the
//!   request and mentions the previous user turn.
//!
//! A system prompt containing "think step by step" adds a short reasoning stream first. Usage is
//! estimated at four characters per token.
//!
//! **Invariants.** The answer is a pure function of the request (no clock, no randomness, no
//! state between calls); a tool call's id is a hash of its name and arguments. Every JSON value
//! and tool argument it writes is checked by [`crate::schema`], the server's one JSON Schema
//! implementation, while it is generated: the model has no validator of its own.
//!
//! **Layout** (each file one concept):
//!
//! - `mod.rs`: [`BuiltinModel`], the deltas of an answer, streaming, usage.
//! - `plan.rs`: reading the request and choosing the answer: tool call, JSON or text.
//! - `intents.rs`: the text answers (summary, pseudo-translation, classification, claim draft,
//!   generic reply) and the judgements (sentiment, spam); `tables.rs`: the word tables they read.
//! - `generate.rs`: the schema-driven generator (`$ref`, `enum`, `anyOf`/`oneOf`, `allOf`,
//!   objects, arrays); `fill.rs`: its leaves (strings, numbers, booleans by property name);
//!   `pattern.rs`: strings for a `pattern`.
//! - `extract.rs`: entities found in text (amounts, identifiers, arithmetic, e-mails, URLs,
//!   dates, places, people).
//! - `text.rs`: text utilities (keywords, stemming, sentences, quoting).
//! - `tests.rs`, `props.rs`, `prologue_tests.rs`: examples, property tests, and what the
//!   example assistants' prologues need.

mod conversation;
mod extract;
mod fill;
mod generate;
mod intents;
mod pattern;
mod plan;
#[cfg(test)]
mod prologue_tests;
#[cfg(test)]
mod props;
mod tables;
#[cfg(test)]
mod tests;
mod text;

use std::time::Duration;

use conversation::Conversation;
use futures_util::stream::{self, StreamExt};
use plan::{plan, reasoning, Plan};

use super::{ChatRequest, DeltaStream, LlmDelta, LlmError, LlmProvider, ResponseFormat, Usage};
use crate::config::LlmConfig;

/// The offline, deterministic model.
#[derive(Debug, Clone, Default)]
pub struct BuiltinModel {
    pace: Duration,
}

impl BuiltinModel {
    /// A model that waits `pace_ms` milliseconds between streamed deltas.
    pub fn new(pace_ms: u64) -> Self {
        BuiltinModel {
            pace: Duration::from_millis(pace_ms),
        }
    }

    pub fn from_config(cfg: &LlmConfig) -> Self {
        Self::new(cfg.pace_ms)
    }

    /// The whole answer as the deltas `chat` streams, ending with `Done`.
    pub fn answer(&self, req: &ChatRequest) -> Vec<LlmDelta> {
        let conv = Conversation::of(req);
        let plan = plan(req, &conv);
        let mut out = Vec::new();
        let mut completion_chars = 0usize;
        if conv.system_lower.contains("think step by step") {
            let r = reasoning(&conv, &plan);
            completion_chars += r.chars().count();
            out.extend(word_chunks(&r).into_iter().map(LlmDelta::Reasoning));
        }
        let finish = match plan {
            Plan::Tool { name, args } => {
                completion_chars += name.chars().count() + args.chars().count();
                out.push(LlmDelta::ToolCallStart {
                    index: 0,
                    id: format!("call_{:08x}", fnv1a(&format!("{name}\u{0}{args}")) as u32),
                    name,
                });
                out.extend(
                    json_chunks(&args)
                        .into_iter()
                        .map(|delta| LlmDelta::ToolCallArgs { index: 0, delta }),
                );
                "tool_calls"
            }
            Plan::Json(text) => {
                completion_chars += text.chars().count();
                out.extend(json_chunks(&text).into_iter().map(LlmDelta::Text));
                "stop"
            }
            Plan::Text(text) => {
                completion_chars += text.chars().count();
                out.extend(word_chunks(&text).into_iter().map(LlmDelta::Text));
                "stop"
            }
        };
        let prompt_tokens = tokens(prompt_chars(req));
        let completion_tokens = tokens(completion_chars);
        out.push(LlmDelta::Done {
            usage: Usage {
                prompt_tokens,
                completion_tokens,
                total_tokens: prompt_tokens + completion_tokens,
            },
            finish_reason: Some(finish.to_string()),
        });
        out
    }
}

#[async_trait::async_trait]
impl LlmProvider for BuiltinModel {
    async fn chat(&self, req: ChatRequest) -> Result<DeltaStream, LlmError> {
        let deltas = self.answer(&req);
        tracing::debug!(deltas = deltas.len(), "builtin model answer");
        let pace = self.pace;
        let s = stream::iter(deltas.into_iter().enumerate()).then(move |(i, d)| async move {
            if i > 0 {
                if pace.is_zero() {
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(pace).await;
                }
            }
            Ok(d)
        });
        Ok(s.boxed())
    }

    fn is_builtin(&self) -> bool {
        true
    }
}

/// Word-by-word chunks: each word with the whitespace after it. Joined, they give `text`.
fn word_chunks(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_space = false;
    for c in text.chars() {
        if c.is_whitespace() {
            in_space = true;
        } else if in_space && !cur.trim().is_empty() {
            out.push(std::mem::take(&mut cur));
            in_space = false;
        } else {
            in_space = false;
        }
        cur.push(c);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// JSON text in pieces (after each `,` and `:`), at least two when it has two characters.
fn json_chunks(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in text.chars() {
        cur.push(c);
        if c == ',' || c == ':' {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    if out.len() == 1 && text.chars().count() >= 2 {
        let half = text.chars().count() / 2;
        let a: String = text.chars().take(half).collect();
        let b: String = text.chars().skip(half).collect();
        out = vec![a, b];
    }
    out
}

fn prompt_chars(req: &ChatRequest) -> usize {
    let mut n: usize = req.messages.iter().map(|m| m.content.chars().count()).sum();
    for t in &req.tools {
        n += t.name.len() + t.description.chars().count() + t.parameters.to_string().len();
    }
    if let ResponseFormat::Json { schema } = &req.response_format {
        n += schema.to_string().len();
    }
    n
}

fn tokens(chars: usize) -> u64 {
    (chars.div_ceil(4)).max(1) as u64
}

fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}
