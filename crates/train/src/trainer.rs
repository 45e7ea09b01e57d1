//! The training loop's step, shared by every training stage: forward, backward with gradient
//! accumulation over micro-batches, non-finite rejection, clipping, AdamW, and checkpoint state.
//!
//! Stages own the data (they turn their loader's batches into [`TokenBatch`]es) and the loop; the
//! trainer owns the model, the optimizer and the schedule position, and saves/restores them exactly.
//!
//! Building a trainer (model, expert store, weights, optimizer) is in `build`; the segmented backward
//! of activation checkpointing in `segmented`.
//!
//! Mixed precision (`[execution] precision = "bf16" | "f16"`): `varmap` holds the f32 master weights,
//! which AdamW (f32 moments) updates and checkpoints hold; the model computes with a copy of them in
//! the compute type, cast from the masters after every update. Each micro-batch's gradients (of the
//! compute copy) are converted to f32 and accumulated in f32 under the masters. Under f16 the loss is
//! scaled ([`LossScaler`]): the gradients are unscaled in f32 (folded into the optimizer's gradient
//! multiplier: the scale is a power of two, so this is exact), and a step whose scaled gradients
//! overflow is skipped and the scale halved.

use crate::optim::AdamW;
use crate::scaler::LossScaler;
use crate::schedule::LrSchedule;
use crate::{checkpoint, expert_checkpoint};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use candle_nn::VarMap;
use std::path::Path;
use std::time::Instant;
use tardbot_core::config::Precision;
use tardbot_model::{ExpertStore, TardBot, load_safetensors_into, named_vars, save_safetensors};

pub use crate::error::{Result, TrainError};

mod build;
mod segmented;

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
    /// f16: the loss scale this step's backward used (`None` in f32 and bf16).
    pub loss_scale: Option<f64>,
    /// f16: the step was rejected because its scaled gradients overflowed, and the loss scale was
    /// halved (the usual start of an f16 run, not a divergence; the next steps use the new scale).
    pub overflow: bool,
    /// Where the step's time went.
    pub timings: StepTimings,
}

/// Wall-clock seconds of the phases of one step.
#[derive(Clone, Copy, Debug, Default)]
pub struct StepTimings {
    /// Forward passes and losses (with activation checkpointing: the first, gradient-free forward).
    pub forward_s: f64,
    /// Backward passes (with activation checkpointing: including the recomputed block forwards) and
    /// gradient accumulation over micro-batches.
    pub backward_s: f64,
    /// Gradient norm, clipping and the AdamW update.
    pub optimizer_s: f64,
}

pub struct Trainer {
    /// The model; under mixed precision it computes with the compute copy of the weights.
    pub model: TardBot,
    /// The weights the optimizer updates and checkpoints hold: f32 (under mixed precision, the
    /// master weights).
    pub varmap: VarMap,
    /// Compute precision ([`Precision`]).
    pub precision: Precision,
    /// Under bf16/f16: the weights the model computes with, cast from `varmap` after every update.
    compute: Option<ComputeCopy>,
    /// Under f16: dynamic loss scaling.
    loss_scaler: Option<LossScaler>,
    opt: AdamW,
    schedule: LrSchedule,
    grad_clip: f64,
    /// Segmented backward (see
    /// [`Execution::activation_checkpointing`](tardbot_core::config::Execution::activation_checkpointing)).
    pub activation_checkpointing: bool,
    /// Logit elements per LM-head chunk under activation checkpointing.
    head_chunk_elems: usize,
    /// Optimizer steps applied.
    pub step: u64,
    /// Target tokens trained on.
    pub tokens: u64,
    /// The checkpointed step with the lowest held-out loss so far, and that loss (kept by retention).
    pub best: Option<(u64, f64)>,
}

/// The compute copy of mixed precision: its own variables, paired with the masters by name.
struct ComputeCopy {
    /// Owns the compute variables (the model's).
    _varmap: VarMap,
    /// (master, compute copy), in name order.
    pairs: Vec<(Var, Var)>,
}

