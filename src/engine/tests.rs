//! Engine tests: a scripted LLM, a recording tool runner and a sink that collects everything.
//!
//! Every node type is run here, plus pause → checkpoint → serde round-trip → resume in a new
//! engine, refused answers, the step limit, cancellation (before the start and in the middle of
//! a streamed answer), a property test over random automated graphs, and the example
//! assistants of `assistants/` end to end.

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
// start / end

#[tokio::test]
async fn start_and_end_with_checked_outputs() {
    let a = asst(json!({
        "inputArgs": [{"name": "department", "type": "string", "enum": ["sales", "r&d"], "required": true},
                      {"name": "limit", "type": "number", "default": 500}],
        "outputArgs": [{"name": "summary", "type": "string", "required": true},
                       {"name": "limit", "type": "number"}],
        "nodes": [{"id": "start", "type": "start"},
                  {"id": "end", "type": "end", "outputs": {
                      "summary": "{{ start.department }}: {{ start.userInput }}",
                      "limit": "{{ start.limit }}"}}],
        "edges": [{"from": "start", "to": "end"}]
    }));
    let h = harness();
    let mut cp = Checkpoint::default();
    let r = h
        .send_args(&a, &mut cp, "taxi", json!({"department": "sales"}))
        .await;
    assert_eq!(r.result(), json!({"summary": "sales: taxi", "limit": 500}));
    assert_eq!(
        types(r.events()),
        [
            "RUN_STARTED",
            "STEP_STARTED",
            "STEP_FINISHED",
            "STEP_STARTED",
            "STEP_FINISHED",
            "RUN_FINISHED"
        ]
    );
    match &r.events()[2] {
        Event::StepFinished {
            step_name,
            node_type,
            output,
        } => {
            assert_eq!((step_name.as_str(), node_type.as_str()), ("start", "start"));
            assert_eq!(
                output,
                &json!({"userInput": "taxi", "department": "sales", "limit": 500})
            );
        }
        e => panic!("{e:?}"),
    }
    match r.events().last() {
        Some(Event::RunFinished {
            run_id,
            outcome: Outcome::Success { result },
            ..
        }) => {
            assert_eq!(run_id, "run-1");
            assert_eq!(result["summary"], "sales: taxi");
        }
        e => panic!("{e:?}"),
    }
    assert_eq!(cp.state["end"]["limit"], 500);
    assert_eq!(h.llm.count(), 0);
}

#[tokio::test]
async fn end_output_of_the_wrong_type_fails_naming_the_field() {
    let a = asst(json!({
        "outputArgs": [{"name": "summary", "type": "string"}, {"name": "total", "type": "number"}],
        "nodes": [{"id": "start", "type": "start"},
                  {"id": "end", "type": "end", "outputs": {"summary": "ok", "total": "{{ start.userInput }}"}}],
        "edges": [{"from": "start", "to": "end"}]
    }));
    let h = harness();
    let r = h.send(&a, &mut Checkpoint::default(), "twelve").await;
    let (code, msg) = r.failure();
    assert_eq!(code, ErrorCode::StepFailed);
    assert!(msg.contains("'total'") && msg.contains("number"), "{msg}");
    assert_eq!(run_error(r.events()).0, ErrorCode::StepFailed);
    assert_eq!(count(r.events(), "RUN_FINISHED"), 0);
}

#[tokio::test]
async fn end_output_outside_its_enum_fails() {
    let a = asst(json!({
        "outputArgs": [{"name": "status", "type": "string", "enum": ["open", "closed"]}],
        "nodes": [{"id": "start", "type": "start"},
                  {"id": "end", "type": "end", "outputs": {"status": "{{ start.userInput }}"}}],
        "edges": [{"from": "start", "to": "end"}]
    }));
    let h = harness();
    let r = h.send(&a, &mut Checkpoint::default(), "open").await;
    assert_eq!(r.result(), json!({"status": "open"}));
    let r = h.send(&a, &mut Checkpoint::default(), "lost").await;
    let (_, msg) = r.failure();
    assert!(msg.contains("'status'") && msg.contains("one of"), "{msg}");
}

#[tokio::test]
async fn a_node_without_a_way_out_ends_the_run() {
    let a = asst(json!({
        "nodes": [{"id": "start", "type": "start"},
                  {"id": "hello", "type": "reply", "text": "Hello {{ start.userInput }}"}],
        "edges": [{"from": "start", "to": "hello"}]
    }));
    let h = harness();
    let r = h.send(&a, &mut Checkpoint::default(), "Ann").await;
    assert_eq!(r.result(), json!({}));
    assert_eq!(text(r.events()), "Hello Ann");
}

// ---------------------------------------------------------------------------------------------
// llm

fn llm_text_def(history: bool) -> Value {
    json!({
        "nodes": [{"id": "start", "type": "start"},
                  {"id": "answer", "type": "llm", "system": "You are terse. Today is {{ start.day }}.",
                   "prompt": "Q: {{ start.userInput }}", "history": history, "temperature": 0.2},
                  {"id": "end", "type": "end", "outputs": {"answer": "{{ answer.text }}"}}],
        "inputArgs": [{"name": "day", "type": "string", "default": "Monday"}],
        "edges": [{"from": "start", "to": "answer"}, {"from": "answer", "to": "end"}]
    })
}

#[tokio::test]
async fn llm_text_is_streamed_to_the_chat() {
    let a = asst(llm_text_def(true));
    let h = harness();
    h.text("Paris is the capital of France.");
    let history = vec![
        ChatMessage::user("Hi"),
        ChatMessage::assistant("Hello! Ask away."),
    ];
    let mut cp = Checkpoint::default();
    let args = a.check_args(None).unwrap();
    let input = Input::Message {
        run_id: "r".into(),
        content: "capital of France?".into(),
        args,
    };
    let r = h
        .input(&a, &mut cp, input, &history, VecSink::default())
        .await
        .unwrap();
    assert_eq!(
        r.result(),
        json!({"answer": "Paris is the capital of France."})
    );
    let ev = r.events();
    assert!(count(ev, "TEXT_MESSAGE_CONTENT") >= 3, "{:?}", types(ev));
    assert_eq!(count(ev, "TEXT_MESSAGE_START"), 1);
    assert_eq!(count(ev, "TEXT_MESSAGE_END"), 1);
    assert_eq!(text(ev), "Paris is the capital of France.");
    assert!(pos(ev, "TEXT_MESSAGE_START") < pos(ev, "TEXT_MESSAGE_CONTENT"));
    assert!(pos(ev, "TEXT_MESSAGE_END") < pos(ev, "RUN_FINISHED"));
    assert_eq!(
        cp.state["answer"],
        json!({"text": "Paris is the capital of France."})
    );
    assert_eq!(cp.usage.total_tokens, 5);
    // The request: system, the earlier turns, then the rendered prompt.
    let req = h.llm.request(0);
    let roles: Vec<Role> = req.messages.iter().map(|m| m.role).collect();
    assert_eq!(
        roles,
        [Role::System, Role::User, Role::Assistant, Role::User]
    );
    assert_eq!(req.messages[0].content, "You are terse. Today is Monday.");
    assert_eq!(req.messages[3].content, "Q: capital of France?");
    assert_eq!(req.temperature, Some(0.2));
    assert_eq!(req.response_format, ResponseFormat::Text);
}

#[tokio::test]
async fn llm_without_history_sees_only_its_prompt() {
    let a = asst(llm_text_def(false));
    let h = harness();
    let history = vec![ChatMessage::user("old")];
    let input = Input::Message {
        run_id: "r".into(),
        content: "new".into(),
        args: a.check_args(None).unwrap(),
    };
    h.input(
        &a,
        &mut Checkpoint::default(),
        input,
        &history,
        VecSink::default(),
    )
    .await
    .unwrap();
    let req = h.llm.request(0);
    assert_eq!(req.messages.len(), 2);
    assert!(req.messages.iter().all(|m| m.content != "old"));
}

