//! The `pretrain` stage: next-token prediction on the packed token shards of the `tokenize` stage.
//!
//! Recipe ([`PretrainStage::run`]): load the shards, build (or restore) the trainer, loop over
//! optimizer steps — train, log metrics, evaluate, checkpoint — and publish the final weights.
//! Attention is masked across the documents packed into one window, and the loss counts only real
//! targets. A resumed attempt restores weights, AdamW moments, step and the data-loader cursor from
//! the newest complete checkpoint, so it sees exactly the batches an uninterrupted run would have.
//!
//! What it does not do: the optimizer, schedule and checkpoint mechanics (`tardbot-train`), the
//! shard format and loader (`tardbot-tokens`), or fine-tuning (the sft/toolcall/cot stages).

mod data;

use data::{ShardSet, batch_tensors};
use std::path::Path;
use std::time::Instant;
use tardbot_core::PipelineConfig;
use tardbot_core::stage::{Resources, Stage, StageContext, StageError, StageOutput};
use tardbot_tokens::loader::{Cursor, Loader, LoaderConfig};
use tardbot_train::checkpoint;
use tardbot_train::{StepReport, TokenBatch, Trainer};
use tracing::info;

/// Consecutive non-finite steps after which the stage stops.
const MAX_BAD_STEPS: u32 = 5;

pub struct PretrainStage;

impl Stage for PretrainStage {
    fn name(&self) -> &'static str {
        "pretrain"
    }

    fn inputs(&self) -> &'static [&'static str] {
        &["tokenizer", "tokenize"]
    }

    fn enabled(&self, config: &PipelineConfig) -> bool {
        config.pretrain.enabled
    }

    fn config_slice(&self, config: &PipelineConfig) -> serde_json::Value {
        serde_json::json!({ "model": config.model, "pretrain": config.pretrain, "seed": config.seed })
    }

    fn resources(&self, _config: &PipelineConfig) -> Resources {
        Resources {
            threads: 0,
            exclusive: true,
        }
    }

    fn run(&self, ctx: &StageContext) -> Result<StageOutput, StageError> {
        let cfg = &ctx.config.pretrain;
        let seed = ctx.config.seed;

        // Data: the train split streams through a seeded loader; a fixed set of validation batches.
        let shards = ShardSet::from_inputs(ctx)?;
        let loader_cfg = LoaderConfig {
            batch_size: cfg.batch_size,
            seed,
            rank: 0,
            world_size: 1,
        };
        let mut loader =
            Loader::new(shards.open_train()?, loader_cfg.clone()).map_err(StageError::failed)?;
        let val = shards.validation_batches(cfg.batch_size, cfg.eval_batches, seed)?;

        // Model: the preset, with the vocabulary of the trained tokenizer.
        let mut model_cfg = ctx.config.model_config().map_err(StageError::failed)?;
        model_cfg.vocab_size = shards.model_vocab;
        let mut trainer = Trainer::new(&model_cfg, cfg, seed).map_err(StageError::failed)?;

        // Resume: weights, moments, step and the loader's cursor.
        if let Some(c) = &ctx.resume {
            let extra = trainer
                .load(Path::new(&c.path))
                .map_err(StageError::failed)?;
            let cursor: Cursor =
                serde_json::from_value(extra["cursor"].clone()).map_err(StageError::failed)?;
            loader = Loader::resume(shards.open_train()?, &cursor).map_err(StageError::failed)?;
            info!(step = trainer.step, "resumed from checkpoint");
        }
        ctx.event(
            "pretrain_start",
            serde_json::json!({ "step": trainer.step, "params": model_cfg.param_counts().total, "vocab": model_cfg.vocab_size }),
        )?;

        let save = |trainer: &Trainer, loader: &Loader| -> Result<(), StageError> {
            let extra = serde_json::json!({ "cursor": loader.cursor() });
            let dir = checkpoint::write_atomic(&ctx.work_dir, trainer.step, |tmp| {
                trainer.save(tmp, extra)
            })
            .map_err(StageError::failed)?;
            ctx.record_checkpoint(trainer.step, trainer.tokens, &dir.path)?;
            checkpoint::prune(&ctx.work_dir, cfg.keep_checkpoints, &[])
                .map_err(StageError::failed)?;
            Ok(())
        };

        // The loop.
        let progress = ctx.progress(cfg.steps, "steps");
        progress.set_position(trainer.step);
        let mut bad_steps = 0;
        while trainer.step < cfg.steps {
            if ctx.cancelled() {
                save(&trainer, &loader)?;
                return Err(StageError::Interrupted(Some(trainer.step)));
            }
            let started = Instant::now();
            let micro: Vec<TokenBatch> = (0..cfg.grad_accum)
                .map(|_| batch_tensors(&loader.next_batch()))
                .collect::<Result<_, _>>()?;
            let report = trainer.train_step(&micro).map_err(StageError::failed)?;
            if report.rejected {
                bad_steps += 1;
                ctx.event("nonfinite_step", serde_json::json!({ "step": trainer.step + 1, "loss": report.loss.to_string() }))?;
                if bad_steps >= MAX_BAD_STEPS {
                    return Err(StageError::failed(format!(
                        "loss or gradients were NaN/Inf for {bad_steps} consecutive steps, the last at step {}; \
                         the last good checkpoint is kept — lower pretrain.lr or check the data",
                        trainer.step + 1
                    )));
                }
                continue;
            }
            bad_steps = 0;
            log_step(ctx, trainer.step, &report, started.elapsed().as_secs_f64());
            progress.set_position(trainer.step);
            progress.set_message(format!("loss {:.3}", report.ce));

            if trainer.step % cfg.eval_every == 0 || trainer.step == cfg.steps {
                let loss = trainer.eval_loss(&val).map_err(StageError::failed)?;
                record_eval(ctx, trainer.step, loss, &val)?;
                info!(
                    step = trainer.step,
                    train_loss = format!("{:.4}", report.ce),
                    val_loss = format!("{loss:.4}"),
                    "eval"
                );
            }
            if trainer.step % cfg.checkpoint_every == 0 && trainer.step < cfg.steps {
                save(&trainer, &loader)?;
            }
        }
        progress.finish_and_clear();

        // Publish the final weights and the exact model configuration they belong to.
        trainer
            .save_weights(&ctx.out_dir.join("model.safetensors"))
            .map_err(StageError::failed)?;
        let model_json = serde_json::to_vec_pretty(&model_cfg).map_err(StageError::failed)?;
        std::fs::write(ctx.out_dir.join("model.json"), model_json)?;
        Ok(StageOutput::default()
            .with("model", "model.safetensors")
            .with("model-config", "model.json"))
    }
}

