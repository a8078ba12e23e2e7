//! The built-in offline model (`provider = "builtin"`).
//!
//! [`BuiltinModel`] needs no network and no keys, and always gives the same answer to the same
//! request, so example assistants work out of the box and tests are reproducible. It is not a
//! language model: it reads the request with a few rules and streams the result word by word,
//! sleeping `pace_ms` between deltas (0 = only yield to the scheduler).
//!
//! What it answers, in this order:
//!
//! - **Tool calls.** When the request offers tools, no tool result follows the last user message,
//!   and that message mentions a tool (its name, the name with `_` as spaces, or two or more
//!   keywords of its description), it calls that one tool with arguments built from the tool's
//!   parameter schema (as for JSON below) and finishes with `tool_calls`.
//! - **JSON** (`ResponseFormat::Json`). A value generated from the schema that validates against
//!   it: strings filled from the input by property name (amounts, e-mails, dates, places,
//!   summaries, categories, ...), the first number of the input for numbers, booleans false unless
//!   the input says yes, arrays of one item, `enum`/`anyOf`/`oneOf` options picked by the words they
//!   share with the last user message (the router convention: `const` options with a
//!   `description`).
//! - **Tool results.** A short "Here is what I found: ..." summary of them.
//! - **Text.** By what the system prompt and the last user message ask for: a summary ("summar"),
//!   a clearly marked pseudo-translation ("translat"), a category word ("classif", "categor"),
//!   an expense-claim draft ("expense", "claim", "reimburs"), or else a reply that quotes the
//!   request and mentions the previous user turn.
//!
//! A system prompt containing "think step by step" adds a short reasoning stream first. Usage is
//! estimated at four characters per token.

use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use serde_json::{Map, Number, Value};

use super::{
    ChatRequest, DeltaStream, LlmDelta, LlmError, LlmProvider, ResponseFormat, Role, ToolDef, Usage,
};
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

// ---------------------------------------------------------------------------------------------
// Reading the request

/// The parts of a request the rules look at.
struct Conversation<'a> {
    system: String,
    system_lower: String,
    last_user: &'a str,
    /// User messages before the last one, oldest first.
    earlier_user: Vec<&'a str>,
    /// Tool results after the last user message: (tool name if known, content).
    tool_results: Vec<(Option<&'a str>, &'a str)>,
}

