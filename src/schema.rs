//! A small JSON Schema checker for the subset assistants use: `type` (one or a list), `properties`,
//! `required`, `additionalProperties: false`, `items`, `enum`, `const`, `anyOf`/`oneOf`,
//! `minimum`/`maximum`, `minLength`/`maxLength`, `minItems`/`maxItems`.
//!
//! Used for `llm`/`agent` JSON outputs, tool arguments and input args. Errors name the path
//! (`$.amount`) so a person (or a model asked to repair its answer) can act on them.

use serde_json::Value;

const TYPES: &[&str] = &[
    "object", "array", "string", "number", "integer", "boolean", "null",
];

/// Check that a schema only uses what this module understands.
pub fn check_schema(schema: &Value) -> Result<(), String> {
    check_at(schema, "$")
}

fn check_at(schema: &Value, path: &str) -> Result<(), String> {
    let Some(obj) = schema.as_object() else {
        return Err(format!("schema at {path} must be a JSON object"));
    };
    match obj.get("type") {
        None => {}
        Some(Value::String(t)) if TYPES.contains(&t.as_str()) => {}
        Some(Value::Array(ts))
            if ts
                .iter()
                .all(|t| t.as_str().is_some_and(|t| TYPES.contains(&t))) => {}
        Some(other) => return Err(format!("schema at {path} has an unknown type {other}")),
    }
    if let Some(props) = obj.get("properties") {
        let Some(props) = props.as_object() else {
            return Err(format!("schema at {path}: properties must be an object"));
        };
        for (k, v) in props {
            check_at(v, &format!("{path}.{k}"))?;
        }
    }
    if let Some(req) = obj.get("required") {
        if !req
            .as_array()
            .is_some_and(|r| r.iter().all(Value::is_string))
        {
            return Err(format!(
                "schema at {path}: required must be a list of names"
            ));
        }
    }
    if let Some(items) = obj.get("items") {
        check_at(items, &format!("{path}[]"))?;
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(alts) = obj.get(key) {
            let Some(alts) = alts.as_array() else {
                return Err(format!("schema at {path}: {key} must be a list"));
            };
            for a in alts {
                check_at(a, path)?;
            }
        }
    }
    if let Some(e) = obj.get("enum") {
        if !e.is_array() {
            return Err(format!("schema at {path}: enum must be a list"));
        }
    }
    Ok(())
}

/// Validate a value; every problem is listed.
pub fn validate(schema: &Value, value: &Value) -> Result<(), Vec<String>> {
    let mut errs = Vec::new();
    validate_at(schema, value, "$", &mut errs);
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs)
    }
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

fn has_type(v: &Value, t: &str) -> bool {
    match t {
        "integer" => v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        "number" => v.is_number(),
        other => type_name(v) == other,
    }
}

fn validate_at(schema: &Value, v: &Value, path: &str, errs: &mut Vec<String>) {
    let Some(s) = schema.as_object() else { return };
    match s.get("type") {
        Some(Value::String(t)) if !has_type(v, t) => {
            errs.push(format!("{path} must be {t}, got {}", type_name(v)));
            return;
        }
        Some(Value::Array(ts)) if !ts.iter().filter_map(Value::as_str).any(|t| has_type(v, t)) => {
            errs.push(format!(
                "{path} has type {}, not one of {}",
                type_name(v),
                Value::Array(ts.clone())
            ));
            return;
        }
        _ => {}
    }
    if let Some(c) = s.get("const") {
        if c != v {
            errs.push(format!("{path} must be {c}"));
        }
    }
    if let Some(Value::Array(options)) = s.get("enum") {
        if !options.contains(v) {
            errs.push(format!(
                "{path} must be one of {}",
                Value::Array(options.clone())
            ));
        }
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(Value::Array(alts)) = s.get(key) {
            let ok = alts.iter().any(|a| {
                let mut e = Vec::new();
                validate_at(a, v, path, &mut e);
                e.is_empty()
            });
            if !ok {
                errs.push(format!("{path} matches none of the allowed alternatives"));
            }
        }
    }
    match v {
        Value::Object(map) => {
            if let Some(Value::Array(req)) = s.get("required") {
                for r in req.iter().filter_map(Value::as_str) {
                    if !map.contains_key(r) {
                        errs.push(format!("{path}.{r} is required"));
                    }
                }
            }
            let props = s.get("properties").and_then(Value::as_object);
            for (k, item) in map {
                match props.and_then(|p| p.get(k)) {
                    Some(ps) => validate_at(ps, item, &format!("{path}.{k}"), errs),
                    None => {
                        if s.get("additionalProperties") == Some(&Value::Bool(false)) {
                            errs.push(format!("{path}.{k} is not allowed"));
                        }
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(is) = s.get("items") {
                for (i, item) in items.iter().enumerate() {
                    validate_at(is, item, &format!("{path}[{i}]"), errs);
                }
            }
            if let Some(min) = s.get("minItems").and_then(Value::as_u64) {
                if (items.len() as u64) < min {
                    errs.push(format!("{path} needs at least {min} items"));
                }
            }
            if let Some(max) = s.get("maxItems").and_then(Value::as_u64) {
                if (items.len() as u64) > max {
                    errs.push(format!("{path} allows at most {max} items"));
                }
            }
        }
        Value::String(text) => {
            let n = text.chars().count() as u64;
            if let Some(min) = s.get("minLength").and_then(Value::as_u64) {
                if n < min {
                    errs.push(format!("{path} must have at least {min} characters"));
                }
            }
            if let Some(max) = s.get("maxLength").and_then(Value::as_u64) {
                if n > max {
                    errs.push(format!("{path} must have at most {max} characters"));
                }
            }
        }
        Value::Number(num) => {
            if let (Some(x), Some(min)) = (num.as_f64(), s.get("minimum").and_then(Value::as_f64)) {
                if x < min {
                    errs.push(format!("{path} must be ≥ {min}"));
                }
            }
            if let (Some(x), Some(max)) = (num.as_f64(), s.get("maximum").and_then(Value::as_f64)) {
                if x > max {
                    errs.push(format!("{path} must be ≤ {max}"));
                }
            }
        }
        _ => {}
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
}
