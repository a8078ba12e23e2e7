//! The public messages of a conversation actor (`super::super::msg`).
//!
//! Every handler checks the owner first (a conversation of someone else does not exist for the
//! caller). Acks of `send`, `resume`, `cancel` and `rename` wait for the durable commit holding
//! the change (invariant 2); a refused message changes nothing and subscribes nothing.

use std::time::Instant;

use actix::prelude::*;
use serde_json::Value;
use tokio::sync::oneshot;

use super::{Conversation, Queued};
use crate::assistant::model::{action, OnBusy};
use crate::conversation::error::ConversationError;
use crate::conversation::{msg, title_of, Accepted, IdempotencyKey, Subscribed, Subscriber};
use crate::engine::{Event, Input, InterruptReason, Position};
use crate::error::ErrorCode;
use crate::store::{RunStatus, WriteOp};

type AckFuture = ResponseFuture<Result<Accepted, ConversationError>>;
type Durable = oneshot::Receiver<Result<(), ConversationError>>;

fn ack_after(rx: Durable, accepted: Accepted) -> AckFuture {
    Box::pin(async move {
        match rx.await {
            Ok(Ok(())) => Ok(accepted),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ConversationError::StoppedBeforeStored),
        }
    })
}

/// Answered once the change is durable.
async fn stored(rx: Durable) -> Result<(), ConversationError> {
    rx.await.unwrap_or(Err(ConversationError::Stopped))
}

fn refuse<T: 'static>(e: ConversationError) -> ResponseFuture<Result<T, ConversationError>> {
    Box::pin(async move { Err(e) })
}

impl Conversation {
    fn follow(&mut self, subscriber: Option<Subscriber>) {
        if let Some(s) = subscriber {
            self.fanout.insert(s);
        }
    }

    /// A `send` to a paused conversation answers its pending interrupt.
    fn send_while_paused(
        &mut self,
        content: String,
        subscriber: Option<Subscriber>,
        ctx: &mut Context<Self>,
    ) -> AckFuture {
        let Some(interrupt) = self.cp.pending_interrupt().cloned() else {
            return refuse(ConversationError::LostInterrupt);
        };
        let action = match interrupt.reason {
            InterruptReason::ConversationAction => Some(action::REPLY.to_string()),
            InterruptReason::ToolConfirmation => {
                return refuse(ConversationError::AwaitingApproval)
            }
            InterruptReason::PageAction => None,
        };
        let value = Value::String(content.clone());
        self.answer(
            interrupt.id,
            action,
            value,
            Some((content, subscriber)),
            ctx,
        )
    }

    /// Queue the key of the request being accepted for the same commit as what it accepted
    /// (CONTRACT §6: keys survive a restart).
    fn remember_key(&mut self, run_id: &str) {
        if let Some(k) = self.pending_key.take() {
            self.store_key(k, run_id, None);
        }
    }

    /// Queue `k` for the next commit, expiring in 24 hours, with what its request answered.
    pub(super) fn store_key(&mut self, k: IdempotencyKey, run_id: &str, cancelled: Option<bool>) {
        const TTL_MS: i64 = 24 * 3600 * 1000;
        self.journal
            .push_op(crate::store::WriteOp::PutIdempotencyKey {
                key: k.key,
                record: crate::store::IdempotencyRecord {
                    fingerprint: k.fingerprint,
                    conversation_id: self.id.to_string(),
                    run_id: run_id.to_string(),
                    expires_at_ms: crate::conversation::actor::now_ms() + TTL_MS,
                    cancelled,
                },
            });
    }

