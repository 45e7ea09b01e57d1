//! The training loop's step, shared by every training stage: forward, backward with gradient
//! accumulation over micro-batches, non-finite rejection, clipping, AdamW, and checkpoint state.
//!
//! Stages own the data (they turn their loader's batches into [`TokenBatch`]es) and the loop; the
//! trainer owns the model, the optimizer and the schedule position, and saves/restores them exactly.

use crate::optim::{AdamW, AdamWConfig, OptimError, default_decay};
use crate::schedule::LrSchedule;
use crate::{checkpoint, expert_checkpoint};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tardbot_core::ModelConfig;
use tardbot_core::config::TrainConfig;
use tardbot_model::{
    ExpertStore, ModelError, StoreError, TardBot, init_expert_store, init_weights,
    load_safetensors_into, named_vars, save_safetensors,
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
    #[error(transparent)]
    Store(#[from] StoreError),
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
    /// Segmented backward (see [`TrainConfig::activation_checkpointing`]).
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

/// The file of the expert store in `store_dir`, when `cfg` keeps fewer experts in memory than it has.
fn expert_store_path(cfg: &ModelConfig, store_dir: Option<&Path>) -> Result<Option<PathBuf>> {
    if cfg.n_moe_layers() == 0 || cfg.max_experts_in_memory >= cfg.n_experts {
        return Ok(None);
    }
    match store_dir {
        Some(d) => Ok(Some(d.join("experts.store"))),
        None => Err(ModelError::Config(format!(
            "max_experts_in_memory = {} < n_experts = {} needs a directory for the expert store",
            cfg.max_experts_in_memory, cfg.n_experts
        ))
        .into()),
    }
}

/// A model on CPU in f32 whose experts are variables of the returned `VarMap`, or live in `store`.
fn build_model(cfg: &ModelConfig, store: Option<ExpertStore>) -> Result<(TardBot, VarMap)> {
    let varmap = VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = match store {
        Some(store) => {
            store.set_max_resident(cfg.max_experts_in_memory);
            TardBot::with_expert_store(cfg, vb, Arc::new(store))?
        }
        None => TardBot::new(cfg, vb)?,
    };
    Ok((model, varmap))
}

impl Trainer {
    /// A freshly initialised model (seeded) and optimizer, on CPU in f32. With
    /// `max_experts_in_memory < n_experts` the experts are created in an expert store in `store_dir`
    /// (`experts.store`, replacing any file there), initialised to the same values.
    pub fn new(
        model_cfg: &ModelConfig,
        train: &TrainConfig,
        seed: u64,
        store_dir: Option<&Path>,
    ) -> Result<Trainer> {
        let store = expert_store_path(model_cfg, store_dir)?
            .map(|p| init_expert_store(&p, model_cfg, seed))
            .transpose()?;
        let (model, varmap) = build_model(model_cfg, store)?;
        init_weights(&varmap, model_cfg, seed)?;
        Self::with_model(model, varmap, train)
    }

    /// Starts from the weights of `weights` (e.g. the previous stage's final model); the experts go to
    /// an expert store in `store_dir` as for [`Trainer::new`].
    pub fn from_weights(
        model_cfg: &ModelConfig,
        train: &TrainConfig,
        weights: &Path,
        store_dir: Option<&Path>,
    ) -> Result<Trainer> {
        let store = expert_store_path(model_cfg, store_dir)?
            .map(|p| ExpertStore::from_safetensors(weights, &p, model_cfg))
            .transpose()?;
        let experts_elsewhere = store.is_some();
        let (model, varmap) = build_model(model_cfg, store)?;
        load_safetensors_into(&varmap, weights, experts_elsewhere)?;
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
            activation_checkpointing: train.activation_checkpointing,
            head_chunk_elems: HEAD_CHUNK_ELEMS,
            step: 0,
            tokens: 0,
            best: None,
        })
    }

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

    /// One micro-batch, segmented backward (activation checkpointing): the forward keeps only each
    /// block's input; the backward recomputes one block at a time with gradients on and
    /// back-propagates `(output · grad_output).sum()` (plus the block's own router losses), which
    /// yields the block's parameter gradients and the gradient of its input.
    fn micro_grads_segmented(
        &self,
        mb: &TokenBatch,
        scale: f64,
        timings: &mut StepTimings,
    ) -> Result<(GradStore, MicroLosses)> {
        let m = &self.model;
        let cfg = m.config();
        let vars: Vec<Var> = named_vars(&self.varmap)
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        let started = Instant::now();
        let (b, t) = m.check_ids(&mb.inputs)?;
        let ctx = m.attn_ctx(b, t, mb.doc_ids.as_ref())?;
        // Forward, no graph kept beyond each block.
        let mut inputs: Vec<Tensor> = Vec::with_capacity(m.blocks.len() + 1);
        inputs.push(m.embed(&mb.inputs)?.detach());
        let (mut aux, mut z) = (0.0, 0.0);
        let mut expert_counts = Vec::new();
        for blk in &m.blocks {
            let x = inputs.last().expect("at least the embedding");
            let (y, stats) = blk.forward(x, &ctx)?;
            if let Some(s) = stats {
                aux += scalar(&s.aux_loss)?;
                z += scalar(&s.z_loss)?;
                expert_counts.push(s.expert_counts);
            }
            inputs.push(y.detach());
        }
        timings.forward_s += started.elapsed().as_secs_f64();

        // Head: loss, its gradients (final norm, tied embedding) and the gradient of the last
        // block's output, in chunks of sequences so that the logits (batch × seq × vocab, the
        // largest activation of a small model) and their gradients exist for one chunk at a time.
        let started = Instant::now();
        let h_all = inputs.pop().expect("the last block's output");
        let counts: Vec<f64> = match &mb.loss_mask {
            Some(mask) => mask
                .to_dtype(DType::F64)?
                .ne(0.0)?
                .to_dtype(DType::F64)?
                .sum(1)?
                .to_vec1::<f64>()?,
            None => vec![t as f64; b],
        };
        let total: f64 = counts.iter().sum();
        if total == 0.0 {
            return Err(ModelError::Input("loss mask selects no position".into()).into());
        }
        let rows = (self.head_chunk_elems / (t * cfg.vocab_size).max(1)).clamp(1, b);
        let mut acc = GradStore::default();
        let mut g_parts = Vec::with_capacity(b.div_ceil(rows));
        let mut ce = 0.0;
        for r0 in (0..b).step_by(rows) {
            let n = rows.min(b - r0);
            let h = Var::from_tensor(&h_all.narrow(0, r0, n)?)?;
            let chunk_count: f64 = counts[r0..r0 + n].iter().sum();
            if chunk_count == 0.0 {
                g_parts.push(h.as_tensor().zeros_like()?);
                continue;
            }
            let logits = m.head(h.as_tensor())?;
            let mask = match &mb.loss_mask {
                Some(mask) => Some(mask.narrow(0, r0, n)?),
                None => None,
            };
            let ce_t = tardbot_model::cross_entropy(
                &logits,
                &mb.targets.narrow(0, r0, n)?.contiguous()?,
                mask.as_ref(),
            )?;
            // The chunk's mean, weighted by its share of the counted positions.
            let w = chunk_count / total;
            ce += scalar(&ce_t)? * w;
            let mut grads = (ce_t * (scale * w))?.backward()?;
            drop(logits);
            g_parts.push(grads.remove(h.as_tensor()).ok_or_else(|| {
                candle_core::Error::Msg("no gradient reached the head input".into())
            })?);
            add_param_grads(&mut acc, grads, &vars)?;
        }
        drop(h_all);
        let mut g = if g_parts.len() == 1 {
            g_parts.remove(0)
        } else {
            Tensor::cat(&g_parts, 0)?
        };
        drop(g_parts);

        // Blocks in reverse, recomputed one at a time.
        for blk in m.blocks.iter().rev() {
            let x = Var::from_tensor(&inputs.pop().expect("one input per block"))?;
            let (y, stats) = blk.forward(x.as_tensor(), &ctx)?;
            let mut objective = (y * &g)?.sum_all()?;
            if let Some(s) = stats {
                let router = ((s.aux_loss.to_dtype(DType::F32)? * cfg.router_aux_loss_coef)?
                    + (s.z_loss.to_dtype(DType::F32)? * cfg.router_z_loss_coef)?)?;
                let router = (router * scale)?.to_dtype(objective.dtype())?;
                objective = (objective + router)?;
            }
            let mut grads = objective.backward()?;
            drop(objective);
            g = grads.remove(x.as_tensor()).ok_or_else(|| {
                candle_core::Error::Msg("no gradient reached a block input".into())
            })?;
            add_param_grads(&mut acc, grads, &vars)?;
        }
        // The embedding lookup.
        let e = m.embed(&mb.inputs)?;
        add_param_grads(&mut acc, (e * &g)?.sum_all()?.backward()?, &vars)?;
        timings.backward_s += started.elapsed().as_secs_f64();
        let loss = ce + cfg.router_aux_loss_coef * aux + cfg.router_z_loss_coef * z;
        Ok((
            acc,
            MicroLosses {
                loss,
                ce,
                aux,
                z,
                expert_counts,
            },
        ))
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

/// Logit elements (sequences × seq × vocab) per chunk of the LM head under activation
/// checkpointing: 8M f32 = 32 MiB of logits at a time.
const HEAD_CHUNK_ELEMS: usize = 8 << 20;

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
        let mut t = Trainer::new(&cfg, &train_cfg(), 1, None).unwrap();
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
        let t = Trainer::new(&cfg, &train_cfg(), 3, None).unwrap();
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
        let mut a = Trainer::new(&cfg, &train_cfg(), 7, None).unwrap();
        for b in &batches[..2] {
            a.train_step(std::slice::from_ref(b)).unwrap();
        }
        a.save(dir.path(), serde_json::json!({"cursor": 2}))
            .unwrap();
        let mut b = Trainer::new(&cfg, &train_cfg(), 99, None).unwrap();
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

    fn weights_bits(t: &Trainer) -> Vec<(String, Vec<u32>)> {
        named_vars(&t.varmap)
            .into_iter()
            .map(|(n, v)| {
                let bits = v
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .map(|x| x.to_bits())
                    .collect();
                (n, bits)
            })
            .collect()
    }

    /// Largest |a − b| over all parameter gradients, relative to the largest |a| of that tensor;
    /// also checks both stores hold the same tensors.
    fn max_rel_grad_diff(t: &Trainer, a: &GradStore, b: &GradStore) -> (f32, usize) {
        let (mut worst, mut n) = (0f32, 0);
        for (name, v) in named_vars(&t.varmap) {
            match (a.get(v.as_tensor()), b.get(v.as_tensor())) {
                (Some(x), Some(y)) => {
                    let scale = x
                        .abs()
                        .unwrap()
                        .max_all()
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap()
                        .max(1e-12);
                    let d = (x - y)
                        .unwrap()
                        .abs()
                        .unwrap()
                        .max_all()
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap();
                    worst = worst.max(d / scale);
                    n += 1;
                }
                (None, None) => {}
                _ => panic!("{name}: gradient in one store only"),
            }
        }
        (worst, n)
    }

    /// Segmented backward (activation checkpointing) gives the gradients of the whole-graph
    /// backward: same function, same routing; only float summation order may differ.
    #[test]
    fn activation_checkpointing_gives_the_same_gradients() {
        let cfg = ModelConfig::from_preset("micro").unwrap();
        let mut plain = Trainer::new(&cfg, &train_cfg(), 5, None).unwrap();
        // Packed documents and a loss mask, as the fine-tuning stages use them.
        let mut b = batch(&rows(3, 11, cfg.vocab_size as u32, 2));
        let docs: Vec<u32> = (0..30).map(|i| (i % 10 >= 6) as u32).collect();
        b.doc_ids = Some(Tensor::from_vec(docs, (3, 10), &Device::Cpu).unwrap());
        let mask: Vec<f32> = (0..30).map(|i| (i % 4 != 0) as u32 as f32).collect();
        b.loss_mask = Some(Tensor::from_vec(mask, (3, 10), &Device::Cpu).unwrap());
        let two = [b, batch(&rows(3, 11, cfg.vocab_size as u32, 9))];
        // One LM-head chunk per micro-batch, then one per sequence (of 3, one fully masked).
        let mut masked_row = two[0].loss_mask.clone().unwrap().to_vec2::<f32>().unwrap();
        masked_row[1].iter_mut().for_each(|v| *v = 0.0);
        let mut third = batch(&rows(3, 11, cfg.vocab_size as u32, 2));
        third.doc_ids = two[0].doc_ids.clone();
        third.loss_mask = Some(Tensor::new(masked_row, &Device::Cpu).unwrap());
        for (micro, chunk) in [
            (&two[..1], HEAD_CHUNK_ELEMS),
            (&two[..], HEAD_CHUNK_ELEMS),
            (&two[..], 10 * cfg.vocab_size),
            (std::slice::from_ref(&third), 10 * cfg.vocab_size),
        ] {
            plain.head_chunk_elems = chunk;
            plain.activation_checkpointing = false;
            let (ga, ra) = plain.gradients(micro).unwrap();
            plain.activation_checkpointing = true;
            let (gb, rb) = plain.gradients(micro).unwrap();
            let (worst, n) = max_rel_grad_diff(&plain, &ga.unwrap(), &gb.unwrap());
            eprintln!(
                "{} micro-batch(es), head chunks of {chunk} logits: {n} gradient tensors, max relative difference {worst:e}",
                micro.len()
            );
            assert_eq!(n, named_vars(&plain.varmap).len());
            assert!(worst < 1e-5, "max relative gradient difference {worst}");
            assert!((ra.loss - rb.loss).abs() < 1e-6 * ra.loss.abs().max(1.0));
            assert!((ra.aux_loss - rb.aux_loss).abs() < 1e-6);
            assert_eq!(ra.expert_counts, rb.expert_counts);
        }

        // And whole steps: weights after 3 steps agree to float tolerance.
        let mut ckpt_cfg = train_cfg();
        ckpt_cfg.activation_checkpointing = true;
        let mut a = Trainer::new(&cfg, &train_cfg(), 5, None).unwrap();
        let mut c = Trainer::new(&cfg, &ckpt_cfg, 5, None).unwrap();
        assert!(c.activation_checkpointing && !a.activation_checkpointing);
        for _ in 0..3 {
            let ra = a.train_step(&two).unwrap();
            let rc = c.train_step(&two).unwrap();
            assert!(!ra.rejected && !rc.rejected);
            assert!((ra.grad_norm - rc.grad_norm).abs() < 1e-5 * ra.grad_norm);
        }
        for ((n, x), (_, y)) in named_vars(&a.varmap).iter().zip(&named_vars(&c.varmap)) {
            let d = (x.as_tensor() - y.as_tensor())
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(d < 1e-5, "{n}: weights differ by {d}");
        }
    }

    /// A non-finite loss rejects the step: weights, optimizer state and counters stay as they were,
    /// so the next good step is the one an uninterrupted run would have taken.
    #[test]
    fn non_finite_loss_is_rejected_and_changes_nothing() {
        let cfg = ModelConfig::from_preset("micro").unwrap();
        let good = batch(&rows(2, 9, cfg.vocab_size as u32, 1));
        for checkpointing in [false, true] {
            let tc = TrainConfig {
                activation_checkpointing: checkpointing,
                ..train_cfg()
            };
            let mut t = Trainer::new(&cfg, &tc, 4, None).unwrap();
            let mut twin = Trainer::new(&cfg, &tc, 4, None).unwrap();
            for tr in [&mut t, &mut twin] {
                tr.train_step(std::slice::from_ref(&good)).unwrap();
            }
            // Poison one weight every token passes through.
            let (_, norm) = named_vars(&t.varmap)
                .into_iter()
                .find(|(n, _)| n == "final_norm.weight")
                .unwrap();
            let saved = norm.as_tensor().copy().unwrap();
            let mut poisoned = saved.to_vec1::<f32>().unwrap();
            poisoned[0] = f32::NAN;
            norm.set(&Tensor::new(poisoned.as_slice(), &Device::Cpu).unwrap())
                .unwrap();
            let before = weights_bits(&t);
            let r = t.train_step(std::slice::from_ref(&good)).unwrap();
            assert!(
                r.rejected,
                "checkpointing {checkpointing}: step not rejected"
            );
            assert!(!r.loss.is_finite());
            assert_eq!((t.step, t.tokens), (1, twin.tokens));
            assert_eq!(
                weights_bits(&t),
                before,
                "weights changed by a rejected step"
            );

            // Restored weight: the next step equals the twin's, bit for bit (moments untouched).
            norm.set(&saved).unwrap();
            let ra = t.train_step(std::slice::from_ref(&good)).unwrap();
            let rb = twin.train_step(std::slice::from_ref(&good)).unwrap();
            assert!(!ra.rejected);
            assert_eq!(ra.loss.to_bits(), rb.loss.to_bits());
            assert_eq!(weights_bits(&t), weights_bits(&twin));
        }
        // An infinite learning rate is refused by the config check; a huge one blows the loss up
        // and the next step is rejected rather than applied.
        let huge = TrainConfig {
            lr: 1e30,
            grad_clip: 0.0,
            ..train_cfg()
        };
        let mut t = Trainer::new(&cfg, &huge, 4, None).unwrap();
        let mut rejected = false;
        for _ in 0..5 {
            let before = weights_bits(&t);
            let steps = t.step;
            let r = t.train_step(std::slice::from_ref(&good)).unwrap();
            if r.rejected {
                assert_eq!(weights_bits(&t), before);
                assert_eq!(t.step, steps);
                rejected = true;
                break;
            }
        }
        assert!(
            rejected,
            "a 1e30 learning rate never produced a non-finite step"
        );
    }

    /// Every weight of the model (experts included, wherever they live), as bits, by name.
    fn all_weight_bits(t: &Trainer, dir: &Path) -> std::collections::BTreeMap<String, Vec<u32>> {
        let path = dir.join("weights.safetensors");
        t.save_weights(&path).unwrap();
        candle_core::safetensors::load(&path, &Device::Cpu)
            .unwrap()
            .into_iter()
            .map(|(n, w)| {
                let bits = w
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .map(|x| x.to_bits())
                    .collect();
                (n, bits)
            })
            .collect()
    }

    /// Issue 7's equivalence: `max_experts_in_memory = 1` (experts swapped through the store, one
    /// region in memory at a time) and all-resident compute the same floats — losses, gradient norms
    /// (clipping active) and every updated weight are bit-identical over several steps with two
    /// micro-batches each, with and without activation checkpointing.
    #[test]
    fn swapped_experts_train_bit_identically_to_resident_experts() {
        let resident_cfg = ModelConfig::from_preset("micro").unwrap();
        let swapped_cfg = ModelConfig {
            max_experts_in_memory: 1,
            ..resident_cfg.clone()
        };
        let vocab = resident_cfg.vocab_size as u32;
        for checkpointing in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let tc = TrainConfig {
                activation_checkpointing: checkpointing,
                ..train_cfg()
            };
            let mut a = Trainer::new(&resident_cfg, &tc, 11, None).unwrap();
            let mut b = Trainer::new(&swapped_cfg, &tc, 11, Some(dir.path())).unwrap();
            assert!(a.model.expert_store().is_none());
            let store = b.model.expert_store().unwrap().clone();
            assert_eq!(
                all_weight_bits(&a, dir.path()),
                all_weight_bits(&b, dir.path())
            );
            let mut clipped = 0;
            for step in 0..4 {
                let micro = [
                    batch(&rows(2, 9, vocab, step)),
                    batch(&rows(3, 9, vocab, step + 10)),
                ];
                let ra = a.train_step(&micro).unwrap();
                let rb = b.train_step(&micro).unwrap();
                assert!(!ra.rejected && !rb.rejected);
                assert_eq!(ra.loss.to_bits(), rb.loss.to_bits(), "step {step} loss");
                assert_eq!(
                    ra.grad_norm.to_bits(),
                    rb.grad_norm.to_bits(),
                    "step {step} norm"
                );
                assert_eq!(ra.expert_counts, rb.expert_counts);
                clipped += (ra.grad_norm > tc.grad_clip) as usize;
            }
            assert!(clipped > 0, "clipping never engaged");
            let (wa, wb) = (
                all_weight_bits(&a, dir.path()),
                all_weight_bits(&b, dir.path()),
            );
            assert_eq!(wa.len(), TardBot::param_names(&resident_cfg).len());
            for (name, bits) in &wa {
                assert!(
                    wb[name] == *bits,
                    "checkpointing {checkpointing}: {name} differs"
                );
            }
            assert_eq!(
                store.peak_resident(),
                1,
                "more than one expert was resident"
            );
            assert_eq!(store.resident(), 0);
            assert!(store.regions_with_grads().is_empty());
        }
    }

    /// The same at `tiny` (128 hidden, 4 experts, 4 layers): here the autograd's topological order can
    /// add the gradient contributions reaching a block's normalised input (router, experts) in another
    /// order, so agreement is to float rounding rather than to the bit. Stated tolerance: losses and
    /// gradient norms to 1e-6 relative, weights after 3 steps to 1e-6 of each tensor's largest value.
    #[test]
    fn swapped_experts_match_resident_experts_at_tiny() {
        let resident_cfg = ModelConfig::from_preset("tiny").unwrap();
        let swapped_cfg = ModelConfig {
            max_experts_in_memory: 1,
            ..resident_cfg.clone()
        };
        let dir = tempfile::tempdir().unwrap();
        let tc = train_cfg();
        let mut a = Trainer::new(&resident_cfg, &tc, 3, None).unwrap();
        let mut b = Trainer::new(&swapped_cfg, &tc, 3, Some(dir.path())).unwrap();
        let vocab = resident_cfg.vocab_size as u32;
        for step in 0..3 {
            let micro = [
                batch(&rows(2, 65, vocab, step)),
                batch(&rows(2, 65, vocab, step + 7)),
            ];
            let (ra, rb) = (a.train_step(&micro).unwrap(), b.train_step(&micro).unwrap());
            let rel = |x: f64, y: f64| (x - y).abs() / x.abs().max(1e-12);
            eprintln!(
                "tiny step {step}: loss {} vs {} (rel {:e}), grad norm rel {:e}",
                ra.loss,
                rb.loss,
                rel(ra.loss, rb.loss),
                rel(ra.grad_norm, rb.grad_norm)
            );
            assert!(rel(ra.loss, rb.loss) < 1e-6 && rel(ra.grad_norm, rb.grad_norm) < 1e-6);
        }
        let wa = all_weight_bits(&a, dir.path());
        let wb = all_weight_bits(&b, dir.path());
        let mut worst = 0f32;
        for (name, bits) in &wa {
            let x: Vec<f32> = bits.iter().map(|&u| f32::from_bits(u)).collect();
            let y: Vec<f32> = wb[name].iter().map(|&u| f32::from_bits(u)).collect();
            let scale = x.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
            let d = x
                .iter()
                .zip(&y)
                .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
            worst = worst.max(d / scale);
        }
        eprintln!("tiny: weights after 3 steps, max relative difference {worst:e}");
        assert!(worst < 1e-6, "weights differ by {worst:e} of their scale");
        assert_eq!(b.model.expert_store().unwrap().peak_resident(), 1);
    }

    /// Save, resume and continue with the experts in the store: bit-identical to the uninterrupted
    /// run; unchanged regions are linked, not copied; a damaged region copy is refused by name.
    #[test]
    fn swapped_experts_checkpoint_and_resume_exactly() {
        let cfg = ModelConfig {
            max_experts_in_memory: 1,
            ..ModelConfig::from_preset("micro").unwrap()
        };
        let vocab = cfg.vocab_size as u32;
        let (live, other, ckpts) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let batches: Vec<TokenBatch> = (0..5).map(|i| batch(&rows(2, 9, vocab, i))).collect();
        let mut a = Trainer::new(&cfg, &train_cfg(), 7, Some(live.path())).unwrap();
        for b in &batches[..2] {
            a.train_step(std::slice::from_ref(b)).unwrap();
        }
        let save = |t: &Trainer| {
            checkpoint::write_atomic(ckpts.path(), t.step, |tmp| {
                t.save(tmp, serde_json::json!({}))
            })
            .unwrap()
        };
        let first = save(&a);
        let regions = cfg.n_moe_layers() * cfg.n_experts;
        assert_eq!(
            std::fs::read_dir(first.path.join("experts"))
                .unwrap()
                .count(),
            regions + 1
        );
        // Nothing changed since: the next checkpoint links every region.
        a.step += 1;
        let second = save(&a);
        a.step -= 1;
        use std::os::unix::fs::MetadataExt;
        let linked = std::fs::read_dir(second.path.join("experts"))
            .unwrap()
            .flatten()
            .filter(|e| {
                let twin = first.path.join("experts").join(e.file_name());
                e.file_name().to_string_lossy().ends_with(".region")
                    && std::fs::metadata(twin).is_ok_and(|m| m.ino() == e.metadata().unwrap().ino())
            })
            .count();
        assert_eq!(
            linked, regions,
            "unchanged regions are hard links, not copies"
        );

        let mut b = Trainer::new(&cfg, &train_cfg(), 99, Some(other.path())).unwrap();
        b.load(&first.path).unwrap();
        assert_eq!(b.step, 2);
        for batch in &batches[2..] {
            let ra = a.train_step(std::slice::from_ref(batch)).unwrap();
            let rb = b.train_step(std::slice::from_ref(batch)).unwrap();
            assert_eq!(ra.loss.to_bits(), rb.loss.to_bits());
        }
        assert_eq!(
            all_weight_bits(&a, live.path()),
            all_weight_bits(&b, other.path())
        );
        a.model.expert_store().unwrap().commit_all().unwrap();
        b.model.expert_store().unwrap().commit_all().unwrap();
        assert_eq!(
            a.model.expert_store().unwrap().generations().unwrap(),
            b.model.expert_store().unwrap().generations().unwrap()
        );

        // A flipped byte in a checkpoint's region copy: refused, naming the file.
        let victim = std::fs::read_dir(first.path.join("experts"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "region"))
            .unwrap();
        let mut bytes = std::fs::read(&victim).unwrap();
        bytes[100] ^= 1;
        // Break the hard link first so only this checkpoint's copy is damaged.
        std::fs::remove_file(&victim).unwrap();
        std::fs::write(&victim, bytes).unwrap();
        let mut c = Trainer::new(&cfg, &train_cfg(), 5, Some(other.path())).unwrap();
        let err = c.load(&first.path).unwrap_err().to_string();
        let name = victim.file_name().unwrap().to_string_lossy().into_owned();
        assert!(err.contains(&name) && err.contains("damaged"), "{err}");
        c.load(&second.path).unwrap();
    }

    /// A live store damaged by a crash or the disk (truncated, or a flipped byte) is reported clearly
    /// by `ExpertStore::open`, and resuming never trusts it: the trainer rebuilds it from the
    /// checkpoint and continues exactly as the undamaged run did.
    #[test]
    fn a_damaged_live_store_falls_back_to_the_checkpoint() {
        let cfg = ModelConfig {
            max_experts_in_memory: 1,
            ..ModelConfig::from_preset("micro").unwrap()
        };
        let vocab = cfg.vocab_size as u32;
        let (live, ckpts) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let batches: Vec<TokenBatch> = (0..4).map(|i| batch(&rows(2, 9, vocab, i))).collect();
        let mut a = Trainer::new(&cfg, &train_cfg(), 2, Some(live.path())).unwrap();
        a.train_step(&batches[..1]).unwrap();
        let ck = checkpoint::write_atomic(ckpts.path(), a.step, |tmp| {
            a.save(tmp, serde_json::json!({}))
        })
        .unwrap();
        let expected: Vec<u64> = batches[1..]
            .iter()
            .map(|b| {
                a.train_step(std::slice::from_ref(b))
                    .unwrap()
                    .loss
                    .to_bits()
            })
            .collect();
        drop(a);
        let store = live.path().join("experts.store");
        for damage in ["truncate", "flip"] {
            let mut bytes = std::fs::read(&store).unwrap();
            if damage == "truncate" {
                bytes.truncate(bytes.len() / 2);
            } else {
                let n = bytes.len();
                bytes[n - 5000] ^= 0x40;
            }
            std::fs::write(&store, bytes).unwrap();
            let err = ExpertStore::open(&store).unwrap_err().to_string();
            assert!(
                err.contains("experts.store") && err.contains("layer") && err.contains("expert"),
                "{damage}: {err}"
            );
            let mut b = Trainer::new(&cfg, &train_cfg(), 5, Some(live.path())).unwrap();
            b.load(&ck.path).unwrap();
            let got: Vec<u64> = batches[1..]
                .iter()
                .map(|x| {
                    b.train_step(std::slice::from_ref(x))
                        .unwrap()
                        .loss
                        .to_bits()
                })
                .collect();
            assert_eq!(got, expected, "{damage}: resumed losses differ");
        }
    }

    /// Out of disk while the expert store is written into a checkpoint (a region file that is
    /// `/dev/full`: every write fails with ENOSPC): the save fails with a clear error, and the previous
    /// checkpoint still restores and continues exactly.
    #[test]
    fn out_of_disk_while_checkpointing_the_store_keeps_the_previous_checkpoint() {
        let cfg = ModelConfig {
            max_experts_in_memory: 1,
            ..ModelConfig::from_preset("micro").unwrap()
        };
        if !Path::new("/dev/full").exists() {
            eprintln!("skipped: no /dev/full on this system");
            return;
        }
        let vocab = cfg.vocab_size as u32;
        let (live, other, ckpts) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let batches: Vec<TokenBatch> = (0..3).map(|i| batch(&rows(2, 9, vocab, i))).collect();
        let mut a = Trainer::new(&cfg, &train_cfg(), 8, Some(live.path())).unwrap();
        a.train_step(&batches[..1]).unwrap();
        let good = checkpoint::write_atomic(ckpts.path(), a.step, |tmp| {
            a.save(tmp, serde_json::json!({}))
        })
        .unwrap();
        a.train_step(&batches[1..2]).unwrap();
        // The next checkpoint's first region file lands on a full disk.
        let full = ckpts.path().join("ckpt-00000002.tmp");
        std::fs::create_dir_all(full.join("experts")).unwrap();
        let next_gen = a.model.expert_store().unwrap().generation(1, 0).unwrap() + 1;
        std::os::unix::fs::symlink(
            "/dev/full",
            full.join(format!("experts/l001-e000-g{next_gen}.region")),
        )
        .unwrap();
        let err = a
            .save(&full, serde_json::json!({}))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("disk full") && err.contains("l001-e000"),
            "{err}"
        );

        let expected = a.train_step(&batches[2..]).unwrap().loss.to_bits();
        let mut b = Trainer::new(&cfg, &train_cfg(), 1, Some(other.path())).unwrap();
        b.load(&good.path).unwrap();
        b.train_step(&batches[1..2]).unwrap();
        assert_eq!(
            b.train_step(&batches[2..]).unwrap().loss.to_bits(),
            expected
        );
        // The failed directory is never listed as a checkpoint and is cleaned up by retention.
        assert_eq!(checkpoint::list(ckpts.path()).unwrap().len(), 1);
        checkpoint::prune(ckpts.path(), 3, &[]).unwrap();
        assert!(!full.exists());
    }
}
