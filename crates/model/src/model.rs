//! The TardBot decoder: token embedding → blocks (pre-norm attention + dense SwiGLU or MoE) → final
//! RMSNorm → LM head (tied to the embedding by default).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{D, DType, Device, Tensor, Var};
use candle_nn::{Init, VarBuilder, VarMap};
use tardbot_core::ModelConfig;

use crate::attention::{Attention, AttnCtx, LayerKvCache};
use crate::expert_store::{ExpertStore, StoreLayout};
use crate::mlp::SwiGlu;
use crate::moe::{Moe, MoeStats};
use crate::ops::{Linear, logsumexp, rms_norm};
use crate::{ModelError, Result};
use tardbot_core::rng::SplitMix64;

/// The feed-forward half of a block.
#[derive(Clone, Debug)]
pub enum Ffn {
    Dense(SwiGlu),
    Moe(Moe),
}

/// One decoder block: `x + attn(norm(x))`, then `x + ffn(norm(x))`.
#[derive(Clone, Debug)]
pub struct Block {
    pub attn_norm: Tensor,
    pub attn: Attention,
    pub mlp_norm: Tensor,
    pub ffn: Ffn,
    eps: f64,
}

impl Block {
    fn new(
        cfg: &ModelConfig,
        layer: usize,
        vb: VarBuilder,
        store: Option<&Arc<ExpertStore>>,
    ) -> Result<Self> {
        let h = cfg.hidden_size;
        let attn_norm = vb
            .pp("attn_norm")
            .get_with_hints(h, "weight", Init::Const(1.0))?;
        let mlp_norm = vb
            .pp("mlp_norm")
            .get_with_hints(h, "weight", Init::Const(1.0))?;
        let attn = Attention::new(cfg, vb.pp("attn"))?;
        let ffn = if cfg.is_moe_layer(layer) {
            Ffn::Moe(Moe::new(cfg, vb.pp("moe"), store.map(|s| (s, layer)))?)
        } else {
            Ffn::Dense(SwiGlu::new(cfg, vb.pp("mlp"))?)
        };
        Ok(Block {
            attn_norm,
            attn,
            mlp_norm,
            ffn,
            eps: cfg.rms_norm_eps,
        })
    }

    fn ffn(&self, x: &Tensor, fused: bool) -> Result<(Tensor, Option<MoeStats>)> {
        let xn = rms_norm(x, &self.mlp_norm, self.eps, fused)?;
        let (y, stats) = match &self.ffn {
            Ffn::Dense(m) => (m.forward(&xn)?, None),
            Ffn::Moe(m) => {
                let (y, s) = m.forward(&xn, fused)?;
                (y, Some(s))
            }
        };
        Ok(((x + y)?, stats))
    }

    /// Full-sequence forward; the training engine may call blocks one by one (segmented backward).
    pub fn forward(&self, x: &Tensor, ctx: &AttnCtx) -> Result<(Tensor, Option<MoeStats>)> {
        let a = self
            .attn
            .forward(&rms_norm(x, &self.attn_norm, self.eps, ctx.fused)?, ctx)?;
        self.ffn(&(x + a)?, ctx.fused)
    }

    fn forward_cached(
        &self,
        x: &Tensor,
        ctx: &AttnCtx,
        cache: &mut LayerKvCache,
    ) -> Result<Tensor> {
        let a = self.attn.forward_cached(
            &rms_norm(x, &self.attn_norm, self.eps, ctx.fused)?,
            ctx,
            cache,
        )?;
        Ok(self.ffn(&(x + a)?, ctx.fused)?.0)
    }

    /// One decode step of several sequences, `x` (1, n, hidden): see [`TardBot::forward_decode_batch`].
    fn forward_decode_batch(
        &self,
        x: &Tensor,
        rope: (&Tensor, &Tensor),
        fused: bool,
        pos: &[usize],
        caches: &mut [&mut LayerKvCache],
    ) -> Result<Tensor> {
        let a = self.attn.forward_decode_batch(
            &rms_norm(x, &self.attn_norm, self.eps, fused)?,
            rope.0,
            rope.1,
            fused,
            pos,
            caches,
        )?;
        Ok(self.ffn(&(x + a)?, fused)?.0)
    }

