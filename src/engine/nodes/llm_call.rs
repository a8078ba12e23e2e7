//! Calling a model, shared by `llm`, `router` and `agent`: streaming its answer into events
//! (`TEXT_MESSAGE_*` when the text goes to the chat, `REASONING_MESSAGE_CONTENT`,
//! `TOOL_CALL_*`), counting usage, and JSON answers checked against a schema with one repair
//! attempt. Cancellation aborts the request and closes an open text message.

use futures_util::StreamExt;
use serde_json::Value;

use super::{new_id, Run, StepErr};
use crate::engine::Event;
use crate::error::ErrorCode;
use crate::llm::{ChatMessage, ChatRequest, LlmDelta, ResponseFormat, Role, ToolCall};
use crate::schema::JsonSchema;

/// A model's complete answer.
pub(super) struct LlmAnswer {
    pub(super) text: String,
    pub(super) calls: Vec<ToolCall>,
}

/// What has streamed so far of one answer.
struct Streaming {
    stream_text: bool,
    message_id: Option<String>,
    reasoning_id: Option<String>,
    text: String,
    calls: Vec<ToolCall>,
    /// The model's index of each call in `calls`.
    call_index: Vec<usize>,
}

impl Streaming {
    /// The `TEXT_MESSAGE_END` that closes the chat text, if one was opened.
    fn end_text(&self) -> Option<Event> {
        self.message_id
            .clone()
            .map(|message_id| Event::TextMessageEnd { message_id })
    }
}

impl Run<'_> {
    /// A JSON answer checked against `schema`, with one repair attempt.
    pub(super) async fn llm_json(
        &mut self,
        provider: &str,
        mut req: ChatRequest,
        schema: &JsonSchema,
    ) -> Result<Value, StepErr> {
        req.response_format = ResponseFormat::Json {
            schema: schema.source().clone(),
        };
        let ans = self.call_llm(provider, req.clone(), false).await?;
        self.checked_or_repaired(provider, req, &ans.text, schema)
            .await
    }

    /// `answer` if it is a JSON object that fits `schema`, else the model's one repair of it.
    pub(super) async fn checked_or_repaired(
        &mut self,
        provider: &str,
        req: ChatRequest,
        answer: &str,
        schema: &JsonSchema,
    ) -> Result<Value, StepErr> {
        match parse_checked(answer, schema) {
            Ok(v) => Ok(v),
            Err(problems) => self.repair(provider, req, answer, &problems, schema).await,
        }
    }

    async fn repair(
        &mut self,
        provider: &str,
        mut req: ChatRequest,
        bad: &str,
        problems: &str,
        schema: &JsonSchema,
    ) -> Result<Value, StepErr> {
        req.response_format = ResponseFormat::Json {
            schema: schema.source().clone(),
        };
        req.messages.push(ChatMessage::assistant(bad.to_string()));
        req.messages.push(ChatMessage::user(format!(
            "Your answer does not match the required JSON schema: {problems}. Answer again with only the corrected JSON object."
        )));
        let ans = self.call_llm(provider, req, false).await?;
        parse_checked(&ans.text, schema).map_err(|p| {
            StepErr::new(
                ErrorCode::LlmError,
                format!("the model's JSON answer does not match the schema even after a repair attempt: {p}"),
            )
        })
    }

    /// One model call, streaming text to the chat when `stream_text`.
    pub(super) async fn call_llm(
        &mut self,
        provider: &str,
        req: ChatRequest,
        stream_text: bool,
    ) -> Result<LlmAnswer, StepErr> {
        let llm = self
            .engine
            .llms
            .get(provider)
            .map_err(|e| StepErr::new(ErrorCode::LlmError, e.to_string()))?;
        let cancel = self.cancel.clone();
        let mut stream = tokio::select! {
            r = llm.chat(req) => r.map_err(|e| StepErr::new(ErrorCode::LlmError, e.to_string()))?,
            _ = cancel.cancelled() => return Err(StepErr::cancelled()),
        };
        let mut s = Streaming {
            stream_text,
            message_id: None,
            reasoning_id: None,
            text: String::new(),
            calls: Vec::new(),
            call_index: Vec::new(),
        };
        loop {
            let item = tokio::select! {
                biased;
                _ = cancel.cancelled() => None,
                it = stream.next() => Some(it),
            };
            let Some(item) = item else {
                // Cancelled: drop the stream (aborting the request), keep the partial text.
                drop(stream);
                if let Some(e) = s.end_text() {
                    self.emit(e).await;
                }
                return Err(StepErr::cancelled());
            };
            match item {
                None => break,
                Some(Err(e)) => {
                    if let Some(ev) = s.end_text() {
                        self.emit(ev).await;
                    }
                    return Err(StepErr::new(ErrorCode::LlmError, e.to_string()));
                }
                Some(Ok(delta)) => {
                    if self.on_delta(&mut s, delta).await {
                        break;
                    }
                }
            }
        }
        if let Some(e) = s.end_text() {
            self.emit(e).await;
        }
        for c in &s.calls {
            self.emit(Event::ToolCallEnd {
                tool_call_id: c.id.clone(),
            })
            .await;
        }
        Ok(LlmAnswer {
            text: s.text,
            calls: s.calls,
        })
    }

    /// One piece of the answer: its events, and whether the answer is complete.
    async fn on_delta(&mut self, s: &mut Streaming, delta: LlmDelta) -> bool {
        match delta {
            LlmDelta::Text(d) => {
                if d.is_empty() {
                    return false;
                }
                s.text.push_str(&d);
                if s.stream_text {
                    let id = match &s.message_id {
                        Some(id) => id.clone(),
                        None => {
                            let id = new_id();
                            s.message_id = Some(id.clone());
                            self.emit(Event::TextMessageStart {
                                message_id: id.clone(),
                                role: Role::Assistant,
                            })
                            .await;
                            id
                        }
                    };
                    self.emit(Event::TextMessageContent {
                        message_id: id,
                        delta: d,
                    })
                    .await;
                }
            }
            LlmDelta::Reasoning(d) => {
                let id = s.reasoning_id.get_or_insert_with(new_id).clone();
                self.emit(Event::ReasoningMessageContent {
                    message_id: id,
                    delta: d,
                })
                .await;
            }
            LlmDelta::ToolCallStart { index, id, name } => {
                let id = if id.is_empty() { new_id() } else { id };
                s.call_index.push(index);
                s.calls.push(ToolCall {
                    id: id.clone(),
                    name: name.clone(),
                    arguments: String::new(),
                });
                self.emit(Event::ToolCallStart {
                    tool_call_id: id,
                    tool_call_name: name,
                })
                .await;
            }
            LlmDelta::ToolCallArgs { index, delta } => {
                if let Some(pos) = s.call_index.iter().position(|&i| i == index) {
                    s.calls[pos].arguments.push_str(&delta);
                    let id = s.calls[pos].id.clone();
                    self.emit(Event::ToolCallArgs {
                        tool_call_id: id,
                        delta,
                    })
                    .await;
                }
            }
            LlmDelta::Done { usage, .. } => {
                self.cp.usage.add(usage);
                return true;
            }
        }
        false
    }
}

