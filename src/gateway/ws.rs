//! `GET /ws`: one WebSocket session per connection (actix-ws).
//!
//! The session is one task: it reads client frames, answers each with exactly one `ack` or
//! `error`, forwards events from its bounded outbound queue, pings, and closes a socket that is
//! silent for three heartbeats or that the actors flagged as too slow (close code 4008: come
//! back with `since`). Replay on `subscribe{since}` reads the stored events up to the actor's
//! durable mark at subscription time; live events after it come through the queue; a per
//! conversation `last sent seq` drops anything already sent, so the hand-over has no gap and
//! no duplicate. Closing a socket unsubscribes it and never cancels a run.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Addr;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason, Session};
use bytestring::ByteString;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::auth::{self, User};
use crate::conversation::{msg, outbound_queue, Conversation, Outbound, OutboundRx, Subscriber};
use crate::error::{ApiError, ErrorCode};
use crate::services::Services;

static NEXT_SOCKET: AtomicU64 = AtomicU64::new(1);

/// Close code for a socket that fell too far behind.
pub const CLOSE_TOO_SLOW: u16 = 4008;
/// Events replayed per store read.
const REPLAY_PAGE: usize = 512;

/// A client frame (CONTRACT §2). `id` is read separately so errors can echo it.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "lowercase",
    rename_all_fields = "camelCase"
)]
enum ClientFrame {
    Send {
        content: String,
        #[serde(default)]
        assistant: Option<String>,
        #[serde(default)]
        conversation_id: Option<String>,
        #[serde(default)]
        new_conversation: bool,
        #[serde(default)]
        args: Option<Value>,
    },
    Resume {
        conversation_id: String,
        interrupt_id: String,
        #[serde(default)]
        action: Option<String>,
        #[serde(default)]
        value: Value,
    },
    Subscribe {
        conversation_id: String,
        #[serde(default)]
        since: u64,
    },
    Unsubscribe {
        conversation_id: String,
    },
    Cancel {
        conversation_id: String,
    },
    Auth {
        token: String,
    },
}

/// Decode one text frame: its `id` (if any) and the typed frame, or the error to answer.
#[allow(clippy::result_large_err)]
fn decode(text: &str) -> Result<(Option<Value>, ClientFrame), (Option<Value>, ApiError)> {
    let raw: Value = serde_json::from_str(text).map_err(|e| {
        (
            None,
            ApiError::bad_request(format!("the frame is not valid JSON: {e}")),
        )
    })?;
    let id = raw.get("id").cloned();
    if !raw.is_object() {
        return Err((
            id,
            ApiError::bad_request("a frame must be a JSON object with a 'type'"),
        ));
    }
    match serde_json::from_value(raw) {
        Ok(f) => Ok((id, f)),
        Err(e) => Err((
            id,
            ApiError::bad_request(format!(
                "bad frame: {e} (types: send, resume, subscribe, unsubscribe, cancel, auth)"
            )),
        )),
    }
}

/// The WebSocket (upgrade with `GET /ws`).
///
/// One socket carries many conversations: JSON text frames `send`, `resume`, `subscribe`,
/// `unsubscribe`, `cancel` and `auth`, each answered by exactly one `ack` or `error`, and
/// `event` frames. The protocol is described in docs/protocol.md. With `[auth] mode = "token"`
/// send `Authorization: Bearer <token>` on the upgrade or an `auth` frame first.
#[utoipa::path(
    get,
    path = "/ws",
    tag = "websocket",
    security((), ("bearer" = [])),
    responses(
        (status = 101, description = "Switching Protocols: the WebSocket session, see docs/protocol.md"),
        (status = 400, description = "Not a WebSocket upgrade request"),
        (status = 401, description = "`unauthorized`: an unknown bearer token", body = super::ErrorBody),
        (status = 403, description = "`forbidden`: this page's origin may not open the WebSocket", body = super::ErrorBody),
    )
)]
pub async fn handshake(
    req: HttpRequest,
    body: web::Payload,
    svc: web::Data<Arc<Services>>,
    gw: web::Data<super::GatewayState>,
) -> Result<HttpResponse, actix_web::Error> {
    let cfg = &svc.config;
    if !auth::origin_allowed(&cfg.auth, &req) {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "this page's origin may not open the WebSocket",
        )
        .into());
    }
    let user = auth::authenticate_optional(&cfg.auth, &req)?;
    let (response, session, stream) = actix_ws::handle(&req, body)?;
    let stream = stream
        .max_frame_size(cfg.server.max_frame_bytes)
        .aggregate_continuations()
        .max_continuation_size(cfg.server.max_frame_bytes);
    let svc = svc.get_ref().clone();
    actix_web::rt::spawn(async move {
        svc.metrics.open_sockets.fetch_add(1, Relaxed);
        let mut s = SocketSession::new(svc.clone(), gw, session, user);
        s.run(stream).await;
        s.cleanup();
        svc.metrics.open_sockets.fetch_sub(1, Relaxed);
    });
    Ok(response)
}

