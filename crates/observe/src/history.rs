//! Everything the report shows about one run, read from the ledger in one go.

use crate::error::ObserveError;
use crate::keys::{LayerKey, SCALAR_KEYS, parse_layer_key};
use sqlx::SqlitePool;
use std::collections::BTreeMap;
use tardbot_ledger::read::{self, KeyPrefixes};
use tardbot_ledger::{
    AttemptDetail, CheckpointLineage, Event, Run, RunArtifact, RunEval, StageEval,
};

/// A curve: (step, value) in step order; NULL (NaN at logging time) values are left out.
pub(crate) type Curve = Vec<(i64, f64)>;

/// The per-step metrics of one attempt.
#[derive(Clone, Debug, Default)]
pub(crate) struct AttemptMetrics {
    /// Scalar keys (`loss`, `lr`, …) and any other key that is not per-layer.
    pub scalars: BTreeMap<String, Curve>,
    /// (layer, expert) → tokens routed per step.
    pub expert_load: BTreeMap<(u32, u32), Curve>,
    /// layer → router entropy per step.
    pub router_entropy: BTreeMap<u32, Curve>,
    /// layer → dead experts per step.
    pub dead_experts: BTreeMap<u32, Curve>,
    /// Scalar curves hold every `scalar_stride`-th logged step (and the last); 1 when complete.
    pub scalar_stride: i64,
}

impl AttemptMetrics {
    pub fn is_empty(&self) -> bool {
        self.scalars.is_empty()
            && self.expert_load.is_empty()
            && self.router_entropy.is_empty()
            && self.dead_experts.is_empty()
    }
}

/// One run as the report sees it.
pub(crate) struct RunHistory {
    pub run: Run,
    pub attempts: Vec<AttemptDetail>,
    /// attempt id → its metrics (only attempts that logged any).
    pub metrics: BTreeMap<i64, AttemptMetrics>,
    pub evals: Vec<RunEval>,
    pub stage_evals: Vec<StageEval>,
    pub artifacts: Vec<RunArtifact>,
    pub checkpoints: Vec<CheckpointLineage>,
    /// The run's newest events, oldest first.
    pub events: Vec<Event>,
    /// How many events the run has in all.
    pub event_count: i64,
}

/// How many of a run's newest events the report lists.
const EVENTS_SHOWN: i64 = 60;

impl RunHistory {
    pub async fn load(pool: &SqlitePool, run: Run) -> Result<RunHistory, ObserveError> {
        let attempts = read::run_attempts(pool, run.id).await?;
        let mut metrics = BTreeMap::new();
        for a in &attempts {
            let m = load_metrics(pool, a.attempt.id).await?;
            if !m.is_empty() {
                metrics.insert(a.attempt.id, m);
            }
        }
        Ok(RunHistory {
            evals: read::run_evals(pool, run.id).await?,
            stage_evals: read::stage_evals(pool, run.id).await?,
            artifacts: read::run_artifacts(pool, run.id).await?,
            checkpoints: read::checkpoint_lineage(pool, run.id).await?,
            events: read::recent_events(pool, run.id, EVENTS_SHOWN).await?,
            event_count: read::event_count(pool, run.id).await?,
            attempts,
            metrics,
            run,
        })
    }

    /// Stages in order of their first attempt.
    pub fn stages(&self) -> Vec<String> {
        let mut seen = Vec::<String>::new();
        for a in &self.attempts {
            if !seen.contains(&a.attempt.stage) {
                seen.push(a.attempt.stage.clone());
            }
        }
        seen
    }

    /// The attempts of `stage` that logged metrics, oldest first.
    pub fn trained_attempts(&self, stage: &str) -> Vec<(&AttemptDetail, &AttemptMetrics)> {
        self.attempts
            .iter()
            .filter(|a| a.attempt.stage == stage)
            .filter_map(|a| self.metrics.get(&a.attempt.id).map(|m| (a, m)))
            .collect()
    }
}

/// Most steps of one scalar curve the report draws; longer runs are shown every n-th step.
pub(crate) const MAX_CURVE_STEPS: i64 = 2000;
/// Most steps of per-layer curves read for heatmaps and router plots (the heatmap bins them anyway).
pub(crate) const MAX_LAYER_STEPS: i64 = 240;

/// The per-layer keys' prefixes; every other key is a scalar curve.
const LAYER_PREFIXES: [&str; 3] = ["dead_experts/L", "expert_load/L", "router_entropy/L"];

/// The metrics of one attempt, sorted into curves. A key logged at more than [`MAX_CURVE_STEPS`]
/// steps ([`MAX_LAYER_STEPS`] for per-layer keys) is read every n-th of its steps, its last step always
/// kept. Each query is a range scan of the metrics primary key.
pub(crate) async fn load_metrics(
    pool: &SqlitePool,
    attempt_id: i64,
) -> Result<AttemptMetrics, ObserveError> {
    let mut m = AttemptMetrics {
        scalar_stride: 1,
        ..AttemptMetrics::default()
    };
    for (keys, max_steps) in [
        (KeyPrefixes::Outside(&LAYER_PREFIXES), MAX_CURVE_STEPS),
        (KeyPrefixes::Within(&LAYER_PREFIXES), MAX_LAYER_STEPS),
    ] {
        for sample in read::sampled_metrics(pool, attempt_id, keys, max_steps).await? {
            let (key, step, value) = (sample.key, sample.step, sample.value);
            let curve = match parse_layer_key(&key) {
                Some(LayerKey::ExpertLoad { layer, expert }) => {
                    m.expert_load.entry((layer, expert)).or_default()
                }
                Some(LayerKey::RouterEntropy { layer }) => {
                    m.router_entropy.entry(layer).or_default()
                }
                Some(LayerKey::DeadExperts { layer }) => m.dead_experts.entry(layer).or_default(),
                None => {
                    m.scalar_stride = m.scalar_stride.max(sample.stride);
                    m.scalars.entry(key).or_default()
                }
            };
            curve.push((step, value));
        }
    }
    Ok(m)
}

/// The scalar keys an attempt logged, known ones first in their display order, then the rest.
pub(crate) fn ordered_scalar_keys(m: &AttemptMetrics) -> Vec<&str> {
    let mut keys: Vec<&str> = SCALAR_KEYS
        .iter()
        .copied()
        .filter(|k| m.scalars.contains_key(*k))
        .collect();
    keys.extend(
        m.scalars
            .keys()
            .map(String::as_str)
            .filter(|k| !SCALAR_KEYS.contains(k)),
    );
    keys
}
