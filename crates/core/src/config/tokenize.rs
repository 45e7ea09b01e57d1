//! `[tokenizer]` and `[tokenize]`: BPE training and packing. (The Tokenize issue owns and extends this file.)

use super::validate::Problems;
use serde::{Deserialize, Serialize};

/// Number of special tokens `tardbot-tokenize` defines (ids `0..N`); the vocabulary must hold them,
/// the 256 byte tokens and at least one merge.
const SPECIAL_TOKENS: usize = 11;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenizerConfig {
    pub enabled: bool,
    /// BPE vocabulary size including special tokens (the model pads it to a multiple of 64).
    pub vocab_size: usize,
    /// A pair must occur at least this often in the sample to become a merge.
    pub min_frequency: u64,
    /// At most this many bytes of training text are used (bounded memory on large corpora): above it,
    /// documents are sampled by a hash of their id and the seed.
    pub max_training_bytes: u64,
    /// Text files whose lines join the training sample (all of them, besides the sampled corpus)
    /// but not the pretraining data: the formats the fine-tuning stages render (tool schemas and
    /// calls in JSON, Python code, worked math), so that they tokenize compactly.
    pub extra_text: Vec<std::path::PathBuf>,
}

impl Default for TokenizerConfig {
    fn default() -> Self {
        TokenizerConfig {
            enabled: true,
            vocab_size: 32_000,
            min_frequency: 2,
            max_training_bytes: 1 << 30,
            extra_text: Vec::new(),
        }
    }
}

impl TokenizerConfig {
    pub(crate) fn check(&self, cfg: &super::PipelineConfig, p: &mut Problems) {
        if !self.enabled {
            return;
        }
        for (i, f) in self.extra_text.iter().enumerate() {
            let path = cfg.resolve(f);
            if !path.is_file() {
                p.push(
                    &format!("tokenizer.extra_text.{i}"),
                    format!(
                        "{} is not a file (relative paths are resolved against {})",
                        path.display(),
                        cfg.base_dir.display()
                    ),
                );
            }
        }
        let min = 256 + SPECIAL_TOKENS + 1;
        if self.vocab_size < min {
            p.push(
                "tokenizer.vocab_size",
                format!(
                    "{} is too small: byte-level BPE needs the 256 byte tokens, {SPECIAL_TOKENS} special tokens and at least one merge ({min})",
                    self.vocab_size
                ),
            );
        }
        if self.vocab_size > 1 << 24 {
            p.push(
                "tokenizer.vocab_size",
                format!(
                    "{} is larger than 16,777,216; choose a realistic vocabulary",
                    self.vocab_size
                ),
            );
        }
        if self.max_training_bytes == 0 {
            p.push(
                "tokenizer.max_training_bytes",
                "must be at least 1".to_string(),
            );
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenizeConfig {
    pub enabled: bool,
    /// Training sequence length; windows of `seq_len + 1` tokens are packed.
    pub seq_len: usize,
    /// Documents longer than a window: `true` cuts them into window-long pieces overlapping by one
    /// token (nothing lost); `false` keeps only their first window (the rest is reported as crop %).
    pub split_long_docs: bool,
}

impl Default for TokenizeConfig {
    fn default() -> Self {
        TokenizeConfig {
            enabled: true,
            seq_len: 256,
            split_long_docs: true,
        }
    }
}

impl TokenizeConfig {
    pub(crate) fn check(&self, p: &mut Problems) {
        if !self.enabled {
            return;
        }
        if self.seq_len == 0 {
            p.push("tokenize.seq_len", "must be at least 1".to_string());
        }
        if self.seq_len > 1 << 20 {
            p.push(
                "tokenize.seq_len",
                format!(
                    "{} is larger than 1,048,576 tokens per window",
                    self.seq_len
                ),
            );
        }
    }
}
