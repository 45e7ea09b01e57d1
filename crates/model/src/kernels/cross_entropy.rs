//! Cross-entropy per row, `nll_i = logsumexp(l_i) − l_i[t_i]`, of logits (n, vocab) at target ids,
//! differentiable in the logits. A custom op so that the softmax over the vocabulary is never stored:
//! the forward keeps one `logsumexp` per row and the backward writes `softmax − onehot` in one pass
//! (the composition would keep the exponentials and the gathered targets as graph nodes).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor, bail};
use rayon::prelude::*;

use super::common::{Float, R, assume_init, dispatch, slice, tensor, uninit, with_data};

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
