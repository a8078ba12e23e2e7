//! The OpenAI-compatible provider (`provider = "openai"`).
//!
//! [`OpenAiProvider`] talks to any endpoint that speaks OpenAI's chat-completions protocol:
//! OpenAI itself, Ollama, vLLM, the llama.cpp server, DeepSeek and friends. It POSTs
//! `{base_url}/chat/completions` with `stream: true` and reads the answer as server-sent events.
//!
//! How a call goes:
//!
//! 1. The provider's circuit breaker ([`super::breaker`]) is asked first: while it is open the
//!    call fails at once with [`LlmError::Unavailable`] and no request is sent.
//! 2. A permit of the provider's semaphore (`max_concurrency`) is taken; it is held until the
//!    returned stream ends or is dropped.
//! 3. The request is sent. Connecting is bounded by `timeout_seconds`; from sending to the first
//!    delta (response head included) by `first_byte_timeout_ms`; after that every gap between
//!    two chunks by `stall_timeout_ms`, and the whole answer by `max_stream_ms` and
//!    `max_output_chars`.
//! 4. Failures before the first delta are retried (`max_retries`) with exponential backoff and
//!    jitter when they are worth retrying: connection errors, first-byte timeouts, HTTP 429,
//!    408 and 5xx. `Retry-After` (and OpenAI's `retry-after-ms`) is honoured. The first delta
//!    is read before [`LlmProvider::chat`] returns, so a stream that breaks before producing
//!    anything is retried too; once a delta has been handed out, nothing is ever retried. A 429
//!    for an exhausted quota, or whose `Retry-After` exceeds a minute, is not retried.
//! 5. Each SSE `data:` chunk is decoded by an accumulator into [`LlmDelta`]s: content,
//!    reasoning (`reasoning_content` or `reasoning`), tool-call pieces (a `ToolCallStart` once a
//!    call's name is known, then `ToolCallArgs`), and the usage chunk, which ends up in the final
//!    `Done`. `[DONE]` ends the stream; a stream that ends before `[DONE]` and without a
//!    `finish_reason` is an error, and so are tool-call arguments that are not whole JSON.
//! 6. Every request's outcome, latency and tokens go to [`super::metrics`]; provider failures
//!    (the starred outcomes below) count towards opening the breaker, other answers close it.
//!
//! # Faults and their outcomes
//!
//! The engine turns every error into `RUN_ERROR` with code `llm_error` and the error's text as
//! the message (which names the provider's HTTP status when there was one). Text streamed
//! before a failure stays in the conversation: its `TEXT_MESSAGE_END` precedes the `RUN_ERROR`.
//!
//! | fault | retried? | error (outcome label) |
//! |---|---|---|
//! | connection refused / reset before an answer | yes | `Connection` (`connection`*) |
//! | no connection within `timeout_seconds` | yes | `Timeout{Connect}` (`timeout`*) |
//! | no first delta within `first_byte_timeout_ms` | yes | `Timeout{FirstByte}` (`timeout`*) |
//! | silence > `stall_timeout_ms` after the first delta | no, partial text kept | `Timeout{Stall}` (`timeout`*) |
//! | HTTP 429 (storm), waiting `Retry-After` | yes, unless quota or `Retry-After` > 60 s | `RateLimited` "HTTP 429 …" (`rate_limited`*) |
//! | HTTP 5xx / 408 | yes | `Status{status}` "HTTP 503 …" (`server_error`*) |
//! | HTTP 401/403, 404, other 4xx | no | `Auth` / `UnknownModel` / `Refused` (`client_error`) |
//! | malformed SSE chunk (bad JSON, wrong shape, not UTF-8) | no, partial text kept | `Protocol` (`protocol`*) |
//! | stream ends before `[DONE]`/`finish_reason` | only if nothing was handed out | `Protocol` (`protocol`*) |
//! | truncated tool-call JSON at the end of the answer | no | `Protocol` "not complete JSON" (`protocol`*) |
//! | endless stream: > `max_stream_ms` or > `max_output_chars` | no, partial text kept | `TooLong` (`too_long`) |
//! | `breaker_threshold` provider failures in a row | fails fast for `breaker_cooldown_ms`, then one probe | `Unavailable` (`breaker_open`); mid-retries the last provider error instead |
//! | the caller drops the stream (cancel) | no | none (`cancelled`) |
//!
//! //! If the endpoint ignores `stream: true` and answers with one JSON document, that document is
//! decoded the same way (the non-streaming fallback).
//!
//! The API key is read once from the variable named by `api_key_env`, sent as a bearer token
//! marked sensitive, and scrubbed from every error message; it is never logged.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use eventsource_stream::{EventStream, EventStreamError, Eventsource};
use futures_util::stream::{self, BoxStream, StreamExt};
use rand::Rng;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::breaker::{Admit, Breaker};
use super::metrics::{Outcome, ProviderMetrics};
use super::{
    ChatMessage, ChatRequest, DeltaStream, LlmDelta, LlmError, LlmProvider, ResponseFormat, Role,
    TimeoutPhase, ToolDef, Usage,
};
use crate::config::LlmConfig;

/// First retry delay; doubled on every further attempt.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Longest computed backoff.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A `Retry-After` longer than this is not waited for: the call fails as rate limited.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// How much of an error body is read.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Longest provider message quoted in an error.
const MAX_QUOTED: usize = 500;

/// A chat-completions endpoint speaking OpenAI's protocol.
pub struct OpenAiProvider {
    name: String,
    client: reqwest::Client,
    endpoint: Url,
    model: Option<String>,
    /// `Bearer <key>`, marked sensitive.
    auth: Option<HeaderValue>,
    /// The key itself, only to scrub it from error messages.
    secret: Option<Arc<str>>,
    temperature: Option<f32>,
    max_tokens: Option<u32>,
    /// Connect timeout.
    timeout: Duration,
    first_byte: Duration,
    stall: Duration,
    max_stream: Duration,
    max_output: usize,
    max_retries: u32,
    json_schema: bool,
    permits: Arc<Semaphore>,
    breaker: Arc<Breaker>,
    metrics: Arc<ProviderMetrics>,
}

