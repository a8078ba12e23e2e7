//! From a run's stored events to OpenAI's answer: `chat.completion.chunk`s as the events come,
//! and the `chat.completion` they add up to. Pure: a [`Translator`] is fed the events after the
//! request's mark, one at a time, and knows nothing of actors or sockets.
//!
//! # The mapping (CONTRACT §8)
//!
//! | event | chunk |
//! |---|---|
//! | `TEXT_MESSAGE_CONTENT` of an assistant message | `delta.content` (a second message of the same run starts with a blank line) |
//! | `TEXT_MESSAGE_*` of the user's own message | nothing (the echo of the request) |
//! | `RUN_FINISHED` success | the output as JSON text when the run wrote no text; then `finish_reason: "stop"` |
//! | `RUN_FINISHED` interrupt | one tool call per interrupt (id = interrupt id; name = the page action, or `parley_confirmation`; arguments = the interrupt as JSON); then `finish_reason: "tool_calls"` |
//! | `RUN_ERROR` | an error (`data: {"error": …}` in a stream, the code's status otherwise) |
//! | steps, server-side tool calls, reasoning, `CUSTOM` | nothing |
//!
//! # Guarantees
//!
//! Every chunk has the same `id`; the first carries `delta.role`; the finish chunk is the last
//! with a choice, and nothing follows it but the usage chunk (`choices: []`) when asked for.

use std::collections::HashSet;

use serde_json::Value;

use super::wire::*;
use crate::engine::{Event, Interrupt, InterruptReason, Outcome};
use crate::error::ApiError;

/// The tool name of a card or tool confirmation.
pub const CONFIRMATION_TOOL: &str = "parley_confirmation";

/// What one event becomes.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Chunk(ChatCompletionChunk),
    /// The run failed (or was cancelled): the answer ends with this error.
    Error(ApiError),
}

/// Translates one request's run events (see the module doc).
#[derive(Debug)]
pub struct Translator {
    id: String,
    model: String,
    created: i64,
    include_usage: bool,
    role_sent: bool,
    user_messages: HashSet<String>,
    last_text_message: Option<String>,
    text: String,
    tool_calls: Vec<ToolCall>,
    finish: Option<FinishReason>,
    usage: Usage,
    error: Option<ApiError>,
}

impl Translator {
    pub fn new(id: String, model: String, created: i64, include_usage: bool) -> Self {
        Translator {
            id,
            model,
            created,
            include_usage,
            role_sent: false,
            user_messages: HashSet::new(),
            last_text_message: None,
            text: String::new(),
            tool_calls: Vec::new(),
            finish: None,
            usage: Usage::default(),
            error: None,
        }
    }

    /// Whether the answer is complete (finished or failed): later events are ignored.
    pub fn is_done(&self) -> bool {
        self.finish.is_some() || self.error.is_some()
    }

    /// The error the run ended with, if it failed.
    pub fn error(&self) -> Option<&ApiError> {
        self.error.as_ref()
    }

    /// What one event adds to the answer.
    pub fn push(&mut self, event: &Event) -> Vec<Output> {
        if self.is_done() {
            return Vec::new();
        }
        match event {
            Event::TextMessageStart { message_id, role } => {
                if *role == crate::llm::Role::User {
                    self.user_messages.insert(message_id.clone());
                }
                Vec::new()
            }
            Event::TextMessageContent { message_id, delta } => {
                if self.user_messages.contains(message_id) || delta.is_empty() {
                    return Vec::new();
                }
                let mut content = String::new();
                if !self.text.is_empty() && self.last_text_message.as_ref() != Some(message_id) {
                    content.push_str("\n\n");
                }
                content.push_str(delta);
                self.last_text_message = Some(message_id.clone());
                vec![self.content_chunk(content)]
            }
            Event::RunFinished { outcome, usage, .. } => {
                self.usage = Usage {
                    prompt_tokens: usage.prompt_tokens,
                    completion_tokens: usage.completion_tokens,
                    total_tokens: usage.total_tokens,
                };
                match outcome {
                    Outcome::Success { result } => self.finish_success(result),
                    Outcome::Interrupt { interrupts } => self.finish_paused(interrupts),
                }
            }
            Event::RunError { code, message, .. } => {
                let e = ApiError::new(*code, message.clone());
                self.error = Some(e.clone());
                vec![Output::Error(e)]
            }
            _ => Vec::new(),
        }
    }

    fn finish_success(&mut self, result: &Value) -> Vec<Output> {
        let mut out = Vec::new();
        let empty = match result {
            Value::Null => true,
            Value::Object(o) => o.is_empty(),
            _ => false,
        };
        if self.text.is_empty() && !empty {
            out.push(self.content_chunk(result.to_string()));
        }
        out.extend(self.finish_chunks(FinishReason::Stop, Vec::new()));
        out
    }

