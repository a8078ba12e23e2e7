//! Answer planning: what the request asks for and which answer it gets.
//!
//! [`plan`] reads a [`Conversation`] (`conversation.rs`) and decides, in this order: a call of the tool the last user message mentions (unless tool results already
//! answer it), a JSON value when JSON is asked for, else text ([`text_answer`]).

use serde_json::{Map, Value};

use super::conversation::Conversation;
use super::generate::generate;
use super::intents::*;
use super::text::*;
use crate::llm::{ChatRequest, ResponseFormat, ToolDef};

pub(super) enum Plan {
    Tool { name: String, args: String },
    Json(String),
    Text(String),
}

pub(super) fn plan(req: &ChatRequest, conv: &Conversation) -> Plan {
    let input = conv.input();
    let reply = text_answer(conv);
    let gen = |root: &Value| generate(&input, &conv.system, &reply, root);
    if let Some(tool) = next_tool(&req.tools, conv) {
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
    if let ResponseFormat::Json { schema } = &req.response_format {
        return Plan::Json(gen(schema).to_string());
    }
    Plan::Text(reply)
}

/// The next tool to call this turn: of the tools the request mentions and not yet called since
/// the last user message, the one the system prompt names first (tools it does not name come
/// after, in request order). A tool is mentioned by the last user message (see [`mentions`]),
/// or, once tools have answered, by their results (by name or option words only).
pub(super) fn next_tool<'t>(tools: &'t [ToolDef], conv: &Conversation) -> Option<&'t ToolDef> {
    let results: String = conv
        .tool_results
        .iter()
        .map(|(_, c)| *c)
        .collect::<Vec<_>>()
        .join("\n");
    let mut order: Vec<(usize, usize, &ToolDef)> = tools
        .iter()
        .enumerate()
        .filter(|(_, t)| !conv.called.contains(&t.name.as_str()))
        .filter(|(_, t)| {
            mentions(t, tools, conv.last_user, true)
                || (!results.is_empty() && mentions(t, tools, &results, false))
        })
        .map(|(i, t)| {
            let at = conv
                .system_lower
                .find(&t.name.to_lowercase())
                .unwrap_or(usize::MAX);
            (at, i, t)
        })
        .collect();
    order.sort_by_key(|(at, i, _)| (*at, *i));
    order.first().map(|(_, _, t)| *t)
}

/// Whether `text` mentions `tool`: its name (or the name with `_` as spaces), a word of its
/// name that no other tool's name has (generic verbs aside), every word of an option of an
/// `enum` parameter, or (with `by_description`) two or more keywords of its description.
pub(super) fn mentions(
    tool: &ToolDef,
    tools: &[ToolDef],
    text: &str,
    by_description: bool,
) -> bool {
    const VERBS: &[&str] = &[
        "get", "set", "find", "look", "lookup", "search", "issu", "issue", "open", "make",
        "create", "run", "call", "check", "show", "list", "fetch", "send", "known", "add", "new",
    ];
    let joined = format!(" {} ", tokens_joined(text));
    let name = tokens_joined(&tool.name);
    if !name.is_empty() && joined.contains(&format!(" {name} ")) {
        return true;
    }
    let text_kw = keywords(text);
    let name_kw = |t: &ToolDef| keywords(&t.name.replace('_', " "));
    let own: Vec<String> = name_kw(tool)
        .into_iter()
        .filter(|w| !VERBS.contains(&w.as_str()))
        .filter(|w| {
            !tools
                .iter()
                .filter(|o| o.name != tool.name)
                .any(|o| name_kw(o).contains(w))
        })
        .collect();
    if overlap(&own, &text_kw) > 0 {
        return true;
    }
    if let Some(props) = tool.parameters.get("properties").and_then(Value::as_object) {
        for p in props.values() {
            if let Some(Value::Array(opts)) = p.get("enum") {
                let hit = opts.iter().filter_map(Value::as_str).any(|o| {
                    let words = keywords(&o.replace('_', " "));
                    !words.is_empty() && words.iter().all(|w| text_kw.contains(w))
                });
                if hit {
                    return true;
                }
            }
        }
    }
    by_description && overlap(&keywords(&tool.description), &text_kw) >= 2
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
            let said = match serde_json::from_str::<Value>(content) {
                Ok(v) => in_words(&v),
                Err(_) => collapse(content),
            };
            let said = end_sentence(&clip_chars(&said, 300));
            match name {
                Some(n) => format!("{}: {said}", capitalize(&n.replace('_', " "))),
                None => said,
            }
        })
        .collect();
    format!("Here is what I found. {}", parts.join(" "))
}

/// A tool result as a person would read it: a text as it is, an object as "key value" pairs
/// ("status paid, amount 49.9, currency EUR"), a list item by item.
pub(super) fn in_words(v: &Value) -> String {
    match v {
        Value::String(s) => collapse(s),
        Value::Null => "nothing".to_string(),
        Value::Bool(b) => if *b { "yes" } else { "no" }.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Array(items) if items.is_empty() => "nothing".to_string(),
        Value::Array(items) => items.iter().map(in_words).collect::<Vec<_>>().join("; "),
        Value::Object(o) if o.get("found") == Some(&Value::Bool(false)) => {
            match o.get("key").or(o.get("query")) {
                Some(k) => format!("nothing was found for {}", in_words(k)),
                None => "nothing was found".to_string(),
            }
        }
        // A lookup ({"key", "value"}) or a calculation ({"expression", "result"}).
        Value::Object(o) if o.contains_key("value") || o.contains_key("result") => {
            let body = o.get("value").or(o.get("result")).unwrap_or(&Value::Null);
            match (o.get("expression"), o.get("key").or(o.get("query"))) {
                (Some(e), _) => format!("{} = {}", in_words(e), in_words(body)),
                (None, Some(k)) => format!("{}: {}", in_words(k), in_words(body)),
                (None, None) => in_words(body),
            }
        }
        Value::Object(o) => o
            .iter()
            .map(|(k, v)| format!("{} {}", name_words(k).join(" "), in_words(v)))
            .collect::<Vec<_>>()
            .join(", "),
    }
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
