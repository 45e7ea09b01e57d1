//! Byte-level BPE training, loading and the checks every tokenizer passes.
//!
//! **Model.** GPT-2-style byte-level BPE: no normaliser, the `ByteLevel` pre-tokeniser (GPT-2 regex,
//! no prefix space, so `decode(encode(text)) == text` for every UTF-8 string), a `ByteLevel` decoder,
//! all 256 byte symbols in the initial alphabet (no unknown token can occur), and the special tokens of
//! [`tardbot_tokens::special_tokens`] at ids `0..N_SPECIAL`.
//!
//! **Bounded memory.** The BPE trainer keeps one count per distinct pre-token (word), not the text, and
//! the text is streamed from Parquet one record batch at a time. The amount of text is capped at
//! `max_training_bytes`: when the train split is larger, each document is kept with probability
//! `max_training_bytes / train_bytes`, decided by a hash of its id and the pipeline seed
//! (deterministic, spread over the whole corpus rather than its first files), and reading stops
//! once the cap is reached. `extra` texts (`[tokenizer] extra_text`: the fine-tuning formats, JSON
//! tool calls and Python code) are all fed first, outside the cap. Peak memory is therefore ~ the distinct-word table of the sample plus one
//! record batch per thread.

use crate::docs::DocBatches;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tardbot_tokens::Split;
use tardbot_tokens::error::{Result, TokenizeError, io_err};
use tardbot_tokens::special_tokens::SPECIAL_TOKENS;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, TokenizerBuilder};

/// Settings of one training run.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// Vocabulary size including the special tokens.
    pub vocab_size: usize,
    pub min_frequency: u64,
    pub max_training_bytes: u64,
    /// Seeds the document sample.
    pub seed: u64,
}

/// What a training run used and produced.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct TrainReport {
    /// Bytes of text in the train split of the input.
    pub train_split_bytes: u64,
    /// Documents and bytes of the corpus actually fed to the trainer.
    pub sampled_docs: u64,
    pub sampled_bytes: u64,
    /// Texts and bytes of `[tokenizer] extra_text` fed to it (all of them).
    pub extra_texts: u64,
    pub extra_bytes: u64,
    pub vocab_size: usize,
    pub seconds: f64,
}

/// An untrained tokenizer with TardBot's pipeline (pre-tokeniser, decoder, post-processor).
fn blank()
-> Result<tokenizers::TokenizerImpl<BPE, NormalizerWrapper, ByteLevel, ByteLevel, ByteLevelDecoder>>
{
    TokenizerBuilder::new()
        .with_model(BPE::default())
        .with_normalizer(None)
        .with_pre_tokenizer(Some(ByteLevel::new(false, true, true)))
        .with_post_processor(Some(ByteLevel::new(false, true, true)))
        .with_decoder(Some(ByteLevelDecoder::default()))
        .build()
        .map_err(|e| TokenizeError::Tokenizer {
            path: PathBuf::from("<new>"),
            message: e.to_string(),
        })
}

/// Trains a byte-level BPE tokenizer on `texts` and saves it as `out` (`tokenizer.json`).
pub fn train_bpe<I, S>(texts: I, opts: &TrainOptions, out: &Path) -> Result<()>
where
    I: Iterator<Item = S> + Send,
    S: AsRef<str> + Send,
{
    let specials = SPECIAL_TOKENS
        .iter()
        .map(|(_, t)| AddedToken::from(t.to_string(), true))
        .collect();
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(opts.vocab_size)
        .min_frequency(opts.min_frequency)
        .show_progress(false)
        .special_tokens(specials)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut tok = blank()?;
    let terr = |e: tokenizers::Error| TokenizeError::Tokenizer {
        path: out.to_path_buf(),
        message: e.to_string(),
    };
    tok.train(&mut trainer, texts).map_err(terr)?;
    tok.save(out, false).map_err(terr)?;
    Ok(())
}

/// Trains on `extra` texts and the `train` split of Parquet shards, sampling the shards to
/// `max_training_bytes` (see the module docs). `stop` is polled between documents: when it returns
/// true, training ends early with `Ok(None)` and nothing is written.
pub fn train_from_shards(
    shards: &[PathBuf],
    extra: &[String],
    opts: &TrainOptions,
    out: &Path,
    stop: &(dyn Fn() -> bool + Sync),
) -> Result<Option<TrainReport>> {
    let started = std::time::Instant::now();
    let mut train_split_bytes = 0;
    for s in shards {
        train_split_bytes += train_split_bytes_of(s)?;
    }
    if train_split_bytes == 0 {
        return Err(TokenizeError::EmptyTrainSplit {
            files: shards.len(),
        });
    }
    let keep_fraction = (opts.max_training_bytes as f64 / train_split_bytes as f64).min(1.0);
    let sampled = Arc::new(Mutex::new((0u64, 0u64)));
    let failure: Arc<Mutex<Option<TokenizeError>>> = Arc::default();
    let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let texts = SampledTexts {
        extra: extra.iter().rev().cloned().collect(),
        shards: shards.to_vec(),
        next_shard: 0,
        current: None,
        pending: Vec::new(),
        keep_fraction,
        seed: opts.seed,
        budget: opts.max_training_bytes,
        sampled: sampled.clone(),
        failure: failure.clone(),
        stopped: stopped.clone(),
        stop,
    };
    train_bpe(texts, opts, out)?;
    if let Some(e) = failure.lock().ok().and_then(|mut f| f.take()) {
        return Err(e);
    }
    if stopped.load(std::sync::atomic::Ordering::SeqCst) {
        let _ = std::fs::remove_file(out);
        return Ok(None);
    }
    let (sampled_docs, sampled_bytes) = *sampled.lock().map_err(|_| TokenizeError::Tokenizer {
        path: out.to_path_buf(),
        message: "sampler poisoned".to_string(),
    })?;
    if sampled_bytes == 0 {
        return Err(TokenizeError::EmptyTrainSplit {
            files: shards.len(),
        });
    }
    Ok(Some(TrainReport {
        train_split_bytes,
        sampled_docs,
        sampled_bytes,
        extra_texts: extra.len() as u64,
        extra_bytes: extra.iter().map(|t| t.len() as u64).sum(),
        vocab_size: opts.vocab_size,
        seconds: started.elapsed().as_secs_f64(),
    }))
}

