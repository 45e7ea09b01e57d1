//! Row types of the ledger, and their decoding from query rows ([`FromRow`]): every reader of the
//! ledger (this crate's API, the report, the CLI) decodes rows through these, by column name, so a
//! query may select more columns than a type needs.

use serde::Serialize;
use sqlx::sqlite::SqliteRow;
use sqlx::{FromRow, Row};
use std::fmt;
use std::str::FromStr;

macro_rules! status_enum {
    ($name:ident { $($variant:ident => $text:literal),* $(,)? }) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
        #[serde(rename_all = "lowercase")]
        pub enum $name { $($variant),* }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),* }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)*
                    other => Err(format!("unknown {} `{other}`", stringify!($name))),
                }
            }
        }
    };
}

status_enum!(RunStatus {
    Pending => "pending",
    Running => "running",
    Succeeded => "succeeded",
    Failed => "failed",
    Interrupted => "interrupted",
});

status_enum!(AttemptStatus {
    Running => "running",
    Succeeded => "succeeded",
    Failed => "failed",
    Cached => "cached",
    Interrupted => "interrupted",
});

impl AttemptStatus {
    /// The stage's outputs exist and can be consumed downstream.
    pub fn is_done(self) -> bool {
        matches!(self, AttemptStatus::Succeeded | AttemptStatus::Cached)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Run {
    pub id: i64,
    pub name: String,
    pub config_toml: String,
    pub config_hash: String,
    pub config_dir: String,
    pub target_stages: Vec<String>,
    pub status: RunStatus,
    pub created_ms: i64,
    pub started_ms: Option<i64>,
    pub ended_ms: Option<i64>,
    pub host: Option<String>,
    pub pid: Option<i64>,
    pub heartbeat_ms: Option<i64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct StageAttempt {
    pub id: i64,
    pub run_id: i64,
    pub stage: String,
    pub attempt: i64,
    pub fingerprint: String,
    pub status: AttemptStatus,
    pub started_ms: i64,
    pub ended_ms: Option<i64>,
    pub heartbeat_ms: Option<i64>,
    pub error: Option<String>,
    pub resumed_from: Option<i64>,
    pub cached_from: Option<i64>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Artifact {
    pub id: i64,
    pub attempt_id: i64,
    pub kind: String,
    pub path: String,
    pub hash: String,
    pub bytes: i64,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Checkpoint {
    pub id: i64,
    pub attempt_id: i64,
    pub step: i64,
    pub tokens: i64,
    pub path: String,
    pub hash: String,
    pub bytes: i64,
    pub complete: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Eval {
    pub attempt_id: i64,
    pub checkpoint_id: Option<i64>,
    pub step: i64,
    pub suite: String,
    pub metric: String,
    pub value: Option<f64>,
    pub samples: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Event {
    pub id: i64,
    pub time_ms: i64,
    pub run_id: Option<i64>,
    pub attempt_id: Option<i64>,
    pub kind: String,
    pub payload: String,
}

/// A stage attempt and where it came from: the run whose attempt a cached one reuses, the step of the
/// checkpoint a resumed one started from.
#[derive(Clone, Debug, Serialize)]
pub struct AttemptDetail {
    pub attempt: StageAttempt,
    /// For a cached attempt: the name of the run whose attempt it reused.
    pub cached_from_run: Option<String>,
    /// For a resumed attempt: the step of the checkpoint it resumed from.
    pub resumed_from_step: Option<i64>,
}

/// One eval result of a run, with its attempt's stage and number.
#[derive(Clone, Debug, Serialize)]
pub struct RunEval {
    pub stage: String,
    pub attempt: i64,
    pub step: i64,
    pub suite: String,
    pub metric: String,
    pub value: Option<f64>,
    pub samples: i64,
    pub time_ms: i64,
}

/// Before/after of one (stage, suite, metric) of a run, from the `v_stage_evals` view.
#[derive(Clone, Debug, Serialize)]
pub struct StageEval {
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

/// An artifact a run's attempt produced or reused, from the `v_run_artifacts` view.
#[derive(Clone, Debug, Serialize)]
pub struct RunArtifact {
    pub stage: String,
    pub attempt: i64,
    pub kind: String,
    pub path: String,
    pub hash: String,
    pub bytes: i64,
    /// The run that produced it when that is not this run (a cached stage).
    pub origin_run: Option<String>,
    /// The stages that consumed it, as the view lists them.
    pub consumed_by: Option<String>,
}

/// A checkpoint of a run and its lineage, from the `v_checkpoint_lineage` view.
#[derive(Clone, Debug, Serialize)]
pub struct CheckpointLineage {
    pub stage: String,
    pub attempt: i64,
    pub id: i64,
    pub step: i64,
    pub tokens: i64,
    pub path: String,
    pub hash: String,
    pub bytes: i64,
    pub complete: bool,
    /// The stage's checkpoint before this one.
    pub previous: Option<i64>,
    /// The attempts that resumed from it, as the view lists them.
    pub resumed_by: Option<String>,
    /// Evals recorded at it.
    pub evals: i64,
}

/// One point of a (possibly thinned) metric series; see [`crate::read::sampled_metrics`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MetricSample {
    pub key: String,
    pub step: i64,
    pub value: f64,
    /// Every `stride`-th logged step of this key is read (1: all of them).
    pub stride: i64,
}

fn parsed<T: FromStr<Err = String>>(r: &SqliteRow, column: &str) -> Result<T, sqlx::Error> {
    let text: String = r.try_get(column)?;
    text.parse()
        .map_err(|e: String| sqlx::Error::Decode(e.into()))
}

impl<'r> FromRow<'r, SqliteRow> for Run {
    fn from_row(r: &'r SqliteRow) -> Result<Self, sqlx::Error> {
        let targets: String = r.try_get("target_stages")?;
        Ok(Run {
            id: r.try_get("id")?,
            name: r.try_get("name")?,
            config_toml: r.try_get("config_toml")?,
            config_hash: r.try_get("config_hash")?,
            config_dir: r.try_get("config_dir")?,
            target_stages: serde_json::from_str(&targets)
                .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
            status: parsed(r, "status")?,
            created_ms: r.try_get("created_ms")?,
            started_ms: r.try_get("started_ms")?,
            ended_ms: r.try_get("ended_ms")?,
            host: r.try_get("host")?,
            pid: r.try_get("pid")?,
            heartbeat_ms: r.try_get("heartbeat_ms")?,
        })
    }
}

impl<'r> FromRow<'r, SqliteRow> for StageAttempt {
    fn from_row(r: &'r SqliteRow) -> Result<Self, sqlx::Error> {
        Ok(StageAttempt {
            id: r.try_get("id")?,
            run_id: r.try_get("run_id")?,
            stage: r.try_get("stage")?,
            attempt: r.try_get("attempt")?,
            fingerprint: r.try_get("fingerprint")?,
            status: parsed(r, "status")?,
            started_ms: r.try_get("started_ms")?,
            ended_ms: r.try_get("ended_ms")?,
            heartbeat_ms: r.try_get("heartbeat_ms")?,
            error: r.try_get("error")?,
            resumed_from: r.try_get("resumed_from")?,
            cached_from: r.try_get("cached_from")?,
        })
    }
}

impl<'r> FromRow<'r, SqliteRow> for Artifact {
    fn from_row(r: &'r SqliteRow) -> Result<Self, sqlx::Error> {
        Ok(Artifact {
            id: r.try_get("id")?,
            attempt_id: r.try_get("attempt_id")?,
            kind: r.try_get("kind")?,
            path: r.try_get("path")?,
            hash: r.try_get("hash")?,
            bytes: r.try_get("bytes")?,
        })
    }
}

impl<'r> FromRow<'r, SqliteRow> for Checkpoint {
    fn from_row(r: &'r SqliteRow) -> Result<Self, sqlx::Error> {
        Ok(Checkpoint {
            id: r.try_get("id")?,
            attempt_id: r.try_get("attempt_id")?,
            step: r.try_get("step")?,
            tokens: r.try_get("tokens")?,
            path: r.try_get("path")?,
            hash: r.try_get("hash")?,
            bytes: r.try_get("bytes")?,
            complete: r.try_get("complete")?,
        })
    }
}

impl<'r> FromRow<'r, SqliteRow> for Eval {
    fn from_row(r: &'r SqliteRow) -> Result<Self, sqlx::Error> {
        Ok(Eval {
            attempt_id: r.try_get("attempt_id")?,
            checkpoint_id: r.try_get("checkpoint_id")?,
            step: r.try_get("step")?,
            suite: r.try_get("suite")?,
            metric: r.try_get("metric")?,
            value: r.try_get("value")?,
            samples: r.try_get("samples")?,
        })
    }
}

impl<'r> FromRow<'r, SqliteRow> for Event {
    fn from_row(r: &'r SqliteRow) -> Result<Self, sqlx::Error> {
        Ok(Event {
            id: r.try_get("id")?,
            time_ms: r.try_get("time_ms")?,
            run_id: r.try_get("run_id")?,
            attempt_id: r.try_get("attempt_id")?,
            kind: r.try_get("kind")?,
            payload: r.try_get("payload")?,
        })
    }
}

/// Decodes the attempt's columns plus `cached_from_run` and `resumed_from_step`.
impl<'r> FromRow<'r, SqliteRow> for AttemptDetail {
    fn from_row(r: &'r SqliteRow) -> Result<Self, sqlx::Error> {
        Ok(AttemptDetail {
            attempt: StageAttempt::from_row(r)?,
            cached_from_run: r.try_get("cached_from_run")?,
            resumed_from_step: r.try_get("resumed_from_step")?,
        })
    }
}

impl<'r> FromRow<'r, SqliteRow> for RunEval {
    fn from_row(r: &'r SqliteRow) -> Result<Self, sqlx::Error> {
        Ok(RunEval {
            stage: r.try_get("stage")?,
            attempt: r.try_get("attempt")?,
            step: r.try_get("step")?,
            suite: r.try_get("suite")?,
            metric: r.try_get("metric")?,
            value: r.try_get("value")?,
            samples: r.try_get("samples")?,
            time_ms: r.try_get("time_ms")?,
        })
    }
}

impl<'r> FromRow<'r, SqliteRow> for StageEval {
    fn from_row(r: &'r SqliteRow) -> Result<Self, sqlx::Error> {
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
    }
}

/// Decodes a `v_run_artifacts` row; `origin_run` only when `origin_run_id` is not `run_id`.
impl<'r> FromRow<'r, SqliteRow> for RunArtifact {
    fn from_row(r: &'r SqliteRow) -> Result<Self, sqlx::Error> {
        let own: i64 = r.try_get("run_id")?;
        let origin: i64 = r.try_get("origin_run_id")?;
        Ok(RunArtifact {
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
    }
}

/// Decodes a `v_checkpoint_lineage` row.
impl<'r> FromRow<'r, SqliteRow> for CheckpointLineage {
    fn from_row(r: &'r SqliteRow) -> Result<Self, sqlx::Error> {
        Ok(CheckpointLineage {
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
    }
}

impl<'r> FromRow<'r, SqliteRow> for MetricSample {
    fn from_row(r: &'r SqliteRow) -> Result<Self, sqlx::Error> {
        Ok(MetricSample {
            key: r.try_get("key")?,
            step: r.try_get("step")?,
            value: r.try_get("value")?,
            stride: r.try_get("stride")?,
        })
    }
}
