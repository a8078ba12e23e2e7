//! What each client frame does. [`SocketSession::on_text`] answers every text frame with exactly
//! one `ack` or `error` ([`ServerFrame`]); the handlers below return the typed [`Ack`] or the
//! [`ApiError`] to answer with.
//!
//! - `auth` works on any socket; every other frame needs a user (from the upgrade's header or
//!   an earlier `auth`), else `unauthorized`.
//! - `send` and `resume` are idempotent per (user, frame `id`): a retry gets the bytes of the
//!   original ack from [`FrameAcks`](crate::gateway::dedup::FrameAcks) and is not applied
//!   again (DESIGN invariant 5).
//! - Changes are messages to the conversation's actor (its only owner); the ack is sent once
//!   the actor answers, which for `send` and `resume` is after the durable commit (invariant 2).
//! - `subscribe{since}`: the actor answers its durable mark H; the stored events in
//!   `(since, H]` are replayed here, live ones (all > H) come through the outbound queue
//!   (invariant 3).

use std::sync::Arc;

use serde_json::value::RawValue;
use serde_json::Value;

use super::client_frame::{decode, ClientFrame, Decoded, FrameId};
use super::{auth, SocketSession, Sub};
use crate::assistant::model::OnBusy;
use crate::conversation::IdempotencyKey;
use crate::conversation::{msg, Handle};
use crate::error::{ApiError, ErrorCode};
use crate::gateway::dedup::{hex, scoped_key, Claim, Fingerprint};
use crate::gateway::frame::{Ack, ServerFrame};

fn reused() -> ApiError {
    ApiError::new(
        ErrorCode::IdempotencyKeyReused,
        "this frame id was used before for a different frame; use a new id",
    )
}

/// The route name of WebSocket frame ids in the idempotency memory.
const WS_ROUTE: &str = "ws";

/// Events replayed per store read.
const REPLAY_PAGE: usize = 512;

/// Failed `auth` frames after which a socket is closed (1008).
pub(super) const MAX_AUTH_FAILURES: u32 = 3;

/// A frame id claimed as an idempotency key: finished with the ack, or released.
struct Claimed {
    user: String,
    key: String,
    fp: Fingerprint,
}

/// A frame answered without being applied: a retried frame's original ack, or a refusal.
enum Answered {
    Bytes(bytes::Bytes),
    Error(ApiError),
}

fn raw(id: Option<&FrameId>) -> Option<&RawValue> {
    id.map(FrameId::raw)
}

impl SocketSession {
    /// Answer one text frame (exactly once).
    pub(super) async fn on_text(&mut self, text: &str) {
        let Decoded {
            id,
            frame,
            fingerprint,
        } = match decode(text) {
            Ok(d) => d,
            Err((id, e)) => return self.send_error(id.as_ref(), &e).await,
        };
        // A frame id is an idempotency key (CONTRACT §6): checked before anything else.
        let claim = match self.claim(id.as_ref(), fingerprint).await {
            Ok(c) => c,
            Err(Answered::Bytes(b)) => return self.send_bytes(b).await,
            Err(Answered::Error(e)) => return self.send_error(id.as_ref(), &e).await,
        };
        self.pending_key = claim.as_ref().map(|c| IdempotencyKey {
            key: scoped_key(&c.user, WS_ROUTE, &c.key),
            fingerprint: hex(&c.fp),
        });
        let answer = self.handle(frame).await;
        self.pending_key = None;
        self.answer(id.as_ref(), claim, answer).await;
    }

    async fn send_error(&mut self, id: Option<&FrameId>, e: &ApiError) {
        self.send_frame(ServerFrame::Error {
            id: raw(id),
            error: e,
        })
        .await;
    }

    /// Write the answer of an applied (or refused) frame, and settle its claimed key.
    async fn answer(
        &mut self,
        id: Option<&FrameId>,
        claim: Option<Claimed>,
        answer: Result<Ack, ApiError>,
    ) {
        let idem = &self.gw.idempotency;
        match answer {
            Ok(ack) => {
                let bytes = ServerFrame::Ack {
                    id: raw(id),
                    ack: &ack,
                }
                .to_bytes();
                if let Some(c) = &claim {
                    match std::str::from_utf8(&bytes) {
                        Ok(text) => idem.finish(&c.user, WS_ROUTE, &c.key, c.fp, 200, text),
                        Err(_) => idem.release(&c.user, WS_ROUTE, &c.key),
                    }
                }
                self.send_bytes(bytes).await;
            }
            Err(e) => {
                if let Some(c) = &claim {
                    idem.release(&c.user, WS_ROUTE, &c.key);
                }
                self.send_error(id, &e).await;
            }
        }
    }

