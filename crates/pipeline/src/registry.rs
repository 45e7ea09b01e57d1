//! The stages this binary ships, in pipeline order.
//!
//! Adding a stage is one line here: `.stage(MyStage)` for a stage of its own, `.chat(MyTask)` for a
//! chat fine-tuning task (run by the one [`ChatStage`]). `generate`, `chat` and `eval` find the model
//! stages and eval suites here too.

use std::sync::Arc;
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
        self.stages.push(Arc::new(ChatStage::new(Arc::clone(&task))));
        self.chat_tasks.push(task);
        self
    }

    pub fn chat_task(&self, name: &str) -> Option<&Arc<dyn ChatTask>> {
        self.chat_tasks.iter().find(|t| t.name() == name)
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
