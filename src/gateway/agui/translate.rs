//! Parley's stored events → AG-UI events: a pure, stateful translation, one stored event in,
//! zero or more AG-UI events out, every one carrying the seq of the stored event it came from.
//!
//! # What the output obeys (`@ag-ui/client`'s verifier and `@ag-ui/core`'s schemas)
//!
//! - A run opens with `RUN_STARTED {threadId, runId}`; an event that arrives with no run open
//!   (a cancelled pause emits only `RUN_ERROR`) first opens one with the event's run id.
//! - Step names are unique while open: the n-th start of a node within a run (iterations run a
//!   node many times) is named `node#n`; `STEP_FINISHED` closes the newest open one of its node.
//! - Before `RUN_FINISHED` every open step, text message and tool call is closed (a paused
//!   node's step stays open in Parley; here it is finished).
//! - The user's own message (echoed as `TEXT_MESSAGE_*` with role `user`) has no AG-UI form:
//!   the client already holds it. Parley's `usage` is dropped (AG-UI wants a list), node types
//!   and outputs go under `metadata`.
//! - Interrupts: a card or a tool confirmation becomes an AG-UI interrupt (`confirmation`, or
//!   `input_required` for a card with a `reply` button); a page action becomes a frontend tool
//!   call (`TOOL_CALL_START/ARGS/END` named after the action) listed in
//!   `outcome.pendingToolCallIds`. Cancelled runs end with `outcome: {"type": "cancelled"}`.
//! - Reasoning deltas are wrapped in `REASONING_START` / `REASONING_MESSAGE_START` …
//!   `REASONING_MESSAGE_END` / `REASONING_END` (never the deprecated `THINKING_*`).
//!
//! # Cost
//!
//! Every event of every run passes here, so the output is typed ([`AgEvent`], borrowing the
//! stored event's strings) and goes straight into the response's buffer
//! ([`Translator::write_json`] into an [`SseWriter`]); stored events are read with
//! [`Event::from_stored`] (the frequent kinds without serde's buffering of tagged enums). A text
//! delta's stored JSON is already its AG-UI form and is copied, not written again.
//! [`Translator::push`] gives the same events as `Value`s (tests, tools).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use serde_json::Value;

use super::sse::SseWriter;
use super::wire::{
    agui_interrupt, AgEvent, MessageMeta, Rejoined, RunOutcome, StepMeta, ToolMeta, ToolNameMeta,
};
use crate::engine::{Event, Interrupt, InterruptReason, Outcome};
use crate::error::ErrorCode;
use crate::gateway::stream::Item;
use crate::llm::Role;

/// One AG-UI event and the seq of the stored event it came from (its SSE `id:`), as a
/// `Value`: the form the tests read. The server writes [`AgEvent`]s straight to SSE.
#[cfg(test)]
#[derive(Debug, Clone, PartialEq)]
pub struct Translated {
    pub seq: u64,
    pub event: Value,
}

/// The state of one thread's translation (see the module doc).
#[derive(Debug, Default)]
pub struct Translator {
    thread_id: String,
    run: Option<String>,
    /// Starts of each node within the open run (for `node#n` names).
    starts: HashMap<String, u32>,
    /// Open step names in order of opening, with their node id.
    open_steps: Vec<(String, String)>,
    open_text: Vec<String>,
    open_tools: Vec<String>,
    /// Every tool call streamed on this thread (an agent's page tool is streamed by the agent).
    seen_tools: HashSet<String>,
    user_messages: HashSet<String>,
    reasoning: Option<String>,
}

/// The AG-UI `toolCallId` a page-action interrupt is answered under: the agent's own tool call
/// for a page tool, else the interrupt id.
pub fn page_tool_call_id(i: &Interrupt) -> &str {
    i.tool_call_id.as_deref().unwrap_or(&i.id)
}

/// How serde stores a `TEXT_MESSAGE_CONTENT` (the tag first).
const TEXT_DELTA_PREFIX: &[u8] = br#"{"type":"TEXT_MESSAGE_CONTENT","#;
/// How serde writes [`AgEvent::TextMessageContent`] (and stores the engine's event: the same
/// fields in the same order) up to the message id.
const TEXT_DELTA_WIRE: &[u8] = br#"{"type":"TEXT_MESSAGE_CONTENT","messageId":""#;

/// A stored `TEXT_MESSAGE_CONTENT`, borrowing its strings (owned only when they hold escapes).
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct TextDelta<'a> {
    #[serde(borrow)]
    message_id: Cow<'a, str>,
    #[serde(borrow)]
    delta: Cow<'a, str>,
}

