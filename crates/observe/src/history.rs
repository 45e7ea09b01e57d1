//! Everything the report shows about one run, read from the ledger in one go.

use crate::error::{ObserveError, QueryContext};
use crate::keys::{LayerKey, SCALAR_KEYS, parse_layer_key};
use sqlx::{Row, SqlitePool};
use std::collections::BTreeMap;
use tardbot_ledger::{Event, Run, StageAttempt};

/// A curve: (step, value) in step order; NULL (NaN at logging time) values are left out.
pub(crate) type Curve = Vec<(i64, f64)>;

/// One stage attempt and what the table says about it.
#[derive(Clone, Debug)]
pub(crate) struct AttemptInfo {
    pub attempt: StageAttempt,
    /// For a cached attempt: the run whose attempt it reused.
    pub cached_from_run: Option<String>,
    /// For a resumed attempt: the step of the checkpoint it resumed from.
    pub resumed_from_step: Option<i64>,
}

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

#[derive(Clone, Debug)]
pub(crate) struct EvalRow {
    pub stage: String,
    pub attempt: i64,
    pub step: i64,
    pub suite: String,
    pub metric: String,
    pub value: Option<f64>,
    pub samples: i64,
    pub time_ms: i64,
}

/// Before/after of one (stage, suite, metric), from `v_stage_evals`.
#[derive(Clone, Debug)]
pub(crate) struct StageEval {
    pub stage: String,
    pub suite: String,
    pub metric: String,
    pub first_step: Option<i64>,
    pub before: Option<f64>,
    pub last_step: Option<i64>,
    pub after: Option<f64>,
    pub samples: Option<i64>,
    pub evals: i64,
}

#[derive(Clone, Debug)]
pub(crate) struct ArtifactRow {
    pub stage: String,
    pub attempt: i64,
    pub kind: String,
    pub path: String,
    pub hash: String,
    pub bytes: i64,
    /// The run that produced it when that is not this run (a cached stage).
    pub origin_run: Option<String>,
    pub consumed_by: Option<String>,
}

#[derive(Clone, Debug)]
pub(crate) struct CheckpointRow {
    pub stage: String,
    pub attempt: i64,
    pub id: i64,
    pub step: i64,
    pub tokens: i64,
    pub path: String,
    pub hash: String,
    pub bytes: i64,
    pub complete: bool,
    pub previous: Option<i64>,
    pub resumed_by: Option<String>,
    pub evals: i64,
}

/// One run as the report sees it.
pub(crate) struct RunHistory {
    pub run: Run,
    pub attempts: Vec<AttemptInfo>,
    /// attempt id → its metrics (only attempts that logged any).
    pub metrics: BTreeMap<i64, AttemptMetrics>,
    pub evals: Vec<EvalRow>,
    pub stage_evals: Vec<StageEval>,
    pub artifacts: Vec<ArtifactRow>,
    pub checkpoints: Vec<CheckpointRow>,
    /// The run's newest events, oldest first.
    pub events: Vec<Event>,
    /// How many events the run has in all.
    pub event_count: i64,
}

/// How many of a run's newest events the report lists.
const EVENTS_SHOWN: i64 = 60;

