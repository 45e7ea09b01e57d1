//! The `pretrain` stage: next-token prediction on the packed token shards of the `tokenize` stage.
//!
//! Recipe ([`PretrainStage::run`]): load the shards, build (or restore) the trainer, loop over
//! optimizer steps — train, log metrics, evaluate, checkpoint — and publish the final weights.
//! Attention is masked across the documents packed into one window, and the loss counts only real
//! targets. A resumed attempt restores weights, AdamW moments, step and the data-loader cursor from
//! the newest complete checkpoint, so it sees exactly the batches an uninterrupted run would have.
//!
//! What it does not do: the loop, optimizer, schedule and checkpoint mechanics (`tardbot-train`), the
//! shard format and loader (`tardbot-tokens`), or fine-tuning (the sft/toolcall/cot stages).

mod data;

use data::ShardSet;
use tardbot_core::PipelineConfig;
use tardbot_core::config::TrainConfig;
use tardbot_stage::{Resources, Stage, StageContext, StageError, StageOutput};
use tardbot_tokens::loader::{Loader, LoaderConfig};
use tardbot_train::Trainer;
use tardbot_train_stage::{record_val_loss, restore, train_loop};
use tracing::info;

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

    fn training(&self, config: &PipelineConfig) -> Option<TrainConfig> {
        Some(config.pretrain.clone())
    }

    fn config_slice(&self, config: &PipelineConfig) -> serde_json::Value {
        // `[execution]` stays out but for the device and a precision other than f32 (an f32 stage
        // keeps its fingerprint from before the setting): the other settings give the same bits.
        let exec = config.execution.for_stage(self.name());
        let mut slice = serde_json::json!({
            "model": config.model, "pretrain": config.pretrain, "seed": config.seed, "device": exec.device,
        });
        if exec.precision != tardbot_core::config::Precision::F32 {
            slice["precision"] = serde_json::json!(exec.precision);
        }
        slice
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
        let val = shards.validation_batches(cfg.batch_size, cfg.eval_batches, seed)?;

        // Model: the preset, with the vocabulary of the trained tokenizer.
        let mut model_cfg = ctx.config.model_config().map_err(StageError::failed)?;
        model_cfg.vocab_size = shards.model_vocab;
        let exec = ctx.config.execution.for_stage(ctx.stage);
        let mut trainer = Trainer::new(&model_cfg, cfg, &exec, seed, Some(&ctx.work_dir))
            .map_err(StageError::failed)?;

        // Resume: weights, moments, step and the loader's cursor.
        let mut loader = match restore(ctx, &mut trainer, shards.open_train()?)? {
            Some(loader) => loader,
            None => Loader::new(shards.open_train()?, loader_cfg).map_err(StageError::failed)?,
        };
        ctx.event(
            "pretrain_start",
            serde_json::json!({ "step": trainer.step, "params": model_cfg.param_counts().total, "vocab": model_cfg.vocab_size }),
        )?;

        // Baselines: a model must beat the unigram entropy of the data; bits per byte compare across
        // tokenizers.
        let stats = shards.token_stats()?;
        ctx.record_eval(
            None,
            0,
            "baseline",
            "unigram_entropy",
            stats.unigram_entropy,
            0,
        )?;
        info!(
            unigram_entropy = format!("{:.4}", stats.unigram_entropy),
            val_bytes_per_token = format!("{:.3}", stats.val_bytes_per_token),
            "baselines (nats per token)"
        );

        // The loop: train, log, evaluate held-out loss (also at step 0: the "before"), checkpoint.
        let mut last_loss = f64::NAN;
        if ctx.resume.is_none() {
            record_val_loss(ctx, &trainer, &val, Some(stats.val_bytes_per_token))?;
        }
        train_loop(ctx, cfg, &mut trainer, &mut loader, &mut |t| {
            last_loss = record_val_loss(ctx, t, &val, Some(stats.val_bytes_per_token))?;
            Ok(last_loss)
        })?;
        info!(
            val_loss = format!("{last_loss:.4}"),
            unigram_entropy = format!("{:.4}", stats.unigram_entropy),
            bits_per_byte = format!(
                "{:.4}",
                last_loss / std::f64::consts::LN_2 / stats.val_bytes_per_token
            ),
            "pretrained: held-out loss against the unigram entropy of the data"
        );

        // Publish the final weights and the exact model configuration they belong to.
        trainer
            .finish(&ctx.out_dir.join("model.safetensors"))
            .map_err(StageError::failed)?;
        let model_json = serde_json::to_vec_pretty(&model_cfg).map_err(StageError::failed)?;
        std::fs::write(ctx.out_dir.join("model.json"), model_json)?;
        Ok(StageOutput::default()
            .with("model", "model.safetensors")
            .with("model-config", "model.json"))
    }
}
