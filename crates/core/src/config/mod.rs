//! The `pipeline.toml` schema.
//!
//! The sections of the data and pretraining stages (`[ingest]`, `[tokenizer]`, `[tokenize]`,
//! `[pretrain]`), the model preset with overrides, the workspace directory and the seed: the recipe.
//! How it runs (device, threads, expert swapping, activation checkpointing) is `[execution]`, apart.
//! Any other table (`[sft]`, `[data.sft]`, …) belongs to a stage crate, which parses it from the same
//! file with [`PipelineConfig::section`] and checks it when the binary validates the file.
//! Every struct denies unknown fields. [`PipelineConfig::load`] reports *every* problem it finds
//! (syntax, unknown keys, wrong types, semantic checks such as a preset that does not exist or a batch
//! size of 0) with file, line and field; see [`validate`].

mod execution;
mod ingest;
mod tokenize;
mod train;
pub mod validate;

pub use execution::{Device, Execution, ExecutionConfig, Precision, StageExecution};
pub use ingest::{FilterConfig, IngestConfig, OnError, SourceConfig, SourceFormat};
pub use tokenize::{TokenizeConfig, TokenizerConfig};
pub use train::{Schedule, TrainConfig};
pub use validate::{CORE_SECTIONS, ConfigError, ConfigProblem, ExtraChecks, Problems, Source};

use crate::model_config::ModelConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    /// Directory relative paths in this config are resolved against (the config file's directory).
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The text this config was read from: stages parse their own tables (`[sft]`, `[data.sft]`, …)
    /// from it with [`PipelineConfig::section`].
    #[serde(skip)]
    pub source: Option<Arc<Source>>,
    /// First keys of the tables that belong to stages, not to this struct (see [`CORE_SECTIONS`]).
    #[serde(skip)]
    stage_tables: BTreeSet<String>,
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
        Self::load_with(path, &|_| Vec::new())
    }

    /// [`PipelineConfig::load`], plus the stages' checks of their own tables (`extra`), whose
    /// problems are reported together with the core sections'.
    pub fn load_with(path: &Path, extra: ExtraChecks<'_>) -> Result<PipelineConfig, ConfigError> {
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
        Self::from_text_with(&text, path, &base_dir, extra)
    }

    /// Parses and validates config text (e.g. the text recorded in the ledger for a run).
    /// `path` is used in messages; `base_dir` resolves relative paths.
    pub fn from_text(
        text: &str,
        path: &Path,
        base_dir: &Path,
    ) -> Result<PipelineConfig, ConfigError> {
        Self::from_text_with(text, path, base_dir, &|_| Vec::new())
    }

    /// [`PipelineConfig::from_text`] with the stages' checks of their own tables.
    pub fn from_text_with(
        text: &str,
        path: &Path,
        base_dir: &Path,
        extra: ExtraChecks<'_>,
    ) -> Result<PipelineConfig, ConfigError> {
        validate::parse_and_validate(text, path, base_dir, extra)
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
        self.execution.check(n_experts, p);
        self.ingest.check(self, p);
        self.tokenizer.check(self, p);
        self.tokenize.check(p);
        self.pretrain.check("pretrain", p);
    }
}
