//! The trainer with resident experts: learning, gradient accumulation, exact resume, the segmented
//! backward and the rejection of non-finite steps.

use super::segmented::HEAD_CHUNK_ELEMS;
use super::{TokenBatch, Trainer};
use crate::test_util::{batch, rows, tensor_bits, train_cfg};
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor};
use tardbot_core::ModelConfig;
use tardbot_core::config::{Execution, TrainConfig};
use tardbot_model::named_vars;

#[test]
fn loss_falls_on_a_learnable_sequence() {
    let cfg = ModelConfig::from_preset("micro").unwrap();
    let mut t = Trainer::new(&cfg, &train_cfg(), &Execution::cpu(), 1, None).unwrap();
    let b = batch(&rows(4, 17, cfg.vocab_size as u32, 0));
    let first = t.train_step(std::slice::from_ref(&b)).unwrap();
    let mut last = first.clone();
    for _ in 0..29 {
        last = t.train_step(std::slice::from_ref(&b)).unwrap();
    }
    assert!(!last.rejected && t.step == 30);
    assert!(
        last.ce < first.ce * 0.5,
        "cross-entropy {} -> {}",
        first.ce,
        last.ce
    );
    assert_eq!(first.expert_counts.len(), cfg.n_moe_layers());
}

#[test]
fn two_micro_batches_give_the_gradients_of_one_batch() {
    // The router losses are batch statistics (load balance over the batch), so they legitimately
    // differ under accumulation; the cross-entropy gradients must not.
    let mut cfg = ModelConfig::from_preset("micro").unwrap();
    cfg.router_aux_loss_coef = 0.0;
    cfg.router_z_loss_coef = 0.0;
    let all = rows(4, 9, cfg.vocab_size as u32, 5);
    let t = Trainer::new(&cfg, &train_cfg(), &Execution::cpu(), 3, None).unwrap();
    let (whole, r1) = t.gradients(&[batch(&all)]).unwrap();
    let (split, r2) = t.gradients(&[batch(&all[..2]), batch(&all[2..])]).unwrap();
    let (whole, split) = (whole.unwrap(), split.unwrap());
    // Equal-sized micro-batches: the mean of the two means is the mean of the whole.
    assert!((r1.ce - r2.ce).abs() < 1e-5, "{} vs {}", r1.ce, r2.ce);
    let mut checked = 0;
    for (n, v) in named_vars(&t.varmap) {
        let (Some(a), Some(b)) = (whole.get(v.as_tensor()), split.get(v.as_tensor())) else {
            continue;
        };
        let scale = a
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .max(1e-6);
        let diff = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            diff <= 1e-4 * scale + 1e-7,
            "{n}: max |Δ| = {diff} (scale {scale})"
        );
        checked += 1;
    }
    assert!(checked > 20, "only {checked} tensors had gradients");
}

#[test]
fn save_and_load_resume_bit_identically() {
    let cfg = ModelConfig::from_preset("micro").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let batches: Vec<TokenBatch> = (0..4)
        .map(|i| batch(&rows(2, 9, cfg.vocab_size as u32, i)))
        .collect();
    let mut a = Trainer::new(&cfg, &train_cfg(), &Execution::cpu(), 7, None).unwrap();
    for b in &batches[..2] {
        a.train_step(std::slice::from_ref(b)).unwrap();
    }
    a.save(dir.path(), serde_json::json!({"cursor": 2}))
        .unwrap();
    let mut b = Trainer::new(&cfg, &train_cfg(), &Execution::cpu(), 99, None).unwrap();
    assert_eq!(b.load(dir.path()).unwrap()["cursor"], 2);
    assert_eq!(b.step, 2);
    for batch in &batches[2..] {
        let ra = a.train_step(std::slice::from_ref(batch)).unwrap();
        let rb = b.train_step(std::slice::from_ref(batch)).unwrap();
        assert_eq!(ra.loss.to_bits(), rb.loss.to_bits());
    }
    for ((n, x), (_, y)) in named_vars(&a.varmap)
        .iter()
        .zip(named_vars(&b.varmap).iter())
    {
        let x = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let y = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(
            x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()),
            "{n} differs"
        );
    }
}

fn weights_bits(t: &Trainer) -> Vec<(String, Vec<u32>)> {
    named_vars(&t.varmap)
        .into_iter()
        .map(|(n, v)| (n, tensor_bits(v.as_tensor())))
        .collect()
}

/// Largest |a − b| over all parameter gradients, relative to the largest |a| of that tensor;
/// also checks both stores hold the same tensors.
fn max_rel_grad_diff(t: &Trainer, a: &GradStore, b: &GradStore) -> (f32, usize) {
    let (mut worst, mut n) = (0f32, 0);
    for (name, v) in named_vars(&t.varmap) {
        match (a.get(v.as_tensor()), b.get(v.as_tensor())) {
            (Some(x), Some(y)) => {
                let scale = x
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
                    .max(1e-12);
                let d = (x - y)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                worst = worst.max(d / scale);
                n += 1;
            }
            (None, None) => {}
            _ => panic!("{name}: gradient in one store only"),
        }
    }
    (worst, n)
}

