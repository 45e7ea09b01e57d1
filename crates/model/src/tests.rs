//! Model-level tests: parameter counts against real tensors, finite-difference gradients, the banded
//! mask, KV-cache decoding, safetensors round trip, int8 accuracy, generation; batched decoding in
//! `tests/batch_decode.rs`.

use candle_core::{DType, Device, Tensor, backprop::GradStore};
use tardbot_core::ModelConfig;

use crate::attention::AttnCtx;
use crate::test_util::{ids, max_abs_diff_as_f64, micro};
use crate::*;
use tardbot_core::memory::{peak_rss_bytes, rss_bytes};

mod batch_decode;

#[test]
fn param_counts_match_real_tensors() {
    let mut dense = micro();
    dense.n_experts = 0;
    dense.experts_per_token = 0;
    dense.n_dense_layers = dense.n_layers;
    let mut untied = micro();
    untied.tie_embeddings = false;
    for cfg in [
        micro(),
        ModelConfig::from_preset("tiny").unwrap(),
        dense,
        untied,
    ] {
        let (_, vm) = TardBot::new_random(&cfg, 0, DType::F32, &Device::Cpu).unwrap();
        let vars = named_vars(&vm);
        let n: usize = vars.iter().map(|(_, v)| v.elem_count()).sum();
        assert_eq!(n, cfg.param_counts().total, "{cfg:?}");
        let names: Vec<String> = vars.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(names, TardBot::param_names(&cfg));
    }
}

fn total_loss(
    model: &TardBot,
    x: &Tensor,
    y: &Tensor,
    docs: Option<&Tensor>,
) -> (Tensor, Vec<Vec<u32>>) {
    let out = model.forward(x, docs).unwrap();
    let l = model.loss(&out, y, None).unwrap();
    (l.total, out.expert_counts)
}

