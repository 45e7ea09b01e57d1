//! Masked softmax over the last dimension, `softmax(s + mask)`: the mask additive (0 or −∞), shaped
//! (mask_rows, 1, 1, tq, tk) against scores (b, …, tq, tk) with mask_rows 1 or b; a row masked entirely
//! gives zeros. Differentiable in the scores. A custom op because candle 0.11's `softmax_last_dim` has
//! no backward, and the composition (broadcast add, max, exp, sum, div) is several nodes per call.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor, bail};
use rayon::prelude::*;

use super::common::{Float, R, dispatch, rows_per_task, slice, tensor, with_data};

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
