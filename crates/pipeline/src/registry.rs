//! The stages this binary ships, in pipeline order.
//!
//! Adding a stage is one line here: `.stage(MyStage)` for a stage of its own, `.chat(MyTask)` for a
//! chat fine-tuning task (run by the one [`ChatStage`]). `generate`, `chat` and `eval` find the model
//! stages and eval suites here too.

use std::path::Path;
use std::sync::Arc;
use tardbot_core::PipelineConfig;
use tardbot_core::config::{ConfigError, ConfigProblem, Problems};
use tardbot_finetune::{ChatStage, ChatTask};
use tardbot_stage::Stage;

/// The stages a binary can run, and which of them are chat tasks.
#[derive(Clone, Default)]
pub struct Registry {
    pub stages: Vec<Arc<dyn Stage>>,
    /// The chat tasks among `stages`: the suites of `eval`.
    pub chat_tasks: Vec<Arc<dyn ChatTask>>,
}

impl Registry {
    pub fn stage(mut self, stage: impl Stage) -> Self {
        self.stages.push(Arc::new(stage));
        self
    }

    pub fn chat(mut self, task: impl ChatTask) -> Self {
        let task: Arc<dyn ChatTask> = Arc::new(task);
        self.stages
            .push(Arc::new(ChatStage::new(Arc::clone(&task))));
        self.chat_tasks.push(task);
        self
    }

    pub fn chat_task(&self, name: &str) -> Option<&Arc<dyn ChatTask>> {
        self.chat_tasks.iter().find(|t| t.name() == name)
    }

    /// The stages that train a model under `config`, in pipeline order.
    pub fn training_stages(&self, config: &PipelineConfig) -> Vec<&'static str> {
        self.stages
            .iter()
            .filter(|s| s.training(config).is_some())
            .map(|s| s.name())
            .collect()
    }

    /// What only the stages know about a config: their own tables' problems, tables no stage owns,
    /// and `[execution.stages.X]` naming something other than a training stage.
    pub fn check_config(&self, config: &PipelineConfig) -> Vec<ConfigProblem> {
        let mut problems: Vec<ConfigProblem> = self
            .stages
            .iter()
            .flat_map(|s| s.check_config(config))
            .collect();
        let owned: Vec<String> = self.stages.iter().flat_map(|s| s.tables()).collect();
        let mut p = Problems::default();
        for table in config.stage_tables() {
            let nested: Vec<&str> = owned
                .iter()
                .filter_map(|o| o.strip_prefix(&format!("{table}.")))
                .collect();
            if owned.contains(table) {
                continue;
            }
            if nested.is_empty() {
                p.push(
                    table,
                    format!(
                        "`[{table}]` is not a section of any stage; the stages' own sections are: {}",
                        owned.join(", ")
                    ),
                );
                continue;
            }
            for key in config.keys_under(&[table]) {
                if !nested.contains(&key.as_str()) {
                    p.push(
                        &format!("{table}.{key}"),
                        format!(
                            "`{key}` is not a stage with a `[{table}.*]` section; those are: {}",
                            nested.join(", ")
                        ),
                    );
                }
            }
        }
        config
            .execution
            .check_stage_names(&self.training_stages(config), &mut p);
        problems.extend(config.locate(p));
        problems
    }

    /// Loads a pipeline file and checks it with every stage: all problems at once.
    pub fn load_config(&self, path: &Path) -> Result<PipelineConfig, ConfigError> {
        PipelineConfig::load_with(path, &|c| self.check_config(c))
    }

    /// Parses config text (a run's recorded config) and checks it with every stage.
    pub fn config_from_text(
        &self,
        text: &str,
        path: &Path,
        base_dir: &Path,
    ) -> Result<PipelineConfig, ConfigError> {
        PipelineConfig::from_text_with(text, path, base_dir, &|c| self.check_config(c))
    }
}

impl From<Vec<Arc<dyn Stage>>> for Registry {
    fn from(stages: Vec<Arc<dyn Stage>>) -> Self {
        Registry {
            stages,
            chat_tasks: Vec::new(),
        }
    }
}

/// Every stage of the shipped pipeline.
pub fn stages() -> Registry {
    Registry::default()
        .stage(tardbot_ingest::IngestStage)
        .stage(tardbot_tokenize::TokenizerStage)
        .stage(tardbot_tokenize::TokenizeStage)
        .stage(tardbot_pretrain::PretrainStage)
        .chat(tardbot_sft::SftTask)
        .chat(tardbot_toolcall::ToolcallTask)
        .chat(tardbot_cot::CotTask)
}
