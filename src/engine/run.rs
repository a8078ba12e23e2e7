//! The interpreter loop: checking an input, starting or resuming a run, and driving it node by
//! node until it ends, pauses or fails.
//!
//! One [`Run`] lives for one call of [`Engine::run`]. Each turn of [`Run::drive`] takes the
//! position's node, counts the step against `maxSteps`, emits `STEP_STARTED`, lets the node
//! kind execute ([`super::nodes`]), then records its output in the state, emits
//! `STEP_FINISHED`, follows the edge of the port it left by and takes a checkpoint. A pause
//! stores the interrupt in the checkpoint *before* `RUN_FINISHED` is emitted, so a crash between
//! the two leaves a run that can still be answered.

use std::sync::Arc;

use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

use super::nodes::{self, Answered, Step, StepErr, StepResult};
use super::*;
use crate::assistant::model::{action, port, Node};
use crate::assistant::Assistant;

fn refused(code: ErrorCode, message: impl Into<String>) -> Refused {
    Refused {
        code,
        message: message.into(),
    }
}

impl Engine {
    /// Whether `input` can be applied to a conversation in state `cp` (nothing runs).
    pub fn check_input(cp: &Checkpoint, input: &Input) -> Result<(), Refused> {
        match input {
            Input::Message { .. } if cp.is_paused() => Err(refused(
                ErrorCode::ConversationBusy,
                "the conversation is paused; answer its pending interrupt",
            )),
            Input::Message { .. } => Ok(()),
            Input::Answer {
                interrupt_id,
                action,
                ..
            } => {
                let Some(i) = cp.pending_interrupt().filter(|i| &i.id == interrupt_id) else {
                    return Err(refused(
                        ErrorCode::InterruptNotPending,
                        format!("interrupt '{interrupt_id}' is not pending (already answered, expired or unknown)"),
                    ));
                };
                check_answer(i, action.as_deref())
            }
            // Only a page_action with `timeoutSeconds` can time out (its interrupt has an
            // `expiresAt`); page tools of agents and functions wait for the page.
            Input::Timeout { interrupt_id } => match cp.pending_interrupt() {
                Some(i)
                    if &i.id == interrupt_id
                        && i.reason == InterruptReason::PageAction
                        && i.expires_at.is_some() =>
                {
                    Ok(())
                }
                _ => Err(refused(
                    ErrorCode::InterruptNotPending,
                    format!("interrupt '{interrupt_id}' is not pending"),
                )),
            },
        }
    }

    /// Start or continue a run. On `Err` nothing ran and `cp` is unchanged.
    pub async fn run(
        &self,
        a: &Arc<Assistant>,
        cp: &mut Checkpoint,
        input: Input,
        history: &[ChatMessage],
        sink: &mut dyn Sink,
        cancel: &CancellationToken,
    ) -> Result<RunEnd, Refused> {
        Self::check_input(cp, &input)?;
        let answer = match input {
            Input::Message {
                run_id,
                content,
                args,
            } => {
                *cp = fresh_checkpoint(a, run_id, content, args);
                None
            }
            Input::Answer { action, value, .. } => Some(Some((action, value))),
            Input::Timeout { .. } => Some(None),
        };
        let run_id = cp.run_id.clone().unwrap_or_else(nodes::new_id);
        cp.run_id = Some(run_id.clone());
        let resumed = match (answer, cp.position.clone()) {
            (
                Some(answer),
                Position::Waiting {
                    node,
                    inputs,
                    interrupt,
                    agent,
                },
            ) => Some((node, inputs, *interrupt, agent.map(|a| *a), answer)),
            _ => None,
        };
        let mut run = Run {
            engine: self,
            a,
            cp,
            history,
            sink,
            cancel,
            run_id,
        };
        run.emit(Event::RunStarted {
            run_id: run.run_id.clone(),
        })
        .await;
        let first = match resumed {
            Some((node, inputs, interrupt, agent, answer)) => {
                run.cp.position = Position::Node {
                    node: node.clone(),
                    inputs,
                };
                let result = match answer {
                    // A page action's time ran out: it leaves by its `timeout` port.
                    None => run.node(&node).map(|_| Step::Next {
                        output: json!({"value": null, "timedOut": true}),
                        port: Some(port::TIMEOUT.into()),
                    }),
                    Some((action, value)) => {
                        let answered = Answered {
                            node: node.clone(),
                            interrupt,
                            agent,
                            action,
                            value,
                        };
                        nodes::resume(&mut run, answered).await
                    }
                };
                Some((node, result))
            }
            None => None,
        };
        Ok(run.drive(first).await)
    }
}