    fn quantized(&self) -> Result<Self> {
        let a = &self.attn;
        Ok(Block {
            attn_norm: self.attn_norm.clone(),
            attn: Attention {
                q: a.q.quantized()?,
                k: a.k.quantized()?,
                v: a.v.quantized()?,
                o: a.o.quantized()?,
                ..a.clone()
            },
            mlp_norm: self.mlp_norm.clone(),
            ffn: match &self.ffn {
                Ffn::Dense(m) => Ffn::Dense(m.quantized()?),
                Ffn::Moe(m) => Ffn::Moe(m.quantized()?),
            },
            eps: self.eps,
        })
    }
}

/// Result of a forward pass.
#[derive(Clone, Debug)]
pub struct ModelOutput {
    /// (batch, seq, vocab).
    pub logits: Tensor,
    /// Switch load-balancing loss summed over MoE layers (scalar, f32 or f64; 0 without MoE layers).
    pub aux_loss: Tensor,
    /// Router z-loss summed over MoE layers (scalar).
    pub z_loss: Tensor,
    /// Per MoE layer (in layer order), routed token copies per expert.
    pub expert_counts: Vec<Vec<u32>>,
}

/// The loss and its parts.
#[derive(Clone, Debug)]
pub struct Loss {
    /// `ce + aux_coef · aux + z_coef · z`: what to differentiate.
    pub total: Tensor,
    /// Mean next-token cross-entropy (nats) over unmasked positions.
    pub ce: Tensor,
}

/// KV cache of all layers plus the next absolute position.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    pub layers: Vec<LayerKvCache>,
    pub pos: usize,
}

/// The model. Weights are candle tensors; when built from a `VarMap` they are its `Var`s, so gradients of a
/// loss computed from [`TardBot::forward`] land on them.
#[derive(Clone, Debug)]
pub struct TardBot {
    cfg: ModelConfig,
    pub embed: Tensor,
    pub lm_head: Linear,
    pub blocks: Vec<Block>,
    pub final_norm: Tensor,
    fused: bool,
    dtype: DType,
    device: Device,
    /// Where the MoE experts live when they are not variables of `vb`.
    expert_store: Option<Arc<ExpertStore>>,
}

