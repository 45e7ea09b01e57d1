//! The training data loader: packed windows from token shards, in a seeded order, resumable exactly.
//!
//! All windows of all shards form one list (shards sorted by path). Epoch `e` visits them in a
//! Fisher–Yates permutation seeded by `(seed, e)`. Step `s` of an epoch is a *global* batch of
//! `batch_size × world_size` windows, `perm[s·B·W .. (s+1)·B·W]`; rank `r` takes the `r`-th slice of
//! `batch_size`. The incomplete global batch at the end of an epoch is dropped, so every rank takes
//! the same number of steps and no window is seen twice within an epoch. The [`Cursor`] (seed,
//! epoch, step, ranks, and a fingerprint of the data) is all the state there is: a loader rebuilt
//! from a cursor yields exactly the batches the original would have yielded next.

use crate::error::{Result, TokenizeError};
use crate::shard::TokenShard;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use tardbot_core::rng::{SplitMix64, permutation};

/// How batches are formed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderConfig {
    /// Windows per batch on this rank.
    pub batch_size: usize,
    pub seed: u64,
    pub rank: usize,
    pub world_size: usize,
}

/// The loader's position, saved in training checkpoints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub config: LoaderConfig,
    pub epoch: u64,
    /// Batches already taken in `epoch`.
    pub step: u64,
    /// Fingerprint of the shards (tokenizer, order, contents); a resume on other data is an error.
    pub data: String,
}

/// One batch: `batch_size` rows of `window = seq_len + 1` slots each, row-major.
/// Inputs are `row[..seq_len]`, targets `row[1..]`, and `loss_mask[1..]` says which targets count
/// (see [`TokenShard::read_window`] for each array's meaning).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    pub batch_size: usize,
    pub window: usize,
    pub tokens: Vec<u32>,
    pub doc_ids: Vec<u32>,
    pub positions: Vec<u32>,
    pub loss_mask: Vec<u8>,
    /// Where this batch came from.
    pub epoch: u64,
    pub step: u64,
}

impl Batch {
    pub fn row(&self, i: usize) -> &[u32] {
        &self.tokens[i * self.window..(i + 1) * self.window]
    }
}

pub struct Loader {
    shards: Vec<TokenShard>,
    /// `starts[i]`: global index of shard `i`'s first window; `starts[n]` = total.
    starts: Vec<u64>,
    config: LoaderConfig,
    window: usize,
    data: String,
    epoch: u64,
    step: u64,
    perm: Vec<u32>,
    perm_epoch: Option<u64>,
}

impl Loader {
    /// Opens shard directories, requiring every shard to carry `tokenizer_hash`.
    pub fn open(dirs: &[PathBuf], tokenizer_hash: &str, config: LoaderConfig) -> Result<Loader> {
        let shards = dirs
            .iter()
            .map(|d| TokenShard::open(d, Some(tokenizer_hash)))
            .collect::<Result<Vec<_>>>()?;
        Loader::new(shards, config)
    }

    /// A loader at the start of epoch 0.
    pub fn new(mut shards: Vec<TokenShard>, config: LoaderConfig) -> Result<Loader> {
        let err = |m: String| TokenizeError::Loader(m);
        if config.batch_size == 0 || config.world_size == 0 || config.rank >= config.world_size {
            return Err(err(format!(
                "batch_size {} must be >= 1 and rank {} < world_size {}",
                config.batch_size, config.rank, config.world_size
            )));
        }
        let Some(first) = shards.first() else {
            return Err(err("no token shards given".to_string()));
        };
        let (tok, window) = (
            first.header().tokenizer_hash.clone(),
            first.header().window(),
        );
        for s in &shards {
            if s.header().tokenizer_hash != tok {
                return Err(TokenizeError::IncompatibleShards(format!(
                    "{} uses tokenizer {}, {} uses {}",
                    s.dir().display(),
                    s.header().tokenizer_hash,
                    first.dir().display(),
                    tok
                )));
            }
            if s.header().window() != window {
                return Err(TokenizeError::IncompatibleShards(format!(
                    "{} has seq_len {}, {} has {}",
                    s.dir().display(),
                    s.header().seq_len,
                    first.dir().display(),
                    window - 1
                )));
            }
        }
        shards.sort_by(|a, b| a.dir().cmp(b.dir()));
        let mut starts = vec![0u64];
        let mut fp = blake3::Hasher::new();
        fp.update(tok.as_bytes());
        for s in &shards {
            starts.push(starts.last().copied().unwrap_or(0) + s.n_windows() as u64);
            let name = s
                .dir()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            fp.update(name.as_bytes());
            fp.update(&s.header().tokens_hash);
            fp.update(&s.header().n_windows.to_le_bytes());
        }
        let total = starts.last().copied().unwrap_or(0);
        if total > u32::MAX as u64 {
            return Err(err(format!(
                "{total} windows: more than 2^32, split the data set"
            )));
        }
        let global = (config.batch_size * config.world_size) as u64;
        if total < global {
            return Err(err(format!(
                "{total} windows cannot fill one global batch of {} × {} windows; lower the batch size or add data",
                config.batch_size, config.world_size
            )));
        }
        Ok(Loader {
            shards,
            starts,
            config,
            window,
            data: fp.finalize().to_hex().to_string(),
            epoch: 0,
            step: 0,
            perm: Vec::new(),
            perm_epoch: None,
        })
    }

