//! Helpers shared by the crate's tests: a training configuration and token batches.

use crate::trainer::TokenBatch;
use candle_core::{Device, Tensor};
use tardbot_core::config::TrainConfig;

/// The pretraining defaults with a high learning rate, no warmup and clipping at 1.
pub(crate) fn train_cfg() -> TrainConfig {
    TrainConfig {
        steps: 30,
        lr: 1e-2,
        warmup_steps: 0,
        grad_clip: 1.0,
        ..TrainConfig::pretrain_default()
    }
}

/// A micro-batch of next-token pairs over `rows` (inputs: all but the last token, targets: all but
/// the first), without document ids or loss mask.
pub(crate) fn batch(rows: &[Vec<u32>]) -> TokenBatch {
    let t = rows[0].len() - 1;
    let inputs: Vec<u32> = rows.iter().flat_map(|r| r[..t].to_vec()).collect();
    let targets: Vec<u32> = rows.iter().flat_map(|r| r[1..].to_vec()).collect();
    TokenBatch {
        inputs: Tensor::from_vec(inputs, (rows.len(), t), &Device::Cpu).unwrap(),
        targets: Tensor::from_vec(targets, (rows.len(), t), &Device::Cpu).unwrap(),
        doc_ids: None,
        loss_mask: None,
        tokens: (rows.len() * t) as u64,
    }
}

/// `n` deterministic rows of `len` tokens below `vocab`, varied by `salt`.
pub(crate) fn rows(n: usize, len: usize, vocab: u32, salt: u32) -> Vec<Vec<u32>> {
    (0..n)
        .map(|r| {
            (0..len as u32)
                .map(|i| (i * 7 + r as u32 * 3 + salt) % vocab)
                .collect()
        })
        .collect()
}

/// The bits of every element of an f32 tensor (bit-identity checks).
pub(crate) fn tensor_bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect()
}
