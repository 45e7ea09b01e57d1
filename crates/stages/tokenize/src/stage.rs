//! The two pipeline stages: `tokenizer` (train BPE) and `tokenize` (tokenize + pack every shard).
//!
//! Artifacts:
//! - `tokenizer` stage → kind `tokenizer`: `tokenizer.json` (Hugging Face tokenizers format).
//! - `tokenize` stage → kind `token-shard`, one per (input Parquet shard, split) that has documents:
//!   directories `train/<NNNNN>-<stem>/` and `val/<NNNNN>-<stem>/`, each holding `tokens.bin` +
//!   `index.idx` (layout in [`tardbot_tokens::shard`]); the split is the parent directory's name
//!   ([`shard_split`]).

use crate::docs::DocBatches;
use crate::train_tokenizer::{TrainOptions, train_from_shards};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tardbot_core::config::PipelineConfig;
use tardbot_stage::{Resources, Stage, StageContext, StageError, StageOutput};
use tardbot_tokens::Split;
use tardbot_tokens::error::{Result, TokenizeError, io_err};
use tardbot_tokens::pack::{PackStats, pack};
use tardbot_tokens::shard::{ShardMeta, ShardSummary, TokenShard, write_shard};
use tardbot_tokens::special_tokens::EOS_ID;
use tardbot_tokens::tokenizer::{LoadedTokenizer, load_tokenizer};

pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const KIND_TOKENIZER: &str = "tokenizer";
pub const KIND_TOKEN_SHARD: &str = "token-shard";
const KIND_PARQUET: &str = "parquet-shard";

/// Trains the byte-level BPE tokenizer on the ingest stage's train split.
pub struct TokenizerStage;

/// Tokenizes every ingest shard and packs it into token shards.
pub struct TokenizeStage;

impl Stage for TokenizerStage {
    fn name(&self) -> &'static str {
        "tokenizer"
    }
    fn inputs(&self) -> &'static [&'static str] {
        &["ingest"]
    }
    fn enabled(&self, config: &PipelineConfig) -> bool {
        config.tokenizer.enabled
    }
    fn config_slice(&self, config: &PipelineConfig) -> serde_json::Value {
        // The extra texts by content: editing one retrains the tokenizer.
        let extra: Vec<String> = config
            .tokenizer
            .extra_text
            .iter()
            .map(|p| {
                tardbot_core::hash::hash_file(&config.resolve(p))
                    .map_or_else(|e| format!("unreadable: {e}"), |h| h.hex)
            })
            .collect();
        serde_json::json!({ "tokenizer": config.tokenizer, "seed": config.seed, "extra_text_hashes": extra })
    }
    fn resources(&self, _config: &PipelineConfig) -> Resources {
        Resources {
            threads: 0,
            exclusive: false,
        }
    }

    fn run(&self, ctx: &StageContext) -> Result<StageOutput, StageError> {
        let shards = parquet_inputs(ctx)?;
        let cfg = &ctx.config.tokenizer;
        let opts = TrainOptions {
            vocab_size: cfg.vocab_size,
            min_frequency: cfg.min_frequency,
            max_training_bytes: cfg.max_training_bytes,
            seed: ctx.config.seed,
        };
        let out = ctx.out_dir.join(TOKENIZER_FILE);
        let pool = thread_pool(ctx.threads)?;

        // 1. Train on (a sample of) the train split.
        let extra = extra_texts(&ctx.config)?;
        let trained =
            pool.install(|| train_from_shards(&shards, &extra, &opts, &out, &|| ctx.cancelled()));
        let Some(report) = trained.map_err(StageError::failed)? else {
            return Err(StageError::Interrupted(None));
        };

        // 2. Load it back the way every later stage will, and measure it on the validation split.
        let tok = load_tokenizer(&out).map_err(StageError::failed)?;
        if tok.vocab_size() < cfg.vocab_size {
            tracing::warn!(
                wanted = cfg.vocab_size,
                got = tok.vocab_size(),
                "the training text ran out of pairs to merge (min_frequency {}): the vocabulary is smaller than tokenizer.vocab_size",
                cfg.min_frequency
            );
        }
        let val = pool
            .install(|| evaluate_split(&tok, &shards, Split::Val, true))
            .map_err(StageError::failed)?;

        // 3. Report.
        ctx.log_metrics(
            0,
            &[
                ("tokenizer/vocab_size", tok.vocab_size() as f64),
                (
                    "tokenizer/train_split_bytes",
                    report.train_split_bytes as f64,
                ),
                ("tokenizer/sampled_bytes", report.sampled_bytes as f64),
                ("tokenizer/extra_bytes", report.extra_bytes as f64),
                ("tokenizer/train_seconds", report.seconds),
                ("tokenizer/val_bytes_per_token", val.bytes_per_token()),
                ("tokenizer/val_docs", val.docs as f64),
            ],
        );
        ctx.event(
            "tokenizer_trained",
            serde_json::json!({ "train": report, "val": val, "hash": tok.hash }),
        )?;
        tracing::info!(
            vocab = tok.vocab_size(),
            sampled_mb = report.sampled_bytes as f64 / 1e6,
            seconds = report.seconds,
            val_bytes_per_token = val.bytes_per_token(),
            "tokenizer trained"
        );
        Ok(StageOutput::default().with(KIND_TOKENIZER, TOKENIZER_FILE))
    }
}

