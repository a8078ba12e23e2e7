//! The HTTP API (CONTRACT §3) against the real server.

use serde_json::{json, Value};

use crate::common::*;

async fn get(s: &Server, path: &str) -> (u16, Value) {
    let r = http().get(s.http(path)).send().await.expect("GET");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn post(s: &Server, path: &str, body: Value) -> (u16, Value) {
    let r = http()
        .post(s.http(path))
        .json(&body)
        .send()
        .await
        .expect("POST");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn post_raw(s: &Server, path: &str, body: &str) -> (u16, Value) {
    let r = http()
        .post(s.http(path))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("POST");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

#[tokio::test]
async fn assistants_are_listed_with_schema_and_automation() {
    let s = Server::start();
    let (st, list) = get(&s, "/api/assistants").await;
    assert_eq!(st, 200);
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"chat") && ids.contains(&"approval"));
    let chat = list
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == "chat")
        .unwrap();
    assert_eq!(chat["automated"], true);
    assert_eq!(chat["welcomeMessage"], "Hello! Ask me anything.");
    assert_eq!(chat["prologues"], json!(["What can you do?"]));
    let approval = list
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == "approval")
        .unwrap();
    assert_eq!(approval["automated"], false);

    let (st, a) = get(&s, "/api/assistants/args").await;
    assert_eq!(st, 200);
    assert_eq!(
        a["inputSchema"]["properties"]["department"]["enum"],
        json!(["sales", "r&d"])
    );
    assert_eq!(a["inputSchema"]["required"], json!(["department"]));
    assert_eq!(
        a["inputSchema"]["properties"]["limit"]["default"],
        json!(500)
    );
    let (st, e) = get(&s, "/api/assistants/nope").await;
    assert_eq!((st, code(&e)), (404, "unknown_assistant"));
}

#[tokio::test]
async fn invoke_runs_to_completion_and_stores_the_conversation() {
    let s = Server::start();
    let (st, r) = post(
        &s,
        "/api/assistants/args/invoke",
        json!({"content": "taxi", "args": {"department": "r&d"}}),
    )
    .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["status"], "completed");
    assert_eq!(r["output"], json!({"summary": "r&d / 500: taxi"}));
    let msgs = r["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0]["role"], "user");
    assert_eq!(msgs[1]["content"], "r&d / 500: taxi");
    let conv = r["conversationId"].as_str().unwrap();
    let (st, rec) = get(&s, &format!("/api/conversations/{conv}")).await;
    assert_eq!(st, 200);
    assert_eq!(rec["status"], "completed");
    assert_eq!(rec["assistant"], "args");

    // Multi-turn: continue the same conversation.
    let (st, r2) = post(
        &s,
        "/api/assistants/chat/invoke",
        json!({"content": "first"}),
    )
    .await;
    assert_eq!(st, 200, "{r2}");
    let c2 = r2["conversationId"].as_str().unwrap();
    let (st, r3) = post(
        &s,
        "/api/assistants/chat/invoke",
        json!({"content": "second", "conversationId": c2}),
    )
    .await;
    assert_eq!(st, 200, "{r3}");
    assert_eq!(r3["conversationId"], json!(c2));
    let (_, m) = get(&s, &format!("/api/conversations/{c2}/messages")).await;
    assert_eq!(m["items"].as_array().unwrap().len(), 4);
    // Wrong assistant for that conversation: for this route it does not exist.
    let (st, e) = post(
        &s,
        "/api/assistants/args/invoke",
        json!({"content": "x", "conversationId": c2, "args": {"department": "sales"}}),
    )
    .await;
    assert_eq!((st, code(&e)), (404, "conversation_not_found"));
}

