//! Fused CPU training kernels with their own backward, for f32 and f64.
//!
//! candle's autograd turns every elementary op into a node whose backward allocates a zeroed gradient,
//! adds into it and keeps its inputs alive; the compositions in [`crate::ops`] therefore cost several
//! full passes over memory (and allocations) per op, which dominated training time on CPU. Each kernel
//! here is one candle node: one pass forward, one pass backward, rows split over rayon threads.
//! They compute the same functions as the compositions (tests below compare values and gradients in
//! f64; the model's finite-difference check runs through them).
//!
//! Other devices and dtypes keep the compositions ([`cpu_float`] decides).

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Storage, Tensor, WithDType, bail,
};
use rayon::prelude::*;
use std::mem::MaybeUninit;

use crate::attention::QueryBlock;

/// Whether the fused kernels handle `t` (CPU, f32 or f64).
pub fn cpu_float(t: &Tensor) -> bool {
    t.device().is_cpu() && matches!(t.dtype(), DType::F32 | DType::F64)
}

/// The float operations the kernels need.
trait Float: WithDType + Send + Sync {
    fn exp_(self) -> Self;
    /// `exp`, vectorisable for f32 ([`exp_f32`], ≤ 2 ulp; 0 below −87), libm for f64.
    fn exp_fast(self) -> Self;
    /// In place `x ← exp(x − m)` over a slice, returning the sum; `x = −∞` gives exactly 0. f32 uses a
    /// vectorisable polynomial (≤ 2 ulp), f64 the libm `exp`.
    fn exp_shift_sum(x: &mut [Self], m: Self) -> Self;
    fn ln_(self) -> Self;
    fn sqrt_(self) -> Self;
    fn max_(self, o: Self) -> Self;
    const NEG_INF: Self;
}

macro_rules! float {
    ($t:ty, $exp_fast:expr, $exp_shift_sum:expr) => {
        impl Float for $t {
            #[inline(always)]
            fn exp_(self) -> Self {
                self.exp()
            }
            #[inline(always)]
            fn exp_fast(self) -> Self {
                $exp_fast(self)
            }
            #[inline(always)]
            fn exp_shift_sum(x: &mut [Self], m: Self) -> Self {
                $exp_shift_sum(x, m)
            }
            #[inline(always)]
            fn ln_(self) -> Self {
                self.ln()
            }
            #[inline(always)]
            fn sqrt_(self) -> Self {
                self.sqrt()
            }
            #[inline(always)]
            fn max_(self, o: Self) -> Self {
                self.max(o)
            }
            const NEG_INF: Self = <$t>::NEG_INFINITY;
        }
    };
}
float!(f32, exp_f32, exp_shift_sum_f32);
float!(f64, f64::exp, |x: &mut [f64], m: f64| {
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - m).exp();
        sum += *v;
    }
    sum
});

/// `exp(x)` for f32, branch-free so that loops over it vectorise: Cephes' `expf` (range reduction by
/// ln 2 with a two-part constant, degree-5 minimax polynomial, scaling by 2ⁿ through the exponent bits),
/// relative error within 2 ulp; below −87 (and at −∞) it returns 0, above 88 it saturates at e⁸⁸.
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    const LO: f32 = -87.0;
    const HI: f32 = 88.0;
    // 1.5 · 2²³: adding it rounds to an integer kept in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    let xc = x.clamp(LO, HI);
    let k = xc * std::f32::consts::LOG2_E + MAGIC;
    let n = k - MAGIC;
    let r = xc - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // n + 127 into the exponent field (k's low bits hold n + 2²²).
    let bits = (k.to_bits().wrapping_sub(0x4B40_0000).wrapping_add(127)) << 23;
    let v = y * f32::from_bits(bits);
    if x < LO { 0.0 } else { v }
}

fn exp_shift_sum_f32(x: &mut [f32], m: f32) -> f32 {
    // Eight partial sums: a fixed order (deterministic) that the compiler can keep in one register.
    let mut acc = [0f32; 8];
    let mut chunks = x.chunks_exact_mut(8);
    for c in &mut chunks {
        for (v, a) in c.iter_mut().zip(acc.iter_mut()) {
            *v = exp_f32(*v - m);
            *a += *v;
        }
    }
    let mut sum = 0.0;
    for v in chunks.into_remainder() {
        *v = exp_f32(*v - m);
        sum += *v;
    }
    acc.iter().sum::<f32>() + sum
}

/// Largest element (−∞ for an empty slice), over eight lanes so that it vectorises.
fn max_lanes<T: Float>(x: &[T]) -> T {
    let mut acc = [T::NEG_INF; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = a.max_(v);
        }
    }
    let m = chunks
        .remainder()
        .iter()
        .fold(T::NEG_INF, |a, &v| a.max_(v));
    acc.iter().fold(m, |a, &v| a.max_(v))
}

/// `Σ exp(x − m)` in a fixed order over eight lanes ([`Float::exp_fast`]).
fn sum_exp_shift<T: Float>(x: &[T], m: T) -> T {
    let mut acc = [T::zero(); 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += (v - m).exp_fast();
        }
    }
    let r = chunks
        .remainder()
        .iter()
        .fold(T::zero(), |a, &v| a + (v - m).exp_fast());
    acc.iter().fold(r, |a, &v| a + v)
}

