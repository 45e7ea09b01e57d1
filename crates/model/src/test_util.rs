//! Helpers shared by the crate's test modules: seeded random tensors, tensor comparisons, the check of
//! a kernel against its composition of candle ops, model fixtures, and the process's memory counters.

use candle_core::{DType, Device, Tensor, Var, WithDType};
use tardbot_core::ModelConfig;

/// The `micro` preset.
pub fn micro() -> ModelConfig {
    ModelConfig::from_preset("micro").expect("micro preset")
}

/// Random token ids (b, t) below `cfg.vocab_size`, seeded.
pub fn ids(cfg: &ModelConfig, b: usize, t: usize, seed: u64) -> Tensor {
    let mut r = tardbot_core::rng::SplitMix64::scrambled(seed);
    let v: Vec<u32> = (0..b * t)
        .map(|_| (r.next_u64() % cfg.vocab_size as u64) as u32)
        .collect();
    Tensor::from_vec(v, (b, t), &Device::Cpu).unwrap()
}

/// Standard normal f64 values of `shape`, seeded ([`SplitMix64`](tardbot_core::rng::SplitMix64)).
pub fn randn_f64(shape: &[usize], seed: u64) -> Tensor {
    let mut r = tardbot_core::rng::SplitMix64::scrambled(seed);
    let n = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| r.normal()).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// The values of [`randn_f64`], each rounded to f32.
pub fn randn_f32(shape: &[usize], seed: u64) -> Tensor {
    let mut r = tardbot_core::rng::SplitMix64::scrambled(seed);
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| r.normal() as f32).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Largest `|a − b|`, computed in the tensors' dtype, which `T` must be (name it: `::<f32>`).
pub fn max_abs_diff<T: WithDType>(a: &Tensor, b: &Tensor) -> T {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<T>()
        .unwrap()
}

/// Largest `|a − b|` with both converted to f64 first (any float dtypes).
pub fn max_abs_diff_as_f64(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// Values and gradients (of Σ y ⊙ c for a random c) of `kernel` and `composed` agree in f64.
pub fn check_against_composition(
    inputs: &[Tensor],
    kernel: impl Fn(&[Tensor]) -> Tensor,
    composed: impl Fn(&[Tensor]) -> Tensor,
) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let (a, b) = (kernel(&ts), composed(&ts));
    assert_eq!(a.dims(), b.dims());
    assert!(
        max_abs_diff::<f64>(&a, &b) < 1e-12,
        "values differ by {}",
        max_abs_diff::<f64>(&a, &b)
    );
    let c = randn_f64(a.dims(), 77);
    let ga = (&a * &c).unwrap().sum_all().unwrap().backward().unwrap();
    let gb = (&b * &c).unwrap().sum_all().unwrap().backward().unwrap();
    for (i, v) in vars.iter().enumerate() {
        let (x, y) = (
            ga.get(v.as_tensor()).unwrap(),
            gb.get(v.as_tensor()).unwrap(),
        );
        assert!(
            max_abs_diff::<f64>(x, y) < 1e-11,
            "input {i}: gradients differ by {}",
            max_abs_diff::<f64>(x, y)
        );
    }
}