fn log_step(ctx: &StageContext, step: u64, r: &StepReport, seconds: f64) {
    let mut values: Vec<(String, f64)> = vec![
        ("loss".into(), r.ce),
        ("total_loss".into(), r.loss),
        ("aux_loss".into(), r.aux_loss),
        ("z_loss".into(), r.z_loss),
        ("grad_norm".into(), r.grad_norm),
        ("lr".into(), r.lr),
        ("tokens_per_s".into(), r.tokens as f64 / seconds.max(1e-9)),
    ];
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
        // Entropy of the realised expert load (nats); ln(n_experts) is perfectly balanced.
        values.push((format!("expert_load_entropy/L{layer}"), entropy));
        values.push((
            format!("dead_experts/L{layer}"),
            counts.iter().filter(|&&c| c == 0).count() as f64,
        ));
    }
    let refs: Vec<(&str, f64)> = values.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    ctx.log_metrics(step, &refs);
}

fn record_eval(
    ctx: &StageContext,
    step: u64,
    loss: f64,
    val: &[TokenBatch],
) -> Result<(), StageError> {
    let samples: u64 = val.iter().map(|b| b.tokens).sum();
    ctx.record_eval(None, step, "val", "loss", loss, samples as usize)?;
    ctx.record_eval(
        None,
        step,
        "val",
        "bits_per_token",
        loss / std::f64::consts::LN_2,
        samples as usize,
    )?;
    Ok(())
}
