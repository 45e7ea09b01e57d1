//! Grouped-query, sliding-window causal attention with RoPE.
//!
//! Masking: query at position `p` sees key at position `k` iff `k <= p`, `p - k < window` and, when
//! document ids are given (packed sequences), both tokens carry the same document id. RoPE positions stay
//! the packed positions: attention scores under RoPE depend only on `p - k`, and keys of other documents
//! are masked, so restarting positions per document would compute the same function.
//!
//! Training path: the sequence is cut into query blocks of `window_stride` tokens; each block attends to
//! the at most `window + stride - 1` keys it can see, so memory is O(n × (w + s)) rather than O(n²). The
//! blocks compute exactly the banded-mask attention (tested against an explicit full banded mask).
//!
//! GQA: the `n_heads / n_kv_heads` query heads of a group are folded into the row dimension of one matmul
//! against their shared key/value head, so keys and values are never repeated in memory.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::kernels::VisibleBlock;
use crate::ops::{Linear, rope, softmax};
use crate::{ModelError, Result};

/// One query block of the blocked attention and its additive mask (0 or -inf).
#[derive(Clone, Debug)]
pub struct QueryBlock {
    pub q_start: usize,
    pub q_len: usize,
    pub k_start: usize,
    pub k_len: usize,
    /// (batch or 1, 1, 1, q_len, k_len).
    pub mask: Tensor,
    /// The same mask as flags (1: visible), (batch or 1, q_len, k_len), for the attention kernel.
    pub visible: std::sync::Arc<Vec<u8>>,
}

impl QueryBlock {
    /// The block as the attention kernel takes it (positions and flags, no mask tensor).
    fn visible_block(&self) -> VisibleBlock {
        VisibleBlock {
            q_start: self.q_start,
            q_len: self.q_len,
            k_start: self.k_start,
            k_len: self.k_len,
            visible: self.visible.clone(),
        }
    }
}

/// Per-forward context shared by all layers: positions, RoPE tables, masks.
#[derive(Clone, Debug)]
pub struct AttnCtx {
    pub pos0: usize,
    pub seq_len: usize,
    pub cos: Tensor,
    pub sin: Tensor,
    pub blocks: Vec<QueryBlock>,
    /// Use candle's fused (non-differentiable) kernels: inference only.
    pub fused: bool,
}

/// Per batch row, the document ids of the queries and of the keys.
type DocIds<'a> = (&'a [Vec<u32>], &'a [Vec<u32>]);

/// Which keys each query sees: per row (1 or one per batch row), query `i` and key `j`, 1 where query
/// `q_pos[i]` may attend to key `k_pos[j]` (None: empty cache slot), laid out (rows, tq, tk).
/// `docs`: per batch row, the document id of each query and key.
pub(crate) fn visibility(
    q_pos: &[usize],
    k_pos: &[Option<usize>],
    window: usize,
    docs: Option<DocIds<'_>>,
) -> (usize, Vec<u8>) {
    let (tq, tk) = (q_pos.len(), k_pos.len());
    let rows = docs.map_or(1, |(q, _)| q.len());
    let mut m = vec![0u8; rows * tq * tk];
    for r in 0..rows {
        for (i, &p) in q_pos.iter().enumerate() {
            for (j, k) in k_pos.iter().enumerate() {
                let Some(k) = *k else { continue };
                let mut ok = k <= p && p - k < window;
                if let Some((qd, kd)) = docs {
                    ok &= qd[r][i] == kd[r][j];
                }
                m[(r * tq + i) * tk + j] = ok as u8;
            }
        }
    }
    (rows, m)
}

/// The additive mask (0 where visible, -inf elsewhere), (rows, 1, 1, tq, tk), of a [`visibility`].
fn mask_of(
    rows: usize,
    vis: &[u8],
    tq: usize,
    tk: usize,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let m: Vec<f32> = vis
        .iter()
        .map(|&v| if v != 0 { 0.0 } else { f32::NEG_INFINITY })
        .collect();
    Ok(Tensor::from_vec(m, (rows, 1, 1, tq, tk), device)?.to_dtype(dtype)?)
}

