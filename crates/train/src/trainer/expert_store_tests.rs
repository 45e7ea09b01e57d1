//! The trainer with its experts in an expert store (`max_experts_in_memory < n_experts`): equal to
//! resident experts, checkpointed and resumed exactly, and robust to a damaged store or a full disk.

use super::{TokenBatch, Trainer};
use crate::checkpoint;
use crate::test_util::{batch, rows, tensor_bits, train_cfg};
use candle_core::Device;
use std::path::Path;
use tardbot_core::ModelConfig;
use tardbot_core::config::Execution;
use tardbot_model::{ExpertStore, TardBot};

/// Every weight of the model (experts included, wherever they live), as bits, by name.
fn all_weight_bits(t: &Trainer, dir: &Path) -> std::collections::BTreeMap<String, Vec<u32>> {
    let path = dir.join("weights.safetensors");
    t.save_weights(&path).unwrap();
    candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(n, w)| (n, tensor_bits(&w)))
        .collect()
}

/// One expert of each MoE layer in memory at a time, the others in the store.
fn swapped() -> Execution {
    Execution {
        max_experts_in_memory: Some(1),
        ..Execution::cpu()
    }
}

/// Issue 7's equivalence: `max_experts_in_memory = 1` (experts swapped through the store, one
/// region in memory at a time) and all-resident compute the same floats — losses, gradient norms
/// (clipping active) and every updated weight are bit-identical over several steps with two
/// micro-batches each, with and without activation checkpointing.
#[test]
fn swapped_experts_train_bit_identically_to_resident_experts() {
    let resident_cfg = ModelConfig::from_preset("micro").unwrap();
    let vocab = resident_cfg.vocab_size as u32;
    for checkpointing in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let tc = train_cfg();
        let resident = Execution {
            activation_checkpointing: checkpointing,
            ..Execution::cpu()
        };
        let swapped = Execution {
            max_experts_in_memory: Some(1),
            ..resident.clone()
        };
        let mut a = Trainer::new(&resident_cfg, &tc, &resident, 11, None).unwrap();
        let mut b = Trainer::new(&resident_cfg, &tc, &swapped, 11, Some(dir.path())).unwrap();
        assert!(a.model.expert_store().is_none());
        let store = b.model.expert_store().unwrap().clone();
        assert_eq!(
            all_weight_bits(&a, dir.path()),
            all_weight_bits(&b, dir.path())
        );
        let mut clipped = 0;
        for step in 0..4 {
            let micro = [
                batch(&rows(2, 9, vocab, step)),
                batch(&rows(3, 9, vocab, step + 10)),
            ];
            let ra = a.train_step(&micro).unwrap();
            let rb = b.train_step(&micro).unwrap();
            assert!(!ra.rejected && !rb.rejected);
            assert_eq!(ra.loss.to_bits(), rb.loss.to_bits(), "step {step} loss");
            assert_eq!(
                ra.grad_norm.to_bits(),
                rb.grad_norm.to_bits(),
                "step {step} norm"
            );
            assert_eq!(ra.expert_counts, rb.expert_counts);
            clipped += (ra.grad_norm > tc.grad_clip) as usize;
        }
        assert!(clipped > 0, "clipping never engaged");
        let (wa, wb) = (
            all_weight_bits(&a, dir.path()),
            all_weight_bits(&b, dir.path()),
        );
        assert_eq!(wa.len(), TardBot::param_names(&resident_cfg).len());
        for (name, bits) in &wa {
            assert!(
                wb[name] == *bits,
                "checkpointing {checkpointing}: {name} differs"
            );
        }
        assert_eq!(
            store.peak_resident(),
            1,
            "more than one expert was resident"
        );
        assert_eq!(store.resident(), 0);
        assert!(store.regions_with_grads().is_empty());
    }
}

