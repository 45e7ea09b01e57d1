//! Making and opening the store's file: [`ExpertStore::create`] (through a temp file renamed into
//! place), [`ExpertStore::from_safetensors`] and [`ExpertStore::export_safetensors`] (the model's
//! expert tensors in and out), [`ExpertStore::open`] (header, table and every region's checksum
//! verified) and [`ExpertStore::verify`].

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};
use memmap2::MmapRaw;
use rayon::prelude::*;
use tardbot_core::ModelConfig;

use super::error::{Result, StoreError, io_err};
use super::format::{
    Entry, FLAG_MODIFIED, Header, MAGIC, Part, StoreLayout, VERSION, check_platform, f32_bytes,
};
use super::{ExpertStore, State};

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
                grad_sum_squares: vec![vec![0.0; header.layout.tensors.len()]; n],
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
}
