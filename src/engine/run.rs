//! The interpreter loop and the node types.

use std::sync::Arc;

use futures_util::StreamExt;
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::assistant::model::*;
use crate::assistant::Assistant;
use crate::llm::{ChatRequest, LlmDelta, ResponseFormat, Role, ToolDef};

/// A step that could not finish.
#[derive(Debug)]
struct StepErr {
    code: ErrorCode,
    message: String,
}

impl StepErr {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        StepErr {
            code,
            message: message.into(),
        }
    }
    fn failed(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::StepFailed, message)
    }
    fn cancelled() -> Self {
        Self::new(ErrorCode::Cancelled, "the run was cancelled")
    }
}

/// What a node did.
// One per node execution, consumed at once.
#[allow(clippy::large_enum_variant)]
enum Step {
    /// Finished with `output`, leaving by `port`.
    Next { output: Value, port: Option<String> },
    /// Waits for a person or the page.
    Pause {
        interrupt: Interrupt,
        agent: Option<AgentState>,
    },
    /// An `end` node: the run's result.
    End { result: Value },
}

type StepResult = Result<Step, StepErr>;

/// The answer applied to a waiting node.
struct Resumed {
    node: String,
    inputs: Map<String, Value>,
    interrupt: Interrupt,
    agent: Option<AgentState>,
    answer: Answer,
}

enum Answer {
    Given {
        action: Option<String>,
        value: Value,
    },
    Timeout,
}

/// A model's complete answer.
struct LlmAnswer {
    text: String,
    calls: Vec<ToolCall>,
}

fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

fn refused(code: ErrorCode, message: impl Into<String>) -> Refused {
    Refused {
        code,
        message: message.into(),
    }
}

