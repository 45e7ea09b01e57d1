//! The training engine shared by every training stage (pretrain, sft, toolcall, cot).
//!
//! - [`optim`]: AdamW with fp32 moments, decoupled weight decay with per-parameter exclusions,
//!   global-norm gradient clipping, and state that saves and loads bit-exactly (candle-nn's `AdamW`
//!   keeps its state private, so exact resume needs our own). Updates happen in place on CPU.
//! - [`schedule`]: linear warmup, then cosine or WSD (warmup–stable–decay) learning rates.
//! - [`checkpoint`]: checkpoint directories written atomically (temp dir, fsync, rename) with a
//!   retention policy (the newest `keep_checkpoints` plus the best by held-out loss).
//!
//! - [`trainer`]: one optimizer step over micro-batches (gradient accumulation, NaN/Inf rejection,
//!   clipping), evaluation loss, and exact save/restore of weights + optimizer + step + the stage's
//!   own state (its data-loader cursor).
//!
//!   With `activation_checkpointing` the backward is segmented: the forward keeps only each block's
//!   input, the backward recomputes one block at a time (tested equal to the whole-graph gradients).
//!   Its error type, [`TrainError`], is shared with [`expert_checkpoint`] (which the trainer uses, not
//!   the other way round).
//! - [`bench`]: `tardbot-pipeline bench train` — tokens/s, MFU, time per phase, peak RSS.
//! - [`peak`]: this machine's fp32 peak (FMA loop, sgemm), measured where MFU is reported.
//! - [`expert_checkpoint`]: the expert store's part of a checkpoint (one file per region, unchanged
//!   regions hard-linked to the previous checkpoint's copies) and its restore.
//!
//! With `max_experts_in_memory < n_experts` the trainer builds the model over an
//! [`ExpertStore`](tardbot_model::ExpertStore) (`tardbot-model`): experts are computed one region at
//! a time, and [`optim::AdamW`] updates their regions in place with the resident parameters' step and
//! clip scale.
//!
//! - Mixed precision (`[execution] precision`): bf16/f16 forward and backward from a compute copy of
//!   f32 master weights, f32 gradient accumulation, f32 AdamW moments; f16 with dynamic loss scaling
//!   ([`scaler`]). On the CPU candle computes bf16/f16 itself (the fused f32 kernels of
//!   `tardbot-model` step aside for its differentiable compositions).
//!
//! What it does not do: run inside a pipeline (the loop over a stage's context, with ledger records,
//! is `tardbot-train-stage`), load data (the stages do), or train on another device than the CPU
//! (yet: the `cuda` build has candle's CUDA backend, the trainer refuses `device = "cuda"`).

pub mod batch;
pub mod bench;
pub mod checkpoint;
mod error;
pub mod expert_checkpoint;
pub mod optim;
pub mod peak;
pub mod scaler;
pub mod schedule;
pub mod trainer;

#[cfg(test)]
mod test_util;

pub use batch::{batch_tensors, fixed_batches};
pub use bench::{BenchTrainOptions, bench_train};
pub use checkpoint::{CheckpointDir, CheckpointError};
pub use optim::{AdamW, AdamWConfig, OptimError};
pub use scaler::LossScaler;
pub use schedule::LrSchedule;
pub use trainer::{StepReport, StepTimings, TokenBatch, TrainError, Trainer};
