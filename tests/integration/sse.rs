//! CONTRACT §6 over real HTTP: the conversation commands and `GET …/stream` read with a real
//! SSE parser (reqwest + eventsource-stream).

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::common::{http, Client, Server, WAIT};

/// One SSE message: its `id` (the seq), `event` (the type) and `data` (the event JSON).
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub seq: u64,
    pub kind: String,
    pub data: Value,
}

/// An open SSE response.
pub struct Sse {
    inner: std::pin::Pin<
        Box<
            dyn futures_util::Stream<
                    Item = Result<
                        eventsource_stream::Event,
                        eventsource_stream::EventStreamError<reqwest::Error>,
                    >,
                > + Send,
        >,
    >,
}

impl Sse {
    /// Open `GET /api/conversations/{id}/stream{query}`, with `Last-Event-ID` if given.
    pub async fn open(s: &Server, conv: &str, query: &str, last_event_id: Option<u64>) -> Sse {
        let mut req = http().get(s.http(&format!("/api/conversations/{conv}/stream{query}")));
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let resp = req.send().await.expect("GET stream");
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap_or(""),
            "text/event-stream"
        );
        Sse {
            inner: Box::pin(resp.bytes_stream().eventsource()),
        }
    }

    /// The next event, or `None` when the response ended.
    pub async fn next(&mut self) -> Option<SseEvent> {
        let ev = tokio::time::timeout(WAIT, self.inner.next())
            .await
            .expect("an SSE event in time")?
            .expect("a well-formed SSE stream");
        Some(SseEvent {
            seq: ev.id.parse().expect("id is a seq"),
            kind: ev.event,
            data: serde_json::from_str(&ev.data).expect("data is JSON"),
        })
    }

    /// Every event until the response ends.
    pub async fn until_end(&mut self) -> Vec<SseEvent> {
        let mut out = Vec::new();
        while let Some(e) = self.next().await {
            out.push(e);
        }
        out
    }

    /// Events up to and including the first matching `until`.
    pub async fn until(&mut self, until: impl Fn(&SseEvent) -> bool) -> Vec<SseEvent> {
        let mut out = Vec::new();
        loop {
            let e = self.next().await.expect("the stream ended too early");
            let stop = until(&e);
            out.push(e);
            if stop {
                return out;
            }
        }
    }
}

/// POST a JSON body (with an `Idempotency-Key` if given): status, headers' `x-should-retry`,
/// body.
pub async fn post(
    s: &Server,
    path: &str,
    body: Value,
    key: Option<&str>,
) -> (u16, Option<String>, Value) {
    let mut req = http().post(s.http(path)).json(&body);
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    let resp = req.send().await.expect("POST");
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("x-should-retry")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, retry, body)
}

/// Create a conversation with its first message; its id.
pub async fn create(s: &Server, assistant: &str, content: &str) -> String {
    let (st, _, b) = post(
        s,
        "/api/conversations",
        json!({"assistant": assistant, "content": content}),
        None,
    )
    .await;
    assert_eq!(st, 201, "{b}");
    assert!(b["runId"].is_string(), "{b}");
    b["conversationId"]
        .as_str()
        .expect("conversationId")
        .to_string()
}

fn ends_run(e: &SseEvent) -> bool {
    e.kind == "RUN_FINISHED" || e.kind == "RUN_ERROR"
}

fn assert_in_order_once(events: &[SseEvent]) {
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1, "seq {} at {i}: {events:?}", e.seq);
        assert_eq!(e.data["type"], json!(e.kind), "event: is the type");
    }
}

