//! The shared vocabulary of the TardBot pipeline.
//!
//! - [`config`]: the `pipeline.toml` schema (one section per stage) and its validation, which reports
//!   every problem with file, line and field.
//! - [`model_config`]: [`ModelConfig`](model_config::ModelConfig), the model presets and `describe()`.
//! - [`stage`]: the [`Stage`](stage::Stage) contract every pipeline stage implements, and the
//!   [`StageContext`](stage::StageContext) a stage runs with (run directory, ledger, progress,
//!   cancellation, resume point).
//! - [`hash`]: BLAKE3 content hashing of files and directories (artifact and checkpoint identity).
//! - [`memory`]: this process's resident and peak memory (benchmarks, memory checks).
//!
//! What it does not do: run anything. Scheduling, caching and the CLI live in `tardbot-pipeline`;
//! persistence lives in `tardbot-ledger`; the model itself lives in `tardbot-model`.

pub mod config;
pub mod hash;
pub mod memory;
pub mod model_config;
pub mod stage;

pub use config::PipelineConfig;
pub use model_config::ModelConfig;
pub use stage::{Stage, StageContext, StageError, StageOutput};
