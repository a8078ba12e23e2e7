//! Encoding requests: the JSON body of a chat-completions call.

use serde_json::{json, Map, Value};

use super::OpenAiProvider;
use crate::llm::{ChatMessage, ChatRequest, ResponseFormat, Role, ToolDef};

impl OpenAiProvider {
    /// The JSON body of a chat-completions request.
    pub fn request_body(&self, req: &ChatRequest) -> Value {
        let mut messages: Vec<Value> = req.messages.iter().map(wire_message).collect();
        let mut body = Map::new();
        if let Some(m) = &self.model {
            body.insert("model".into(), json!(m));
        }
        let mut response_format = None;
        if let ResponseFormat::Json { schema } = &req.response_format {
            if self.json_schema {
                response_format = Some(json!({
                    "type": "json_schema",
                    "json_schema": {"name": "output", "schema": schema},
                }));
            } else {
                response_format = Some(json!({"type": "json_object"}));
                add_system_line(&mut messages, &json_instruction(schema));
            }
        }
        body.insert("messages".into(), Value::Array(messages));
        body.insert("stream".into(), json!(true));
        body.insert("stream_options".into(), json!({"include_usage": true}));
        if let Some(t) = req.temperature.or(self.temperature) {
            body.insert("temperature".into(), f32_json(t));
        }
        if let Some(n) = req.max_tokens.or(self.max_tokens) {
            body.insert("max_tokens".into(), json!(n));
        }
        if !req.tools.is_empty() {
            body.insert(
                "tools".into(),
                Value::Array(req.tools.iter().map(wire_tool).collect()),
            );
        }
        if let Some(rf) = response_format {
            body.insert("response_format".into(), rf);
        }
        Value::Object(body)
    }
}

/// A float as JSON without f32 noise (0.7, not 0.699999988079071).
pub(super) fn f32_json(t: f32) -> Value {
    t.to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

pub(super) fn wire_message(m: &ChatMessage) -> Value {
    let mut o = Map::new();
    o.insert("role".into(), json!(m.role.as_str()));
    match m.role {
        Role::Assistant if !m.tool_calls.is_empty() => {
            o.insert(
                "content".into(),
                if m.content.is_empty() {
                    Value::Null
                } else {
                    json!(m.content)
                },
            );
            let calls: Vec<Value> = m
                .tool_calls
                .iter()
                .map(|c| {
                    json!({
                        "id": c.id,
                        "type": "function",
                        "function": {"name": c.name, "arguments": c.arguments},
                    })
                })
                .collect();
            o.insert("tool_calls".into(), Value::Array(calls));
        }
        Role::Tool => {
            o.insert("content".into(), json!(m.content));
            o.insert(
                "tool_call_id".into(),
                json!(m.tool_call_id.clone().unwrap_or_default()),
            );
        }
        _ => {
            o.insert("content".into(), json!(m.content));
        }
    }
    Value::Object(o)
}

pub(super) fn wire_tool(t: &ToolDef) -> Value {
    let parameters = if t.parameters.is_object() {
        t.parameters.clone()
    } else {
        json!({"type": "object", "properties": {}})
    };
    json!({
        "type": "function",
        "function": {"name": t.name, "description": t.description, "parameters": parameters},
    })
}

pub(super) fn json_instruction(schema: &Value) -> String {
    let empty = match schema {
        Value::Null => true,
        Value::Object(o) => o.is_empty(),
        _ => false,
    };
    if empty {
        "Answer with a single JSON object and nothing else.".to_string()
    } else {
        format!(
            "Answer with a single JSON object and nothing else. It must match this JSON Schema:\n{schema}"
        )
    }
}

/// Append `line` to the leading system message, or add one.
pub(super) fn add_system_line(messages: &mut Vec<Value>, line: &str) {
    if let Some(first) = messages.first_mut() {
        if first.get("role").and_then(Value::as_str) == Some("system") {
            let old = first
                .get("content")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let joined = if old.trim().is_empty() {
                line.to_string()
            } else {
                format!("{old}\n\n{line}")
            };
            first["content"] = json!(joined);
            return;
        }
    }
    messages.insert(0, json!({"role": "system", "content": line}));
}
