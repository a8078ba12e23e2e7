//! Cluster mode: giving a conversation up to another node (`msg::HandOver`).
//!
//! A synchronous call (`invoke`) waits for its run's report through a channel that cannot
//! cross a process, so it runs where it arrived. When another node holds the conversation, the
//! receiving node asks that node to hand it over (`handle.rs`), then claims it and restores
//! the actor from the store, as a takeover does.
//!
//! # Ordering
//!
//! 1. Refused while a run is active (what `on_busy` says: `reject` refuses with
//!    `conversation_busy`, `enqueue` answers "not yet", `interrupt` cancels the run and answers
//!    "not yet"; the caller asks again).
//! 2. From the accepted request on, the actor refuses every other message as if its lease were
//!    lost (nothing stored; callers ask the registry again and reach the next owner).
//! 3. The answer waits for everything queued to be durable, so the next owner reads all of it.
//! 4. The actor leaves the registry, the lease is released in the database, *then* the answer
//!    goes out and the actor stops: the asking node's claim right after it cannot fail on this
//!    node's lease.

use std::sync::atomic::Ordering::Relaxed;

use actix::prelude::*;

use super::Conversation;
use crate::assistant::model::OnBusy;
use crate::conversation::error::ConversationError;
use crate::conversation::msg;

impl Handler<msg::HandOver> for Conversation {
    type Result = ResponseActFuture<Self, Result<bool, ConversationError>>;

    fn handle(&mut self, m: msg::HandOver, ctx: &mut Self::Context) -> Self::Result {
        if let Err(e) = self.check_owner(&m.owner).and_then(|_| self.check_usable()) {
            return Box::pin(fut::ready(Err(e)));
        }
        if self.run.is_some() || !self.queue.is_empty() {
            let waits = match m.on_busy.unwrap_or(self.assistant.on_busy) {
                OnBusy::Reject => Err(ConversationError::Busy),
                OnBusy::Enqueue => Ok(false),
                OnBusy::Interrupt => {
                    if let Some(run) = &self.run {
                        run.cancel.cancel();
                    }
                    Ok(false)
                }
            };
            return Box::pin(fut::ready(waits));
        }
        self.handing_over = true;
        let rx = self.durable_waiter(ctx);
        let durable = async move { rx.await.unwrap_or(Err(ConversationError::Stopped)) };
        Box::pin(durable.into_actor(self).then(|stored, act, ctx| {
            // Either way this actor ends: the next request finds no entry and looks again.
            act.deps.live.remove(&act.id, &ctx.address());
            // A failed commit: nothing to hand over; `stopped` releases the lease as usual.
            let release = stored.is_ok().then(|| act.deps.cluster.clone()).flatten();
            let id = act.id.clone();
            async move {
                stored?;
                if let Some(cluster) = release {
                    cluster.release_now(&id).await;
                    cluster.metrics.handed_over.fetch_add(1, Relaxed);
                }
                Ok(true)
            }
            .into_actor(act)
            .map(|answer, _act, ctx| {
                ctx.stop();
                answer
            })
        }))
    }
}
