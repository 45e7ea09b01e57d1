//! The expert store: every MoE expert's weights, gradient accumulators and AdamW moments in one
//! memory-mapped file, one contiguous 4 KiB-aligned region per (MoE layer, expert), so that training
//! can keep only `max_experts_in_memory` experts resident (issue 7).
//!
//! # File format (version 1, little-endian)
//!
//! ```text
//! 0      magic "TBXSTORE" (8) | version u32 | json_len u32
//! 16     layout JSON (json_len bytes): moe_layers, n_experts, tensors [{name, shape}], region geometry
//! ..     BLAKE3 of bytes [0, 16 + json_len)                                   (32 bytes)
//! table  (64-byte aligned) one 64-byte entry per region, region order = (moe layer, expert):
//!        generation u64 | flags u64 (bit 0: modified, not committed) | BLAKE3 of the region (32)
//!        | first 16 bytes of BLAKE3 of the entry's first 48 bytes
//! data   (4 KiB aligned) regions of `region_stride` bytes (a multiple of 4096), each holding the f32
//!        sections weights | grads | m | v, every section the expert's tensors in layout order
//! ```
//!
//! A region's checksum and generation change only on a *commit* ([`ExpertRegion::commit`],
//! [`ExpertStore::commit_all`]): the checksum covers the region's bytes, the generation counts its
//! commits, so a checkpoint can copy only the regions whose generation changed. Mutable access marks the
//! region modified (in memory and in its table entry); [`ExpertStore::open`] refuses a store with a
//! modified-uncommitted region or a checksum mismatch, naming the file, layer and expert — the caller
//! falls back to its checkpoint.
//!
//! Residency: [`ExpertStore::region`] checks a region out as an [`ExpertRegion`] guard (at most
//! `max_resident` at once, each region at most once); dropping the guard starts write-back of its dirty
//! pages (`msync(MS_ASYNC)`) and drops them from the process's resident set (`madvise(MADV_DONTNEED)` on
//! the shared file mapping: the data stays in the page cache / file, not in this process's RSS).
//!
//! Layers are *model* layer indices (`layers.3.moe…` is layer 3), experts `0..n_experts`.
//!
//! Caveats: another process truncating the file while it is mapped makes accesses fault (SIGBUS), as
//! with any mmap; the store is created with ordinary writes (not through the map), so running out of disk
//! while creating is a clean error and the final file appears only complete (temp file + rename).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};
use memmap2::MmapRaw;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tardbot_core::ModelConfig;

/// File magic.
pub const MAGIC: &[u8; 8] = b"TBXSTORE";
/// Format version this build reads and writes.
pub const VERSION: u32 = 1;
/// Alignment of the data area and of every region (a page, so a region can be released by itself).
pub const ALIGN: usize = 4096;
const ENTRY: usize = 64;
const FLAG_MODIFIED: u64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("expert store {}: {op}: {source}", path.display())]
    Io {
        path: PathBuf,
        op: String,
        source: std::io::Error,
    },
    #[error(
        "expert store {}: not an expert store (magic {found:?}); fix: point at a file made by \
         ExpertStore::create or ExpertStore::from_safetensors",
        path.display()
    )]
    BadMagic { path: PathBuf, found: Vec<u8> },
    #[error(
        "expert store {}: format version {found}, this build reads {VERSION}; fix: re-create it \
         from the model's safetensors (ExpertStore::from_safetensors)",
        path.display()
    )]
    Version { path: PathBuf, found: u32 },
    #[error(
        "expert store {}: header corrupt: {what}; fix: restore the store from the last checkpoint \
         or re-create it from the model's safetensors",
        path.display()
    )]
    Header { path: PathBuf, what: String },
    #[error(
        "expert store {}: truncated: {len} bytes, expected {expected}; layer {layer} expert {expert} \
         and every region after it are incomplete (disk full or interrupted copy?); fix: restore the \
         store from the last checkpoint",
        path.display()
    )]
    Truncated {
        path: PathBuf,
        len: u64,
        expected: u64,
        layer: usize,
        expert: usize,
    },
    #[error(
        "expert store {}: layer {layer} expert {expert}: checksum mismatch (table {stored}, data \
         {computed}); the region was corrupted or written without a commit; fix: restore the store \
         from the last checkpoint",
        path.display()
    )]
    Checksum {
        path: PathBuf,
        layer: usize,
        expert: usize,
        stored: String,
        computed: String,
    },
    #[error(
        "expert store {}: layer {layer} expert {expert}: modified and never committed (the process \
         stopped mid-step?); fix: restore the store from the last checkpoint",
        path.display()
    )]
    Uncommitted {
        path: PathBuf,
        layer: usize,
        expert: usize,
    },
    #[error(
        "expert store {}: layer {layer} expert {expert}: table entry corrupt; fix: restore the store \
         from the last checkpoint",
        path.display()
    )]
    TableEntry {
        path: PathBuf,
        layer: usize,
        expert: usize,
    },
    #[error(
        "expert store {}: no region for layer {layer} expert {expert} (MoE layers {moe_layers:?}, \
         {n_experts} experts)",
        path.display()
    )]
    NoSuchRegion {
        path: PathBuf,
        layer: usize,
        expert: usize,
        moe_layers: Vec<usize>,
        n_experts: usize,
    },
    #[error(
        "expert store {}: cannot check out layer {layer} expert {expert}: {resident} regions already \
         resident (max_resident {max}: {held}); fix: drop a region guard first or raise \
         max_experts_in_memory",
        path.display()
    )]
    TooManyResident {
        path: PathBuf,
        layer: usize,
        expert: usize,
        resident: usize,
        max: usize,
        held: String,
    },
    #[error(
        "expert store {}: layer {layer} expert {expert} is already checked out; fix: use the \
         existing guard",
        path.display()
    )]
    AlreadyCheckedOut {
        path: PathBuf,
        layer: usize,
        expert: usize,
    },
    #[error("expert store {}: {what}", path.display())]
    Layout { path: PathBuf, what: String },
}

