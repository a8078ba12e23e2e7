//! `GET /ws`: one WebSocket session per connection (actix-ws).
//!
//! The session is one task: it reads client frames, answers each with exactly one `ack` or
//! `error`, forwards events from its bounded outbound queue, pings, and closes a socket that is
//! silent for three heartbeats or that the actors flagged as too slow (close code 4008: come
//! back with `since`). Replay on `subscribe{since}` reads the stored events up to the actor's
//! durable mark at subscription time; live events after it come through the queue; a per
//! conversation `last sent seq` drops anything already sent, so the hand-over has no gap and
//! no duplicate. Closing a socket unsubscribes it and never cancels a run.
//!
//! Layout:
//! - `mod.rs` (this file): the upgrade, the session's loop, and writing frames: every frame
//!   written is a [`ServerFrame`] (or the bytes of one: an event frame queued by an actor, an
//!   ack remembered for a retried frame id).
//! - `client_frame.rs`: the frames a client sends and how one is decoded.
//! - `commands.rs`: what each client frame does (auth, send, resume, subscribe, unsubscribe,
//!   cancel) and the replay of stored events.
//!
//! Ordering on one socket: frames are handled one at a time, in the order they arrive; the
//! answer to a frame is written before the next frame is read, and events queued meanwhile
//! wait in the outbound queue (bounded; a full queue flags the socket as too slow).

mod client_frame;
mod commands;

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason, Session};
use bytestring::ByteString;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::auth::{self, User};
use super::frame::ServerFrame;
use crate::conversation::{msg, outbound_queue, Handle, Outbound, OutboundRx, Subscriber};
use crate::error::{ApiError, ErrorCode};
use crate::services::Services;

/// Close code for a socket that fell too far behind.
pub const CLOSE_TOO_SLOW: u16 = 4008;

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
    addr: Handle,
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
    /// The idempotency key of the `send` or `resume` being handled (stored with it).
    pending_key: Option<crate::conversation::IdempotencyKey>,
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
            id: Subscriber::next_id(),
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
            pending_key: None,
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

    /// Write one frame.
    async fn send_frame(&mut self, f: ServerFrame<'_>) {
        self.send_bytes(f.to_bytes()).await;
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
        self.send_frame(ServerFrame::Error {
            id: None,
            error: &e,
        })
        .await;
    }
}
