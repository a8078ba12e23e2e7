//! [`Conversation`]: the part of a request the rules read (system prompt, last user message,
//! earlier user turns, tool results after the last user message).

use serde_json::Value;

use crate::llm::{ChatRequest, Role};

/// The parts of a request the rules look at.
pub(super) struct Conversation<'a> {
    pub(super) system: String,
    pub(super) system_lower: String,
    pub(super) last_user: &'a str,
    /// User messages before the last one, oldest first.
    pub(super) earlier_user: Vec<&'a str>,
    /// Tool results after the last user message: (tool name if known, content).
    pub(super) tool_results: Vec<(Option<&'a str>, &'a str)>,
    /// The tools called after the last user message, in order.
    pub(super) called: Vec<&'a str>,
}

impl<'a> Conversation<'a> {
    pub(super) fn of(req: &'a ChatRequest) -> Self {
        let msgs = &req.messages;
        let system: Vec<&str> = msgs
            .iter()
            .filter(|m| m.role == Role::System)
            .map(|m| m.content.as_str())
            .collect();
        let system = system.join("\n");
        let last_user_at = msgs.iter().rposition(|m| m.role == Role::User);
        let last_user = last_user_at.map_or("", |i| msgs[i].content.as_str());
        let earlier_user = msgs[..last_user_at.unwrap_or(0)]
            .iter()
            .filter(|m| m.role == Role::User)
            .map(|m| m.content.as_str())
            .collect();
        let after = last_user_at.map_or(0, |i| i + 1);
        let tool_results = msgs[after..]
            .iter()
            .filter(|m| m.role == Role::Tool)
            .map(|m| {
                let name = m.tool_call_id.as_deref().and_then(|id| {
                    msgs.iter()
                        .flat_map(|a| a.tool_calls.iter())
                        .find(|c| c.id == id)
                        .map(|c| c.name.as_str())
                });
                (name, m.content.as_str())
            })
            .collect();
        let called = msgs[after..]
            .iter()
            .flat_map(|m| m.tool_calls.iter())
            .map(|c| c.name.as_str())
            .collect();
        Conversation {
            called,
            system_lower: system.to_lowercase(),
            system,
            last_user,
            earlier_user,
            tool_results,
        }
    }

    /// What the system prompt and the request say, lowercased: the cue for the intent.
    pub(super) fn cue(&self) -> String {
        format!("{}\n{}", self.system_lower, self.last_user.to_lowercase())
    }

    /// The text JSON values are filled from: the last user message and any tool results (JSON
    /// results one per line).
    pub(super) fn input(&self) -> String {
        let mut s = self.last_user.to_string();
        for (_, c) in &self.tool_results {
            s.push('\n');
            // JSON on one line, so that its fields can be found by name (`fill.rs`).
            match serde_json::from_str::<Value>(c) {
                Ok(v) => s.push_str(&v.to_string()),
                Err(_) => s.push_str(c),
            }
        }
        s
    }
}
