//! The AG-UI front (CONTRACT §7) over real HTTP and real SSE parsing: event order, unique open
//! step names, no duplicate messages when a client re-sends its history, and the failure paths.
//! The real `@ag-ui/client` runs against the server in `tests/agui/conformance.mjs`.

use std::collections::HashSet;

use serde_json::{json, Value};

use crate::common::{get_json, http, Server};

/// One SSE message: its `id:` (when it has one) and its `data:` JSON.
#[derive(Debug)]
struct Sse {
    id: Option<u64>,
    data: Value,
}

fn parse_sse(text: &str) -> Vec<Sse> {
    text.split("\n\n")
        .filter_map(|block| {
            let mut id = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.parse().expect("numeric id"));
                }
                if let Some(v) = line.strip_prefix("data: ") {
                    data = Some(serde_json::from_str(v).expect("JSON data"));
                }
            }
            data.map(|data| Sse { id, data })
        })
        .collect()
}

fn input(thread: &str, messages: Value) -> Value {
    json!({"threadId": thread, "runId": uuid::Uuid::now_v7().to_string(), "state": {},
           "messages": messages, "tools": [], "context": [], "forwardedProps": {}})
}

fn user(id: &str, content: &str) -> Value {
    json!({"id": id, "role": "user", "content": content})
}

async fn post(s: &Server, assistant: &str, body: &Value) -> (u16, String) {
    let res = http()
        .post(s.http(&format!("/agui/{assistant}")))
        .header("accept", "text/event-stream")
        .json(body)
        .send()
        .await
        .expect("POST /agui");
    let status = res.status().as_u16();
    (status, res.text().await.expect("body"))
}

async fn run(s: &Server, assistant: &str, body: &Value) -> Vec<Sse> {
    let (status, text) = post(s, assistant, body).await;
    assert_eq!(status, 200, "{text}");
    parse_sse(&text)
}

fn types(evs: &[Sse]) -> Vec<&str> {
    evs.iter()
        .map(|e| e.data["type"].as_str().unwrap_or("?"))
        .collect()
}

/// What `@ag-ui/client`'s verifier checks: one run at a time, steps unique while open, every
/// step, text message and tool call closed before `RUN_FINISHED`, nothing after the end.
fn assert_valid_runs(evs: &[Sse]) {
    let mut run_open = false;
    let mut steps = HashSet::new();
    let mut texts = HashSet::new();
    let mut tools = HashSet::new();
    for e in evs {
        let d = &e.data;
        let t = d["type"].as_str().expect("type");
        assert!(!t.starts_with("THINKING"), "{d}");
        assert!(
            !d.as_object().unwrap().values().any(Value::is_null),
            "no null field: {d}"
        );
        if t == "RUN_STARTED" {
            assert!(!run_open, "RUN_STARTED while a run is open: {d}");
            run_open = true;
            continue;
        }
        assert!(run_open, "{t} outside a run");
        match t {
            "STEP_STARTED" => {
                let n = d["stepName"].as_str().unwrap().to_owned();
                assert!(steps.insert(n), "step name reused while open: {d}");
            }
            "STEP_FINISHED" => assert!(steps.remove(d["stepName"].as_str().unwrap()), "{d}"),
            "TEXT_MESSAGE_START" => {
                assert_ne!(d["role"], "user", "the user's echo is left out");
                texts.insert(d["messageId"].as_str().unwrap().to_owned());
            }
            "TEXT_MESSAGE_CONTENT" => assert!(texts.contains(d["messageId"].as_str().unwrap())),
            "TEXT_MESSAGE_END" => assert!(texts.remove(d["messageId"].as_str().unwrap())),
            "TOOL_CALL_START" => {
                tools.insert(d["toolCallId"].as_str().unwrap().to_owned());
            }
            "TOOL_CALL_ARGS" => assert!(tools.contains(d["toolCallId"].as_str().unwrap())),
            "TOOL_CALL_END" => assert!(tools.remove(d["toolCallId"].as_str().unwrap())),
            "RUN_FINISHED" => {
                assert!(
                    steps.is_empty() && texts.is_empty() && tools.is_empty(),
                    "{d}"
                );
                run_open = false;
            }
            "RUN_ERROR" => run_open = false,
            _ => {}
        }
    }
    assert!(!run_open, "the stream ended inside a run");
}

