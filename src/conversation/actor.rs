//! The conversation actor: the one owner of a conversation (ARCHITECTURE invariant 1).
//!
//! # State machine
//!
//! *idle* (no run) → *running* (an engine task drives the process and sends its events and
//! checkpoints here) → idle again when the run completes, fails, is cancelled or pauses at an
//! interrupt. While paused, the checkpoint holds the one pending interrupt; an answer is applied
//! only if that interrupt is still pending here and no run is active, and accepting it starts
//! the run at once (invariant 5). A commit failure makes the conversation *broken*: it cancels
//! the run, stores nothing more and refuses further messages; it leaves memory as soon as the
//! run has stopped, so the next request loads what was stored (the store recovers by itself).
//!
//! # What lives where
//!
//! - [`Journal`](super::journal::Journal): seqs, write batches, the durable mark, commit
//!   coalescing and the backpressure bound (invariant 2). This file is its glue: it spawns the
//!   commit future and the coalescing rounds, and hands what became durable to the fan-out.
//! - [`Fanout`](super::fanout::Fanout): the subscribers; it gets events only once durable.
//! - `actor/handlers.rs`: the public messages (`send`, `resume`, `subscribe`, `cancel`, ...);
//!   `actor/sink.rs`: the engine's sink and the messages of a run (events, checkpoints, end).
//! - [`Deps`]: everything the actor uses of the server (store, engine, metrics, run permits,
//!   the registry it unregisters from). Nothing here knows frames or the gateway.
//!
//! # Ordering
//!
//! The engine's events arrive through the mailbox (FIFO) and get seqs in that order; a user's
//! message is queued as its three events before the run it starts, and both usually share a
//! commit. Waiters (acks) are answered after the commit that holds what came before them, and
//! after its events went to the subscribers. An idle actor with no subscriber leaves memory
//! after `sessionTimeout` (a transient one, made for one synchronous call, at once), keeping of
//! an ended run's checkpoint only the run id (invariant 8).

mod hand_over;
mod handlers;
mod sink;

use sink::{ActorSink, RunDone};

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::{oneshot, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;

use super::deps::Deps;
use super::error::ConversationError;
use super::fanout::Fanout;
use super::journal::{Backpressure, Conditions, Journal, Kick, Round, Waiter};
use super::RunReport;
use crate::assistant::Assistant;
use crate::engine::{Checkpoint, Event, Input, InterruptReason, Position, RunEnd};
use crate::error::ErrorCode;
use crate::llm::{ChatMessage, Role};
use crate::store::{ConversationRecord, MessageRecord, RunStatus, StoreError, WriteOp};

/// Recent messages kept in memory as the model's multi-turn memory.
pub const HISTORY_TAIL: usize = 40;

pub fn now_ms() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64 / 1_000_000
}

struct ActiveRun {
    run_id: String,
    cancel: CancellationToken,
    started: Instant,
    report: Option<oneshot::Sender<RunReport>>,
    messages: Vec<MessageRecord>,
    _permit: OwnedSemaphorePermit,
}

struct Queued {
    content: String,
    args: serde_json::Map<String, Value>,
}

pub struct Conversation {
    id: Arc<str>,
    deps: Arc<Deps>,
    assistant: Arc<Assistant>,
    rec: ConversationRecord,
    /// False until the first message is stored (a conversation is saved on its first message).
    stored: bool,
    cp: Checkpoint,
    run: Option<ActiveRun>,
    queue: VecDeque<Queued>,
    /// The idempotency key of the `send` or `resume` being handled (stored with it if accepted).
    pending_key: Option<crate::conversation::IdempotencyKey>,
    fanout: Fanout,
    history: VecDeque<ChatMessage>,
    /// Assistant/user text being assembled from TEXT_MESSAGE_* events: id → (role, text).
    texts: HashMap<String, (Role, String)>,
    journal: Journal,
    broken: bool,
    /// Cluster mode: handing the conversation over to another node (`actor/hand_over.rs`);
    /// every message is refused as if the lease were lost, so that nothing more is written.
    handing_over: bool,
    last_active: Instant,
    timeout_handle: Option<SpawnHandle>,
    /// Started for one synchronous call: leaves memory as soon as it is idle.
    transient: bool,
    /// The run the user message being queued starts (`user_message`).
    message_run: Option<String>,
    /// The last message stored if it is the user's (a run's report starts with the user message
    /// that started it); taken by the run it starts.
    last_user_message: Option<Box<MessageRecord>>,
}

