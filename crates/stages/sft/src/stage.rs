//! The `sft` task: instruction examples built from a glossary, a verse text and computed tasks,
//! scored by exact match.

use crate::config::SftData;
use crate::tasks::{build_examples, exact_match};
use std::collections::BTreeMap;
use tardbot_core::PipelineConfig;
use tardbot_core::config::ConfigError;
use tardbot_finetune::{BoxError, ChatExample, ChatSettings, ChatTask, TaskInputs};

pub struct SftTask;

impl ChatTask for SftTask {
    fn name(&self) -> &'static str {
        "sft"
    }

    fn upstream(&self) -> &'static str {
        "pretrain"
    }

    fn settings(&self, config: &PipelineConfig) -> Result<ChatSettings, ConfigError> {
        ChatSettings::parse::<SftData>(config, self.name()).map(|(s, _)| s)
    }

    fn examples(
        &self,
        config: &PipelineConfig,
        _inputs: &TaskInputs,
    ) -> Result<Vec<ChatExample>, BoxError> {
        let (_, data) = ChatSettings::parse::<SftData>(config, self.name())?;
        let glossary = data.glossary.as_ref().map(|p| config.resolve(p));
        let verse = data.verse.as_ref().map(|p| config.resolve(p));
        Ok(build_examples(
            glossary.as_deref(),
            verse.as_deref(),
            data.per_kind,
            config.seed,
        )?)
    }

    fn score(&self, pairs: &[(&ChatExample, String)]) -> Vec<(String, f64)> {
        score(pairs)
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
