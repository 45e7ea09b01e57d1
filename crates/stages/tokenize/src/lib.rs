//! The `tokenizer` and `tokenize` stages: raw Parquet text → `tokenizer.json` → mmap token shards.
//!
//! What it does:
//! - [`train_tokenizer`]: byte-level BPE trained with the `tokenizers` crate on (a bounded, seeded
//!   sample of) the train split; saved as `tokenizer.json`, loadable by Hugging Face tokenizers.
//! - [`docs`]: streaming the ingest stage's Parquet shards.
//! - [`stage`]: the `tokenizer` and `tokenize` pipeline stages (tokenize, pack, write shards).
//! - [`bench`]: `bench tokenize` (against Python tokenizers) and the tokenizer-training measurement.
//!
//! What it does not do: define the token formats (special tokens, chat template, shards, loader —
//! `tardbot-tokens` does, for every stage), clean or split text (the ingest stage does), or train models.

pub mod bench;
pub mod docs;
pub mod stage;
pub mod train_tokenizer;

pub use stage::{TokenizeStage, TokenizerStage};
