//! Attention: RoPE, grouped-query, masked (sliding window, documents) softmax attention, from the packed
//! projections `qkv` (batch, seq, (n_heads + 2·n_kv_heads)·head_dim) = [q heads | k heads | v heads] to
//! the merged heads (batch, seq, n_heads·head_dim), ready for the output projection. Queries are rotated
//! and scaled by 1/√head_dim, keys rotated, inside the kernel (as [`super::rope()`] then a scale would).
//!
//! One task per (batch row, KV head): its keys and values and the query heads sharing them, so the
//! backward sums the key/value gradients of a group inside one task, in a fixed order (the result does
//! not depend on the thread count). The queries of each context block are cut into sub-blocks of at
//! most `ATTN_SUB` rows; a sub-block multiplies against the key columns any of its queries sees (the
//! sliding window and causality trim the rest), so memory and work are O(seq × window), not seq².
//! The probabilities of those sub-blocks are kept for the backward.
//!
//! A custom op (one node, its backward recomputing nothing but the rotations) instead of candle's
//! per-block chain of matmuls, masked softmax and RoPE, whose score tensors dominated training memory.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor, bail};
use rayon::prelude::*;
use std::sync::Arc;

use super::common::{Float, R, SendPtr, dispatch, mm, slice, tensor, with_data};

/// One context block as the kernel sees it: queries `q_start..q_start + q_len` against keys
/// `k_start..k_start + k_len`, with the flags `visible` (1: query sees key), laid out (1 or batch,
/// q_len, k_len). The model's attention layer makes one from each of its query blocks.
#[derive(Clone, Debug)]
pub struct VisibleBlock {
    pub q_start: usize,
    pub q_len: usize,
    pub k_start: usize,
    pub k_len: usize,
    pub visible: Arc<Vec<u8>>,
}

/// Head counts of an attention layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnDims {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

/// Queries per sub-block: a longer context block is split (which trims causally masked keys).
const ATTN_SUB: usize = 64;

/// Sub-block of queries `q..q+sq` of one batch row and the keys `k..k+nk` any of them sees.
#[derive(Clone, Copy, Debug)]
struct Sub {
    q: usize,
    sq: usize,
    k: usize,
    nk: usize,
    /// Offset of its probabilities (sq × nk) in one head's plane.
    p_off: usize,
    /// Its visibility flags: context block, offset of (row 0, key 0), row stride.
    blk: usize,
    vis_off: usize,
    vis_rs: usize,
}

/// Per batch row: its sub-blocks and the size of one head's probabilities.
struct AttnPlan {
    subs: Vec<Vec<Sub>>,
    plane: Vec<usize>,
}

fn attn_plan(blocks: &[VisibleBlock], b: usize, t: usize) -> R<AttnPlan> {
    let mut subs = Vec::with_capacity(b);
    let mut plane = Vec::with_capacity(b);
    for bi in 0..b {
        let (mut v, mut off) = (Vec::new(), 0);
        for (bx, blk) in blocks.iter().enumerate() {
            let (tq, tk) = (blk.q_len, blk.k_len);
            if blk.q_start + tq > t || blk.k_start + tk > t {
                bail!("fused attention: block beyond the sequence ({t})");
            }
            let rows = blk.visible.len() / (tq * tk).max(1);
            if rows * tq * tk != blk.visible.len() {
                bail!("fused attention: visibility of a block has a wrong size");
            }
            let r = match rows {
                1 => 0,
                n if n == b => bi,
                n => bail!("fused attention: mask for {n} rows, batch {b}"),
            };
            let mut s0 = 0;
            while s0 < tq {
                let sq = ATTN_SUB.min(tq - s0);
                let (mut c0, mut c1) = (tk, 0);
                for i in s0..s0 + sq {
                    let row = &blk.visible[(r * tq + i) * tk..][..tk];
                    if let (Some(a), Some(z)) = (
                        row.iter().position(|&f| f != 0),
                        row.iter().rposition(|&f| f != 0),
                    ) {
                        c0 = c0.min(a);
                        c1 = c1.max(z + 1);
                    }
                }
                if c1 > c0 {
                    let nk = c1 - c0;
                    v.push(Sub {
                        q: blk.q_start + s0,
                        sq,
                        k: blk.k_start + c0,
                        nk,
                        p_off: off,
                        blk: bx,
                        vis_off: (r * tq + s0) * tk + c0,
                        vis_rs: tk,
                    });
                    off += sq * nk;
                }
                s0 += sq;
            }
        }
        subs.push(v);
        plane.push(off);
    }
    Ok(AttnPlan { subs, plane })
}