#[tokio::test]
async fn agui_run_is_ordered_and_closed_with_stored_seqs() {
    let s = Server::start();
    let thread = format!("t-{}", uuid::Uuid::now_v7());
    let evs = run(&s, "chat", &input(&thread, json!([user("u1", "Hello")]))).await;
    let ty = types(&evs);
    assert_eq!(ty.first(), Some(&"RUN_STARTED"), "{ty:?}");
    assert_eq!(ty.last(), Some(&"RUN_FINISHED"), "{ty:?}");
    let pos = |t: &str| ty.iter().position(|x| *x == t).unwrap();
    assert!(pos("TEXT_MESSAGE_START") < pos("TEXT_MESSAGE_CONTENT"));
    assert!(pos("TEXT_MESSAGE_CONTENT") < pos("TEXT_MESSAGE_END"));
    assert_valid_runs(&evs);
    assert_eq!(evs[0].data["threadId"], thread.as_str());
    let fin = &evs.last().unwrap().data;
    assert_eq!(fin["outcome"], json!({"type": "success"}));
    assert!(fin["result"]["text"].is_string(), "{fin}");
    // `id:` is the stored seq: increasing, and the conversation exists under the thread id.
    let ids: Vec<u64> = evs.iter().map(|e| e.id.expect("an id")).collect();
    assert!(ids.windows(2).all(|w| w[0] <= w[1]), "{ids:?}");
    let conv = get_json(&s, &format!("/api/conversations/{thread}")).await;
    assert_eq!(conv["assistant"], "chat");
    assert_eq!(conv["lastSeq"].as_u64(), ids.last().copied());
}

#[tokio::test]
async fn agui_step_names_stay_unique_while_open_in_loops() {
    let s = Server::start();
    let evs = run(
        &s,
        "loop_notes",
        &input("loop-1", json!([user("u1", "a\nb\nc")])),
    )
    .await;
    assert_valid_runs(&evs);
    let names: Vec<&str> = evs
        .iter()
        .filter(|e| e.data["type"] == "STEP_STARTED")
        .map(|e| e.data["stepName"].as_str().unwrap())
        .collect();
    for n in ["note", "note#2", "note#3"] {
        assert!(names.contains(&n), "{names:?}");
    }
    assert_eq!(evs.last().unwrap().data["result"]["count"], 3);
}

async fn stored_user_messages(s: &Server, thread: &str) -> usize {
    let page = get_json(
        s,
        &format!("/api/conversations/{thread}/messages?limit=100"),
    )
    .await;
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|m| m["role"] == "user")
        .count()
}

#[tokio::test]
async fn agui_resent_history_is_not_stored_twice() {
    let s = Server::start();
    let first = json!([user("u1", "Hello")]);
    run(&s, "chat", &input("hist-1", first.clone())).await;
    assert_eq!(stored_user_messages(&s, "hist-1").await, 1);
    // The same request again (a retried run) and the history with the answer appended: nothing
    // new is sent, and the run is empty but valid.
    let again = run(&s, "chat", &input("hist-1", first)).await;
    assert_eq!(types(&again), ["RUN_STARTED", "RUN_FINISHED"]);
    let with_answer = json!([user("u1", "Hello"),
        {"id": "a1", "role": "assistant", "content": "Hi!"}]);
    let evs = run(&s, "chat", &input("hist-1", with_answer)).await;
    assert_eq!(types(&evs), ["RUN_STARTED", "RUN_FINISHED"]);
    assert_eq!(stored_user_messages(&s, "hist-1").await, 1);
    // A new user message at the end is sent once.
    let next = json!([user("u1", "Hello"),
        {"id": "a1", "role": "assistant", "content": "Hi!"}, user("u2", "More")]);
    let evs = run(&s, "chat", &input("hist-1", next.clone())).await;
    assert!(types(&evs).contains(&"TEXT_MESSAGE_CONTENT"));
    run(&s, "chat", &input("hist-1", next)).await;
    assert_eq!(stored_user_messages(&s, "hist-1").await, 2);
}

