//! JSON Schema, the one implementation: the [`jsonschema`] crate, draft 2020-12, formats
//! asserted (`email`, `date`, `uri`, ...; unknown formats are ignored).
//!
//! Used for `llm`/`agent` JSON outputs, tool arguments, input args' schema and by the built-in
//! model, which generates values and keeps the first one this module accepts. Assistants may
//! use the whole of 2020-12: `$ref`/`$defs`, `allOf`, `pattern`, `format`, `if`/`then`, ...
//! Nothing is fetched: a `$ref` to another document is an invalid schema (the crate is built
//! without its `resolve-http`/`resolve-file` features).
//!
//! **Compiled once, held by its owner.** A schema in an assistant definition (a node's output
//! schema, a tool's parameters, the input args, a router's choice) is a [`JsonSchema`]:
//! compiled when the definition is read, kept beside its JSON and checked with
//! [`JsonSchema::problem`] by the validator, so a run validates with the compiled form it
//! holds — no serialising, no lock, no lookup. [`compiled`] is for callers that are handed a
//! schema by value on each call (the built-in model, which sees only the request): it keeps
//! what it compiled, keyed by the schema's JSON text behind a mutex, bounded ([`CACHE_LIMIT`];
//! emptied when full, which only costs recompiling).
//!
//! **Errors name the path**, as `$`, `$.amount`, `$.items[0].name`, one message per problem
//! (`$.amount is required`, `$.tags[0] must be string, got number`), so a person (or a model
//! asked to repair its answer) can act on them. An invalid schema is reported as
//! `schema at <path>: <problem>` (`schema at $ has an unknown type "obj"`). [`Schema::problems`]
//! gives the same problems in parts ([`Problem`]: the path's segments and what is wrong), from
//! which input-arg checking builds its `{field, message}` details.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::paths::{Location, LocationSegment};
use jsonschema::{Draft, ValidationError, Validator};
use serde_json::Value;

/// How many compiled schemas [`compiled`] keeps before it starts over.
pub const CACHE_LIMIT: usize = 512;

/// A schema that cannot be compiled: its message names where in the schema the problem is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SchemaError(String);

/// A compiled schema.
pub struct Schema {
    validator: Validator,
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Schema")
    }
}

impl Schema {
    /// Compile `schema` (draft 2020-12 unless it names another with `$schema`).
    pub fn compile(schema: &Value) -> Result<Schema, SchemaError> {
        let validator = jsonschema::options()
            .with_draft(Draft::Draft202012)
            .should_validate_formats(true)
            .build(schema)
            .map_err(|e| SchemaError(schema_problem(&e)))?;
        Ok(Schema { validator })
    }

    /// Whether `value` satisfies the schema.
    pub fn is_valid(&self, value: &Value) -> bool {
        self.validator.is_valid(value)
    }

    /// Every problem of `value`, each naming its path.
    pub fn validate(&self, value: &Value) -> Result<(), Vec<String>> {
        if self.validator.is_valid(value) {
            return Ok(());
        }
        let mut errs: Vec<String> = Vec::new();
        for p in self.problems(value) {
            let m = p.to_string();
            if !errs.contains(&m) {
                errs.push(m);
            }
        }
        if errs.is_empty() {
            errs.push("$ does not match the schema".into());
        }
        Err(errs)
    }
}

/// A schema as written in a definition, compiled when it is read: serialises as, compares as
/// and shows as its JSON. One that does not compile still reads (so that the definition's
/// validator reports it with every other problem of the file, [`JsonSchema::problem`]); an
/// assistant holding one is never built.
#[derive(Clone)]
pub struct JsonSchema {
    source: Value,
    compiled: Result<Arc<Schema>, SchemaError>,
}

impl JsonSchema {
    /// Compile `source` (see [`Schema::compile`]).
    pub fn new(source: Value) -> JsonSchema {
        let compiled = Schema::compile(&source).map(Arc::new);
        JsonSchema { source, compiled }
    }

