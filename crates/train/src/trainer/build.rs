//! Building a [`Trainer`]: the model on CPU in f32 (its experts resident, or in an expert store when
//! `[execution] max_experts_in_memory < n_experts`), its weights (seeded, or from a file) and the optimizer.

use super::segmented::HEAD_CHUNK_ELEMS;
use super::{Result, Trainer};
use crate::optim::{AdamW, AdamWConfig, default_decay};
use crate::schedule::LrSchedule;
use candle_core::{DType, Device};
use candle_nn::VarMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tardbot_core::ModelConfig;
use tardbot_core::config::{Device as ConfigDevice, Execution, TrainConfig};
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

/// Only the CPU backend trains today; validation refuses any other device before a run starts.
fn check_device(exec: &Execution) -> Result<()> {
    if exec.device == ConfigDevice::Cpu {
        Ok(())
    } else {
        Err(ModelError::Config(format!(
            "training on `{}` is not available in this build (CPU only)",
            exec.device.name()
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
        Ok(Trainer {
            model,
            varmap,
            opt,
            schedule: LrSchedule::from_config(train),
            grad_clip: train.grad_clip,
            activation_checkpointing: exec.activation_checkpointing,
            head_chunk_elems: HEAD_CHUNK_ELEMS,
            step: 0,
            tokens: 0,
            best: None,
        })
    }
}