impl std::fmt::Debug for OpenAiProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiProvider")
            .field("name", &self.name)
            .field("endpoint", &self.endpoint.as_str())
            .field("model", &self.model)
            .field(
                "api_key",
                &if self.auth.is_some() {
                    "<set>"
                } else {
                    "<none>"
                },
            )
            .field("timeout", &self.timeout)
            .field("first_byte", &self.first_byte)
            .field("stall", &self.stall)
            .field("max_retries", &self.max_retries)
            .field("json_schema", &self.json_schema)
            .finish_non_exhaustive()
    }
}

impl OpenAiProvider {
    /// Build the provider of the `[llm.<name>]` section `cfg`.
    pub fn from_config(name: &str, cfg: &LlmConfig) -> Result<Self, LlmError> {
        let base = cfg.base_url.as_deref().map(str::trim).unwrap_or_default();
        if base.is_empty() {
            return Err(LlmError::Connection(format!(
                "[llm.{name}] uses provider \"openai\" but has no base_url (e.g. http://localhost:11434/v1)"
            )));
        }
        let base = base.trim_end_matches('/');
        let url_text = if base.ends_with("/chat/completions") {
            base.to_string()
        } else {
            format!("{base}/chat/completions")
        };
        let endpoint = Url::parse(&url_text).map_err(|e| {
            LlmError::Connection(format!(
                "[llm.{name}] base_url '{base}' is not a valid URL ({e})"
            ))
        })?;
        let key = cfg.api_key();
        if key.is_none() {
            if let Some(var) = &cfg.api_key_env {
                tracing::warn!(
                    llm = name,
                    api_key_env = %var,
                    "the API key variable is unset or empty; requests are sent without a key"
                );
            }
        }
        let auth = match &key {
            Some(k) => {
                let mut v = HeaderValue::from_str(&format!("Bearer {k}")).map_err(|_| {
                    LlmError::Auth(format!(
                        "[llm.{name}]: the key contains characters that cannot be sent in an HTTP header"
                    ))
                })?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        let timeout = Duration::from_secs(cfg.timeout_seconds.max(1));
        let breaker = Arc::new(Breaker::new(
            cfg.breaker_threshold,
            Duration::from_millis(cfg.breaker_cooldown_ms),
        ));
        let client = reqwest::Client::builder()
            .connect_timeout(timeout)
            .build()
            .map_err(|e| {
                LlmError::Connection(format!("[llm.{name}]: cannot build an HTTP client: {e}"))
            })?;
        Ok(OpenAiProvider {
            name: name.to_string(),
            client,
            endpoint,
            model: cfg.model.clone().filter(|m| !m.trim().is_empty()),
            auth,
            secret: key.map(Arc::from),
            temperature: cfg.temperature,
            max_tokens: cfg.max_tokens,
            timeout,
            first_byte: Duration::from_millis(cfg.first_byte_timeout_ms.max(1)),
            stall: Duration::from_millis(cfg.stall_timeout_ms.max(1)),
            max_stream: Duration::from_millis(cfg.max_stream_ms.max(1)),
            max_output: cfg.max_output_chars.max(1),
            max_retries: cfg.max_retries,
            json_schema: cfg.json_schema,
            permits: Arc::new(Semaphore::new(cfg.max_concurrency.max(1))),
            breaker: breaker.clone(),
            metrics: Arc::new(ProviderMetrics::new(Some(breaker))),
        })
    }

    /// This provider's figures (also reachable through [`LlmProvider::metrics`]).
    pub fn provider_metrics(&self) -> &Arc<ProviderMetrics> {
        &self.metrics
    }

    fn first_byte_timeout(&self) -> LlmError {
        LlmError::Timeout {
            phase: TimeoutPhase::FirstByte,
            ms: self.first_byte.as_millis() as u64,
        }
    }

    fn scrub(&self) -> Scrubber {
        Scrubber(self.secret.clone())
    }

    /// The JSON body of a chat-completions request.
    pub fn request_body(&self, req: &ChatRequest) -> Value {
        let mut messages: Vec<Value> = req.messages.iter().map(wire_message).collect();
        let mut body = Map::new();
        if let Some(m) = &self.model {
            body.insert("model".into(), json!(m));
        }
        let mut response_format = None;
        if let ResponseFormat::Json { schema } = &req.response_format {
            if self.json_schema {
                response_format = Some(json!({
                    "type": "json_schema",
                    "json_schema": {"name": "output", "schema": schema},
                }));
            } else {
                response_format = Some(json!({"type": "json_object"}));
                add_system_line(&mut messages, &json_instruction(schema));
            }
        }
        body.insert("messages".into(), Value::Array(messages));
        body.insert("stream".into(), json!(true));
        body.insert("stream_options".into(), json!({"include_usage": true}));
        if let Some(t) = req.temperature.or(self.temperature) {
            body.insert("temperature".into(), f32_json(t));
        }
        if let Some(n) = req.max_tokens.or(self.max_tokens) {
            body.insert("max_tokens".into(), json!(n));
        }
        if !req.tools.is_empty() {
            body.insert(
                "tools".into(),
                Value::Array(req.tools.iter().map(wire_tool).collect()),
            );
        }
        if let Some(rf) = response_format {
            body.insert("response_format".into(), rf);
        }
        Value::Object(body)
    }

    /// One attempt: send, check the status, read up to the first delta, all within
    /// `first_byte_timeout_ms`.
    async fn attempt(&self, body: &Value) -> Result<(SseState, LlmDelta), Failure> {
        match tokio::time::timeout(self.first_byte, self.attempt_inner(body)).await {
            Ok(r) => r,
            // Nothing was handed out yet: another attempt may do better.
            Err(_) => Err(Failure::retry(self.first_byte_timeout())),
        }
    }

    async fn attempt_inner(&self, body: &Value) -> Result<(SseState, LlmDelta), Failure> {
        let started = Instant::now();
        let scrub = self.scrub();
        let mut rb = self
            .client
            .post(self.endpoint.clone())
            .header(ACCEPT, "text/event-stream")
            .json(body);
        if let Some(a) = &self.auth {
            rb = rb.header(AUTHORIZATION, a.clone());
        }
        let resp = match rb.send().await {
            Err(e) => return Err(self.transport_failure(e)),
            Ok(r) => r,
        };
        let status = resp.status();
        if !status.is_success() {
            return Err(self.status_failure(resp).await);
        }
        let is_json = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.trim_start().starts_with("application/json"));
        let mut state = if is_json {
            tracing::debug!(llm = %self.name, "endpoint answered without streaming; decoding one JSON document");
            let text = read_limited(resp, self.max_output.saturating_mul(4), self.first_byte)
                .await
                .map_err(|e| match e {
                    ReadError::Timeout => Failure::retry(self.first_byte_timeout()),
                    ReadError::Transport(e) => Failure::retry(LlmError::Connection(
                        scrub.apply(&format!("the answer broke off: {}", error_chain(&e))),
                    )),
                })?;
            let mut acc = Accumulator::default();
            acc.feed_document(&text)
                .map_err(|e| Failure::fatal(scrub.error(e)))?;
            SseState::finished_with(acc, scrub.clone())
        } else {
            let bytes: BoxStream<'static, reqwest::Result<Bytes>> = resp.bytes_stream().boxed();
            SseState {
                events: Some(bytes.eventsource()),
                acc: Accumulator::default(),
                // Before the first delta only the first-byte limit applies.
                idle: None,
                deadline: started + self.max_stream,
                max_stream: self.max_stream,
                max_output: self.max_output,
                scrub: scrub.clone(),
                permit: None,
            }
        };
        match state.next_item().await {
            Some(Ok(first)) => {
                state.idle = Some(self.stall);
                Ok((state, first))
            }
            Some(Err(Broken::Retryable(e))) => Err(Failure::retry(e)),
            Some(Err(Broken::Fatal(e))) => Err(Failure::fatal(e)),
            None => Err(Failure::fatal(LlmError::Protocol(
                "stream ended early, before any answer".into(),
            ))),
        }
    }

    fn transport_failure(&self, e: reqwest::Error) -> Failure {
        if e.is_timeout() {
            return Failure::retry(LlmError::Timeout {
                phase: TimeoutPhase::Connect,
                ms: self.timeout.as_millis() as u64,
            });
        }
        let msg = format!(
            "POST {}: {}",
            display_url(&self.endpoint),
            error_chain(&e.without_url())
        );
        Failure::retry(LlmError::Connection(self.scrub().apply(&msg)))
    }

    async fn status_failure(&self, resp: reqwest::Response) -> Failure {
        let status = resp.status();
        let retry_after = retry_after(resp.headers());
        let text = read_limited(resp, MAX_ERROR_BODY, self.first_byte)
            .await
            .unwrap_or_default();
        let detail = ErrorDetail::parse(&text);
        let msg = self.scrub().apply(&detail.describe(status));
        let plain = self.scrub().apply(&detail.describe_plain());
        tracing::warn!(llm = %self.name, status = status.as_u16(), message = %msg, "model request failed");
        let model = self.model.as_deref().unwrap_or("(no model set)");
        match status.as_u16() {
            401 | 403 => Failure::fatal(LlmError::Auth(msg)),
            404 => Failure::fatal(LlmError::UnknownModel(format!(
                "'{model}' at {} ({msg}); check model and base_url",
                display_url(&self.endpoint)
            ))),
            429 => {
                let err = LlmError::RateLimited(msg);
                // An exhausted quota does not come back by waiting; nor is a long
                // Retry-After worth blocking on.
                if detail.is_quota() || retry_after.is_some_and(|d| d > MAX_RETRY_AFTER) {
                    Failure::fatal(err)
                } else {
                    Failure {
                        error: err,
                        retry: true,
                        retry_after,
                    }
                }
            }
            408 | 500..=599 => Failure {
                error: LlmError::Status {
                    status: status.as_u16(),
                    message: plain,
                },
                retry: true,
                retry_after: retry_after.filter(|d| *d <= MAX_RETRY_AFTER),
            },
            _ if detail.is_model_not_found() => {
                Failure::fatal(LlmError::UnknownModel(format!("'{model}' ({msg})")))
            }
            _ => Failure::fatal(LlmError::Refused(msg)),
        }
    }

    fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let mut rng = rand::rng();
        match retry_after {
            Some(d) => d + Duration::from_millis(rng.random_range(0..=100)),
            None => {
                let exp = FIRST_BACKOFF.saturating_mul(2u32.saturating_pow(attempt.min(16)));
                let base = exp.min(MAX_BACKOFF);
                let jitter_ms = rng.random_range(0..=(base.as_millis() as u64 / 2).max(1));
                base + Duration::from_millis(jitter_ms)
            }
        }
    }
}

