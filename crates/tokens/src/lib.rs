//! TardBot's token-level formats, shared by every stage that reads or writes tokens.
//!
//! What it holds:
//! - [`special_tokens`]: the chat special tokens, defined once (ids `0..N`), and the model's padded
//!   vocabulary size ([`special_tokens::padded_vocab_size`]).
//! - [`tokenizer`]: loading a trained `tokenizer.json` (checked against the special-token table, hashed).
//! - [`chat`]: the one chat template (system/user/assistant/tool turns, tool calls, thinking) with an
//!   assistant-only loss mask, and chat shard packing.
//! - [`pack`]: best-fit packing of documents into `seq_len + 1` windows that start at document starts.
//! - [`shard`]: the on-disk token shard (`tokens.bin` + `index.idx`, checksummed, tokenizer-bound), its
//!   memory-mapped reader, and the train/val [`Split`].
//! - [`loader`]: the seeded, epoch-aware, resumable, rank-sharded training data loader.
//!
//! What it does not do: train tokenizers or read Parquet (the `tokenize` stage does), build
//! conversations (the fine-tuning stages do, through [`chat`]), or touch tensors.

pub mod chat;
pub mod error;
pub mod loader;
pub mod pack;
pub mod shard;
pub mod special_tokens;
pub mod tokenizer;

pub use error::{Result, TokenizeError};
pub use shard::Split;
pub use tokenizer::LoadedTokenizer;