/// Parse a model's JSON answer (tolerating code fences and text around the object) and check it.
fn parse_checked(text: &str, schema: &JsonSchema) -> Result<Value, String> {
    let v = extract_object(text)?;
    schema.validate(&v).map_err(|errs| errs.join("; "))?;
    Ok(v)
}

/// The JSON object in a model's answer: the whole answer, or the first complete object in it
/// (models wrap JSON in code fences or put a sentence with braces before it).
fn extract_object(text: &str) -> Result<Value, String> {
    /// How many `{` are tried as the start of the object.
    const TRIES: usize = 32;
    let t = text.trim();
    if let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(t) {
        return Ok(v);
    }
    let mut first_error = None;
    for (i, _) in t.match_indices('{').take(TRIES) {
        let mut values = serde_json::Deserializer::from_str(&t[i..]).into_iter::<Value>();
        match values.next() {
            Some(Ok(v @ Value::Object(_))) => return Ok(v),
            Some(Err(e)) if first_error.is_none() => first_error = Some(e.to_string()),
            _ => {}
        }
    }
    Err(match first_error {
        Some(e) => format!("the answer is not valid JSON ({e})"),
        None => "the answer is not a JSON object".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_objects_are_found_in_chatty_answers() {
        let obj = json!({"a": {"b": [1, "}"]}});
        for text in [
            r#"{"a": {"b": [1, "}"]}}"#,
            "```json\n{\"a\": {\"b\": [1, \"}\"]}}\n```",
            r#"Sure {here} it is: {"a": {"b": [1, "}"]}} - anything else? {x}"#,
        ] {
            assert_eq!(extract_object(text), Ok(obj.clone()), "{text}");
        }
        assert_eq!(
            extract_object("no json here"),
            Err("the answer is not a JSON object".into())
        );
        assert!(extract_object(r#"{"a": 1,"#)
            .unwrap_err()
            .contains("not valid JSON"));
        assert!(extract_object("[1, 2]").is_err());
        let schema = JsonSchema::new(json!({"type": "object", "required": ["a"]}));
        assert!(parse_checked(r#"{"b": 1}"#, &schema)
            .unwrap_err()
            .contains("$.a is required"));
    }
}
