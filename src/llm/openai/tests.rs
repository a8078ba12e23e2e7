use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::StatusCode;
use serde_json::{json, Value};

use super::decode::Accumulator;
use super::errors::{retry_after, ErrorDetail};
use super::scrub::Scrubber;
use super::*;
use crate::config::LlmProviderKind;
use crate::llm::ToolCall;
use crate::llm::{ChatMessage, LlmDelta, ResponseFormat, ToolDef, Usage};

fn feed_all(chunks: &[&str]) -> (Accumulator, Result<(), LlmError>) {
    let mut acc = Accumulator::default();
    for c in chunks {
        if let Err(e) = acc.feed(c) {
            return (acc, Err(e));
        }
    }
    (acc, Ok(()))
}

fn cfg(json_schema: bool) -> LlmConfig {
    LlmConfig {
        provider: LlmProviderKind::Openai,
        base_url: Some("http://127.0.0.1:9/v1/".into()),
        model: Some("m1".into()),
        api_key_env: None,
        temperature: Some(0.7),
        max_tokens: Some(64),
        timeout_seconds: 5,
        max_concurrency: 2,
        max_retries: 1,
        json_schema,
        ..LlmConfig::new(LlmProviderKind::Openai)
    }
}

#[test]
fn text_reasoning_usage_and_done() {
    let (mut acc, r) = feed_all(&[
        r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#,
        r#"{"choices":[{"index":0,"delta":{"reasoning_content":"hmm"}}]}"#,
        r#"{"choices":[{"index":0,"delta":{"reasoning":"ok"}}]}"#,
        r#"{"choices":[{"index":0,"delta":{"content":"Hi"}}]}"#,
        r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
        r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#,
        "[DONE]",
    ]);
    r.unwrap();
    let got: Vec<_> = acc.pending.drain(..).collect();
    assert_eq!(
        got,
        vec![
            LlmDelta::Reasoning("hmm".into()),
            LlmDelta::Reasoning("ok".into()),
            LlmDelta::Text("Hi".into()),
            LlmDelta::Done {
                usage: Usage {
                    prompt_tokens: 3,
                    completion_tokens: 2,
                    total_tokens: 5
                },
                finish_reason: Some("stop".into())
            }
        ]
    );
}

#[test]
fn tool_calls_in_pieces() {
    let (mut acc, r) = feed_all(&[
        r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"c1","type":"function","function":{"name":"get_weather","arguments":""}}]}}]}"#,
        r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"ci"}}]}}]}"#,
        r#"{"choices":[{"delta":{"tool_calls":[{"index":1,"function":{"arguments":"{}"}}]}}]}"#,
        r#"{"choices":[{"delta":{"tool_calls":[{"index":1,"id":"c2","function":{"name":"now"}}]}}]}"#,
        r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"ty\":\"Oslo\"}"}}]}}]}"#,
        r#"{"choices":[{"delta":{},"finish_reason":"tool_calls"}]}"#,
    ]);
    r.unwrap();
    acc.end_of_stream().unwrap();
    let got: Vec<_> = acc.pending.drain(..).collect();
    assert_eq!(
        got,
        vec![
            LlmDelta::ToolCallStart {
                index: 0,
                id: "c1".into(),
                name: "get_weather".into()
            },
            LlmDelta::ToolCallArgs {
                index: 0,
                delta: "{\"ci".into()
            },
            LlmDelta::ToolCallStart {
                index: 1,
                id: "c2".into(),
                name: "now".into()
            },
            LlmDelta::ToolCallArgs {
                index: 1,
                delta: "{}".into()
            },
            LlmDelta::ToolCallArgs {
                index: 0,
                delta: "ty\":\"Oslo\"}".into()
            },
            LlmDelta::Done {
                usage: Usage::default(),
                finish_reason: Some("tool_calls".into())
            }
        ]
    );
}

#[test]
fn tool_calls_without_index_are_told_apart_by_id() {
    let (mut acc, r) = feed_all(&[
        r#"{"choices":[{"delta":{"tool_calls":[{"id":"a","function":{"name":"x","arguments":"{}"}}]}}]}"#,
        r#"{"choices":[{"delta":{"tool_calls":[{"id":"b","function":{"name":"y","arguments":"{}"}}]}}]}"#,
        "[DONE]",
    ]);
    r.unwrap();
    let starts: Vec<_> = acc
        .pending
        .drain(..)
        .filter_map(|d| match d {
            LlmDelta::ToolCallStart { index, name, .. } => Some((index, name)),
            _ => None,
        })
        .collect();
    assert_eq!(starts, vec![(0, "x".to_string()), (1, "y".to_string())]);
}