impl<'a> Conversation<'a> {
    fn of(req: &'a ChatRequest) -> Self {
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
    fn cue(&self) -> String {
        format!("{}\n{}", self.system_lower, self.last_user.to_lowercase())
    }

    /// The text JSON values are filled from: the last user message and any tool results.
    fn input(&self) -> String {
        let mut s = self.last_user.to_string();
        for (_, c) in &self.tool_results {
            s.push('\n');
            s.push_str(c);
        }
        s
    }
}

enum Plan {
    Tool { name: String, args: String },
    Json(String),
    Text(String),
}

fn plan(req: &ChatRequest, conv: &Conversation) -> Plan {
    let input = conv.input();
    let reply = text_answer(conv);
    let gen = Gen {
        input: &input,
        system: &conv.system,
        reply: &reply,
    };
    if conv.tool_results.is_empty() {
        if let Some(tool) = pick_tool(&req.tools, conv.last_user) {
            let args = gen.value(&tool.parameters, None, 0);
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
        return Plan::Json(gen.value(schema, None, 0).to_string());
    }
    Plan::Text(reply)
}

/// The tool the last user message mentions: by name first, else by description keywords.
fn pick_tool<'t>(tools: &'t [ToolDef], user: &str) -> Option<&'t ToolDef> {
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

fn text_answer(conv: &Conversation) -> String {
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

fn tool_summary(conv: &Conversation) -> String {
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

fn summarize(body: &str) -> String {
    let sents = content_sentences(body);
    let Some(first) = sents.first() else {
        return "There is nothing to summarize yet: send me the text.".to_string();
    };
    let mut s = first.clone();
    if s.split_whitespace().count() < 8 {
        if let Some(second) = sents.get(1) {
            s = format!("{s} {second}");
        }
    }
    format!("In short: {}", end_sentence(&limit_words(&s, 30)))
}

const LANGUAGES: &[&str] = &[
    "english",
    "french",
    "german",
    "spanish",
    "italian",
    "portuguese",
    "dutch",
    "swedish",
    "norwegian",
    "danish",
    "finnish",
    "polish",
    "czech",
    "greek",
    "turkish",
    "russian",
    "ukrainian",
    "arabic",
    "hebrew",
    "hindi",
    "chinese",
    "japanese",
    "korean",
    "vietnamese",
    "indonesian",
];

fn pseudo_translate(cue: &str, body: &str) -> String {
    let lang = LANGUAGES
        .iter()
        .filter_map(|l| cue.find(l).map(|at| (at, *l)))
        .min()
        .map_or_else(
            || "the requested language".to_string(),
            |(_, l)| capitalize(l),
        );
    let text = content_sentences(body).join(" ");
    if text.is_empty() {
        return format!(
            "I am the built-in offline model and cannot translate for real. Send me the text and I will mark it as a pseudo-translation into {lang}."
        );
    }
    format!(
        "I am the built-in offline model and cannot translate for real, so here is the text unchanged. [Pseudo-translation into {lang}] {}",
        limit_words(&text, 60)
    )
}

/// Categories with the words that suggest them; the first name is the one answered.
const TOPICS: &[(&[&str], &[&str])] = &[
    (
        &["billing", "payment", "finance", "invoice", "money"],
        &[
            "invoice",
            "refund",
            "payment",
            "charge",
            "bill",
            "billing",
            "price",
            "subscription",
            "money",
            "paid",
            "pay",
            "cost",
            "card",
            "receipt",
            "fee",
        ],
    ),
    (
        &["technical", "tech", "support", "bug", "software"],
        &[
            "error", "bug", "crash", "broken", "login", "password", "install", "server", "app",
            "website", "slow", "fail", "update", "reset", "working", "screen",
        ],
    ),
    (
        &["shipping", "delivery", "logistics", "order"],
        &[
            "delivery", "package", "ship", "shipping", "parcel", "tracking", "arrive", "courier",
            "order", "shipment",
        ],
    ),
    (
        &["account", "profile", "user"],
        &[
            "account", "profile", "email", "username", "signup", "register", "delete",
        ],
    ),
    (
        &["complaint", "negative", "angry"],
        &[
            "angry",
            "terrible",
            "awful",
            "bad",
            "unacceptable",
            "disappointed",
            "worst",
            "hate",
            "poor",
            "complain",
            "annoyed",
        ],
    ),
    (
        &["praise", "positive", "compliment", "happy"],
        &[
            "thanks",
            "thank",
            "great",
            "love",
            "excellent",
            "awesome",
            "happy",
            "good",
            "amazing",
            "wonderful",
            "nice",
        ],
    ),
    (
        &["sales", "pricing", "purchase"],
        &[
            "buy", "purchase", "quote", "discount", "plan", "pricing", "demo", "offer",
        ],
    ),
    (
        &["travel", "transport"],
        &[
            "taxi", "flight", "hotel", "train", "airport", "trip", "travel", "uber", "bus",
        ],
    ),
    (
        &["food", "meals"],
        &[
            "lunch",
            "dinner",
            "meal",
            "restaurant",
            "breakfast",
            "coffee",
            "food",
        ],
    ),
];

const NEUTRAL_LABELS: &[&str] = &[
    "other",
    "general",
    "misc",
    "miscellaneous",
    "neutral",
    "unknown",
    "none",
];

fn classify(system: &str, user: &str) -> String {
    let body = payload(user);
    let text_kw = keywords(body);
    let labels = candidate_labels(system).or_else(|| {
        // The labels may be in the user turn, before the text to classify.
        let head = user.strip_suffix(body).unwrap_or("");
        candidate_labels(head)
    });
    // A sentiment task without its own labels answers positive, negative or neutral.
    let labels = labels.or_else(|| {
        let cue = format!("{system}\n{user}").to_lowercase();
        cue.contains("sentiment")
            .then(|| vec!["positive".into(), "negative".into(), "neutral".into()])
    });
    match labels {
        Some(labels) => {
            let mut best: Option<(usize, usize)> = None;
            for (i, l) in labels.iter().enumerate() {
                let score = overlap(&label_keywords(l), &text_kw);
                if score > 0 && best.is_none_or(|(_, b)| score > b) {
                    best = Some((i, score));
                }
            }
            match best {
                Some((i, _)) => labels[i].clone(),
                None => labels
                    .iter()
                    .find(|l| NEUTRAL_LABELS.contains(&l.as_str()))
                    .unwrap_or(&labels[0])
                    .clone(),
            }
        }
        None => {
            let mut best: Option<(usize, usize)> = None;
            for (i, (_, words)) in TOPICS.iter().enumerate() {
                let kw: Vec<String> = words.iter().map(|w| stem(w)).collect();
                let score = overlap(&kw, &text_kw);
                if score > 0 && best.is_none_or(|(_, b)| score > b) {
                    best = Some((i, score));
                }
            }
            match best {
                Some((i, _)) => TOPICS[i].0[0].to_string(),
                None => "general".to_string(),
            }
        }
    }
}

/// A label's own words plus the words of topics it names.
fn label_keywords(label: &str) -> Vec<String> {
    let mut kw = keywords(label);
    for (names, words) in TOPICS {
        let named = keywords(label).iter().any(|w| {
            names.iter().any(|n| {
                let n = stem(n);
                n == *w || (w.len() >= 4 && n.starts_with(w.as_str()))
            })
        });
        if named {
            for w in words.iter() {
                let s = stem(w);
                if !kw.contains(&s) {
                    kw.push(s);
                }
            }
        }
    }
    kw
}

/// Labels listed in an instruction: "Classify into one of: billing, tech, other".
fn candidate_labels(text: &str) -> Option<Vec<String>> {
    for sentence in text.split(['\n', '.', '!', '?']) {
        let lower = sentence.to_lowercase();
        let Some(kw_at) = ["categor", "classif", "label", "one of", "sentiment"]
            .iter()
            .filter_map(|k| lower.find(k))
            .min()
        else {
            continue;
        };
        let tail = &lower[kw_at..];
        let list = if let Some(i) = tail.find(':') {
            &tail[i + 1..]
        } else if let Some(i) = tail.rfind(" one of ") {
            &tail[i + 8..]
        } else if let Some(i) = tail.rfind(" into ") {
            &tail[i + 6..]
        } else if let Some(i) = tail.rfind(" as ") {
            &tail[i + 4..]
        } else {
            continue;
        };
        let list = list.replace(" or ", ",").replace(" and ", ",");
        let labels: Vec<String> = list
            .split([',', '/', '|', ';'])
            .map(|l| {
                let l = l.trim().trim_matches(|c: char| !c.is_alphanumeric());
                let l = ["a ", "an ", "the "]
                    .iter()
                    .find_map(|a| l.strip_prefix(a))
                    .unwrap_or(l);
                l.trim().to_string()
            })
            .filter(|l| !l.is_empty() && l.split_whitespace().count() <= 3 && l.len() <= 30)
            .collect();
        if labels.len() >= 2 {
            return Some(labels);
        }
    }
    None
}

/// Words that say a text describes something bought or used.
const EXPENSE_WORDS: &[&str] = &[
    "took",
    "paid",
    "bought",
    "spent",
    "booked",
    "stayed",
    "rented",
    "ordered",
    "had",
    "taxi",
    "flight",
    "hotel",
    "train",
    "ticket",
    "lunch",
    "dinner",
    "breakfast",
    "meal",
    "parking",
    "fuel",
    "mileage",
    "receipt",
    "conference",
    "course",
    "equipment",
    "laptop",
    "uber",
    "bus",
];

fn claim_draft(body: &str) -> String {
    let amount = find_amount(body);
    let lower = tokens_joined(body);
    let described = amount.is_some() || lower.split(' ').any(|w| EXPENSE_WORDS.contains(&w));
    if !described {
        return "To draft an expense claim I need what you spent and on what, for example \"Taxi to the airport, 45 EUR\".".to_string();
    }
    let purpose = purpose_of(body, amount.as_ref());
    match (amount, purpose.is_empty()) {
        (Some(a), false) => format!(
            "Expense claim draft: {} for {purpose}. Please check the details and attach the receipt.",
            a.text
        ),
        (Some(a), true) => format!(
            "Expense claim draft: {}. What was the expense for?",
            a.text
        ),
        (None, false) => format!(
            "Expense claim draft for {purpose}. The amount is missing: how much did you spend?"
        ),
        (None, true) => {
            "I can draft an expense claim: tell me what you spent, and on what.".to_string()
        }
    }
}

fn generic_reply(conv: &Conversation) -> String {
    let user = collapse(conv.last_user);
    let mut s = if user.is_empty() {
        "I did not receive a message. What would you like to talk about?".to_string()
    } else if is_greeting(&user) {
        "Hello! I am Parley's built-in offline model. What can I do for you?".to_string()
    } else if user.ends_with('?') {
        format!(
            "You asked: \"{}\" I am Parley's built-in offline model, so I can only restate what you write; configure a real model in config.toml for real answers.",
            quote(&user)
        )
    } else {
        format!(
            "You said: \"{}\" I am Parley's built-in offline model, so I answer by rules, the same way every time.",
            quote(&user)
        )
    };
    if let Some(prev) = conv
        .earlier_user
        .iter()
        .rev()
        .find(|p| !p.trim().is_empty())
    {
        s.push_str(&format!(" Earlier you said: \"{}\"", quote(prev)));
    }
    s
}

fn is_greeting(user: &str) -> bool {
    let first = user
        .split(|c: char| !c.is_alphanumeric())
        .find(|w| !w.is_empty())
        .unwrap_or("")
        .to_lowercase();
    user.split_whitespace().count() <= 4
        && [
            "hi",
            "hello",
            "hey",
            "hallo",
            "greetings",
            "morning",
            "good",
        ]
        .contains(&first.as_str())
}

fn reasoning(conv: &Conversation, plan: &Plan) -> String {
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

// ---------------------------------------------------------------------------------------------
// Generating JSON from a schema

/// Fills schemas from the input text.
struct Gen<'a> {
    input: &'a str,
    system: &'a str,
    /// The plain-text answer, for properties like `answer` or `reply`.
    reply: &'a str,
}

const MAX_DEPTH: usize = 16;

impl Gen<'_> {
    /// A value for `schema`; `name` is the property it is for.
    fn value(&self, schema: &Value, name: Option<&str>, depth: usize) -> Value {
        let s = match schema {
            Value::Object(s) => s,
            Value::Bool(false) => return Value::Null,
            _ => return Value::String(self.string_for(name, &Map::new())),
        };
        if let Some(c) = s.get("const") {
            return c.clone();
        }
        if let Some(Value::Array(opts)) = s.get("enum") {
            if !opts.is_empty() {
                return self.pick_enum(opts, s.get("default"));
            }
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(Value::Array(opts)) = s.get(key) {
                if !opts.is_empty() && depth < MAX_DEPTH {
                    return self.pick_alternative(s, key, opts, name, depth);
                }
            }
        }
        if let Some(Value::Array(all)) = s.get("allOf") {
            if depth < MAX_DEPTH {
                let mut merged = s.clone();
                merged.remove("allOf");
                for part in all {
                    if let Value::Object(p) = part {
                        merged = merge_schema(&merged, p);
                    }
                }
                return self.value(&Value::Object(merged), name, depth + 1);
            }
        }
        match schema_type(s) {
            "object" => self.object(s, depth),
            "array" => self.array(s, name, depth),
            "integer" => self.number(s, name, true),
            "number" => self.number(s, name, false),
            "boolean" => Value::Bool(self.boolean(s, name)),
            "null" => Value::Null,
            _ => Value::String(self.string(s, name)),
        }
    }

    fn object(&self, s: &Map<String, Value>, depth: usize) -> Value {
        let mut out = Map::new();
        if depth >= MAX_DEPTH {
            return Value::Object(out);
        }
        if let Some(Value::Object(props)) = s.get("properties") {
            for (k, sub) in props {
                out.insert(k.clone(), self.value(sub, Some(k), depth + 1));
            }
        }
        if let Some(Value::Array(req)) = s.get("required") {
            let extra = match s.get("additionalProperties") {
                Some(v @ Value::Object(_)) => v.clone(),
                _ => Value::Object(Map::new()),
            };
            for r in req.iter().filter_map(Value::as_str) {
                if !out.contains_key(r) {
                    out.insert(r.to_string(), self.value(&extra, Some(r), depth + 1));
                }
            }
        }
        Value::Object(out)
    }

    fn array(&self, s: &Map<String, Value>, name: Option<&str>, depth: usize) -> Value {
        let min = s.get("minItems").and_then(Value::as_u64).unwrap_or(0) as usize;
        let max = s
            .get("maxItems")
            .and_then(Value::as_u64)
            .map(|m| m as usize);
        let mut n = min.clamp(1, 64);
        if let Some(m) = max {
            n = n.min(m);
        }
        if depth >= MAX_DEPTH {
            return Value::Array(Vec::new());
        }
        let prefix: &[Value] = match (s.get("prefixItems"), s.get("items")) {
            (Some(Value::Array(p)), _) => p,
            (_, Some(Value::Array(p))) => p,
            _ => &[],
        };
        let rest = match s.get("items") {
            Some(v @ (Value::Object(_) | Value::Bool(_))) => Some(v.clone()),
            _ => match s.get("additionalItems") {
                Some(v @ (Value::Object(_) | Value::Bool(_))) => Some(v.clone()),
                _ => None,
            },
        };
        let n = n.max(prefix.len().min(max.unwrap_or(usize::MAX)));
        let item_name = name.map(singular);
        let mut items = Vec::with_capacity(n);
        for i in 0..n {
            let schema = match prefix.get(i) {
                Some(p) => p.clone(),
                None => rest.clone().unwrap_or_else(|| Value::Object(Map::new())),
            };
            items.push(self.value(&schema, item_name.as_deref(), depth + 1));
        }
        if s.get("uniqueItems") == Some(&Value::Bool(true)) {
            let mut unique: Vec<Value> = Vec::new();
            for v in items {
                if !unique.iter().any(|u| json_eq(u, &v)) {
                    unique.push(v);
                }
            }
            items = unique;
        }
        Value::Array(items)
    }

    fn pick_enum(&self, opts: &[Value], default: Option<&Value>) -> Value {
        let input = keywords(self.input);
        let mut best: Option<(usize, usize)> = None;
        for (i, o) in opts.iter().enumerate() {
            let words = match o {
                Value::String(t) => keywords(t),
                other => keywords(&other.to_string()),
            };
            let score = overlap(&words, &input);
            if score > 0 && best.is_none_or(|(_, b)| score > b) {
                best = Some((i, score));
            }
        }
        if let Some((i, _)) = best {
            return opts[i].clone();
        }
        if let Some(d) = default.filter(|d| opts.iter().any(|o| json_eq(o, d))) {
            return d.clone();
        }
        opts[0].clone()
    }

    fn pick_alternative(
        &self,
        parent: &Map<String, Value>,
        key: &str,
        opts: &[Value],
        name: Option<&str>,
        depth: usize,
    ) -> Value {
        // Router convention: every option is a `const`, most with a description.
        let consts: Option<Vec<(&Value, String)>> = opts
            .iter()
            .map(|o| {
                let c = o.get("const")?;
                let mut words = match c {
                    Value::String(t) => t.replace(['_', '-'], " "),
                    other => other.to_string(),
                };
                for k in ["title", "description"] {
                    if let Some(Value::String(t)) = o.get(k) {
                        words.push(' ');
                        words.push_str(t);
                    }
                }
                Some((c, words))
            })
            .collect();
        let whole = Value::Object(parent.clone());
        if let Some(consts) = consts {
            let input = keywords(self.input);
            let mut best: Option<(usize, usize)> = None;
            for (i, (c, words)) in consts.iter().enumerate() {
                let score = overlap(&keywords(words), &input);
                if score > 0 && best.is_none_or(|(_, b)| score > b) && validates(&whole, c) {
                    best = Some((i, score));
                }
            }
            if let Some((i, _)) = best {
                return consts[i].0.clone();
            }
            if let Some(d) = parent.get("default") {
                if validates(&whole, d) {
                    return d.clone();
                }
            }
            if let Some((c, _)) = consts.iter().find(|(c, _)| validates(&whole, c)) {
                return (*c).clone();
            }
        }
        // General case: try each option (non-null ones first) merged with the parent's other
        // keywords, and keep the first value the whole schema accepts.
        let mut base = parent.clone();
        base.remove(key);
        let mut order: Vec<&Value> = opts.iter().filter(|o| !is_null_schema(o)).collect();
        order.extend(opts.iter().filter(|o| is_null_schema(o)));
        let merged: Vec<Value> = order
            .into_iter()
            .filter(|o| **o != Value::Bool(false))
            .map(|o| match o {
                Value::Object(m) => Value::Object(merge_schema(&base, m)),
                _ => Value::Object(base.clone()),
            })
            .collect();
        let mut first = None;
        for m in &merged {
            let v = self.value(m, name, depth + 1);
            if validates(&whole, &v) {
                return v;
            }
            first.get_or_insert(v);
        }
        // What the input suggests fits several options (e.g. 30 for integer *and* number >= 5
        // under oneOf): try again without the input.
        let blank = Gen {
            input: "",
            system: self.system,
            reply: "",
        };
        for m in &merged {
            let v = blank.value(m, name, depth + 1);
            if validates(&whole, &v) {
                return v;
            }
        }
        first.unwrap_or(Value::Null)
    }

    fn string(&self, s: &Map<String, Value>, name: Option<&str>) -> String {
        let mut text = match s.get("format").and_then(Value::as_str) {
            Some(f) => self
                .formatted(f)
                .unwrap_or_else(|| self.string_for(name, s)),
            None => self.string_for(name, s),
        };
        if text.is_empty() {
            if let Some(Value::String(d)) = s.get("default") {
                text = d.clone();
            }
        }
        let min = s.get("minLength").and_then(Value::as_u64).unwrap_or(0) as usize;
        let max = s
            .get("maxLength")
            .and_then(Value::as_u64)
            .map(|m| m as usize);
        if text.chars().count() < min {
            let filler = if text.trim().is_empty() {
                "text".to_string()
            } else {
                text.clone()
            };
            while text.chars().count() < min {
                if !text.is_empty() {
                    text.push(' ');
                }
                text.push_str(&filler);
            }
        }
        if let Some(m) = max {
            if text.chars().count() > m {
                text = text.chars().take(m).collect();
            }
        }
        text
    }

    /// A string in a JSON Schema `format`, from the input when it has one.
    fn formatted(&self, format: &str) -> Option<String> {
        Some(match format {
            "email" => find_email(self.input).unwrap_or_else(|| "someone@example.com".into()),
            "date" => find_date(self.input).unwrap_or_else(|| "2024-01-01".into()),
            "date-time" => format!(
                "{}T09:00:00Z",
                find_date(self.input).unwrap_or_else(|| "2024-01-01".into())
            ),
            "time" => "09:00:00Z".into(),
            "uri" | "url" | "iri" => {
                find_url(self.input).unwrap_or_else(|| "https://example.com/".into())
            }
            "uuid" => "00000000-0000-4000-8000-000000000000".into(),
            "hostname" | "idn-hostname" => "example.com".into(),
            "ipv4" => "127.0.0.1".into(),
            "ipv6" => "::1".into(),
            _ => return None,
        })
    }

    /// Text for a string property, chosen by the property's name.
    fn string_for(&self, name: Option<&str>, s: &Map<String, Value>) -> String {
        let words = name.map(name_words).unwrap_or_default();
        let has = |list: &[&str]| words.iter().any(|w| list.contains(&w.as_str()));
        let body = payload(self.input);
        if has(&["amount", "price", "total", "cost", "sum", "fee"]) {
            if let Some(a) = find_amount(body) {
                return a.text;
            }
        }
        if has(&["currency"]) {
            return find_amount(body)
                .and_then(|a| a.currency)
                .unwrap_or_else(|| "EUR".into());
        }
        if has(&["email", "mail"]) {
            return find_email(body).unwrap_or_else(|| "someone@example.com".into());
        }
        if has(&["url", "link", "website", "uri", "href"]) {
            return find_url(body).unwrap_or_else(|| "https://example.com/".into());
        }
        if has(&["date", "day", "when", "deadline"]) {
            return find_date(body)
                .or_else(|| {
                    ["today", "tomorrow", "yesterday"]
                        .iter()
                        .find(|w| body.to_lowercase().contains(*w))
                        .map(|w| w.to_string())
                })
                .unwrap_or_else(|| "today".into());
        }
        if has(&[
            "city",
            "location",
            "place",
            "country",
            "destination",
            "address",
            "where",
            "region",
            "town",
        ]) {
            if let Some(p) = find_place(body) {
                return p;
            }
        }
        if has(&["language", "lang", "locale"]) {
            let lower = body.to_lowercase();
            return LANGUAGES
                .iter()
                .filter_map(|l| lower.find(l).map(|at| (at, *l)))
                .min()
                .map_or_else(|| "English".to_string(), |(_, l)| capitalize(l));
        }
        if has(&[
            "category",
            "label",
            "class",
            "kind",
            "type",
            "sentiment",
            "intent",
            "tag",
            "tags",
            "priority",
        ]) {
            let mut sys = self.system.to_string();
            if let Some(Value::String(d)) = s.get("description") {
                sys.push('\n');
                sys.push_str(d);
            }
            return classify(&sys, self.input);
        }
        if has(&["summary", "abstract", "tldr", "gist"]) {
            return summarize(body);
        }
        if has(&[
            "answer", "reply", "response", "text", "message", "content", "body", "output", "result",
        ]) && !self.reply.is_empty()
        {
            return self.reply.to_string();
        }
        if has(&[
            "purpose",
            "reason",
            "description",
            "details",
            "note",
            "notes",
            "comment",
            "why",
        ]) {
            let p = purpose_of(body, find_amount(body).as_ref());
            if !p.is_empty() {
                return p;
            }
        }
        if has(&[
            "query", "search", "keywords", "question", "prompt", "input", "request", "q",
        ]) {
            return limit_words(&collapse(self.input), 30);
        }
        if has(&["name", "person", "who"]) {
            if let Some(n) = find_person(body) {
                return n;
            }
        }
        if has(&["title", "subject", "headline", "topic", "name"]) {
            return title_of(body);
        }
        if has(&["id", "code", "key", "slug", "ref"]) {
            let kw: Vec<String> = keywords(body).into_iter().take(3).collect();
            return if kw.is_empty() {
                "item-1".into()
            } else {
                kw.join("-")
            };
        }
        let first = content_sentences(body)
            .into_iter()
            .next()
            .unwrap_or_default();
        limit_words(&first, 20)
    }

    fn number(&self, s: &Map<String, Value>, name: Option<&str>, integer: bool) -> Value {
        let words = name.map(name_words).unwrap_or_default();
        let has = |list: &[&str]| words.iter().any(|w| list.contains(&w.as_str()));
        let body = payload(self.input);
        let default = s.get("default").and_then(Value::as_f64);
        let found = if has(&["amount", "price", "total", "cost", "sum", "fee"]) {
            find_amount(body).map(|a| a.value)
        } else {
            find_numbers(body).first().map(|n| n.value)
        };
        let mut v = if has(&["confidence", "probability", "certainty", "likelihood"]) {
            0.9
        } else {
            found.or(default).unwrap_or(0.0)
        };
        if !v.is_finite() {
            v = 0.0;
        }
        let num = |k: &str| s.get(k).and_then(Value::as_f64).filter(|x| x.is_finite());
        let (min, max, ex_min, ex_max) = (
            num("minimum"),
            num("maximum"),
            num("exclusiveMinimum"),
            num("exclusiveMaximum"),
        );
        if integer {
            let mut lo = i64::MIN as f64;
            let mut hi = i64::MAX as f64;
            if let Some(m) = min {
                lo = lo.max(m.ceil());
            }
            if let Some(m) = ex_min {
                lo = lo.max(m.floor() + 1.0);
            }
            if let Some(m) = max {
                hi = hi.min(m.floor());
            }
            if let Some(m) = ex_max {
                hi = hi.min(m.ceil() - 1.0);
            }
            let mut r = v.round().clamp(lo.min(hi), hi.max(lo));
            if let Some(m) = num("multipleOf").filter(|m| *m >= 1.0 && m.fract() == 0.0) {
                let k_lo = (lo / m).ceil();
                let k_hi = (hi / m).floor();
                let k = (r / m).round().clamp(k_lo.min(k_hi), k_hi.max(k_lo));
                r = k * m;
            }
            let r = r.clamp(-9.0e15, 9.0e15);
            return Value::from(r as i64);
        }
        if let Some(m) = ex_min {
            if v <= m {
                v = match max.or(ex_max) {
                    Some(u) if u > m => m + (u - m) / 2.0,
                    _ => m + 1.0,
                };
            }
        }
        if let Some(m) = min {
            if v < m {
                v = m;
            }
        }
        if let Some(m) = max {
            if v > m {
                v = m;
            }
        }
        if let Some(m) = ex_max {
            if v >= m {
                let lower = ex_min.or(min);
                v = match lower {
                    Some(l) if l < m => l + (m - l) / 2.0,
                    _ => m - 1.0,
                };
            }
        }
        if let Some(m) = num("multipleOf").filter(|m| *m > 0.0) {
            let k = (v / m).round();
            if (k * m - v).abs() > f64::EPSILON {
                v = k * m;
            }
        }
        number_value(v)
    }

    fn boolean(&self, s: &Map<String, Value>, name: Option<&str>) -> bool {
        let lower = collapse(self.input).to_lowercase();
        let tokens: Vec<&str> = lower
            .split(|c: char| !c.is_alphanumeric() && c != '\'')
            .filter(|w| !w.is_empty())
            .collect();
        let negated = |at: usize| {
            at > 0
                && matches!(
                    tokens[at - 1],
                    "not" | "no" | "non" | "never" | "don't" | "isn't" | "aren't" | "without"
                )
        };
        // The property's own words, in the input and not negated ("urgent", "is_urgent").
        const GENERIC: &[&str] = &[
            "is", "has", "have", "needs", "need", "should", "requires", "require", "can", "flag",
            "was", "will", "do", "does", "did", "allow", "allowed", "enable", "enabled",
        ];
        let words = name.map(name_words).unwrap_or_default();
        let own: Vec<String> = words
            .iter()
            .filter(|w| !GENERIC.contains(&w.as_str()) && w.len() >= 3)
            .map(|w| stem(w))
            .collect();
        if !own.is_empty() {
            let hit = tokens
                .iter()
                .enumerate()
                .find(|(_, t)| own.contains(&stem(t)));
            if let Some((at, _)) = hit {
                return !negated(at);
            }
        }
        // A short yes.
        const YES: &[&str] = &[
            "yes",
            "yep",
            "yeah",
            "sure",
            "ok",
            "okay",
            "approve",
            "approved",
            "confirm",
            "confirmed",
            "agree",
            "correct",
            "true",
            "affirmative",
        ];
        if tokens.len() <= 6 {
            if let Some(at) = tokens.iter().position(|t| YES.contains(t)) {
                if !negated(at) && !tokens.contains(&"no") && !tokens.contains(&"not") {
                    return true;
                }
            }
        }
        s.get("default").and_then(Value::as_bool).unwrap_or(false)
    }
}

fn number_value(v: f64) -> Value {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        Value::from(v as i64)
    } else {
        Number::from_f64(v).map_or(Value::from(0), Value::Number)
    }
}

fn is_null_schema(v: &Value) -> bool {
    v.get("type").and_then(Value::as_str) == Some("null") || v.get("const") == Some(&Value::Null)
}

/// The type a schema asks for (the first non-null one of a list), or the one its keywords imply.
fn schema_type(s: &Map<String, Value>) -> &str {
    match s.get("type") {
        Some(Value::String(t)) => return t.as_str(),
        Some(Value::Array(ts)) => {
            let names: Vec<&str> = ts.iter().filter_map(Value::as_str).collect();
            if let Some(t) = names.iter().find(|t| **t != "null") {
                return t;
            }
            if !names.is_empty() {
                return "null";
            }
        }
        _ => {}
    }
    let any = |keys: &[&str]| keys.iter().any(|k| s.contains_key(*k));
    if any(&[
        "properties",
        "required",
        "additionalProperties",
        "minProperties",
    ]) {
        "object"
    } else if any(&[
        "items",
        "prefixItems",
        "minItems",
        "maxItems",
        "uniqueItems",
    ]) {
        "array"
    } else if any(&[
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
    ]) {
        "number"
    } else {
        match s.get("default") {
            Some(Value::Bool(_)) => "boolean",
            Some(Value::Number(_)) => "number",
            Some(Value::Object(_)) => "object",
            Some(Value::Array(_)) => "array",
            _ => "string",
        }
    }
}

/// `over`'s keywords on top of `base`; `properties` and `required` are combined.
fn merge_schema(base: &Map<String, Value>, over: &Map<String, Value>) -> Map<String, Value> {
    let mut out = base.clone();
    for (k, v) in over {
        match (k.as_str(), out.get_mut(k), v) {
            ("properties", Some(Value::Object(a)), Value::Object(b)) => {
                for (pk, pv) in b {
                    a.insert(pk.clone(), pv.clone());
                }
            }
            ("required", Some(Value::Array(a)), Value::Array(b)) => {
                for r in b {
                    if !a.contains(r) {
                        a.push(r.clone());
                    }
                }
            }
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out
}

/// Checks `value` against the subset of JSON Schema the generator handles. Keywords outside
/// that subset are ignored.
pub(crate) fn validates(schema: &Value, value: &Value) -> bool {
    let s = match schema {
        Value::Bool(b) => return *b,
        Value::Object(s) => s,
        _ => return true,
    };
    if let Some(c) = s.get("const") {
        if !json_eq(c, value) {
            return false;
        }
    }
    if let Some(Value::Array(e)) = s.get("enum") {
        if !e.iter().any(|x| json_eq(x, value)) {
            return false;
        }
    }
    if let Some(t) = s.get("type") {
        let ok = match t {
            Value::String(t) => type_ok(t, value),
            Value::Array(ts) => ts
                .iter()
                .filter_map(Value::as_str)
                .any(|t| type_ok(t, value)),
            _ => true,
        };
        if !ok {
            return false;
        }
    }
    let num = |k: &str| s.get(k).and_then(Value::as_f64);
    let count = |k: &str| s.get(k).and_then(Value::as_u64).map(|n| n as usize);
    match value {
        Value::Object(o) => {
            if let Some(Value::Array(req)) = s.get("required") {
                if req
                    .iter()
                    .filter_map(Value::as_str)
                    .any(|r| !o.contains_key(r))
                {
                    return false;
                }
            }
            let props = s.get("properties").and_then(Value::as_object);
            for (k, v) in o {
                match props.and_then(|p| p.get(k)) {
                    Some(sub) => {
                        if !validates(sub, v) {
                            return false;
                        }
                    }
                    None => {
                        if let Some(extra) = s.get("additionalProperties") {
                            if !validates(extra, v) {
                                return false;
                            }
                        }
                    }
                }
            }
        }
        Value::Array(a) => {
            if count("minItems").is_some_and(|m| a.len() < m)
                || count("maxItems").is_some_and(|m| a.len() > m)
            {
                return false;
            }
            let prefix = match (s.get("prefixItems"), s.get("items")) {
                (Some(Value::Array(p)), _) | (_, Some(Value::Array(p))) => p.as_slice(),
                _ => &[],
            };
            for (i, v) in a.iter().enumerate() {
                let sub = match prefix.get(i) {
                    Some(p) => Some(p),
                    None => match s.get("items") {
                        Some(it @ (Value::Object(_) | Value::Bool(_))) => Some(it),
                        _ => s.get("additionalItems"),
                    },
                };
                if sub.is_some_and(|sub| !validates(sub, v)) {
                    return false;
                }
            }
            if s.get("uniqueItems") == Some(&Value::Bool(true)) {
                for (i, x) in a.iter().enumerate() {
                    if a[i + 1..].iter().any(|y| json_eq(x, y)) {
                        return false;
                    }
                }
            }
        }
        Value::String(t) => {
            let n = t.chars().count();
            if count("minLength").is_some_and(|m| n < m)
                || count("maxLength").is_some_and(|m| n > m)
            {
                return false;
            }
        }
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(0.0);
            if num("minimum").is_some_and(|m| x < m)
                || num("maximum").is_some_and(|m| x > m)
                || num("exclusiveMinimum").is_some_and(|m| x <= m)
                || num("exclusiveMaximum").is_some_and(|m| x >= m)
            {
                return false;
            }
            if let Some(m) = num("multipleOf").filter(|m| *m > 0.0) {
                let q = x / m;
                if (q - q.round()).abs() > 1e-9 {
                    return false;
                }
            }
        }
        _ => {}
    }
    if let Some(Value::Array(all)) = s.get("allOf") {
        if !all.iter().all(|sub| validates(sub, value)) {
            return false;
        }
    }
    if let Some(Value::Array(any)) = s.get("anyOf") {
        if !any.iter().any(|sub| validates(sub, value)) {
            return false;
        }
    }
    if let Some(Value::Array(one)) = s.get("oneOf") {
        if one.iter().filter(|sub| validates(sub, value)).count() != 1 {
            return false;
        }
    }
    if let Some(not) = s.get("not") {
        if validates(not, value) {
            return false;
        }
    }
    true
}

fn type_ok(t: &str, v: &Value) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        "number" => v.is_number(),
        "integer" => match v {
            Value::Number(n) => {
                n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
            }
            _ => false,
        },
        _ => true,
    }
}