    /// Claim the id of a `send` or `resume` (`fingerprint` is set for those) as an idempotency
    /// key: `None` when it is no key (or the socket has no user yet), the claim to settle when
    /// it is new, or the answer when it is known (in memory, or stored before a restart).
    async fn claim(
        &mut self,
        id: Option<&FrameId>,
        fingerprint: Option<Fingerprint>,
    ) -> Result<Option<Claimed>, Answered> {
        let user = self.user.as_ref().map(|u| u.0.clone());
        let (Some(fp), Some(user), Some(key)) = (fingerprint, user, id.and_then(FrameId::key))
        else {
            return Ok(None);
        };
        match self.gw.idempotency.claim(&user, WS_ROUTE, &key, fp) {
            Claim::New => {}
            // A retried frame: the original answer, nothing applied again.
            Claim::Replay { body, .. } => return Err(Answered::Bytes(body.into())),
            Claim::InProgress => {
                return Err(Answered::Error(ApiError::new(
                    ErrorCode::ConversationBusy,
                    "a frame with this id is being applied; retry it later",
                )))
            }
            Claim::Reused => return Err(Answered::Error(reused())),
        }
        let c = Claimed { user, key, fp };
        let gw = self.gw.clone();
        let idem = &gw.idempotency;
        match self.stored_ack(&c, id).await {
            Ok(None) => Ok(Some(c)),
            Ok(Some(bytes)) => {
                // Accepted before a restart: the ack rebuilt from its stored key.
                idem.release(&c.user, WS_ROUTE, &c.key);
                if let Ok(text) = std::str::from_utf8(&bytes) {
                    if idem.claim(&c.user, WS_ROUTE, &c.key, c.fp) == Claim::New {
                        idem.finish(&c.user, WS_ROUTE, &c.key, c.fp, 200, text);
                    }
                }
                Err(Answered::Bytes(bytes))
            }
            Err(e) => {
                idem.release(&c.user, WS_ROUTE, &c.key);
                Err(Answered::Error(e))
            }
        }
    }

    /// The ack of a frame id stored before a restart (`None`: unknown key); a stored id with a
    /// different frame is `idempotency_key_reused`.
    async fn stored_ack(
        &mut self,
        c: &Claimed,
        id: Option<&FrameId>,
    ) -> Result<Option<bytes::Bytes>, ApiError> {
        let store = self.svc.store.clone();
        let scoped = scoped_key(&c.user, WS_ROUTE, &c.key);
        let rec = self
            .pump(async move { store.idempotency_key(&scoped).await })
            .await
            .map_err(ApiError::from)?;
        let Some(rec) = rec else { return Ok(None) };
        if rec.fingerprint != hex(&c.fp) {
            return Err(reused());
        }
        let ack = Ack::Accepted {
            conversation_id: rec.conversation_id,
            run_id: rec.run_id,
        };
        Ok(Some(
            ServerFrame::Ack {
                id: raw(id),
                ack: &ack,
            }
            .to_bytes(),
        ))
    }

    /// Apply one frame; the ack to answer with.
    async fn handle(&mut self, frame: ClientFrame) -> Result<Ack, ApiError> {
        // Events of the conversation this frame is about wait until it is answered.
        self.settling = frame.conversation_id().map(Arc::from);
        match frame {
            ClientFrame::Auth { token } => self.on_auth(&token).await,
            ClientFrame::Send {
                content,
                assistant,
                conversation_id,
                new_conversation,
                args,
                on_busy,
            } => {
                let owner = self.user()?;
                let existing = conversation_id.filter(|_| !new_conversation);
                self.on_send(owner, content, assistant, existing, args, on_busy)
                    .await
            }
            ClientFrame::Resume {
                conversation_id,
                interrupt_id,
                action,
                value,
            } => {
                let owner = self.user()?;
                self.on_resume(owner, conversation_id, interrupt_id, action, value)
                    .await
            }
            ClientFrame::Subscribe {
                conversation_id,
                since,
            } => {
                let owner = self.user()?;
                self.on_subscribe(owner, conversation_id, since).await
            }
            ClientFrame::Unsubscribe { conversation_id } => {
                let owner = self.user()?;
                self.on_unsubscribe(&owner, conversation_id).await
            }
            ClientFrame::Cancel { conversation_id } => {
                let owner = self.user()?;
                self.on_cancel(owner, conversation_id).await
            }
        }
    }

    /// `cancel`: stop the active run (or withdraw a pending interrupt).
    async fn on_cancel(&mut self, owner: String, conversation_id: String) -> Result<Ack, ApiError> {
        let addr = self.conversation(&conversation_id).await?;
        let cancelled = self
            .pump(addr.send(msg::Cancel { owner }))
            .await
            .map_err(|_| ApiError::internal("the conversation stopped"))??;
        Ok(Ack::Cancelled {
            conversation_id,
            cancelled,
        })
    }

