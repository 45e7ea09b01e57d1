//! What the kernel families share: the [`Float`] operations (with a vectorisable `exp` for f32), the
//! f32/f64 [`dispatch!`] of a custom op's CPU storage, access to contiguous CPU data, uninitialised
//! outputs for kernels that write every element, the fixed row chunking of the parallel loops, and the
//! single-threaded gemm call ([`mm`]) with the raw pointer ([`SendPtr`]) its parallel callers share.

use candle_core::{CpuStorage, Layout, Shape, Storage, Tensor, WithDType, bail};
use std::mem::MaybeUninit;

/// The float operations the kernels need.
pub(super) trait Float: WithDType + Send + Sync {
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

pub(super) type R<T> = candle_core::Result<T>;

/// Rows per parallel task so that a task covers at least ~16k elements.
pub(super) fn rows_per_task(row_len: usize) -> usize {
    (16_384 / row_len.max(1)).max(1)
}

/// An uninitialised vector of `n` values, for a kernel that writes every element (through
/// [`MaybeUninit::write`] or a raw pointer) before [`assume_init`]: unlike `vec![0; n]`, no serial
/// zero-fill (and first touch of fresh pages) precedes the parallel fill.
pub(super) fn uninit<T>(n: usize) -> Vec<MaybeUninit<T>> {
    let mut v = Vec::with_capacity(n);
    // SAFETY: `MaybeUninit` needs no initialisation; the capacity is `n`.
    unsafe { v.set_len(n) };
    v
}

/// The values of a vector from [`uninit`].
///
/// # Safety
/// Every element of `v` must have been written.
pub(super) unsafe fn assume_init<T>(v: Vec<MaybeUninit<T>>) -> Vec<T> {
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: `MaybeUninit<T>` has the layout of `T`; the elements are initialised (the contract);
    // pointer, length and capacity come from a live vector that is not dropped.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr() as *mut T, v.len(), v.capacity()) }
}

pub(super) fn slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> R<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<T>()?[a..b]),
        None => bail!("fused kernel: input is not contiguous"),
    }
}

/// Runs `f` over the contiguous CPU data of `t`.
pub(super) fn with_data<T: WithDType, O>(t: &Tensor, f: impl FnOnce(&[T]) -> R<O>) -> R<O> {
    let t = t.contiguous()?;
    let (st, l) = t.storage_and_layout();
    match &*st {
        Storage::Cpu(s) => f(slice::<T>(s, l)?),
        _ => bail!("fused kernel: CPU tensors only"),
    }
}

pub(super) fn tensor<T: WithDType>(v: Vec<T>, shape: &Shape, like: &Tensor) -> R<Tensor> {
    Tensor::from_vec(v, shape.clone(), like.device())
}

/// `$f::<f32>(…)` or `$f::<f64>(…)` by the dtype `$dt`; any other dtype is an error.
macro_rules! dispatch {
    ($dt:expr, $f:ident ( $($arg:expr),* )) => {
        match $dt {
            ::candle_core::DType::F32 => $f::<f32>($($arg),*),
            ::candle_core::DType::F64 => $f::<f64>($($arg),*),
            dt => ::candle_core::bail!("fused kernel: unsupported dtype {dt:?}"),
        }
    };
}
pub(super) use dispatch;

/// A raw pointer shared by tasks that write disjoint elements.
#[derive(Clone, Copy)]
pub(super) struct SendPtr<T>(pub(super) *mut T);
// SAFETY: only used by tasks writing disjoint elements of a buffer that outlives them.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}
impl<T> SendPtr<T> {
    pub(super) fn get(self) -> *mut T {
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
pub(super) unsafe fn mm<T: Float>(
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
