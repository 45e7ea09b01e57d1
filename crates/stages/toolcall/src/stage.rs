//! The `toolcall` task: fine-tune on tool calls (BFCL rows and generated multi-turn conversations
//! with real local tools), scored by parsing and validating the generated calls.

use crate::agent::{AgentEvaluator, agent_suite};
use crate::config::ToolcallData;
use crate::data::{
    ToolRunner, aggregate, bfcl_examples, browser_examples, first_call_example, generated_examples,
    python_examples, score, search_examples, unseen_function_examples,
};
use std::path::Path;
use std::sync::Arc;
use tardbot_core::PipelineConfig;
use tardbot_core::config::ConfigError;
use tardbot_finetune::{BoxError, ChatExample, ChatSettings, ChatTask, SuiteFigures, TaskInputs};
use tardbot_model::TardBot;
use tardbot_tokens::LoadedTokenizer;

/// The stage's task. Conversations with the runtime's tools (`[data.toolcall] python`, `search`,
/// `browser`) need a [`ToolRunner`] (the pipeline gives it the built-in tools of `tardbot-tools`).
/// The agent eval (`[data.toolcall] agent`) needs an [`AgentEvaluator`] the same way.
#[derive(Clone, Default)]
pub struct ToolcallTask {
    runner: Option<Arc<dyn ToolRunner>>,
    agent: Option<Arc<dyn AgentEvaluator>>,
}

impl ToolcallTask {
    pub fn with_runner(runner: Arc<dyn ToolRunner>) -> ToolcallTask {
        ToolcallTask {
            runner: Some(runner),
            agent: None,
        }
    }

    pub fn with_agent_evaluator(self, agent: Arc<dyn AgentEvaluator>) -> ToolcallTask {
        ToolcallTask {
            agent: Some(agent),
            ..self
        }
    }
}

/// The artifact kind of the `search_index` stage's index.
const KIND_SEARCH_INDEX: &str = "search-index";

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

    fn inputs(&self) -> &'static [&'static str] {
        &["search_index"]
    }

    fn examples(
        &self,
        config: &PipelineConfig,
        inputs: &TaskInputs,
    ) -> Result<Vec<ChatExample>, BoxError> {
        let (_, data) = ChatSettings::parse::<ToolcallData>(config, self.name())?;
        let mut examples = match &data.bfcl {
            Some(p) => bfcl_examples(&config.resolve(p))?,
            None => Vec::new(),
        };
        examples.extend(generated_examples(data.generated, config.seed));
        examples.extend(unseen_function_examples(data.unseen, config.seed));
        if data.python + data.search + data.browser > 0 {
            let runner = self.runner.as_deref().ok_or(
                "[data.toolcall] python, search and browser need the runtime's tools, which this build's \
                 toolcall task was not given",
            )?;
            examples.extend(python_examples(runner, data.python, config.seed)?);
            if data.search + data.browser > 0 {
                let index = inputs.file("search_index", KIND_SEARCH_INDEX).ok_or(
                    "[data.toolcall] search and browser need the search_index stage's index (the \
                     browser's pages are its passages), and it recorded none",
                )?;
                examples.extend(search_examples(runner, index, data.search, config.seed)?);
                examples.extend(browser_examples(runner, index, data.browser, config.seed)?);
            }
        }
        Ok(examples)
    }

    fn eval_items(&self, example: &ChatExample) -> Vec<ChatExample> {
        eval_items(example)
    }

    fn extra_evals(
        &self,
        config: &PipelineConfig,
        inputs: &TaskInputs,
        model: &TardBot,
        tok: &LoadedTokenizer,
    ) -> Result<Vec<SuiteFigures>, BoxError> {
        let (_, data) = ChatSettings::parse::<ToolcallData>(config, self.name())?;
        let Some(agent) = &data.agent else {
            return Ok(Vec::new());
        };
        let evaluator = self.agent.as_deref().ok_or(
            "[data.toolcall] agent needs the tool loop and the runtime's tools, which this build's \
             toolcall task was not given",
        )?;
        let tasks = config.resolve(&agent.tasks);
        let index = inputs.file("search_index", KIND_SEARCH_INDEX);
        let (figures, n) =
            evaluator.evaluate(config, &tasks, index, model, tok, agent.max_new_tokens)?;
        Ok(vec![SuiteFigures {
            suite: agent_suite(&tasks),
            figures,
            n,
        }])
    }

    fn score(&self, pairs: &[(&ChatExample, String)]) -> Vec<(String, f64)> {
        score_all(pairs)
    }

    /// BFCL rows (`{id, category, messages, tools, ground_truth, target_calls}`).
    fn read_source_file(&self, path: &Path) -> Result<Vec<ChatExample>, BoxError> {
        Ok(bfcl_examples(path)?)
    }
}

/// Valid-JSON rate, tool-name accuracy, exact (name, arguments) match, correct abstention: over all
/// items, then per source as `<metric>/bfcl` (BFCL rows: functions the model has not seen) and
/// `<metric>/generated` (conversations with our tools), `<metric>/unseen` (calls to made-up
/// functions), and of the generated `<metric>/python`,
/// `<metric>/search` and `<metric>/browser`, so that a blend never hides a zero on one of them.
pub fn score_all(pairs: &[(&ChatExample, String)]) -> Vec<(String, f64)> {
    let scores: Vec<_> = pairs.iter().map(|(ex, g)| score(ex, g)).collect();
    let mut out: Vec<(String, f64)> = aggregate(&scores)
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    // The runtime tools' conversations also on their own (they are part of `generated` too).
    for (source, prefix) in [
        ("bfcl", "bfcl:"),
        ("generated", "gen:"),
        ("unseen", "unseen"),
        ("python", "gen:python"),
        ("search", "gen:search"),
        ("browser", "gen:browser"),
    ] {
        let part: Vec<_> = pairs
            .iter()
            .zip(&scores)
            .filter(|((ex, _), _)| ex.kind.starts_with(prefix))
            .map(|(_, s)| s.clone())
            .collect();
        if !part.is_empty() {
            out.extend(
                aggregate(&part)
                    .into_iter()
                    .map(|(k, v)| (format!("{k}/{source}"), v)),
            );
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::first_call_example;
    use crate::test_util::{by_id, sample, target_text};

    /// The model is right on BFCL and wrong on the generated conversations: the blend says 0.5, the
    /// per-source figures say 1 and 0.
    #[test]
    fn scores_are_reported_per_source_besides_the_blend() {
        let bfcl = sample();
        let b = by_id(&bfcl, "simple_python_0");
        let generated: Vec<ChatExample> = generated_examples(40, 3)
            .iter()
            .filter_map(first_call_example)
            .collect();
        let g = generated.first().expect("a generated call example");
        let pairs = vec![(b, target_text(b)), (g, "I do not know.".to_string())];
        let pairs: Vec<(&ChatExample, String)> = pairs.into_iter().collect();
        let figures: std::collections::HashMap<String, f64> =
            score_all(&pairs).into_iter().collect();
        assert_eq!(figures["name_accuracy"], 0.5);
        assert_eq!(figures["name_accuracy/bfcl"], 1.0);
        assert_eq!(figures["name_accuracy/generated"], 0.0);
        assert_eq!(figures["call_rows/bfcl"], 1.0);
        assert_eq!(figures["call_rows/generated"], 1.0);
    }
}
