//! `check_args`: a message's args against the assistant's `inputArgs`.

use super::*;

pub(super) fn args_assistant() -> Assistant {
    let mut d = minimal();
    d["inputArgs"] = json!([
        {"name": "department", "type": "string", "required": true, "enum": ["sales", "r&d"], "title": "Department"},
        {"name": "limit", "type": "number", "default": 500},
        {"name": "count", "type": "integer"},
        {"name": "urgent", "type": "boolean", "default": false},
        {"name": "tags", "type": "array"},
        {"name": "meta", "type": "object"}
    ]);
    ok(d)
}

pub(super) fn details(e: &crate::error::ApiError) -> Vec<(String, String)> {
    e.details
        .as_ref()
        .and_then(Value::as_array)
        .map(|d| {
            d.iter()
                .map(|x| {
                    (
                        x["field"].as_str().unwrap_or("").to_string(),
                        x["message"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn check_args_fills_defaults() {
    let a = args_assistant();
    let out = a
        .check_args(Some(
            &json!({"department": "sales", "count": 3, "tags": ["a"]}),
        ))
        .unwrap();
    assert_eq!(
        Value::Object(out),
        json!({"department": "sales", "limit": 500, "count": 3, "urgent": false, "tags": ["a"]})
    );
    // null counts as absent.
    let out = a
        .check_args(Some(
            &json!({"department": "r&d", "limit": null, "count": 2.0}),
        ))
        .unwrap();
    assert_eq!(out["limit"], 500);
    assert_eq!(out["count"], 2.0);
}

#[test]
fn check_args_names_every_bad_field() {
    let a = args_assistant();
    let e = a
        .check_args(Some(
            &json!({"limit": "high", "department": "hr", "count": 1.5,
                                 "urgent": "yes", "tags": {}, "meta": [], "color": "red"}),
        ))
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidArgs);
    let d = details(&e);
    let fields: Vec<&str> = d.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(
        fields,
        [
            "department",
            "limit",
            "count",
            "urgent",
            "tags",
            "meta",
            "color"
        ]
    );
    assert!(
        d[0].1.contains("must be one of [\"sales\",\"r&d\"]"),
        "{}",
        d[0].1
    );
    assert_eq!(d[1].1, "must be number");
    assert_eq!(d[2].1, "must be integer");
    assert_eq!(d[6].1, "is not an input arg of this assistant");
    for f in fields {
        assert!(e.message.contains(f), "{}", e.message);
    }
    // Missing required.
    let e = a.check_args(None).unwrap_err();
    assert_eq!(
        details(&e),
        [("department".to_string(), "is required".to_string())]
    );
    // Not an object at all.
    let e = a.check_args(Some(&json!([1]))).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidArgs);
    assert_eq!(details(&e)[0].0, "args");
}

#[test]
fn input_schema_describes_the_args() {
    let a = args_assistant();
    let s = a.input_schema();
    assert_eq!(s["required"], json!(["department"]));
    assert_eq!(
        s["properties"]["department"]["enum"],
        json!(["sales", "r&d"])
    );
    assert_eq!(s["properties"]["department"]["title"], "Department");
    assert_eq!(s["properties"]["limit"]["default"], 500);
    assert_eq!(s["additionalProperties"], false);
    assert!(crate::schema::check_schema(&s).is_ok());
    assert!(crate::schema::validate(&s, &json!({"department": "sales"})).is_ok());
}
