//! Batched decoding ([`TardBot::forward_decode_batch`]) against decoding each sequence alone with
//! [`TardBot::forward_cached`]: logits, greedy tokens and the caches left behind; and its throughput
//! (an ignored benchmark).

use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use tardbot_core::ModelConfig;

use crate::test_util::{ids, max_abs_diff_as_f64, micro};
use crate::*;

/// `tiny` with a window of 32 (stride 8), so that a 40-token prompt wraps the ring; its widths are
/// multiples of 32, so int8 quantises every linear layer.
fn small_tiny() -> ModelConfig {
    let mut c = ModelConfig::from_preset("tiny").unwrap();
    c.window = 32;
    c.window_stride = 8;
    c
}

fn prompt(cfg: &ModelConfig, len: usize, seed: u64) -> Vec<u32> {
    ids(cfg, 1, len, seed)
        .flatten_all()
        .unwrap()
        .to_vec1::<u32>()
        .unwrap()
}

fn argmax(row: &Tensor) -> u32 {
    row.flatten_all()
        .unwrap()
        .argmax(0)
        .unwrap()
        .to_scalar::<u32>()
        .unwrap()
}

fn max_abs(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// A cache prefilled with `prompt` as `generate` feeds it (chunks of `window_stride`), and the greedy
/// next token.
fn prefill(model: &TardBot, prompt: &[u32]) -> (KvCache, u32) {
    let mut cache = model.new_cache();
    let mut last = None;
    for c in prompt.chunks(model.config().window_stride.max(1)) {
        let ids = Tensor::new(c, model.device())
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        last = Some(model.forward_cached(&ids, &mut cache).unwrap());
    }
    let last = last.unwrap();
    let t = last.dim(1).unwrap();
    (cache, argmax(&last.narrow(1, t - 1, 1).unwrap()))
}

/// One sequence decoded two ways. The two caches are prefilled separately: a `KvCache` clone shares
/// its key/value storage with the original, and decoding writes into it in place.
struct Seq {
    alone: KvCache,
    batched: KvCache,
    next: u32,
}

impl Seq {
    fn new(model: &TardBot, prompt: &[u32]) -> Seq {
        let (alone, next) = prefill(model, prompt);
        let (batched, again) = prefill(model, prompt);
        assert_eq!(next, again);
        Seq {
            alone,
            batched,
            next,
        }
    }

    /// A sequence with empty caches whose first token is `first` (it joins a batch unprefilled).
    fn fresh(first: u32) -> Seq {
        Seq {
            alone: KvCache::default(),
            batched: KvCache::default(),
            next: first,
        }
    }
}

/// Both caches hold the same positions and, within `tol` relative, the same keys and values.
fn check_caches(a: &KvCache, b: &KvCache, tol: f64) {
    assert_eq!(a.pos, b.pos);
    assert_eq!(a.layers.len(), b.layers.len());
    for (la, lb) in a.layers.iter().zip(&b.layers) {
        let (ka, va, pa) = la.parts();
        let (kb, vb, pb) = lb.parts();
        assert_eq!(pa, pb, "slot positions");
        for (x, y) in [(ka, kb), (va, vb)] {
            let (x, y) = (x.unwrap(), y.unwrap());
            assert_eq!(x.dims(), y.dims());
            let d = max_abs_diff_as_f64(x, y);
            assert!(d <= tol * max_abs(x), "cached keys/values differ by {d}");
        }
    }
}

/// The largest |Δlogit| seen and the largest relative one (over max |logit| of that row).
#[derive(Default, Debug)]
struct Worst {
    abs: f64,
    rel: f64,
}

/// One step of the sequences `active` (indices into `seqs`, in batch order): batched, and each alone.
/// Logits must agree within `tol` relative to the row's largest logit, greedy tokens exactly, caches
/// as [`check_caches`]. Every sequence continues with its greedy token.
fn step(model: &TardBot, seqs: &mut [Seq], active: &[usize], tol: f64, worst: &mut Worst) {
    let dev = model.device();
    let tokens: Vec<u32> = active.iter().map(|&i| seqs[i].next).collect();
    let mut taken: Vec<KvCache> = active
        .iter()
        .map(|&i| std::mem::take(&mut seqs[i].batched))
        .collect();
    let logits = {
        let mut refs: Vec<&mut KvCache> = taken.iter_mut().collect();
        model.forward_decode_batch(&tokens, &mut refs).unwrap()
    };
    for (&i, c) in active.iter().zip(taken) {
        seqs[i].batched = c;
    }
    assert_eq!(logits.dims(), [active.len(), model.config().vocab_size]);
    for (r, &i) in active.iter().enumerate() {
        let s = &mut seqs[i];
        let ids = Tensor::new(&[tokens[r]], dev)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let alone = model
            .forward_cached(&ids, &mut s.alone)
            .unwrap()
            .flatten_all()
            .unwrap();
        let row = logits.get(r).unwrap();
        let (d, scale) = (max_abs_diff_as_f64(&alone, &row), max_abs(&alone));
        assert!(
            d <= tol * scale,
            "sequence {i} at position {}: |Δlogit| {d}, max |logit| {scale}",
            s.alone.pos - 1
        );
        worst.abs = worst.abs.max(d);
        worst.rel = worst.rel.max(d / scale);
        let (a, b) = (argmax(&alone), argmax(&row));
        assert_eq!(a, b, "greedy token of sequence {i}");
        check_caches(&s.alone, &s.batched, tol);
        s.next = b;
    }
}

/// Prompts of lengths `lens` (one of 1 token, one longer than the window so that its ring wrapped)
/// decoded `steps` steps all together, batched against alone.
fn batched_equals_alone(model: &TardBot, lens: &[usize], steps: usize, tol: f64) -> Worst {
    let cfg = model.config();
    assert!(lens.contains(&1) && lens.iter().any(|&l| l > cfg.window));
    let mut seqs: Vec<Seq> = lens
        .iter()
        .enumerate()
        .map(|(i, &l)| Seq::new(model, &prompt(cfg, l, 100 + i as u64)))
        .collect();
    let all: Vec<usize> = (0..seqs.len()).collect();
    let mut worst = Worst::default();
    for _ in 0..steps {
        step(model, &mut seqs, &all, tol, &mut worst);
    }
    worst
}

#[test]
fn batched_decode_equals_decoding_alone() {
    let dev = Device::Cpu;
    // micro: window 4, f64 on the training kernels (exact up to summation order) and f32 fused.
    let m = micro();
    for (dtype, fused, tol) in [(DType::F64, false, 1e-10), (DType::F32, true, 1e-4)] {
        let (model, _) = TardBot::new_random(&m, 3, dtype, &dev).unwrap();
        let model = model.with_fused_kernels(fused);
        let w = batched_equals_alone(&model, &[1, 3, 9, 6], 12, tol);
        eprintln!("micro {dtype:?} fused {fused}: {w:?}");
    }
    // f16 takes the candle-op attention of devices without the decode kernel (CUDA, Metal).
    let (model, _) = TardBot::new_random(&m, 3, DType::F16, &dev).unwrap();
    let w = batched_equals_alone(&model.with_fused_kernels(true), &[1, 3, 9, 6], 12, 1e-2);
    eprintln!("micro f16 fused (candle-op attention): {w:?}");
    // tiny (window 32) in f32: unfused as `ChatModel` loads it, and fused.
    let t = small_tiny();
    let (model, _) = TardBot::new_random(&t, 5, DType::F32, &dev).unwrap();
    for fused in [false, true] {
        let model = model.clone().with_fused_kernels(fused);
        let w = batched_equals_alone(&model, &[7, 1, 45, 20, 32], 12, 1e-4);
        eprintln!("tiny f32 fused {fused}: {w:?}");
    }
}

#[test]
fn batched_decode_equals_decoding_alone_int8() {
    let t = small_tiny();
    let (model, _) = TardBot::new_random(&t, 6, DType::F32, &Device::Cpu).unwrap();
    let q8 = model.quantize_int8().unwrap();
    assert!(q8.lm_head.is_quantized());
    let w = batched_equals_alone(&q8, &[1, 45, 9, 20], 12, 1e-4);
    eprintln!("tiny int8: {w:?}");
}

/// Experts computed from an expert store (the training layout; inference loads resident experts, but
/// the MoE layer is the same code either way).
#[test]
fn batched_decode_with_expert_store() {
    let cfg = micro();
    let dir = tempfile::tempdir().unwrap();
    let store = init_expert_store(&dir.path().join("experts.store"), &cfg, 4).unwrap();
    store.set_max_resident(1);
    let vm = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let model = TardBot::with_expert_store(&cfg, vb, Arc::new(store)).unwrap();
    init_weights(&vm, &cfg, 4).unwrap();
    let w = batched_equals_alone(&model, &[5, 1, 11], 10, 1e-4);
    eprintln!("micro f32 expert store: {w:?}");
}

/// Sequences join and leave between steps, in any batch order, each at its own position; one joins
/// with an empty cache (its first token decoded in the batch), one rejoins after sitting out.
#[test]
fn sequences_join_and_leave_the_batch() {
    let cfg = micro();
    let (model, _) = TardBot::new_random(&cfg, 9, DType::F64, &Device::Cpu).unwrap();
    let (a, b, c, d, e) = (0, 1, 2, 3, 4);
    let mut seqs: Vec<Seq> = [7, 2, 1]
        .iter()
        .enumerate()
        .map(|(i, &l)| Seq::new(&model, &prompt(&cfg, l, 200 + i as u64)))
        .collect();
    let mut worst = Worst::default();
    let tol = 1e-10;
    let mut run = |seqs: &mut Vec<Seq>, active: &[usize], steps: usize| {
        for _ in 0..steps {
            step(&model, seqs, active, tol, &mut worst);
        }
    };
    run(&mut seqs, &[a, b, c], 4);
    run(&mut seqs, &[a, c], 4);
    seqs.push(Seq::new(&model, &prompt(&cfg, 10, 300)));
    run(&mut seqs, &[c, a, d], 4);
    seqs.push(Seq::fresh(5));
    run(&mut seqs, &[d, e, a], 3);
    run(&mut seqs, &[b, d, e, a, c], 4);
    let pos: Vec<usize> = seqs.iter().map(|s| s.batched.pos).collect();
    assert_eq!(pos, [7 + 19, 2 + 8, 1 + 16, 10 + 11, 7]);
    eprintln!("join/leave micro f64: {worst:?}");
}

#[test]
fn decode_batch_rejects_bad_input() {
    let cfg = micro();
    let (model, _) = TardBot::new_random(&cfg, 1, DType::F32, &Device::Cpu).unwrap();
    let (mut c1, _) = prefill(&model, &[1, 2, 3]);
    let (mut c2, _) = prefill(&model, &[4, 5]);
    let input_err = |r: Result<Tensor>| matches!(r, Err(ModelError::Input(_)));
    assert!(input_err(model.forward_decode_batch(&[], &mut [])));
    assert!(input_err(model.forward_decode_batch(&[], &mut [&mut c1])));
    assert!(input_err(
        model.forward_decode_batch(&[1, 2], &mut [&mut c1])
    ));
    assert!(input_err(
        model.forward_decode_batch(&[1], &mut [&mut c1, &mut c2])
    ));
    // A token outside the vocabulary is refused before any cache is touched.
    let before: Vec<Option<usize>> = c1.layers[0].parts().2.to_vec();
    let bad = cfg.vocab_size as u32;
    assert!(input_err(
        model.forward_decode_batch(&[1, bad], &mut [&mut c1, &mut c2])
    ));
    assert_eq!((c1.pos, c2.pos), (3, 2));
    assert_eq!(c1.layers[0].parts().2, before.as_slice());
    // And the caches still work.
    let l = model
        .forward_decode_batch(&[1, 2], &mut [&mut c1, &mut c2])
        .unwrap();
    assert_eq!(l.dims(), [2, cfg.vocab_size]);
    assert_eq!((c1.pos, c2.pos), (4, 3));
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Decode tokens/s of n sequences batched ([`TardBot::forward_decode_batch`]) against the same
/// sequences decoded one at a time ([`TardBot::forward_cached`]), fp32 fused, random weights, prompts
/// of 16–63 tokens (`TARDBOT_BENCH_PROMPT=b`: b to b + 47). Rounds alternate which mode goes first (the machine is shared); both modes advance
/// the same caches, so they decode at the same positions. Medians over rounds.
/// `TARDBOT_BENCH_ROUNDS=5 cargo test --release -p tardbot-model -- --ignored --nocapture bench_decode_batch`
#[test]
#[ignore = "benchmark: decode tokens/s batched vs one at a time, tiny and mac_nano"]
fn bench_decode_batch() {
    let rounds: usize = std::env::var("TARDBOT_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let presets = std::env::var("TARDBOT_BENCH_PRESETS").unwrap_or("tiny,mac_nano".into());
    // Sequence i's prompt: `base + (7 i mod 48)` tokens.
    let base: usize = std::env::var("TARDBOT_BENCH_PROMPT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(16);
    println!(
        "{:<9} {:>3} {:>14} {:>14} {:>8}  ({} threads, {rounds} rounds, medians, prompts {base}+)",
        "preset",
        "n",
        "batched tok/s",
        "one-by-one",
        "ratio",
        rayon::current_num_threads()
    );
    for preset in presets.split(',') {
        let cfg = ModelConfig::from_preset(preset).unwrap();
        let (model, _) = TardBot::new_random(&cfg, 0, DType::F32, &Device::Cpu).unwrap();
        let model = model.with_fused_kernels(true);
        let dev = model.device().clone();
        // Tokens per round and mode: about a second or two of one-by-one decoding.
        let per_round = if preset == "tiny" { 512 } else { 64 };
        for n in [1usize, 8, 32] {
            let mut caches: Vec<KvCache> = (0..n)
                .map(|i| prefill(&model, &prompt(&cfg, base + (i * 7) % 48, i as u64)).0)
                .collect();
            let steps = (per_round / n).max(1);
            let mut tok = 0u32;
            let mut next = |n: usize| -> Vec<u32> {
                (0..n)
                    .map(|_| {
                        tok = (tok + 7919) % cfg.vocab_size as u32;
                        tok
                    })
                    .collect()
            };
            let mut batched = |caches: &mut Vec<KvCache>, steps: usize| {
                let t0 = Instant::now();
                for _ in 0..steps {
                    let toks = next(n);
                    let mut refs: Vec<&mut KvCache> = caches.iter_mut().collect();
                    model.forward_decode_batch(&toks, &mut refs).unwrap();
                }
                (steps * n) as f64 / t0.elapsed().as_secs_f64()
            };
            let alone = |caches: &mut Vec<KvCache>, steps: usize| {
                let t0 = Instant::now();
                for s in 0..steps {
                    for (i, c) in caches.iter_mut().enumerate() {
                        let t = ((s * 31 + i * 17) % cfg.vocab_size) as u32;
                        let ids = Tensor::new(&[t], &dev).unwrap().unsqueeze(0).unwrap();
                        model.forward_cached(&ids, c).unwrap();
                    }
                }
                (steps * n) as f64 / t0.elapsed().as_secs_f64()
            };
            // Warm-up: first-touch allocations, thread pool.
            batched(&mut caches, 1);
            alone(&mut caches, 1);
            let (mut b, mut a, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
            for r in 0..rounds {
                let (x, y) = if r % 2 == 0 {
                    let x = batched(&mut caches, steps);
                    (x, alone(&mut caches, steps))
                } else {
                    let y = alone(&mut caches, steps);
                    (batched(&mut caches, steps), y)
                };
                b.push(x);
                a.push(y);
                ratio.push(x / y);
            }
            println!(
                "{preset:<9} {n:>3} {:>14.1} {:>14.1} {:>7.2}x",
                median(&mut b),
                median(&mut a),
                median(&mut ratio)
            );
        }
    }
}
