//! The segmented backward of activation checkpointing
//! ([`TrainConfig::activation_checkpointing`](tardbot_core::config::TrainConfig::activation_checkpointing)):
//! the forward keeps only each block's input, the LM head and its loss run in chunks of sequences,
//! and the backward recomputes one block at a time (tested equal to the whole-graph gradients).

use super::{MicroLosses, Result, StepTimings, TokenBatch, Trainer, add_param_grads, scalar};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use std::time::Instant;
use tardbot_model::ModelError;

/// Logit elements (sequences × seq × vocab) per chunk of the LM head under activation
/// checkpointing: 8M f32 = 32 MiB of logits at a time.
pub(super) const HEAD_CHUNK_ELEMS: usize = 8 << 20;

impl Trainer {
    /// One micro-batch, segmented backward (activation checkpointing): the forward keeps only each
    /// block's input; the backward recomputes one block at a time with gradients on and
    /// back-propagates `(output · grad_output).sum()` (plus the block's own router losses), which
    /// yields the block's parameter gradients and the gradient of its input.
    pub(super) fn micro_grads_segmented(
        &self,
        mb: &TokenBatch,
        scale: f64,
        timings: &mut StepTimings,
    ) -> Result<(GradStore, MicroLosses)> {
        let m = &self.model;
        let cfg = m.config();
        // The variables the model computes with (under mixed precision, the compute copy).
        let vars: Vec<Var> = self.compute_vars();
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
            if !matches!(objective.dtype(), DType::F32 | DType::F64) {
                // Mixed precision: the router losses are added in f32 (scaled by the f16 loss scale
                // they could overflow f16); the block's backward converts back.
                objective = objective.to_dtype(DType::F32)?;
            }
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
}
