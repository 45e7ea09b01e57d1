//! The machine's fp32 peak, measured where the benchmark runs, so that MFU is a fraction of what
//! this machine (and its current share of a shared host) can do rather than of a datasheet figure.
//!
//! Two figures, each on every thread of the current rayon pool at once:
//! - **FMA peak**: independent fused multiply-add chains in registers (no memory traffic): the
//!   ceiling of any fp32 kernel. MFU is reported against this one.
//! - **sgemm**: a 1024³ fp32 matrix product through the model's own [`kernels::linear`] (the op
//!   every projection uses): what a well-tiled matmul reaches here, for "how close to achievable".
//!
//! On a shared virtual machine the peak moves with the host's load: `shared/bench/README.md` quotes
//! 231 GFLOP/s for the 2-core development machine, and the same kind measured 72 GFLOP/s on another
//! day. So it is measured in the same process, right before the timed steps, not read from a
//! constant.

use std::time::Instant;

use candle_core::{Device, Tensor};
use tardbot_model::kernels;

use crate::trainer::Result;

/// What [`measure`] found.
#[derive(Clone, Copy, Debug)]
pub struct Fp32Peak {
    /// Independent FMA chains on every pool thread, GFLOP/s.
    pub fma_gflops: f64,
    /// A 1024³ matmul through [`kernels::linear`], GFLOP/s.
    pub sgemm_gflops: f64,
}

/// Lanes × independent accumulators of the FMA loop: 12 vectors of 8 f32 hide the 4-cycle FMA
/// latency on two FMA pipes (AVX2); the portable loop has the same shape for NEON/auto-vectorised
/// code.
const CHAINS: usize = 12;
const LANES: usize = 8;

/// FMAs of `iters` rounds over all chains, returning a value that depends on all of them (so the
/// loop cannot be removed).
fn fma_rounds(iters: u64) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the features the function is compiled for were just detected.
        return unsafe { fma_rounds_avx2(iters) };
    }
    fma_rounds_portable(iters)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_rounds_avx2(iters: u64) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_set1_ps(1.0); CHAINS];
    let b = _mm256_set1_ps(0.999_999);
    let c = _mm256_set1_ps(1e-7);
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = _mm256_fmadd_ps(*a, b, c);
        }
    }
    let mut s = _mm256_setzero_ps();
    for a in acc {
        s = _mm256_add_ps(s, a);
    }
    let mut out = [0f32; LANES];
    // SAFETY: `out` holds 8 f32.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), s) };
    out.iter().sum()
}

fn fma_rounds_portable(iters: u64) -> f32 {
    let mut acc = [[1.0f32; LANES]; CHAINS];
    for _ in 0..iters {
        for a in acc.iter_mut() {
            for v in a.iter_mut() {
                *v = v.mul_add(0.999_999, 1e-7);
            }
        }
    }
    acc.iter().flatten().sum()
}

/// FMA GFLOP/s of every pool thread running `iters` rounds at once.
fn fma_gflops(iters: u64) -> f64 {
    let t = Instant::now();
    let sums = rayon::broadcast(|_| std::hint::black_box(fma_rounds(std::hint::black_box(iters))));
    let secs = t.elapsed().as_secs_f64();
    std::hint::black_box(sums);
    let flops = rayon::current_num_threads() as f64 * iters as f64 * (CHAINS * LANES * 2) as f64;
    flops / secs / 1e9
}

/// GFLOP/s of `reps` products of (n × n)·(n × n)ᵀ through [`kernels::linear`].
fn sgemm_gflops(n: usize, reps: usize) -> Result<f64> {
    let a = Tensor::ones((n, n), candle_core::DType::F32, &Device::Cpu)?;
    let b = (Tensor::ones((n, n), candle_core::DType::F32, &Device::Cpu)? * 0.5)?;
    kernels::linear(&a, &b)?; // warm-up: page in, spin up the pool
    let t = Instant::now();
    for _ in 0..reps {
        std::hint::black_box(kernels::linear(&a, &b)?);
    }
    Ok(2.0 * (n * n * n * reps) as f64 / t.elapsed().as_secs_f64() / 1e9)
}

/// FMA rounds of one timed run: ~0.1 s at 30 GFLOP/s per thread.
const ITERS: u64 = 15_000_000;

/// The FMA peak: the best of three runs after a warm-up (clocks ramp up).
fn best_fma_gflops() -> f64 {
    fma_gflops(ITERS / 4);
    (0..3).map(|_| fma_gflops(ITERS)).fold(0.0, f64::max)
}

/// The FMA peak of the current rayon pool, measured once per process (about 0.4 s, at the first
/// call): what training stages report MFU against.
pub fn fma_peak_gflops() -> f64 {
    static PEAK: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *PEAK.get_or_init(best_fma_gflops)
}

/// Measures both peaks on the current rayon pool (about a second): the best of two sgemm runs,
/// and the FMA peak before and after them (the better one: a shared host's slow spells otherwise
/// showed as a matmul above the FMA peak).
pub fn measure() -> Result<Fp32Peak> {
    let before = best_fma_gflops();
    let sgemm = sgemm_gflops(1024, 3)?.max(sgemm_gflops(1024, 3)?);
    let fma = before.max(best_fma_gflops());
    Ok(Fp32Peak {
        fma_gflops: fma,
        sgemm_gflops: sgemm,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn portable_and_vector_fma_loops_agree() {
        // Same chains, same rounds: the same values up to the order of the final sum.
        let (a, b) = (fma_rounds(1000), fma_rounds_portable(1000));
        assert!((a - b).abs() <= 1e-4 * b.abs(), "{a} vs {b}");
        // 96 chains of x ← 0.999999·x + 1e-7 from 1, after 1000 rounds.
        let mut x = 1.0f32;
        for _ in 0..1000 {
            x = x.mul_add(0.999_999, 1e-7);
        }
        assert!((b - 96.0 * x).abs() <= 1e-3, "{b} vs {}", 96.0 * x);
    }

    #[test]
    fn measured_peaks_are_positive() {
        let p = measure().unwrap();
        assert!(p.fma_gflops > 0.1 && p.sgemm_gflops > 0.1, "{p:?}");
        assert!(
            p.fma_gflops.is_finite() && p.sgemm_gflops.is_finite(),
            "{p:?}"
        );
    }
}