/// Builds the additive mask for queries at `q_pos` and keys at `k_pos` (None: empty cache slot).
/// `docs`: per batch row, the document id of each query and key.
pub(crate) fn build_mask(
    q_pos: &[usize],
    k_pos: &[Option<usize>],
    window: usize,
    docs: Option<DocIds<'_>>,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let (rows, vis) = visibility(q_pos, k_pos, window, docs);
    mask_of(rows, &vis, q_pos.len(), k_pos.len(), dtype, device)
}

impl AttnCtx {
    /// Context for a full forward over `seq_len` tokens starting at absolute position `pos0`.
    /// `doc_ids`: optional per-row document ids (batch × seq_len) for packed sequences.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: &tardbot_core::ModelConfig,
        seq_len: usize,
        pos0: usize,
        doc_ids: Option<&[Vec<u32>]>,
        fused: bool,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let (cos, sin) =
            crate::ops::rope_tables(pos0, seq_len, cfg.head_dim(), cfg.rope_theta, dtype, device)?;
        let stride = cfg.window_stride.max(1);
        let mut blocks = Vec::new();
        let mut qs = 0;
        while qs < seq_len {
            let tq = stride.min(seq_len - qs);
            let ks = qs.saturating_sub(cfg.window - 1);
            let tk = qs + tq - ks;
            let q_pos: Vec<usize> = (pos0 + qs..pos0 + qs + tq).collect();
            let k_pos: Vec<Option<usize>> = (pos0 + ks..pos0 + ks + tk).map(Some).collect();
            let q_docs: Option<Vec<Vec<u32>>> =
                doc_ids.map(|d| d.iter().map(|r| r[qs..qs + tq].to_vec()).collect());
            let k_docs: Option<Vec<Vec<u32>>> =
                doc_ids.map(|d| d.iter().map(|r| r[ks..ks + tk].to_vec()).collect());
            let (rows, vis) = visibility(
                &q_pos,
                &k_pos,
                cfg.window,
                q_docs.as_deref().zip(k_docs.as_deref()),
            );
            let mask = mask_of(rows, &vis, tq, tk, dtype, device)?;
            blocks.push(QueryBlock {
                q_start: qs,
                q_len: tq,
                k_start: ks,
                k_len: tk,
                mask,
                visible: std::sync::Arc::new(vis),
            });
            qs += tq;
        }
        Ok(AttnCtx {
            pos0,
            seq_len,
            cos,
            sin,
            blocks,
            fused,
        })
    }
}

/// Keys and values of one layer for incremental decoding: a ring buffer of `window` slots (keys already
/// rotated by RoPE at their absolute position), so memory stays bounded however long generation runs.
#[derive(Clone, Debug, Default)]
pub struct LayerKvCache {
    k: Option<Tensor>,
    v: Option<Tensor>,
    /// Absolute position held by each slot.
    slot_pos: Vec<Option<usize>>,
}

