//! WebSocket protocol conformance under hostile clients (#18 defects 3, 6 and 8): pipelined
//! frames, raw frames a library client would never write, frame ids beyond 2^53, wrong `auth`
//! frames, many sockets that do not read, and `/metrics` in token mode.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;

/// Every conversation the local user can list.
async fn count_conversations(s: &Server) -> usize {
    let mut n = 0;
    let mut cursor = String::new();
    loop {
        let page = get_json(s, &format!("/api/conversations?limit=100&cursor={cursor}")).await;
        n += page["items"].as_array().map_or(0, |a| a.len());
        match page["nextCursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => return n,
        }
    }
}

/// Defect 3: a client writes 300 sends without waiting while it reads continuously. Every frame
/// is answered exactly once, in order, the socket stays open, and every conversation created was
/// acknowledged.
#[tokio::test]
async fn pipelined_sends_are_all_answered_in_order_while_the_client_reads() {
    const N: usize = 300;
    let s = Server::start_with(Options {
        server_config: "max_subscriptions_per_socket = 1000".into(),
        ..Options::default()
    });
    let (ws, _) = tokio_tungstenite::connect_async(s.ws_url())
        .await
        .expect("ws connect");
    let (mut tx, mut rx) = ws.split();
    let writer = tokio::spawn(async move {
        for i in 0..N {
            let f = json!({"type": "send", "id": i, "assistant": "chat", "content": format!("pipelined {i}")});
            tx.send(Message::Text(f.to_string().into()))
                .await
                .expect("write a frame");
        }
        tx
    });
    // Read continuously: answers, and the events of every run until all runs ended.
    let mut answers: Vec<Value> = Vec::new();
    let mut ended = 0usize;
    let mut closed = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    while answers.len() < N || ended < answers.iter().filter(|a| a["type"] == "ack").count() {
        let m = tokio::time::timeout_at(deadline, rx.next())
            .await
            .expect("answers and run ends within 180 s");
        match m {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).expect("a JSON frame");
                match v["type"].as_str() {
                    Some("ack") | Some("error") => answers.push(v),
                    Some("event")
                        if matches!(
                            v["event"]["type"].as_str(),
                            Some("RUN_FINISHED") | Some("RUN_ERROR")
                        ) =>
                    {
                        ended += 1
                    }
                    _ => {}
                }
            }
            Some(Ok(Message::Close(c))) => {
                closed = c.map(|c| u16::from(c.code));
                break;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("socket error: {e}"),
            None => break,
        }
    }
    assert_eq!(closed, None, "the reading client was closed");
    let _tx = writer.await.expect("writer");
    assert_eq!(answers.len(), N, "one answer per frame");
    let ids: Vec<u64> = answers
        .iter()
        .map(|a| a["id"].as_u64().expect("an id"))
        .collect();
    assert_eq!(
        ids,
        (0..N as u64).collect::<Vec<_>>(),
        "answers in frame order"
    );
    let acks = answers.iter().filter(|a| a["type"] == "ack").count();
    for a in answers.iter().filter(|a| a["type"] == "error") {
        assert_eq!(a["code"], "rate_limited", "only shedding may refuse: {a}");
    }
    assert!(acks > 0);
    assert_eq!(
        count_conversations(&s).await,
        acks,
        "a conversation per ack, no more"
    );
}