/// Central finite differences in f64 on every parameter tensor of the micro model (dense + MoE layers,
/// router and every expert, tied embedding, norms): a random direction per tensor plus its largest-gradient
/// element and two random elements. Returns the worst relative error.
/// Exact resume needs the same bits run to run at a fixed thread count, also where the kernels
/// ([`crate::kernels`]) split work over many rayon tasks (here 16 chunks of rows for the RMSNorm weight gradient).
#[test]
fn fused_rmsnorm_backward_is_deterministic_over_many_tasks() {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (4096, 64), &dev).unwrap();
    let g = Tensor::randn(0f32, 1.0, (4096, 64), &dev).unwrap();
    let w = candle_core::Var::from_tensor(&Tensor::randn(1f32, 0.1, 64, &dev).unwrap()).unwrap();
    let run = || -> Vec<u32> {
        let y = crate::kernels::rms_norm(&x, w.as_tensor(), 1e-5).unwrap();
        let grads = (y * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let dw = grads.get(w.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        dw.iter().map(|v| v.to_bits()).collect()
    };
    // An oversubscribed pool makes rayon's work stealing (and so its split points) vary run to run.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(8)
        .build()
        .unwrap();
    pool.install(|| {
        let first = run();
        for _ in 0..30 {
            assert_eq!(
                run(),
                first,
                "RMSNorm weight gradient changed between identical runs"
            );
        }
    });
}

#[test]
fn finite_difference_gradients_f64() {
    let mut cfg = micro();
    // Large loss coefficients so the router losses' gradients are checked, not drowned.
    cfg.router_aux_loss_coef = 0.3;
    cfg.router_z_loss_coef = 0.1;
    let dev = Device::Cpu;
    let (model, vm) = TardBot::new_random(&cfg, 11, DType::F64, &dev).unwrap();
    let (b, t) = (2, 9); // t > window (4) and > stride (2): several query blocks, band active
    let x = ids(&cfg, b, t + 1, 5);
    let (inp, tgt) = (
        x.narrow(1, 0, t).unwrap(),
        x.narrow(1, 1, t).unwrap().contiguous().unwrap(),
    );
    let docs = Tensor::from_vec(
        vec![0u32, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 2, 2, 2],
        (b, t),
        &dev,
    )
    .unwrap();
    let (loss, counts) = total_loss(&model, &inp, &tgt, Some(&docs));
    for (l, c) in counts.iter().enumerate() {
        assert!(
            c.iter().all(|&n| n > 0),
            "MoE layer {l}: an expert got no token {c:?}; pick another seed"
        );
    }
    let grads: GradStore = loss.backward().unwrap();
    let eps = 1e-5;
    let mut worst: f64 = 0.0;
    let mut rng = tardbot_core::rng::SplitMix64::scrambled(99);
    for (name, var) in named_vars(&vm) {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient"));
        let gv = g.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let gnorm = gv.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!(gnorm > 1e-10, "{name}: zero gradient");
        let base = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let n = base.len();
        let eval = |delta: &[f64]| -> f64 {
            let run = |s: f64| -> f64 {
                let v: Vec<f64> = base.iter().zip(delta).map(|(a, d)| a + s * d).collect();
                var.set(&Tensor::from_vec(v, var.shape(), &dev).unwrap())
                    .unwrap();
                let (l, c) = total_loss(&model, &inp, &tgt, Some(&docs));
                assert_eq!(c, counts, "{name}: routing changed under the perturbation");
                l.to_scalar::<f64>().unwrap()
            };
            let fd = (run(eps) - run(-eps)) / (2.0 * eps);
            var.set(&Tensor::from_vec(base.clone(), var.shape(), &dev).unwrap())
                .unwrap();
            fd
        };
        let mut dirs: Vec<Vec<f64>> = Vec::new();
        let dir: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
        dirs.push(dir);
        let imax = (0..n)
            .max_by(|&a, &c| gv[a].abs().total_cmp(&gv[c].abs()))
            .unwrap();
        for i in [
            imax,
            (rng.next_u64() % n as u64) as usize,
            (rng.next_u64() % n as u64) as usize,
        ] {
            let mut d = vec![0.0; n];
            d[i] = 1.0;
            dirs.push(d);
        }
        for (k, d) in dirs.iter().enumerate() {
            let an: f64 = gv.iter().zip(d).map(|(a, b)| a * b).sum();
            let fd = eval(d);
            // Elements with a near-zero gradient are compared on the tensor's gradient scale.
            let scale = an
                .abs()
                .max(fd.abs())
                .max(if k == 0 { 0.0 } else { 1e-3 * gnorm });
            let rel = if scale == 0.0 {
                0.0
            } else {
                (an - fd).abs() / scale
            };
            assert!(
                rel < 1e-4,
                "{name} check {k}: analytic {an:e} vs finite difference {fd:e} (rel {rel:e})"
            );
            worst = worst.max(rel);
        }
    }
    eprintln!("finite-difference check: worst relative error {worst:e}");
}

/// Explicit reference: naive loops over the full T×T banded (and document) mask.
fn naive_attention(
    cfg: &ModelConfig,
    att: &crate::attention::Attention,
    x: &[Vec<Vec<f64>>],
    docs: &[Vec<u32>],
) -> Vec<Vec<Vec<f64>>> {
    let w = |l: &crate::ops::Linear| l.weight.to_vec2::<f64>().unwrap();
    let (wq, wk, wv, wo) = (w(&att.q), w(&att.k), w(&att.v), w(&att.o));
    let hd = cfg.head_dim();
    let rep = cfg.n_heads / cfg.n_kv_heads;
    let mv = |m: &Vec<Vec<f64>>, v: &Vec<f64>| -> Vec<f64> {
        m.iter()
            .map(|r| r.iter().zip(v).map(|(a, b)| a * b).sum())
            .collect()
    };
    let rope = |v: &mut [f64], pos: usize| {
        for i in 0..hd / 2 {
            let a = pos as f64 / cfg.rope_theta.powf(2.0 * i as f64 / hd as f64);
            let (x1, x2) = (v[2 * i], v[2 * i + 1]);
            v[2 * i] = x1 * a.cos() - x2 * a.sin();
            v[2 * i + 1] = x1 * a.sin() + x2 * a.cos();
        }
    };
    x.iter()
        .zip(docs)
        .map(|(seq, doc)| {
            let t = seq.len();
            let q: Vec<Vec<f64>> = seq.iter().map(|v| mv(&wq, v)).collect();
            let k: Vec<Vec<f64>> = seq.iter().map(|v| mv(&wk, v)).collect();
            let v: Vec<Vec<f64>> = seq.iter().map(|v| mv(&wv, v)).collect();
            (0..t)
                .map(|p| {
                    let mut merged = vec![0.0; cfg.n_heads * hd];
                    for h in 0..cfg.n_heads {
                        let g = h / rep;
                        let mut qh = q[p][h * hd..(h + 1) * hd].to_vec();
                        rope(&mut qh, p);
                        let mut scores = vec![f64::NEG_INFINITY; t];
                        for (j, s) in scores.iter_mut().enumerate() {
                            if j <= p && p - j < cfg.window && doc[j] == doc[p] {
                                let mut kh = k[j][g * hd..(g + 1) * hd].to_vec();
                                rope(&mut kh, j);
                                *s = qh.iter().zip(&kh).map(|(a, b)| a * b).sum::<f64>()
                                    / (hd as f64).sqrt();
                            }
                        }
                        let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                        let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                        let z: f64 = e.iter().sum();
                        for (j, ej) in e.iter().enumerate() {
                            for d in 0..hd {
                                merged[h * hd + d] += ej / z * v[j][g * hd + d];
                            }
                        }
                    }
                    mv(&wo, &merged)
                })
                .collect()
        })
        .collect()
}

#[test]
fn sliding_window_matches_explicit_banded_mask() {
    let mut cfg = micro();
    cfg.window = 5;
    cfg.window_stride = 3;
    let dev = Device::Cpu;
    let (model, _) = TardBot::new_random(&cfg, 3, DType::F64, &dev).unwrap();
    let (b, t) = (2, 13);
    let mut r = tardbot_core::rng::SplitMix64::scrambled(4);
    let xv: Vec<Vec<Vec<f64>>> = (0..b)
        .map(|_| {
            (0..t)
                .map(|_| (0..cfg.hidden_size).map(|_| r.normal()).collect())
                .collect()
        })
        .collect();
    let x = Tensor::new(xv.clone(), &dev).unwrap();
    let att = &model.blocks[1].attn;
    for docs in [
        vec![vec![0u32; t]; b],
        vec![
            vec![0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2],
            vec![5, 5, 5, 5, 5, 5, 5, 5, 6, 6, 6, 6, 6],
        ],
    ] {
        let ctx = AttnCtx::new(&cfg, t, 0, Some(&docs), false, DType::F64, &dev).unwrap();
        assert!(ctx.blocks.len() > 1);
        let got = att.forward(&x, &ctx).unwrap().to_vec3::<f64>().unwrap();
        let want = naive_attention(&cfg, att, &xv, &docs);
        let err = got
            .iter()
            .flatten()
            .flatten()
            .zip(want.iter().flatten().flatten())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(err < 1e-12, "max error {err}");
    }
    // Without doc ids = one document.
    let ctx = AttnCtx::new(&cfg, t, 0, None, false, DType::F64, &dev).unwrap();
    let got = att.forward(&x, &ctx).unwrap().to_vec3::<f64>().unwrap();
    let want = naive_attention(&cfg, att, &xv, &vec![vec![0u32; t]; b]);
    let err = got
        .iter()
        .flatten()
        .flatten()
        .zip(want.iter().flatten().flatten())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(err < 1e-12, "max error {err}");
}

#[test]
fn documents_do_not_see_each_other() {
    let cfg = micro();
    let dev = Device::Cpu;
    let (model, _) = TardBot::new_random(&cfg, 5, DType::F64, &dev).unwrap();
    let a = ids(&cfg, 1, 10, 1);
    let mut v = a.flatten_all().unwrap().to_vec1::<u32>().unwrap();
    v[1] = (v[1] + 1) % cfg.vocab_size as u32; // change document 0 only
    let b = Tensor::from_vec(v, (1, 10), &dev).unwrap();
    let docs = Tensor::from_vec(vec![0u32, 0, 0, 0, 1, 1, 1, 1, 1, 1], (1, 10), &dev).unwrap();
    let la = model.forward(&a, Some(&docs)).unwrap().logits;
    let lb = model.forward(&b, Some(&docs)).unwrap().logits;
    assert_eq!(
        max_abs_diff_as_f64(&la.narrow(1, 4, 6).unwrap(), &lb.narrow(1, 4, 6).unwrap()),
        0.0
    );
    assert!(max_abs_diff_as_f64(&la.narrow(1, 1, 3).unwrap(), &lb.narrow(1, 1, 3).unwrap()) > 1e-6);
}

/// The logits of `x` fed to the cache `chunk` tokens at a time.
fn decode_in_chunks(model: &TardBot, x: &Tensor, chunk: usize, cache: &mut KvCache) -> Tensor {
    let t = x.dim(1).unwrap();
    let mut parts = Vec::new();
    let mut s = 0;
    while s < t {
        let n = chunk.min(t - s);
        parts.push(
            model
                .forward_cached(&x.narrow(1, s, n).unwrap(), cache)
                .unwrap(),
        );
        s += n;
    }
    Tensor::cat(&parts, 1).unwrap()
}

#[test]
fn kv_cache_decoding_equals_full_forward_beyond_window() {
    let cfg = micro(); // window 4
    let dev = Device::Cpu;
    for fused in [false, true] {
        let dtype = if fused { DType::F32 } else { DType::F64 };
        let (model, _) = TardBot::new_random(&cfg, 8, dtype, &dev).unwrap();
        let model = model.with_fused_kernels(fused);
        let t = 15;
        let x = ids(&cfg, 1, t, 2);
        let full = model.forward(&x, None).unwrap().logits;
        for chunk in [1, 3, 6] {
            let mut cache = model.new_cache();
            let inc = decode_in_chunks(&model, &x, chunk, &mut cache);
            let err = max_abs_diff_as_f64(&full, &inc);
            let tol = if fused { 1e-4 } else { 1e-11 };
            assert!(err < tol, "fused {fused} chunk {chunk}: {err}");
            assert!(
                cache.layers.iter().all(|c| c.len() == cfg.window),
                "the ring holds exactly the window"
            );
        }
    }
}

/// A window longer than the sequence and a stride that is not a divisor of it (data/larger.toml's
/// tiny with window 1024 / stride 256 on 300 tokens): plain attention, the fused kernels and the
/// cache all agree.
#[test]
fn a_window_longer_than_the_sequence_agrees_on_every_path() {
    let mut cfg = ModelConfig::from_preset("tiny").unwrap();
    cfg.window = 1024;
    cfg.window_stride = 256;
    let (model, _) = TardBot::new_random(&cfg, 3, DType::F32, &Device::Cpu).unwrap();
    let x = ids(&cfg, 1, 300, 4);
    let plain = model.forward(&x, None).unwrap().logits;
    let model = model.with_fused_kernels(true);
    let fused = model.forward(&x, None).unwrap().logits;
    assert!(max_abs_diff_as_f64(&plain, &fused) < 1e-4);
    for chunk in [1, 77] {
        let inc = decode_in_chunks(&model, &x, chunk, &mut model.new_cache());
        let err = max_abs_diff_as_f64(&plain, &inc);
        assert!(err < 1e-4, "chunk {chunk}: {err}");
    }
}

#[test]
fn fused_inference_kernels_match_training_path() {
    let cfg = ModelConfig::from_preset("tiny").unwrap();
    let (model, _) = TardBot::new_random(&cfg, 1, DType::F32, &Device::Cpu).unwrap();
    let x = ids(&cfg, 2, 40, 3);
    let a = model.forward(&x, None).unwrap().logits;
    let b = model
        .clone()
        .with_fused_kernels(true)
        .forward(&x, None)
        .unwrap()
        .logits;
    assert!(max_abs_diff_as_f64(&a, &b) < 1e-4);
}

#[test]
fn router_losses_at_a_uniform_router() {
    let cfg = micro();
    let (model, vm) = TardBot::new_random(&cfg, 2, DType::F64, &Device::Cpu).unwrap();
    for (name, var) in named_vars(&vm) {
        if name.ends_with("router.weight") {
            var.set(&var.zeros_like().unwrap()).unwrap();
        }
    }
    let out = model.forward(&ids(&cfg, 2, 6, 1), None).unwrap();
    let moe_layers = cfg.n_moe_layers() as f64;
    // Uniform probabilities: aux = E · Σ f_e / E = 1 per layer; z = (ln E)² per layer.
    assert!((out.aux_loss.to_scalar::<f64>().unwrap() - moe_layers).abs() < 1e-12);
    let z = (cfg.n_experts as f64).ln().powi(2) * moe_layers;
    assert!((out.z_loss.to_scalar::<f64>().unwrap() - z).abs() < 1e-12);
    for c in &out.expert_counts {
        assert_eq!(
            c.iter().sum::<u32>() as usize,
            2 * 6 * cfg.experts_per_token
        );
    }
}

#[test]
fn loss_mask_and_bad_input() {
    let cfg = micro();
    let (model, _) = TardBot::new_random(&cfg, 2, DType::F32, &Device::Cpu).unwrap();
    let x = ids(&cfg, 1, 6, 1);
    let out = model.forward(&x, None).unwrap();
    let all = cross_entropy(&out.logits, &x, None)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let mask = Tensor::new(&[[1u32, 1, 1, 1, 1, 1]], &Device::Cpu).unwrap();
    let m = cross_entropy(&out.logits, &x, Some(&mask))
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!((all - m).abs() < 1e-6);
    let half = Tensor::new(&[[1u32, 1, 1, 0, 0, 0]], &Device::Cpu).unwrap();
    let h = cross_entropy(&out.logits, &x, Some(&half))
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let first = cross_entropy(
        &out.logits.narrow(1, 0, 3).unwrap(),
        &x.narrow(1, 0, 3).unwrap(),
        None,
    )
    .unwrap()
    .to_scalar::<f32>()
    .unwrap();
    assert!((h - first).abs() < 1e-6);
    let bad = Tensor::new(&[[cfg.vocab_size as u32]], &Device::Cpu).unwrap();
    assert!(matches!(
        model.forward(&bad, None),
        Err(ModelError::Input(_))
    ));
    let zero = Tensor::new(&[[0u32, 0, 0, 0, 0, 0]], &Device::Cpu).unwrap();
    assert!(cross_entropy(&out.logits, &x, Some(&zero)).is_err());
}

#[test]
fn safetensors_round_trip() {
    let cfg = micro();
    let dev = Device::Cpu;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let (a, vm) = TardBot::new_random(&cfg, 1, DType::F32, &dev).unwrap();
    save_safetensors(&vm, None, &path).unwrap();
    let (b, vm2) = load_model(&cfg, &path, DType::F32, &dev).unwrap();
    let x = ids(&cfg, 1, 7, 1);
    assert_eq!(
        max_abs_diff_as_f64(
            &a.forward(&x, None).unwrap().logits,
            &b.forward(&x, None).unwrap().logits
        ),
        0.0
    );
    let names: Vec<String> = named_vars(&vm2).into_iter().map(|(k, _)| k).collect();
    assert_eq!(names, TardBot::param_names(&cfg));
    // Another configuration must not load.
    let mut other = cfg.clone();
    other.n_layers = 3;
    assert!(matches!(
        load_model(&other, &path, DType::F32, &dev),
        Err(ModelError::Checkpoint { .. })
    ));
    let mut wider = cfg.clone();
    wider.intermediate_size = 48;
    assert!(load_model(&wider, &path, DType::F32, &dev).is_err());
}

#[test]
fn int8_inference_is_close_to_fp32() {
    let cfg = ModelConfig::from_preset("tiny").unwrap();
    let (model, _) = TardBot::new_random(&cfg, 4, DType::F32, &Device::Cpu).unwrap();
    let model = model.with_fused_kernels(true);
    let q8 = model.quantize_int8().unwrap();
    assert!(q8.lm_head.is_quantized());
    let (rel, agree) = bench::int8_logit_error(&model, &q8, &ids(&cfg, 2, 48, 9)).unwrap();
    eprintln!("int8 (tiny): max relative logit error {rel:.4}, top-1 agreement {agree:.3}");
    assert!(rel < 0.03, "{rel}");
    assert!(agree > 0.9, "{agree}");
}

#[test]
fn generation_is_greedy_consistent_streams_and_stops() {
    let cfg = micro();
    let (model, _) = TardBot::new_random(&cfg, 6, DType::F64, &Device::Cpu).unwrap();
    let prompt = [1u32, 5, 9, 3, 7];
    let g = GenerateConfig {
        max_new_tokens: 8,
        stop_tokens: vec![],
        sampling: SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        },
    };
    let mut streamed = Vec::new();
    let out = generate(&model, &prompt, &g, &mut |t| {
        streamed.push(t);
        true
    })
    .unwrap();
    assert_eq!(out.tokens, streamed);
    assert_eq!(out.stop, StopReason::MaxTokens);
    assert_eq!(out.tokens.len(), 8);
    // Greedy decoding equals argmax of full forwards over the growing sequence.
    let mut seq = prompt.to_vec();
    for &tok in &out.tokens {
        let x = Tensor::new(seq.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let l = model.forward(&x, None).unwrap().logits;
        let last = l
            .narrow(1, seq.len() - 1, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .argmax(0)
            .unwrap()
            .to_scalar::<u32>()
            .unwrap();
        assert_eq!(last, tok);
        seq.push(tok);
    }
    let stop = out.tokens[2];
    let s = generate(
        &model,
        &prompt,
        &GenerateConfig {
            stop_tokens: vec![stop],
            ..g.clone()
        },
        &mut |_| true,
    )
    .unwrap();
    assert_eq!(s.stop, StopReason::StopToken);
    assert_eq!(*s.tokens.last().unwrap(), stop);
    assert!(s.tokens.len() <= 3);
    let c = generate(&model, &prompt, &g, &mut |_| false).unwrap();
    assert_eq!((c.stop, c.tokens.len()), (StopReason::Callback, 1));
    // Seeded sampling is reproducible.
    let sg = GenerateConfig {
        sampling: SamplingParams {
            temperature: 1.0,
            top_k: 10,
            top_p: 0.9,
            seed: 42,
        },
        ..g
    };
    let a = generate(&model, &prompt, &sg, &mut |_| true)
        .unwrap()
        .tokens;
    let b = generate(&model, &prompt, &sg, &mut |_| true)
        .unwrap()
        .tokens;
    assert_eq!(a, b);
}

/// Writes a case for `tests/reference/check_reference.py` (PyTorch) into `$TARDBOT_REF_DIR`.
#[test]
#[ignore = "exports files for the PyTorch reference check; see tests/reference/check_reference.py"]
fn reference_export() {
    let dir = std::path::PathBuf::from(
        std::env::var("TARDBOT_REF_DIR").unwrap_or_else(|_| "/tmp/tardbot-ref".into()),
    );
    std::fs::create_dir_all(&dir).unwrap();
    let mut cfg = ModelConfig::from_preset("tiny").unwrap();
    cfg.window = 24;
    cfg.window_stride = 8;
    let dev = Device::Cpu;
    let (model, vm) = TardBot::new_random(&cfg, 21, DType::F64, &dev).unwrap();
    let (b, t) = (2, 40);
    let x = ids(&cfg, b, t, 4);
    let mut d = vec![0u32; b * t];
    d[t + 17..].iter_mut().for_each(|v| *v = 1);
    let docs = Tensor::from_vec(d, (b, t), &dev).unwrap();
    let out = model.forward(&x, Some(&docs)).unwrap();
    save_safetensors(&vm, None, &dir.join("model.safetensors")).unwrap();
    let io: std::collections::HashMap<String, Tensor> = [
        ("ids".to_string(), x),
        ("docs".to_string(), docs),
        ("logits".to_string(), out.logits.clone()),
    ]
    .into_iter()
    .collect();
    candle_core::safetensors::save(&io, dir.join("io.safetensors")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&cfg).unwrap(),
    )
    .unwrap();
    let outputs = serde_json::json!({
        "aux_loss": out.aux_loss.to_scalar::<f64>().unwrap(),
        "z_loss": out.z_loss.to_scalar::<f64>().unwrap(),
        "expert_counts": out.expert_counts,
    });
    std::fs::write(dir.join("outputs.json"), outputs.to_string()).unwrap();
    eprintln!("reference case written to {}", dir.display());
}

/// `cargo test --release -p tardbot-model -- --ignored --nocapture bench_generate_mac_nano`
#[test]
#[ignore = "benchmark: builds mac_nano (137M parameters) and times generation"]
fn bench_generate_mac_nano() {
    let v = bench_generate(&BenchGenerateOptions::default()).unwrap();
    println!("{v}");
}

/// Measured peak RSS of one CPU training step (forward, backward, an AdamW-style update with two f32
/// moments per parameter) against `describe()`'s prediction (RSS from `tardbot_core::memory`); run
/// alone so that no other test shares the process:
/// `cargo test --release -p tardbot-model -- --ignored --exact --nocapture tests::training_memory_matches_describe`
#[test]
#[ignore = "measures process peak RSS: run alone (see doc comment)"]
fn training_memory_matches_describe() {
    let preset = std::env::var("TARDBOT_MEM_PRESET").unwrap_or_else(|_| "tiny".into());
    let cfg = ModelConfig::from_preset(&preset).expect("TARDBOT_MEM_PRESET names a preset");
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (batch, seq) = (env("TARDBOT_MEM_BATCH", 8), env("TARDBOT_MEM_SEQ", 256));
    let Some(base) = rss_bytes().map(|b| b / 1024) else {
        eprintln!("skipped: this platform reports no resident set size");
        return;
    };
    let dev = Device::Cpu;
    let (model, vm) = TardBot::new_random(&cfg, 0, DType::F32, &dev).unwrap();
    let vars = named_vars(&vm);
    let mut m: Vec<Tensor> = vars.iter().map(|(_, v)| v.zeros_like().unwrap()).collect();
    let mut v2: Vec<Tensor> = vars.iter().map(|(_, v)| v.zeros_like().unwrap()).collect();
    let x = ids(&cfg, batch, seq + 1, 1);
    let (inp, tgt) = (
        x.narrow(1, 0, seq).unwrap(),
        x.narrow(1, 1, seq).unwrap().contiguous().unwrap(),
    );
    {
        let out = model.forward(&inp, None).unwrap();
        let loss = model.loss(&out, &tgt, None).unwrap().total;
        let after_fwd = rss_bytes().map(|b| b / 1024).unwrap_or(0);
        eprintln!(
            "after forward: {:.1} MiB above baseline",
            (after_fwd.saturating_sub(base)) as f64 / 1024.0
        );
        let grads = loss.backward().unwrap();
        drop(loss);
        drop(out);
        for (i, (_, var)) in vars.iter().enumerate() {
            let g = grads.get(var.as_tensor()).unwrap();
            m[i] = ((&m[i] * 0.9).unwrap() + (g * 0.1).unwrap()).unwrap();
            v2[i] = ((&v2[i] * 0.999).unwrap() + (g.sqr().unwrap() * 0.001).unwrap()).unwrap();
            let upd = (m[i].clone() / (v2[i].sqrt().unwrap() + 1e-8).unwrap()).unwrap();
            var.set(&(var.as_tensor() - (upd * 1e-3).unwrap()).unwrap())
                .unwrap();
        }
    }
    let peak = peak_rss_bytes().map(|b| b / 1024).unwrap();
    let measured = (peak - base) as f64 * 1024.0;
    let predicted = cfg.memory(batch, seq, cfg.n_experts).total(false) as f64;
    let ratio = measured / predicted;
    eprintln!(
        "{preset} {batch}x{seq}: measured peak {:.1} MiB above baseline, predicted {:.1} MiB, ratio {ratio:.3}",
        measured / 1048576.0,
        predicted / 1048576.0
    );
    assert!((ratio - 1.0).abs() < 0.15, "measured/predicted = {ratio}");
}

// The pipeline binary allocates with mimalloc; measure memory under the same allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `cargo test --release -p tardbot-model -- --nocapture describe_every_preset` prints them all.
#[test]
fn describe_every_preset() {
    for name in ModelConfig::preset_names() {
        let cfg = ModelConfig::from_preset(name).unwrap();
        let text = cfg.describe(4, 1024).to_string();
        println!("== {name} (batch 4 x seq 1024)\n{text}\n");
        assert!(text.contains("verdict: "), "{name}");
    }
}

/// The fused attention kernel against the op-by-op blocked path in f64: outputs and the gradients of
/// the input and of every attention weight, over window/stride/GQA shapes that exercise several context
/// blocks, sub-blocks (blocks longer than the kernel's 64 queries), a window longer than the sequence,
/// document masks (including a document id that recurs), and GQA groups of 1, 2 and 4 heads.
#[test]
fn fused_attention_matches_composed_path_f64() {
    let dev = Device::Cpu;
    let base = micro();
    // (hidden, heads, kv heads, window, stride, batch, seq)
    let shapes = [
        (16, 4, 2, 4, 2, 2, 13),
        (16, 4, 2, 5, 3, 2, 13),
        (16, 4, 4, 6, 4, 3, 11),
        (32, 8, 2, 80, 70, 2, 150),
        (24, 4, 2, 768, 192, 2, 100),
        (16, 2, 1, 1, 1, 1, 7),
    ];
    for (si, &(hidden, heads, kv, window, stride, b, t)) in shapes.iter().enumerate() {
        let mut cfg = base.clone();
        cfg.hidden_size = hidden;
        cfg.n_heads = heads;
        cfg.n_kv_heads = kv;
        cfg.window = window;
        cfg.window_stride = stride;
        cfg.max_seq_len = 256;
        let (model, _) = TardBot::new_random(&cfg, 7 + si as u64, DType::F64, &dev).unwrap();
        let att = &model.blocks[0].attn;
        let mut r = tardbot_core::rng::SplitMix64::scrambled(100 + si as u64);
        let xv: Vec<f64> = (0..b * t * hidden).map(|_| r.normal()).collect();
        let x = candle_core::Var::from_tensor(&Tensor::from_vec(xv, (b, t, hidden), &dev).unwrap())
            .unwrap();
        let cv: Vec<f64> = (0..b * t * hidden).map(|_| r.normal()).collect();
        let c = Tensor::from_vec(cv, (b, t, hidden), &dev).unwrap();
        // Documents: runs of random length, and one row where an id recurs after another document.
        let mut docs: Vec<Vec<u32>> = (0..b)
            .map(|_| {
                let mut d = 0u32;
                (0..t)
                    .map(|_| {
                        if r.next_u64().is_multiple_of(9) {
                            d += 1;
                        }
                        d
                    })
                    .collect()
            })
            .collect();
        for (i, v) in docs[0].iter_mut().enumerate() {
            *v = ((i / 3) % 2) as u32;
        }
        for docs in [None, Some(docs)] {
            let ctx = AttnCtx::new(&cfg, t, 0, docs.as_deref(), false, DType::F64, &dev).unwrap();
            let fused = att.forward(x.as_tensor(), &ctx).unwrap();
            let composed = att.forward_composed(x.as_tensor(), &ctx).unwrap();
            let err = max_abs_diff_as_f64(&fused, &composed);
            assert!(err < 1e-12, "shape {si}: outputs differ by {err}");
            let gf = (&fused * &c)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let gc = (&composed * &c)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for (name, tensor) in [
                ("x", x.as_tensor()),
                ("q", &att.q.weight),
                ("k", &att.k.weight),
                ("v", &att.v.weight),
                ("o", &att.o.weight),
            ] {
                let (a, b) = (gf.get(tensor).unwrap(), gc.get(tensor).unwrap());
                let scale = max_abs_diff_as_f64(b, &b.zeros_like().unwrap()).max(1.0);
                let err = max_abs_diff_as_f64(a, b) / scale;
                assert!(err < 1e-10, "shape {si}, {name}: gradients differ by {err}");
            }
        }
    }
}

/// The fused attention's forward and backward are bit-identical run to run (exact resume relies on it).
#[test]
fn fused_attention_is_deterministic() {
    let dev = Device::Cpu;
    let mut cfg = ModelConfig::from_preset("tiny").unwrap();
    cfg.n_layers = 1;
    let (model, _) = TardBot::new_random(&cfg, 3, DType::F32, &dev).unwrap();
    let att = &model.blocks[0].attn;
    let (b, t) = (4, 200);
    let x = candle_core::Var::from_tensor(
        &Tensor::randn(0f32, 1.0, (b, t, cfg.hidden_size), &dev).unwrap(),
    )
    .unwrap();
    let ctx = AttnCtx::new(&cfg, t, 0, None, false, DType::F32, &dev).unwrap();
    let run = || {
        let y = att.forward(x.as_tensor(), &ctx).unwrap();
        let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        (
            flat(&y),
            flat(g.get(x.as_tensor()).unwrap()),
            flat(g.get(&att.k.weight).unwrap()),
        )
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let first = pool.install(run);
    for _ in 0..3 {
        assert!(
            pool.install(run) == first,
            "fused attention is not deterministic"
        );
    }
}

/// The vendored candle-core's gradient accumulation (`crates/vendor/README.md`): a variable used by
/// several ops, through add, sub, mul, div, neg, a broadcast and an index_select (which keeps the
/// zero base), gets exactly the analytic gradient. Guards the patch when candle-core is updated.
#[test]
fn backward_accumulates_every_use_of_a_tensor() {
    let dev = Device::Cpu;
    let (xs, ys) = ([1.0f64, 2.0, 3.0], [4.0f64, 5.0, 8.0]);
    let x = candle_core::Var::new(&xs[..], &dev).unwrap();
    let y = candle_core::Var::new(&ys[..], &dev).unwrap();
    let (xt, yt) = (x.as_tensor(), y.as_tensor());
    let idx = Tensor::new(&[0u32, 0, 2], &dev).unwrap();
    let s = Tensor::new(2.0f64, &dev).unwrap();
    // L = Σ x·y + Σ (x − y) + Σ x/y + Σ (−y) + Σ (x + x) + Σ x[[0, 0, 2]] + Σ x·2 (broadcast)
    let terms = [
        (xt * yt).unwrap(),
        (xt - yt).unwrap(),
        (xt / yt).unwrap(),
        yt.neg().unwrap(),
        (xt + xt).unwrap(),
        xt.index_select(&idx, 0).unwrap(),
        xt.broadcast_mul(&s).unwrap(),
    ];
    let loss = terms
        .iter()
        .map(|t| t.sum_all().unwrap())
        .reduce(|a, b| (a + b).unwrap())
        .unwrap();
    let grads = loss.backward().unwrap();
    let gx = grads.get(xt).unwrap().to_vec1::<f64>().unwrap();
    let gy = grads.get(yt).unwrap().to_vec1::<f64>().unwrap();
    let picks = [2.0, 0.0, 1.0];
    for i in 0..3 {
        let (x, y) = (xs[i], ys[i]);
        let want_x = y + 1.0 + 1.0 / y + 2.0 + picks[i] + 2.0;
        let want_y = x - 1.0 - x / (y * y) - 1.0;
        assert!(
            (gx[i] - want_x).abs() < 1e-12,
            "dx[{i}] {} vs {want_x}",
            gx[i]
        );
        assert!(
            (gy[i] - want_y).abs() < 1e-12,
            "dy[{i}] {} vs {want_y}",
            gy[i]
        );
    }
}