/// The same at `tiny` (128 hidden, 4 experts, 4 layers): here the autograd's topological order can
/// add the gradient contributions reaching a block's normalised input (router, experts) in another
/// order, so agreement is to float rounding rather than to the bit. Stated tolerance: losses and
/// gradient norms to 1e-6 relative, weights after 3 steps to 1e-6 of each tensor's largest value.
#[test]
fn swapped_experts_match_resident_experts_at_tiny() {
    let resident_cfg = ModelConfig::from_preset("tiny").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tc = train_cfg();
    let mut a = Trainer::new(&resident_cfg, &tc, &Execution::cpu(), 3, None).unwrap();
    let mut b = Trainer::new(&resident_cfg, &tc, &swapped(), 3, Some(dir.path())).unwrap();
    let vocab = resident_cfg.vocab_size as u32;
    for step in 0..3 {
        let micro = [
            batch(&rows(2, 65, vocab, step)),
            batch(&rows(2, 65, vocab, step + 7)),
        ];
        let (ra, rb) = (a.train_step(&micro).unwrap(), b.train_step(&micro).unwrap());
        let rel = |x: f64, y: f64| (x - y).abs() / x.abs().max(1e-12);
        eprintln!(
            "tiny step {step}: loss {} vs {} (rel {:e}), grad norm rel {:e}",
            ra.loss,
            rb.loss,
            rel(ra.loss, rb.loss),
            rel(ra.grad_norm, rb.grad_norm)
        );
        assert!(rel(ra.loss, rb.loss) < 1e-6 && rel(ra.grad_norm, rb.grad_norm) < 1e-6);
    }
    let wa = all_weight_bits(&a, dir.path());
    let wb = all_weight_bits(&b, dir.path());
    let mut worst = 0f32;
    for (name, bits) in &wa {
        let x: Vec<f32> = bits.iter().map(|&u| f32::from_bits(u)).collect();
        let y: Vec<f32> = wb[name].iter().map(|&u| f32::from_bits(u)).collect();
        let scale = x.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
        let d = x
            .iter()
            .zip(&y)
            .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        worst = worst.max(d / scale);
    }
    eprintln!("tiny: weights after 3 steps, max relative difference {worst:e}");
    assert!(worst < 1e-6, "weights differ by {worst:e} of their scale");
    assert_eq!(b.model.expert_store().unwrap().peak_resident(), 1);
}

/// Save, resume and continue with the experts in the store: bit-identical to the uninterrupted
/// run; unchanged regions are linked, not copied; a damaged region copy is refused by name.
#[test]
fn swapped_experts_checkpoint_and_resume_exactly() {
    let cfg = ModelConfig::from_preset("micro").unwrap();
    let vocab = cfg.vocab_size as u32;
    let (live, other, ckpts) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let batches: Vec<TokenBatch> = (0..5).map(|i| batch(&rows(2, 9, vocab, i))).collect();
    let mut a = Trainer::new(&cfg, &train_cfg(), &swapped(), 7, Some(live.path())).unwrap();
    for b in &batches[..2] {
        a.train_step(std::slice::from_ref(b)).unwrap();
    }
    let save = |t: &Trainer| {
        checkpoint::write_atomic(ckpts.path(), t.step, |tmp| {
            t.save(tmp, serde_json::json!({}))
        })
        .unwrap()
    };
    let first = save(&a);
    let regions = cfg.n_moe_layers() * cfg.n_experts;
    assert_eq!(
        std::fs::read_dir(first.path.join("experts"))
            .unwrap()
            .count(),
        regions + 1
    );
    // Nothing changed since: the next checkpoint links every region.
    a.step += 1;
    let second = save(&a);
    a.step -= 1;
    use std::os::unix::fs::MetadataExt;
    let linked = std::fs::read_dir(second.path.join("experts"))
        .unwrap()
        .flatten()
        .filter(|e| {
            let twin = first.path.join("experts").join(e.file_name());
            e.file_name().to_string_lossy().ends_with(".region")
                && std::fs::metadata(twin).is_ok_and(|m| m.ino() == e.metadata().unwrap().ino())
        })
        .count();
    assert_eq!(
        linked, regions,
        "unchanged regions are hard links, not copies"
    );

    let mut b = Trainer::new(&cfg, &train_cfg(), &swapped(), 99, Some(other.path())).unwrap();
    b.load(&first.path).unwrap();
    assert_eq!(b.step, 2);
    for batch in &batches[2..] {
        let ra = a.train_step(std::slice::from_ref(batch)).unwrap();
        let rb = b.train_step(std::slice::from_ref(batch)).unwrap();
        assert_eq!(ra.loss.to_bits(), rb.loss.to_bits());
    }
    assert_eq!(
        all_weight_bits(&a, live.path()),
        all_weight_bits(&b, other.path())
    );
    a.model.expert_store().unwrap().commit_all().unwrap();
    b.model.expert_store().unwrap().commit_all().unwrap();
    assert_eq!(
        a.model.expert_store().unwrap().generations().unwrap(),
        b.model.expert_store().unwrap().generations().unwrap()
    );

    // A flipped byte in a checkpoint's region copy: refused, naming the file.
    let victim = std::fs::read_dir(first.path.join("experts"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "region"))
        .unwrap();
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[100] ^= 1;
    // Break the hard link first so only this checkpoint's copy is damaged.
    std::fs::remove_file(&victim).unwrap();
    std::fs::write(&victim, bytes).unwrap();
    let mut c = Trainer::new(&cfg, &train_cfg(), &swapped(), 5, Some(other.path())).unwrap();
    let err = c.load(&first.path).unwrap_err().to_string();
    let name = victim.file_name().unwrap().to_string_lossy().into_owned();
    assert!(err.contains(&name) && err.contains("damaged"), "{err}");
    c.load(&second.path).unwrap();
}

