//! A chat stage's settings, which its crate owns: `[NAME]` (the training settings every training
//! stage shares) and `[data.NAME]` (the task's own data and eval sizes, a type of the task's crate).
//! Both are parsed from the pipeline file with file, line and field in every problem.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tardbot_core::PipelineConfig;
use tardbot_core::config::{ConfigError, ConfigProblem, Problems, TrainConfig};

/// Task eval size: greedy generation on held-out examples, before and after the stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TaskEvalConfig {
    /// Held-out examples generated from (0 = no task eval, held-out loss only).
    pub examples: usize,
    /// Longest answer generated.
    pub max_new_tokens: usize,
}

impl Default for TaskEvalConfig {
    fn default() -> Self {
        TaskEvalConfig {
            examples: 16,
            max_new_tokens: 48,
        }
    }
}

/// A task's `[data.NAME]` section. Write it with `#[serde(deny_unknown_fields, default)]`.
pub trait ChatData: DeserializeOwned + Serialize + Default {
    fn eval(&self) -> &TaskEvalConfig;
    fn validation_fraction(&self) -> f64;
    /// Semantic checks beyond the schema, fields named `data.NAME.field`; `enabled`: the stage runs.
    fn check(&self, name: &str, config: &PipelineConfig, enabled: bool, p: &mut Problems);
}

/// A chat stage's settings, parsed and checked.
#[derive(Clone, Debug)]
pub struct ChatSettings {
    /// `[NAME]`; absent, the stage is disabled.
    pub train: TrainConfig,
    /// `[data.NAME]` with its defaults filled in (part of the fingerprint).
    pub data: serde_json::Value,
    pub eval: TaskEvalConfig,
    pub validation_fraction: f64,
}

impl ChatSettings {
    /// Parses `[NAME]` and `[data.NAME]` (as `D`) and checks both: every problem at once.
    pub fn parse<D: ChatData>(
        config: &PipelineConfig,
        name: &str,
    ) -> Result<(ChatSettings, D), ConfigError> {
        let mut problems: Vec<ConfigProblem> = Vec::new();
        let mut take = |e: ConfigError| problems.extend(e.problems().iter().cloned());
        let train = config
            .section::<TrainConfig>(&[name])
            .map_err(&mut take)
            .ok()
            .map(|t| t.unwrap_or_else(TrainConfig::finetune_default));
        let data = config
            .section::<D>(&["data", name])
            .map_err(&mut take)
            .ok()
            .map(Option::unwrap_or_default);
        if let (Some(train), Some(data)) = (train, data) {
            let mut p = Problems::default();
            train.check(name, &mut p);
            data.check(name, config, train.enabled, &mut p);
            problems.extend(config.locate(p));
            if problems.is_empty() {
                let settings = ChatSettings {
                    data: serde_json::to_value(&data).unwrap_or_default(),
                    eval: data.eval().clone(),
                    validation_fraction: data.validation_fraction(),
                    train,
                };
                return Ok((settings, data));
            }
        }
        problems.sort_by_key(|p| (p.line == 0, p.line, p.column));
        problems.dedup();
        Err(ConfigError::Invalid {
            path: config
                .source
                .as_ref()
                .map(|s| s.path.clone())
                .unwrap_or_default(),
            problems,
        })
    }
}

/// The checks every task's data section shares: a held-out fraction in (0, 1), and each input file
/// of an enabled stage present.
pub fn check_common(
    name: &str,
    config: &PipelineConfig,
    enabled: bool,
    validation_fraction: f64,
    files: &[(&str, Option<&std::path::Path>)],
    p: &mut Problems,
) {
    if !(validation_fraction > 0.0 && validation_fraction < 1.0) {
        p.push(
            &format!("data.{name}.validation_fraction"),
            format!("{validation_fraction} is not a fraction in (0, 1)"),
        );
    }
    for (field, path) in files {
        if let (true, Some(v)) = (enabled, path)
            && !config.resolve(v).exists()
        {
            p.push(
                &format!("data.{name}.{field}"),
                format!(
                    "{} does not exist (relative paths are resolved against {})",
                    config.resolve(v).display(),
                    config.base_dir.display()
                ),
            );
        }
    }
}
