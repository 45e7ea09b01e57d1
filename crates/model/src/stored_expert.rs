//! An expert whose weights live in an [`ExpertStore`] region instead of candle variables: a candle
//! custom op over the expert's input rows, so that the rest of the model's graph (router, attention,
//! dense blocks) is unchanged and only the expert computation is swapped.
//!
//! - Forward: check the region out, copy its three weight matrices into tensors, run the same
//!   [`SwiGlu`] as a resident expert, release the region. The graph keeps only the input rows, not the
//!   weights.
//! - Backward (the recomputing backward): check the region out again, rebuild the weights as
//!   variables, recompute the expert's forward on the saved input rows and back-propagate the incoming
//!   gradient through it (`(y · grad).sum()`). The weight gradients are added to the region's gradient
//!   accumulators; the input gradient returns to the graph. Release the region.
//!
//! Using the resident expert's own ops both ways makes the swapped path compute the same floats as the
//! all-resident path, in the same order: the two agree bit for bit (tested in the trainer).

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor, Var};

use crate::expert_store::{ExpertRegion, ExpertStore, StoreError};
use crate::mlp::SwiGlu;
use crate::ops::Linear;

/// The custom op of one (MoE layer, expert) of a store.
pub struct StoredExpert {
    pub store: Arc<ExpertStore>,
    pub layer: usize,
    pub expert: usize,
}

fn candle_err(e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

impl StoredExpert {
    fn check_out(&self) -> candle_core::Result<ExpertRegion<'_>> {
        self.store
            .region(self.layer, self.expert)
            .map_err(|e: StoreError| candle_err(e))
    }

    /// The expert's weights, copied out of the region: as plain tensors, or as variables for the
    /// backward.
    fn weights(region: &ExpertRegion) -> candle_core::Result<Vec<Tensor>> {
        let specs = &region.layout().tensors;
        (0..specs.len())
            .map(|t| Tensor::from_slice(region.weights(t), specs[t].shape.as_slice(), &Device::Cpu))
            .collect()
    }

    fn weight_vars(region: &ExpertRegion) -> candle_core::Result<Vec<Var>> {
        let specs = &region.layout().tensors;
        (0..specs.len())
            .map(|t| Var::from_slice(region.weights(t), specs[t].shape.as_slice(), &Device::Cpu))
            .collect()
    }
}

/// The store's tensor order is `gate`, `up`, `down` ([`crate::expert_store::StoreLayout::from_config`]).
fn swiglu(w: &[Tensor]) -> SwiGlu {
    SwiGlu {
        gate: Linear::new(w[0].clone()),
        up: Linear::new(w[1].clone()),
        down: Linear::new(w[2].clone()),
    }
}

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
        let w = Self::weights(&region)?;
        let y = swiglu(&w).forward(&x).map_err(candle_err)?;
        drop(w);
        drop(region);
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
        let mut region = self.check_out()?;
        let vars = Self::weight_vars(&region)?;
        let w: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        // A fresh graph rooted at the saved input rows: the nested backward stops there.
        let x = Var::from_tensor(&arg.detach())?;
        let y = swiglu(&w).forward(x.as_tensor()).map_err(candle_err)?;
        let grads = (y * grad.detach())?.sum_all()?.backward()?;
        for (t, v) in vars.iter().enumerate() {
            let g = grads
                .get(v.as_tensor())
                .ok_or_else(|| candle_err("stored-expert: no gradient reached a weight"))?
                .flatten_all()?
                .to_vec1::<f32>()?;
            region.add_grads(t, &g).map_err(candle_err)?;
        }
        drop((vars, w));
        drop(region);
        let gx = grads
            .get(x.as_tensor())
            .ok_or_else(|| candle_err("stored-expert: no gradient reached the input"))?
            .clone();
        Ok(Some(gx))
    }
}