/// Segmented backward (activation checkpointing) gives the gradients of the whole-graph
/// backward: same function, same routing; only float summation order may differ.
#[test]
fn activation_checkpointing_gives_the_same_gradients() {
    let cfg = ModelConfig::from_preset("micro").unwrap();
    let mut plain = Trainer::new(&cfg, &train_cfg(), &Execution::cpu(), 5, None).unwrap();
    // Packed documents and a loss mask, as the fine-tuning stages use them.
    let mut b = batch(&rows(3, 11, cfg.vocab_size as u32, 2));
    let docs: Vec<u32> = (0..30).map(|i| (i % 10 >= 6) as u32).collect();
    b.doc_ids = Some(Tensor::from_vec(docs, (3, 10), &Device::Cpu).unwrap());
    let mask: Vec<f32> = (0..30).map(|i| (i % 4 != 0) as u32 as f32).collect();
    b.loss_mask = Some(Tensor::from_vec(mask, (3, 10), &Device::Cpu).unwrap());
    let two = [b, batch(&rows(3, 11, cfg.vocab_size as u32, 9))];
    // One LM-head chunk per micro-batch, then one per sequence (of 3, one fully masked).
    let mut masked_row = two[0].loss_mask.clone().unwrap().to_vec2::<f32>().unwrap();
    masked_row[1].iter_mut().for_each(|v| *v = 0.0);
    let mut third = batch(&rows(3, 11, cfg.vocab_size as u32, 2));
    third.doc_ids = two[0].doc_ids.clone();
    third.loss_mask = Some(Tensor::new(masked_row, &Device::Cpu).unwrap());
    for (micro, chunk) in [
        (&two[..1], HEAD_CHUNK_ELEMS),
        (&two[..], HEAD_CHUNK_ELEMS),
        (&two[..], 10 * cfg.vocab_size),
        (std::slice::from_ref(&third), 10 * cfg.vocab_size),
    ] {
        plain.head_chunk_elems = chunk;
        plain.activation_checkpointing = false;
        let (ga, ra) = plain.gradients(micro).unwrap();
        plain.activation_checkpointing = true;
        let (gb, rb) = plain.gradients(micro).unwrap();
        let (worst, n) = max_rel_grad_diff(&plain, &ga.unwrap(), &gb.unwrap());
        eprintln!(
            "{} micro-batch(es), head chunks of {chunk} logits: {n} gradient tensors, max relative difference {worst:e}",
            micro.len()
        );
        assert_eq!(n, named_vars(&plain.varmap).len());
        assert!(worst < 1e-5, "max relative gradient difference {worst}");
        assert!((ra.loss - rb.loss).abs() < 1e-6 * ra.loss.abs().max(1.0));
        assert!((ra.aux_loss - rb.aux_loss).abs() < 1e-6);
        assert_eq!(ra.expert_counts, rb.expert_counts);
    }

    // And whole steps: weights after 3 steps agree to float tolerance.
    let ckpt = Execution {
        activation_checkpointing: true,
        ..Execution::cpu()
    };
    let mut a = Trainer::new(&cfg, &train_cfg(), &Execution::cpu(), 5, None).unwrap();
    let mut c = Trainer::new(&cfg, &train_cfg(), &ckpt, 5, None).unwrap();
    assert!(c.activation_checkpointing && !a.activation_checkpointing);
    for _ in 0..3 {
        let ra = a.train_step(&two).unwrap();
        let rc = c.train_step(&two).unwrap();
        assert!(!ra.rejected && !rc.rejected);
        assert!((ra.grad_norm - rc.grad_norm).abs() < 1e-5 * ra.grad_norm);
    }
    for ((n, x), (_, y)) in named_vars(&a.varmap).iter().zip(&named_vars(&c.varmap)) {
        let d = (x.as_tensor() - y.as_tensor())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-5, "{n}: weights differ by {d}");
    }
}

