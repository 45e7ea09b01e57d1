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

    /// One optimizer step over `micro_batches`: [`Trainer::gradients`], then clipping and AdamW,
    /// unless the loss or the gradient norm is NaN/Inf (then nothing is updated and the report says
    /// `rejected`).
    pub fn train_step(&mut self, micro_batches: &[TokenBatch]) -> Result<StepReport> {
        let (grads, mut report) = self.gradients(micro_batches)?;
        let Some(grads) = grads else {
            return Ok(report);
        };
        if !report.loss.is_finite() {
            return Ok(report);
        }
        let norm = self.opt.grad_norm(&grads)?;
        report.grad_norm = norm;
        if !norm.is_finite() {
            return Ok(report);
        }
        self.opt.step(&grads, report.lr, self.grad_clip)?;
        self.step += 1;
        self.tokens += report.tokens;
        report.rejected = false;
        Ok(report)
    }

    /// Gradients of the mean loss over `micro_batches` (gradient accumulation: each micro-batch's
    /// loss is scaled by 1/n and its gradients summed, so the activations of one micro-batch live at
    /// a time). The report is complete except for the gradient norm; `rejected` is still true.
    pub fn gradients(
        &self,
        micro_batches: &[TokenBatch],
    ) -> Result<(Option<GradStore>, StepReport)> {
        let n = micro_batches.len().max(1) as f64;
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
        let report = StepReport {
            loss,
            ce,
            aux_loss: aux,
            z_loss: z,
            grad_norm: f64::NAN,
            lr: self.lr(),
            tokens,
            expert_counts: counts,
            rejected: true,
        };
        Ok((acc, report))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn train_cfg() -> TrainConfig {
        TrainConfig {
            steps: 30,
            lr: 1e-2,
            warmup_steps: 0,
            grad_clip: 1.0,
            ..TrainConfig::pretrain_default()
        }
    }

    fn batch(rows: &[Vec<u32>]) -> TokenBatch {
        let t = rows[0].len() - 1;
        let inputs: Vec<u32> = rows.iter().flat_map(|r| r[..t].to_vec()).collect();
        let targets: Vec<u32> = rows.iter().flat_map(|r| r[1..].to_vec()).collect();
        TokenBatch {
            inputs: Tensor::from_vec(inputs, (rows.len(), t), &Device::Cpu).unwrap(),
            targets: Tensor::from_vec(targets, (rows.len(), t), &Device::Cpu).unwrap(),
            doc_ids: None,
            loss_mask: None,
            tokens: (rows.len() * t) as u64,
        }
    }

    fn rows(n: usize, len: usize, vocab: u32, salt: u32) -> Vec<Vec<u32>> {
        (0..n)
            .map(|r| {
                (0..len as u32)
                    .map(|i| (i * 7 + r as u32 * 3 + salt) % vocab)
                    .collect()
            })
            .collect()
    }

    #[test]
    fn loss_falls_on_a_learnable_sequence() {
        let cfg = ModelConfig::from_preset("micro").unwrap();
        let mut t = Trainer::new(&cfg, &train_cfg(), 1).unwrap();
        let b = batch(&rows(4, 17, cfg.vocab_size as u32, 0));
        let first = t.train_step(std::slice::from_ref(&b)).unwrap();
        let mut last = first.clone();
        for _ in 0..29 {
            last = t.train_step(std::slice::from_ref(&b)).unwrap();
        }
        assert!(!last.rejected && t.step == 30);
        assert!(
            last.ce < first.ce * 0.5,
            "cross-entropy {} -> {}",
            first.ce,
            last.ce
        );
        assert_eq!(first.expert_counts.len(), cfg.n_moe_layers());
    }

    #[test]
    fn two_micro_batches_give_the_gradients_of_one_batch() {
        // The router losses are batch statistics (load balance over the batch), so they legitimately
        // differ under accumulation; the cross-entropy gradients must not.
        let mut cfg = ModelConfig::from_preset("micro").unwrap();
        cfg.router_aux_loss_coef = 0.0;
        cfg.router_z_loss_coef = 0.0;
        let all = rows(4, 9, cfg.vocab_size as u32, 5);
        let t = Trainer::new(&cfg, &train_cfg(), 3).unwrap();
        let (whole, r1) = t.gradients(&[batch(&all)]).unwrap();
        let (split, r2) = t.gradients(&[batch(&all[..2]), batch(&all[2..])]).unwrap();
        let (whole, split) = (whole.unwrap(), split.unwrap());
        // Equal-sized micro-batches: the mean of the two means is the mean of the whole.
        assert!((r1.ce - r2.ce).abs() < 1e-5, "{} vs {}", r1.ce, r2.ce);
        let mut checked = 0;
        for (n, v) in named_vars(&t.varmap) {
            let (Some(a), Some(b)) = (whole.get(v.as_tensor()), split.get(v.as_tensor())) else {
                continue;
            };
            let scale = a
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                .max(1e-6);
            let diff = (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(
                diff <= 1e-4 * scale + 1e-7,
                "{n}: max |Δ| = {diff} (scale {scale})"
            );
            checked += 1;
        }
        assert!(checked > 20, "only {checked} tensors had gradients");
    }

    #[test]
    fn save_and_load_resume_bit_identically() {
        let cfg = ModelConfig::from_preset("micro").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let batches: Vec<TokenBatch> = (0..4)
            .map(|i| batch(&rows(2, 9, cfg.vocab_size as u32, i)))
            .collect();
        let mut a = Trainer::new(&cfg, &train_cfg(), 7).unwrap();
        for b in &batches[..2] {
            a.train_step(std::slice::from_ref(b)).unwrap();
        }
        a.save(dir.path(), serde_json::json!({"cursor": 2}))
            .unwrap();
        let mut b = Trainer::new(&cfg, &train_cfg(), 99).unwrap();
        assert_eq!(b.load(dir.path()).unwrap()["cursor"], 2);
        assert_eq!(b.step, 2);
        for batch in &batches[2..] {
            let ra = a.train_step(std::slice::from_ref(batch)).unwrap();
            let rb = b.train_step(std::slice::from_ref(batch)).unwrap();
            assert_eq!(ra.loss.to_bits(), rb.loss.to_bits());
        }
        for ((n, x), (_, y)) in named_vars(&a.varmap)
            .iter()
            .zip(named_vars(&b.varmap).iter())
        {
            let x = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let y = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(
                x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()),
                "{n} differs"
            );
        }
    }
}
