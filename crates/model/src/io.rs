//! Safetensors save/load. Tensor names are [`TardBot::param_names`](crate::TardBot::param_names)
//! (e.g. `layers.3.moe.experts.1.gate.weight`), stable across versions of this crate.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use tardbot_core::ModelConfig;

use crate::expert_store::ExpertStore;
use crate::model::{TardBot, named_vars};
use crate::{ModelError, Result};

fn ckpt_err(path: &Path, msg: impl Into<String>) -> ModelError {
    ModelError::Checkpoint {
        path: path.display().to_string(),
        msg: msg.into(),
    }
}

/// Writes every variable of `varmap` to `path`, and with `experts` every expert of that store as well
/// (the model's names either way: the file is the same as an all-resident model's). Through a
/// temporary file renamed into place, so a crash never leaves a half-written file under the final name.
pub fn save_safetensors(varmap: &VarMap, experts: Option<&ExpertStore>, path: &Path) -> Result<()> {
    let tmp = path.with_extension("safetensors.tmp");
    match experts {
        None => {
            let tensors: HashMap<String, Tensor> = named_vars(varmap)
                .into_iter()
                .map(|(k, v)| (k, v.as_tensor().clone()))
                .collect();
            candle_core::safetensors::save(&tensors, &tmp)
                .map_err(|e| ckpt_err(path, e.to_string()))?;
        }
        Some(store) => {
            let vars: Vec<(String, Vec<usize>, Vec<u8>)> = named_vars(varmap)
                .into_iter()
                .map(|(k, v)| {
                    let data = v.as_tensor().flatten_all()?.to_vec1::<f32>()?;
                    let bytes = data.iter().flat_map(|x| x.to_le_bytes()).collect();
                    Ok((k, v.dims().to_vec(), bytes))
                })
                .collect::<Result<_>>()?;
            let mut views = Vec::new();
            for (k, shape, bytes) in &vars {
                let view = safetensors::tensor::TensorView::new(
                    safetensors::Dtype::F32,
                    shape.clone(),
                    bytes,
                )
                .map_err(|e| ckpt_err(path, e.to_string()))?;
                views.push((k.clone(), view));
            }
            views.extend(store.weight_views()?);
            safetensors::serialize_to_file(views, None, &tmp)
                .map_err(|e| ckpt_err(path, e.to_string()))?;
            store.release_all()?;
        }
    }
    std::fs::rename(&tmp, path).map_err(|e| ckpt_err(path, e.to_string()))?;
    Ok(())
}

/// Sets every variable of `varmap` from `path`. Strict: a missing tensor, an extra tensor or a shape
/// mismatch is an error (a checkpoint of another configuration must not load silently), except that
/// with `experts_elsewhere` (the experts live in an expert store) the file's expert tensors are
/// ignored.
pub fn load_safetensors_into(varmap: &VarMap, path: &Path, experts_elsewhere: bool) -> Result<()> {
    let vars = named_vars(varmap);
    let device = vars
        .first()
        .map(|(_, v)| v.device().clone())
        .unwrap_or(Device::Cpu);
    let mut file =
        candle_core::safetensors::load(path, &device).map_err(|e| ckpt_err(path, e.to_string()))?;
    for (name, var) in &vars {
        let t = file
            .remove(name)
            .ok_or_else(|| ckpt_err(path, format!("missing tensor `{name}`")))?;
        if t.dims() != var.dims() {
            return Err(ckpt_err(
                path,
                format!(
                    "`{name}` has shape {:?}, expected {:?}",
                    t.dims(),
                    var.dims()
                ),
            ));
        }
        var.set(&t.to_dtype(var.dtype())?)?;
    }
    if let Some(extra) = file
        .keys()
        .filter(|k| !(experts_elsewhere && k.contains(".moe.experts.")))
        .min()
    {
        return Err(ckpt_err(
            path,
            format!("unexpected tensor `{extra}` (another model configuration?)"),
        ));
    }
    Ok(())
}

/// Builds a model for `cfg` and loads its weights from `path`.
pub fn load_model(
    cfg: &ModelConfig,
    path: &Path,
    dtype: DType,
    device: &Device,
) -> Result<(TardBot, VarMap)> {
    let vm = VarMap::new();
    let model = TardBot::new(cfg, VarBuilder::from_varmap(&vm, dtype, device))?;
    load_safetensors_into(&vm, path, false)?;
    Ok((model, vm))
}
