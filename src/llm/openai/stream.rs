//! Reading a streamed answer: SSE events in, deltas out, within the stall, length and output
//! limits.

use std::time::{Duration, Instant};

use bytes::Bytes;
use eventsource_stream::{EventStream, EventStreamError};
use futures_util::stream::{BoxStream, StreamExt};
use tokio::sync::OwnedSemaphorePermit;

use super::decode::Accumulator;
use super::errors::error_chain;
use super::scrub::Scrubber;
use crate::llm::{LlmDelta, LlmError, TimeoutPhase};

/// A failure while reading the stream.
#[derive(Debug)]
pub(super) enum Broken {
    /// The connection broke: worth another attempt if nothing was handed out yet.
    Retryable(LlmError),
    Fatal(LlmError),
}

impl Broken {
    pub(super) fn into_error(self) -> LlmError {
        match self {
            Broken::Retryable(e) | Broken::Fatal(e) => e,
        }
    }
}

pub(super) type SseEvents = EventStream<BoxStream<'static, reqwest::Result<Bytes>>>;

/// The live side of a streamed answer. Owns the response body (dropping it aborts the request)
/// and the concurrency permit.
pub(super) struct SseState {
    pub(super) events: Option<SseEvents>,
    pub(super) acc: Accumulator,
    /// Longest silence between chunks (`None` before the first delta).
    pub(super) idle: Option<Duration>,
    /// The whole answer must end by then (`max_stream_ms`).
    pub(super) deadline: Instant,
    pub(super) max_stream: Duration,
    pub(super) max_output: usize,
    pub(super) scrub: Scrubber,
    pub(super) permit: Option<OwnedSemaphorePermit>,
}

impl SseState {
    pub(super) fn finished_with(acc: Accumulator, scrub: Scrubber) -> Self {
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
    pub(super) async fn next_item(&mut self) -> Option<Result<LlmDelta, Broken>> {
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