impl Conversation {
    /// A conversation not stored yet (its first message stores it).
    pub fn new_unstored(
        deps: Arc<Deps>,
        assistant: Arc<Assistant>,
        id: String,
        owner: String,
    ) -> Self {
        let now = now_ms();
        let rec = ConversationRecord {
            id,
            owner,
            assistant: assistant.id.clone(),
            title: String::new(),
            title_set: false,
            status: RunStatus::Idle,
            created_at: now,
            updated_at: now,
            args: json!({}),
            last_seq: 0,
            message_count: 0,
            pending_interrupts: Vec::new(),
        };
        let mut c = Self::restore(deps, assistant, rec, Checkpoint::default(), 0, Vec::new());
        c.stored = false;
        c
    }

    /// A stored conversation brought back: its record, checkpoint, last seq and recent messages.
    pub fn restore(
        deps: Arc<Deps>,
        assistant: Arc<Assistant>,
        rec: ConversationRecord,
        cp: Checkpoint,
        last_seq: u64,
        recent: Vec<MessageRecord>,
    ) -> Self {
        let history = recent.iter().filter_map(to_chat).collect();
        let cp = idle_view(&cp).unwrap_or(cp);
        let id: Arc<str> = Arc::from(rec.id.as_str());
        Conversation {
            journal: Journal::new(id.clone(), last_seq),
            id,
            deps,
            assistant,
            rec,
            stored: true,
            cp,
            run: None,
            queue: VecDeque::new(),
            pending_key: None,
            fanout: Fanout::default(),
            history,
            texts: HashMap::new(),
            broken: false,
            handing_over: false,
            last_active: Instant::now(),
            timeout_handle: None,
            transient: false,
            message_run: None,
            last_user_message: None,
        }
    }

    /// Every handler's first check: the caller's conversation, still held here.
    fn check_owner(&self, owner: &str) -> Result<(), ConversationError> {
        if self.rec.owner != owner {
            Err(ConversationError::NotFound(self.id.to_string()))
        } else if self.handing_over {
            // Nothing stored; the caller asks the registry again and reaches the next owner.
            Err(ConversationError::LeaseLost)
        } else {
            Ok(())
        }
    }

    fn check_usable(&self) -> Result<(), ConversationError> {
        if self.broken {
            Err(ConversationError::Broken)
        } else {
            Ok(())
        }
    }

    // ---- events and durability -------------------------------------------------------------

    /// Number, queue for storage and track one event. Returns its seq.
    ///
    /// It does not start a commit: the caller kicks once it has queued everything of the step
    /// (a user message's three events and the record go in one commit, not two).
    fn emit(&mut self, event: Event) -> u64 {
        let event = Arc::new(event);
        match self.journal.push_event(event.clone()) {
            Ok(seq) => {
                self.deps.metrics.events_emitted.fetch_add(1, Relaxed);
                self.track_text(&event);
                self.rec.last_seq = seq;
                seq
            }
            Err(e) => {
                tracing::error!(conversation = %self.id, "event not serializable: {e}");
                self.journal.seq()
            }
        }
    }

    /// Assemble chat messages from TEXT_MESSAGE_* events and store each when it ends.
    fn track_text(&mut self, event: &Event) {
        match event {
            Event::TextMessageStart { message_id, role } => {
                self.texts
                    .insert(message_id.clone(), (*role, String::new()));
            }
            Event::TextMessageContent { message_id, delta } => {
                if let Some((_, t)) = self.texts.get_mut(message_id) {
                    t.push_str(delta);
                }
            }
            Event::TextMessageEnd { message_id } => {
                if let Some((role, text)) = self.texts.remove(message_id) {
                    self.message_ended(message_id.clone(), role, text);
                }
            }
            _ => {}
        }
    }

