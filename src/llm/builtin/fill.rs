//! Leaf values of the generator: strings, numbers and booleans chosen by the property's name.
//!
//! A string property's words (`expenseAmount` -> amount) pick the rule: entities first
//! (amount, currency, e-mail, link, date, place, language), then intents (category, summary,
//! the plain-text reply, purpose, query), then names (person, title, id), else the first
//! sentence of the input. Numbers come from the input and are moved into the schema's bounds;
//! booleans are the property's own word, not negated, or a short "yes".

use serde_json::{Map, Value};

use super::extract::*;
use super::generate::*;
use super::intents::*;
use super::tables::*;
use super::text::*;

impl Gen<'_> {
    /// Text for a string property, chosen by the property's name (the first rule that
    /// answers wins, in this order: entities, intents, names, else the first sentence).
    pub(super) fn string_for(&self, name: Option<&str>, s: &Map<String, Value>) -> String {
        let words = name.map(name_words).unwrap_or_default();
        let has = |list: &[&str]| words.iter().any(|w| list.contains(&w.as_str()));
        let body = payload(self.input);
        if let Some(t) = name.and_then(|n| self.result_field(n)) {
            return match t {
                Value::String(t) => t,
                other => other.to_string(),
            };
        }
        if has(&["expression", "formula", "calculation", "math", "arithmetic"]) {
            if let Some(e) = find_expression(body) {
                return e;
            }
        }
        if has(&[
            "id",
            "key",
            "code",
            "ref",
            "reference",
            "number",
            "invoice",
            "order",
            "ticket",
        ]) {
            if let Some(id) = find_identifier(self.input) {
                return id;
            }
        }
        if has(&["reason", "why", "rationale"]) && self.system.to_lowercase().contains("spam") {
            return moderation_reason(body);
        }
        if let Some(t) = self.entity_text(&has, body) {
            return t;
        }
        if let Some(t) = self.intent_text(&has, body, s) {
            return t;
        }
        if let Some(t) = self.naming_text(&has, body) {
            return t;
        }
        let first = content_sentences(body)
            .into_iter()
            .next()
            .unwrap_or_default();
        limit_words(&first, 20)
    }

    /// Amounts, currencies, e-mails, links, dates, places and languages found in the input.
    fn entity_text(&self, has: &dyn Fn(&[&str]) -> bool, body: &str) -> Option<String> {
        if has(&["amount", "price", "total", "cost", "sum", "fee"]) {
            if let Some(a) = find_amount(body) {
                return Some(a.text);
            }
        }
        if has(&["currency"]) {
            return Some(
                find_amount(body)
                    .and_then(|a| a.currency)
                    .unwrap_or_else(|| "EUR".into()),
            );
        }
        if has(&["email", "mail"]) {
            return Some(find_email(body).unwrap_or_else(|| "someone@example.com".into()));
        }
        if has(&["url", "link", "website", "uri", "href"]) {
            return Some(find_url(body).unwrap_or_else(|| "https://example.com/".into()));
        }
        if has(&["date", "day", "when", "deadline"]) {
            return Some(
                find_date(body)
                    .or_else(|| {
                        ["today", "tomorrow", "yesterday"]
                            .iter()
                            .find(|w| body.to_lowercase().contains(*w))
                            .map(|w| w.to_string())
                    })
                    .unwrap_or_else(|| "today".into()),
            );
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
                return Some(p);
            }
        }
        if has(&["language", "lang", "locale"]) {
            let lower = body.to_lowercase();
            return Some(
                LANGUAGES
                    .iter()
                    .filter_map(|l| lower.find(l).map(|at| (at, *l)))
                    .min()
                    .map_or_else(|| "English".to_string(), |(_, l)| capitalize(l)),
            );
        }
        None
    }

    /// Categories, summaries, the plain-text reply, purposes and queries.
    fn intent_text(
        &self,
        has: &dyn Fn(&[&str]) -> bool,
        body: &str,
        s: &Map<String, Value>,
    ) -> Option<String> {
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
            return Some(classify(&sys, self.input));
        }
        if has(&["summary", "abstract", "tldr", "gist"]) {
            return Some(summarize(body));
        }
        if has(&[
            "answer", "reply", "response", "text", "message", "content", "body", "output", "result",
        ]) && !self.reply.is_empty()
        {
            return Some(self.reply.to_string());
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
                return Some(p);
            }
        }
        if has(&[
            "query", "search", "keywords", "question", "prompt", "input", "request", "q",
        ]) {
            return Some(limit_words(&collapse(self.input), 30));
        }
        None
    }

    /// People's names, titles and identifiers.
    fn naming_text(&self, has: &dyn Fn(&[&str]) -> bool, body: &str) -> Option<String> {
        if has(&["name", "person", "who"]) {
            if let Some(n) = find_person(body) {
                return Some(n);
            }
        }
        if has(&["title", "subject", "headline", "topic", "name"]) {
            return Some(title_of(body));
        }
        if has(&["id", "code", "key", "slug", "ref"]) {
            let kw: Vec<String> = keywords(body).into_iter().take(3).collect();
            return Some(if kw.is_empty() {
                "item-1".into()
            } else {
                kw.join("-")
            });
        }
        None
    }

    pub(super) fn number(
        &self,
        s: &Map<String, Value>,
        name: Option<&str>,
        integer: bool,
    ) -> Value {
        let words = name.map(name_words).unwrap_or_default();
        let has = |list: &[&str]| words.iter().any(|w| list.contains(&w.as_str()));
        let body = payload(self.input);
        let default = s.get("default").and_then(Value::as_f64);
        let from_result = name
            .and_then(|n| self.result_field(n))
            .and_then(|v| v.as_f64());
        let found = if from_result.is_some() {
            from_result
        } else if has(&["amount", "price", "total", "cost", "sum", "fee"]) {
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
        let b = Bounds::of(s);
        if integer {
            b.integer(v)
        } else {
            b.number(v)
        }
    }

    pub(super) fn boolean(&self, s: &Map<String, Value>, name: Option<&str>) -> bool {
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

impl Gen<'_> {
    /// The scalar a tool result gives for a property of this name (`amount` from
    /// `{"key": "INV-1", "value": {"amount": 49.9}}`), searched in the JSON objects among the
    /// input's lines (tool results), latest first.
    fn result_field(&self, name: &str) -> Option<Value> {
        self.input.lines().rev().find_map(|line| {
            let v: Value = serde_json::from_str(line.trim()).ok()?;
            field_named(&v, name, 0)
        })
    }
}

/// The scalar of the first field called `name`, at the top of `v` or in the objects it holds
/// (a lookup's `value`), breadth first.
fn field_named(v: &Value, name: &str, depth: usize) -> Option<Value> {
    let o = v.as_object()?;
    if let Some(found) = o.get(name).filter(|f| f.is_string() || f.is_number()) {
        return Some(found.clone());
    }
    if depth >= 3 {
        return None;
    }
    o.values()
        .find_map(|inner| field_named(inner, name, depth + 1))
}

/// A numeric schema's bounds (finite ones only).
struct Bounds {
    min: Option<f64>,
    max: Option<f64>,
    ex_min: Option<f64>,
    ex_max: Option<f64>,
    multiple_of: Option<f64>,
}

impl Bounds {
    fn of(s: &Map<String, Value>) -> Bounds {
        let num = |k: &str| s.get(k).and_then(Value::as_f64).filter(|x| x.is_finite());
        Bounds {
            min: num("minimum"),
            max: num("maximum"),
            ex_min: num("exclusiveMinimum"),
            ex_max: num("exclusiveMaximum"),
            multiple_of: num("multipleOf"),
        }
    }

    /// The integer nearest `v` within the bounds (and a multiple of a whole `multipleOf`).
    fn integer(&self, v: f64) -> Value {
        let mut lo = i64::MIN as f64;
        let mut hi = i64::MAX as f64;
        if let Some(m) = self.min {
            lo = lo.max(m.ceil());
        }
        if let Some(m) = self.ex_min {
            lo = lo.max(m.floor() + 1.0);
        }
        if let Some(m) = self.max {
            hi = hi.min(m.floor());
        }
        if let Some(m) = self.ex_max {
            hi = hi.min(m.ceil() - 1.0);
        }
        let mut r = v.round().clamp(lo.min(hi), hi.max(lo));
        if let Some(m) = self.multiple_of.filter(|m| *m >= 1.0 && m.fract() == 0.0) {
            let k_lo = (lo / m).ceil();
            let k_hi = (hi / m).floor();
            let k = (r / m).round().clamp(k_lo.min(k_hi), k_hi.max(k_lo));
            r = k * m;
        }
        let r = r.clamp(-9.0e15, 9.0e15);
        Value::from(r as i64)
    }

    /// `v` moved into the bounds (the middle of an exclusive range) and onto `multipleOf`.
    fn number(&self, mut v: f64) -> Value {
        let (min, max, ex_min, ex_max) = (self.min, self.max, self.ex_min, self.ex_max);
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
        if let Some(m) = self.multiple_of.filter(|m| *m > 0.0) {
            let k = (v / m).round();
            if (k * m - v).abs() > f64::EPSILON {
                v = k * m;
            }
        }
        number_value(v)
    }
}
