//! Differentiable building blocks. candle 0.11's fused `rms_norm`, `softmax_last_dim` and `rope*` have no
//! backward (gradients silently stop), so training uses the compositions below; inference may switch to
//! candle's fused, forward-only kernels (`fused = true`), which compute the same function (tested).
//! On CPU in f32/f64 the compositions give way to the custom ops of [`crate::kernels`], which have
//! their own backward.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{D, DType, Module, Tensor};

use crate::Result;

/// RMSNorm: `x / sqrt(mean(x²) + eps) * w` over the last dimension.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64, fused: bool) -> Result<Tensor> {
    if fused {
        return Ok(candle_nn::ops::rms_norm(x, w, eps as f32)?);
    }
    if crate::kernels::cpu_float(x) {
        return Ok(crate::kernels::rms_norm(x, w, eps)?);
    }
    if is_half(x) {
        // bf16/f16 (mixed precision): normalised in f32, as autocast does (x² overflows f16 above 256).
        let r = rms_norm(
            &x.to_dtype(DType::F32)?,
            &w.to_dtype(DType::F32)?,
            eps,
            false,
        )?;
        return Ok(r.to_dtype(x.dtype())?);
    }
    let r = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    Ok(x.broadcast_mul(&r)?.broadcast_mul(w)?)
}

/// bf16 or f16: the compute types of mixed precision, whose norms and softmaxes run in f32.
fn is_half(x: &Tensor) -> bool {
    matches!(x.dtype(), DType::BF16 | DType::F16)
}

/// Softmax over the last dimension. The max is detached: softmax is shift-invariant, so this is exact and
/// saves the max's backward.
pub fn softmax(x: &Tensor, fused: bool) -> Result<Tensor> {
    if fused {
        return Ok(candle_nn::ops::softmax_last_dim(x)?);
    }
    if is_half(x) {
        // bf16/f16: in f32 (the sum of many exponentials loses bits in a half type).
        return Ok(softmax(&x.to_dtype(DType::F32)?, false)?.to_dtype(x.dtype())?);
    }
    let m = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&m)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

/// `log(sum(exp(x)))` over the last dimension, keeping it (size 1).
pub fn logsumexp(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    Ok((x.broadcast_sub(&m)?.exp()?.sum_keepdim(D::Minus1)?.log()? + m)?)
}

/// Rotary tables for positions `pos0..pos0+len`: (cos, sin), each (len, head_dim/2), in `dtype`.
pub fn rope_tables(
    pos0: usize,
    len: usize,
    head_dim: usize,
    theta: f64,
    dtype: DType,
    device: &candle_core::Device,
) -> Result<(Tensor, Tensor)> {
    rope_tables_of(pos0..pos0 + len, head_dim, theta, dtype, device)
}

/// Rotary tables whose row `i` is position `positions[i]` (any order, repeats allowed): what batched
/// decoding needs, one row per sequence at its own position. Same values as [`rope_tables`] row for row.
pub fn rope_tables_at(
    positions: &[usize],
    head_dim: usize,
    theta: f64,
    dtype: DType,
    device: &candle_core::Device,
) -> Result<(Tensor, Tensor)> {
    rope_tables_of(positions.iter().copied(), head_dim, theta, dtype, device)
}

fn rope_tables_of(
    positions: impl ExactSizeIterator<Item = usize>,
    head_dim: usize,
    theta: f64,
    dtype: DType,
    device: &candle_core::Device,
) -> Result<(Tensor, Tensor)> {
    let half = head_dim / 2;
    let len = positions.len();
    let mut cos = Vec::with_capacity(len * half);
    let mut sin = Vec::with_capacity(len * half);
    for p in positions {
        for i in 0..half {
            let inv = 1.0 / theta.powf((2 * i) as f64 / head_dim as f64);
            let a = p as f64 * inv;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    let cos = Tensor::from_vec(cos, (len, half), device)?.to_dtype(dtype)?;
    let sin = Tensor::from_vec(sin, (len, half), device)?.to_dtype(dtype)?;
    Ok((cos, sin))
}

/// Interleaved RoPE (pairs `(x[2i], x[2i+1])` rotated by `pos · θ^(-2i/d)`, as the PyTorch peer) on
/// `x` of shape (batch, heads, seq, head_dim).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, fused: bool) -> Result<Tensor> {
    if fused {
        return Ok(candle_nn::rotary_emb::rope_i(&x.contiguous()?, cos, sin)?);
    }
    if crate::kernels::cpu_float(x) {
        return Ok(crate::kernels::rope(x, cos, sin)?);
    }
    rope_composed(x, cos, sin)
}

/// [`rope`] as a composition of differentiable candle ops (any device).
pub(crate) fn rope_composed(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (b, h, t, d) = x.dims4()?;
    let x = x.reshape((b, h, t, d / 2, 2))?;
    let x1 = x.narrow(4, 0, 1)?;
    let x2 = x.narrow(4, 1, 1)?;
    let cos = cos.reshape((t, d / 2, 1))?;
    let sin = sin.reshape((t, d / 2, 1))?;
    let r1 = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
    let r2 = (x1.broadcast_mul(&sin)? + x2.broadcast_mul(&cos)?)?;
    Ok(Tensor::cat(&[&r1, &r2], 4)?.reshape((b, h, t, d))?)
}

/// A bias-free linear layer `y = x Wᵀ` with W of shape (out, in); optionally an int8 (GGML Q8_0: blocks
/// of 32 int8 weights with one f16 scale, activations quantised to int8 on the fly) copy for CPU inference.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Tensor,
    q8: Option<QMatMul>,
}