/// JSON equality with numbers compared by value (1 == 1.0).
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

// ---------------------------------------------------------------------------------------------
// Text helpers

const STOP_WORDS: &[&str] = &[
    "the",
    "and",
    "for",
    "with",
    "about",
    "from",
    "into",
    "onto",
    "that",
    "this",
    "these",
    "those",
    "what",
    "which",
    "when",
    "where",
    "who",
    "whom",
    "why",
    "how",
    "are",
    "was",
    "were",
    "been",
    "being",
    "you",
    "your",
    "yours",
    "our",
    "ours",
    "their",
    "they",
    "them",
    "can",
    "could",
    "would",
    "should",
    "will",
    "shall",
    "may",
    "might",
    "must",
    "please",
    "have",
    "has",
    "had",
    "not",
    "but",
    "all",
    "any",
    "some",
    "just",
    "also",
    "very",
    "more",
    "most",
    "out",
    "off",
    "over",
    "then",
    "than",
    "there",
    "here",
    "its",
    "let",
    "get",
    "gets",
    "got",
    "does",
    "did",
    "doing",
    "done",
    "make",
    "want",
    "need",
    "like",
    "know",
    "tell",
    "give",
    "use",
    "using",
    "via",
    "per",
    "each",
    "every",
    "question",
    "questions",
    "thing",
    "things",
    "it's",
    "i'm",
    "yes",
    "hello",
    "thank",
    "her",
    "his",
    "him",
    "she",
    "out",
    "now",
];