struct AttentionOp {
    dims: AttnDims,
    /// RoPE tables (seq, head_dim/2).
    cos: Vec<f64>,
    sin: Vec<f64>,
    /// The context blocks (their visibility flags).
    blocks: Vec<VisibleBlock>,
    plan: AttnPlan,
    /// The forward's probabilities, for the backward.
    probs: std::sync::Mutex<Option<CpuStorage>>,
}

/// RoPE of `t` rows of `hd` values at row stride `rs` in `x`, times `scale`, into `out` (t × hd).
fn rope_rows<T: Float>(
    x: &[T],
    rs: usize,
    hd: usize,
    tables: (&[f64], &[f64]),
    scale: T,
    out: &mut [T],
) {
    let half = hd / 2;
    let (cos, sin) = tables;
    for (p, o) in out.chunks_exact_mut(hd).enumerate() {
        let xr = &x[p * rs..][..hd];
        let (cr, sr) = (&cos[p * half..][..half], &sin[p * half..][..half]);
        for i in 0..half {
            let (c, s) = (T::from_f64(cr[i]), T::from_f64(sr[i]));
            let (a, b) = (xr[2 * i], xr[2 * i + 1]);
            o[2 * i] = (a * c - b * s) * scale;
            o[2 * i + 1] = (a * s + b * c) * scale;
        }
    }
}

/// Backward of [`rope_rows`]: the gradient `g` (t × hd) of the rotated rows, times `scale`, written to
/// `t` rows at stride `rs` from `dst`.
///
/// # Safety
/// `dst` must be valid for those rows and written by no one else meanwhile.
unsafe fn rope_rows_back<T: Float>(
    g: &[T],
    hd: usize,
    tables: (&[f64], &[f64]),
    scale: T,
    dst: *mut T,
    rs: usize,
) {
    let half = hd / 2;
    let (cos, sin) = tables;
    for (p, gr) in g.chunks_exact(hd).enumerate() {
        // SAFETY: the caller's contract.
        let o = unsafe { std::slice::from_raw_parts_mut(dst.add(p * rs), hd) };
        let (cr, sr) = (&cos[p * half..][..half], &sin[p * half..][..half]);
        for i in 0..half {
            let (c, s) = (T::from_f64(cr[i]), T::from_f64(sr[i]));
            let (a, b) = (gr[2 * i], gr[2 * i + 1]);
            o[2 * i] = (a * c + b * s) * scale;
            o[2 * i + 1] = (b * c - a * s) * scale;
        }
    }
}

/// In place: the rows (sq × nk) of scores become probabilities over their visible keys (`vis`, row
/// stride `vis_rs`); a row seeing nothing becomes zeros.
fn masked_softmax_rows<T: Float>(p: &mut [T], vis: &[u8], nk: usize, vis_rs: usize) {
    for (i, row) in p.chunks_exact_mut(nk).enumerate() {
        let v = &vis[i * vis_rs..][..nk];
        let mut mx = T::NEG_INF;
        for (x, &f) in row.iter_mut().zip(v) {
            if f == 0 {
                *x = T::NEG_INF;
            }
            mx = mx.max_(*x);
        }
        if mx == T::NEG_INF {
            row.iter_mut().for_each(|x| *x = T::zero());
            continue;
        }
        let sum = T::exp_shift_sum(row, mx);
        let inv = T::one() / sum;
        row.iter_mut().for_each(|x| *x *= inv);
    }
}

