//! The conversation actor.
//!
//! State machine: *idle* (no run) → *running* (an engine task drives the process and sends its
//! events and checkpoints here) → idle again when the run completes, fails, is cancelled or
//! pauses at an interrupt. While paused, the checkpoint holds the one pending interrupt; an
//! answer is applied only if that interrupt is still pending here, and is removed from memory
//! and from the stored record in the same step (invariant 5).
//!
//! Durability pipeline: every event gets the next `seq`, its bytes are queued for the store,
//! and at most one commit per actor is in flight; events reach subscribers only after the
//! commit that holds them (the high-water mark `durable_seq`). `ack`s wait for the commit that
//! holds the user's message or answer.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::{oneshot, watch, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;

use super::msg;
use super::{event_frame, title_of, Accepted, Outbound, RunReport, Subscriber, Waiter};
use crate::assistant::model::OnBusy;
use crate::assistant::Assistant;
use crate::engine::{Checkpoint, Event, Input, InterruptReason, Position, RunEnd, Sink};
use crate::error::{ApiError, ErrorCode};
use crate::llm::{ChatMessage, Role};
use crate::services::Services;
use crate::store::{ConversationRecord, MessageRecord, RunStatus, WriteOp};

/// Recent messages kept in memory as the model's multi-turn memory.
pub const HISTORY_TAIL: usize = 40;
/// Events queued ahead of durability before the engine is made to wait.
const MAX_UNDURABLE: u64 = 2048;
/// At most this many scheduler rounds are waited for more of a running engine's output before
/// a commit starts (see `Conversation::kick`).
const COALESCE_ROUNDS: u32 = 256;
/// A commit starts without waiting once this many writes are queued.
const COALESCE_OPS: usize = 512;
/// This many scheduler rounds in a row without new output end the wait for more.
const COALESCE_QUIET_ROUNDS: u32 = 3;

/// Scheduler rounds waited so far for a commit, and how many of the last ones were quiet.
#[derive(Debug, Clone, Copy, Default)]
struct Rounds {
    total: u32,
    quiet: u32,
}

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
    svc: Arc<Services>,
    assistant: Arc<Assistant>,
    rec: ConversationRecord,
    /// False until the first message is stored (a conversation is saved on its first message).
    stored: bool,
    cp: Checkpoint,
    run: Option<ActiveRun>,
    queue: VecDeque<Queued>,
    subscribers: HashMap<u64, Subscriber>,
    history: VecDeque<ChatMessage>,
    /// Assistant/user text being assembled from TEXT_MESSAGE_* events: id → (role, text).
    texts: HashMap<String, (String, String)>,
    /// Highest seq assigned.
    seq: u64,
    /// Highest seq known durable.
    durable_seq: u64,
    /// The same, watched by the engine sink for backpressure; only while a run is active (an
    /// idle conversation does not keep a channel).
    durable_watch: Option<watch::Sender<u64>>,
    /// Assigned but not yet durable: (seq, event JSON), delivered once their commit is done.
    /// The wire frame is built at delivery, and only when someone is subscribed.
    undelivered: VecDeque<(u64, Bytes)>,
    pending_ops: Vec<WriteOp>,
    /// Events queued for the next commit: seqs `pending_upto - len + 1 ..= pending_upto`.
    pending_events: Vec<Bytes>,
    pending_waiters: Vec<Waiter>,
    /// The seq of the last event queued (`pending_events`), or of the last one committed.
    pending_upto: u64,
    record_dirty: bool,
    flushing: bool,
    /// A commit is waiting for the engine's next output (see `kick`).
    coalescing: bool,
    broken: bool,
    last_active: Instant,
    timeout_handle: Option<SpawnHandle>,
    /// Started for one synchronous call: leaves memory as soon as it is idle.
    transient: bool,
    /// The last message stored if it is the user's (a run's report starts with the user message
    /// that started it); taken by the run it starts.
    last_user_message: Option<Box<MessageRecord>>,
    /// The engine's newest checkpoint, not yet queued for the store (boxed: usually none).
    cp_dirty: Option<Box<Checkpoint>>,
}