impl Stage for TokenizeStage {
    fn name(&self) -> &'static str {
        "tokenize"
    }
    fn inputs(&self) -> &'static [&'static str] {
        &["ingest", "tokenizer"]
    }
    fn enabled(&self, config: &PipelineConfig) -> bool {
        config.tokenize.enabled
    }
    fn config_slice(&self, config: &PipelineConfig) -> serde_json::Value {
        serde_json::json!({ "tokenize": config.tokenize })
    }
    fn resources(&self, _config: &PipelineConfig) -> Resources {
        Resources {
            threads: 0,
            exclusive: false,
        }
    }

    fn run(&self, ctx: &StageContext) -> Result<StageOutput, StageError> {
        let tok = tokenizer_input(ctx)?;
        let shards = parquet_inputs(ctx)?;
        let cfg = &ctx.config.tokenize;
        let job = ShardJob {
            tok: &tok,
            seq_len: cfg.seq_len,
            split_long_docs: cfg.split_long_docs,
        };
        // Finished shards are kept here across attempts, keyed by everything their bytes depend on.
        let progress = ctx.work_dir.join(format!("shards-{}", job.key()));
        std::fs::create_dir_all(&progress).map_err(|e| StageError::failed(io_err(&progress)(e)))?;
        let pool = thread_pool(ctx.threads)?;

        // 1. Tokenize and pack every shard not already done, in parallel (shards, and documents
        //    inside a shard).
        let results: Vec<Option<ShardResult>> = pool
            .install(|| {
                shards
                    .par_iter()
                    .enumerate()
                    .map(|(i, path)| {
                        job.run_resumable(path, &progress.join(shard_name(i, path)), &|| {
                            ctx.cancelled()
                        })
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .map_err(StageError::failed)?;
        if results.iter().any(Option::is_none) {
            return Err(StageError::Interrupted(None));
        }
        let results: Vec<ShardResult> = results.into_iter().flatten().collect();

        // 2. Report per shard and in total.
        let mut total = [Totals::default(), Totals::default()];
        for (step, r) in results.iter().enumerate() {
            for (t, part) in total.iter_mut().zip([&r.train, &r.val]) {
                t.add(part);
            }
            let s = r
                .train
                .summary
                .as_ref()
                .map(|s| s.stats)
                .unwrap_or_default();
            ctx.log_metrics(
                step as u64,
                &[
                    (
                        "tokenize/shard_tokens",
                        (r.train.tokens + r.val.tokens) as f64,
                    ),
                    ("tokenize/shard_pad_pct", s.pad_pct()),
                    ("tokenize/shard_crop_pct", s.crop_pct()),
                ],
            );
        }
        let [train, val] = &total;
        if train.tokens == 0 {
            return Err(StageError::failed(TokenizeError::EmptyTrainSplit {
                files: shards.len(),
            }));
        }
        let step = results.len() as u64;
        ctx.log_metrics(
            step,
            &[
                ("tokenize/train_tokens", train.tokens as f64),
                ("tokenize/val_tokens", val.tokens as f64),
                ("tokenize/train_bytes_per_token", train.bytes_per_token()),
                ("tokenize/val_bytes_per_token", val.bytes_per_token()),
                ("tokenize/pad_pct", train.pack.pad_pct()),
                ("tokenize/crop_pct", train.pack.crop_pct()),
                ("tokenize/val_pad_pct", val.pack.pad_pct()),
                ("tokenize/train_windows", train.pack.windows as f64),
            ],
        );
        ctx.event(
            "tokenize_done",
            serde_json::json!({ "train": train, "val": val }),
        )?;
        tracing::info!(
            train_tokens = train.tokens,
            val_tokens = val.tokens,
            pad_pct = train.pack.pad_pct(),
            crop_pct = train.pack.crop_pct(),
            "tokenize done"
        );

        // 3. Publish: link the finished shards into the staging directory.
        let mut output = StageOutput::default();
        for r in &results {
            for part in [&r.train, &r.val] {
                if let Some(s) = &part.summary {
                    let rel = Path::new(part.split.as_str()).join(&r.name);
                    link_tree(&s.dir, &ctx.out_dir.join(&rel)).map_err(StageError::failed)?;
                    output = output.with(KIND_TOKEN_SHARD, rel);
                }
            }
        }
        Ok(output)
    }
}

/// The ingest stage's Parquet shards, sorted by path (the order fixes shard names and data order).
/// The non-empty lines of `[tokenizer] extra_text`, each one text of the training sample.
fn extra_texts(config: &PipelineConfig) -> Result<Vec<String>, StageError> {
    let mut texts = Vec::new();
    for p in &config.tokenizer.extra_text {
        let path = config.resolve(p);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            StageError::failed(format!(
                "tokenizer.extra_text: reading {}: {e}",
                path.display()
            ))
        })?;
        texts.extend(
            text.lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_string),
        );
    }
    Ok(texts)
}

