//! Tokenizer training, tokenization and packing for TardBot: raw Parquet text → mmap token shards.
//!
//! What it does:
//! - [`special_tokens`]: the chat special tokens, defined once for every stage (ids `0..N`), and the
//!   model's padded vocabulary size ([`special_tokens::padded_vocab_size`]).
//! - [`train_tokenizer`]: byte-level BPE trained with the `tokenizers` crate on (a bounded, seeded
//!   sample of) the train split; saved as `tokenizer.json`, loadable by Hugging Face tokenizers.
//! - [`docs`]: streaming the ingest stage's Parquet shards.
//! - [`pack`]: best-fit packing of documents into `seq_len + 1` windows that start at document starts.
//! - [`shard`]: the on-disk token shard (`tokens.bin` + `index.idx`, checksummed, tokenizer-bound) and
//!   its memory-mapped reader.
//! - [`loader`]: the seeded, epoch-aware, resumable, rank-sharded training data loader.
//! - [`chat`]: the one chat template (system/user/assistant/tool turns, tool calls, thinking) with an
//!   assistant-only loss mask, and SFT shard packing.
//! - [`stage`]: the `tokenizer` and `tokenize` pipeline stages.
//! - [`bench`]: `bench tokenize` (against Python tokenizers) and the tokenizer-training measurement.
//!
//! What it does not do: clean or split text (the ingest stage does), build SFT/tool/CoT
//! conversations (their stages do, through [`chat`]), or train models.

pub mod bench;
pub mod chat;
pub mod docs;
pub mod error;
pub mod loader;
pub mod pack;
mod rng;
pub mod shard;
pub mod special_tokens;
pub mod stage;
pub mod train_tokenizer;

pub use error::{Result, TokenizeError};
pub use stage::{TokenizeStage, TokenizerStage};
