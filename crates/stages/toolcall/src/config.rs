//! `[data.toolcall]`: the BFCL file, how many multi-turn conversations are generated, the held-out
//! fraction and the task eval's size. (The training settings are `[toolcall]`.)

use crate::agent::AgentEvalConfig;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use tardbot_core::PipelineConfig;
use tardbot_core::config::Problems;
use tardbot_finetune::{ChatData, TaskEvalConfig, check_common};

/// Tool-calling data: BFCL-format rows (JSON-schema tools, accepted calls, irrelevance rows) plus
/// generated multi-turn conversations with real local tools.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ToolcallData {
    /// BFCL single-turn JSONL (`{id, category, messages, tools, ground_truth, target_calls}`); unset =
    /// generated examples only.
    pub bfcl: Option<PathBuf>,
    /// Generated multi-turn examples (a tool runs and its result is fed back).
    pub generated: usize,
    /// Single-turn calls to functions made up for each example (names and schemas from word
    /// lists): the skill BFCL rows measure, reading an unseen function's schema (see data/unseen.rs).
    pub unseen: usize,
    /// Word problems answered by a program the `python` tool really runs (it needs `python3`; the
    /// programs are ours, not a model's, so they run even where no sandbox is available).
    pub python: usize,
    /// Questions answered from the corpus through the offline `search` (the `search_index` stage's
    /// index).
    pub search: usize,
    /// Pages of the corpus (passages of the `search_index` stage's index) served on loopback and
    /// read or followed by the `browser` tool (it needs Chromium).
    pub browser: usize,
    /// Agent tasks run through the real tool loop before and after training (`agent = { tasks =
    /// "data/sample/agent_tasks.jsonl" }`); unset = none.
    pub agent: Option<AgentEvalConfig>,
    pub validation_fraction: f64,
    pub eval: TaskEvalConfig,
}

impl Default for ToolcallData {
    fn default() -> Self {
        ToolcallData {
            bfcl: None,
            generated: 200,
            unseen: 0,
            python: 0,
            search: 0,
            browser: 0,
            agent: None,
            validation_fraction: 0.1,
            eval: TaskEvalConfig {
                examples: 16,
                max_new_tokens: 96,
            },
        }
    }
}

impl ChatData for ToolcallData {
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
                ("bfcl", self.bfcl.as_deref()),
                (
                    "agent.tasks",
                    self.agent.as_ref().map(|a| a.tasks.as_path()),
                ),
            ],
            p,
        );
        if enabled
            && self.bfcl.is_none()
            && self.generated + self.unseen + self.python + self.search + self.browser == 0
        {
            p.push(
                &format!("data.{name}"),
                "no examples: set `bfcl` to a BFCL JSONL file, or `generated`, `unseen`, `python`, `search` or `browser` above 0".to_string(),
            );
        }
    }
}
