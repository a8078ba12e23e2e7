//! The WebSocket protocol (CONTRACT §2) against the real server.

use serde_json::{json, Value};

use crate::common::*;

fn is_end(e: &Value) -> bool {
    e["type"] == "RUN_FINISHED" || e["type"] == "RUN_ERROR"
}

async fn start_conv(c: &mut Client, assistant: &str, content: &str) -> (String, Vec<Value>) {
    let ack = c
        .ok(json!({"type": "send", "assistant": assistant, "content": content}))
        .await;
    let conv = ack["conversationId"]
        .as_str()
        .expect("conversationId")
        .to_string();
    assert!(
        ack["runId"].as_str().is_some_and(|r| !r.is_empty()),
        "{ack}"
    );
    let events = c.run_events(&conv).await;
    (conv, events)
}

#[tokio::test]
async fn full_conversation_streams_text() {
    let s = Server::start();
    let mut c = Client::connect(&s).await;
    let (conv, ev) = start_conv(&mut c, "chat", "Tell me about invoices").await;
    assert_contiguous(&ev, 1);
    let t = types(&ev);
    assert_eq!(
        &t[..4],
        [
            "TEXT_MESSAGE_START",
            "TEXT_MESSAGE_CONTENT",
            "TEXT_MESSAGE_END",
            "RUN_STARTED"
        ]
    );
    assert_eq!(ev[0]["event"]["role"], "user");
    let deltas = t.iter().filter(|x| *x == "TEXT_MESSAGE_CONTENT").count();
    assert!(deltas > 3, "the reply streams in several deltas: {t:?}");
    assert!(t.contains(&"STEP_STARTED".to_string()) && t.contains(&"STEP_FINISHED".to_string()));
    let last = &ev.last().unwrap()["event"];
    assert_eq!(last["type"], "RUN_FINISHED");
    assert_eq!(last["outcome"]["type"], "success");
    let text = assistant_text(&ev);
    assert!(!text.is_empty());
    assert_eq!(last["outcome"]["result"]["text"], json!(text));

    // A second turn in the same conversation continues the seqs.
    let ack = c
        .ok(json!({"type": "send", "conversationId": conv, "content": "And refunds?"}))
        .await;
    assert_eq!(ack["conversationId"], json!(conv));
    let ev2 = c.run_events(&conv).await;
    assert_eq!(ev2[0]["seq"].as_u64(), Some(ev.len() as u64 + 1));
    assert_contiguous(&ev2, ev.len() as u64 + 1);

    // Stored: messages and conversation record.
    let msgs = get_json(&s, &format!("/api/conversations/{conv}/messages")).await;
    let items = msgs["items"].as_array().unwrap();
    assert_eq!(items.len(), 4, "{msgs}");
    assert_eq!(items[0]["role"], "assistant");
    assert_eq!(items[3]["content"], "Tell me about invoices");
    let rec = get_json(&s, &format!("/api/conversations/{conv}")).await;
    assert_eq!(rec["title"], "Tell me about invoic");
    assert_eq!(rec["status"], "completed");
    assert_eq!(rec["lastSeq"].as_u64(), Some((ev.len() + ev2.len()) as u64));
}

