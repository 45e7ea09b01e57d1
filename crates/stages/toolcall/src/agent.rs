//! The agent eval as part of the stage's own evals: `[data.toolcall] agent = { tasks = FILE }` runs
//! held-out tasks end to end through the tool loop with the real tools, on the upstream model before
//! training and on the trained one after, recorded as suite `agent:<file name>` beside the stage's
//! call-level figures (what `tardbot-pipeline eval RUN --suite agent --data FILE` records for any
//! model).
//!
//! The loop and the tools live in `tardbot-tools`, which depends on this crate, so the pipeline
//! hands the evaluator in ([`AgentEvaluator`], as it hands in the data builder's
//! [`ToolRunner`](crate::ToolRunner)).

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tardbot_core::PipelineConfig;
use tardbot_model::TardBot;
use tardbot_tokens::LoadedTokenizer;

/// `[data.toolcall] agent`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentEvalConfig {
    /// Task JSONL (`{id, kind, tools, prompt, answer}`; data/sample/agent_tasks.jsonl).
    pub tasks: PathBuf,
    /// Longest assistant turn generated (each turn of the loop).
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
}

fn default_max_new_tokens() -> usize {
    96
}

/// Runs agent tasks through the tool loop with a model (`tardbot-pipeline` implements it).
pub trait AgentEvaluator: Send + Sync {
    /// The figures of the tasks in `tasks` (per kind and `all/…`) and how many tasks ran. The tools
    /// are built as `config`'s `[tools.*]` say, `search` over `search_index` when there is one.
    fn evaluate(
        &self,
        config: &PipelineConfig,
        tasks: &Path,
        search_index: Option<&Path>,
        model: &TardBot,
        tok: &LoadedTokenizer,
        max_new_tokens: usize,
    ) -> Result<(Vec<(String, f64)>, usize), String>;
}

/// The suite the figures of `tasks` are recorded under (the same as `eval --suite agent`'s).
pub fn agent_suite(tasks: &Path) -> String {
    let file = tasks
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("agent:{file}")
}
