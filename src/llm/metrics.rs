//! Per-provider figures for `/metrics`: requests by outcome, latency, tokens, retries and the
//! breaker's state. Each provider owns one [`ProviderMetrics`]; [`crate::metrics::Metrics`]
//! renders them all, labelled `provider="<name>"`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use super::breaker::Breaker;
use super::{LlmError, Usage};
use crate::histogram::Histogram;

/// How one request (one HTTP attempt, or a call refused by the breaker) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The answer ended properly.
    Ok,
    /// The caller dropped the stream (cancel) before the answer ended.
    Cancelled,
    /// HTTP 429.
    RateLimited,
    /// HTTP 5xx or 408.
    ServerError,
    /// Another HTTP 4xx (key, model, request): the provider is up but refuses.
    ClientError,
    /// First byte or mid-stream silence past its limit, or no connection in time.
    Timeout,
    /// Connection refused, reset, or broken off.
    Connection,
    /// The answer could not be read (malformed SSE, bad JSON, truncated tool-call arguments,
    /// early end).
    Protocol,
    /// Longer than `max_stream_ms` or `max_output_chars` (an endless stream).
    TooLong,
    /// Failed at once: the circuit breaker is open.
    BreakerOpen,
}

impl Outcome {
    pub const ALL: [Outcome; 10] = [
        Outcome::Ok,
        Outcome::Cancelled,
        Outcome::RateLimited,
        Outcome::ServerError,
        Outcome::ClientError,
        Outcome::Timeout,
        Outcome::Connection,
        Outcome::Protocol,
        Outcome::TooLong,
        Outcome::BreakerOpen,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Cancelled => "cancelled",
            Outcome::RateLimited => "rate_limited",
            Outcome::ServerError => "server_error",
            Outcome::ClientError => "client_error",
            Outcome::Timeout => "timeout",
            Outcome::Connection => "connection",
            Outcome::Protocol => "protocol",
            Outcome::TooLong => "too_long",
            Outcome::BreakerOpen => "breaker_open",
        }
    }

    /// The outcome of a request that failed with `e`.
    pub fn of(e: &LlmError) -> Outcome {
        match e {
            LlmError::Auth(_)
            | LlmError::UnknownModel(_)
            | LlmError::Refused(_)
            | LlmError::NotConfigured(_) => Outcome::ClientError,
            LlmError::RateLimited(_) => Outcome::RateLimited,
            LlmError::Status { .. } => Outcome::ServerError,
            LlmError::Timeout { .. } => Outcome::Timeout,
            LlmError::Connection(_) => Outcome::Connection,
            LlmError::Protocol(_) => Outcome::Protocol,
            LlmError::TooLong(_) => Outcome::TooLong,
            LlmError::Unavailable(_) => Outcome::BreakerOpen,
        }
    }

    /// Whether this outcome says the provider is unwell (it counts towards opening the breaker).
    pub fn is_provider_failure(self) -> bool {
        matches!(
            self,
            Outcome::RateLimited
                | Outcome::ServerError
                | Outcome::Timeout
                | Outcome::Connection
                | Outcome::Protocol
        )
    }

    fn slot(self) -> usize {
        Outcome::ALL.iter().position(|o| *o == self).unwrap_or(0)
    }
}

/// The figures of one provider.
#[derive(Default)]
pub struct ProviderMetrics {
    requests: [AtomicU64; 10],
    retries: AtomicU64,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    /// From sending a request to its end (answer complete, failed, or dropped).
    pub(crate) latency: Histogram,
    /// From sending a request to the first delta.
    pub(crate) first_delta: Histogram,
    breaker: std::sync::OnceLock<Arc<Breaker>>,
}

impl std::fmt::Debug for ProviderMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderMetrics").finish_non_exhaustive()
    }
}

impl ProviderMetrics {
    pub fn new(breaker: Option<Arc<Breaker>>) -> Self {
        let m = ProviderMetrics::default();
        if let Some(b) = breaker {
            let _ = m.breaker.set(b);
        }
        m
    }

    pub fn record(&self, outcome: Outcome, seconds: Option<f64>) {
        self.requests[outcome.slot()].fetch_add(1, Relaxed);
        if let Some(s) = seconds {
            self.latency.observe(s);
        }
    }

    pub fn first_delta(&self, seconds: f64) {
        self.first_delta.observe(seconds);
    }

    pub fn retry(&self) {
        self.retries.fetch_add(1, Relaxed);
    }

    pub fn tokens(&self, u: Usage) {
        self.prompt_tokens.fetch_add(u.prompt_tokens, Relaxed);
        self.completion_tokens
            .fetch_add(u.completion_tokens, Relaxed);
    }

    /// Requests that ended with `outcome` so far.
    pub fn requests(&self, outcome: Outcome) -> u64 {
        self.requests[outcome.slot()].load(Relaxed)
    }

    pub fn retries(&self) -> u64 {
        self.retries.load(Relaxed)
    }

