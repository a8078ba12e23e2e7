//! The schema-driven generator: a value for a JSON Schema, filled from the input text.
//!
//! [`generate`] walks the schema: `const`, then `enum` (the option sharing most words with the
//! input), `anyOf`/`oneOf` (each option merged with its parent's keywords, the first value the
//! whole schema accepts), `allOf` (merged), then the type's own generator (`fill.rs` for
//! leaves, [`super::pattern`] for `pattern`). Local `$ref`s (`#`, `#/$defs/...`) are followed
//! into the root schema. Nesting is bounded by [`MAX_DEPTH`]: deeper objects and arrays are
//! empty. Whether a value fits is decided by [`crate::schema`], the server's one validator; the
//! generator has no validator of its own.

use std::sync::Arc;

use serde_json::{Map, Number, Value};

use super::extract::*;
use super::tables::{ACCEPT_OPTIONS, REJECT_OPTIONS};
use super::text::*;
use crate::schema::{self, Schema};

/// Fills schemas from the input text.
pub(super) struct Gen<'a> {
    pub(super) input: &'a str,
    pub(super) system: &'a str,
    /// The plain-text answer, for properties like `answer` or `reply`.
    pub(super) reply: &'a str,
    /// The whole schema, which `$ref`s point into.
    pub(super) root: &'a Value,
}

/// A value for `root` filled from `input` (`reply` for answer-like properties).
pub(super) fn generate(input: &str, system: &str, reply: &str, root: &Value) -> Value {
    let gen = Gen {
        input,
        system,
        reply,
        root,
    };
    gen.value(root, None, 0)
}

pub(super) const MAX_DEPTH: usize = 16;

