//! The SQLite ledger: the single source of truth about runs.
//!
//! Tables (see `migrations/`): runs, stage_attempts, artifacts, artifact_inputs, checkpoints, metrics,
//! evals, events, plus `v_*` views for people and dashboards. This crate is the typed async API over
//! them; it knows nothing about stages or configs beyond the text it stores. Row types decode with
//! [`sqlx::FromRow`]; [`read`] holds typed reads of one run that take any executor (a reader's own
//! read-only pool included).
//!
//! Concurrency contract: the database runs in WAL mode with `synchronous=NORMAL` and a busy timeout,
//! and every write transaction starts with `BEGIN IMMEDIATE`, so several processes (a run, a
//! dashboard, `status`) can write and read one ledger without "database is locked" errors.

mod artifacts;
mod attempts;
mod checkpoints;
mod db;
mod events;
mod metrics;
pub mod read;
mod runs;
mod types;

pub use artifacts::NewArtifact;
pub use db::{Ledger, LedgerError, now_ms};
pub use metrics::{MetricPoint, MetricsWriter};
pub use runs::NewRun;
pub use types::*;
