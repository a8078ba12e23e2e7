//! Engine tests: a scripted LLM, a recording tool runner and a sink that collects everything
//! (this file: the harness and the event assertions), and the tests, one file a topic.
//!
//! Every node type is run (`start_end`, `llm`, `agent`, `flow`, `interaction`), plus pause →
//! checkpoint → serde round-trip → resume in a new engine (`resume`), refused answers, the step
//! limit, cancellation before the start and in the middle of a streamed answer (`limits`), a
//! property test over random automated graphs (`property`), and the example assistants of
//! `assistants/` end to end (`examples`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{stream, StreamExt};
use parking_lot::Mutex;
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::assistant::model::{NodeKind, ToolKind, ToolSpec};
use crate::assistant::{compile, Assistant, Catalog, LoadOptions};
use crate::error::ErrorCode;
use crate::llm::{
    ChatRequest, DeltaStream, LlmDelta, LlmError, LlmProvider, LlmRegistry, ResponseFormat, Role,
    Usage,
};

// ---------------------------------------------------------------------------------------------
// The scripted LLM

/// One queued answer of the scripted model.
#[derive(Debug, Clone)]
pub(crate) enum Say {
    /// Plain text, streamed in small pieces.
    Text(&'static str),
    /// Reasoning first, then the text.
    Reasoned {
        reasoning: &'static str,
        text: &'static str,
    },
    /// Optional text, then tool calls (name, JSON arguments), arguments streamed in pieces.
    Calls {
        text: &'static str,
        calls: Vec<(&'static str, String)>,
    },
    /// A slow text stream that never ends (for cancel tests).
    Endless,
    /// The provider fails before answering.
    Fail,
    /// The stream breaks after a first piece of text.
    Break,
}

/// A test-double model: answers from a queue; with an empty queue it answers `ok` to text
/// requests and a schema-valid sample to JSON requests (like the built-in model).
#[derive(Debug, Default)]
pub(crate) struct ScriptedLlm {
    queue: Mutex<VecDeque<Say>>,
    pub requests: Mutex<Vec<ChatRequest>>,
    next_call: AtomicUsize,
}

impl ScriptedLlm {
    pub fn say(&self, s: Say) {
        self.queue.lock().push_back(s);
    }
    pub fn text(&self, t: &'static str) {
        self.say(Say::Text(t));
    }
    pub fn call(&self, name: &'static str, args: Value) {
        self.say(Say::Calls {
            text: "",
            calls: vec![(name, args.to_string())],
        });
    }
    pub fn count(&self) -> usize {
        self.requests.lock().len()
    }
    pub fn request(&self, i: usize) -> ChatRequest {
        self.requests.lock()[i].clone()
    }
}

/// Split a text into pieces of `n` characters.
fn pieces(t: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = t.chars().collect();
    chars.chunks(n).map(|c| c.iter().collect()).collect()
}

fn done() -> LlmDelta {
    LlmDelta::Done {
        usage: Usage {
            prompt_tokens: 3,
            completion_tokens: 2,
            total_tokens: 5,
        },
        finish_reason: Some("stop".into()),
    }
}

/// A value that satisfies a JSON schema of the subset `crate::schema` knows.
pub(crate) fn sample(schema: &Value) -> Value {
    if let Some(c) = schema.get("const") {
        return c.clone();
    }
    if let Some(first) = schema
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        return first.clone();
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(first) = schema
            .get(key)
            .and_then(Value::as_array)
            .and_then(|a| a.first())
        {
            return sample(first);
        }
    }
    let ty = match schema.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(Value::Array(ts)) => ts.first().and_then(Value::as_str).unwrap_or("null"),
        _ if schema.get("properties").is_some() => "object",
        _ => "string",
    };
    match ty {
        "object" => {
            let mut m = Map::new();
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (k, p) in props {
                    m.insert(k.clone(), sample(p));
                }
            }
            Value::Object(m)
        }
        "array" => {
            let n = schema.get("minItems").and_then(Value::as_u64).unwrap_or(1);
            let item = schema.get("items").cloned().unwrap_or(json!({}));
            Value::Array((0..n.max(1)).map(|_| sample(&item)).collect())
        }
        "number" | "integer" => schema.get("minimum").cloned().unwrap_or(json!(1)),
        "boolean" => json!(true),
        "null" => Value::Null,
        _ => json!("sample"),
    }
}

