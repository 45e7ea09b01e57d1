//! The ingest stage: raw corpora → clean, deduplicated, sharded Parquet.
//!
//! What it does, in order (see [`IngestStage`]'s `run`):
//! 1. **Sources** ([`sources`]): every `[[ingest.sources]]` path or glob is expanded to a sorted list
//!    of files; `--shard i/n` keeps a deterministic subset (by a hash of source name and file name).
//!    Plain text (documents split by a separator line, or one file = one document), JSONL (a named
//!    string field) and Parquet (a named text column) are streamed; `.gz` and `.zst` inputs are
//!    decompressed on the fly.
//! 2. **Cleaning** ([`clean`]): UTF-8 validation (replace or drop, counted), NFC, whitespace
//!    normalisation.
//! 3. **Quality filters** ([`filters`]): length, mean word length, repeated lines, repeated n-grams,
//!    symbol ratio, alphabetic words; every drop is counted under its reason.
//! 4. Each input file becomes one *part* in the stage's work directory (Parquet + a completion
//!    marker), so a killed ingest restarts at the first input file whose part is not complete.
//! 5. **Dedup, split and mix** ([`dedup`]): polars lazy frames over the parts' small index files
//!    drop exact duplicates across all sources (first occurrence wins, in file order), assign the
//!    train/validation split from the document hash and apply the per-source weights.
//! 6. **Shards** ([`shards`]): the kept rows are written as zstd Parquet shards
//!    (`id`, `source`, `text`, `n_bytes`, `split`) with a [`manifest`] listing BLAKE3 hash and size of
//!    each shard and the counts; shard manifests of `--shard i/n` runs merge with
//!    [`manifest::merge_manifests`].
//!
//! What it does not do: near-duplicate (MinHash) detection, language identification, or exact
//! dedup *across* `--shard` processes (each process dedups its own files; the merged manifest
//! reports cross-shard duplicates so a later pass can drop them). All memory is bounded by a
//! batch of documents plus an index of 64-byte ids — never by the corpus.

pub mod bench;
pub mod clean;
pub mod dedup;
pub mod error;
pub mod filters;
pub mod manifest;
pub mod parts;
pub mod report;
pub mod shards;
pub mod sources;
pub mod stage;

pub use bench::{BenchOptions, bench_ingest};
pub use error::IngestError;
pub use manifest::{Manifest, merge_manifests};
pub use sources::with_shard;
pub use stage::{IngestStage, ingest};