#[tokio::test]
async fn llm_reasoning_is_reported() {
    let a = asst(llm_text_def(true));
    let h = harness();
    h.llm.say(Say::Reasoned {
        reasoning: "The user wants a capital city.",
        text: "Paris.",
    });
    let r = h.send(&a, &mut Checkpoint::default(), "capital?").await;
    let ev = r.events();
    assert!(count(ev, "REASONING_MESSAGE_CONTENT") >= 2);
    let reasoning: String = ev
        .iter()
        .filter_map(|e| match e {
            Event::ReasoningMessageContent { delta, .. } => Some(delta.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(reasoning, "The user wants a capital city.");
    assert_eq!(text(ev), "Paris.");
    assert!(pos(ev, "REASONING_MESSAGE_CONTENT") < pos(ev, "TEXT_MESSAGE_START"));
}

#[tokio::test]
async fn llm_provider_errors_fail_with_llm_error() {
    let a = asst(llm_text_def(true));
    let h = harness();
    h.llm.say(Say::Fail);
    let r = h.send(&a, &mut Checkpoint::default(), "x").await;
    let (code, msg) = r.failure();
    assert_eq!(code, ErrorCode::LlmError);
    assert!(msg.contains("connection refused"), "{msg}");
    // A stream that breaks midway ends its message before the error.
    h.llm.say(Say::Break);
    let r = h.send(&a, &mut Checkpoint::default(), "x").await;
    assert_eq!(r.failure().0, ErrorCode::LlmError);
    assert_eq!(
        types(r.events()).iter().rev().take(2).collect::<Vec<_>>(),
        [&"RUN_ERROR", &"TEXT_MESSAGE_END"]
    );
}

fn llm_json_def() -> Value {
    json!({
        "outputArgs": [{"name": "amount", "type": "number"}],
        "nodes": [{"id": "start", "type": "start"},
                  {"id": "extract", "type": "llm", "output": "json", "prompt": "Extract: {{ start.userInput }}",
                   "schema": {"type": "object", "required": ["amount", "currency"],
                              "properties": {"amount": {"type": "number"}, "currency": {"type": "string"}}}},
                  {"id": "end", "type": "end", "outputs": {"amount": "{{ extract.amount }}"}}],
        "edges": [{"from": "start", "to": "extract"}, {"from": "extract", "to": "end"}]
    })
}

#[tokio::test]
async fn llm_json_is_checked_and_repaired_once() {
    let a = asst(llm_json_def());
    let h = harness();
    h.text(r#"{"amount": "forty-two"}"#);
    h.text("Sure! ```json\n{\"amount\": 42, \"currency\": \"EUR\"}\n```");
    let mut cp = Checkpoint::default();
    let r = h.send(&a, &mut cp, "taxi 42 EUR").await;
    assert_eq!(r.result(), json!({"amount": 42}));
    assert_eq!(
        cp.state["extract"],
        json!({"amount": 42, "currency": "EUR"})
    );
    // JSON answers are not chat text.
    assert_eq!(count(r.events(), "TEXT_MESSAGE_START"), 0);
    assert_eq!(h.llm.count(), 2);
    let first = h.llm.request(0);
    assert!(matches!(first.response_format, ResponseFormat::Json { .. }));
    let repair = h.llm.request(1);
    let last = repair.messages.last().unwrap();
    assert_eq!(last.role, Role::User);
    assert!(
        last.content.contains("$.amount must be number") && last.content.contains("$.currency"),
        "{}",
        last.content
    );
    assert_eq!(
        repair.messages[repair.messages.len() - 2].content,
        r#"{"amount": "forty-two"}"#
    );
}

#[tokio::test]
async fn llm_json_failing_twice_is_an_llm_error() {
    let a = asst(llm_json_def());
    let h = harness();
    h.text("I cannot do that.");
    h.text(r#"{"amount": 1}"#);
    let r = h.send(&a, &mut Checkpoint::default(), "x").await;
    let (code, msg) = r.failure();
    assert_eq!(code, ErrorCode::LlmError);
    assert!(msg.contains("$.currency is required"), "{msg}");
    assert_eq!(run_error(r.events()).0, ErrorCode::LlmError);
    assert_eq!(h.llm.count(), 2);
}

// ---------------------------------------------------------------------------------------------
// agent

fn agent_def(extra_tools: Value) -> Value {
    let mut tools = json!({
        "find_invoice": {"kind": "builtin", "function": "lookup", "description": "Find an invoice by number",
                         "parameters": {"type": "object", "required": ["key"], "properties": {"key": {"type": "string"}}},
                         "data": {"INV-1": {"status": "paid", "total": 120}}},
        "now": {"kind": "builtin", "function": "clock"}
    });
    let mut names = vec![json!("find_invoice"), json!("now")];
    if let Value::Object(m) = extra_tools {
        for (k, v) in m {
            names.push(json!(k.clone()));
            tools[&k] = v;
        }
    }
    json!({
        "tools": tools,
        "nodes": [{"id": "start", "type": "start"},
                  {"id": "desk", "type": "agent", "instructions": "You help with invoices.", "tools": names, "maxSteps": 4},
                  {"id": "end", "type": "end", "outputs": {"answer": "{{ desk.text }}"}}],
        "edges": [{"from": "start", "to": "desk"}, {"from": "desk", "to": "end"}]
    })
}

#[tokio::test]
async fn agent_calls_tools_then_answers() {
    let a = asst(agent_def(json!({})));
    let h = harness();
    h.llm.say(Say::Calls {
        text: "Let me check. ",
        calls: vec![
            ("find_invoice", json!({"key": "INV-1"}).to_string()),
            ("now", "{}".into()),
        ],
    });
    h.text("INV-1 is paid.");
    let mut cp = Checkpoint::default();
    let r = h.send(&a, &mut cp, "Is INV-1 paid?").await;
    assert_eq!(
        r.result(),
        json!({"answer": "Let me check. INV-1 is paid."})
    );
    assert_eq!(h.tools.names(), ["find_invoice", "now"]);
    let calls = h.tools.calls.lock().clone();
    assert_eq!(calls[0].1, json!({"key": "INV-1"}));
    // Each call has its own idempotency key, made of run, node and step.
    assert!(calls[0].2.starts_with("run-1:desk:"), "{}", calls[0].2);
    assert_ne!(calls[0].2, calls[1].2);
    let ev = r.events();
    assert_eq!(count(ev, "TOOL_CALL_START"), 2);
    assert_eq!(count(ev, "TOOL_CALL_END"), 2);
    assert_eq!(count(ev, "TOOL_CALL_RESULT"), 2);
    assert!(count(ev, "TOOL_CALL_ARGS") >= 2, "args come in pieces");
    let args: String = ev
        .iter()
        .filter_map(|e| match e {
            Event::ToolCallArgs {
                tool_call_id,
                delta,
            } if tool_call_id == "call_0" => Some(delta.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(args, r#"{"key":"INV-1"}"#);
    let result = ev
        .iter()
        .find_map(|e| match e {
            Event::ToolCallResult {
                tool_call_name,
                content,
                ..
            } if tool_call_name == "find_invoice" => Some(content.clone()),
            _ => None,
        })
        .unwrap();
    assert!(result.contains("\"paid\""), "{result}");
    // The second model turn sees the assistant's calls and both results.
    let req = h.llm.request(1);
    let n = req.messages.len();
    assert_eq!(req.messages[n - 3].tool_calls.len(), 2);
    assert_eq!(req.messages[n - 2].role, Role::Tool);
    assert_eq!(req.messages[n - 2].tool_call_id.as_deref(), Some("call_0"));
    assert_eq!(req.tools.len(), 2);
    assert_eq!(messages(ev), ["Let me check. ", "INV-1 is paid."]);
}

#[tokio::test]
async fn agent_bad_tool_calls_go_back_to_the_model() {
    let a = asst(agent_def(json!({})));
    let h = harness();
    h.llm.say(Say::Calls {
        text: "",
        calls: vec![
            ("find_invoice", json!({"number": 1}).to_string()),
            ("delete_everything", "{}".into()),
            ("now", "{not json".into()),
        ],
    });
    h.text("Sorry.");
    let r = h.send(&a, &mut Checkpoint::default(), "x").await;
    r.result();
    assert_eq!(h.tools.count(), 0);
    let req = h.llm.request(1);
    let results: Vec<&str> = req
        .messages
        .iter()
        .filter(|m| m.role == Role::Tool)
        .map(|m| m.content.as_str())
        .collect();
    assert_eq!(results.len(), 3);
    assert!(results[0].contains("$.key is required"), "{}", results[0]);
    assert!(results[1].contains("no tool named 'delete_everything'"));
    assert!(results[2].contains("not valid JSON"));
}

#[tokio::test]
async fn agent_tool_errors_are_told_to_the_model() {
    let a = asst(agent_def(json!({})));
    let h = harness();
    h.tools.canned("now", Err("the clock is broken".into()));
    h.llm.call("now", json!({}));
    h.text("I could not read the clock.");
    let r = h.send(&a, &mut Checkpoint::default(), "time?").await;
    r.result();
    let req = h.llm.request(1);
    assert!(req
        .messages
        .iter()
        .any(|m| m.role == Role::Tool && m.content == "error: the clock is broken"));
}

#[tokio::test]
async fn agent_step_limit_fails_the_step() {
    let a = asst(agent_def(json!({})));
    let h = harness();
    for _ in 0..4 {
        h.llm.call("now", json!({}));
    }
    let r = h.send(&a, &mut Checkpoint::default(), "loop").await;
    let (code, msg) = r.failure();
    assert_eq!(code, ErrorCode::StepFailed);
    assert!(msg.contains("all 4 of its steps"), "{msg}");
    assert_eq!(h.llm.count(), 4);
}

fn refund_tool() -> Value {
    json!({"issue_refund": {"kind": "builtin", "function": "echo", "confirm": true,
        "description": "Refund an invoice",
        "parameters": {"type": "object", "required": ["invoice"], "properties": {"invoice": {"type": "string"}}}}})
}

#[tokio::test]
async fn agent_confirm_tool_pauses_and_approve_runs_it() {
    let a = asst(agent_def(refund_tool()));
    assert!(!a.automated);
    let h = harness();
    h.llm.call("issue_refund", json!({"invoice": "INV-1"}));
    let mut cp = Checkpoint::default();
    let r = h.send(&a, &mut cp, "Refund INV-1").await;
    let i = r.interrupt();
    assert_eq!(i.reason, InterruptReason::ToolConfirmation);
    assert_eq!(i.node_id, "desk");
    assert_eq!(
        i.buttons.as_deref(),
        Some(&["approve".to_string(), "reject".to_string()][..])
    );
    assert_eq!(
        i.payload,
        json!({"tool": "issue_refund", "arguments": {"invoice": "INV-1"}})
    );
    assert_eq!(i.tool_call_id.as_deref(), Some("call_0"));
    assert!(i.message.contains("issue_refund"));
    assert_eq!(h.tools.count(), 0, "nothing runs before the approval");
    match r.events().last() {
        Some(Event::RunFinished {
            outcome: Outcome::Interrupt { interrupts },
            ..
        }) => assert_eq!(interrupts, &vec![i.clone()]),
        e => panic!("{e:?}"),
    }
    h.text("Refund issued.");
    let r = h
        .answer(&a, &mut cp, Some("approve"), Value::Null)
        .await
        .unwrap();
    assert_eq!(r.result(), json!({"answer": "Refund issued."}));
    assert_eq!(h.tools.names(), ["issue_refund"]);
    assert_eq!(h.tools.calls.lock()[0].1, json!({"invoice": "INV-1"}));
    let ev = r.events();
    assert_eq!(count(ev, "TOOL_CALL_RESULT"), 1);
    assert!(pos(ev, "TOOL_CALL_RESULT") < pos(ev, "TEXT_MESSAGE_START"));
    assert_eq!(
        steps(ev),
        ["end"],
        "only the nodes after the agent start anew"
    );
}

#[tokio::test]
async fn agent_confirm_tool_rejected_tells_the_model() {
    let a = asst(agent_def(refund_tool()));
    let h = harness();
    h.llm.call("issue_refund", json!({"invoice": "INV-1"}));
    let mut cp = Checkpoint::default();
    h.send(&a, &mut cp, "Refund INV-1").await.interrupt();
    h.text("OK, no refund.");
    let r = h
        .answer(&a, &mut cp, Some("reject"), Value::Null)
        .await
        .unwrap();
    assert_eq!(r.result(), json!({"answer": "OK, no refund."}));
    assert_eq!(h.tools.count(), 0);
    let req = h.llm.request(1);
    let told = req.messages.iter().find(|m| m.role == Role::Tool).unwrap();
    assert!(told.content.contains("declined"), "{}", told.content);
    // A confirmation takes only approve or reject.
    h.llm.call("issue_refund", json!({"invoice": "INV-1"}));
    h.send(&a, &mut cp, "again").await.interrupt();
    let e = h
        .answer(&a, &mut cp, Some("maybe"), Value::Null)
        .await
        .err();
    assert_eq!(e.map(|e| e.code), Some(ErrorCode::BadRequest));
}

#[tokio::test]
async fn agent_page_tool_pauses_and_the_value_is_the_result() {
    let a = asst(agent_def(
        json!({"open_invoice": {"kind": "page", "action": "show_invoice",
        "description": "Open an invoice on the page"}}),
    ));
    assert!(!a.automated);
    let h = harness();
    h.llm.call("open_invoice", json!({"invoice": "INV-1"}));
    let mut cp = Checkpoint::default();
    let i = h.send(&a, &mut cp, "show INV-1").await.interrupt();
    assert_eq!(i.reason, InterruptReason::PageAction);
    assert_eq!(i.action.as_deref(), Some("show_invoice"));
    assert_eq!(i.params, Some(json!({"invoice": "INV-1"})));
    assert!(i.expires_at.is_none());
    h.text("It is open.");
    let r = h
        .answer(&a, &mut cp, None, json!({"opened": true}))
        .await
        .unwrap();
    r.result();
    assert_eq!(h.tools.count(), 0, "page tools run in the page");
    let content = r
        .events()
        .iter()
        .find_map(|e| match e {
            Event::ToolCallResult { content, .. } => Some(content.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(content, r#"{"opened":true}"#);
    // A page tool of an agent does not time out.
    h.llm.call("open_invoice", json!({"invoice": "INV-2"}));
    let i = h.send(&a, &mut cp, "show INV-2").await.interrupt();
    let e = h
        .input(
            &a,
            &mut cp,
            Input::Timeout {
                interrupt_id: i.id.clone(),
            },
            &[],
            VecSink::default(),
        )
        .await
        .err();
    assert_eq!(e.map(|e| e.code), Some(ErrorCode::InterruptNotPending));
}

#[tokio::test]
async fn agent_json_output_is_checked() {
    let a = asst(json!({
        "nodes": [{"id": "start", "type": "start"},
                  {"id": "ag", "type": "agent", "instructions": "Classify.", "output": "json",
                   "schema": {"type": "object", "required": ["label"], "properties": {"label": {"type": "string"}}}}],
        "edges": [{"from": "start", "to": "ag"}]
    }));
    let h = harness();
    h.text("label: spam");
    h.text(r#"{"label": "spam"}"#);
    let mut cp = Checkpoint::default();
    h.send(&a, &mut cp, "buy now").await.result();
    assert_eq!(cp.state["ag"], json!({"label": "spam"}));
    assert_eq!(h.llm.count(), 2);
}

// ---------------------------------------------------------------------------------------------
// router

fn router_def() -> Value {
    json!({
        "nodes": [{"id": "start", "type": "start"},
                  {"id": "triage", "type": "router", "instructions": "Pick a team for {{ start.userInput }}."},
                  {"id": "billing", "type": "reply", "text": "billing", "description": "Invoices, payments and refunds"},
                  {"id": "technical", "type": "reply", "text": "technical", "description": "Errors, crashes and bugs"}],
        "edges": [{"from": "start", "to": "triage"},
                  {"from": "triage", "to": "billing"},
                  {"from": "triage", "port": "technical", "to": "technical"}]
    })
}

#[tokio::test]
async fn router_follows_the_models_choice() {
    let a = asst(router_def());
    let h = harness();
    h.text(r#"{"choice": "technical"}"#);
    let mut cp = Checkpoint::default();
    let r = h.send(&a, &mut cp, "the app crashes").await;
    r.result();
    assert_eq!(steps(r.events()), ["start", "triage", "technical"]);
    assert_eq!(cp.state["triage"], json!({"choice": "technical"}));
    let req = h.llm.request(0);
    let system = &req.messages[0].content;
    assert!(system.starts_with("Pick a team for the app crashes."));
    assert!(system.contains("billing: Invoices, payments and refunds"));
    assert!(system.contains("technical: Errors, crashes and bugs"));
    h.text(r#"{"choice": "billing"}"#);
    let r = h.send(&a, &mut cp, "refund please").await;
    assert_eq!(steps(r.events()), ["start", "triage", "billing"]);
}

#[tokio::test]
async fn router_with_a_choice_that_is_no_successor_fails() {
    let a = asst(router_def());
    let h = harness();
    h.text(r#"{"choice": "sales"}"#);
    h.text(r#"{"choice": "marketing"}"#);
    let r = h.send(&a, &mut Checkpoint::default(), "x").await;
    assert_eq!(r.failure().0, ErrorCode::LlmError);
    // One bad answer is repaired.
    h.text(r#"{"choice": "sales"}"#);
    h.text(r#"{"choice": "billing"}"#);
    let r = h.send(&a, &mut Checkpoint::default(), "x").await;
    assert_eq!(steps(r.events()), ["start", "triage", "billing"]);
}

// ---------------------------------------------------------------------------------------------
// function

fn function_def() -> Value {
    json!({
        "inputArgs": [{"name": "department", "type": "string"}, {"name": "limit", "type": "number", "default": 500}],
        "tools": {"record": {"kind": "builtin", "function": "echo"}},
        "nodes": [{"id": "start", "type": "start"},
                  {"id": "save", "type": "function", "tool": "record",
                   "args": {"who": "{{ start.userInput }}", "limit": "{{ start.limit }}",
                            "note": "{{ start.userInput }} of {{ input.dept }}", "fixed": [1, true]}},
                  {"id": "end", "type": "end", "outputs": {"dept": "{{ save.dept }}", "limit": "{{ save.limit }}"}}],
        "edges": [{"from": "start", "to": "save", "argMapping": {"dept": "start.department"}},
                  {"from": "save", "to": "end"}]
    })
}

#[tokio::test]
async fn function_calls_its_tool_with_templated_args_and_mapped_inputs() {
    let a = asst(function_def());
    let h = harness();
    let mut cp = Checkpoint::default();
    let r = h
        .send_args(&a, &mut cp, "Ann", json!({"department": "sales"}))
        .await;
    let expected = json!({"who": "Ann", "limit": 500, "note": "Ann of sales",
                          "fixed": [1, true], "dept": "sales"});
    assert_eq!(h.tools.calls.lock()[0].1, expected);
    assert_eq!(h.tools.calls.lock()[0].2, "run-1:save:2");
    assert_eq!(cp.state["save"], expected);
    assert_eq!(r.result(), json!({"dept": "sales", "limit": 500}));
    let ev = r.events();
    assert_eq!(
        types(ev)[3..8],
        [
            "STEP_STARTED",
            "TOOL_CALL_START",
            "TOOL_CALL_ARGS",
            "TOOL_CALL_END",
            "TOOL_CALL_RESULT"
        ]
    );
}

#[tokio::test]
async fn function_tool_failure_fails_the_run() {
    let a = asst(function_def());
    let h = harness();
    h.tools
        .canned("record", Err("HTTP 503 from the ledger".into()));
    let r = h.send(&a, &mut Checkpoint::default(), "Ann").await;
    let (code, msg) = r.failure();
    assert_eq!(code, ErrorCode::ToolError);
    assert!(msg.contains("record") && msg.contains("HTTP 503"), "{msg}");
}

#[tokio::test]
async fn function_with_a_confirm_tool_waits_for_approval() {
    let a = asst(json!({
        "tools": {"pay": {"kind": "builtin", "function": "echo", "confirm": true}},
        "nodes": [{"id": "start", "type": "start"},
                  {"id": "pay", "type": "function", "tool": "pay", "args": {"to": "{{ start.userInput }}"}}],
        "edges": [{"from": "start", "to": "pay"}]
    }));
    let h = harness();
    let mut cp = Checkpoint::default();
    let i = h.send(&a, &mut cp, "Bob").await.interrupt();
    assert_eq!(i.reason, InterruptReason::ToolConfirmation);
    assert_eq!(h.tools.count(), 0);
    h.answer(&a, &mut cp, Some("approve"), Value::Null)
        .await
        .unwrap()
        .result();
    assert_eq!(cp.state["pay"], json!({"to": "Bob"}));
    h.send(&a, &mut cp, "Eve").await.interrupt();
    h.answer(&a, &mut cp, Some("reject"), Value::Null)
        .await
        .unwrap()
        .result();
    assert_eq!(cp.state["pay"]["declined"], true);
    assert_eq!(h.tools.count(), 1);
}

// ---------------------------------------------------------------------------------------------
// condition

#[tokio::test]
async fn condition_takes_the_first_true_branch_or_else() {
    let a = asst(json!({
        "inputArgs": [{"name": "amount", "type": "number", "required": true}],
        "nodes": [{"id": "start", "type": "start"},
                  {"id": "check", "type": "condition", "branches": [
                      {"port": "big", "when": "start.amount > 100"},
                      {"port": "medium", "when": "{{ start.amount > 10 }}"},
                      {"port": "also_medium", "when": "start.amount > 10"}]},
                  {"id": "big", "type": "reply", "text": "big"},
                  {"id": "medium", "type": "reply", "text": "medium"},
                  {"id": "small", "type": "reply", "text": "small"}],
        "edges": [{"from": "start", "to": "check"},
                  {"from": "check", "port": "big", "to": "big"},
                  {"from": "check", "port": "medium", "to": "medium"},
                  {"from": "check", "port": "else", "to": "small"}]
    }));
    let h = harness();
    for (amount, want) in [(500, "big"), (50, "medium"), (5, "small")] {
        let mut cp = Checkpoint::default();
        let r = h
            .send_args(&a, &mut cp, "x", json!({"amount": amount}))
            .await;
        r.result();
        assert_eq!(text(r.events()), want);
        let port = if want == "small" { "else" } else { want };
        assert_eq!(cp.state["check"], json!({"port": port}));
    }
}

#[tokio::test]
async fn condition_that_cannot_be_evaluated_fails_naming_the_branch() {
    let a = asst(json!({
        "nodes": [{"id": "start", "type": "start"},
                  {"id": "check", "type": "condition", "branches": [{"port": "odd", "when": "start.userInput + 1 > 2"}]}],
        "edges": [{"from": "start", "to": "check"}]
    }));
    let h = harness();
    let r = h.send(&a, &mut Checkpoint::default(), "text").await;
    let (code, msg) = r.failure();
    assert_eq!(code, ErrorCode::StepFailed);
    assert!(msg.contains("branch 'odd'"), "{msg}");
}

// ---------------------------------------------------------------------------------------------
// iteration

#[tokio::test]
async fn iteration_runs_its_body_per_item_then_done() {
    let a = asst(json!({
        "tools": {"list": {"kind": "builtin", "function": "echo"}},
        "nodes": [{"id": "start", "type": "start"},
                  {"id": "fetch", "type": "function", "tool": "list", "args": {"items": ["pen", "ink", "pad"]}},
                  {"id": "each", "type": "iteration", "over": "{{ fetch.items }}"},
                  {"id": "say", "type": "reply", "text": "{{ each.index }}/{{ each.count }}: {{ each.item }}"},
                  {"id": "shout", "type": "reply", "text": "{{ each.item | upper }}"},
                  {"id": "end", "type": "end", "outputs": {"count": "{{ each.count }}", "last": "{{ shout.text }}"}}],
        "edges": [{"from": "start", "to": "fetch"}, {"from": "fetch", "to": "each"},
                  {"from": "each", "port": "body", "to": "say"}, {"from": "say", "to": "shout"},
                  {"from": "each", "port": "done", "to": "end"}]
    }));
    let h = harness();
    let mut cp = Checkpoint::default();
    let r = h.send(&a, &mut cp, "go").await;
    assert_eq!(r.result(), json!({"count": 3, "last": "PAD"}));
    assert_eq!(
        messages(r.events()),
        ["0/3: pen", "PEN", "1/3: ink", "INK", "2/3: pad", "PAD"]
    );
    assert_eq!(
        steps(r.events()),
        [
            "start", "fetch", "each", "say", "shout", "each", "say", "shout", "each", "say",
            "shout", "each", "end"
        ]
    );
    // The loop position is part of every checkpoint inside the body.
    let inside = &r.sink.checkpoints[4];
    assert_eq!(inside.loops.len(), 1);
    assert_eq!(inside.loops[0].node, "each");
}

#[tokio::test]
async fn iteration_over_an_empty_list_and_over_a_non_list() {
    let a = asst(json!({
        "inputArgs": [{"name": "items", "type": "array", "default": []}],
        "nodes": [{"id": "start", "type": "start"},
                  {"id": "each", "type": "iteration", "over": "start.items"},
                  {"id": "say", "type": "reply", "text": "{{ each.item }}"},
                  {"id": "end", "type": "end", "outputs": {"n": "{{ each.count }}"}}],
        "edges": [{"from": "start", "to": "each"},
                  {"from": "each", "port": "body", "to": "say"},
                  {"from": "each", "port": "done", "to": "end"}]
    }));
    let h = harness();
    let r = h.send(&a, &mut Checkpoint::default(), "go").await;
    assert_eq!(r.result(), json!({"n": 0}));
    assert_eq!(count(r.events(), "TEXT_MESSAGE_START"), 0);
    let b = asst(json!({
        "nodes": [{"id": "start", "type": "start"},
                  {"id": "each", "type": "iteration", "over": "start.userInput"}],
        "edges": [{"from": "start", "to": "each"}]
    }));
    let r = h.send(&b, &mut Checkpoint::default(), "abc").await;
    let (code, msg) = r.failure();
    assert_eq!(code, ErrorCode::StepFailed);
    assert!(msg.contains("must give a list"), "{msg}");
}

#[tokio::test]
async fn nested_iterations() {
    let a = asst(json!({
        "nodes": [{"id": "start", "type": "start"},
                  {"id": "outer", "type": "iteration", "over": "[[1, 2], [3]]"},
                  {"id": "inner", "type": "iteration", "over": "outer.item"},
                  {"id": "cell", "type": "reply", "text": "{{ outer.index }}.{{ inner.index }}={{ inner.item }}"},
                  {"id": "row", "type": "reply", "text": "row {{ outer.index }} has {{ inner.count }}"},
                  {"id": "end", "type": "end", "outputs": {"rows": "{{ outer.count }}"}}],
        "edges": [{"from": "start", "to": "outer"},
                  {"from": "outer", "port": "body", "to": "inner"},
                  {"from": "inner", "port": "body", "to": "cell"},
                  {"from": "inner", "port": "done", "to": "row"},
                  {"from": "outer", "port": "done", "to": "end"}]
    }));
    let h = harness();
    let r = h.send(&a, &mut Checkpoint::default(), "go").await;
    assert_eq!(r.result(), json!({"rows": 2}));
    assert_eq!(
        messages(r.events()),
        ["0.0=1", "0.1=2", "row 0 has 2", "1.0=3", "row 1 has 1"]
    );
}

#[tokio::test]
async fn iteration_body_can_pause_and_resume_in_the_loop() {
    let a = asst(json!({
        "nodes": [{"id": "start", "type": "start"},
                  {"id": "each", "type": "iteration", "over": "['a', 'b']"},
                  {"id": "ask", "type": "conversation_action", "message": "Keep {{ each.item }}?", "buttons": ["yes", "no"]},
                  {"id": "kept", "type": "reply", "text": "kept {{ each.item }}"},
                  {"id": "end", "type": "end", "outputs": {"n": "{{ each.count }}"}}],
        "edges": [{"from": "start", "to": "each"},
                  {"from": "each", "port": "body", "to": "ask"},
                  {"from": "ask", "port": "yes", "to": "kept"},
                  {"from": "each", "port": "done", "to": "end"}]
    }));
    let h = harness();
    let mut cp = Checkpoint::default();
    assert_eq!(
        h.send(&a, &mut cp, "go").await.interrupt().message,
        "Keep a?"
    );
    // Through serde, as the store keeps it.
    let mut cp: Checkpoint = serde_json::from_str(&serde_json::to_string(&cp).unwrap()).unwrap();
    let r = h
        .answer(&a, &mut cp, Some("yes"), Value::Null)
        .await
        .unwrap();
    assert_eq!(r.interrupt().message, "Keep b?");
    assert_eq!(messages(r.events()), ["kept a"]);
    let r = h
        .answer(&a, &mut cp, Some("no"), Value::Null)
        .await
        .unwrap();
    assert_eq!(r.result(), json!({"n": 2}));
}

// ---------------------------------------------------------------------------------------------
// reply

#[tokio::test]
async fn reply_sends_text_and_a_card() {
    let a = asst(json!({
        "inputArgs": [{"name": "amount", "type": "number", "default": 42}],
        "nodes": [{"id": "start", "type": "start"},
                  {"id": "done", "type": "reply", "text": "Filed {{ start.userInput }} for {{ start.amount }} EUR.",
                   "data": {"title": "Claim", "total": "{{ start.amount }}", "lines": ["{{ start.userInput }}"]}}],
        "edges": [{"from": "start", "to": "done"}]
    }));
    let h = harness();
    let mut cp = Checkpoint::default();
    let r = h.send(&a, &mut cp, "taxi").await;
    r.result();
    let ev = r.events();
    assert_eq!(text(ev), "Filed taxi for 42 EUR.");
    let card = json!({"title": "Claim", "total": 42, "lines": ["taxi"]});
    assert!(ev.contains(&Event::Custom {
        name: "card".into(),
        value: card.clone()
    }));
    assert!(pos(ev, "TEXT_MESSAGE_END") < pos(ev, "CUSTOM"));
    assert_eq!(cp.state["done"]["data"], card);
}

// ---------------------------------------------------------------------------------------------
// conversation_action

fn card_def() -> Value {
    json!({
        "inputArgs": [{"name": "amount", "type": "number", "default": 42}],
        "nodes": [{"id": "start", "type": "start"},
                  {"id": "approval", "type": "conversation_action", "message": "File {{ start.userInput }}?",
                   "display": {"amount": "{{ start.amount }}", "what": "{{ start.userInput }}"},
                   "buttons": ["approve", "reject"], "editable": true},
                  {"id": "yes", "type": "reply", "text": "Filed {{ approval.data.amount }} for {{ approval.data.what }}."},
                  {"id": "no", "type": "reply", "text": "Dropped."},
                  {"id": "why", "type": "reply", "text": "You said: {{ approval.value }}"}],
        "edges": [{"from": "start", "to": "approval"},
                  {"from": "approval", "port": "approve", "to": "yes"},
                  {"from": "approval", "port": "reject", "to": "no"},
                  {"from": "approval", "port": "reply", "to": "why"}]
    })
}

#[tokio::test]
async fn conversation_action_pauses_and_a_button_follows_its_port() {
    let a = asst(card_def());
    assert!(!a.automated);
    let h = harness();
    let mut cp = Checkpoint::default();
    let r = h.send(&a, &mut cp, "taxi").await;
    let i = r.interrupt();
    assert_eq!(i.reason, InterruptReason::ConversationAction);
    assert_eq!(i.node_id, "approval");
    assert_eq!(i.message, "File taxi?");
    assert_eq!(i.payload, json!({"amount": 42, "what": "taxi"}));
    assert!(i.editable);
    assert_eq!(
        i.buttons,
        Some(vec!["approve".to_string(), "reject".to_string()])
    );
    assert_eq!(cp.pending_interrupt(), Some(&i));
    assert_eq!(types(r.events()).last(), Some(&"RUN_FINISHED"));
    assert_eq!(steps(r.events()), ["start", "approval"]);
    // Edited data replaces the shown data.
    let r = h
        .answer(
            &a,
            &mut cp,
            Some("approve"),
            json!({"amount": 40, "what": "taxi"}),
        )
        .await
        .unwrap();
    r.result();
    assert_eq!(text(r.events()), "Filed 40 for taxi.");
    assert_eq!(cp.state["approval"]["action"], "approve");
    // A button without edits keeps the shown data.
    h.send(&a, &mut cp, "hotel").await.interrupt();
    let r = h
        .answer(&a, &mut cp, Some("reject"), Value::Null)
        .await
        .unwrap();
    assert_eq!(text(r.events()), "Dropped.");
    assert_eq!(
        cp.state["approval"],
        json!({"action": "reject", "value": null, "data": {"amount": 42, "what": "hotel"}})
    );
    // A typed reply takes the `reply` port.
    h.send(&a, &mut cp, "hotel").await.interrupt();
    let r = h
        .answer(&a, &mut cp, Some("reply"), json!("make it 30"))
        .await
        .unwrap();
    assert_eq!(text(r.events()), "You said: make it 30");
}

#[tokio::test]
async fn wrong_or_missing_button_is_a_bad_request() {
    let a = asst(card_def());
    let h = harness();
    let mut cp = Checkpoint::default();
    h.send(&a, &mut cp, "taxi").await.interrupt();
    let before = cp.clone();
    let e = h
        .answer(&a, &mut cp, Some("maybe"), Value::Null)
        .await
        .err()
        .unwrap();
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert!(e.message.contains("approve, reject"), "{}", e.message);
    let e = h
        .answer(&a, &mut cp, None, Value::Null)
        .await
        .err()
        .unwrap();
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert_eq!(cp, before, "a refused answer changes nothing");
    // Still answerable.
    h.answer(&a, &mut cp, Some("reject"), Value::Null)
        .await
        .unwrap()
        .result();
}

#[tokio::test]
async fn second_answer_to_the_same_interrupt_is_refused() {
    let a = asst(card_def());
    let h = harness();
    let mut cp = Checkpoint::default();
    let i = h.send(&a, &mut cp, "taxi").await.interrupt();
    h.answer_id(&a, &mut cp, &i.id, Some("approve"), Value::Null)
        .await
        .unwrap()
        .result();
    let calls_before = h.tools.count();
    let events_before = cp.clone();
    let e = h
        .answer_id(&a, &mut cp, &i.id, Some("approve"), Value::Null)
        .await
        .err()
        .unwrap();
    assert_eq!(e.code, ErrorCode::InterruptNotPending);
    assert_eq!(cp, events_before);
    assert_eq!(h.tools.count(), calls_before);
    // Also when the conversation waits on another interrupt.
    let j = h.send(&a, &mut cp, "hotel").await.interrupt();
    assert_ne!(i.id, j.id);
    let e = Engine::check_input(
        &cp,
        &Input::Answer {
            interrupt_id: i.id.clone(),
            action: Some("approve".into()),
            value: Value::Null,
        },
    )
    .err()
    .unwrap();
    assert_eq!(e.code, ErrorCode::InterruptNotPending);
    // A new message while paused is refused (the actor turns it into an answer).
    let e = Engine::check_input(
        &cp,
        &Input::Message {
            run_id: "r2".into(),
            content: "hi".into(),
            args: Map::new(),
        },
    )
    .err()
    .unwrap();
    assert_eq!(e.code, ErrorCode::ConversationBusy);
}

// ---------------------------------------------------------------------------------------------
// page_action

fn page_def(timeout: bool) -> Value {
    let mut fill = json!({"id": "fill", "type": "page_action", "action": "fill_claim_form",
        "params": {"amount": "{{ start.amount }}", "purpose": "{{ start.userInput }}"},
        "prompt": "Check the form and press Submit."});
    let mut edges = vec![
        json!({"from": "start", "to": "fill"}),
        json!({"from": "fill", "to": "end"}),
    ];
    if timeout {
        fill["timeoutSeconds"] = json!(30);
        edges.push(json!({"from": "fill", "port": "timeout", "to": "late"}));
    }
    json!({
        "inputArgs": [{"name": "amount", "type": "number", "default": 42}],
        "nodes": [{"id": "start", "type": "start"}, fill,
                  {"id": "late", "type": "reply", "text": "The form was not submitted in time."},
                  {"id": "end", "type": "end", "outputs": {"form": "{{ fill.value }}"}}],
        "edges": edges
    })
}

#[tokio::test]
async fn page_action_pauses_and_the_answer_is_its_value() {
    let mut def = page_def(false);
    // `late` is unreachable without the timeout edge.
    def["nodes"].as_array_mut().unwrap().remove(2);
    let a = asst(def);
    let h = harness();
    let mut cp = Checkpoint::default();
    let i = h.send(&a, &mut cp, "taxi").await.interrupt();
    assert_eq!(i.reason, InterruptReason::PageAction);
    assert_eq!(i.action.as_deref(), Some("fill_claim_form"));
    assert_eq!(i.params, Some(json!({"amount": 42, "purpose": "taxi"})));
    assert_eq!(i.message, "Check the form and press Submit.");
    assert!(i.expires_at.is_none());
    let r = h
        .answer(&a, &mut cp, None, json!({"submitted": true, "ref": "C-7"}))
        .await
        .unwrap();
    assert_eq!(
        r.result(),
        json!({"form": {"submitted": true, "ref": "C-7"}})
    );
    assert_eq!(
        cp.state["fill"],
        json!({"value": {"submitted": true, "ref": "C-7"}})
    );
    // Without a timeout there is nothing to time out.
    h.send(&a, &mut cp, "taxi").await.interrupt();
    let id = cp.pending_interrupt().unwrap().id.clone();
    let e = Engine::check_input(&cp, &Input::Timeout { interrupt_id: id }).err();
    assert_eq!(e.map(|e| e.code), Some(ErrorCode::InterruptNotPending));
}

#[tokio::test]
async fn page_action_timeout_takes_the_timeout_port() {
    let a = asst(page_def(true));
    let h = harness();
    let mut cp = Checkpoint::default();
    let i = h.send(&a, &mut cp, "taxi").await.interrupt();
    let at = i.expires_at.clone().expect("expiresAt");
    // RFC 3339 in UTC: compared to the second as text.
    let fmt = |secs: i64| {
        (time::OffsetDateTime::now_utc() + time::Duration::seconds(secs))
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()[..19]
            .to_string()
    };
    assert!(at.ends_with('Z'), "{at}");
    assert!(
        fmt(20).as_str() < &at[..19] && &at[..19] <= fmt(30).as_str(),
        "{at}"
    );
    let r = h
        .input(
            &a,
            &mut cp,
            Input::Timeout {
                interrupt_id: i.id.clone(),
            },
            &[],
            VecSink::default(),
        )
        .await
        .unwrap();
    assert_eq!(r.result(), json!({}));
    assert_eq!(text(r.events()), "The form was not submitted in time.");
    assert_eq!(cp.state["fill"]["timedOut"], true);
    // The page answering after the timeout is too late.
    let e = h
        .answer_id(&a, &mut cp, &i.id, None, json!({}))
        .await
        .err()
        .unwrap();
    assert_eq!(e.code, ErrorCode::InterruptNotPending);
}

// ---------------------------------------------------------------------------------------------
// pause → checkpoint → serde → resume in a new engine

fn claim_def() -> Value {
    json!({
        "tools": {"record": {"kind": "builtin", "function": "echo"}},
        "outputArgs": [{"name": "summary", "type": "string"}, {"name": "ref", "type": "string"}],
        "nodes": [{"id": "start", "type": "start"},
                  {"id": "draft", "type": "llm", "prompt": "Draft a claim: {{ start.userInput }}"},
                  {"id": "save", "type": "function", "tool": "record", "args": {"text": "{{ draft.text }}"}},
                  {"id": "confirm", "type": "conversation_action", "message": "File this claim?",
                   "display": "{{ save.text }}", "buttons": ["approve", "reject"]},
                  {"id": "polish", "type": "llm", "prompt": "Polish: {{ draft.text }}"},
                  {"id": "end", "type": "end", "outputs": {"summary": "{{ polish.text }}", "ref": "{{ confirm.action }}"}}],
        "edges": [{"from": "start", "to": "draft"}, {"from": "draft", "to": "save"},
                  {"from": "save", "to": "confirm"},
                  {"from": "confirm", "port": "approve", "to": "polish"},
                  {"from": "polish", "to": "end"}]
    })
}

#[tokio::test]
async fn resume_in_a_new_engine_from_a_serialized_checkpoint() {
    let a = asst(claim_def());
    let first = harness();
    first.text("Taxi to the airport, 42 EUR.");
    let mut cp = Checkpoint::default();
    let r = first.send(&a, &mut cp, "taxi 42").await;
    let i = r.interrupt();
    assert_eq!(i.payload, json!("Taxi to the airport, 42 EUR."));
    assert_eq!((first.llm.count(), first.tools.count()), (1, 1));
    // A checkpoint at every node boundary, the last one waiting.
    assert_eq!(r.sink.checkpoints.len(), 4);
    let stored = serde_json::to_string(r.sink.checkpoints.last().unwrap()).unwrap();
    drop(first);

    // A fresh engine (a restarted server) with nothing but the stored checkpoint.
    let second = harness();
    second.text("Taxi to the airport (42 EUR), business trip.");
    let mut cp: Checkpoint = serde_json::from_str(&stored).unwrap();
    assert_eq!(cp.pending_interrupt(), Some(&i));
    let r = second
        .answer_id(&a, &mut cp, &i.id, Some("approve"), Value::Null)
        .await
        .unwrap();
    assert_eq!(
        r.result(),
        json!({"summary": "Taxi to the airport (42 EUR), business trip.", "ref": "approve"})
    );
    assert_eq!(second.llm.count(), 1, "only `polish` asked the model");
    assert_eq!(second.tools.count(), 0, "`save` did not run again");
    assert_eq!(steps(r.events()), ["polish", "end"]);
    assert!(second.llm.request(0).messages[0]
        .content
        .contains("Taxi to the airport, 42 EUR."));
    match &r.events()[0] {
        Event::RunStarted { run_id } => assert_eq!(run_id, "run-1"),
        e => panic!("{e:?}"),
    }
}

#[tokio::test]
async fn resume_a_paused_agent_in_a_new_engine() {
    let a = asst(agent_def(refund_tool()));
    let first = harness();
    first.llm.say(Say::Calls {
        text: "Checking. ",
        calls: vec![
            ("find_invoice", json!({"key": "INV-1"}).to_string()),
            ("issue_refund", json!({"invoice": "INV-1"}).to_string()),
        ],
    });
    let mut cp = Checkpoint::default();
    first.send(&a, &mut cp, "refund INV-1").await.interrupt();
    assert_eq!(first.tools.names(), ["find_invoice"]);
    let stored = serde_json::to_value(&cp).unwrap();
    assert_eq!(stored["position"]["at"], "waiting");

    let second = harness();
    second.text("Done: refunded.");
    let mut cp: Checkpoint = serde_json::from_value(stored).unwrap();
    let r = second
        .answer(&a, &mut cp, Some("approve"), Value::Null)
        .await
        .unwrap();
    assert_eq!(r.result(), json!({"answer": "Checking. Done: refunded."}));
    assert_eq!(second.tools.names(), ["issue_refund"]);
    assert_eq!(second.llm.count(), 1);
    // The model's memory survived the restart: both results follow its calls.
    let req = second.llm.request(0);
    let tool_msgs = req.messages.iter().filter(|m| m.role == Role::Tool).count();
    assert_eq!(tool_msgs, 2);
}

// ---------------------------------------------------------------------------------------------
// limits and cancellation

#[tokio::test]
async fn a_loop_that_never_ends_hits_the_step_limit() {
    let a = asst(json!({
        "maxSteps": 10,
        "nodes": [{"id": "start", "type": "start"},
                  {"id": "again", "type": "condition", "branches": [{"port": "yes", "when": "true"}]},
                  {"id": "tick", "type": "reply", "text": "tick"}],
        "edges": [{"from": "start", "to": "again"},
                  {"from": "again", "port": "yes", "to": "tick"},
                  {"from": "tick", "to": "again"}]
    }));
    let h = harness();
    let mut cp = Checkpoint::default();
    let r = h.send(&a, &mut cp, "go").await;
    let (code, msg) = r.failure();
    assert_eq!(code, ErrorCode::StepLimit);
    assert!(msg.contains("10 steps"), "{msg}");
    assert_eq!(run_error(r.events()).0, ErrorCode::StepLimit);
    assert_eq!(steps(r.events()).len(), 10);
}

#[tokio::test]
async fn cancel_before_the_start() {
    let a = asst(llm_text_def(true));
    let h = harness();
    let cancel = CancellationToken::new();
    cancel.cancel();
    let mut cp = Checkpoint::default();
    let input = Input::Message {
        run_id: "r".into(),
        content: "x".into(),
        args: a.check_args(None).unwrap(),
    };
    let r = h
        .input_cancel(&a, &mut cp, input, &[], VecSink::default(), &cancel)
        .await
        .unwrap();
    assert_eq!(r.end, RunEnd::Cancelled);
    assert_eq!(types(r.events()), ["RUN_STARTED", "RUN_ERROR"]);
    assert_eq!(run_error(r.events()).0, ErrorCode::Cancelled);
    assert_eq!(h.llm.count(), 0);
}

#[tokio::test]
async fn cancel_in_the_middle_of_a_streamed_answer_keeps_the_partial_text() {
    let a = asst(llm_text_def(true));
    let h = harness();
    h.llm.say(Say::Endless);
    let cancel = CancellationToken::new();
    let sink = VecSink {
        cancel_after: Some((3, cancel.clone())),
        ..Default::default()
    };
    let mut cp = Checkpoint::default();
    let input = Input::Message {
        run_id: "r".into(),
        content: "x".into(),
        args: a.check_args(None).unwrap(),
    };
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        h.input_cancel(&a, &mut cp, input, &[], sink, &cancel),
    )
    .await
    .expect("the stream is aborted")
    .unwrap();
    assert_eq!(r.end, RunEnd::Cancelled);
    let ev = r.events();
    let t = types(ev);
    assert_eq!(t[t.len() - 2..], ["TEXT_MESSAGE_END", "RUN_ERROR"]);
    assert_eq!(run_error(ev).0, ErrorCode::Cancelled);
    assert_eq!(text(ev), "w0 w1 w2 ");
    assert!(!steps(ev).contains(&"end".to_string()));
    assert_eq!(cp.position, Position::Idle);
}

#[tokio::test]
async fn a_cancelled_agent_does_not_call_its_tools() {
    let a = asst(agent_def(json!({})));
    let h = harness();
    h.llm.say(Say::Calls {
        text: "Let me look.",
        calls: vec![("now", "{}".into())],
    });
    let cancel = CancellationToken::new();
    let sink = VecSink {
        cancel_after: Some((1, cancel.clone())),
        ..Default::default()
    };
    let input = Input::Message {
        run_id: "r".into(),
        content: "x".into(),
        args: Map::new(),
    };
    let r = h
        .input_cancel(&a, &mut Checkpoint::default(), input, &[], sink, &cancel)
        .await
        .unwrap();
    assert_eq!(r.end, RunEnd::Cancelled);
    assert_eq!(h.tools.count(), 0);
}

#[test]
fn checkpoint_wire_form_round_trips() {
    let cp = Checkpoint {
        run_id: Some("r".into()),
        state: json!({"start": {"userInput": "hi"}})
            .as_object()
            .cloned()
            .unwrap(),
        position: Position::Node {
            node: "draft".into(),
            inputs: Map::new(),
        },
        loops: vec![LoopFrame {
            node: "each".into(),
            items: std::sync::Arc::new(vec![json!(1)]),
            index: 0,
        }],
        steps: 3,
        usage: Usage::default(),
    };
    let v = serde_json::to_value(&cp).unwrap();
    assert_eq!(
        v["position"],
        json!({"at": "node", "node": "draft", "inputs": {}})
    );
    assert_eq!(v["runId"], "r");
    let back: Checkpoint = serde_json::from_value(v).unwrap();
    assert_eq!(back, cp);
    let idle: Checkpoint = serde_json::from_str("{\"runId\": null, \"state\": {}, \"position\": {\"at\": \"idle\"}, \"loops\": [], \"steps\": 0, \"usage\": {\"promptTokens\": 0, \"completionTokens\": 0, \"totalTokens\": 0}}").unwrap();
    assert_eq!(idle, Checkpoint::default());
}

impl H {
    fn text(&self, t: &'static str) {
        self.llm.text(t);
    }
}

// ---------------------------------------------------------------------------------------------
// Property: random automated graphs always end cleanly

mod property {
    use proptest::prelude::*;

    use super::*;

    /// A node of a random graph (the start node is always there, as `start`).
    #[derive(Debug, Clone)]
    enum PNode {
        Llm,
        Reply,
        /// Two branches, by the index of their `when` expressions.
        Cond(usize, usize),
        Func,
        /// The index of its `over` expression.
        Iter(usize),
        End,
    }

    fn pnode() -> impl Strategy<Value = PNode> {
        prop_oneof![
            Just(PNode::Llm),
            Just(PNode::Reply),
            (0usize..8, 0usize..8).prop_map(|(a, b)| PNode::Cond(a, b)),
            Just(PNode::Func),
            (0usize..5).prop_map(PNode::Iter),
            Just(PNode::End),
        ]
    }

    fn ports(n: &PNode) -> Vec<Option<&'static str>> {
        match n {
            PNode::Cond(..) => vec![Some("a"), Some("b"), Some("else")],
            PNode::Iter(_) => vec![Some("body"), Some("done")],
            PNode::End => vec![],
            _ => vec![None],
        }
    }

    fn when(k: usize, other: &str) -> String {
        match k {
            0 => "start.n > 2".into(),
            1 => "start.n is even".into(),
            2 => "true".into(),
            3 => "false".into(),
            4 => format!("{other}.index is defined and {other}.index < 1"),
            5 => format!("{other} is defined"),
            6 => "'x' in start.userInput".into(),
            _ => format!("{{{{ {other}.count | default(0) > 1 }}}}"),
        }
    }

    fn over(k: usize) -> &'static str {
        [
            "[1, 2]",
            "start.items",
            "[]",
            "range(start.n)",
            "{{ [start.n, 'x'] }}",
        ][k]
    }

    /// The definition, built so that it is valid: every node is reached from `start` by a free
    /// port of an earlier node; extra edges (cycles included) use the ports still free.
    fn build(kinds: &[PNode], parents: &[u16], extra: &[(u16, u16)]) -> Value {
        let mut kinds: Vec<PNode> = kinds.to_vec();
        let ids: Vec<String> = (0..=kinds.len())
            .map(|i| {
                if i == 0 {
                    "start".into()
                } else {
                    format!("n{i}")
                }
            })
            .collect();
        // (node index, port) not used yet
        let mut free: Vec<(usize, Option<&'static str>)> = vec![(0, None)];
        let mut edges: Vec<Value> = Vec::new();
        let edge = |from: usize, port: Option<&str>, to: usize| {
            let mut e = json!({"from": ids[from], "to": ids[to]});
            if let Some(p) = port {
                e["port"] = json!(p);
            }
            e
        };
        let mut count = 1;
        for i in 1..=kinds.len() {
            let candidates: Vec<usize> = (0..free.len()).filter(|&k| free[k].0 < i).collect();
            if candidates.is_empty() {
                break;
            }
            let pick = candidates[parents[i % parents.len()] as usize % candidates.len()];
            let (from, port) = free.remove(pick);
            edges.push(edge(from, port, i));
            free.extend(ports(&kinds[i - 1]).into_iter().map(|p| (i, p)));
            count = i + 1;
        }
        kinds.truncate(count - 1);
        for &(a, b) in extra {
            if free.is_empty() || count < 2 {
                break;
            }
            let (from, port) = free.remove(a as usize % free.len());
            let to = 1 + b as usize % (count - 1);
            edges.push(edge(from, port, to));
        }
        let mut nodes = vec![json!({"id": "start", "type": "start"})];
        for (k, kind) in kinds.iter().enumerate() {
            let id = &ids[k + 1];
            let other = &ids[(k * 7 + 3) % count];
            nodes.push(match kind {
                PNode::Llm => {
                    json!({"id": id, "type": "llm", "prompt": "Say something about {{ start.userInput }}"})
                }
                PNode::Reply => json!({"id": id, "type": "reply", "text": "n={{ start.n }}"}),
                PNode::Cond(a, b) => json!({"id": id, "type": "condition", "branches": [
                    {"port": "a", "when": when(*a, other)}, {"port": "b", "when": when(*b, other)}]}),
                PNode::Func => {
                    json!({"id": id, "type": "function", "tool": "t", "args": {"v": "{{ start.n }}"}})
                }
                PNode::Iter(o) => json!({"id": id, "type": "iteration", "over": over(*o)}),
                PNode::End => {
                    json!({"id": id, "type": "end", "outputs": {"n": "{{ start.n }}"}})
                }
            });
        }
        json!({
            "maxSteps": 25,
            "inputArgs": [{"name": "n", "type": "integer", "default": 0},
                          {"name": "items", "type": "array", "default": ["p", "q"]}],
            "tools": {"t": {"kind": "builtin", "function": "echo"}},
            "nodes": nodes,
            "edges": edges
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn random_automated_graphs_end_cleanly(
            kinds in prop::collection::vec(pnode(), 1..9),
            parents in prop::collection::vec(any::<u16>(), 9),
            extra in prop::collection::vec((any::<u16>(), any::<u16>()), 0..8),
            n in 0i64..5,
            message in "[a-z ]{0,12}",
        ) {
            let def = build(&kinds, &parents, &extra);
            let a = match compile("prop.json", "prop", &def.to_string(), &LoadOptions::default()) {
                Ok(a) => Arc::new(a),
                Err(e) => return Err(TestCaseError::fail(format!("{e:#?}\n{def:#}"))),
            };
            prop_assert!(a.automated);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let h = harness();
            let mut cp = Checkpoint::default();
            let args = a.check_args(Some(&json!({"n": n}))).unwrap();
            let input = Input::Message { run_id: "p".into(), content: message, args };
            let ran = rt.block_on(async {
                tokio::time::timeout(
                    Duration::from_secs(20),
                    h.input(&a, &mut cp, input, &[], VecSink::default()),
                )
                .await
            });
            let ran = match ran {
                Ok(Ok(r)) => r,
                Ok(Err(refused)) => return Err(TestCaseError::fail(format!("refused: {refused}"))),
                Err(_) => return Err(TestCaseError::fail(format!("the run hung\n{def:#}"))),
            };
            match &ran.end {
                RunEnd::Completed { .. } => {}
                RunEnd::Failed { code: ErrorCode::StepLimit, message } => {
                    prop_assert!(message.contains("25 steps"));
                }
                other => {
                    return Err(TestCaseError::fail(format!("{other:?}\n{def:#}")));
                }
            }
            prop_assert!(cp.steps <= 26);
            prop_assert_eq!(steps(ran.events()).len() as u32, cp.steps.min(25));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The example assistants of `assistants/`

mod examples {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::*;

    fn catalog() -> Catalog {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("assistants");
        Catalog::load_dir(&dir, &LoadOptions::default()).unwrap_or_else(|e| {
            let lines: Vec<String> = e.iter().map(ToString::to_string).collect();
            panic!(
                "the example assistants do not validate:\n{}",
                lines.join("\n")
            )
        })
    }

    fn get(id: &str) -> Arc<Assistant> {
        catalog()
            .get(id)
            .unwrap_or_else(|| panic!("no assistant '{id}'"))
    }

    #[test]
    fn they_all_validate_and_together_use_every_node_type() {
        let cat = catalog();
        let ids: Vec<&str> = cat.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "batch_review",
                "expense_claim",
                "onboarding",
                "support_desk",
                "translator"
            ]
        );
        let automated: Vec<&str> = cat
            .iter()
            .filter(|a| a.automated)
            .map(|a| a.id.as_str())
            .collect();
        assert_eq!(automated, ["batch_review", "translator"]);
        let pauses = |id: &str| cat.get(id).unwrap().pause_points.clone();
        assert_eq!(
            pauses("expense_claim"),
            [
                "node 'approval' (conversation_action)",
                "node 'fill' (page_action)"
            ]
        );
        assert_eq!(
            pauses("support_desk"),
            ["tool 'issue_refund' used by node 'billing' (confirm: true)"]
        );
        assert_eq!(
            pauses("onboarding"),
            [
                "tool 'open_screen' used by node 'guide' (page tool)",
                "tool 'highlight' used by node 'guide' (page tool)"
            ]
        );
        let used: BTreeSet<&str> = cat
            .iter()
            .flat_map(|a| a.nodes.iter().map(|n| n.kind.type_name()))
            .collect();
        let all: BTreeSet<&str> = NodeKind::TYPES.iter().copied().collect();
        assert_eq!(used, all);
        // Only tools that work offline.
        for a in cat.iter() {
            for (name, t) in &a.tools {
                assert!(
                    matches!(t.kind, ToolKind::Builtin { .. } | ToolKind::Page { .. }),
                    "{}: tool {name}",
                    a.id
                );
            }
            assert!(
                a.welcome_message.is_some() && !a.prologues.is_empty(),
                "{}",
                a.id
            );
            assert!(!a.description.is_empty());
        }
    }

    #[tokio::test]
    async fn translator_end_to_end() {
        let a = get("translator");
        let h = harness();
        h.text("Notre bureau sera fermé vendredi pour le séminaire de l'entreprise.");
        h.text(r#"{"summary": "Le bureau ferme vendredi.", "keywords": ["bureau", "vendredi"]}"#);
        let mut cp = Checkpoint::default();
        let r = h
            .send_args(
                &a,
                &mut cp,
                "Our office will be closed on Friday for the company summit.",
                json!({"style": "formal"}),
            )
            .await;
        assert_eq!(
            r.result(),
            json!({
                "translation": "Notre bureau sera fermé vendredi pour le séminaire de l'entreprise.",
                "summary": "Le bureau ferme vendredi.",
                "keywords": ["bureau", "vendredi"],
                "language": "French"
            })
        );
        let prompt = &h.llm.request(0).messages[1].content;
        assert!(
            prompt.starts_with("Translate into French, in a formal style:"),
            "{prompt}"
        );
        assert!(h.llm.request(1).messages[1]
            .content
            .contains("Notre bureau sera fermé"));
        // With the model's default answers (schema samples), outputs still fit outputArgs.
        let h = harness();
        let r = h
            .send_args(&a, &mut cp, "Hello", json!({"targetLanguage": "German"}))
            .await;
        assert_eq!(r.result()["language"], "German");
        assert!(a
            .check_args(Some(&json!({"targetLanguage": "Klingon"})))
            .is_err());
    }

    #[tokio::test]
    async fn batch_review_end_to_end() {
        let a = get("batch_review");
        let h = harness();
        h.text(r#"{"verdict": "publish", "reason": "honest praise", "sentiment": "positive"}"#);
        h.text(r#"{"verdict": "publish", "reason": "honest complaint", "sentiment": "negative"}"#);
        h.text(r#"{"verdict": "reject", "reason": "spam link", "sentiment": "neutral"}"#);
        let mut cp = Checkpoint::default();
        let r = h
            .send_args(
                &a,
                &mut cp,
                "Great blender!\n\n  Broke after two days.  \nBuy watches at spam dot com\n",
                json!({"product": "the X200 blender"}),
            )
            .await;
        assert_eq!(
            r.result(),
            json!({"count": 3, "reviewedAt": "2024-05-01T09:30:00Z"})
        );
        let m = messages(r.events());
        assert_eq!(m.len(), 4, "{m:?}");
        assert_eq!(
            m[0],
            "1/3 PUBLISH (positive): \"Great blender!\" — honest praise"
        );
        assert_eq!(
            m[1],
            "2/3 PUBLISH (negative): \"Broke after two days.\" — honest complaint"
        );
        assert!(m[2].starts_with("3/3 REJECT (neutral)"));
        assert_eq!(
            m[3],
            "Moderated 3 reviews of the X200 blender at 2024-05-01T09:30:00Z."
        );
        assert_eq!(count(r.events(), "CUSTOM"), 3);
        assert_eq!(h.llm.count(), 3);
        assert!(h.llm.request(0).messages[0]
            .content
            .contains("the X200 blender"));
        assert_eq!(
            h.llm.request(2).messages[1].content,
            "Review 3 of 3:\nBuy watches at spam dot com"
        );
        // The `reviews` arg wins over the message; an empty batch is reported as such.
        let h = harness();
        let r = h
            .send_args(&a, &mut cp, "ignored", json!({"reviews": ["Nice."]}))
            .await;
        assert_eq!(r.result()["count"], 1);
        let h = harness();
        let r = h.send(&a, &mut cp, "  \n ").await;
        assert_eq!(r.result()["count"], 0);
        assert_eq!(
            messages(r.events()),
            ["There was nothing to moderate: send reviews one per line."]
        );
        assert_eq!(h.llm.count(), 0);
    }

    const TAXI: &str = r#"{"amount": 42, "currency": "EUR", "purpose": "taxi to the airport"}"#;
    const HOTEL: &str = r#"{"amount": 780, "currency": "EUR", "purpose": "hotel in Berlin"}"#;

    #[tokio::test]
    async fn expense_claim_under_the_limit_goes_to_the_form() {
        let a = get("expense_claim");
        let h = harness();
        h.text(TAXI);
        let mut cp = Checkpoint::default();
        let args = json!({"department": "sales", "employee": "Ann Lee"});
        let r = h
            .send_args(&a, &mut cp, "I took a taxi to the airport for 42 EUR", args)
            .await;
        let i = r.interrupt();
        assert_eq!(i.reason, InterruptReason::PageAction);
        assert_eq!(i.action.as_deref(), Some("fill_claim_form"));
        assert_eq!(i.message, "Check the form and press Submit.");
        assert_eq!(
            i.params,
            Some(
                json!({"employee": "Ann Lee", "department": "sales", "amount": 42,
                        "currency": "EUR", "purpose": "taxi to the airport"})
            )
        );
        assert!(i.expires_at.is_some());
        assert_eq!(
            steps(r.events()),
            ["start", "extract", "check", "claim", "fill"]
        );
        let stored = serde_json::to_string(&cp).unwrap();
        let mut cp: Checkpoint = serde_json::from_str(&stored).unwrap();
        let r = h
            .answer(
                &a,
                &mut cp,
                None,
                json!({"submitted": true, "reference": "EC-1042"}),
            )
            .await
            .unwrap();
        assert_eq!(
            r.result(),
            json!({"summary": "taxi to the airport: 42 EUR (sales)", "amount": 42,
                   "currency": "EUR", "status": "submitted"})
        );
        assert_eq!(
            text(r.events()),
            "Done: your claim of 42 EUR for taxi to the airport was submitted (reference EC-1042)."
        );
        let card = r
            .events()
            .iter()
            .find_map(|e| match e {
                Event::Custom { value, .. } => Some(value.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!(card["form"]["reference"], "EC-1042");
        assert_eq!(h.llm.count(), 1);
    }

    #[tokio::test]
    async fn expense_claim_over_the_limit_needs_approval() {
        let a = get("expense_claim");
        let h = harness();
        h.text(HOTEL);
        let mut cp = Checkpoint::default();
        let args = json!({"department": "r&d"});
        let i = h
            .send_args(&a, &mut cp, "Hotel in Berlin, 780 EUR", args.clone())
            .await
            .interrupt();
        assert_eq!(i.reason, InterruptReason::ConversationAction);
        assert!(i.editable);
        assert_eq!(
            i.payload,
            json!({"amount": 780, "currency": "EUR", "purpose": "hotel in Berlin", "department": "r&d"})
        );
        assert!(i.message.contains("r&d limit of 500"), "{}", i.message);
        // A typed message at the card: a reminder, then the card again.
        let r = h
            .answer(&a, &mut cp, Some("reply"), json!("is it really needed?"))
            .await
            .unwrap();
        assert!(text(r.events()).contains("Please use the buttons"));
        let again = r.interrupt();
        assert_eq!(again.node_id, "approval");
        assert_ne!(again.id, i.id);
        // Approve with an edited amount: the form gets the edited data.
        let edited = json!({"amount": 700, "currency": "EUR", "purpose": "hotel in Berlin (2 nights)",
                            "department": "r&d"});
        let i = h
            .answer(&a, &mut cp, Some("approve"), edited)
            .await
            .unwrap()
            .interrupt();
        assert_eq!(i.params.as_ref().unwrap()["amount"], 700);
        assert_eq!(i.params.as_ref().unwrap()["employee"], "");
        // Nobody submits the form in time.
        let r = h
            .input(
                &a,
                &mut cp,
                Input::Timeout {
                    interrupt_id: i.id.clone(),
                },
                &[],
                VecSink::default(),
            )
            .await
            .unwrap();
        assert_eq!(r.result()["status"], "not_submitted");
        assert!(text(r.events()).contains("not submitted within 10 minutes"));
        // Rejected.
        h.text(HOTEL);
        h.send_args(&a, &mut cp, "Hotel again", args)
            .await
            .interrupt();
        let r = h
            .answer(&a, &mut cp, Some("reject"), Value::Null)
            .await
            .unwrap();
        assert_eq!(
            r.result(),
            json!({"summary": "Claim for hotel in Berlin not filed", "amount": 780,
                   "currency": "EUR", "status": "rejected"})
        );
    }

    #[tokio::test]
    async fn support_desk_billing_refund_needs_approval() {
        let a = get("support_desk");
        let h = harness();
        h.text(r#"{"choice": "billing"}"#);
        h.llm.call("find_invoice", json!({"key": "INV-1002"}));
        h.llm.call(
            "issue_refund",
            json!({"invoice": "INV-1002", "amount": 120.0, "reason": "charged twice"}),
        );
        h.text("I refunded 120 EUR for INV-1002.");
        let mut cp = Checkpoint::default();
        let r = h
            .send(&a, &mut cp, "I was charged twice for invoice INV-1002")
            .await;
        let i = r.interrupt();
        assert_eq!(i.reason, InterruptReason::ToolConfirmation);
        assert_eq!(i.payload["tool"], "issue_refund");
        assert_eq!(h.tools.names(), ["find_invoice"]);
        let result = r
            .events()
            .iter()
            .find_map(|e| match e {
                Event::ToolCallResult { content, .. } => Some(content.clone()),
                _ => None,
            })
            .unwrap();
        assert!(result.contains("paid twice"), "{result}");
        let system = &h.llm.request(0).messages[0].content;
        assert!(system.contains("billing: Billing questions"));
        assert!(system.contains("technical: Technical problems"));
        let r = h
            .answer(&a, &mut cp, Some("approve"), Value::Null)
            .await
            .unwrap();
        assert_eq!(
            r.result(),
            json!({"answer": "I refunded 120 EUR for INV-1002.", "team": "billing"})
        );
        assert_eq!(h.tools.names(), ["find_invoice", "issue_refund"]);
    }

    #[tokio::test]
    async fn support_desk_technical() {
        let a = get("support_desk");
        let h = harness();
        h.text(r#"{"choice": "technical"}"#);
        h.llm.call("known_issues", json!({"key": "login"}));
        h.text("Sign out, clear the saved password and sign in again.");
        let r = h
            .send(&a, &mut Checkpoint::default(), "I cannot log in")
            .await;
        assert_eq!(
            r.result(),
            json!({"answer": "Sign out, clear the saved password and sign in again.",
                   "team": "technical"})
        );
        // A key outside the tool's enum goes back to the model, not to the tool.
        let h = harness();
        h.text(r#"{"choice": "technical"}"#);
        h.llm.call("known_issues", json!({"key": "printer"}));
        h.text("Which device do you use?");
        h.send(&a, &mut Checkpoint::default(), "printing fails")
            .await
            .result();
        assert_eq!(h.tools.count(), 0);
    }

    #[tokio::test]
    async fn onboarding_drives_the_page() {
        let a = get("onboarding");
        let h = harness();
        h.llm.call("help_article", json!({"key": "invoice"}));
        h.llm.call("open_screen", json!({"screen": "new_invoice"}));
        h.llm
            .call("highlight", json!({"element": "#send", "hint": "Send it"}));
        h.text("Fill in the lines and press Send.");
        let mut cp = Checkpoint::default();
        let i = h
            .send(&a, &mut cp, "How do I create my first invoice?")
            .await
            .interrupt();
        assert_eq!(i.action.as_deref(), Some("navigate"));
        assert_eq!(i.params, Some(json!({"screen": "new_invoice"})));
        let i = h
            .answer(&a, &mut cp, None, json!({"opened": "new_invoice"}))
            .await
            .unwrap()
            .interrupt();
        assert_eq!(i.action.as_deref(), Some("highlight_element"));
        let r = h
            .answer(&a, &mut cp, None, json!("highlighted"))
            .await
            .unwrap();
        r.result();
        assert_eq!(
            cp.state["guide"]["text"],
            "Fill in the lines and press Send."
        );
        assert_eq!(h.tools.names(), ["help_article"]);
        let system = &h.llm.request(0).messages[0].content;
        assert!(system.contains("(plan: free)"));
    }
}
