//! Errors of the ingest stage. Each names the file (and line, field or column) and what would fix it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(
        "source `{source_name}`: {path} does not exist; fix `path` in [[ingest.sources]] (relative paths resolve against the config file)"
    )]
    MissingPath { source_name: String, path: PathBuf },
    #[error(
        "source `{source_name}`: the glob {pattern} matches no file; fix `path` in [[ingest.sources]]"
    )]
    EmptyGlob {
        source_name: String,
        pattern: String,
    },
    #[error("source `{source_name}`: bad glob {pattern}: {message}")]
    BadGlob {
        source_name: String,
        pattern: String,
        message: String,
    },
    #[error(
        "cannot read {path}: {source} (check that the file exists and is readable, or set on_error = \"skip\")"
    )]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path}: corrupt or truncated {codec} stream: {source} (re-fetch the file, or set on_error = \"skip\" to skip it)"
    )]
    Corrupt {
        path: PathBuf,
        codec: &'static str,
        source: std::io::Error,
    },
    #[error(
        "{path}:{line}: malformed JSON: {message} (fix the line, or set on_error = \"skip\" to skip and count it)"
    )]
    MalformedJson {
        path: PathBuf,
        line: u64,
        message: String,
    },
    #[error(
        "{path}:{line}: no string field `{field}` (set `field` in [[ingest.sources]] to the text field, or on_error = \"skip\")"
    )]
    MissingField {
        path: PathBuf,
        line: u64,
        field: String,
    },
    #[error(
        "{path}: no text column `{field}`; columns are: {available} (set `field` in [[ingest.sources]])"
    )]
    MissingColumn {
        path: PathBuf,
        field: String,
        available: String,
    },
    #[error("{path}: column `{field}` has type {found}, not a string type")]
    ColumnType {
        path: PathBuf,
        field: String,
        found: String,
    },
    #[error(
        "{path}: not a readable Parquet file: {message} (re-fetch it, or set on_error = \"skip\")"
    )]
    BadParquet { path: PathBuf, message: String },
    #[error(
        "{path}:{line}: a document of {bytes} bytes exceeds ingest.max_document_bytes = {limit} (raise the limit, or on_error = \"skip\")"
    )]
    DocumentTooLarge {
        path: PathBuf,
        line: u64,
        bytes: u64,
        limit: u64,
    },
    #[error(
        "no document survived cleaning, filtering and dedup ({read} read from {files} file(s)); see the filter table above and loosen [ingest.filters] or check the sources"
    )]
    EmptyCorpus { read: u64, files: usize },
    #[error("shard {index}/{count} selects none of the {files} input file(s); use fewer shards")]
    EmptyShard {
        index: u32,
        count: u32,
        files: usize,
    },
    #[error("writing {path}: {message}")]
    Write { path: PathBuf, message: String },
    #[error("polars ({what}): {message}")]
    Polars { what: &'static str, message: String },
    #[error("interrupted: cancellation requested between input files (completed files resume)")]
    Interrupted,
    #[error("manifest {path}: {message}")]
    Manifest { path: PathBuf, message: String },
}

impl IngestError {
    pub(crate) fn write(path: &std::path::Path, e: impl std::fmt::Display) -> Self {
        IngestError::Write {
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    }
    pub(crate) fn polars(what: &'static str, e: impl std::fmt::Display) -> Self {
        IngestError::Polars {
            what,
            message: e.to_string(),
        }
    }
    /// Errors that `on_error = "skip"` turns into a skipped, counted file.
    pub fn is_skippable_file_error(&self) -> bool {
        matches!(
            self,
            IngestError::Unreadable { .. }
                | IngestError::Corrupt { .. }
                | IngestError::BadParquet { .. }
                | IngestError::MissingColumn { .. }
                | IngestError::ColumnType { .. }
        )
    }
}
