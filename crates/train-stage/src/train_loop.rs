//! The loop every training stage runs: restore, step, log, evaluate, checkpoint — with exact resume.
//!
//! A stage builds its [`Trainer`] and [`Loader`] and hands them to [`train_loop`] with its own
//! evaluation; the loop owns the rest: metrics to the ledger every step, an evaluation every
//! `eval_every` steps and at the end, atomic checkpoints (weights, optimizer, step, loader cursor)
//! every `checkpoint_every` steps and on Ctrl-C, retention (the newest `keep_checkpoints` plus the
//! best: the checkpoint taken at the step with the lowest held-out loss), and the NaN/Inf policy.

use std::path::Path;
use std::time::Instant;
use tardbot_core::config::TrainConfig;
use tardbot_stage::{StageContext, StageError};
use tardbot_tokens::loader::{Cursor, Loader};
use tardbot_tokens::shard::TokenShard;
use tardbot_train::batch::batch_tensors;
use tardbot_train::checkpoint;
use tardbot_train::peak::fma_peak_gflops;
use tardbot_train::trainer::{StepReport, TokenBatch, Trainer};
use tracing::info;

/// Consecutive non-finite steps after which the stage stops.
pub const MAX_BAD_STEPS: u32 = 5;

/// Restores the trainer (weights, moments, step) and the loader's cursor from the attempt's resume
/// checkpoint, if it has one. `shards` must be the shards the checkpointed loader read.
pub fn restore(
    ctx: &StageContext,
    trainer: &mut Trainer,
    shards: Vec<TokenShard>,
) -> Result<Option<Loader>, StageError> {
    let Some(c) = &ctx.resume else {
        return Ok(None);
    };
    let extra = trainer
        .load(Path::new(&c.path))
        .map_err(StageError::failed)?;
    let cursor: Cursor =
        serde_json::from_value(extra["cursor"].clone()).map_err(StageError::failed)?;
    trainer.best = serde_json::from_value(extra["best"].clone()).unwrap_or(None);
    let loader = Loader::resume(shards, &cursor).map_err(StageError::failed)?;
    info!(step = trainer.step, "resumed from checkpoint");
    Ok(Some(loader))
}

/// Trains until `cfg.steps`. `evaluate(trainer)` runs every `cfg.eval_every` steps and after the last
/// and returns the held-out loss (lower is better), which picks the best checkpoint to keep.
pub fn train_loop(
    ctx: &StageContext,
    cfg: &TrainConfig,
    trainer: &mut Trainer,
    loader: &mut Loader,
    evaluate: &mut dyn FnMut(&Trainer) -> Result<f64, StageError>,
) -> Result<(), StageError> {
    let mut last_eval: Option<(u64, f64)> = None;
    let save = |trainer: &mut Trainer,
                loader: &Loader,
                last_eval: Option<(u64, f64)>|
     -> Result<(), StageError> {
        // Evaluated at this very step and better than the best so far: this checkpoint is the best.
        if let Some((step, loss)) = last_eval.filter(|e| e.0 == trainer.step)
            && trainer.best.is_none_or(|(_, best)| loss < best)
        {
            trainer.best = Some((step, loss));
        }
        let extra = serde_json::json!({ "cursor": loader.cursor(), "best": trainer.best });
        let dir =
            checkpoint::write_atomic(&ctx.work_dir, trainer.step, |tmp| trainer.save(tmp, extra))
                .map_err(StageError::failed)?;
        ctx.record_checkpoint(trainer.step, trainer.tokens, &dir.path)?;
        let keep: Vec<u64> = trainer.best.iter().map(|b| b.0).collect();
        checkpoint::prune(&ctx.work_dir, cfg.keep_checkpoints, &keep)
            .map_err(StageError::failed)?;
        Ok(())
    };

    let flops = trainer.model.config().train_flops_per_token(cfg.seq_len);
    let progress = ctx.progress(cfg.steps, "steps");
    progress.set_position(trainer.step);
    let mut bad_steps = 0;
    while trainer.step < cfg.steps {
        if ctx.cancelled() {
            save(trainer, loader, last_eval)?;
            return Err(StageError::Interrupted(Some(trainer.step)));
        }
        let started = Instant::now();
        let micro: Vec<TokenBatch> = (0..cfg.grad_accum)
            .map(|_| batch_tensors(&loader.next_batch()))
            .collect::<Result<_, _>>()
            .map_err(StageError::failed)?;
        let report = trainer.train_step(&micro).map_err(StageError::failed)?;
        if report.rejected && report.overflow && report.loss_scale.is_some_and(|s| s > 1.0) {
            // f16: the scaled gradients overflowed; the loss scale halved and the step is retried
            // on the next batch (as PyTorch's GradScaler does). Not a divergence while the scale
            // is above 1 — below that, a NaN/Inf is the model's own and counts as a bad step.
            ctx.event(
                "loss_scale_backoff",
                serde_json::json!({ "step": trainer.step + 1, "loss_scale": report.loss_scale }),
            )?;
            continue;
        }
        if report.rejected {
            bad_steps += 1;
            ctx.event(
                "nonfinite_step",
                serde_json::json!({ "step": trainer.step + 1, "loss": report.loss.to_string() }),
            )?;
            if bad_steps >= MAX_BAD_STEPS {
                return Err(StageError::failed(format!(
                    "loss or gradients were NaN/Inf for {bad_steps} consecutive steps, the last at step {}; \
                     the last good checkpoint is kept — lower {}.lr or check the data",
                    trainer.step + 1,
                    ctx.stage
                )));
            }
            continue;
        }
        bad_steps = 0;
        log_step(
            ctx,
            trainer.step,
            &report,
            started.elapsed().as_secs_f64(),
            flops,
        );
        progress.set_position(trainer.step);
        progress.set_message(format!("loss {:.3}", report.ce));

        if trainer.step.is_multiple_of(cfg.eval_every) || trainer.step == cfg.steps {
            last_eval = Some((trainer.step, evaluate(trainer)?));
        }
        if trainer.step.is_multiple_of(cfg.checkpoint_every) && trainer.step < cfg.steps {
            save(trainer, loader, last_eval)?;
        }
    }
    progress.finish_and_clear();
    Ok(())
}

