//! `ModelConfig`: the model's shape, its named presets and `describe()`.
//!
//! (Initial version written by the Foundation work; the Model issue owns and completes this file.
//! The pipeline relies on: `preset_names`, `from_preset`, `apply_overrides`, `describe`.)

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub n_experts: usize,
    pub experts_per_token: usize,
    pub intermediate_size: usize,
    pub window: usize,
    pub max_seq_len: usize,
    pub max_experts_in_memory: usize,
}

impl ModelConfig {
    /// Names accepted by [`ModelConfig::from_preset`].
    pub fn preset_names() -> &'static [&'static str] {
        &["tiny"]
    }

    pub fn from_preset(name: &str) -> Option<ModelConfig> {
        match name {
            "tiny" => Some(ModelConfig {
                vocab_size: 4096,
                hidden_size: 128,
                n_layers: 4,
                n_heads: 4,
                n_kv_heads: 2,
                n_experts: 4,
                experts_per_token: 2,
                intermediate_size: 512,
                window: 128,
                max_seq_len: 1024,
                max_experts_in_memory: 4,
            }),
            _ => None,
        }
    }

    /// Applies `[model.overrides]` from pipeline.toml: each key must be a field of `ModelConfig`.
    pub fn apply_overrides(&mut self, overrides: &toml::Table) -> Result<(), String> {
        let mut table = toml::Table::try_from(&*self).map_err(|e| e.to_string())?;
        for (k, v) in overrides {
            if !table.contains_key(k) {
                return Err(format!("`{k}` is not a model setting"));
            }
            table.insert(k.clone(), v.clone());
        }
        *self = table.try_into().map_err(|e: toml::de::Error| e.message().to_string())?;
        Ok(())
    }

    /// Parameter counts and memory breakdown at `batch` x `seq`.
    pub fn describe(&self, batch: usize, seq: usize) -> impl fmt::Display + '_ {
        struct D<'a>(&'a ModelConfig, usize, usize);
        impl fmt::Display for D<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#?} at batch {} x seq {}", self.0, self.1, self.2)
            }
        }
        D(self, batch, seq)
    }
}