#[tokio::test]
async fn invoke_refusals() {
    let s = Server::start();
    let (st, e) = post(
        &s,
        "/api/assistants/approval/invoke",
        json!({"content": "x"}),
    )
    .await;
    assert_eq!((st, code(&e)), (409, "assistant_not_automated"));
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("node 'confirm'"),
        "{e}"
    );
    let (st, e) = post(&s, "/api/assistants/page/invoke", json!({"content": "x"})).await;
    assert_eq!((st, code(&e)), (409, "assistant_not_automated"));
    let (st, e) = post(&s, "/api/assistants/nope/invoke", json!({"content": "x"})).await;
    assert_eq!((st, code(&e)), (404, "unknown_assistant"));
    let (st, e) = post(
        &s,
        "/api/assistants/args/invoke",
        json!({"content": "x", "args": {"department": 3}}),
    )
    .await;
    assert_eq!((st, code(&e)), (422, "invalid_args"));
    assert_eq!(e["error"]["details"][0]["field"], "department");
    let (st, e) = post_raw(&s, "/api/assistants/chat/invoke", "{\"content\": ").await;
    assert_eq!((st, code(&e)), (400, "bad_request"));
    let (st, e) = post(&s, "/api/assistants/chat/invoke", json!({"content": 5})).await;
    assert_eq!((st, code(&e)), (400, "bad_request"));
    assert!(
        e["error"]["message"].as_str().unwrap().contains("content")
            || e["error"]["message"].as_str().unwrap().contains("string"),
        "{e}"
    );
    let (st, e) = post(
        &s,
        "/api/assistants/chat/invoke",
        json!({"content": "x", "conversationId": "nope"}),
    )
    .await;
    assert_eq!((st, code(&e)), (404, "conversation_not_found"));
    // Over its time budget: cancelled and 504.
    let (st, e) = post(
        &s,
        "/api/assistants/slow/invoke",
        json!({"content": "x", "timeoutSeconds": 0.3}),
    )
    .await;
    assert_eq!((st, code(&e)), (504, "run_timeout"));
    let conv = e["error"]["details"]["conversationId"]
        .as_str()
        .unwrap()
        .to_string();
    // The run was cancelled, and the conversation is stored like any other by the time the
    // answer arrives.
    let (st, rec) = get(&s, &format!("/api/conversations/{conv}")).await;
    assert_eq!(
        (st, rec["status"].as_str()),
        (200, Some("cancelled")),
        "{rec}"
    );
}

