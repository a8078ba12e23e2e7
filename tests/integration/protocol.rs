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

/// A WebSocket client that writes frames by hand (`tokio-tungstenite` refuses to write what
/// breaks the protocol): the upgrade, then masked frames as given.
mod raw {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    pub async fn upgrade(addr: &str) -> TcpStream {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let req = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.expect("write upgrade");
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut b).await.expect("read upgrade answer");
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        s
    }

    /// One frame: `fin`, `opcode`, masked (as a client must) unless `masked` is false.
    pub fn frame(fin: bool, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        let m = if masked { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => out.push(m | n as u8),
            n if n <= 0xffff => {
                out.push(m | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(m | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let key = [0x37, 0xfa, 0x21, 0x3d];
        if masked {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            out.extend_from_slice(payload);
        }
        out
    }

    /// Read server frames until a close frame: its code (`None`: the connection ended without
    /// one).
    pub async fn close_code(s: &mut TcpStream) -> Option<u16> {
        let read = async {
            loop {
                let mut h = [0u8; 2];
                s.read_exact(&mut h).await.ok()?;
                let len = match h[1] & 0x7f {
                    126 => {
                        let mut b = [0u8; 2];
                        s.read_exact(&mut b).await.ok()?;
                        u16::from_be_bytes(b) as usize
                    }
                    127 => {
                        let mut b = [0u8; 8];
                        s.read_exact(&mut b).await.ok()?;
                        u64::from_be_bytes(b) as usize
                    }
                    n => n as usize,
                };
                let mut payload = vec![0u8; len];
                s.read_exact(&mut payload).await.ok()?;
                if h[0] & 0x0f == 8 {
                    return payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(30), read)
            .await
            .expect("the server closes within 30 s")
    }

    pub async fn send(s: &mut TcpStream, bytes: &[u8]) {
        s.write_all(bytes).await.expect("write frame");
    }
}

/// Defect 6: each protocol violation closes with its RFC 6455 §7.4.1 code, not all with 1009.
#[tokio::test]
async fn protocol_violations_close_with_their_rfc_codes() {
    let s = Server::start_with(Options {
        server_config: "max_frame_bytes = 4096".into(),
        ..Options::default()
    });
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "a text frame that is not UTF-8",
            raw::frame(true, 1, b"{\"type\":\"\xff\xfe\"}", true),
            1007,
        ),
        (
            "a fragmented text message that is not UTF-8",
            [
                raw::frame(false, 1, b"{\"a\":\"\xe2", true),
                raw::frame(true, 0, b"\x28\xa1\"}", true),
            ]
            .concat(),
            1007,
        ),
        (
            "a reserved data opcode",
            raw::frame(true, 3, b"{}", true),
            1002,
        ),
        (
            "a reserved control opcode",
            raw::frame(true, 0xb, b"", true),
            1002,
        ),
        (
            "an unmasked client frame",
            raw::frame(true, 1, b"{}", false),
            1002,
        ),
        (
            "a continuation without a first frame",
            raw::frame(true, 0, b"{}", true),
            1002,
        ),
        (
            "a frame over max_frame_bytes",
            raw::frame(true, 1, &vec![b' '; 5000], true),
            1009,
        ),
        (
            "a fragmented message over max_frame_bytes",
            [
                raw::frame(false, 1, &vec![b' '; 3000], true),
                raw::frame(true, 0, &vec![b' '; 3000], true),
            ]
            .concat(),
            1009,
        ),
    ];
    for (what, bytes, code) in cases {
        let mut sock = raw::upgrade(&s.addr).await;
        raw::send(&mut sock, &bytes).await;
        assert_eq!(raw::close_code(&mut sock).await, Some(code), "{what}");
    }
    // A well-formed frame on a fresh socket is still served.
    let mut c = Client::connect(&s).await;
    assert_eq!(
        c.err(json!({"type": "cancel", "conversationId": "nope"}))
            .await,
        "conversation_not_found"
    );
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Write a text frame as given; the text of the next `ack` or `error` (events are skipped).
async fn answer_text(ws: &mut Ws, text: &str) -> String {
    ws.send(Message::Text(text.to_string().into()))
        .await
        .expect("write");
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("an answer within the wait")
            .expect("the socket is open")
            .expect("a frame");
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(&t).expect("JSON");
            if v["type"] != "event" {
                return t.to_string();
            }
        }
    }
}

/// Defect 6: integer frame ids above 2^53 are echoed exactly (not as floats) and two of them
/// that an f64 cannot tell apart are two idempotency keys.
#[tokio::test]
async fn frame_ids_beyond_2_pow_53_are_echoed_exactly_and_never_collide() {
    let s = Server::start();
    let (mut ws, _) = tokio_tungstenite::connect_async(s.ws_url())
        .await
        .expect("connect");
    let a = "12345678901234567890123";
    let b = "12345678901234567890124";
    // As f64 both are 1.2345678901234568e22.
    assert_eq!(a.parse::<f64>().unwrap(), b.parse::<f64>().unwrap());

    let e = answer_text(
        &mut ws,
        &format!(r#"{{"type":"cancel","id":{a},"conversationId":"nope"}}"#),
    )
    .await;
    assert!(e.contains(&format!(r#""id":{a},"#)), "{e}");
    let e = answer_text(&mut ws, r#"{"type":"nope","id":1.50e0}"#).await;
    assert!(e.contains(r#""id":1.50e0,"#), "echoed as written: {e}");

    let send = |id: &str, content: &str| {
        format!(r#"{{"type":"send","id":{id},"assistant":"chat","content":"{content}"}}"#)
    };
    let first = answer_text(&mut ws, &send(a, "first")).await;
    assert!(
        first.ends_with(&format!(r#""type":"ack","id":{a}}}"#)),
        "{first}"
    );
    let second = answer_text(&mut ws, &send(b, "second")).await;
    assert!(
        second.ends_with(&format!(r#""type":"ack","id":{b}}}"#)),
        "a different key, not idempotency_key_reused: {second}"
    );
    let conv = |t: &str| serde_json::from_str::<Value>(t).unwrap()["conversationId"].clone();
    assert_ne!(conv(&first), conv(&second));
    // The same id and frame again: the original ack, byte for byte, nothing applied again.
    assert_eq!(answer_text(&mut ws, &send(a, "first")).await, first);
    assert_eq!(count_conversations(&s).await, 2);
}

const ALICE: &str = "pk_alice_0123456789";

fn sha(t: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(t.as_bytes()))
}

/// A socket from a given local address (loopback has all of 127/8).
async fn connect_from(s: &Server, local: [u8; 4]) -> Ws {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind((std::net::Ipv4Addr::from(local), 0).into())
        .expect("bind a loopback address");
    let tcp = sock
        .connect(s.addr.parse().expect("server address"))
        .await
        .expect("connect");
    let (ws, _) =
        tokio_tungstenite::client_async(s.ws_url(), tokio_tungstenite::MaybeTlsStream::Plain(tcp))
            .await
            .expect("upgrade");
    ws
}

fn code_of(t: &str) -> String {
    let v: Value = serde_json::from_str(t).expect("JSON");
    v["code"]
        .as_str()
        .unwrap_or(v["type"].as_str().unwrap_or(""))
        .to_string()
}

/// Defect 8: wrong `auth` frames are throttled. A socket is closed (1008) after 3 failures;
/// an address over its quota of failures is refused with `rate_limited` before any token is
/// looked at (also a right one, also on the upgrade's header); other addresses are not.
#[tokio::test]
async fn wrong_auth_frames_are_throttled_per_socket_and_address() {
    let s = Server::start_with(Options {
        server_config: "auth_failures_per_minute = 2".into(),
        extra_config: format!(
            "[auth]\nmode = \"token\"\n[[auth.tokens]]\nuser = \"alice\"\nsha256 = \"{}\"\n",
            sha(ALICE)
        ),
        ..Options::default()
    });
    let auth = |t: &str| json!({"type": "auth", "id": "a", "token": t}).to_string();
    let mut guesser = connect_from(&s, [127, 0, 0, 1]).await;
    for i in 0..3 {
        let e = answer_text(&mut guesser, &auth(&format!("guess-{i}"))).await;
        assert_eq!(code_of(&e), "unauthorized", "{e}");
    }
    // The third failure closes the socket with 1008.
    let close = loop {
        match tokio::time::timeout(WAIT, guesser.next())
            .await
            .expect("closed")
        {
            Some(Ok(Message::Close(c))) => break c.map(|c| u16::from(c.code)),
            Some(Ok(_)) => continue,
            _ => break None,
        }
    };
    assert_eq!(close, Some(1008));

    // The address is over its quota: even the right token is refused, unseen.
    let mut again = connect_from(&s, [127, 0, 0, 1]).await;
    let e = answer_text(&mut again, &auth(ALICE)).await;
    assert_eq!(code_of(&e), "rate_limited", "{e}");
    assert!(e.contains("retry in"), "{e}");
    let r = Client::connect_with(&s, &[("Authorization", &format!("Bearer {ALICE}"))]).await;
    match r {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 429)
        }
        Err(e) => panic!("expected a 429 answer to the upgrade, got {e}"),
        Ok(_) => panic!("expected a 429 answer to the upgrade, got a socket"),
    }
    // Another address is not affected.
    let mut other = connect_from(&s, [127, 0, 0, 2]).await;
    let ok = answer_text(&mut other, &auth(ALICE)).await;
    assert_eq!(code_of(&ok), "ack", "{ok}");
    assert!(ok.contains(r#""user":"alice""#), "{ok}");
}

/// Defect 8: a server-wide bound on bytes written to sockets and not read. Sockets that do not
/// read are closed (the one with most unread first, code 4008) once the total passes
/// `max_unread_bytes_total`, though each is far below its own queue bound; what they got is a
/// clean prefix, and the server serves on.
#[tokio::test]
async fn unread_bytes_are_bounded_across_sockets() {
    let s = Server::start_with(Options {
        server_config: "max_unread_bytes_total = 150000\nsocket_outbound_buffer = 1000000".into(),
        ..Options::default()
    });
    // A long conversation (several MB of events), stored: its creator does not read it.
    let mut c = Client::connect(&s).await;
    let conv = c.create("firehose", "go").await;
    c.drop_abruptly();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let last = loop {
        let rec = get_json(&s, &format!("/api/conversations/{conv}")).await;
        if rec["status"] == "completed" {
            break rec["lastSeq"].as_u64().expect("lastSeq");
        }
        assert!(tokio::time::Instant::now() < deadline, "{rec}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(last > 5000, "{last}");

    // Four sockets ask for the whole replay and do not read.
    let mut slow = Vec::new();
    for _ in 0..4 {
        let (mut ws, _) = tokio_tungstenite::connect_async(s.ws_url())
            .await
            .expect("connect");
        let f = json!({"type": "subscribe", "id": "s", "conversationId": conv, "since": 0});
        ws.send(Message::Text(f.to_string().into()))
            .await
            .expect("write");
        slow.push(ws);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Now read: every socket got either everything and its ack, or a prefix and a close.
    let mut closed = 0;
    for mut ws in slow {
        let mut events = Vec::new();
        let ended = loop {
            let m = tokio::time::timeout(Duration::from_secs(60), ws.next())
                .await
                .expect("a frame or a close within 60 s");
            let v: Value = match m {
                Some(Ok(Message::Text(t))) => serde_json::from_str(&t).expect("JSON"),
                Some(Ok(Message::Close(c))) => {
                    let code = c.map(|c| u16::from(c.code));
                    assert!(code == Some(4008) || code.is_none(), "{code:?}");
                    break true;
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => break true,
            };
            match v["type"].as_str() {
                Some("event") => events.push(v),
                Some("ack") => break false,
                _ => panic!("unexpected {v}"),
            }
        };
        assert_contiguous(&events, 1);
        if ended {
            assert!((events.len() as u64) < last, "cut off");
            closed += 1;
        } else {
            assert_eq!(events.len() as u64, last);
        }
    }
    assert!(closed >= 1, "no socket was closed");
    let log = s.stderr_log.lock().unwrap().join("\n");
    assert!(log.contains("server-wide bound is reached"), "{log}");
    // The bound was given back: a new socket is served.
    let mut back = Client::connect(&s).await;
    back.ok(json!({"type": "subscribe", "conversationId": conv, "since": last - 5}))
        .await;
    let rest = back
        .events_until(&conv, |e| e["type"] == "RUN_FINISHED")
        .await;
    assert_contiguous(&rest, last - 4);
}