/// Held-out loss on fixed batches, recorded as the `val` suite's `loss`, `bits_per_token` and, when
/// the split's bytes per token are known, `bits_per_byte`.
pub fn record_val_loss(
    ctx: &StageContext,
    trainer: &Trainer,
    val: &[TokenBatch],
    bytes_per_token: Option<f64>,
) -> Result<f64, StageError> {
    let loss = trainer.eval_loss(val).map_err(StageError::failed)?;
    let samples = val.iter().map(|b| b.tokens).sum::<u64>() as usize;
    let step = trainer.step;
    let bits = loss / std::f64::consts::LN_2;
    ctx.record_eval(None, step, "val", "loss", loss, samples)?;
    ctx.record_eval(None, step, "val", "bits_per_token", bits, samples)?;
    if let Some(b) = bytes_per_token.filter(|b| *b > 0.0) {
        ctx.record_eval(None, step, "val", "bits_per_byte", bits / b, samples)?;
    }
    info!(step, val_loss = format!("{loss:.4}"), "eval");
    Ok(loss)
}

/// Per step: losses, gradient norm, LR, throughput and MFU (training FLOPs against the machine's fp32
/// peak measured once per process, [`fma_peak_gflops`]), and per MoE layer the tokens each expert received, the entropy of
/// that assignment (`router_entropy`, nats; ln(n_experts) is perfectly balanced) and the experts
/// that received none.
fn log_step(ctx: &StageContext, step: u64, r: &StepReport, seconds: f64, flops_per_token: f64) {
    let tokens_per_s = r.tokens as f64 / seconds.max(1e-9);
    let mut values: Vec<(String, f64)> = vec![
        ("loss".into(), r.ce),
        ("total_loss".into(), r.loss),
        ("aux_loss".into(), r.aux_loss),
        ("z_loss".into(), r.z_loss),
        ("grad_norm".into(), r.grad_norm),
        ("lr".into(), r.lr),
        ("tokens_per_s".into(), tokens_per_s),
        (
            "mfu".into(),
            tokens_per_s * flops_per_token / (fma_peak_gflops() * 1e9),
        ),
    ];
    // f16 only: the dynamic loss scale of the step (its halvings are `loss_scale_backoff` events).
    if let Some(scale) = r.loss_scale {
        values.push(("loss_scale".into(), scale));
    }
    for (layer, counts) in r.expert_counts.iter().enumerate() {
        let total: u64 = counts.iter().sum();
        let mut entropy = 0.0;
        for (e, &c) in counts.iter().enumerate() {
            values.push((format!("expert_load/L{layer}/E{e}"), c as f64));
            if c > 0 && total > 0 {
                let p = c as f64 / total as f64;
                entropy -= p * p.ln();
            }
        }
        values.push((format!("router_entropy/L{layer}"), entropy));
        values.push((
            format!("dead_experts/L{layer}"),
            counts.iter().filter(|&&c| c == 0).count() as f64,
        ));
    }
    let refs: Vec<(&str, f64)> = values.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    ctx.log_metrics(step, &refs);
}