/// A `TEXT_MESSAGE_CONTENT` whose stored JSON is in serde's own form (the tag, then `messageId`,
/// then `delta`: [`AgEvent::TextMessageContent`] exactly) is copied as it is instead of written
/// again: most of a run's events are text deltas.
fn write_delta(seq: u64, message_id: &str, delta: &str, json: &[u8], out: &mut SseWriter) {
    if !(json.starts_with(TEXT_DELTA_WIRE) && out.raw(Some(seq), json)) {
        out.event(
            Some(seq),
            &AgEvent::TextMessageContent { message_id, delta },
        );
    }
}

/// A stored event that could not be read: skipped, with a warning.
/// Removes `id` from the open ones; whether it was open (an end of something never started,
/// or ended twice, gives nothing).
fn take_open(open: &mut Vec<String>, id: &str) -> bool {
    match open.iter().position(|o| o == id) {
        Some(pos) => {
            open.remove(pos);
            true
        }
        None => false,
    }
}

fn unreadable(seq: u64, e: serde_json::Error) {
    tracing::warn!(seq, error = %e, "agui: a stored event could not be read");
}

impl Translator {
    pub fn new(thread_id: &str) -> Self {
        Translator {
            thread_id: thread_id.to_owned(),
            ..Default::default()
        }
    }

    /// Whether a run is open (started and not yet finished or failed).
    pub fn run_open(&self) -> bool {
        self.run.is_some()
    }

    /// Translate one event of the log into SSE messages on `out`: the event itself when it
    /// came with it (delivered live), else its JSON. Both give the same bytes (tested).
    pub fn write_item(&mut self, item: &Item, out: &mut SseWriter) {
        let seq = item.seq;
        match item.typed.as_deref() {
            Some(Event::TextMessageContent { message_id, delta }) => {
                if self.text_delta(message_id, delta, &mut |a| out.event(Some(seq), &a)) {
                    write_delta(seq, message_id, delta, &item.json, out);
                }
            }
            Some(e) => self.push_with(e, &mut |a: AgEvent<'_>| out.event(Some(seq), &a)),
            None => self.write_json(seq, &item.json, out),
        }
    }

    /// Translate one stored event (its JSON as stored) into SSE messages on `out`.
    /// Unreadable events are skipped.
    pub fn write_json(&mut self, seq: u64, json: &[u8], out: &mut SseWriter) {
        if json.starts_with(TEXT_DELTA_PREFIX) {
            // Most of a run's events: read without copying their strings.
            match serde_json::from_slice::<TextDelta<'_>>(json) {
                Ok(d) => {
                    if self.text_delta(&d.message_id, &d.delta, &mut |a| out.event(Some(seq), &a)) {
                        write_delta(seq, &d.message_id, &d.delta, json, out);
                    }
                }
                Err(e) => unreadable(seq, e),
            }
            return;
        }
        match Event::from_stored(json) {
            Ok(e) => self.push_with(&e, &mut |a| out.event(Some(seq), &a)),
            Err(e) => unreadable(seq, e),
        }
    }

