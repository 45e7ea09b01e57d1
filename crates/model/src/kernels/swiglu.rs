//! The SwiGLU activation `silu(g) · u = g·σ(g)·u`, differentiable in both. A custom op so that the
//! activation is one node (one pass forward, one backward, elementwise chunks over rayon tasks, outputs
//! not zero-filled first) instead of candle's silu, mul and their saved intermediates.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor, bail};
use rayon::prelude::*;

use super::common::{Float, R, assume_init, dispatch, slice, tensor, uninit, with_data};

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

/// The backward of [`swiglu`] outside a graph: `(dg, du)` for the output gradient `dy` (the same floats
/// the graph's backward computes).
pub fn swiglu_backward(g: &Tensor, u: &Tensor, dy: &Tensor) -> R<(Tensor, Tensor)> {
    let y = Tensor::zeros(0, g.dtype(), g.device())?;
    match SwiGluAct.bwd(&g.contiguous()?, &u.contiguous()?, &y, &dy.contiguous()?)? {
        (Some(dg), Some(du)) => Ok((dg, du)),
        _ => bail!("swiglu backward returned no gradient"),
    }
}

/// `silu(g) · u`, differentiable in both.
pub fn swiglu(g: &Tensor, u: &Tensor) -> R<Tensor> {
    g.contiguous()?.apply_op2(&u.contiguous()?, SwiGluAct)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{check_against_composition, randn_f64};

    #[test]
    fn swiglu_matches_composition() {
        check_against_composition(
            &[randn_f64(&[4, 7, 6], 3), randn_f64(&[4, 7, 6], 4)],
            |t| swiglu(&t[0], &t[1]).unwrap(),
            |t| (t[0].silu().unwrap() * &t[1]).unwrap(),
        );
    }
}
