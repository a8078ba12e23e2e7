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
//! - `mod.rs` (this file): the upgrade, the session's loop, and what it does with each kind of
//!   message.
//! - `write.rs`: writing frames: every frame written is a [`ServerFrame`] (or the bytes of one:
//!   an event frame queued by an actor, an ack remembered for a retried frame id); forwarding
//!   queued events, also while a frame is being handled.
//! - `client_frame.rs`: the frames a client sends, their ids ([`client_frame::FrameId`], kept as
//!   written) and how one is decoded.
//! - `commands.rs`: what each client frame does (auth, send, resume, subscribe, unsubscribe,
//!   cancel) and the replay of stored events.
//! - `close.rs`: the close code for each protocol violation (1002, 1007, 1009).
//! - `budget.rs`: the server-wide bound on bytes written and not yet read.
//!
//! Ordering on one socket: frames are handled one at a time, in the order they arrive, and each
//! is answered before the next is handled. While a frame is being handled (waiting for its
//! actor's answer, a store read, a replay) the session keeps forwarding the events of the other
//! conversations it follows and answering pings and pongs, and reads at most one frame ahead
//! (the `inbox`): so at most two frames are ever read and unanswered, a client that pipelines
//! more waits in TCP's flow control (nothing needs to be shed, nothing is refused for it), and a
//! client that reads is never closed as too slow however many frames it pipelines. Events of the conversation the frame
//! is about (or of one it is starting to follow) are held until its answer is written, so the
//! answer comes first and a replay is never overtaken by live events.

mod budget;
mod client_frame;
mod close;
mod commands;
mod write;

pub use budget::SocketBudget;

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason, Session};
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
    params(
        ("Upgrade" = String, Header, pattern = "^websocket$", description = "`websocket`"),
        ("Connection" = String, Header, pattern = "^Upgrade$", description = "`Upgrade`"),
        ("Sec-WebSocket-Version" = String, Header, pattern = "^13$", description = "`13`"),
        ("Sec-WebSocket-Key" = String, Header, pattern = "^[A-Za-z0-9+/]{21}[AQgw]==$", description = "16 random bytes, base64 (RFC 6455)"),
    ),
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
    let ip = req.peer_addr().map(|a| a.ip());
    let has_header = req
        .headers()
        .contains_key(actix_web::http::header::AUTHORIZATION);
    if has_header {
        gw.auth_throttle.admit(ip)?;
    }
    let user = gw.auth.authenticate_optional(&req).await.inspect_err(|_| {
        if has_header {
            gw.auth_throttle.failed(ip);
        }
    })?;
    let (response, session, stream) = actix_ws::handle(&req, body)?;
    let stream = stream
        .max_frame_size(cfg.server.max_frame_bytes)
        .aggregate_continuations()
        .max_continuation_size(cfg.server.max_frame_bytes);
    let svc = svc.get_ref().clone();
    actix_web::rt::spawn(async move {
        svc.metrics.open_sockets.fetch_add(1, Relaxed);
        let mut s = SocketSession::new(svc.clone(), gw, session, stream, user, ip);
        s.run().await;
        s.cleanup();
        svc.metrics.open_sockets.fetch_sub(1, Relaxed);
    });
    Ok(response)
}

struct Sub {
    addr: Handle,
    last_sent: u64,
}

/// What the client's side of the connection yields next (`None`: it ended).
type Inbound = Option<Result<AggregatedMessage, actix_ws::ProtocolError>>;

struct SocketSession {
    svc: Arc<Services>,
    gw: web::Data<super::GatewayState>,
    session: Session,
    stream: actix_ws::AggregatedMessageStream,
    /// A message read while a frame was being handled (not a ping or pong, which are handled at
    /// once): handled next. At most one, so at most two frames are ever read and unanswered.
    inbox: Option<Inbound>,
    user: Option<User>,
    subscriber: Subscriber,
    rx: OutboundRx,
    subs: HashMap<Arc<str>, Sub>,
    last_seen: Instant,
    closed: bool,
    /// The idempotency key of the `send` or `resume` being handled (stored with it).
    pending_key: Option<crate::conversation::IdempotencyKey>,
    /// The conversation the frame being handled is about: its events wait in `held` until
    /// the frame is answered.
    settling: Option<Arc<str>>,
    /// Events taken from the queue while a frame was handled that may not be written yet (of
    /// `settling`, or of a conversation not followed yet); bounded like the queue.
    held: VecDeque<Outbound>,
    /// This socket's place in the server-wide bound on unread bytes.
    account: budget::SocketAccount,
    /// The client's address (failed authentications are counted per address).
    ip: Option<IpAddr>,
    /// Failed `auth` frames on this socket.
    auth_failures: u32,
}

