//! The `cot` stage: chain-of-thought fine-tuning (reasoning inside think tags, then the answer).
//!
//! - [`problems`]: the data builder over GSM-style problems and final-answer extraction and matching.
//! - [`stage`]: [`CotTask`], the stage as a chat task (fine-tuned from `toolcall` by `tardbot-finetune`): its examples and answer-accuracy eval.
//!
//! What it does not do: the training loop, checkpoints and generation (`tardbot-finetune`,
//! `tardbot-train`) or the chat template (`tardbot-tokens`).

pub mod config;
pub mod problems;
pub mod stage;

pub use stage::CotTask;
