//! The real `OpenAiProvider` against a fake OpenAI-compatible server.
//!
//! The server is hand-written HTTP/1.1 over a tokio `TcpListener`, so each test controls exactly
//! which bytes go out when: SSE chunks split mid-UTF-8 and mid-`data:`, error statuses with
//! `Retry-After`, a stream cut off before `[DONE]`, a server that never answers, and a socket
//! whose close by the client the server watches for. Every request is recorded (headers and
//! JSON body) for the tests to inspect; a reply may also carry a check of the request body and
//! answer 400 when it fails.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use parley::config::{LlmConfig, LlmProviderKind};
use parley::llm::metrics::Outcome;
use parley::llm::openai::OpenAiProvider;
use parley::llm::{
    ChatMessage, ChatRequest, DeltaStream, LlmDelta, LlmError, LlmProvider, ResponseFormat,
    TimeoutPhase, ToolDef, Usage,
};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The variable holding the test key; its name is unique to this test file.
const KEY_VAR: &str = "PARLEY_TEST_LLM_OPENAI_KEY_7F3A91";
const KEY: &str = "sk-test-7f3a91-very-secret";

fn set_key() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| std::env::set_var(KEY_VAR, KEY));
}

// ---------------------------------------------------------------------------------------------
// The fake server

#[derive(Clone)]
enum Step {
    Write(Vec<u8>),
    Pause(u64),
}

type BodyCheck = fn(&Value) -> Result<(), String>;