impl TardBot {
    /// Builds the model from `vb` (a `VarMap` for training, safetensors for inference). Tensor names are
    /// those of [`TardBot::param_names`].
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        Self::build(cfg, vb, None)
    }

    /// Builds the model with its MoE experts in `store` (f32 on CPU): `vb` holds everything else
    /// (embedding, attention, dense MLPs, routers, norms). Used when `max_experts_in_memory <
    /// n_experts`.
    pub fn with_expert_store(
        cfg: &ModelConfig,
        vb: VarBuilder,
        store: Arc<ExpertStore>,
    ) -> Result<Self> {
        if vb.dtype() != DType::F32 || !vb.device().is_cpu() {
            return Err(ModelError::Input(format!(
                "the expert store trains in f32 on the CPU, not {:?} on {:?}",
                vb.dtype(),
                vb.device()
            )));
        }
        if *store.layout() != StoreLayout::from_config(cfg) {
            return Err(ModelError::Input(format!(
                "expert store {} was made for another model configuration",
                store.path().display()
            )));
        }
        Self::build(cfg, vb, Some(store))
    }

    fn build(cfg: &ModelConfig, vb: VarBuilder, store: Option<Arc<ExpertStore>>) -> Result<Self> {
        cfg.validate().map_err(ModelError::Config)?;
        let embed = vb.pp("embed").get_with_hints(
            (cfg.vocab_size, cfg.hidden_size),
            "weight",
            Init::Randn {
                mean: 0.0,
                stdev: cfg.init_std,
            },
        )?;
        let blocks = (0..cfg.n_layers)
            .map(|i| Block::new(cfg, i, vb.pp("layers").pp(i), store.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        let final_norm =
            vb.pp("final_norm")
                .get_with_hints(cfg.hidden_size, "weight", Init::Const(1.0))?;
        let lm_head = if cfg.tie_embeddings {
            Linear::new(embed.clone())
        } else {
            Linear::new(vb.pp("lm_head").get_with_hints(
                (cfg.vocab_size, cfg.hidden_size),
                "weight",
                Init::Randn {
                    mean: 0.0,
                    stdev: cfg.init_std,
                },
            )?)
        };
        Ok(TardBot {
            cfg: cfg.clone(),
            embed,
            lm_head,
            blocks,
            final_norm,
            fused: false,
            dtype: vb.dtype(),
            device: vb.device().clone(),
            expert_store: store,
        })
    }

    /// The expert store of a model built by [`TardBot::with_expert_store`].
    pub fn expert_store(&self) -> Option<&Arc<ExpertStore>> {
        self.expert_store.as_ref()
    }

    /// A freshly initialised model (seeded scaled normal, see [`init_weights`]) and its `VarMap`.
    pub fn new_random(
        cfg: &ModelConfig,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<(Self, VarMap)> {
        let vm = VarMap::new();
        let model = TardBot::new(cfg, VarBuilder::from_varmap(&vm, dtype, device))?;
        init_weights(&vm, cfg, seed)?;
        Ok((model, vm))
    }

    /// Names of all trainable tensors, sorted; also the safetensors names.
    pub fn param_names(cfg: &ModelConfig) -> Vec<String> {
        let mut v = vec!["embed.weight".to_string(), "final_norm.weight".to_string()];
        if !cfg.tie_embeddings {
            v.push("lm_head.weight".into());
        }
        for i in 0..cfg.n_layers {
            let p = format!("layers.{i}");
            v.push(format!("{p}.attn_norm.weight"));
            v.push(format!("{p}.mlp_norm.weight"));
            for m in ["q", "k", "v", "o"] {
                v.push(format!("{p}.attn.{m}.weight"));
            }
            if cfg.is_moe_layer(i) {
                v.push(format!("{p}.moe.router.weight"));
                for e in 0..cfg.n_experts {
                    for m in ["gate", "up", "down"] {
                        v.push(format!("{p}.moe.experts.{e}.{m}.weight"));
                    }
                }
            } else {
                for m in ["gate", "up", "down"] {
                    v.push(format!("{p}.mlp.{m}.weight"));
                }
            }
        }
        v.sort();
        v
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Use candle's fused kernels (faster, no backward): for inference only.
    pub fn with_fused_kernels(mut self, fused: bool) -> Self {
        self.fused = fused;
        self
    }

    /// An inference copy with int8 (Q8_0) linear layers on CPU, LM head included; embedding lookup,
    /// norms and routers stay in float. Implies fused kernels.
    pub fn quantize_int8(&self) -> Result<Self> {
        Ok(TardBot {
            lm_head: self.lm_head.quantized()?,
            blocks: self
                .blocks
                .iter()
                .map(|b| b.quantized())
                .collect::<Result<_>>()?,
            fused: true,
            ..self.clone()
        })
    }

    /// Checks `ids` (batch, seq) u32 within the vocabulary; returns (batch, seq).
    pub fn check_ids(&self, ids: &Tensor) -> Result<(usize, usize)> {
        let (b, t) = ids.dims2().map_err(|_| {
            ModelError::Input(format!("ids must be (batch, seq), got {:?}", ids.shape()))
        })?;
        if ids.dtype() != DType::U32 {
            return Err(ModelError::Input(format!(
                "ids must be u32, got {:?}",
                ids.dtype()
            )));
        }
        if b * t == 0 {
            return Err(ModelError::Input("empty input".into()));
        }
        let max = ids.max_all()?.to_scalar::<u32>()? as usize;
        if max >= self.cfg.vocab_size {
            return Err(ModelError::Input(format!(
                "token id {max} >= vocab size {}",
                self.cfg.vocab_size
            )));
        }
        Ok((b, t))
    }

    /// Token embeddings of `ids` (batch, seq) → (batch, seq, hidden).
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        Ok(self.embed.index_select(&ids.flatten_all()?, 0)?.reshape((
            b,
            t,
            self.cfg.hidden_size,
        ))?)
    }

    /// Final norm and LM head: (batch, seq, hidden) → logits (batch, seq, vocab).
    pub fn head(&self, x: &Tensor) -> Result<Tensor> {
        self.lm_head.forward(&rms_norm(
            x,
            &self.final_norm,
            self.cfg.rms_norm_eps,
            self.fused,
        )?)
    }

    /// The attention context of a full forward over `seq` tokens (positions 0..seq).
    pub fn attn_ctx(&self, batch: usize, seq: usize, doc_ids: Option<&Tensor>) -> Result<AttnCtx> {
        let docs = match doc_ids {
            Some(d) => {
                if d.dims() != [batch, seq] {
                    return Err(ModelError::Input(format!(
                        "doc_ids must be {:?}, got {:?}",
                        [batch, seq],
                        d.dims()
                    )));
                }
                Some(d.to_dtype(DType::U32)?.to_vec2::<u32>()?)
            }
            None => None,
        };
        AttnCtx::new(
            &self.cfg,
            seq,
            0,
            docs.as_deref(),
            self.fused,
            self.dtype,
            &self.device,
        )
    }

    /// Full forward. `doc_ids` (batch, seq), optional: document id of every token of packed sequences;
    /// attention never crosses documents.
    pub fn forward(&self, ids: &Tensor, doc_ids: Option<&Tensor>) -> Result<ModelOutput> {
        let (b, t) = self.check_ids(ids)?;
        let ctx = self.attn_ctx(b, t, doc_ids)?;
        let mut x = self.embed(ids)?;
        let mut stats = Vec::new();
        for blk in &self.blocks {
            let (y, s) = blk.forward(&x, &ctx)?;
            x = y;
            stats.extend(s);
        }
        let logits = self.head(&x)?;
        let (aux_loss, z_loss) = sum_losses(&stats, self.loss_dtype(), &self.device)?;
        Ok(ModelOutput {
            logits,
            aux_loss,
            z_loss,
            expert_counts: stats.into_iter().map(|s| s.expert_counts).collect(),
        })
    }

    fn loss_dtype(&self) -> DType {
        if self.dtype == DType::F64 {
            DType::F64
        } else {
            DType::F32
        }
    }

    /// An empty KV cache for incremental decoding.
    pub fn new_cache(&self) -> KvCache {
        KvCache {
            layers: vec![LayerKvCache::default(); self.cfg.n_layers],
            pos: 0,
        }
    }

    /// Incremental forward of `ids` (batch, new tokens) continuing `cache`; returns logits
    /// (batch, new tokens, vocab) equal to those of a full forward at these positions.
    pub fn forward_cached(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let (_, t) = self.check_ids(ids)?;
        if cache.layers.len() != self.blocks.len() {
            *cache = self.new_cache();
        }
        let (cos, sin) = crate::ops::rope_tables(
            cache.pos,
            t,
            self.cfg.head_dim(),
            self.cfg.rope_theta,
            self.dtype,
            &self.device,
        )?;
        let ctx = AttnCtx {
            pos0: cache.pos,
            seq_len: t,
            cos,
            sin,
            blocks: Vec::new(),
            fused: self.fused,
        };
        let mut x = self.embed(ids)?;
        for (blk, c) in self.blocks.iter().zip(cache.layers.iter_mut()) {
            x = blk.forward_cached(&x, &ctx, c)?;
        }
        cache.pos += t;
        self.head(&x)
    }

    /// One decode step of `n = tokens.len()` independent sequences: `tokens[i]` continues `caches[i]`,
    /// each at its own position `caches[i].pos`. Returns logits (n, vocab) whose row `i` is what
    /// `forward_cached` of `[[tokens[i]]]` on `caches[i]` would return, and leaves every cache as that
    /// call would (its key/value written, `pos` advanced by 1); a cache of another layer count (e.g. a
    /// default one) is reset first, as `forward_cached` does. Embedding, norms, projections, MLPs,
    /// router, experts and LM head run once on the n tokens, so weights are read once per step for all
    /// sequences; RoPE (per-row position) and attention over each sequence's own cache are per sequence.
    /// The inputs are checked before any cache is touched: no tokens, `tokens.len() != caches.len()` or
    /// a token outside the vocabulary is an error and changes nothing.
    pub fn forward_decode_batch(
        &self,
        tokens: &[u32],
        caches: &mut [&mut KvCache],
    ) -> Result<Tensor> {
        let n = tokens.len();
        if n == 0 {
            return Err(ModelError::Input("decode batch of no tokens".into()));
        }
        if caches.len() != n {
            return Err(ModelError::Input(format!(
                "decode batch of {n} tokens with {} caches",
                caches.len()
            )));
        }
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
            return Err(ModelError::Input(format!(
                "token id {t} >= vocab size {}",
                self.cfg.vocab_size
            )));
        }
        for c in caches.iter_mut() {
            if c.layers.len() != self.blocks.len() {
                **c = self.new_cache();
            }
        }
        let pos: Vec<usize> = caches.iter().map(|c| c.pos).collect();
        let (cos, sin) = crate::ops::rope_tables_at(
            &pos,
            self.cfg.head_dim(),
            self.cfg.rope_theta,
            self.dtype,
            &self.device,
        )?;
        // The n tokens as one row of n positions: every token-parallel op sees (1, n, hidden).
        let mut x = self.embed(&Tensor::new(tokens, &self.device)?.unsqueeze(0)?)?;
        for (l, blk) in self.blocks.iter().enumerate() {
            let mut layer: Vec<&mut LayerKvCache> =
                caches.iter_mut().map(|c| &mut c.layers[l]).collect();
            x = blk.forward_decode_batch(&x, (&cos, &sin), self.fused, &pos, &mut layer)?;
        }
        for c in caches.iter_mut() {
            c.pos += 1;
        }
        Ok(self.head(&x)?.squeeze(0)?)
    }

    /// Cross-entropy of `out.logits` against `targets` (batch, seq) u32, averaged over positions where
    /// `mask` (batch, seq; any numeric dtype, 0 = ignore) is non-zero, plus the weighted router losses.
    pub fn loss(&self, out: &ModelOutput, targets: &Tensor, mask: Option<&Tensor>) -> Result<Loss> {
        let ce = cross_entropy(&out.logits, targets, mask)?;
        let total = ((&ce + (&out.aux_loss * self.cfg.router_aux_loss_coef)?)?
            + (&out.z_loss * self.cfg.router_z_loss_coef)?)?;
        Ok(Loss { total, ce })
    }
}

fn sum_losses(stats: &[MoeStats], dtype: DType, dev: &Device) -> Result<(Tensor, Tensor)> {
    let mut aux = Tensor::zeros((), dtype, dev)?;
    let mut z = Tensor::zeros((), dtype, dev)?;
    for s in stats {
        aux = (aux + s.aux_loss.to_dtype(dtype)?)?;
        z = (z + s.z_loss.to_dtype(dtype)?)?;
    }
    Ok((aux, z))
}

/// Mean cross-entropy of `logits` (batch, seq, vocab) against `targets` (batch, seq) u32 over positions
/// where `mask` is non-zero (all positions without a mask). Computed in f32 (f64 for f64 logits).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let (b, t, v) = logits.dims3()?;
    if targets.dims() != [b, t] || targets.dtype() != DType::U32 {
        return Err(ModelError::Input(format!(
            "targets must be u32 {:?}, got {:?} {:?}",
            [b, t],
            targets.dtype(),
            targets.dims()
        )));
    }
    if targets.max_all()?.to_scalar::<u32>()? as usize >= v {
        return Err(ModelError::Input("target id >= vocab size".into()));
    }
    let dt = if logits.dtype() == DType::F64 {
        DType::F64
    } else {
        DType::F32
    };
    let l = logits.reshape((b * t, v))?.to_dtype(dt)?;
    let nll = if crate::kernels::cpu_float(&l) {
        crate::kernels::cross_entropy_rows(&l, targets.flatten_all()?.to_vec1::<u32>()?)?
    } else {
        let tgt = l.gather(&targets.reshape((b * t, 1))?, D::Minus1)?;
        (logsumexp(&l)? - tgt)?.flatten_all()?
    };
    match mask {
        None => Ok(nll.mean_all()?),
        Some(m) => {
            if m.dims() != [b, t] {
                return Err(ModelError::Input(format!(
                    "loss mask must be {:?}, got {:?}",
                    [b, t],
                    m.dims()
                )));
            }
            let m = m.to_dtype(dt)?.ne(0.0)?.to_dtype(dt)?.flatten_all()?;
            let n = m.sum_all()?.to_scalar_f64(dt)?;
            if n == 0.0 {
                return Err(ModelError::Input("loss mask selects no position".into()));
            }
            Ok(((nll * m)?.sum_all()? / n)?)
        }
    }
}