    /// (prompt, completion) tokens so far.
    pub fn token_totals(&self) -> (u64, u64) {
        (
            self.prompt_tokens.load(Relaxed),
            self.completion_tokens.load(Relaxed),
        )
    }
}

/// Render every provider's figures as Prometheus text.
pub fn render(out: &mut String, providers: &[(String, Arc<ProviderMetrics>)]) {
    if providers.is_empty() {
        return;
    }
    let _ = writeln!(out, "# HELP parley_llm_requests_total Requests to model providers by how they ended (breaker_open: failed at once, no request sent).\n# TYPE parley_llm_requests_total counter");
    for (name, m) in providers {
        for o in Outcome::ALL {
            let _ = writeln!(
                out,
                "parley_llm_requests_total{{provider=\"{}\",outcome=\"{}\"}} {}",
                esc(name),
                o.label(),
                m.requests(o)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP parley_llm_retries_total Requests sent again after a retryable failure.\n# TYPE parley_llm_retries_total counter"
    );
    for (name, m) in providers {
        let _ = writeln!(
            out,
            "parley_llm_retries_total{{provider=\"{}\"}} {}",
            esc(name),
            m.retries()
        );
    }
    let _ = writeln!(
        out,
        "# HELP parley_llm_tokens_total Tokens reported by model providers.\n# TYPE parley_llm_tokens_total counter"
    );
    for (name, m) in providers {
        let (p, c) = m.token_totals();
        let n = esc(name);
        let _ = writeln!(
            out,
            "parley_llm_tokens_total{{provider=\"{n}\",kind=\"prompt\"}} {p}\nparley_llm_tokens_total{{provider=\"{n}\",kind=\"completion\"}} {c}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP parley_llm_breaker_state Circuit breaker per provider: 0 closed, 1 open, 2 half-open.\n# TYPE parley_llm_breaker_state gauge"
    );
    for (name, m) in providers {
        let s = m.breaker.get().map_or(0, |b| b.state() as u8);
        let _ = writeln!(
            out,
            "parley_llm_breaker_state{{provider=\"{}\"}} {s}",
            esc(name)
        );
    }
    Histogram::render_header(
        out,
        "parley_llm_request_duration_seconds",
        "Model requests, from sending to the end of the answer.",
    );
    for (name, m) in providers {
        m.latency.render_series(
            out,
            "parley_llm_request_duration_seconds",
            &format!("provider=\"{}\"", esc(name)),
        );
    }
    Histogram::render_header(
        out,
        "parley_llm_first_delta_seconds",
        "Model requests, from sending to the first piece of the answer.",
    );
    for (name, m) in providers {
        m.first_delta.render_series(
            out,
            "parley_llm_first_delta_seconds",
            &format!("provider=\"{}\"", esc(name)),
        );
    }
}

/// A label value: backslash, quote and newline escaped.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn renders_labelled_families() {
        let b = Arc::new(Breaker::new(1, Duration::from_secs(60)));
        let m = Arc::new(ProviderMetrics::new(Some(b.clone())));
        m.record(Outcome::Ok, Some(0.2));
        m.record(Outcome::RateLimited, Some(0.01));
        m.record(Outcome::BreakerOpen, None);
        m.retry();
        m.tokens(Usage {
            prompt_tokens: 3,
            completion_tokens: 4,
            total_tokens: 7,
        });
        b.on_failure();
        let mut out = String::new();
        render(&mut out, &[("fast".into(), m)]);
        for line in [
            "parley_llm_requests_total{provider=\"fast\",outcome=\"ok\"} 1",
            "parley_llm_requests_total{provider=\"fast\",outcome=\"rate_limited\"} 1",
            "parley_llm_requests_total{provider=\"fast\",outcome=\"breaker_open\"} 1",
            "parley_llm_requests_total{provider=\"fast\",outcome=\"timeout\"} 0",
            "parley_llm_retries_total{provider=\"fast\"} 1",
            "parley_llm_tokens_total{provider=\"fast\",kind=\"prompt\"} 3",
            "parley_llm_tokens_total{provider=\"fast\",kind=\"completion\"} 4",
            "parley_llm_breaker_state{provider=\"fast\"} 1",
            "parley_llm_request_duration_seconds_bucket{provider=\"fast\",le=\"0.25\"} 2",
            "parley_llm_request_duration_seconds_count{provider=\"fast\"} 2",
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line} in\n{out}");
        }
        assert_eq!(out.matches("# TYPE parley_llm_requests_total").count(), 1);
    }

    #[test]
    fn outcomes_of_errors() {
        assert_eq!(
            Outcome::of(&LlmError::RateLimited("x".into())),
            Outcome::RateLimited
        );
        assert!(Outcome::of(&LlmError::Connection("x".into())).is_provider_failure());
        assert!(!Outcome::of(&LlmError::Auth("x".into())).is_provider_failure());
        assert!(!Outcome::of(&LlmError::TooLong("x".into())).is_provider_failure());
    }
}
