//! `[tokenizer]` and `[tokenize]`: BPE training and packing. (The Tokenize issue owns and extends this file.)

use super::validate::Problems;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenizerConfig {
    pub enabled: bool,
    /// BPE vocabulary size including special tokens (the model pads it to a multiple of 64).
    pub vocab_size: usize,
    pub min_frequency: u64,
    /// At most this many bytes of training text are used (bounded memory on large corpora).
    pub max_training_bytes: u64,
}

impl Default for TokenizerConfig {
    fn default() -> Self {
        TokenizerConfig {
            enabled: true,
            vocab_size: 32_000,
            min_frequency: 2,
            max_training_bytes: 1 << 30,
        }
    }
}

impl TokenizerConfig {
    pub(crate) fn check(&self, p: &mut Problems) {
        if self.enabled && self.vocab_size < 300 {
            p.push(
                "tokenizer.vocab_size",
                format!("{} is too small: byte-level BPE needs at least 256 byte tokens plus specials", self.vocab_size),
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
}

impl Default for TokenizeConfig {
    fn default() -> Self {
        TokenizeConfig {
            enabled: true,
            seq_len: 256,
        }
    }
}

impl TokenizeConfig {
    pub(crate) fn check(&self, p: &mut Problems) {
        if self.enabled && self.seq_len == 0 {
            p.push("tokenize.seq_len", "must be at least 1".to_string());
        }
    }
}