impl Engine {
    /// Whether `input` can be applied to a conversation in state `cp` (nothing runs).
    pub fn check_input(a: &Assistant, cp: &Checkpoint, input: &Input) -> Result<(), Refused> {
        match input {
            Input::Message { .. } => {
                if cp.is_paused() {
                    return Err(refused(
                        ErrorCode::ConversationBusy,
                        "the conversation is paused; answer its pending interrupt",
                    ));
                }
                Ok(())
            }
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
                match i.reason {
                    InterruptReason::ConversationAction => {
                        let buttons = i.buttons.clone().unwrap_or_default();
                        match action.as_deref() {
                            Some(b) if buttons.iter().any(|x| x == b) || b == "reply" => Ok(()),
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
                    InterruptReason::ToolConfirmation => match action.as_deref() {
                        Some("approve") | Some("reject") => Ok(()),
                        _ => Err(refused(
                            ErrorCode::BadRequest,
                            "a tool confirmation is answered with action 'approve' or 'reject'",
                        )),
                    },
                    InterruptReason::PageAction => {
                        let _ = a;
                        Ok(())
                    }
                }
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
        Self::check_input(a, cp, &input)?;
        let resumed = match input {
            Input::Message {
                run_id,
                content,
                args,
            } => {
                let mut start = Map::new();
                start.insert("userInput".into(), Value::String(content));
                start.extend(args);
                let mut state = Map::new();
                state.insert(a.start_node().id.clone(), Value::Object(start));
                *cp = Checkpoint {
                    run_id: Some(run_id),
                    state,
                    position: Position::Node {
                        node: a.start_node().id.clone(),
                        inputs: Map::new(),
                    },
                    loops: Vec::new(),
                    steps: 0,
                    usage: Usage::default(),
                };
                None
            }
            Input::Answer { action, value, .. } => Some(Answer::Given { action, value }),
            Input::Timeout { .. } => Some(Answer::Timeout),
        };
        let run_id = cp.run_id.clone().unwrap_or_else(new_id);
        cp.run_id = Some(run_id.clone());
        let resumed = match (resumed, cp.position.clone()) {
            (
                Some(answer),
                Position::Waiting {
                    node,
                    inputs,
                    interrupt,
                    agent,
                },
            ) => Some(Resumed {
                node,
                inputs,
                interrupt: *interrupt,
                agent: agent.map(|a| *a),
                answer,
            }),
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
            Some(r) => {
                let node = r.node.clone();
                run.cp.position = Position::Node {
                    node: r.node.clone(),
                    inputs: r.inputs.clone(),
                };
                Some((node, run.apply_answer(r).await))
            }
            None => None,
        };
        Ok(run.drive(first).await)
    }
}

struct Run<'a> {
    engine: &'a Engine,
    a: &'a Arc<Assistant>,
    cp: &'a mut Checkpoint,
    history: &'a [ChatMessage],
    sink: &'a mut dyn Sink,
    cancel: &'a CancellationToken,
    run_id: String,
}

impl Run<'_> {
    async fn emit(&mut self, e: Event) {
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

    fn node(&self, id: &str) -> Result<&Node, StepErr> {
        self.a.node(id).ok_or_else(|| {
            StepErr::failed(format!(
                "the definition has no node '{id}' (was it changed while this run was paused?)"
            ))
        })
    }

    async fn drive(&mut self, mut pending: Option<(String, StepResult)>) -> RunEnd {
        loop {
            let (node_id, result) = match pending.take() {
                Some(p) => p,
                None => {
                    let Position::Node { node, inputs } = self.cp.position.clone() else {
                        return self.complete(json!({})).await;
                    };
                    if self.cancel.is_cancelled() {
                        return self.fail(StepErr::cancelled()).await;
                    }
                    self.cp.steps += 1;
                    if self.cp.steps > self.a.max_steps {
                        let msg = format!(
                            "the run exceeded its limit of {} steps at node '{node}' (a loop that does not end?)",
                            self.a.max_steps
                        );
                        return self.fail(StepErr::new(ErrorCode::StepLimit, msg)).await;
                    }
                    let node_type = match self.node(&node) {
                        Ok(n) => n.kind.type_name().to_string(),
                        Err(e) => return self.fail(e).await,
                    };
                    self.emit(Event::StepStarted {
                        step_name: node.clone(),
                        node_type,
                    })
                    .await;
                    let r = self.exec(&node, &inputs).await;
                    (node, r)
                }
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
                    let inputs = match &self.cp.position {
                        Position::Node { inputs, .. } => inputs.clone(),
                        _ => Map::new(),
                    };
                    self.cp.position = Position::Waiting {
                        node: node_id,
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
                    return RunEnd::Paused { interrupt };
                }
            }
        }
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

    async fn exec(&mut self, id: &str, inputs: &Map<String, Value>) -> StepResult {
        let node = self.node(id)?.clone();
        let ctx = self.ctx(inputs);
        let t = &self.a.templates;
        match &node.kind {
            NodeKind::Start(_) => Ok(Step::Next {
                output: self.cp.state.get(id).cloned().unwrap_or_else(|| json!({})),
                port: None,
            }),
            NodeKind::End(end) => {
                let mut result = Map::new();
                for (k, v) in &end.outputs {
                    let val = t
                        .eval_value(v, &ctx)
                        .map_err(|e| StepErr::failed(format!("output '{k}': {e}")))?;
                    result.insert(k.clone(), val);
                }
                for spec in &self.a.output_args {
                    match result.get(&spec.name) {
                        Some(v) if !v.is_null() && !spec.ty.accepts(v) => {
                            return Err(StepErr::failed(format!(
                                "output '{}' must be {}, got {}",
                                spec.name,
                                spec.ty.as_str(),
                                short(v)
                            )))
                        }
                        Some(v) if v.is_null() && spec.required => {
                            return Err(StepErr::failed(format!(
                                "required output '{}' is empty",
                                spec.name
                            )))
                        }
                        Some(v)
                            if !v.is_null()
                                && spec.choices.as_ref().is_some_and(|c| !c.contains(v)) =>
                        {
                            return Err(StepErr::failed(format!(
                                "output '{}' must be one of {}, got {}",
                                spec.name,
                                Value::Array(spec.choices.clone().unwrap_or_default()),
                                short(v)
                            )))
                        }
                        _ => {}
                    }
                }
                Ok(Step::End {
                    result: Value::Object(result),
                })
            }
            NodeKind::Reply(r) => {
                let text = text(t, "text", &r.text, &ctx)?;
                let data = match &r.data {
                    Some(d) => Some(value(t, "data", d, &ctx)?),
                    None => None,
                };
                let message_id = new_id();
                self.emit(Event::TextMessageStart {
                    message_id: message_id.clone(),
                    role: "assistant".into(),
                })
                .await;
                self.emit(Event::TextMessageContent {
                    message_id: message_id.clone(),
                    delta: text.clone(),
                })
                .await;
                self.emit(Event::TextMessageEnd { message_id }).await;
                if let Some(d) = &data {
                    self.emit(Event::Custom {
                        name: "card".into(),
                        value: d.clone(),
                    })
                    .await;
                }
                let mut out = json!({ "text": text });
                if let Some(d) = data {
                    out["data"] = d;
                }
                Ok(Step::Next {
                    output: out,
                    port: None,
                })
            }
            NodeKind::Condition(c) => {
                for b in &c.branches {
                    let expr = crate::assistant::strip_braces(&b.when);
                    let yes = t
                        .eval_bool(expr, &ctx)
                        .map_err(|e| StepErr::failed(format!("branch '{}': {e}", b.port)))?;
                    if yes {
                        return Ok(Step::Next {
                            output: json!({ "port": b.port }),
                            port: Some(b.port.clone()),
                        });
                    }
                }
                Ok(Step::Next {
                    output: json!({ "port": "else" }),
                    port: Some("else".into()),
                })
            }
            NodeKind::Iteration(it) => self.iterate(id, &it.over, &ctx),
            NodeKind::ConversationAction(ca) => {
                let message = text(t, "message", &ca.message, &ctx)?;
                let payload = match &ca.display {
                    Some(d) => value(t, "display", d, &ctx)?,
                    None => Value::Null,
                };
                Ok(Step::Pause {
                    interrupt: Interrupt {
                        id: new_id(),
                        reason: InterruptReason::ConversationAction,
                        node_id: id.to_string(),
                        message,
                        payload,
                        buttons: Some(ca.buttons.clone()),
                        action: None,
                        params: None,
                        expires_at: None,
                        editable: ca.editable,
                        tool_call_id: None,
                    },
                    agent: None,
                })
            }
            NodeKind::PageAction(pa) => {
                let params = value(t, "params", &pa.params, &ctx)?;
                let message = match &pa.prompt {
                    Some(p) => text(t, "prompt", p, &ctx)?,
                    None => String::new(),
                };
                let expires_at = pa.timeout_seconds.map(|s| {
                    let at = time::OffsetDateTime::now_utc() + time::Duration::seconds(s as i64);
                    at.format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default()
                });
                Ok(Step::Pause {
                    interrupt: Interrupt {
                        id: new_id(),
                        reason: InterruptReason::PageAction,
                        node_id: id.to_string(),
                        message,
                        payload: params.clone(),
                        buttons: None,
                        action: Some(pa.action.clone()),
                        params: Some(params),
                        expires_at,
                        editable: false,
                        tool_call_id: None,
                    },
                    agent: None,
                })
            }
            NodeKind::Function(f) => {
                let mut args = value(t, "args", &f.args, &ctx)?;
                if !inputs.is_empty() {
                    match &mut args {
                        Value::Object(m) => m.extend(inputs.clone()),
                        Value::Null => args = Value::Object(inputs.clone()),
                        _ => {}
                    }
                }
                if args.is_null() {
                    args = json!({});
                }
                let spec = self.tool(&f.tool)?.clone();
                let call_id = new_id();
                self.emit_call(&call_id, &f.tool, &args).await;
                if let Some(interrupt) = self.tool_pause(id, &f.tool, &spec, &call_id, &args) {
                    return Ok(Step::Pause {
                        interrupt,
                        agent: None,
                    });
                }
                let result = self.call_tool(id, &f.tool, &spec, args, "").await;
                self.finish_function(&call_id, &f.tool, result).await
            }
            NodeKind::Llm(l) => {
                let mut messages = Vec::new();
                if let Some(s) = &l.system {
                    messages.push(ChatMessage::system(text(t, "system", s, &ctx)?));
                }
                if l.history {
                    messages.extend(self.history.iter().cloned());
                }
                messages.push(ChatMessage::user(text(t, "prompt", &l.prompt, &ctx)?));
                let provider = l.llm.clone().unwrap_or_else(|| self.a.llm.clone());
                let req = ChatRequest {
                    messages,
                    temperature: l.temperature,
                    ..Default::default()
                };
                let output = match (l.output, &l.schema) {
                    (OutputMode::Json, Some(schema)) => {
                        self.llm_json(&provider, req, schema).await?
                    }
                    _ => json!({ "text": self.call_llm(&provider, req, true).await?.text }),
                };
                Ok(Step::Next { output, port: None })
            }
            NodeKind::Router(r) => self.route(id, r, &ctx).await,
            NodeKind::Agent(ag) => {
                let mut messages = vec![ChatMessage::system(text(
                    t,
                    "instructions",
                    &ag.instructions,
                    &ctx,
                )?)];
                if ag.history {
                    messages.extend(self.history.iter().cloned());
                }
                let prompt = match &ag.prompt {
                    Some(p) => text(t, "prompt", p, &ctx)?,
                    None => self.user_input(),
                };
                messages.push(ChatMessage::user(prompt));
                let st = AgentState {
                    messages,
                    ..Default::default()
                };
                self.agent_loop(id, ag, st).await
            }
        }
    }

    fn user_input(&self) -> String {
        self.cp
            .state
            .get(&self.a.start_node().id)
            .and_then(|s| s.get("userInput"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    }

    fn tool(&self, name: &str) -> Result<&ToolSpec, StepErr> {
        self.a
            .tools
            .get(name)
            .ok_or_else(|| StepErr::new(ErrorCode::ToolError, format!("unknown tool '{name}'")))
    }

    fn iterate(&mut self, id: &str, over: &str, ctx: &Value) -> StepResult {
        let again = self.cp.loops.last().is_some_and(|f| f.node == id);
        if again {
            if let Some(f) = self.cp.loops.last_mut() {
                f.index += 1;
            }
        } else {
            let expr = crate::assistant::strip_braces(over);
            let items = match self.a.templates.eval_expr(expr, ctx) {
                Ok(Value::Array(items)) => items,
                Ok(Value::Null) => Vec::new(),
                Ok(other) => {
                    return Err(StepErr::failed(format!(
                        "'over' must give a list, got {}",
                        short(&other)
                    )))
                }
                Err(e) => return Err(StepErr::failed(format!("over: {e}"))),
            };
            self.cp.loops.push(LoopFrame {
                node: id.to_string(),
                items: Arc::new(items),
                index: 0,
            });
        }
        let Some(frame) = self.cp.loops.last() else {
            return Err(StepErr::failed("iteration lost its loop"));
        };
        let count = frame.items.len();
        if frame.index < count {
            Ok(Step::Next {
                output: json!({"index": frame.index, "item": frame.items[frame.index], "count": count}),
                port: Some("body".into()),
            })
        } else {
            self.cp.loops.pop();
            Ok(Step::Next {
                output: json!({"index": count, "item": null, "count": count}),
                port: Some("done".into()),
            })
        }
    }

    /// If calling this tool must wait for someone, the interrupt to wait on.
    fn tool_pause(
        &self,
        node: &str,
        name: &str,
        spec: &ToolSpec,
        call_id: &str,
        args: &Value,
    ) -> Option<Interrupt> {
        if let ToolKind::Page { action } = &spec.kind {
            return Some(Interrupt {
                id: new_id(),
                reason: InterruptReason::PageAction,
                node_id: node.to_string(),
                message: spec
                    .description
                    .clone()
                    .unwrap_or_else(|| format!("The page is asked to run '{name}'.")),
                payload: args.clone(),
                buttons: None,
                action: Some(action.clone().unwrap_or_else(|| name.to_string())),
                params: Some(args.clone()),
                expires_at: None,
                editable: false,
                tool_call_id: Some(call_id.to_string()),
            });
        }
        if spec.confirm {
            return Some(Interrupt {
                id: new_id(),
                reason: InterruptReason::ToolConfirmation,
                node_id: node.to_string(),
                message: format!("Allow the assistant to call '{name}'?"),
                payload: json!({"tool": name, "arguments": args}),
                buttons: Some(vec!["approve".into(), "reject".into()]),
                action: None,
                params: None,
                expires_at: None,
                editable: false,
                tool_call_id: Some(call_id.to_string()),
            });
        }
        None
    }

    async fn emit_call(&mut self, call_id: &str, name: &str, args: &Value) {
        self.emit(Event::ToolCallStart {
            tool_call_id: call_id.to_string(),
            tool_call_name: name.to_string(),
        })
        .await;
        self.emit(Event::ToolCallArgs {
            tool_call_id: call_id.to_string(),
            delta: args.to_string(),
        })
        .await;
        self.emit(Event::ToolCallEnd {
            tool_call_id: call_id.to_string(),
        })
        .await;
    }

    async fn call_tool(
        &mut self,
        node: &str,
        name: &str,
        spec: &ToolSpec,
        args: Value,
        key_suffix: &str,
    ) -> Result<Value, String> {
        let state = Value::Object(self.cp.state.clone());
        let key = format!("{}:{}:{}{key_suffix}", self.run_id, node, self.cp.steps);
        let ctx = ToolCallCtx {
            templates: &self.a.templates,
            state: &state,
            idempotency_key: key,
            cancel: self.cancel,
        };
        let tools = self.engine.tools.clone();
        tokio::select! {
            r = tools.call(name, spec, args, ctx) => r,
            _ = self.cancel.cancelled() => Err("cancelled".into()),
        }
    }

    async fn finish_function(
        &mut self,
        call_id: &str,
        name: &str,
        result: Result<Value, String>,
    ) -> StepResult {
        if self.cancel.is_cancelled() {
            return Err(StepErr::cancelled());
        }
        match result {
            Ok(v) => {
                self.emit(Event::ToolCallResult {
                    tool_call_id: call_id.to_string(),
                    tool_call_name: name.to_string(),
                    content: v.to_string(),
                })
                .await;
                Ok(Step::Next {
                    output: v,
                    port: None,
                })
            }
            Err(e) => Err(StepErr::new(
                ErrorCode::ToolError,
                format!("tool '{name}' failed: {e}"),
            )),
        }
    }

    /// Apply the answer to the node that waited for it; the node then finishes (or waits again).
    async fn apply_answer(&mut self, r: Resumed) -> StepResult {
        let node = self.node(&r.node)?.clone();
        let (action, value) = match r.answer {
            Answer::Given { action, value } => (action, value),
            Answer::Timeout => {
                return Ok(Step::Next {
                    output: json!({"value": null, "timedOut": true}),
                    port: Some("timeout".into()),
                })
            }
        };
        match (&node.kind, r.interrupt.reason) {
            (NodeKind::ConversationAction(ca), _) => {
                let action = action.unwrap_or_else(|| "reply".into());
                let data = if ca.editable && !value.is_null() && action != "reply" {
                    value.clone()
                } else {
                    r.interrupt.payload.clone()
                };
                Ok(Step::Next {
                    output: json!({"action": action, "value": value, "data": data}),
                    port: Some(action),
                })
            }
            (NodeKind::PageAction(_), _) => Ok(Step::Next {
                output: json!({ "value": value }),
                port: None,
            }),
            (NodeKind::Function(f), reason) => {
                let call_id = r.interrupt.tool_call_id.clone().unwrap_or_else(new_id);
                let spec = self.tool(&f.tool)?.clone();
                match reason {
                    InterruptReason::PageAction => {
                        self.finish_function(&call_id, &f.tool, Ok(value)).await
                    }
                    _ if action.as_deref() == Some("approve") => {
                        let args = r
                            .interrupt
                            .payload
                            .get("arguments")
                            .cloned()
                            .unwrap_or(Value::Null);
                        let result = self.call_tool(&r.node, &f.tool, &spec, args, "").await;
                        self.finish_function(&call_id, &f.tool, result).await
                    }
                    _ => {
                        let v = json!({"declined": true, "message": "the user declined the call"});
                        self.finish_function(&call_id, &f.tool, Ok(v)).await
                    }
                }
            }
            (NodeKind::Agent(ag), reason) => {
                let mut st = r.agent.unwrap_or_default();
                let Some(call) = st.pending.first().cloned() else {
                    return self.agent_loop(&r.node, ag, st).await;
                };
                match reason {
                    InterruptReason::ToolConfirmation if action.as_deref() == Some("approve") => {
                        st.approved.push(call.id.clone());
                    }
                    InterruptReason::ToolConfirmation => {
                        self.tool_result(
                            &mut st,
                            &call,
                            "The user declined this tool call.".into(),
                        )
                        .await;
                    }
                    _ => {
                        let text = match &value {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        self.tool_result(&mut st, &call, text).await;
                    }
                }
                self.agent_loop(&r.node, ag, st).await
            }
            _ => Err(StepErr::failed(format!(
                "node '{}' cannot take an answer",
                r.node
            ))),
        }
    }

    async fn tool_result(&mut self, st: &mut AgentState, call: &ToolCall, content: String) {
        self.emit(Event::ToolCallResult {
            tool_call_id: call.id.clone(),
            tool_call_name: call.name.clone(),
            content: content.clone(),
        })
        .await;
        st.messages
            .push(ChatMessage::tool_result(call.id.clone(), content));
        if !st.pending.is_empty() {
            st.pending.remove(0);
        }
    }

    async fn agent_loop(&mut self, id: &str, ag: &AgentNode, mut st: AgentState) -> StepResult {
        let provider = ag.llm.clone().unwrap_or_else(|| self.a.llm.clone());
        let max = ag.max_steps.unwrap_or(8);
        let defs: Vec<ToolDef> = ag
            .tools
            .iter()
            .filter_map(|n| {
                self.a.tools.get(n).map(|s| ToolDef {
                    name: n.clone(),
                    description: s.description.clone().unwrap_or_default(),
                    parameters: s
                        .parameters
                        .clone()
                        .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
                })
            })
            .collect();
        loop {
            while let Some(call) = st.pending.first().cloned() {
                if self.cancel.is_cancelled() {
                    return Err(StepErr::cancelled());
                }
                let spec = match self
                    .a
                    .tools
                    .get(&call.name)
                    .filter(|_| ag.tools.contains(&call.name))
                {
                    Some(s) => s.clone(),
                    None => {
                        let msg = format!("error: there is no tool named '{}'", call.name);
                        self.tool_result(&mut st, &call, msg).await;
                        continue;
                    }
                };
                let args: Value = match serde_json::from_str(if call.arguments.trim().is_empty() {
                    "{}"
                } else {
                    &call.arguments
                }) {
                    Ok(v) => v,
                    Err(e) => {
                        let msg = format!("error: the arguments are not valid JSON ({e})");
                        self.tool_result(&mut st, &call, msg).await;
                        continue;
                    }
                };
                // Arguments that do not fit the tool's declared parameters go back to the model
                // (it can correct them) instead of reaching the tool or a person.
                if let Some(params) = &spec.parameters {
                    if let Err(problems) = crate::schema::validate(params, &args) {
                        let msg = format!(
                            "error: the arguments do not match the tool's parameters: {}",
                            problems.join("; ")
                        );
                        self.tool_result(&mut st, &call, msg).await;
                        continue;
                    }
                }
                if !st.approved.contains(&call.id) {
                    if let Some(interrupt) = self.tool_pause(id, &call.name, &spec, &call.id, &args)
                    {
                        return Ok(Step::Pause {
                            interrupt,
                            agent: Some(st),
                        });
                    }
                }
                // Each call of one agent step gets its own key: the how-many-th tool call of
                // this node it is (the same again if the node is retried after a crash).
                let nth = st.messages.iter().filter(|m| m.role == Role::Tool).count();
                let result = self
                    .call_tool(id, &call.name, &spec, args, &format!(":{nth}"))
                    .await;
                if self.cancel.is_cancelled() {
                    return Err(StepErr::cancelled());
                }
                let content = match result {
                    Ok(v) => v.to_string(),
                    Err(e) => format!("error: {e}"),
                };
                self.tool_result(&mut st, &call, content).await;
            }
            if st.steps >= max {
                return Err(StepErr::failed(format!(
                    "the agent used all {max} of its steps without a final answer"
                )));
            }
            st.steps += 1;
            let req = ChatRequest {
                messages: st.messages.clone(),
                tools: defs.clone(),
                ..Default::default()
            };
            let json_mode = ag.output == OutputMode::Json;
            let ans = self.call_llm(&provider, req.clone(), !json_mode).await?;
            if ans.calls.is_empty() {
                st.text.push_str(&ans.text);
                return match (&ag.schema, json_mode) {
                    (Some(schema), true) => match parse_checked(&ans.text, schema) {
                        Ok(v) => Ok(Step::Next {
                            output: v,
                            port: None,
                        }),
                        Err(problems) => {
                            let mut req = req;
                            req.tools.clear();
                            let v = self
                                .repair(&provider, req, &ans.text, &problems, schema)
                                .await?;
                            Ok(Step::Next {
                                output: v,
                                port: None,
                            })
                        }
                    },
                    _ => Ok(Step::Next {
                        output: json!({ "text": st.text }),
                        port: None,
                    }),
                };
            }
            st.text.push_str(&ans.text);
            let mut m = ChatMessage::assistant(ans.text);
            m.tool_calls = ans.calls.clone();
            st.messages.push(m);
            st.pending = ans.calls;
        }
    }

    async fn route(&mut self, id: &str, r: &RouterNode, ctx: &Value) -> StepResult {
        let t = &self.a.templates;
        let mut options = Vec::new();
        let mut listing = String::new();
        for e in self.a.successors(id) {
            let desc = self
                .a
                .node(&e.to)
                .and_then(|n| n.description.clone())
                .unwrap_or_default();
            listing.push_str(&format!("- {}: {}\n", e.to, desc));
            options.push(json!({"const": e.to, "description": desc}));
        }
        let schema = json!({
            "type": "object",
            "properties": {"choice": {"type": "string", "anyOf": options}},
            "required": ["choice"]
        });
        let instructions = match &r.instructions {
            Some(i) => text(t, "instructions", i, ctx)?,
            None => "Choose the handler that fits the user's request best.".to_string(),
        };
        let prompt = match &r.prompt {
            Some(p) => text(t, "prompt", p, ctx)?,
            None => self.user_input(),
        };
        let system = format!(
            "{instructions}\nThe handlers:\n{listing}Answer with a JSON object {{\"choice\": \"<handler id>\"}}."
        );
        let req = ChatRequest {
            messages: vec![ChatMessage::system(system), ChatMessage::user(prompt)],
            ..Default::default()
        };
        let provider = r.llm.clone().unwrap_or_else(|| self.a.llm.clone());
        let out = self.llm_json(&provider, req, &schema).await?;
        let choice = out
            .get("choice")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        Ok(Step::Next {
            output: json!({ "choice": choice }),
            port: Some(choice),
        })
    }

    /// A JSON answer checked against `schema`, with one repair attempt.
    async fn llm_json(
        &mut self,
        provider: &str,
        mut req: ChatRequest,
        schema: &Value,
    ) -> Result<Value, StepErr> {
        req.response_format = ResponseFormat::Json {
            schema: schema.clone(),
        };
        let ans = self.call_llm(provider, req.clone(), false).await?;
        match parse_checked(&ans.text, schema) {
            Ok(v) => Ok(v),
            Err(problems) => {
                self.repair(provider, req, &ans.text, &problems, schema)
                    .await
            }
        }
    }

    async fn repair(
        &mut self,
        provider: &str,
        mut req: ChatRequest,
        bad: &str,
        problems: &str,
        schema: &Value,
    ) -> Result<Value, StepErr> {
        req.response_format = ResponseFormat::Json {
            schema: schema.clone(),
        };
        req.messages.push(ChatMessage::assistant(bad.to_string()));
        req.messages.push(ChatMessage::user(format!(
            "Your answer does not match the required JSON schema: {problems}. Answer again with only the corrected JSON object."
        )));
        let ans = self.call_llm(provider, req, false).await?;
        parse_checked(&ans.text, schema).map_err(|p| {
            StepErr::new(
                ErrorCode::LlmError,
                format!("the model's JSON answer does not match the schema even after a repair attempt: {p}"),
            )
        })
    }

    /// One model call, streaming text to the chat when `stream_text`.
    async fn call_llm(
        &mut self,
        provider: &str,
        req: ChatRequest,
        stream_text: bool,
    ) -> Result<LlmAnswer, StepErr> {
        let llm = self
            .engine
            .llms
            .get(provider)
            .map_err(|e| StepErr::new(ErrorCode::LlmError, e.to_string()))?;
        let cancel = self.cancel.clone();
        let mut stream = tokio::select! {
            r = llm.chat(req) => r.map_err(|e| StepErr::new(ErrorCode::LlmError, e.to_string()))?,
            _ = cancel.cancelled() => return Err(StepErr::cancelled()),
        };
        let mut message_id: Option<String> = None;
        let mut reasoning_id: Option<String> = None;
        let mut text = String::new();
        let mut calls: Vec<ToolCall> = Vec::new();
        let mut call_index: Vec<usize> = Vec::new();
        let end_text = |id: &Option<String>| {
            id.clone()
                .map(|message_id| Event::TextMessageEnd { message_id })
        };
        loop {
            let item = tokio::select! {
                biased;
                _ = cancel.cancelled() => None,
                it = stream.next() => Some(it),
            };
            let Some(item) = item else {
                // Cancelled: drop the stream (aborting the request), keep the partial text.
                drop(stream);
                if let Some(e) = end_text(&message_id) {
                    self.emit(e).await;
                }
                return Err(StepErr::cancelled());
            };
            match item {
                None => break,
                Some(Err(e)) => {
                    if let Some(ev) = end_text(&message_id) {
                        self.emit(ev).await;
                    }
                    return Err(StepErr::new(ErrorCode::LlmError, e.to_string()));
                }
                Some(Ok(delta)) => match delta {
                    LlmDelta::Text(d) => {
                        if d.is_empty() {
                            continue;
                        }
                        text.push_str(&d);
                        if stream_text {
                            let id = match &message_id {
                                Some(id) => id.clone(),
                                None => {
                                    let id = new_id();
                                    message_id = Some(id.clone());
                                    self.emit(Event::TextMessageStart {
                                        message_id: id.clone(),
                                        role: "assistant".into(),
                                    })
                                    .await;
                                    id
                                }
                            };
                            self.emit(Event::TextMessageContent {
                                message_id: id,
                                delta: d,
                            })
                            .await;
                        }
                    }
                    LlmDelta::Reasoning(d) => {
                        let id = reasoning_id.get_or_insert_with(new_id).clone();
                        self.emit(Event::ReasoningMessageContent {
                            message_id: id,
                            delta: d,
                        })
                        .await;
                    }
                    LlmDelta::ToolCallStart { index, id, name } => {
                        let id = if id.is_empty() { new_id() } else { id };
                        call_index.push(index);
                        calls.push(ToolCall {
                            id: id.clone(),
                            name: name.clone(),
                            arguments: String::new(),
                        });
                        self.emit(Event::ToolCallStart {
                            tool_call_id: id,
                            tool_call_name: name,
                        })
                        .await;
                    }
                    LlmDelta::ToolCallArgs { index, delta } => {
                        if let Some(pos) = call_index.iter().position(|&i| i == index) {
                            calls[pos].arguments.push_str(&delta);
                            let id = calls[pos].id.clone();
                            self.emit(Event::ToolCallArgs {
                                tool_call_id: id,
                                delta,
                            })
                            .await;
                        }
                    }
                    LlmDelta::Done { usage, .. } => {
                        self.cp.usage.add(usage);
                        break;
                    }
                },
            }
        }
        if let Some(e) = end_text(&message_id) {
            self.emit(e).await;
        }
        for c in &calls {
            self.emit(Event::ToolCallEnd {
                tool_call_id: c.id.clone(),
            })
            .await;
        }
        Ok(LlmAnswer { text, calls })
    }
}

/// Render a node's text field; an error names the field.
fn text(
    t: &crate::template::Templates,
    field: &str,
    src: &str,
    ctx: &Value,
) -> Result<String, StepErr> {
    t.render_text(src, ctx)
        .map_err(|e| StepErr::failed(format!("{field}: {e}")))
}

/// Evaluate a node's JSON field (templates inside keep their types); an error names the field.
fn value(
    t: &crate::template::Templates,
    field: &str,
    v: &Value,
    ctx: &Value,
) -> Result<Value, StepErr> {
    t.eval_value(v, ctx)
        .map_err(|e| StepErr::failed(format!("{field}: {e}")))
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

/// Parse a model's JSON answer (tolerating code fences and text around the object) and check it.
fn parse_checked(text: &str, schema: &Value) -> Result<Value, String> {
    let v = extract_object(text)?;
    crate::schema::validate(schema, &v).map_err(|errs| errs.join("; "))?;
    Ok(v)
}

/// The JSON object in a model's answer: the whole answer, or the first complete object in it
/// (models wrap JSON in code fences or put a sentence with braces before it).
fn extract_object(text: &str) -> Result<Value, String> {
    /// How many `{` are tried as the start of the object.
    const TRIES: usize = 32;
    let t = text.trim();
    if let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(t) {
        return Ok(v);
    }
    let mut first_error = None;
    for (i, _) in t.match_indices('{').take(TRIES) {
        let mut values = serde_json::Deserializer::from_str(&t[i..]).into_iter::<Value>();
        match values.next() {
            Some(Ok(v @ Value::Object(_))) => return Ok(v),
            Some(Err(e)) if first_error.is_none() => first_error = Some(e.to_string()),
            _ => {}
        }
    }
    Err(match first_error {
        Some(e) => format!("the answer is not valid JSON ({e})"),
        None => "the answer is not a JSON object".into(),
    })
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        format!("{}…", s.chars().take(60).collect::<String>())
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_objects_are_found_in_chatty_answers() {
        let obj = json!({"a": {"b": [1, "}"]}});
        for text in [
            r#"{"a": {"b": [1, "}"]}}"#,
            "```json\n{\"a\": {\"b\": [1, \"}\"]}}\n```",
            r#"Sure {here} it is: {"a": {"b": [1, "}"]}} - anything else? {x}"#,
        ] {
            assert_eq!(extract_object(text), Ok(obj.clone()), "{text}");
        }
        assert_eq!(
            extract_object("no json here"),
            Err("the answer is not a JSON object".into())
        );
        assert!(extract_object(r#"{"a": 1,"#)
            .unwrap_err()
            .contains("not valid JSON"));
        assert!(extract_object("[1, 2]").is_err());
        let schema = json!({"type": "object", "required": ["a"]});
        assert!(parse_checked(r#"{"b": 1}"#, &schema)
            .unwrap_err()
            .contains("$.a is required"));
    }

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