#[tokio::test]
async fn an_approval_card_and_a_page_action_driven_only_over_http() {
    let s = Server::start();
    // The approval card: created with the first message, followed until it pauses.
    let conv = create(&s, "approval", "a new laptop").await;
    let events = Sse::open(&s, &conv, "?until=idle", None)
        .await
        .until_end()
        .await;
    assert_in_order_once(&events);
    let last = events.last().expect("events");
    assert_eq!(last.kind, "RUN_FINISHED");
    assert_eq!(last.data["outcome"]["type"], "interrupt", "{last:?}");
    let card = &last.data["outcome"]["interrupts"][0];
    assert_eq!(card["reason"], "conversation_action");
    let interrupt = card["id"].as_str().expect("interrupt id").to_string();
    let view = crate::common::get_json(&s, &format!("/api/conversations/{conv}")).await;
    assert_eq!(view["pendingInterrupts"][0]["id"], json!(interrupt));

    // Approve it, waiting for the run's end.
    let (st, _, done) = post(
        &s,
        &format!("/api/conversations/{conv}/resume?wait=true"),
        json!({"interruptId": interrupt, "action": "approve", "value": {"request": "a new laptop", "amount": 42}}),
        None,
    )
    .await;
    assert_eq!(st, 200, "{done}");
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["output"]["action"], "approve", "{done}");
    let said: Vec<&str> = done["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m["content"].as_str())
        .collect();
    assert!(
        said.iter()
            .any(|m| m.contains("Approved: a new laptop (42)")),
        "{done}"
    );
    // Answered once: the same interrupt again is 409, which says not to retry.
    let (st, retry, err) = post(
        &s,
        &format!("/api/conversations/{conv}/resume"),
        json!({"interruptId": interrupt, "action": "approve"}),
        None,
    )
    .await;
    assert_eq!((st, retry.as_deref()), (409, Some("false")), "{err}");
    assert_eq!(err["error"]["code"], "interrupt_not_pending");

    // The page action: the program plays the page and sends the form's value back.
    let page = create(&s, "page", "fill me").await;
    let events = Sse::open(&s, &page, "?until=idle", None)
        .await
        .until_end()
        .await;
    let last = events.last().expect("events");
    let ask = &last.data["outcome"]["interrupts"][0];
    assert_eq!(ask["reason"], "page_action", "{last:?}");
    assert_eq!(ask["action"], "fill_form");
    assert_eq!(ask["params"]["text"], "fill me");
    let (st, _, done) = post(
        &s,
        &format!("/api/conversations/{page}/resume?wait=true"),
        json!({"interruptId": ask["id"], "value": "the form"}),
        None,
    )
    .await;
    assert_eq!(st, 200, "{done}");
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["output"]["value"], "the form", "{done}");

    // The whole log, from the start, ends idle and in order.
    let all = Sse::open(&s, &page, "?until=idle", None)
        .await
        .until_end()
        .await;
    assert_in_order_once(&all);
    assert_eq!(all.last().map(|e| e.kind.as_str()), Some("RUN_FINISHED"));
    assert_eq!(all.last().unwrap().data["outcome"]["type"], "success");
}

#[tokio::test]
async fn a_dropped_stream_resumes_with_last_event_id_losing_nothing() {
    let s = Server::start();
    let conv = create(&s, "slow", "rivers").await;
    let mut first = Sse::open(&s, &conv, "", None).await;
    let mut got = Vec::new();
    for _ in 0..6 {
        got.push(first.next().await.expect("an event"));
    }
    drop(first); // mid-run: the slow model is still streaming
    let last = got.last().expect("events").seq;
    // Last-Event-ID wins over since=0.
    let rest = Sse::open(&s, &conv, "?since=0&until=idle", Some(last))
        .await
        .until_end()
        .await;
    assert!(!rest.is_empty());
    assert_eq!(rest[0].seq, last + 1, "resumed right after the last seen");
    got.extend(rest);
    assert_in_order_once(&got);
    let end = got.last().expect("events");
    assert_eq!(end.kind, "RUN_FINISHED", "{end:?}");
    assert_eq!(end.data["outcome"]["type"], "success");

    // A bad Last-Event-ID is refused with a reason.
    let resp = http()
        .get(s.http(&format!("/api/conversations/{conv}/stream")))
        .header("Last-Event-ID", "yesterday")
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), 400);
    // Another conversation's id does not exist.
    let resp = http()
        .get(s.http("/api/conversations/nope/stream"))
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn sse_gives_the_same_events_as_the_websocket() {
    let s = Server::start();
    let mut ws = Client::connect(&s).await;
    let conv = ws.create("chat", "tell me about tides").await;
    let mut sse = Sse::open(&s, &conv, "?until=idle", None).await;
    let frames = ws.run_events(&conv).await;
    let events = sse.until(ends_run).await;
    assert_eq!(frames.len(), events.len());
    for (f, e) in frames.iter().zip(&events) {
        assert_eq!(f["seq"].as_u64(), Some(e.seq));
        assert_eq!(f["event"], e.data);
    }
    // ?until=idle: the response ends after the run's end.
    assert_eq!(sse.next().await, None);
    ws.close().await;
}

#[tokio::test]
async fn on_busy_interrupt_ends_the_active_run_as_cancelled_before_the_new_one() {
    let s = Server::start();
    let conv = create(&s, "slow", "mountains").await;
    let mut sse = Sse::open(&s, &conv, "", None).await;
    let started = sse.until(|e| e.kind == "RUN_STARTED").await;
    let old_run = started.last().expect("RUN_STARTED").data["runId"].clone();
    // The model is streaming: the run is active.
    sse.until(|e| e.kind == "TEXT_MESSAGE_CONTENT").await;
    // The default (reject) refuses, and says not to retry.
    let path = format!("/api/conversations/{conv}/messages");
    let (st, retry, err) = post(&s, &path, json!({"content": "no"}), None).await;
    assert_eq!((st, retry.as_deref()), (409, Some("false")), "{err}");
    assert_eq!(err["error"]["code"], "conversation_busy");
    // interrupt: accepted at once; the old run ends cancelled, then the new one starts.
    let (st, _, ok) = post(
        &s,
        &path,
        json!({"content": "oceans instead", "onBusy": "interrupt"}),
        None,
    )
    .await;
    assert_eq!(st, 202, "{ok}");
    let rest = sse
        .until(|e| e.kind == "RUN_STARTED" && e.data["runId"] != old_run)
        .await;
    let ended = rest
        .iter()
        .position(|e| e.kind == "RUN_ERROR")
        .expect("the old run ended");
    assert_eq!(rest[ended].data["runId"], old_run);
    assert_eq!(rest[ended].data["code"], "cancelled");
    assert!(
        !rest.iter().any(|e| e.kind == "RUN_FINISHED"),
        "the old run did not finish: {rest:?}"
    );
    let started = rest.len() - 1;
    assert!(ended < started);
    let user_msg = rest[..started]
        .iter()
        .any(|e| e.kind == "TEXT_MESSAGE_CONTENT" && e.data["delta"] == "oceans instead");
    assert!(user_msg, "the new message is in the log: {rest:?}");
    // Cancel the new run over HTTP.
    let (st, _, c) = post(
        &s,
        &format!("/api/conversations/{conv}/cancel"),
        json!({}),
        None,
    )
    .await;
    assert_eq!((st, c), (200, json!({"cancelled": true})));
    let end = sse.until(ends_run).await;
    let last = end.last().expect("events");
    assert_eq!(last.data["code"], "cancelled");
    // A bad onBusy is a bad request and changes nothing.
    let (st, _, _) = post(&s, &path, json!({"content": "x", "onBusy": "later"}), None).await;
    assert_eq!(st, 400);
}

