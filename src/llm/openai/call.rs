//! One request's record for the metrics and the circuit breaker.

use std::sync::Arc;
use std::time::Instant;

use super::super::breaker::Breaker;
use super::super::metrics::{Outcome, ProviderMetrics};
use futures_util::stream::{self, StreamExt};

use super::stream::{Broken, SseState};
use crate::llm::{DeltaStream, LlmDelta, Usage};

/// One request's record: its outcome and latency go to the metrics and the breaker exactly
/// once, when it ends; a request dropped before that (cancel) counts as cancelled.
pub(super) struct Call {
    metrics: Arc<ProviderMetrics>,
    breaker: Arc<Breaker>,
    started: Instant,
    probe: bool,
    ended: bool,
}

impl Call {
    pub(super) fn start(metrics: Arc<ProviderMetrics>, breaker: Arc<Breaker>, probe: bool) -> Call {
        Call {
            metrics,
            breaker,
            started: Instant::now(),
            probe,
            ended: false,
        }
    }

    pub(super) fn first_delta(&self) {
        self.metrics
            .first_delta(self.started.elapsed().as_secs_f64());
        self.breaker.on_success();
    }

    pub(super) fn tokens(&self, u: Usage) {
        self.metrics.tokens(u);
    }

    pub(super) fn end(&mut self, outcome: Outcome) {
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

/// The stream handed to the engine: `first` (read before `chat` returned), then the rest of
/// `state`, each item recorded on `call`; `state` holds the connection and the permit until the
/// stream ends or is dropped.
pub(super) fn answer(state: SseState, mut call: Call, first: LlmDelta) -> DeltaStream {
    call.first_delta();
    if let LlmDelta::Done { usage, .. } = &first {
        call.tokens(*usage);
        call.end(Outcome::Ok);
    }
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
    stream::iter([Ok(first)]).chain(rest).boxed()
}