#[tokio::test]
async fn agui_interrupts_resume_and_refuse_stale_or_missing_answers() {
    let s = Server::start();
    let evs = run(
        &s,
        "approval",
        &input("card-1", json!([user("u1", "a desk")])),
    )
    .await;
    assert_valid_runs(&evs);
    let fin = &evs.last().unwrap().data;
    assert_eq!(fin["outcome"]["type"], "interrupt", "{fin}");
    let i = &fin["outcome"]["interrupts"][0];
    assert_eq!(i["reason"], "confirmation");
    assert_eq!(i["metadata"]["buttons"], json!(["approve", "reject"]));
    assert_eq!(i["metadata"]["nodeId"], "confirm");
    assert_eq!(i["responseSchema"]["required"], json!(["action"]));
    let id = i["id"].as_str().unwrap().to_owned();
    // Missing resume while the card is open: RUN_STARTED + RUN_ERROR, nothing applied.
    let mut body = input("card-1", json!([user("u1", "a desk")]));
    let evs = run(&s, "approval", &body).await;
    assert_eq!(types(&evs), ["RUN_STARTED", "RUN_ERROR"]);
    assert_eq!(evs[1].data["code"], "interrupt_not_pending");
    // An unknown interrupt id: the same, and the card is still pending.
    body["resume"] =
        json!([{"interruptId": "nope", "status": "resolved", "payload": {"action": "approve"}}]);
    let evs = run(&s, "approval", &body).await;
    assert_eq!(evs[1].data["code"], "interrupt_not_pending");
    let conv = get_json(&s, "/api/conversations/card-1").await;
    assert_eq!(conv["pendingInterrupts"][0]["id"], id.as_str());
    // The right answer resumes the run; the same answer again is stale.
    body["resume"] =
        json!([{"interruptId": id, "status": "resolved", "payload": {"action": "approve"}}]);
    let evs = run(&s, "approval", &body).await;
    assert_valid_runs(&evs);
    let fin = &evs.last().unwrap().data;
    assert_eq!(fin["result"]["action"], "approve", "{fin}");
    let evs = run(&s, "approval", &body).await;
    assert_eq!(types(&evs), ["RUN_STARTED", "RUN_ERROR"]);
    assert_eq!(evs[1].data["code"], "interrupt_not_pending");
}

#[tokio::test]
async fn agui_cancelled_resume_ends_with_a_cancelled_outcome() {
    let s = Server::start();
    let evs = run(&s, "approval", &input("cancel-1", json!([user("u1", "x")]))).await;
    let id = evs.last().unwrap().data["outcome"]["interrupts"][0]["id"].clone();
    let mut body = input("cancel-1", json!([user("u1", "x")]));
    body["resume"] = json!([{"interruptId": id, "status": "cancelled"}]);
    let evs = run(&s, "approval", &body).await;
    assert_valid_runs(&evs);
    assert_eq!(
        evs.last().unwrap().data["outcome"],
        json!({"type": "cancelled"})
    );
    let conv = get_json(&s, "/api/conversations/cancel-1").await;
    assert_eq!(conv["pendingInterrupts"], json!([]));
}