#[async_trait]
impl LlmProvider for ScriptedLlm {
    async fn chat(&self, req: ChatRequest) -> Result<DeltaStream, LlmError> {
        let default = match &req.response_format {
            ResponseFormat::Json { schema } => {
                Say::Text(Box::leak(sample(schema).to_string().into_boxed_str()))
            }
            ResponseFormat::Text => Say::Text("ok"),
        };
        self.requests.lock().push(req);
        let say = self.queue.lock().pop_front().unwrap_or(default);
        let mut out: Vec<Result<LlmDelta, LlmError>> = Vec::new();
        match say {
            Say::Text(t) => {
                out.extend(pieces(t, 4).into_iter().map(|p| Ok(LlmDelta::Text(p))));
            }
            Say::Reasoned { reasoning, text } => {
                out.extend(
                    pieces(reasoning, 5)
                        .into_iter()
                        .map(|p| Ok(LlmDelta::Reasoning(p))),
                );
                out.extend(pieces(text, 4).into_iter().map(|p| Ok(LlmDelta::Text(p))));
            }
            Say::Calls { text, calls } => {
                out.extend(pieces(text, 4).into_iter().map(|p| Ok(LlmDelta::Text(p))));
                for (index, (name, args)) in calls.into_iter().enumerate() {
                    let n = self.next_call.fetch_add(1, Ordering::SeqCst);
                    out.push(Ok(LlmDelta::ToolCallStart {
                        index,
                        id: format!("call_{n}"),
                        name: name.to_string(),
                    }));
                    out.extend(
                        pieces(&args, 7)
                            .into_iter()
                            .map(|delta| Ok(LlmDelta::ToolCallArgs { index, delta })),
                    );
                }
            }
            Say::Endless => {
                let s = stream::unfold(0u64, |i| async move {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    Some((Ok(LlmDelta::Text(format!("w{i} "))), i + 1))
                });
                return Ok(s.boxed());
            }
            Say::Fail => return Err(LlmError::Connection("connection refused".into())),
            Say::Break => {
                out.push(Ok(LlmDelta::Text("Partial".into())));
                out.push(Err(LlmError::Protocol("stream broke".into())));
                return Ok(stream::iter(out).boxed());
            }
        }
        out.push(Ok(done()));
        Ok(stream::iter(out).boxed())
    }
}

// ---------------------------------------------------------------------------------------------
// The test tool runner

/// Records every call; answers from canned results, else like the builtin functions.
#[derive(Default)]
pub(crate) struct TestTools {
    /// (tool name, arguments, idempotency key)
    pub calls: Mutex<Vec<(String, Value, String)>>,
    canned: Mutex<HashMap<String, VecDeque<Result<Value, String>>>>,
}

impl TestTools {
    pub fn canned(&self, name: &str, r: Result<Value, String>) {
        self.canned
            .lock()
            .entry(name.to_string())
            .or_default()
            .push_back(r);
    }
    pub fn count(&self) -> usize {
        self.calls.lock().len()
    }
    pub fn names(&self) -> Vec<String> {
        self.calls.lock().iter().map(|c| c.0.clone()).collect()
    }
}

