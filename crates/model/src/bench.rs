//! Generation benchmark (`tardbot-pipeline bench generate`): tokens/s of KV-cache decoding on the current
//! device at a preset with random weights, fp32 and int8, plus int8's logit error against fp32.

use candle_core::{DType, Device, Tensor};
use serde_json::json;
use tardbot_core::ModelConfig;

use crate::generate::{GenerateConfig, SamplingParams, generate};
use crate::model::TardBot;
use crate::{ModelError, Result};

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchGenerateOptions {
    pub preset: String,
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    pub seed: u64,
}

impl Default for BenchGenerateOptions {
    fn default() -> Self {
        BenchGenerateOptions {
            preset: "mac_nano".into(),
            prompt_tokens: 64,
            new_tokens: 64,
            seed: 0,
        }
    }
}

/// Accuracy of an int8 copy against the float model on the same input: (max |Δlogit| / max |logit|,
/// fraction of positions whose argmax agrees).
pub fn int8_logit_error(model: &TardBot, q8: &TardBot, ids: &Tensor) -> Result<(f64, f64)> {
    let a = model.forward(ids, None)?.logits.to_dtype(DType::F32)?;
    let b = q8.forward(ids, None)?.logits.to_dtype(DType::F32)?;
    let diff = (&a - &b)?.abs()?.max_all()?.to_scalar::<f32>()? as f64;
    let scale = a.abs()?.max_all()?.to_scalar::<f32>()? as f64;
    let agree = a
        .argmax(candle_core::D::Minus1)?
        .eq(&b.argmax(candle_core::D::Minus1)?)?
        .to_dtype(DType::F32)?
        .mean_all()?
        .to_scalar::<f32>()? as f64;
    Ok((diff / scale.max(1e-30), agree))
}

/// The benchmark's prompt: `prompt_tokens` ids drawn from the seed (a peer runs the same ids).
pub fn bench_prompt(cfg: &ModelConfig, opts: &BenchGenerateOptions) -> Vec<u32> {
    let mut rng = tardbot_core::rng::SplitMix64::scrambled(opts.seed + 1);
    (0..opts.prompt_tokens)
        .map(|_| (rng.next_u64() % cfg.vocab_size as u64) as u32)
        .collect()
}

/// Runs the benchmark on CPU, prints a table and returns the figures as JSON.
pub fn bench_generate(opts: &BenchGenerateOptions) -> Result<serde_json::Value> {
    let cfg = ModelConfig::from_preset(&opts.preset)
        .ok_or_else(|| ModelError::Config(format!("unknown preset `{}`", opts.preset)))?;
    if opts.prompt_tokens == 0 || opts.new_tokens == 0 {
        return Err(ModelError::Input(
            "prompt_tokens and new_tokens must be at least 1".into(),
        ));
    }
    let dev = Device::Cpu;
    let (model, _vm) = TardBot::new_random(&cfg, opts.seed, DType::F32, &dev)?;
    let model = model.with_fused_kernels(true);
    let q8 = model.quantize_int8()?;
    let prompt = bench_prompt(&cfg, opts);
    let gcfg = GenerateConfig {
        max_new_tokens: opts.new_tokens,
        stop_tokens: Vec::new(),
        sampling: SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: opts.seed,
        },
    };
    let mut rows = Vec::new();
    for (name, m) in [("fp32", &model), ("int8", &q8)] {
        // Warm-up: first-touch allocation and thread-pool start.
        generate(
            m,
            &prompt[..prompt.len().min(8)],
            &GenerateConfig {
                max_new_tokens: 2,
                ..gcfg.clone()
            },
            &mut |_| true,
        )?;
        let g = generate(m, &prompt, &gcfg, &mut |_| true)?;
        let decode = (g.tokens.len().saturating_sub(1)) as f64 / g.decode_secs.max(1e-9);
        let prefill = prompt.len() as f64 / g.prefill_secs.max(1e-9);
        rows.push(json!({"weights": name, "prefill_tokens_per_s": prefill, "decode_tokens_per_s": decode, "new_tokens": g.tokens.len()}));
    }
    let ids = Tensor::new(&prompt[..prompt.len().min(32)], &dev)?.unsqueeze(0)?;
    let (rel, agree) = int8_logit_error(&model, &q8, &ids)?;
    let p = cfg.param_counts();
    let v = json!({
        "preset": opts.preset,
        "device": "cpu",
        "threads": rayon::current_num_threads(),
        "params_m": p.total as f64 / 1e6,
        "active_params_m": p.active_per_token as f64 / 1e6,
        "prompt_tokens": opts.prompt_tokens,
        "results": rows,
        "int8_max_rel_logit_error": rel,
        "int8_top1_agreement": agree,
    });
    println!("{}", format_table(&v));
    Ok(v)
}

/// The human-readable table of a [`bench_generate`] result.
pub fn format_table(v: &serde_json::Value) -> String {
    let mut s = format!(
        "generation benchmark: preset {} ({:.1}M params, {:.1}M active), {} threads, prompt {} tokens\n",
        v["preset"].as_str().unwrap_or("?"),
        v["params_m"].as_f64().unwrap_or(0.0),
        v["active_params_m"].as_f64().unwrap_or(0.0),
        v["threads"],
        v["prompt_tokens"]
    );
    s.push_str(&format!(
        "{:<8} {:>16} {:>16}\n",
        "weights", "prefill tok/s", "decode tok/s"
    ));
    for r in v["results"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "{:<8} {:>16.1} {:>16.1}\n",
            r["weights"].as_str().unwrap_or("?"),
            r["prefill_tokens_per_s"].as_f64().unwrap_or(0.0),
            r["decode_tokens_per_s"].as_f64().unwrap_or(0.0)
        ));
    }
    s.push_str(&format!(
        "int8 vs fp32 logits: max relative error {:.4}, top-1 agreement {:.1}%",
        v["int8_max_rel_logit_error"].as_f64().unwrap_or(f64::NAN),
        100.0 * v["int8_top1_agreement"].as_f64().unwrap_or(f64::NAN)
    ));
    s
}
