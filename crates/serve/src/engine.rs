//! The decode engine: one thread that owns the model and generates for every request at once.
//!
//! Requests are admitted up to [`EngineConfig::max_requests`] (beyond that the API answers 429);
//! their generations queue for one of [`EngineConfig::max_batch`] decode slots. Each step the engine
//! runs prompts (in `window_stride` chunks; one chunk per step while other sequences decode), then
//! advances every decoding sequence by one token: with batched decode, one
//! [`TardBot::forward_decode_batch`] for all of them (weights read once per step), otherwise one
//! [`TardBot::forward_cached`] each. Every sequence keeps its own KV cache and its own seeded
//! [`Sampler`], so its tokens are those it would get decoded alone. A generation whose receiver is
//! gone (the client disconnected, or a stop sequence matched) is dropped at the next step.

use candle_core::{DType, Tensor};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;
use tardbot_model::{KvCache, Sampler, SamplingParams, StopReason, TardBot};
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// Capacity of the engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Sequences decoded together.
    pub max_batch: usize,
    /// Requests admitted at once (decoding or waiting for a slot); more are refused.
    pub max_requests: usize,
    /// One forward for all active sequences per step (off: one forward per sequence).
    pub batched: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_batch: 16,
            max_requests: 64,
            batched: true,
        }
    }
}

/// One generation: a prompt and how to continue it.
#[derive(Clone, Debug)]
pub struct GenRequest {
    pub prompt: Vec<u32>,
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation ends after one of these (it is sent, then `Done(StopToken)`).
    pub stop_tokens: Vec<u32>,
    /// The stop tokens cannot be drawn before this many tokens (vLLM's `min_tokens`).
    pub min_new_tokens: usize,
}

/// What a generation reports, in order: tokens, then one `Done` or `Failed`.
#[derive(Clone, Debug, PartialEq)]
pub enum GenEvent {
    Token(u32),
    Done(StopReason),
    Failed(String),
}

/// The receiving end of a generation; dropping it cancels the generation.
pub struct GenStream {
    rx: mpsc::UnboundedReceiver<GenEvent>,
}

impl GenStream {
    pub async fn next(&mut self) -> Option<GenEvent> {
        self.rx.recv().await
    }

    /// For code on a blocking thread (the tool loop).
    pub fn blocking_next(&mut self) -> Option<GenEvent> {
        self.rx.blocking_recv()
    }
}

/// A request's place in the engine; releasing it (drop) frees the place.
pub struct Admission {
    engine: Engine,
}

impl Admission {
    /// Queues a generation; its events arrive on the returned stream.
    pub fn generate(&self, req: GenRequest) -> GenStream {
        let (tx, rx) = mpsc::unbounded_channel();
        self.engine
            .metrics
            .queue_length
            .fetch_add(1, Ordering::Relaxed);
        let job = Job {
            req,
            events: tx,
            queued: Instant::now(),
        };
        if let Err(mpsc_err) = self.engine.jobs.send(job) {
            // The engine thread is gone (it panicked): say so rather than hang.
            let job = mpsc_err.0;
            self.engine
                .metrics
                .queue_length
                .fetch_sub(1, Ordering::Relaxed);
            let _ = job
                .events
                .send(GenEvent::Failed("the decode engine has stopped".into()));
        }
        GenStream { rx }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.engine.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.engine
            .metrics
            .requests_in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

struct Job {
    req: GenRequest,
    events: mpsc::UnboundedSender<GenEvent>,
    queued: Instant,
}

/// A handle on the engine thread (cheap to clone).
#[derive(Clone)]
pub struct Engine {
    jobs: std::sync::mpsc::Sender<Job>,
    in_flight: Arc<AtomicUsize>,
    cfg: EngineConfig,
    metrics: Arc<Metrics>,
}

impl Engine {
    /// Starts the engine thread for `model`.
    pub fn start(model: Arc<TardBot>, cfg: EngineConfig, metrics: Arc<Metrics>) -> Engine {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let worker = Worker {
            model,
            cfg: cfg.clone(),
            metrics: metrics.clone(),
            jobs: rx,
            waiting: VecDeque::new(),
            active: Vec::new(),
        };
        std::thread::Builder::new()
            .name("decode-engine".into())
            .spawn(move || worker.run())
            .expect("spawning the decode engine thread");
        Engine {
            jobs: tx,
            in_flight: Arc::new(AtomicUsize::new(0)),
            cfg,
            metrics,
        }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// A place for one request, or `None` when `max_requests` are already in flight.
    pub fn admit(&self) -> Option<Admission> {
        let admitted = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.cfg.max_requests).then_some(n + 1)
            })
            .is_ok();
        admitted.then(|| {
            self.metrics
                .requests_in_flight
                .fetch_add(1, Ordering::Relaxed);
            Admission {
                engine: self.clone(),
            }
        })
    }
}

