//! `[ingest]`: corpus sources, cleaning policy, quality filters and output layout.
//! (The Ingest issue owns and extends this file.)
//!
//! ```toml
//! [ingest]
//! validation_fraction = 0.02
//! on_error = "fail"              # or "skip": malformed records / unreadable files are counted and skipped
//! shard_bytes = 134217728        # text bytes per output Parquet shard
//! [ingest.clean]
//! invalid_utf8 = "replace"       # or "drop"
//! [ingest.filters]
//! min_words = 10
//! [[ingest.sources]]
//! name = "prose"
//! path = "data/sample/prose.txt"  # a path or a glob; .gz / .zst are decompressed
//! format = "text"
//! separator = "<|endoftext|>"
//! license = "public-domain"
//! ```

use super::PipelineConfig;
use super::validate::Problems;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Fraction of documents (chosen by a hash of their text) held out for validation.
    #[serde(default = "default_validation_fraction")]
    pub validation_fraction: f64,
    /// What to do with a malformed input record or an unreadable/corrupt input file: stop with an
    /// error, or skip it and count it.
    #[serde(default)]
    pub on_error: OnError,
    /// Exact deduplication across all sources by a hash of the normalised text.
    #[serde(default = "yes")]
    pub dedup: bool,
    /// Target size of one output Parquet shard, in bytes of text (a shard closes once it passes this).
    #[serde(default = "default_shard_bytes")]
    pub shard_bytes: u64,
    /// A row group closes once it holds this many bytes of text (or `row_group_rows` rows).
    #[serde(default = "default_row_group_bytes")]
    pub row_group_bytes: u64,
    #[serde(default = "default_row_group_rows")]
    pub row_group_rows: usize,
    /// zstd level of the output shards (1..=22). The default, 1, costs about half the CPU of
    /// level 3 for shards ~10% larger; raise it for archival output.
    #[serde(default = "default_zstd_level")]
    pub zstd_level: i32,
    /// A single document larger than this (bytes) is a malformed record (error or skip by `on_error`).
    #[serde(default = "default_max_document_bytes")]
    pub max_document_bytes: u64,
    /// This process handles shard `shard_index` of `shard_count` of the input files (`--shard i/n`).
    #[serde(default)]
    pub shard_index: u32,
    #[serde(default = "default_shard_count")]
    pub shard_count: u32,
    #[serde(default)]
    pub clean: CleanConfig,
    #[serde(default)]
    pub filters: FilterConfig,
    pub sources: Vec<SourceConfig>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub name: String,
    /// A path or glob, relative to the config file.
    pub path: PathBuf,
    pub format: SourceFormat,
    /// `text`: the line that separates documents (absent: one file is one document).
    #[serde(default)]
    pub separator: Option<String>,
    /// `jsonl` / `parquet`: the field or column holding the text.
    #[serde(default)]
    pub field: Option<String>,
    pub license: String,
    /// Sampling weight in the mix: 1 keeps every document once, 0.5 about half of them, 2.5 every
    /// document twice and half of them a third time (training split only; validation is never reweighted).
    #[serde(default = "one")]
    pub weight: f64,
    /// Input compression; `auto` infers it from the extension (`.gz`, `.zst`/`.zstd`).
    #[serde(default)]
    pub compression: Compression,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceFormat {
    Text,
    Jsonl,
    Parquet,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    Auto,
    None,
    Gzip,
    Zstd,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    #[default]
    Fail,
    Skip,
}

/// What happens to a document that is not valid UTF-8.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InvalidUtf8 {
    /// Invalid sequences become U+FFFD (counted).
    #[default]
    Replace,
    /// The document is dropped (counted).
    Drop,
}

/// `[ingest.clean]`: normalisation applied to every document before filtering and hashing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CleanConfig {
    pub invalid_utf8: InvalidUtf8,
    /// Unicode NFC normalisation.
    pub nfc: bool,
    /// Whitespace normalisation: CRLF/CR → LF, trailing whitespace stripped per line, tabs and runs
    /// of spaces inside a line kept as one space only when `collapse_spaces`, at most
    /// `max_blank_lines` consecutive blank lines, leading/trailing blank lines removed.
    pub whitespace: bool,
    pub collapse_spaces: bool,
    pub max_blank_lines: usize,
}

impl Default for CleanConfig {
    fn default() -> Self {
        CleanConfig {
            invalid_utf8: InvalidUtf8::Replace,
            nfc: true,
            whitespace: true,
            collapse_spaces: false,
            max_blank_lines: 2,
        }
    }
}

