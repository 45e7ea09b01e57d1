//! Helpers shared by the crate's tests: the sample sources and the examples built from them.

use crate::tasks::build_examples;
use std::path::{Path, PathBuf};
use tardbot_finetune::ChatExample;

pub(crate) fn sample(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../data/sample")
        .join(name)
}

pub(crate) fn build(per_kind: usize, seed: u64) -> Vec<ChatExample> {
    build_examples(
        Some(&sample("jargon.jsonl")),
        Some(&sample("tiny_shakespeare.txt")),
        per_kind,
        seed,
    )
    .unwrap()
}
