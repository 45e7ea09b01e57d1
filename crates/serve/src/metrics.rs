//! The server's Prometheus metrics (`GET /metrics`, text format 0.0.4): requests by status, tokens,
//! time to first token, request duration, queue length, decode batch sizes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the latency histograms' buckets.
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Default)]
pub struct Metrics {
    /// Answered requests by HTTP status.
    requests: Mutex<BTreeMap<u16, u64>>,
    pub tokens_generated: AtomicU64,
    pub prompt_tokens: AtomicU64,
    /// Generations waiting for a decode slot.
    pub queue_length: AtomicUsize,
    pub requests_in_flight: AtomicUsize,
    pub active_sequences: AtomicUsize,
    decode_steps: AtomicU64,
    decode_step_sequences: AtomicU64,
    ttft: Histogram,
    duration: Histogram,
    queue_wait: Histogram,
    decode_step: Histogram,
    /// Generations cancelled because the client went away.
    pub cancelled: AtomicU64,
}

impl Metrics {
    pub fn count_request(&self, status: u16) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry(status).or_default() += 1;
        }
    }

    pub fn observe_ttft(&self, d: Duration) {
        self.ttft.observe(d.as_secs_f64());
    }

    pub fn observe_duration(&self, d: Duration) {
        self.duration.observe(d.as_secs_f64());
    }

    pub fn observe_queue_wait(&self, d: Duration) {
        self.queue_wait.observe(d.as_secs_f64());
    }

    pub fn observe_decode_step(&self, sequences: usize, d: Duration) {
        self.decode_steps.fetch_add(1, Ordering::Relaxed);
        self.decode_step_sequences
            .fetch_add(sequences as u64, Ordering::Relaxed);
        self.decode_step.observe(d.as_secs_f64());
    }

    /// The exposition text.
    pub fn render(&self, model: &str) -> String {
        let mut s = String::new();
        let label = format!(
            "model=\"{}\"",
            model.replace('\\', "\\\\").replace('"', "\\\"")
        );
        let _ = writeln!(
            s,
            "# HELP tardbot_serve_requests_total Chat completion requests answered, by HTTP status.\n\
             # TYPE tardbot_serve_requests_total counter"
        );
        if let Ok(m) = self.requests.lock() {
            for (status, n) in m.iter() {
                let _ = writeln!(
                    s,
                    "tardbot_serve_requests_total{{{label},status=\"{status}\"}} {n}"
                );
            }
        }
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{{label}}} {v}"
            );
        };
        counter(
            "tardbot_serve_tokens_generated_total",
            "Tokens generated.",
            self.tokens_generated.load(Ordering::Relaxed),
        );
        counter(
            "tardbot_serve_prompt_tokens_total",
            "Prompt tokens prefilled.",
            self.prompt_tokens.load(Ordering::Relaxed),
        );
        counter(
            "tardbot_serve_decode_steps_total",
            "Decode steps of the engine.",
            self.decode_steps.load(Ordering::Relaxed),
        );
        counter(
            "tardbot_serve_decode_step_sequences_total",
            "Sequences advanced, summed over decode steps (divided by steps: the mean decode batch).",
            self.decode_step_sequences.load(Ordering::Relaxed),
        );
        counter(
            "tardbot_serve_cancelled_total",
            "Generations cancelled because the client disconnected.",
            self.cancelled.load(Ordering::Relaxed),
        );
        let mut gauge = |name: &str, help: &str, v: usize| {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{{label}}} {v}"
            );
        };
        gauge(
            "tardbot_serve_queue_length",
            "Generations waiting for a decode slot.",
            self.queue_length.load(Ordering::Relaxed),
        );
        gauge(
            "tardbot_serve_requests_in_flight",
            "Requests admitted and not yet answered.",
            self.requests_in_flight.load(Ordering::Relaxed),
        );
        gauge(
            "tardbot_serve_active_sequences",
            "Sequences in the decode batch.",
            self.active_sequences.load(Ordering::Relaxed),
        );
        self.ttft.render(
            &mut s,
            "tardbot_serve_time_to_first_token_seconds",
            "From request arrival to the first generated token.",
            &label,
        );
        self.duration.render(
            &mut s,
            "tardbot_serve_request_duration_seconds",
            "From request arrival to the last byte of the answer.",
            &label,
        );
        self.queue_wait.render(
            &mut s,
            "tardbot_serve_queue_wait_seconds",
            "Time a generation waited for a decode slot.",
            &label,
        );
        self.decode_step.render(
            &mut s,
            "tardbot_serve_decode_step_seconds",
            "Wall time of one decode step (all active sequences).",
            &label,
        );
        s
    }
}

/// A cumulative histogram over [`LATENCY_BUCKETS`].
struct Histogram {
    counts: Vec<AtomicU64>,
    count: AtomicU64,
    /// Sum in microseconds (an atomic integer; the text shows seconds).
    sum_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: LATENCY_BUCKETS.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    fn observe(&self, secs: f64) {
        for (b, c) in LATENCY_BUCKETS.iter().zip(&self.counts) {
            if secs <= *b {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add((secs * 1e6) as u64, Ordering::Relaxed);
    }

    fn render(&self, s: &mut String, name: &str, help: &str, label: &str) {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in LATENCY_BUCKETS.iter().zip(&self.counts) {
            let _ = writeln!(
                s,
                "{name}_bucket{{{label},le=\"{b}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(s, "{name}_bucket{{{label},le=\"+Inf\"}} {count}");
        let _ = writeln!(
            s,
            "{name}_sum{{{label}}} {}",
            self.sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(s, "{name}_count{{{label}}} {count}");
    }
}