    /// A `TEXT_MESSAGE_CONTENT`: what [`Translator::push_with`] does with one, without the
    /// `Event`, up to the content itself: whether the caller writes it (not for the user's echo
    /// or an empty delta).
    fn text_delta(
        &mut self,
        message_id: &str,
        delta: &str,
        emit: &mut impl FnMut(AgEvent<'_>),
    ) -> bool {
        if self.user_messages.contains(message_id) {
            return false; // the user's echo
        }
        self.close_reasoning(emit);
        if self.run.is_none() {
            self.open_run("run", emit);
        }
        self.text_opened(message_id, emit);
        !delta.is_empty()
    }

    /// Opens the text message `message_id` unless it is open.
    fn text_opened(&mut self, message_id: &str, emit: &mut impl FnMut(AgEvent<'_>)) {
        if !self.open_text.iter().any(|m| m == message_id) {
            self.open_text.push(message_id.to_owned());
            emit(AgEvent::TextMessageStart {
                message_id,
                role: "assistant",
            });
        }
    }

    /// Take one stored event into the translation's state without writing anything (the
    /// events a rejoining client already has).
    pub fn skip_json(&mut self, seq: u64, json: &[u8]) {
        match Event::from_stored(json) {
            Ok(e) => self.push_with(&e, &mut |_| {}),
            Err(e) => unreadable(seq, e),
        }
    }

    /// Translate one stored event (its JSON as stored). Unreadable events are skipped.
    #[cfg(test)]
    pub fn push_json(&mut self, seq: u64, json: &[u8]) -> Vec<Translated> {
        match Event::from_stored(json) {
            Ok(e) => self.push(seq, &e),
            Err(e) => {
                unreadable(seq, e);
                Vec::new()
            }
        }
    }

    /// Translate one stored event into `Value`s.
    #[cfg(test)]
    pub fn push(&mut self, seq: u64, e: &Event) -> Vec<Translated> {
        let mut out = Vec::new();
        self.push_with(e, &mut |a| out.push(translated(seq, &a)));
        out
    }

    /// Translate one stored event: every AG-UI event it gives goes to `emit`.
    pub fn push_with(&mut self, e: &Event, emit: &mut impl FnMut(AgEvent<'_>)) {
        // The user's echo never opens a run.
        if let Some(id) = user_echo(e, &self.user_messages) {
            if matches!(e, Event::TextMessageStart { .. }) {
                self.user_messages.insert(id.to_owned());
            } else if matches!(e, Event::TextMessageEnd { .. }) {
                self.user_messages.remove(id);
            }
            return;
        }
        if !matches!(e, Event::ReasoningMessageContent { .. }) {
            self.close_reasoning(emit);
        }
        match e {
            Event::RunStarted { run_id } => {
                if let Some(open) = self.run.take() {
                    // A run that never ended (cannot happen in a well-formed log): close it.
                    self.close_all(emit);
                    emit(AgEvent::RunFinished {
                        thread_id: &self.thread_id,
                        run_id: &open,
                        result: None,
                        outcome: None,
                        metadata: None,
                    });
                }
                self.open_run(run_id, emit);
            }
            other => {
                if self.run.is_none() {
                    self.open_run(run_id_of(other).unwrap_or("run"), emit);
                }
                self.push_in_run(other, emit);
            }
        }
    }

    fn open_run(&mut self, run_id: &str, emit: &mut impl FnMut(AgEvent<'_>)) {
        self.run = Some(run_id.to_owned());
        self.starts.clear();
        self.open_steps.clear();
        self.open_text.clear();
        self.open_tools.clear();
        emit(AgEvent::RunStarted {
            thread_id: &self.thread_id,
            run_id,
            metadata: None,
        });
    }

    fn push_in_run(&mut self, e: &Event, emit: &mut impl FnMut(AgEvent<'_>)) {
        match e {
            Event::RunStarted { .. } => {}
            Event::StepStarted {
                step_name,
                node_type,
            } => self.step_started(step_name, node_type, emit),
            Event::StepFinished {
                step_name,
                node_type,
                output,
            } => self.step_finished(step_name, node_type, output, emit),
            Event::TextMessageStart { message_id, role } => {
                let role = match role {
                    Role::System => "system",
                    _ => "assistant",
                };
                self.open_text.push(message_id.clone());
                emit(AgEvent::TextMessageStart { message_id, role });
            }
            Event::TextMessageContent { message_id, delta } => {
                self.text_opened(message_id, emit);
                if !delta.is_empty() {
                    emit(AgEvent::TextMessageContent { message_id, delta });
                }
            }
            Event::TextMessageEnd { message_id } => {
                if take_open(&mut self.open_text, message_id) {
                    emit(AgEvent::TextMessageEnd { message_id });
                }
            }
            Event::ReasoningMessageContent { message_id, delta } => {
                self.reasoning_content(message_id, delta, emit)
            }
            Event::ToolCallStart {
                tool_call_id,
                tool_call_name,
            } => {
                self.open_tools.push(tool_call_id.clone());
                self.seen_tools.insert(tool_call_id.clone());
                emit(AgEvent::ToolCallStart {
                    tool_call_id,
                    tool_call_name,
                    metadata: None,
                });
            }
            Event::ToolCallArgs {
                tool_call_id,
                delta,
            } if self.open_tools.contains(tool_call_id) => emit(AgEvent::ToolCallArgs {
                tool_call_id,
                delta,
            }),
            Event::ToolCallArgs { .. } => {}
            Event::ToolCallEnd { tool_call_id } => {
                if take_open(&mut self.open_tools, tool_call_id) {
                    emit(AgEvent::ToolCallEnd { tool_call_id });
                }
            }
            Event::ToolCallResult {
                tool_call_id,
                tool_call_name,
                content,
            } => emit(AgEvent::ToolCallResult {
                message_id: format!("{tool_call_id}:result"),
                tool_call_id,
                content,
                role: "tool",
                metadata: ToolNameMeta { tool_call_name },
            }),
            Event::Custom { name, value } => emit(AgEvent::Custom { name, value }),
            Event::RunFinished {
                run_id, outcome, ..
            } => self.run_finished(run_id, outcome, emit),
            Event::RunError {
                run_id,
                code,
                message,
            } => self.run_error(run_id, *code, message, emit),
        }
    }

    /// A step's start. A node that runs again (a loop) gets `name#2`, `name#3` …: AG-UI step
    /// names must be unique among the open steps.
    fn step_started(
        &mut self,
        step_name: &str,
        node_type: &str,
        emit: &mut impl FnMut(AgEvent<'_>),
    ) {
        let n = self.starts.entry(step_name.to_owned()).or_insert(0);
        *n += 1;
        let name = if *n == 1 {
            step_name.to_owned()
        } else {
            format!("{step_name}#{n}")
        };
        emit(AgEvent::StepStarted {
            step_name: &name,
            metadata: StepMeta {
                node_id: step_name,
                node_type: Some(node_type),
                output: None,
                paused: None,
            },
        });
        self.open_steps.push((name, step_name.to_owned()));
    }

    /// A step's end, under the name its start was given; an end without a start gives nothing.
    fn step_finished(
        &mut self,
        step_name: &str,
        node_type: &str,
        output: &Value,
        emit: &mut impl FnMut(AgEvent<'_>),
    ) {
        let Some(pos) = self.open_steps.iter().rposition(|(_, n)| n == step_name) else {
            return;
        };
        let (name, _) = self.open_steps.remove(pos);
        emit(AgEvent::StepFinished {
            step_name: &name,
            metadata: StepMeta {
                node_id: step_name,
                node_type: Some(node_type),
                output: (!output.is_null()).then_some(output),
                paused: None,
            },
        });
    }

    /// Reasoning text; the first piece of a reasoning message opens it (and closes another).
    fn reasoning_content(
        &mut self,
        message_id: &str,
        delta: &str,
        emit: &mut impl FnMut(AgEvent<'_>),
    ) {
        if self.reasoning.as_deref() != Some(message_id) {
            self.close_reasoning(emit);
            self.reasoning = Some(message_id.to_owned());
            emit(AgEvent::ReasoningStart { message_id });
            emit(AgEvent::ReasoningMessageStart {
                message_id,
                role: "reasoning",
            });
        }
        if !delta.is_empty() {
            emit(AgEvent::ReasoningMessageContent { message_id, delta });
        }
    }

    /// A run's end: what is open is closed, then `RUN_FINISHED` with the result or the
    /// interrupt outcome.
    fn run_finished(
        &mut self,
        run_id: &str,
        outcome: &Outcome,
        emit: &mut impl FnMut(AgEvent<'_>),
    ) {
        self.close_all(emit);
        let (result, outcome) = match outcome {
            Outcome::Success { result } => (
                (!result.is_null()).then_some(result),
                RunOutcome::Success {
                    pending_tool_call_ids: None,
                },
            ),
            Outcome::Interrupt { interrupts } => (None, self.interrupt_outcome(interrupts, emit)),
        };
        self.run = None;
        emit(AgEvent::RunFinished {
            thread_id: &self.thread_id,
            run_id,
            result,
            outcome: Some(outcome),
            metadata: None,
        });
    }

    /// A failed run is `RUN_ERROR`; a cancelled one finishes with the `cancelled` outcome.
    fn run_error(
        &mut self,
        run_id: &str,
        code: ErrorCode,
        message: &str,
        emit: &mut impl FnMut(AgEvent<'_>),
    ) {
        if code == ErrorCode::Cancelled {
            self.close_all(emit);
            emit(AgEvent::RunFinished {
                thread_id: &self.thread_id,
                run_id,
                result: None,
                outcome: Some(RunOutcome::Cancelled),
                metadata: Some(MessageMeta { message }),
            });
        } else {
            emit(AgEvent::RunError {
                message,
                code: code.as_str(),
            });
        }
        self.run = None;
    }

    /// The outcome of a pausing `RUN_FINISHED`; page actions are streamed as tool calls here.
    fn interrupt_outcome(
        &mut self,
        interrupts: &[Interrupt],
        emit: &mut impl FnMut(AgEvent<'_>),
    ) -> RunOutcome {
        let mut asked = Vec::new();
        let mut pending_tools = Vec::new();
        for i in interrupts {
            if i.reason == InterruptReason::PageAction {
                let id = page_tool_call_id(i);
                if !self.seen_tools.contains(id) {
                    let name = i.action.as_deref().unwrap_or(&i.node_id);
                    let args = match i.params.as_ref().unwrap_or(&i.payload) {
                        Value::Null => "{}".to_owned(),
                        args => args.to_string(),
                    };
                    emit(AgEvent::ToolCallStart {
                        tool_call_id: id,
                        tool_call_name: name,
                        metadata: Some(ToolMeta {
                            node_id: Some(&i.node_id),
                            message: Some(&i.message),
                            rejoined: None,
                        }),
                    });
                    emit(AgEvent::ToolCallArgs {
                        tool_call_id: id,
                        delta: &args,
                    });
                    emit(AgEvent::ToolCallEnd { tool_call_id: id });
                    self.seen_tools.insert(id.to_owned());
                }
                pending_tools.push(id.to_owned());
            } else {
                asked.push(agui_interrupt(i));
            }
        }
        if asked.is_empty() {
            RunOutcome::Success {
                pending_tool_call_ids: Some(pending_tools),
            }
        } else {
            RunOutcome::Interrupt { interrupts: asked }
        }
    }

    fn close_reasoning(&mut self, emit: &mut impl FnMut(AgEvent<'_>)) {
        if let Some(id) = self.reasoning.take() {
            emit(AgEvent::ReasoningMessageEnd { message_id: &id });
            emit(AgEvent::ReasoningEnd { message_id: &id });
        }
    }

    /// Close every open tool call, text message and step (newest first).
    fn close_all(&mut self, emit: &mut impl FnMut(AgEvent<'_>)) {
        self.close_reasoning(emit);
        for id in self.open_tools.drain(..).rev() {
            emit(AgEvent::ToolCallEnd { tool_call_id: &id });
        }
        for id in self.open_text.drain(..).rev() {
            emit(AgEvent::TextMessageEnd { message_id: &id });
        }
        for (name, node) in self.open_steps.drain(..).rev() {
            emit(AgEvent::StepFinished {
                step_name: &name,
                metadata: StepMeta {
                    node_id: &node,
                    node_type: None,
                    output: None,
                    paused: Some(true),
                },
            });
        }
    }

    /// For a client that rejoins mid-run: `RUN_STARTED` of the open run and the starts of its
    /// open steps, text messages and tool calls, so what follows is a valid run on its own.
    pub fn reopen_with(&self, emit: &mut impl FnMut(AgEvent<'_>)) {
        let Some(run) = &self.run else {
            return;
        };
        emit(AgEvent::RunStarted {
            thread_id: &self.thread_id,
            run_id: run,
            metadata: Some(Rejoined { rejoined: true }),
        });
        for (name, node) in &self.open_steps {
            emit(AgEvent::StepStarted {
                step_name: name,
                metadata: StepMeta {
                    node_id: node,
                    node_type: None,
                    output: None,
                    paused: None,
                },
            });
        }
        for id in &self.open_text {
            emit(AgEvent::TextMessageStart {
                message_id: id,
                role: "assistant",
            });
        }
        for id in &self.open_tools {
            emit(AgEvent::ToolCallStart {
                tool_call_id: id,
                tool_call_name: "",
                metadata: Some(ToolMeta {
                    rejoined: Some(true),
                    ..ToolMeta::default()
                }),
            });
        }
    }

    /// [`Translator::reopen_with`] as `Value`s, each with `seq`.
    #[cfg(test)]
    pub fn reopen(&self, seq: u64) -> Vec<Translated> {
        let mut out = Vec::new();
        self.reopen_with(&mut |a| out.push(translated(seq, &a)));
        out
    }
}

/// An AG-UI event as a `Value` (same fields, same order as on the wire).
#[cfg(test)]
fn translated(seq: u64, e: &AgEvent<'_>) -> Translated {
    Translated {
        seq,
        // These types serialise to a JSON object (string keys only): this cannot fail.
        event: serde_json::to_value(e).unwrap_or(Value::Null),
    }
}

/// The message id of a user echo event, if `e` is one.
fn user_echo<'a>(e: &'a Event, users: &HashSet<String>) -> Option<&'a str> {
    match e {
        Event::TextMessageStart {
            message_id,
            role: Role::User,
        } => Some(message_id),
        Event::TextMessageContent { message_id, .. } | Event::TextMessageEnd { message_id }
            if users.contains(message_id) =>
        {
            Some(message_id)
        }
        _ => None,
    }
}

fn run_id_of(e: &Event) -> Option<&str> {
    match e {
        Event::RunStarted { run_id }
        | Event::RunFinished { run_id, .. }
        | Event::RunError { run_id, .. } => Some(run_id),
        _ => None,
    }
}

/// Translate a whole stored log.
#[cfg(test)]
pub fn translate_all(thread_id: &str, events: &[(u64, Event)]) -> Vec<Translated> {
    let mut t = Translator::new(thread_id);
    events.iter().flat_map(|(s, e)| t.push(*s, e)).collect()
}

#[cfg(test)]
#[path = "translate_tests.rs"]
mod tests;