    /// A chat message is complete: number it, remember it, queue it for the store.
    fn message_ended(&mut self, id: String, role: Role, content: String) {
        self.rec.message_count += 1;
        let now = now_ms();
        self.rec.updated_at = now;
        let m = MessageRecord {
            no: self.rec.message_count,
            id,
            role,
            content,
            run_id: self
                .message_run
                .clone()
                .or_else(|| self.run.as_ref().map(|r| r.run_id.clone()))
                .or_else(|| self.cp.run_id.clone()),
            created_at: now,
            data: None,
        };
        if matches!(role, Role::User | Role::Assistant) {
            self.history
                .push_back(ChatMessage::new(role, m.content.clone()));
            while self.history.len() > HISTORY_TAIL {
                self.history.pop_front();
            }
        }
        if let Some(run) = self.run.as_mut().filter(|r| r.report.is_some()) {
            run.messages.push(m.clone());
        }
        self.last_user_message = (role == Role::User).then(|| Box::new(m.clone()));
        self.journal.push_op(WriteOp::AppendMessage {
            conversation: self.id.to_string(),
            message: m,
        });
        self.journal.touch_record();
    }

    /// A waiter answered once everything queued so far is durable.
    fn durable_waiter(
        &mut self,
        ctx: &mut Context<Self>,
    ) -> oneshot::Receiver<Result<(), ConversationError>> {
        let (tx, rx): (Waiter, _) = oneshot::channel();
        self.journal.add_waiter(tx);
        self.kick(ctx);
        rx
    }

    /// What the journal needs to know to decide on a commit.
    fn conditions(&self) -> Conditions {
        Conditions {
            stored: self.stored,
            running: self.run.is_some(),
            unobserved_call: self.fanout.is_empty()
                && self.run.as_ref().is_some_and(|r| r.report.is_some()),
        }
    }

    /// Start a commit of everything queued, now or after coalescing (see the journal), unless
    /// one is in flight (then it follows).
    fn kick(&mut self, ctx: &mut Context<Self>) {
        if self.broken {
            // Nothing after a failed commit may be stored (the store would have a gap); once
            // the run has stopped, leave, so the next request loads what was stored.
            if self.run.is_none() {
                self.leave(ctx);
            }
            return;
        }
        match self.journal.kick(self.conditions()) {
            Kick::Nothing => {}
            Kick::Commit => self.commit(ctx),
            Kick::Coalesce(w) => self.coalesce(w, ctx),
        }
    }

    /// Yield one scheduler round (microseconds; a commit costs an fsync), then ask again.
    fn coalesce(&mut self, w: super::journal::Coalescing, ctx: &mut Context<Self>) {
        let round = tokio::task::yield_now().into_actor(self);
        ctx.spawn(round.map(
            move |(), act, ctx| match act.journal.round(w, act.conditions()) {
                Round::Again(w) => act.coalesce(w, ctx),
                Round::Commit => act.commit(ctx),
                Round::Nothing => {}
            },
        ));
    }

    /// Commit everything queued now.
    fn commit(&mut self, ctx: &mut Context<Self>) {
        let ops = self.journal.begin_commit(&self.rec);
        let store = self.deps.store.clone();
        let fut = async move { store.write(ops).await };
        ctx.spawn(fut.into_actor(self).map(|res, act, ctx| match res {
            Ok(()) => act.commit_landed(ctx),
            Err(e) => {
                act.commit_failed(e);
                act.kick(ctx);
            }
        }));
    }

    fn commit_landed(&mut self, ctx: &mut Context<Self>) {
        let waiters = self.journal.commit_landed();
        self.deliver();
        if self.run.is_none() {
            self.trim();
        }
        for w in waiters {
            let _ = w.send(Ok(()));
        }
        if self.transient {
            self.idle_check(ctx);
        }
        self.kick(ctx);
    }

    fn commit_failed(&mut self, e: StoreError) {
        tracing::error!(conversation = %self.id, "store commit failed: {e}");
        if let (StoreError::Fenced { .. }, Some(c)) = (&e, &self.deps.cluster) {
            c.metrics.leases_lost.fetch_add(1, Relaxed);
        }
        self.broken = true;
        let e = Arc::new(e);
        for w in self.journal.commit_failed() {
            let _ = w.send(Err(ConversationError::CommitFailed(e.clone())));
        }
        if let Some(run) = &self.run {
            run.cancel.cancel();
        }
    }