fn utf8(b: bytes::Bytes) -> Option<ByteString> {
    match ByteString::try_from(b) {
        Ok(s) => Some(s),
        Err(_) => {
            tracing::error!("dropping a frame that is not UTF-8");
            None
        }
    }
}

struct Sub {
    addr: Addr<Conversation>,
    last_sent: u64,
}

struct SocketSession {
    svc: Arc<Services>,
    gw: web::Data<super::GatewayState>,
    session: Session,
    user: Option<User>,
    subscriber: Subscriber,
    rx: Option<OutboundRx>,
    subs: HashMap<Arc<str>, Sub>,
    last_seen: Instant,
    closed: bool,
}

impl SocketSession {
    fn new(
        svc: Arc<Services>,
        gw: web::Data<super::GatewayState>,
        session: Session,
        user: Option<User>,
    ) -> Self {
        let (tx, rx) = outbound_queue(svc.config.server.socket_outbound_buffer.max(16));
        let subscriber = Subscriber {
            id: NEXT_SOCKET.fetch_add(1, Relaxed),
            tx,
            slow: CancellationToken::new(),
        };
        SocketSession {
            svc,
            gw,
            session,
            user,
            subscriber,
            rx: Some(rx),
            subs: HashMap::new(),
            last_seen: Instant::now(),
            closed: false,
        }
    }

    async fn run(&mut self, mut stream: actix_ws::AggregatedMessageStream) {
        let Some(mut rx) = self.rx.take() else { return };
        let beat = Duration::from_secs(self.svc.config.server.heartbeat_seconds.max(1));
        let mut ticker = tokio::time::interval(beat);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let slow = self.subscriber.slow.clone();
        while !self.closed {
            tokio::select! {
                m = stream.next() => {
                    self.last_seen = Instant::now();
                    match m {
                        // This future lives as long as the socket, and is as large as the largest
                        // thing it awaits: what is rare or large (handling a frame: the actor's
                        // answer, a replay) is boxed, so an idle socket's task stays small.
                        Some(Ok(AggregatedMessage::Text(t))) => Box::pin(self.on_text(&t)).await,
                        Some(Ok(AggregatedMessage::Binary(_))) => Box::pin(self.refuse_binary()).await,
                        Some(Ok(AggregatedMessage::Ping(p))) => {
                            if Box::pin(self.session.pong(&p)).await.is_err() { break; }
                        }
                        Some(Ok(AggregatedMessage::Pong(_))) => {}
                        Some(Ok(AggregatedMessage::Close(_))) | None => break,
                        Some(Err(e)) => {
                            // Protocol errors (e.g. an oversized frame) end the connection.
                            let reason = match e {
                                actix_ws::ProtocolError::Overflow => "frame too large (payload_too_large)".to_string(),
                                other => format!("protocol error: {other}"),
                            };
                            let _ = Box::pin(self.session.clone().close(Some(CloseReason { code: CloseCode::Size, description: Some(reason) }))).await;
                            self.closed = true;
                        }
                    }
                }
                Some(out) = rx.recv() => self.forward(out).await,
                _ = ticker.tick() => {
                    if self.last_seen.elapsed() > beat * 3 {
                        let _ = Box::pin(self.session.clone().close(Some(CloseReason { code: CloseCode::Away, description: Some("no heartbeat".into()) }))).await;
                        break;
                    }
                    if Box::pin(self.session.ping(b"")).await.is_err() { break; }
                }
                _ = slow.cancelled() => break,
            }
        }
    }

