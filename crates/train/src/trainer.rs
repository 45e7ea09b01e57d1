//! The training loop's step, shared by every training stage: forward, backward with gradient
//! accumulation over micro-batches, non-finite rejection, clipping, AdamW, and checkpoint state.
//!
//! Stages own the data (they turn their loader's batches into [`TokenBatch`]es) and the loop; the
//! trainer owns the model, the optimizer and the schedule position, and saves/restores them exactly.

use crate::checkpoint;
use crate::optim::{AdamW, AdamWConfig, OptimError, default_decay};
use crate::schedule::LrSchedule;
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use std::path::Path;
use tardbot_core::ModelConfig;
use tardbot_core::config::TrainConfig;
use tardbot_model::{
    ModelError, TardBot, init_weights, load_safetensors_into, named_vars, save_safetensors,
};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Optim(#[from] OptimError),
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    #[error("trainer state {}: {what}", path.display())]
    State {
        path: std::path::PathBuf,
        what: String,
    },
}

pub type Result<T> = std::result::Result<T, TrainError>;

/// One micro-batch: inputs and targets (batch, seq) u32; optional document ids for attention
/// masking of packed sequences and a loss mask (1 = the target counts).
pub struct TokenBatch {
    pub inputs: Tensor,
    pub targets: Tensor,
    pub doc_ids: Option<Tensor>,
    pub loss_mask: Option<Tensor>,
    /// Target tokens that count toward the loss.
    pub tokens: u64,
}

/// What one optimizer step did.
#[derive(Clone, Debug)]
pub struct StepReport {
    /// Mean total loss (ce + router losses) over the micro-batches.
    pub loss: f64,
    pub ce: f64,
    pub aux_loss: f64,
    pub z_loss: f64,
    pub grad_norm: f64,
    pub lr: f64,
    pub tokens: u64,
    /// Per MoE layer, tokens routed to each expert (summed over micro-batches).
    pub expert_counts: Vec<Vec<u64>>,
    /// The loss or a gradient was NaN/Inf: no update was applied.
    pub rejected: bool,
}

pub struct Trainer {
    pub model: TardBot,
    pub varmap: VarMap,
    opt: AdamW,
    schedule: LrSchedule,
    grad_clip: f64,
    /// Optimizer steps applied.
    pub step: u64,
    /// Target tokens trained on.
    pub tokens: u64,
}

/// What a checkpoint's `trainer.json` holds besides the weights and the optimizer.
#[derive(serde::Serialize, serde::Deserialize)]
struct TrainerState {
    step: u64,
    tokens: u64,
    /// The stage's own state (data-loader cursor, best eval, …).
    extra: serde_json::Value,
}

impl Trainer {
    /// A freshly initialised model (seeded) and optimizer, on CPU in f32.
    pub fn new(model_cfg: &ModelConfig, train: &TrainConfig, seed: u64) -> Result<Trainer> {
        let varmap = VarMap::new();
        let model = TardBot::new(
            model_cfg,
            candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        )?;
        init_weights(&varmap, model_cfg, seed)?;
        Self::with_model(model, varmap, train)
    }

    /// Starts from the weights of `weights` (e.g. the previous stage's final model).
    pub fn from_weights(
        model_cfg: &ModelConfig,
        train: &TrainConfig,
        weights: &Path,
    ) -> Result<Trainer> {
        let varmap = VarMap::new();
        let model = TardBot::new(
            model_cfg,
            candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        )?;
        load_safetensors_into(&varmap, weights)?;
        Self::with_model(model, varmap, train)
    }

    fn with_model(model: TardBot, varmap: VarMap, train: &TrainConfig) -> Result<Trainer> {
        let config = AdamWConfig {
            weight_decay: train.weight_decay,
            ..AdamWConfig::default()
        };
        let opt = AdamW::new(named_vars(&varmap), config, default_decay)?;
        Ok(Trainer {
            model,
            varmap,
            opt,
            schedule: LrSchedule::from_config(train),
            grad_clip: train.grad_clip,
            step: 0,
            tokens: 0,
        })
    }

    pub fn lr(&self) -> f64 {
        self.schedule.lr_at(self.step)
    }