impl Conversation {
    /// A conversation not stored yet (its first message stores it).
    pub fn new_unstored(
        svc: Arc<Services>,
        assistant: Arc<Assistant>,
        id: String,
        owner: String,
    ) -> Self {
        let now = now_ms();
        let rec = ConversationRecord {
            id: id.clone(),
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
        Self::build(
            svc,
            assistant,
            rec,
            false,
            Checkpoint::default(),
            0,
            Vec::new(),
        )
    }

    /// A stored conversation brought back: its record, checkpoint, last seq and recent messages.
    pub fn restore(
        svc: Arc<Services>,
        assistant: Arc<Assistant>,
        rec: ConversationRecord,
        cp: Checkpoint,
        last_seq: u64,
        recent: Vec<MessageRecord>,
    ) -> Self {
        Self::build(svc, assistant, rec, true, cp, last_seq, recent)
    }

    fn build(
        svc: Arc<Services>,
        assistant: Arc<Assistant>,
        rec: ConversationRecord,
        stored: bool,
        cp: Checkpoint,
        last_seq: u64,
        recent: Vec<MessageRecord>,
    ) -> Self {
        let history = recent.iter().filter_map(to_chat).collect();
        let cp = idle_view(&cp).unwrap_or(cp);
        Conversation {
            id: Arc::from(rec.id.as_str()),
            svc,
            assistant,
            rec,
            stored,
            cp,
            run: None,
            queue: VecDeque::new(),
            subscribers: HashMap::new(),
            history,
            texts: HashMap::new(),
            seq: last_seq,
            durable_seq: last_seq,
            durable_watch: None,
            undelivered: VecDeque::new(),
            pending_ops: Vec::new(),
            pending_events: Vec::new(),
            pending_waiters: Vec::new(),
            pending_upto: last_seq,
            record_dirty: false,
            flushing: false,
            coalescing: false,
            broken: false,
            last_active: Instant::now(),
            timeout_handle: None,
            transient: false,
            last_user_message: None,
            cp_dirty: None,
        }
    }

    fn check_owner(&self, owner: &str) -> Result<(), ApiError> {
        if self.rec.owner == owner {
            Ok(())
        } else {
            Err(ApiError::conversation_not_found(&self.id))
        }
    }

    fn check_usable(&self) -> Result<(), ApiError> {
        if self.broken {
            Err(ApiError::internal(
                "this conversation could not be stored; try again in a moment",
            ))
        } else {
            Ok(())
        }
    }

    // ---- events and durability -------------------------------------------------------------

    /// Number, queue for storage and track one event. Returns its seq.
    ///
    /// It does not start a commit: the caller kicks once it has queued everything of the step
    /// (a user message's three events and the record go in one commit, not two).
    fn emit(&mut self, event: &Event, ctx: &mut Context<Self>) -> u64 {
        let mut buf = Vec::with_capacity(128);
        let json = match serde_json::to_writer(&mut buf, event) {
            Ok(()) => Bytes::from(buf),
            Err(e) => {
                tracing::error!(conversation = %self.id, "event not serializable: {e}");
                return self.seq;
            }
        };
        self.seq += 1;
        let seq = self.seq;
        self.svc.metrics.events_emitted.fetch_add(1, Relaxed);
        self.track_text(event, ctx);
        self.undelivered.push_back((seq, json.clone()));
        self.pending_events.push(json);
        self.pending_upto = seq;
        self.rec.last_seq = seq;
        seq
    }

    /// Assemble chat messages from TEXT_MESSAGE_* events and store each when it ends.
    fn track_text(&mut self, event: &Event, _ctx: &mut Context<Self>) {
        match event {
            Event::TextMessageStart { message_id, role } => {
                self.texts.insert(
                    message_id.clone(),
                    (role.as_str().to_owned(), String::new()),
                );
            }
            Event::TextMessageContent { message_id, delta } => {
                if let Some((_, t)) = self.texts.get_mut(message_id) {
                    t.push_str(delta);
                }
            }
            Event::TextMessageEnd { message_id } => {
                if let Some((role, text)) = self.texts.remove(message_id) {
                    self.rec.message_count += 1;
                    let now = now_ms();
                    self.rec.updated_at = now;
                    let m = MessageRecord {
                        no: self.rec.message_count,
                        id: message_id.clone(),
                        role: match role.as_str() {
                            "user" => Role::User,
                            "system" => Role::System,
                            "tool" => Role::Tool,
                            _ => Role::Assistant,
                        },
                        content: text,
                        run_id: self
                            .run
                            .as_ref()
                            .map(|r| r.run_id.clone())
                            .or_else(|| self.cp.run_id.clone()),
                        created_at: now,
                        data: None,
                    };
                    if let Some(c) = to_chat(&m) {
                        self.history.push_back(c);
                        while self.history.len() > HISTORY_TAIL {
                            self.history.pop_front();
                        }
                    }
                    if let Some(run) = self.run.as_mut().filter(|r| r.report.is_some()) {
                        run.messages.push(m.clone());
                    }
                    self.last_user_message = (m.role == Role::User).then(|| Box::new(m.clone()));
                    self.pending_ops.push(WriteOp::AppendMessage {
                        conversation: self.id.to_string(),
                        message: m,
                    });
                    self.record_dirty = true;
                }
            }
            _ => {}
        }
    }

    /// A waiter answered once everything queued so far is durable.
    fn durable_waiter(
        &mut self,
        ctx: &mut Context<Self>,
    ) -> oneshot::Receiver<Result<(), ApiError>> {
        let (tx, rx) = oneshot::channel();
        self.pending_waiters.push(tx);
        self.kick(ctx);
        rx
    }

    /// Start a commit of everything queued, unless one is in flight (then it follows).
    ///
    /// While the engine is still producing, the commit waits a few scheduler rounds first (see
    /// [`COALESCE_ROUNDS`]): a commit costs an fsync, a round costs microseconds, so a user's
    /// message and the events the engine produces right after it share one commit instead of
    /// two. An engine waiting for anything outside the process (a model, a tool, a person)
    /// produces nothing in a round, and the commit starts at once.
    fn kick(&mut self, ctx: &mut Context<Self>) {
        if self.coalescing || !self.wants_commit() {
            return;
        }
        if self.run.is_none() {
            self.commit(ctx);
            return;
        }
        self.coalescing = true;
        self.coalesce(self.seq, Rounds::default(), ctx);
    }

    fn coalesce(&mut self, seen: u64, rounds: Rounds, ctx: &mut Context<Self>) {
        let round = tokio::task::yield_now().into_actor(self);
        ctx.spawn(round.map(move |(), act, ctx| {
            // A round can end before the engine had its turn (the actor is also woken by its
            // mailbox), so only several quiet rounds in a row mean the engine is waiting.
            let quiet = if act.seq == seen { rounds.quiet + 1 } else { 0 };
            let more = act.run.is_some()
                && quiet < COALESCE_QUIET_ROUNDS
                && rounds.total < COALESCE_ROUNDS
                && act.pending_events.len() + act.pending_ops.len() < COALESCE_OPS;
            if more {
                let next = Rounds {
                    total: rounds.total + 1,
                    quiet,
                };
                act.coalesce(act.seq, next, ctx);
                return;
            }
            act.coalescing = false;
            if act.wants_commit() {
                act.commit(ctx);
            }
        }));
    }

    /// Whether a commit should start now: something is queued, none is in flight, the
    /// conversation is stored, and someone needs it (see [`Conversation::lazy`]).
    fn wants_commit(&self) -> bool {
        let queued = !self.pending_events.is_empty()
            || !self.pending_ops.is_empty()
            || !self.pending_waiters.is_empty()
            || self.record_dirty
            || self.cp_dirty.is_some();
        // Nothing is written before the first message; waiters wait for it.
        queued && !self.flushing && self.stored && !(self.pending_waiters.is_empty() && self.lazy())
    }

    /// Commit everything queued now.
    fn commit(&mut self, ctx: &mut Context<Self>) {
        if let Some(cp) = self.cp_dirty.take() {
            match serde_json::to_vec(&*cp) {
                Ok(data) => self.pending_ops.push(WriteOp::PutCheckpoint {
                    conversation: self.id.to_string(),
                    data: Bytes::from(data),
                }),
                Err(e) => {
                    tracing::error!(conversation = %self.id, "checkpoint not serializable: {e}")
                }
            }
        }
        if self.record_dirty {
            self.record_dirty = false;
            self.pending_ops
                .push(WriteOp::PutConversation(self.rec.clone()));
        }
        if !self.pending_events.is_empty() {
            let events = std::mem::take(&mut self.pending_events);
            self.pending_ops.push(WriteOp::AppendEvents {
                conversation: self.id.to_string(),
                first_seq: self.pending_upto + 1 - events.len() as u64,
                events,
            });
        }
        let ops = std::mem::take(&mut self.pending_ops);
        let waiters = std::mem::take(&mut self.pending_waiters);
        let upto = self.pending_upto;
        self.flushing = true;
        let store = self.svc.store.clone();
        let fut = async move { store.write(ops).await };
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            act.flushing = false;
            match res {
                Ok(()) => {
                    act.mark_durable(upto);
                    for w in waiters {
                        let _ = w.send(Ok(()));
                    }
                    if act.transient {
                        act.idle_check(ctx);
                    }
                }
                Err(e) => {
                    tracing::error!(conversation = %act.id, "store commit failed: {e}");
                    act.broken = true;
                    for w in waiters {
                        let _ = w.send(Err(ApiError::internal(format!("storage failed: {e}"))));
                    }
                    if let Some(run) = &act.run {
                        run.cancel.cancel();
                    }
                    return;
                }
            }
            act.kick(ctx);
        }));
    }

    /// Whether commits may wait: a synchronous call (HTTP invoke) that no socket follows and
    /// nobody waits on. Its caller is answered after the commit that ends the run, so the run's
    /// records are committed together then (one fsync per call instead of one per step), unless
    /// half of [`MAX_UNDURABLE`] events pile up first. Nothing is shown or acknowledged before
    /// that commit, so nothing acknowledged can be lost (invariant 2).
    fn lazy(&self) -> bool {
        self.subscribers.is_empty()
            && self.run.as_ref().is_some_and(|r| r.report.is_some())
            && self.seq.saturating_sub(self.durable_seq) < MAX_UNDURABLE / 2
    }

    /// Deliver every event up to `upto` to the subscribers.
    fn mark_durable(&mut self, upto: u64) {
        self.durable_seq = upto;
        if let Some(w) = &self.durable_watch {
            w.send_replace(upto);
        }
        while let Some((seq, _)) = self.undelivered.front() {
            if *seq > upto {
                break;
            }
            let Some((seq, json)) = self.undelivered.pop_front() else {
                break;
            };
            if self.subscribers.is_empty() {
                continue;
            }
            let frame = event_frame(&self.id, seq, &json);
            let mut dead = Vec::new();
            for (id, s) in &self.subscribers {
                let out = Outbound {
                    conversation: self.id.clone(),
                    seq,
                    frame: frame.clone(),
                };
                match s.tx.try_send(out) {
                    Ok(()) => {}
                    Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                        self.svc.metrics.slow_consumers_closed.fetch_add(1, Relaxed);
                        s.slow.cancel();
                        dead.push(*id);
                    }
                    Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => dead.push(*id),
                }
            }
            for id in dead {
                self.subscribers.remove(&id);
            }
        }
        if self.run.is_none() {
            self.trim();
        }
    }

    /// Between runs, once everything is delivered: give back what a run's buffers grew to, so
    /// an idle conversation holds only its state.
    fn trim(&mut self) {
        if self.undelivered.is_empty() {
            self.undelivered = VecDeque::new();
        }
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
    fn user_message(&mut self, content: &str, ctx: &mut Context<Self>) {
        let message_id = uuid::Uuid::now_v7().to_string();
        self.emit(
            &Event::TextMessageStart {
                message_id: message_id.clone(),
                role: crate::llm::Role::User,
            },
            ctx,
        );
        self.emit(
            &Event::TextMessageContent {
                message_id: message_id.clone(),
                delta: content.to_string(),
            },
            ctx,
        );
        self.emit(&Event::TextMessageEnd { message_id }, ctx);
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
        let engine = self.svc.engine.clone();
        let assistant = self.assistant.clone();
        let addr = ctx.address();
        let durable_seq = self.durable_seq;
        let durable = self
            .durable_watch
            .get_or_insert_with(|| watch::channel(durable_seq).0)
            .subscribe();
        let base = self.seq;
        let rid = run_id.clone();
        actix::spawn(async move {
            let mut sink = ActorSink {
                addr: addr.clone(),
                durable,
                base,
                sent: 0,
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
        self.record_dirty = true;
    }

    fn acquire_run_permit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.svc
            .run_permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                ApiError::new(
                    ErrorCode::RateLimited,
                    "the server is running as many processes as it allows; try again shortly",
                )
            })
    }

    fn follow(&mut self, subscriber: Option<Subscriber>) {
        if let Some(s) = subscriber {
            self.subscribers.insert(s.id, s);
        }
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
            && self.subscribers.is_empty()
            && self.queue.is_empty()
            && !self.flushing
            && self.pending_ops.is_empty()
            && self.pending_events.is_empty();
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
        self.svc.registry.remove(&self.id, &ctx.address());
        ctx.stop();
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
        self.svc.metrics.live_actors.fetch_add(1, Relaxed);
        let every = (self.assistant.session_timeout / 4)
            .clamp(Duration::from_millis(50), Duration::from_secs(30));
        ctx.run_interval(every, |act, ctx| act.idle_check(ctx));
        self.schedule_timeout(ctx);
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.svc.metrics.live_actors.fetch_sub(1, Relaxed);
        if let Some(run) = &self.run {
            run.cancel.cancel();
        }
    }
}

