//! Tests of the built-in model.

use super::extract::*;
use super::*;
use crate::llm::{ChatMessage, ToolCall};
use crate::llm::{ResponseFormat, ToolDef};
use futures_util::TryStreamExt;
use serde_json::json;
use serde_json::Value;

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

pub(super) fn json_req(schema: Value, text: &str) -> ChatRequest {
    ChatRequest {
        messages: vec![ChatMessage::user(text)],
        response_format: ResponseFormat::Json { schema },
        ..Default::default()
    }
}

pub(super) fn text_of(deltas: &[LlmDelta]) -> String {
    deltas
        .iter()
        .filter_map(|d| match d {
            LlmDelta::Text(t) => Some(t.as_str()),
            _ => None,
        })
        .collect()
}

pub(super) fn answer_text(req: &ChatRequest) -> String {
    text_of(&BuiltinModel::new(0).answer(req))
}

pub(super) fn answer_json(schema: &Value, text: &str) -> Value {
    let s = answer_text(&json_req(schema.clone(), text));
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// An independent validator (the `jsonschema` crate), formats included.
pub(super) fn oracle_accepts(schema: &Value, v: &Value) -> bool {
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(schema)
        .unwrap_or_else(|e| panic!("bad test schema {schema}: {e}"));
    validator.is_valid(v)
}

/// The generator's own check: [`crate::schema`], the one validator of the server.
pub(super) fn validates(schema: &Value, v: &Value) -> bool {
    crate::schema::compiled(schema).is_ok_and(|s| s.is_valid(v))
}

pub(super) fn tools() -> Vec<ToolDef> {
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
    let text =
        "On 2024-03-05 I took an urgent taxi to the airport for 45.50 EUR, mail ann@example.org";
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
        "Here is what I found. Get weather: temp 21, sky clear."
    );
    // A new user turn after the results may call the tool again.
    let mut again = req.clone();
    again
        .messages
        .push(ChatMessage::user("and get_weather for Rome"));
    let d = BuiltinModel::new(0).answer(&again);
    assert!(matches!(&d[0], LlmDelta::ToolCallStart { .. }), "{d:?}");
}

/// The model writes values for the whole of JSON Schema 2020-12 that the server's validator
/// accepts: `$ref` into `$defs` (recursive too), `allOf`, `pattern` and `format`.
#[test]
fn json_satisfies_refs_all_of_patterns_and_formats() {
    let s = json!({
        "$defs": {
            "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"},
            "contact": {"type": "object", "required": ["email"],
                        "properties": {"email": {"type": "string", "format": "email"}}},
            "node": {"type": "object", "required": ["label", "children"],
                     "properties": {"label": {"type": "string", "minLength": 1},
                                    "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}
        },
        "allOf": [
            {"$ref": "#/$defs/contact"},
            {"type": "object", "required": ["items", "on", "tree"],
             "properties": {"items": {"type": "array", "items": {"$ref": "#/$defs/code"}, "minItems": 2},
                            "on": {"type": "string", "format": "date"},
                            "kind": {"anyOf": [{"$ref": "#/$defs/code"}, {"type": "null"}]},
                            "tree": {"$ref": "#/$defs/node"}}}
        ]
    });
    for text in [
        "",
        "Mail ann@example.org about ABC-12 on 2024-05-03",
        "taxi 45 EUR",
    ] {
        let v = answer_json(&s, text);
        assert_eq!(crate::schema::validate(&s, &v), Ok(()), "{text:?} gave {v}");
        assert!(oracle_accepts(&s, &v), "{text:?} gave {v}");
    }
    let v = answer_json(&s, "Mail ann@example.org about it on 2024-05-03");
    assert_eq!(v["email"], "ann@example.org");
    assert_eq!(v["on"], "2024-05-03");
    assert_eq!(v["items"][0], "AAA-00");
    // The same schema as a tool's parameters.
    let req = ChatRequest {
        messages: vec![ChatMessage::user("use file_it for ann@example.org")],
        tools: vec![ToolDef {
            name: "file_it".into(),
            description: "File it".into(),
            parameters: s.clone(),
        }],
        ..Default::default()
    };
    let args: String = BuiltinModel::new(0)
        .answer(&req)
        .iter()
        .filter_map(|x| match x {
            LlmDelta::ToolCallArgs { delta, .. } => Some(delta.as_str()),
            _ => None,
        })
        .collect();
    let args: Value = serde_json::from_str(&args).unwrap();
    assert_eq!(crate::schema::validate(&s, &args), Ok(()), "{args}");
}