    /// A `send` while a run is active: queued (`onBusy: enqueue`, at most 16), queued first
    /// after cancelling the active run (`interrupt`: the run ends with `RUN_ERROR` code
    /// `cancelled`, and this message starts the next one), or refused.
    fn send_while_busy(
        &mut self,
        content: String,
        args: serde_json::Map<String, Value>,
        subscriber: Option<Subscriber>,
        on_busy: OnBusy,
        ctx: &mut Context<Self>,
    ) -> AckFuture {
        match on_busy {
            OnBusy::Reject => return refuse(ConversationError::Busy),
            OnBusy::Enqueue if self.queue.len() >= 16 => return refuse(ConversationError::Busy),
            OnBusy::Enqueue | OnBusy::Interrupt => {}
        }
        self.follow(subscriber);
        self.user_message(&content, None);
        if on_busy == OnBusy::Interrupt {
            if let Some(run) = &self.run {
                run.cancel.cancel();
            }
            self.queue.push_front(Queued { content, args });
        } else {
            self.queue.push_back(Queued { content, args });
        }
        self.remember_key("");
        let rx = self.durable_waiter(ctx);
        let accepted = Accepted {
            conversation_id: self.id.to_string(),
            run_id: String::new(),
        };
        ack_after(rx, accepted)
    }

    /// Apply an answer to the pending interrupt (from `resume`, or a `send` while paused).
    fn answer(
        &mut self,
        interrupt_id: String,
        action: Option<String>,
        value: Value,
        user_text: Option<(String, Option<Subscriber>)>,
        ctx: &mut Context<Self>,
    ) -> AckFuture {
        if self.run.is_some() {
            return refuse(ConversationError::RunActive(interrupt_id));
        }
        let input = Input::Answer {
            interrupt_id,
            action,
            value,
        };
        if let Err(r) = crate::engine::Engine::check_input(&self.cp, &input) {
            return refuse(r.into());
        }
        let permit = match self.acquire_run_permit() {
            Ok(p) => p,
            Err(e) => return refuse(e),
        };
        let history = self.history_snapshot();
        if let Some((text, subscriber)) = user_text {
            self.follow(subscriber);
            self.user_message(&text, None);
        }
        // The interrupt leaves the stored record in the same commit as the answer's message.
        let run_id = self.start_run(input, history, None, permit, ctx);
        self.remember_key(&run_id);
        let rx = self.durable_waiter(ctx);
        let accepted = Accepted {
            conversation_id: self.id.to_string(),
            run_id,
        };
        ack_after(rx, accepted)
    }
}

impl Handler<msg::Send> for Conversation {
    type Result = AckFuture;

    fn handle(&mut self, mut m: msg::Send, ctx: &mut Self::Context) -> AckFuture {
        self.pending_key = m.idempotency.take();
        let answer = self.on_send(m, ctx);
        self.pending_key = None;
        answer
    }
}

impl Conversation {
    fn on_send(&mut self, m: msg::Send, ctx: &mut Context<Self>) -> AckFuture {
        if self.handing_over && m.report.is_some() && self.rec.owner == m.owner {
            // A synchronous call cannot be sent on (its report stays here): while another
            // node's call takes the conversation over, this one meets a busy conversation.
            return refuse(ConversationError::Busy);
        }
        if let Err(e) = self.check_owner(&m.owner).and_then(|_| self.check_usable()) {
            return refuse(e);
        }
        self.last_active = Instant::now();
        // The sending socket follows the conversation once the message is accepted (a refused
        // message subscribes nothing).
        if self.run.is_none() && self.cp.is_paused() {
            return self.send_while_paused(m.content, m.subscriber, ctx);
        }
        let args = match self.assistant.check_args(m.args.as_ref()) {
            Ok(a) => a,
            Err(e) => return refuse(ConversationError::InvalidArgs(Box::new(e))),
        };
        if self.run.is_some() {
            let on_busy = m.on_busy.unwrap_or(self.assistant.on_busy);
            return self.send_while_busy(m.content, args, m.subscriber, on_busy, ctx);
        }
        let permit = match self.acquire_run_permit() {
            Ok(p) => p,
            Err(e) => return refuse(e),
        };
        if !self.stored {
            self.stored = true;
            self.journal.touch_record();
            self.transient = m.report.is_some();
        }
        if !self.rec.title_set && self.rec.title.is_empty() {
            self.rec.title = title_of(&m.content);
        }
        self.rec.args = Value::Object(args.clone());
        let history = self.history_snapshot();
        self.follow(m.subscriber);
        let run_id = uuid::Uuid::now_v7().to_string();
        self.user_message(&m.content, Some(&run_id));
        // The ack waits for the commit holding the user's message (queued above). A
        // synchronous call nobody follows is answered only by its report, which waits for the
        // commit ending the run (it holds the message too), so it needs no commit of its own.
        let synchronous = m.report.is_some() && self.fanout.is_empty();
        let input = Input::Message {
            run_id: run_id.clone(),
            content: m.content,
            args,
        };
        self.start_run(input, history, m.report, permit, ctx);
        self.remember_key(&run_id);
        // Asked for after the run started, so that the commit may wait for its first events.
        let rx = (!synchronous).then(|| self.durable_waiter(ctx));
        let accepted = Accepted {
            conversation_id: self.id.to_string(),
            run_id,
        };
        match rx {
            Some(rx) => ack_after(rx, accepted),
            None => Box::pin(async move { Ok(accepted) }),
        }
    }
}