/// What the server does on one connection.
#[derive(Clone, Default)]
struct Reply {
    steps: Vec<Step>,
    /// After the steps, keep the socket open until the client closes it.
    hang: bool,
    /// Checked before replying; a failure is answered with 400 and the reason.
    check: Option<BodyCheck>,
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    request_line: String,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct Fake {
    base_url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Connections the client closed while the server was waiting (`hang`).
    closed_by_client: Arc<AtomicUsize>,
    closed_notify: Arc<tokio::sync::Notify>,
}

impl Fake {
    /// Serve `replies` in order, one per connection (the last one repeats).
    async fn start(replies: Vec<Reply>) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let closed_by_client = Arc::new(AtomicUsize::new(0));
        let closed_notify = Arc::new(tokio::sync::Notify::new());
        let (s, c, n) = (
            seen.clone(),
            closed_by_client.clone(),
            closed_notify.clone(),
        );
        tokio::spawn(async move {
            let mut i = 0usize;
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let reply = replies[i.min(replies.len() - 1)].clone();
                i += 1;
                tokio::spawn(serve(sock, reply, s.clone(), c.clone(), n.clone()));
            }
        });
        Fake {
            base_url: format!("http://{addr}/v1"),
            seen,
            closed_by_client,
            closed_notify,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

async fn serve(
    mut sock: TcpStream,
    reply: Reply,
    seen: Arc<Mutex<Vec<Seen>>>,
    closed: Arc<AtomicUsize>,
    notify: Arc<tokio::sync::Notify>,
) {
    sock.set_nodelay(true).unwrap();
    let Some(req) = read_request(&mut sock).await else {
        return;
    };
    let check = reply.check.map(|f| f(&req.body));
    seen.lock().unwrap().push(req);
    if let Some(Err(why)) = check {
        let body = json!({"error": {"message": format!("fake server: {why}")}}).to_string();
        let _ = sock.write_all(&http_response(400, &[], &body)).await;
        return;
    }
    for step in reply.steps {
        match step {
            Step::Write(b) => {
                if sock.write_all(&b).await.is_err() {
                    return;
                }
                let _ = sock.flush().await;
            }
            Step::Pause(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
        }
    }
    if reply.hang {
        let mut buf = [0u8; 1024];
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        closed.fetch_add(1, Ordering::SeqCst);
        notify.notify_waiters();
    }
    // Dropping the socket closes the connection.
}

async fn read_request(sock: &mut TcpStream) -> Option<Seen> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = sock.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let request_line = lines.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = sock.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    let body = serde_json::from_slice(&buf[head_end..head_end + len]).unwrap_or(Value::Null);
    Some(Seen {
        at: Instant::now(),
        request_line,
        headers,
        body,
    })
}

fn http_response(status: u16, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut s = format!(
        "HTTP/1.1 {status} Whatever\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    s.push_str("\r\n");
    s.push_str(body);
    s.into_bytes()
}

/// Response head of an event stream whose body ends when the connection closes.
const SSE_HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n";

fn sse_events(chunks: &[Value], done: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for c in chunks {
        out.extend_from_slice(format!("data: {c}\n\n").as_bytes());
    }
    if done {
        out.extend_from_slice(b"data: [DONE]\n\n");
    }
    out
}

fn content(text: &str) -> Value {
    json!({"id": "x", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]})
}

fn finish(reason: &str) -> Value {
    json!({"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]})
}

fn usage(p: u64, c: u64) -> Value {
    json!({"choices": [], "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}})
}

/// A complete, quick streamed answer.
fn ok_stream(text: &str) -> Reply {
    let mut steps = vec![Step::Write(SSE_HEAD.to_vec())];
    steps.push(Step::Write(sse_events(
        &[content(text), finish("stop"), usage(3, 1)],
        true,
    )));
    Reply {
        steps,
        ..Default::default()
    }
}

fn status(code: u16, headers: &[(&str, &str)], body: &str) -> Reply {
    Reply {
        steps: vec![Step::Write(http_response(code, headers, body))],
        ..Default::default()
    }
}

/// Split `body` into writes of 3, 1, 7, 2, 5, 11, ... bytes with a pause after each.
fn awkward(body: &[u8]) -> (Vec<Step>, Vec<usize>) {
    let sizes = [3usize, 1, 7, 2, 5, 11];
    let mut steps = Vec::new();
    let mut cuts = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < body.len() {
        let end = (at + sizes[i % sizes.len()]).min(body.len());
        steps.push(Step::Write(body[at..end].to_vec()));
        steps.push(Step::Pause(2));
        cuts.push(end);
        at = end;
        i += 1;
    }
    (steps, cuts)
}

// ---------------------------------------------------------------------------------------------
// The client side

fn config(base_url: &str) -> LlmConfig {
    set_key();
    LlmConfig {
        base_url: Some(base_url.to_string()),
        model: Some("test-model".into()),
        api_key_env: Some(KEY_VAR.into()),
        temperature: Some(0.2),
        max_tokens: Some(100),
        timeout_seconds: 5,
        first_byte_timeout_ms: 5_000,
        stall_timeout_ms: 5_000,
        max_concurrency: 4,
        max_retries: 2,
        ..LlmConfig::new(LlmProviderKind::Openai)
    }
}

fn provider(cfg: &LlmConfig) -> OpenAiProvider {
    OpenAiProvider::from_config("test", cfg).unwrap()
}

fn hello() -> ChatRequest {
    ChatRequest {
        messages: vec![ChatMessage::system("Be brief."), ChatMessage::user("Hello")],
        ..Default::default()
    }
}

/// Every delta until the end or the first error.
async fn drain(mut s: DeltaStream) -> (Vec<LlmDelta>, Option<LlmError>) {
    let mut out = Vec::new();
    let fut = async {
        while let Some(item) = s.next().await {
            match item {
                Ok(d) => out.push(d),
                Err(e) => return Some(e),
            }
        }
        None
    };
    let err = tokio::time::timeout(Duration::from_secs(15), fut)
        .await
        .expect("stream did not end");
    (out, err)
}

async fn chat(p: &OpenAiProvider, req: ChatRequest) -> Result<DeltaStream, LlmError> {
    tokio::time::timeout(Duration::from_secs(15), p.chat(req))
        .await
        .expect("chat did not return")
}

fn text(deltas: &[LlmDelta]) -> String {
    deltas
        .iter()
        .filter_map(|d| match d {
            LlmDelta::Text(t) => Some(t.as_str()),
            _ => None,
        })
        .collect()
}

fn assert_no_key(e: &LlmError) {
    let shown = format!("{e} {e:?}");
    assert!(!shown.contains(KEY), "the key leaked: {shown}");
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn streams_text_reasoning_tool_calls_and_usage_across_awkward_chunks() {
    let body = sse_events(
        &[
            json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
            json!({"choices": [{"index": 0, "delta": {"reasoning_content": "Thinking… über "}}]}),
            json!({"choices": [{"index": 0, "delta": {"reasoning_content": "straße"}}]}),
            content("Grüße, "),
            content("世界! "),
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": 0, "id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": ""}}
            ]}}]}),
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"q\": \"caf"}}]}}]}),
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "é\"}"}}]}}]}),
            finish("tool_calls"),
            usage(7, 5),
        ],
        true,
    );
    // A keep-alive comment, which must be ignored.
    let mut body_with_comment = b": keep-alive\n\n".to_vec();
    body_with_comment.extend_from_slice(&body);
    let (mut steps, cuts) = awkward(&body_with_comment);
    // The splits really are awkward: inside a multi-byte character and inside "data:".
    assert!(cuts.iter().any(
        |&c| c < body_with_comment.len() && (body_with_comment[c] & 0b1100_0000) == 0b1000_0000
    ));
    let data_at: Vec<usize> = body_with_comment
        .windows(5)
        .enumerate()
        .filter(|(_, w)| w == b"data:")
        .map(|(i, _)| i)
        .collect();
    assert!(cuts
        .iter()
        .any(|&c| data_at.iter().any(|&d| d < c && c < d + 5)));
    steps.insert(0, Step::Write(SSE_HEAD.to_vec()));
    let fake = Fake::start(vec![Reply {
        steps,
        ..Default::default()
    }])
    .await;

    let p = provider(&config(&fake.base_url));
    let mut req = hello();
    req.tools = vec![ToolDef {
        name: "lookup".into(),
        description: "Look something up".into(),
        parameters: json!({"type": "object", "properties": {"q": {"type": "string"}}}),
    }];
    let (deltas, err) = drain(chat(&p, req).await.unwrap()).await;
    assert!(err.is_none(), "{err:?}");

    let reasoning: String = deltas
        .iter()
        .filter_map(|d| match d {
            LlmDelta::Reasoning(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(reasoning, "Thinking… über straße");
    assert_eq!(text(&deltas), "Grüße, 世界! ");
    let starts: Vec<_> = deltas
        .iter()
        .filter(|d| matches!(d, LlmDelta::ToolCallStart { .. }))
        .collect();
    assert_eq!(
        starts,
        vec![&LlmDelta::ToolCallStart {
            index: 0,
            id: "call_1".into(),
            name: "lookup".into()
        }]
    );
    let args: String = deltas
        .iter()
        .filter_map(|d| match d {
            LlmDelta::ToolCallArgs { index: 0, delta } => Some(delta.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(args, "{\"q\": \"café\"}");
    let start_at = deltas
        .iter()
        .position(|d| matches!(d, LlmDelta::ToolCallStart { .. }))
        .unwrap();
    let first_args_at = deltas
        .iter()
        .position(|d| matches!(d, LlmDelta::ToolCallArgs { .. }))
        .unwrap();
    assert!(start_at < first_args_at);
    assert_eq!(
        deltas.last(),
        Some(&LlmDelta::Done {
            usage: Usage {
                prompt_tokens: 7,
                completion_tokens: 5,
                total_tokens: 12
            },
            finish_reason: Some("tool_calls".into())
        })
    );
    assert_eq!(
        deltas
            .iter()
            .filter(|d| matches!(d, LlmDelta::Done { .. }))
            .count(),
        1
    );

    // What the server received.
    let seen = fake.seen();
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert_eq!(r.request_line, "POST /v1/chat/completions HTTP/1.1");
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    let b = &r.body;
    assert_eq!(b["model"], "test-model");
    assert_eq!(b["stream"], true);
    assert_eq!(b["stream_options"], json!({"include_usage": true}));
    assert_eq!(b["max_tokens"], 100);
    assert_eq!(b["temperature"], json!(0.2));
    assert_eq!(
        b["messages"],
        json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}])
    );
    assert_eq!(
        b["tools"],
        json!([{"type": "function", "function": {"name": "lookup", "description": "Look something up",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}])
    );
    assert!(b.get("response_format").is_none());
}

#[tokio::test]
async fn retries_429_after_retry_after() {
    let fake = Fake::start(vec![
        status(
            429,
            &[("Retry-After", "1")],
            r#"{"error":{"message":"Rate limit reached","type":"requests"}}"#,
        ),
        ok_stream("after the wait"),
    ])
    .await;
    let p = provider(&config(&fake.base_url));
    let (deltas, err) = drain(chat(&p, hello()).await.unwrap()).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(text(&deltas), "after the wait");
    let seen = fake.seen();
    assert_eq!(seen.len(), 2);
    let waited = seen[1].at - seen[0].at;
    assert!(waited >= Duration::from_secs(1), "retried after {waited:?}");
    assert!(waited < Duration::from_secs(4), "retried after {waited:?}");
}

#[tokio::test]
async fn rate_limited_after_the_last_retry() {
    let fake = Fake::start(vec![status(
        429,
        &[("retry-after-ms", "20")],
        r#"{"error":{"message":"Slow down"}}"#,
    )])
    .await;
    let mut cfg = config(&fake.base_url);
    cfg.max_retries = 2;
    let e = chat(&provider(&cfg), hello()).await.err().unwrap();
    assert!(
        matches!(&e, LlmError::RateLimited(m) if m.contains("Slow down")),
        "{e:?}"
    );
    assert_eq!(fake.count(), 3);
}

#[tokio::test]
async fn retries_500_then_succeeds() {
    let fake = Fake::start(vec![
        status(500, &[], r#"{"error":{"message":"internal"}}"#),
        status(503, &[], "overloaded"),
        ok_stream("fine now"),
    ])
    .await;
    let p = provider(&config(&fake.base_url));
    let (deltas, err) = drain(chat(&p, hello()).await.unwrap()).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(text(&deltas), "fine now");
    assert_eq!(fake.count(), 3);
}

#[tokio::test]
async fn server_errors_exhaust_retries() {
    let fake = Fake::start(vec![status(502, &[], "bad gateway")]).await;
    let mut cfg = config(&fake.base_url);
    cfg.max_retries = 1;
    let e = chat(&provider(&cfg), hello()).await.err().unwrap();
    assert!(
        matches!(&e, LlmError::Status { status: 502, message } if message.contains("bad gateway")),
        "{e:?}"
    );
    assert!(e.to_string().contains("HTTP 502"), "{e}");
    assert_eq!(fake.count(), 2);
}

#[tokio::test]
async fn unauthorized_is_auth_error_without_the_key() {
    // The body echoes the key, as some providers do.
    let body = json!({"error": {"message": format!("Incorrect API key provided: {KEY}"), "code": "invalid_api_key"}})
        .to_string();
    let fake = Fake::start(vec![status(401, &[], &body)]).await;
    let e = chat(&provider(&config(&fake.base_url)), hello())
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&e, LlmError::Auth(m) if m.contains("Incorrect API key")),
        "{e:?}"
    );
    assert_no_key(&e);
    assert_eq!(fake.count(), 1, "401 must not be retried");
    assert!(!format!("{:?}", provider(&config(&fake.base_url))).contains(KEY));
}

#[tokio::test]
async fn unknown_model_and_refusals() {
    let fake = Fake::start(vec![status(
        404,
        &[],
        r#"{"error":{"message":"The model `nope` does not exist","code":"model_not_found"}}"#,
    )])
    .await;
    let e = chat(&provider(&config(&fake.base_url)), hello())
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&e, LlmError::UnknownModel(m) if m.contains("test-model")),
        "{e:?}"
    );
    assert_eq!(fake.count(), 1);

    // Ollama says "not found" with a 400-class status of its own.
    let fake = Fake::start(vec![status(
        400,
        &[],
        r#"{"error":"model \"llama9\" not found, try pulling it first"}"#,
    )])
    .await;
    let e = chat(&provider(&config(&fake.base_url)), hello())
        .await
        .err()
        .unwrap();
    assert!(matches!(e, LlmError::UnknownModel(_)), "{e:?}");

    let fake = Fake::start(vec![status(
        400,
        &[],
        r#"{"error":{"message":"max_tokens is too large: 100000","type":"invalid_request_error"}}"#,
    )])
    .await;
    let e = chat(&provider(&config(&fake.base_url)), hello())
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&e, LlmError::Refused(m) if m.contains("max_tokens is too large")),
        "{e:?}"
    );
    assert_eq!(fake.count(), 1);
}

