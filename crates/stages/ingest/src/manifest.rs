//! The manifest (`manifest.json` in the output directory): every shard with its BLAKE3 hash and
//! size, the counts per source, and which `--shard i/n` produced it. Shard manifests merge.

use crate::error::IngestError;
use crate::report::Counts;
use crate::shards::ShardEntry;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

pub const MANIFEST_FILE: &str = "manifest.json";

/// Per-source facts: licence and weight from the config, counts from the run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourceEntry {
    pub license: String,
    pub weight: f64,
    pub counts: Counts,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// Which `--shard i/n` slices of the input files this manifest covers (0-based indices).
    pub shard_indices: Vec<u32>,
    pub shard_count: u32,
    /// Hash of the stage's config slice; manifests merge only when it matches (ignoring the shard).
    pub config_hash: String,
    /// Column names of every shard, in order.
    pub columns: Vec<String>,
    pub shards: Vec<ShardEntry>,
    pub sources: BTreeMap<String, SourceEntry>,
    pub totals: Counts,
}

impl Manifest {
    pub fn read(path: &Path) -> Result<Manifest, IngestError> {
        let bytes = std::fs::read(path).map_err(|e| IngestError::Manifest {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        serde_json::from_slice(&bytes).map_err(|e| IngestError::Manifest {
            path: path.to_path_buf(),
            message: format!("not an ingest manifest: {e}"),
        })
    }

    pub fn write(&self, path: &Path) -> Result<(), IngestError> {
        let json = serde_json::to_vec_pretty(self).map_err(|e| IngestError::write(path, e))?;
        crate::parts::write_synced(path, &json)
    }
}

/// Merges the manifests of `--shard i/n` runs. Each entry is `(prefix, manifest)`: `prefix` is the
/// directory of that run's output relative to where the merged manifest will live, and is
/// prepended to its shard paths. Fails when the manifests come from different configs or shard
/// counts, or when a shard index appears twice.
pub fn merge_manifests(parts: &[(String, Manifest)]) -> Result<Manifest, IngestError> {
    let err = |message: String| IngestError::Manifest {
        path: Path::new("<merge>").to_path_buf(),
        message,
    };
    let Some((_, first)) = parts.first() else {
        return Err(err("nothing to merge".to_string()));
    };
    let mut merged = Manifest {
        format: first.format,
        shard_indices: Vec::new(),
        shard_count: first.shard_count,
        config_hash: first.config_hash.clone(),
        columns: first.columns.clone(),
        shards: Vec::new(),
        sources: BTreeMap::new(),
        totals: Counts::default(),
    };
    for (prefix, m) in parts {
        if m.shard_count != merged.shard_count
            || m.config_hash != merged.config_hash
            || m.columns != merged.columns
        {
            return Err(err(format!(
                "manifest of shard(s) {:?} comes from another config or shard count ({} vs {})",
                m.shard_indices, m.shard_count, merged.shard_count
            )));
        }
        for &i in &m.shard_indices {
            if merged.shard_indices.contains(&i) {
                return Err(err(format!("shard index {i} appears twice")));
            }
            merged.shard_indices.push(i);
        }
        for s in &m.shards {
            let mut s = s.clone();
            if !prefix.is_empty() {
                s.path = format!("{}/{}", prefix.trim_end_matches('/'), s.path);
            }
            merged.shards.push(s);
        }
        for (name, src) in &m.sources {
            let e = merged
                .sources
                .entry(name.clone())
                .or_insert_with(|| SourceEntry {
                    license: src.license.clone(),
                    weight: src.weight,
                    counts: Counts::default(),
                });
            e.counts.add(&src.counts);
        }
        merged.totals.add(&m.totals);
    }
    merged.shard_indices.sort_unstable();
    Ok(merged)
}

impl Manifest {
    /// Shard indices `0..shard_count` that no merged manifest covers.
    pub fn missing_shards(&self) -> Vec<u32> {
        (0..self.shard_count)
            .filter(|i| !self.shard_indices.contains(i))
            .collect()
    }
}
