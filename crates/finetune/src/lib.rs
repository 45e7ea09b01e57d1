//! The chat fine-tuning stage: one [`ChatStage`] generic over a [`ChatTask`], which is all that differs
//! between the `sft`, `toolcall` and `cot` stages (their examples, task eval and settings).
//!
//! - [`task`]: the [`ChatTask`] trait, the one extension point for chat stages.
//! - [`stage`]: [`ChatStage`], the stage contract for any task.
//! - [`settings`]: a task's `[NAME]` and `[data.NAME]` sections, owned by its crate, parsed and
//!   checked with file, line and field.
//! - [`example`]: a fine-tuning example (a conversation whose last assistant turn is the target, plus the
//!   reference a task eval scores against), its JSONL form and the stable train/val split.
//! - [`recipe`]: the stage recipe (data → shards, train from the upstream model with the shared loop,
//!   evals before and after, publish) and the task eval.
//! - [`chat_model`]: a published model + tokenizer answering a conversation (streaming, greedy or
//!   sampled): the one generation path of evals, `generate`, `chat` and `eval`.
//!
//! What it does not do: build any stage's data or score any task (each stage crate does), or define the
//! chat template (`tardbot-tokens::chat`).

pub mod chat_model;
pub mod example;
pub mod recipe;
pub mod settings;
pub mod stage;
pub mod task;

pub use chat_model::{ChatModel, greedy, respond};
pub use example::{ChatExample, ExampleError, is_validation, read_jsonl, write_jsonl};
pub use recipe::{generate_answers, input_file};
pub use settings::{ChatData, ChatSettings, TaskEvalConfig, check_common};
pub use stage::ChatStage;
pub use task::{BoxError, ChatTask, SuiteFigures, TaskInputs};

#[cfg(test)]
mod mask_tests;
