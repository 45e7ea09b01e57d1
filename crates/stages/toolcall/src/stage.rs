//! The `toolcall` task: fine-tune on tool calls (BFCL rows and generated multi-turn conversations
//! with real local tools), scored by parsing and validating the generated calls.

use crate::config::ToolcallData;
use crate::data::{aggregate, bfcl_examples, first_call_example, generated_examples, score};
use std::path::Path;
use tardbot_core::PipelineConfig;
use tardbot_core::config::ConfigError;
use tardbot_finetune::{BoxError, ChatExample, ChatSettings, ChatTask};

pub struct ToolcallTask;

impl ChatTask for ToolcallTask {
    fn name(&self) -> &'static str {
        "toolcall"
    }

    fn upstream(&self) -> &'static str {
        "sft"
    }

    fn settings(&self, config: &PipelineConfig) -> Result<ChatSettings, ConfigError> {
        ChatSettings::parse::<ToolcallData>(config, self.name()).map(|(s, _)| s)
    }

    fn examples(&self, config: &PipelineConfig) -> Result<Vec<ChatExample>, BoxError> {
        let (_, data) = ChatSettings::parse::<ToolcallData>(config, self.name())?;
        let mut examples = match &data.bfcl {
            Some(p) => bfcl_examples(&config.resolve(p))?,
            None => Vec::new(),
        };
        examples.extend(generated_examples(data.generated, config.seed));
        Ok(examples)
    }

    fn eval_items(&self, example: &ChatExample) -> Vec<ChatExample> {
        eval_items(example)
    }

    fn score(&self, pairs: &[(&ChatExample, String)]) -> Vec<(String, f64)> {
        score_all(pairs)
    }

    /// BFCL rows (`{id, category, messages, tools, ground_truth, target_calls}`).
    fn read_source_file(&self, path: &Path) -> Result<Vec<ChatExample>, BoxError> {
        Ok(bfcl_examples(path)?)
    }
}

/// Valid-JSON rate, tool-name accuracy, exact (name, arguments) match, correct abstention.
pub fn score_all(pairs: &[(&ChatExample, String)]) -> Vec<(String, f64)> {
    let scores: Vec<_> = pairs.iter().map(|(ex, g)| score(ex, g)).collect();
    aggregate(&scores)
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

/// A generated multi-turn example is asked twice: for its tool call (the turn after the user's
/// request) and for its final answer (after the tool's result).
pub fn eval_items(ex: &ChatExample) -> Vec<ChatExample> {
    let turns = ex
        .conversation
        .messages
        .iter()
        .filter(|m| m.role == tardbot_tokens::chat::Role::Assistant)
        .count();
    match first_call_example(ex) {
        Some(call) if turns > 1 => vec![call, ex.clone()],
        _ => vec![ex.clone()],
    }
}