impl SocketSession {
    fn new(
        svc: Arc<Services>,
        gw: web::Data<super::GatewayState>,
        session: Session,
        stream: actix_ws::AggregatedMessageStream,
        user: Option<User>,
        ip: Option<IpAddr>,
    ) -> Self {
        let (tx, rx) = outbound_queue(svc.config.server.socket_outbound_buffer.max(16));
        let subscriber = Subscriber {
            id: Subscriber::next_id(),
            tx,
            slow: CancellationToken::new(),
            typed: false,
        };
        let account = gw.sockets.open(subscriber.id, subscriber.slow.clone());
        SocketSession {
            svc,
            gw,
            session,
            stream,
            inbox: None,
            user,
            subscriber,
            rx,
            subs: HashMap::new(),
            last_seen: Instant::now(),
            closed: false,
            pending_key: None,
            settling: None,
            held: VecDeque::new(),
            account,
            ip,
            auth_failures: 0,
        }
    }

    async fn run(&mut self) {
        let beat = Duration::from_secs(self.svc.config.server.heartbeat_seconds.max(1));
        let mut ticker = tokio::time::interval(beat);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let slow = self.subscriber.slow.clone();
        while !self.closed {
            if let Some(m) = self.inbox.take() {
                self.on_inbound(m).await;
                continue;
            }
            tokio::select! {
                m = self.stream.next() => self.on_inbound(m).await,
                Some(out) = self.rx.recv() => self.forward(out).await,
                _ = ticker.tick() => {
                    if self.last_seen.elapsed() > beat * 3 {
                        let _ = Box::pin(self.session.clone().close(Some(CloseReason { code: CloseCode::Away, description: Some("no heartbeat".into()) }))).await;
                        break;
                    }
                    let mark = self.account.marker();
                    if Box::pin(self.session.ping(&mark)).await.is_err() { break; }
                }
                _ = slow.cancelled() => break,
            }
        }
    }

    /// What the client's side yielded: a message, its end, or a protocol violation.
    async fn on_inbound(&mut self, m: Inbound) {
        self.last_seen = Instant::now();
        match m {
            Some(Ok(m)) => self.on_message(m).await,
            None => self.closed = true,
            Some(Err(e)) => {
                // A protocol violation ends the connection, with its code.
                let reason = close::close_reason(&e);
                tracing::debug!(
                    code = u16::from(reason.code),
                    "closing a socket that broke the protocol"
                );
                let _ = Box::pin(self.session.clone().close(Some(reason))).await;
                self.closed = true;
            }
        }
    }

    /// One message from the client (not an error).
    async fn on_message(&mut self, m: AggregatedMessage) {
        // This future lives as long as the socket, and is as large as the largest thing it
        // awaits: what is rare or large (handling a frame: the actor's answer, a replay) is
        // boxed, so an idle socket's task stays small.
        match m {
            AggregatedMessage::Text(t) => {
                Box::pin(self.on_text(&t)).await;
                Box::pin(self.release_held()).await;
                if self.auth_failures >= commands::MAX_AUTH_FAILURES {
                    let reason = CloseReason {
                        code: CloseCode::Policy,
                        description: Some("too many failed authentications".into()),
                    };
                    let _ = Box::pin(self.session.clone().close(Some(reason))).await;
                    self.closed = true;
                }
            }
            AggregatedMessage::Binary(_) => Box::pin(self.refuse_binary()).await,
            AggregatedMessage::Ping(p) => {
                if Box::pin(self.session.pong(&p)).await.is_err() {
                    self.closed = true;
                }
            }
            AggregatedMessage::Pong(p) => self.account.pong(&p),
            AggregatedMessage::Close(_) => self.closed = true,
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

    async fn refuse_binary(&mut self) {
        let e = ApiError::bad_request("binary frames are not supported; send JSON text frames");
        self.send_frame(ServerFrame::Error {
            id: None,
            error: &e,
        })
        .await;
    }
}
