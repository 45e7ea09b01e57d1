//! The `cot` task: worked solutions (reasoning inside think tags, then the answer), scored by
//! final-answer accuracy.

use crate::config::CotData;
use crate::problems::{answers_match, build_examples, extract_answer};
use std::path::Path;
use tardbot_core::PipelineConfig;
use tardbot_core::config::ConfigError;
use tardbot_finetune::{BoxError, ChatExample, ChatSettings, ChatTask, TaskInputs};

pub struct CotTask;

impl ChatTask for CotTask {
    fn name(&self) -> &'static str {
        "cot"
    }

    fn upstream(&self) -> &'static str {
        "toolcall"
    }

    fn settings(&self, config: &PipelineConfig) -> Result<ChatSettings, ConfigError> {
        ChatSettings::parse::<CotData>(config, self.name()).map(|(s, _)| s)
    }

    fn examples(
        &self,
        config: &PipelineConfig,
        _inputs: &TaskInputs,
    ) -> Result<Vec<ChatExample>, BoxError> {
        let (_, data) = ChatSettings::parse::<CotData>(config, self.name())?;
        let path = data
            .problems
            .as_ref()
            .map(|p| config.resolve(p))
            .ok_or("data.cot.problems is not set: the cot stage needs a problems file")?;
        Ok(build_examples(&path, data.limit)?)
    }

    fn score(&self, pairs: &[(&ChatExample, String)]) -> Vec<(String, f64)> {
        score(pairs)
    }

    /// GSM rows (`{question, answer, final_answer}`).
    fn read_source_file(&self, path: &Path) -> Result<Vec<ChatExample>, BoxError> {
        Ok(build_examples(path, 0)?)
    }
}

/// Final-answer accuracy, and how often an answer could be extracted at all.
pub fn score(pairs: &[(&ChatExample, String)]) -> Vec<(String, f64)> {
    let n = pairs.len().max(1) as f64;
    let (mut answered, mut correct) = (0usize, 0usize);
    for (ex, generated) in pairs {
        let expected = ex.reference["final_answer"].as_str().unwrap_or_default();
        if let Some(got) = extract_answer(generated) {
            answered += 1;
            correct += answers_match(expected, &got) as usize;
        }
    }
    vec![
        ("answer_accuracy".to_string(), correct as f64 / n),
        ("answered_rate".to_string(), answered as f64 / n),
    ]
}