    /// `auth`: in token mode, the socket becomes the token's user (once: another user's token
    /// is `forbidden`); without auth, everyone is the local user.
    async fn on_auth(&mut self, token: &str) -> Result<Ack, ApiError> {
        if self.svc.config.auth.mode == crate::config::AuthMode::None {
            return Ok(Ack::Auth {
                user: auth::LOCAL_USER.to_string(),
            });
        }
        // Refused before the token is looked at while this address has failed too often.
        self.gw.auth_throttle.admit(self.ip)?;
        let u = match self.gw.auth.user_for_token(token).await {
            Ok(u) => u,
            Err(e) => {
                self.gw.auth_throttle.failed(self.ip);
                self.auth_failures += 1;
                return Err(e);
            }
        };
        if self.user.as_ref().is_some_and(|x| x.0 != u.0) {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "this socket is already authenticated as another user",
            ));
        }
        let name = u.0.clone();
        self.user = Some(u);
        Ok(Ack::Auth { user: name })
    }

    /// `send`: to `existing`, or to a new conversation of `assistant` (this socket follows a
    /// conversation from its first message on).
    async fn on_send(
        &mut self,
        owner: String,
        content: String,
        assistant: Option<String>,
        existing: Option<String>,
        args: Option<Value>,
        on_busy: Option<OnBusy>,
    ) -> Result<Ack, ApiError> {
        self.limits(&content, &args)?;
        self.room_to_follow(existing.as_deref())?;
        if existing.is_none() {
            self.gw.limits.new_conversation(&owner)?;
        }
        self.gw.limits.message(&owner)?;
        let (id, addr) = match existing {
            Some(id) => {
                let addr = self.conversation(&id).await?;
                (id, addr)
            }
            None => self.create(&owner, assistant, &args)?,
        };
        self.settling = Some(Arc::from(id.as_str()));
        let first = !self.subs.contains_key(id.as_str());
        let subscriber = first.then(|| self.subscriber.clone());
        let m = msg::Send {
            owner,
            content,
            args,
            subscriber,
            report: None,
            on_busy,
            idempotency: self.pending_key.take(),
        };
        let accepted = match self.pump(addr.send(m)).await {
            Ok(r) => r?,
            Err(_) => return Err(ApiError::internal("the conversation stopped; send again")),
        };
        if first {
            self.track(&id, addr, 0)?;
        }
        Ok(Ack::Accepted {
            conversation_id: accepted.conversation_id,
            run_id: accepted.run_id,
        })
    }

    /// `resume`: answer an interrupt. A socket not following the conversation follows it from
    /// now on (subscribed before the answer, so it sees the run it starts; unsubscribed again
    /// if the answer is refused).
    async fn on_resume(
        &mut self,
        owner: String,
        conversation_id: String,
        interrupt_id: String,
        action: Option<String>,
        value: Value,
    ) -> Result<Ack, ApiError> {
        let addr = self.conversation(&conversation_id).await?;
        let newly = !self.subs.contains_key(conversation_id.as_str());
        if newly {
            let m = msg::Subscribe {
                owner: owner.clone(),
                subscriber: self.subscriber.clone(),
            };
            let high = self
                .pump(addr.send(m))
                .await
                .map_err(|_| ApiError::internal("the conversation stopped; resume again"))??
                .high;
            if let Err(e) = self.track(&conversation_id, addr.clone(), high) {
                addr.do_send(msg::Unsubscribe {
                    subscriber_id: self.subscriber.id,
                });
                return Err(e);
            }
        }
        let m = msg::Resume {
            owner,
            interrupt_id,
            action,
            value,
            idempotency: self.pending_key.take(),
        };
        let answer = self
            .pump(addr.send(m))
            .await
            .map_err(|_| ApiError::internal("the conversation stopped; resume again"));
        match answer.and_then(|r| r.map_err(ApiError::from)) {
            Ok(accepted) => Ok(Ack::Accepted {
                conversation_id: accepted.conversation_id,
                run_id: accepted.run_id,
            }),
            Err(e) => {
                if newly {
                    self.subs.remove(conversation_id.as_str());
                    addr.do_send(msg::Unsubscribe {
                        subscriber_id: self.subscriber.id,
                    });
                }
                Err(e)
            }
        }
    }

    /// A new conversation of `assistant` (its args checked before it exists).
    fn create(
        &self,
        owner: &str,
        assistant: Option<String>,
        args: &Option<Value>,
    ) -> Result<(String, Handle), ApiError> {
        let name = assistant.ok_or_else(|| {
            ApiError::bad_request("'assistant' is required to start a conversation")
        })?;
        let a = self
            .user
            .as_ref()
            .and_then(|u| auth::assistant_for(&self.svc, u, &name))
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::UnknownAssistant,
                    format!("there is no assistant '{name}'"),
                )
            })?;
        // Refuse bad args before a conversation exists.
        a.check_args(args.as_ref())?;
        Ok(self.svc.registry.create(owner, &name)?)
    }

    /// `subscribe`: follow live from the actor's durable mark, replay `(since, mark]`.
    async fn on_subscribe(
        &mut self,
        owner: String,
        conversation_id: String,
        since: u64,
    ) -> Result<Ack, ApiError> {
        let addr = self.conversation(&conversation_id).await?;
        let m = msg::Subscribe {
            owner,
            subscriber: self.subscriber.clone(),
        };
        let high = self
            .pump(addr.send(m))
            .await
            .map_err(|_| ApiError::internal("the conversation stopped; subscribe again"))??
            .high;
        let known = self.subs.get(conversation_id.as_str()).map(|s| s.last_sent);
        self.track(&conversation_id, addr, high.max(since))?;
        if let (Some(k), Some(s)) = (known, self.subs.get_mut(conversation_id.as_str())) {
            // Already following live: keep the newest position (no duplicates).
            s.last_sent = s.last_sent.max(k);
        }
        self.replay(&conversation_id, since, high).await?;
        Ok(Ack::Subscribed {
            conversation_id,
            last_seq: high,
        })
    }

    /// `unsubscribe`: stop following (a conversation not followed must still be the user's).
    async fn on_unsubscribe(
        &mut self,
        owner: &str,
        conversation_id: String,
    ) -> Result<Ack, ApiError> {
        if let Some(sub) = self.subs.remove(conversation_id.as_str()) {
            sub.addr.do_send(msg::Unsubscribe {
                subscriber_id: self.subscriber.id,
            });
        } else {
            // Not following it: still refuse what is not this user's.
            let store = self.svc.store.clone();
            let id = conversation_id.clone();
            let rec = self
                .pump(async move { store.get_conversation(&id).await })
                .await
                .map_err(ApiError::from)?;
            if rec.is_none_or(|r| r.owner != owner) {
                return Err(ApiError::conversation_not_found(&conversation_id));
            }
        }
        Ok(Ack::Unsubscribed { conversation_id })
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

    /// The actor of a conversation: the one this socket follows if it is still running, else
    /// the registry's (which checks nothing of ownership: the actor does, per message).
    async fn conversation(&mut self, id: &str) -> Result<Handle, ApiError> {
        if let Some(s) = self.subs.get(id) {
            if s.addr.connected() {
                return Ok(s.addr.clone());
            }
        }
        let registry = self.svc.registry.clone();
        let id = id.to_string();
        Ok(self.pump(async move { registry.get(&id).await }).await?)
    }

    /// Follow a conversation (bounded by `max_subscriptions_per_socket`).
    fn track(&mut self, id: &str, addr: Handle, last_sent: u64) -> Result<(), ApiError> {
        if let Some(s) = self.subs.get_mut(id) {
            s.addr = addr;
            return Ok(());
        }
        self.room_to_follow(Some(id))?;
        self.subs.insert(Arc::from(id), Sub { addr, last_sent });
        Ok(())
    }

    /// Whether this socket may follow `id` (one it follows already, or a new one while it
    /// follows fewer than `max_subscriptions_per_socket`). Checked before anything is created or
    /// sent, so a refusal changes nothing stored (`None`: a conversation not created yet).
    fn room_to_follow(&self, id: Option<&str>) -> Result<(), ApiError> {
        if id.is_some_and(|id| self.subs.contains_key(id)) {
            return Ok(());
        }
        if self.subs.len() >= self.svc.config.server.max_subscriptions_per_socket {
            return Err(ApiError::new(
                ErrorCode::LimitExceeded,
                "this socket follows too many conversations; unsubscribe some first",
            ));
        }
        Ok(())
    }

    /// Send the stored events in `(since, high]`.
    async fn replay(&mut self, conversation: &str, since: u64, high: u64) -> Result<(), ApiError> {
        let mut cursor = since;
        while cursor < high {
            let store = self.svc.store.clone();
            let id = conversation.to_string();
            let page = self
                .pump(async move { store.events_since(&id, cursor, REPLAY_PAGE).await })
                .await
                .map_err(ApiError::from)?;
            if page.is_empty() {
                break;
            }
            for (seq, json) in page {
                if seq > high {
                    return Ok(());
                }
                cursor = seq;
                self.send_frame(ServerFrame::Event {
                    conversation_id: conversation,
                    seq,
                    event: &json,
                })
                .await;
                if self.closed {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}