impl RunHistory {
    pub async fn load(pool: &SqlitePool, run: Run) -> Result<RunHistory, ObserveError> {
        let attempts = load_attempts(pool, run.id).await?;
        let mut metrics = BTreeMap::new();
        for a in &attempts {
            let m = load_metrics(pool, a.attempt.id).await?;
            if !m.is_empty() {
                metrics.insert(a.attempt.id, m);
            }
        }
        Ok(RunHistory {
            evals: load_evals(pool, run.id).await?,
            stage_evals: load_stage_evals(pool, run.id).await?,
            artifacts: load_artifacts(pool, run.id).await?,
            checkpoints: load_checkpoints(pool, run.id).await?,
            events: load_events(pool, run.id).await?,
            event_count: sqlx::query_scalar("SELECT count(*) FROM events WHERE run_id = ?")
                .bind(run.id)
                .fetch_one(pool)
                .await
                .ctx("count events")?,
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
    pub fn trained_attempts(&self, stage: &str) -> Vec<(&AttemptInfo, &AttemptMetrics)> {
        self.attempts
            .iter()
            .filter(|a| a.attempt.stage == stage)
            .filter_map(|a| self.metrics.get(&a.attempt.id).map(|m| (a, m)))
            .collect()
    }
}

async fn load_attempts(pool: &SqlitePool, run_id: i64) -> Result<Vec<AttemptInfo>, ObserveError> {
    let rows = sqlx::query(
        "SELECT a.id, a.run_id, a.stage, a.attempt, a.fingerprint, a.status, a.started_ms, a.ended_ms,
                a.heartbeat_ms, a.error, a.resumed_from, a.cached_from,
                src_run.name AS cached_from_run, ck.step AS resumed_from_step
         FROM stage_attempts a
         LEFT JOIN stage_attempts src ON src.id = a.cached_from
         LEFT JOIN runs src_run ON src_run.id = src.run_id
         LEFT JOIN checkpoints ck ON ck.id = a.resumed_from
         WHERE a.run_id = ? ORDER BY a.id",
    )
    .bind(run_id)
    .fetch_all(pool)
    .await
    .ctx("select attempts")?;
    rows.iter()
        .map(|r| {
            let status: String = r.try_get("status")?;
            Ok(AttemptInfo {
                attempt: StageAttempt {
                    id: r.try_get("id")?,
                    run_id: r.try_get("run_id")?,
                    stage: r.try_get("stage")?,
                    attempt: r.try_get("attempt")?,
                    fingerprint: r.try_get("fingerprint")?,
                    status: status
                        .parse()
                        .map_err(|e: String| sqlx::Error::Decode(e.into()))?,
                    started_ms: r.try_get("started_ms")?,
                    ended_ms: r.try_get("ended_ms")?,
                    heartbeat_ms: r.try_get("heartbeat_ms")?,
                    error: r.try_get("error")?,
                    resumed_from: r.try_get("resumed_from")?,
                    cached_from: r.try_get("cached_from")?,
                },
                cached_from_run: r.try_get("cached_from_run")?,
                resumed_from_step: r.try_get("resumed_from_step")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .ctx("decode attempts")
}

/// Most steps of one scalar curve the report draws; longer runs are shown every n-th step.
pub(crate) const MAX_CURVE_STEPS: i64 = 2000;
/// Most steps of per-layer curves read for heatmaps and router plots (the heatmap bins them anyway).
pub(crate) const MAX_LAYER_STEPS: i64 = 240;

/// Per-layer keys sort into three key ranges; everything outside them is a scalar curve.
const LAYER_RANGES: &str = "((key >= 'dead_experts/L' AND key < 'dead_experts/M')
     OR (key >= 'expert_load/L' AND key < 'expert_load/M')
     OR (key >= 'router_entropy/L' AND key < 'router_entropy/M'))";

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
    for (layers, max_steps) in [(false, MAX_CURVE_STEPS), (true, MAX_LAYER_STEPS)] {
        let sql = format!(
            "SELECT key, step, value, (n + ?2 - 1) / ?2 AS stride FROM (
                 SELECT key, step, value,
                        row_number() OVER (PARTITION BY key ORDER BY step) AS i,
                        count(*) OVER (PARTITION BY key) AS n
                 FROM metrics WHERE attempt_id = ?1 AND {} {LAYER_RANGES}
             )
             WHERE value IS NOT NULL AND ((i - 1) % ((n + ?2 - 1) / ?2) = 0 OR i = n)
             ORDER BY key, step",
            if layers { "" } else { "NOT" }
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(attempt_id)
            .bind(max_steps)
            .fetch_all(pool)
            .await
            .ctx("select metrics")?;
        for r in &rows {
            let key: String = r.try_get("key").ctx("decode metric")?;
            let step: i64 = r.try_get("step").ctx("decode metric")?;
            let value: f64 = r.try_get("value").ctx("decode metric")?;
            let stride: i64 = r.try_get("stride").ctx("decode metric")?;
            let curve = match parse_layer_key(&key) {
                Some(LayerKey::ExpertLoad { layer, expert }) => {
                    m.expert_load.entry((layer, expert)).or_default()
                }
                Some(LayerKey::RouterEntropy { layer }) => {
                    m.router_entropy.entry(layer).or_default()
                }
                Some(LayerKey::DeadExperts { layer }) => m.dead_experts.entry(layer).or_default(),
                None => {
                    m.scalar_stride = m.scalar_stride.max(stride);
                    m.scalars.entry(key).or_default()
                }
            };
            curve.push((step, value));
        }
    }
    Ok(m)
}

async fn load_evals(pool: &SqlitePool, run_id: i64) -> Result<Vec<EvalRow>, ObserveError> {
    let rows = sqlx::query(
        "SELECT a.stage, a.attempt, e.step, e.suite, e.metric, e.value, e.samples, e.time_ms
         FROM stage_attempts a JOIN evals e ON e.attempt_id = a.id
         WHERE a.run_id = ? ORDER BY e.time_ms, e.id",
    )
    .bind(run_id)
    .fetch_all(pool)
    .await
    .ctx("select evals")?;
    rows.iter()
        .map(|r| {
            Ok(EvalRow {
                stage: r.try_get("stage")?,
                attempt: r.try_get("attempt")?,
                step: r.try_get("step")?,
                suite: r.try_get("suite")?,
                metric: r.try_get("metric")?,
                value: r.try_get("value")?,
                samples: r.try_get("samples")?,
                time_ms: r.try_get("time_ms")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .ctx("decode evals")
}

async fn load_stage_evals(pool: &SqlitePool, run_id: i64) -> Result<Vec<StageEval>, ObserveError> {
    let rows = sqlx::query(
        "SELECT stage, suite, metric, first_step, before, last_step, after, samples, evals
         FROM v_stage_evals WHERE run_id = ?
         ORDER BY (SELECT min(id) FROM stage_attempts s WHERE s.run_id = v_stage_evals.run_id
                   AND s.stage = v_stage_evals.stage), suite, metric",
    )
    .bind(run_id)
    .fetch_all(pool)
    .await
    .ctx("select v_stage_evals")?;
    rows.iter()
        .map(|r| {
            Ok(StageEval {
                stage: r.try_get("stage")?,
                suite: r.try_get("suite")?,
                metric: r.try_get("metric")?,
                first_step: r.try_get("first_step")?,
                before: r.try_get("before")?,
                last_step: r.try_get("last_step")?,
                after: r.try_get("after")?,
                samples: r.try_get("samples")?,
                evals: r.try_get("evals")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .ctx("decode v_stage_evals")
}

async fn load_artifacts(pool: &SqlitePool, run_id: i64) -> Result<Vec<ArtifactRow>, ObserveError> {
    let rows = sqlx::query(
        "SELECT stage, attempt, kind, path, hash, bytes, run_id, origin_run_id, origin_run, consumed_by
         FROM v_run_artifacts WHERE run_id = ? ORDER BY artifact_id",
    )
    .bind(run_id)
    .fetch_all(pool)
    .await
    .ctx("select v_run_artifacts")?;
    rows.iter()
        .map(|r| {
            let own: i64 = r.try_get("run_id")?;
            let origin: i64 = r.try_get("origin_run_id")?;
            Ok(ArtifactRow {
                stage: r.try_get("stage")?,
                attempt: r.try_get("attempt")?,
                kind: r.try_get("kind")?,
                path: r.try_get("path")?,
                hash: r.try_get("hash")?,
                bytes: r.try_get("bytes")?,
                origin_run: if own == origin {
                    None
                } else {
                    r.try_get("origin_run")?
                },
                consumed_by: r.try_get("consumed_by")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .ctx("decode v_run_artifacts")
}

async fn load_checkpoints(
    pool: &SqlitePool,
    run_id: i64,
) -> Result<Vec<CheckpointRow>, ObserveError> {
    let rows = sqlx::query(
        "SELECT stage, attempt, checkpoint_id, step, tokens, path, hash, bytes, complete,
                previous_checkpoint_id, resumed_by_attempts, evals
         FROM v_checkpoint_lineage WHERE run_id = ? ORDER BY checkpoint_id",
    )
    .bind(run_id)
    .fetch_all(pool)
    .await
    .ctx("select v_checkpoint_lineage")?;
    rows.iter()
        .map(|r| {
            Ok(CheckpointRow {
                stage: r.try_get("stage")?,
                attempt: r.try_get("attempt")?,
                id: r.try_get("checkpoint_id")?,
                step: r.try_get("step")?,
                tokens: r.try_get("tokens")?,
                path: r.try_get("path")?,
                hash: r.try_get("hash")?,
                bytes: r.try_get("bytes")?,
                complete: r.try_get("complete")?,
                previous: r.try_get("previous_checkpoint_id")?,
                resumed_by: r.try_get("resumed_by_attempts")?,
                evals: r.try_get("evals")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .ctx("decode v_checkpoint_lineage")
}

async fn load_events(pool: &SqlitePool, run_id: i64) -> Result<Vec<Event>, ObserveError> {
    let rows = sqlx::query(
        "SELECT id, time_ms, run_id, attempt_id, kind, payload FROM (
             SELECT * FROM events WHERE run_id = ? ORDER BY id DESC LIMIT ?
         ) ORDER BY id",
    )
    .bind(run_id)
    .bind(EVENTS_SHOWN)
    .fetch_all(pool)
    .await
    .ctx("select events")?;
    rows.iter()
        .map(|r| {
            Ok(Event {
                id: r.try_get("id")?,
                time_ms: r.try_get("time_ms")?,
                run_id: r.try_get("run_id")?,
                attempt_id: r.try_get("attempt_id")?,
                kind: r.try_get("kind")?,
                payload: r.try_get("payload")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .ctx("decode events")
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