// ---- the engine's sink ---------------------------------------------------------------------

#[derive(Message)]
#[rtype(result = "()")]
struct EngineEvent(Event);

#[derive(Message)]
#[rtype(result = "()")]
struct EngineCheckpoint(Checkpoint);

#[derive(Message)]
#[rtype(result = "()")]
struct RunDone {
    run_id: String,
    cp: Checkpoint,
    end: Result<RunEnd, crate::engine::Refused>,
}

struct ActorSink {
    addr: Addr<Conversation>,
    durable: watch::Receiver<u64>,
    /// The actor's last seq when the run started: this run's n-th event gets a seq of at least
    /// `base + n` (other events, e.g. queued messages, may come in between).
    base: u64,
    sent: u64,
}

#[async_trait::async_trait]
impl Sink for ActorSink {
    async fn event(&mut self, event: Event) {
        // No round trip per event: the mailbox is FIFO, and the backlog is bounded below.
        self.addr.do_send(EngineEvent(event));
        self.sent += 1;
        // Backpressure: do not run far ahead of the store. `base + sent` is at most the seq of
        // the event just sent (only other events' seqs make it smaller), so waiting until it is
        // durable always ends once the store catches up.
        let reached = self.base + self.sent;
        if reached.saturating_sub(*self.durable.borrow()) > MAX_UNDURABLE {
            let _ = self
                .durable
                .wait_for(|d| reached.saturating_sub(*d) <= MAX_UNDURABLE / 2)
                .await;
        }
    }

