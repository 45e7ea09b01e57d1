//! The stage contract of the TardBot pipeline.
//!
//! - [`Stage`]: what a stage declares (name, upstream stages, config slice, resources) and does (`run`).
//! - [`StageContext`]: what a running stage gets from the orchestrator: its directories, its inputs'
//!   artifacts, the resume point, and the ledger records it writes (metrics, checkpoints, evals,
//!   events), plus a progress bar and the cancellation token.
//!
//! What it does not do: schedule, cache or publish (the orchestrator in `tardbot-pipeline`), or define
//! the configuration (`tardbot-core`). It sits above `tardbot-core` and `tardbot-ledger`; the model,
//! token and training libraries do not depend on it.

mod stage;

pub use stage::{
    CancelToken, OutputArtifact, Resources, Stage, StageContext, StageError, StageOutput,
};
