//! The `cot` stage: chain-of-thought fine-tuning (reasoning inside think tags, then the answer).
//!
//! - [`problems`]: the data builder over GSM-style problems and final-answer extraction and matching.
//! - [`stage`]: the stage: build examples, fine-tune from `toolcall`, answer-accuracy eval.
//!
//! What it does not do: the training loop, checkpoints and generation (`tardbot-finetune`,
//! `tardbot-train`) or the chat template (`tardbot-tokens`).

pub mod problems;
pub mod stage;

pub use stage::CotStage;
