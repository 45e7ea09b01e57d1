//! The store's tests: round trips, refusal of uncommitted, truncated and corrupted files (naming layer
//! and expert), the residency limit, safetensors in and out, and release of resident pages.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use super::format::{ENTRY, Header};
use super::*;
use crate::test_util::micro;
use crate::{TardBot, init_weights, save_safetensors};

fn small_layout() -> StoreLayout {
    StoreLayout {
        moe_layers: vec![1, 2],
        n_experts: 3,
        tensors: vec![
            TensorSpec {
                name: "gate.weight".into(),
                shape: vec![8, 4],
            },
            TensorSpec {
                name: "down.weight".into(),
                shape: vec![4, 8],
            },
        ],
    }
}

fn val(l: usize, e: usize, t: &str, i: usize) -> f32 {
    (l * 1000 + e * 100 + i) as f32 * if t.starts_with('g') { 0.5 } else { -0.25 }
}

fn make(dir: &Path) -> (PathBuf, ExpertStore) {
    let path = dir.join("experts.store");
    let s = ExpertStore::create(&path, small_layout(), |l, e, t| {
        Ok((0..32).map(|i| val(l, e, t, i)).collect())
    })
    .unwrap();
    (path, s)
}

#[test]
fn create_write_reopen_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (path, s) = make(dir.path());
    assert_eq!(s.generations().unwrap(), vec![0; 6]);
    {
        let mut r = s.region(2, 1).unwrap();
        assert_eq!(r.weights(0)[3], val(2, 1, "gate.weight", 3));
        let ts = r.tensor_mut(1).unwrap();
        ts.grads[5] = 1.5;
        ts.m[6] = f32::MIN_POSITIVE;
        ts.v[7] = -0.0;
        ts.weights[0] = f32::from_bits(0x7f7f_ffff);
        assert_eq!(r.commit().unwrap(), 1);
    }
    let gens = s.generations().unwrap();
    drop(s);
    let s = ExpertStore::open(&path).unwrap();
    assert_eq!(s.generations().unwrap(), gens);
    assert_eq!(s.generation(2, 1).unwrap(), 1);
    let r = s.region(2, 1).unwrap();
    assert_eq!(r.get(Part::Grads, 1)[5], 1.5);
    assert_eq!(r.get(Part::M, 1)[6], f32::MIN_POSITIVE);
    assert_eq!(r.get(Part::V, 1)[7].to_bits(), (-0.0f32).to_bits());
    assert_eq!(r.weights(1)[0].to_bits(), 0x7f7f_ffff);
    assert_eq!(r.weights(1)[1], val(2, 1, "down.weight", 1));
    assert!(r.grads(0).iter().all(|&g| g == 0.0));
    drop(r);
    // Unknown region.
    let e = s.region(0, 0).unwrap_err().to_string();
    assert!(e.contains("layer 0 expert 0"), "{e}");
}

#[test]
fn uncommitted_change_is_refused_and_commit_all_fixes_it() {
    let dir = tempfile::tempdir().unwrap();
    let (path, s) = make(dir.path());
    s.region(1, 2).unwrap().get_mut(Part::Weights, 0).unwrap()[0] = 9.0;
    drop(s);
    let e = ExpertStore::open(&path).unwrap_err().to_string();
    assert!(
        e.contains("layer 1 expert 2") && e.contains("never committed"),
        "{e}"
    );
    let s = ExpertStore::open_unverified(&path);
    assert!(s.is_err());
    // Within a session, commit_all makes it consistent.
    let dir2 = tempfile::tempdir().unwrap();
    let (path2, s2) = make(dir2.path());
    s2.region(1, 2).unwrap().get_mut(Part::Weights, 0).unwrap()[0] = 9.0;
    assert_eq!(s2.commit_all().unwrap(), 1);
    drop(s2);
    let s2 = ExpertStore::open(&path2).unwrap();
    assert_eq!(s2.region(1, 2).unwrap().weights(0)[0], 9.0);
    assert_eq!(s2.generation(1, 2).unwrap(), 1);
}

