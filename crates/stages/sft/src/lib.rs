//! The `sft` stage: instruction tuning on templated and computed tasks.
//!
//! - [`tasks`]: the data builder (templated over a glossary and a verse text, plus generated tasks whose
//!   answers are computed) and the exact-match scorer.
//! - [`stage`]: [`SftTask`], the stage as a chat task (fine-tuned from `pretrain` by `tardbot-finetune`): its examples and exact-match eval.
//!
//! What it does not do: the training loop, checkpoints and generation (`tardbot-finetune`,
//! `tardbot-train`) or the chat template (`tardbot-tokens`).

pub mod config;
pub mod stage;
pub mod tasks;

#[cfg(test)]
mod test_util;

pub use stage::SftTask;
