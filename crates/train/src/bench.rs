//! Training-step benchmark (`tardbot-pipeline bench train`): full optimizer steps (forward, backward,
//! AdamW) of the [`Trainer`] on random tokens, fp32 on CPU, with tokens/s, model FLOP utilisation,
//! where the time goes and peak RSS. The FLOP count is the PyTorch peer's (`shared/bench/torch_ref.py`,
//! `active_flops_per_token`) so that the two report comparable figures.

use std::time::Instant;
use tardbot_core::memory::{
    live_bytes, peak_live_bytes, peak_rss_mib, reset_peak_live, reset_peak_rss, rss_mib,
};

use candle_core::{Device, Tensor};
use serde_json::json;
use tardbot_core::ModelConfig;
use tardbot_core::config::{Execution, TrainConfig};
use tardbot_model::profile::{self, Counter};

use crate::trainer::{Result, StepTimings, TokenBatch, TrainError, Trainer};

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchTrainOptions {
    pub preset: String,
    pub batch: usize,
    pub seq: usize,
    /// Timed steps (after `warmup` untimed ones).
    pub steps: usize,
    pub warmup: usize,
    pub activation_checkpointing: bool,
    /// Rayon threads (None: the global pool).
    pub threads: Option<usize>,
    /// fp32 peak the MFU is computed against, GFLOP/s; `None`: measured on this machine right
    /// before the timed steps ([`crate::peak::measure`]).
    pub peak_gflops: Option<f64>,
    pub seed: u64,
    /// Override the preset's `max_experts_in_memory` (below `n_experts`: experts in the store).
    pub max_experts_in_memory: Option<usize>,
    /// Train on a learnable batch (arithmetic sequences) instead of random tokens, so the loss falls.
    pub learnable: bool,
    /// Where the steps run (`[execution] device`; only the CPU trains today).
    pub device: tardbot_core::config::Device,
    /// Compute precision (`[execution] precision`).
    pub precision: tardbot_core::config::Precision,
}

impl Default for BenchTrainOptions {
    fn default() -> Self {
        BenchTrainOptions {
            preset: "tiny".into(),
            batch: 8,
            seq: 256,
            steps: 5,
            warmup: 2,
            activation_checkpointing: false,
            threads: None,
            peak_gflops: None,
            seed: 0,
            max_experts_in_memory: None,
            learnable: false,
            device: tardbot_core::config::Device::Cpu,
            precision: tardbot_core::config::Precision::F32,
        }
    }
}

/// Random tokens, or with `learnable` arithmetic sequences (random start, stride 1..=8 per row): the
/// next token follows from the previous two, so the loss can fall.
fn random_batch(
    cfg: &ModelConfig,
    batch: usize,
    seq: usize,
    seed: u64,
    learnable: bool,
) -> Result<TokenBatch> {
    let mut r = tardbot_core::rng::SplitMix64::scrambled(seed);
    let v = cfg.vocab_size as u64;
    let ids: Vec<u32> = if learnable {
        (0..batch)
            .flat_map(|_| {
                let (start, stride) = (r.next_u64() % v, 1 + r.next_u64() % 8);
                (0..=seq as u64).map(move |i| ((start + i * stride) % v) as u32)
            })
            .collect()
    } else {
        (0..batch * (seq + 1))
            .map(|_| (r.next_u64() % v) as u32)
            .collect()
    };
    let all = Tensor::from_vec(ids, (batch, seq + 1), &Device::Cpu)?;
    Ok(TokenBatch {
        inputs: all.narrow(1, 0, seq)?.contiguous()?,
        targets: all.narrow(1, 1, seq)?.contiguous()?,
        doc_ids: None,
        loss_mask: None,
        tokens: (batch * seq) as u64,
    })
}

/// Runs the benchmark, prints a table and returns the figures (`tokens_per_s` among them).
pub fn bench_train(opts: &BenchTrainOptions) -> Result<serde_json::Value> {
    match opts.threads {
        Some(n) => {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .map_err(|e| TrainError::Candle(candle_core::Error::Msg(e.to_string())))?;
            pool.install(|| run(opts))
        }
        None => run(opts),
    }
}