#[async_trait::async_trait]
impl LlmProvider for OpenAiProvider {
    fn metrics(&self) -> Option<Arc<ProviderMetrics>> {
        Some(self.metrics.clone())
    }

    async fn chat(&self, req: ChatRequest) -> Result<DeltaStream, LlmError> {
        let body = self.request_body(&req);
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| LlmError::Connection("the provider is shutting down".into()))?;
        tracing::debug!(
            llm = %self.name,
            model = self.model.as_deref().unwrap_or(""),
            messages = req.messages.len(),
            tools = req.tools.len(),
            "chat request"
        );
        let mut attempt = 0u32;
        let mut last: Option<LlmError> = None;
        loop {
            let probe = match self.breaker.admit() {
                Admit::Go { probe } => probe,
                Admit::Reject { retry_in } => {
                    self.metrics.record(Outcome::BreakerOpen, None);
                    // Mid-retries, the provider's own last answer says more than the breaker.
                    let e = last.take().unwrap_or_else(|| {
                        LlmError::Unavailable(format!(
                            "[llm.{}] failed too many times in a row; the next try is in {} ms",
                            self.name,
                            retry_in.as_millis()
                        ))
                    });
                    tracing::warn!(llm = %self.name, error = %e, "circuit breaker open; failing at once");
                    return Err(e);
                }
            };
            let mut call = Call {
                metrics: self.metrics.clone(),
                breaker: self.breaker.clone(),
                started: Instant::now(),
                probe,
                ended: false,
            };
            match self.attempt(&body).await {
                Ok((mut state, first)) => {
                    call.first_delta();
                    if let LlmDelta::Done { usage, .. } = &first {
                        call.tokens(*usage);
                        call.end(Outcome::Ok);
                    }
                    state.permit = Some(permit);
                    let rest = stream::unfold((state, call), |(mut st, mut call)| async move {
                        let item = st.next_item().await?.map_err(Broken::into_error);
                        match &item {
                            Ok(LlmDelta::Done { usage, .. }) => {
                                call.tokens(*usage);
                                call.end(Outcome::Ok);
                            }
                            Ok(_) => {}
                            Err(e) => call.end(Outcome::of(e)),
                        }
                        Some((item, (st, call)))
                    });
                    return Ok(stream::iter([Ok(first)]).chain(rest).boxed());
                }
                Err(f) if f.retry && attempt < self.max_retries => {
                    call.end(Outcome::of(&f.error));
                    self.metrics.retry();
                    let delay = self.backoff(attempt, f.retry_after);
                    attempt += 1;
                    tracing::warn!(
                        llm = %self.name,
                        attempt,
                        delay_ms = delay.as_millis() as u64,
                        error = %f.error,
                        "retrying model request"
                    );
                    tokio::time::sleep(delay).await;
                    last = Some(f.error);
                }
                Err(f) => {
                    call.end(Outcome::of(&f.error));
                    tracing::warn!(llm = %self.name, error = %f.error, attempts = attempt + 1, "model request failed");
                    return Err(f.error);
                }
            }
        }
    }
}

