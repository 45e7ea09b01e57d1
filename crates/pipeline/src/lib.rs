//! The TardBot orchestrator and the `tardbot-pipeline` CLI.
//!
//! - [`dag`]: the stage graph built from the registered stages and `pipeline.toml`.
//! - [`orchestrator`]: executes a run — fingerprint caching, concurrent stages under a resource
//!   budget, atomic publication of outputs, heartbeats, Ctrl-C at a safe point, resume.
//! - [`lock`]: the run lock that keeps two processes from driving one run.
//! - [`report`]: `status` and `runs` tables.
//! - [`inference`]: `generate`, `chat` and `eval` on the model a run produced.
//! - [`serve`]: `serve`, the run's model behind the OpenAI-compatible API of `tardbot-serve`.
//! - [`bench`]: `tardbot-pipeline bench WHAT`, the one home of every benchmark.
//! - [`cli`]: argument parsing and the commands.
//! - [`runtime`]: process-wide CPU settings (candle's element-wise pool, mimalloc) applied by `main`.
//!
//! What it does not do: any stage's work. Stages live in their own crates and meet only through
//! artifacts and the ledger; [`registry`] lists the ones this binary ships.

pub mod agent_eval;
pub mod bench;
pub mod bench_tools;
pub mod cli;
pub mod dag;
pub mod export;
pub mod inference;
pub mod lock;
pub mod logging;
pub mod orchestrator;
pub mod registry;
pub mod report;
pub mod runtime;
pub mod serve;
pub mod tools;
pub mod workspace;
