//! The `pipeline.toml` schema.
//!
//! One section per stage (`[ingest]`, `[tokenizer]`, `[tokenize]`, `[pretrain]`, `[sft]`, `[toolcall]`,
//! `[cot]`), the model preset with overrides, the workspace directory and the seed: the recipe. How it
//! runs (device, threads, expert swapping, activation checkpointing) is `[execution]`, apart.
//! Every struct denies unknown fields. [`PipelineConfig::load`] reports *every* problem it finds
//! (syntax, unknown keys, wrong types, semantic checks such as a preset that does not exist or a batch
//! size of 0) with file, line and field; see [`validate`].

mod execution;
mod finetune;
mod ingest;
mod tokenize;
mod train;
pub mod validate;

pub use execution::{Device, Execution, ExecutionConfig, StageExecution};
pub use finetune::{
    CotDataConfig, FinetuneDataConfig, SftDataConfig, TaskEvalConfig, ToolcallDataConfig,
};
pub use ingest::{FilterConfig, IngestConfig, OnError, SourceConfig, SourceFormat};
pub use tokenize::{TokenizeConfig, TokenizerConfig};
pub use train::{Schedule, TrainConfig};
pub use validate::{ConfigError, ConfigProblem, Problems};

use crate::model_config::ModelConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Directory that holds the ledger (`ledger.db`) and every run's files. Relative to the config file.
    #[serde(default = "default_workspace")]
    pub workspace: PathBuf,
    /// Seed of every random choice in every stage (data order, init, sampling).
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// How stages run: device, threads, expert swapping, activation checkpointing.
    #[serde(default)]
    pub execution: ExecutionConfig,
    pub model: ModelSection,
    pub ingest: IngestConfig,
    #[serde(default)]
    pub tokenizer: TokenizerConfig,
    #[serde(default)]
    pub tokenize: TokenizeConfig,
    #[serde(default = "TrainConfig::pretrain_default")]
    pub pretrain: TrainConfig,
    #[serde(default = "TrainConfig::finetune_default")]
    pub sft: TrainConfig,
    #[serde(default = "TrainConfig::finetune_default")]
    pub toolcall: TrainConfig,
    #[serde(default = "TrainConfig::finetune_default")]
    pub cot: TrainConfig,
    /// The fine-tuning stages' data sources and task-eval sizes (`[data.sft]`, …).
    #[serde(default)]
    pub data: FinetuneDataConfig,
    /// Directory relative paths in this config are resolved against (the config file's directory).
    #[serde(skip)]
    pub base_dir: PathBuf,
}

fn default_workspace() -> PathBuf {
    PathBuf::from("work")
}
fn default_seed() -> u64 {
    1234
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// One of [`ModelConfig::preset_names`].
    pub preset: String,
    /// Any `ModelConfig` field, replacing the preset's value.
    #[serde(default)]
    pub overrides: toml::Table,
}

impl PipelineConfig {
    /// Reads, parses and validates a pipeline file. Every problem found is returned at once.
    pub fn load(path: &Path) -> Result<PipelineConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Unreadable {
            path: path.to_path_buf(),
            source: e,
        })?;
        let base_dir = path
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                }
            })
            .unwrap_or(Path::new("."))
            .to_path_buf();
        Self::from_text(&text, path, &base_dir)
    }

    /// Parses and validates config text (e.g. the text recorded in the ledger for a run).
    /// `path` is used in messages; `base_dir` resolves relative paths.
    pub fn from_text(
        text: &str,
        path: &Path,
        base_dir: &Path,
    ) -> Result<PipelineConfig, ConfigError> {
        validate::parse_and_validate(text, path, base_dir)
    }

    /// Resolves a path from the config against the config file's directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    pub fn workspace_dir(&self) -> PathBuf {
        self.resolve(&self.workspace)
    }

    /// The model configuration: the preset with the overrides applied.
    pub fn model_config(&self) -> Result<ModelConfig, String> {
        let mut m = ModelConfig::from_preset(&self.model.preset)
            .ok_or_else(|| format!("unknown preset `{}`", self.model.preset))?;
        m.apply_overrides(&self.model.overrides)?;
        Ok(m)
    }

    /// The stages that train a model (the sections `[execution.stages.*]` may name).
    pub const TRAINING_STAGES: [&'static str; 4] = ["pretrain", "sft", "toolcall", "cot"];

    /// The training section of a stage that trains a model (`[pretrain]`, `[sft]`, …).
    pub fn training(&self, stage: &str) -> Option<&TrainConfig> {
        match stage {
            "pretrain" => Some(&self.pretrain),
            "sft" => Some(&self.sft),
            "toolcall" => Some(&self.toolcall),
            "cot" => Some(&self.cot),
            _ => None,
        }
    }

    /// Semantic checks beyond the schema; each problem names its field.
    pub(crate) fn check(&self, p: &mut Problems) {
        if !ModelConfig::preset_names().contains(&self.model.preset.as_str()) {
            p.push(
                "model.preset",
                format!(
                    "preset `{}` does not exist; choose one of: {}",
                    self.model.preset,
                    ModelConfig::preset_names().join(", ")
                ),
            );
        } else if let Err(e) = self.model_config() {
            p.push("model.overrides", e);
        }
        let n_experts = self.model_config().ok().map(|m| m.n_experts);
        self.execution
            .check(&Self::TRAINING_STAGES, n_experts, p);
        self.ingest.check(self, p);
        self.tokenizer.check(p);
        self.tokenize.check(p);
        for name in Self::TRAINING_STAGES {
            if let Some(t) = self.training(name) {
                t.check(name, p);
            }
        }
        self.data.check(self, p);
    }
}