    /// The schema's JSON, as written.
    pub fn source(&self) -> &Value {
        &self.source
    }

    /// Why the schema does not compile (`None`: it does).
    pub fn problem(&self) -> Option<&SchemaError> {
        self.compiled.as_ref().err()
    }

    /// Whether `value` satisfies the schema (never, for a schema that does not compile).
    pub fn is_valid(&self, value: &Value) -> bool {
        self.compiled.as_ref().is_ok_and(|s| s.is_valid(value))
    }

    /// Every problem of `value`, each naming its path; an invalid schema is one problem.
    pub fn validate(&self, value: &Value) -> Result<(), Vec<String>> {
        match &self.compiled {
            Ok(s) => s.validate(value),
            Err(e) => Err(vec![format!("the schema is invalid: {e}")]),
        }
    }

    /// The compiled form, to iterate over a value's errors ([`Schema::errors`]).
    pub fn compiled(&self) -> Option<&Schema> {
        self.compiled.as_ref().ok().map(|s| &**s)
    }
}

impl std::fmt::Debug for JsonSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.source.fmt(f)
    }
}

impl PartialEq for JsonSchema {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl serde::Serialize for JsonSchema {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.source.serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for JsonSchema {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Value::deserialize(d).map(JsonSchema::new)
    }
}

static CACHE: LazyLock<Mutex<HashMap<String, Arc<Schema>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// `schema` compiled, from the cache when it was compiled before.
pub fn compiled(schema: &Value) -> Result<Arc<Schema>, SchemaError> {
    let key = schema.to_string();
    let cache = || {
        CACHE
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    };
    if let Some(s) = cache().get(&key) {
        return Ok(s.clone());
    }
    // Compiled outside the lock: two threads may compile the same schema once each.
    let s = Arc::new(Schema::compile(schema)?);
    let mut c = cache();
    if c.len() >= CACHE_LIMIT {
        c.clear();
    }
    c.insert(key, s.clone());
    Ok(s)
}

/// Check that `schema` is a valid JSON Schema (and compile it for later calls).
pub fn check_schema(schema: &Value) -> Result<(), String> {
    compiled(schema).map(|_| ()).map_err(|e| e.to_string())
}

/// Validate a value; every problem is listed. An invalid schema is one problem.
pub fn validate(schema: &Value, value: &Value) -> Result<(), Vec<String>> {
    match compiled(schema) {
        Ok(s) => s.validate(value),
        Err(e) => Err(vec![format!("the schema is invalid: {e}")]),
    }
}

/// `$`, `$.amount`, `$.items[0]`.
fn dollar_path(at: &Location) -> String {
    let mut out = String::from("$");
    for seg in at.segments() {
        match seg {
            LocationSegment::Property(p) => {
                out.push('.');
                out.push_str(&p);
            }
            LocationSegment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// One step of a value's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Key(String),
    Index(usize),
}

/// What is wrong at a place.
#[derive(Debug, Clone, PartialEq)]
pub enum What {
    /// A required property is missing (the path ends with its name).
    Required,
    /// A property that is not allowed (the path ends with its name).
    NotAllowed,
    /// The value's type is not `expected` (one type name, or an array of them).
    Type { expected: Value, got: &'static str },
    /// The value must be `const`.
    Const(Value),
    /// The value must be one of these (`enum`).
    Enum(Value),
    /// Anything else, in words, starting with its separator (`" must be ≥ 3"`, `": ..."`).
    Other(String),
}

/// One problem of a value: where (`at`, from the root) and what. Shown as
/// `$.items[0].name must be string, got number`.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub at: Vec<Segment>,
    pub what: What,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("$")?;
        for seg in &self.at {
            match seg {
                Segment::Key(k) => write!(f, ".{k}")?,
                Segment::Index(i) => write!(f, "[{i}]")?,
            }
        }
        match &self.what {
            What::Required => f.write_str(" is required"),
            What::NotAllowed => f.write_str(" is not allowed"),
            What::Type {
                expected: Value::String(t),
                got,
            } => write!(f, " must be {t}, got {got}"),
            What::Type { expected, got } => write!(f, " has type {got}, not one of {expected}"),
            What::Const(v) => write!(f, " must be {v}"),
            What::Enum(v) => write!(f, " must be one of {v}"),
            What::Other(m) => f.write_str(m),
        }
    }
}

impl Schema {
    /// Every problem of `value`, in parts (the crate's order; none when it is valid).
    pub fn problems(&self, value: &Value) -> Vec<Problem> {
        let mut out: Vec<Problem> = Vec::new();
        for e in self.validator.iter_errors(value) {
            for p in describe(&e) {
                if !out.contains(&p) {
                    out.push(p);
                }
            }
        }
        out
    }
}

/// The problems of one error of the crate, in this module's words.
fn describe(e: &ValidationError<'_>) -> Vec<Problem> {
    let at: Vec<Segment> = e
        .instance_path()
        .segments()
        .map(|seg| match seg {
            LocationSegment::Property(p) => Segment::Key(p.to_string()),
            LocationSegment::Index(i) => Segment::Index(i),
        })
        .collect();
    let got = type_name(e.instance());
    let here = |what: What| {
        vec![Problem {
            at: at.clone(),
            what,
        }]
    };
    let under = |name: String, what: What| {
        let mut at = at.clone();
        at.push(Segment::Key(name));
        Problem { at, what }
    };
    let other = |m: String| here(What::Other(m));
    match e.kind() {
        ValidationErrorKind::Required { property } => match property {
            Value::String(name) => vec![under(name.clone(), What::Required)],
            other => vec![under(other.to_string(), What::Required)],
        },
        ValidationErrorKind::AdditionalProperties { unexpected }
        | ValidationErrorKind::UnevaluatedProperties { unexpected } => unexpected
            .iter()
            .map(|k| under(k.clone(), What::NotAllowed))
            .collect(),
        ValidationErrorKind::Type {
            kind: TypeKind::Single(t),
        } => here(What::Type {
            expected: Value::from(t.to_string()),
            got,
        }),
        ValidationErrorKind::Type {
            kind: TypeKind::Multiple(ts),
        } => here(What::Type {
            expected: ts.iter().map(|t| Value::from(t.to_string())).collect(),
            got,
        }),
        ValidationErrorKind::Constant { expected_value } => {
            here(What::Const((**expected_value).clone()))
        }
        ValidationErrorKind::Enum { options } => here(What::Enum((**options).clone())),
        ValidationErrorKind::AnyOf { .. } | ValidationErrorKind::OneOfNotValid { .. } => {
            other(" matches none of the allowed alternatives".into())
        }
        ValidationErrorKind::OneOfMultipleValid { .. } => {
            other(" matches more than one of the alternatives".into())
        }
        ValidationErrorKind::Minimum { limit } => other(format!(" must be ≥ {limit}")),
        ValidationErrorKind::Maximum { limit } => other(format!(" must be ≤ {limit}")),
        ValidationErrorKind::ExclusiveMinimum { limit } => other(format!(" must be > {limit}")),
        ValidationErrorKind::ExclusiveMaximum { limit } => other(format!(" must be < {limit}")),
        ValidationErrorKind::MinLength { limit } => {
            other(format!(" must have at least {limit} characters"))
        }
        ValidationErrorKind::MaxLength { limit } => {
            other(format!(" must have at most {limit} characters"))
        }
        ValidationErrorKind::MinItems { limit } => other(format!(" needs at least {limit} items")),
        ValidationErrorKind::MaxItems { limit } => other(format!(" allows at most {limit} items")),
        ValidationErrorKind::Pattern { pattern } => {
            other(format!(" must match the pattern {pattern}"))
        }
        ValidationErrorKind::Format { format } => other(format!(" must be a valid {format}")),
        _ => other(format!(": {e}")),
    }
}

/// The message for a schema the crate refuses: where in the schema, and what.
fn schema_problem(e: &ValidationError<'_>) -> String {
    let at = e.instance_path();
    let last = at.segments().last().map(|s| match s {
        LocationSegment::Property(p) => p.to_string(),
        LocationSegment::Index(i) => i.to_string(),
    });
    // A meta-schema error: the instance is the schema itself.
    if last.as_deref() == Some("type") {
        let parent: Location = {
            let segs: Vec<LocationSegment<'_>> = at.segments().collect();
            segs[..segs.len() - 1].iter().cloned().collect()
        };
        return format!(
            "schema at {} has an unknown type {}",
            dollar_path(&parent),
            e.instance()
        );
    }
    match e.kind() {
        ValidationErrorKind::Referencing(r) => format!("schema at $: {r}"),
        _ if at.as_str().is_empty() => format!("schema at $: {e}"),
        _ => format!("schema at {}: {e}", dollar_path(at)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn validates_objects() {
        let s = json!({"type": "object", "required": ["amount"],
            "properties": {"amount": {"type": "number", "minimum": 0},
                           "kind": {"type": "string", "enum": ["taxi", "hotel"]},
                           "tags": {"type": "array", "items": {"type": "string"}}}});
        assert!(validate(&s, &json!({"amount": 3, "kind": "taxi", "tags": ["a"]})).is_ok());
        let e = validate(&s, &json!({"kind": "boat", "tags": [1]})).unwrap_err();
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(e.iter().any(|m| m.contains("$.amount is required")));
        assert!(e.iter().any(|m| m.contains("$.tags[0] must be string")));
        assert!(validate(&s, &json!({"amount": -1})).is_err());
        assert!(validate(&s, &json!("x")).is_err());
    }

    #[test]
    fn integers_and_alternatives() {
        assert!(validate(&json!({"type": "integer"}), &json!(3.0)).is_ok());
        assert!(validate(&json!({"type": "integer"}), &json!(3.5)).is_err());
        let s = json!({"anyOf": [{"const": "a"}, {"const": "b"}]});
        assert!(validate(&s, &json!("b")).is_ok());
        assert!(validate(&s, &json!("c")).is_err());
    }

    #[test]
    fn schema_checks() {
        assert!(
            check_schema(&json!({"type": "object", "properties": {"a": {"type": "string"}}}))
                .is_ok()
        );
        assert!(check_schema(&json!({"type": "obj"})).is_err());
        assert!(check_schema(&json!("string")).is_err());
        assert!(check_schema(&json!({"properties": {"a": {"type": 3}}})).is_err());
    }

    /// The whole of 2020-12: `$ref` into `$defs`, `allOf`, `pattern` and `format`, with every
    /// problem named by its path.
    #[test]
    fn refs_all_of_patterns_and_formats_name_the_path() {
        let s = json!({
            "$defs": {
                "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"},
                "contact": {"type": "object", "required": ["email"],
                            "properties": {"email": {"type": "string", "format": "email"}}}
            },
            "allOf": [
                {"$ref": "#/$defs/contact"},
                {"type": "object", "required": ["items"],
                 "properties": {"items": {"type": "array", "items": {"$ref": "#/$defs/code"}},
                                "on": {"type": "string", "format": "date"}}}
            ]
        });
        check_schema(&s).unwrap();
        let good = json!({"email": "ann@example.org", "items": ["ABC-12"], "on": "2024-05-03"});
        assert_eq!(validate(&s, &good), Ok(()));
        let e = validate(
            &s,
            &json!({"email": "not an address", "items": ["ABC-12", "abc"], "on": "May 3rd"}),
        )
        .unwrap_err();
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(
            e.iter().any(|m| m == "$.email must be a valid email"),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|m| m == "$.items[1] must match the pattern ^[A-Z]{3}-[0-9]{2}$"),
            "{e:?}"
        );
        assert!(e.iter().any(|m| m == "$.on must be a valid date"), "{e:?}");
        let e = validate(&s, &json!({"items": []})).unwrap_err();
        assert_eq!(e, vec!["$.email is required".to_string()]);
    }

    #[test]
    fn invalid_schemas_say_where() {
        assert_eq!(
            check_schema(&json!({"type": "obj"})).unwrap_err(),
            r#"schema at $ has an unknown type "obj""#
        );
        let e = check_schema(&json!({"properties": {"a": {"minLength": "x"}}})).unwrap_err();
        assert!(e.starts_with("schema at $.properties.a.minLength: "), "{e}");
        // Nothing is fetched.
        let e = check_schema(&json!({"$ref": "https://example.com/s.json"})).unwrap_err();
        assert!(e.starts_with("schema at $"), "{e}");
        assert!(validate(&json!({"type": "obj"}), &json!(1)).unwrap_err()[0]
            .starts_with("the schema is invalid: "));
    }

    #[test]
    fn compiled_once() {
        let s = json!({"type": "object", "title": "compiled_once"});
        let a = compiled(&s).unwrap();
        let b = compiled(&s).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(a.is_valid(&json!({})) && !a.is_valid(&json!([])));
    }
    /// A held schema reads as, compares as and serialises as its JSON; an invalid one still
    /// reads, says why, and fails every value.
    #[test]
    fn held_schemas_keep_their_json_and_their_problem() {
        let src = json!({"type": "object", "required": ["a"]});
        let s: JsonSchema = serde_json::from_value(src.clone()).unwrap();
        assert_eq!(s.source(), &src);
        assert_eq!(serde_json::to_value(&s).unwrap(), src);
        assert_eq!(s, JsonSchema::new(src.clone()));
        assert!(s.problem().is_none());
        assert!(s.is_valid(&json!({"a": 1})));
        assert_eq!(
            s.validate(&json!({})),
            Err(vec!["$.a is required".to_string()])
        );
        let bad = JsonSchema::new(json!({"type": "obj"}));
        assert_eq!(
            bad.problem().map(ToString::to_string).as_deref(),
            Some(r#"schema at $ has an unknown type "obj""#)
        );
        assert!(!bad.is_valid(&json!({})));
        assert!(bad.validate(&json!({})).unwrap_err()[0].starts_with("the schema is invalid: "));
    }

    /// The hot path, measured (debug build; `cargo test --lib schema_hot_path -- --ignored
    /// --nocapture`): a run's validation with the schema held (no serialising, no lock) beside
    /// the cache keyed by the schema's text that runs used before.
    #[test]
    #[ignore]
    fn schema_hot_path_timing() {
        use std::time::Instant;
        let schema = json!({"type": "object", "required": ["amount", "category", "date"],
        "properties": {
            "amount": {"type": "number", "minimum": 0},
            "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
            "category": {"type": "string", "enum": ["taxi", "hotel", "meal", "train"]},
            "date": {"type": "string", "format": "date"},
            "note": {"type": "string", "maxLength": 200},
            "tags": {"type": "array", "items": {"type": "string"}}
        }});
        let value = json!({"amount": 42.5, "currency": "EUR", "category": "taxi",
            "date": "2024-05-03", "note": "airport", "tags": ["client", "q2"]});
        let n = 20_000u32;
        let held = JsonSchema::new(schema.clone());
        let time = |f: &dyn Fn() -> bool| {
            for _ in 0..1000 {
                assert!(f());
            }
            let t = Instant::now();
            for _ in 0..n {
                assert!(f());
            }
            t.elapsed().as_nanos() / u128::from(n)
        };
        let by_text = time(&|| validate(&schema, &value).is_ok());
        let held_ns = time(&|| held.validate(&value).is_ok());
        let held_valid = time(&|| held.is_valid(&value));
        println!(
            "schema hot path, ns per validation: cache by text {by_text}, held {held_ns}, held is_valid {held_valid}"
        );
    }
}