    /// Hand every durable event to the subscribers (in cluster mode: publish the batch for
    /// every node's relay).
    fn deliver(&mut self) {
        let mut slow = 0;
        let cluster = self.deps.cluster.as_ref();
        let mut batch: Vec<(u64, Bytes)> = Vec::new();
        for (seq, json, event) in self.journal.deliverable() {
            if !self.fanout.is_empty() {
                slow += self.fanout.deliver(&self.id, seq, &json, Some(&event));
            }
            if cluster.is_some() {
                batch.push((seq, json));
            }
        }
        if let Some(cluster) = cluster {
            cluster.publish(&self.id, &batch);
        }
        if slow > 0 {
            self.deps
                .metrics
                .slow_consumers_closed
                .fetch_add(slow, Relaxed);
        }
    }

    /// Between runs, once everything is delivered: give back what a run's buffers grew to, so
    /// an idle conversation holds only its state.
    fn trim(&mut self) {
        self.journal.trim();
        if self.texts.is_empty() {
            self.texts = HashMap::new();
        }
        if self.queue.is_empty() {
            self.queue = VecDeque::new();
        }
        self.history.shrink_to_fit();
    }

    // ---- runs ----------------------------------------------------------------------------------

    /// Queue the user's message as its three events; the caller kicks (`durable_waiter`).
    /// Queue a user's message as its three events. `starts`: the id of the run it starts (its
    /// record's `runId`); `None`: the active or paused run's.
    fn user_message(&mut self, content: &str, starts: Option<&str>) {
        self.message_run = starts.map(str::to_owned);
        let message_id = uuid::Uuid::now_v7().to_string();
        self.emit(Event::TextMessageStart {
            message_id: message_id.clone(),
            role: Role::User,
        });
        self.emit(Event::TextMessageContent {
            message_id: message_id.clone(),
            delta: content.to_string(),
        });
        self.emit(Event::TextMessageEnd { message_id });
        self.message_run = None;
    }

    fn start_run(
        &mut self,
        input: Input,
        history: Vec<ChatMessage>,
        report: Option<oneshot::Sender<RunReport>>,
        permit: OwnedSemaphorePermit,
        ctx: &mut Context<Self>,
    ) -> String {
        let run_id = match &input {
            Input::Message { run_id, .. } => run_id.clone(),
            _ => self
                .cp
                .run_id
                .clone()
                .unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
        };
        let cancel = CancellationToken::new();
        let messages = match (&input, self.last_user_message.take()) {
            (Input::Message { .. }, Some(m)) if report.is_some() => vec![*m],
            _ => Vec::new(),
        };
        self.run = Some(ActiveRun {
            run_id: run_id.clone(),
            cancel: cancel.clone(),
            started: Instant::now(),
            report,
            messages,
            _permit: permit,
        });
        self.set_status(RunStatus::Running);
        self.rec.pending_interrupts.clear();
        if let Some(h) = self.timeout_handle.take() {
            ctx.cancel_future(h);
        }
        let mut cp = self.cp.clone();
        let engine = self.deps.engine.clone();
        let assistant = self.assistant.clone();
        let addr = ctx.address();
        let backpressure = Backpressure::new(self.journal.watch(), self.journal.seq());
        let rid = run_id.clone();
        actix::spawn(async move {
            let mut sink = ActorSink {
                addr: addr.clone(),
                backpressure,
            };
            let end = engine
                .run(&assistant, &mut cp, input, &history, &mut sink, &cancel)
                .await;
            addr.do_send(RunDone {
                run_id: rid,
                cp,
                end,
            });
        });
        run_id
    }

    fn set_status(&mut self, s: RunStatus) {
        self.rec.status = s;
        self.rec.updated_at = now_ms();
        self.journal.touch_record();
    }

