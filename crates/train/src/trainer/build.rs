//! Building a [`Trainer`]: the model on CPU in f32 (its experts resident, or in an expert store when
//! `[execution] max_experts_in_memory < n_experts`), its weights (seeded, or from a file) and the optimizer;
//! under mixed precision, a second model over a bf16/f16 copy of the weights, which the trainer computes with.

use super::segmented::HEAD_CHUNK_ELEMS;
use super::{ComputeCopy, Result, Trainer};
use crate::optim::{AdamW, AdamWConfig, default_decay};
use crate::scaler::LossScaler;
use crate::schedule::LrSchedule;
use candle_core::{DType, Device};
use candle_nn::VarMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tardbot_core::ModelConfig;
use tardbot_core::config::{Device as ConfigDevice, Execution, Precision, TrainConfig};
use tardbot_model::{
    ExpertStore, ModelError, TardBot, init_expert_store, init_weights, load_safetensors_into,
    named_vars,
};

/// Experts resident at once: `max_experts_in_memory`, or all of them; checked against the model.
fn resident_experts(cfg: &ModelConfig, exec: &Execution) -> Result<usize> {
    match exec.max_experts_in_memory {
        None => Ok(cfg.n_experts),
        Some(m) if m >= 1 && (cfg.n_moe_layers() == 0 || m <= cfg.n_experts) => Ok(m),
        Some(m) => Err(ModelError::Config(format!(
            "max_experts_in_memory = {m} is not in 1..={} (the model's experts per MoE layer)",
            cfg.n_experts
        ))
        .into()),
    }
}

/// The file of the expert store in `store_dir`, when fewer than all experts may be in memory.
fn expert_store_path(
    cfg: &ModelConfig,
    resident: usize,
    store_dir: Option<&Path>,
) -> Result<Option<PathBuf>> {
    if cfg.n_moe_layers() == 0 || resident >= cfg.n_experts {
        return Ok(None);
    }
    match store_dir {
        Some(d) => Ok(Some(d.join("experts.store"))),
        None => Err(ModelError::Config(format!(
            "max_experts_in_memory = {resident} < n_experts = {} needs a directory for the expert store",
            cfg.n_experts
        ))
        .into()),
    }
}

/// A model on CPU in f32 whose experts are variables of the returned `VarMap`, or live in `store`
/// with at most `resident` of them in memory.
fn build_model(
    cfg: &ModelConfig,
    store: Option<ExpertStore>,
    resident: usize,
) -> Result<(TardBot, VarMap)> {
    let varmap = VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = match store {
        Some(store) => {
            store.set_max_resident(resident);
            TardBot::with_expert_store(cfg, vb, Arc::new(store))?
        }
        None => TardBot::new(cfg, vb)?,
    };
    Ok((model, varmap))
}