impl Linear {
    pub fn new(weight: Tensor) -> Self {
        Linear { weight, q8: None }
    }

    /// An int8 copy; layers whose input width is not a multiple of 32 (Q8_0's block) stay in float.
    pub fn quantized(&self) -> Result<Linear> {
        let (_, inp) = self.weight.dims2()?;
        if inp % 32 != 0 || !self.weight.device().is_cpu() {
            return Ok(self.clone());
        }
        let w = self.weight.to_dtype(DType::F32)?;
        let q = QTensor::quantize(&w, GgmlDType::Q8_0)?;
        Ok(Linear {
            weight: self.weight.clone(),
            q8: Some(QMatMul::from_qtensor(q)?),
        })
    }

    pub fn is_quantized(&self) -> bool {
        self.q8.is_some()
    }

    /// `x` of shape (..., in) to (..., out).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.q8.is_none() && crate::kernels::cpu_float(x) && x.dtype() == self.weight.dtype() {
            return Ok(crate::kernels::linear(x, &self.weight)?);
        }
        let dims = x.dims().to_vec();
        let inp = *dims
            .last()
            .ok_or_else(|| crate::ModelError::Input("linear on a scalar".into()))?;
        let n: usize = dims[..dims.len() - 1].iter().product();
        let x2 = x.reshape((n, inp))?;
        let y = match &self.q8 {
            Some(q) => {
                let dt = x2.dtype();
                q.forward(&x2.to_dtype(DType::F32)?)?.to_dtype(dt)?
            }
            None => x2.matmul(&self.weight.t()?)?,
        };
        let mut out = dims;
        let last = out.len() - 1;
        out[last] = y.dim(1)?;
        Ok(y.reshape(out)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{check_against_composition, max_abs_diff, randn_f32, randn_f64};
    use candle_core::Device;

    #[test]
    fn differentiable_ops_match_fused_kernels() {
        let x = randn_f32(&[2, 3, 5, 8], 1);
        let w = randn_f32(&[8], 2);
        let a = rms_norm(&x, &w, 1e-5, false).unwrap();
        let b = rms_norm(&x, &w, 1e-5, true).unwrap();
        assert!(max_abs_diff::<f32>(&a, &b) < 1e-5);
        let a = softmax(&x, false).unwrap();
        let b = softmax(&x, true).unwrap();
        assert!(max_abs_diff::<f32>(&a, &b) < 1e-6);
        let (cos, sin) = rope_tables(3, 5, 8, 10_000.0, DType::F32, &Device::Cpu).unwrap();
        let a = rope(&x, &cos, &sin, false).unwrap();
        let b = rope(&x, &cos, &sin, true).unwrap();
        assert!(max_abs_diff::<f32>(&a, &b) < 1e-5);
    }

    #[test]
    fn rope_rotates_pairs() {
        // One pair at position 1 with theta^0 = 1: rotation by 1 radian.
        let x = Tensor::from_vec(vec![1f32, 0.0], (1, 1, 1, 2), &Device::Cpu).unwrap();
        let (cos, sin) = rope_tables(1, 1, 2, 10_000.0, DType::F32, &Device::Cpu).unwrap();
        let y = rope(&x, &cos, &sin, false)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(
            (y[0] - 1f32.cos()).abs() < 1e-6 && (y[1] - 1f32.sin()).abs() < 1e-6,
            "{y:?}"
        );
    }

    #[test]
    fn int8_linear_is_close() {
        let w = (randn_f32(&[64, 128], 3) * 0.05).unwrap();
        let x = randn_f32(&[4, 128], 4);
        let l = Linear::new(w);
        let q = l.quantized().unwrap();
        assert!(q.is_quantized());
        let a = l.forward(&x).unwrap();
        let b = q.forward(&x).unwrap();
        let rel = max_abs_diff::<f32>(&a, &b)
            / a.abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
        assert!(rel < 0.02, "relative error {rel}");
    }

    // The kernels (crate::kernels) against the compositions above, values and gradients in f64.

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
        let s = randn_f64(&[2, 2, 1, 3, 5], 5);
        check_against_composition(
            &[s],
            |t| crate::kernels::masked_softmax(&t[0], &mask).unwrap(),
            |t| crate::ops::softmax(&t[0].broadcast_add(&mask).unwrap(), false).unwrap(),
        );
    }

    #[test]
    fn cross_entropy_matches_composition() {
        let tg = vec![3u32, 0, 6, 2];
        let tt = Tensor::from_vec(tg.clone(), (4, 1), &Device::Cpu).unwrap();
        check_against_composition(
            &[randn_f64(&[4, 7], 6)],
            |t| crate::kernels::cross_entropy_rows(&t[0], tg.clone()).unwrap(),
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
        check_against_composition(
            &[randn_f64(&[2, 3, 5, 8], 7)],
            |t| crate::kernels::rope(&t[0], &cos, &sin).unwrap(),
            |t| crate::ops::rope_composed(&t[0], &cos, &sin).unwrap(),
        );
    }
}

