//! Sampling and KV-cache generation.

use std::time::Instant;

use candle_core::{DType, Tensor};

use crate::model::TardBot;
use crate::{ModelError, Result};
use tardbot_core::rng::SplitMix64;

/// How the next token is drawn from the logits.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy (argmax).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0 = off).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p` (1 = off).
    pub top_p: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.8,
            top_k: 50,
            top_p: 0.95,
            seed: 0,
        }
    }
}

/// Draws tokens from logits with a seeded RNG (the same seed and logits give the same tokens).
#[derive(Clone, Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: SplitMix64,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self> {
        if !(params.temperature.is_finite() && params.temperature >= 0.0) {
            return Err(ModelError::Input(format!(
                "temperature {} must be >= 0",
                params.temperature
            )));
        }
        if !(params.top_p > 0.0 && params.top_p <= 1.0) {
            return Err(ModelError::Input(format!(
                "top_p {} must be in (0, 1]",
                params.top_p
            )));
        }
        let rng = SplitMix64::scrambled(params.seed);
        Ok(Sampler { params, rng })
    }

    pub fn sample(&mut self, logits: &[f32]) -> Result<u32> {
        if logits.is_empty() {
            return Err(ModelError::Input("no logits to sample from".into()));
        }
        let argmax = || {
            logits
                .iter()
                .enumerate()
                .fold((0usize, f32::NEG_INFINITY), |b, (i, &l)| {
                    if l > b.1 { (i, l) } else { b }
                })
                .0 as u32
        };
        if self.params.temperature == 0.0 {
            return Ok(argmax());
        }
        let inv_t = 1.0 / self.params.temperature as f64;
        let mut cand: Vec<(u32, f64)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l as f64 * inv_t))
            .collect();
        let by_desc = |a: &(u32, f64), b: &(u32, f64)| b.1.total_cmp(&a.1);
        let k = self.params.top_k;
        if k > 0 && k < cand.len() {
            cand.select_nth_unstable_by(k - 1, by_desc);
            cand.truncate(k);
        }
        let filter_p = self.params.top_p < 1.0;
        if filter_p {
            cand.sort_unstable_by(by_desc);
        }
        let max = cand.iter().map(|c| c.1).fold(f64::NEG_INFINITY, f64::max);
        if !max.is_finite() {
            return Ok(argmax());
        }
        let mut probs: Vec<f64> = cand.iter().map(|c| (c.1 - max).exp()).collect();
        let sum: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= sum);
        let mut keep = probs.len();
        if filter_p {
            let mut acc = 0.0;
            for (i, p) in probs.iter().enumerate() {
                acc += p;
                if acc >= self.params.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
        }
        let total: f64 = probs[..keep].iter().sum();
        let mut u = self.rng.uniform() * total;
        for i in 0..keep {
            u -= probs[i];
            if u <= 0.0 {
                return Ok(cand[i].0);
            }
        }
        Ok(cand[keep - 1].0)
    }
}

/// Limits and stops of one generation.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateConfig {
    pub max_new_tokens: usize,
    /// Generation ends after emitting one of these (it is included in the output).
    pub stop_tokens: Vec<u32>,
    pub sampling: SamplingParams,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    MaxTokens,
    StopToken,
    /// The streaming callback returned false.
    Callback,
}

/// Tokens produced and timings.
#[derive(Clone, Debug)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub stop: StopReason,
    pub prefill_secs: f64,
    pub decode_secs: f64,
}

/// Generates after `prompt` with a KV cache (memory bounded by the attention window). The prompt is fed
/// in chunks of `window_stride` tokens. `on_token` sees every new token as soon as it is drawn; returning
/// false stops generation.
pub fn generate(
    model: &TardBot,
    prompt: &[u32],
    cfg: &GenerateConfig,
    on_token: &mut dyn FnMut(u32) -> bool,
) -> Result<Generation> {
    if prompt.is_empty() {
        return Err(ModelError::Input("empty prompt".into()));
    }
    let mut sampler = Sampler::new(cfg.sampling.clone())?;
    let mut cache = model.new_cache();
    let dev = model.device();
    let t0 = Instant::now();
    let chunk = model.config().window_stride.max(1);
    let mut logits = None;
    for c in prompt.chunks(chunk) {
        let ids = Tensor::new(c, dev)?.unsqueeze(0)?;
        logits = Some(model.forward_cached(&ids, &mut cache)?);
    }
    let prefill_secs = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let mut tokens = Vec::new();
    let mut stop = StopReason::MaxTokens;
    let mut last = logits.ok_or_else(|| ModelError::Input("empty prompt".into()))?;
    while tokens.len() < cfg.max_new_tokens {
        let t = last.dim(1)?;
        let row = last
            .narrow(1, t - 1, 1)?
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?;
        let tok = sampler.sample(&row)?;
        tokens.push(tok);
        if !on_token(tok) {
            stop = StopReason::Callback;
            break;
        }
        if cfg.stop_tokens.contains(&tok) {
            stop = StopReason::StopToken;
            break;
        }
        if tokens.len() == cfg.max_new_tokens {
            break;
        }
        last = model.forward_cached(&Tensor::new(&[tok], dev)?.unsqueeze(0)?, &mut cache)?;
    }
    Ok(Generation {
        tokens,
        stop,
        prefill_secs,
        decode_secs: t1.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_top_k_top_p() {
        let logits = [0.0f32, 3.0, 1.0, 2.9];
        let mut g = Sampler::new(SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 1,
        })
        .unwrap();
        assert_eq!(g.sample(&logits).unwrap(), 1);
        // top_k = 2 only ever yields the two largest.
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_k: 2,
            top_p: 1.0,
            seed: 1,
        })
        .unwrap();
        let draws: Vec<u32> = (0..200).map(|_| s.sample(&logits).unwrap()).collect();
        assert!(draws.iter().all(|&t| t == 1 || t == 3));
        assert!(draws.contains(&1) && draws.contains(&3));
        // A small top_p keeps only the most likely token.
        let mut p = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.3,
            seed: 1,
        })
        .unwrap();
        assert!((0..50).all(|_| p.sample(&logits).unwrap() == 1));
        // Seeded: same seed, same draws.
        let mut a = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed: 9,
        })
        .unwrap();
        let mut b = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed: 9,
        })
        .unwrap();
        let xa: Vec<u32> = (0..30).map(|_| a.sample(&logits).unwrap()).collect();
        let xb: Vec<u32> = (0..30).map(|_| b.sample(&logits).unwrap()).collect();
        assert_eq!(xa, xb);
        assert!(
            Sampler::new(SamplingParams {
                temperature: -1.0,
                ..Default::default()
            })
            .is_err()
        );
    }

    #[test]
    fn sampling_follows_the_distribution() {
        // p = softmax([ln 1, ln 3]) = (0.25, 0.75)
        let logits = [0.0f32, 3f32.ln()];
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed: 3,
        })
        .unwrap();
        let n = 20_000;
        let ones = (0..n).filter(|_| s.sample(&logits).unwrap() == 1).count() as f64 / n as f64;
        assert!((ones - 0.75).abs() < 0.015, "{ones}");
    }
}