/// Whether `action` answers interrupt `i` (a card's button or `reply`, a confirmation's
/// `approve`/`reject`; a page may answer anything).
fn check_answer(i: &Interrupt, action: Option<&str>) -> Result<(), Refused> {
    match i.reason {
        InterruptReason::ConversationAction => {
            let buttons = i.buttons.clone().unwrap_or_default();
            match action {
                Some(b) if buttons.iter().any(|x| x == b) || b == action::REPLY => Ok(()),
                Some(b) => Err(refused(
                    ErrorCode::BadRequest,
                    format!(
                        "'{b}' is not a button of this card (buttons: {})",
                        buttons.join(", ")
                    ),
                )),
                None => Err(refused(
                    ErrorCode::BadRequest,
                    format!("'action' is required: one of {}", buttons.join(", ")),
                )),
            }
        }
        InterruptReason::ToolConfirmation => match action {
            Some(a) if action::CONFIRM_BUTTONS.contains(&a) => Ok(()),
            _ => Err(refused(
                ErrorCode::BadRequest,
                "a tool confirmation is answered with action 'approve' or 'reject'",
            )),
        },
        InterruptReason::PageAction => Ok(()),
    }
}

/// The checkpoint a user message starts from: the start node's output is the message and its
/// args, and the run is about to execute the start node.
fn fresh_checkpoint(
    a: &Assistant,
    run_id: String,
    content: String,
    args: Map<String, Value>,
) -> Checkpoint {
    let mut start = Map::new();
    start.insert("userInput".into(), Value::String(content));
    start.extend(args);
    let mut state = Map::new();
    state.insert(a.start_node().id.clone(), Value::Object(start));
    Checkpoint {
        run_id: Some(run_id),
        state,
        position: Position::Node {
            node: a.start_node().id.clone(),
            inputs: Map::new(),
        },
        loops: Vec::new(),
        steps: 0,
        usage: Usage::default(),
    }
}

/// One call of [`Engine::run`]: what the node kinds see of the engine.
pub(super) struct Run<'a> {
    pub(super) engine: &'a Engine,
    pub(super) a: &'a Arc<Assistant>,
    pub(super) cp: &'a mut Checkpoint,
    pub(super) history: &'a [ChatMessage],
    sink: &'a mut dyn Sink,
    pub(super) cancel: &'a CancellationToken,
    pub(super) run_id: String,
}