/// Lowercase words of 3+ characters, stop words removed, lightly stemmed, distinct, in order.
fn keywords(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for w in text.split(|c: char| !c.is_alphanumeric()) {
        let w = w.to_lowercase();
        if w.chars().count() < 3 || STOP_WORDS.contains(&w.as_str()) {
            continue;
        }
        let s = stem(&w);
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

/// A crude English stemmer: enough that "invoices", "invoice" and "invoicing" meet.
fn stem(w: &str) -> String {
    let mut s = w.to_lowercase();
    let n = s.chars().count();
    if n > 4 && s.ends_with("ies") {
        s.truncate(s.len() - 3);
        s.push('y');
    } else if n > 5 && s.ends_with("ing") {
        s.truncate(s.len() - 3);
    } else if n > 4
        && (s.ends_with("ed")
            || ["sses", "xes", "ches", "shes"]
                .iter()
                .any(|e| s.ends_with(e)))
    {
        s.truncate(s.len() - 2);
    } else if n > 3 && s.ends_with('s') && !s.ends_with("ss") {
        s.truncate(s.len() - 1);
    }
    if s.chars().count() > 4 && s.ends_with('e') {
        s.pop();
    }
    s
}

fn overlap(a: &[String], b: &[String]) -> usize {
    a.iter().filter(|w| b.contains(w)).count()
}

/// Lowercase alphanumeric tokens joined by single spaces (`get_weather` -> `get weather`).
fn tokens_joined(text: &str) -> String {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A property name's words: `expenseAmount`, `expense_amount` -> [expense, amount].
fn name_words(name: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut prev_lower = false;
    for c in name.chars() {
        if !c.is_alphanumeric() {
            if !cur.is_empty() {
                words.push(std::mem::take(&mut cur));
            }
            prev_lower = false;
            continue;
        }
        if c.is_uppercase() && prev_lower && !cur.is_empty() {
            words.push(std::mem::take(&mut cur));
        }
        prev_lower = c.is_lowercase() || c.is_numeric();
        cur.extend(c.to_lowercase());
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}

fn singular(name: &str) -> String {
    name.strip_suffix('s').unwrap_or(name).to_string()
}

/// Whitespace collapsed to single spaces, trimmed.
fn collapse(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn limit_words(text: &str, n: usize) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.len() <= n {
        words.join(" ")
    } else {
        format!("{}…", words[..n].join(" "))
    }
}

fn clip_chars(text: &str, n: usize) -> String {
    if text.chars().count() <= n {
        text.to_string()
    } else {
        format!("{}…", text.chars().take(n).collect::<String>())
    }
}

fn quote(text: &str) -> String {
    quote_words(text, 25)
}

/// The text's first words, ending in punctuation, for quoting.
fn quote_words(text: &str, n: usize) -> String {
    end_sentence(&limit_words(&collapse(text), n))
}

fn end_sentence(s: &str) -> String {
    let s = s.trim();
    if s.is_empty() || s.ends_with(['.', '!', '?', '…', ':', '"']) {
        s.to_string()
    } else {
        format!("{s}.")
    }
}

fn capitalize(w: &str) -> String {
    let mut c = w.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

fn is_instruction(text: &str) -> bool {
    let l = text.to_lowercase();
    [
        "summar",
        "translat",
        "classif",
        "categor",
        "claim",
        "expense",
        "following",
        "the text",
        "this text",
        "this message",
    ]
    .iter()
    .any(|k| l.contains(k))
}

/// The text an instruction is about: "Summarize this: <text>" -> "<text>".
fn payload(user: &str) -> &str {
    let t = user.trim();
    if let Some((first, rest)) = t.split_once('\n') {
        let first = first.trim();
        if (first.ends_with(':') || is_instruction(first)) && !rest.trim().is_empty() {
            return rest.trim();
        }
    }
    if let Some(i) = t.find(": ") {
        let rest = t[i + 2..].trim();
        if i <= 80 && !rest.is_empty() {
            return rest;
        }
    }
    t
}

/// Sentences of `text`, without a leading instruction sentence ("Please summarize.").
fn content_sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let chars: Vec<char> = text.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if c == '\n' {
            if !cur.trim().is_empty() {
                out.push(collapse(&cur));
            }
            cur.clear();
            continue;
        }
        cur.push(c);
        let next = chars.get(i + 1);
        if matches!(c, '.' | '!' | '?') && next.is_none_or(|n| n.is_whitespace()) {
            if !cur.trim().is_empty() {
                out.push(collapse(&cur));
            }
            cur.clear();
        }
    }
    if !cur.trim().is_empty() {
        out.push(collapse(&cur));
    }
    if out.len() > 1 && is_instruction(&out[0]) && out[0].split_whitespace().count() <= 8 {
        out.remove(0);
    }
    out
}

fn title_of(body: &str) -> String {
    let first = content_sentences(body)
        .into_iter()
        .next()
        .unwrap_or_default();
    let t = limit_words(&first, 8);
    let t = t
        .trim_end_matches(['.', '!', '?', ',', ';', ':'])
        .to_string();
    capitalize(&t)
}

/// A number found in text.
#[derive(Debug, Clone, PartialEq)]
struct FoundNumber {
    value: f64,
    /// As written, with its currency when there is one ("45 EUR", "$12.50").
    text: String,
    currency: Option<String>,
    /// Byte range of `text` in the source.
    start: usize,
    end: usize,
}

const CURRENCY_SYMBOLS: &[(char, &str)] = &[('€', "EUR"), ('$', "USD"), ('£', "GBP"), ('¥', "JPY")];
const CURRENCY_WORDS: &[(&str, &str)] = &[
    ("eur", "EUR"),
    ("euro", "EUR"),
    ("euros", "EUR"),
    ("usd", "USD"),
    ("dollar", "USD"),
    ("dollars", "USD"),
    ("gbp", "GBP"),
    ("pound", "GBP"),
    ("pounds", "GBP"),
    ("chf", "CHF"),
    ("francs", "CHF"),
    ("jpy", "JPY"),
    ("yen", "JPY"),
    ("cny", "CNY"),
    ("rmb", "CNY"),
    ("yuan", "CNY"),
    ("sek", "SEK"),
    ("nok", "NOK"),
    ("dkk", "DKK"),
    ("inr", "INR"),
    ("rupees", "INR"),
];

/// Numbers in text, skipping the parts of dates (2024-05-03) and times (10:30).
fn find_numbers(text: &str) -> Vec<FoundNumber> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        // Part of a word like "A4" or "mp3": skip.
        let prev = text[..i].chars().next_back();
        if prev.is_some_and(|p| p.is_alphabetic()) {
            while i < b.len() && b[i].is_ascii_alphanumeric() {
                i += 1;
            }
            continue;
        }
        let start = i;
        let mut end = i;
        while end < b.len()
            && (b[end].is_ascii_digit()
                || ((b[end] == b'.' || b[end] == b',')
                    && end + 1 < b.len()
                    && b[end + 1].is_ascii_digit()))
        {
            end += 1;
        }
        let raw = &text[start..end];
        let next = b.get(end).copied();
        let before = if start > 0 {
            b.get(start - 1).copied()
        } else {
            None
        };
        let in_date = matches!(next, Some(b'-' | b'/' | b':'))
            && b.get(end + 1).is_some_and(u8::is_ascii_digit)
            || matches!(before, Some(b'-' | b'/' | b':'))
                && start >= 2
                && b[start - 2].is_ascii_digit();
        i = end;
        if in_date {
            continue;
        }
        let Some(value) = parse_number(raw) else {
            continue;
        };
        let negative = before == Some(b'-')
            && (start < 2 || !text[..start - 1].ends_with(|c: char| c.is_alphanumeric()));
        let value = if negative { -value } else { value };
        // Currency: a symbol right before, or a code/word right after.
        let mut t_start = if negative { start - 1 } else { start };
        let mut t_end = end;
        let mut currency = None;
        let lead = text[..t_start].trim_end_matches(' ');
        if let Some(c) = lead.chars().next_back() {
            if let Some((sym, code)) = CURRENCY_SYMBOLS.iter().find(|(s, _)| *s == c) {
                currency = Some(code.to_string());
                t_start = lead.len() - sym.len_utf8();
            }
        }
        if currency.is_none() {
            let after = &text[end..];
            let trimmed = after.trim_start_matches(' ');
            let word: String = trimmed.chars().take_while(|c| c.is_alphabetic()).collect();
            let sym = trimmed.chars().next();
            if let Some((_, code)) = CURRENCY_WORDS
                .iter()
                .find(|(w, _)| word.to_lowercase() == *w)
            {
                currency = Some(code.to_string());
                t_end = end + (after.len() - trimmed.len()) + word.len();
            } else if let Some((s, code)) =
                sym.and_then(|c| CURRENCY_SYMBOLS.iter().find(|(s, _)| *s == c))
            {
                currency = Some(code.to_string());
                t_end = end + (after.len() - trimmed.len()) + s.len_utf8();
            }
        }
        out.push(FoundNumber {
            value,
            text: text[t_start..t_end].to_string(),
            currency,
            start: t_start,
            end: t_end,
        });
    }
    out
}

/// "1,200.50" -> 1200.5, "12,5" -> 12.5, "1,200" -> 1200.
fn parse_number(raw: &str) -> Option<f64> {
    let norm = if raw.contains('.') && raw.contains(',') {
        raw.replace(',', "")
    } else if let Some(i) = raw.rfind(',') {
        let decimals = raw.len() - i - 1;
        if decimals == 3 && raw.matches(',').count() >= 1 && !raw[..i].is_empty() {
            raw.replace(',', "")
        } else {
            raw.replace(',', ".")
        }
    } else {
        raw.to_string()
    };
    let v: f64 = norm.parse().ok()?;
    v.is_finite().then_some(v)
}

/// The amount of money in text: a number with a currency, else the first number.
fn find_amount(text: &str) -> Option<FoundNumber> {
    let nums = find_numbers(text);
    nums.iter()
        .find(|n| n.currency.is_some())
        .or(nums.first())
        .cloned()
}

fn find_email(text: &str) -> Option<String> {
    text.split(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | '<' | '>' | '(' | ')'))
        .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()))
        .find(|w| {
            let mut parts = w.split('@');
            matches!(
                (parts.next(), parts.next(), parts.next()),
                (Some(a), Some(d), None) if !a.is_empty() && d.contains('.') && !d.starts_with('.')
                    && a.chars().all(|c| c.is_ascii_alphanumeric() || "._+-".contains(c))
                    && d.chars().all(|c| c.is_ascii_alphanumeric() || ".-".contains(c))
            )
        })
        .map(str::to_string)
}