type R<T> = candle_core::Result<T>;

/// Rows per parallel task so that a task covers at least ~16k elements.
fn rows_per_task(row_len: usize) -> usize {
    (16_384 / row_len.max(1)).max(1)
}

/// An uninitialised vector of `n` values, for a kernel that writes every element (through
/// [`MaybeUninit::write`] or a raw pointer) before [`assume_init`]: unlike `vec![0; n]`, no serial
/// zero-fill (and first touch of fresh pages) precedes the parallel fill.
fn uninit<T>(n: usize) -> Vec<MaybeUninit<T>> {
    let mut v = Vec::with_capacity(n);
    // SAFETY: `MaybeUninit` needs no initialisation; the capacity is `n`.
    unsafe { v.set_len(n) };
    v
}

/// The values of a vector from [`uninit`].
///
/// # Safety
/// Every element of `v` must have been written.
unsafe fn assume_init<T>(v: Vec<MaybeUninit<T>>) -> Vec<T> {
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: `MaybeUninit<T>` has the layout of `T`; the elements are initialised (the contract);
    // pointer, length and capacity come from a live vector that is not dropped.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr() as *mut T, v.len(), v.capacity()) }
}

fn slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> R<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<T>()?[a..b]),
        None => bail!("fused kernel: input is not contiguous"),
    }
}

/// Runs `f` over the contiguous CPU data of `t`.
fn with_data<T: WithDType, O>(t: &Tensor, f: impl FnOnce(&[T]) -> R<O>) -> R<O> {
    let t = t.contiguous()?;
    let (st, l) = t.storage_and_layout();
    match &*st {
        Storage::Cpu(s) => f(slice::<T>(s, l)?),
        _ => bail!("fused kernel: CPU tensors only"),
    }
}

fn tensor<T: WithDType>(v: Vec<T>, shape: &Shape, like: &Tensor) -> R<Tensor> {
    Tensor::from_vec(v, shape.clone(), like.device())
}

macro_rules! dispatch {
    ($dt:expr, $f:ident ( $($arg:expr),* )) => {
        match $dt {
            DType::F32 => $f::<f32>($($arg),*),
            DType::F64 => $f::<f64>($($arg),*),
            dt => bail!("fused kernel: unsupported dtype {dt:?}"),
        }
    };
}

// ---------------------------------------------------------------------------------------------
// RMSNorm: y = x · r · w, r = 1/√(mean(x²) + ε), over the last dimension.

struct RmsNorm {
    eps: f64,
}

fn rms_fwd<T: Float>(x: &[T], w: &[T], eps: f64) -> Vec<T> {
    let d = w.len();
    let mut y = uninit::<T>(x.len());
    let eps = T::from_f64(eps);
    let inv_d = T::from_f64(1.0 / d as f64);
    y.par_chunks_mut(d * rows_per_task(d))
        .zip(x.par_chunks(d * rows_per_task(d)))
        .for_each(|(ys, xs)| {
            for (yr, xr) in ys.chunks_exact_mut(d).zip(xs.chunks_exact(d)) {
                let ss = xr.iter().fold(T::zero(), |a, &v| a + v * v);
                let r = T::one() / (ss * inv_d + eps).sqrt_();
                for ((o, &v), &wi) in yr.iter_mut().zip(xr).zip(w) {
                    o.write(v * r * wi);
                }
            }
        });
    // SAFETY: the chunks cover `y` (x.len() is a multiple of d) and every element was written.
    unsafe { assume_init(y) }
}

