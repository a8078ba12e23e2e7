//! Validation tests: one per problem `compile` reports (file, location and message checked),
//! all problems of a file at once, automated classification, `check_args` and `Catalog`.

use serde_json::{json, Value};

use super::model::ToolKind;
use super::*;
use crate::error::ErrorCode;

fn opts() -> LoadOptions {
    LoadOptions {
        llms: vec!["default".into(), "fast".into()],
        ..LoadOptions::default()
    }
}

fn compile_def(def: &Value) -> Result<Assistant, Vec<DefinitionError>> {
    compile("bad.json", "bad", &def.to_string(), &opts())
}

fn ok(def: Value) -> Assistant {
    compile_def(&def).unwrap_or_else(|e| panic!("should compile: {e:#?}"))
}

fn errs(def: Value) -> Vec<DefinitionError> {
    match compile_def(&def) {
        Ok(_) => panic!("should not compile: {def}"),
        Err(e) => e,
    }
}

/// The only error of a definition; its location and a piece of its message are checked.
#[track_caller]
fn one(def: Value, location: &str, message: &str) -> DefinitionError {
    let e = errs(def);
    assert_eq!(e.len(), 1, "expected one error, got {e:#?}");
    let e = e.into_iter().next().unwrap();
    assert_eq!(e.file, "bad.json");
    assert_eq!(e.location, location, "{e:?}");
    assert!(
        e.message.contains(message),
        "'{}' does not contain '{message}'",
        e.message
    );
    e
}

/// start → a → end, with `a` given (leaving by a port its type has).
fn with_node(a: Value) -> Value {
    let mut out = json!({"from": "a", "to": "end"});
    match a["type"].as_str() {
        Some("iteration") => out["port"] = json!("done"),
        Some("conversation_action") => out["port"] = json!("reply"),
        Some("condition") => out["port"] = json!("else"),
        _ => {}
    }
    json!({
        "nodes": [{"id": "start", "type": "start"}, a,
                  {"id": "end", "type": "end", "description": "The end"}],
        "edges": [{"from": "start", "to": "a"}, out]
    })
}

fn minimal() -> Value {
    json!({
        "nodes": [{"id": "start", "type": "start"}, {"id": "end", "type": "end"}],
        "edges": [{"from": "start", "to": "end"}]
    })
}

// ---------------------------------------------------------------------------------------------
// The tests, one file a topic

mod args;
mod catalog;
mod classify;
mod compiled;
mod loader_fuzz;
mod problems;
mod well_formed;