impl Run<'_> {
    pub(super) async fn emit(&mut self, e: Event) {
        self.sink.event(e).await;
    }

    async fn save(&mut self) {
        self.sink.checkpoint(self.cp).await;
    }

    /// The template context: the state plus the node's mapped `input`.
    fn ctx(&self, inputs: &Map<String, Value>) -> Value {
        let mut m = self.cp.state.clone();
        m.insert("input".into(), Value::Object(inputs.clone()));
        Value::Object(m)
    }

    pub(super) fn node(&self, id: &str) -> Result<&Node, StepErr> {
        self.a.node(id).ok_or_else(|| nodes::missing_node(id))
    }

    /// The text of the message that started the run.
    pub(super) fn user_input(&self) -> String {
        self.cp
            .state
            .get(&self.a.start_node().id)
            .and_then(|s| s.get("userInput"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    }

    /// Run nodes until the run ends or pauses; `pending` is the result of a node that was
    /// answered before the loop started.
    async fn drive(&mut self, mut pending: Option<(String, StepResult)>) -> RunEnd {
        loop {
            let (node_id, result) = match pending.take() {
                Some(p) => p,
                None => match self.next_step().await {
                    Ok(p) => p,
                    Err(end) => return end,
                },
            };
            let node_type = self
                .a
                .node(&node_id)
                .map(|n| n.kind.type_name())
                .unwrap_or("unknown")
                .to_string();
            match result {
                Err(e) => return self.fail(e).await,
                Ok(Step::Next { output, port }) => {
                    self.cp.state.insert(node_id.clone(), output.clone());
                    self.emit(Event::StepFinished {
                        step_name: node_id.clone(),
                        node_type,
                        output,
                    })
                    .await;
                    self.advance(&node_id, port.as_deref());
                    self.save().await;
                }
                Ok(Step::End { result }) => {
                    self.cp.state.insert(node_id.clone(), result.clone());
                    self.emit(Event::StepFinished {
                        step_name: node_id.clone(),
                        node_type,
                        output: result.clone(),
                    })
                    .await;
                    return self.complete(result).await;
                }
                Ok(Step::Pause { interrupt, agent }) => {
                    return self.pause(node_id, interrupt, agent).await
                }
            }
        }
    }

    /// Execute the node at the position (after the cancellation and step-limit checks); `Err`
    /// is how the run ended instead.
    async fn next_step(&mut self) -> Result<(String, StepResult), RunEnd> {
        let Position::Node { node, inputs } = self.cp.position.clone() else {
            return Err(self.complete(json!({})).await);
        };
        if self.cancel.is_cancelled() {
            return Err(self.fail(StepErr::cancelled()).await);
        }
        self.cp.steps += 1;
        if self.cp.steps > self.a.max_steps {
            let msg = format!(
                "the run exceeded its limit of {} steps at node '{node}' (a loop that does not end?)",
                self.a.max_steps
            );
            return Err(self.fail(StepErr::new(ErrorCode::StepLimit, msg)).await);
        }
        let node_type = match self.node(&node) {
            Ok(n) => n.kind.type_name().to_string(),
            Err(e) => return Err(self.fail(e).await),
        };
        self.emit(Event::StepStarted {
            step_name: node.clone(),
            node_type,
        })
        .await;
        let ctx = self.ctx(&inputs);
        let r = nodes::exec(self, &node, &inputs, &ctx).await;
        Ok((node, r))
    }

    async fn pause(
        &mut self,
        node: String,
        interrupt: Interrupt,
        agent: Option<AgentState>,
    ) -> RunEnd {
        let inputs = match &self.cp.position {
            Position::Node { inputs, .. } => inputs.clone(),
            _ => Map::new(),
        };
        self.cp.position = Position::Waiting {
            node,
            inputs,
            interrupt: Box::new(interrupt.clone()),
            agent: agent.map(Box::new),
        };
        self.save().await;
        let usage = self.cp.usage;
        self.emit(Event::RunFinished {
            run_id: self.run_id.clone(),
            outcome: Outcome::Interrupt {
                interrupts: vec![interrupt.clone()],
            },
            usage,
        })
        .await;
        RunEnd::Paused { interrupt }
    }

    async fn complete(&mut self, result: Value) -> RunEnd {
        self.cp.position = Position::Idle;
        self.cp.loops.clear();
        self.save().await;
        let usage = self.cp.usage;
        self.emit(Event::RunFinished {
            run_id: self.run_id.clone(),
            outcome: Outcome::Success {
                result: result.clone(),
            },
            usage,
        })
        .await;
        RunEnd::Completed { result }
    }

    async fn fail(&mut self, e: StepErr) -> RunEnd {
        self.cp.position = Position::Idle;
        self.cp.loops.clear();
        self.save().await;
        self.emit(Event::RunError {
            run_id: self.run_id.clone(),
            code: e.code,
            message: e.message.clone(),
        })
        .await;
        if e.code == ErrorCode::Cancelled {
            RunEnd::Cancelled
        } else {
            RunEnd::Failed {
                code: e.code,
                message: e.message,
            }
        }
    }

    /// Choose the next position after `node` left by `port`.
    fn advance(&mut self, node: &str, port: Option<&str>) {
        if let Some(edge) = self.a.next_edge(node, port) {
            let mut inputs = Map::new();
            if let Some(m) = &edge.arg_mapping {
                for (k, path) in m {
                    inputs.insert(k.clone(), lookup(&self.cp.state, path));
                }
            }
            self.cp.position = Position::Node {
                node: edge.to.clone(),
                inputs,
            };
        } else if let Some(frame) = self.cp.loops.last() {
            // The end of an iteration body: back to the loop for its next item.
            self.cp.position = Position::Node {
                node: frame.node.clone(),
                inputs: Map::new(),
            };
        } else {
            self.cp.position = Position::Idle;
        }
    }
}

/// Read a dotted path (`draft.text`, `items.0.name`) from the state.
fn lookup(state: &Map<String, Value>, path: &str) -> Value {
    let mut parts = path.split('.');
    let Some(head) = parts.next() else {
        return Value::Null;
    };
    let mut cur = match state.get(head) {
        Some(v) => v,
        None => return Value::Null,
    };
    for p in parts {
        let next = match cur {
            Value::Object(m) => m.get(p),
            Value::Array(a) => p.parse::<usize>().ok().and_then(|i| a.get(i)),
            _ => None,
        };
        match next {
            Some(v) => cur = v,
            None => return Value::Null,
        }
    }
    cur.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_reads_dotted_paths() {
        let state = json!({"fetch": {"items": [{"name": "pen"}]}, "n": 3});
        let state = state.as_object().unwrap();
        assert_eq!(lookup(state, "fetch.items.0.name"), json!("pen"));
        assert_eq!(lookup(state, "n"), json!(3));
        assert_eq!(lookup(state, "fetch.items.9"), Value::Null);
        assert_eq!(lookup(state, "nope.x"), Value::Null);
    }
}
