//! From the data loader's batches (rows of `seq_len + 1` tokens) to the trainer's tensors.

use crate::trainer::TokenBatch;
use candle_core::{Device, Tensor};
use tardbot_tokens::loader::{Batch, Loader, LoaderConfig};
use tardbot_tokens::shard::TokenShard;

/// A loader batch as inputs `[.., :-1]`, targets `[.., 1:]`, the inputs' document ids (attention
/// never crosses documents packed into one window) and the targets' loss mask.
pub fn batch_tensors(b: &Batch) -> candle_core::Result<TokenBatch> {
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
    Ok(TokenBatch {
        inputs: Tensor::from_vec(inputs, (rows, t), &dev)?,
        targets: Tensor::from_vec(targets, (rows, t), &dev)?,
        doc_ids: Some(Tensor::from_vec(docs, (rows, t), &dev)?),
        loss_mask: Some(Tensor::from_vec(mask, (rows, t), &dev)?),
        tokens,
    })
}

/// Up to `n` batches of `batch_size` windows from `shards` in a fixed seeded order: the same batches
/// at every evaluation (held-out loss is comparable across steps and stages).
pub fn fixed_batches(
    shards: Vec<TokenShard>,
    batch_size: usize,
    n: usize,
    seed: u64,
) -> Result<Vec<TokenBatch>, Box<dyn std::error::Error + Send + Sync>> {
    let config = LoaderConfig {
        batch_size: 1,
        seed,
        rank: 0,
        world_size: 1,
    };
    let mut loader = Loader::new(shards, config)?;
    let take = (batch_size * n).min(loader.total_windows() as usize).max(1);
    let rows: Vec<Batch> = (0..take).map(|_| loader.next_batch()).collect();
    let mut out = Vec::new();
    for chunk in rows.chunks(batch_size) {
        let mut b = Batch {
            batch_size: chunk.len(),
            window: chunk[0].window,
            ..Batch::default()
        };
        for r in chunk {
            b.tokens.extend_from_slice(&r.tokens);
            b.doc_ids.extend_from_slice(&r.doc_ids);
            b.positions.extend_from_slice(&r.positions);
            b.loss_mask.extend_from_slice(&r.loss_mask);
        }
        out.push(batch_tensors(&b)?);
    }
    Ok(out)
}