#[tokio::test]
async fn stream_cut_midway_is_an_error_and_not_retried() {
    let mut cut = vec![Step::Write(SSE_HEAD.to_vec())];
    cut.push(Step::Write(sse_events(
        &[content("Once upon "), content("a ti")],
        false,
    )));
    cut.push(Step::Pause(20));
    let fake = Fake::start(vec![
        Reply {
            steps: cut,
            ..Default::default()
        },
        ok_stream("a second attempt must not happen"),
    ])
    .await;
    let p = provider(&config(&fake.base_url));
    let (deltas, err) = drain(chat(&p, hello()).await.unwrap()).await;
    assert_eq!(text(&deltas), "Once upon a ti");
    let e = err.expect("an error after the cut");
    assert!(
        matches!(&e, LlmError::Protocol(m) if m.contains("stream ended early")),
        "{e:?}"
    );
    assert!(!deltas.iter().any(|d| matches!(d, LlmDelta::Done { .. })));
    assert_no_key(&e);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fake.count(), 1);
}

#[tokio::test]
async fn broken_before_the_first_delta_is_retried() {
    // The server sends the head and closes before any data: nothing was handed out, so the
    // provider may try again.
    let fake = Fake::start(vec![
        Reply {
            steps: vec![Step::Write(SSE_HEAD.to_vec())],
            ..Default::default()
        },
        ok_stream("second time lucky"),
    ])
    .await;
    let p = provider(&config(&fake.base_url));
    let (deltas, err) = drain(chat(&p, hello()).await.unwrap()).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(text(&deltas), "second time lucky");
    assert_eq!(fake.count(), 2);
}

