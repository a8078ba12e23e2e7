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
//! If the endpoint ignores `stream: true` and answers with one JSON document, that document is
//! decoded the same way (the non-streaming fallback).
//!
//! The API key is read once from the variable named by `api_key_env`, sent as a bearer token
//! marked sensitive, and scrubbed from every error message; it is never logged.

mod attempt;
mod call;
mod decode;
mod errors;
mod request;
mod scrub;
mod stream;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::HeaderValue;
use reqwest::Url;
use tokio::sync::Semaphore;

use super::breaker::{Admit, Breaker};
use super::metrics::{Outcome, ProviderMetrics};
use super::{ChatRequest, DeltaStream, LlmError, LlmProvider, TimeoutPhase};
use crate::config::LlmConfig;
use call::Call;
use scrub::Scrubber;

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

    /// The error of a call the open breaker refuses. Mid-retries, the provider's own last
    /// answer says more than the breaker.
    fn rejected(&self, retry_in: Duration, last: Option<LlmError>) -> LlmError {
        self.metrics.record(Outcome::BreakerOpen, None);
        let e = last.unwrap_or_else(|| {
            LlmError::Unavailable(format!(
                "[llm.{}] failed too many times in a row; the next try is in {} ms",
                self.name,
                retry_in.as_millis()
            ))
        });
        tracing::warn!(llm = %self.name, error = %e, "circuit breaker open; failing at once");
        e
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
                Admit::Reject { retry_in } => return Err(self.rejected(retry_in, last.take())),
            };
            let mut call = Call::start(self.metrics.clone(), self.breaker.clone(), probe);
            match self.attempt(&body).await {
                Ok((mut state, first)) => {
                    state.permit = Some(permit);
                    return Ok(call::answer(state, call, first));
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
