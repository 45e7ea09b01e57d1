//! Loading a trained `tokenizer.json`: checked against TardBot's special-token table, hashed (the
//! hash binds token shards to their tokenizer), and used as plain text encoding.

use crate::error::{Result, TokenizeError, io_err};
use crate::special_tokens::{N_SPECIAL, SPECIAL_TOKENS};
use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

/// A tokenizer loaded from `tokenizer.json`, with the hash every token shard carries.
#[derive(Clone)]
pub struct LoadedTokenizer {
    pub tokenizer: Tokenizer,
    /// Hex BLAKE3 of the `tokenizer.json` bytes (the same as its artifact hash in the ledger).
    pub hash: String,
    pub path: PathBuf,
}

impl std::fmt::Debug for LoadedTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedTokenizer")
            .field("path", &self.path)
            .field("hash", &self.hash)
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

impl LoadedTokenizer {
    /// Vocabulary size including special tokens.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// Encodes one text as plain text (special-token strings inside it are ordinary text), no EOS.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        encode_text(&self.tokenizer, text).map_err(|message| TokenizeError::Tokenizer {
            path: self.path.clone(),
            message,
        })
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, false)
            .map_err(|e| TokenizeError::Tokenizer {
                path: self.path.clone(),
                message: format!("decode: {e}"),
            })
    }
}

/// Encodes a text without offsets tracking (the fast path); no special tokens are added.
pub fn encode_text(tok: &Tokenizer, text: &str) -> Result<Vec<u32>, String> {
    tok.encode_fast(text, false)
        .map(|e| e.get_ids().to_vec())
        .map_err(|e| format!("encode: {e}"))
}

/// Loads `tokenizer.json`, checks that it carries TardBot's special tokens at their ids, hashes it, and
/// switches off special-token matching inside text (data containing `<|endoftext|>` stays text).
pub fn load_tokenizer(path: &Path) -> Result<LoadedTokenizer> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let hash = blake3::hash(&bytes).to_hex().to_string();
    let mut tokenizer = Tokenizer::from_bytes(&bytes).map_err(|e| TokenizeError::Tokenizer {
        path: path.to_path_buf(),
        message: format!("not a tokenizers JSON file: {e}"),
    })?;
    for (i, (_, text)) in SPECIAL_TOKENS.iter().enumerate() {
        if tokenizer.token_to_id(text) != Some(i as u32) {
            return Err(TokenizeError::Tokenizer {
                path: path.to_path_buf(),
                message: format!(
                    "special token {text} should have id {i} (TardBot's {N_SPECIAL} special tokens come first); \
                     train the tokenizer with the tokenizer stage"
                ),
            });
        }
    }
    tokenizer.set_encode_special_tokens(true);
    Ok(LoadedTokenizer {
        tokenizer,
        hash,
        path: path.to_path_buf(),
    })
}

/// Byte offset of the first difference between `decode(encode(text))` and `text`, or `None` when equal.
pub fn round_trip_mismatch(tok: &LoadedTokenizer, text: &str) -> Result<Option<usize>> {
    let back = tok.decode(&tok.encode(text)?)?;
    if back == text {
        return Ok(None);
    }
    let at = back
        .bytes()
        .zip(text.bytes())
        .position(|(a, b)| a != b)
        .unwrap_or(back.len().min(text.len()));
    Ok(Some(at))
}