/// The ingest stage's Parquet shards among a stage's inputs, sorted; none is an error.
pub fn parquet_inputs(ctx: &StageContext) -> Result<Vec<PathBuf>, StageError> {
    let mut shards: Vec<PathBuf> = ctx
        .input("ingest")
        .iter()
        .filter(|a| a.kind == KIND_PARQUET)
        .map(|a| PathBuf::from(&a.path))
        .collect();
    shards.sort();
    if shards.is_empty() {
        return Err(StageError::failed(format!(
            "the ingest stage produced no `{KIND_PARQUET}` artifacts; check [ingest] sources"
        )));
    }
    Ok(shards)
}

fn tokenizer_input(ctx: &StageContext) -> Result<LoadedTokenizer, StageError> {
    let a = ctx
        .input("tokenizer")
        .iter()
        .find(|a| a.kind == KIND_TOKENIZER)
        .ok_or_else(|| {
            StageError::failed("the tokenizer stage produced no `tokenizer` artifact")
        })?;
    let tok = load_tokenizer(Path::new(&a.path)).map_err(StageError::failed)?;
    if tok.hash != a.hash {
        return Err(StageError::failed(format!(
            "{} changed since the tokenizer stage recorded it (hash {} in the ledger, {} on disk); re-run with `--force tokenizer`",
            a.path, a.hash, tok.hash
        )));
    }
    Ok(tok)
}