fn find_url(text: &str) -> Option<String> {
    text.split_whitespace()
        .find(|w| w.starts_with("http://") || w.starts_with("https://"))
        .map(|w| {
            w.trim_end_matches(['.', ',', ')', ';', '!', '?'])
                .to_string()
        })
        .filter(|w| w.len() > "https://".len())
}

/// A date written as YYYY-MM-DD.
fn find_date(text: &str) -> Option<String> {
    let b = text.as_bytes();
    (0..b.len().saturating_sub(9)).find_map(|i| {
        let w = &b[i..i + 10];
        let shape = w.iter().enumerate().all(|(j, c)| match j {
            4 | 7 => *c == b'-',
            _ => c.is_ascii_digit(),
        });
        let alone = (i == 0 || !b[i - 1].is_ascii_digit())
            && b.get(i + 10).is_none_or(|c| !c.is_ascii_digit());
        if !(shape && alone) {
            return None;
        }
        let s = std::str::from_utf8(w).ok()?;
        let month: u32 = s[5..7].parse().ok()?;
        let day: u32 = s[8..10].parse().ok()?;
        ((1..=12).contains(&month) && (1..=28).contains(&day)).then(|| s.to_string())
    })
}

/// A place: capitalised words after "in", "at", "to", "from", "near" or "for".
fn find_place(text: &str) -> Option<String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    for (i, w) in words.iter().enumerate() {
        let lw = w.to_lowercase();
        if !["in", "at", "to", "from", "near", "for"].contains(&lw.as_str()) {
            continue;
        }
        let mut place = Vec::new();
        for next in &words[i + 1..] {
            let clean = next.trim_matches(|c: char| !c.is_alphanumeric());
            if clean.chars().next().is_some_and(char::is_uppercase) {
                place.push(clean);
                if next.ends_with(|c: char| !c.is_alphanumeric()) {
                    break;
                }
            } else {
                break;
            }
        }
        if !place.is_empty() {
            return Some(place.join(" "));
        }
    }
    None
}

