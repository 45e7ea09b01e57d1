//! Linear: y = x · Wᵀ over the last dimension of x (any leading dimensions), W (out, in).
//!
//! One node instead of candle's reshape → matmul (of a transposed view) → reshape chain, whose backward
//! adds a zero-filled gradient and an extra pass per node and transposes W's gradient through a strided
//! copy. Forward and backward run single-threaded gemm calls over a fixed grid of output tiles (chosen
//! from the shapes alone, so results do not depend on the thread count); the weight gradient tiles its
//! output rather than splitting the sum over rows, so nothing is reduced across tasks.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor, bail};
use rayon::prelude::*;

use super::common::{
    Float, R, SendPtr, assume_init, dispatch, mm, slice, tensor, uninit, with_data,
};

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

/// The backward of [`linear`] outside a graph: `(dx, dW)` for the output gradient `g` (the same
/// floats the graph's backward computes).
pub fn linear_backward(x: &Tensor, w: &Tensor, g: &Tensor) -> R<(Tensor, Tensor)> {
    let y = Tensor::zeros(0, x.dtype(), x.device())?;
    match LinearOp.bwd(&x.contiguous()?, &w.contiguous()?, &y, &g.contiguous()?)? {
        (Some(dx), Some(dw)) => Ok((dx, dw)),
        _ => bail!("linear backward returned no gradient"),
    }
}

/// `x · Wᵀ` over the last dimension of `x` (any leading dimensions) with `w` (out, in), differentiable
/// in both; CPU, f32/f64.
pub fn linear(x: &Tensor, w: &Tensor) -> R<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, LinearOp)
}