#[tokio::test]
async fn conversations_list_page_rename_delete() {
    let s = Server::start();
    let mut ids = Vec::new();
    for i in 0..7 {
        let (st, r) = post(
            &s,
            "/api/assistants/chat/invoke",
            json!({"content": format!("message number {i}")}),
        )
        .await;
        assert_eq!(st, 200);
        ids.push(r["conversationId"].as_str().unwrap().to_string());
    }
    // Newest activity first, pages of 3, no skip, no duplicate.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("/api/conversations?limit=3&cursor={c}"),
            None => "/api/conversations?limit=3".to_string(),
        };
        let (st, page) = get(&s, &q).await;
        assert_eq!(st, 200, "{page}");
        for it in page["items"].as_array().unwrap() {
            seen.push(it["id"].as_str().unwrap().to_string());
        }
        match page["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let mut expected = ids.clone();
    expected.reverse();
    assert_eq!(seen, expected);
    let (_, filtered) = get(&s, "/api/conversations?assistant=approval").await;
    assert_eq!(filtered["items"].as_array().unwrap().len(), 0);
    let (st, e) = get(&s, "/api/conversations?limit=500").await;
    assert_eq!((st, code(&e)), (400, "bad_request"));

    // Title = first 20 characters; rename.
    let id = &ids[0];
    let (_, rec) = get(&s, &format!("/api/conversations/{id}")).await;
    assert_eq!(rec["title"], "message number 0");
    let r = http()
        .patch(s.http(&format!("/api/conversations/{id}")))
        .json(&json!({"title": "Taxi claims"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (_, rec) = get(&s, &format!("/api/conversations/{id}")).await;
    assert_eq!(rec["title"], "Taxi claims");
    let r = http()
        .patch(s.http(&format!("/api/conversations/{id}")))
        .json(&json!({"title": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);

    // Events and messages.
    let (st, ev) = get(&s, &format!("/api/conversations/{id}/events?since=2")).await;
    assert_eq!(st, 200);
    assert_eq!(ev["items"][0]["seq"], 3);
    assert_eq!(ev["items"][0]["type"], "event");

    // Delete: gone from every route.
    let r = http()
        .delete(s.http(&format!("/api/conversations/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    for path in [
        format!("/api/conversations/{id}"),
        format!("/api/conversations/{id}/messages"),
        format!("/api/conversations/{id}/events"),
    ] {
        let (st, e) = get(&s, &path).await;
        assert_eq!((st, code(&e)), (404, "conversation_not_found"), "{path}");
    }
    let (_, all) = get(&s, "/api/conversations?limit=100").await;
    assert!(!all["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["id"] == json!(id)));
    let r = http()
        .delete(s.http(&format!("/api/conversations/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
}

#[tokio::test]
async fn message_paging_is_newest_first_and_stable() {
    let s = Server::start();
    let (_, r) = post(&s, "/api/assistants/chat/invoke", json!({"content": "one"})).await;
    let conv = r["conversationId"].as_str().unwrap().to_string();
    for t in ["two", "three", "four"] {
        let (st, _) = post(
            &s,
            "/api/assistants/chat/invoke",
            json!({"content": t, "conversationId": conv}),
        )
        .await;
        assert_eq!(st, 200);
    }
    let mut all = Vec::new();
    let mut before: Option<u64> = None;
    loop {
        let q = match before {
            Some(b) => format!("/api/conversations/{conv}/messages?limit=3&before={b}"),
            None => format!("/api/conversations/{conv}/messages?limit=3"),
        };
        let (_, page) = get(&s, &q).await;
        for m in page["items"].as_array().unwrap() {
            all.push(m["no"].as_u64().unwrap());
        }
        match page["nextCursor"].as_u64() {
            Some(b) => before = Some(b),
            None => break,
        }
    }
    assert_eq!(all, (1..=8).rev().collect::<Vec<u64>>());
}

#[tokio::test]
async fn health_metrics_and_demo_page() {
    let s = Server::start();
    let (st, h) = get(&s, "/healthz").await;
    assert_eq!((st, h["status"].as_str()), (200, Some("ok")));
    post(&s, "/api/assistants/chat/invoke", json!({"content": "hi"})).await;
    let m = http()
        .get(s.http("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("parley_runs_total{status=\"completed\"} 1"),
        "{m}"
    );
    assert!(m.contains("parley_store_commits_total"));
    assert!(m.contains("parley_run_duration_seconds_bucket"));
    let page = http().get(s.http("/")).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(page.text().await.unwrap().contains("parley.js"));
    let js = http()
        .get(s.http("/static/parley.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(js.status().as_u16(), 200);
    let (st, info) = get(&s, "/api/info").await;
    assert_eq!((st, info["builtinModel"].as_bool()), (200, Some(true)));
}

#[tokio::test]
async fn model_failures_and_rate_limits_have_their_codes() {
    let s = Server::start_with(Options {
        server_config: "messages_per_minute = 3".into(),
        ..Options::default()
    });
    let (st, e) = post(&s, "/api/assistants/broken/invoke", json!({"content": "x"})).await;
    assert_eq!((st, code(&e)), (502, "llm_error"), "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("reach"),
        "a message a person can act on: {e}"
    );
    let conv = {
        let (_, list) = get(&s, "/api/conversations").await;
        list["items"][0]["id"].as_str().unwrap().to_string()
    };
    let (_, rec) = get(&s, &format!("/api/conversations/{conv}")).await;
    assert_eq!(rec["status"], "failed");
    let (_, ev) = get(&s, &format!("/api/conversations/{conv}/events")).await;
    let last = ev["items"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["event"]["type"], "RUN_ERROR");
    assert_eq!(last["event"]["code"], "llm_error");
    post(&s, "/api/assistants/chat/invoke", json!({"content": "2"})).await;
    post(&s, "/api/assistants/chat/invoke", json!({"content": "3"})).await;
    let r = http()
        .post(s.http("/api/assistants/chat/invoke"))
        .json(&json!({"content": "4"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert!(r.headers().get("retry-after").is_some());
    let e: Value = r.json().await.unwrap();
    assert_eq!(code(&e), "rate_limited");
}