#[tokio::test]
async fn unresponsive_server_times_out() {
    let fake = Fake::start(vec![Reply {
        hang: true,
        ..Default::default()
    }])
    .await;
    let mut cfg = config(&fake.base_url);
    cfg.first_byte_timeout_ms = 300;
    cfg.max_retries = 0;
    let started = Instant::now();
    let e = chat(&provider(&cfg), hello()).await.err().unwrap();
    let took = started.elapsed();
    assert_eq!(
        e,
        LlmError::Timeout {
            phase: TimeoutPhase::FirstByte,
            ms: 300
        }
    );
    assert!(took >= Duration::from_millis(290), "{took:?}");
    assert_eq!(fake.count(), 1);
}

#[tokio::test]
async fn silence_between_chunks_times_out() {
    let fake = Fake::start(vec![Reply {
        steps: vec![
            Step::Write(SSE_HEAD.to_vec()),
            Step::Write(sse_events(&[content("first words")], false)),
        ],
        hang: true,
        ..Default::default()
    }])
    .await;
    let mut cfg = config(&fake.base_url);
    cfg.stall_timeout_ms = 200;
    let (deltas, err) = drain(chat(&provider(&cfg), hello()).await.unwrap()).await;
    assert_eq!(text(&deltas), "first words");
    assert_eq!(
        err,
        Some(LlmError::Timeout {
            phase: TimeoutPhase::Stall,
            ms: 200
        })
    );
}

#[tokio::test]
async fn connection_refused_is_a_connection_error() {
    // A port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut cfg = config(&format!("http://127.0.0.1:{port}/v1"));
    cfg.max_retries = 1;
    let started = Instant::now();
    let e = chat(&provider(&cfg), hello()).await.err().unwrap();
    assert!(
        matches!(&e, LlmError::Connection(m) if m.contains("127.0.0.1")),
        "{e:?}"
    );
    // One retry, after a backoff.
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
    assert_no_key(&e);
}

fn expects_json_object(body: &Value) -> Result<(), String> {
    if body["response_format"] != json!({"type": "json_object"}) {
        return Err(format!("response_format was {}", body["response_format"]));
    }
    let system = body["messages"][0]["content"].as_str().unwrap_or_default();
    if body["messages"][0]["role"] != "system"
        || !system.contains("JSON")
        || !system.contains("\"amount\"")
    {
        return Err(format!(
            "no JSON instruction with the schema in the system message: {system}"
        ));
    }
    if !system.starts_with("You file claims.") {
        return Err("the original system prompt was lost".into());
    }
    Ok(())
}

fn expects_json_schema(body: &Value) -> Result<(), String> {
    let rf = &body["response_format"];
    if rf["type"] != "json_schema" || rf["json_schema"]["name"] != "output" {
        return Err(format!("response_format was {rf}"));
    }
    if rf["json_schema"]["schema"]["properties"]["amount"]["type"] != "number" {
        return Err("schema missing".into());
    }
    Ok(())
}

fn json_request() -> ChatRequest {
    ChatRequest {
        messages: vec![
            ChatMessage::system("You file claims."),
            ChatMessage::user("Taxi, 45 EUR"),
        ],
        response_format: ResponseFormat::Json {
            schema: json!({"type": "object", "properties": {"amount": {"type": "number"}}, "required": ["amount"]}),
        },
        ..Default::default()
    }
}