/// A sequence being decoded.
struct Sequence {
    events: mpsc::UnboundedSender<GenEvent>,
    cache: KvCache,
    sampler: Sampler,
    prompt: Vec<u32>,
    /// Prompt tokens already run through the cache.
    prefilled: usize,
    /// The token to feed next (the last one drawn).
    last: u32,
    generated: usize,
    max_new_tokens: usize,
    stop_tokens: Vec<u32>,
    min_new_tokens: usize,
}

struct Worker {
    model: Arc<TardBot>,
    cfg: EngineConfig,
    metrics: Arc<Metrics>,
    jobs: std::sync::mpsc::Receiver<Job>,
    waiting: VecDeque<Job>,
    active: Vec<Sequence>,
}

impl Worker {
    fn run(mut self) {
        loop {
            // Idle: block for work; every handle dropped ends the thread.
            if self.active.is_empty() && self.waiting.is_empty() {
                match self.jobs.recv() {
                    Ok(job) => self.waiting.push_back(job),
                    Err(_) => return,
                }
            }
            while let Ok(job) = self.jobs.try_recv() {
                self.waiting.push_back(job);
            }
            self.admit_waiting();
            self.metrics
                .active_sequences
                .store(self.active.len(), Ordering::Relaxed);
            if !self.active.is_empty() {
                // A panic inside a step (a candle or kernel bug) fails that step's sequences, not
                // the server: the engine goes on with the next requests.
                let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.step()));
                if let Err(panic) = step {
                    let why = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic".into());
                    for s in self.active.drain(..) {
                        let _ = s
                            .events
                            .send(GenEvent::Failed(format!("the decode step failed: {why}")));
                    }
                }
            }
        }
    }

    /// Gives free slots to waiting generations; drops cancelled ones. Their prompts are run by
    /// [`Worker::step`].
    fn admit_waiting(&mut self) {
        while self.active.len() < self.cfg.max_batch.max(1) {
            let Some(job) = self.waiting.pop_front() else {
                break;
            };
            self.metrics.queue_length.fetch_sub(1, Ordering::Relaxed);
            if job.events.is_closed() {
                continue;
            }
            self.metrics.observe_queue_wait(job.queued.elapsed());
            if job.req.prompt.is_empty() {
                let _ = job.events.send(GenEvent::Failed("empty prompt".into()));
                continue;
            }
            match Sampler::new(job.req.sampling.clone()) {
                Ok(sampler) => self.active.push(Sequence {
                    events: job.events,
                    cache: self.model.new_cache(),
                    sampler,
                    prompt: job.req.prompt,
                    prefilled: 0,
                    last: 0,
                    generated: 0,
                    max_new_tokens: job.req.max_new_tokens,
                    stop_tokens: job.req.stop_tokens,
                    min_new_tokens: job.req.min_new_tokens,
                }),
                Err(e) => {
                    let _ = job.events.send(GenEvent::Failed(e.to_string()));
                }
            }
        }
    }

    /// Prompts, then one token for every decoding sequence. While others decode, one chunk of one
    /// prompt runs per step (a new request delays the streams in flight by one chunk, not by its
    /// whole prompt); with nobody decoding, every pending prompt runs.
    fn step(&mut self) {
        self.active.retain(|s| !s.events.is_closed());
        let anyone_decoding = self.active.iter().any(Sequence::decoding);
        while let Some(i) = self.active.iter().position(|s| !s.decoding()) {
            match self.prefill_chunk(i) {
                Ok(true) => {}
                Ok(false) => {
                    self.active.remove(i);
                }
                Err(e) => {
                    let s = self.active.remove(i);
                    let _ = s.events.send(GenEvent::Failed(e));
                }
            }
            if anyone_decoding {
                break;
            }
        }
        if !self.active.iter().any(Sequence::decoding) {
            return;
        }
        let started = Instant::now();
        let mut rows = match self.forward_step() {
            Ok(rows) => rows.into_iter(),
            Err(e) => {
                for s in self.active.drain(..) {
                    let _ = s.events.send(GenEvent::Failed(e.clone()));
                }
                return;
            }
        };
        let decoded = rows.len();
        self.metrics.observe_decode_step(decoded, started.elapsed());
        let metrics = self.metrics.clone();
        self.active.retain_mut(|s| {
            if !s.decoding() {
                return true;
            }
            let Some(mut row) = rows.next() else {
                return true;
            };
            if s.generated < s.min_new_tokens {
                forbid(&mut row, &s.stop_tokens);
            }
            match s.sampler.sample(&row) {
                Ok(tok) => s.emit(tok, &metrics),
                Err(e) => {
                    let _ = s.events.send(GenEvent::Failed(e.to_string()));
                    false
                }
            }
        });
    }

    /// Runs the next `window_stride` tokens of sequence `i`'s prompt (the chunks `generate` uses);
    /// after the last, draws the first token. Whether the sequence goes on.
    fn prefill_chunk(&mut self, i: usize) -> Result<bool, String> {
        let model = &self.model;
        let s = &mut self.active[i];
        let end = (s.prefilled + model.config().window_stride.max(1)).min(s.prompt.len());
        let ids = Tensor::new(&s.prompt[s.prefilled..end], model.device())
            .and_then(|t| t.unsqueeze(0))
            .map_err(|e| e.to_string())?;
        let logits = model
            .forward_cached(&ids, &mut s.cache)
            .map_err(|e| e.to_string())?;
        s.prefilled = end;
        if end < s.prompt.len() {
            return Ok(true);
        }
        let mut row = last_row(&logits).map_err(|e| e.to_string())?;
        if s.min_new_tokens > 0 {
            forbid(&mut row, &s.stop_tokens);
        }
        let first = s.sampler.sample(&row).map_err(|e| e.to_string())?;
        Ok(s.emit(first, &self.metrics))
    }

    /// Logits of the next position of every decoding sequence (one row each, in order).
    fn forward_step(&mut self) -> Result<Vec<Vec<f32>>, String> {
        let model = &self.model;
        let mut decoding: Vec<&mut Sequence> =
            self.active.iter_mut().filter(|s| s.decoding()).collect();
        if self.cfg.batched && decoding.len() > 1 {
            let tokens: Vec<u32> = decoding.iter().map(|s| s.last).collect();
            let mut caches: Vec<&mut KvCache> = decoding.iter_mut().map(|s| &mut s.cache).collect();
            return model
                .forward_decode_batch(&tokens, &mut caches)
                .and_then(|l| Ok(l.to_dtype(DType::F32)?.to_vec2::<f32>()?))
                .map_err(|e| e.to_string());
        }
        decoding
            .iter_mut()
            .map(|s| {
                let ids = Tensor::new(&[s.last], model.device())
                    .and_then(|t| t.unsqueeze(0))
                    .map_err(|e| e.to_string())?;
                let logits = model
                    .forward_cached(&ids, &mut s.cache)
                    .map_err(|e| e.to_string())?;
                last_row(&logits).map_err(|e| e.to_string())
            })
            .collect()
    }
}

