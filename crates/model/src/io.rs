//! Safetensors save/load. Tensor names are [`TardBot::param_names`](crate::TardBot::param_names)
//! (e.g. `layers.3.moe.experts.1.gate.weight`), stable across versions of this crate.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use tardbot_core::ModelConfig;

use crate::model::{TardBot, named_vars};
use crate::{ModelError, Result};

fn ckpt_err(path: &Path, msg: impl Into<String>) -> ModelError {
    ModelError::Checkpoint {
        path: path.display().to_string(),
        msg: msg.into(),
    }
}

/// Writes every variable of `varmap` to `path` (via a temporary file renamed into place, so a crash never
/// leaves a half-written file under the final name).
pub fn save_safetensors(varmap: &VarMap, path: &Path) -> Result<()> {
    let tensors: HashMap<String, Tensor> = named_vars(varmap)
        .into_iter()
        .map(|(k, v)| (k, v.as_tensor().clone()))
        .collect();
    let tmp = path.with_extension("safetensors.tmp");
    candle_core::safetensors::save(&tensors, &tmp).map_err(|e| ckpt_err(path, e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| ckpt_err(path, e.to_string()))?;
    Ok(())
}

/// Sets every variable of `varmap` from `path`. Strict: a missing tensor, an extra tensor or a shape
/// mismatch is an error (a checkpoint of another configuration must not load silently).
pub fn load_safetensors_into(varmap: &VarMap, path: &Path) -> Result<()> {
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
    if let Some(extra) = file.keys().min() {
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
    load_safetensors_into(&vm, path)?;
    Ok((model, vm))
}
