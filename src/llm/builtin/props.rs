//! Property tests of the built-in model: generated values validate against generated schemas
//! (by the server's validator and by an independent one), text answers never fail, tool
//! arguments fit their parameters.

use proptest::prelude::*;
use serde_json::{json, Map, Value};

use super::tests::{answer_json, oracle_accepts, text_of, tools, validates};
use super::BuiltinModel;
use crate::llm::{ChatMessage, ChatRequest, LlmDelta, ToolDef};

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
