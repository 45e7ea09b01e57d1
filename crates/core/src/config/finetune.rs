//! `[data.sft]`, `[data.toolcall]`, `[data.cot]`: where each fine-tuning stage's examples come from,
//! how many are built, the held-out fraction and the size of its task eval. (The stages' training
//! settings are `[sft]`, `[toolcall]`, `[cot]`, shared with pretraining: see `train.rs`.)

use super::PipelineConfig;
use super::validate::Problems;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FinetuneDataConfig {
    pub sft: SftDataConfig,
    pub toolcall: ToolcallDataConfig,
    pub cot: CotDataConfig,
}

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

/// Instruction data: templated tasks over a glossary and a verse text, plus generated tasks whose
/// answers are computed (arithmetic, counting, spelling, sorting, unit conversion).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SftDataConfig {
    /// Glossary entries: JSONL `{title, text}` (data/sample/jargon.jsonl) or the raw Jargon File;
    /// unset = no glossary tasks.
    pub glossary: Option<PathBuf>,
    /// Verse/play text (plain text, speaker lines as in tiny_shakespeare); unset = no verse tasks.
    pub verse: Option<PathBuf>,
    /// Examples built per task kind.
    pub per_kind: usize,
    pub validation_fraction: f64,
    pub eval: TaskEvalConfig,
}

impl Default for SftDataConfig {
    fn default() -> Self {
        SftDataConfig {
            glossary: None,
            verse: None,
            per_kind: 200,
            validation_fraction: 0.1,
            eval: TaskEvalConfig::default(),
        }
    }
}

/// Tool-calling data: BFCL-format rows (JSON-schema tools, accepted calls, irrelevance rows) plus
/// generated multi-turn conversations with real local tools.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ToolcallDataConfig {
    /// BFCL single-turn JSONL (`{id, category, messages, tools, ground_truth, target_calls}`); unset =
    /// generated examples only.
    pub bfcl: Option<PathBuf>,
    /// Generated multi-turn examples (a tool runs and its result is fed back).
    pub generated: usize,
    pub validation_fraction: f64,
    pub eval: TaskEvalConfig,
}

impl Default for ToolcallDataConfig {
    fn default() -> Self {
        ToolcallDataConfig {
            bfcl: None,
            generated: 200,
            validation_fraction: 0.1,
            eval: TaskEvalConfig {
                examples: 16,
                max_new_tokens: 96,
            },
        }
    }
}

/// Chain-of-thought data: GSM-style problems with worked solutions ending in `#### <answer>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CotDataConfig {
    /// JSONL `{question, answer, final_answer}`.
    pub problems: Option<PathBuf>,
    /// Use at most this many problems (0 = all).
    pub limit: usize,
    pub validation_fraction: f64,
    pub eval: TaskEvalConfig,
}

impl Default for CotDataConfig {
    fn default() -> Self {
        CotDataConfig {
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

impl FinetuneDataConfig {
    pub(crate) fn check(&self, cfg: &PipelineConfig, p: &mut Problems) {
        let mut path = |field: &str, enabled: bool, v: &Option<PathBuf>| {
            if let (true, Some(v)) = (enabled, v)
                && !cfg.resolve(v).exists()
            {
                p.push(
                    field,
                    format!(
                        "{} does not exist (relative paths are resolved against {})",
                        cfg.resolve(v).display(),
                        cfg.base_dir.display()
                    ),
                );
            }
        };
        path("data.sft.glossary", cfg.sft.enabled, &self.sft.glossary);
        path("data.sft.verse", cfg.sft.enabled, &self.sft.verse);
        path(
            "data.toolcall.bfcl",
            cfg.toolcall.enabled,
            &self.toolcall.bfcl,
        );
        path("data.cot.problems", cfg.cot.enabled, &self.cot.problems);
        for (field, f) in [
            ("data.sft.validation_fraction", self.sft.validation_fraction),
            (
                "data.toolcall.validation_fraction",
                self.toolcall.validation_fraction,
            ),
            ("data.cot.validation_fraction", self.cot.validation_fraction),
        ] {
            if !(f > 0.0 && f < 1.0) {
                p.push(field, format!("{f} is not a fraction in (0, 1)"));
            }
        }
        if cfg.toolcall.enabled && self.toolcall.bfcl.is_none() && self.toolcall.generated == 0 {
            p.push(
                "data.toolcall",
                "no examples: set `bfcl` to a BFCL JSONL file or `generated` above 0".to_string(),
            );
        }
        if cfg.cot.enabled && self.cot.problems.is_none() {
            p.push(
                "data.cot.problems",
                "the cot stage needs a problems file (JSONL with question, answer, final_answer)"
                    .to_string(),
            );
        }
    }
}
