//! Row types of the ledger.

use serde::Serialize;
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
