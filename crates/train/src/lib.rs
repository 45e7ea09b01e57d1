//! The training engine shared by every training stage (pretrain, sft, toolcall, cot).
//!
//! - [`optim`]: AdamW with fp32 moments, decoupled weight decay with per-parameter exclusions,
//!   global-norm gradient clipping, and state that saves and loads bit-exactly (candle-nn's `AdamW`
//!   keeps its state private, so exact resume needs our own). Updates happen in place on CPU.
//! - [`schedule`]: linear warmup, then cosine or WSD (warmup–stable–decay) learning rates.
//! - [`checkpoint`]: checkpoint directories written atomically (temp dir, fsync, rename) with a
//!   retention policy.
//!
//! - [`trainer`]: one optimizer step over micro-batches (gradient accumulation, NaN/Inf rejection,
//!   clipping), evaluation loss, and exact save/restore of weights + optimizer + step + the stage's
//!   own state (its data-loader cursor).
//!
//!   With `activation_checkpointing` the backward is segmented: the forward keeps only each block's
//!   input, the backward recomputes one block at a time (tested equal to the whole-graph gradients).
//! - [`bench`]: `tardbot-pipeline bench train` — tokens/s, MFU, time per phase, peak RSS.
//! - [`expert_store`]: a memory-mapped file holding every expert's weights, gradient accumulators
//!   and AdamW moments, one checksummed, generation-counted 4 KiB-aligned region per (MoE layer,
//!   expert), checked out at most `max_resident` at a time and released from RSS afterwards;
//!   created from / exported to safetensors. (Not yet used by the trainer.)
//!
//! What it does not do (yet): mixed precision and training through the expert store — those arrive
//! with the training-engine and expert-store issues. Data loading belongs to the stages.

pub mod batch;
pub mod bench;
pub mod checkpoint;
pub mod expert_checkpoint;
pub mod optim;
pub mod schedule;
pub mod stage_loop;
pub mod trainer;

pub use batch::{batch_tensors, fixed_batches};
pub use bench::{BenchTrainOptions, bench_train};
pub use checkpoint::{CheckpointDir, CheckpointError};
pub use optim::{AdamW, AdamWConfig, OptimError};
pub use schedule::LrSchedule;
pub use trainer::{StepReport, StepTimings, TokenBatch, TrainError, Trainer};
