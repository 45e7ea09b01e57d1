//! The training loop's step, shared by every training stage: forward, backward with gradient
//! accumulation over micro-batches, non-finite rejection, clipping, AdamW, and checkpoint state.
//!
//! Stages own the data (they turn their loader's batches into [`TokenBatch`]es) and the loop; the
//! trainer owns the model, the optimizer and the schedule position, and saves/restores them exactly.
//!
//! Building a trainer (model, expert store, weights, optimizer) is in `build`; the segmented backward
//! of activation checkpointing in `segmented`.

use crate::optim::AdamW;
use crate::schedule::LrSchedule;
use crate::{checkpoint, expert_checkpoint};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use candle_nn::VarMap;
use std::path::Path;
use std::time::Instant;
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
    pub model: TardBot,
    pub varmap: VarMap,
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

/// What a checkpoint's `trainer.json` holds besides the weights and the optimizer.
#[derive(serde::Serialize, serde::Deserialize)]
struct TrainerState {
    step: u64,
    tokens: u64,
    /// The stage's own state (data-loader cursor, best eval, …).
    extra: serde_json::Value,
}

impl Trainer {
    pub fn lr(&self) -> f64 {
        self.schedule.lr_at(self.step)
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
        let norm = self.opt.grad_norm(&grads, store)?;
        report.grad_norm = norm;
        if !norm.is_finite() {
            report.timings.optimizer_s = started.elapsed().as_secs_f64();
            return self.reject(store, report);
        }
        self.opt
            .step_with_norm(&grads, store, norm, report.lr, self.grad_clip)?;
        drop(grads);
        report.timings.optimizer_s = started.elapsed().as_secs_f64();
        self.step += 1;
        self.tokens += report.tokens;
        report.rejected = false;
        Ok(report)
    }

    /// A rejected step: nothing is updated; gradients accumulated in the expert store are dropped.
    fn reject(&self, store: Option<&ExpertStore>, report: StepReport) -> Result<StepReport> {
        if let Some(store) = store {
            AdamW::discard_store_grads(store)?;
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
                self.micro_grads_segmented(mb, 1.0 / n, &mut timings)?
            } else {
                self.micro_grads(mb, 1.0 / n, &mut timings)?
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
            add_param_grads(&mut acc, grads, &vars)?;
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
mod tests;
