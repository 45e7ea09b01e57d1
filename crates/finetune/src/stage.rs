//! [`ChatStage`]: the one pipeline stage of every chat fine-tuning task.

use crate::recipe;
use crate::task::ChatTask;
use std::sync::Arc;
use tardbot_core::PipelineConfig;
use tardbot_core::config::{ConfigProblem, TrainConfig};
use tardbot_stage::{Resources, Stage, StageContext, StageError, StageOutput};

/// A [`ChatTask`] as a pipeline stage: consumes the tokenizer and the upstream stage's model, runs
/// [`recipe::run`].
pub struct ChatStage {
    pub task: Arc<dyn ChatTask>,
    inputs: Vec<&'static str>,
}

impl ChatStage {
    pub fn new(task: Arc<dyn ChatTask>) -> Self {
        let mut inputs = vec!["tokenizer", task.upstream()];
        inputs.extend(task.inputs());
        ChatStage { task, inputs }
    }
}

impl Stage for ChatStage {
    fn name(&self) -> &'static str {
        self.task.name()
    }

    fn inputs(&self) -> &[&'static str] {
        &self.inputs
    }

    fn enabled(&self, config: &PipelineConfig) -> bool {
        self.task.settings(config).is_ok_and(|s| s.train.enabled)
    }

    fn tables(&self) -> Vec<String> {
        vec![self.name().to_string(), format!("data.{}", self.name())]
    }

    fn check_config(&self, config: &PipelineConfig) -> Vec<ConfigProblem> {
        match self.task.settings(config) {
            Ok(_) => Vec::new(),
            Err(e) => e.problems().to_vec(),
        }
    }

    fn training(&self, config: &PipelineConfig) -> Option<TrainConfig> {
        self.task.settings(config).ok().map(|s| s.train)
    }

    fn config_slice(&self, config: &PipelineConfig) -> serde_json::Value {
        // A config that reached a run was validated; `Null` only for one built otherwise.
        let (train, data) = match self.task.settings(config) {
            Ok(s) => (serde_json::json!(s.train), s.data),
            Err(_) => (serde_json::Value::Null, serde_json::Value::Null),
        };
        // As pretraining's: the device, and the precision unless f32.
        let exec = config.execution.for_stage(self.name());
        let mut slice = serde_json::json!({
            self.name(): train, "data": data, "seed": config.seed, "device": exec.device,
        });
        if exec.precision != tardbot_core::config::Precision::F32 {
            slice["precision"] = serde_json::json!(exec.precision);
        }
        slice
    }

    fn resources(&self, _config: &PipelineConfig) -> Resources {
        Resources {
            threads: 0,
            exclusive: true,
        }
    }

    fn run(&self, ctx: &StageContext) -> Result<StageOutput, StageError> {
        recipe::run(ctx, self.task.as_ref())
    }
}
