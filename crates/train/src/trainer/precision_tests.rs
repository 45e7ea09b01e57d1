//! Mixed precision on the CPU (candle computes bf16/f16 itself there): bf16 and f16 loss curves near
//! f32's, every parameter reached by a gradient, the f16 loss scaler (overflow skips the step and
//! halves the scale, clean steps grow it) and exact resume.

use super::{TokenBatch, Trainer};
use crate::test_util::{batch, rows, tensor_bits, train_cfg};
use tardbot_core::ModelConfig;
use tardbot_core::config::{Execution, Precision};
use tardbot_model::named_vars;

fn exec(precision: Precision, activation_checkpointing: bool) -> Execution {
    Execution {
        precision,
        activation_checkpointing,
        ..Execution::cpu()
    }
}

fn weights_bits(t: &Trainer) -> Vec<(String, Vec<u32>)> {
    named_vars(&t.varmap)
        .into_iter()
        .map(|(n, v)| (n, tensor_bits(v.as_tensor())))
        .collect()
}

/// Batches of a learnable sequence (the loss falls quickly), cycled.
fn learnable(cfg: &ModelConfig) -> Vec<TokenBatch> {
    (0..4)
        .map(|i| batch(&rows(4, 17, cfg.vocab_size as u32, i)))
        .collect()
}

/// Cross-entropy per applied step of `steps` steps from the same seed and data, and the steps the
/// f16 loss scaler skipped (each retried on the same batch, as the data would come again).
fn curve(cfg: &ModelConfig, exec: &Execution, steps: usize) -> (Vec<f64>, usize) {
    let mut t = Trainer::new(cfg, &train_cfg(), exec, 11, None).unwrap();
    let data = learnable(cfg);
    let (mut ce, mut skipped) = (vec![], 0);
    while (t.step as usize) < steps {
        let i = t.step as usize;
        let r = t
            .train_step(std::slice::from_ref(&data[i % data.len()]))
            .unwrap();
        if r.rejected {
            assert!(r.overflow, "{:?} step {i} rejected: {r:?}", exec.precision);
            skipped += 1;
            assert!(skipped < 20, "the loss scaler never recovered");
        } else {
            ce.push(r.ce);
        }
    }
    (ce, skipped)
}

/// The tolerance of a mixed-precision loss curve against f32's: over 30 steps of `micro` at lr 1e-2,
/// |ce(bf16 or f16) − ce(f32)| ≤ 0.05 nats at every step (about 1% of the starting loss, 3.6; bf16
/// keeps 8 significant bits, ~0.4% per rounding). Measured here (max over the 30 steps): bf16 0.0081
/// nats (0.0133 with the segmented backward), f16 0.0058 (0.0039), no overflow skip at f16's initial
/// scale 2¹⁶; all four end within 0.002 nats of f32's 1.022.
const CURVE_TOLERANCE: f64 = 0.05;

#[test]
fn mixed_precision_loss_curves_stay_near_f32() {
    let cfg = ModelConfig::from_preset("micro").unwrap();
    let steps = 30;
    let (reference, _) = curve(&cfg, &exec(Precision::F32, false), steps);
    for precision in [Precision::Bf16, Precision::F16] {
        for checkpointing in [false, true] {
            let (got, skipped) = curve(&cfg, &exec(precision, checkpointing), steps);
            let gap = reference
                .iter()
                .zip(&got)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            eprintln!(
                "{} (activation checkpointing {checkpointing}): max |Δce| over {steps} steps = {gap:.4} nats; \
                 f32 {:.3} -> {:.3}, {} {:.3} -> {:.3}; {skipped} overflow skips",
                precision.name(),
                reference[0],
                reference[steps - 1],
                precision.name(),
                got[0],
                got[steps - 1]
            );
            assert!(
                gap <= CURVE_TOLERANCE,
                "{}: the loss curve is {gap} nats from f32's",
                precision.name()
            );
            assert!(
                got[steps - 1] < 0.5 * got[0],
                "{} did not learn",
                precision.name()
            );
        }
    }
}