fn thread_pool(threads: usize) -> Result<rayon::ThreadPool, StageError> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(StageError::failed)
}

fn shard_name(i: usize, path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{i:05}-{stem}")
}

/// Text and tokens of one split, and what packing did.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Totals {
    pub docs: u64,
    pub text_bytes: u64,
    pub tokens: u64,
    pub pack: PackStats,
}

impl Totals {
    pub fn bytes_per_token(&self) -> f64 {
        if self.tokens == 0 {
            f64::NAN
        } else {
            self.text_bytes as f64 / self.tokens as f64
        }
    }
    fn add(&mut self, p: &SplitPart) {
        self.docs += p.docs;
        self.text_bytes += p.text_bytes;
        // Tokens of the text, without the EOS each document gets.
        self.tokens += p.tokens - p.docs;
        if let Some(s) = &p.summary {
            self.pack.add(&s.stats);
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct SplitPart {
    split: Split,
    docs: u64,
    text_bytes: u64,
    /// Including one EOS per document.
    tokens: u64,
    summary: Option<ShardSummary>,
}

/// The outcome of one input shard, saved as `done.json` when complete.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ShardResult {
    name: String,
    train: SplitPart,
    val: SplitPart,
}

struct ShardJob<'a> {
    tok: &'a LoadedTokenizer,
    seq_len: usize,
    split_long_docs: bool,
}

const DONE: &str = "done.json";

impl ShardJob<'_> {
    /// What finished shards depend on besides their input.
    fn key(&self) -> String {
        let k = format!(
            "{}|{}|{}|{}",
            self.tok.hash,
            self.seq_len,
            self.split_long_docs,
            env!("CARGO_PKG_VERSION")
        );
        blake3::hash(k.as_bytes()).to_hex()[..16].to_string()
    }

    /// Tokenizes one shard into `dir` unless a complete result is there already. `Ok(None)`: stopped.
    fn run_resumable(
        &self,
        input: &Path,
        dir: &Path,
        stop: &(dyn Fn() -> bool + Sync),
    ) -> Result<Option<ShardResult>> {
        let done = dir.join(DONE);
        // The input's own hash is part of the name check: a changed input shard is redone.
        let input_hash = tardbot_core::hash::hash_file(input)
            .map_err(io_err(input))?
            .hex;
        if let Ok(text) = std::fs::read_to_string(&done)
            && let Ok((h, r)) = serde_json::from_str::<(String, ShardResult)>(&text)
            && h == input_hash
            && [&r.train, &r.val].iter().all(|p| {
                p.summary
                    .as_ref()
                    .is_none_or(|s| TokenShard::open(&s.dir, Some(&self.tok.hash)).is_ok())
            })
        {
            return Ok(Some(r));
        }
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(io_err(dir))?;
        }
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(result) = self.tokenize_shard(input, dir, &name, stop)? else {
            return Ok(None);
        };
        tardbot_core::hash::fsync_tree(dir).map_err(io_err(dir))?;
        let json =
            serde_json::to_string(&(input_hash, &result)).map_err(|e| io_err(&done)(e.into()))?;
        let tmp = dir.join("done.json.tmp");
        std::fs::write(&tmp, json).map_err(io_err(&tmp))?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &done).map_err(io_err(&done))?;
        Ok(Some(result))
    }

    /// Streams a Parquet shard, tokenizes its documents in parallel, packs each split and writes
    /// `dir/train` and `dir/val`.
    fn tokenize_shard(
        &self,
        input: &Path,
        dir: &Path,
        name: &str,
        stop: &(dyn Fn() -> bool + Sync),
    ) -> Result<Option<ShardResult>> {
        let mut parts = [Collected::default(), Collected::default()];
        for batch in DocBatches::open(input)? {
            if stop() {
                return Ok(None);
            }
            let docs = batch?;
            let encoded: Vec<Vec<u32>> = docs
                .par_iter()
                .map(|d| self.tok.encode(&d.text))
                .collect::<Result<_>>()?;
            for (d, ids) in docs.iter().zip(encoded) {
                let p = &mut parts[(d.split == Split::Val) as usize];
                p.text_bytes += d.text.len() as u64;
                p.tokens.extend_from_slice(&ids);
                p.tokens.push(EOS_ID);
                p.offsets.push(p.tokens.len() as u64);
            }
        }
        let meta = ShardMeta {
            tokenizer_hash: self.tok.hash.clone(),
            vocab_size: self.tok.vocab_size() as u32,
            seq_len: self.seq_len as u32,
        };
        let write = |split: Split, p: Collected| -> Result<SplitPart> {
            let docs = p.offsets.len() as u64 - 1;
            let summary = if docs > 0 {
                let packing = pack(&p.offsets, self.seq_len, self.split_long_docs);
                let d = dir.join(split.as_str());
                Some(write_shard(
                    &d, &meta, &p.tokens, &p.offsets, None, &packing,
                )?)
            } else {
                None
            };
            Ok(SplitPart {
                split,
                docs,
                text_bytes: p.text_bytes,
                tokens: p.tokens.len() as u64,
                summary,
            })
        };
        let [train, val] = parts;
        Ok(Some(ShardResult {
            name: name.to_string(),
            train: write(Split::Train, train)?,
            val: write(Split::Val, val)?,
        }))
    }
}

