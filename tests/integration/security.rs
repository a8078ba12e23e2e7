//! Auth, isolation, limits, slow consumers, retries, races and crash safety.

use serde_json::{json, Value};

use crate::common::*;

const ALICE: &str = "pk_alice_0123456789";
const BOB: &str = "pk_bob_0123456789";

fn sha(t: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(t.as_bytes()))
}

fn token_server(extra: &str) -> Server {
    Server::start_with(Options {
        extra_config: format!(
            "[auth]\nmode = \"token\"\n[[auth.tokens]]\nuser = \"alice\"\nsha256 = \"{}\"\n[[auth.tokens]]\nuser = \"bob\"\nsha256 = \"{}\"\n{extra}",
            sha(ALICE),
            sha(BOB)
        ),
        ..Options::default()
    })
}

async fn req(
    s: &Server,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut r = http().request(m, s.http(path));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let st = resp.status().as_u16();
    (st, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn token_auth_on_http_and_websocket() {
    let s = token_server("");
    for path in [
        "/api/assistants",
        "/api/conversations",
        "/api/conversations/x",
    ] {
        let (st, e) = req(&s, "GET", path, None, None).await;
        assert_eq!(
            (st, e["error"]["code"].as_str()),
            (401, Some("unauthorized")),
            "{path}"
        );
        let (st, _) = req(&s, "GET", path, Some("pk_wrong"), None).await;
        assert_eq!(st, 401);
    }
    let (st, _) = req(
        &s,
        "POST",
        "/api/assistants/chat/invoke",
        None,
        Some(json!({"content": "x"})),
    )
    .await;
    assert_eq!(st, 401);
    let (st, _) = req(&s, "GET", "/api/assistants", Some(ALICE), None).await;
    assert_eq!(st, 200);
    // Health stays open.
    let (st, _) = req(&s, "GET", "/healthz", None, None).await;
    assert_eq!(st, 200);

    // WebSocket: a bad header is refused at the upgrade.
    assert!(
        Client::connect_with(&s, &[("authorization", "Bearer pk_wrong")])
            .await
            .is_err()
    );
    // No header: frames are refused until an auth frame.
    let mut c = Client::connect(&s).await;
    assert_eq!(
        c.err(json!({"type": "send", "assistant": "chat", "content": "hi"}))
            .await,
        "unauthorized"
    );
    assert_eq!(
        c.err(json!({"type": "auth", "token": "pk_wrong"})).await,
        "unauthorized"
    );
    let a = c.ok(json!({"type": "auth", "token": ALICE})).await;
    assert_eq!(a["user"], "alice");
    c.ok(json!({"type": "send", "assistant": "chat", "content": "hi"}))
        .await;
    // With the header.
    let mut h = Client::connect_with(&s, &[("authorization", &format!("Bearer {BOB}"))])
        .await
        .unwrap();
    h.ok(json!({"type": "send", "assistant": "chat", "content": "hello"}))
        .await;
    // The token never shows in the logs.
    let log = s.stderr_log.lock().unwrap().join("\n");
    assert!(!log.contains(ALICE) && !log.contains(BOB));
}

#[tokio::test]
async fn other_users_conversations_do_not_exist_for_them() {
    let s = token_server("");
    let mut alice = Client::connect_with(&s, &[("authorization", &format!("Bearer {ALICE}"))])
        .await
        .unwrap();
    let conv = alice.create("approval", "alice's").await;
    let ev = alice.run_events(&conv).await;
    let iid = ev.last().unwrap()["event"]["outcome"]["interrupts"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Every route.
    for (method, path, body) in [
        ("GET", format!("/api/conversations/{conv}"), None),
        (
            "PATCH",
            format!("/api/conversations/{conv}"),
            Some(json!({"title": "mine now"})),
        ),
        ("DELETE", format!("/api/conversations/{conv}"), None),
        ("GET", format!("/api/conversations/{conv}/messages"), None),
        ("GET", format!("/api/conversations/{conv}/events"), None),
    ] {
        let (st, e) = req(&s, method, &path, Some(BOB), body).await;
        assert_eq!(
            (st, e["error"]["code"].as_str()),
            (404, Some("conversation_not_found")),
            "{method} {path}"
        );
    }
    let (st, e) = req(
        &s,
        "POST",
        "/api/assistants/approval/invoke",
        Some(BOB),
        Some(json!({"content": "x", "conversationId": conv})),
    )
    .await;
    assert_eq!(st, 409, "{e}"); // refused up front: interactive
    let (st, e) = req(
        &s,
        "POST",
        "/api/assistants/chat/invoke",
        Some(BOB),
        Some(json!({"content": "x", "conversationId": conv})),
    )
    .await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (404, Some("conversation_not_found"))
    );
    let (_, list) = req(&s, "GET", "/api/conversations", Some(BOB), None).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 0);

    // Every frame.
    let mut bob = Client::connect_with(&s, &[("authorization", &format!("Bearer {BOB}"))])
        .await
        .unwrap();
    for f in [
        json!({"type": "send", "conversationId": conv, "content": "hijack"}),
        json!({"type": "resume", "conversationId": conv, "interruptId": iid, "action": "approve"}),
        json!({"type": "subscribe", "conversationId": conv, "since": 0}),
        json!({"type": "unsubscribe", "conversationId": conv}),
        json!({"type": "cancel", "conversationId": conv}),
    ] {
        assert_eq!(bob.err(f.clone()).await, "conversation_not_found", "{f}");
    }
    // Nothing reached bob, and alice's conversation is untouched.
    assert!(!bob.backlog.iter().any(|v| v["type"] == "event"));
    let (st, rec) = req(
        &s,
        "GET",
        &format!("/api/conversations/{conv}"),
        Some(ALICE),
        None,
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(rec["status"], "paused");
    assert_eq!(rec["title"], "alice's");
    assert_eq!(rec["lastSeq"].as_u64(), ev.last().unwrap()["seq"].as_u64());
    alice.ok(json!({"type": "resume", "conversationId": conv, "interruptId": iid, "action": "approve"})).await;
}

#[tokio::test]
async fn websocket_origin_is_checked() {
    let s = Server::start_with(Options {
        extra_config: "[auth]\nallowed_origins = [\"http://app.example\"]\n".into(),
        ..Options::default()
    });
    assert!(
        Client::connect_with(&s, &[("origin", "http://evil.example")])
            .await
            .is_err()
    );
    assert!(
        Client::connect_with(&s, &[("origin", "http://app.example")])
            .await
            .is_ok()
    );
    let same = format!("http://{}", s.addr);
    assert!(Client::connect_with(&s, &[("origin", &same)]).await.is_ok());
    // CORS answers configured origins only.
    let r = http()
        .get(s.http("/api/assistants"))
        .header("origin", "http://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap()),
        Some("http://app.example")
    );
    let r = http()
        .get(s.http("/api/assistants"))
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn limits_refuse_with_clear_codes_and_lose_nothing() {
    let s = Server::start_with(Options {
        server_config: "max_message_chars = 100\nmax_args_bytes = 200\nmax_frame_bytes = 4096\nmessages_per_minute = 4\nconversations_per_minute = 2".into(),
        ..Options::default()
    });
    let mut c = Client::connect(&s).await;
    assert_eq!(
        c.err(json!({"type": "send", "assistant": "chat", "content": "x".repeat(101)}))
            .await,
        "payload_too_large"
    );
    assert_eq!(c.err(json!({"type": "send", "assistant": "args", "content": "x", "args": {"department": "sales", "pad": "y".repeat(300)}})).await, "payload_too_large");
    let conv = c.create("chat", "one").await;
    c.run_events(&conv).await;
    c.ok(json!({"type": "send", "conversationId": conv, "content": "two"}))
        .await;
    c.run_events(&conv).await;
    c.ok(json!({"type": "send", "assistant": "chat", "content": "three"}))
        .await;
    // The third new conversation within a minute, then the fifth message.
    assert_eq!(
        c.err(json!({"type": "send", "assistant": "chat", "content": "four"}))
            .await,
        "rate_limited"
    );
    c.ok(json!({"type": "send", "conversationId": conv, "content": "four"}))
        .await;
    c.run_events(&conv).await;
    assert_eq!(
        c.err(json!({"type": "send", "conversationId": conv, "content": "five"}))
            .await,
        "rate_limited"
    );
    let (_, m) = req(
        &s,
        "GET",
        &format!("/api/conversations/{conv}/messages"),
        None,
        None,
    )
    .await;
    let contents: Vec<&str> = m["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["role"] == "user")
        .map(|x| x["content"].as_str().unwrap())
        .collect();
    assert_eq!(
        contents,
        ["four", "two", "one"],
        "refusals stored nothing, nothing stored was lost"
    );
    // A frame over max_frame_bytes closes the socket with 1009 (message too big).
    let mut big = Client::connect(&s).await;
    big.send_raw(
        &json!({"type": "send", "assistant": "chat", "content": "z".repeat(5000)}).to_string(),
    )
    .await;
    let (_, code) = big.read_until_closed().await;
    assert_eq!(code, Some(1009));
    // HTTP bodies over the limit are refused too.
    let (st, e) = req(
        &s,
        "POST",
        "/api/assistants/chat/invoke",
        None,
        Some(json!({"content": "z".repeat(5000)})),
    )
    .await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (413, Some("payload_too_large"))
    );
}

#[tokio::test]
async fn a_socket_that_never_reads_is_closed_and_comes_back_with_since() {
    let s = Server::start_with(Options {
        server_config: "socket_outbound_buffer = 2500".into(),
        ..Options::default()
    });
    let mut fast = Client::connect(&s).await;
    let conv = fast.create("firehose", "go").await;
    // The slow socket subscribes, then never reads while the run streams thousands of events.
    let mut slow = Client::connect(&s).await;
    slow.frame(json!({"type": "subscribe", "conversationId": conv, "since": 0}))
        .await;
    let all = whole_run(&s, fast, &conv).await;
    assert_contiguous(&all, 1);
    assert!(all.len() > 5000, "{}", all.len());
    assert_eq!(all.last().unwrap()["event"]["type"], "RUN_FINISHED");
    // Now read what the slow socket got: a prefix, then close code 4008.
    let (frames, code) = slow.read_until_closed().await;
    let events: Vec<Value> = frames
        .into_iter()
        .filter(|f| f["type"] == "event")
        .collect();
    assert!(events.len() < all.len(), "the slow socket was cut off");
    assert!(code == Some(4008) || code.is_none(), "{code:?}");
    assert_eq!(
        &all[..events.len()],
        &events[..],
        "what it got is a clean prefix"
    );
    // It comes back with since and loses nothing.
    let last = events
        .last()
        .map(|e| e["seq"].as_u64().unwrap())
        .unwrap_or(0);
    let mut back = Client::connect(&s).await;
    back.ok(json!({"type": "subscribe", "conversationId": conv, "since": last}))
        .await;
    let rest = back
        .events_until(&conv, |e| e["type"] == "RUN_FINISHED")
        .await;
    assert_eq!(&all[events.len()..], &rest[..]);
    // At least the slow socket; on a loaded machine the reading one may have been cut off too.
    let m = metrics_text(&s).await;
    let closed = m
        .lines()
        .find_map(|l| l.strip_prefix("parley_slow_consumers_closed_total "))
        .and_then(|n| n.trim().parse::<u64>().ok());
    assert!(closed.is_some_and(|n| n >= 1), "{m}");
}

/// Every event of `conv`'s run as read on `c`. The server may close even a reading socket as
/// too slow when the machine is loaded (this test's buffer is small on purpose); then the
/// client does what the protocol tells it to: reconnect and subscribe with `since`.
async fn whole_run(s: &Server, mut c: Client, conv: &str) -> Vec<Value> {
    let mut all: Vec<Value> = Vec::new();
    let mut reconnects = 0;
    loop {
        match c.next_frame().await {
            Some(v) if v["type"] == "event" && v["conversationId"] == json!(conv) => {
                let end = matches!(
                    v["event"]["type"].as_str(),
                    Some("RUN_FINISHED" | "RUN_ERROR")
                );
                all.push(v);
                if end {
                    return all;
                }
            }
            Some(_) => {}
            None => {
                reconnects += 1;
                assert!(
                    reconnects <= 20,
                    "the run never ended ({} events)",
                    all.len()
                );
                let since = all.last().and_then(|e| e["seq"].as_u64()).unwrap_or(0);
                c = Client::connect(s).await;
                c.ok(json!({"type": "subscribe", "conversationId": conv, "since": since}))
                    .await;
            }
        }
    }
}

#[tokio::test]
async fn a_retried_send_with_the_same_frame_id_is_applied_once() {
    let s = Server::start();
    let mut c = Client::connect(&s).await;
    let frame = json!({"type": "send", "id": "0190-retry-test-unique", "assistant": "chat", "content": "only once"});
    c.send_raw(&frame.to_string()).await;
    let first = c.reply("0190-retry-test-unique").await;
    assert_eq!(first["type"], "ack");
    let conv = first["conversationId"].as_str().unwrap().to_string();
    c.run_events(&conv).await;
    c.drop_abruptly();
    // After a reconnect, the client sends the frame again.
    let mut c2 = Client::connect(&s).await;
    c2.send_raw(&frame.to_string()).await;
    let again = c2.reply("0190-retry-test-unique").await;
    assert_eq!(again, first);
    let (_, list) = req(&s, "GET", "/api/conversations", None, None).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let (_, m) = req(
        &s,
        "GET",
        &format!("/api/conversations/{conv}/messages"),
        None,
        None,
    )
    .await;
    assert_eq!(m["items"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn racing_answers_end_in_one_consistent_state() {
    let s = Server::start();
    let mut a = Client::connect(&s).await;
    let mut b = Client::connect(&s).await;
    for round in 0..3 {
        let ack = a.ok(json!({"type": "send", "assistant": "approval", "content": format!("race {round}")})).await;
        let conv = ack["conversationId"].as_str().unwrap().to_string();
        let ev = a.run_events(&conv).await;
        let iid = ev.last().unwrap()["event"]["outcome"]["interrupts"][0]["id"]
            .as_str()
            .unwrap()
            .to_string();
        // resume vs resume, resume vs send-as-reply, resume vs cancel.
        let other = match round {
            0 => {
                json!({"type": "resume", "conversationId": conv, "interruptId": iid, "action": "reject"})
            }
            1 => json!({"type": "send", "conversationId": conv, "content": "a reply"}),
            _ => json!({"type": "cancel", "conversationId": conv}),
        };
        let ia = a.frame(json!({"type": "resume", "conversationId": conv, "interruptId": iid, "action": "approve"})).await;
        let ib = b.frame(other).await;
        let (ra, rb) = tokio::join!(a.reply(&ia), b.reply(&ib));
        let acks = [&ra, &rb].iter().filter(|r| r["type"] == "ack").count();
        // A send that arrives after the run ended starts a run of its own: then both are acked.
        let later_run = round == 1 && acks == 2;
        if round == 0 || (round == 1 && !later_run) {
            assert_eq!(acks, 1, "exactly one answer wins: {ra} {rb}");
            let loser = if ra["type"] == "error" { &ra } else { &rb };
            assert!(
                ["interrupt_not_pending", "conversation_busy"]
                    .contains(&loser["code"].as_str().unwrap()),
                "{loser}"
            );
        }
        if later_run {
            assert_ne!(ra["runId"], rb["runId"]);
        }
        // Wait for the conversation to settle (its record written after its last event).
        let mut rec = Value::Null;
        let mut evs = Value::Null;
        for _ in 0..100 {
            let (_, e) = req(
                &s,
                "GET",
                &format!("/api/conversations/{conv}/events"),
                None,
                None,
            )
            .await;
            let (_, r) = req(&s, "GET", &format!("/api/conversations/{conv}"), None, None).await;
            let last = e["items"]
                .as_array()
                .and_then(|a| a.last())
                .cloned()
                .unwrap_or(Value::Null);
            let ended =
                last["event"]["type"] == "RUN_FINISHED" || last["event"]["type"] == "RUN_ERROR";
            if r["status"] != "running" && ended && r["lastSeq"] == last["seq"] {
                rec = r;
                evs = e;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let items = evs["items"].as_array().unwrap();
        assert_contiguous(items, 1);
        let finished = items
            .iter()
            .filter(|e| e["event"]["type"] == "RUN_FINISHED" || e["event"]["type"] == "RUN_ERROR")
            .count();
        let expected_ends = if later_run { 3 } else { 2 };
        assert_eq!(
            finished, expected_ends,
            "one pause, then exactly one end (per run)"
        );
        let last = &items.last().unwrap()["event"];
        let expected = match (last["type"].as_str(), later_run) {
            // The later send started a new run of the approval assistant: it waits again.
            (_, true) => "paused",
            (Some("RUN_ERROR"), _) => "cancelled",
            _ => "completed",
        };
        assert_eq!(rec["status"], expected, "{rec}");
        if !later_run {
            assert_eq!(rec["pendingInterrupts"], json!([]));
        }
        let steps: Vec<&Value> = items
            .iter()
            .filter(|e| {
                e["event"]["type"] == "STEP_FINISHED" && e["event"]["stepName"] == "confirm"
            })
            .collect();
        assert!(steps.len() <= 1, "the card was answered at most once");
    }
}

#[tokio::test]
async fn sigkill_during_streams_and_pauses_loses_nothing_acknowledged() {
    let s = Server::start();
    let mut c = Client::connect(&s).await;
    let mut streaming = Vec::new();
    for i in 0..3 {
        let ack = c
            .ok(json!({"type": "send", "assistant": "slow", "content": format!("topic {i}")}))
            .await;
        streaming.push(ack["conversationId"].as_str().unwrap().to_string());
    }
    let mut paused = Vec::new();
    for i in 0..2 {
        let ack = c
            .ok(json!({"type": "send", "assistant": "approval", "content": format!("buy {i}")}))
            .await;
        paused.push(ack["conversationId"].as_str().unwrap().to_string());
    }
    let mut seen: std::collections::HashMap<String, Vec<Value>> = Default::default();
    for p in &paused {
        seen.insert(p.clone(), c.run_events(p).await);
    }
    for conv in &streaming {
        let ev = c
            .events_until(conv, |e| {
                e["type"] == "TEXT_MESSAGE_CONTENT"
                    && e["delta"].as_str().is_some_and(|d| !d.starts_with("topic"))
            })
            .await;
        seen.insert(conv.clone(), ev);
    }
    // Everything received so far, per conversation (live events keep arriving until the kill).
    let s = s.crash_and_restart();
    for (conv, _) in seen.clone() {
        let more: Vec<Value> = c
            .backlog
            .iter()
            .filter(|v| v["type"] == "event" && v["conversationId"] == json!(conv))
            .cloned()
            .collect();
        seen.get_mut(&conv).unwrap().extend(more);
    }
    let mut c2 = Client::connect(&s).await;
    for conv in &streaming {
        let before = &seen[conv];
        c2.ok(json!({"type": "subscribe", "conversationId": conv, "since": 0}))
            .await;
        let replay = c2.events_until(conv, |e| e["type"] == "RUN_ERROR").await;
        assert_contiguous(&replay, 1);
        assert_eq!(
            &replay[..before.len()],
            &before[..],
            "what was shown before the crash is replayed unchanged"
        );
        assert_eq!(replay.last().unwrap()["event"]["code"], "interrupted");
        let (_, m) = req(
            &s,
            "GET",
            &format!("/api/conversations/{conv}/messages"),
            None,
            None,
        )
        .await;
        assert!(
            m["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["role"] == "user"),
            "the acked message is there"
        );
    }
    for conv in &paused {
        let (_, rec) = req(&s, "GET", &format!("/api/conversations/{conv}"), None, None).await;
        assert_eq!(rec["status"], "paused");
        let iid = rec["pendingInterrupts"][0]["id"]
            .as_str()
            .unwrap()
            .to_string();
        c2.ok(json!({"type": "subscribe", "conversationId": conv, "since": seen[conv].len()}))
            .await;
        c2.ok(json!({"type": "resume", "conversationId": conv, "interruptId": iid, "action": "approve"})).await;
        let ev = c2.run_events(conv).await;
        assert_eq!(ev[0]["seq"].as_u64(), Some(seen[conv].len() as u64 + 1));
        assert_eq!(ev.last().unwrap()["event"]["outcome"]["type"], "success");
    }
}

#[tokio::test]
async fn concurrent_runs_are_capped_and_a_gone_http_client_cancels_its_run() {
    let s = Server::start_with(Options {
        server_config: "max_concurrent_runs = 1".into(),
        ..Options::default()
    });
    let mut c = Client::connect(&s).await;
    let conv = c.create("slow", "busy").await;
    assert_eq!(
        c.err(json!({"type": "send", "assistant": "chat", "content": "another"}))
            .await,
        "rate_limited"
    );
    c.ok(json!({"type": "cancel", "conversationId": conv}))
        .await;
    c.run_events(&conv).await;

    // A synchronous caller that goes away cancels its run.
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(400))
        .build()
        .unwrap();
    let r = client
        .post(s.http("/api/assistants/slow/invoke"))
        .json(&json!({"content": "bye"}))
        .send()
        .await;
    assert!(r.is_err(), "the client gave up");
    for _ in 0..100 {
        let (_, list) = req(&s, "GET", "/api/conversations?limit=100", None, None).await;
        let items = list["items"].as_array().unwrap().clone();
        if let Some(it) = items.iter().find(|i| i["title"] == "bye") {
            if it["status"] == "cancelled" {
                return;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the abandoned synchronous run was not cancelled");
}

/// A send over the socket's subscription limit is refused with `limit_exceeded` before
/// anything is created or stored (a retrying client must not make duplicates); a send in a
/// conversation the socket already follows still works.
#[tokio::test]
async fn a_send_over_the_subscription_limit_changes_nothing() {
    let s = Server::start_with(Options {
        server_config: "max_subscriptions_per_socket = 2".into(),
        ..Options::default()
    });
    let mut c = Client::connect(&s).await;
    let first = c.create("chat", "one").await;
    c.run_events(&first).await;
    let second = c.create("chat", "two").await;
    c.run_events(&second).await;
    let id = c
        .frame(json!({"type": "send", "assistant": "chat", "content": "three"}))
        .await;
    let refused = c.reply(&id).await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "limit_exceeded", "{refused}");
    let (_, list) = req(&s, "GET", "/api/conversations", None, None).await;
    assert_eq!(
        list["items"].as_array().unwrap().len(),
        2,
        "nothing was created: {list}"
    );
    // The socket still works in what it follows.
    c.ok(json!({"type": "send", "conversationId": first, "content": "again"}))
        .await;
}
