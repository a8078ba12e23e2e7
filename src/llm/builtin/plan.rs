//! Answer planning: what the request asks for and which answer it gets.
//!
//! [`Conversation`] is the part of a request the rules read (system prompt, last user message,
//! earlier user turns, tool results after the last user message). [`plan`] decides, in this
//! order: a call of the tool the last user message mentions (unless tool results already
//! answer it), a JSON value when JSON is asked for, else text ([`text_answer`]).

use serde_json::{Map, Value};

use super::generate::generate;
use super::intents::*;
use super::text::*;
use crate::llm::{ChatRequest, ResponseFormat, Role, ToolDef};

/// The parts of a request the rules look at.
pub(super) struct Conversation<'a> {
    pub(super) system: String,
    pub(super) system_lower: String,
    pub(super) last_user: &'a str,
    /// User messages before the last one, oldest first.
    pub(super) earlier_user: Vec<&'a str>,
    /// Tool results after the last user message: (tool name if known, content).
    pub(super) tool_results: Vec<(Option<&'a str>, &'a str)>,
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
        Conversation {
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

    /// The text JSON values are filled from: the last user message and any tool results.
    pub(super) fn input(&self) -> String {
        let mut s = self.last_user.to_string();
        for (_, c) in &self.tool_results {
            s.push('\n');
            s.push_str(c);
        }
        s
    }
}

pub(super) enum Plan {
    Tool { name: String, args: String },
    Json(String),
    Text(String),
}

pub(super) fn plan(req: &ChatRequest, conv: &Conversation) -> Plan {
    let input = conv.input();
    let reply = text_answer(conv);
    let gen = |root: &Value| generate(&input, &conv.system, &reply, root);
    if conv.tool_results.is_empty() {
        if let Some(tool) = pick_tool(&req.tools, conv.last_user) {
            let args = gen(&tool.parameters);
            let args = match args {
                Value::Object(_) => args,
                _ => Value::Object(Map::new()),
            };
            return Plan::Tool {
                name: tool.name.clone(),
                args: args.to_string(),
            };
        }
    }
    if let ResponseFormat::Json { schema } = &req.response_format {
        return Plan::Json(gen(schema).to_string());
    }
    Plan::Text(reply)
}

/// The tool the last user message mentions: by name first, else by description keywords.
pub(super) fn pick_tool<'t>(tools: &'t [ToolDef], user: &str) -> Option<&'t ToolDef> {
    let text = format!(" {} ", tokens_joined(user));
    if let Some(t) = tools.iter().find(|t| {
        let name = tokens_joined(&t.name);
        !name.is_empty() && text.contains(&format!(" {name} "))
    }) {
        return Some(t);
    }
    let user_kw = keywords(user);
    let mut best: Option<(&ToolDef, usize)> = None;
    for t in tools {
        let n = overlap(&keywords(&t.description), &user_kw);
        if n >= 2 && best.is_none_or(|(_, b)| n > b) {
            best = Some((t, n));
        }
    }
    best.map(|(t, _)| t)
}

pub(super) fn text_answer(conv: &Conversation) -> String {
    if !conv.tool_results.is_empty() {
        return tool_summary(conv);
    }
    let cue = conv.cue();
    let body = payload(conv.last_user);
    if cue.contains("summar") {
        summarize(body)
    } else if cue.contains("translat") {
        pseudo_translate(&cue, body)
    } else if cue.contains("classif") || cue.contains("categor") || cue.contains("sentiment") {
        classify(&conv.system, conv.last_user)
    } else if cue.contains("expense") || cue.contains("claim") || cue.contains("reimburs") {
        claim_draft(body)
    } else {
        generic_reply(conv)
    }
}

pub(super) fn tool_summary(conv: &Conversation) -> String {
    let parts: Vec<String> = conv
        .tool_results
        .iter()
        .map(|(name, content)| {
            let compact = match serde_json::from_str::<Value>(content) {
                Ok(v) => v.to_string(),
                Err(_) => collapse(content),
            };
            let compact = clip_chars(&compact, 300);
            match name {
                Some(n) => format!("{n} returned {compact}"),
                None => compact,
            }
        })
        .collect();
    format!("Here is what I found: {}.", parts.join("; "))
}

pub(super) fn reasoning(conv: &Conversation, plan: &Plan) -> String {
    let step = match plan {
        Plan::Tool { name, .. } => format!("call the {name} tool to get what is needed"),
        Plan::Json(_) => "fill in a JSON object that matches the requested schema".to_string(),
        Plan::Text(_) if !conv.tool_results.is_empty() => "summarise the tool results".to_string(),
        Plan::Text(_) => "answer briefly in plain text".to_string(),
    };
    let asked = collapse(conv.last_user);
    if asked.is_empty() {
        format!("Step 1: there is no user message. Step 2: {step}.")
    } else {
        format!(
            "Step 1: read the request \"{}\" Step 2: {step}.",
            quote_words(&asked, 12)
        )
    }
}