    fn cleanup(&mut self) {
        if self.subscriber.slow.is_cancelled() {
            // Too slow: say so with close code 4008 once the client reads again (bounded wait).
            let session = self.session.clone();
            actix_web::rt::spawn(async move {
                let reason = CloseReason {
                    code: CloseCode::Other(CLOSE_TOO_SLOW),
                    description: Some(
                        "too slow: events piled up; reconnect and subscribe with since".into(),
                    ),
                };
                let _ = tokio::time::timeout(Duration::from_secs(30), session.close(Some(reason)))
                    .await;
            });
        }
        for sub in self.subs.values() {
            sub.addr.do_send(msg::Unsubscribe {
                subscriber_id: self.subscriber.id,
            });
        }
        self.subs.clear();
    }

    async fn forward(&mut self, out: Outbound) {
        // Nothing of `out` but the text is kept across the write (this future is part of every
        // socket's task).
        let Outbound {
            conversation,
            seq,
            event,
        } = out;
        let Some(sub) = self.subs.get_mut(&conversation) else {
            return;
        };
        if seq <= sub.last_sent {
            return;
        }
        sub.last_sent = seq;
        let frame = super::frame::event_frame(&conversation, seq, &event);
        drop((conversation, event));
        if let Some(text) = utf8(frame) {
            self.send_text(text).await;
        }
    }

    async fn send_bytes(&mut self, b: bytes::Bytes) {
        if let Some(text) = utf8(b) {
            self.send_text(text).await;
        }
    }

    async fn send_json(&mut self, v: Value) {
        self.send_text(ByteString::from(v.to_string())).await;
    }

    /// Write one frame. A client that does not read makes this wait; if the actors meanwhile
    /// flag the socket as too slow, give up on it (the connection is dropped).
    async fn send_text(&mut self, s: ByteString) {
        if self.closed {
            return;
        }
        let slow = self.subscriber.slow.clone();
        tokio::select! {
            r = self.session.text(s) => {
                if r.is_err() {
                    self.closed = true;
                }
            }
            _ = slow.cancelled() => self.closed = true,
        }
    }

    async fn refuse_binary(&mut self) {
        let e = ApiError::bad_request("binary frames are not supported; send JSON text frames");
        self.send_error(None, &e).await;
    }

    async fn send_error(&mut self, id: Option<Value>, e: &ApiError) {
        let mut f = json!({"type": "error", "id": id, "code": e.code, "message": e.message});
        if let Some(d) = &e.details {
            f["details"] = d.clone();
        }
        self.send_json(f).await;
    }

    async fn on_text(&mut self, text: &str) {
        let (id, frame) = match decode(text) {
            Ok(x) => x,
            Err((id, e)) => {
                self.send_error(id, &e).await;
                return;
            }
        };
        let idempotent = matches!(frame, ClientFrame::Send { .. } | ClientFrame::Resume { .. });
        let user = self.user.as_ref().map(|u| u.0.clone());
        if let (true, Some(u), Some(fid)) = (idempotent, &user, &id) {
            if let Some(ack) = self.gw.frame_acks.get(u, fid) {
                // A retried frame: the original answer, nothing applied again.
                self.send_text(ByteString::from(ack)).await;
                return;
            }
        }
        match self.handle(frame).await {
            Ok(mut ack) => {
                ack["type"] = json!("ack");
                ack["id"] = id.clone().unwrap_or(Value::Null);
                let text = ack.to_string();
                if let (true, Some(u), Some(fid)) = (idempotent, &user, &id) {
                    self.gw.frame_acks.put(u, fid, &text);
                }
                self.send_text(ByteString::from(text)).await;
            }
            Err(e) => self.send_error(id, &e).await,
        }
    }

    fn user(&self) -> Result<String, ApiError> {
        self.user.as_ref().map(|u| u.0.clone()).ok_or_else(|| {
            ApiError::new(ErrorCode::Unauthorized, "authenticate first: send {\"type\":\"auth\",\"token\":\"…\"} or an Authorization header")
        })
    }

