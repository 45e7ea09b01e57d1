//! [`ChatTask`]: what one chat fine-tuning stage adds to the shared recipe. Everything else (the
//! split, rendering, packing, training from the upstream model, evals before and after, publishing,
//! the stage contract) is [`ChatStage`](crate::ChatStage), the same for every task.

use crate::example::ChatExample;
use crate::settings::ChatSettings;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tardbot_core::PipelineConfig;
use tardbot_core::config::ConfigError;
use tardbot_model::TardBot;
use tardbot_tokens::LoadedTokenizer;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A chat fine-tuning task: its data, its task eval and where its settings are.
///
/// Adding a chat stage is a crate with one `ChatTask` and its `[data.NAME]` type
/// ([`ChatData`](crate::ChatData)), and one line in `tardbot-pipeline`'s registry (`.chat(MyTask)`);
/// see the README, "Adding a stage".
pub trait ChatTask: Send + Sync + 'static {
    /// The stage's name: its `pipeline.toml` sections, its name in the ledger, its eval suite.
    fn name(&self) -> &'static str;

    /// The training stage whose published model this stage starts from.
    fn upstream(&self) -> &'static str;

    /// The stage's settings, parsed and checked: `ChatSettings::parse::<MyData>(config, self.name())`.
    /// `tardbot-pipeline validate` reports its problems with the core sections'.
    fn settings(&self, config: &PipelineConfig) -> Result<ChatSettings, ConfigError>;

    /// Stages whose artifacts [`ChatTask::examples`] reads, besides the tokenizer and the upstream
    /// model every chat stage gets (e.g. `search_index` for conversations that search the corpus).
    fn inputs(&self) -> &'static [&'static str] {
        &[]
    }

    /// Builds every example (train and held-out), deterministically from `config.seed` and the
    /// artifacts of [`ChatTask::inputs`].
    fn examples(
        &self,
        config: &PipelineConfig,
        inputs: &TaskInputs,
    ) -> Result<Vec<ChatExample>, BoxError>;

    /// The task-eval items one held-out example is asked as (default: the example itself); a
    /// multi-turn example can be asked at several turns.
    fn eval_items(&self, example: &ChatExample) -> Vec<ChatExample> {
        vec![example.clone()]
    }

    /// Scores generated answers: `(example, generated text)` in, named figures out (rates in [0, 1]).
    fn score(&self, pairs: &[(&ChatExample, String)]) -> Vec<(String, f64)>;

    /// Evals besides [`ChatTask::score`]'s, run on the model at the same points (the upstream
    /// model before training, the trained one after) and recorded the same way, each under its own
    /// suite (e.g. the toolcall stage's agent tasks through the real tool loop). Default: none.
    fn extra_evals(
        &self,
        config: &PipelineConfig,
        inputs: &TaskInputs,
        model: &TardBot,
        tok: &LoadedTokenizer,
    ) -> Result<Vec<SuiteFigures>, BoxError> {
        let _ = (config, inputs, model, tok);
        Ok(Vec::new())
    }

    /// Reads an eval file in the task's source format (`tardbot-pipeline eval --suite NAME`), for
    /// files that are not example JSONL (which every task reads).
    fn read_source_file(&self, path: &Path) -> Result<Vec<ChatExample>, BoxError> {
        Err(format!(
            "{}: the {} suite reads example JSONL (`{{id, kind, conversation, reference}}`, as in a run's \
             stages/{}/out/examples/val.jsonl)",
            path.display(),
            self.name(),
            self.name()
        )
        .into())
    }
}

/// One suite's figures from [`ChatTask::extra_evals`]: `(metric, value)` over `n` items.
#[derive(Clone, Debug, PartialEq)]
pub struct SuiteFigures {
    pub suite: String,
    pub figures: Vec<(String, f64)>,
    pub n: usize,
}

/// The files of a task's [`ChatTask::inputs`]: (kind, path) per upstream stage.
#[derive(Clone, Debug, Default)]
pub struct TaskInputs {
    pub files: BTreeMap<String, Vec<(String, PathBuf)>>,
}

impl TaskInputs {
    /// The artifact of `kind` that `stage` produced, if any.
    pub fn file(&self, stage: &str, kind: &str) -> Option<&Path> {
        self.files
            .get(stage)?
            .iter()
            .find(|(k, _)| k == kind)
            .map(|(_, p)| p.as_path())
    }
}
