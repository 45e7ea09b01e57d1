//! The chat fine-tuning recipe shared by the `sft`, `toolcall` and `cot` stages.
//!
//! - [`example`]: a fine-tuning example (a conversation whose last assistant turn is the target, plus the
//!   reference a task eval scores against), its JSONL form and the stable train/val split.
//!
//! What it does not do: build any stage's data or score any task (each stage crate does), or define the
//! chat template (`tardbot-tokens::chat`).

pub mod example;

pub use example::{ChatExample, ExampleError, is_validation, read_jsonl, write_jsonl};