/// What a checkpoint's `trainer.json` holds besides the weights and the optimizer.
#[derive(serde::Serialize, serde::Deserialize)]
struct TrainerState {
    step: u64,
    tokens: u64,
    /// f16: the loss scaler's state (absent in other precisions and older checkpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    loss_scaler: Option<LossScaler>,
    /// The stage's own state (data-loader cursor, best eval, …).
    extra: serde_json::Value,
}

impl Trainer {
    pub fn lr(&self) -> f64 {
        self.schedule.lr_at(self.step)
    }

    /// The f16 loss scaler (`None` in f32 and bf16).
    pub fn loss_scaler(&self) -> Option<&LossScaler> {
        self.loss_scaler.as_ref()
    }

    /// The f16 loss scaler, to set its scale or growth interval (tests, experiments).
    pub fn loss_scaler_mut(&mut self) -> Option<&mut LossScaler> {
        self.loss_scaler.as_mut()
    }

    /// The variables the model computes with: the compute copy under mixed precision, else the
    /// weights of `varmap`; in name order.
    pub fn compute_vars(&self) -> Vec<Var> {
        match &self.compute {
            Some(c) => c.pairs.iter().map(|(_, c)| c.clone()).collect(),
            None => named_vars(&self.varmap)
                .into_iter()
                .map(|(_, v)| v)
                .collect(),
        }
    }

    /// Casts the master weights into the compute copy (after an update or a load).
    fn sync_compute(&self) -> Result<()> {
        if let Some(c) = &self.compute {
            for (master, copy) in &c.pairs {
                copy.set(&master.as_tensor().to_dtype(copy.dtype())?)?;
            }
        }
        Ok(())
    }

    /// One optimizer step over `micro_batches`: [`Trainer::gradients`], then clipping and AdamW,
    /// unless the loss or the gradient norm is NaN/Inf (then nothing is updated and the report says
    /// `rejected`).
    pub fn train_step(&mut self, micro_batches: &[TokenBatch]) -> Result<StepReport> {
        let store = self.model.expert_store().cloned();
        let store = store.as_deref();
        let (grads, mut report) = self.gradients(micro_batches)?;
        let grads = match grads {
            Some(g) if report.loss.is_finite() => g,
            _ => return self.reject(store, report),
        };
        let started = Instant::now();
        // The gradients are those of `loss_scale · loss`: unscaled here (exact, a power of two) and
        // in the update (the optimizer's gradient multiplier).
        let loss_scale = report.loss_scale.unwrap_or(1.0);
        let norm = self.opt.grad_norm(&grads, store)? / loss_scale;
        report.grad_norm = norm;
        if !norm.is_finite() {
            report.timings.optimizer_s = started.elapsed().as_secs_f64();
            return self.reject(store, report);
        }
        self.opt.step_with_norm_scaled(
            &grads,
            store,
            norm,
            report.lr,
            self.grad_clip,
            1.0 / loss_scale,
        )?;
        drop(grads);
        self.sync_compute()?;
        if let Some(s) = &mut self.loss_scaler {
            s.clean();
        }
        report.timings.optimizer_s = started.elapsed().as_secs_f64();
        self.step += 1;
        self.tokens += report.tokens;
        report.rejected = false;
        Ok(report)
    }

    /// A rejected step: nothing is updated; gradients accumulated in the expert store are dropped.
    /// Under f16 it is an overflow of the scaled gradients: the loss scale halves.
    fn reject(
        &mut self,
        store: Option<&ExpertStore>,
        mut report: StepReport,
    ) -> Result<StepReport> {
        if let Some(store) = store {
            AdamW::discard_store_grads(store)?;
        }
        if let Some(s) = &mut self.loss_scaler {
            s.overflowed();
            report.overflow = true;
        }
        Ok(report)
    }