impl AttentionOp {
    fn shape(&self) -> (usize, usize, usize, usize) {
        let AttnDims {
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: hd,
        } = self.dims;
        (nh, nkv, hd, nh / nkv)
    }

    /// Offset of task (batch row, KV head)'s probabilities.
    fn probs_offset(&self, bi: usize, g: usize) -> usize {
        let (nh, _, _, rep) = self.shape();
        self.plan.plane[..bi].iter().sum::<usize>() * nh + g * rep * self.plan.plane[bi]
    }

    fn fwd<T: Float>(&self, qkv: &[T], b: usize, t: usize) -> (Vec<T>, Vec<T>) {
        let (nh, nkv, hd, rep) = self.shape();
        let (w, ow) = ((nh + 2 * nkv) * hd, nh * hd);
        let scale = T::from_f64(1.0 / (hd as f64).sqrt());
        let tables = (&self.cos[..], &self.sin[..]);
        let mut out = vec![T::zero(); b * t * ow];
        let mut probs = vec![T::zero(); self.plan.plane.iter().sum::<usize>() * nh];
        let mut tasks = Vec::with_capacity(b * nkv);
        let mut rest = probs.as_mut_slice();
        for bi in 0..b {
            for g in 0..nkv {
                let (mine, r) = rest.split_at_mut(rep * self.plan.plane[bi]);
                tasks.push((bi, g, mine));
                rest = r;
            }
        }
        let out_ptr = SendPtr(out.as_mut_ptr());
        tasks.into_par_iter().for_each(|(bi, g, pr)| {
            let x = &qkv[bi * t * w..][..t * w];
            let plane = self.plan.plane[bi];
            let mut kr = vec![T::zero(); t * hd];
            rope_rows(&x[(nh + g) * hd..], w, hd, tables, T::one(), &mut kr);
            let v = x[(nh + nkv + g) * hd..].as_ptr();
            let mut qr = vec![T::zero(); t * hd];
            for (hr, pp) in pr.chunks_exact_mut(plane.max(1)).take(rep).enumerate() {
                let h = g * rep + hr;
                rope_rows(&x[h * hd..], w, hd, tables, scale, &mut qr);
                for s in &self.plan.subs[bi] {
                    let p = &mut pp[s.p_off..][..s.sq * s.nk];
                    // SAFETY: q rows q..q+sq and key rows k..k+nk lie in the sequence (plan); the
                    // output rows of this batch row and head are written by this task only.
                    unsafe {
                        mm(
                            (s.sq, s.nk, hd),
                            p.as_mut_ptr(),
                            (s.nk, 1),
                            false,
                            qr[s.q * hd..].as_ptr(),
                            (hd, 1),
                            kr[s.k * hd..].as_ptr(),
                            (1, hd),
                        );
                    }
                    let vis = &self.blocks[s.blk].visible[s.vis_off..];
                    masked_softmax_rows(p, vis, s.nk, s.vis_rs);
                    unsafe {
                        mm(
                            (s.sq, hd, s.nk),
                            out_ptr.get().add((bi * t + s.q) * ow + h * hd),
                            (ow, 1),
                            false,
                            p.as_ptr(),
                            (s.nk, 1),
                            v.add(s.k * w),
                            (w, 1),
                        );
                    }
                }
            }
        });
        (out, probs)
    }

