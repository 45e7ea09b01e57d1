//! The chat template as Jinja, shipped in `tokenizer_config.json` (Hugging Face) and in GGUF
//! metadata (llama.cpp). It renders what [`tardbot_tokens::chat::chat_template`] renders; the interop
//! test (`tests/interop/`) checks token ids of `apply_chat_template` against ours.

/// The template source.
pub const CHAT_TEMPLATE: &str = include_str!("chat_template.jinja");
