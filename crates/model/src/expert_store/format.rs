//! What the file holds and how it is laid out: the [`StoreLayout`] (MoE layers, experts, each expert's
//! tensors), the four [`Part`]s of a region, the header (magic, version, layout JSON, geometry, its
//! BLAKE3) and the 64-byte table entry of each region (generation, flags, checksum). The byte layout is
//! drawn in the documentation of [`crate::expert_store`].

use std::path::Path;

use serde::{Deserialize, Serialize};
use tardbot_core::ModelConfig;

use super::error::{Result, StoreError};

/// File magic.
pub const MAGIC: &[u8; 8] = b"TBXSTORE";
/// Format version this build reads and writes.
pub const VERSION: u32 = 1;
/// Alignment of the data area and of every region (a page, so a region can be released by itself).
pub const ALIGN: usize = 4096;
/// Bytes of one table entry.
pub(super) const ENTRY: usize = 64;
/// Table entry flag: the region was modified and not committed.
pub(super) const FLAG_MODIFIED: u64 = 1;

/// One tensor of every expert: its name relative to the expert (`gate.weight`) and shape.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
}

impl TensorSpec {
    pub fn elems(&self) -> usize {
        self.shape.iter().product()
    }
}

/// What the store holds: which layers are MoE, how many experts, each expert's tensors in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreLayout {
    /// Model layer indices of the MoE layers, increasing.
    pub moe_layers: Vec<usize>,
    pub n_experts: usize,
    pub tensors: Vec<TensorSpec>,
}

impl StoreLayout {
    /// The layout of `cfg`'s experts: SwiGLU `gate.weight` (i, h), `up.weight` (i, h), `down.weight`
    /// (h, i), as in [`crate::TardBot::param_names`].
    pub fn from_config(cfg: &ModelConfig) -> Self {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        StoreLayout {
            moe_layers: (0..cfg.n_layers).filter(|&l| cfg.is_moe_layer(l)).collect(),
            n_experts: cfg.n_experts,
            tensors: vec![
                TensorSpec {
                    name: "gate.weight".into(),
                    shape: vec![i, h],
                },
                TensorSpec {
                    name: "up.weight".into(),
                    shape: vec![i, h],
                },
                TensorSpec {
                    name: "down.weight".into(),
                    shape: vec![h, i],
                },
            ],
        }
    }

    /// The model's name of `tensor` of (layer, expert): `layers.3.moe.experts.1.gate.weight`.
    pub fn param_name(layer: usize, expert: usize, tensor: &str) -> String {
        format!("layers.{layer}.moe.experts.{expert}.{tensor}")
    }

    /// f32 elements of one section (all of an expert's tensors).
    pub fn expert_elems(&self) -> usize {
        self.tensors.iter().map(TensorSpec::elems).sum()
    }

    /// Bytes of expert state per region (weights + grads + m + v), before alignment padding.
    pub fn region_bytes(&self) -> usize {
        4 * 4 * self.expert_elems()
    }

    pub fn region_stride(&self) -> usize {
        self.region_bytes().div_ceil(ALIGN).max(1) * ALIGN
    }

    pub fn n_regions(&self) -> usize {
        self.moe_layers.len() * self.n_experts
    }

    /// Index of `name` in [`StoreLayout::tensors`].
    pub fn tensor_index(&self, name: &str) -> Option<usize> {
        self.tensors.iter().position(|t| t.name == name)
    }

    /// Offset (in f32 elements) of each tensor within a section.
    pub(super) fn tensor_offsets(&self) -> Vec<usize> {
        let mut off = 0;
        self.tensors
            .iter()
            .map(|t| {
                let o = off;
                off += t.elems();
                o
            })
            .collect()
    }
}

/// The four parts of a region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Weights = 0,
    Grads = 1,
    /// AdamW first moment.
    M = 2,
    /// AdamW second moment.
    V = 3,
}

/// Everything the header stores (the JSON part).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct Header {
    pub(super) layout: StoreLayout,
    pub(super) sections: Vec<String>,
    pub(super) region_bytes: usize,
    pub(super) region_stride: usize,
    pub(super) alignment: usize,
    pub(super) table_offset: usize,
    pub(super) data_offset: usize,
    pub(super) file_len: u64,
}

impl Header {
    /// The header of `layout` and its bytes (magic, version, JSON length, JSON, BLAKE3).
    pub(super) fn new(layout: StoreLayout) -> (Self, Vec<u8>) {
        // The JSON's length depends on the offsets it contains: iterate to a fixed point.
        let mut h = Header {
            region_bytes: layout.region_bytes(),
            region_stride: layout.region_stride(),
            sections: ["weights", "grads", "m", "v"].map(String::from).to_vec(),
            alignment: ALIGN,
            table_offset: 0,
            data_offset: 0,
            file_len: 0,
            layout,
        };
        loop {
            let json = serde_json::to_vec(&h).unwrap_or_default();
            let table_offset = (16 + json.len() + 32).div_ceil(ENTRY) * ENTRY;
            let data_offset = (table_offset + ENTRY * h.layout.n_regions()).div_ceil(ALIGN) * ALIGN;
            let file_len = (data_offset + h.region_stride * h.layout.n_regions()) as u64;
            if (table_offset, data_offset, file_len) == (h.table_offset, h.data_offset, h.file_len)
            {
                let mut bytes = Vec::with_capacity(16 + json.len() + 32);
                bytes.extend_from_slice(MAGIC);
                bytes.extend_from_slice(&VERSION.to_le_bytes());
                bytes.extend_from_slice(&(json.len() as u32).to_le_bytes());
                bytes.extend_from_slice(&json);
                let hash = blake3::hash(&bytes);
                bytes.extend_from_slice(hash.as_bytes());
                return (h, bytes);
            }
            (h.table_offset, h.data_offset, h.file_len) = (table_offset, data_offset, file_len);
        }
    }
}

/// A region's table entry.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Entry {
    pub(super) generation: u64,
    pub(super) flags: u64,
    pub(super) checksum: [u8; 32],
}

impl Entry {
    pub(super) fn encode(&self) -> [u8; ENTRY] {
        let mut b = [0u8; ENTRY];
        b[0..8].copy_from_slice(&self.generation.to_le_bytes());
        b[8..16].copy_from_slice(&self.flags.to_le_bytes());
        b[16..48].copy_from_slice(&self.checksum);
        let h = blake3::hash(&b[..48]);
        b[48..64].copy_from_slice(&h.as_bytes()[..16]);
        b
    }

    pub(super) fn decode(b: &[u8]) -> Option<Entry> {
        if b.len() != ENTRY || blake3::hash(&b[..48]).as_bytes()[..16] != b[48..64] {
            return None;
        }
        let u = |r: std::ops::Range<usize>| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[r]);
            u64::from_le_bytes(a)
        };
        let mut checksum = [0u8; 32];
        checksum.copy_from_slice(&b[16..48]);
        Some(Entry {
            generation: u(0..8),
            flags: u(8..16),
            checksum,
        })
    }
}

/// The format is little-endian: refuse a big-endian platform.
pub(super) fn check_platform(path: &Path) -> Result<()> {
    if cfg!(target_endian = "big") {
        return Err(StoreError::Layout {
            path: path.to_path_buf(),
            what: "the store format is little-endian; this platform is big-endian".into(),
        });
    }
    Ok(())
}

/// The bytes of f32 values as the file stores them (little-endian platforms only).
pub(super) fn f32_bytes(v: &[f32]) -> &[u8] {
    // SAFETY: any f32 is 4 initialised bytes; u8 has alignment 1.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}