    fn bwd_data<T: Float>(&self, qkv: &[T], grad: &[T], probs: &[T], b: usize, t: usize) -> Vec<T> {
        let (nh, nkv, hd, rep) = self.shape();
        let (w, ow) = ((nh + 2 * nkv) * hd, nh * hd);
        let scale = T::from_f64(1.0 / (hd as f64).sqrt());
        let tables = (&self.cos[..], &self.sin[..]);
        let mut dx = vec![T::zero(); b * t * w];
        let dx_ptr = SendPtr(dx.as_mut_ptr());
        (0..b * nkv).into_par_iter().for_each(|task| {
            let (bi, g) = (task / nkv, task % nkv);
            let x = &qkv[bi * t * w..][..t * w];
            let go = &grad[bi * t * ow..][..t * ow];
            let plane = self.plan.plane[bi];
            let pr = &probs[self.probs_offset(bi, g)..][..rep * plane];
            let subs = &self.plan.subs[bi];
            // SAFETY (all below): this task alone writes the rows of batch row `bi` in the columns
            // of its query heads, its key head and its value head; rows addressed lie in the sequence.
            let dxb = unsafe { dx_ptr.get().add(bi * t * w) };
            let mut kr = vec![T::zero(); t * hd];
            rope_rows(&x[(nh + g) * hd..], w, hd, tables, T::one(), &mut kr);
            let v = x[(nh + nkv + g) * hd..].as_ptr();
            let dv = unsafe { dxb.add((nh + nkv + g) * hd) };
            let mut dkr = vec![T::zero(); t * hd];
            let mut qr = vec![T::zero(); t * hd];
            let mut dqr = vec![T::zero(); t * hd];
            let mut ds = vec![T::zero(); subs.iter().map(|s| s.sq * s.nk).max().unwrap_or(0)];
            for hr in 0..rep {
                let h = g * rep + hr;
                rope_rows(&x[h * hd..], w, hd, tables, scale, &mut qr);
                dqr.iter_mut().for_each(|d| *d = T::zero());
                let pp = &pr[hr * plane..][..plane];
                for s in subs {
                    let p = &pp[s.p_off..][..s.sq * s.nk];
                    let ds = &mut ds[..s.sq * s.nk];
                    let gq = go[s.q * ow + h * hd..].as_ptr();
                    unsafe {
                        // dV[k..k+nk] += Pᵀ · dO
                        mm(
                            (s.nk, hd, s.sq),
                            dv.add(s.k * w),
                            (w, 1),
                            true,
                            p.as_ptr(),
                            (1, s.nk),
                            gq,
                            (ow, 1),
                        );
                        // dP = dO · Vᵀ
                        mm(
                            (s.sq, s.nk, hd),
                            ds.as_mut_ptr(),
                            (s.nk, 1),
                            false,
                            gq,
                            (ow, 1),
                            v.add(s.k * w),
                            (1, w),
                        );
                    }
                    // dS = P ⊙ (dP − Σⱼ P dP)
                    for (dr, pr) in ds.chunks_exact_mut(s.nk).zip(p.chunks_exact(s.nk)) {
                        let dot = pr
                            .iter()
                            .zip(dr.iter())
                            .fold(T::zero(), |a, (&pv, &dv)| a + pv * dv);
                        for (d, &pv) in dr.iter_mut().zip(pr) {
                            *d = pv * (*d - dot);
                        }
                    }
                    unsafe {
                        // dQr[q..q+sq] = dS · Kr[k..k+nk]
                        mm(
                            (s.sq, hd, s.nk),
                            dqr[s.q * hd..].as_mut_ptr(),
                            (hd, 1),
                            false,
                            ds.as_ptr(),
                            (s.nk, 1),
                            kr[s.k * hd..].as_ptr(),
                            (hd, 1),
                        );
                        // dKr[k..k+nk] += dSᵀ · Qr[q..q+sq]
                        mm(
                            (s.nk, hd, s.sq),
                            dkr[s.k * hd..].as_mut_ptr(),
                            (hd, 1),
                            true,
                            ds.as_ptr(),
                            (1, s.nk),
                            qr[s.q * hd..].as_ptr(),
                            (hd, 1),
                        );
                    }
                }
                unsafe { rope_rows_back(&dqr, hd, tables, scale, dxb.add(h * hd), w) };
            }
            unsafe { rope_rows_back(&dkr, hd, tables, T::one(), dxb.add((nh + g) * hd), w) };
        });
        dx
    }
}

