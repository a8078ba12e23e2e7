//! A per-provider circuit breaker.
//!
//! - **Closed**: requests go through; each failed request (connection, timeout, 429, 5xx,
//!   unreadable stream) adds one to a run of consecutive failures, anything else ends the run.
//!   After `threshold` failures in a row the breaker opens.
//! - **Open**: for `cooldown`, calls fail at once without a request
//!   ([`crate::llm::LlmError::Unavailable`]).
//! - **Half-open**: once the cool-down is over, one request (the probe) is let through while
//!   the others still fail at once. A probe that succeeds closes the breaker; one that fails
//!   opens it for another cool-down; one that is abandoned (the caller went away) lets the next
//!   call probe.
//!
//! `threshold = 0` turns the breaker off.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// What [`Breaker::admit`] lets a caller do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Send the request. `probe` is true for the one request of a half-open breaker.
    Go { probe: bool },
    /// Fail at once; the breaker may let a probe through after this long.
    Reject { retry_in: Duration },
}

/// The state as a number for `/metrics`: 0 closed, 1 open, 2 half-open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    state: Mutex<State>,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Breaker {
            threshold,
            cooldown,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a plain value: a panic elsewhere cannot leave it half-written.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// May a request be sent now?
    pub fn admit(&self) -> Admit {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Admit {
        if self.threshold == 0 {
            return Admit::Go { probe: false };
        }
        let mut st = self.lock();
        match *st {
            State::Closed { .. } => Admit::Go { probe: false },
            State::Open { until } if now < until => Admit::Reject {
                retry_in: until - now,
            },
            State::Open { .. } | State::HalfOpen { probing: false } => {
                *st = State::HalfOpen { probing: true };
                Admit::Go { probe: true }
            }
            State::HalfOpen { probing: true } => Admit::Reject {
                retry_in: Duration::ZERO,
            },
        }
    }

    /// The provider answered properly (or refused the request itself, which also shows it is up).
    pub fn on_success(&self) {
        if self.threshold == 0 {
            return;
        }
        let mut st = self.lock();
        if *st != (State::Closed { failures: 0 }) {
            if !matches!(*st, State::Closed { .. }) {
                tracing::info!("model provider answered again; circuit breaker closed");
            }
            *st = State::Closed { failures: 0 };
        }
    }

    /// A request failed in a way that says the provider is unwell.
    pub fn on_failure(&self) {
        self.on_failure_at(Instant::now());
    }

    fn on_failure_at(&self, now: Instant) {
        if self.threshold == 0 {
            return;
        }
        let mut st = self.lock();
        let open = match *st {
            State::Closed { failures } if failures + 1 < self.threshold => {
                *st = State::Closed {
                    failures: failures + 1,
                };
                false
            }
            State::Closed { .. } | State::HalfOpen { .. } => true,
            // Requests admitted before it opened may still fail; the cool-down stands.
            State::Open { .. } => false,
        };
        if open {
            *st = State::Open {
                until: now + self.cooldown,
            };
            tracing::warn!(
                threshold = self.threshold,
                cooldown_ms = self.cooldown.as_millis() as u64,
                "model provider keeps failing; circuit breaker open"
            );
        }
    }

    /// A probe ended without a verdict (the caller went away): let the next call probe.
    pub fn abandon_probe(&self) {
        let mut st = self.lock();
        if *st == (State::HalfOpen { probing: true }) {
            *st = State::HalfOpen { probing: false };
        }
    }

    pub fn state(&self) -> BreakerState {
        match *self.lock() {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOL: Duration = Duration::from_secs(10);

    #[test]
    fn opens_after_threshold_then_probes_once() {
        let b = Breaker::new(3, COOL);
        let t0 = Instant::now();
        b.on_failure_at(t0);
        b.on_failure_at(t0);
        assert_eq!(b.admit_at(t0), Admit::Go { probe: false });
        assert_eq!(b.state(), BreakerState::Closed);
        b.on_failure_at(t0);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(
            b.admit_at(t0 + Duration::from_secs(4)),
            Admit::Reject {
                retry_in: Duration::from_secs(6)
            }
        );
        // Cool-down over: one probe, the others still fail fast.
        let later = t0 + COOL;
        assert_eq!(b.admit_at(later), Admit::Go { probe: true });
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(matches!(b.admit_at(later), Admit::Reject { .. }));
        // The probe fails: open again for a whole cool-down.
        b.on_failure_at(later);
        assert!(matches!(
            b.admit_at(later + Duration::from_secs(9)),
            Admit::Reject { .. }
        ));
        assert_eq!(b.admit_at(later + COOL), Admit::Go { probe: true });
        b.on_success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.admit_at(later + COOL), Admit::Go { probe: false });
    }

    #[test]
    fn a_success_ends_the_run_of_failures() {
        let b = Breaker::new(2, COOL);
        let t0 = Instant::now();
        b.on_failure_at(t0);
        b.on_success();
        b.on_failure_at(t0);
        assert_eq!(b.state(), BreakerState::Closed);
        b.on_failure_at(t0);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn abandoned_probe_lets_the_next_call_probe() {
        let b = Breaker::new(1, COOL);
        let t0 = Instant::now();
        b.on_failure_at(t0);
        assert_eq!(b.admit_at(t0 + COOL), Admit::Go { probe: true });
        b.abandon_probe();
        assert_eq!(b.admit_at(t0 + COOL), Admit::Go { probe: true });
    }

    #[test]
    fn threshold_zero_never_opens() {
        let b = Breaker::new(0, COOL);
        for _ in 0..100 {
            b.on_failure();
        }
        assert_eq!(b.admit(), Admit::Go { probe: false });
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