impl Sequence {
    /// Past its prompt, with a drawn token to feed.
    fn decoding(&self) -> bool {
        self.prefilled == self.prompt.len() && self.generated > 0
    }

    /// Sends a drawn token; whether the sequence goes on.
    fn emit(&mut self, tok: u32, metrics: &Metrics) -> bool {
        self.generated += 1;
        self.last = tok;
        metrics.tokens_generated.fetch_add(1, Ordering::Relaxed);
        if self.events.send(GenEvent::Token(tok)).is_err() {
            return false;
        }
        let stop = if self.stop_tokens.contains(&tok) {
            Some(StopReason::StopToken)
        } else if self.generated >= self.max_new_tokens {
            Some(StopReason::MaxTokens)
        } else {
            None
        };
        match stop {
            Some(r) => {
                let _ = self.events.send(GenEvent::Done(r));
                false
            }
            None => true,
        }
    }
}

/// Makes `tokens` impossible to draw.
fn forbid(row: &mut [f32], tokens: &[u32]) {
    for &t in tokens {
        if let Some(l) = row.get_mut(t as usize) {
            *l = f32::NEG_INFINITY;
        }
    }
}

/// The last position's logits of a (1, t, vocab) tensor, as f32.
fn last_row(logits: &Tensor) -> candle_core::Result<Vec<f32>> {
    let t = logits.dim(1)?;
    logits
        .narrow(1, t - 1, 1)?
        .flatten_all()?
        .to_dtype(DType::F32)?
        .to_vec1::<f32>()
}