#[test]
fn early_end_and_bad_chunks_are_errors() {
    let (mut acc, r) = feed_all(&[r#"{"choices":[{"delta":{"content":"par"}}]}"#]);
    r.unwrap();
    let e = acc.end_of_stream().unwrap_err();
    assert!(
        matches!(&e, LlmError::Protocol(m) if m.contains("stream ended early")),
        "{e:?}"
    );

    let (_, r) = feed_all(&[r#"{"choices":[{"delta":{"content":"#]);
    assert!(matches!(r, Err(LlmError::Protocol(_))));

    let (_, r) = feed_all(&[r#"{"error":{"message":"model 'zz' not found"}}"#]);
    assert!(matches!(r, Err(LlmError::UnknownModel(_))), "{r:?}");
    let (_, r) = feed_all(&[r#"{"error":{"message":"content policy"}}"#]);
    assert!(matches!(r, Err(LlmError::Refused(m)) if m.contains("content policy")));

    // A finish reason without [DONE] is a complete answer.
    let (mut acc, r) =
        feed_all(&[r#"{"choices":[{"delta":{"content":"x"},"finish_reason":"length"}]}"#]);
    r.unwrap();
    acc.end_of_stream().unwrap();
    assert!(matches!(
        acc.pending.back(),
        Some(LlmDelta::Done { finish_reason: Some(r), .. }) if r == "length"
    ));
}

#[test]
fn whole_document_fallback() {
    let mut acc = Accumulator::default();
    acc.feed_document(
        r#"{"choices":[{"index":0,"message":{"role":"assistant","content":null,
            "tool_calls":[{"id":"t1","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]},
            "finish_reason":"tool_calls"}],"usage":{"prompt_tokens":1,"completion_tokens":1}}"#,
    )
    .unwrap();
    let got: Vec<_> = acc.pending.drain(..).collect();
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(
        got[1],
        LlmDelta::ToolCallArgs {
            index: 0,
            delta: "{\"a\":1}".into()
        }
    );
    assert!(matches!(
        got[2],
        LlmDelta::Done {
            usage: Usage {
                total_tokens: 2,
                ..
            },
            ..
        }
    ));
}

#[test]
fn request_body_shape() {
    let p = OpenAiProvider::from_config("t", &cfg(false)).unwrap();
    assert_eq!(
        p.endpoint.as_str(),
        "http://127.0.0.1:9/v1/chat/completions"
    );
    let mut asked = ChatMessage::assistant("");
    asked.tool_calls.push(ToolCall {
        id: "c1".into(),
        name: "lookup".into(),
        arguments: "{\"q\":1}".into(),
    });
    let req = ChatRequest {
        messages: vec![
            ChatMessage::user("hi"),
            asked,
            ChatMessage::tool_result("c1", "{\"r\":2}"),
        ],
        tools: vec![ToolDef {
            name: "lookup".into(),
            description: "Look things up".into(),
            parameters: Value::Null,
        }],
        response_format: ResponseFormat::Json {
            schema: json!({"type": "object", "properties": {"x": {"type": "string"}}}),
        },
        temperature: None,
        max_tokens: None,
    };
    let b = p.request_body(&req);
    assert_eq!(b["model"], "m1");
    assert_eq!(b["stream"], true);
    assert_eq!(b["stream_options"]["include_usage"], true);
    assert_eq!(b["temperature"].to_string(), "0.7");
    assert_eq!(b["max_tokens"], 64);
    assert_eq!(b["response_format"], json!({"type": "json_object"}));
    let msgs = b["messages"].as_array().unwrap();
    assert_eq!(msgs[0]["role"], "system");
    assert!(msgs[0]["content"].as_str().unwrap().contains("\"x\""));
    assert_eq!(msgs[2]["content"], Value::Null);
    assert_eq!(msgs[2]["tool_calls"][0]["function"]["name"], "lookup");
    assert_eq!(msgs[3]["tool_call_id"], "c1");
    assert_eq!(b["tools"][0]["type"], "function");
    assert_eq!(b["tools"][0]["function"]["parameters"]["type"], "object");

    let p = OpenAiProvider::from_config("t", &cfg(true)).unwrap();
    let b = p.request_body(&req);
    assert_eq!(b["response_format"]["type"], "json_schema");
    assert_eq!(b["response_format"]["json_schema"]["name"], "output");
    assert_eq!(b["messages"][0]["role"], "user");
}

#[test]
fn error_bodies() {
    let d = ErrorDetail::parse(r#"{"error":"model \"llama9\" not found, try pulling it first"}"#);
    assert!(d.is_model_not_found());
    let d = ErrorDetail::parse(
        r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#,
    );
    assert!(d.is_quota());
    assert!(d
        .describe(StatusCode::TOO_MANY_REQUESTS)
        .contains("exceeded"));
    let d = ErrorDetail::parse("<html>oops</html>");
    assert!(d.describe_plain().contains("oops"));
}

#[test]
fn scrubber_and_debug_hide_the_key() {
    let s = Scrubber(Some(Arc::from("sk-123")));
    assert_eq!(s.apply("bad key sk-123!"), "bad key [redacted]!");
    let p = OpenAiProvider::from_config("t", &cfg(false)).unwrap();
    assert!(format!("{p:?}").contains("<none>"));
}

#[test]
fn retry_after_headers() {
    let mut h = HeaderMap::new();
    h.insert("retry-after", HeaderValue::from_static("2"));
    assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
    h.insert("retry-after-ms", HeaderValue::from_static("150"));
    assert_eq!(retry_after(&h), Some(Duration::from_millis(150)));
    let h = HeaderMap::new();
    assert_eq!(retry_after(&h), None);
}
