//! A region checked out of the store ([`ExpertRegion`]): read and write access to one expert's weights,
//! gradient accumulators and AdamW moments, commit, restore from a checkpoint's copy, and release of its
//! pages when the guard drops.

use super::ExpertStore;
use super::error::{Result, StoreError, io_err};
use super::format::{ENTRY, FLAG_MODIFIED, Part, StoreLayout};

/// One region checked out of the store. Read access through `&self`, write access through `&mut self`
/// (which marks the region modified). Dropping it releases the region's pages; [`ExpertRegion::commit`]
/// makes the changes durable and checksummed first.
pub struct ExpertRegion<'a> {
    pub(super) store: &'a ExpertStore,
    pub(super) r: usize,
    pub(super) layer: usize,
    pub(super) expert: usize,
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

    /// Maps parts `first..first + n` (in [`Part`] order: weights, grads, m, v) into the process in one
    /// call before a kernel reads (or, with `write`, writes) them: one system call rather than a page
    /// fault per page. Only a speed-up; access works without it.
    pub fn populate(&self, first: Part, n: usize, write: bool) {
        self.store.populate(self.r, first, n, write);
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
        let ss = super::sum_squares(acc);
        let mut st = self.store.lock();
        st.has_grads[self.r] = true;
        st.grad_sum_squares[self.r][t] = ss;
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
