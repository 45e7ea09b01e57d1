//! `[ingest]`: corpus sources and cleaning policy. (The Ingest issue owns and extends this file.)

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
    /// What to do with a malformed input record: stop with an error, or skip and count it.
    #[serde(default)]
    pub on_error: OnError,
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
    #[serde(default = "one")]
    pub weight: f64,
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
pub enum OnError {
    #[default]
    Fail,
    Skip,
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

impl IngestConfig {
    pub(crate) fn check(&self, cfg: &PipelineConfig, p: &mut Problems) {
        if !self.enabled {
            return;
        }
        if self.sources.is_empty() {
            p.push("ingest.sources", "no sources: add at least one [[ingest.sources]]".to_string());
        }
        if !(0.0..1.0).contains(&self.validation_fraction) {
            p.push("ingest.validation_fraction", "must be within [0, 1)".to_string());
        }
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
            if !(s.weight.is_finite() && s.weight > 0.0) {
                p.push(&at("weight"), format!("sampling weight {} must be > 0", s.weight));
            }
            if matches!(s.format, SourceFormat::Jsonl | SourceFormat::Parquet) && s.field.is_none() {
                p.push(&at("field"), "jsonl and parquet sources need `field`, the text column".to_string());
            }
            if self.sources[..i].iter().any(|o| o.name == s.name) {
                p.push(&at("name"), format!("source name `{}` is used twice", s.name));
            }
        }
    }
}
