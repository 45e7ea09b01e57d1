//! `[pretrain]`, `[sft]`, `[toolcall]`, `[cot]`: the settings every training stage shares. (How a stage
//! trains, e.g. activation checkpointing, is `[execution]`: see `execution.rs`.)

use super::validate::Problems;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Optimizer steps.
    pub steps: u64,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Micro-batches accumulated per optimizer step.
    #[serde(default = "one")]
    pub grad_accum: usize,
    pub lr: f64,
    #[serde(default = "default_min_lr_ratio")]
    pub min_lr_ratio: f64,
    #[serde(default)]
    pub warmup_steps: u64,
    #[serde(default)]
    pub schedule: Schedule,
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
    #[serde(default = "default_grad_clip")]
    pub grad_clip: f64,
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
    /// Checkpoints kept besides the best one.
    #[serde(default = "default_keep")]
    pub keep_checkpoints: usize,
    #[serde(default = "default_eval_every")]
    pub eval_every: u64,
    #[serde(default = "default_eval_batches")]
    pub eval_batches: usize,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    #[default]
    Cosine,
    /// Warmup, stable, decay.
    Wsd,
}

fn yes() -> bool {
    true
}
fn one() -> usize {
    1
}
fn default_min_lr_ratio() -> f64 {
    0.1
}
fn default_weight_decay() -> f64 {
    0.1
}
fn default_grad_clip() -> f64 {
    1.0
}
fn default_checkpoint_every() -> u64 {
    50
}
fn default_keep() -> usize {
    2
}
fn default_eval_every() -> u64 {
    50
}
fn default_eval_batches() -> usize {
    8
}

impl TrainConfig {
    pub fn pretrain_default() -> Self {
        TrainConfig {
            enabled: true,
            steps: 300,
            batch_size: 8,
            seq_len: 256,
            grad_accum: 1,
            lr: 3e-3,
            min_lr_ratio: default_min_lr_ratio(),
            warmup_steps: 20,
            schedule: Schedule::Cosine,
            weight_decay: default_weight_decay(),
            grad_clip: default_grad_clip(),
            checkpoint_every: default_checkpoint_every(),
            keep_checkpoints: default_keep(),
            eval_every: default_eval_every(),
            eval_batches: default_eval_batches(),
        }
    }

    /// A fine-tuning stage whose section is absent from `pipeline.toml` does not run (it would have
    /// no data); writing the section enables it.
    pub fn finetune_default() -> Self {
        TrainConfig {
            enabled: false,
            steps: 100,
            lr: 1e-3,
            warmup_steps: 10,
            ..Self::pretrain_default()
        }
    }

    pub fn check(&self, section: &str, p: &mut Problems) {
        if !self.enabled {
            return;
        }
        let mut need_positive = |field: &str, v: u64| {
            if v == 0 {
                p.push(
                    &format!("{section}.{field}"),
                    "must be at least 1".to_string(),
                );
            }
        };
        need_positive("steps", self.steps);
        need_positive("batch_size", self.batch_size as u64);
        need_positive("seq_len", self.seq_len as u64);
        need_positive("grad_accum", self.grad_accum as u64);
        need_positive("checkpoint_every", self.checkpoint_every);
        need_positive("eval_every", self.eval_every);
        if !(self.lr.is_finite() && self.lr > 0.0 && self.lr < 1.0) {
            p.push(
                &format!("{section}.lr"),
                format!("{} is not a learning rate in (0, 1)", self.lr),
            );
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            p.push(
                &format!("{section}.min_lr_ratio"),
                "must be within [0, 1]".to_string(),
            );
        }
        if self.warmup_steps > self.steps {
            p.push(
                &format!("{section}.warmup_steps"),
                format!(
                    "{} warmup steps exceed the {} steps of the stage",
                    self.warmup_steps, self.steps
                ),
            );
        }
        if self.grad_clip.is_nan() || self.grad_clip < 0.0 {
            p.push(
                &format!("{section}.grad_clip"),
                "must be >= 0 (0 disables clipping)".to_string(),
            );
        }
        if self.weight_decay.is_nan() || self.weight_decay < 0.0 {
            p.push(
                &format!("{section}.weight_decay"),
                "must be >= 0".to_string(),
            );
        }
    }
}