pub type Result<T> = std::result::Result<T, StoreError>;

fn io_err(path: &Path, op: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
    let (path, op) = (path.to_path_buf(), op.into());
    move |source| StoreError::Io { path, op, source }
}

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

    fn tensor_offsets(&self) -> Vec<usize> {
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
struct Header {
    layout: StoreLayout,
    sections: Vec<String>,
    region_bytes: usize,
    region_stride: usize,
    alignment: usize,
    table_offset: usize,
    data_offset: usize,
    file_len: u64,
}

impl Header {
    fn new(layout: StoreLayout) -> (Self, Vec<u8>) {
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

#[derive(Clone, Copy, Debug, PartialEq)]
struct Entry {
    generation: u64,
    flags: u64,
    checksum: [u8; 32],
}

impl Entry {
    fn encode(&self) -> [u8; ENTRY] {
        let mut b = [0u8; ENTRY];
        b[0..8].copy_from_slice(&self.generation.to_le_bytes());
        b[8..16].copy_from_slice(&self.flags.to_le_bytes());
        b[16..48].copy_from_slice(&self.checksum);
        let h = blake3::hash(&b[..48]);
        b[48..64].copy_from_slice(&h.as_bytes()[..16]);
        b
    }

    fn decode(b: &[u8]) -> Option<Entry> {
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

struct State {
    checked_out: Vec<bool>,
    modified: Vec<bool>,
    /// Gradients were accumulated since the last [`ExpertRegion::zero_grads`] (in memory only: the
    /// trainer zeroes every such region in the step that accumulated them).
    has_grads: Vec<bool>,
    resident: usize,
    peak_resident: usize,
    max_resident: usize,
}

/// The memory-mapped expert store. See the module documentation.
pub struct ExpertStore {
    path: PathBuf,
    _file: File,
    map: MmapRaw,
    header: Header,
    offsets: Vec<usize>,
    state: Mutex<State>,
}

impl std::fmt::Debug for ExpertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExpertStore")
            .field("path", &self.path)
            .field("layout", &self.header.layout)
            .finish_non_exhaustive()
    }
}

fn check_platform(path: &Path) -> Result<()> {
    if cfg!(target_endian = "big") {
        return Err(StoreError::Layout {
            path: path.to_path_buf(),
            what: "the store format is little-endian; this platform is big-endian".into(),
        });
    }
    Ok(())
}

fn f32_bytes(v: &[f32]) -> &[u8] {
    // SAFETY: any f32 is 4 initialised bytes; u8 has alignment 1.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

impl ExpertStore {
    /// Creates the store at `path` (through `path.tmp`, renamed into place when complete and fsynced):
    /// weights from `init(layer, expert, tensor_name)` (length = the tensor's elements), gradients and
    /// moments zero, generation 0, every region committed. At most `max_resident` = all regions.
    pub fn create(
        path: &Path,
        layout: StoreLayout,
        mut init: impl FnMut(usize, usize, &str) -> Result<Vec<f32>>,
    ) -> Result<Self> {
        check_platform(path)?;
        if layout.n_regions() == 0 || layout.expert_elems() == 0 {
            return Err(StoreError::Layout {
                path: path.to_path_buf(),
                what: format!("layout holds no expert state: {layout:?}"),
            });
        }
        let tmp = path.with_extension("tmp");
        let res = Self::write_new(path, &tmp, layout, &mut init);
        if res.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        res?;
        std::fs::rename(&tmp, path).map_err(io_err(path, "rename the finished temp file"))?;
        if let Some(Ok(d)) = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map(File::open)
        {
            let _ = d.sync_all();
        }
        Self::open_inner(path, false)
    }

    fn write_new(
        path: &Path,
        tmp: &Path,
        layout: StoreLayout,
        init: &mut impl FnMut(usize, usize, &str) -> Result<Vec<f32>>,
    ) -> Result<()> {
        let (h, head_bytes) = Header::new(layout);
        let file = File::create(tmp).map_err(io_err(tmp, "create"))?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        let write_err = || io_err(tmp, "write (disk full?)");
        // Header and a placeholder table; the table is rewritten once the checksums are known.
        let mut pre = head_bytes;
        pre.resize(h.data_offset, 0);
        w.write_all(&pre).map_err(write_err())?;
        let zeros = vec![0u8; 1 << 16];
        let write_zeros = |w: &mut BufWriter<File>, mut n: usize| -> Result<()> {
            while n > 0 {
                let k = n.min(zeros.len());
                w.write_all(&zeros[..k]).map_err(write_err())?;
                n -= k;
            }
            Ok(())
        };
        let mut entries = Vec::with_capacity(h.layout.n_regions());
        let layout = h.layout.clone();
        for &layer in &layout.moe_layers {
            for expert in 0..layout.n_experts {
                let mut hasher = blake3::Hasher::new();
                for t in &layout.tensors {
                    let v = init(layer, expert, &t.name)?;
                    if v.len() != t.elems() {
                        return Err(StoreError::Layout {
                            path: path.to_path_buf(),
                            what: format!(
                                "init gave {} values for `{}` (shape {:?}, {} elements)",
                                v.len(),
                                StoreLayout::param_name(layer, expert, &t.name),
                                t.shape,
                                t.elems()
                            ),
                        });
                    }
                    let b = f32_bytes(&v);
                    hasher.update(b);
                    w.write_all(b).map_err(write_err())?;
                }
                let rest = 3 * 4 * layout.expert_elems();
                let mut left = rest;
                while left > 0 {
                    let k = left.min(zeros.len());
                    hasher.update(&zeros[..k]);
                    left -= k;
                }
                write_zeros(&mut w, rest + h.region_stride - h.region_bytes)?;
                entries.push(Entry {
                    generation: 0,
                    flags: 0,
                    checksum: *hasher.finalize().as_bytes(),
                });
            }
        }
        let mut file = w
            .into_inner()
            .map_err(|e| io_err(tmp, "write (disk full?)")(e.into_error()))?;
        let table: Vec<u8> = entries.iter().flat_map(|e| e.encode()).collect();
        use std::io::{Seek, SeekFrom};
        file.seek(SeekFrom::Start(h.table_offset as u64))
            .map_err(io_err(tmp, "seek"))?;
        file.write_all(&table).map_err(write_err())?;
        file.sync_all().map_err(io_err(tmp, "fsync"))
    }

    /// Creates the store at `store_path` from the expert tensors of a model safetensors file
    /// (`model_path`, any float dtype, converted to f32); other tensors are ignored.
    pub fn from_safetensors(
        model_path: &Path,
        store_path: &Path,
        cfg: &ModelConfig,
    ) -> Result<Self> {
        let file = File::open(model_path).map_err(io_err(model_path, "open model safetensors"))?;
        // SAFETY: read-only map of a file we do not modify; see the module caveat on truncation.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err(model_path, "mmap"))?;
        let st_err = |what: String| StoreError::Layout {
            path: model_path.to_path_buf(),
            what,
        };
        let st = safetensors::SafeTensors::deserialize(&map)
            .map_err(|e| st_err(format!("not a safetensors file: {e}")))?;
        let layout = StoreLayout::from_config(cfg);
        let shapes: HashMap<String, Vec<usize>> = layout
            .tensors
            .iter()
            .map(|t| (t.name.clone(), t.shape.clone()))
            .collect();
        Self::create(store_path, layout, |layer, expert, tensor| {
            let name = StoreLayout::param_name(layer, expert, tensor);
            let view = st
                .tensor(&name)
                .map_err(|_| st_err(format!("missing tensor `{name}` (another configuration?)")))?;
            let want = &shapes[tensor];
            if view.shape() != want.as_slice() {
                return Err(st_err(format!(
                    "`{name}` has shape {:?}, the configuration says {want:?}",
                    view.shape()
                )));
            }
            let dtype = match view.dtype() {
                safetensors::Dtype::F32 => DType::F32,
                safetensors::Dtype::F16 => DType::F16,
                safetensors::Dtype::BF16 => DType::BF16,
                safetensors::Dtype::F64 => DType::F64,
                d => {
                    return Err(st_err(format!(
                        "`{name}` has dtype {d:?}, expected a float"
                    )));
                }
            };
            let conv = |e: candle_core::Error| st_err(format!("`{name}`: {e}"));
            Tensor::from_raw_buffer(view.data(), dtype, view.shape(), &Device::Cpu)
                .and_then(|t| t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>())
                .map_err(conv)
        })
    }

    /// Writes every expert's weights (f32, the model's names) to `path` through a temp file renamed into
    /// place. Regions read here are released afterwards (checked-out ones are skipped by the release).
    pub fn export_safetensors(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("safetensors.tmp");
        safetensors::serialize_to_file(self.weight_views()?, None, &tmp).map_err(|e| {
            StoreError::Layout {
                path: path.to_path_buf(),
                what: format!("writing safetensors: {e}"),
            }
        })?;
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io_err(&tmp, "fsync"))?;
        std::fs::rename(&tmp, path).map_err(io_err(path, "rename the finished temp file"))?;
        self.release_all()
    }

    /// Every expert's weights as safetensors views of the map, under the model's names. Reading them
    /// maps the pages in: call [`ExpertStore::release_all`] when done.
    pub fn weight_views(&self) -> Result<Vec<(String, safetensors::tensor::TensorView<'_>)>> {
        let l = &self.header.layout;
        let mut views = Vec::with_capacity(l.n_regions() * l.tensors.len());
        for (idx, &layer) in l.moe_layers.iter().enumerate() {
            for expert in 0..l.n_experts {
                let r = idx * l.n_experts + expert;
                for (t, spec) in l.tensors.iter().enumerate() {
                    let data = self.slice(r, Part::Weights, t);
                    let view = safetensors::tensor::TensorView::new(
                        safetensors::Dtype::F32,
                        spec.shape.clone(),
                        f32_bytes(data),
                    )
                    .map_err(|e| StoreError::Layout {
                        path: self.path.clone(),
                        what: e.to_string(),
                    })?;
                    views.push((StoreLayout::param_name(layer, expert, &spec.name), view));
                }
            }
        }
        Ok(views)
    }

    /// Opens `path`, verifying the header, the table and every region's checksum (in parallel; each
    /// region's pages are released after hashing, so opening does not leave the store resident).
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_inner(path, true)
    }

    /// [`ExpertStore::open`] without hashing the regions (header and table are still checked).
    pub fn open_unverified(path: &Path) -> Result<Self> {
        Self::open_inner(path, false)
    }

    fn open_inner(path: &Path, verify: bool) -> Result<Self> {
        check_platform(path)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_err(path, "open"))?;
        let len = file.metadata().map_err(io_err(path, "stat"))?.len();
        let header_err = |what: String| StoreError::Header {
            path: path.to_path_buf(),
            what,
        };
        if len < 16 {
            return Err(header_err(format!("file is {len} bytes")));
        }
        // SAFETY: a shared map of a file this process owns for the store's lifetime; see the module
        // caveat about other processes truncating it.
        let map = MmapRaw::map_raw(&file).map_err(io_err(path, "mmap"))?;
        // SAFETY: the map is `len` bytes and nothing writes it yet.
        let bytes = unsafe { std::slice::from_raw_parts(map.as_ptr(), map.len()) };
        if &bytes[..8] != MAGIC {
            return Err(StoreError::BadMagic {
                path: path.to_path_buf(),
                found: bytes[..8].to_vec(),
            });
        }
        let word =
            |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
        let version = word(8);
        if version != VERSION {
            return Err(StoreError::Version {
                path: path.to_path_buf(),
                found: version,
            });
        }
        let json_len = word(12) as usize;
        if 16 + json_len + 32 > bytes.len() {
            return Err(header_err(format!(
                "header length {json_len} exceeds the file ({len} bytes)"
            )));
        }
        let head = &bytes[..16 + json_len];
        if blake3::hash(head).as_bytes() != &bytes[16 + json_len..16 + json_len + 32] {
            return Err(header_err("header checksum mismatch".into()));
        }
        let header: Header = serde_json::from_slice(&head[16..])
            .map_err(|e| header_err(format!("layout JSON: {e}")))?;
        let (expected, _) = Header::new(header.layout.clone());
        if expected != header {
            return Err(header_err(format!(
                "geometry does not match its layout (written by another build?): {header:?}"
            )));
        }
        if header.layout.n_regions() == 0 || header.layout.expert_elems() == 0 {
            return Err(header_err(format!(
                "layout holds no expert state: {:?}",
                header.layout
            )));
        }
        if len < header.file_len {
            let data_len = len.saturating_sub(header.data_offset as u64);
            let r = (data_len / header.region_stride as u64) as usize;
            let n = header.layout.n_experts;
            let r = r.min(header.layout.n_regions().saturating_sub(1));
            return Err(StoreError::Truncated {
                path: path.to_path_buf(),
                len,
                expected: header.file_len,
                layer: header.layout.moe_layers[r / n],
                expert: r % n,
            });
        }
        let n = header.layout.n_regions();
        let store = ExpertStore {
            path: path.to_path_buf(),
            _file: file,
            offsets: header.layout.tensor_offsets(),
            state: Mutex::new(State {
                checked_out: vec![false; n],
                modified: vec![false; n],
                has_grads: vec![false; n],
                resident: 0,
                peak_resident: 0,
                max_resident: n,
            }),
            map,
            header,
        };
        for r in 0..n {
            let e = store.entry(r)?;
            if e.flags & FLAG_MODIFIED != 0 {
                let (layer, expert) = store.coords(r);
                return Err(StoreError::Uncommitted {
                    path: path.to_path_buf(),
                    layer,
                    expert,
                });
            }
        }
        if verify {
            store.verify()?;
        }
        Ok(store)
    }

    /// Re-hashes every region not currently checked out or modified and compares with the table
    /// (releasing each region's pages afterwards). The first mismatch, in region order, is the error.
    pub fn verify(&self) -> Result<()> {
        let skip: Vec<bool> = {
            let st = self.lock();
            (0..self.n_regions())
                .map(|r| st.checked_out[r] || st.modified[r])
                .collect()
        };
        let bad: Vec<Option<StoreError>> = (0..self.n_regions())
            .into_par_iter()
            .map(|r| {
                if skip[r] {
                    return None;
                }
                let computed = blake3::hash(self.region_bytes(r));
                let _ = self.madvise_dontneed(r);
                let stored = match self.entry_locked(r) {
                    Ok(e) => e.checksum,
                    Err(e) => return Some(e),
                };
                (computed.as_bytes() != &stored).then(|| {
                    let (layer, expert) = self.coords(r);
                    StoreError::Checksum {
                        path: self.path.clone(),
                        layer,
                        expert,
                        stored: blake3::Hash::from_bytes(stored).to_hex()[..16].to_string(),
                        computed: computed.to_hex()[..16].to_string(),
                    }
                })
            })
            .collect();
        match bad.into_iter().flatten().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn layout(&self) -> &StoreLayout {
        &self.header.layout
    }

    pub fn n_regions(&self) -> usize {
        self.header.layout.n_regions()
    }

    /// Bytes of one region in the file (a multiple of [`ALIGN`]).
    pub fn region_stride(&self) -> usize {
        self.header.region_stride
    }

    /// Sets the number of regions that may be checked out at once (≥ 1). Regions already checked out
    /// stay; new check-outs fail while `resident ≥ max`.
    pub fn set_max_resident(&self, max: usize) {
        self.lock().max_resident = max.max(1);
    }

    pub fn max_resident(&self) -> usize {
        self.lock().max_resident
    }

    /// Regions checked out now.
    pub fn resident(&self) -> usize {
        self.lock().resident
    }

    /// The most regions ever checked out at once.
    pub fn peak_resident(&self) -> usize {
        self.lock().peak_resident
    }

    /// Commits of (layer, expert) so far.
    pub fn generation(&self, layer: usize, expert: usize) -> Result<u64> {
        let r = self.index(layer, expert)?;
        let _st = self.lock();
        Ok(self.entry(r)?.generation)
    }

    /// Every region's generation, in region order (MoE layer, then expert).
    pub fn generations(&self) -> Result<Vec<u64>> {
        let _st = self.lock();
        (0..self.n_regions())
            .map(|r| Ok(self.entry(r)?.generation))
            .collect()
    }

    /// Checks (layer, expert) out: fails if it is checked out already or if `max_resident` regions are.
    pub fn region(&self, layer: usize, expert: usize) -> Result<ExpertRegion<'_>> {
        let r = self.index(layer, expert)?;
        let mut st = self.lock();
        if st.checked_out[r] {
            return Err(StoreError::AlreadyCheckedOut {
                path: self.path.clone(),
                layer,
                expert,
            });
        }
        if st.resident >= st.max_resident {
            let held: Vec<String> = (0..self.n_regions())
                .filter(|&i| st.checked_out[i])
                .map(|i| {
                    let (l, e) = self.coords(i);
                    format!("layer {l} expert {e}")
                })
                .collect();
            return Err(StoreError::TooManyResident {
                path: self.path.clone(),
                layer,
                expert,
                resident: st.resident,
                max: st.max_resident,
                held: held.join(", "),
            });
        }
        st.checked_out[r] = true;
        st.resident += 1;
        st.peak_resident = st.peak_resident.max(st.resident);
        Ok(ExpertRegion {
            store: self,
            r,
            layer,
            expert,
        })
    }

    /// The checksum recorded for (layer, expert) at its last commit.
    pub fn checksum(&self, layer: usize, expert: usize) -> Result<[u8; 32]> {
        let r = self.index(layer, expert)?;
        let _st = self.lock();
        Ok(self.entry(r)?.checksum)
    }

    /// Regions whose gradient accumulators received gradients since they were last zeroed, in region
    /// order (MoE layer, then expert).
    pub fn regions_with_grads(&self) -> Vec<(usize, usize)> {
        let st = self.lock();
        (0..self.n_regions())
            .filter(|&r| st.has_grads[r])
            .map(|r| self.coords(r))
            .collect()
    }

    /// Asks the kernel to read (layer, expert) into the page cache in the background
    /// (`madvise(MADV_WILLNEED)`), so that its next check-out does not wait on the disk. It does not
    /// map the pages into this process (no RSS) and does not count as resident.
    pub fn prefetch(&self, layer: usize, expert: usize) -> Result<()> {
        let r = self.index(layer, expert)?;
        #[cfg(unix)]
        self.map
            .advise_range(
                memmap2::Advice::WillNeed,
                self.region_offset(r),
                self.header.region_stride,
            )
            .map_err(io_err(&self.path, "madvise(MADV_WILLNEED)"))?;
        #[cfg(not(unix))]
        let _ = r;
        Ok(())
    }

    /// Commits every modified region that is not checked out (hash, generation + 1, msync). Returns
    /// how many were committed. Call before copying the store into a checkpoint.
    pub fn commit_all(&self) -> Result<usize> {
        let todo: Vec<usize> = {
            let st = self.lock();
            (0..self.n_regions())
                .filter(|&r| st.modified[r] && !st.checked_out[r])
                .collect()
        };
        for &r in &todo {
            self.commit_region(r)?;
            self.madvise_dontneed(r)?;
        }
        Ok(todo.len())
    }

    /// Drops (layer, expert)'s pages from this process's resident set (no-op while it is checked out:
    /// its guard releases it on drop).
    pub fn release(&self, layer: usize, expert: usize) -> Result<()> {
        let r = self.index(layer, expert)?;
        if self.lock().checked_out[r] {
            return Ok(());
        }
        self.release_region(r)
    }

    /// [`ExpertStore::release`] of every region not checked out.
    pub fn release_all(&self) -> Result<()> {
        for r in 0..self.n_regions() {
            if !self.lock().checked_out[r] {
                self.release_region(r)?;
            }
        }
        Ok(())
    }

    /// Linux: bytes of this store's mapping resident in this process (the `Rss` of its mapping in
    /// `/proc/self/smaps`); `None` elsewhere or if it cannot be read.
    pub fn mapped_rss_bytes(&self) -> Option<u64> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let start = format!("{:x}-", self.map.as_ptr() as usize);
        let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&start));
        lines.next()?;
        lines
            .find_map(|l| l.strip_prefix("Rss:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    }

    // ---- internals ----

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn index(&self, layer: usize, expert: usize) -> Result<usize> {
        let l = &self.header.layout;
        match l.moe_layers.iter().position(|&m| m == layer) {
            Some(i) if expert < l.n_experts => Ok(i * l.n_experts + expert),
            _ => Err(StoreError::NoSuchRegion {
                path: self.path.clone(),
                layer,
                expert,
                moe_layers: l.moe_layers.clone(),
                n_experts: l.n_experts,
            }),
        }
    }

    fn coords(&self, r: usize) -> (usize, usize) {
        let n = self.header.layout.n_experts;
        (self.header.layout.moe_layers[r / n], r % n)
    }

    fn region_offset(&self, r: usize) -> usize {
        self.header.data_offset + r * self.header.region_stride
    }

    fn region_bytes(&self, r: usize) -> &[u8] {
        // SAFETY: in bounds (file_len checked at open); callers hash regions nobody writes meanwhile.
        unsafe {
            std::slice::from_raw_parts(
                self.map.as_ptr().add(self.region_offset(r)),
                self.header.region_bytes,
            )
        }
    }

    fn part_ptr(&self, r: usize, part: Part, t: usize) -> (*mut f32, usize) {
        let elems = self.header.layout.expert_elems();
        let off = self.region_offset(r) + 4 * (part as usize * elems + self.offsets[t]);
        // SAFETY: offset in bounds of the map; page-aligned base + multiple of 4 → f32-aligned.
        let ptr = unsafe { self.map.as_mut_ptr().add(off) }.cast::<f32>();
        (ptr, self.header.layout.tensors[t].elems())
    }

    fn slice(&self, r: usize, part: Part, t: usize) -> &[f32] {
        let (p, n) = self.part_ptr(r, part, t);
        // SAFETY: in bounds, aligned; callers hold no `&mut` to this region (a guard's `&mut` access
        // borrows the guard mutably, and regions not checked out are only read).
        unsafe { std::slice::from_raw_parts(p, n) }
    }

    fn entry_locked(&self, r: usize) -> Result<Entry> {
        let _st = self.lock();
        self.entry(r)
    }

    fn entry(&self, r: usize) -> Result<Entry> {
        let off = self.header.table_offset + r * ENTRY;
        // SAFETY: the table lies inside the header area, in bounds.
        let b = unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(off), ENTRY) };
        Entry::decode(b).ok_or_else(|| {
            let (layer, expert) = self.coords(r);
            StoreError::TableEntry {
                path: self.path.clone(),
                layer,
                expert,
            }
        })
    }

    /// Caller holds the state lock (table writes are serialised by it).
    fn write_entry(&self, r: usize, e: &Entry) {
        let off = self.header.table_offset + r * ENTRY;
        let b = e.encode();
        // SAFETY: in bounds; writers are serialised by the state lock, no `&` slice of the table lives
        // across it.
        unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), self.map.as_mut_ptr().add(off), ENTRY) };
    }

    fn mark_modified(&self, r: usize) -> Result<()> {
        let mut st = self.lock();
        if !st.modified[r] {
            let mut e = self.entry(r)?;
            e.flags |= FLAG_MODIFIED;
            self.write_entry(r, &e);
            st.modified[r] = true;
        }
        Ok(())
    }

    fn commit_region(&self, r: usize) -> Result<u64> {
        let off = self.region_offset(r);
        self.map
            .flush_range(off, self.header.region_bytes)
            .map_err(io_err(&self.path, "msync region"))?;
        let sum = blake3::hash(self.region_bytes(r));
        let mut st = self.lock();
        let mut e = self.entry(r)?;
        e.generation += 1;
        e.flags &= !FLAG_MODIFIED;
        e.checksum = *sum.as_bytes();
        self.write_entry(r, &e);
        st.modified[r] = false;
        let toff = self.header.table_offset + r * ENTRY;
        self.map
            .flush_range(toff, ENTRY)
            .map_err(io_err(&self.path, "msync table"))?;
        Ok(e.generation)
    }

    fn madvise_dontneed(&self, r: usize) -> Result<()> {
        #[cfg(unix)]
        {
            // SAFETY: MADV_DONTNEED on a MAP_SHARED file mapping drops only this process's page
            // table entries; the contents stay in the page cache / file and are read back on access.
            unsafe {
                self.map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    self.region_offset(r),
                    self.header.region_stride,
                )
            }
            .map_err(io_err(&self.path, "madvise(MADV_DONTNEED)"))?;
        }
        #[cfg(not(unix))]
        let _ = r;
        Ok(())
    }

    /// Starts write-back of a modified region, then drops its pages from the resident set.
    fn release_region(&self, r: usize) -> Result<()> {
        if self.lock().modified[r] {
            self.map
                .flush_async_range(self.region_offset(r), self.header.region_bytes)
                .map_err(io_err(&self.path, "msync(MS_ASYNC) region"))?;
        }
        self.madvise_dontneed(r)
    }
}