impl Handler<msg::Resume> for Conversation {
    type Result = AckFuture;
    fn handle(&mut self, m: msg::Resume, ctx: &mut Self::Context) -> AckFuture {
        if let Err(e) = self.check_owner(&m.owner).and_then(|_| self.check_usable()) {
            return refuse(e);
        }
        self.last_active = Instant::now();
        self.pending_key = m.idempotency;
        let answer = self.answer(m.interrupt_id, m.action, m.value, None, ctx);
        self.pending_key = None;
        answer
    }
}

impl Handler<msg::Subscribe> for Conversation {
    type Result = Result<Subscribed, ConversationError>;
    fn handle(&mut self, m: msg::Subscribe, _ctx: &mut Self::Context) -> Self::Result {
        self.check_owner(&m.owner)?;
        self.last_active = Instant::now();
        self.fanout.insert(m.subscriber);
        Ok(Subscribed {
            high: self.journal.durable_seq(),
            running: self.run.is_some(),
        })
    }
}

impl Handler<msg::Unsubscribe> for Conversation {
    type Result = ();
    fn handle(&mut self, m: msg::Unsubscribe, _ctx: &mut Self::Context) {
        self.fanout.remove(m.subscriber_id);
        self.last_active = Instant::now();
    }
}

impl Handler<msg::Cancel> for Conversation {
    type Result = ResponseFuture<Result<bool, ConversationError>>;
    fn handle(&mut self, m: msg::Cancel, ctx: &mut Self::Context) -> Self::Result {
        self.cancel(&m.owner, None, ctx)
    }
}

impl Handler<msg::KeyedCancel> for Conversation {
    type Result = ResponseFuture<Result<bool, ConversationError>>;
    fn handle(&mut self, m: msg::KeyedCancel, ctx: &mut Self::Context) -> Self::Result {
        self.cancel(&m.owner, Some(m.idempotency), ctx)
    }
}