fn builtin(function: &str, args: Value, data: Option<&Value>) -> Result<Value, String> {
    match function {
        "echo" => Ok(args),
        "clock" => Ok(json!({"now": "2024-05-01T09:30:00Z", "unix": 1714555800})),
        "calculator" => Ok(json!({"expression": args["expression"], "result": 42})),
        "lookup" => {
            let key = args
                .get("key")
                .and_then(Value::as_str)
                .ok_or("lookup: missing 'key'")?;
            let value = data.and_then(|d| d.get(key)).cloned();
            Ok(json!({"key": key, "found": value.is_some(), "value": value}))
        }
        other => Err(format!("unknown builtin function '{other}'")),
    }
}

#[async_trait]
impl ToolRunner for TestTools {
    async fn call(
        &self,
        name: &str,
        spec: &ToolSpec,
        args: Value,
        ctx: ToolCallCtx<'_>,
    ) -> Result<Value, String> {
        self.calls
            .lock()
            .push((name.to_string(), args.clone(), ctx.idempotency_key.clone()));
        if let Some(r) = self.canned.lock().get_mut(name).and_then(|q| q.pop_front()) {
            return r;
        }
        match &spec.kind {
            ToolKind::Builtin { function, data } => builtin(function, args, data.as_ref()),
            _ => Ok(args),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The sink

#[derive(Default)]
pub(crate) struct VecSink {
    pub events: Vec<Event>,
    pub checkpoints: Vec<Checkpoint>,
    /// Cancel this token once that many text deltas were seen.
    cancel_after: Option<(usize, CancellationToken)>,
}

#[async_trait]
impl Sink for VecSink {
    async fn event(&mut self, event: Event) {
        self.events.push(event);
        if let Some((n, token)) = &self.cancel_after {
            let seen = self
                .events
                .iter()
                .filter(|e| matches!(e, Event::TextMessageContent { .. }))
                .count();
            if seen >= *n {
                token.cancel();
            }
        }
    }
    async fn checkpoint(&mut self, checkpoint: &Checkpoint) {
        self.checkpoints.push(checkpoint.clone());
    }
}

// ---------------------------------------------------------------------------------------------
// Harness

pub(crate) struct H {
    pub engine: Engine,
    pub llm: Arc<ScriptedLlm>,
    pub tools: Arc<TestTools>,
}

pub(crate) fn harness() -> H {
    let llm = Arc::new(ScriptedLlm::default());
    let tools = Arc::new(TestTools::default());
    let mut reg = LlmRegistry::new();
    reg.insert("default", llm.clone());
    H {
        engine: Engine::new(Arc::new(reg), tools.clone()),
        llm,
        tools,
    }
}

pub(crate) struct Ran {
    pub end: RunEnd,
    pub sink: VecSink,
}

impl Ran {
    pub fn events(&self) -> &[Event] {
        &self.sink.events
    }
    pub fn interrupt(&self) -> Interrupt {
        match &self.end {
            RunEnd::Paused { interrupt } => interrupt.clone(),
            other => panic!(
                "expected a pause, got {other:?}\nevents: {:#?}",
                self.events()
            ),
        }
    }
    pub fn result(&self) -> Value {
        match &self.end {
            RunEnd::Completed { result } => result.clone(),
            other => panic!(
                "expected completion, got {other:?}\nevents: {:#?}",
                self.events()
            ),
        }
    }
    pub fn failure(&self) -> (ErrorCode, String) {
        match &self.end {
            RunEnd::Failed { code, message } => (*code, message.clone()),
            other => panic!("expected a failure, got {other:?}"),
        }
    }
}

impl H {
    /// The model's next answer is the text `t`.
    fn text(&self, t: &'static str) {
        self.llm.text(t);
    }

    pub async fn send(&self, a: &Arc<Assistant>, cp: &mut Checkpoint, content: &str) -> Ran {
        self.send_args(a, cp, content, json!({})).await
    }

    pub async fn send_args(
        &self,
        a: &Arc<Assistant>,
        cp: &mut Checkpoint,
        content: &str,
        args: Value,
    ) -> Ran {
        let args = a.check_args(Some(&args)).expect("valid args");
        let input = Input::Message {
            run_id: "run-1".into(),
            content: content.into(),
            args,
        };
        self.input(a, cp, input, &[], VecSink::default())
            .await
            .expect("not refused")
    }

    /// Answer the pending interrupt.
    pub async fn answer(
        &self,
        a: &Arc<Assistant>,
        cp: &mut Checkpoint,
        action: Option<&str>,
        value: Value,
    ) -> Result<Ran, Refused> {
        let id = cp
            .pending_interrupt()
            .map(|i| i.id.clone())
            .unwrap_or_default();
        self.answer_id(a, cp, &id, action, value).await
    }

    pub async fn answer_id(
        &self,
        a: &Arc<Assistant>,
        cp: &mut Checkpoint,
        id: &str,
        action: Option<&str>,
        value: Value,
    ) -> Result<Ran, Refused> {
        let input = Input::Answer {
            interrupt_id: id.to_string(),
            action: action.map(str::to_string),
            value,
        };
        self.input(a, cp, input, &[], VecSink::default()).await
    }

    /// The interrupt `id`'s wait timed out.
    pub async fn timeout_id(
        &self,
        a: &Arc<Assistant>,
        cp: &mut Checkpoint,
        id: &str,
    ) -> Result<Ran, Refused> {
        let input = Input::Timeout {
            interrupt_id: id.to_string(),
        };
        self.input(a, cp, input, &[], VecSink::default()).await
    }

    pub async fn input(
        &self,
        a: &Arc<Assistant>,
        cp: &mut Checkpoint,
        input: Input,
        history: &[ChatMessage],
        sink: VecSink,
    ) -> Result<Ran, Refused> {
        self.input_cancel(a, cp, input, history, sink, &CancellationToken::new())
            .await
    }

    pub async fn input_cancel(
        &self,
        a: &Arc<Assistant>,
        cp: &mut Checkpoint,
        input: Input,
        history: &[ChatMessage],
        mut sink: VecSink,
        cancel: &CancellationToken,
    ) -> Result<Ran, Refused> {
        let end = self
            .engine
            .run(a, cp, input, history, &mut sink, cancel)
            .await?;
        well_formed(&sink.events);
        // The last checkpoint is the state the run left.
        assert_eq!(sink.checkpoints.last(), Some(&*cp), "last checkpoint = cp");
        match &end {
            RunEnd::Paused { .. } => assert!(cp.is_paused()),
            _ => {
                assert_eq!(cp.position, Position::Idle);
                assert!(cp.loops.is_empty());
            }
        }
        Ok(Ran { end, sink })
    }
}

/// Compile a definition given as JSON (tools included in it).
pub(crate) fn asst(def: Value) -> Arc<Assistant> {
    match compile(
        "test.json",
        "test",
        &def.to_string(),
        &LoadOptions::default(),
    ) {
        Ok(a) => Arc::new(a),
        Err(e) => panic!("the test definition does not compile: {e:#?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Event assertions (independent of seq numbers: order within the run only)

fn types(ev: &[Event]) -> Vec<&'static str> {
    ev.iter().map(Event::type_name).collect()
}

/// The frame every run segment must have, and well-nested messages and tool calls.
fn well_formed(ev: &[Event]) {
    let t = types(ev);
    assert!(!ev.is_empty());
    assert_eq!(t[0], "RUN_STARTED", "{t:?}");
    let last = *t.last().unwrap_or(&"");
    assert!(
        last == "RUN_FINISHED" || last == "RUN_ERROR",
        "last event is {last}: {t:?}"
    );
    for (i, ty) in t.iter().enumerate() {
        if ["RUN_STARTED", "RUN_FINISHED", "RUN_ERROR"].contains(ty) {
            assert!(i == 0 || i == t.len() - 1, "{ty} in the middle: {t:?}");
        }
    }
    // Text messages: START, CONTENT..., END, by id, never interleaved with another message.
    let mut open: Option<String> = None;
    let mut ended: Vec<String> = Vec::new();
    for e in ev {
        match e {
            Event::TextMessageStart { message_id, role } => {
                assert!(open.is_none(), "two open messages: {t:?}");
                assert!(!ended.contains(message_id));
                assert_eq!(role.as_str(), "assistant");
                open = Some(message_id.clone());
            }
            Event::TextMessageContent { message_id, delta } => {
                assert_eq!(
                    open.as_ref(),
                    Some(message_id),
                    "content outside its message"
                );
                assert!(!delta.is_empty());
            }
            Event::TextMessageEnd { message_id } => {
                assert_eq!(open.as_ref(), Some(message_id));
                ended.push(message_id.clone());
                open = None;
            }
            _ => {}
        }
    }
    assert!(open.is_none(), "a text message was not ended: {t:?}");
    // Tool calls: START before ARGS before END before RESULT.
    let mut phase: HashMap<String, u8> = HashMap::new();
    for e in ev {
        match e {
            Event::ToolCallStart { tool_call_id, .. } => {
                assert!(phase.insert(tool_call_id.clone(), 1).is_none());
            }
            Event::ToolCallArgs { tool_call_id, .. } => {
                assert_eq!(phase.get(tool_call_id), Some(&1), "args out of order");
            }
            Event::ToolCallEnd { tool_call_id } => {
                assert_eq!(phase.insert(tool_call_id.clone(), 2), Some(1));
            }
            Event::ToolCallResult { tool_call_id, .. } => {
                // A resumed run reports the result of a call started before the pause.
                let p = phase.insert(tool_call_id.clone(), 3);
                assert!(p.is_none() || p == Some(2), "result before end");
            }
            _ => {}
        }
    }
    // Steps: a STEP_FINISHED follows its STEP_STARTED (or is the resumed node, first).
    let mut started: Vec<&str> = Vec::new();
    let mut first_step = true;
    for e in ev {
        match e {
            Event::StepStarted { step_name, .. } => {
                started.push(step_name);
                first_step = false;
            }
            Event::StepFinished { step_name, .. } => {
                assert!(
                    first_step || started.last() == Some(&step_name.as_str()),
                    "STEP_FINISHED {step_name} without STEP_STARTED: {t:?}"
                );
                first_step = false;
            }
            _ => {}
        }
    }
}

fn text(ev: &[Event]) -> String {
    ev.iter()
        .filter_map(|e| match e {
            Event::TextMessageContent { delta, .. } => Some(delta.as_str()),
            _ => None,
        })
        .collect()
}

/// The text of each message, in order.
fn messages(ev: &[Event]) -> Vec<String> {
    let mut out = Vec::new();
    for e in ev {
        match e {
            Event::TextMessageStart { .. } => out.push(String::new()),
            Event::TextMessageContent { delta, .. } => {
                if let Some(last) = out.last_mut() {
                    last.push_str(delta);
                }
            }
            _ => {}
        }
    }
    out
}

fn steps(ev: &[Event]) -> Vec<String> {
    ev.iter()
        .filter_map(|e| match e {
            Event::StepStarted { step_name, .. } => Some(step_name.clone()),
            _ => None,
        })
        .collect()
}

fn count(ev: &[Event], ty: &str) -> usize {
    ev.iter().filter(|e| e.type_name() == ty).count()
}

fn pos(ev: &[Event], ty: &str) -> usize {
    ev.iter()
        .position(|e| e.type_name() == ty)
        .unwrap_or_else(|| panic!("no {ty} in {:?}", types(ev)))
}

fn run_error(ev: &[Event]) -> (ErrorCode, String) {
    match ev.last() {
        Some(Event::RunError { code, message, .. }) => (*code, message.clone()),
        other => panic!("expected RUN_ERROR last, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The tests, one file a topic

mod agent;
mod examples;
mod flow;
mod interaction;
mod limits;
mod llm;
mod property;
mod resume;
mod start_end;
