//! Counting and latency percentiles.

use std::time::{Duration, Instant};

/// Latency samples (nanoseconds), merged from many tasks and sorted once.
#[derive(Debug, Default, Clone)]
pub struct Samples(Vec<u64>);

impl Samples {
    pub fn push(&mut self, d: Duration) {
        self.0.push(d.as_nanos().min(u64::MAX as u128) as u64);
    }

    pub fn merge(&mut self, other: Samples) {
        self.0.extend(other.0);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `p`-th percentile (0..=100) in milliseconds (nearest rank); 0 without samples.
    pub fn percentile_ms(&mut self, p: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.sort_unstable();
        let rank = ((p / 100.0) * self.0.len() as f64).ceil() as usize;
        let i = rank.clamp(1, self.0.len()) - 1;
        self.0[i] as f64 / 1e6
    }

    pub fn max_ms(&self) -> f64 {
        self.0.iter().copied().max().unwrap_or(0) as f64 / 1e6
    }
}

/// The measurement window of a timed load: a warm-up, then `duration` that counts.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub start: Instant,
    pub end: Instant,
}

impl Window {
    pub fn after(warmup: Duration, duration: Duration) -> Window {
        let start = Instant::now() + warmup;
        Window {
            start,
            end: start + duration,
        }
    }

    /// Whether an operation that finished at `t` counts.
    pub fn counts(&self, began: Instant, t: Instant) -> bool {
        began >= self.start && t <= self.end
    }

    /// Whether an operation (of any start) that finished at `t` falls in the window: unbiased
    /// for counting items of long operations.
    pub fn ends_in(&self, t: Instant) -> bool {
        t >= self.start && t <= self.end
    }

    pub fn over(&self) -> bool {
        Instant::now() >= self.end
    }

    pub fn seconds(&self) -> f64 {
        (self.end - self.start).as_secs_f64()
    }
}

/// What one load task saw.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Operations completed inside the window.
    pub ops: u64,
    /// Items (events, messages) counted inside the window.
    pub items: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub samples: Samples,
}

impl Tally {
    pub fn error(&mut self, e: impl std::fmt::Display) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e.to_string());
        }
    }

    pub fn merge(&mut self, o: Tally) {
        self.ops += o.ops;
        self.items += o.items;
        self.errors += o.errors;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
        self.samples.merge(o.samples);
    }
}