/// Only the CPU backend trains today. Validation refuses a device the binary lacks before a run
/// starts; a `cuda` build accepts `device = "cuda"` there, and the trainer refuses it here.
fn check_device(exec: &Execution) -> Result<()> {
    if exec.device == ConfigDevice::Cpu {
        Ok(())
    } else {
        Err(ModelError::Config(format!(
            "training on `{}` is not implemented yet: the trainer runs on the CPU only (this binary's \
             backends: {})",
            exec.device.name(),
            ConfigDevice::available()
                .iter()
                .map(|d| d.name())
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .into())
    }
}

impl Trainer {
    /// A freshly initialised model (seeded) and optimizer, on CPU in f32. With
    /// `max_experts_in_memory < n_experts` the experts are created in an expert store in `store_dir`
    /// (`experts.store`, replacing any file there), initialised to the same values.
    pub fn new(
        model_cfg: &ModelConfig,
        train: &TrainConfig,
        exec: &Execution,
        seed: u64,
        store_dir: Option<&Path>,
    ) -> Result<Trainer> {
        check_device(exec)?;
        let resident = resident_experts(model_cfg, exec)?;
        let store = expert_store_path(model_cfg, resident, store_dir)?
            .map(|p| init_expert_store(&p, model_cfg, seed))
            .transpose()?;
        let (model, varmap) = build_model(model_cfg, store, resident)?;
        init_weights(&varmap, model_cfg, seed)?;
        Self::with_model(model, varmap, train, exec)
    }

    /// Starts from the weights of `weights` (e.g. the previous stage's final model); the experts go to
    /// an expert store in `store_dir` as for [`Trainer::new`].
    pub fn from_weights(
        model_cfg: &ModelConfig,
        train: &TrainConfig,
        exec: &Execution,
        weights: &Path,
        store_dir: Option<&Path>,
    ) -> Result<Trainer> {
        check_device(exec)?;
        let resident = resident_experts(model_cfg, exec)?;
        let store = expert_store_path(model_cfg, resident, store_dir)?
            .map(|p| ExpertStore::from_safetensors(weights, &p, model_cfg))
            .transpose()?;
        let experts_elsewhere = store.is_some();
        let (model, varmap) = build_model(model_cfg, store, resident)?;
        load_safetensors_into(&varmap, weights, experts_elsewhere)?;
        Self::with_model(model, varmap, train, exec)
    }

    fn with_model(
        model: TardBot,
        varmap: VarMap,
        train: &TrainConfig,
        exec: &Execution,
    ) -> Result<Trainer> {
        let config = AdamWConfig {
            weight_decay: train.weight_decay,
            ..AdamWConfig::default()
        };
        let opt = AdamW::new(named_vars(&varmap), config, default_decay)?;
        let (model, compute) = match compute_dtype(exec.precision) {
            None => (model, None),
            Some(dtype) => {
                if model.expert_store().is_some() {
                    return Err(ModelError::Config(format!(
                        "precision = \"{}\" needs every expert resident: the expert store trains in \
                         f32 only (unset max_experts_in_memory or set precision = \"f32\")",
                        exec.precision.name()
                    ))
                    .into());
                }
                let (model, copy) = compute_copy(model.config(), &varmap, dtype)?;
                (model, Some(copy))
            }
        };
        let loss_scaler = (exec.precision == Precision::F16).then(LossScaler::default);
        let trainer = Trainer {
            model,
            varmap,
            precision: exec.precision,
            compute,
            loss_scaler,
            opt,
            schedule: LrSchedule::from_config(train),
            grad_clip: train.grad_clip,
            activation_checkpointing: exec.activation_checkpointing,
            head_chunk_elems: HEAD_CHUNK_ELEMS,
            step: 0,
            tokens: 0,
            best: None,
        };
        trainer.sync_compute()?;
        Ok(trainer)
    }
}

/// The type the model computes in under `precision`; `None` for f32 (no copy: the model computes
/// with the master weights).
fn compute_dtype(precision: Precision) -> Option<DType> {
    match precision {
        Precision::F32 => None,
        Precision::Bf16 => Some(DType::BF16),
        Precision::F16 => Some(DType::F16),
    }
}

/// A model over fresh `dtype` variables of the same names as `masters`' (filled by
/// [`Trainer::sync_compute`]), paired with them.
fn compute_copy(
    cfg: &ModelConfig,
    masters: &VarMap,
    dtype: DType,
) -> Result<(TardBot, ComputeCopy)> {
    let varmap = VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&varmap, dtype, &Device::Cpu);
    let model = TardBot::new(cfg, vb)?;
    let copies = named_vars(&varmap);
    let masters = named_vars(masters);
    if copies.len() != masters.len() || copies.iter().zip(&masters).any(|((a, _), (b, _))| a != b) {
        return Err(ModelError::Config(
            "the compute copy's parameters differ from the master weights'".into(),
        )
        .into());
    }
    let pairs = masters
        .into_iter()
        .zip(copies)
        .map(|((_, m), (_, c))| (m, c))
        .collect();
    Ok((
        model,
        ComputeCopy {
            _varmap: varmap,
            pairs,
        },
    ))
}