fn rms_bwd<T: Float>(x: &[T], w: &[T], g: &[T], eps: f64) -> (Vec<T>, Vec<T>) {
    let d = w.len();
    let eps = T::from_f64(eps);
    let inv_d = T::from_f64(1.0 / d as f64);
    let mut dx = uninit::<T>(x.len());
    let chunk = d * rows_per_task(d);
    let partial = dx
        .par_chunks_mut(chunk)
        .zip(x.par_chunks(chunk))
        .zip(g.par_chunks(chunk))
        .map(|((dxs, xs), gs)| {
            let mut dw = vec![T::zero(); d];
            for ((dxr, xr), gr) in dxs
                .chunks_exact_mut(d)
                .zip(xs.chunks_exact(d))
                .zip(gs.chunks_exact(d))
            {
                let ss = xr.iter().fold(T::zero(), |a, &v| a + v * v);
                let r = T::one() / (ss * inv_d + eps).sqrt_();
                // dx = r·(g⊙w) − x·r³·mean(g⊙w⊙x)
                let mut dot = T::zero();
                for ((&xv, &gv), &wv) in xr.iter().zip(gr).zip(w) {
                    dot += gv * wv * xv;
                }
                let c = r * r * r * dot * inv_d;
                for (((o, &xv), &gv), (&wv, dwv)) in dxr
                    .iter_mut()
                    .zip(xr)
                    .zip(gr)
                    .zip(w.iter().zip(dw.iter_mut()))
                {
                    o.write(r * gv * wv - xv * c);
                    *dwv += gv * xv * r;
                }
            }
            dw
        })
        .collect::<Vec<_>>();
    // Partial weight gradients summed in chunk order: the same bits whatever the thread count and
    // however rayon split the work (a parallel `reduce` would add them in a schedule-dependent tree).
    let dw = partial.into_iter().fold(vec![T::zero(); d], |mut a, b| {
        for (x, y) in a.iter_mut().zip(b) {
            *x += y;
        }
        a
    });
    // SAFETY: the chunks cover `dx` (x.len() is a multiple of d) and every element was written.
    (unsafe { assume_init(dx) }, dw)
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "tardbot-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> R<(CpuStorage, Shape)> {
        fn go<T: Float>(
            s1: &CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
            eps: f64,
        ) -> R<CpuStorage> {
            let (x, w) = (slice::<T>(s1, l1)?, slice::<T>(s2, l2)?);
            Ok(T::to_cpu_storage_owned(rms_fwd(x, w, eps)))
        }
        let st = dispatch!(s1.dtype(), go(s1, l1, s2, l2, self.eps))?;
        Ok((st, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> R<(Option<Tensor>, Option<Tensor>)> {
        fn go<T: Float>(x: &Tensor, w: &Tensor, g: &Tensor, eps: f64) -> R<(Tensor, Tensor)> {
            let (dx, dw) = with_data::<T, _>(x, |xs| {
                with_data::<T, _>(w, |ws| {
                    with_data::<T, _>(g, |gs| Ok(rms_bwd(xs, ws, gs, eps)))
                })
            })?;
            Ok((tensor(dx, x.shape(), x)?, tensor(dw, w.shape(), w)?))
        }
        let (dx, dw) = dispatch!(x.dtype(), go(x, w, g, self.eps))?;
        Ok((Some(dx), Some(dw)))
    }
}

/// RMSNorm over the last dimension of `x` with weight `w` (its size), differentiable in both.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> R<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, RmsNorm { eps })
}

// ---------------------------------------------------------------------------------------------
// SwiGLU activation: y = silu(g) · u = g·σ(g)·u.

struct SwiGluAct;

#[inline(always)]
fn sigmoid<T: Float>(x: T) -> T {
    T::one() / (T::one() + (T::zero() - x).exp_fast())
}

impl CustomOp2 for SwiGluAct {
    fn name(&self) -> &'static str {
        "tardbot-swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> R<(CpuStorage, Shape)> {
        fn go<T: Float>(
            s1: &CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
        ) -> R<CpuStorage> {
            let (g, u) = (slice::<T>(s1, l1)?, slice::<T>(s2, l2)?);
            if g.len() != u.len() {
                bail!("swiglu: gate and up differ in size");
            }
            let mut y = uninit::<T>(g.len());
            y.par_chunks_mut(16_384)
                .zip(g.par_chunks(16_384).zip(u.par_chunks(16_384)))
                .for_each(|(ys, (gs, us))| {
                    for ((o, &gv), &uv) in ys.iter_mut().zip(gs).zip(us) {
                        o.write(gv * sigmoid(gv) * uv);
                    }
                });
            // SAFETY: the chunks cover `y`, every element written.
            Ok(T::to_cpu_storage_owned(unsafe { assume_init(y) }))
        }
        let st = dispatch!(s1.dtype(), go(s1, l1, s2, l2))?;
        Ok((st, l1.shape().clone()))
    }

    fn bwd(
        &self,
        g: &Tensor,
        u: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> R<(Option<Tensor>, Option<Tensor>)> {
        fn go<T: Float>(g: &Tensor, u: &Tensor, dy: &Tensor) -> R<(Tensor, Tensor)> {
            let (dg, du) = with_data::<T, _>(g, |gs| {
                with_data::<T, _>(u, |us| {
                    with_data::<T, _>(dy, |ds| {
                        let mut dg = uninit::<T>(gs.len());
                        let mut du = uninit::<T>(gs.len());
                        dg.par_chunks_mut(16_384)
                            .zip(du.par_chunks_mut(16_384))
                            .zip(gs.par_chunks(16_384).zip(us.par_chunks(16_384)))
                            .zip(ds.par_chunks(16_384))
                            .for_each(|(((dgs, dus), (gs, us)), ds)| {
                                for ((((a, b), &gv), &uv), &d) in
                                    dgs.iter_mut().zip(dus.iter_mut()).zip(gs).zip(us).zip(ds)
                                {
                                    let s = sigmoid(gv);
                                    let silu = gv * s;
                                    b.write(d * silu);
                                    a.write(d * uv * s * (T::one() + gv * (T::one() - s)));
                                }
                            });
                        // SAFETY: the chunks cover both, every element written.
                        Ok(unsafe { (assume_init(dg), assume_init(du)) })
                    })
                })
            })?;
            Ok((tensor(dg, g.shape(), g)?, tensor(du, u.shape(), u)?))
        }
        let (dg, du) = dispatch!(g.dtype(), go(g, u, dy))?;
        Ok((Some(dg), Some(du)))
    }
}

/// `silu(g) · u`, differentiable in both.
pub fn swiglu(g: &Tensor, u: &Tensor) -> R<Tensor> {
    g.contiguous()?.apply_op2(&u.contiguous()?, SwiGluAct)
}

// ---------------------------------------------------------------------------------------------
// Masked softmax over the last dimension: softmax(s + mask), mask additive (0 or −∞), shaped
// (mask_rows, 1, 1, tq, tk) against scores (b, …, tq, tk) with mask_rows 1 or b.

struct MaskedSoftmax;

fn masked_softmax_fwd<T: Float>(s: &[T], m: &[T], b: usize, tq: usize, tk: usize) -> Vec<T> {
    let rows = s.len() / tk;
    let rows_per_batch = rows / b;
    let mask_rows = m.len() / (tq * tk);
    let mut p = vec![T::zero(); s.len()];
    let per = rows_per_task(tk);
    p.par_chunks_mut(per * tk)
        .zip(s.par_chunks(per * tk))
        .enumerate()
        .for_each(|(c, (ps, ss))| {
            for (i, (pr, sr)) in ps.chunks_exact_mut(tk).zip(ss.chunks_exact(tk)).enumerate() {
                let row = c * per + i;
                let (bi, qi) = (row / rows_per_batch, row % tq);
                let mrow = if mask_rows == 1 { 0 } else { bi };
                let mr = &m[(mrow * tq + qi) * tk..][..tk];
                let mut mx = T::NEG_INF;
                for ((o, &sv), &mv) in pr.iter_mut().zip(sr).zip(mr) {
                    *o = sv + mv;
                    mx = mx.max_(*o);
                }
                if mx == T::NEG_INF {
                    pr.iter_mut().for_each(|o| *o = T::zero());
                    continue;
                }
                let mut sum = T::zero();
                for o in pr.iter_mut() {
                    *o = (*o - mx).exp_();
                    sum += *o;
                }
                let inv = T::one() / sum;
                pr.iter_mut().for_each(|o| *o *= inv);
            }
        });
    p
}

fn softmax_bwd<T: Float>(p: &[T], g: &[T], tk: usize) -> Vec<T> {
    let mut ds = vec![T::zero(); p.len()];
    let per = rows_per_task(tk) * tk;
    ds.par_chunks_mut(per)
        .zip(p.par_chunks(per).zip(g.par_chunks(per)))
        .for_each(|(dss, (ps, gs))| {
            for ((dr, pr), gr) in dss
                .chunks_exact_mut(tk)
                .zip(ps.chunks_exact(tk))
                .zip(gs.chunks_exact(tk))
            {
                let dot = pr
                    .iter()
                    .zip(gr)
                    .fold(T::zero(), |a, (&pv, &gv)| a + pv * gv);
                for ((o, &pv), &gv) in dr.iter_mut().zip(pr).zip(gr) {
                    *o = pv * (gv - dot);
                }
            }
        });
    ds
}

impl CustomOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "tardbot-masked-softmax"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> R<(CpuStorage, Shape)> {
        let dims = l1.shape().dims();
        let md = l2.shape().dims();
        if dims.len() < 3 || md.len() != dims.len() {
            bail!("masked softmax: scores {dims:?} and mask {md:?} ranks differ");
        }
        let (tq, tk, b) = (dims[dims.len() - 2], dims[dims.len() - 1], dims[0]);
        if md[md.len() - 2] != tq || md[md.len() - 1] != tk || !(md[0] == 1 || md[0] == b) {
            bail!("masked softmax: mask {md:?} does not broadcast to scores {dims:?}");
        }
        fn go<T: Float>(
            s1: &CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
            b: usize,
            tq: usize,
            tk: usize,
        ) -> R<CpuStorage> {
            let (s, m) = (slice::<T>(s1, l1)?, slice::<T>(s2, l2)?);
            Ok(T::to_cpu_storage_owned(masked_softmax_fwd(s, m, b, tq, tk)))
        }
        let st = dispatch!(s1.dtype(), go(s1, l1, s2, l2, b, tq, tk))?;
        Ok((st, l1.shape().clone()))
    }

    fn bwd(
        &self,
        s: &Tensor,
        _mask: &Tensor,
        p: &Tensor,
        g: &Tensor,
    ) -> R<(Option<Tensor>, Option<Tensor>)> {
        fn go<T: Float>(p: &Tensor, g: &Tensor) -> R<Tensor> {
            let tk = p.dim(candle_core::D::Minus1)?;
            let ds = with_data::<T, _>(p, |ps| {
                with_data::<T, _>(g, |gs| Ok(softmax_bwd(ps, gs, tk)))
            })?;
            tensor(ds, p.shape(), p)
        }
        let ds = dispatch!(s.dtype(), go(p, g))?;
        Ok((Some(ds), None))
    }
}