/// Flat tokens and document offsets of one split while a shard is read.
struct Collected {
    tokens: Vec<u32>,
    offsets: Vec<u64>,
    text_bytes: u64,
}

impl Default for Collected {
    fn default() -> Self {
        Collected {
            tokens: Vec::new(),
            offsets: vec![0],
            text_bytes: 0,
        }
    }
}

/// Hard-links (or, across file systems, copies) every file of `from` into `to`.
fn link_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(io_err(to))?;
    for entry in std::fs::read_dir(from).map_err(io_err(from))? {
        let entry = entry.map_err(io_err(from))?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if src.is_dir() {
            link_tree(&src, &dst)?;
        } else if std::fs::hard_link(&src, &dst).is_err() {
            std::fs::copy(&src, &dst).map_err(io_err(&dst))?;
        }
    }
    Ok(())
}

/// Bytes per token and round trip of one split.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SplitReport {
    pub docs: u64,
    pub bytes: u64,
    pub tokens: u64,
}

impl SplitReport {
    pub fn bytes_per_token(&self) -> f64 {
        if self.tokens == 0 {
            f64::NAN
        } else {
            self.bytes as f64 / self.tokens as f64
        }
    }
}

/// Encodes every document of `split` (in parallel) and counts bytes and tokens; with `round_trip`,
/// also checks `decode(encode(text)) == text` for each and fails on the first mismatch.
pub fn evaluate_split(
    tok: &LoadedTokenizer,
    shards: &[PathBuf],
    split: Split,
    round_trip: bool,
) -> Result<SplitReport> {
    let mut r = SplitReport::default();
    for path in shards {
        for batch in DocBatches::open(path)? {
            let docs: Vec<_> = batch?.into_iter().filter(|d| d.split == split).collect();
            let counts = docs
                .par_iter()
                .map(|d| {
                    let ids = tok.encode(&d.text)?;
                    if round_trip {
                        let back = tok.decode(&ids)?;
                        if back != d.text {
                            let at = back.bytes().zip(d.text.bytes()).position(|(a, b)| a != b);
                            return Err(TokenizeError::RoundTrip {
                                path: path.clone(),
                                doc: d.id.clone(),
                                at: at.unwrap_or(back.len().min(d.text.len())),
                            });
                        }
                    }
                    Ok((d.text.len() as u64, ids.len() as u64))
                })
                .collect::<Result<Vec<_>>>()?;
            for (b, t) in counts {
                r.docs += 1;
                r.bytes += b;
                r.tokens += t;
            }
        }
    }
    Ok(r)
}