    /// A loader positioned at `cursor` (same data required).
    pub fn resume(shards: Vec<TokenShard>, cursor: &Cursor) -> Result<Loader> {
        let mut l = Loader::new(shards, cursor.config.clone())?;
        if l.data != cursor.data {
            return Err(TokenizeError::Loader(
                "the cursor was saved on different token shards (tokenizer, files or contents changed); \
                 resume with the data the run started with"
                    .to_string(),
            ));
        }
        if cursor.step > l.steps_per_epoch() {
            return Err(TokenizeError::Loader(format!(
                "cursor step {} is past the end of an epoch ({} steps)",
                cursor.step,
                l.steps_per_epoch()
            )));
        }
        l.epoch = cursor.epoch;
        l.step = cursor.step;
        Ok(l)
    }

    pub fn cursor(&self) -> Cursor {
        Cursor {
            config: self.config.clone(),
            epoch: self.epoch,
            step: self.step,
            data: self.data.clone(),
        }
    }

    pub fn total_windows(&self) -> u64 {
        self.starts.last().copied().unwrap_or(0)
    }

    /// Batches per epoch (the same on every rank).
    pub fn steps_per_epoch(&self) -> u64 {
        self.total_windows() / (self.config.batch_size * self.config.world_size) as u64
    }

    /// `seq_len + 1`.
    pub fn window(&self) -> usize {
        self.window
    }

    /// The next batch (epochs roll over without end).
    pub fn next_batch(&mut self) -> Batch {
        let mut b = Batch::default();
        self.next_batch_into(&mut b);
        b
    }

    /// Like [`Loader::next_batch`], reusing `b`'s buffers.
    pub fn next_batch_into(&mut self, b: &mut Batch) {
        if self.step >= self.steps_per_epoch() {
            self.epoch += 1;
            self.step = 0;
        }
        if self.perm_epoch != Some(self.epoch) {
            let mut mix =
                SplitMix64::new(self.config.seed ^ self.epoch.wrapping_mul(0xA076_1D64_78BD_642F));
            self.perm = permutation(self.total_windows() as usize, mix.next_u64());
            self.perm_epoch = Some(self.epoch);
        }
        let (bs, w) = (self.config.batch_size, self.window);
        b.batch_size = bs;
        b.window = w;
        b.epoch = self.epoch;
        b.step = self.step;
        for v in [&mut b.tokens, &mut b.doc_ids, &mut b.positions] {
            v.resize(bs * w, 0);
        }
        b.loss_mask.resize(bs * w, 0);
        let first = (self.step as usize * self.config.world_size + self.config.rank) * bs;
        for i in 0..bs {
            let g = self.perm[first + i] as u64;
            let s = self.starts.partition_point(|&x| x <= g) - 1;
            let local = (g - self.starts[s]) as usize;
            let r = i * w..(i + 1) * w;
            self.shards[s].read_window(
                local,
                &mut b.tokens[r.clone()],
                &mut b.doc_ids[r.clone()],
                &mut b.positions[r.clone()],
                &mut b.loss_mask[r],
            );
        }
        self.step += 1;
    }
}
