//! The stage graph: registered stages, enabled by `pipeline.toml`, with edges from each stage's
//! declared inputs. Selecting a target (`run all`, `run STAGE`) yields it and its upstream, in
//! topological order.

use crate::registry::Registry;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use tardbot_core::PipelineConfig;
use tardbot_stage::Stage;

#[derive(Debug, thiserror::Error)]
pub enum DagError {
    #[error("unknown stage `{name}`; this pipeline has: {known}")]
    UnknownStage { name: String, known: String },
    #[error("stage `{stage}` needs `{input}`, which is not a stage of this pipeline")]
    MissingInput { stage: String, input: String },
    #[error(
        "stage `{stage}` is needed by `{by}` but is disabled in the config (`[{stage}] enabled = false`)"
    )]
    Disabled { stage: String, by: String },
    #[error("the stage graph has a cycle through `{0}`")]
    Cycle(String),
    #[error("no stage is enabled: nothing to run")]
    Empty,
}

/// Stages selected for a run, in an order where every stage comes after its inputs.
pub struct Plan {
    pub stages: Vec<Arc<dyn Stage>>,
}

impl Plan {
    pub fn names(&self) -> Vec<String> {
        self.stages.iter().map(|s| s.name().to_string()).collect()
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Stage>> {
        self.stages.iter().find(|s| s.name() == name)
    }
}

/// Builds the plan for `targets` (stage names; `all` = every enabled stage).
pub fn plan(
    registry: &Registry,
    config: &PipelineConfig,
    targets: &[String],
) -> Result<Plan, DagError> {
    let by_name: HashMap<&str, &Arc<dyn Stage>> =
        registry.stages.iter().map(|s| (s.name(), s)).collect();
    let known = || {
        registry
            .stages
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let roots: Vec<&str> = if targets.iter().any(|t| t == "all") {
        registry
            .stages
            .iter()
            .filter(|s| s.enabled(config))
            .map(|s| s.name())
            .collect()
    } else {
        targets.iter().map(String::as_str).collect()
    };
    if roots.is_empty() {
        return Err(DagError::Empty);
    }
    // Depth-first walk from the targets: post-order is a topological order.
    let mut order: Vec<Arc<dyn Stage>> = Vec::new();
    let mut done = BTreeSet::new();
    let mut visiting = BTreeSet::new();
    #[allow(clippy::too_many_arguments)] // a recursive walk threading its state explicitly
    fn visit(
        name: &str,
        by: &str,
        by_name: &HashMap<&str, &Arc<dyn Stage>>,
        config: &PipelineConfig,
        known: &dyn Fn() -> String,
        done: &mut BTreeSet<String>,
        visiting: &mut BTreeSet<String>,
        order: &mut Vec<Arc<dyn Stage>>,
    ) -> Result<(), DagError> {
        if done.contains(name) {
            return Ok(());
        }
        let Some(stage) = by_name.get(name) else {
            return Err(if by.is_empty() {
                DagError::UnknownStage {
                    name: name.to_string(),
                    known: known(),
                }
            } else {
                DagError::MissingInput {
                    stage: by.to_string(),
                    input: name.to_string(),
                }
            });
        };
        if !by.is_empty() && !stage.enabled(config) {
            return Err(DagError::Disabled {
                stage: name.to_string(),
                by: by.to_string(),
            });
        }
        if !visiting.insert(name.to_string()) {
            return Err(DagError::Cycle(name.to_string()));
        }
        for input in stage.inputs() {
            visit(input, name, by_name, config, known, done, visiting, order)?;
        }
        visiting.remove(name);
        done.insert(name.to_string());
        order.push(Arc::clone(stage));
        Ok(())
    }
    for root in roots {
        visit(
            root,
            "",
            &by_name,
            config,
            &known,
            &mut done,
            &mut visiting,
            &mut order,
        )?;
    }
    Ok(Plan { stages: order })
}
