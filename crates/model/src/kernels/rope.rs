//! Interleaved RoPE on (batch, heads, seq, head_dim): pairs `(x[2i], x[2i+1])` rotated by the angle
//! of (position, i), whose cos/sin tables are (seq, head_dim/2); differentiable in `x` (the backward is
//! the inverse rotation). A custom op because candle 0.11's `rope_i` has no backward and the
//! composition (narrow, broadcast mul, sub, add, cat) is many nodes.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor, bail};
use rayon::prelude::*;

use super::common::{Float, R, dispatch, slice, tensor, with_data};

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