/// `[ingest.filters]`: document quality rules in the spirit of the Gopher rules (Rae et al. 2021).
/// Each rule drops a document for a named reason; set a bound to its permissive extreme to disable it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilterConfig {
    pub enabled: bool,
    /// Length bounds in whitespace-separated words.
    pub min_words: usize,
    pub max_words: usize,
    /// Bounds on the mean word length in characters (Gopher: 3..10).
    pub min_mean_word_len: f64,
    pub max_mean_word_len: f64,
    /// Largest fraction of non-blank lines that duplicate an earlier line of the document.
    pub max_dup_line_fraction: f64,
    /// Largest fraction of characters in duplicated lines.
    pub max_dup_line_char_fraction: f64,
    /// Largest fraction of word characters covered by the most frequent word 2-gram (Gopher: 0.20).
    pub max_top_2gram_char_fraction: f64,
    /// Largest fraction of word characters inside duplicated word 5-grams (Gopher: 0.15).
    pub max_dup_5gram_char_fraction: f64,
    /// Largest ratio of symbols (`#`, `...`/`…`, and U+FFFD from repaired UTF-8) to words
    /// (Gopher: 0.1 for `#` and ellipses).
    pub max_symbol_ratio: f64,
    /// Smallest fraction of words containing at least one letter (Gopher: 0.8).
    pub min_alpha_word_fraction: f64,
}

impl Default for FilterConfig {
    fn default() -> Self {
        FilterConfig {
            enabled: true,
            min_words: 10,
            max_words: 1_000_000,
            min_mean_word_len: 2.5,
            max_mean_word_len: 12.0,
            max_dup_line_fraction: 0.5,
            max_dup_line_char_fraction: 0.5,
            max_top_2gram_char_fraction: 0.2,
            max_dup_5gram_char_fraction: 0.5,
            max_symbol_ratio: 0.1,
            min_alpha_word_fraction: 0.6,
        }
    }
}

fn yes() -> bool {
    true
}
fn one() -> f64 {
    1.0
}
fn default_validation_fraction() -> f64 {
    0.02
}
fn default_shard_bytes() -> u64 {
    128 << 20
}
fn default_row_group_bytes() -> u64 {
    16 << 20
}
fn default_row_group_rows() -> usize {
    8192
}
fn default_zstd_level() -> i32 {
    1
}
fn default_max_document_bytes() -> u64 {
    64 << 20
}
fn default_shard_count() -> u32 {
    1
}

impl IngestConfig {
    pub(crate) fn check(&self, cfg: &PipelineConfig, p: &mut Problems) {
        if !self.enabled {
            return;
        }
        if self.sources.is_empty() {
            p.push(
                "ingest.sources",
                "no sources: add at least one [[ingest.sources]]".to_string(),
            );
        }
        if !(0.0..1.0).contains(&self.validation_fraction) {
            p.push(
                "ingest.validation_fraction",
                "must be within [0, 1)".to_string(),
            );
        }
        if self.shard_bytes == 0 {
            p.push(
                "ingest.shard_bytes",
                "must be at least 1 (bytes of text per shard)".to_string(),
            );
        }
        if self.row_group_bytes == 0 {
            p.push("ingest.row_group_bytes", "must be at least 1".to_string());
        }
        if self.row_group_rows == 0 {
            p.push("ingest.row_group_rows", "must be at least 1".to_string());
        }
        if !(1..=22).contains(&self.zstd_level) {
            p.push(
                "ingest.zstd_level",
                format!("{} is not a zstd level: use 1..=22", self.zstd_level),
            );
        }
        if self.max_document_bytes == 0 {
            p.push(
                "ingest.max_document_bytes",
                "must be at least 1".to_string(),
            );
        }
        if self.shard_count == 0 {
            p.push(
                "ingest.shard_count",
                "must be at least 1 (`--shard i/n` needs n >= 1)".to_string(),
            );
        } else if self.shard_index >= self.shard_count {
            p.push(
                "ingest.shard_index",
                format!(
                    "shard {} of {}: the index must be below the count (0-based)",
                    self.shard_index, self.shard_count
                ),
            );
        }
        self.filters.check(p);
        for (i, s) in self.sources.iter().enumerate() {
            let at = |f: &str| format!("ingest.sources.{i}.{f}");
            let raw = s.path.to_string_lossy();
            let is_glob = raw.contains(['*', '?', '[']);
            if !is_glob && !cfg.resolve(&s.path).exists() {
                p.push(
                    &at("path"),
                    format!(
                        "input path {} does not exist (relative paths are resolved against {})",
                        cfg.resolve(&s.path).display(),
                        cfg.base_dir.display()
                    ),
                );
            }
            if s.name.is_empty() {
                p.push(&at("name"), "source name must not be empty".to_string());
            }
            if !(s.weight.is_finite() && s.weight > 0.0) {
                p.push(
                    &at("weight"),
                    format!("sampling weight {} must be > 0", s.weight),
                );
            }
            if matches!(s.format, SourceFormat::Jsonl | SourceFormat::Parquet) && s.field.is_none()
            {
                p.push(
                    &at("field"),
                    "jsonl and parquet sources need `field`, the text column".to_string(),
                );
            }
            if s.format == SourceFormat::Parquet && s.compression != Compression::Auto {
                p.push(
                    &at("compression"),
                    "parquet sources carry their own compression: leave `compression` out"
                        .to_string(),
                );
            }
            if s.format != SourceFormat::Text && s.separator.is_some() {
                p.push(
                    &at("separator"),
                    "`separator` applies to text sources only".to_string(),
                );
            }
            if let Some(sep) = &s.separator
                && (sep.is_empty() || sep.contains('\n'))
            {
                p.push(
                    &at("separator"),
                    "the separator is one non-empty line without a newline".to_string(),
                );
            }
            if self.sources[..i].iter().any(|o| o.name == s.name) {
                p.push(
                    &at("name"),
                    format!("source name `{}` is used twice", s.name),
                );
            }
        }
    }
}

