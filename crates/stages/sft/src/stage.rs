//! The `sft` stage: build the instruction examples, fine-tune the pretrained model on them.

use crate::tasks::{build_examples, exact_match};
use std::collections::BTreeMap;
use tardbot_core::PipelineConfig;
use tardbot_core::stage::{Resources, Stage, StageContext, StageError, StageOutput};
use tardbot_finetune::{ChatExample, Finetune, recipe};

pub struct SftStage;

impl Stage for SftStage {
    fn name(&self) -> &'static str {
        "sft"
    }

    fn inputs(&self) -> &'static [&'static str] {
        &["tokenizer", "pretrain"]
    }

    fn enabled(&self, config: &PipelineConfig) -> bool {
        config.sft.enabled
    }

    fn config_slice(&self, config: &PipelineConfig) -> serde_json::Value {
        serde_json::json!({ "sft": config.sft, "data": config.data.sft, "seed": config.seed })
    }

    fn resources(&self, _config: &PipelineConfig) -> Resources {
        Resources {
            threads: 0,
            exclusive: true,
        }
    }

    fn run(&self, ctx: &StageContext) -> Result<StageOutput, StageError> {
        let data = &ctx.config.data.sft;
        let glossary = data.glossary.as_ref().map(|p| ctx.config.resolve(p));
        let verse = data.verse.as_ref().map(|p| ctx.config.resolve(p));
        let examples = build_examples(
            glossary.as_deref(),
            verse.as_deref(),
            data.per_kind,
            ctx.config.seed,
        )
        .map_err(StageError::failed)?;
        recipe::run(
            ctx,
            Finetune {
                upstream: "pretrain",
                train: &ctx.config.sft,
                eval: &data.eval,
                validation_fraction: data.validation_fraction,
                examples,
                scorer: &score,
                eval_items: None,
            },
        )
    }
}

/// Exact match over the examples with a computed answer, overall and per task kind.
pub fn score(pairs: &[(&ChatExample, String)]) -> Vec<(String, f64)> {
    let mut per_kind: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for (ex, generated) in pairs {
        if let Some(ok) = exact_match(&ex.reference, generated) {
            let e = per_kind.entry(ex.kind.as_str()).or_default();
            e.0 += ok as usize;
            e.1 += 1;
        }
    }
    let (hit, n) = per_kind
        .values()
        .fold((0, 0), |(h, n), (a, b)| (h + a, n + b));
    let mut out = vec![("exact_match".to_string(), rate(hit, n))];
    out.extend(
        per_kind
            .iter()
            .map(|(k, (h, n))| (format!("exact_match/{k}"), rate(*h, *n))),
    );
    out
}

fn rate(hit: usize, n: usize) -> f64 {
    if n == 0 { 0.0 } else { hit as f64 / n as f64 }
}
