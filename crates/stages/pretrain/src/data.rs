//! From the upstream artifacts to tensors: the tokenizer's hash, the train/val token shards, and
//! loader batches as model inputs.

use std::path::PathBuf;
use tardbot_core::stage::{StageContext, StageError};
use tardbot_tokens::Split;
use tardbot_tokens::shard::TokenShard;
use tardbot_tokens::shard::shard_split;
use tardbot_tokens::special_tokens::padded_vocab_size;
use tardbot_train::{TokenBatch, fixed_batches};

pub struct ShardSet {
    tokenizer_hash: String,
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