/// One request's record: its outcome and latency go to the metrics and the breaker exactly
/// once, when it ends; a request dropped before that (cancel) counts as cancelled.
struct Call {
    metrics: Arc<ProviderMetrics>,
    breaker: Arc<Breaker>,
    started: Instant,
    probe: bool,
    ended: bool,
}

impl Call {
    fn first_delta(&self) {
        self.metrics
            .first_delta(self.started.elapsed().as_secs_f64());
        self.breaker.on_success();
    }

    fn tokens(&self, u: Usage) {
        self.metrics.tokens(u);
    }

    fn end(&mut self, outcome: Outcome) {
        if self.ended {
            return;
        }
        self.ended = true;
        self.metrics
            .record(outcome, Some(self.started.elapsed().as_secs_f64()));
        if outcome.is_provider_failure() {
            self.breaker.on_failure();
        } else if outcome == Outcome::Cancelled {
            if self.probe {
                self.breaker.abandon_probe();
            }
        } else {
            self.breaker.on_success();
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.end(Outcome::Cancelled);
    }
}

/// Why an attempt failed, and whether another attempt may help.
#[derive(Debug)]
struct Failure {
    error: LlmError,
    retry: bool,
    retry_after: Option<Duration>,
}

impl Failure {
    fn fatal(error: LlmError) -> Self {
        Failure {
            error,
            retry: false,
            retry_after: None,
        }
    }
    fn retry(error: LlmError) -> Self {
        Failure {
            error,
            retry: true,
            retry_after: None,
        }
    }
}

/// A failure while reading the stream.
#[derive(Debug)]
enum Broken {
    /// The connection broke: worth another attempt if nothing was handed out yet.
    Retryable(LlmError),
    Fatal(LlmError),
}

impl Broken {
    fn into_error(self) -> LlmError {
        match self {
            Broken::Retryable(e) | Broken::Fatal(e) => e,
        }
    }
}

/// Removes the API key from text that came from elsewhere.
#[derive(Debug, Clone, Default)]
struct Scrubber(Option<Arc<str>>);

impl Scrubber {
    fn apply(&self, text: &str) -> String {
        match self.0.as_deref() {
            Some(k) if !k.is_empty() => text.replace(k, "[redacted]"),
            _ => text.to_string(),
        }
    }

    fn error(&self, e: LlmError) -> LlmError {
        match e {
            LlmError::Auth(m) => LlmError::Auth(self.apply(&m)),
            LlmError::UnknownModel(m) => LlmError::UnknownModel(self.apply(&m)),
            LlmError::RateLimited(m) => LlmError::RateLimited(self.apply(&m)),
            LlmError::Connection(m) => LlmError::Connection(self.apply(&m)),
            LlmError::Refused(m) => LlmError::Refused(self.apply(&m)),
            LlmError::Protocol(m) => LlmError::Protocol(self.apply(&m)),
            LlmError::NotConfigured(m) => LlmError::NotConfigured(self.apply(&m)),
            LlmError::Status { status, message } => LlmError::Status {
                status,
                message: self.apply(&message),
            },
            LlmError::TooLong(m) => LlmError::TooLong(self.apply(&m)),
            LlmError::Unavailable(m) => LlmError::Unavailable(self.apply(&m)),
            e @ LlmError::Timeout { .. } => e,
        }
    }
}

type SseEvents = EventStream<BoxStream<'static, reqwest::Result<Bytes>>>;

/// The live side of a streamed answer. Owns the response body (dropping it aborts the request)
/// and the concurrency permit.
struct SseState {
    events: Option<SseEvents>,
    acc: Accumulator,
    /// Longest silence between chunks (`None` before the first delta).
    idle: Option<Duration>,
    /// The whole answer must end by then (`max_stream_ms`).
    deadline: Instant,
    max_stream: Duration,
    max_output: usize,
    scrub: Scrubber,
    permit: Option<OwnedSemaphorePermit>,
}

impl SseState {
    fn finished_with(acc: Accumulator, scrub: Scrubber) -> Self {
        SseState {
            events: None,
            acc,
            idle: None,
            deadline: Instant::now(),
            max_stream: Duration::ZERO,
            max_output: usize::MAX,
            scrub,
            permit: None,
        }
    }

    /// Release the connection and the permit.
    fn close(&mut self) {
        self.events = None;
        self.permit = None;
    }