/// The fused kernels do not run in bf16/f16; the compositions that do must pass gradients to every
/// parameter (candle's fused rms_norm/softmax/rope would silently drop them), in f32 masters.
#[test]
fn every_master_weight_gets_an_f32_gradient_under_bf16() {
    let cfg = ModelConfig::from_preset("micro").unwrap();
    let t = Trainer::new(&cfg, &train_cfg(), &exec(Precision::Bf16, false), 3, None).unwrap();
    assert_eq!(t.model.dtype(), candle_core::DType::BF16);
    let (grads, _) = t.gradients(&learnable(&cfg)[..1]).unwrap();
    let grads = grads.unwrap();
    for (name, v) in named_vars(&t.varmap) {
        assert_eq!(v.dtype(), candle_core::DType::F32, "{name}: master not f32");
        let g = grads
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient"));
        assert_eq!(g.dtype(), candle_core::DType::F32, "{name}");
        let norm = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            norm > 0.0 && norm.is_finite(),
            "{name}: gradient norm² {norm}"
        );
    }
}

/// A forced overflow (a loss scale of 2⁴⁰: the scaled gradients exceed f16's 65504) skips the step:
/// weights, moments and counters unchanged, the scale halved. The next clean step is then the one a
/// twin that never overflowed takes, bit for bit.
#[test]
fn f16_overflow_skips_the_step_and_lowers_the_scale() {
    let cfg = ModelConfig::from_preset("micro").unwrap();
    let data = learnable(&cfg);
    for checkpointing in [false, true] {
        let e = exec(Precision::F16, checkpointing);
        let mut t = Trainer::new(&cfg, &train_cfg(), &e, 5, None).unwrap();
        let mut twin = Trainer::new(&cfg, &train_cfg(), &e, 5, None).unwrap();
        for tr in [&mut t, &mut twin] {
            let r = tr.train_step(&data[..1]).unwrap();
            assert!(!r.rejected && r.loss_scale == Some(65536.0));
        }
        let before = weights_bits(&t);
        let huge = 2f64.powi(40);
        t.loss_scaler_mut().unwrap().scale = huge;
        let r = t.train_step(&data[1..2]).unwrap();
        assert!(
            r.rejected && r.overflow,
            "checkpointing {checkpointing}: {r:?}"
        );
        assert_eq!(r.loss_scale, Some(huge));
        assert!(r.loss.is_finite(), "the loss itself is not scaled");
        assert_eq!(t.loss_scaler().unwrap().scale, huge / 2.0);
        assert_eq!((t.step, t.tokens), (twin.step, twin.tokens));
        assert_eq!(weights_bits(&t), before, "a skipped step changed weights");

        t.loss_scaler_mut().unwrap().scale = twin.loss_scaler().unwrap().scale;
        let ra = t.train_step(&data[1..2]).unwrap();
        let rb = twin.train_step(&data[1..2]).unwrap();
        assert!(!ra.rejected && !ra.overflow);
        assert_eq!(ra.loss.to_bits(), rb.loss.to_bits());
        assert_eq!(ra.grad_norm.to_bits(), rb.grad_norm.to_bits());
        assert_eq!(weights_bits(&t), weights_bits(&twin));
    }
}

/// Clean steps grow the scale: ×2 after every `growth_interval` of them. Unscaling is exact, so the
/// step's gradient norm does not depend on the scale (2¹⁰ against 2¹⁶ here).
#[test]
fn f16_scale_grows_after_clean_steps() {
    let cfg = ModelConfig::from_preset("micro").unwrap();
    let data = learnable(&cfg);
    let e = exec(Precision::F16, false);
    let mut t = Trainer::new(&cfg, &train_cfg(), &e, 5, None).unwrap();
    let mut other = Trainer::new(&cfg, &train_cfg(), &e, 5, None).unwrap();
    *t.loss_scaler_mut().unwrap() = crate::LossScaler::new(1024.0, 2);
    let mut scales = vec![];
    for (i, b) in data.iter().enumerate() {
        let r = t.train_step(std::slice::from_ref(b)).unwrap();
        assert!(
            !r.rejected,
            "step {i} overflowed at scale {:?}",
            r.loss_scale
        );
        scales.push(r.loss_scale.unwrap());
        if i == 0 {
            let ro = other.train_step(std::slice::from_ref(b)).unwrap();
            assert_eq!(ro.loss_scale, Some(65536.0));
            let rel = (ro.grad_norm - r.grad_norm).abs() / r.grad_norm;
            assert!(
                rel < 1e-2,
                "gradient norm {} vs {}",
                r.grad_norm,
                ro.grad_norm
            );
        }
    }
    assert_eq!(scales, [1024.0, 1024.0, 2048.0, 2048.0]);
    assert_eq!(t.loss_scaler().unwrap().scale, 4096.0);
    // bf16 has f32's exponent range: no scaler.
    let b = Trainer::new(&cfg, &train_cfg(), &exec(Precision::Bf16, false), 5, None).unwrap();
    assert!(b.loss_scaler().is_none());
}