    fn limits(&self, content: &str, args: &Option<Value>) -> Result<(), ApiError> {
        let s = &self.svc.config.server;
        if content.chars().count() > s.max_message_chars {
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "the message is longer than {} characters",
                    s.max_message_chars
                ),
            ));
        }
        if let Some(a) = args {
            if a.to_string().len() > s.max_args_bytes {
                return Err(ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    format!("args are larger than {} bytes", s.max_args_bytes),
                ));
            }
        }
        Ok(())
    }

    fn conversation(&self, id: &str) -> Result<Addr<Conversation>, ApiError> {
        if let Some(s) = self.subs.get(id) {
            if s.addr.connected() {
                return Ok(s.addr.clone());
            }
        }
        self.svc.registry.get(&self.svc, id)
    }

    fn track(
        &mut self,
        id: &str,
        addr: Addr<Conversation>,
        last_sent: u64,
    ) -> Result<(), ApiError> {
        if let Some(s) = self.subs.get_mut(id) {
            s.addr = addr;
            return Ok(());
        }
        if self.subs.len() >= self.svc.config.server.max_subscriptions_per_socket {
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                "this socket follows too many conversations; unsubscribe some first",
            ));
        }
        self.subs.insert(Arc::from(id), Sub { addr, last_sent });
        Ok(())
    }

    async fn handle(&mut self, frame: ClientFrame) -> Result<Value, ApiError> {
        if let ClientFrame::Auth { token } = &frame {
            let cfg = &self.svc.config.auth;
            if cfg.mode == crate::config::AuthMode::None {
                return Ok(json!({"user": auth::LOCAL_USER}));
            }
            let u = auth::user_for_token(cfg, token)
                .ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "unknown token"))?;
            if self.user.as_ref().is_some_and(|x| x != &u) {
                return Err(ApiError::new(
                    ErrorCode::Forbidden,
                    "this socket is already authenticated as another user",
                ));
            }
            let name = u.0.clone();
            self.user = Some(u);
            return Ok(json!({"user": name}));
        }
        let owner = self.user()?;
        match frame {
            ClientFrame::Auth { .. } => Ok(json!({})),
            ClientFrame::Send {
                content,
                assistant,
                conversation_id,
                new_conversation,
                args,
            } => {
                self.limits(&content, &args)?;
                let existing = conversation_id.filter(|_| !new_conversation);
                if existing.is_none() {
                    self.gw.limits.new_conversation(&owner)?;
                }
                self.gw.limits.message(&owner)?;
                let (id, addr) = match existing {
                    Some(id) => {
                        let addr = self.conversation(&id)?;
                        (id, addr)
                    }
                    None => {
                        let name = assistant.ok_or_else(|| {
                            ApiError::bad_request("'assistant' is required to start a conversation")
                        })?;
                        let a = self.svc.catalog.get(&name).ok_or_else(|| {
                            ApiError::new(
                                ErrorCode::UnknownAssistant,
                                format!("there is no assistant '{name}'"),
                            )
                        })?;
                        // Refuse bad args before a conversation exists.
                        a.check_args(args.as_ref())?;
                        self.svc.registry.create(&self.svc, &owner, &name)?
                    }
                };
                let first = !self.subs.contains_key(id.as_str());
                let subscriber = first.then(|| self.subscriber.clone());
                let m = msg::Send {
                    owner,
                    content,
                    args,
                    subscriber,
                    report: None,
                };
                let accepted = match addr.send(m).await {
                    Ok(r) => r?,
                    Err(_) => {
                        return Err(ApiError::internal("the conversation stopped; send again"))
                    }
                };
                if first {
                    self.track(&id, addr, 0)?;
                }
                Ok(json!({"conversationId": accepted.conversation_id, "runId": accepted.run_id}))
            }
            ClientFrame::Resume {
                conversation_id,
                interrupt_id,
                action,
                value,
            } => {
                let addr = self.conversation(&conversation_id)?;
                let accepted = addr
                    .send(msg::Resume {
                        owner,
                        interrupt_id,
                        action,
                        value,
                    })
                    .await
                    .map_err(|_| ApiError::internal("the conversation stopped; resume again"))??;
                Ok(json!({"conversationId": accepted.conversation_id, "runId": accepted.run_id}))
            }
            ClientFrame::Subscribe {
                conversation_id,
                since,
            } => {
                let addr = self.conversation(&conversation_id)?;
                let high = addr
                    .send(msg::Subscribe {
                        owner,
                        subscriber: self.subscriber.clone(),
                    })
                    .await
                    .map_err(|_| {
                        ApiError::internal("the conversation stopped; subscribe again")
                    })??;
                let known = self.subs.get(conversation_id.as_str()).map(|s| s.last_sent);
                self.track(&conversation_id, addr, high.max(since))?;
                if let (Some(k), Some(s)) = (known, self.subs.get_mut(conversation_id.as_str())) {
                    // Already following live: keep the newest position (no duplicates).
                    s.last_sent = s.last_sent.max(k);
                }
                self.replay(&conversation_id, since, high).await?;
                Ok(json!({"conversationId": conversation_id, "lastSeq": high}))
            }
            ClientFrame::Unsubscribe { conversation_id } => {
                if let Some(sub) = self.subs.remove(conversation_id.as_str()) {
                    sub.addr.do_send(msg::Unsubscribe {
                        subscriber_id: self.subscriber.id,
                    });
                } else {
                    // Not following it: still refuse what is not this user's.
                    let rec = self
                        .svc
                        .store
                        .get_conversation(&conversation_id)
                        .map_err(|e| ApiError::internal(e.to_string()))?;
                    if rec.is_none_or(|r| r.owner != owner) {
                        return Err(ApiError::conversation_not_found(&conversation_id));
                    }
                }
                Ok(json!({"conversationId": conversation_id}))
            }
            ClientFrame::Cancel { conversation_id } => {
                let addr = self.conversation(&conversation_id)?;
                let cancelled = addr
                    .send(msg::Cancel { owner })
                    .await
                    .map_err(|_| ApiError::internal("the conversation stopped"))??;
                Ok(json!({"conversationId": conversation_id, "cancelled": cancelled}))
            }
        }
    }

    /// Send the stored events in `(since, high]`.
    async fn replay(&mut self, conversation: &str, since: u64, high: u64) -> Result<(), ApiError> {
        let mut cursor = since;
        while cursor < high {
            let page = self
                .svc
                .store
                .events_since(conversation, cursor, REPLAY_PAGE)
                .map_err(|e| ApiError::internal(e.to_string()))?;
            if page.is_empty() {
                break;
            }
            for (seq, json) in page {
                if seq > high {
                    return Ok(());
                }
                cursor = seq;
                let frame = super::frame::event_frame(conversation, seq, &json);
                self.send_bytes(frame).await;
                if self.closed {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn decodes_frames_and_names_problems() {
        let (id, f) = decode(r#"{"type":"send","id":7,"content":"hi","assistant":"a"}"#).unwrap();
        assert_eq!(id, Some(json!(7)));
        assert!(matches!(f, ClientFrame::Send { ref content, .. } if content == "hi"));
        let (id, e) = decode(r#"{"type":"resume","id":"x","conversationId":"c"}"#).unwrap_err();
        assert_eq!(id, Some(json!("x")));
        assert!(e.message.contains("interruptId"), "{}", e.message);
        let (_, e) = decode("[1,2]").unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        let (_, e) = decode(r#"{"type":"send","content":5}"#).unwrap_err();
        assert!(e.message.contains("invalid type"), "{}", e.message);
        let (_, f) = decode(r#"{"type":"subscribe","conversationId":"c","since":3}"#).unwrap();
        assert_eq!(
            f,
            ClientFrame::Subscribe {
                conversation_id: "c".into(),
                since: 3
            }
        );
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "[a-zA-Z_]{0,12}".prop_map(Value::from),
            prop_oneof![
                Just("send"),
                Just("resume"),
                Just("subscribe"),
                Just("cancel"),
                Just("auth"),
                Just("unsubscribe")
            ]
            .prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("type".to_string()),
                        Just("id".to_string()),
                        Just("content".to_string()),
                        Just("conversationId".to_string()),
                        Just("interruptId".to_string()),
                        Just("since".to_string()),
                        Just("args".to_string()),
                        Just("value".to_string()),
                        "[a-z]{1,6}",
                    ],
                    inner,
                    0..6,
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        /// No input makes the decoder panic: arbitrary text, and arbitrary JSON built from the
        /// protocol's own field names.
        #[test]
        fn decoder_never_panics_on_text(s in ".{0,200}") {
            let _ = decode(&s);
        }

        #[test]
        fn decoder_never_panics_on_json(v in json_value()) {
            match decode(&v.to_string()) {
                Ok(_) => {}
                Err((_, e)) => prop_assert_eq!(e.code, ErrorCode::BadRequest),
            }
        }
    }
}