/// `softmax(s + mask)` over the last dimension; `mask` (constant, no gradient) is (1 or batch, 1, …,
/// tq, tk) of 0 / −∞. A row masked entirely gives zeros.
pub fn masked_softmax(s: &Tensor, mask: &Tensor) -> R<Tensor> {
    s.contiguous()?
        .apply_op2(&mask.to_dtype(s.dtype())?.contiguous()?, MaskedSoftmax)
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy per row: nll_i = logsumexp(l_i) − l_i[t_i].

struct CrossEntropy {
    targets: Vec<u32>,
    /// Per row, `logsumexp` of the logits, saved by the forward for the backward.
    lse: std::sync::Mutex<Vec<f64>>,
}

impl CustomOp1 for CrossEntropy {
    fn name(&self) -> &'static str {
        "tardbot-cross-entropy"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> R<(CpuStorage, Shape)> {
        let (n, v) = l.shape().dims2()?;
        if self.targets.len() != n {
            bail!("cross-entropy: {} targets for {n} rows", self.targets.len());
        }
        fn go<T: Float>(
            s: &CpuStorage,
            l: &Layout,
            t: &[u32],
            v: usize,
        ) -> R<(CpuStorage, Vec<f64>)> {
            let x = slice::<T>(s, l)?;
            let (out, lse): (Vec<T>, Vec<f64>) = x
                .par_chunks(v)
                .zip(t.par_iter())
                .map(|(row, &ti)| {
                    let mx = max_lanes(row);
                    let sum = sum_exp_shift(row, mx);
                    let lse = sum.ln_() + mx;
                    (lse - row[ti as usize], lse.to_f64())
                })
                .unzip();
            Ok((T::to_cpu_storage_owned(out), lse))
        }
        if self.targets.iter().any(|&t| t as usize >= v) {
            bail!("cross-entropy: target id >= vocab size {v}");
        }
        let (st, lse) = dispatch!(s.dtype(), go(s, l, &self.targets, v))?;
        *self.lse.lock().unwrap_or_else(|e| e.into_inner()) = lse;
        Ok((st, Shape::from(n)))
    }

    fn bwd(&self, logits: &Tensor, _res: &Tensor, g: &Tensor) -> R<Option<Tensor>> {
        fn go<T: Float>(logits: &Tensor, g: &Tensor, t: &[u32], lse: &[f64]) -> R<Tensor> {
            let v = logits.dim(1)?;
            let d = with_data::<T, _>(logits, |x| {
                with_data::<T, _>(g, |gs| {
                    let mut d = uninit::<T>(x.len());
                    d.par_chunks_mut(v)
                        .zip(x.par_chunks(v))
                        .zip(gs.par_iter().zip(t.par_iter()).zip(lse.par_iter()))
                        .for_each(|((dr, row), ((&gi, &ti), &lse))| {
                            // softmax = exp(l − lse)
                            let lse = T::from_f64(lse);
                            for (o, &b) in dr.iter_mut().zip(row) {
                                o.write((b - lse).exp_fast() * gi);
                            }
                            let o = &mut dr[ti as usize];
                            // SAFETY: written just above.
                            o.write(unsafe { o.assume_init() } - gi);
                        });
                    // SAFETY: one chunk per row covers `d`, every element written.
                    Ok(unsafe { assume_init(d) })
                })
            })?;
            tensor(d, logits.shape(), logits)
        }
        let lse = self.lse.lock().unwrap_or_else(|e| e.into_inner());
        if lse.len() != self.targets.len() {
            bail!("cross-entropy backward before its forward");
        }
        Ok(Some(dispatch!(
            logits.dtype(),
            go(logits, g, &self.targets, &lse)
        )?))
    }
}

/// Per-row negative log-likelihood of `logits` (n, vocab) at `targets` (n values).
pub fn cross_entropy_rows(logits: &Tensor, targets: Vec<u32>) -> R<Tensor> {
    logits.contiguous()?.apply_op1(CrossEntropy {
        targets,
        lse: Default::default(),
    })
}

// ---------------------------------------------------------------------------------------------
// Interleaved RoPE on (batch, heads, seq, head_dim): pairs (x[2i], x[2i+1]) rotated by the angle of
// (position, i) whose cos/sin tables are (seq, head_dim/2).

struct Rope {
    cos: Vec<f64>,
    sin: Vec<f64>,
}

fn rope_apply<T: Float>(
    x: &[T],
    cos: &[f64],
    sin: &[f64],
    t: usize,
    d: usize,
    inverse: bool,
) -> Vec<T> {
    let half = d / 2;
    let mut y = vec![T::zero(); x.len()];
    let sign = if inverse { -1.0 } else { 1.0 };
    // One task per (batch, head) plane.
    y.par_chunks_mut(t * d)
        .zip(x.par_chunks(t * d))
        .for_each(|(yp, xp)| {
            for p in 0..t {
                let (cr, sr) = (&cos[p * half..][..half], &sin[p * half..][..half]);
                let (yr, xr) = (&mut yp[p * d..][..d], &xp[p * d..][..d]);
                for i in 0..half {
                    let (c, s) = (T::from_f64(cr[i]), T::from_f64(sign * sr[i]));
                    let (a, b) = (xr[2 * i], xr[2 * i + 1]);
                    yr[2 * i] = a * c - b * s;
                    yr[2 * i + 1] = a * s + b * c;
                }
            }
        });
    y
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "tardbot-rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> R<(CpuStorage, Shape)> {
        let (_, _, t, d) = l.shape().dims4()?;
        if self.cos.len() != t * d / 2 {
            bail!(
                "rope: tables for {} values, input needs {}",
                self.cos.len(),
                t * d / 2
            );
        }
        fn go<T: Float>(
            s: &CpuStorage,
            l: &Layout,
            op: &Rope,
            t: usize,
            d: usize,
        ) -> R<CpuStorage> {
            Ok(T::to_cpu_storage_owned(rope_apply(
                slice::<T>(s, l)?,
                &op.cos,
                &op.sin,
                t,
                d,
                false,
            )))
        }
        let st = dispatch!(s.dtype(), go(s, l, self, t, d))?;
        Ok((st, l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, g: &Tensor) -> R<Option<Tensor>> {
        fn go<T: Float>(g: &Tensor, op: &Rope) -> R<Tensor> {
            let (_, _, t, d) = g.dims4()?;
            let v = with_data::<T, _>(g, |gs| Ok(rope_apply(gs, &op.cos, &op.sin, t, d, true)))?;
            tensor(v, g.shape(), g)
        }
        Ok(Some(dispatch!(x.dtype(), go(g, self))?))
    }
}

/// Interleaved RoPE of `x` (batch, heads, seq, head_dim) with tables `cos`, `sin` (seq, head_dim/2).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> R<Tensor> {
    let cos = cos.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let sin = sin.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    x.contiguous()?.apply_op1(Rope { cos, sin })
}

// ---------------------------------------------------------------------------------------------
// Linear: y = x · Wᵀ over the last dimension of x (any leading dimensions), W (out, in).
//
// One node instead of candle's reshape → matmul (of a transposed view) → reshape chain, whose backward
// adds a zero-filled gradient and an extra pass per node and transposes W's gradient through a strided
// copy. Forward and backward run single-threaded gemm calls over a fixed grid of output tiles (chosen
// from the shapes alone, so results do not depend on the thread count); the weight gradient tiles its
// output rather than splitting the sum over rows, so nothing is reduced across tasks.

struct LinearOp;

/// Row and column parts of an (m × n) output with inner dimension k: up to 8 tiles of at least 64
/// rows and columns and about 2²⁰ multiply-adds each.
fn tiles(m: usize, n: usize, k: usize) -> (usize, usize) {
    let max = (m.saturating_mul(n).saturating_mul(k) >> 20).clamp(1, 8);
    let rp = max.min(m / 64).max(1);
    let cp = (max / rp).min(n / 64).max(1);
    (rp, cp)
}

/// `dst (m × n, contiguous) = lhs (m × k) · rhs (k × n)` (operands by pointer and (row, col) strides),
/// over the [`tiles`] grid in parallel.
///
/// # Safety
/// The operands must be valid for the elements their strides address; `dst` holds m·n elements and
/// aliases nothing.
unsafe fn mm_tiled<T: Float>(
    (m, n, k): (usize, usize, usize),
    dst: *mut T,
    lhs: *const T,
    (l_rs, l_cs): (usize, usize),
    rhs: *const T,
    (r_rs, r_cs): (usize, usize),
) {
    let (rp, cp) = tiles(m, n, k);
    let (rows, cols) = (m.div_ceil(rp), n.div_ceil(cp));
    let (dst, lhs, rhs) = (SendPtr(dst), SendPtr(lhs as *mut T), SendPtr(rhs as *mut T));
    (0..rp * cp).into_par_iter().for_each(|tile| {
        let (r0, c0) = ((tile / cp) * rows, (tile % cp) * cols);
        if r0 >= m || c0 >= n {
            return;
        }
        let (r, c) = (rows.min(m - r0), cols.min(n - c0));
        // SAFETY: tiles are disjoint parts of dst; the operand rows/columns addressed lie within them.
        unsafe {
            mm(
                (r, c, k),
                dst.get().add(r0 * n + c0),
                (n, 1),
                false,
                lhs.get().add(r0 * l_rs),
                (l_rs, l_cs),
                rhs.get().add(c0 * r_cs),
                (r_rs, r_cs),
            )
        }
    });
}

impl CustomOp2 for LinearOp {
    fn name(&self) -> &'static str {
        "tardbot-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> R<(CpuStorage, Shape)> {
        let (out, inp) = l2.shape().dims2()?;
        let mut dims = l1.shape().dims().to_vec();
        if dims.last() != Some(&inp) {
            bail!("linear: input {dims:?} against weight ({out}, {inp})");
        }
        let m = l1.shape().elem_count() / inp.max(1);
        fn go<T: Float>(
            s1: &CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
            (m, out, inp): (usize, usize, usize),
        ) -> R<CpuStorage> {
            let (x, w) = (slice::<T>(s1, l1)?, slice::<T>(s2, l2)?);
            let mut y = uninit::<T>(m * out);
            // SAFETY: x is (m, inp), W (out, inp) read as Wᵀ (inp, out), y (m, out), which the
            // tiles write entirely (gemm without reading dst).
            let y = unsafe {
                mm_tiled(
                    (m, out, inp),
                    y.as_mut_ptr() as *mut T,
                    x.as_ptr(),
                    (inp, 1),
                    w.as_ptr(),
                    (1, inp),
                );
                assume_init(y)
            };
            Ok(T::to_cpu_storage_owned(y))
        }
        let st = dispatch!(s1.dtype(), go(s1, l1, s2, l2, (m, out, inp)))?;
        *dims.last_mut().expect("checked above") = out;
        Ok((st, Shape::from(dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> R<(Option<Tensor>, Option<Tensor>)> {
        fn go<T: Float>(x: &Tensor, w: &Tensor, g: &Tensor) -> R<(Tensor, Tensor)> {
            let (out, inp) = w.dims2()?;
            let m = x.elem_count() / inp.max(1);
            let (dx, dw) = with_data::<T, _>(x, |xs| {
                with_data::<T, _>(w, |ws| {
                    with_data::<T, _>(g, |gs| {
                        let mut dx = uninit::<T>(m * inp);
                        let mut dw = uninit::<T>(out * inp);
                        // SAFETY: g (m, out), W (out, inp), x (m, inp); dx (m, inp), dW (out, inp),
                        // both written entirely by the tiles (gemm without reading dst).
                        unsafe {
                            // dx = g · W
                            mm_tiled(
                                (m, inp, out),
                                dx.as_mut_ptr() as *mut T,
                                gs.as_ptr(),
                                (out, 1),
                                ws.as_ptr(),
                                (inp, 1),
                            );
                            // dW = gᵀ · x
                            mm_tiled(
                                (out, inp, m),
                                dw.as_mut_ptr() as *mut T,
                                gs.as_ptr(),
                                (1, out),
                                xs.as_ptr(),
                                (inp, 1),
                            );
                            Ok((assume_init(dx), assume_init(dw)))
                        }
                    })
                })
            })?;
            Ok((tensor(dx, x.shape(), x)?, tensor(dw, w.shape(), w)?))
        }
        let (dx, dw) = dispatch!(x.dtype(), go(x, w, g))?;
        Ok((Some(dx), Some(dw)))
    }
}

/// `x · Wᵀ` over the last dimension of `x` (any leading dimensions) with `w` (out, in), differentiable
/// in both; CPU, f32/f64.
pub fn linear(x: &Tensor, w: &Tensor) -> R<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, LinearOp)
}

// ---------------------------------------------------------------------------------------------
// Attention: RoPE, grouped-query, masked (sliding window, documents) softmax attention, from the packed
// projections `qkv` (batch, seq, (n_heads + 2·n_kv_heads)·head_dim) = [q heads | k heads | v heads] to
// the merged heads (batch, seq, n_heads·head_dim), ready for the output projection. Queries are rotated
// and scaled by 1/√head_dim, keys rotated, inside the kernel (as [`rope`] then a scale would).
//
// One task per (batch row, KV head): its keys and values and the query heads sharing them, so the
// backward sums the key/value gradients of a group inside one task, in a fixed order (the result does
// not depend on the thread count). The queries of each context block are cut into sub-blocks of at
// most `ATTN_SUB` rows; a sub-block multiplies against the key columns any of its queries sees (the
// sliding window and causality trim the rest), so memory and work are O(seq × window), not seq².
// The probabilities of those sub-blocks are kept for the backward.

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

fn attn_plan(blocks: &[QueryBlock], b: usize, t: usize) -> R<AttnPlan> {
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

struct FusedAttention {
    dims: AttnDims,
    /// RoPE tables (seq, head_dim/2).
    cos: Vec<f64>,
    sin: Vec<f64>,
    /// The context blocks (their visibility flags).
    blocks: Vec<QueryBlock>,
    plan: AttnPlan,
    /// The forward's probabilities, for the backward.
    probs: std::sync::Mutex<Option<CpuStorage>>,
}

/// A raw pointer shared by tasks that write disjoint elements.
#[derive(Clone, Copy)]
struct SendPtr<T>(*mut T);
// SAFETY: only used by tasks writing disjoint elements of a buffer that outlives them.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}
impl<T> SendPtr<T> {
    fn get(self) -> *mut T {
        self.0
    }
}

/// `dst (m × n) = [dst +] lhs (m × k) · rhs (k × n)`, single-threaded; each operand given by its
/// pointer, row stride and column stride. Without `acc`, dst is written and never read (k = 0 writes
/// zeros).
///
/// # Safety
/// Every operand must be valid for the elements its strides address; `dst` must not alias the others.
#[allow(clippy::too_many_arguments)]
unsafe fn mm<T: Float>(
    (m, n, k): (usize, usize, usize),
    dst: *mut T,
    (d_rs, d_cs): (usize, usize),
    acc: bool,
    lhs: *const T,
    (l_rs, l_cs): (usize, usize),
    rhs: *const T,
    (r_rs, r_cs): (usize, usize),
) {
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            d_cs as isize,
            d_rs as isize,
            acc,
            lhs,
            l_cs as isize,
            l_rs as isize,
            rhs,
            r_cs as isize,
            r_rs as isize,
            T::one(),
            T::one(),
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
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

impl FusedAttention {
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

impl CustomOp1 for FusedAttention {
    fn name(&self) -> &'static str {
        "tardbot-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> R<(CpuStorage, Shape)> {
        let (b, t, _) = l.shape().dims3()?;
        fn go<T: Float>(
            op: &FusedAttention,
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
            op: &FusedAttention,
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
    blocks: &[QueryBlock],
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
    qkv.contiguous()?.apply_op1(FusedAttention {
        dims,
        cos,
        sin,
        blocks: blocks.to_vec(),
        plan,
        probs: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{D, Device, Var};

    fn randn(shape: &[usize], seed: u64) -> Tensor {
        let mut r = crate::rng::Rng::new(seed);
        let n = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| r.normal()).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    /// Values and gradients (of Σ y ⊙ c for a random c) of `fused` and `composed` agree in f64.
    fn check(
        inputs: &[Tensor],
        fused: impl Fn(&[Tensor]) -> Tensor,
        composed: impl Fn(&[Tensor]) -> Tensor,
    ) {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(t).unwrap())
            .collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let (a, b) = (fused(&ts), composed(&ts));
        assert_eq!(a.dims(), b.dims());
        assert!(
            max_diff(&a, &b) < 1e-12,
            "values differ by {}",
            max_diff(&a, &b)
        );
        let c = randn(a.dims(), 77);
        let ga = (&a * &c).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (&b * &c).unwrap().sum_all().unwrap().backward().unwrap();
        for (i, v) in vars.iter().enumerate() {
            let (x, y) = (
                ga.get(v.as_tensor()).unwrap(),
                gb.get(v.as_tensor()).unwrap(),
            );
            assert!(
                max_diff(x, y) < 1e-11,
                "input {i}: gradients differ by {}",
                max_diff(x, y)
            );
        }
    }

    #[test]
    fn fast_exp_f32_is_accurate() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (exp_f32(x) as f64, (x as f64).exp());
            worst = worst.max((got - want).abs() / want);
            x += 0.001_3;
        }
        assert!(worst < 2.5e-7, "relative error {worst:e}");
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(-100.0), 0.0);
        assert!(exp_f32(f32::NAN).is_nan());
        let mut v = vec![
            0f32,
            -1.0,
            f32::NEG_INFINITY,
            2.0,
            0.5,
            -3.0,
            1.0,
            0.25,
            -0.75,
            3.0,
        ];
        let want: f64 = v.iter().map(|&a| (a as f64 - 1.0).exp()).sum();
        let got = f32::exp_shift_sum(&mut v, 1.0) as f64;
        assert!((got - want).abs() < 1e-6 * want, "{got} vs {want}");
        assert_eq!(v[2], 0.0);
    }

    #[test]
    fn rms_norm_matches_composition() {
        check(
            &[randn(&[3, 5, 8], 1), randn(&[8], 2)],
            |t| rms_norm(&t[0], &t[1], 1e-5).unwrap(),
            |t| {
                let r = (t[0].sqr().unwrap().mean_keepdim(D::Minus1).unwrap() + 1e-5)
                    .unwrap()
                    .sqrt()
                    .unwrap()
                    .recip()
                    .unwrap();
                t[0].broadcast_mul(&r)
                    .unwrap()
                    .broadcast_mul(&t[1])
                    .unwrap()
            },
        );
    }

    #[test]
    fn swiglu_matches_composition() {
        check(
            &[randn(&[4, 7, 6], 3), randn(&[4, 7, 6], 4)],
            |t| swiglu(&t[0], &t[1]).unwrap(),
            |t| (t[0].silu().unwrap() * &t[1]).unwrap(),
        );
    }

    #[test]
    fn masked_softmax_matches_composition() {
        // (b=2, g=2, rep=1, tq=3, tk=5) with a per-batch mask; each row keeps at least one key.
        let mut m = vec![0f64; 2 * 3 * 5];
        for (i, v) in m.iter_mut().enumerate() {
            if i % 3 == 1 && i % 5 != 0 {
                *v = f64::NEG_INFINITY;
            }
        }
        let mask = Tensor::from_vec(m, (2, 1, 1, 3, 5), &Device::Cpu).unwrap();
        let s = randn(&[2, 2, 1, 3, 5], 5);
        check(
            &[s],
            |t| masked_softmax(&t[0], &mask).unwrap(),
            |t| crate::ops::softmax(&t[0].broadcast_add(&mask).unwrap(), false).unwrap(),
        );
    }

    #[test]
    fn cross_entropy_matches_composition() {
        let tg = vec![3u32, 0, 6, 2];
        let tt = Tensor::from_vec(tg.clone(), (4, 1), &Device::Cpu).unwrap();
        check(
            &[randn(&[4, 7], 6)],
            |t| cross_entropy_rows(&t[0], tg.clone()).unwrap(),
            |t| {
                (crate::ops::logsumexp(&t[0]).unwrap() - t[0].gather(&tt, 1).unwrap())
                    .unwrap()
                    .flatten_all()
                    .unwrap()
            },
        );
    }

    #[test]
    fn rope_matches_composition() {
        let (cos, sin) =
            crate::ops::rope_tables(2, 5, 8, 10_000.0, DType::F64, &Device::Cpu).unwrap();
        check(
            &[randn(&[2, 3, 5, 8], 7)],
            |t| rope(&t[0], &cos, &sin).unwrap(),
            |t| crate::ops::rope_composed(&t[0], &cos, &sin).unwrap(),
        );
    }
}