trait ToF64 {
    fn to_scalar_f64(&self, dt: DType) -> Result<f64>;
}

impl ToF64 for Tensor {
    fn to_scalar_f64(&self, dt: DType) -> Result<f64> {
        Ok(if dt == DType::F64 {
            self.to_scalar::<f64>()?
        } else {
            self.to_scalar::<f32>()? as f64
        })
    }
}

/// Initialises every variable of `varmap` from `seed` (each tensor from its own stream derived from its
/// name, so the values do not depend on creation order): norms 1; embedding, q/k/v, gate/up, router and an
/// untied head N(0, init_std²); output projections (`attn.o`, `down`) N(0, (init_std/√(2·n_layers))²) so the
/// residual stream's variance does not grow with depth (GPT-2 scaling).
pub fn init_weights(varmap: &VarMap, cfg: &ModelConfig, seed: u64) -> Result<()> {
    for (name, var) in named_vars(varmap) {
        let vals = init_values(cfg, seed, &name, var.elem_count());
        let t = Tensor::from_vec(vals, var.shape(), var.device())?.to_dtype(var.dtype())?;
        var.set(&t)?;
    }
    Ok(())
}

/// Creates an expert store at `path` holding `cfg`'s experts initialised as [`init_weights`] would
/// initialise them as variables (the same values, bit for bit, in f32).
pub fn init_expert_store(path: &Path, cfg: &ModelConfig, seed: u64) -> Result<ExpertStore> {
    let layout = StoreLayout::from_config(cfg);
    let elems: Vec<usize> = layout.tensors.iter().map(|t| t.elems()).collect();
    let names: Vec<String> = layout.tensors.iter().map(|t| t.name.clone()).collect();
    Ok(ExpertStore::create(path, layout, |l, e, tensor| {
        let n = names
            .iter()
            .position(|x| x == tensor)
            .map(|i| elems[i])
            .unwrap_or(0);
        let name = StoreLayout::param_name(l, e, tensor);
        // f64 → f32 with `as`, as candle's `to_dtype` rounds.
        Ok(init_values(cfg, seed, &name, n)
            .into_iter()
            .map(|v| v as f32)
            .collect())
    })?)
}

/// The initial values of parameter `name` (`n` elements): see [`init_weights`].
fn init_values(cfg: &ModelConfig, seed: u64, name: &str, n: usize) -> Vec<f64> {
    if name.ends_with("norm.weight") {
        return vec![1.0; n];
    }
    let std = if name.ends_with(".o.weight") || name.ends_with(".down.weight") {
        cfg.init_std / (2.0 * cfg.n_layers as f64).sqrt()
    } else {
        cfg.init_std
    };
    let mut r = SplitMix64::for_name(seed, name);
    (0..n).map(|_| r.normal() * std).collect()
}

/// The variables of `varmap` by name, sorted by name (stable order for optimizers and checkpoints).
pub fn named_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    let sorted: BTreeMap<String, Var> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    sorted.into_iter().collect()
}