fn run(opts: &BenchTrainOptions) -> Result<serde_json::Value> {
    let cfg = ModelConfig::from_preset(&opts.preset).ok_or_else(|| {
        TrainError::Model(tardbot_model::ModelError::Config(format!(
            "unknown preset `{}`",
            opts.preset
        )))
    })?;
    if let Some(m) = opts.max_experts_in_memory
        && (m == 0 || m > cfg.n_experts)
    {
        return Err(TrainError::Model(tardbot_model::ModelError::Config(
            format!("max_experts_in_memory {m} is not in 1..={}", cfg.n_experts),
        )));
    }
    if opts.batch == 0 || opts.seq == 0 || opts.steps == 0 {
        return Err(TrainError::Model(tardbot_model::ModelError::Input(
            "batch, seq and steps must be at least 1".into(),
        )));
    }
    let train = TrainConfig {
        steps: (opts.steps + opts.warmup) as u64,
        batch_size: opts.batch,
        seq_len: opts.seq,
        lr: 3e-4,
        warmup_steps: 0,
        ..TrainConfig::pretrain_default()
    };
    let exec = Execution {
        max_experts_in_memory: opts.max_experts_in_memory,
        activation_checkpointing: opts.activation_checkpointing,
        device: opts.device,
        precision: opts.precision,
        ..Execution::cpu()
    };
    let rss_before_model = peak_rss_mib();
    let store_dir = BenchDir::new("train")?;
    let mut trainer = Trainer::new(&cfg, &train, &exec, opts.seed, Some(&store_dir.0))?;
    let rss_model = peak_rss_mib();
    let batch = random_batch(&cfg, opts.batch, opts.seq, opts.seed + 1, opts.learnable)?;
    let mut first_loss = None;
    for _ in 0..opts.warmup {
        let r = trainer.train_step(std::slice::from_ref(&batch))?;
        first_loss.get_or_insert(r.loss);
    }
    // The machine's peak now (a shared host's share moves), unless given.
    let (peak_gflops, measured) = match opts.peak_gflops {
        Some(given) => (given, None),
        None => {
            let p = crate::peak::measure()?;
            (p.fma_gflops, Some(p))
        }
    };
    // Steady state: the optimizer moments are touched by the first update, so measure the peak of
    // the timed steps only (an allocator that returns freed memory shows the steps' own peak).
    let peak_reset = opts.warmup > 0 && reset_peak_rss();
    reset_peak_live();
    let rss_before_steps = rss_mib();
    let live_before_steps = live_bytes();
    profile::enable(true);
    let mut sum = StepTimings::default();
    let mut step_s = Vec::with_capacity(opts.steps);
    let mut last = None;
    let started = Instant::now();
    for _ in 0..opts.steps {
        let t = Instant::now();
        let r = trainer.train_step(std::slice::from_ref(&batch))?;
        first_loss.get_or_insert(r.loss);
        step_s.push(t.elapsed().as_secs_f64());
        sum.forward_s += r.timings.forward_s;
        sum.backward_s += r.timings.backward_s;
        sum.optimizer_s += r.timings.optimizer_s;
        last = Some(r);
    }
    let total = started.elapsed().as_secs_f64();
    let n = opts.steps as f64;
    let attn_fwd = profile::seconds(Counter::AttentionForward) / n;
    let dispatch_fwd = profile::seconds(Counter::MoeDispatchForward) / n;
    let experts_fwd = profile::seconds(Counter::MoeExpertsForward) / n;
    profile::enable(false);
    let last = last.expect("at least one step");
    let step = total / n;
    let tokens = (opts.batch * opts.seq) as f64;
    let tokens_per_s = tokens / step;
    let flops = cfg.train_flops_per_token(opts.seq);
    let gflops = tokens_per_s * flops / 1e9;
    let params = cfg.param_counts();
    let (fwd, bwd, opt) = (sum.forward_s / n, sum.backward_s / n, sum.optimizer_s / n);
    let other = (step - fwd - bwd - opt).max(0.0);
    let pct = |x: f64| 100.0 * x / step;
    let threads = rayon::current_num_threads();
    let rss = peak_rss_mib();
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let live_peak = peak_live_bytes().map(mib);
    let live_before = live_before_steps.map(mib);
    let mut best = step_s.clone();
    best.sort_by(f64::total_cmp);

    println!(
        "training-step benchmark: preset {} ({:.1}M params, {:.1}M active/token), batch {} × seq {}, fp32 CPU, {} threads{}",
        opts.preset,
        params.total as f64 / 1e6,
        params.active_per_token as f64 / 1e6,
        opts.batch,
        opts.seq,
        threads,
        if opts.activation_checkpointing {
            ", activation checkpointing"
        } else {
            ""
        }
    );
    println!(
        "  step                 {:>9.1} ms   (best {:.1} ms, {} timed steps after {} warm-up)",
        step * 1e3,
        best[0] * 1e3,
        opts.steps,
        opts.warmup
    );
    println!("  tokens/s             {:>9.1}", tokens_per_s);
    println!(
        "  model FLOP/s         {:>9.1} GFLOP/s ({:.1} MFLOP/token) = MFU {:.1}% of {:.1} GFLOP/s fp32 peak ({})",
        gflops,
        flops / 1e6,
        100.0 * gflops / peak_gflops,
        peak_gflops,
        if measured.is_some() {
            "FMA peak measured now on these threads"
        } else {
            "given"
        }
    );
    if let Some(p) = measured {
        println!(
            "  machine sgemm        {:>9.1} GFLOP/s (1024³ through the model's matmul) = {:.0}% of the FMA peak; the model runs at {:.0}% of it",
            p.sgemm_gflops,
            100.0 * p.sgemm_gflops / p.fma_gflops,
            100.0 * gflops / p.sgemm_gflops
        );
    }
    println!(
        "  forward              {:>9.1} ms  {:>5.1}%",
        fwd * 1e3,
        pct(fwd)
    );
    println!(
        "    attention           {:>8.1} ms  {:>5.1}%",
        attn_fwd * 1e3,
        pct(attn_fwd)
    );
    println!(
        "    MoE dispatch        {:>8.1} ms  {:>5.1}%   (routing, gather, weighting, scatter)",
        dispatch_fwd * 1e3,
        pct(dispatch_fwd)
    );
    println!(
        "    MoE experts         {:>8.1} ms  {:>5.1}%",
        experts_fwd * 1e3,
        pct(experts_fwd)
    );
    println!(
        "  backward             {:>9.1} ms  {:>5.1}%{}",
        bwd * 1e3,
        pct(bwd),
        if opts.activation_checkpointing {
            "   (incl. recomputed forwards)"
        } else {
            ""
        }
    );
    println!(
        "  optimizer            {:>9.1} ms  {:>5.1}%   (grad norm, clip, AdamW)",
        opt * 1e3,
        pct(opt)
    );
    println!(
        "  other                {:>9.1} ms  {:>5.1}%",
        other * 1e3,
        pct(other)
    );
    println!(
        "  peak RSS             {:>9.1} MiB  ({}; RSS before the timed steps {:.1} MiB, after building model + optimizer {:.1} MiB, at start {:.1} MiB)",
        rss.unwrap_or(f64::NAN),
        if peak_reset {
            "of the timed steps"
        } else {
            "of the whole process"
        },
        rss_before_steps.unwrap_or(f64::NAN),
        rss_model.unwrap_or(f64::NAN),
        rss_before_model.unwrap_or(f64::NAN)
    );
    if let (Some(peak), Some(before)) = (live_peak, live_before) {
        println!(
            "  peak live heap       {:>9.1} MiB  (held by the program, counted by the allocator; {:.1} MiB before the timed steps)",
            peak, before
        );
    }
    let first_loss = first_loss.unwrap_or(last.loss);
    println!(
        "  loss                 {:>9.4}   (first step {:.4})",
        last.loss, first_loss
    );
    let m = opts
        .max_experts_in_memory
        .unwrap_or(cfg.n_experts)
        .min(cfg.n_experts);
    let peak_resident = trainer.model.expert_store().map(|s| s.peak_resident());
    if let Some(peak) = peak_resident {
        println!(
            "  expert store         at most {} of {} experts in memory (limit {m}); store file {:.1} MiB",
            peak,
            cfg.n_moe_layers() * cfg.n_experts,
            (cfg.param_counts().experts * 16) as f64 / (1 << 20) as f64
        );
    }
    Ok(json!({
        "bench": "train",
        "preset": opts.preset,
        "params_m": params.total as f64 / 1e6,
        "device": opts.device.name(),
        "dtype": opts.precision.name(),
        "loss_scale": last.loss_scale,
        "batch": opts.batch,
        "seq": opts.seq,
        "steps": opts.steps,
        "threads": threads,
        "activation_checkpointing": opts.activation_checkpointing,
        "step_s": step,
        "best_step_s": best[0],
        "tokens_per_s": tokens_per_s,
        "gflops": gflops,
        "peak_gflops": peak_gflops,
        "peak_measured": measured.is_some(),
        "sgemm_gflops": measured.map(|p| p.sgemm_gflops),
        "mfu": gflops / peak_gflops,
        "forward_s": fwd,
        "attention_forward_s": attn_fwd,
        "moe_dispatch_forward_s": dispatch_fwd,
        "moe_experts_forward_s": experts_fwd,
        "backward_s": bwd,
        "optimizer_s": opt,
        "peak_rss_mib": rss,
        "peak_live_heap_mib": live_peak,
        "live_heap_before_steps_mib": live_before,
        "rss_model_mib": rss_model,
        "rss_before_steps_mib": rss_before_steps,
        "peak_rss_of_steps_only": peak_reset,
        "loss": last.loss,
        "first_loss": first_loss,
        "max_experts_in_memory": m,
        "n_experts": cfg.n_experts,
        "peak_resident_experts": peak_resident,
        "predicted_expert_state_mib": mib(cfg.expert_state_bytes(m)),
        "predicted_total_mib": mib(cfg.memory(opts.batch, opts.seq, m).total(opts.activation_checkpointing)),
    }))
}

/// A scratch directory for a benchmark's expert store, removed when dropped.
pub(crate) struct BenchDir(pub std::path::PathBuf);

impl BenchDir {
    pub(crate) fn new(what: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("tardbot-bench-{what}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| TrainError::State {
            path: dir.clone(),
            what: e.to_string(),
        })?;
        Ok(BenchDir(dir))
    }
}

impl Drop for BenchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
