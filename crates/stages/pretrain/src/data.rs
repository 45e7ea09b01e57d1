//! From the upstream artifacts to tensors: the tokenizer's hash, the train/val token shards, and
//! loader batches as model inputs.

use std::path::PathBuf;
use tardbot_stage::{StageContext, StageError};
use tardbot_tokens::Split;
use tardbot_tokens::shard::TokenShard;
use tardbot_tokens::shard::shard_split;
use tardbot_tokens::special_tokens::{N_SPECIAL, padded_vocab_size};
use tardbot_tokens::tokenizer::load_tokenizer;
use tardbot_train::{TokenBatch, fixed_batches};

pub struct ShardSet {
    tokenizer_hash: String,
    tokenizer_path: PathBuf,
    train: Vec<PathBuf>,
    val: Vec<PathBuf>,
    /// The tokenizer's vocabulary padded to a multiple of 64: the model's embedding rows.
    pub model_vocab: usize,
}

impl ShardSet {
    pub fn from_inputs(ctx: &StageContext) -> Result<ShardSet, StageError> {
        let tokenizer = ctx
            .input("tokenizer")
            .iter()
            .find(|a| a.kind == "tokenizer")
            .ok_or_else(|| {
                StageError::failed("the tokenizer stage produced no `tokenizer` artifact")
            })?;
        let (mut train, mut val) = (Vec::new(), Vec::new());
        for a in ctx
            .input("tokenize")
            .iter()
            .filter(|a| a.kind == "token-shard")
        {
            let p = PathBuf::from(&a.path);
            match shard_split(&p) {
                Some(Split::Train) => train.push(p),
                Some(Split::Val) => val.push(p),
                None => {}
            }
        }
        if train.is_empty() {
            return Err(StageError::failed(
                "no train token shards: did the tokenize stage see any train documents?",
            ));
        }
        if val.is_empty() {
            return Err(StageError::failed(
                "no validation token shards: raise ingest.validation_fraction so some documents are held out",
            ));
        }
        let first =
            TokenShard::open(&train[0], Some(&tokenizer.hash)).map_err(StageError::failed)?;
        let header = first.header();
        let seq_len = header.seq_len as usize;
        if seq_len != ctx.config.pretrain.seq_len {
            return Err(StageError::failed(format!(
                "token shards are packed for seq_len {seq_len} but pretrain.seq_len is {}; set both \
                 tokenize.seq_len and pretrain.seq_len to the same value",
                ctx.config.pretrain.seq_len
            )));
        }
        Ok(ShardSet {
            tokenizer_hash: tokenizer.hash.clone(),
            tokenizer_path: PathBuf::from(&tokenizer.path),
            model_vocab: padded_vocab_size(header.vocab_size as usize),
            train,
            val,
        })
    }

    fn open(&self, dirs: &[PathBuf]) -> Result<Vec<TokenShard>, StageError> {
        dirs.iter()
            .map(|d| TokenShard::open(d, Some(&self.tokenizer_hash)).map_err(StageError::failed))
            .collect()
    }

    pub fn open_train(&self) -> Result<Vec<TokenShard>, StageError> {
        self.open(&self.train)
    }

    /// The first `n` batches of the validation split in a fixed order: the same at every eval.
    pub fn validation_batches(
        &self,
        batch_size: usize,
        n: usize,
        seed: u64,
    ) -> Result<Vec<TokenBatch>, StageError> {
        fixed_batches(self.open(&self.val)?, batch_size, n, seed).map_err(StageError::Failed)
    }
}

/// Baselines the held-out loss is read against.
pub struct TokenStats {
    /// Entropy of the train split's token frequencies (nats per token): the loss of the best model
    /// that ignores context. A trained model must land far below it.
    pub unigram_entropy: f64,
    /// UTF-8 bytes per (non-special) token on the validation split, to turn nats per token into bits
    /// per byte (comparable across tokenizers).
    pub val_bytes_per_token: f64,
}

impl ShardSet {
    pub fn token_stats(&self) -> Result<TokenStats, StageError> {
        let special = |t: u32| (t as usize) < N_SPECIAL;
        let mut counts: Vec<u64> = Vec::new();
        let mut buf = Vec::new();
        for shard in self.open_train()? {
            buf.clear();
            shard.read_tokens(0..shard.n_tokens(), &mut buf);
            for &t in buf.iter().filter(|&&t| !special(t)) {
                if counts.len() <= t as usize {
                    counts.resize(t as usize + 1, 0);
                }
                counts[t as usize] += 1;
            }
        }
        let total: u64 = counts.iter().sum();
        let unigram_entropy = -counts
            .iter()
            .filter(|&&c| c > 0)
            .map(|&c| {
                let p = c as f64 / total as f64;
                p * p.ln()
            })
            .sum::<f64>();
        let tok = load_tokenizer(&self.tokenizer_path).map_err(StageError::failed)?;
        let (mut tokens, mut bytes) = (0u64, 0u64);
        for shard in self.open(&self.val)? {
            for d in 0..shard.n_docs() {
                buf.clear();
                shard.read_tokens(shard.doc_range(d), &mut buf);
                buf.retain(|&t| !special(t));
                tokens += buf.len() as u64;
                bytes += tok.decode(&buf).map_err(StageError::failed)?.len() as u64;
            }
        }
        Ok(TokenStats {
            unigram_entropy,
            val_bytes_per_token: bytes as f64 / tokens.max(1) as f64,
        })
    }
}