    /// The next delta, an error, or `None` after `Done` (or after an error).
    async fn next_item(&mut self) -> Option<Result<LlmDelta, Broken>> {
        loop {
            if let Some(d) = self.acc.pending.pop_front() {
                if matches!(d, LlmDelta::Done { .. }) {
                    self.close();
                    self.acc.pending.clear();
                }
                return Some(Ok(d));
            }
            let events = self.events.as_mut()?;
            let limit = match self.idle {
                Some(idle) => (Instant::now() + idle).min(self.deadline),
                None => self.deadline,
            };
            let next =
                tokio::time::timeout_at(tokio::time::Instant::from_std(limit), events.next()).await;
            let step = match next {
                Err(_) if Instant::now() >= self.deadline => {
                    Err(Broken::Fatal(LlmError::TooLong(format!(
                        "still streaming after {} ms (max_stream_ms)",
                        self.max_stream.as_millis()
                    ))))
                }
                Err(_) => Err(Broken::Fatal(LlmError::Timeout {
                    phase: TimeoutPhase::Stall,
                    ms: self.idle.unwrap_or_default().as_millis() as u64,
                })),
                Ok(None) => self.acc.end_of_stream().map_err(|e| {
                    // Nothing was read that makes sense yet: the connection died early.
                    if self.acc.produced == 0 {
                        Broken::Retryable(e)
                    } else {
                        Broken::Fatal(e)
                    }
                }),
                Ok(Some(Ok(event))) => match self.acc.feed(&event.data) {
                    Err(e) => Err(Broken::Fatal(e)),
                    Ok(()) if self.acc.chars > self.max_output => {
                        Err(Broken::Fatal(LlmError::TooLong(format!(
                            "more than {} characters (max_output_chars)",
                            self.max_output
                        ))))
                    }
                    Ok(()) => Ok(()),
                },
                Ok(Some(Err(EventStreamError::Transport(e)))) => {
                    Err(Broken::Retryable(LlmError::Connection(format!(
                        "the stream broke off: {}",
                        error_chain(&e.without_url())
                    ))))
                }
                Ok(Some(Err(e))) => Err(Broken::Fatal(LlmError::Protocol(format!(
                    "the event stream is malformed: {e}"
                )))),
            };
            if let Err(b) = step {
                self.close();
                let scrub = &self.scrub;
                return Some(Err(match b {
                    Broken::Retryable(e) => Broken::Retryable(scrub.error(e)),
                    Broken::Fatal(e) => Broken::Fatal(scrub.error(e)),
                }));
            }
            if self.acc.done && self.acc.pending.is_empty() {
                self.close();
                return None;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding chunks

#[derive(Debug, Default, Deserialize)]
struct WireChunk {
    #[serde(default)]
    choices: Vec<WireChoice>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
struct WireChoice {
    #[serde(default)]
    index: Option<u64>,
    /// `delta` when streaming, `message` in a whole answer.
    #[serde(default, alias = "message")]
    delta: Option<WireDelta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct WireDelta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    reasoning_content: Option<String>,
    #[serde(default)]
    reasoning: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<WireToolCall>>,
}

#[derive(Debug, Default, Deserialize)]
struct WireToolCall {
    #[serde(default)]
    index: Option<usize>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<WireFunction>,
}

#[derive(Debug, Default, Deserialize)]
struct WireFunction {
    #[serde(default)]
    name: Option<String>,
    /// A string in the protocol; some servers send an object in whole answers.
    #[serde(default)]
    arguments: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    total_tokens: Option<u64>,
}

/// One tool call being assembled.
#[derive(Debug, Default)]
struct CallState {
    index: usize,
    id: Option<String>,
    name: Option<String>,
    started: bool,
    /// Argument pieces that arrived before the name.
    early_args: String,
    /// All argument text so far (checked to be whole JSON when the answer ends).
    args: String,
}

/// Turns `data:` payloads into deltas. Pure: no I/O, so it is tested on its own.
#[derive(Debug, Default)]
struct Accumulator {
    pending: VecDeque<LlmDelta>,
    calls: Vec<CallState>,
    usage: Option<Usage>,
    finish_reason: Option<String>,
    /// `Done` was queued.
    done: bool,
    /// Deltas queued so far (text, reasoning, tool pieces).
    produced: usize,
    /// Characters of text, reasoning and tool arguments so far.
    chars: usize,
}

impl Accumulator {
    /// One SSE event's data.
    fn feed(&mut self, data: &str) -> Result<(), LlmError> {
        if self.done {
            return Ok(());
        }
        let data = data.trim();
        if data.is_empty() {
            return Ok(());
        }
        if data == "[DONE]" {
            return self.finish();
        }
        let chunk: WireChunk = serde_json::from_str(data).map_err(|e| {
            LlmError::Protocol(format!("unreadable chunk ({e}): {}", clip(data, 200)))
        })?;
        self.apply(chunk)
    }

    /// A whole (non-streamed) answer.
    fn feed_document(&mut self, text: &str) -> Result<(), LlmError> {
        let chunk: WireChunk = serde_json::from_str(text).map_err(|e| {
            LlmError::Protocol(format!("unreadable answer ({e}): {}", clip(text, 200)))
        })?;
        self.apply(chunk)?;
        if self.finish_reason.is_none() && self.produced == 0 {
            return Err(LlmError::Protocol(format!(
                "the answer has no choices: {}",
                clip(text, 200)
            )));
        }
        self.finish()
    }

    fn apply(&mut self, chunk: WireChunk) -> Result<(), LlmError> {
        if let Some(err) = chunk.error {
            let detail = ErrorDetail::from_value(&err);
            let msg = detail.describe_plain();
            return Err(if detail.is_model_not_found() {
                LlmError::UnknownModel(msg)
            } else {
                LlmError::Refused(msg)
            });
        }
        if let Some(u) = chunk.usage {
            let prompt = u.prompt_tokens.unwrap_or(0);
            let completion = u.completion_tokens.unwrap_or(0);
            self.usage = Some(Usage {
                prompt_tokens: prompt,
                completion_tokens: completion,
                total_tokens: u.total_tokens.unwrap_or(prompt + completion),
            });
        }
        for choice in chunk.choices {
            // We always ask for one choice; ignore any others.
            if choice.index.unwrap_or(0) != 0 {
                continue;
            }
            if let Some(delta) = choice.delta {
                self.apply_delta(delta)?;
            }
            if let Some(r) = choice.finish_reason.filter(|r| !r.is_empty()) {
                self.finish_reason = Some(r);
            }
        }
        Ok(())
    }

    fn push(&mut self, d: LlmDelta) {
        self.produced += 1;
        self.pending.push_back(d);
    }

    fn apply_delta(&mut self, delta: WireDelta) -> Result<(), LlmError> {
        let reasoning = delta
            .reasoning_content
            .filter(|r| !r.is_empty())
            .or(delta.reasoning.filter(|r| !r.is_empty()));
        if let Some(r) = reasoning {
            self.chars += r.chars().count();
            self.push(LlmDelta::Reasoning(r));
        }
        if let Some(t) = delta.content.filter(|t| !t.is_empty()) {
            self.chars += t.chars().count();
            self.push(LlmDelta::Text(t));
        }
        if let Some(t) = delta.refusal.filter(|t| !t.is_empty()) {
            self.chars += t.chars().count();
            self.push(LlmDelta::Text(t));
        }
        for (pos, call) in delta.tool_calls.unwrap_or_default().into_iter().enumerate() {
            self.apply_tool_piece(pos, call);
        }
        Ok(())
    }

    /// Which `calls` entry a piece belongs to.
    fn slot_for(&mut self, pos: usize, piece: &WireToolCall) -> usize {
        let index = match piece.index {
            Some(i) => i,
            // No index (some servers): a new id starts a new call, otherwise it continues the
            // call at this position, or the latest one.
            None => match &piece.id {
                Some(id)
                    if !self
                        .calls
                        .iter()
                        .any(|c| c.id.as_deref() == Some(id.as_str())) =>
                {
                    self.calls.iter().map(|c| c.index + 1).max().unwrap_or(0)
                }
                Some(id) => self
                    .calls
                    .iter()
                    .find(|c| c.id.as_deref() == Some(id.as_str()))
                    .map_or(pos, |c| c.index),
                None => self.calls.last().map_or(pos, |c| c.index),
            },
        };
        match self.calls.iter().position(|c| c.index == index) {
            Some(slot) => slot,
            None => {
                self.calls.push(CallState {
                    index,
                    ..CallState::default()
                });
                self.calls.len() - 1
            }
        }
    }

    fn apply_tool_piece(&mut self, pos: usize, piece: WireToolCall) {
        let slot = self.slot_for(pos, &piece);
        let (name, args) = match piece.function {
            Some(f) => (f.name, f.arguments),
            None => (None, None),
        };
        let args = match args {
            Some(Value::String(s)) => s,
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        };
        self.chars += args.chars().count();
        let mut out = Vec::new();
        {
            let call = &mut self.calls[slot];
            call.args.push_str(&args);
            if call.id.is_none() {
                call.id = piece.id.filter(|i| !i.is_empty());
            }
            if call.name.is_none() {
                call.name = name.filter(|n| !n.is_empty());
            }
            if !call.started {
                if let Some(name) = call.name.clone() {
                    call.started = true;
                    let id = call
                        .id
                        .clone()
                        .unwrap_or_else(|| format!("call_{}", call.index));
                    out.push(LlmDelta::ToolCallStart {
                        index: call.index,
                        id,
                        name,
                    });
                    if !call.early_args.is_empty() {
                        out.push(LlmDelta::ToolCallArgs {
                            index: call.index,
                            delta: std::mem::take(&mut call.early_args),
                        });
                    }
                }
            }
            if !args.is_empty() {
                if call.started {
                    out.push(LlmDelta::ToolCallArgs {
                        index: call.index,
                        delta: args,
                    });
                } else {
                    call.early_args.push_str(&args);
                }
            }
        }
        for d in out {
            self.push(d);
        }
    }

    /// Queue `Done`.
    fn finish(&mut self) -> Result<(), LlmError> {
        if self.done {
            return Ok(());
        }
        if let Some(c) = self.calls.iter().find(|c| !c.started) {
            return Err(LlmError::Protocol(format!(
                "tool call {} never got a function name",
                c.index
            )));
        }
        for c in &self.calls {
            let args = c.args.trim();
            if !args.is_empty() && serde_json::from_str::<serde::de::IgnoredAny>(args).is_err() {
                return Err(LlmError::Protocol(format!(
                    "the arguments of tool call {} ({}) are not complete JSON{}: {}",
                    c.index,
                    c.name.as_deref().unwrap_or("?"),
                    match self.finish_reason.as_deref() {
                        Some("length") => " (the answer hit max_tokens)",
                        _ => "",
                    },
                    clip(args, 200)
                )));
            }
        }
        self.done = true;
        self.pending.push_back(LlmDelta::Done {
            usage: self.usage.unwrap_or_default(),
            finish_reason: self.finish_reason.clone(),
        });
        Ok(())
    }

    /// The byte stream ended.
    fn end_of_stream(&mut self) -> Result<(), LlmError> {
        if self.done {
            return Ok(());
        }
        if self.finish_reason.is_some() {
            // Some servers stop after the finish reason without `[DONE]`.
            return self.finish();
        }
        Err(LlmError::Protocol(
            "stream ended early, before [DONE] or a finish_reason: the answer is incomplete".into(),
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Errors from the provider

/// What an error body says.
#[derive(Debug, Default)]
struct ErrorDetail {
    message: Option<String>,
    code: Option<String>,
    kind: Option<String>,
    raw: String,
}

impl ErrorDetail {
    fn parse(body: &str) -> Self {
        match serde_json::from_str::<Value>(body) {
            Ok(v) => {
                let inner = v.get("error").cloned().unwrap_or(v);
                let mut d = Self::from_value(&inner);
                d.raw = clip(body.trim(), MAX_QUOTED);
                d
            }
            Err(_) => ErrorDetail {
                raw: clip(body.trim(), MAX_QUOTED),
                ..Default::default()
            },
        }
    }

    fn from_value(v: &Value) -> Self {
        let text = |k: &str| match v.get(k) {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        match v {
            Value::String(s) => ErrorDetail {
                message: Some(s.clone()),
                raw: clip(s, MAX_QUOTED),
                ..Default::default()
            },
            _ => ErrorDetail {
                message: text("message")
                    .or_else(|| text("detail"))
                    .or_else(|| text("error")),
                code: text("code"),
                kind: text("type"),
                raw: clip(&v.to_string(), MAX_QUOTED),
            },
        }
    }

    /// The provider's message, or the raw body.
    fn describe_plain(&self) -> String {
        let mut s = match &self.message {
            Some(m) => clip(m, MAX_QUOTED),
            None if !self.raw.is_empty() => self.raw.clone(),
            None => "no details given".to_string(),
        };
        if let Some(c) = &self.code {
            if !s.contains(c.as_str()) {
                s.push_str(&format!(" [{c}]"));
            }
        }
        s
    }

    fn describe(&self, status: StatusCode) -> String {
        format!("HTTP {}: {}", status, self.describe_plain())
    }

    fn all_text(&self) -> String {
        [
            self.message.as_deref(),
            self.code.as_deref(),
            self.kind.as_deref(),
            Some(self.raw.as_str()),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
    }

    fn is_model_not_found(&self) -> bool {
        let t = self.all_text();
        t.contains("model_not_found")
            || (t.contains("model")
                && (t.contains("not found")
                    || t.contains("does not exist")
                    || t.contains("unknown model")))
    }

    fn is_quota(&self) -> bool {
        self.all_text().contains("insufficient_quota")
    }
}

enum ReadError {
    Timeout,
    Transport(reqwest::Error),
}

/// Read at most `limit` bytes of a body, each chunk within `idle`.
async fn read_limited(
    mut resp: reqwest::Response,
    limit: usize,
    idle: Duration,
) -> Result<String, ReadError> {
    let mut buf = Vec::new();
    loop {
        match tokio::time::timeout(idle, resp.chunk()).await {
            Err(_) => return Err(ReadError::Timeout),
            Ok(Err(e)) => return Err(ReadError::Transport(e)),
            Ok(Ok(None)) => break,
            Ok(Ok(Some(b))) => {
                buf.extend_from_slice(&b);
                if buf.len() >= limit {
                    buf.truncate(limit);
                    break;
                }
            }
        }
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Seconds to wait from `retry-after-ms` or `Retry-After` (delta-seconds form).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let num = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|n| n.is_finite() && *n >= 0.0)
    };
    if let Some(ms) = num("retry-after-ms") {
        return Some(Duration::from_secs_f64(ms.min(1e9) / 1000.0));
    }
    num("retry-after").map(|s| Duration::from_secs_f64(s.min(1e9)))
}

/// An error and its sources, joined.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        let t = src.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = src.source();
    }
    s
}

/// The URL without user info or query (they may carry credentials).
fn display_url(u: &Url) -> String {
    let mut u = u.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.to_string()
}

fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max).collect();
    out.push('…');
    out
}

// ---------------------------------------------------------------------------------------------
// Encoding requests

/// A float as JSON without f32 noise (0.7, not 0.699999988079071).
fn f32_json(t: f32) -> Value {
    t.to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

fn wire_message(m: &ChatMessage) -> Value {
    let mut o = Map::new();
    o.insert("role".into(), json!(m.role.as_str()));
    match m.role {
        Role::Assistant if !m.tool_calls.is_empty() => {
            o.insert(
                "content".into(),
                if m.content.is_empty() {
                    Value::Null
                } else {
                    json!(m.content)
                },
            );
            let calls: Vec<Value> = m
                .tool_calls
                .iter()
                .map(|c| {
                    json!({
                        "id": c.id,
                        "type": "function",
                        "function": {"name": c.name, "arguments": c.arguments},
                    })
                })
                .collect();
            o.insert("tool_calls".into(), Value::Array(calls));
        }
        Role::Tool => {
            o.insert("content".into(), json!(m.content));
            o.insert(
                "tool_call_id".into(),
                json!(m.tool_call_id.clone().unwrap_or_default()),
            );
        }
        _ => {
            o.insert("content".into(), json!(m.content));
        }
    }
    Value::Object(o)
}

fn wire_tool(t: &ToolDef) -> Value {
    let parameters = if t.parameters.is_object() {
        t.parameters.clone()
    } else {
        json!({"type": "object", "properties": {}})
    };
    json!({
        "type": "function",
        "function": {"name": t.name, "description": t.description, "parameters": parameters},
    })
}

fn json_instruction(schema: &Value) -> String {
    let empty = match schema {
        Value::Null => true,
        Value::Object(o) => o.is_empty(),
        _ => false,
    };
    if empty {
        "Answer with a single JSON object and nothing else.".to_string()
    } else {
        format!(
            "Answer with a single JSON object and nothing else. It must match this JSON Schema:\n{schema}"
        )
    }
}

/// Append `line` to the leading system message, or add one.
fn add_system_line(messages: &mut Vec<Value>, line: &str) {
    if let Some(first) = messages.first_mut() {
        if first.get("role").and_then(Value::as_str) == Some("system") {
            let old = first
                .get("content")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let joined = if old.trim().is_empty() {
                line.to_string()
            } else {
                format!("{old}\n\n{line}")
            };
            first["content"] = json!(joined);
            return;
        }
    }
    messages.insert(0, json!({"role": "system", "content": line}));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LlmProviderKind;
    use crate::llm::ToolCall;

    fn feed_all(chunks: &[&str]) -> (Accumulator, Result<(), LlmError>) {
        let mut acc = Accumulator::default();
        for c in chunks {
            if let Err(e) = acc.feed(c) {
                return (acc, Err(e));
            }
        }
        (acc, Ok(()))
    }

    fn cfg(json_schema: bool) -> LlmConfig {
        LlmConfig {
            provider: LlmProviderKind::Openai,
            base_url: Some("http://127.0.0.1:9/v1/".into()),
            model: Some("m1".into()),
            api_key_env: None,
            temperature: Some(0.7),
            max_tokens: Some(64),
            timeout_seconds: 5,
            max_concurrency: 2,
            max_retries: 1,
            json_schema,
            ..LlmConfig::new(LlmProviderKind::Openai)
        }
    }

    #[test]
    fn text_reasoning_usage_and_done() {
        let (mut acc, r) = feed_all(&[
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"reasoning_content":"hmm"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"reasoning":"ok"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"Hi"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#,
            "[DONE]",
        ]);
        r.unwrap();
        let got: Vec<_> = acc.pending.drain(..).collect();
        assert_eq!(
            got,
            vec![
                LlmDelta::Reasoning("hmm".into()),
                LlmDelta::Reasoning("ok".into()),
                LlmDelta::Text("Hi".into()),
                LlmDelta::Done {
                    usage: Usage {
                        prompt_tokens: 3,
                        completion_tokens: 2,
                        total_tokens: 5
                    },
                    finish_reason: Some("stop".into())
                }
            ]
        );
    }

    #[test]
    fn tool_calls_in_pieces() {
        let (mut acc, r) = feed_all(&[
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"c1","type":"function","function":{"name":"get_weather","arguments":""}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"ci"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":1,"function":{"arguments":"{}"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":1,"id":"c2","function":{"name":"now"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"ty\":\"Oslo\"}"}}]}}]}"#,
            r#"{"choices":[{"delta":{},"finish_reason":"tool_calls"}]}"#,
        ]);
        r.unwrap();
        acc.end_of_stream().unwrap();
        let got: Vec<_> = acc.pending.drain(..).collect();
        assert_eq!(
            got,
            vec![
                LlmDelta::ToolCallStart {
                    index: 0,
                    id: "c1".into(),
                    name: "get_weather".into()
                },
                LlmDelta::ToolCallArgs {
                    index: 0,
                    delta: "{\"ci".into()
                },
                LlmDelta::ToolCallStart {
                    index: 1,
                    id: "c2".into(),
                    name: "now".into()
                },
                LlmDelta::ToolCallArgs {
                    index: 1,
                    delta: "{}".into()
                },
                LlmDelta::ToolCallArgs {
                    index: 0,
                    delta: "ty\":\"Oslo\"}".into()
                },
                LlmDelta::Done {
                    usage: Usage::default(),
                    finish_reason: Some("tool_calls".into())
                }
            ]
        );
    }

    #[test]
    fn tool_calls_without_index_are_told_apart_by_id() {
        let (mut acc, r) = feed_all(&[
            r#"{"choices":[{"delta":{"tool_calls":[{"id":"a","function":{"name":"x","arguments":"{}"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"id":"b","function":{"name":"y","arguments":"{}"}}]}}]}"#,
            "[DONE]",
        ]);
        r.unwrap();
        let starts: Vec<_> = acc
            .pending
            .drain(..)
            .filter_map(|d| match d {
                LlmDelta::ToolCallStart { index, name, .. } => Some((index, name)),
                _ => None,
            })
            .collect();
        assert_eq!(starts, vec![(0, "x".to_string()), (1, "y".to_string())]);
    }

    #[test]
    fn early_end_and_bad_chunks_are_errors() {
        let (mut acc, r) = feed_all(&[r#"{"choices":[{"delta":{"content":"par"}}]}"#]);
        r.unwrap();
        let e = acc.end_of_stream().unwrap_err();
        assert!(
            matches!(&e, LlmError::Protocol(m) if m.contains("stream ended early")),
            "{e:?}"
        );

        let (_, r) = feed_all(&[r#"{"choices":[{"delta":{"content":"#]);
        assert!(matches!(r, Err(LlmError::Protocol(_))));

        let (_, r) = feed_all(&[r#"{"error":{"message":"model 'zz' not found"}}"#]);
        assert!(matches!(r, Err(LlmError::UnknownModel(_))), "{r:?}");
        let (_, r) = feed_all(&[r#"{"error":{"message":"content policy"}}"#]);
        assert!(matches!(r, Err(LlmError::Refused(m)) if m.contains("content policy")));

        // A finish reason without [DONE] is a complete answer.
        let (mut acc, r) =
            feed_all(&[r#"{"choices":[{"delta":{"content":"x"},"finish_reason":"length"}]}"#]);
        r.unwrap();
        acc.end_of_stream().unwrap();
        assert!(matches!(
            acc.pending.back(),
            Some(LlmDelta::Done { finish_reason: Some(r), .. }) if r == "length"
        ));
    }

    #[test]
    fn whole_document_fallback() {
        let mut acc = Accumulator::default();
        acc.feed_document(
            r#"{"choices":[{"index":0,"message":{"role":"assistant","content":null,
                "tool_calls":[{"id":"t1","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]},
                "finish_reason":"tool_calls"}],"usage":{"prompt_tokens":1,"completion_tokens":1}}"#,
        )
        .unwrap();
        let got: Vec<_> = acc.pending.drain(..).collect();
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(
            got[1],
            LlmDelta::ToolCallArgs {
                index: 0,
                delta: "{\"a\":1}".into()
            }
        );
        assert!(matches!(
            got[2],
            LlmDelta::Done {
                usage: Usage {
                    total_tokens: 2,
                    ..
                },
                ..
            }
        ));
    }

    #[test]
    fn request_body_shape() {
        let p = OpenAiProvider::from_config("t", &cfg(false)).unwrap();
        assert_eq!(
            p.endpoint.as_str(),
            "http://127.0.0.1:9/v1/chat/completions"
        );
        let mut asked = ChatMessage::assistant("");
        asked.tool_calls.push(ToolCall {
            id: "c1".into(),
            name: "lookup".into(),
            arguments: "{\"q\":1}".into(),
        });
        let req = ChatRequest {
            messages: vec![
                ChatMessage::user("hi"),
                asked,
                ChatMessage::tool_result("c1", "{\"r\":2}"),
            ],
            tools: vec![ToolDef {
                name: "lookup".into(),
                description: "Look things up".into(),
                parameters: Value::Null,
            }],
            response_format: ResponseFormat::Json {
                schema: json!({"type": "object", "properties": {"x": {"type": "string"}}}),
            },
            temperature: None,
            max_tokens: None,
        };
        let b = p.request_body(&req);
        assert_eq!(b["model"], "m1");
        assert_eq!(b["stream"], true);
        assert_eq!(b["stream_options"]["include_usage"], true);
        assert_eq!(b["temperature"].to_string(), "0.7");
        assert_eq!(b["max_tokens"], 64);
        assert_eq!(b["response_format"], json!({"type": "json_object"}));
        let msgs = b["messages"].as_array().unwrap();
        assert_eq!(msgs[0]["role"], "system");
        assert!(msgs[0]["content"].as_str().unwrap().contains("\"x\""));
        assert_eq!(msgs[2]["content"], Value::Null);
        assert_eq!(msgs[2]["tool_calls"][0]["function"]["name"], "lookup");
        assert_eq!(msgs[3]["tool_call_id"], "c1");
        assert_eq!(b["tools"][0]["type"], "function");
        assert_eq!(b["tools"][0]["function"]["parameters"]["type"], "object");

        let p = OpenAiProvider::from_config("t", &cfg(true)).unwrap();
        let b = p.request_body(&req);
        assert_eq!(b["response_format"]["type"], "json_schema");
        assert_eq!(b["response_format"]["json_schema"]["name"], "output");
        assert_eq!(b["messages"][0]["role"], "user");
    }

    #[test]
    fn error_bodies() {
        let d =
            ErrorDetail::parse(r#"{"error":"model \"llama9\" not found, try pulling it first"}"#);
        assert!(d.is_model_not_found());
        let d = ErrorDetail::parse(
            r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#,
        );
        assert!(d.is_quota());
        assert!(d
            .describe(StatusCode::TOO_MANY_REQUESTS)
            .contains("exceeded"));
        let d = ErrorDetail::parse("<html>oops</html>");
        assert!(d.describe_plain().contains("oops"));
    }

    #[test]
    fn scrubber_and_debug_hide_the_key() {
        let s = Scrubber(Some(Arc::from("sk-123")));
        assert_eq!(s.apply("bad key sk-123!"), "bad key [redacted]!");
        let p = OpenAiProvider::from_config("t", &cfg(false)).unwrap();
        assert!(format!("{p:?}").contains("<none>"));
    }

    #[test]
    fn retry_after_headers() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", HeaderValue::from_static("150"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(150)));
        let h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
    }
}
