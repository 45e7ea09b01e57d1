//! Opt-in wall-clock counters for benchmarks: where a forward pass spends its time. Off by default
//! (then a span costs one relaxed atomic load). Process-wide: enable only in a benchmark process.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// What a counter measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Attention sub-layers (projections, RoPE, scores, softmax, output), forward only.
    AttentionForward = 0,
    /// MoE routing and dispatch: router softmax, top-k, grouping tokens by expert, gathering their
    /// rows, weighting and scattering the expert outputs back (everything of a MoE layer's forward
    /// except the experts' own SwiGLU).
    MoeDispatchForward = 1,
    /// The experts' SwiGLU forwards.
    MoeExpertsForward = 2,
}

const N: usize = 3;
static NANOS: [AtomicU64; N] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

/// Turns counting on or off (and clears the counters).
pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
    reset();
}

pub fn reset() {
    for c in &NANOS {
        c.store(0, Ordering::Relaxed);
    }
}

/// Seconds accumulated by `c` since the last reset.
pub fn seconds(c: Counter) -> f64 {
    NANOS[c as usize].load(Ordering::Relaxed) as f64 * 1e-9
}

/// A running measurement; adds its elapsed time to the counter when stopped or dropped.
pub(crate) struct Span {
    counter: Counter,
    started: Option<Instant>,
}

impl Span {
    pub(crate) fn start(counter: Counter) -> Span {
        let started = ENABLED.load(Ordering::Relaxed).then(Instant::now);
        Span { counter, started }
    }

    /// Stops counting until [`Span::resume`] (time between is not counted).
    pub(crate) fn pause(&mut self) {
        if let Some(t) = self.started.take() {
            NANOS[self.counter as usize]
                .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
    }

    pub(crate) fn resume(&mut self) {
        if ENABLED.load(Ordering::Relaxed) && self.started.is_none() {
            self.started = Some(Instant::now());
        }
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        self.pause();
    }
}