#[tokio::test]
async fn conversation_action_answered_by_button_and_only_once() {
    let s = Server::start();
    let mut c = Client::connect(&s).await;
    let (conv, ev) = start_conv(&mut c, "approval", "a new laptop").await;
    let fin = &ev.last().unwrap()["event"];
    assert_eq!(fin["outcome"]["type"], "interrupt", "{fin}");
    let i = &fin["outcome"]["interrupts"][0];
    assert_eq!(i["reason"], "conversation_action");
    assert_eq!(i["nodeId"], "confirm");
    assert_eq!(i["buttons"], json!(["approve", "reject"]));
    assert_eq!(
        i["payload"],
        json!({"request": "a new laptop", "amount": 42})
    );
    let iid = i["id"].as_str().unwrap().to_string();

    let rec = get_json(&s, &format!("/api/conversations/{conv}")).await;
    assert_eq!(rec["status"], "paused");
    assert_eq!(rec["pendingInterrupts"][0]["id"], json!(iid));

    // A button that does not exist.
    assert_eq!(
        c.err(
            json!({"type": "resume", "conversationId": conv, "interruptId": iid, "action": "maybe"})
        )
        .await,
        "bad_request"
    );
    // Approve with edited data.
    c.ok(
        json!({"type": "resume", "conversationId": conv, "interruptId": iid, "action": "approve",
                "value": {"request": "a new laptop", "amount": 40}}),
    )
    .await;
    let ev2 = c.run_events(&conv).await;
    assert_eq!(assistant_text(&ev2), "Approved: a new laptop (40)");
    assert_eq!(
        ev2.last().unwrap()["event"]["outcome"]["result"],
        json!({"action": "approve"})
    );
    // The same interrupt again: refused, nothing applied.
    assert_eq!(c.err(json!({"type": "resume", "conversationId": conv, "interruptId": iid, "action": "reject"})).await, "interrupt_not_pending");
    let rec = get_json(&s, &format!("/api/conversations/{conv}")).await;
    assert_eq!(rec["status"], "completed");
    assert_eq!(rec["lastSeq"].as_u64(), ev2.last().unwrap()["seq"].as_u64());
}

#[tokio::test]
async fn page_action_resumed_by_plain_send() {
    let s = Server::start();
    let mut c = Client::connect(&s).await;
    let (conv, ev) = start_conv(&mut c, "page", "expense 12 EUR").await;
    let i = &ev.last().unwrap()["event"]["outcome"]["interrupts"][0];
    assert_eq!(i["reason"], "page_action");
    assert_eq!(i["action"], "fill_form");
    assert_eq!(i["params"], json!({"text": "expense 12 EUR"}));
    assert_eq!(i["message"], "Check the form and press Submit.");
    // Send AI Message: the content becomes the node's value.
    c.ok(json!({"type": "send", "conversationId": conv, "content": "submitted #77"}))
        .await;
    let ev2 = c.run_events(&conv).await;
    assert_eq!(assistant_text(&ev2), "The page sent: submitted #77");
    assert_eq!(
        ev2.last().unwrap()["event"]["outcome"]["result"],
        json!({"value": "submitted #77"})
    );
}

#[tokio::test]
async fn cancel_in_the_middle_of_a_stream_keeps_partial_text() {
    let s = Server::start();
    let mut c = Client::connect(&s).await;
    let conv = c.create("slow", "rivers").await;
    // Wait for some streamed text, then cancel.
    let mut seen = c
        .events_until(&conv, |e| {
            e["type"] == "TEXT_MESSAGE_CONTENT" && e["delta"] != "rivers"
        })
        .await;
    seen.extend(
        c.events_until(&conv, |e| e["type"] == "TEXT_MESSAGE_CONTENT")
            .await,
    );
    let r = c
        .ok(json!({"type": "cancel", "conversationId": conv}))
        .await;
    assert_eq!(r["cancelled"], true);
    seen.extend(c.run_events(&conv).await);
    let last = &seen.last().unwrap()["event"];
    assert_eq!(last["type"], "RUN_ERROR");
    assert_eq!(last["code"], "cancelled");
    let t = types(&seen);
    let n = t.len();
    assert_eq!(
        t[n - 2],
        "TEXT_MESSAGE_END",
        "the partial message is closed: {t:?}"
    );
    let partial = assistant_text(&seen);
    assert!(!partial.is_empty());
    let rec = get_json(&s, &format!("/api/conversations/{conv}")).await;
    assert_eq!(rec["status"], "cancelled");
    let msgs = get_json(&s, &format!("/api/conversations/{conv}/messages")).await;
    assert_eq!(
        msgs["items"][0]["content"],
        json!(partial),
        "partial text is kept"
    );
    // Cancelling when idle is harmless.
    let r = c
        .ok(json!({"type": "cancel", "conversationId": conv}))
        .await;
    assert_eq!(r["cancelled"], false);
}

