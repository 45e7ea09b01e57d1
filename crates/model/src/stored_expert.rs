//! An expert whose weights live in an [`ExpertStore`] region instead of candle variables: a candle
//! custom op over the expert's input rows, so that the rest of the model's graph (router, attention,
//! dense blocks) is unchanged and only the expert computation is swapped.
//!
//! - Forward: check the region out, copy its three weight matrices into tensors, run the resident
//!   expert's kernels (`gate`, `up`, SwiGLU, `down`), release the region. The op keeps the expert's
//!   activations `gate(x)` and `up(x)` (activations, not weights: what a resident expert's graph keeps
//!   too), so the backward does not recompute the forward.
//! - Backward: check the region out again and run the same kernels' backwards on the kept activations
//!   (`silu(g)·u` is recomputed, one element-wise pass). The weight gradients are added to the region's
//!   gradient accumulators; the input gradient returns to the graph. Release the region.
//!
//! Using the resident expert's own kernels both ways makes the swapped path compute the same floats as
//! the all-resident path, in the same order: the two agree bit for bit (tested in the trainer). Under
//! activation checkpointing the block's forward runs twice (once without keeping its graph), as for a
//! resident expert.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};

use crate::expert_store::{ExpertRegion, ExpertStore, Part, StoreError};
use crate::kernels;

/// The custom op of one (MoE layer, expert) of a store.
pub struct StoredExpert {
    pub store: Arc<ExpertStore>,
    pub layer: usize,
    pub expert: usize,
    /// `gate(x)` and `up(x)` of the forward, taken by the backward.
    saved: Mutex<Option<(Tensor, Tensor)>>,
}

fn candle_err(e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

impl StoredExpert {
    pub fn new(store: Arc<ExpertStore>, layer: usize, expert: usize) -> StoredExpert {
        StoredExpert {
            store,
            layer,
            expert,
            saved: Mutex::new(None),
        }
    }

    fn check_out(&self) -> candle_core::Result<ExpertRegion<'_>> {
        self.store
            .region(self.layer, self.expert)
            .map_err(|e: StoreError| candle_err(e))
    }

    /// The expert's weights, copied out of the region.
    fn weights(region: &ExpertRegion) -> candle_core::Result<Vec<Tensor>> {
        let specs = &region.layout().tensors;
        (0..specs.len())
            .map(|t| Tensor::from_slice(region.weights(t), specs[t].shape.as_slice(), &Device::Cpu))
            .collect()
    }
}

/// The store's tensor order is `gate`, `up`, `down` ([`crate::expert_store::StoreLayout::from_config`]).
const GATE: usize = 0;
const UP: usize = 1;
const DOWN: usize = 2;

impl CustomOp1 for StoredExpert {
    fn name(&self) -> &'static str {
        "stored-expert"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(data), Some((a, b))) = (storage, layout.contiguous_offsets()) else {
            candle_core::bail!("stored-expert needs a contiguous f32 input")
        };
        let x = Tensor::from_slice(&data[a..b], layout.shape(), &Device::Cpu)?;
        let region = self.check_out()?;
        region.populate(Part::Weights, 1, false);
        let w = Self::weights(&region)?;
        // SwiGlu::forward's kernels, with its activations kept.
        let g = kernels::linear(&x, &w[GATE])?;
        let u = kernels::linear(&x, &w[UP])?;
        let y = kernels::linear(&kernels::swiglu(&g, &u)?, &w[DOWN])?;
        drop(w);
        drop(region);
        *self.saved.lock().unwrap_or_else(|e| e.into_inner()) = Some((g, u));
        let shape = y.shape().clone();
        let out = y.flatten_all()?.to_vec1::<f32>()?;
        Ok((CpuStorage::F32(out), shape))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        if arg.dtype() != DType::F32 {
            candle_core::bail!("stored-expert trains in f32, got {:?}", arg.dtype())
        }
        let (g, u) = self
            .saved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| candle_err("stored-expert: backward without a forward"))?;
        let mut region = self.check_out()?;
        region.populate(Part::Weights, 1, false);
        region.populate(Part::Grads, 1, true);
        let w = Self::weights(&region)?;
        let x = arg.detach();
        let grad = grad.detach();
        let h = kernels::swiglu(&g, &u)?;
        let (dh, d_down) = kernels::linear_backward(&h, &w[DOWN], &grad)?;
        drop(h);
        let (dg, du) = kernels::swiglu_backward(&g, &u, &dh)?;
        drop((g, u, dh));
        let (dx_gate, d_gate) = kernels::linear_backward(&x, &w[GATE], &dg)?;
        let (dx_up, d_up) = kernels::linear_backward(&x, &w[UP], &du)?;
        drop(w);
        for (t, d) in [(GATE, d_gate), (UP, d_up), (DOWN, d_down)] {
            region
                .add_grads(t, &d.flatten_all()?.to_vec1::<f32>()?)
                .map_err(candle_err)?;
        }
        drop(region);
        // Two contributions to the input's gradient; IEEE addition is commutative, so this is the
        // graph's sum whichever it adds first.
        let gx = (dx_gate + dx_up)?;
        Ok(Some(gx))
    }
}
