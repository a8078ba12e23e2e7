//! CONTRACT §6 idempotency: `Idempotency-Key` on the HTTP commands and WebSocket frame ids.

use serde_json::json;

use crate::common::{get_json, Client, Server};
use crate::sse::{create, post, Sse};

/// The conversation's messages, oldest first, as `(role, content)`.
async fn messages(s: &Server, conv: &str) -> Vec<(String, String)> {
    let page = get_json(s, &format!("/api/conversations/{conv}/messages?limit=100")).await;
    let mut out: Vec<(String, String)> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap_or("").to_string(),
                m["content"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    out.reverse();
    out
}

fn count_user(msgs: &[(String, String)], content: &str) -> usize {
    msgs.iter()
        .filter(|(r, c)| r == "user" && c == content)
        .count()
}

#[tokio::test]
async fn retried_sends_and_resumes_are_applied_once() {
    let s = Server::start();
    // send: the same key and body twice → one message, the same answer.
    let conv = create(&s, "chat", "first").await;
    Sse::open(&s, &conv, "?until=idle", None)
        .await
        .until_end()
        .await;
    let path = format!("/api/conversations/{conv}/messages");
    let body = json!({"content": "only once"});
    let a = post(&s, &path, body.clone(), Some("send-1")).await;
    assert_eq!(a.0, 202, "{:?}", a.2);
    let b = post(&s, &path, body.clone(), Some("send-1")).await;
    assert_eq!(a, b, "a retry gets the first answer");
    Sse::open(&s, &conv, "?until=idle", None)
        .await
        .until_end()
        .await;
    assert_eq!(count_user(&messages(&s, &conv).await, "only once"), 1);
    // The same key with a different body: 422, nothing stored.
    let (st, _, err) = post(&s, &path, json!({"content": "other"}), Some("send-1")).await;
    assert_eq!(st, 422, "{err}");
    assert_eq!(err["error"]["code"], "idempotency_key_reused");
    assert_eq!(count_user(&messages(&s, &conv).await, "other"), 0);
    // Keys are per route: the same key on another route is another key.
    let (st, _, _) = post(
        &s,
        &format!("/api/conversations/{conv}/cancel"),
        json!({}),
        Some("send-1"),
    )
    .await;
    assert_eq!(st, 200);

    // resume: the same key and body twice → one answer applied; a different body → 422.
    let card = create(&s, "approval", "a bike").await;
    let events = Sse::open(&s, &card, "?until=idle", None)
        .await
        .until_end()
        .await;
    let interrupt = events.last().expect("events").data["outcome"]["interrupts"][0]["id"].clone();
    let rpath = format!("/api/conversations/{card}/resume");
    let answer = json!({"interruptId": interrupt, "action": "reject"});
    let a = post(&s, &rpath, answer.clone(), Some("resume-1")).await;
    assert_eq!(a.0, 202, "{:?}", a.2);
    let b = post(&s, &rpath, answer.clone(), Some("resume-1")).await;
    assert_eq!(
        a, b,
        "a retried resume gets the first answer, not interrupt_not_pending"
    );
    let (st, _, err) = post(
        &s,
        &rpath,
        json!({"interruptId": interrupt, "action": "approve"}),
        Some("resume-1"),
    )
    .await;
    assert_eq!(
        (st, err["error"]["code"].clone()),
        (422, json!("idempotency_key_reused"))
    );
    let all = Sse::open(&s, &card, "?until=idle", None)
        .await
        .until_end()
        .await;
    let runs_started = all.iter().filter(|e| e.kind == "RUN_STARTED").count();
    assert_eq!(runs_started, 2, "the first run and one resumed run");
    let replies: Vec<_> = messages(&s, &card)
        .await
        .into_iter()
        .filter(|(_, c)| c == "Rejected.")
        .collect();
    assert_eq!(replies.len(), 1);

    // A refused request is not remembered: nothing was applied, a retry is applied afresh.
    let (st, _, _) = post(
        &s,
        "/api/conversations",
        json!({"assistant": "nope"}),
        Some("c-1"),
    )
    .await;
    assert_eq!(st, 404);
    let (st, _, made) = post(
        &s,
        "/api/conversations",
        json!({"assistant": "chat", "title": "Empty"}),
        Some("c-1"),
    )
    .await;
    assert_eq!(st, 201, "{made}");
    assert!(made.get("runId").is_none(), "no message, no run: {made}");
    let id = made["conversationId"].as_str().expect("id");
    let view = get_json(&s, &format!("/api/conversations/{id}")).await;
    assert_eq!(view["title"], "Empty", "{view}");
}

/// The defect of issue 13: a client that numbers its frames from 1 again after a reconnect
/// lost its messages without an error.
#[tokio::test]
async fn a_reused_frame_id_with_a_different_frame_is_refused_not_swallowed() {
    let s = Server::start();
    let mut a = Client::connect(&s).await;
    let first = json!({"type": "send", "id": "k1", "assistant": "chat", "content": "first"});
    a.send_raw(&first.to_string()).await;
    let ack = a.reply("k1").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let conv = ack["conversationId"].as_str().expect("id").to_string();
    a.run_events(&conv).await;
    a.close().await;

    let mut b = Client::connect(&s).await;
    let second = json!({"type": "send", "id": "k1", "assistant": "chat", "content": "second"});
    b.send_raw(&second.to_string()).await;
    let err = b.reply("k1").await;
    assert_eq!(err["type"], "error", "{err}");
    assert_eq!(err["code"], "idempotency_key_reused");
    // The same frame again (fields in another order) gets the original ack, applied once.
    let again = json!({"content": "first", "assistant": "chat", "id": "k1", "type": "send"});
    b.send_raw(&again.to_string()).await;
    let replay = b.reply("k1").await;
    assert_eq!(replay, ack);
    let msgs = messages(&s, &conv).await;
    assert_eq!(count_user(&msgs, "first"), 1, "{msgs:?}");
    let list = get_json(&s, "/api/conversations").await;
    let everything = list.to_string();
    assert!(!everything.contains("second"), "{list}");
    b.close().await;
}

/// Keys are stored with the write they guard: a retry after a restart (even a crash) is
/// still answered with the first answer, and a different request under the key is refused.
#[tokio::test]
async fn keys_survive_a_restart_of_the_server() {
    let s = Server::start();
    let conv = create(&s, "chat", "first").await;
    Sse::open(&s, &conv, "?until=idle", None)
        .await
        .until_end()
        .await;
    let path = format!("/api/conversations/{conv}/messages");
    let body = json!({"content": "once across restarts"});
    let sent = post(&s, &path, body.clone(), Some("send-r")).await;
    assert_eq!(sent.0, 202, "{:?}", sent.2);
    Sse::open(&s, &conv, "?until=idle", None)
        .await
        .until_end()
        .await;

    let card = create(&s, "approval", "a boat").await;
    let events = Sse::open(&s, &card, "?until=idle", None)
        .await
        .until_end()
        .await;
    let interrupt = events.last().expect("events").data["outcome"]["interrupts"][0]["id"].clone();
    let rpath = format!("/api/conversations/{card}/resume");
    let answer = json!({"interruptId": interrupt, "action": "approve"});
    let resumed = post(&s, &rpath, answer.clone(), Some("resume-r")).await;
    assert_eq!(resumed.0, 202, "{:?}", resumed.2);
    Sse::open(&s, &card, "?until=idle", None)
        .await
        .until_end()
        .await;

    let mut ws = Client::connect(&s).await;
    let frame =
        json!({"type": "send", "id": "ws-r", "conversationId": conv, "content": "by socket"});
    ws.send_raw(&frame.to_string()).await;
    let ack = ws.reply("ws-r").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    ws.run_events(&conv).await;
    ws.close().await;

    let s = s.crash_and_restart();
    // The same requests: the first answers, nothing applied again.
    assert_eq!(post(&s, &path, body.clone(), Some("send-r")).await, sent);
    assert_eq!(
        post(&s, &rpath, answer.clone(), Some("resume-r")).await,
        resumed
    );
    let mut ws = Client::connect(&s).await;
    ws.send_raw(&frame.to_string()).await;
    assert_eq!(ws.reply("ws-r").await, ack);
    let msgs = messages(&s, &conv).await;
    assert_eq!(count_user(&msgs, "once across restarts"), 1, "{msgs:?}");
    assert_eq!(count_user(&msgs, "by socket"), 1, "{msgs:?}");
    let approved = messages(&s, &card)
        .await
        .into_iter()
        .filter(|(_, c)| c.starts_with("Approved"))
        .count();
    assert_eq!(approved, 1);
    // Different requests under the stored keys are refused.
    let (st, _, err) = post(&s, &path, json!({"content": "else"}), Some("send-r")).await;
    assert_eq!(
        (st, err["error"]["code"].clone()),
        (422, json!("idempotency_key_reused"))
    );
    let other = json!({"type": "send", "id": "ws-r", "conversationId": conv, "content": "else"});
    ws.send_raw(&other.to_string()).await;
    let err = ws.reply("ws-r").await;
    assert_eq!(err["code"], "idempotency_key_reused", "{err}");
    assert_eq!(count_user(&messages(&s, &conv).await, "else"), 0);
    ws.close().await;
}

/// The conversations of the test user, as `(id, title)`.
async fn conversations(s: &Server) -> Vec<(String, String)> {
    let page = get_json(s, "/api/conversations?limit=100").await;
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|c| {
            (
                c["id"].as_str().unwrap_or("").to_string(),
                c["title"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// A create without a first message and a cancel (of a paused run, and of nothing) store their
/// keys too: after a crash, their retries get the first answers and change nothing.
#[tokio::test]
async fn cancel_and_create_keys_survive_a_restart_of_the_server() {
    let s = Server::start();
    let create_body = json!({"assistant": "chat", "title": "kept once"});
    let created = post(
        &s,
        "/api/conversations",
        create_body.clone(),
        Some("create-r"),
    )
    .await;
    assert_eq!(created.0, 201, "{:?}", created.2);
    let empty = created.2["conversationId"]
        .as_str()
        .expect("id")
        .to_string();
    assert!(created.2.get("runId").is_none(), "{:?}", created.2);

    let card = create(&s, "approval", "a boat").await;
    let events = Sse::open(&s, &card, "?until=idle", None)
        .await
        .until_end()
        .await;
    assert_eq!(events.last().expect("events").kind, "RUN_FINISHED");
    let cpath = format!("/api/conversations/{card}/cancel");
    let cancelled = post(&s, &cpath, json!({}), Some("cancel-r")).await;
    assert_eq!(
        (cancelled.0, cancelled.2.clone()),
        (200, json!({"cancelled": true}))
    );
    let idle_path = format!("/api/conversations/{empty}/cancel");
    let nothing = post(&s, &idle_path, json!({}), Some("cancel-idle")).await;
    assert_eq!(
        (nothing.0, nothing.2.clone()),
        (200, json!({"cancelled": false}))
    );

    let s = s.crash_and_restart();
    // The same requests: the first answers (a cancel applied again would answer `false`).
    assert_eq!(
        post(
            &s,
            "/api/conversations",
            create_body.clone(),
            Some("create-r")
        )
        .await,
        created
    );
    assert_eq!(
        post(&s, &cpath, json!({}), Some("cancel-r")).await,
        cancelled
    );
    assert_eq!(
        post(&s, &idle_path, json!({}), Some("cancel-idle")).await,
        nothing
    );
    let titled: Vec<_> = conversations(&s)
        .await
        .into_iter()
        .filter(|(_, t)| t == "kept once")
        .collect();
    assert_eq!(titled, [(empty.clone(), "kept once".to_string())]);
    // One cancellation stored, not two.
    let events = Sse::open(&s, &card, "?until=idle", None)
        .await
        .until_end()
        .await;
    let cancels = events
        .iter()
        .filter(|e| e.kind == "RUN_ERROR" && e.data["code"] == "cancelled")
        .count();
    assert_eq!(cancels, 1, "{events:?}");
    // A different request under a stored key is refused, and creates nothing.
    let (st, _, err) = post(
        &s,
        "/api/conversations",
        json!({"assistant": "chat", "title": "another"}),
        Some("create-r"),
    )
    .await;
    assert_eq!(
        (st, err["error"]["code"].clone()),
        (422, json!("idempotency_key_reused"))
    );
    assert!(!conversations(&s).await.iter().any(|(_, t)| t == "another"));
}
