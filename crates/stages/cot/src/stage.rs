//! The `cot` stage: fine-tune on worked solutions (reasoning inside think tags, then the answer).

use crate::problems::{answers_match, build_examples, extract_answer};
use tardbot_core::PipelineConfig;
use tardbot_core::stage::{Resources, Stage, StageContext, StageError, StageOutput};
use tardbot_finetune::{ChatExample, Finetune, recipe};

pub struct CotStage;

impl Stage for CotStage {
    fn name(&self) -> &'static str {
        "cot"
    }

    fn inputs(&self) -> &'static [&'static str] {
        &["tokenizer", "toolcall"]
    }

    fn enabled(&self, config: &PipelineConfig) -> bool {
        config.cot.enabled
    }

    fn config_slice(&self, config: &PipelineConfig) -> serde_json::Value {
        serde_json::json!({ "cot": config.cot, "data": config.data.cot, "seed": config.seed })
    }

    fn resources(&self, _config: &PipelineConfig) -> Resources {
        Resources {
            threads: 0,
            exclusive: true,
        }
    }

    fn run(&self, ctx: &StageContext) -> Result<StageOutput, StageError> {
        let data = &ctx.config.data.cot;
        let path = data
            .problems
            .as_ref()
            .map(|p| ctx.config.resolve(p))
            .ok_or_else(|| {
                StageError::failed(
                    "data.cot.problems is not set: the cot stage needs a problems file",
                )
            })?;
        let examples = build_examples(&path, data.limit).map_err(StageError::failed)?;
        recipe::run(
            ctx,
            Finetune {
                upstream: "toolcall",
                train: &ctx.config.cot,
                eval: &data.eval,
                validation_fraction: data.validation_fraction,
                examples,
                scorer: &score,
                eval_items: None,
            },
        )
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