impl LayerKvCache {
    /// Number of slots holding a position.
    pub fn len(&self) -> usize {
        self.slot_pos.iter().filter(|p| p.is_some()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keys, values and the position of each slot: tests compare caches written different ways.
    #[cfg(test)]
    pub(crate) fn parts(&self) -> (Option<&Tensor>, Option<&Tensor>, &[Option<usize>]) {
        (self.k.as_ref(), self.v.as_ref(), &self.slot_pos)
    }

    /// Writes keys/values (batch, kv_heads, t, head_dim) of positions `pos0..pos0+t` into their slots
    /// (slot = position mod window); only the last `window` positions are kept.
    fn write(&mut self, k: &Tensor, v: &Tensor, pos0: usize, window: usize) -> Result<()> {
        let (b, h, t, d) = k.dims4()?;
        if self.k.is_none() {
            self.k = Some(Tensor::zeros((b, h, window, d), k.dtype(), k.device())?);
            self.v = Some(Tensor::zeros((b, h, window, d), v.dtype(), v.device())?);
            self.slot_pos = vec![None; window];
        }
        let (ck, cv) = match (&self.k, &self.v) {
            (Some(ck), Some(cv)) => (ck, cv),
            _ => return Err(ModelError::Input("kv cache not initialised".into())),
        };
        let keep = t.min(window);
        let mut i = t - keep; // first token to store
        while i < t {
            let slot = (pos0 + i) % window;
            let run = (window - slot).min(t - i);
            ck.slice_set(&k.narrow(2, i, run)?.contiguous()?, 2, slot)?;
            cv.slice_set(&v.narrow(2, i, run)?.contiguous()?, 2, slot)?;
            for j in 0..run {
                self.slot_pos[slot + j] = Some(pos0 + i + j);
            }
            i += run;
        }
        Ok(())
    }
}

/// The attention sub-layer of a block.
#[derive(Clone, Debug)]
pub struct Attention {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub window: usize,
}

impl Attention {
    pub fn new(cfg: &tardbot_core::ModelConfig, vb: VarBuilder) -> Result<Self> {
        let (h, hd) = (cfg.hidden_size, cfg.head_dim());
        let std = cfg.init_std;
        let out_std = cfg.init_std / (2.0 * cfg.n_layers as f64).sqrt();
        let w = |name: &str, o: usize, i: usize, s: f64| -> Result<Linear> {
            Ok(Linear::new(vb.pp(name).get_with_hints(
                (o, i),
                "weight",
                candle_nn::Init::Randn {
                    mean: 0.0,
                    stdev: s,
                },
            )?))
        };
        Ok(Attention {
            q: w("q", cfg.n_heads * hd, h, std)?,
            k: w("k", cfg.n_kv_heads * hd, h, std)?,
            v: w("v", cfg.n_kv_heads * hd, h, std)?,
            o: w("o", h, cfg.n_heads * hd, out_std)?,
            n_heads: cfg.n_heads,
            n_kv_heads: cfg.n_kv_heads,
            head_dim: hd,
            window: cfg.window,
        })
    }

    /// q, k, v of `x` (batch, t, hidden) as head-major (batch, heads, t, head_dim), RoPE applied.
    fn qkv(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        fused: bool,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, t, _) = x.dims3()?;
        let heads = |y: Tensor, n: usize| -> Result<Tensor> {
            Ok(y.reshape((b, t, n, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = heads(self.q.forward(x)?, self.n_heads)?;
        let k = heads(self.k.forward(x)?, self.n_kv_heads)?;
        let v = heads(self.v.forward(x)?, self.n_kv_heads)?;
        // Scaling q before the product is cheaper than scaling the scores.
        let q = (rope(&q, cos, sin, fused)? * (1.0 / (self.head_dim as f64).sqrt()))?;
        let k = rope(&k, cos, sin, fused)?;
        Ok((q, k, v))
    }

    /// Attention of (scaled) q (b, n_heads, tq, hd) over k, v (b, n_kv, tk, hd) with an additive mask
    /// (b or 1, 1, 1, tq, tk); returns (b, n_heads, tq, hd).
    fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: &Tensor,
        fused: bool,
    ) -> Result<Tensor> {
        let (b, _, tq, hd) = q.dims4()?;
        let tk = k.dim(2)?;
        let (g, rep) = (self.n_kv_heads, self.n_heads / self.n_kv_heads);
        let q = q.contiguous()?.reshape((b, g, rep * tq, hd))?;
        let s = q.matmul(&k.t()?)?.reshape((b, g, rep, tq, tk))?;
        let p = if !fused && crate::kernels::cpu_float(&s) {
            crate::kernels::masked_softmax(&s, mask)?
        } else {
            softmax(&s.broadcast_add(mask)?, fused)?
        };
        let p = p.reshape((b, g, rep * tq, tk))?;
        Ok(p.matmul(v)?.reshape((b, self.n_heads, tq, hd))?)
    }

    fn merge(&self, y: Tensor) -> Result<Tensor> {
        let (b, _, t, _) = y.dims4()?;
        let y = y
            .transpose(1, 2)?
            .reshape((b, t, self.n_heads * self.head_dim))?;
        self.o.forward(&y)
    }

    /// Whether [`Attention::forward`] takes the attention kernel ([`crate::kernels::attention()`]):
    /// training (not `ctx.fused`) on CPU in f32/f64 with float weights.
    fn use_attention_kernel(&self, x: &Tensor, ctx: &AttnCtx) -> bool {
        !ctx.fused
            && crate::kernels::cpu_float(x)
            && ![&self.q, &self.k, &self.v].iter().any(|l| l.is_quantized())
    }

    /// Full-sequence forward of the normalised input `x` (batch, seq, hidden).
    pub fn forward(&self, x: &Tensor, ctx: &AttnCtx) -> Result<Tensor> {
        let _span = crate::profile::Span::start(crate::profile::Counter::AttentionForward);
        if !self.use_attention_kernel(x, ctx) {
            return self.forward_composed(x, ctx);
        }
        // One projection for q, k and v (their weights stacked), then one kernel node.
        let w = Tensor::cat(&[&self.q.weight, &self.k.weight, &self.v.weight], 0)?;
        let qkv = Linear::new(w).forward(x)?;
        let dims = crate::kernels::AttnDims {
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
        };
        let blocks: Vec<VisibleBlock> = ctx.blocks.iter().map(QueryBlock::visible_block).collect();
        let y = crate::kernels::attention(&qkv, dims, &ctx.cos, &ctx.sin, &blocks)?;
        self.o.forward(&y)
    }

    /// [`Attention::forward`] as a chain of candle ops per query block (any device and dtype; the
    /// reference the attention kernel is tested against).
    pub fn forward_composed(&self, x: &Tensor, ctx: &AttnCtx) -> Result<Tensor> {
        let (q, k, v) = self.qkv(x, &ctx.cos, &ctx.sin, ctx.fused)?;
        let mut outs = Vec::with_capacity(ctx.blocks.len());
        for blk in &ctx.blocks {
            let qb = q.narrow(2, blk.q_start, blk.q_len)?;
            let kb = k.narrow(2, blk.k_start, blk.k_len)?;
            let vb = v.narrow(2, blk.k_start, blk.k_len)?;
            outs.push(self.attend(&qb, &kb, &vb, &blk.mask, ctx.fused)?);
        }
        let y = if outs.len() == 1 {
            outs.remove(0)
        } else {
            Tensor::cat(&outs, 2)?
        };
        self.merge(y)
    }

    /// Incremental forward of new tokens at positions `ctx.pos0..` against the cache, then caches them.
    pub fn forward_cached(
        &self,
        x: &Tensor,
        ctx: &AttnCtx,
        cache: &mut LayerKvCache,
    ) -> Result<Tensor> {
        let (q, k, v) = self.qkv(x, &ctx.cos, &ctx.sin, ctx.fused)?;
        let t = x.dim(1)?;
        let y = if t == 1 {
            self.decode((&q, &k, &v), &[ctx.pos0], &mut [cache], ctx.fused)?
        } else {
            // Several tokens: attend over [cache before writing, new keys], then write.
            let q_pos: Vec<usize> = (ctx.pos0..ctx.pos0 + t).collect();
            let (keys, vals, mut k_pos) = match (&cache.k, &cache.v) {
                (Some(ck), Some(cv)) => (
                    Tensor::cat(&[ck, &k], 2)?,
                    Tensor::cat(&[cv, &v], 2)?,
                    cache.slot_pos.clone(),
                ),
                _ => (k.clone(), v.clone(), Vec::new()),
            };
            k_pos.extend(q_pos.iter().map(|&p| Some(p)));
            let mask = build_mask(&q_pos, &k_pos, self.window, None, q.dtype(), q.device())?;
            let y = self.attend(&q, &keys, &vals, &mask, ctx.fused)?;
            cache.write(&k, &v, ctx.pos0, self.window)?;
            y
        };
        self.merge(y)
    }

    /// Decoding of one new token per sequence: writes token `i`'s key/value (b, kv_heads, ·, head_dim,
    /// column `i` of `k`, `v`) at position `pos[i]` into `caches[i]`, then attends with its (scaled,
    /// rotated) query (column `i` of `q`, (b, n_heads, n, head_dim)) over that ring, which after the
    /// write holds exactly the keys it may see. Returns (b, n_heads, n, head_dim). On CPU in f32/f64
    /// one decode kernel call covers all sequences and reads only the filled slots (forward only:
    /// decoding is inference).
    fn decode(
        &self,
        (q, k, v): (&Tensor, &Tensor, &Tensor),
        pos: &[usize],
        caches: &mut [&mut LayerKvCache],
        fused: bool,
    ) -> Result<Tensor> {
        for (i, cache) in caches.iter_mut().enumerate() {
            cache.write(
                &k.narrow(2, i, 1)?,
                &v.narrow(2, i, 1)?,
                pos[i],
                self.window,
            )?;
        }
        let ring = |c: &LayerKvCache| match (&c.k, &c.v) {
            (Some(a), Some(b)) => Ok((a.clone(), b.clone())),
            _ => Err(ModelError::Input("kv cache not initialised".into())),
        };
        if crate::kernels::cpu_float(q) {
            let visible: Vec<Vec<usize>> = (caches.iter().zip(pos))
                .map(|(c, &p)| {
                    (c.slot_pos.iter().enumerate())
                        .filter(|(_, s)| s.is_some_and(|s| s <= p && p - s < self.window))
                        .map(|(j, _)| j)
                        .collect()
                })
                .collect();
            let kv = caches.iter().map(|c| ring(c)).collect::<Result<Vec<_>>>()?;
            let rings: Vec<crate::kernels::Ring> = (kv.iter().zip(&visible))
                .map(|((k, v), vis)| crate::kernels::Ring { k, v, visible: vis })
                .collect();
            return Ok(crate::kernels::decode_attention(q, &rings)?);
        }
        // Other devices: candle ops per sequence over its whole ring, empty slots masked.
        let mut ys = Vec::with_capacity(caches.len());
        for (i, c) in caches.iter().enumerate() {
            let mask = build_mask(
                &[pos[i]],
                &c.slot_pos,
                self.window,
                None,
                q.dtype(),
                q.device(),
            )?;
            let (ck, cv) = ring(c)?;
            ys.push(self.attend(&q.narrow(2, i, 1)?, &ck, &cv, &mask, fused)?);
        }
        Ok(Tensor::cat(&ys, 2)?)
    }

    /// One decode step of `n` independent sequences: `x` (1, n, hidden) holds the normalised new token
    /// of each, sequence `i` at position `pos[i]` continuing `caches[i]`; `cos`/`sin` (n, head_dim/2)
    /// hold row `i` at `pos[i]`. The projections run once over all n tokens (the weights are read once);
    /// only the attention over each sequence's own ring is per sequence. Returns (1, n, hidden).
    pub fn forward_decode_batch(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        fused: bool,
        pos: &[usize],
        caches: &mut [&mut LayerKvCache],
    ) -> Result<Tensor> {
        let n = x.dim(1)?;
        if pos.len() != n || caches.len() != n {
            return Err(ModelError::Input(format!(
                "decode batch of {n} tokens with {} positions and {} caches",
                pos.len(),
                caches.len()
            )));
        }
        // The n tokens sit in the sequence dimension, so RoPE takes one table row per token.
        let (q, k, v) = self.qkv(x, cos, sin, fused)?;
        let y = self.decode((&q, &k, &v), pos, caches, fused)?;
        self.merge(y)
    }
}