    /// One optimizer step over `micro_batches` (gradient accumulation: each micro-batch's loss is
    /// scaled by 1/n and its gradients summed, so activations of one micro-batch live at a time).
    pub fn train_step(&mut self, micro_batches: &[TokenBatch]) -> Result<StepReport> {
        let n = micro_batches.len().max(1) as f64;
        let lr = self.lr();
        let mut acc: Option<GradStore> = None;
        let (mut loss, mut ce, mut aux, mut z) = (0.0, 0.0, 0.0, 0.0);
        let mut tokens = 0;
        let mut counts: Vec<Vec<u64>> = Vec::new();
        for mb in micro_batches {
            let out = self.model.forward(&mb.inputs, mb.doc_ids.as_ref())?;
            let l = self.model.loss(&out, &mb.targets, mb.loss_mask.as_ref())?;
            loss += scalar(&l.total)? / n;
            ce += scalar(&l.ce)? / n;
            aux += scalar(&out.aux_loss)? / n;
            z += scalar(&out.z_loss)? / n;
            tokens += mb.tokens;
            for (layer, c) in out.expert_counts.iter().enumerate() {
                if counts.len() <= layer {
                    counts.push(vec![0; c.len()]);
                }
                for (a, &b) in counts[layer].iter_mut().zip(c) {
                    *a += b as u64;
                }
            }
            let grads = (l.total / n)?.backward()?;
            acc = Some(match acc {
                None => grads,
                Some(mut sum) => {
                    for (_, var) in named_vars(&self.varmap) {
                        if let Some(g) = grads.get(var.as_tensor()) {
                            let total = match sum.get(var.as_tensor()) {
                                Some(s) => (s + g)?,
                                None => g.clone(),
                            };
                            sum.insert(var.as_tensor(), total);
                        }
                    }
                    sum
                }
            });
        }
        let mut report = StepReport {
            loss,
            ce,
            aux_loss: aux,
            z_loss: z,
            grad_norm: f64::NAN,
            lr,
            tokens,
            expert_counts: counts,
            rejected: true,
        };
        let Some(grads) = acc else { return Ok(report) };
        if !loss.is_finite() {
            return Ok(report);
        }
        let norm = self.opt.grad_norm(&grads)?;
        report.grad_norm = norm;
        if !norm.is_finite() {
            return Ok(report);
        }
        self.opt.step(&grads, lr, self.grad_clip)?;
        self.step += 1;
        self.tokens += tokens;
        report.rejected = false;
        Ok(report)
    }

    /// Mean cross-entropy (nats per target token) over `batches`, no gradients kept.
    pub fn eval_loss(&self, batches: &[TokenBatch]) -> Result<f64> {
        let (mut sum, mut count) = (0.0, 0u64);
        for b in batches {
            let out = self.model.forward(&b.inputs, b.doc_ids.as_ref())?;
            let ce = tardbot_model::cross_entropy(
                &out.logits.detach(),
                &b.targets,
                b.loss_mask.as_ref(),
            )?;
            sum += scalar(&ce)? * b.tokens as f64;
            count += b.tokens;
        }
        Ok(if count == 0 {
            f64::NAN
        } else {
            sum / count as f64
        })
    }

    /// Writes weights, optimizer state and trainer state into a checkpoint directory.
    pub fn save(&self, dir: &Path, extra: serde_json::Value) -> Result<()> {
        save_safetensors(&self.varmap, &dir.join("model.safetensors"))?;
        self.opt.save(&dir.join("optim.safetensors"))?;
        let state = TrainerState {
            step: self.step,
            tokens: self.tokens,
            extra,
        };
        let path = dir.join("trainer.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&state).unwrap_or_default()).map_err(|e| {
            TrainError::State {
                path: path.clone(),
                what: e.to_string(),
            }
        })
    }

    /// Restores what [`Trainer::save`] wrote; returns the stage's `extra` state.
    pub fn load(&mut self, dir: &Path) -> Result<serde_json::Value> {
        load_safetensors_into(&self.varmap, &dir.join("model.safetensors"))?;
        self.opt.load(&dir.join("optim.safetensors"))?;
        let path = dir.join("trainer.json");
        let state_err = |what: String| TrainError::State {
            path: path.clone(),
            what,
        };
        let bytes = std::fs::read(&path).map_err(|e| state_err(e.to_string()))?;
        let state: TrainerState =
            serde_json::from_slice(&bytes).map_err(|e| state_err(e.to_string()))?;
        self.step = state.step;
        self.tokens = state.tokens;
        Ok(state.extra)
    }

    /// The final model for the next stage: weights only.
    pub fn save_weights(&self, path: &Path) -> Result<()> {
        Ok(save_safetensors(&self.varmap, path)?)
    }
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}