    async fn checkpoint(&mut self, checkpoint: &Checkpoint) {
        self.addr.do_send(EngineCheckpoint(checkpoint.clone()));
    }
}

impl Handler<EngineEvent> for Conversation {
    type Result = ();
    fn handle(&mut self, m: EngineEvent, ctx: &mut Self::Context) {
        self.emit(&m.0, ctx);
        self.kick(ctx);
    }
}

impl Handler<EngineCheckpoint> for Conversation {
    type Result = ();
    fn handle(&mut self, m: EngineCheckpoint, ctx: &mut Self::Context) {
        // Only the newest checkpoint matters: it is serialized when the next commit starts.
        self.cp_dirty = Some(Box::new(m.0));
        self.kick(ctx);
    }
}

impl Handler<RunDone> for Conversation {
    type Result = ();
    fn handle(&mut self, m: RunDone, ctx: &mut Self::Context) {
        let Some(run) = self.run.take() else { return };
        // The run's sink is done: no one watches the durable mark until the next run.
        self.durable_watch = None;
        if run.run_id != m.run_id {
            tracing::warn!(conversation = %self.id, "a finished run was not the active one");
        }
        self.last_active = Instant::now();
        // Store the checkpoint with the run's end. Of a run that ended only what the next one
        // needs is kept, in memory and in the store: its state is never read again (a new
        // message replaces it, and the run's result went out with RUN_FINISHED).
        self.cp = match idle_view(&m.cp) {
            Some(slim) => {
                self.cp_dirty = Some(Box::new(slim.clone()));
                slim
            }
            None => {
                self.cp_dirty = Some(Box::new(m.cp.clone()));
                m.cp
            }
        };
        let metrics = &self.svc.metrics;
        metrics
            .run_seconds
            .observe(run.started.elapsed().as_secs_f64());
        let result: Result<Value, ApiError> = match &m.end {
            Ok(RunEnd::Completed { result }) => {
                metrics.runs_completed.fetch_add(1, Relaxed);
                self.set_status(RunStatus::Completed);
                Ok(result.clone())
            }
            Ok(RunEnd::Paused { interrupt }) => {
                metrics.runs_paused.fetch_add(1, Relaxed);
                self.set_status(RunStatus::Paused);
                self.rec.pending_interrupts = vec![interrupt.to_json()];
                self.schedule_timeout(ctx);
                Err(ApiError::new(
                    ErrorCode::AssistantNotAutomated,
                    "the run paused for a person or the page",
                ))
            }
            Ok(RunEnd::Failed { code, message }) => {
                metrics.runs_failed.fetch_add(1, Relaxed);
                self.set_status(RunStatus::Failed);
                Err(ApiError::new(*code, message.clone()))
            }
            Ok(RunEnd::Cancelled) => {
                metrics.runs_cancelled.fetch_add(1, Relaxed);
                self.set_status(RunStatus::Cancelled);
                Err(ApiError::new(ErrorCode::Cancelled, "the run was cancelled"))
            }
            Err(refused) => {
                metrics.runs_failed.fetch_add(1, Relaxed);
                self.set_status(RunStatus::Failed);
                Err(ApiError::new(refused.code, refused.message.clone()))
            }
        };
        // Store the checkpoint (above) and record with the run's end; answer a synchronous
        // caller after.
        let rx = self.durable_waiter(ctx);
        if let Some(report) = run.report {
            let rep = RunReport {
                conversation_id: self.id.to_string(),
                run_id: run.run_id.clone(),
                result,
                messages: run.messages,
            };
            actix::spawn(async move {
                let rep = match rx.await {
                    Ok(Ok(())) => rep,
                    Ok(Err(e)) => RunReport {
                        result: Err(e),
                        ..rep
                    },
                    Err(_) => RunReport {
                        result: Err(ApiError::internal("the conversation stopped")),
                        ..rep
                    },
                };
                let _ = report.send(rep);
            });
        }
        self.next_queued(ctx);
    }
}

