//! Top-k Mixture-of-Experts with a softmax router.
//!
//! Routing: `p = softmax(x Wrᵀ)`; the k largest probabilities (`arg_sort` + `narrow` + `gather`; candle
//! has no `topk`) are renormalised to sum to 1 and weight the chosen experts' outputs. Only the chosen
//! expert *indices* go to the host (to group tokens per expert); the weights stay on the device in the
//! autograd graph, so the router receives gradients through them. Tokens are gathered per expert with
//! `index_select` and combined with one `index_add` (both have correct backward in candle 0.11;
//! `scatter*` do not).
//!
//! Losses (returned unweighted; the config holds their coefficients):
//! - Switch load-balancing: `E · Σ_e f_e · P_e`, `f_e` = fraction of the N·k routed copies that went to
//!   expert e (a constant), `P_e` = mean router probability of e. Equals 1 under perfect balance.
//! - Router z-loss: `mean_tokens(logsumexp(router logits)²)`, keeps router logits small.

use std::sync::Arc;

use candle_core::{DType, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::expert_store::ExpertStore;
use crate::mlp::SwiGlu;
use crate::ops::{Linear, logsumexp, softmax};
use crate::stored_expert::StoredExpert;
use crate::{ModelError, Result};

/// What one MoE layer reports besides its output.
#[derive(Clone, Debug)]
pub struct MoeStats {
    /// Switch load-balancing loss (scalar tensor, in the graph).
    pub aux_loss: Tensor,
    /// Router z-loss (scalar tensor, in the graph).
    pub z_loss: Tensor,
    /// Routed copies per expert (sums to tokens × k).
    pub expert_counts: Vec<u32>,
}

/// Where a layer's experts live.
#[derive(Clone, Debug)]
pub enum Experts {
    /// Candle tensors (variables when training): all experts in memory.
    Resident(Vec<SwiGlu>),
    /// Regions of an expert store, checked out one at a time by [`StoredExpert`] (`max_experts_in_memory
    /// < n_experts`).
    Stored {
        store: Arc<ExpertStore>,
        layer: usize,
    },
}

impl Experts {
    pub fn len(&self) -> usize {
        match self {
            Experts::Resident(v) => v.len(),
            Experts::Stored { store, .. } => store.layout().n_experts,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Clone, Debug)]
pub struct Moe {
    pub router: Linear,
    pub experts: Experts,
    pub top_k: usize,
}

impl Moe {
    /// `store`: the expert store holding this layer's experts (`layer` is the model layer index);
    /// `None`: resident experts from `vb`.
    pub fn new(
        cfg: &tardbot_core::ModelConfig,
        vb: VarBuilder,
        store: Option<(&Arc<ExpertStore>, usize)>,
    ) -> Result<Self> {
        let router = Linear::new(vb.pp("router").get_with_hints(
            (cfg.n_experts, cfg.hidden_size),
            "weight",
            Init::Randn {
                mean: 0.0,
                stdev: cfg.init_std,
            },
        )?);
        let experts = match store {
            Some((store, layer)) => Experts::Stored {
                store: store.clone(),
                layer,
            },
            None => Experts::Resident(
                (0..cfg.n_experts)
                    .map(|e| SwiGlu::new(cfg, vb.pp("experts").pp(e)))
                    .collect::<Result<Vec<_>>>()?,
            ),
        };
        Ok(Moe {
            router,
            experts,
            top_k: cfg.experts_per_token,
        })
    }

    /// `x` (batch, seq, hidden) → (output of the same shape, stats).
    pub fn forward(&self, x: &Tensor, fused: bool) -> Result<(Tensor, MoeStats)> {
        let mut span = crate::profile::Span::start(crate::profile::Counter::MoeDispatchForward);
        let (b, t, h) = x.dims3()?;
        let n = b * t;
        let e = self.experts.len();
        let k = self.top_k;
        let xf = x.reshape((n, h))?;
        // The router runs in f32 at least: its softmax and losses are precision-sensitive.
        let logits = self.router.forward(&xf)?;
        let logits32 = if logits.dtype() == DType::F64 {
            logits.clone()
        } else {
            logits.to_dtype(DType::F32)?
        };
        let probs = softmax(&logits32, fused)?;
        let idx = probs
            .detach()
            .arg_sort_last_dim(false)?
            .narrow(1, 0, k)?
            .contiguous()?;
        let top = probs.gather(&idx, 1)?;
        let top = top
            .broadcast_div(&top.sum_keepdim(1)?)?
            .to_dtype(x.dtype())?
            .flatten_all()?;
        let idx_host = idx.to_vec2::<u32>()?;

        // Group routed copies by expert: token row, and position in the flattened (n, k) weights.
        let mut tokens: Vec<Vec<u32>> = vec![Vec::new(); e];
        let mut slots: Vec<Vec<u32>> = vec![Vec::new(); e];
        for (tok, row) in idx_host.iter().enumerate() {
            for (s, &ex) in row.iter().enumerate() {
                let ex = ex as usize;
                if ex >= e {
                    return Err(ModelError::Input(format!(
                        "router chose expert {ex} of {e}"
                    )));
                }
                tokens[ex].push(tok as u32);
                slots[ex].push((tok * k + s) as u32);
            }
        }
        let dev = x.device();
        let mut outs = Vec::with_capacity(e);
        let mut rows = Vec::with_capacity(n * k);
        let routed: Vec<usize> = (0..e).filter(|&ex| !tokens[ex].is_empty()).collect();
        for (i, &ex) in routed.iter().enumerate() {
            let ids = Tensor::new(tokens[ex].as_slice(), dev)?;
            let sl = Tensor::new(slots[ex].as_slice(), dev)?;
            let rows_in = xf.index_select(&ids, 0)?;
            span.pause();
            let y = {
                let _experts =
                    crate::profile::Span::start(crate::profile::Counter::MoeExpertsForward);
                match &self.experts {
                    Experts::Resident(v) => v[ex].forward(&rows_in)?,
                    Experts::Stored { store, layer } => {
                        if let Some(&next) = routed.get(i + 1) {
                            store.prefetch(*layer, next)?;
                        }
                        rows_in.apply_op1(StoredExpert::new(store.clone(), *layer, ex))?
                    }
                }
            };
            span.resume();
            let w = top.index_select(&sl, 0)?.unsqueeze(1)?;
            outs.push(y.broadcast_mul(&w)?);
            rows.extend_from_slice(&tokens[ex]);
        }
        let cat = Tensor::cat(&outs, 0)?;
        let rows = Tensor::new(rows.as_slice(), dev)?;
        let out = Tensor::zeros((n, h), x.dtype(), dev)?.index_add(&rows, &cat, 0)?;

        let counts: Vec<u32> = tokens.iter().map(|t| t.len() as u32).collect();
        let frac: Vec<f64> = counts.iter().map(|&c| c as f64 / (n * k) as f64).collect();
        let frac = Tensor::new(frac.as_slice(), dev)?.to_dtype(probs.dtype())?;
        let aux_loss = ((probs.mean(0)? * frac)?.sum_all()? * e as f64)?;
        let z_loss = logsumexp(&logits32)?.sqr()?.mean_all()?;
        Ok((
            out.reshape((b, t, h))?,
            MoeStats {
                aux_loss,
                z_loss,
                expert_counts: counts,
            },
        ))
    }

    pub fn quantized(&self) -> Result<Self> {
        let Experts::Resident(experts) = &self.experts else {
            return Err(ModelError::Input(
                "int8 inference needs resident experts: export the expert store to safetensors first"
                    .into(),
            ));
        };
        Ok(Moe {
            router: self.router.clone(),
            experts: Experts::Resident(
                experts
                    .iter()
                    .map(|x| x.quantized())
                    .collect::<Result<_>>()?,
            ),
            top_k: self.top_k,
        })
    }
}