#[tokio::test]
async fn two_sockets_see_identical_events_and_reconnect_replays_missed() {
    let s = Server::start();
    let mut a = Client::connect(&s).await;
    let mut b = Client::connect(&s).await;
    let (conv, first) = start_conv(&mut a, "chat", "hello").await;
    // b joins from the start: replay, then live.
    let r = b
        .ok(json!({"type": "subscribe", "conversationId": conv, "since": 0}))
        .await;
    assert_eq!(r["lastSeq"].as_u64(), Some(first.len() as u64));
    let replayed = b.events_until(&conv, is_end).await;
    assert_eq!(replayed, first, "replay = live");

    a.ok(json!({"type": "send", "conversationId": conv, "content": "more please"}))
        .await;
    let ea = a.run_events(&conv).await;
    let eb = b.run_events(&conv).await;
    assert_eq!(ea, eb, "two sockets see the same events with the same seqs");

    // b drops; a sends; b reconnects with since = its last seq and gets exactly the missed ones.
    let last_b = eb.last().unwrap()["seq"].as_u64().unwrap();
    b.drop_abruptly();
    a.ok(json!({"type": "send", "conversationId": conv, "content": "third"}))
        .await;
    let missed = a.run_events(&conv).await;
    let mut b2 = Client::connect(&s).await;
    b2.ok(json!({"type": "subscribe", "conversationId": conv, "since": last_b}))
        .await;
    let got = b2.events_until(&conv, is_end).await;
    assert_eq!(got, missed);
    assert_contiguous(&got, last_b + 1);
    // Nothing more arrives twice: a fourth turn continues right after.
    a.ok(json!({"type": "send", "conversationId": conv, "content": "fourth"}))
        .await;
    let live = b2.run_events(&conv).await;
    assert_eq!(
        live[0]["seq"].as_u64(),
        Some(missed.last().unwrap()["seq"].as_u64().unwrap() + 1)
    );
}

#[tokio::test]
async fn busy_refusal_and_enqueue() {
    let s = Server::start();
    let mut c = Client::connect(&s).await;
    let conv = c.create("slow", "first").await;
    assert_eq!(
        c.err(json!({"type": "send", "conversationId": conv, "content": "second"}))
            .await,
        "conversation_busy"
    );
    c.ok(json!({"type": "cancel", "conversationId": conv}))
        .await;
    c.run_events(&conv).await;

    // onBusy: enqueue runs the second message after the first.
    let q = c.create("queue", "one").await;
    c.ok(json!({"type": "send", "conversationId": q, "content": "two"}))
        .await;
    let ev = c.events_until(&q, |e| e["type"] == "RUN_FINISHED").await;
    let ev2 = c.events_until(&q, |e| e["type"] == "RUN_FINISHED").await;
    assert!(assistant_text(&ev).contains("one"));
    assert!(
        assistant_text(&ev2).contains("two"),
        "{}",
        assistant_text(&ev2)
    );
}