#[test]
fn truncated_file_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let (path, s) = make(dir.path());
    let stride = s.region_stride() as u64;
    drop(s);
    let len = std::fs::metadata(&path).unwrap().len();
    // Cut into the fifth region (index 4 = layer 2, expert 1).
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len - 2 * stride + 100).unwrap();
    drop(f);
    let e = ExpertStore::open(&path).unwrap_err().to_string();
    assert!(
        e.contains("truncated") && e.contains("layer 2 expert 1"),
        "{e}"
    );
    assert!(e.contains(&path.display().to_string()), "{e}");
}

#[test]
fn flipped_byte_names_layer_and_expert() {
    let dir = tempfile::tempdir().unwrap();
    let (path, s) = make(dir.path());
    let off = s.region_offset(s.index(1, 1).unwrap()) + 77;
    drop(s);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[off] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
    let e = ExpertStore::open(&path).unwrap_err().to_string();
    assert!(
        e.contains("checksum mismatch") && e.contains("layer 1 expert 1"),
        "{e}"
    );
    // A flipped header byte.
    bytes[off] ^= 0x10;
    bytes[20] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let e = ExpertStore::open(&path).unwrap_err().to_string();
    assert!(e.contains("header"), "{e}");
    // A flipped table byte.
    bytes[20] ^= 0x01;
    let (h, _) = Header::new(small_layout());
    bytes[h.table_offset + 2 * ENTRY + 20] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let e = ExpertStore::open(&path).unwrap_err().to_string();
    assert!(
        e.contains("table entry") && e.contains("layer 1 expert 2"),
        "{e}"
    );
    // Not a store.
    std::fs::write(&path, b"hello, this is not an expert store").unwrap();
    let e = ExpertStore::open(&path).unwrap_err().to_string();
    assert!(e.contains("not an expert store"), "{e}");
}

#[test]
fn max_resident_is_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let (_, s) = make(dir.path());
    s.set_max_resident(2);
    let a = s.region(1, 0).unwrap();
    let e = s.region(1, 0).unwrap_err().to_string();
    assert!(e.contains("already checked out"), "{e}");
    let b = s.region(1, 1).unwrap();
    let e = s.region(2, 0).unwrap_err().to_string();
    assert!(
        e.contains("max_resident 2") && e.contains("layer 1 expert 0, layer 1 expert 1"),
        "{e}"
    );
    assert_eq!(s.resident(), 2);
    drop(a);
    let c = s.region(2, 0).unwrap();
    assert_eq!(s.resident(), 2);
    drop((b, c));
    assert_eq!((s.resident(), s.peak_resident()), (0, 2));
    // A guard moves to another thread (prefetch).
    let g = s.region(2, 2).unwrap();
    std::thread::scope(|sc| {
        sc.spawn(move || assert_eq!(g.weights(0)[1], val(2, 2, "gate.weight", 1)));
    });
    assert_eq!(s.resident(), 0);
}

#[test]
fn safetensors_round_trip_micro() {
    let cfg = micro();
    let vm = candle_nn::VarMap::new();
    let _model = TardBot::new(
        &cfg,
        candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu),
    )
    .unwrap();
    init_weights(&vm, &cfg, 7).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let model_path = dir.path().join("model.safetensors");
    save_safetensors(&vm, None, &model_path).unwrap();
    let store_path = dir.path().join("experts.store");
    let s = ExpertStore::from_safetensors(&model_path, &store_path, &cfg).unwrap();
    let vars: HashMap<String, candle_core::Var> = crate::named_vars(&vm).into_iter().collect();
    let l = s.layout().clone();
    assert!(!l.moe_layers.is_empty() && l.n_experts > 1);
    for &layer in &l.moe_layers {
        for e in 0..l.n_experts {
            let r = s.region(layer, e).unwrap();
            for (t, spec) in l.tensors.iter().enumerate() {
                let want = vars[&StoreLayout::param_name(layer, e, &spec.name)]
                    .as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                assert_eq!(r.weights(t), want.as_slice());
            }
        }
    }
    let out = dir.path().join("experts.safetensors");
    s.export_safetensors(&out).unwrap();
    let back = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    let n_expert_params = TardBot::param_names(&cfg)
        .iter()
        .filter(|n| n.contains(".moe.experts."))
        .count();
    assert_eq!(back.len(), n_expert_params);
    for (name, t) in &back {
        let want = vars[name].as_tensor();
        assert_eq!(t.dims(), want.dims(), "{name}");
        let a: Vec<u32> = t
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|x| x.to_bits())
            .collect();
        let b: Vec<u32> = want
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|x| x.to_bits())
            .collect();
        assert_eq!(a, b, "{name}");
    }
    // A configuration that does not match the file.
    let mut other = cfg.clone();
    other.intermediate_size += 1;
    let e = ExpertStore::from_safetensors(&model_path, &dir.path().join("x.store"), &other)
        .unwrap_err()
        .to_string();
    assert!(e.contains("shape"), "{e}");
}