impl Gen<'_> {
    /// A value for `schema`; `name` is the property it is for.
    pub(super) fn value(&self, schema: &Value, name: Option<&str>, depth: usize) -> Value {
        let s = match schema {
            Value::Object(s) => s,
            Value::Bool(false) => return Value::Null,
            _ => return Value::String(self.string_for(name, &Map::new())),
        };
        if let Some(Value::String(r)) = s.get("$ref") {
            if depth < MAX_DEPTH {
                if let Some(target) = self.resolve(r) {
                    let mut rest = s.clone();
                    rest.remove("$ref");
                    let merged = match target {
                        Value::Object(t) => merge_schema(t, &rest),
                        _ => rest,
                    };
                    return self.value(&Value::Object(merged), name, depth + 1);
                }
            }
        }
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

    /// The schema a local `$ref` points to (`#` is the root; `#/$defs/x` a JSON Pointer).
    fn resolve(&self, r: &str) -> Option<&Value> {
        let pointer = r.strip_prefix('#')?;
        self.root.pointer(pointer).filter(|t| t.is_object())
    }

    pub(super) fn object(&self, s: &Map<String, Value>, depth: usize) -> Value {
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

    pub(super) fn array(&self, s: &Map<String, Value>, name: Option<&str>, depth: usize) -> Value {
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
        // Items that follow a `$ref` may nest without end (a tree): past half the depth, only
        // as many as `minItems` asks for.
        let by_ref = rest.as_ref().is_some_and(|r| r.get("$ref").is_some());
        let n = if by_ref && depth >= MAX_DEPTH / 2 {
            min.min(n)
        } else {
            n
        };
        let n = n.max(prefix.len().min(max.unwrap_or(usize::MAX)));
        let item_name = name.map(singular);
        // Keywords: the text's own content words, as many as allowed (up to five).
        let plain_strings = rest.as_ref().is_some_and(|r| {
            r.get("type").and_then(Value::as_str) == Some("string")
                && r.as_object().is_some_and(|o| o.len() == 1)
        });
        let is_keywords = name.is_some_and(|n| {
            name_words(n)
                .iter()
                .any(|w| ["keyword", "keywords", "keyphrases"].contains(&w.as_str()))
        });
        if plain_strings && prefix.is_empty() && is_keywords {
            let want = max.unwrap_or(5).clamp(min.max(1), 5.max(min));
            let words = key_words(payload(self.input), want);
            if words.len() >= min {
                return Value::Array(words.into_iter().map(Value::String).collect());
            }
        }
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

    pub(super) fn pick_enum(&self, opts: &[Value], default: Option<&Value>) -> Value {
        if let Some(v) = self.judged_option(opts) {
            return v;
        }
        let input = keywords(self.input);
        // Most words shared; of equals, the one whose words the input says first.
        let mut best: Option<(usize, usize, usize)> = None;
        for (i, o) in opts.iter().enumerate() {
            let words = match o {
                Value::String(t) => keywords(&t.replace('_', " ")),
                other => keywords(&other.to_string()),
            };
            let score = overlap(&words, &input);
            let first = words
                .iter()
                .filter_map(|w| input.iter().position(|x| x == w))
                .min()
                .unwrap_or(usize::MAX);
            if score > 0 && best.is_none_or(|(_, b, f)| score > b || (score == b && first < f)) {
                best = Some((i, score, first));
            }
        }
        if let Some((i, _, _)) = best {
            return opts[i].clone();
        }
        if let Some(d) = default.filter(|d| opts.iter().any(|o| json_eq(o, d))) {
            return d.clone();
        }
        opts[0].clone()
    }

    /// Options that are a judgement rather than a topic: a sentiment (positive, negative,
    /// neutral) by the text's opinion words, a verdict (publish / reject, ...) by whether the
    /// text looks like spam.
    fn judged_option(&self, opts: &[Value]) -> Option<Value> {
        let text = payload(self.input);
        let named = |o: &Value, w: &str| o.as_str().is_some_and(|s| s.eq_ignore_ascii_case(w));
        let find = |w: &str| opts.iter().find(|o| named(o, w)).cloned();
        if find("positive").is_some() && find("negative").is_some() {
            return find(super::intents::sentiment(text)).or_else(|| find("neutral"));
        }
        let reject = opts
            .iter()
            .find(|o| REJECT_OPTIONS.iter().any(|w| named(o, w)));
        let accept = opts
            .iter()
            .find(|o| ACCEPT_OPTIONS.iter().any(|w| named(o, w)));
        match (reject, accept) {
            (Some(r), Some(a)) => Some(if super::intents::is_spam(text) { r } else { a }.clone()),
            _ => None,
        }
    }

    pub(super) fn pick_alternative(
        &self,
        parent: &Map<String, Value>,
        key: &str,
        opts: &[Value],
        name: Option<&str>,
        depth: usize,
    ) -> Value {
        let whole = Check::of(parent, self.root);
        if let Some(c) = self.pick_const(parent, opts, &whole) {
            return c;
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
            if whole.accepts(&v) {
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
            root: self.root,
        };
        for m in &merged {
            let v = blank.value(m, name, depth + 1);
            if whole.accepts(&v) {
                return v;
            }
        }
        first.unwrap_or(Value::Null)
    }

    /// The router convention: every option is a `const`, most with a description. The option
    /// sharing the most words with the input, else the default, else the first that fits.
    fn pick_const(
        &self,
        parent: &Map<String, Value>,
        opts: &[Value],
        whole: &Check,
    ) -> Option<Value> {
        let consts: Vec<(&Value, String)> = opts
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
            .collect::<Option<_>>()?;
        let input = keywords(self.input);
        let mut best: Option<(usize, usize)> = None;
        for (i, (c, words)) in consts.iter().enumerate() {
            let score = overlap(&keywords(words), &input);
            if score > 0 && best.is_none_or(|(_, b)| score > b) && whole.accepts(c) {
                best = Some((i, score));
            }
        }
        if let Some((i, _)) = best {
            return Some(consts[i].0.clone());
        }
        if let Some(d) = parent.get("default") {
            if whole.accepts(d) {
                return Some(d.clone());
            }
        }
        consts
            .iter()
            .find(|(c, _)| whole.accepts(c))
            .map(|(c, _)| (*c).clone())
    }

    pub(super) fn string(&self, s: &Map<String, Value>, name: Option<&str>) -> String {
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
        match s.get("pattern").and_then(Value::as_str) {
            Some(p) => super::pattern::fit(text, p),
            None => text,
        }
    }

    /// A string in a JSON Schema `format`, from the input when it has one.
    pub(super) fn formatted(&self, format: &str) -> Option<String> {
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
}

pub(super) fn number_value(v: f64) -> Value {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        Value::from(v as i64)
    } else {
        Number::from_f64(v).map_or(Value::from(0), Value::Number)
    }
}

pub(super) fn is_null_schema(v: &Value) -> bool {
    v.get("type").and_then(Value::as_str) == Some("null") || v.get("const") == Some(&Value::Null)
}

/// The type a schema asks for (the first non-null one of a list), or the one its keywords imply.
pub(super) fn schema_type(s: &Map<String, Value>) -> &str {
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
pub(super) fn merge_schema(
    base: &Map<String, Value>,
    over: &Map<String, Value>,
) -> Map<String, Value> {
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

/// A schema generated values must satisfy, compiled by [`crate::schema`] (the one validator).
/// A part of a schema gets the root's `$defs`/`definitions`, so its `$ref`s resolve. A schema
/// that does not compile accepts everything: the generator still does its best.
pub(super) struct Check(Option<Arc<Schema>>);

impl Check {
    pub(super) fn of(s: &Map<String, Value>, root: &Value) -> Check {
        let mut s = s.clone();
        for defs in ["$defs", "definitions"] {
            if let Some(d) = root.get(defs) {
                s.entry(defs).or_insert_with(|| d.clone());
            }
        }
        Check(schema::compiled(&Value::Object(s)).ok())
    }

    pub(super) fn accepts(&self, v: &Value) -> bool {
        self.0.as_ref().is_none_or(|s| s.is_valid(v))
    }
}

/// JSON equality with numbers compared by value (1 == 1.0).
pub(super) fn json_eq(a: &Value, b: &Value) -> bool {
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
