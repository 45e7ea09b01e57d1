//! The expert store's part of a checkpoint: `experts/` in the checkpoint directory, one file per
//! (MoE layer, expert) region plus a manifest of generations and checksums.
//!
//! A checkpoint must not copy the whole store each time: a region whose generation and checksum are
//! those of the previous checkpoint's copy is *hard-linked* to that copy (no bytes written); only
//! regions changed since are copied out of the map. (In pretraining every routed expert changes every
//! step, so most regions are copied; in fine-tuning with frozen or rarely routed experts most are
//! linked.) Retention stays correct: removing an old checkpoint leaves linked files alive in newer ones.
//!
//! Restoring copies a checkpoint's regions into the live store, verifying each against the manifest's
//! checksum, and skips regions whose live generation and checksum already match. The live store is
//! rebuilt on every resume, so a damaged live store (truncated, checksum mismatch, uncommitted
//! writes) never outlives a crash: the checkpoint is the source of truth.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tardbot_model::expert_store::{ExpertStore, StoreLayout};
use tracing::info;

use crate::error::{Result, TrainError};

const DIR: &str = "experts";
const MANIFEST: &str = "manifest.json";

#[derive(Serialize, Deserialize)]
struct Manifest {
    layout: StoreLayout,
    regions: Vec<RegionCopy>,
}

#[derive(Serialize, Deserialize)]
struct RegionCopy {
    layer: usize,
    expert: usize,
    generation: u64,
    /// BLAKE3 of the file's bytes, hex.
    checksum: String,
    file: String,
}

/// What [`save`] wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SaveStats {
    pub copied: usize,
    pub linked: usize,
    pub bytes_copied: u64,
}

fn state_err(path: &Path, what: impl Into<String>) -> TrainError {
    TrainError::State {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(DIR).join(MANIFEST);
    let bytes = std::fs::read(&path).map_err(|e| state_err(&path, e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| state_err(&path, e.to_string()))
}

/// Writes `store`'s regions into `dir/experts/` (committing modified regions first), linking the
/// unchanged ones to `previous`'s copies (the newest complete checkpoint, if any).
pub fn save(store: &ExpertStore, dir: &Path, previous: Option<&Path>) -> Result<SaveStats> {
    store.commit_all()?;
    let out = dir.join(DIR);
    std::fs::create_dir_all(&out).map_err(|e| state_err(&out, e.to_string()))?;
    let prev: Vec<(RegionCopy, PathBuf)> = previous
        .and_then(|p| read_manifest(p).ok().map(|m| (m, p.join(DIR))))
        .filter(|(m, _)| m.layout == *store.layout())
        .map(|(m, base)| {
            m.regions
                .into_iter()
                .map(|r| {
                    let f = base.join(&r.file);
                    (r, f)
                })
                .collect()
        })
        .unwrap_or_default();
    let layout = store.layout().clone();
    let mut regions = Vec::with_capacity(layout.n_regions());
    let mut stats = SaveStats::default();
    for &layer in &layout.moe_layers {
        for expert in 0..layout.n_experts {
            let generation = store.generation(layer, expert)?;
            let checksum = blake3::Hash::from_bytes(store.checksum(layer, expert)?)
                .to_hex()
                .to_string();
            let file = format!("l{layer:03}-e{expert:03}-g{generation}.region");
            let target = out.join(&file);
            let same = prev.iter().find(|(r, _)| {
                r.layer == layer
                    && r.expert == expert
                    && r.generation == generation
                    && r.checksum == checksum
            });
            let linked = same.is_some_and(|(_, src)| std::fs::hard_link(src, &target).is_ok());
            if linked {
                stats.linked += 1;
            } else {
                let region = store.region(layer, expert)?;
                std::fs::write(&target, region.bytes())
                    .map_err(|e| state_err(&target, format!("{e} (disk full?)")))?;
                stats.copied += 1;
                stats.bytes_copied += region.bytes().len() as u64;
            }
            regions.push(RegionCopy {
                layer,
                expert,
                generation,
                checksum,
                file,
            });
        }
    }
    let path = out.join(MANIFEST);
    let manifest = Manifest { layout, regions };
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| state_err(&path, e.to_string()))?;
    std::fs::write(&path, json).map_err(|e| state_err(&path, e.to_string()))?;
    info!(
        copied = stats.copied,
        linked = stats.linked,
        mib = stats.bytes_copied >> 20,
        "expert store checkpointed"
    );
    Ok(stats)
}

/// Brings the live `store` to the state saved in `dir`: regions that differ are copied in (each
/// verified against the manifest). Returns how many were copied.
pub fn restore(store: &ExpertStore, dir: &Path) -> Result<usize> {
    let manifest = read_manifest(dir)?;
    let base = dir.join(DIR);
    if manifest.layout != *store.layout() {
        return Err(state_err(
            &base,
            "the checkpoint's expert store has another layout (another model configuration?)",
        ));
    }
    let mut copied = 0;
    for r in &manifest.regions {
        let file = base.join(&r.file);
        let checksum = blake3::Hash::from_hex(&r.checksum)
            .map_err(|e| state_err(&file, format!("checksum in the manifest: {e}")))?;
        if store.generation(r.layer, r.expert)? == r.generation
            && store.checksum(r.layer, r.expert)? == *checksum.as_bytes()
        {
            continue;
        }
        let bytes = std::fs::read(&file).map_err(|e| state_err(&file, e.to_string()))?;
        store.region(r.layer, r.expert)?.restore(
            &bytes,
            r.generation,
            *checksum.as_bytes(),
            &file.display().to_string(),
        )?;
        copied += 1;
    }
    Ok(copied)
}
