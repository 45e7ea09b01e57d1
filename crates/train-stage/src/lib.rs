//! What every training stage (pretrain, sft, toolcall, cot) does inside a pipeline run, on top of the
//! engine in `tardbot-train`.
//!
//! - [`train_loop`]: restore from the attempt's resume checkpoint, then step, log metrics to the
//!   ledger, evaluate, checkpoint atomically (and on Ctrl-C), keep the newest and the best checkpoints,
//!   stop on repeated NaN/Inf; and the held-out loss eval every training stage records.
//!
//! What it does not do: the step, optimizer, schedule or checkpoint file format (`tardbot-train`), or
//! any stage's data (the stage crates).

pub mod train_loop;

pub use train_loop::{MAX_BAD_STEPS, record_val_loss, restore, train_loop};