#[tokio::test]
async fn invoke_with_accept_event_stream_streams_the_run() {
    let s = Server::start();
    let resp = http()
        .post(s.http("/api/assistants/chat/invoke"))
        .header("Accept", "text/event-stream")
        .json(&json!({"content": "streams please"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status(), 200);
    let conv = resp.headers()["x-conversation-id"]
        .to_str()
        .expect("id")
        .to_string();
    let mut sse = Sse {
        inner: Box::pin(resp.bytes_stream().eventsource()),
    };
    let events = sse.until_end().await;
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"TEXT_MESSAGE_START"), "{kinds:?}");
    assert!(kinds.contains(&"RUN_STARTED"));
    assert_eq!(kinds.last(), Some(&"RUN_FINISHED"), "{kinds:?}");
    assert!(kinds.contains(&"TEXT_MESSAGE_CONTENT"));
    // The same events, same seqs, as the conversation's log.
    let log = Sse::open(&s, &conv, "?until=idle", None)
        .await
        .until_end()
        .await;
    assert_eq!(
        log, events,
        "a new conversation: the whole log is the streamed call"
    );
    // The checks of invoke still come first: an interactive assistant is refused.
    let resp = http()
        .post(s.http("/api/assistants/approval/invoke"))
        .header("Accept", "text/event-stream")
        .json(&json!({"content": "x"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status(), 409);
    assert_eq!(resp.headers()["x-should-retry"], "false");
}

/// Reads the raw body of an SSE response until `until`; its text.
async fn read_raw_until(resp: &mut reqwest::Response, until: tokio::time::Instant) -> String {
    let mut text = String::new();
    while let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(until, resp.chunk()).await {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    text
}

#[tokio::test]
async fn an_idle_stream_gets_heartbeats_and_still_delivers_events_after_them() {
    let s = Server::start_with(crate::common::Options {
        server_config: "sse_heartbeat_seconds = 1".into(),
        ..Default::default()
    });
    let conv = create(&s, "slow", "rivers").await;
    let done = Sse::open(&s, &conv, "?until=idle", None)
        .await
        .until_end()
        .await;
    let last = done.last().expect("the first run's events").seq;

    let mut resp = http()
        .get(s.http(&format!("/api/conversations/{conv}/stream")))
        .send()
        .await
        .expect("GET stream");
    assert_eq!(resp.status(), 200);
    let start = tokio::time::Instant::now();
    let idle = read_raw_until(&mut resp, start + std::time::Duration::from_millis(2600)).await;
    let beats = idle.matches(": heartbeat\n\n").count();
    assert_eq!(
        idle.matches("\nid: ").count() + usize::from(idle.starts_with("id: ")),
        last as usize,
        "the replay, once: {idle}"
    );
    assert!(
        (1..=3).contains(&beats),
        "one heartbeat a second while idle, {beats} in 2.6 s: {idle}"
    );
    assert!(
        idle.ends_with(": heartbeat\n\n"),
        "heartbeats come after the replay: {idle}"
    );

    // After the heartbeats, a new run's events still arrive on the same response.
    let (st, _, b) = post(
        &s,
        &format!("/api/conversations/{conv}/messages"),
        json!({"content": "lakes"}),
        None,
    )
    .await;
    assert_eq!(st, 202, "{b}");
    let mut more = String::new();
    let deadline = tokio::time::Instant::now() + crate::common::WAIT;
    while !more.contains("event: RUN_FINISHED") && tokio::time::Instant::now() < deadline {
        more.push_str(
            &read_raw_until(
                &mut resp,
                deadline.min(tokio::time::Instant::now() + std::time::Duration::from_secs(1)),
            )
            .await,
        );
    }
    assert!(
        more.contains(&format!("id: {}\n", last + 1)),
        "the next seq follows: {more}"
    );
    assert!(more.contains("event: RUN_FINISHED"), "{more}");
}