/// A live store damaged by a crash or the disk (truncated, or a flipped byte) is reported clearly
/// by `ExpertStore::open`, and resuming never trusts it: the trainer rebuilds it from the
/// checkpoint and continues exactly as the undamaged run did.
#[test]
fn a_damaged_live_store_falls_back_to_the_checkpoint() {
    let cfg = ModelConfig::from_preset("micro").unwrap();
    let vocab = cfg.vocab_size as u32;
    let (live, ckpts) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let batches: Vec<TokenBatch> = (0..4).map(|i| batch(&rows(2, 9, vocab, i))).collect();
    let mut a = Trainer::new(&cfg, &train_cfg(), &swapped(), 2, Some(live.path())).unwrap();
    a.train_step(&batches[..1]).unwrap();
    let ck = checkpoint::write_atomic(ckpts.path(), a.step, |tmp| {
        a.save(tmp, serde_json::json!({}))
    })
    .unwrap();
    let expected: Vec<u64> = batches[1..]
        .iter()
        .map(|b| {
            a.train_step(std::slice::from_ref(b))
                .unwrap()
                .loss
                .to_bits()
        })
        .collect();
    drop(a);
    let store = live.path().join("experts.store");
    for damage in ["truncate", "flip"] {
        let mut bytes = std::fs::read(&store).unwrap();
        if damage == "truncate" {
            bytes.truncate(bytes.len() / 2);
        } else {
            let n = bytes.len();
            bytes[n - 5000] ^= 0x40;
        }
        std::fs::write(&store, bytes).unwrap();
        let err = ExpertStore::open(&store).unwrap_err().to_string();
        assert!(
            err.contains("experts.store") && err.contains("layer") && err.contains("expert"),
            "{damage}: {err}"
        );
        let mut b = Trainer::new(&cfg, &train_cfg(), &swapped(), 5, Some(live.path())).unwrap();
        b.load(&ck.path).unwrap();
        let got: Vec<u64> = batches[1..]
            .iter()
            .map(|x| {
                b.train_step(std::slice::from_ref(x))
                    .unwrap()
                    .loss
                    .to_bits()
            })
            .collect();
        assert_eq!(got, expected, "{damage}: resumed losses differ");
    }
}

/// Out of disk while the expert store is written into a checkpoint (a region file that is
/// `/dev/full`: every write fails with ENOSPC): the save fails with a clear error, and the previous
/// checkpoint still restores and continues exactly.
#[test]
fn out_of_disk_while_checkpointing_the_store_keeps_the_previous_checkpoint() {
    let cfg = ModelConfig::from_preset("micro").unwrap();
    if !Path::new("/dev/full").exists() {
        eprintln!("skipped: no /dev/full on this system");
        return;
    }
    let vocab = cfg.vocab_size as u32;
    let (live, other, ckpts) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let batches: Vec<TokenBatch> = (0..3).map(|i| batch(&rows(2, 9, vocab, i))).collect();
    let mut a = Trainer::new(&cfg, &train_cfg(), &swapped(), 8, Some(live.path())).unwrap();
    a.train_step(&batches[..1]).unwrap();
    let good = checkpoint::write_atomic(ckpts.path(), a.step, |tmp| {
        a.save(tmp, serde_json::json!({}))
    })
    .unwrap();
    a.train_step(&batches[1..2]).unwrap();
    // The next checkpoint's first region file lands on a full disk.
    let full = ckpts.path().join("ckpt-00000002.tmp");
    std::fs::create_dir_all(full.join("experts")).unwrap();
    let next_gen = a.model.expert_store().unwrap().generation(1, 0).unwrap() + 1;
    std::os::unix::fs::symlink(
        "/dev/full",
        full.join(format!("experts/l001-e000-g{next_gen}.region")),
    )
    .unwrap();
    let err = a
        .save(&full, serde_json::json!({}))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("disk full") && err.contains("l001-e000"),
        "{err}"
    );

    let expected = a.train_step(&batches[2..]).unwrap().loss.to_bits();
    let mut b = Trainer::new(&cfg, &train_cfg(), &swapped(), 1, Some(other.path())).unwrap();
    b.load(&good.path).unwrap();
    b.train_step(&batches[1..2]).unwrap();
    assert_eq!(
        b.train_step(&batches[2..]).unwrap().loss.to_bits(),
        expected
    );
    // The failed directory is never listed as a checkpoint and is cleaned up by retention.
    assert_eq!(checkpoint::list(ckpts.path()).unwrap().len(), 1);
    checkpoint::prune(ckpts.path(), 3, &[]).unwrap();
    assert!(!full.exists());
}