    /// Gradients of the mean loss over `micro_batches` (gradient accumulation: each micro-batch's
    /// loss is scaled by 1/n and its gradients summed, so the activations of one micro-batch live at
    /// a time). With activation checkpointing the backward is segmented (one block's activations
    /// live at a time). The report is complete except for the gradient norm; `rejected` is still
    /// true.
    pub fn gradients(
        &self,
        micro_batches: &[TokenBatch],
    ) -> Result<(Option<GradStore>, StepReport)> {
        let n = micro_batches.len().max(1) as f64;
        let loss_scale = self.loss_scaler.as_ref().map(|s| s.scale);
        let objective_scale = loss_scale.unwrap_or(1.0) / n;
        let vars: Vec<Var> = named_vars(&self.varmap)
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        let mut acc = GradStore::default();
        let (mut loss, mut ce, mut aux, mut z) = (0.0, 0.0, 0.0, 0.0);
        let mut tokens = 0;
        let mut counts: Vec<Vec<u64>> = Vec::new();
        let mut timings = StepTimings::default();
        for mb in micro_batches {
            let (grads, m) = if self.activation_checkpointing {
                self.micro_grads_segmented(mb, objective_scale, &mut timings)?
            } else {
                self.micro_grads(mb, objective_scale, &mut timings)?
            };
            loss += m.loss / n;
            ce += m.ce / n;
            aux += m.aux / n;
            z += m.z / n;
            tokens += mb.tokens;
            for (layer, c) in m.expert_counts.iter().enumerate() {
                if counts.len() <= layer {
                    counts.push(vec![0; c.len()]);
                }
                for (a, &b) in counts[layer].iter_mut().zip(c) {
                    *a += b as u64;
                }
            }
            let started = Instant::now();
            match &self.compute {
                Some(c) => add_master_grads(&mut acc, grads, &c.pairs)?,
                None => add_param_grads(&mut acc, grads, &vars)?,
            }
            timings.backward_s += started.elapsed().as_secs_f64();
        }
        let acc = (!micro_batches.is_empty()).then_some(acc);
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
            loss_scale,
            overflow: false,
            timings,
        };
        Ok((acc, report))
    }

    /// One micro-batch, whole-graph backward: gradients of `scale · loss`.
    fn micro_grads(
        &self,
        mb: &TokenBatch,
        scale: f64,
        timings: &mut StepTimings,
    ) -> Result<(GradStore, MicroLosses)> {
        let started = Instant::now();
        let out = self.model.forward(&mb.inputs, mb.doc_ids.as_ref())?;
        let l = self.model.loss(&out, &mb.targets, mb.loss_mask.as_ref())?;
        let m = MicroLosses {
            loss: scalar(&l.total)?,
            ce: scalar(&l.ce)?,
            aux: scalar(&out.aux_loss)?,
            z: scalar(&out.z_loss)?,
            expert_counts: out.expert_counts,
        };
        let objective = (l.total * scale)?;
        drop((out.logits, out.aux_loss, out.z_loss, l.ce));
        timings.forward_s += started.elapsed().as_secs_f64();
        let started = Instant::now();
        let grads = objective.backward()?;
        drop(objective);
        timings.backward_s += started.elapsed().as_secs_f64();
        Ok((grads, m))
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

    /// Writes weights, optimizer state and trainer state into a checkpoint directory (a fresh
    /// `ckpt-<step>.tmp` beside the stage's other checkpoints). The expert store's regions go to
    /// `experts/`, linked to the newest existing checkpoint's copies where unchanged.
    pub fn save(&self, dir: &Path, extra: serde_json::Value) -> Result<()> {
        save_safetensors(&self.varmap, None, &dir.join("model.safetensors"))?;
        self.opt.save(&dir.join("optim.safetensors"))?;
        if let Some(store) = self.model.expert_store() {
            let previous = dir
                .parent()
                .map(checkpoint::list)
                .transpose()?
                .and_then(|all| all.last().map(|c| c.path.clone()));
            expert_checkpoint::save(store, dir, previous.as_deref())?;
        }
        let state = TrainerState {
            step: self.step,
            tokens: self.tokens,
            loss_scaler: self.loss_scaler,
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
        load_safetensors_into(&self.varmap, &dir.join("model.safetensors"), false)?;
        self.opt.load(&dir.join("optim.safetensors"))?;
        if let Some(store) = self.model.expert_store() {
            expert_checkpoint::restore(store, dir)?;
        }
        let path = dir.join("trainer.json");
        let state_err = |what: String| TrainError::State {
            path: path.clone(),
            what,
        };
        let bytes = std::fs::read(&path).map_err(|e| state_err(e.to_string()))?;
        let state: TrainerState =
            serde_json::from_slice(&bytes).map_err(|e| state_err(e.to_string()))?;
        if self.loss_scaler.is_some() {
            self.loss_scaler = Some(state.loss_scaler.ok_or_else(|| {
                state_err(
                    "no loss scaler state: the checkpoint was not written by an f16 run".into(),
                )
            })?);
        }
        self.sync_compute()?;
        self.step = state.step;
        self.tokens = state.tokens;
        Ok(state.extra)
    }

    /// The final model for the next stage: weights only, experts included wherever they live.
    pub fn save_weights(&self, path: &Path) -> Result<()> {
        Ok(save_safetensors(
            &self.varmap,
            self.model.expert_store().map(|s| s.as_ref()),
            path,
        )?)
    }

    /// The end of a stage: writes the final model to `path` ([`Trainer::save_weights`]) and removes
    /// the live expert store, if any (as large as all experts' state; the checkpoints keep their own
    /// copies).
    pub fn finish(self, path: &Path) -> Result<()> {
        self.save_weights(path)?;
        let store = self.model.expert_store().map(|s| s.path().to_path_buf());
        drop(self);
        if let Some(store) = store {
            std::fs::remove_file(&store).map_err(|e| TrainError::State {
                path: store.clone(),
                what: format!("removing the live expert store: {e}"),
            })?;
        }
        Ok(())
    }
}

/// Adds the parameter gradients of `grads` to `into` (`into + new`, as `GradStore::extend` would) and
/// drops the rest: candle's backward also leaves a gradient for every untracked input of an op
/// (masks, index bases, the upstream gradient of a segment), which would otherwise pile up block
/// after block — at mac_nano about as much again as the parameter gradients.
fn add_param_grads(into: &mut GradStore, mut grads: GradStore, vars: &[Var]) -> Result<()> {
    for v in vars {
        if let Some(g) = grads.remove(v.as_tensor()) {
            let sum = match into.remove(v.as_tensor()) {
                Some(prev) => prev.add(&g)?.detach(),
                None => g,
            };
            into.insert(v.as_tensor(), sum);
        }
    }
    Ok(())
}

/// Mixed precision: adds the compute copy's gradients of `grads`, converted to f32, to `into`
/// under their master weights (the accumulation over micro-batches is in f32), and drops the rest.
fn add_master_grads(
    into: &mut GradStore,
    mut grads: GradStore,
    pairs: &[(Var, Var)],
) -> Result<()> {
    for (master, copy) in pairs {
        if let Some(g) = grads.remove(copy.as_tensor()) {
            let g = g.to_dtype(DType::F32)?;
            let sum = match into.remove(master.as_tensor()) {
                Some(prev) => prev.add(&g)?.detach(),
                None => g,
            };
            into.insert(master.as_tensor(), sum);
        }
    }
    Ok(())
}

/// The scalar figures of one micro-batch.
struct MicroLosses {
    loss: f64,
    ce: f64,
    aux: f64,
    z: f64,
    expert_counts: Vec<Vec<u32>>,
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

#[cfg(test)]
mod expert_store_tests;
#[cfg(test)]
mod precision_tests;
#[cfg(test)]
mod tests;