impl FilterConfig {
    fn check(&self, p: &mut Problems) {
        if !self.enabled {
            return;
        }
        if self.min_words > self.max_words {
            p.push(
                "ingest.filters.min_words",
                format!(
                    "min_words {} exceeds max_words {}",
                    self.min_words, self.max_words
                ),
            );
        }
        if self.min_mean_word_len.is_nan()
            || self.max_mean_word_len.is_nan()
            || self.min_mean_word_len > self.max_mean_word_len
        {
            p.push(
                "ingest.filters.min_mean_word_len",
                "must not exceed max_mean_word_len".to_string(),
            );
        }
        for (name, v) in [
            ("max_dup_line_fraction", self.max_dup_line_fraction),
            (
                "max_dup_line_char_fraction",
                self.max_dup_line_char_fraction,
            ),
            (
                "max_top_2gram_char_fraction",
                self.max_top_2gram_char_fraction,
            ),
            (
                "max_dup_5gram_char_fraction",
                self.max_dup_5gram_char_fraction,
            ),
            ("min_alpha_word_fraction", self.min_alpha_word_fraction),
        ] {
            if !(0.0..=1.0).contains(&v) {
                p.push(
                    &format!("ingest.filters.{name}"),
                    format!("{v} is a fraction: use 0..=1"),
                );
            }
        }
        if self.max_symbol_ratio.is_nan() || self.max_symbol_ratio < 0.0 {
            p.push(
                "ingest.filters.max_symbol_ratio",
                "must be >= 0".to_string(),
            );
        }
    }
}

// `config/mod.rs` re-exports only the starter types; these accessors let stage code use the newer
// enums without naming them.
impl Compression {
    /// `auto`, `none`, `gzip` or `zstd`.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::Auto => "auto",
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

impl InvalidUtf8 {
    /// True when a document with invalid UTF-8 is dropped rather than repaired.
    pub fn drops(self) -> bool {
        self == InvalidUtf8::Drop
    }
}

#[cfg(test)]
mod tests {
    use crate::config::PipelineConfig;
    use std::path::Path;

    fn load(ingest: &str) -> Result<PipelineConfig, crate::config::ConfigError> {
        let text = format!("[model]\npreset = \"tiny\"\n{ingest}");
        PipelineConfig::from_text(
            &text,
            Path::new("pipeline.toml"),
            Path::new("/nonexistent-base"),
        )
    }

    #[test]
    fn defaults_fill_in_and_problems_name_their_fields() {
        let cfg = load("[ingest]\nsources = []\nenabled = false\n")
            .expect("disabled ingest needs nothing");
        assert!(cfg.ingest.dedup && cfg.ingest.clean.nfc && cfg.ingest.filters.enabled);
        assert_eq!((cfg.ingest.shard_index, cfg.ingest.shard_count), (0, 1));
        let err = load(
            "[ingest]\nshard_index = 3\nshard_count = 2\nzstd_level = 40\n[ingest.filters]\nmax_dup_line_fraction = 2.0\n\
             [[ingest.sources]]\nname = \"a\"\npath = \"x/*.txt\"\nformat = \"parquet\"\ncompression = \"gzip\"\nlicense = \"pd\"\n",
        )
        .expect_err("invalid");
        let fields: Vec<&str> = err.problems().iter().map(|p| p.field.as_str()).collect();
        for f in [
            "ingest.shard_index",
            "ingest.zstd_level",
            "ingest.filters.max_dup_line_fraction",
            "ingest.sources.0.field",
            "ingest.sources.0.compression",
        ] {
            assert!(fields.contains(&f), "{f} missing from {fields:?}");
        }
        let unknown =
            load("[ingest]\nsources = []\n[ingest.clean]\nnfd = true\n").expect_err("unknown key");
        assert!(unknown.to_string().contains("nfd"), "{unknown}");
    }
}
