//! From the upstream artifacts to tensors: the tokenizer's hash, the train/val token shards, and
//! loader batches as model inputs.

use candle_core::{Device, Tensor};
use std::path::PathBuf;
use tardbot_core::stage::{StageContext, StageError};
use tardbot_tokens::Split;
use tardbot_tokens::loader::{Batch, Loader, LoaderConfig};
use tardbot_tokens::shard::TokenShard;
use tardbot_tokens::shard::shard_split;
use tardbot_tokens::special_tokens::padded_vocab_size;
use tardbot_train::TokenBatch;

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
        let shards = self.open(&self.val)?;
        let mut loader = Loader::new(
            shards,
            LoaderConfig {
                batch_size: 1,
                seed,
                rank: 0,
                world_size: 1,
            },
        )
        .map_err(StageError::failed)?;
        let available = loader.total_windows() as usize;
        let take = (batch_size * n).min(available).max(1);
        let mut rows = Vec::with_capacity(take);
        for _ in 0..take {
            rows.push(loader.next_batch());
        }
        rows.chunks(batch_size)
            .map(|chunk| batch_tensors(&concat(chunk)))
            .collect()
    }
}

fn concat(rows: &[Batch]) -> Batch {
    let mut b = Batch {
        batch_size: rows.len(),
        window: rows[0].window,
        ..Batch::default()
    };
    for r in rows {
        b.tokens.extend_from_slice(&r.tokens);
        b.doc_ids.extend_from_slice(&r.doc_ids);
        b.positions.extend_from_slice(&r.positions);
        b.loss_mask.extend_from_slice(&r.loss_mask);
    }
    b
}

/// A loader batch (rows of `seq_len + 1`) as inputs `[.., :-1]`, targets `[.., 1:]`, the inputs'
/// document ids, and the targets' loss mask.
pub fn batch_tensors(b: &Batch) -> Result<TokenBatch, StageError> {
    let (rows, w) = (b.batch_size, b.window);
    let t = w - 1;
    let mut inputs = Vec::with_capacity(rows * t);
    let mut targets = Vec::with_capacity(rows * t);
    let mut docs = Vec::with_capacity(rows * t);
    let mut mask = Vec::with_capacity(rows * t);
    for r in 0..rows {
        let row = r * w..(r + 1) * w;
        let (tok, doc, lm) = (
            &b.tokens[row.clone()],
            &b.doc_ids[row.clone()],
            &b.loss_mask[row],
        );
        inputs.extend_from_slice(&tok[..t]);
        targets.extend_from_slice(&tok[1..]);
        docs.extend_from_slice(&doc[..t]);
        mask.extend(lm[1..].iter().map(|&m| m as f32));
    }
    let tokens = mask.iter().filter(|&&m| m > 0.0).count() as u64;
    let dev = Device::Cpu;
    let f = |e: candle_core::Error| StageError::failed(e);
    Ok(TokenBatch {
        inputs: Tensor::from_vec(inputs, (rows, t), &dev).map_err(f)?,
        targets: Tensor::from_vec(targets, (rows, t), &dev).map_err(f)?,
        doc_ids: Some(Tensor::from_vec(docs, (rows, t), &dev).map_err(f)?),
        loss_mask: Some(Tensor::from_vec(mask, (rows, t), &dev).map_err(f)?),
        tokens,
    })
}