#[tokio::test]
async fn json_object_mode_when_schema_requested() {
    let mut reply = ok_stream("{\"amount\": 45}");
    reply.check = Some(expects_json_object);
    let fake = Fake::start(vec![reply]).await;
    let (deltas, err) = drain(
        chat(&provider(&config(&fake.base_url)), json_request())
            .await
            .unwrap(),
    )
    .await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(text(&deltas), "{\"amount\": 45}");

    let mut reply = ok_stream("{\"amount\": 45}");
    reply.check = Some(expects_json_schema);
    let fake = Fake::start(vec![reply]).await;
    let mut cfg = config(&fake.base_url);
    cfg.json_schema = true;
    let (_, err) = drain(chat(&provider(&cfg), json_request()).await.unwrap()).await;
    assert!(err.is_none(), "{err:?}");

    // The check itself can fail: json_schema config against a json_object expectation.
    let mut reply = ok_stream("{}");
    reply.check = Some(expects_json_object);
    let fake = Fake::start(vec![reply]).await;
    let mut cfg = config(&fake.base_url);
    cfg.json_schema = true;
    let e = chat(&provider(&cfg), json_request()).await.err().unwrap();
    assert!(
        matches!(&e, LlmError::Refused(m) if m.contains("fake server")),
        "{e:?}"
    );
}

