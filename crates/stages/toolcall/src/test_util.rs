//! Helpers shared by the crate's tests: the BFCL sample and the target turn of an example.

use crate::data::bfcl_examples;
use std::path::{Path, PathBuf};
use tardbot_finetune::ChatExample;
use tardbot_tokens::chat::render_chat_text;

pub(crate) fn sample_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../data/sample/bfcl_sample.jsonl")
}

pub(crate) fn sample() -> Vec<ChatExample> {
    bfcl_examples(&sample_path()).unwrap()
}

pub(crate) fn by_id<'a>(examples: &'a [ChatExample], id: &str) -> &'a ChatExample {
    examples.iter().find(|e| e.id == id).unwrap()
}

/// The assistant turn as the model should generate it (the target rendered by the chat template).
pub(crate) fn target_text(e: &ChatExample) -> String {
    let full = render_chat_text(&e.conversation, false).unwrap();
    let start = full.rfind("<|assistant|>").unwrap() + "<|assistant|>".len();
    full[start..].trim_end_matches("<|endoftext|>").to_string()
}