/// Save after 2 steps, load into a fresh trainer, 3 more steps each: the same losses, gradient norms,
/// loss scales and master weights, bit for bit (f16 with a growth interval of 2, so the scale doubles
/// after the checkpoint, and one forced overflow before it).
#[test]
fn mixed_precision_resume_is_bit_identical() {
    let cfg = ModelConfig::from_preset("micro").unwrap();
    let data = learnable(&cfg);
    for precision in [Precision::Bf16, Precision::F16] {
        let dir = tempfile::tempdir().unwrap();
        let e = exec(precision, false);
        let mut a = Trainer::new(&cfg, &train_cfg(), &e, 7, None).unwrap();
        if let Some(s) = a.loss_scaler_mut() {
            *s = crate::LossScaler::new(2f64.powi(40), 2);
            assert!(a.train_step(&data[..1]).unwrap().overflow);
            a.loss_scaler_mut().unwrap().scale = 2048.0;
        }
        for b in &data[..2] {
            assert!(!a.train_step(std::slice::from_ref(b)).unwrap().rejected);
        }
        a.save(dir.path(), serde_json::json!({"cursor": 2}))
            .unwrap();
        let mut b = Trainer::new(&cfg, &train_cfg(), &e, 99, None).unwrap();
        assert_eq!(b.load(dir.path()).unwrap()["cursor"], 2);
        assert_eq!(b.step, 2);
        assert_eq!(a.loss_scaler(), b.loss_scaler());
        for batch in data[2..].iter().chain(&data[..1]) {
            let ra = a.train_step(std::slice::from_ref(batch)).unwrap();
            let rb = b.train_step(std::slice::from_ref(batch)).unwrap();
            assert!(!ra.rejected);
            assert_eq!(ra.loss.to_bits(), rb.loss.to_bits(), "{}", precision.name());
            assert_eq!(ra.grad_norm.to_bits(), rb.grad_norm.to_bits());
            assert_eq!(ra.loss_scale, rb.loss_scale);
        }
        if precision == Precision::F16 {
            assert_eq!(a.loss_scaler().unwrap().scale, 8192.0);
        }
        assert_eq!(weights_bits(&a), weights_bits(&b), "{}", precision.name());
    }
}

/// An f32 checkpoint has no loss-scaler state: an f16 trainer refuses it rather than guess a scale.
#[test]
fn an_f16_trainer_refuses_a_checkpoint_without_scaler_state() {
    let cfg = ModelConfig::from_preset("micro").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let a = Trainer::new(&cfg, &train_cfg(), &Execution::cpu(), 7, None).unwrap();
    a.save(dir.path(), serde_json::json!({})).unwrap();
    let mut b = Trainer::new(&cfg, &train_cfg(), &exec(Precision::F16, false), 7, None).unwrap();
    let err = b.load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("loss scaler"), "{err}");
}

/// Mixed precision and the expert store do not combine yet: a clear error, not f32 experts in a
/// bf16 model.
#[test]
fn mixed_precision_refuses_the_expert_store() {
    let cfg = ModelConfig::from_preset("micro").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let e = Execution {
        max_experts_in_memory: Some(1),
        ..exec(Precision::Bf16, false)
    };
    let err = Trainer::new(&cfg, &train_cfg(), &e, 1, Some(dir.path()))
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("f32 only"), "{err}");
}
