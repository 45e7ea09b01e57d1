//! The `toolcall` stage: fine-tune on tool calls (BFCL rows and generated multi-turn conversations
//! with real local tools), scored by parsing and validating the generated calls.

use crate::data::{aggregate, bfcl_examples, first_call_example, generated_examples, score};
use tardbot_core::PipelineConfig;
use tardbot_core::stage::{Resources, Stage, StageContext, StageError, StageOutput};
use tardbot_finetune::{ChatExample, Finetune, recipe};

pub struct ToolcallStage;

impl Stage for ToolcallStage {
    fn name(&self) -> &'static str {
        "toolcall"
    }

    fn inputs(&self) -> &'static [&'static str] {
        &["tokenizer", "sft"]
    }

    fn enabled(&self, config: &PipelineConfig) -> bool {
        config.toolcall.enabled
    }

    fn config_slice(&self, config: &PipelineConfig) -> serde_json::Value {
        serde_json::json!({ "toolcall": config.toolcall, "data": config.data.toolcall, "seed": config.seed })
    }

    fn resources(&self, _config: &PipelineConfig) -> Resources {
        Resources {
            threads: 0,
            exclusive: true,
        }
    }

    fn run(&self, ctx: &StageContext) -> Result<StageOutput, StageError> {
        let data = &ctx.config.data.toolcall;
        let mut examples = match &data.bfcl {
            Some(p) => bfcl_examples(&ctx.config.resolve(p)).map_err(StageError::failed)?,
            None => Vec::new(),
        };
        examples.extend(generated_examples(data.generated, ctx.config.seed));
        recipe::run(
            ctx,
            Finetune {
                upstream: "sft",
                train: &ctx.config.toolcall,
                eval: &data.eval,
                validation_fraction: data.validation_fraction,
                examples,
                scorer: &score_all,
                eval_items: Some(&eval_items),
            },
        )
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
