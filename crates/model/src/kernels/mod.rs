//! CPU training kernels with their own backward, for f32 and f64: each one a candle custom op.
//!
//! candle's autograd turns every elementary op into a node whose backward allocates a zeroed gradient,
//! adds into it and keeps its inputs alive; the compositions in [`crate::ops`] therefore cost several
//! full passes over memory (and allocations) per op, which dominated training time on CPU. Each kernel
//! here is one candle node: one pass forward, one pass backward, rows split over rayon threads in a
//! split fixed by the shapes (so results do not depend on the thread count). They compute the same
//! functions as the compositions (tests compare values and gradients in f64; the model's
//! finite-difference check runs through them).
//!
//! (Not to be confused with candle's own "fused" kernels — `candle_nn::ops::rms_norm`,
//! `softmax_last_dim`, `rope_i` — which are forward-only and used for inference.)
//!
//! One file per kernel family; what they share (float operations, dtype dispatch, CPU data access,
//! uninitialised outputs, row chunking, the gemm call) is in `common.rs`. Other devices and dtypes keep
//! the compositions ([`cpu_float`] decides).
//!
//! | kernel | computes |
//! |---|---|
//! | [`rms_norm`] | RMSNorm over the last dimension |
//! | [`swiglu`] | `silu(g) · u` |
//! | [`masked_softmax`] | `softmax(s + mask)` over the last dimension |
//! | [`cross_entropy_rows`] | per-row negative log-likelihood |
//! | [`rope()`] | interleaved RoPE |
//! | [`linear()`] | `x · Wᵀ` |
//! | [`attention()`] | RoPE + grouped-query, sliding-window, document-masked attention from packed q/k/v |
//! | [`decode_attention`] | one new token per sequence attending over the visible slots of its KV ring (forward only) |

use candle_core::{DType, Tensor};

mod common;

mod attention;
mod cross_entropy;
mod decode;
mod linear;
mod rmsnorm;
mod rope;
mod softmax;
mod swiglu;

pub use attention::{AttnDims, VisibleBlock, attention};
pub use cross_entropy::cross_entropy_rows;
pub use decode::{Ring, decode_attention};
pub use linear::{linear, linear_backward};
pub use rmsnorm::rms_norm;
pub use rope::rope;
pub use softmax::masked_softmax;
pub use swiglu::{swiglu, swiglu_backward};

/// Whether the kernels handle `t` (CPU, f32 or f64).
pub fn cpu_float(t: &Tensor) -> bool {
    t.device().is_cpu() && matches!(t.dtype(), DType::F32 | DType::F64)
}
