//! The OpenAI-compatible front (`/v1`, CONTRACT §8) on the wire: real HTTP, SSE parsed by hand.
//! The official Python client is exercised by `tests/openai/` (run by scripts/test); these
//! tests pin the shapes it relies on.

use serde_json::{json, Value};

use crate::common::*;

const CONV: &str = "x-parley-conversation-id";

/// An SSE answer being read message by message.
struct Sse {
    resp: reqwest::Response,
    buf: String,
}

impl Sse {
    /// The next `data:` payload, or `None` at the end of the body.
    async fn next(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.buf.find("\n\n") {
                let msg: String = self.buf.drain(..i + 2).collect();
                let data: Vec<&str> = msg
                    .lines()
                    .filter_map(|l| l.strip_prefix("data: "))
                    .collect();
                if !data.is_empty() {
                    return Some(data.join("\n"));
                }
                continue;
            }
            let chunk = tokio::time::timeout(WAIT, self.resp.chunk())
                .await
                .expect("the stream stalled")
                .expect("read")?;
            self.buf
                .push_str(std::str::from_utf8(&chunk).expect("utf-8"));
        }
    }

    /// Every remaining payload.
    async fn rest(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(d) = self.next().await {
            out.push(d);
        }
        out
    }
}

async fn completions(s: &Server, body: Value, conversation: Option<&str>) -> reqwest::Response {
    let mut rb = http().post(s.http("/v1/chat/completions")).json(&body);
    if let Some(c) = conversation {
        rb = rb.header("X-Parley-Conversation-Id", c);
    }
    rb.send().await.expect("request")
}

async fn stream(s: &Server, body: Value, conversation: Option<&str>) -> (String, Sse) {
    let resp = completions(s, body, conversation).await;
    assert_eq!(resp.status().as_u16(), 200);
    let ty = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ty.starts_with("text/event-stream"), "{ty}");
    let cid = resp.headers()[CONV].to_str().unwrap().to_owned();
    (
        cid,
        Sse {
            resp,
            buf: String::new(),
        },
    )
}

/// Check the invariants of a streamed answer and give its chunks: `[DONE]` last, one id, the
/// role first, nothing but the usage chunk after `finish_reason`, exactly one finish.
fn check_chunks(data: &[String], usage: bool) -> Vec<Value> {
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}")))
        .collect();
    assert!(!chunks.is_empty());
    let id = chunks[0]["id"].as_str().expect("id").to_owned();
    assert!(id.starts_with("chatcmpl-"), "{id}");
    for c in &chunks {
        assert_eq!(c["id"], id.as_str(), "chunk ids are stable: {c}");
        assert_eq!(c["object"], "chat.completion.chunk");
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks[1..]
        .iter()
        .all(|c| c["choices"][0]["delta"].get("role").is_none()));
    let finish = chunks
        .iter()
        .position(|c| !c["choices"][0]["finish_reason"].is_null())
        .expect("a finish_reason");
    let after = &chunks[finish + 1..];
    if usage {
        assert_eq!(
            after.len(),
            1,
            "only the usage chunk follows the finish: {after:?}"
        );
        assert_eq!(after[0]["choices"], json!([]));
        let u = &after[0]["usage"];
        assert_eq!(
            u["total_tokens"].as_u64().unwrap(),
            u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap()
        );
    } else {
        assert!(after.is_empty(), "nothing after the finish: {after:?}");
    }
    assert!(chunks[..finish]
        .iter()
        .all(|c| c["choices"][0]["finish_reason"].is_null()));
    chunks
}

fn text_of(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

#[tokio::test]
async fn openai_streamed_chunks_keep_one_id_role_first_and_nothing_after_the_finish() {
    let s = Server::start();
    let body = json!({"model": "chat", "messages": [{"role": "user", "content": "the rivers of Europe"}],
        "stream": true, "stream_options": {"include_usage": true}});
    let (cid, mut sse) = stream(&s, body, None).await;
    let chunks = check_chunks(&sse.rest().await, true);
    let text = text_of(&chunks);
    assert!(text.contains("rivers of Europe"), "{text}");
    let contents = chunks
        .iter()
        .filter(|c| c["choices"][0]["delta"]["content"].is_string())
        .count();
    assert!(contents > 1, "text is streamed as it is produced");
    let finish = chunks.iter().rev().nth(1).unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    // The content is the text the conversation stored.
    let msgs = get_json(&s, &format!("/api/conversations/{cid}/messages")).await;
    let stored: Vec<&str> = msgs["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "assistant")
        .filter_map(|m| m["content"].as_str())
        .collect();
    assert_eq!(stored, vec![text.as_str()]);
}

#[tokio::test]
async fn openai_a_pause_streams_as_tool_calls_and_a_tool_message_resumes() {
    let s = Server::start();
    let body = json!({"model": "approval", "messages": [{"role": "user", "content": "a new laptop"}],
        "stream": true});
    let (cid, mut sse) = stream(&s, body, None).await;
    let chunks = check_chunks(&sse.rest().await, false);
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array())
        .flatten()
        .collect();
    assert_eq!(calls.len(), 1, "{chunks:?}");
    assert_eq!(calls[0]["index"], 0);
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], "parley_confirmation");
    let interrupt: Value =
        serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
    let iid = calls[0]["id"].as_str().unwrap();
    assert_eq!(interrupt["id"], iid);
    assert_eq!(interrupt["buttons"], json!(["approve", "reject"]));
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );
    // The conversation says the same.
    let conv = get_json(&s, &format!("/api/conversations/{cid}")).await;
    assert_eq!(conv["pendingInterrupts"][0]["id"], iid);

    // Answer with a tool message (non-streamed), the conversation named in the body.
    let answer = json!({"model": "approval", "parley": {"conversationId": cid}, "messages": [
        {"role": "user", "content": "a new laptop"},
        {"role": "assistant", "content": null, "tool_calls": [calls[0]]},
        {"role": "tool", "tool_call_id": iid, "content": "{\"action\": \"approve\"}"}]});
    let r = completions(&s, answer.clone(), None).await;
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()[CONV].to_str().unwrap(), cid);
    let done: Value = r.json().await.unwrap();
    assert_eq!(done["object"], "chat.completion");
    assert_eq!(done["choices"][0]["finish_reason"], "stop");
    assert_eq!(done["choices"][0]["logprobs"], Value::Null);
    assert_eq!(
        done["choices"][0]["message"]["content"],
        "Approved: a new laptop (42)"
    );
    // The same answer again: 409 interrupt_not_pending, not to be retried, nothing applied.
    let r = completions(&s, answer, None).await;
    assert_eq!(r.status().as_u16(), 409);
    assert_eq!(r.headers()["x-should-retry"], "false");
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "interrupt_not_pending");
    let msgs = get_json(&s, &format!("/api/conversations/{cid}/messages")).await;
    let approved = msgs["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["content"] == "Approved: a new laptop (42)")
        .count();
    assert_eq!(approved, 1);
}