    fn finish_paused(&mut self, interrupts: &[Interrupt]) -> Vec<Output> {
        let calls: Vec<ToolCall> = interrupts.iter().map(tool_call).collect();
        self.tool_calls = calls.clone();
        let deltas = calls
            .into_iter()
            .enumerate()
            .map(|(i, c)| ToolCallDelta {
                index: i as u32,
                id: c.id,
                kind: c.kind,
                function: c.function,
            })
            .collect();
        self.finish_chunks(FinishReason::ToolCalls, deltas)
    }

    fn finish_chunks(
        &mut self,
        reason: FinishReason,
        tool_calls: Vec<ToolCallDelta>,
    ) -> Vec<Output> {
        let mut out = Vec::new();
        if !tool_calls.is_empty() {
            let delta = Delta {
                role: self.take_role(),
                content: None,
                tool_calls,
            };
            out.push(Output::Chunk(self.chunk(delta, None)));
        }
        let delta = Delta {
            role: self.take_role(),
            ..Delta::default()
        };
        out.push(Output::Chunk(self.chunk(delta, Some(reason))));
        self.finish = Some(reason);
        if self.include_usage {
            out.push(Output::Chunk(ChatCompletionChunk {
                id: self.id.clone(),
                object: ChunkObject::ChatCompletionChunk,
                created: self.created,
                model: self.model.clone(),
                choices: Vec::new(),
                usage: Some(self.usage),
            }));
        }
        out
    }

    fn take_role(&mut self) -> Option<AnswerRole> {
        (!std::mem::replace(&mut self.role_sent, true)).then_some(AnswerRole::Assistant)
    }

    fn content_chunk(&mut self, content: String) -> Output {
        self.text.push_str(&content);
        let delta = Delta {
            role: self.take_role(),
            content: Some(content),
            tool_calls: Vec::new(),
        };
        Output::Chunk(self.chunk(delta, None))
    }

    fn chunk(&self, delta: Delta, finish_reason: Option<FinishReason>) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.id.clone(),
            object: ChunkObject::ChatCompletionChunk,
            created: self.created,
            model: self.model.clone(),
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                finish_reason,
            }],
            usage: None,
        }
    }

    /// The non-streamed answer the events so far add up to (`None` until the run finished).
    pub fn completion(&self) -> Option<ChatCompletion> {
        let finish_reason = self.finish?;
        Some(ChatCompletion {
            id: self.id.clone(),
            object: CompletionObject::ChatCompletion,
            created: self.created,
            model: self.model.clone(),
            choices: vec![Choice {
                index: 0,
                message: AnswerMessage {
                    role: AnswerRole::Assistant,
                    content: (!self.text.is_empty()).then(|| self.text.clone()),
                    tool_calls: self.tool_calls.clone(),
                },
                finish_reason,
                logprobs: None,
            }],
            usage: self.usage,
        })
    }
}