/// A person's name after "my name is", "I am", "I'm" or "called".
fn find_person(text: &str) -> Option<String> {
    // Word by word: byte offsets of a lowercased copy need not match the original's.
    let words: Vec<&str> = text.split_whitespace().collect();
    let lower: Vec<String> = words
        .iter()
        .map(|w| {
            w.trim_matches(|c: char| !c.is_alphanumeric() && c != '\'')
                .to_lowercase()
        })
        .collect();
    let markers: [&[&str]; 4] = [&["name", "is"], &["i", "am"], &["i'm"], &["called"]];
    for marker in markers {
        let found = (0..lower.len()).find(|&i| {
            i + marker.len() < lower.len()
                && marker.iter().enumerate().all(|(k, m)| lower[i + k] == *m)
        });
        if let Some(i) = found {
            let name = words[i + marker.len()].trim_matches(|c: char| !c.is_alphanumeric());
            if name.chars().next().is_some_and(char::is_uppercase) {
                return Some(name.to_string());
            }
        }
    }
    None
}

/// What an expense was for: the first sentence without the amount, "I took", or dangling words.
fn purpose_of(body: &str, amount: Option<&FoundNumber>) -> String {
    let mut text = body.to_string();
    if let Some(a) = amount {
        if text.get(a.start..a.end) == Some(a.text.as_str()) {
            text.replace_range(a.start..a.end, " ");
        }
    }
    let first = content_sentences(&text)
        .into_iter()
        .next()
        .unwrap_or_default();
    let mut words: Vec<&str> = first.split_whitespace().collect();
    if words.len() > 2 && ["i", "we"].contains(&words[0].to_lowercase().as_str()) {
        words.drain(..2);
    }
    const DANGLING: &[&str] = &[
        "for", "of", "at", "costing", "cost", "worth", "paid", "about", "around", "which", "that",
        "and", "with", "was", "is", "it",
    ];
    while let Some(last) = words.last() {
        let clean = last
            .trim_matches(|c: char| !c.is_alphanumeric())
            .to_lowercase();
        if clean.is_empty() || DANGLING.contains(&clean.as_str()) {
            words.pop();
        } else {
            break;
        }
    }
    let p = limit_words(&words.join(" "), 12);
    let p = p
        .trim_end_matches([',', '.', ';', ':', '!', '?', '-'])
        .trim()
        .to_string();
    // "Hotel in Berlin" -> "hotel in Berlin", but keep "IT equipment".
    let mut cs = p.chars();
    match (cs.next(), cs.next()) {
        (Some(a), Some(b)) if a.is_uppercase() && b.is_lowercase() => {
            a.to_lowercase().chain(p.chars().skip(1)).collect()
        }
        _ => p,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::{ChatMessage, ToolCall};
    use futures_util::TryStreamExt;
    use proptest::prelude::*;
    use serde_json::json;

    fn user(text: &str) -> ChatRequest {
        ChatRequest {
            messages: vec![ChatMessage::user(text)],
            ..Default::default()
        }
    }

    fn with_system(system: &str, text: &str) -> ChatRequest {
        ChatRequest {
            messages: vec![ChatMessage::system(system), ChatMessage::user(text)],
            ..Default::default()
        }
    }

    fn json_req(schema: Value, text: &str) -> ChatRequest {
        ChatRequest {
            messages: vec![ChatMessage::user(text)],
            response_format: ResponseFormat::Json { schema },
            ..Default::default()
        }
    }

    fn text_of(deltas: &[LlmDelta]) -> String {
        deltas
            .iter()
            .filter_map(|d| match d {
                LlmDelta::Text(t) => Some(t.as_str()),
                _ => None,
            })
            .collect()
    }

    fn answer_text(req: &ChatRequest) -> String {
        text_of(&BuiltinModel::new(0).answer(req))
    }

    fn answer_json(schema: &Value, text: &str) -> Value {
        let s = answer_text(&json_req(schema.clone(), text));
        serde_json::from_str(&s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
    }

    /// An independent validator (the `jsonschema` crate), formats included.
    fn oracle_accepts(schema: &Value, v: &Value) -> bool {
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .build(schema)
            .unwrap_or_else(|e| panic!("bad test schema {schema}: {e}"));
        validator.is_valid(v)
    }

    fn tools() -> Vec<ToolDef> {
        vec![
            ToolDef {
                name: "get_weather".into(),
                description: "Get the current weather forecast for a city".into(),
                parameters: json!({
                    "type": "object",
                    "properties": {
                        "city": {"type": "string", "description": "City name"},
                        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                        "days": {"type": "integer", "minimum": 1, "maximum": 7}
                    },
                    "required": ["city"],
                    "additionalProperties": false
                }),
            },
            ToolDef {
                name: "send_email".into(),
                description: "Send an email message to a recipient".into(),
                parameters: json!({
                    "type": "object",
                    "properties": {"to": {"type": "string", "format": "email"}, "body": {"type": "string"}},
                    "required": ["to", "body"]
                }),
            },
        ]
    }

    #[test]
    fn deterministic_for_the_same_input() {
        let m = BuiltinModel::new(0);
        let reqs = vec![
            user("Hello there"),
            with_system(
                "Summarize the text.",
                "The build failed. Nobody noticed for a week.",
            ),
            json_req(
                json!({"type": "object", "properties": {"amount": {"type": "number"}}}),
                "Taxi 45 EUR",
            ),
            ChatRequest {
                messages: vec![ChatMessage::user(
                    "what is the weather in Oslo, use get_weather",
                )],
                tools: tools(),
                ..Default::default()
            },
        ];
        for r in &reqs {
            assert_eq!(m.answer(r), m.answer(r));
            assert_eq!(m.answer(r), BuiltinModel::new(25).answer(r));
        }
    }

    #[tokio::test]
    async fn pace_zero_streams_several_deltas() {
        let m = BuiltinModel::new(0);
        let req = user("Please tell me something about the harbour and the boats in it");
        let got: Vec<LlmDelta> = m
            .chat(req.clone())
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        let texts = got
            .iter()
            .filter(|d| matches!(d, LlmDelta::Text(_)))
            .count();
        assert!(texts >= 5, "{got:?}");
        assert_eq!(text_of(&got), answer_text(&req));
        match got.last() {
            Some(LlmDelta::Done {
                usage,
                finish_reason,
            }) => {
                assert!(usage.prompt_tokens >= 1 && usage.completion_tokens >= 1);
                assert_eq!(
                    usage.total_tokens,
                    usage.prompt_tokens + usage.completion_tokens
                );
                assert_eq!(finish_reason.as_deref(), Some("stop"));
            }
            other => panic!("no Done: {other:?}"),
        }
        assert!(m.is_builtin());
    }

    #[tokio::test]
    async fn pace_sleeps_between_deltas() {
        let m = BuiltinModel::new(20);
        let started = std::time::Instant::now();
        let got: Vec<LlmDelta> = m
            .chat(user("one two three four"))
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        let gaps = got.len() as u32 - 1;
        assert!(
            started.elapsed() >= Duration::from_millis(20) * gaps,
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn word_chunks_rejoin() {
        let t = "  Hello,  world.\nNew line ";
        let c = word_chunks(t);
        assert_eq!(c.concat(), t);
        assert_eq!(c.len(), 4, "{c:?}");
        assert_eq!(json_chunks("{}"), vec!["{", "}"]);
        assert_eq!(
            json_chunks("{\"a\":1,\"b\":2}").concat(),
            "{\"a\":1,\"b\":2}"
        );
    }

    #[test]
    fn text_intents() {
        let s = answer_text(&with_system(
            "Summarize the user's text in one sentence.",
            "The quarterly report shows revenue grew by 12 percent. Costs stayed flat. Hiring is paused.",
        ));
        assert_eq!(
            s,
            "In short: The quarterly report shows revenue grew by 12 percent."
        );

        let s = answer_text(&user("Translate into French: Good morning, how are you?"));
        assert!(
            s.contains("offline model") && s.contains("[Pseudo-translation into French]"),
            "{s}"
        );
        assert!(s.contains("Good morning, how are you?"), "{s}");

        let s = answer_text(&with_system(
            "Classify the message into one of: billing, tech, other. Answer with the category only.",
            "I was charged twice, please refund the payment",
        ));
        assert_eq!(s, "billing");
        let s = answer_text(&with_system(
            "Classify the message into one of: billing, tech, other.",
            "The app crashes with an error when I log in",
        ));
        assert_eq!(s, "tech");
        let s = answer_text(&with_system(
            "Classify the message into one of: billing, tech, other.",
            "Nice weather",
        ));
        assert_eq!(s, "other");
        let s = answer_text(&with_system(
            "Categorize the ticket.",
            "My parcel has not arrived, where is the delivery?",
        ));
        assert_eq!(s, "shipping");

        let s = answer_text(&with_system(
            "You file expense claims.",
            "Claim for sales: I took a taxi to the airport for 45 EUR",
        ));
        assert_eq!(
            s,
            "Expense claim draft: 45 EUR for a taxi to the airport. Please check the details and attach the receipt."
        );
        let s = answer_text(&with_system(
            "You file expense claims.",
            "Hotel in Berlin, 2 nights, $240.50",
        ));
        assert!(
            s.starts_with("Expense claim draft: $240.50 for hotel in Berlin, 2 nights."),
            "{s}"
        );
        let s = answer_text(&with_system(
            "You file expense claims.",
            "Dinner with a client",
        ));
        assert!(
            s.contains("amount is missing") && s.contains("dinner with a client"),
            "{s}"
        );
        let s = answer_text(&with_system(
            "You file expense claims.",
            "Show my last claim",
        ));
        assert!(s.starts_with("To draft an expense claim I need"), "{s}");
        let s = answer_text(&with_system(
            "Detect the sentiment.",
            "This is terrible, I want my money back",
        ));
        assert_eq!(s, "negative");
        let s = answer_text(&with_system(
            "Classify the sentiment as positive, negative or neutral.",
            "I love this product, thanks!",
        ));
        assert_eq!(s, "positive");
    }

    #[test]
    fn generic_reply_quotes_and_remembers() {
        let s = answer_text(&user("What is the capital of Peru?"));
        assert!(
            s.starts_with("You asked: \"What is the capital of Peru?\""),
            "{s}"
        );
        assert!(!s.contains("Earlier"));
        let req = ChatRequest {
            messages: vec![
                ChatMessage::system("You are helpful."),
                ChatMessage::user("My name is Ann."),
                ChatMessage::assistant("Nice to meet you."),
                ChatMessage::user("What is my name?"),
            ],
            ..Default::default()
        };
        let s = answer_text(&req);
        assert!(s.contains("Earlier you said: \"My name is Ann.\""), "{s}");
        let sentences = s.matches(['.', '?']).count();
        assert!((1..=5).contains(&sentences), "{s}");
        assert!(answer_text(&user("hi")).starts_with("Hello!"));
    }

    #[test]
    fn reasoning_only_when_asked() {
        let m = BuiltinModel::new(0);
        let d = m.answer(&with_system("Think step by step.", "Is 7 prime?"));
        assert!(matches!(d[0], LlmDelta::Reasoning(_)), "{d:?}");
        let first_text = d
            .iter()
            .position(|x| matches!(x, LlmDelta::Text(_)))
            .unwrap();
        let last_reasoning = d
            .iter()
            .rposition(|x| matches!(x, LlmDelta::Reasoning(_)))
            .unwrap();
        assert!(last_reasoning < first_text);
        let d = m.answer(&with_system("Be brief.", "Is 7 prime?"));
        assert!(!d.iter().any(|x| matches!(x, LlmDelta::Reasoning(_))));
    }

    fn router_schema() -> Value {
        json!({
            "type": "object",
            "properties": {"choice": {"type": "string", "anyOf": [
                {"const": "billing", "description": "Questions about invoices, refunds, payments"},
                {"const": "tech", "description": "Technical problems: the app crashes, login errors, bugs"},
                {"const": "sales", "description": "Buying a new plan, prices and discounts"}
            ]}},
            "required": ["choice"]
        })
    }

    #[test]
    fn router_picks_by_description_words() {
        let schema = router_schema();
        let pick = |text: &str| answer_json(&schema, text)["choice"].clone();
        assert_eq!(pick("I need a refund for my last invoice"), "billing");
        assert_eq!(pick("The app crashes after login"), "tech");
        assert_eq!(pick("Do you have discounts on the bigger plan?"), "sales");
        // No shared words: the first option.
        assert_eq!(pick("Good afternoon"), "billing");
        // Words of the const name count too.
        assert_eq!(pick("tech"), "tech");
        // oneOf works the same way.
        let one = json!({"type": "object", "properties": {"choice": {"oneOf": [
            {"const": "a", "description": "cats and dogs"},
            {"const": "b", "description": "weather forecasts"}
        ]}}});
        assert_eq!(
            answer_json(&one, "what is the weather forecast")["choice"],
            "b"
        );
    }

    #[test]
    fn json_fields_follow_the_input() {
        let schema = json!({
            "type": "object",
            "properties": {
                "amount": {"type": "number"},
                "currency": {"type": "string"},
                "purpose": {"type": "string"},
                "date": {"type": "string", "format": "date"},
                "email": {"type": "string"},
                "urgent": {"type": "boolean"},
                "approved": {"type": "boolean"},
                "category": {"type": "string", "enum": ["travel", "meals", "office"]},
                "items": {"type": "array", "items": {"type": "string"}},
                "nights": {"type": "integer", "minimum": 1}
            },
            "required": ["amount", "purpose"],
            "additionalProperties": false
        });
        let text = "On 2024-03-05 I took an urgent taxi to the airport for 45.50 EUR, mail ann@example.org";
        let v = answer_json(&schema, text);
        assert_eq!(v["amount"], json!(45.5));
        assert_eq!(v["currency"], "EUR");
        assert_eq!(v["date"], "2024-03-05");
        assert_eq!(v["email"], "ann@example.org");
        assert_eq!(v["urgent"], true);
        assert_eq!(v["approved"], false);
        assert_eq!(v["category"], "travel");
        assert_eq!(v["items"].as_array().unwrap().len(), 1);
        assert!(v["purpose"].as_str().unwrap().contains("taxi"), "{v}");
        assert!(oracle_accepts(&schema, &v), "{v}");
        // "not urgent" is not urgent; a short "yes" approves.
        let v = answer_json(&schema, "Taxi 12 EUR, not urgent");
        assert_eq!(v["urgent"], false);
        assert_eq!(v["nights"], 12);
        let v = answer_json(&schema, "yes, approved");
        assert_eq!(v["approved"], true);
        assert_eq!(v["amount"], 0);
        assert!(oracle_accepts(&schema, &v), "{v}");
    }

    #[test]
    fn json_handles_varied_schemas() {
        let schemas = vec![
            json!({"type": "string", "minLength": 50, "maxLength": 60}),
            json!({"type": "integer", "exclusiveMinimum": 10, "exclusiveMaximum": 12}),
            json!({"type": "number", "minimum": 100, "default": 5}),
            json!({"type": "array", "items": {"type": "boolean"}, "minItems": 3, "maxItems": 3}),
            json!({"type": "array", "maxItems": 0}),
            json!({"type": "object", "properties": {"x": {"type": ["null", "integer"]}}, "required": ["x", "y"]}),
            json!({"anyOf": [{"type": "null"}, {"type": "object", "properties": {"a": {"const": 3}}, "required": ["a"]}]}),
            json!({"oneOf": [{"type": "integer"}, {"type": "number", "minimum": 5}]}),
            json!({"allOf": [{"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
                              {"properties": {"b": {"type": "integer", "multipleOf": 7, "minimum": 20}}, "required": ["b"]}]}),
            json!({"type": "object", "properties": {"when": {"type": "string", "format": "date-time"},
                                                     "site": {"type": "string", "format": "uri"},
                                                     "id": {"type": "string", "format": "uuid"}}}),
            json!({"enum": [1, "two", null]}),
            json!({"type": "string", "description": "anything", "default": "dflt"}),
            json!(true),
            json!({}),
        ];
        for s in &schemas {
            for text in [
                "",
                "I paid 30 dollars for two books",
                "two please",
                "ünïcödé ✓ 3,5",
            ] {
                let v = answer_json(s, text);
                assert!(oracle_accepts(s, &v), "schema {s} input {text:?} gave {v}");
                assert!(validates(s, &v), "own validator: schema {s} gave {v}");
            }
        }
        assert_eq!(
            answer_json(&json!({"enum": [1, "two", null]}), "two please"),
            "two"
        );
    }

    #[test]
    fn text_helpers_survive_odd_unicode() {
        // Lowercasing "İ" changes its length; offsets must not be mixed up.
        assert_eq!(find_person("İİİ my name is Ann."), Some("Ann".into()));
        assert_eq!(find_person("I'm Bob"), Some("Bob".into()));
        assert_eq!(find_person("name is"), None);
        let schema = json!({"type": "object", "properties": {"name": {"type": "string"}, "amount": {"type": "number"}}});
        for text in [
            "İİİ name is Zoë, paid €3",
            "ﬁ ß ǅ called 12,5 €",
            "-",
            "€",
            "1,2,3,4",
            "10:30 2024-13-45",
        ] {
            let v = answer_json(&schema, text);
            assert!(oracle_accepts(&schema, &v), "{text}: {v}");
        }
        assert_eq!(
            find_numbers("paid €3.50 on 2024-05-01 at 10:30")[0].text,
            "€3.50"
        );
        assert_eq!(
            find_numbers("1,200.75 and 12,5 and -4")
                .iter()
                .map(|n| n.value)
                .collect::<Vec<_>>(),
            vec![1200.75, 12.5, -4.0]
        );
    }

    #[test]
    fn own_validator_rejects() {
        assert!(!validates(&json!({"type": "integer"}), &json!(1.5)));
        assert!(!validates(&json!({"required": ["a"]}), &json!({})));
        assert!(!validates(
            &json!({"oneOf": [{"type": "integer"}, {"type": "number"}]}),
            &json!(1)
        ));
        assert!(!validates(
            &json!({"properties": {"a": {"maxLength": 1}}}),
            &json!({"a": "xy"})
        ));
        assert!(!validates(
            &json!({"additionalProperties": false}),
            &json!({"a": 1})
        ));
        assert!(!validates(
            &json!({"items": {"type": "string"}}),
            &json!([1])
        ));
        assert!(!validates(&json!({"multipleOf": 3}), &json!(7)));
        assert!(validates(&json!({"enum": [1]}), &json!(1.0)));
    }

    #[test]
    fn calls_the_mentioned_tool() {
        let m = BuiltinModel::new(0);
        for text in [
            "Please use get_weather for Paris",
            "get weather in Paris please",
            "What is the current forecast in Paris?",
        ] {
            let req = ChatRequest {
                messages: vec![
                    ChatMessage::system("You are an agent."),
                    ChatMessage::user(text),
                ],
                tools: tools(),
                ..Default::default()
            };
            let d = m.answer(&req);
            let starts: Vec<_> = d
                .iter()
                .filter_map(|x| match x {
                    LlmDelta::ToolCallStart { index, id, name } => {
                        Some((*index, id.clone(), name.clone()))
                    }
                    _ => None,
                })
                .collect();
            assert_eq!(starts.len(), 1, "{text}: {d:?}");
            assert_eq!(starts[0].0, 0);
            assert_eq!(starts[0].2, "get_weather");
            assert!(starts[0].1.starts_with("call_"));
            let pieces: Vec<&str> = d
                .iter()
                .filter_map(|x| match x {
                    LlmDelta::ToolCallArgs { index: 0, delta } => Some(delta.as_str()),
                    _ => None,
                })
                .collect();
            assert!(pieces.len() >= 2, "{pieces:?}");
            let args: Value = serde_json::from_str(&pieces.concat()).unwrap();
            assert_eq!(args["city"], "Paris", "{args}");
            assert!(oracle_accepts(&tools()[0].parameters, &args), "{args}");
            assert!(!d.iter().any(|x| matches!(x, LlmDelta::Text(_))));
            assert!(
                matches!(d.last(), Some(LlmDelta::Done { finish_reason: Some(r), .. }) if r == "tool_calls")
            );
        }
        // The other tool, by its description words.
        let req = ChatRequest {
            messages: vec![ChatMessage::user(
                "Send a message to bob@example.com saying hi",
            )],
            tools: tools(),
            ..Default::default()
        };
        let d = m.answer(&req);
        assert!(
            matches!(&d[0], LlmDelta::ToolCallStart { name, .. } if name == "send_email"),
            "{d:?}"
        );
        // No tool mentioned: a text answer.
        let req = ChatRequest {
            messages: vec![ChatMessage::user("Tell me a joke")],
            tools: tools(),
            ..Default::default()
        };
        let d = m.answer(&req);
        assert!(!d
            .iter()
            .any(|x| matches!(x, LlmDelta::ToolCallStart { .. })));
        assert!(!text_of(&d).is_empty());
    }

    #[test]
    fn summarises_tool_results() {
        let mut asked = ChatMessage::assistant("");
        asked.tool_calls.push(ToolCall {
            id: "call_1".into(),
            name: "get_weather".into(),
            arguments: "{\"city\":\"Paris\"}".into(),
        });
        let req = ChatRequest {
            messages: vec![
                ChatMessage::user("use get_weather for Paris"),
                asked,
                ChatMessage::tool_result("call_1", "{ \"temp\": 21,\n \"sky\": \"clear\" }"),
            ],
            tools: tools(),
            ..Default::default()
        };
        let d = BuiltinModel::new(0).answer(&req);
        assert!(
            !d.iter()
                .any(|x| matches!(x, LlmDelta::ToolCallStart { .. })),
            "{d:?}"
        );
        assert_eq!(
            text_of(&d),
            "Here is what I found: get_weather returned {\"temp\":21,\"sky\":\"clear\"}."
        );
        // A new user turn after the results may call the tool again.
        let mut again = req.clone();
        again
            .messages
            .push(ChatMessage::user("and get_weather for Rome"));
        let d = BuiltinModel::new(0).answer(&again);
        assert!(matches!(&d[0], LlmDelta::ToolCallStart { .. }), "{d:?}");
    }

    // ---- property test: generated values validate against generated schemas ----

    fn prop_name() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![
                "amount",
                "price",
                "total",
                "email",
                "date",
                "city",
                "name",
                "category",
                "summary",
                "urgent",
                "is_approved",
                "count",
                "confidence",
                "reason",
                "id",
                "url",
                "language",
                "answer",
                "currency",
                "tags",
                "title",
                "when",
                "query",
            ])
            .prop_map(String::from),
            "[a-z][a-zA-Z_]{0,8}",
        ]
    }

    fn leaf() -> BoxedStrategy<Value> {
        prop_oneof![
            Just(json!({"type": "string"})),
            Just(json!({})),
            (0u64..6, 0u64..30)
                .prop_map(|(min, extra)| json!({"type": "string", "minLength": min, "maxLength": min + extra})),
            prop::sample::select(vec!["email", "date", "date-time", "uri", "uuid"])
                .prop_map(|f| json!({"type": "string", "format": f})),
            Just(json!({"type": "number"})),
            Just(json!({"type": "integer"})),
            (-1000i64..1000, 0i64..500)
                .prop_map(|(lo, span)| json!({"type": "integer", "minimum": lo, "maximum": lo + span})),
            (-1000i64..1000, 0i64..500, 1i64..10).prop_map(|(lo, span, m)| {
                json!({"type": "integer", "minimum": lo, "maximum": lo + span + m, "multipleOf": m})
            }),
            (-100.0f64..100.0, 0.5f64..50.0).prop_map(
                |(lo, span)| json!({"type": "number", "exclusiveMinimum": lo, "exclusiveMaximum": lo + span})
            ),
            (0.0f64..10.0).prop_map(|lo| json!({"type": "number", "minimum": lo})),
            Just(json!({"type": "boolean"})),
            any::<bool>().prop_map(|d| json!({"type": "boolean", "default": d})),
            Just(json!({"type": "null"})),
            Just(json!({"type": ["string", "null"]})),
            prop::collection::vec("[a-z]{1,8}( [a-z]{1,6})?", 1..5)
                .prop_map(|o| json!({"type": "string", "enum": o})),
            prop::collection::vec(any::<i32>(), 1..4).prop_map(|o| json!({"enum": o})),
            "[a-z ]{0,10}".prop_map(|c| json!({"const": c})),
            prop::collection::vec(("[a-z_]{1,10}", "[a-z ]{0,40}"), 1..5).prop_map(|opts| {
                let opts: Vec<Value> = opts
                    .into_iter()
                    .map(|(c, d)| json!({"const": c, "description": d}))
                    .collect();
                json!({"type": "string", "anyOf": opts})
            }),
        ]
        .boxed()
    }

    fn object_of(props: Vec<(String, Value, bool)>, closed: bool) -> Value {
        let mut properties = Map::new();
        let mut required: Vec<String> = Vec::new();
        for (name, schema, req) in props {
            if req && !required.contains(&name) {
                required.push(name.clone());
            }
            properties.insert(name, schema);
        }
        let mut o = json!({"type": "object", "properties": properties, "required": required});
        if closed {
            o["additionalProperties"] = json!(false);
        }
        o
    }

    fn schema() -> impl Strategy<Value = Value> {
        leaf().prop_recursive(3, 40, 5, |inner| {
            prop_oneof![
                (
                    prop::collection::vec((prop_name(), inner.clone(), any::<bool>()), 0..5),
                    any::<bool>()
                )
                    .prop_map(|(props, closed)| object_of(props, closed)),
                (inner.clone(), 0u64..3, 0u64..3, any::<bool>()).prop_map(
                    |(items, min, extra, bounded)| {
                        let mut a = json!({"type": "array", "items": items, "minItems": min});
                        if bounded {
                            a["maxItems"] = json!(min + extra);
                        }
                        a
                    }
                ),
                prop::collection::vec(inner.clone(), 1..4).prop_map(|o| json!({"anyOf": o})),
                prop::sample::subsequence(
                    vec!["string", "boolean", "null", "object", "array", "integer"],
                    1..4
                )
                .prop_map(|ts| {
                    let opts: Vec<Value> = ts.iter().map(|t| json!({"type": t})).collect();
                    json!({"oneOf": opts})
                }),
                (
                    prop::collection::vec((prop_name(), inner.clone(), any::<bool>()), 1..3),
                    prop::collection::vec((prop_name(), inner.clone(), any::<bool>()), 1..3)
                )
                    .prop_map(|(a, b)| {
                        let b: Vec<_> = b
                            .into_iter()
                            .filter(|(n, _, _)| !a.iter().any(|(m, _, _)| m == n))
                            .collect();
                        json!({"allOf": [object_of(a, false), object_of(b, false)]})
                    }),
            ]
        })
    }

    fn input_text() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![
                "",
                "I took a taxi to the airport for 45 EUR on 2024-05-03",
                "yes",
                "Please refund my invoice, mail me at ann@example.org",
                "Weather in New York tomorrow? Not urgent.",
                "-12,5 degrees and 1,200.75 dollars",
            ])
            .prop_map(String::from),
            "\\PC{0,80}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn generated_json_validates(schema in schema(), text in input_text()) {
            let v = answer_json(&schema, &text);
            prop_assert!(oracle_accepts(&schema, &v), "schema {} input {:?} gave {}", schema, text, v);
            prop_assert!(validates(&schema, &v), "own validator disagrees: {} / {}", schema, v);
            prop_assert_eq!(&answer_json(&schema, &text), &v);
        }

        #[test]
        fn text_answers_never_fail(
            system in prop::sample::select(vec![
                "", "Summarize the text.", "Translate into Spanish.", "Classify into: a, b, other.",
                "You file expense claims.", "Think step by step.", "Detect the sentiment.",
            ]),
            earlier in "\\PC{0,40}",
            text in "\\PC{0,120}",
        ) {
            let req = ChatRequest {
                messages: vec![
                    ChatMessage::system(system),
                    ChatMessage::user(earlier),
                    ChatMessage::assistant("ok"),
                    ChatMessage::user(text.clone()),
                ],
                tools: tools(),
                ..Default::default()
            };
            let d = BuiltinModel::new(0).answer(&req);
            let n = d.len();
            prop_assert!(n >= 2);
            let is_done = |x: &LlmDelta| matches!(x, LlmDelta::Done { .. });
            prop_assert!(is_done(&d[n - 1]), "last delta is not Done: {:?}", d);
            prop_assert!(!d[..n - 1].iter().any(is_done), "Done before the end: {:?}", d);
            let has_call = d.iter().any(|x| matches!(x, LlmDelta::ToolCallStart { .. }));
            prop_assert!(has_call || !text_of(&d).trim().is_empty());
        }

        #[test]
        fn tool_args_validate(params in schema(), city in "[A-Z][a-z]{2,8}") {
            let req = ChatRequest {
                messages: vec![ChatMessage::user(format!("use lookup_place for {city}"))],
                tools: vec![ToolDef { name: "lookup_place".into(), description: "Look up a place".into(), parameters: params.clone() }],
                ..Default::default()
            };
            let d = BuiltinModel::new(0).answer(&req);
            let args: String = d.iter().filter_map(|x| match x {
                LlmDelta::ToolCallArgs { delta, .. } => Some(delta.as_str()),
                _ => None,
            }).collect();
            let v: Value = serde_json::from_str(&args).unwrap();
            prop_assert!(v.is_object());
            if params.get("type") == Some(&json!("object")) {
                prop_assert!(oracle_accepts(&params, &v), "params {} gave {}", params, v);
            }
        }
    }
}
