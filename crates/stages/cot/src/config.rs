//! `[data.cot]`: the problems file, how many problems are used, the held-out fraction and the task
//! eval's size. (The training settings are `[cot]`.)

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use tardbot_core::PipelineConfig;
use tardbot_core::config::Problems;
use tardbot_finetune::{ChatData, TaskEvalConfig, check_common};

/// Chain-of-thought data: GSM-style problems with worked solutions ending in `#### <answer>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CotData {
    /// JSONL `{question, answer, final_answer}`.
    pub problems: Option<PathBuf>,
    /// Use at most this many problems (0 = all).
    pub limit: usize,
    pub validation_fraction: f64,
    pub eval: TaskEvalConfig,
}

impl Default for CotData {
    fn default() -> Self {
        CotData {
            problems: None,
            limit: 0,
            validation_fraction: 0.1,
            eval: TaskEvalConfig {
                examples: 16,
                max_new_tokens: 128,
            },
        }
    }
}

impl ChatData for CotData {
    fn eval(&self) -> &TaskEvalConfig {
        &self.eval
    }

    fn validation_fraction(&self) -> f64 {
        self.validation_fraction
    }

    fn check(&self, name: &str, config: &PipelineConfig, enabled: bool, p: &mut Problems) {
        check_common(
            name,
            config,
            enabled,
            self.validation_fraction,
            &[("problems", self.problems.as_deref())],
            p,
        );
        if enabled && self.problems.is_none() {
            p.push(
                &format!("data.{name}.problems"),
                "the cot stage needs a problems file (JSONL with question, answer, final_answer)"
                    .to_string(),
            );
        }
    }
}
