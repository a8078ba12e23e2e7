//! What a chat-completion request asks of the conversation: a `send` of the newest user
//! message, or — when the messages end with `tool` messages — a `resume` answering the
//! interrupt those name (CONTRACT §8). Pure functions, unit-tested here.

use serde_json::Value;

use super::error::OpenAiError;
use super::wire::{ChatMessage, ChatRole};
use crate::error::ApiError;

/// The conversation command a request maps to.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// A user message (starts a run, or answers a paused page action / card as a send does).
    Send { content: String },
    /// An answer to one pending interrupt.
    Resume {
        interrupt_id: String,
        action: Option<String>,
        value: Value,
    },
}

/// The command of a request's messages.
pub fn command(messages: &[ChatMessage]) -> Result<Command, OpenAiError> {
    let trailing_tools: Vec<&ChatMessage> = messages
        .iter()
        .rev()
        .take_while(|m| m.role == ChatRole::Tool)
        .collect();
    match trailing_tools.as_slice() {
        [] => {}
        [tool] => return resume(tool),
        _ => {
            return Err(OpenAiError::from(ApiError::bad_request(
                "the messages end with several tool messages; a Parley conversation pauses for one interrupt at a time, so answer only the newest tool call",
            ))
            .param("messages"))
        }
    }
    let user = messages
        .iter()
        .rev()
        .find(|m| m.role == ChatRole::User)
        .ok_or_else(|| {
            OpenAiError::from(ApiError::bad_request(
                "the messages hold no user message (and do not end with a tool message)",
            ))
            .param("messages")
        })?;
    let content = user.text().ok_or_else(|| {
        OpenAiError::from(ApiError::bad_request(
            "the newest user message has no text content",
        ))
        .param("messages")
    })?;
    Ok(Command::Send { content })
}

fn resume(tool: &ChatMessage) -> Result<Command, OpenAiError> {
    let interrupt_id = tool
        .tool_call_id
        .clone()
        .filter(|id| !id.is_empty())
        .ok_or_else(|| {
            OpenAiError::from(ApiError::bad_request(
                "a tool message needs the tool_call_id it answers",
            ))
            .param("messages")
        })?;
    let (action, value) = tool_answer(tool.text().as_deref().unwrap_or(""));
    Ok(Command::Resume {
        interrupt_id,
        action,
        value,
    })
}

/// A `tool` message's content as an answer: a JSON object with `action` and/or `value` gives
/// those; any other content is the value as is (the parsed JSON, or the text).
pub fn tool_answer(content: &str) -> (Option<String>, Value) {
    match serde_json::from_str::<Value>(content) {
        Ok(Value::Object(mut o)) if o.contains_key("action") || o.contains_key("value") => {
            let action = match o.remove("action") {
                Some(Value::String(a)) => Some(a),
                Some(other) if !other.is_null() => Some(other.to_string()),
                _ => None,
            };
            (action, o.remove("value").unwrap_or(Value::Null))
        }
        Ok(v) => (None, v),
        Err(_) => (None, Value::String(content.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn msgs(v: Value) -> Vec<ChatMessage> {
        serde_json::from_value(v).expect("messages")
    }

    #[test]
    fn the_newest_user_message_is_sent() {
        let m = msgs(json!([
            {"role": "system", "content": "be nice"},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [{"type": "text", "text": "second"}, {"type": "image_url", "image_url": {"url": "x"}}]},
        ]));
        assert_eq!(
            command(&m).unwrap(),
            Command::Send {
                content: "second".into()
            }
        );
    }

    #[test]
    fn a_trailing_tool_message_resumes() {
        let m = msgs(json!([
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "i1", "type": "function", "function": {"name": "x", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "i1", "content": "{\"action\": \"approve\"}"},
        ]));
        assert_eq!(
            command(&m).unwrap(),
            Command::Resume {
                interrupt_id: "i1".into(),
                action: Some("approve".into()),
                value: Value::Null
            }
        );
    }

    #[test]
    fn tool_contents() {
        assert_eq!(
            tool_answer(r#"{"action": "reply", "value": {"a": 1}}"#),
            (Some("reply".into()), json!({"a": 1}))
        );
        assert_eq!(tool_answer(r#"{"a": 1}"#), (None, json!({"a": 1})));
        assert_eq!(tool_answer("42"), (None, json!(42)));
        assert_eq!(tool_answer("done"), (None, json!("done")));
    }

    #[test]
    fn bad_messages_are_refused_with_the_param() {
        for m in [
            json!([{"role": "system", "content": "only"}]),
            json!([{"role": "user", "content": 5}]),
            json!([{"role": "tool", "content": "x"}]),
            json!([{"role": "tool", "tool_call_id": "a", "content": "x"}, {"role": "tool", "tool_call_id": "b", "content": "y"}]),
        ] {
            let e = command(&msgs(m.clone())).unwrap_err();
            assert_eq!(e.api.code, crate::error::ErrorCode::BadRequest, "{m}");
            assert_eq!(e.param, Some("messages"));
        }
    }
}