#[tokio::test]
async fn agui_bad_requests_are_http_errors_that_change_nothing() {
    let s = Server::start();
    let (st, body) = post(&s, "no_such", &input("t1", json!([user("u", "hi")]))).await;
    assert_eq!(st, 404, "{body}");
    assert!(body.contains("unknown_assistant"));
    let (st, body) = post(&s, "chat", &input("bad id!", json!([user("u", "hi")]))).await;
    assert_eq!(st, 400, "{body}");
    let long = "x".repeat(129);
    let (st, _) = post(&s, "chat", &input(&long, json!([user("u", "hi")]))).await;
    assert_eq!(st, 400);
    let mut b = input("t2", json!([user("u", "hi")]));
    b["state"] = json!([1, 2]);
    let (st, body) = post(&s, "chat", &b).await;
    assert_eq!(st, 400, "{body}");
    let (st, body) = post(&s, "chat", &json!({"threadId": 5})).await;
    assert_eq!(st, 400, "{body}");
    // None of these created a conversation.
    let list = get_json(&s, "/api/conversations").await;
    assert_eq!(list["items"], json!([]), "{list}");
    // A thread of another assistant is refused.
    run(&s, "chat", &input("t3", json!([user("u", "hi")]))).await;
    let (st, body) = post(&s, "approval", &input("t3", json!([user("u", "hi")]))).await;
    assert_eq!(st, 400, "{body}");
    // The events route of an unknown thread.
    let res = http()
        .get(s.http("/agui/chat/threads/none/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 404);
}

#[tokio::test]
async fn agui_events_route_replays_valid_runs_after_last_event_id() {
    let s = Server::start();
    let first = run(&s, "chat", &input("rejoin-1", json!([user("u1", "one")]))).await;
    let second = run(
        &s,
        "chat",
        &input(
            "rejoin-1",
            json!([user("u1", "one"), {"id": "a", "role": "assistant", "content": "x"}, user("u2", "two")]),
        ),
    )
    .await;
    let get = |since: Option<u64>| {
        let mut req = http().get(s.http("/agui/chat/threads/rejoin-1/events?until=idle"));
        if let Some(id) = since {
            req = req.header("Last-Event-ID", id.to_string());
        }
        async move { parse_sse(&req.send().await.unwrap().text().await.unwrap()) }
    };
    let all = get(None).await;
    assert_valid_runs(&all);
    let data = |evs: &[Sse]| evs.iter().map(|e| e.data.clone()).collect::<Vec<_>>();
    let mut both = data(&first);
    both.extend(data(&second));
    assert_eq!(
        data(&all),
        both,
        "the replay is the two runs as they were streamed"
    );
    // From the end of the first run: exactly the second run.
    let cut = first.last().unwrap().id;
    assert_eq!(data(&get(cut).await), data(&second));
    // From the middle of the second run: its RUN_STARTED again, then the rest, valid.
    let mid = second[second.len() / 2].id;
    let tail = get(mid).await;
    assert_eq!(tail[0].data["type"], "RUN_STARTED");
    assert_valid_runs(&tail);
    assert_eq!(tail.last().unwrap().data, second.last().unwrap().data);
}

#[tokio::test]
async fn agui_needs_the_bearer_token_in_token_mode_and_keeps_threads_per_user() {
    use sha2::Digest;
    let sha = |t: &str| hex::encode(sha2::Sha256::digest(t.as_bytes()));
    let (alice, bob) = ("pk_alice_agui_0123456789", "pk_bob_agui_0123456789");
    let s = Server::start_with(crate::common::Options {
        extra_config: format!(
            "[auth]\nmode = \"token\"\n[[auth.tokens]]\nuser = \"alice\"\nsha256 = \"{}\"\n[[auth.tokens]]\nuser = \"bob\"\nsha256 = \"{}\"\n",
            sha(alice),
            sha(bob)
        ),
        ..Default::default()
    });
    let body = input("auth-1", json!([user("u1", "hi")]));
    let send = |token: Option<&'static str>| {
        let mut r = http().post(s.http("/agui/chat")).json(&body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        async move {
            let res = r.send().await.unwrap();
            (res.status().as_u16(), res.text().await.unwrap())
        }
    };
    let (st, text) = send(None).await;
    assert_eq!(st, 401, "{text}");
    assert!(text.contains("unauthorized"));
    let (st, text) = send(Some(alice)).await;
    assert_eq!(st, 200, "{text}");
    assert!(text.contains("RUN_FINISHED"));
    // Alice's thread does not exist for Bob, over either route.
    let (st, text) = send(Some(bob)).await;
    assert_eq!(st, 404, "{text}");
    let res = http()
        .get(s.http("/agui/chat/threads/auth-1/events?until=idle"))
        .bearer_auth(bob)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 404);
    let res = http()
        .get(s.http("/agui/chat/threads/auth-1/events?until=idle"))
        .bearer_auth(alice)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_valid_runs(&parse_sse(&res.text().await.unwrap()));
}
