//! Building a [`Trainer`]: the model on CPU in f32 (its experts resident, or in an expert store when
//! `max_experts_in_memory < n_experts`), its weights (seeded, or from a file) and the optimizer.

use super::segmented::HEAD_CHUNK_ELEMS;
use super::{Result, Trainer};
use crate::optim::{AdamW, AdamWConfig, default_decay};
use crate::schedule::LrSchedule;
use candle_core::{DType, Device};
use candle_nn::VarMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tardbot_core::ModelConfig;
use tardbot_core::config::TrainConfig;
use tardbot_model::{
    ExpertStore, ModelError, TardBot, init_expert_store, init_weights, load_safetensors_into,
    named_vars,
};

/// The file of the expert store in `store_dir`, when `cfg` keeps fewer experts in memory than it has.
fn expert_store_path(cfg: &ModelConfig, store_dir: Option<&Path>) -> Result<Option<PathBuf>> {
    if cfg.n_moe_layers() == 0 || cfg.max_experts_in_memory >= cfg.n_experts {
        return Ok(None);
    }
    match store_dir {
        Some(d) => Ok(Some(d.join("experts.store"))),
        None => Err(ModelError::Config(format!(
            "max_experts_in_memory = {} < n_experts = {} needs a directory for the expert store",
            cfg.max_experts_in_memory, cfg.n_experts
        ))
        .into()),
    }
}

/// A model on CPU in f32 whose experts are variables of the returned `VarMap`, or live in `store`.
fn build_model(cfg: &ModelConfig, store: Option<ExpertStore>) -> Result<(TardBot, VarMap)> {
    let varmap = VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = match store {
        Some(store) => {
            store.set_max_resident(cfg.max_experts_in_memory);
            TardBot::with_expert_store(cfg, vb, Arc::new(store))?
        }
        None => TardBot::new(cfg, vb)?,
    };
    Ok((model, varmap))
}

impl Trainer {
    /// A freshly initialised model (seeded) and optimizer, on CPU in f32. With
    /// `max_experts_in_memory < n_experts` the experts are created in an expert store in `store_dir`
    /// (`experts.store`, replacing any file there), initialised to the same values.
    pub fn new(
        model_cfg: &ModelConfig,
        train: &TrainConfig,
        seed: u64,
        store_dir: Option<&Path>,
    ) -> Result<Trainer> {
        let store = expert_store_path(model_cfg, store_dir)?
            .map(|p| init_expert_store(&p, model_cfg, seed))
            .transpose()?;
        let (model, varmap) = build_model(model_cfg, store)?;
        init_weights(&varmap, model_cfg, seed)?;
        Self::with_model(model, varmap, train)
    }

    /// Starts from the weights of `weights` (e.g. the previous stage's final model); the experts go to
    /// an expert store in `store_dir` as for [`Trainer::new`].
    pub fn from_weights(
        model_cfg: &ModelConfig,
        train: &TrainConfig,
        weights: &Path,
        store_dir: Option<&Path>,
    ) -> Result<Trainer> {
        let store = expert_store_path(model_cfg, store_dir)?
            .map(|p| ExpertStore::from_safetensors(weights, &p, model_cfg))
            .transpose()?;
        let experts_elsewhere = store.is_some();
        let (model, varmap) = build_model(model_cfg, store)?;
        load_safetensors_into(&varmap, weights, experts_elsewhere)?;
        Self::with_model(model, varmap, train)
    }

    fn with_model(model: TardBot, varmap: VarMap, train: &TrainConfig) -> Result<Trainer> {
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
            activation_checkpointing: train.activation_checkpointing,
            head_chunk_elems: HEAD_CHUNK_ELEMS,
            step: 0,
            tokens: 0,
            best: None,
        })
    }
}