/// An interrupt as a tool call.
pub fn tool_call(i: &Interrupt) -> ToolCall {
    let name = match (i.reason, &i.action) {
        (InterruptReason::PageAction, Some(action)) => action.clone(),
        _ => CONFIRMATION_TOOL.to_owned(),
    };
    ToolCall {
        id: i.id.clone(),
        kind: ToolType::Function,
        function: FunctionCall {
            name,
            arguments: i.to_json().to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use crate::llm::Role;
    use serde_json::json;

    fn t(include_usage: bool) -> Translator {
        Translator::new("chatcmpl-1".into(), "chat".into(), 7, include_usage)
    }

    fn text(id: &str, role: Role, delta: &str) -> Vec<Event> {
        vec![
            Event::TextMessageStart {
                message_id: id.into(),
                role,
            },
            Event::TextMessageContent {
                message_id: id.into(),
                delta: delta.into(),
            },
            Event::TextMessageEnd {
                message_id: id.into(),
            },
        ]
    }

    fn finished(outcome: Outcome) -> Event {
        Event::RunFinished {
            run_id: "r".into(),
            outcome,
            usage: crate::llm::Usage {
                prompt_tokens: 3,
                completion_tokens: 2,
                total_tokens: 5,
            },
        }
    }

    fn chunks(tr: &mut Translator, events: &[Event]) -> Vec<ChatCompletionChunk> {
        events
            .iter()
            .flat_map(|e| tr.push(e))
            .map(|o| match o {
                Output::Chunk(c) => c,
                Output::Error(e) => panic!("unexpected error {e}"),
            })
            .collect()
    }

    #[test]
    fn text_streams_as_content_with_the_role_first_and_usage_last() {
        let mut tr = t(true);
        let mut events = text("u", Role::User, "hello");
        events.push(Event::RunStarted { run_id: "r".into() });
        events.extend(text("a", Role::Assistant, "Hi"));
        events.extend(text("b", Role::Assistant, "there"));
        events.push(finished(Outcome::Success {
            result: json!({"text": "Hi"}),
        }));
        let cs = chunks(&mut tr, &events);
        assert_eq!(cs.len(), 4, "{cs:#?}");
        assert!(cs.iter().all(|c| c.id == "chatcmpl-1"));
        assert_eq!(cs[0].choices[0].delta.role, Some(AnswerRole::Assistant));
        assert_eq!(cs[0].choices[0].delta.content.as_deref(), Some("Hi"));
        assert_eq!(cs[1].choices[0].delta.role, None);
        assert_eq!(cs[1].choices[0].delta.content.as_deref(), Some("\n\nthere"));
        assert_eq!(cs[2].choices[0].finish_reason, Some(FinishReason::Stop));
        assert!(cs[3].choices.is_empty());
        assert_eq!(cs[3].usage.map(|u| u.total_tokens), Some(5));
        let done = tr.completion().unwrap();
        assert_eq!(
            done.choices[0].message.content.as_deref(),
            Some("Hi\n\nthere")
        );
        assert_eq!(done.usage.prompt_tokens, 3);
        // Nothing after the finish.
        assert!(tr.push(&text("c", Role::Assistant, "late")[1]).is_empty());
    }

    #[test]
    fn a_run_without_text_answers_its_output_as_json() {
        let mut tr = t(false);
        let cs = chunks(
            &mut tr,
            &[finished(Outcome::Success {
                result: json!({"summary": "x"}),
            })],
        );
        assert_eq!(cs.len(), 2);
        assert_eq!(
            cs[0].choices[0].delta.content.as_deref(),
            Some(r#"{"summary":"x"}"#)
        );
        assert!(cs.iter().all(|c| c.usage.is_none()));
    }

    #[test]
    fn a_pause_is_a_tool_call_per_interrupt() {
        let mut tr = t(false);
        let card = Interrupt::new(InterruptReason::ConversationAction, "confirm", "Approve?")
            .buttons(vec!["approve".into()]);
        let page = Interrupt::new(InterruptReason::PageAction, "fill", "Check")
            .page_action("fill_form".into(), json!({"text": "t"}));
        let mut events = text("a", Role::Assistant, "Before");
        events.push(finished(Outcome::Interrupt {
            interrupts: vec![card.clone(), page.clone()],
        }));
        let cs = chunks(&mut tr, &events);
        let calls = &cs[1].choices[0].delta.tool_calls;
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].id, card.id);
        assert_eq!(calls[0].function.name, CONFIRMATION_TOOL);
        assert_eq!(calls[1].function.name, "fill_form");
        assert_eq!((calls[0].index, calls[1].index), (0, 1));
        let args: Value = serde_json::from_str(&calls[1].function.arguments).unwrap();
        assert_eq!(args, page.to_json());
        assert_eq!(
            cs[2].choices[0].finish_reason,
            Some(FinishReason::ToolCalls)
        );
        let done = tr.completion().unwrap();
        assert_eq!(done.choices[0].message.content.as_deref(), Some("Before"));
        assert_eq!(done.choices[0].message.tool_calls.len(), 2);
    }

    #[test]
    fn a_pause_without_text_carries_the_role_on_the_tool_calls_and_null_content() {
        let mut tr = t(false);
        let card = Interrupt::new(InterruptReason::ToolConfirmation, "agent", "Allow?");
        let cs = chunks(
            &mut tr,
            &[finished(Outcome::Interrupt {
                interrupts: vec![card],
            })],
        );
        assert_eq!(cs[0].choices[0].delta.role, Some(AnswerRole::Assistant));
        assert_eq!(cs[1].choices[0].delta.role, None);
        assert_eq!(tr.completion().unwrap().choices[0].message.content, None);
    }

    #[test]
    fn a_run_error_ends_the_answer_with_its_code() {
        let mut tr = t(true);
        let out = tr.push(&Event::RunError {
            run_id: "r".into(),
            code: ErrorCode::LlmError,
            message: "down".into(),
        });
        assert_eq!(
            out,
            vec![Output::Error(ApiError::new(ErrorCode::LlmError, "down"))]
        );
        assert!(tr.is_done());
        assert!(tr.completion().is_none());
        assert!(tr
            .push(&finished(Outcome::Success { result: json!({}) }))
            .is_empty());
    }
}