#[cfg(test)]
mod bench_tests {
    use super::*;
    use candle_core::Device;

    /// `cargo test --release -p tardbot-model -- --ignored --nocapture int8_matvec_speed`
    #[test]
    #[ignore = "timing"]
    fn int8_matvec_speed() {
        let mut r = tardbot_core::rng::SplitMix64::scrambled(1);
        for (o, i, m) in [
            (1792, 448, 1),
            (448, 1792, 1),
            (32000, 448, 1),
            (1792, 448, 64),
        ] {
            let w: Vec<f32> = (0..o * i).map(|_| r.normal() as f32 * 0.02).collect();
            let l = Linear::new(Tensor::from_vec(w, (o, i), &Device::Cpu).unwrap());
            let q = l.quantized().unwrap();
            let x = Tensor::ones((m, i), DType::F32, &Device::Cpu).unwrap();
            for (name, lin) in [("f32", &l), ("q8", &q)] {
                lin.forward(&x).unwrap();
                let t = std::time::Instant::now();
                let n = 50;
                for _ in 0..n {
                    lin.forward(&x).unwrap();
                }
                eprintln!(
                    "{o}x{i} m={m} {name}: {:.1} us",
                    t.elapsed().as_secs_f64() * 1e6 / n as f64
                );
            }
        }
    }
}

#[cfg(test)]
mod matmul_speed {
    use candle_core::{Device, Tensor};

    /// `cargo test --release --workspace -- --ignored --nocapture matmul_shapes_speed`
    #[test]
    #[ignore = "timing"]
    fn matmul_shapes_speed() {
        let dev = Device::Cpu;
        for (m, k, n) in [
            (1024, 128, 512),
            (1024, 512, 128),
            (2048, 128, 4096),
            (1024, 448, 1792),
        ] {
            let x = Tensor::randn(0f32, 1., (m, k), &dev).unwrap();
            let w = Tensor::randn(0f32, 1., (n, k), &dev).unwrap();
            let g = Tensor::randn(0f32, 1., (m, n), &dev).unwrap();
            type Case<'a> = (&'a str, Box<dyn Fn() -> Tensor + 'a>);
            let cases: [Case; 4] = [
                (
                    "x·Wᵀ (W.t view)",
                    Box::new(|| x.matmul(&w.t().unwrap()).unwrap()),
                ),
                (
                    "x·Wᵀ (W transposed copy)",
                    Box::new(|| x.matmul(&w.t().unwrap().contiguous().unwrap()).unwrap()),
                ),
                ("g·W", Box::new(|| g.matmul(&w).unwrap())),
                ("gᵀ·x", Box::new(|| g.t().unwrap().matmul(&x).unwrap())),
            ];
            for (name, f) in cases.iter() {
                f();
                let t = std::time::Instant::now();
                let reps = 10;
                for _ in 0..reps {
                    f();
                }
                let s = t.elapsed().as_secs_f64() / reps as f64;
                eprintln!(
                    "{m}x{k}x{n} {name}: {:.2} ms, {:.1} GFLOP/s",
                    s * 1e3,
                    2.0 * (m * k * n) as f64 / s / 1e9
                );
            }
        }
    }
}
