//! The leaf of the TardBot pipeline: what every other crate shares, with no database, async runtime or
//! UI dependency (so `tardbot-model`, `tardbot-tokens` and `tardbot-train` are plain libraries).
//!
//! - [`config`]: the `pipeline.toml` schema (one section per stage, `[execution]` for how stages run)
//!   and its validation, which reports every problem with file, line and field.
//! - [`model_config`]: [`ModelConfig`](model_config::ModelConfig), the model presets and `describe()`.
//! - [`hash`]: BLAKE3 content hashing of files and directories (artifact and checkpoint identity).
//! - [`memory`]: this process's resident and peak memory (benchmarks, memory checks).
//! - [`rng`]: the one seeded PRNG (SplitMix64) of data order, initialisation and sampling.
//!
//! What it does not do: run anything. The stage contract lives in `tardbot-stage`, scheduling and the
//! CLI in `tardbot-pipeline`, persistence in `tardbot-ledger`, the model in `tardbot-model`.

pub mod config;
pub mod hash;
pub mod memory;
pub mod model_config;
pub mod rng;

pub use config::PipelineConfig;
pub use model_config::ModelConfig;