/// The documents the trainer sees, streamed; errors are parked in `failure` and end the stream.
struct SampledTexts<'a> {
    /// `extra` texts not yet fed, reversed (popped first, outside the budget).
    extra: Vec<String>,
    shards: Vec<PathBuf>,
    next_shard: usize,
    current: Option<DocBatches>,
    pending: Vec<String>,
    keep_fraction: f64,
    seed: u64,
    budget: u64,
    sampled: Arc<Mutex<(u64, u64)>>,
    failure: Arc<Mutex<Option<TokenizeError>>>,
    stopped: Arc<std::sync::atomic::AtomicBool>,
    stop: &'a (dyn Fn() -> bool + Sync),
}

impl SampledTexts<'_> {
    fn fail(&mut self, e: TokenizeError) -> Option<String> {
        if let Ok(mut f) = self.failure.lock() {
            f.get_or_insert(e);
        }
        self.shards.clear();
        self.current = None;
        None
    }
}

impl Iterator for SampledTexts<'_> {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        loop {
            if (self.stop)() {
                self.stopped
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                return None;
            }
            if let Some(t) = self.extra.pop() {
                return Some(t);
            }
            if let Some(t) = self.pending.pop() {
                let mut s = self.sampled.lock().ok()?;
                if s.1 >= self.budget {
                    return None;
                }
                s.0 += 1;
                s.1 += t.len() as u64;
                return Some(t);
            }
            if let Some(batches) = self.current.as_mut() {
                match batches.next() {
                    Some(Ok(docs)) => {
                        // Reversed so that `pop` yields documents in file order.
                        self.pending = docs
                            .into_iter()
                            .filter(|d| {
                                d.split == Split::Train
                                    && keep(self.seed, &d.id, self.keep_fraction)
                            })
                            .map(|d| d.text)
                            .rev()
                            .collect();
                    }
                    Some(Err(e)) => return self.fail(e),
                    None => self.current = None,
                }
                continue;
            }
            let path = self.shards.get(self.next_shard)?.clone();
            self.next_shard += 1;
            match DocBatches::open(&path) {
                Ok(b) => self.current = Some(b),
                Err(e) => return self.fail(e),
            }
        }
    }
}

/// Deterministic Bernoulli(`fraction`) choice from the seed and the document id.
fn keep(seed: u64, id: &str, fraction: f64) -> bool {
    if fraction >= 1.0 {
        return true;
    }
    let mut h = tardbot_core::rng::SplitMix64::new(seed ^ 0x746f_6b65_6e69_7a65);
    for chunk in id.as_bytes().chunks(8) {
        let mut b = [0u8; 8];
        b[..chunk.len()].copy_from_slice(chunk);
        h = tardbot_core::rng::SplitMix64::new(h.next_u64() ^ u64::from_le_bytes(b));
    }
    (h.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= fraction
}

/// Sum of `n_bytes` over the `train` rows of a shard (reads only those two columns).
pub fn train_split_bytes_of(path: &Path) -> Result<u64> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::Int64Type;
    let perr = |message: String| TokenizeError::Parquet {
        path: path.to_path_buf(),
        message,
    };
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| perr(e.to_string()))?;
    let fields = builder.schema().fields();
    let idx = |name: &str| {
        fields.iter().position(|f| f.name() == name).ok_or_else(|| {
            perr(format!(
                "column `{name}` is missing; expected the ingest stage's schema"
            ))
        })
    };
    let roots = [idx("n_bytes")?, idx("split")?];
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let reader = builder
        .with_projection(mask)
        .build()
        .map_err(|e| perr(e.to_string()))?;
    let mut total = 0u64;
    for batch in reader {
        let batch = batch.map_err(|e| perr(e.to_string()))?;
        let (Some(n), Some(split)) = (
            batch.column_by_name("n_bytes"),
            batch.column_by_name("split"),
        ) else {
            return Err(perr("a record batch lacks n_bytes/split".to_string()));
        };
        let n = n
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| perr("column n_bytes must be int64".to_string()))?;
        let split = split
            .as_string_opt::<i32>()
            .ok_or_else(|| perr("column split must be utf8".to_string()))?;
        for i in 0..n.len() {
            if split.is_valid(i) && split.value(i) == "train" && n.is_valid(i) {
                total += n.value(i).max(0) as u64;
            }
        }
    }
    Ok(total)
}