#[tokio::test]
async fn dropping_the_stream_closes_the_connection() {
    let fake = Fake::start(vec![Reply {
        steps: vec![
            Step::Write(SSE_HEAD.to_vec()),
            Step::Write(sse_events(&[content("endless "), content("story ")], false)),
        ],
        hang: true,
        ..Default::default()
    }])
    .await;
    let p = provider(&config(&fake.base_url));
    let mut s = chat(&p, hello()).await.unwrap();
    let first = s.next().await.unwrap().unwrap();
    assert_eq!(first, LlmDelta::Text("endless ".into()));
    assert_eq!(fake.closed_by_client.load(Ordering::SeqCst), 0);
    let closed = fake.closed_notify.notified();
    drop(s);
    tokio::time::timeout(Duration::from_secs(3), closed)
        .await
        .expect("the server did not see the connection close");
    assert_eq!(fake.closed_by_client.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn concurrency_permit_is_held_for_the_stream() {
    let fake = Fake::start(vec![Reply {
        steps: vec![
            Step::Write(SSE_HEAD.to_vec()),
            Step::Write(sse_events(&[content("busy ")], false)),
        ],
        hang: true,
        ..Default::default()
    }])
    .await;
    let mut cfg = config(&fake.base_url);
    cfg.max_concurrency = 1;
    let p = Arc::new(provider(&cfg));
    let mut first = chat(&p, hello()).await.unwrap();
    assert!(matches!(first.next().await, Some(Ok(LlmDelta::Text(_)))));

    let p2 = p.clone();
    let second = tokio::spawn(async move {
        let mut s = p2.chat(hello()).await.unwrap();
        s.next().await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        fake.count(),
        1,
        "the second request went out while the first stream was open"
    );
    drop(first);
    let got = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("second request never ran")
        .unwrap();
    assert!(matches!(got, Some(Ok(LlmDelta::Text(_)))));
    assert_eq!(fake.count(), 2);
}

#[tokio::test]
async fn non_streaming_answer_is_accepted() {
    let body = json!({
        "id": "x", "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "whole answer"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
    })
    .to_string();
    let fake = Fake::start(vec![status(200, &[], &body)]).await;
    let (deltas, err) = drain(
        chat(&provider(&config(&fake.base_url)), hello())
            .await
            .unwrap(),
    )
    .await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(
        deltas,
        vec![
            LlmDelta::Text("whole answer".into()),
            LlmDelta::Done {
                usage: Usage {
                    prompt_tokens: 4,
                    completion_tokens: 2,
                    total_tokens: 6
                },
                finish_reason: Some("stop".into())
            }
        ]
    );
}

#[tokio::test]
async fn garbage_chunk_is_a_protocol_error() {
    let fake = Fake::start(vec![Reply {
        steps: vec![
            Step::Write(SSE_HEAD.to_vec()),
            Step::Write(sse_events(&[content("ok ")], false)),
            Step::Write(b"data: {not json\n\n".to_vec()),
        ],
        ..Default::default()
    }])
    .await;
    let (deltas, err) = drain(
        chat(&provider(&config(&fake.base_url)), hello())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(text(&deltas), "ok ");
    assert!(matches!(err, Some(LlmError::Protocol(m)) if m.contains("unreadable chunk")));
}

// ---------------------------------------------------------------------------------------------
// Faults: each has a defined outcome (docs/llm-providers.md, the table in src/llm/openai/mod.rs).

fn always(code: u16, headers: &[(&str, &str)], body: &str) -> Vec<Reply> {
    vec![status(code, headers, body)]
}

fn sse(steps: Vec<Step>) -> Reply {
    let mut all = vec![Step::Write(SSE_HEAD.to_vec())];
    all.extend(steps);
    Reply {
        steps: all,
        ..Default::default()
    }
}

#[tokio::test]
async fn fault_connection_refused_is_retried_then_counted() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut cfg = config(&format!("http://127.0.0.1:{port}/v1"));
    cfg.max_retries = 2;
    let p = provider(&cfg);
    let e = chat(&p, hello()).await.err().unwrap();
    assert!(matches!(e, LlmError::Connection(_)), "{e:?}");
    let m = p.provider_metrics();
    assert_eq!(m.requests(Outcome::Connection), 3);
    assert_eq!(m.retries(), 2);
    assert_eq!(m.requests(Outcome::Ok), 0);
}

#[tokio::test]
async fn fault_slow_first_byte_is_retried() {
    // First connection: the head comes, then nothing (a model still loading); the second
    // answers. The first-byte limit covers the head and the first piece of the answer.
    let fake = Fake::start(vec![
        Reply {
            steps: vec![Step::Write(SSE_HEAD.to_vec())],
            hang: true,
            ..Default::default()
        },
        ok_stream("eventually"),
    ])
    .await;
    let mut cfg = config(&fake.base_url);
    cfg.first_byte_timeout_ms = 300;
    cfg.stall_timeout_ms = 50; // does not apply before the first delta
    cfg.max_retries = 1;
    let p = provider(&cfg);
    let (deltas, err) = drain(chat(&p, hello()).await.unwrap()).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(text(&deltas), "eventually");
    assert_eq!(fake.count(), 2);
    assert_eq!(p.provider_metrics().requests(Outcome::Timeout), 1);
    assert_eq!(p.provider_metrics().requests(Outcome::Ok), 1);

    // With every attempt slow: the retries, then a first-byte timeout.
    let fake = Fake::start(vec![Reply {
        hang: true,
        ..Default::default()
    }])
    .await;
    let mut cfg = config(&fake.base_url);
    cfg.first_byte_timeout_ms = 150;
    cfg.max_retries = 1;
    let e = chat(&provider(&cfg), hello()).await.err().unwrap();
    assert_eq!(
        e,
        LlmError::Timeout {
            phase: TimeoutPhase::FirstByte,
            ms: 150
        }
    );
    assert!(e.to_string().contains("first_byte_timeout_ms"), "{e}");
    assert_eq!(fake.count(), 2);
}

#[tokio::test]
async fn fault_stall_midway_keeps_the_partial_text_and_is_not_retried() {
    let fake = Fake::start(vec![
        Reply {
            steps: vec![
                Step::Write(SSE_HEAD.to_vec()),
                Step::Write(sse_events(&[content("half an "), content("answer")], false)),
            ],
            hang: true,
            ..Default::default()
        },
        ok_stream("must not be asked"),
    ])
    .await;
    let mut cfg = config(&fake.base_url);
    cfg.stall_timeout_ms = 200;
    let p = provider(&cfg);
    let (deltas, err) = drain(chat(&p, hello()).await.unwrap()).await;
    assert_eq!(text(&deltas), "half an answer");
    let e = err.expect("a stall error");
    assert_eq!(
        e,
        LlmError::Timeout {
            phase: TimeoutPhase::Stall,
            ms: 200
        }
    );
    // The connection is given up.
    tokio::time::timeout(Duration::from_secs(10), async {
        while fake.closed_by_client.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the stalled connection was not closed");
    assert_eq!(fake.count(), 1);
    assert_eq!(p.provider_metrics().requests(Outcome::Timeout), 1);
}

#[tokio::test]
async fn fault_429_storm_honours_retry_after_then_fails_with_the_status() {
    let fake = Fake::start(always(
        429,
        &[("Retry-After", "0.05")],
        r#"{"error":{"message":"Rate limit reached for requests","type":"requests"}}"#,
    ))
    .await;
    let mut cfg = config(&fake.base_url);
    cfg.max_retries = 3;
    cfg.breaker_threshold = 0;
    let p = provider(&cfg);
    let e = chat(&p, hello()).await.err().unwrap();
    assert!(matches!(&e, LlmError::RateLimited(_)), "{e:?}");
    assert!(e.to_string().contains("HTTP 429"), "{e}");
    assert!(e.to_string().contains("Rate limit reached"), "{e}");
    let seen = fake.seen();
    assert_eq!(seen.len(), 4);
    for w in seen.windows(2) {
        let gap = w[1].at - w[0].at;
        assert!(gap >= Duration::from_millis(45), "retried after {gap:?}");
    }
    assert_eq!(p.provider_metrics().requests(Outcome::RateLimited), 4);
    assert_eq!(p.provider_metrics().retries(), 3);

    // A Retry-After beyond a minute is not waited for.
    let fake = Fake::start(always(429, &[("Retry-After", "3600")], "{}")).await;
    let e = chat(&provider(&config(&fake.base_url)), hello())
        .await
        .err()
        .unwrap();
    assert!(matches!(e, LlmError::RateLimited(_)), "{e:?}");
    assert_eq!(fake.count(), 1);
}

#[tokio::test]
async fn fault_500s_are_retried_then_fail_with_the_status() {
    let fake = Fake::start(always(
        503,
        &[],
        r#"{"error":{"message":"The engine is currently overloaded"}}"#,
    ))
    .await;
    let mut cfg = config(&fake.base_url);
    cfg.max_retries = 2;
    let p = provider(&cfg);
    let e = chat(&p, hello()).await.err().unwrap();
    assert!(
        matches!(&e, LlmError::Status { status: 503, message } if message.contains("overloaded")),
        "{e:?}"
    );
    assert!(e.to_string().contains("HTTP 503"), "{e}");
    assert_eq!(fake.count(), 3);
    assert_eq!(p.provider_metrics().requests(Outcome::ServerError), 3);
}

#[tokio::test]
async fn fault_malformed_sse_chunks_are_protocol_errors() {
    // Unreadable JSON as the very first chunk: not retried (the same garbage would come again).
    let fake = Fake::start(vec![
        sse(vec![Step::Write(b"data: {\"choices\": [\n\n".to_vec())]),
        ok_stream("must not be asked"),
    ])
    .await;
    let p = provider(&config(&fake.base_url));
    let e = chat(&p, hello()).await.err().unwrap();
    assert!(
        matches!(&e, LlmError::Protocol(m) if m.contains("unreadable chunk")),
        "{e:?}"
    );
    assert_eq!(fake.count(), 1);
    assert_eq!(p.provider_metrics().requests(Outcome::Protocol), 1);

    // Valid JSON of the wrong shape, after some text: the text is kept.
    let fake = Fake::start(vec![sse(vec![
        Step::Write(sse_events(&[content("kept ")], false)),
        Step::Write(b"data: {\"choices\": \"not a list\"}\n\n".to_vec()),
    ])])
    .await;
    let (deltas, err) = drain(
        chat(&provider(&config(&fake.base_url)), hello())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(text(&deltas), "kept ");
    assert!(matches!(err, Some(LlmError::Protocol(_))), "{err:?}");

    // Bytes that are not UTF-8 in the middle of the stream.
    let fake = Fake::start(vec![sse(vec![
        Step::Write(sse_events(&[content("before ")], false)),
        Step::Write(b"data: \xff\xfe\xfd\n\n".to_vec()),
        Step::Write(sse_events(&[content("after")], true)),
    ])])
    .await;
    let (deltas, err) = drain(
        chat(&provider(&config(&fake.base_url)), hello())
            .await
            .unwrap(),
    )
    .await;
    assert!(text(&deltas).starts_with("before "), "{deltas:?}");
    assert!(matches!(err, Some(LlmError::Protocol(_))), "{err:?}");
}

fn tool_piece(index: u64, id: Option<&str>, name: Option<&str>, args: &str) -> Value {
    let mut f = json!({"arguments": args});
    if let Some(n) = name {
        f["name"] = json!(n);
    }
    let mut call = json!({"index": index, "type": "function", "function": f});
    if let Some(i) = id {
        call["id"] = json!(i);
    }
    json!({"choices": [{"index": 0, "delta": {"tool_calls": [call]}}]})
}

#[tokio::test]
async fn fault_truncated_tool_call_json_is_a_protocol_error() {
    for (reason, hint) in [("tool_calls", ""), ("length", "max_tokens")] {
        let fake = Fake::start(vec![sse(vec![Step::Write(sse_events(
            &[
                tool_piece(0, Some("c1"), Some("get_weather"), "{\"city\": \"Os"),
                finish(reason),
            ],
            true,
        ))])])
        .await;
        let p = provider(&config(&fake.base_url));
        let (deltas, err) = drain(chat(&p, hello()).await.unwrap()).await;
        assert!(
            matches!(&deltas[0], LlmDelta::ToolCallStart { name, .. } if name == "get_weather"),
            "{deltas:?}"
        );
        assert!(!deltas.iter().any(|d| matches!(d, LlmDelta::Done { .. })));
        let e = err.expect("truncated arguments are an error");
        assert!(
            matches!(&e, LlmError::Protocol(m) if m.contains("get_weather") && m.contains("not complete JSON") && m.contains(hint)),
            "{e:?}"
        );
        assert_eq!(p.provider_metrics().requests(Outcome::Protocol), 1);
    }

    // Whole arguments split across chunks are fine.
    let fake = Fake::start(vec![sse(vec![Step::Write(sse_events(
        &[
            tool_piece(0, Some("c1"), Some("get_weather"), "{\"city\": \"Os"),
            tool_piece(0, None, None, "lo\"}"),
            finish("tool_calls"),
        ],
        true,
    ))])])
    .await;
    let (deltas, err) = drain(
        chat(&provider(&config(&fake.base_url)), hello())
            .await
            .unwrap(),
    )
    .await;
    assert!(err.is_none(), "{err:?}");
    assert!(matches!(deltas.last(), Some(LlmDelta::Done { .. })));
}

/// `n` content chunks, each followed by a pause of `pause_ms`.
fn endless(n: usize, pause_ms: u64) -> Reply {
    let mut steps = Vec::new();
    for i in 0..n {
        steps.push(Step::Write(sse_events(
            &[content(&format!("w{i} "))],
            false,
        )));
        if pause_ms > 0 {
            steps.push(Step::Pause(pause_ms));
        }
    }
    sse(steps)
}

#[tokio::test]
async fn fault_endless_stream_is_cut_by_max_output_chars() {
    let fake = Fake::start(vec![endless(100_000, 0)]).await;
    let mut cfg = config(&fake.base_url);
    cfg.max_output_chars = 2_000;
    let p = provider(&cfg);
    let (deltas, err) = drain(chat(&p, hello()).await.unwrap()).await;
    let e = err.expect("cut off");
    assert!(
        matches!(&e, LlmError::TooLong(m) if m.contains("max_output_chars")),
        "{e:?}"
    );
    let t = text(&deltas);
    assert!(t.starts_with("w0 w1 "), "the partial text is kept");
    assert!(t.chars().count() <= 2_000, "{}", t.len());
    assert_eq!(p.provider_metrics().requests(Outcome::TooLong), 1);
    assert_eq!(fake.count(), 1, "not retried");
}

#[tokio::test]
async fn fault_endless_stream_is_cut_by_max_stream_ms() {
    // A steady trickle: never silent long enough to stall, never ending.
    let fake = Fake::start(vec![endless(2_000, 10)]).await;
    let mut cfg = config(&fake.base_url);
    cfg.stall_timeout_ms = 5_000;
    cfg.max_stream_ms = 400;
    let p = provider(&cfg);
    let (deltas, err) = drain(chat(&p, hello()).await.unwrap()).await;
    let e = err.expect("cut off");
    assert!(
        matches!(&e, LlmError::TooLong(m) if m.contains("max_stream_ms")),
        "{e:?}"
    );
    assert!(text(&deltas).starts_with("w0 "), "the partial text is kept");
    assert_eq!(fake.count(), 1, "not retried");
}

#[tokio::test]
async fn breaker_opens_fails_fast_then_probes() {
    let fail = status(500, &[], r#"{"error":{"message":"boom"}}"#);
    // Connections in order: two failures open it, the first probe fails, the second succeeds.
    let fake = Fake::start(vec![fail.clone(), fail.clone(), fail, ok_stream("back")]).await;
    let mut cfg = config(&fake.base_url);
    cfg.max_retries = 0;
    cfg.breaker_threshold = 2;
    // Generous: calls 2 and 3 must fall inside one cool-down even on a loaded machine.
    cfg.breaker_cooldown_ms = 1_500;
    let p = provider(&cfg);
    let m = p.provider_metrics().clone();
    for _ in 0..2 {
        let e = chat(&p, hello()).await.err().unwrap();
        assert!(matches!(e, LlmError::Status { status: 500, .. }), "{e:?}");
    }
    // Open: no request is made.
    let e = chat(&p, hello()).await.err().unwrap();
    assert!(
        matches!(&e, LlmError::Unavailable(m) if m.contains("[llm.test]")),
        "{e:?}"
    );
    assert_eq!(fake.count(), 2);
    assert_eq!(m.requests(Outcome::BreakerOpen), 1);

    // After the cool-down one probe goes through; it fails, so the breaker opens again.
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    let e = chat(&p, hello()).await.err().unwrap();
    assert!(matches!(e, LlmError::Status { status: 500, .. }), "{e:?}");
    assert_eq!(fake.count(), 3);
    let e = chat(&p, hello()).await.err().unwrap();
    assert!(matches!(e, LlmError::Unavailable(_)), "{e:?}");
    assert_eq!(fake.count(), 3);

    // The next probe succeeds and closes it.
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    let (deltas, err) = drain(chat(&p, hello()).await.unwrap()).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(text(&deltas), "back");
    let (deltas, err) = drain(chat(&p, hello()).await.unwrap()).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(text(&deltas), "back");
    assert_eq!(fake.count(), 5);
    assert_eq!(m.requests(Outcome::BreakerOpen), 2);
    assert_eq!(m.requests(Outcome::ServerError), 3);
    assert_eq!(m.requests(Outcome::Ok), 2);
}

#[tokio::test]
async fn breaker_stops_a_retry_storm_and_keeps_the_provider_status() {
    let fake = Fake::start(always(503, &[("retry-after-ms", "10")], "overloaded")).await;
    let mut cfg = config(&fake.base_url);
    cfg.max_retries = 5;
    cfg.breaker_threshold = 2;
    cfg.breaker_cooldown_ms = 60_000;
    let p = provider(&cfg);
    let e = chat(&p, hello()).await.err().unwrap();
    assert!(matches!(e, LlmError::Status { status: 503, .. }), "{e:?}");
    assert_eq!(fake.count(), 2, "the breaker ended the retries");
}

#[tokio::test]
async fn metrics_count_outcomes_tokens_and_cancels() {
    let fake = Fake::start(vec![
        ok_stream("one"),
        Reply {
            steps: vec![
                Step::Write(SSE_HEAD.to_vec()),
                Step::Write(sse_events(&[content("never finished")], false)),
            ],
            hang: true,
            ..Default::default()
        },
    ])
    .await;
    let p = provider(&config(&fake.base_url));
    let (_, err) = drain(chat(&p, hello()).await.unwrap()).await;
    assert!(err.is_none());
    // A stream dropped before its end (a cancel) counts as cancelled.
    let mut s = chat(&p, hello()).await.unwrap();
    assert!(matches!(s.next().await, Some(Ok(LlmDelta::Text(_)))));
    drop(s);
    let m = p.provider_metrics();
    assert_eq!(m.requests(Outcome::Ok), 1);
    assert_eq!(m.requests(Outcome::Cancelled), 1);
    assert_eq!(m.token_totals(), (3, 1));

    let mut out = String::new();
    parley::llm::metrics::render(&mut out, &[("test".into(), m.clone())]);
    assert!(out.contains("parley_llm_requests_total{provider=\"test\",outcome=\"ok\"} 1"));
    assert!(out.contains("parley_llm_tokens_total{provider=\"test\",kind=\"completion\"} 1"));
    assert!(out.contains("parley_llm_request_duration_seconds_count{provider=\"test\"} 2"));
    assert!(out.contains("parley_llm_breaker_state{provider=\"test\"} 0"));
}