impl Conversation {
    /// Cancel the active run, or withdraw a paused run's interrupt; answers whether there was
    /// a run. `key` is stored with the change (or alone) before the answer.
    fn cancel(
        &mut self,
        owner: &str,
        key: Option<IdempotencyKey>,
        ctx: &mut Context<Self>,
    ) -> ResponseFuture<Result<bool, ConversationError>> {
        if let Err(e) = self.check_owner(owner) {
            return refuse(e);
        }
        self.queue.clear();
        let active = self.run.as_ref().map(|run| run.cancel.cancel()).is_some();
        if active || !self.cp.is_paused() {
            // Nothing else to store: the key alone, acknowledged once durable.
            let Some(k) = key else {
                return Box::pin(async move { Ok(active) });
            };
            let run_id = self.cp.run_id.clone().unwrap_or_default();
            self.store_key(k, &run_id, Some(active));
            let rx = self.durable_waiter(ctx);
            return Box::pin(async move { stored(rx).await.map(|()| active) });
        }
        // A paused run is still a run: cancelling it withdraws its pending interrupt.
        let run_id = self.cp.run_id.clone().unwrap_or_default();
        self.cp.position = Position::Idle;
        self.cp.loops.clear();
        self.journal.put_checkpoint(self.cp.clone());
        self.rec.pending_interrupts.clear();
        if let Some(h) = self.timeout_handle.take() {
            ctx.cancel_future(h);
        }
        self.set_status(RunStatus::Cancelled);
        if let Some(k) = key {
            self.store_key(k, &run_id, Some(true));
        }
        self.emit(Event::RunError {
            run_id,
            code: ErrorCode::Cancelled,
            message: "the run was cancelled while it waited".into(),
        });
        self.deps
            .metrics
            .runs_cancelled
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Acknowledge once the cancellation is stored, like every other change.
        let rx = self.durable_waiter(ctx);
        Box::pin(async move { stored(rx).await.map(|()| true) })
    }
}

impl Handler<msg::Rename> for Conversation {
    type Result = ResponseFuture<Result<(), ConversationError>>;
    fn handle(&mut self, m: msg::Rename, ctx: &mut Self::Context) -> Self::Result {
        if let Err(e) = self.check_owner(&m.owner) {
            return refuse(e);
        }
        self.rec.title = m.title;
        self.rec.title_set = true;
        self.journal.touch_record();
        let rx = self.durable_waiter(ctx);
        if !self.stored {
            return Box::pin(async { Ok(()) });
        }
        Box::pin(stored(rx))
    }
}

impl Handler<msg::Store> for Conversation {
    type Result = ResponseFuture<Result<(), ConversationError>>;
    fn handle(&mut self, m: msg::Store, ctx: &mut Self::Context) -> Self::Result {
        if let Err(e) = self.check_owner(&m.owner) {
            return refuse(e);
        }
        if let Some(title) = m.title {
            self.rec.title = title;
            self.rec.title_set = true;
        }
        if let Some(k) = m.idempotency {
            self.store_key(k, "", None);
        }
        self.stored = true;
        self.journal.touch_record();
        let rx = self.durable_waiter(ctx);
        Box::pin(stored(rx))
    }
}

impl Handler<msg::Delete> for Conversation {
    type Result = ResponseActFuture<Self, Result<(), ConversationError>>;
    fn handle(&mut self, m: msg::Delete, ctx: &mut Self::Context) -> Self::Result {
        if let Err(e) = self.check_owner(&m.owner) {
            return Box::pin(async move { Err(e) }.into_actor(self));
        }
        if let Some(run) = &self.run {
            run.cancel.cancel();
        }
        // Unregister first: nobody reaches this actor again; then delete and stop.
        self.deps.live.remove(&self.id, &ctx.address());
        self.fanout.clear();
        self.journal.discard();
        self.stored = false;
        let store = self.deps.store.clone();
        let id = self.id.to_string();
        Box::pin(
            async move {
                store
                    .write(vec![WriteOp::DeleteConversation { conversation: id }])
                    .await
                    .map_err(ConversationError::DeleteFailed)
            }
            .into_actor(self)
            .map(|res, _act, ctx| {
                ctx.stop();
                res
            }),
        )
    }
}

impl Handler<msg::LeaseLost> for Conversation {
    type Result = ();
    fn handle(&mut self, _: msg::LeaseLost, ctx: &mut Self::Context) {
        tracing::warn!(conversation = %self.id, "lease lost: this node no longer owns the conversation; its actor stops");
        self.broken = true;
        if let Some(run) = &self.run {
            run.cancel.cancel();
        }
        self.fanout.clear();
        for w in self.journal.take_waiters() {
            let _ = w.send(Err(ConversationError::LeaseLost));
        }
        self.journal.discard();
        self.deps.live.remove(&self.id, &ctx.address());
        ctx.stop();
    }
}
