//! RMSNorm over the last dimension, `y = x · r · w` with `r = 1/√(mean(x²) + ε)`, differentiable in `x`
//! and `w`. A custom op because candle 0.11's `rms_norm` has no backward and the composition of
//! elementary ops costs several passes and allocations per node; here one pass forward, one backward,
//! rows split over rayon tasks, the weight gradient's partial sums added in chunk order (the same bits
//! whatever the thread count).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::common::{
    Float, R, assume_init, dispatch, rows_per_task, slice, tensor, uninit, with_data,
};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{check_against_composition, randn_f64};
    use candle_core::D;

    #[test]
    fn rms_norm_matches_composition() {
        check_against_composition(
            &[randn_f64(&[3, 5, 8], 1), randn_f64(&[8], 2)],
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
}
