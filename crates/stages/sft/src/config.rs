//! `[data.sft]`: where the instruction examples come from, how many are built, the held-out fraction
//! and the task eval's size. (The training settings are `[sft]`, shared with every training stage.)

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use tardbot_core::PipelineConfig;
use tardbot_core::config::Problems;
use tardbot_finetune::{ChatData, TaskEvalConfig, check_common};

/// Instruction data: templated tasks over a glossary and a verse text, plus generated tasks whose
/// answers are computed (arithmetic, counting, spelling, sorting, unit conversion).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SftData {
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

impl Default for SftData {
    fn default() -> Self {
        SftData {
            glossary: None,
            verse: None,
            per_kind: 200,
            validation_fraction: 0.1,
            eval: TaskEvalConfig::default(),
        }
    }
}

impl ChatData for SftData {
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
            &[
                ("glossary", self.glossary.as_deref()),
                ("verse", self.verse.as_deref()),
            ],
            p,
        );
        // up to `per_kind` examples of each task kind: none at all is a stage failure.
        if enabled && self.per_kind == 0 {
            p.push(
                &format!("data.{name}.per_kind"),
                "0 builds no instruction examples, and the sft stage fails without any; set it to at least 1 \
                 or disable the stage ([sft] enabled = false)"
                    .to_string(),
            );
        }
    }
}