    fn acquire_run_permit(&self) -> Result<OwnedSemaphorePermit, ConversationError> {
        self.deps
            .run_permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| ConversationError::NoRunPermit)
    }

    fn history_snapshot(&self) -> Vec<ChatMessage> {
        self.history.iter().cloned().collect()
    }

    /// Start the next queued message, if any (`onBusy: enqueue`).
    fn next_queued(&mut self, ctx: &mut Context<Self>) {
        if self.run.is_some() || self.cp.is_paused() {
            return;
        }
        let Some(q) = self.queue.pop_front() else {
            return;
        };
        let Ok(permit) = self.acquire_run_permit() else {
            self.queue.push_front(q);
            ctx.run_later(Duration::from_millis(200), |act, ctx| act.next_queued(ctx));
            return;
        };
        let history = self.history_snapshot();
        let run_id = uuid::Uuid::now_v7().to_string();
        self.rec.args = Value::Object(q.args.clone());
        self.start_run(
            Input::Message {
                run_id,
                content: q.content,
                args: q.args,
            },
            history,
            None,
            permit,
            ctx,
        );
    }

    /// A paused `page_action` with an expiry: start the time-out run when it expires.
    fn schedule_timeout(&mut self, ctx: &mut Context<Self>) {
        let Some(i) = self.cp.pending_interrupt() else {
            return;
        };
        if i.reason != InterruptReason::PageAction {
            return;
        }
        let Some(at) = i.expires_at.as_deref().and_then(|s| {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
        }) else {
            return;
        };
        let left = (at - time::OffsetDateTime::now_utc()).max(time::Duration::ZERO);
        let wait = Duration::from_millis(left.whole_milliseconds().max(0) as u64);
        let interrupt_id = i.id.clone();
        let h = ctx.run_later(wait, move |act, ctx| {
            act.timeout_handle = None;
            let still = act
                .cp
                .pending_interrupt()
                .is_some_and(|i| i.id == interrupt_id);
            if !still || act.run.is_some() {
                return;
            }
            let Ok(permit) = act.acquire_run_permit() else {
                act.schedule_timeout(ctx);
                return;
            };
            let history = act.history_snapshot();
            act.start_run(Input::Timeout { interrupt_id }, history, None, permit, ctx);
        });
        self.timeout_handle = Some(h);
    }

    fn idle_check(&mut self, ctx: &mut Context<Self>) {
        let idle = self.run.is_none()
            && self.fanout.is_empty()
            && self.queue.is_empty()
            && self.journal.is_quiet();
        let timeout = if self.transient {
            Duration::ZERO
        } else if !self.stored {
            // Created for a first message that was refused: nothing to keep.
            Duration::from_secs(60).min(self.assistant.session_timeout)
        } else {
            self.assistant.session_timeout
        };
        if idle && self.last_active.elapsed() >= timeout {
            self.leave(ctx);
        }
    }

    /// Unregister, then stop. Anyone holding the address gets a mailbox error and looks again.
    fn leave(&mut self, ctx: &mut Context<Self>) {
        self.deps.live.remove(&self.id, &ctx.address());
        ctx.stop();
    }

    /// The run ended: keep its checkpoint (slimmed if it ended), count it, set the status.
    /// Returns what a synchronous caller is told.
    fn run_ended(
        &mut self,
        m: RunDone,
        ctx: &mut Context<Self>,
    ) -> Result<Value, ConversationError> {
        // Of a run that ended only what the next one needs is kept, in memory and in the store:
        // its state is never read again (a new message replaces it, and the run's result went
        // out with RUN_FINISHED).
        self.cp = idle_view(&m.cp).unwrap_or(m.cp);
        self.journal.put_checkpoint(self.cp.clone());
        let metrics = self.deps.metrics.clone();
        match m.end {
            Ok(RunEnd::Completed { result }) => {
                metrics.runs_completed.fetch_add(1, Relaxed);
                self.set_status(RunStatus::Completed);
                Ok(result)
            }
            Ok(RunEnd::Paused { interrupt }) => {
                metrics.runs_paused.fetch_add(1, Relaxed);
                self.set_status(RunStatus::Paused);
                self.rec.pending_interrupts = vec![interrupt.clone()];
                self.schedule_timeout(ctx);
                Err(ConversationError::Paused)
            }
            Ok(RunEnd::Failed { code, message }) => {
                metrics.runs_failed.fetch_add(1, Relaxed);
                self.set_status(RunStatus::Failed);
                Err(ConversationError::Refused { code, message })
            }
            Ok(RunEnd::Cancelled) => {
                metrics.runs_cancelled.fetch_add(1, Relaxed);
                self.set_status(RunStatus::Cancelled);
                Err(ConversationError::Cancelled)
            }
            Err(refused) => {
                metrics.runs_failed.fetch_add(1, Relaxed);
                self.set_status(RunStatus::Failed);
                Err(refused.into())
            }
        }
    }
}

