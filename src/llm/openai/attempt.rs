//! One attempt at a call: send the request, check the status, read up to the first delta; and
//! what a failed attempt means for the next one (retry or not, after how long).

use std::time::{Duration, Instant};

use bytes::Bytes;
use eventsource_stream::Eventsource;
use futures_util::stream::{BoxStream, StreamExt};
use rand::Rng;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use serde_json::Value;

use super::decode::Accumulator;
use super::errors::{display_url, error_chain, read_limited, retry_after, ErrorDetail, ReadError};
use super::stream::{Broken, SseState};
use super::OpenAiProvider;
use crate::llm::{LlmDelta, LlmError, TimeoutPhase};

/// First retry delay; doubled on every further attempt.
pub(super) const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Longest computed backoff.
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A `Retry-After` longer than this is not waited for: the call fails as rate limited.
pub(super) const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// How much of an error body is read.
pub(super) const MAX_ERROR_BODY: usize = 64 * 1024;

impl OpenAiProvider {
    /// One attempt: send, check the status, read up to the first delta, all within
    /// `first_byte_timeout_ms`.
    pub(super) async fn attempt(&self, body: &Value) -> Result<(SseState, LlmDelta), Failure> {
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

    pub(super) fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
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

/// Why an attempt failed, and whether another attempt may help.
#[derive(Debug)]
pub(super) struct Failure {
    pub(super) error: LlmError,
    pub(super) retry: bool,
    pub(super) retry_after: Option<Duration>,
}

impl Failure {
    pub(super) fn fatal(error: LlmError) -> Self {
        Failure {
            error,
            retry: false,
            retry_after: None,
        }
    }
    pub(super) fn retry(error: LlmError) -> Self {
        Failure {
            error,
            retry: true,
            retry_after: None,
        }
    }
}