impl CustomOp1 for AttentionOp {
    fn name(&self) -> &'static str {
        "tardbot-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> R<(CpuStorage, Shape)> {
        let (b, t, _) = l.shape().dims3()?;
        fn go<T: Float>(
            op: &AttentionOp,
            s: &CpuStorage,
            l: &Layout,
            b: usize,
            t: usize,
        ) -> R<(CpuStorage, CpuStorage)> {
            let (out, probs) = op.fwd(slice::<T>(s, l)?, b, t);
            Ok((T::to_cpu_storage_owned(out), T::to_cpu_storage_owned(probs)))
        }
        let (out, probs) = dispatch!(s.dtype(), go(self, s, l, b, t))?;
        *self.probs.lock().unwrap_or_else(|e| e.into_inner()) = Some(probs);
        let ow = self.dims.n_heads * self.dims.head_dim;
        Ok((out, Shape::from((b, t, ow))))
    }

    fn bwd(&self, qkv: &Tensor, _res: &Tensor, g: &Tensor) -> R<Option<Tensor>> {
        fn go<T: Float>(
            op: &AttentionOp,
            qkv: &Tensor,
            g: &Tensor,
            probs: &CpuStorage,
        ) -> R<Tensor> {
            let (b, t, _) = qkv.dims3()?;
            let probs = probs.as_slice::<T>()?;
            let dx = with_data::<T, _>(qkv, |x| {
                with_data::<T, _>(g, |gs| Ok(op.bwd_data(x, gs, probs, b, t)))
            })?;
            tensor(dx, qkv.shape(), qkv)
        }
        let saved = self.probs.lock().unwrap_or_else(|e| e.into_inner());
        let Some(probs) = saved.as_ref() else {
            bail!("fused attention: backward before its forward");
        };
        Ok(Some(dispatch!(qkv.dtype(), go(self, qkv, g, probs))?))
    }
}

/// Attention of the packed projections `qkv` (batch, seq, (n_heads + 2·n_kv_heads)·head_dim), laid out
/// [q heads | k heads | v heads] and not yet rotated, under the visibility of the context `blocks`
/// (which must cover the sequence's queries) with RoPE tables `cos`, `sin` (seq, head_dim/2). Returns
/// the merged heads (batch, seq, n_heads·head_dim). Differentiable in `qkv`; CPU, f32/f64.
pub fn attention(
    qkv: &Tensor,
    dims: AttnDims,
    cos: &Tensor,
    sin: &Tensor,
    blocks: &[VisibleBlock],
) -> R<Tensor> {
    let (b, t, w) = qkv.dims3()?;
    let AttnDims {
        n_heads: nh,
        n_kv_heads: nkv,
        head_dim: hd,
    } = dims;
    if nkv == 0 || nh % nkv != 0 || hd % 2 != 0 || w != (nh + 2 * nkv) * hd {
        bail!("fused attention: qkv width {w} does not fit {dims:?}");
    }
    if cos.dims() != [t, hd / 2] || sin.dims() != [t, hd / 2] {
        bail!("fused attention: RoPE tables {:?} for seq {t}", cos.dims());
    }
    let covered: usize = blocks.iter().map(|b| b.q_len).sum();
    if covered != t {
        bail!("fused attention: blocks cover {covered} queries of {t}");
    }
    let cos = cos.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let sin = sin.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let plan = attn_plan(blocks, b, t)?;
    qkv.contiguous()?.apply_op1(AttentionOp {
        dims,
        cos,
        sin,
        blocks: blocks.to_vec(),
        plan,
        probs: Default::default(),
    })
}