/// A non-finite loss rejects the step: weights, optimizer state and counters stay as they were,
/// so the next good step is the one an uninterrupted run would have taken.
#[test]
fn non_finite_loss_is_rejected_and_changes_nothing() {
    let cfg = ModelConfig::from_preset("micro").unwrap();
    let good = batch(&rows(2, 9, cfg.vocab_size as u32, 1));
    for checkpointing in [false, true] {
        let tc = train_cfg();
        let exec = Execution {
            activation_checkpointing: checkpointing,
            ..Execution::cpu()
        };
        let mut t = Trainer::new(&cfg, &tc, &exec, 4, None).unwrap();
        let mut twin = Trainer::new(&cfg, &tc, &exec, 4, None).unwrap();
        for tr in [&mut t, &mut twin] {
            tr.train_step(std::slice::from_ref(&good)).unwrap();
        }
        // Poison one weight every token passes through.
        let (_, norm) = named_vars(&t.varmap)
            .into_iter()
            .find(|(n, _)| n == "final_norm.weight")
            .unwrap();
        let saved = norm.as_tensor().copy().unwrap();
        let mut poisoned = saved.to_vec1::<f32>().unwrap();
        poisoned[0] = f32::NAN;
        norm.set(&Tensor::new(poisoned.as_slice(), &Device::Cpu).unwrap())
            .unwrap();
        let before = weights_bits(&t);
        let r = t.train_step(std::slice::from_ref(&good)).unwrap();
        assert!(
            r.rejected,
            "checkpointing {checkpointing}: step not rejected"
        );
        assert!(!r.loss.is_finite());
        assert_eq!((t.step, t.tokens), (1, twin.tokens));
        assert_eq!(
            weights_bits(&t),
            before,
            "weights changed by a rejected step"
        );

        // Restored weight: the next step equals the twin's, bit for bit (moments untouched).
        norm.set(&saved).unwrap();
        let ra = t.train_step(std::slice::from_ref(&good)).unwrap();
        let rb = twin.train_step(std::slice::from_ref(&good)).unwrap();
        assert!(!ra.rejected);
        assert_eq!(ra.loss.to_bits(), rb.loss.to_bits());
        assert_eq!(weights_bits(&t), weights_bits(&twin));
    }
    // An infinite learning rate is refused by the config check; a huge one blows the loss up
    // and the next step is rejected rather than applied.
    let huge = TrainConfig {
        lr: 1e30,
        grad_clip: 0.0,
        ..train_cfg()
    };
    let mut t = Trainer::new(&cfg, &huge, &Execution::cpu(), 4, None).unwrap();
    let mut rejected = false;
    for _ in 0..5 {
        let before = weights_bits(&t);
        let steps = t.step;
        let r = t.train_step(std::slice::from_ref(&good)).unwrap();
        if r.rejected {
            assert_eq!(weights_bits(&t), before);
            assert_eq!(t.step, steps);
            rejected = true;
            break;
        }
    }
    assert!(
        rejected,
        "a 1e30 learning rate never produced a non-finite step"
    );
}

/// `[execution] threads` stays out of the stages' fingerprints because the bits do not depend on it:
/// three steps of `tiny` (matmuls large enough for gemm to split, the fused kernels' row chunks, the
/// optimizer) in pools of 1, 2 and 3 threads give the same losses, gradient norms and weights, bit
/// for bit, with and without activation checkpointing.
#[test]
fn results_do_not_depend_on_the_thread_count() {
    let cfg = ModelConfig::from_preset("tiny").unwrap();
    let vocab = cfg.vocab_size as u32;
    let batches: Vec<TokenBatch> = (0..3).map(|i| batch(&rows(4, 65, vocab, i))).collect();
    for checkpointing in [false, true] {
        let exec = Execution {
            activation_checkpointing: checkpointing,
            ..Execution::cpu()
        };
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let mut t = Trainer::new(&cfg, &train_cfg(), &exec, 9, None).unwrap();
                let reports: Vec<(u64, u64)> = batches
                    .iter()
                    .map(|b| {
                        let r = t.train_step(std::slice::from_ref(b)).unwrap();
                        (r.loss.to_bits(), r.grad_norm.to_bits())
                    })
                    .collect();
                let weights = weights_bits(&t);
                (reports, weights)
            })
        };
        let one = run(1);
        for threads in [2, 3] {
            let other = run(threads);
            assert_eq!(
                one.0, other.0,
                "losses/gradient norms differ on {threads} threads (checkpointing {checkpointing})"
            );
            for ((n, a), (_, b)) in one.1.iter().zip(&other.1) {
                assert!(
                    a == b,
                    "{n}: weights differ on {threads} threads (checkpointing {checkpointing})"
                );
            }
        }
    }
}

/// `[execution] activation_checkpointing` stays out of the fingerprints because the segmented backward
/// trains the same bits: three steps of `tiny` with it on and off end with the same gradient norms and
/// weights, bit for bit. The reported loss is summed over LM-head chunks under checkpointing, so it
/// agrees to f32 rounding only (the weights, the stage's artifact, do not depend on it).
#[test]
fn activation_checkpointing_trains_the_same_bits() {
    let cfg = ModelConfig::from_preset("tiny").unwrap();
    let vocab = cfg.vocab_size as u32;
    let batches: Vec<TokenBatch> = (0..3).map(|i| batch(&rows(4, 65, vocab, i))).collect();
    let run = |checkpointing: bool| {
        let exec = Execution {
            activation_checkpointing: checkpointing,
            ..Execution::cpu()
        };
        let mut t = Trainer::new(&cfg, &train_cfg(), &exec, 9, None).unwrap();
        let reports: Vec<(f64, u64)> = batches
            .iter()
            .map(|b| {
                let r = t.train_step(std::slice::from_ref(b)).unwrap();
                (r.loss, r.grad_norm.to_bits())
            })
            .collect();
        (reports, weights_bits(&t))
    };
    let (plain, segmented) = (run(false), run(true));
    for ((n, a), (_, b)) in plain.1.iter().zip(&segmented.1) {
        assert!(a == b, "{n}: weights differ with activation checkpointing");
    }
    for ((la, ga), (lb, gb)) in plain.0.iter().zip(&segmented.0) {
        assert_eq!(ga, gb, "gradient norms");
        assert!((la - lb).abs() <= 1e-6 * la.abs(), "loss {la} vs {lb}");
    }
}