#[tokio::test]
async fn bad_frames_get_precise_errors_and_the_socket_stays_usable() {
    let s = Server::start();
    let mut c = Client::connect(&s).await;
    c.send_raw("{not json").await;
    let e = c.wait_for(|v| v["type"] == "error").await;
    assert_eq!(e["code"], "bad_request");
    assert!(e["message"].as_str().unwrap().contains("not valid JSON"));
    assert_eq!(c.err(json!({"type": "dance"})).await, "bad_request");
    assert_eq!(c.err(json!({"type": "send"})).await, "bad_request");
    assert_eq!(
        c.err(json!({"type": "send", "content": 5, "assistant": "chat"}))
            .await,
        "bad_request"
    );
    assert_eq!(
        c.err(json!({"type": "send", "content": "hi"})).await,
        "bad_request"
    );
    for (frame, code) in [
        (
            json!({"type": "send", "content": "hi", "assistant": "nope"}),
            "unknown_assistant",
        ),
        (
            json!({"type": "send", "content": "hi", "conversationId": "nope"}),
            "conversation_not_found",
        ),
        (
            json!({"type": "subscribe", "conversationId": "nope"}),
            "conversation_not_found",
        ),
        (
            json!({"type": "resume", "conversationId": "nope", "interruptId": "x"}),
            "conversation_not_found",
        ),
        (
            json!({"type": "cancel", "conversationId": "nope"}),
            "conversation_not_found",
        ),
    ] {
        assert_eq!(c.err(frame.clone()).await, code, "{frame}");
    }
    // Invalid args name each field.
    let id = c.frame(json!({"type": "send", "assistant": "args", "content": "hi", "args": {"department": "hr", "limit": "x", "extra": 1}})).await;
    let e = c.reply(&id).await;
    assert_eq!(e["code"], "invalid_args");
    let fields: Vec<&str> = e["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["department", "limit", "extra"]);
    assert_eq!(
        c.err(json!({"type": "send", "assistant": "args", "content": "hi"}))
            .await,
        "invalid_args"
    );
    // Still usable, with defaults applied.
    let ack = c.ok(json!({"type": "send", "assistant": "args", "content": "hi", "args": {"department": "sales"}})).await;
    let conv = ack["conversationId"].as_str().unwrap().to_string();
    let ev = c.run_events(&conv).await;
    assert_eq!(assistant_text(&ev), "sales / 500: hi");
    // A resume of an interrupt that never existed.
    assert_eq!(c.err(json!({"type": "resume", "conversationId": conv, "interruptId": "x", "action": "approve"})).await, "interrupt_not_pending");
}

#[tokio::test]
async fn paused_conversation_survives_restart_and_resumes() {
    let s = Server::start();
    let mut c = Client::connect(&s).await;
    let (conv, ev) = start_conv(&mut c, "approval", "a desk").await;
    let iid = ev.last().unwrap()["event"]["outcome"]["interrupts"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let last = ev.last().unwrap()["seq"].as_u64().unwrap();
    c.close().await;
    let s = s.restart();
    let mut c = Client::connect(&s).await;
    let rec = get_json(&s, &format!("/api/conversations/{conv}")).await;
    assert_eq!(rec["status"], "paused");
    // Replay shows exactly what was shown before.
    c.ok(json!({"type": "subscribe", "conversationId": conv, "since": 0}))
        .await;
    let replay = c.events_until(&conv, is_end).await;
    assert_eq!(replay, ev);
    c.ok(json!({"type": "resume", "conversationId": conv, "interruptId": iid, "action": "reject"}))
        .await;
    let ev2 = c.run_events(&conv).await;
    assert_eq!(ev2[0]["seq"].as_u64(), Some(last + 1));
    assert_eq!(assistant_text(&ev2), "Rejected.");
}

#[tokio::test]
async fn killed_mid_run_keeps_every_acked_message() {
    let s = Server::start();
    let mut c = Client::connect(&s).await;
    let conv = c.create("slow", "glaciers").await;
    let seen = c
        .events_until(&conv, |e| {
            e["type"] == "TEXT_MESSAGE_CONTENT" && e["delta"] != "glaciers"
        })
        .await;
    let s = s.crash_and_restart();
    let mut c = Client::connect(&s).await;
    c.ok(json!({"type": "subscribe", "conversationId": conv, "since": 0}))
        .await;
    let replay = c.events_until(&conv, |e| e["type"] == "RUN_ERROR").await;
    // Everything seen before the crash is there, unchanged, followed by RUN_ERROR interrupted.
    assert_eq!(&replay[..seen.len()], &seen[..]);
    assert_contiguous(&replay, 1);
    let last = &replay.last().unwrap()["event"];
    assert_eq!(last["code"], "interrupted");
    let msgs = get_json(&s, &format!("/api/conversations/{conv}/messages")).await;
    let items = msgs["items"].as_array().unwrap();
    assert!(
        items
            .iter()
            .any(|m| m["role"] == "user" && m["content"] == "glaciers"),
        "{msgs}"
    );
    let rec = get_json(&s, &format!("/api/conversations/{conv}")).await;
    assert_eq!(rec["status"], "failed");
    // The conversation goes on.
    c.ok(json!({"type": "send", "conversationId": conv, "content": "again"}))
        .await;
    let ev = c
        .events_until(&conv, |e| {
            e["type"] == "TEXT_MESSAGE_START" && e["role"] == "assistant"
        })
        .await;
    assert_eq!(ev[0]["seq"].as_u64(), Some(replay.len() as u64 + 1));
}

#[tokio::test]
async fn a_closed_socket_is_not_a_cancel() {
    let s = Server::start();
    let mut c = Client::connect(&s).await;
    let conv = c.create("slow", "volcanoes").await;
    c.drop_abruptly();
    let mut d = Client::connect(&s).await;
    d.ok(json!({"type": "subscribe", "conversationId": conv, "since": 0}))
        .await;
    let ev = d.events_until(&conv, is_end).await;
    assert_eq!(
        ev.last().unwrap()["event"]["type"],
        "RUN_FINISHED",
        "the run went on"
    );
    assert_contiguous(&ev, 1);
}

#[tokio::test]
async fn cancel_while_paused_withdraws_the_interrupt() {
    let s = Server::start();
    let mut c = Client::connect(&s).await;
    let (conv, ev) = start_conv(&mut c, "approval", "a chair").await;
    let iid = ev.last().unwrap()["event"]["outcome"]["interrupts"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = c
        .ok(json!({"type": "cancel", "conversationId": conv}))
        .await;
    assert_eq!(r["cancelled"], true);
    let end = c.run_events(&conv).await;
    assert_eq!(end.last().unwrap()["event"]["code"], "cancelled");
    assert_eq!(c.err(json!({"type": "resume", "conversationId": conv, "interruptId": iid, "action": "approve"})).await, "interrupt_not_pending");
    let rec = get_json(&s, &format!("/api/conversations/{conv}")).await;
    assert_eq!(rec["status"], "cancelled");
    assert_eq!(rec["pendingInterrupts"], json!([]));
    // A new message starts a new run (it is not taken as an answer).
    c.ok(json!({"type": "send", "conversationId": conv, "content": "a table"}))
        .await;
    let ev2 = c.run_events(&conv).await;
    assert_eq!(
        ev2.last().unwrap()["event"]["outcome"]["interrupts"][0]["payload"]["request"],
        "a table"
    );
}

async fn live_actors(s: &Server) -> u64 {
    let m = metrics_text(s).await;
    m.lines()
        .find_map(|l| l.strip_prefix("parley_live_actors "))
        .and_then(|v| v.trim().parse().ok())
        .expect("parley_live_actors")
}

#[tokio::test]
async fn idle_actors_leave_memory_and_come_back_with_their_memory() {
    let s = Server::start();
    let mut c = Client::connect(&s).await;
    let (conv, ev) = start_conv(&mut c, "brief", "My name is Ada").await;
    assert_eq!(live_actors(&s).await, 1);
    // Subscribed: it stays. Unsubscribed and idle for sessionTimeout: it leaves.
    c.ok(json!({"type": "unsubscribe", "conversationId": conv}))
        .await;
    let mut gone = false;
    for _ in 0..60 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if live_actors(&s).await == 0 {
            gone = true;
            break;
        }
    }
    assert!(gone, "the idle actor left memory");
    // It comes back from the store: seqs go on, and earlier turns are still its memory.
    c.ok(json!({"type": "send", "conversationId": conv, "content": "What is my name?"}))
        .await;
    let ev2 = c.run_events(&conv).await;
    assert_eq!(ev2[0]["seq"].as_u64(), Some(ev.len() as u64 + 1));
    assert!(
        assistant_text(&ev2).contains("Ada"),
        "{}",
        assistant_text(&ev2)
    );
}

#[tokio::test]
async fn silent_sockets_are_closed_after_three_heartbeats() {
    let s = Server::start_with(Options {
        server_config: "heartbeat_seconds = 1".into(),
        ..Options::default()
    });
    let mut silent = Client::connect(&s).await;
    let mut lively = Client::connect(&s).await;
    // `lively` answers pings (tungstenite does while it reads); `silent` reads nothing for 4.5 s.
    let keep = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(4500);
        while tokio::time::Instant::now() < deadline {
            lively
                .err(json!({"type": "unsubscribe", "conversationId": "none-such"}))
                .await;
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
        lively
    });
    tokio::time::sleep(std::time::Duration::from_millis(4500)).await;
    let mut lively = keep.await.unwrap();
    let (_, code) = silent.read_until_closed().await;
    // Closed (1001 "going away"; tungstenite may fail first on the pongs it owes a closed peer).
    assert!(code == Some(1001) || code.is_none(), "{code:?}");
    // The lively socket is still usable.
    lively
        .ok(json!({"type": "send", "assistant": "chat", "content": "still here"}))
        .await;
}

/// Value of a counter in `/metrics`.
async fn counter(s: &Server, name: &str) -> u64 {
    let m = metrics_text(s).await;
    m.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {m}"))
}

#[tokio::test]
async fn a_message_and_the_run_it_starts_share_one_commit() {
    // The ack waits for the commit holding the message; the commit waits while the engine
    // (the built-in model at pace 0, never waiting for anything) still produces, so the
    // message, the whole run and its end are stored by one fsync.
    let s = Server::start();
    let mut c = Client::connect(&s).await;
    let (conv, _) = start_conv(&mut c, "chat", "hello").await;
    let before = counter(&s, "parley_store_commits_total").await;
    c.ok(json!({"type": "send", "conversationId": conv, "content": "and refunds?"}))
        .await;
    let ev = c.run_events(&conv).await;
    assert!(ev.len() > 10, "a run with some events: {}", ev.len());
    let after = counter(&s, "parley_store_commits_total").await;
    assert_eq!(after - before, 1, "commits for one message and its run");
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn an_open_socket_costs_the_server_one_descriptor() {
    let s = Server::start();
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", s.child.id()))
            .expect("the server's descriptors")
            .count()
    };
    let mut first = Client::connect(&s).await;
    first.create("chat", "hello").await;
    let before = fds();
    let mut clients = Vec::new();
    for _ in 0..40 {
        clients.push(Client::connect(&s).await);
    }
    let after = fds();
    assert!(
        after - before <= 42,
        "40 more sockets took {} more descriptors",
        after - before
    );
}

#[tokio::test]
async fn a_model_that_streams_slowly_is_not_waited_for() {
    // The commit of a message waits only while the engine produces without waiting; a model
    // that streams (40 ms between deltas here) lets it go at once, so the ack and the first
    // deltas come long before the run ends.
    let s = Server::start();
    let mut c = Client::connect(&s).await;
    let began = std::time::Instant::now();
    let conv = c.create("slow", "rivers").await;
    let acked = began.elapsed();
    c.events_until(&conv, |e| {
        e["type"] == "TEXT_MESSAGE_CONTENT" && e["delta"] != "rivers"
    })
    .await;
    let first_delta = began.elapsed();
    c.run_events(&conv).await;
    let ended = began.elapsed();
    assert!(
        ended > first_delta + std::time::Duration::from_millis(200),
        "the reply streams: first delta at {first_delta:?}, end at {ended:?}"
    );
    assert!(
        acked + std::time::Duration::from_millis(200) < ended,
        "the ack came at {acked:?}, the end at {ended:?}"
    );
}

#[tokio::test]
async fn a_stored_message_names_the_run_it_belongs_to() {
    let s = Server::start();
    let mut c = Client::connect(&s).await;
    let first = c
        .ok(json!({"type": "send", "assistant": "chat", "content": "one"}))
        .await;
    let conv = first["conversationId"].as_str().expect("id").to_string();
    c.run_events(&conv).await;
    let second = c
        .ok(json!({"type": "send", "conversationId": conv, "content": "two"}))
        .await;
    c.run_events(&conv).await;
    let msgs = get_json(&s, &format!("/api/conversations/{conv}/messages")).await;
    let runs: Vec<(String, String)> = msgs["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|m| {
            let role = m["role"].as_str().unwrap_or_default().to_string();
            (role, m["runId"].as_str().unwrap_or("none").to_string())
        })
        .collect();
    let (r1, r2) = (
        first["runId"].as_str().unwrap(),
        second["runId"].as_str().unwrap(),
    );
    // Newest first: each user message belongs to the run it started, like its answer.
    let want: Vec<(String, String)> = [
        ("assistant", r2),
        ("user", r2),
        ("assistant", r1),
        ("user", r1),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(runs, want, "{msgs}");
}
