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

/// Whether the fused kernels handle `t` (CPU, f32 or f64).
pub fn cpu_float(t: &Tensor) -> bool {
    t.device().is_cpu() && matches!(t.dtype(), DType::F32 | DType::F64)
}

/// The float operations the kernels need.
trait Float: WithDType + Send + Sync {
    fn exp_(self) -> Self;
    fn ln_(self) -> Self;
    fn sqrt_(self) -> Self;
    fn max_(self, o: Self) -> Self;
    const NEG_INF: Self;
}

macro_rules! float {
    ($t:ty) => {
        impl Float for $t {
            #[inline(always)]
            fn exp_(self) -> Self {
                self.exp()
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
float!(f32);
float!(f64);

type R<T> = candle_core::Result<T>;

/// Rows per parallel task so that a task covers at least ~16k elements.
fn rows_per_task(row_len: usize) -> usize {
    (16_384 / row_len.max(1)).max(1)
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
    let mut y = vec![T::zero(); x.len()];
    let eps = T::from_f64(eps);
    let inv_d = T::from_f64(1.0 / d as f64);
    y.par_chunks_mut(d * rows_per_task(d))
        .zip(x.par_chunks(d * rows_per_task(d)))
        .for_each(|(ys, xs)| {
            for (yr, xr) in ys.chunks_exact_mut(d).zip(xs.chunks_exact(d)) {
                let ss = xr.iter().fold(T::zero(), |a, &v| a + v * v);
                let r = T::one() / (ss * inv_d + eps).sqrt_();
                for ((o, &v), &wi) in yr.iter_mut().zip(xr).zip(w) {
                    *o = v * r * wi;
                }
            }
        });
    y
}

fn rms_bwd<T: Float>(x: &[T], w: &[T], g: &[T], eps: f64) -> (Vec<T>, Vec<T>) {
    let d = w.len();
    let eps = T::from_f64(eps);
    let inv_d = T::from_f64(1.0 / d as f64);
    let mut dx = vec![T::zero(); x.len()];
    let chunk = d * rows_per_task(d);
    let dw = dx
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
                    *o = r * gv * wv - xv * c;
                    *dwv += gv * xv * r;
                }
            }
            dw
        })
        // Partial sums added in chunk order, not by rayon's `reduce` (whose tree follows work
        // stealing): the weight gradient must be the same bits run to run for exact resume.
        .collect::<Vec<Vec<T>>>()
        .into_iter()
        .fold(vec![T::zero(); d], |mut a, b| {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
            a
        });
    (dx, dw)
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
    T::one() / (T::one() + (T::zero() - x).exp_())
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
            let mut y = vec![T::zero(); g.len()];
            y.par_chunks_mut(16_384)
                .zip(g.par_chunks(16_384).zip(u.par_chunks(16_384)))
                .for_each(|(ys, (gs, us))| {
                    for ((o, &gv), &uv) in ys.iter_mut().zip(gs).zip(us) {
                        *o = gv * sigmoid(gv) * uv;
                    }
                });
            Ok(T::to_cpu_storage_owned(y))
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
                        let mut dg = vec![T::zero(); gs.len()];
                        let mut du = vec![T::zero(); gs.len()];
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
                                    *b = d * silu;
                                    *a = d * uv * s * (T::one() + gv * (T::one() - s));
                                }
                            });
                        Ok((dg, du))
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
                    let mx = row.iter().fold(T::NEG_INF, |a, &b| a.max_(b));
                    let sum = row.iter().fold(T::zero(), |a, &b| a + (b - mx).exp_());
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
                    let mut d = vec![T::zero(); x.len()];
                    d.par_chunks_mut(v)
                        .zip(x.par_chunks(v))
                        .zip(gs.par_iter().zip(t.par_iter()).zip(lse.par_iter()))
                        .for_each(|((dr, row), ((&gi, &ti), &lse))| {
                            // softmax = exp(l − lse)
                            let lse = T::from_f64(lse);
                            for (o, &b) in dr.iter_mut().zip(row) {
                                *o = (b - lse).exp_() * gi;
                            }
                            dr[ti as usize] -= gi;
                        });
                    Ok(d)
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
