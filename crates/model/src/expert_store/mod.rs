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

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use memmap2::MmapRaw;

mod error;
mod file;
mod format;
mod region;
#[cfg(test)]
mod tests;

use error::io_err;
pub use error::{Result, StoreError};
pub use format::{ALIGN, MAGIC, Part, StoreLayout, TensorSpec, VERSION};
use format::{ENTRY, Entry, FLAG_MODIFIED, Header};
pub use region::{ExpertRegion, TensorState};

/// The sum of squares of `data` in f64: per chunk of 2¹⁶ values in parallel, the chunks' sums added
/// in order (the same value whatever the thread count; exact resume relies on it). The one
/// definition the gradient norm uses for every parameter, resident or stored.
pub fn sum_squares(data: &[f32]) -> f64 {
    use rayon::prelude::*;
    let partial: Vec<f64> = data
        .par_chunks(1 << 16)
        .map(|c| c.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>())
        .collect();
    partial.iter().sum()
}

struct State {
    checked_out: Vec<bool>,
    modified: Vec<bool>,
    /// Gradients were accumulated since the last [`ExpertRegion::zero_grads`] (in memory only: the
    /// trainer zeroes every such region in the step that accumulated them).
    has_grads: Vec<bool>,
    /// Per region and tensor, the sum of squares of the gradient accumulator, computed by
    /// [`ExpertRegion::add_grads`] right after each addition (the slice is in cache then), so that the
    /// gradient norm needs no second pass over the region.
    grad_sum_squares: Vec<Vec<f64>>,
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

impl ExpertStore {
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

    /// The sum of squares of each tensor's accumulated gradient of (layer, expert), in tensor order;
    /// `None` for a region without gradients. Equal to [`sum_squares`] over the accumulators.
    pub fn grad_sum_squares(&self, layer: usize, expert: usize) -> Result<Option<Vec<f64>>> {
        let r = self.index(layer, expert)?;
        let st = self.lock();
        Ok(st.has_grads[r].then(|| st.grad_sum_squares[r].clone()))
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

    /// Maps parts `first..first + n` of region `r` into this process in one call
    /// (`MADV_POPULATE_READ` / `_WRITE`, Linux 5.14+) instead of one page fault per 4 KiB page as
    /// the kernels touch them. Best effort: where the kernel lacks it, the pages fault in as before.
    fn populate(&self, r: usize, first: Part, n: usize, write: bool) {
        #[cfg(target_os = "linux")]
        {
            let part_bytes = 4 * self.header.layout.expert_elems();
            let off = self.region_offset(r) + first as usize * part_bytes;
            let advice = if write {
                memmap2::Advice::PopulateWrite
            } else {
                memmap2::Advice::PopulateRead
            };
            let _ = self.map.advise_range(advice, off, n * part_bytes);
        }
        #[cfg(not(target_os = "linux"))]
        let _ = (r, first, n, write);
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