// ---- the public messages -------------------------------------------------------------------

type AckFuture = ResponseFuture<Result<Accepted, ApiError>>;

fn ack_after(rx: oneshot::Receiver<Result<(), ApiError>>, accepted: Accepted) -> AckFuture {
    Box::pin(async move {
        match rx.await {
            Ok(Ok(())) => Ok(accepted),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ApiError::internal(
                "the conversation stopped before storing the message",
            )),
        }
    })
}

fn refuse(e: ApiError) -> AckFuture {
    Box::pin(async move { Err(e) })
}

impl Handler<msg::Send> for Conversation {
    type Result = AckFuture;

    fn handle(&mut self, m: msg::Send, ctx: &mut Self::Context) -> AckFuture {
        if let Err(e) = self.check_owner(&m.owner).and_then(|_| self.check_usable()) {
            return refuse(e);
        }
        self.last_active = Instant::now();
        // The sending socket follows the conversation once the message is accepted (a refused
        // message subscribes nothing).
        let subscriber = m.subscriber.clone();
        // A paused conversation: the message answers the pending interrupt.
        if self.run.is_none() && self.cp.is_paused() {
            let Some(interrupt) = self.cp.pending_interrupt().cloned() else {
                return refuse(ApiError::internal("lost the pending interrupt"));
            };
            let action = match interrupt.reason {
                InterruptReason::ConversationAction => {
                    Some(crate::assistant::model::action::REPLY.to_string())
                }
                InterruptReason::ToolConfirmation => {
                    return refuse(ApiError::new(
                        ErrorCode::ConversationBusy,
                        "the assistant is waiting for approval of a tool call; answer it with resume (approve or reject)",
                    ))
                }
                InterruptReason::PageAction => None,
            };
            return self.answer(
                interrupt.id,
                action,
                Value::String(m.content.clone()),
                Some((m.content, subscriber)),
                ctx,
            );
        }
        let args = match self.assistant.check_args(m.args.as_ref()) {
            Ok(a) => a,
            Err(e) => return refuse(e),
        };
        if self.run.is_some() {
            if self.assistant.on_busy == OnBusy::Enqueue && self.queue.len() < 16 {
                self.queue.push_back(Queued {
                    content: m.content.clone(),
                    args,
                });
                self.follow(subscriber);
                self.user_message(&m.content, ctx);
                let rx = self.durable_waiter(ctx);
                let run_id = String::new();
                return ack_after(
                    rx,
                    Accepted {
                        conversation_id: self.id.to_string(),
                        run_id,
                    },
                );
            }
            return refuse(ApiError::new(
                ErrorCode::ConversationBusy,
                "a run is active in this conversation; wait for it to finish or cancel it",
            ));
        }
        let permit = match self.acquire_run_permit() {
            Ok(p) => p,
            Err(e) => return refuse(e),
        };
        if !self.stored {
            self.stored = true;
            self.record_dirty = true;
            self.transient = m.report.is_some();
        }
        if !self.rec.title_set && self.rec.title.is_empty() {
            self.rec.title = title_of(&m.content);
        }
        self.rec.args = Value::Object(args.clone());
        let history = self.history_snapshot();
        self.follow(subscriber);
        self.user_message(&m.content, ctx);
        let run_id = uuid::Uuid::now_v7().to_string();
        // The ack waits for the commit holding the user's message (queued above). A
        // synchronous call nobody follows is answered only by its report, which waits for the
        // commit ending the run (it holds the message too), so it needs no commit of its own.
        let synchronous = m.report.is_some() && self.subscribers.is_empty();
        self.start_run(
            Input::Message {
                run_id: run_id.clone(),
                content: m.content,
                args,
            },
            history,
            m.report,
            permit,
            ctx,
        );
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

impl Conversation {
    /// Apply an answer to the pending interrupt (from `resume`, or a `send` while paused).
    fn answer(
        &mut self,
        interrupt_id: String,
        action: Option<String>,
        value: Value,
        user_text: Option<(String, Option<Subscriber>)>,
        ctx: &mut Context<Self>,
    ) -> AckFuture {
        let input = Input::Answer {
            interrupt_id: interrupt_id.clone(),
            action,
            value,
        };
        if self.run.is_some() {
            return refuse(ApiError::new(
                ErrorCode::InterruptNotPending,
                format!("interrupt '{interrupt_id}' is not pending (a run is active)"),
            ));
        }
        if let Err(r) = crate::engine::Engine::check_input(&self.cp, &input) {
            return refuse(ApiError::new(r.code, r.message));
        }
        let permit = match self.acquire_run_permit() {
            Ok(p) => p,
            Err(e) => return refuse(e),
        };
        let history = self.history_snapshot();
        if let Some((text, subscriber)) = user_text {
            self.follow(subscriber);
            self.user_message(&text, ctx);
        }
        // The interrupt leaves the stored record in the same commit as the answer's message.
        let run_id = self.start_run(input, history, None, permit, ctx);
        let rx = self.durable_waiter(ctx);
        ack_after(
            rx,
            Accepted {
                conversation_id: self.id.to_string(),
                run_id,
            },
        )
    }
}

impl Handler<msg::Resume> for Conversation {
    type Result = AckFuture;
    fn handle(&mut self, m: msg::Resume, ctx: &mut Self::Context) -> AckFuture {
        if let Err(e) = self.check_owner(&m.owner).and_then(|_| self.check_usable()) {
            return refuse(e);
        }
        self.last_active = Instant::now();
        self.answer(m.interrupt_id, m.action, m.value, None, ctx)
    }
}

impl Handler<msg::Subscribe> for Conversation {
    type Result = Result<u64, ApiError>;
    fn handle(&mut self, m: msg::Subscribe, _ctx: &mut Self::Context) -> Self::Result {
        self.check_owner(&m.owner)?;
        self.last_active = Instant::now();
        self.subscribers.insert(m.subscriber.id, m.subscriber);
        Ok(self.durable_seq)
    }
}

impl Handler<msg::Unsubscribe> for Conversation {
    type Result = ();
    fn handle(&mut self, m: msg::Unsubscribe, _ctx: &mut Self::Context) {
        self.subscribers.remove(&m.subscriber_id);
        self.last_active = Instant::now();
    }
}

impl Handler<msg::Cancel> for Conversation {
    type Result = ResponseFuture<Result<bool, ApiError>>;
    fn handle(&mut self, m: msg::Cancel, ctx: &mut Self::Context) -> Self::Result {
        if let Err(e) = self.check_owner(&m.owner) {
            return Box::pin(async move { Err(e) });
        }
        self.queue.clear();
        if let Some(run) = &self.run {
            run.cancel.cancel();
            return Box::pin(async { Ok(true) });
        }
        if self.cp.is_paused() {
            // A paused run is still a run: cancelling it withdraws its pending interrupt.
            let run_id = self.cp.run_id.clone().unwrap_or_default();
            self.cp.position = Position::Idle;
            self.cp.loops.clear();
            self.cp_dirty = Some(Box::new(self.cp.clone()));
            self.rec.pending_interrupts.clear();
            if let Some(h) = self.timeout_handle.take() {
                ctx.cancel_future(h);
            }
            self.set_status(RunStatus::Cancelled);
            self.emit(
                &Event::RunError {
                    run_id,
                    code: ErrorCode::Cancelled,
                    message: "the run was cancelled while it waited".into(),
                },
                ctx,
            );
            self.svc.metrics.runs_cancelled.fetch_add(1, Relaxed);
            // Acknowledge once the cancellation is stored, like every other change.
            let rx = self.durable_waiter(ctx);
            return Box::pin(async move {
                rx.await
                    .unwrap_or_else(|_| Err(ApiError::internal("the conversation stopped")))
                    .map(|()| true)
            });
        }
        Box::pin(async { Ok(false) })
    }
}

impl Handler<msg::Rename> for Conversation {
    type Result = ResponseFuture<Result<(), ApiError>>;
    fn handle(&mut self, m: msg::Rename, ctx: &mut Self::Context) -> Self::Result {
        if let Err(e) = self.check_owner(&m.owner) {
            return Box::pin(async move { Err(e) });
        }
        self.rec.title = m.title;
        self.rec.title_set = true;
        self.record_dirty = true;
        let rx = self.durable_waiter(ctx);
        let stored = self.stored;
        Box::pin(async move {
            if !stored {
                return Ok(());
            }
            rx.await
                .unwrap_or_else(|_| Err(ApiError::internal("the conversation stopped")))
        })
    }
}

impl Handler<msg::Delete> for Conversation {
    type Result = ResponseActFuture<Self, Result<(), ApiError>>;
    fn handle(&mut self, m: msg::Delete, ctx: &mut Self::Context) -> Self::Result {
        if let Err(e) = self.check_owner(&m.owner) {
            return Box::pin(async move { Err(e) }.into_actor(self));
        }
        if let Some(run) = &self.run {
            run.cancel.cancel();
        }
        // Unregister first: nobody reaches this actor again; then delete and stop.
        self.svc.registry.remove(&self.id, &ctx.address());
        self.subscribers.clear();
        self.pending_ops.clear();
        self.pending_events.clear();
        self.undelivered.clear();
        self.stored = false;
        let store = self.svc.store.clone();
        let id = self.id.to_string();
        Box::pin(
            async move {
                store
                    .write(vec![WriteOp::DeleteConversation { conversation: id }])
                    .await
                    .map_err(|e| ApiError::internal(format!("could not delete: {e}")))
            }
            .into_actor(self)
            .map(|res, _act, ctx| {
                ctx.stop();
                res
            }),
        )
    }
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