/// What is kept of a checkpoint whose run ended (position idle, no loop), in memory and in
/// the store: only its run id. Nothing else of it is read again: the next message's run
/// replaces the whole checkpoint, and answers and time-outs need a paused one. `None` if the
/// run did not end.
fn idle_view(cp: &Checkpoint) -> Option<Checkpoint> {
    (cp.position == Position::Idle && cp.loops.is_empty()).then(|| Checkpoint {
        run_id: cp.run_id.clone(),
        ..Checkpoint::default()
    })
}

fn to_chat(m: &MessageRecord) -> Option<ChatMessage> {
    match m.role {
        Role::User | Role::Assistant => Some(ChatMessage::new(m.role, m.content.clone())),
        Role::System | Role::Tool => None,
    }
}

impl Actor for Conversation {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(64);
        self.deps.metrics.live_actors.fetch_add(1, Relaxed);
        let every = (self.assistant.session_timeout / 4)
            .clamp(Duration::from_millis(50), Duration::from_secs(30));
        ctx.run_interval(every, |act, ctx| act.idle_check(ctx));
        self.schedule_timeout(ctx);
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.deps.metrics.live_actors.fetch_sub(1, Relaxed);
        if let Some(run) = &self.run {
            run.cancel.cancel();
        }
        if let Some(cluster) = &self.deps.cluster {
            // Give the lease up now (unless a new actor of this id is starting here).
            self.deps
                .live
                .if_absent(&self.id, || cluster.release(&self.id));
        }
    }
}

/// The events a batch of ops appends, with their seqs (to publish a write made outside an
/// actor's journal).
pub fn appended_events(ops: &[WriteOp]) -> Vec<(u64, Bytes)> {
    let mut out = Vec::new();
    for op in ops {
        match op {
            WriteOp::AppendEvent { seq, json, .. } => out.push((*seq, json.clone())),
            WriteOp::AppendEvents {
                first_seq, events, ..
            } => out.extend(
                events
                    .iter()
                    .enumerate()
                    .map(|(i, e)| (first_seq + i as u64, e.clone())),
            ),
            _ => {}
        }
    }
    out
}

/// Ends a run that was active when the process stopped: `RUN_ERROR` with code `interrupted`,
/// status `failed`, position back to idle (the state is kept). Runs at start-up, before any
/// actor exists, so it is the conversation's only writer.
pub fn interrupted_ops(
    rec: &mut ConversationRecord,
    cp: &mut Checkpoint,
    last_seq: u64,
) -> Vec<WriteOp> {
    let run_id = cp.run_id.clone().unwrap_or_default();
    let event = Event::RunError {
        run_id,
        code: ErrorCode::Interrupted,
        message: "the server stopped while this run was active; send the message again".into(),
    };
    cp.position = Position::Idle;
    cp.loops.clear();
    rec.status = RunStatus::Failed;
    rec.pending_interrupts.clear();
    rec.last_seq = last_seq + 1;
    rec.updated_at = now_ms();
    let mut ops = Vec::new();
    if let Ok(json) = serde_json::to_vec(&event) {
        ops.push(WriteOp::AppendEvent {
            conversation: rec.id.clone(),
            seq: last_seq + 1,
            json: Bytes::from(json),
        });
    }
    if let Ok(data) = serde_json::to_vec(&cp) {
        ops.push(WriteOp::PutCheckpoint {
            conversation: rec.id.clone(),
            data: Bytes::from(data),
        });
    }
    ops.push(WriteOp::PutConversation(rec.clone()));
    ops
}