#[tokio::test]
async fn openai_errors_have_openai_shape_and_change_nothing() {
    let s = Server::start();
    let user = json!([{"role": "user", "content": "hi"}]);
    let cases = [
        (
            json!({"model": "nope", "messages": user}),
            404,
            "unknown_assistant",
            json!("model"),
        ),
        (
            json!({"model": "args", "messages": user, "parley": {"args": {"department": "hr"}}}),
            422,
            "invalid_args",
            json!("parley.args"),
        ),
        (
            json!({"model": "chat", "messages": [{"role": "system", "content": "x"}]}),
            400,
            "bad_request",
            json!("messages"),
        ),
        (json!({"model": "chat"}), 400, "bad_request", Value::Null),
        (
            json!({"model": "chat", "messages": user, "parley": {"conversationId": "missing"}}),
            404,
            "conversation_not_found",
            json!("conversationId"),
        ),
    ];
    for (body, status, code, param) in cases {
        let r = completions(&s, body.clone(), None).await;
        assert_eq!(r.status().as_u16(), status, "{body}");
        assert!(r.headers().get("x-should-retry").is_none());
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], code, "{e}");
        assert_eq!(e["error"]["type"], "invalid_request_error");
        assert_eq!(e["error"]["param"], param, "{e}");
        assert!(e["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    // Nothing was stored by any of them.
    let list = get_json(&s, "/api/conversations").await;
    assert_eq!(list["items"], json!([]), "{list}");
    // Not JSON at all.
    let r = http()
        .post(s.http("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let models: Value = get_json(&s, "/v1/models").await;
    assert_eq!(models["object"], "list");
    assert!(models["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["id"] == "chat" && m["object"] == "model" && m["owned_by"] == "parley"));
}

#[tokio::test]
async fn openai_a_busy_conversation_is_409_not_to_be_retried() {
    let s = Server::start();
    let body = json!({"model": "slow", "messages": [{"role": "user", "content": "the history of canals"}],
        "stream": true});
    let (cid, mut sse) = stream(&s, body, None).await;
    let first: Value = serde_json::from_str(&sse.next().await.expect("a first chunk")).unwrap();
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    let r = completions(
        &s,
        json!({"model": "slow", "messages": [{"role": "user", "content": "again"}]}),
        Some(&cid),
    )
    .await;
    assert_eq!(r.status().as_u16(), 409);
    assert_eq!(r.headers()["x-should-retry"], "false");
    assert_eq!(r.headers()[CONV].to_str().unwrap(), cid);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "conversation_busy");
    // The first answer goes on to its end undisturbed.
    let mut data = vec![first.to_string()];
    data.extend(sse.rest().await);
    check_chunks(&data, false);
}

#[tokio::test]
async fn openai_token_auth_answers_401_in_openai_shape() {
    let token = "pk_openai_wire_test";
    let s = Server::start_with(Options {
        extra_config: format!(
            "[auth]\nmode = \"token\"\n[[auth.tokens]]\nuser = \"alice\"\nsha256 = \"{}\"\n",
            parley::gateway::auth::hash_token(token)
        ),
        ..Options::default()
    });
    for auth in [None, Some("Bearer pk_wrong")] {
        let mut rb = http().get(s.http("/v1/models"));
        if let Some(a) = auth {
            rb = rb.header("Authorization", a);
        }
        let r = rb.send().await.unwrap();
        assert_eq!(r.status().as_u16(), 401);
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "unauthorized");
        assert_eq!(e["error"]["type"], "invalid_request_error");
    }
    let r = http()
        .post(s.http("/v1/chat/completions"))
        .bearer_auth(token)
        .json(&json!({"model": "chat", "messages": [{"role": "user", "content": "hello"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let c: Value = r.json().await.unwrap();
    assert!(c["usage"]["total_tokens"].as_u64().unwrap() > 0, "{c}");
}