/// The process's resident set in bytes.
fn vm_rss() -> Option<u64> {
    tardbot_core::memory::rss_bytes()
}

#[test]
fn release_lowers_rss_and_open_verify_speed() {
    if !cfg!(target_os = "linux") || vm_rss().is_none() {
        eprintln!("skipped: this platform reports no resident set size");
        return;
    }
    // 4 regions × 16 MiB = 64 MiB of expert state.
    let layout = StoreLayout {
        moe_layers: vec![0],
        n_experts: 4,
        tensors: vec![TensorSpec {
            name: "gate.weight".into(),
            shape: vec![1024, 1024],
        }],
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.store");
    let s = ExpertStore::create(&path, layout, |_, e, _| Ok(vec![e as f32; 1 << 20])).unwrap();
    let region_total = (4 * s.region_stride()) as u64;
    let before = (vm_rss().unwrap(), s.mapped_rss_bytes());
    let guards: Vec<_> = (0..4)
        .map(|e| {
            let mut g = s.region(0, e).unwrap();
            for p in [Part::Weights, Part::Grads, Part::M, Part::V] {
                g.get_mut(p, 0).unwrap().iter_mut().for_each(|x| *x += 1.0);
            }
            g
        })
        .collect();
    let held = (vm_rss().unwrap(), s.mapped_rss_bytes());
    drop(guards);
    let after = (vm_rss().unwrap(), s.mapped_rss_bytes());
    eprintln!(
        "VmRSS MiB: before {:.1}, 4 regions resident {:.1}, after release {:.1}; store mapping \
         Rss MiB: {:?} → {:?} → {:?}",
        before.0 as f64 / 1048576.0,
        held.0 as f64 / 1048576.0,
        after.0 as f64 / 1048576.0,
        before.1.map(|b| b / 1048576),
        held.1.map(|b| b / 1048576),
        after.1.map(|b| b / 1048576),
    );
    if let (Some(h), Some(a)) = (held.1, after.1) {
        assert!(h >= region_total * 9 / 10, "held {h} of {region_total}");
        assert!(a <= region_total / 10, "after release {a}");
    }
    // Process-wide (other tests run concurrently: a loose bound).
    assert!(
        held.0.saturating_sub(after.0) >= region_total / 2,
        "VmRSS {} → {}",
        held.0,
        after.0
    );
    assert_eq!(s.commit_all().unwrap(), 4);
    drop(s);
    let t = std::time::Instant::now();
    let s = ExpertStore::open(&path).unwrap();
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "open + verify: {} MiB in {:.3} s = {:.0} MB/s; mapping Rss after open {:?} MiB",
        region_total >> 20,
        secs,
        region_total as f64 / secs / 1e6,
        s.mapped_rss_bytes().map(|b| b / 1048576)
    );
    assert_eq!(s.region(0, 3).unwrap().get(Part::V, 0)[9], 1.0);
    assert_eq!(s.region(0, 3).unwrap().weights(0)[9], 4.0);
}