/// One region checked out of the store. Read access through `&self`, write access through `&mut self`
/// (which marks the region modified). Dropping it releases the region's pages; [`ExpertRegion::commit`]
/// makes the changes durable and checksummed first.
pub struct ExpertRegion<'a> {
    store: &'a ExpertStore,
    r: usize,
    layer: usize,
    expert: usize,
}

impl std::fmt::Debug for ExpertRegion<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExpertRegion")
            .field("layer", &self.layer)
            .field("expert", &self.expert)
            .finish()
    }
}

// SAFETY: a guard is the only handle to its region's bytes (check-out is exclusive), and the store it
// borrows is `Sync` (the map is shared, bookkeeping behind a mutex). Moving it to a prefetch thread is
// sound.
unsafe impl Send for ExpertRegion<'_> {}
unsafe impl Sync for ExpertRegion<'_> {}

/// Mutable views of one tensor's four parts, for an in-place optimizer update.
pub struct TensorState<'g> {
    pub weights: &'g mut [f32],
    pub grads: &'g mut [f32],
    pub m: &'g mut [f32],
    pub v: &'g mut [f32],
}

impl ExpertRegion<'_> {
    pub fn layer(&self) -> usize {
        self.layer
    }

    pub fn expert(&self) -> usize {
        self.expert
    }

    pub fn layout(&self) -> &StoreLayout {
        self.store.layout()
    }

    /// Part `part` of tensor `t` (index into [`StoreLayout::tensors`]).
    pub fn get(&self, part: Part, t: usize) -> &[f32] {
        self.store.slice(self.r, part, t)
    }

    /// Mutable part `part` of tensor `t`; marks the region modified.
    pub fn get_mut(&mut self, part: Part, t: usize) -> Result<&mut [f32]> {
        self.store.mark_modified(self.r)?;
        let (p, n) = self.store.part_ptr(self.r, part, t);
        // SAFETY: the guard owns the region exclusively and `&mut self` forbids other views through it.
        Ok(unsafe { std::slice::from_raw_parts_mut(p, n) })
    }

    pub fn weights(&self, t: usize) -> &[f32] {
        self.get(Part::Weights, t)
    }

    pub fn grads(&self, t: usize) -> &[f32] {
        self.get(Part::Grads, t)
    }

    /// All four parts of tensor `t` at once (disjoint), marking the region modified.
    pub fn tensor_mut(&mut self, t: usize) -> Result<TensorState<'_>> {
        self.store.mark_modified(self.r)?;
        let s = self.store;
        let mk = |part| {
            let (p, n) = s.part_ptr(self.r, part, t);
            // SAFETY: the four parts are disjoint ranges of a region this guard owns exclusively.
            unsafe { std::slice::from_raw_parts_mut(p, n) }
        };
        Ok(TensorState {
            weights: mk(Part::Weights),
            grads: mk(Part::Grads),
            m: mk(Part::M),
            v: mk(Part::V),
        })
    }

    /// Sets every gradient accumulator of the region to zero.
    pub fn zero_grads(&mut self) -> Result<()> {
        for t in 0..self.store.header.layout.tensors.len() {
            self.get_mut(Part::Grads, t)?.fill(0.0);
        }
        self.store.lock().has_grads[self.r] = false;
        Ok(())
    }

    /// Adds `grad` to the gradient accumulator of tensor `t` and notes that the region holds
    /// gradients ([`ExpertStore::regions_with_grads`]).
    pub fn add_grads(&mut self, t: usize, grad: &[f32]) -> Result<()> {
        let (layer, expert, path) = (self.layer, self.expert, self.store.path.clone());
        let acc = self.get_mut(Part::Grads, t)?;
        if acc.len() != grad.len() {
            return Err(StoreError::Layout {
                path,
                what: format!(
                    "layer {layer} expert {expert}: {} gradient values for tensor {t} of {} elements",
                    grad.len(),
                    acc.len()
                ),
            });
        }
        for (a, g) in acc.iter_mut().zip(grad) {
            *a += g;
        }
        self.store.lock().has_grads[self.r] = true;
        Ok(())
    }

    /// The region's bytes (weights, grads, m, v), as its checksum covers them.
    pub fn bytes(&self) -> &[u8] {
        self.store.region_bytes(self.r)
    }

    /// Replaces the region's bytes with `bytes` (a copy made by [`ExpertRegion::bytes`]) that must
    /// hash to `checksum`, and records `generation` for it, committed: how a checkpoint's copy of the
    /// region is restored. `what` names the copy in errors.
    pub fn restore(
        self,
        bytes: &[u8],
        generation: u64,
        checksum: [u8; 32],
        what: &str,
    ) -> Result<()> {
        let store = self.store;
        let (layer, expert) = (self.layer, self.expert);
        let computed = blake3::hash(bytes);
        if bytes.len() != store.header.region_bytes || computed.as_bytes() != &checksum {
            return Err(StoreError::Layout {
                path: store.path.clone(),
                what: format!(
                    "layer {layer} expert {expert}: the copy in {what} is damaged ({} bytes, expected {}; checksum {} vs recorded {})",
                    bytes.len(),
                    store.header.region_bytes,
                    &computed.to_hex()[..16],
                    &blake3::Hash::from_bytes(checksum).to_hex()[..16]
                ),
            });
        }
        store.mark_modified(self.r)?;
        let off = store.region_offset(self.r);
        // SAFETY: the guard owns the region exclusively; `bytes` is region_bytes long (checked).
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                store.map.as_mut_ptr().add(off),
                bytes.len(),
            )
        };
        store
            .map
            .flush_range(off, store.header.region_bytes)
            .map_err(io_err(&store.path, "msync region"))?;
        let mut st = store.lock();
        let mut e = store.entry(self.r)?;
        e.generation = generation;
        e.flags &= !FLAG_MODIFIED;
        e.checksum = checksum;
        store.write_entry(self.r, &e);
        st.modified[self.r] = false;
        st.has_grads[self.r] = false;
        let toff = store.header.table_offset + self.r * ENTRY;
        store
            .map
            .flush_range(toff, ENTRY)
            .map_err(io_err(&store.path, "msync table"))?;
        Ok(())
    }

    /// Commits the region (msync, checksum, generation + 1; a no-op if unmodified) and releases it.
    /// Returns the region's generation.
    pub fn commit(self) -> Result<u64> {
        let modified = self.store.lock().modified[self.r];
        let generation = if modified {
            self.store.commit_region(self.r)?
        } else {
            self.store.entry(self.r)?.generation
        };
        Ok(generation)
    }
}

impl Drop for ExpertRegion<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.store.release_region(self.r) {
            tracing::warn!("{e}");
        }
        let mut st = self.store.lock();
        st.checked_out[self.r] = false;
        st.resident -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let cfg = ModelConfig::from_preset("micro").unwrap();
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

    fn vm_rss() -> Option<u64> {
        let s = std::fs::read_to_string("/proc/self/status").ok()?;
        let l = s.lines().find(|l| l.starts_with("VmRSS:"))?;
        l[6..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .ok()
            .map(|k| k * 1024)
    }

    #[test]
    fn release_lowers_rss_and_open_verify_speed() {
        if !cfg!(target_os = "linux") || vm_rss().is_none() {
            eprintln!("skipped: no /proc/self/status");
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
}
