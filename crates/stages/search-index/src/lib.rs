//! The `search_index` stage: the offline `search` tool's index of the corpus.
//!
//! Reads the ingest stage's Parquet documents (both splits: the index is a library the model looks
//! things up in, not training data), cuts them into passages
//! ([`tardbot_tools::search::offline::passages_of`]) and writes a tantivy index
//! ([`tardbot_tools::search::offline::build_index`]), the same bytes for the same corpus. Then it
//! measures the index: known-item recall, a passage found again from a few of its own words.
//!
//! What it does not do: answer queries (the `search` tool opens the index, in
//! `tardbot-tools`), or fetch anything from the network.

mod stage;

pub use stage::{INDEX_DIR, KIND_SEARCH_INDEX, SearchIndexStage};
