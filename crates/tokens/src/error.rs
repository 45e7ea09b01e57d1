//! The crate's error type: every variant names the file involved and, where one exists, the fix.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TokenizeError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("reading Parquet shard {}: {message}", path.display())]
    Parquet { path: PathBuf, message: String },

    #[error("tokenizer {}: {message}", path.display())]
    Tokenizer { path: PathBuf, message: String },

    #[error(
        "no training text: the `train` split of {files} input shard(s) is empty; check the ingest sources and `ingest.validation_fraction`"
    )]
    EmptyTrainSplit { files: usize },

    #[error(
        "token shard {} was written with tokenizer {found} but tokenizer {expected} is in use; re-run the tokenize stage with this tokenizer (`tardbot-pipeline run --force tokenize`)",
        path.display()
    )]
    TokenizerMismatch {
        path: PathBuf,
        expected: String,
        found: String,
    },

    #[error("token shard {} is corrupt: {message}; delete it and re-run the tokenize stage (`--force tokenize`)", path.display())]
    CorruptShard { path: PathBuf, message: String },

    #[error("token shards do not fit together: {0}")]
    IncompatibleShards(String),

    #[error("data loader: {0}")]
    Loader(String),

    #[error("chat template: {0}")]
    Chat(String),

    #[error("round trip failed on document `{doc}` of {}: decode(encode(text)) != text (first difference at byte {at})", path.display())]
    RoundTrip {
        path: PathBuf,
        doc: String,
        at: usize,
    },
}

pub type Result<T, E = TokenizeError> = std::result::Result<T, E>;

/// Attaches a path to an `io::Error`.
pub fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TokenizeError {
    let path = path.into();
    move |source| TokenizeError::Io { path, source }
}
