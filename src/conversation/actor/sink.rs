//! The engine's side of a run: the sink it writes to, and the messages that bring its events,
//! checkpoints and end into the actor.
//!
//! The sink sends without a round trip per event (the mailbox is FIFO) and is bounded by the
//! journal's [`Backpressure`]. Only the newest checkpoint is kept until the next commit. A run's
//! end is stored (checkpoint, record) before a synchronous caller gets its report.

use std::time::Instant;

use actix::prelude::*;

use super::super::error::ConversationError;
use super::super::journal::Backpressure;
use super::super::RunReport;
use super::Conversation;
use crate::engine::{Checkpoint, Event, RunEnd, Sink};

#[derive(Message)]
#[rtype(result = "()")]
struct EngineEvent(Event);

#[derive(Message)]
#[rtype(result = "()")]
struct EngineCheckpoint(Checkpoint);

#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct RunDone {
    pub(super) run_id: String,
    pub(super) cp: Checkpoint,
    pub(super) end: Result<RunEnd, crate::engine::Refused>,
}

pub(super) struct ActorSink {
    pub(super) addr: Addr<Conversation>,
    pub(super) backpressure: Backpressure,
}

#[async_trait::async_trait]
impl Sink for ActorSink {
    async fn event(&mut self, event: Event) {
        // No round trip per event: the mailbox is FIFO, and the backlog is bounded.
        self.addr.do_send(EngineEvent(event));
        self.backpressure.sent_one().await;
    }

    async fn checkpoint(&mut self, checkpoint: &Checkpoint) {
        self.addr.do_send(EngineCheckpoint(checkpoint.clone()));
    }
}

impl Handler<EngineEvent> for Conversation {
    type Result = ();
    fn handle(&mut self, m: EngineEvent, ctx: &mut Self::Context) {
        self.emit(m.0);
        self.kick(ctx);
    }
}

impl Handler<EngineCheckpoint> for Conversation {
    type Result = ();
    fn handle(&mut self, m: EngineCheckpoint, ctx: &mut Self::Context) {
        // Only the newest checkpoint matters: it is serialized when the next commit starts.
        self.journal.put_checkpoint(m.0);
        self.kick(ctx);
    }
}

impl Handler<RunDone> for Conversation {
    type Result = ();
    fn handle(&mut self, m: RunDone, ctx: &mut Self::Context) {
        let Some(run) = self.run.take() else { return };
        // The run's sink is done: no one watches the durable mark until the next run.
        self.journal.end_watch();
        if run.run_id != m.run_id {
            tracing::warn!(conversation = %self.id, "a finished run was not the active one");
        }
        self.last_active = Instant::now();
        self.deps
            .metrics
            .run_seconds
            .observe(run.started.elapsed().as_secs_f64());
        let result = self.run_ended(m, ctx);
        // Store the checkpoint and record with the run's end; answer a synchronous caller after.
        let rx = self.durable_waiter(ctx);
        if let Some(report) = run.report {
            let rep = RunReport {
                conversation_id: self.id.to_string(),
                run_id: run.run_id,
                result,
                messages: run.messages,
            };
            actix::spawn(async move {
                let result = match rx.await {
                    Ok(Ok(())) => rep.result,
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(ConversationError::Stopped),
                };
                let _ = report.send(RunReport { result, ..rep });
            });
        }
        self.next_queued(ctx);
    }
}
