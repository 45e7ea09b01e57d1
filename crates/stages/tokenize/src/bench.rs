//! `tardbot-pipeline bench tokenize`: our throughput against the peer, packing and loader speed, and
//! the tokenizer-training measurement on a corpus.
//!
//! The peer is Python `tokenizers.Tokenizer.encode_batch` on the same `tokenizer.json`, the same
//! texts and the same thread count (`RAYON_NUM_THREADS`), run right after ours in the same process
//! tree. It is looked for in `$TARDBOT_PEER_PYTHON`, then `.peer-venv/bin/python` in the current and
//! parent directories, then `python3`; when none has `tokenizers`, that row is skipped with a message.

use crate::train_tokenizer::{TrainOptions, train_bpe};
use rayon::prelude::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tardbot_core::memory::peak_rss_bytes;
use tardbot_tokens::error::{Result, TokenizeError, io_err};
use tardbot_tokens::loader::{Batch, Loader, LoaderConfig};
use tardbot_tokens::pack::pack;
use tardbot_tokens::shard::{ShardMeta, TokenShard, write_shard};
use tardbot_tokens::special_tokens::EOS_ID;
use tardbot_tokens::tokenizer::{LoadedTokenizer, load_tokenizer, round_trip_mismatch};

/// Reads a plain-text corpus whose documents are separated by lines equal to `<|endoftext|>`.
pub fn read_text_docs(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let mut docs = Vec::new();
    let mut cur = String::new();
    for line in text.split_inclusive('\n') {
        if line.trim_end() == "<|endoftext|>" {
            if !cur.is_empty() {
                docs.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push_str(line);
        }
    }
    if !cur.is_empty() {
        docs.push(cur);
    }
    Ok(docs)
}

/// Trains a tokenizer on a text corpus and measures it on a validation file: time, peak RSS,
/// bytes/token on validation, and the round trip on every validation document.
pub fn measure_training(
    train_txt: &Path,
    val_txt: &Path,
    vocab_size: usize,
    out: &Path,
) -> Result<serde_json::Value> {
    let rss_before = peak_rss_bytes();
    let train = read_text_docs(train_txt)?;
    let train_bytes: usize = train.iter().map(String::len).sum();
    let opts = TrainOptions {
        vocab_size,
        min_frequency: 2,
        max_training_bytes: u64::MAX,
        seed: 0,
    };
    let t = Instant::now();
    train_bpe(train.iter().map(String::as_str), &opts, out)?;
    let seconds = t.elapsed().as_secs_f64();
    let rss_after = peak_rss_bytes();
    drop(train);
    let tok = load_tokenizer(out)?;
    let val = read_text_docs(val_txt)?;
    let (mut bytes, mut tokens, mut failures) = (0u64, 0u64, 0u64);
    for d in &val {
        bytes += d.len() as u64;
        tokens += tok.encode(d)?.len() as u64;
        failures += round_trip_mismatch(&tok, d)?.is_some() as u64;
    }
    let report = json!({
        "train_file": train_txt, "train_bytes": train_bytes, "vocab_size": tok.vocab_size(),
        "train_seconds": seconds,
        "peak_rss_mb_before": rss_before.map(|b| b as f64 / 1e6),
        "peak_rss_mb": rss_after.map(|b| b as f64 / 1e6),
        "threads": rayon::current_num_threads(),
        "val_file": val_txt, "val_docs": val.len(), "val_bytes": bytes, "val_tokens": tokens,
        "val_bytes_per_token": bytes as f64 / tokens.max(1) as f64,
        "val_round_trip_failures": failures,
    });
    println!("tokenizer training on {}", train_txt.display());
    println!("  text            {:>10.1} MB", train_bytes as f64 / 1e6);
    println!("  vocab           {:>10}", tok.vocab_size());
    println!(
        "  time            {seconds:>10.1} s  ({} threads)",
        rayon::current_num_threads()
    );
    if let Some(r) = rss_after {
        println!(
            "  peak RSS        {:>10.1} MB  (process VmHWM)",
            r as f64 / 1e6
        );
    }
    println!(
        "  val bytes/token {:>10.3}  ({} docs, {bytes} bytes, {tokens} tokens)",
        bytes as f64 / tokens.max(1) as f64,
        val.len()
    );
    println!(
        "  val round trip  {:>10}",
        if failures == 0 {
            "exact".to_string()
        } else {
            format!("{failures} FAILED")
        }
    );
    Ok(report)
}

/// What to benchmark.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub tokenizer: PathBuf,
    /// Text corpus (`<|endoftext|>`-separated documents).
    pub texts: PathBuf,
    /// Use at most this many bytes of `texts`.
    pub max_bytes: usize,
    pub threads: usize,
    pub seq_len: usize,
    /// mac_nano batch for the loader check.
    pub batch_size: usize,
    /// Tokens/s the fastest known mac_nano training step consumes (default: 105k, PyTorch compiled
    /// on one H100, `shared/bench/README.md`); the loader must be ≥ 10× this.
    pub train_tokens_per_s: f64,
    /// Scratch directory for shards.
    pub scratch: PathBuf,
}

impl BenchOptions {
    /// Defaults: 8 MB of text, every core, seq_len 256, batch 4 (mac_nano), 105k tokens/s to feed.
    pub fn new(tokenizer: PathBuf, texts: PathBuf, scratch: PathBuf) -> BenchOptions {
        BenchOptions {
            tokenizer,
            texts,
            max_bytes: 8 << 20,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            seq_len: 256,
            batch_size: 4,
            train_tokens_per_s: 105_000.0,
            scratch,
        }
    }
}

fn checksum(docs: &[Vec<u32>]) -> u64 {
    let mut h: u64 = 0;
    for (i, d) in docs.iter().enumerate() {
        let s: u64 = d.iter().enumerate().fold(0u64, |a, (j, &t)| {
            a.wrapping_add((t as u64 + 1).wrapping_mul(j as u64 + 1))
        });
        h = h.wrapping_add(s.wrapping_mul(i as u64 + 1)) % (1 << 61);
    }
    h
}

const PEER: &str = r#"
import json, sys, time
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[1])
texts = json.load(open(sys.argv[2]))
def best(f, n=3):
    b = None
    for _ in range(n):
        t = time.perf_counter(); r = f(); t = time.perf_counter() - t
        b = t if b is None or t < b else b
    return b, r
tok.encode_batch(texts[:64])
secs, encs = best(lambda: tok.encode_batch(texts))
fast, _ = best(lambda: tok.encode_batch_fast(texts)) if hasattr(tok, "encode_batch_fast") else (None, None)
h = 0
for i, e in enumerate(encs):
    s = 0
    for j, t in enumerate(e.ids):
        s = (s + (t + 1) * (j + 1)) % (1 << 64)
    h = (h + s * (i + 1)) % (1 << 64) % (1 << 61)
import tokenizers
print(json.dumps({"seconds": secs, "seconds_fast": fast, "tokens": sum(len(e.ids) for e in encs), "checksum": h, "version": tokenizers.__version__}))
"#;

fn find_python() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("TARDBOT_PEER_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let cwd = std::env::current_dir().ok()?;
    for dir in cwd.ancestors().take(4) {
        let p = dir.join(".peer-venv/bin/python");
        if p.exists() {
            return Some(p);
        }
    }
    Some(PathBuf::from("python3"))
}

fn run_peer(opts: &BenchOptions, texts: &[&str]) -> std::result::Result<serde_json::Value, String> {
    let python = find_python().ok_or("no python found")?;
    let texts_path = opts.scratch.join("peer-texts.json");
    let script = opts.scratch.join("peer.py");
    std::fs::write(
        &texts_path,
        serde_json::to_vec(texts).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    std::fs::write(&script, PEER).map_err(|e| e.to_string())?;
    let out = std::process::Command::new(&python)
        .arg(&script)
        .arg(&opts.tokenizer)
        .arg(&texts_path)
        .env("RAYON_NUM_THREADS", opts.threads.to_string())
        .env("TOKENIZERS_PARALLELISM", "true")
        .output()
        .map_err(|e| format!("{}: {e}", python.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "{} has no usable `tokenizers` ({})",
            python.display(),
            err.lines().last().unwrap_or("")
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("peer output: {e}"))
}

fn best_of<T>(n: usize, mut f: impl FnMut() -> T) -> (f64, T) {
    let mut best = f64::INFINITY;
    let mut last = None;
    for _ in 0..n {
        let t = Instant::now();
        let r = f();
        best = best.min(t.elapsed().as_secs_f64());
        last = Some(r);
    }
    match last {
        Some(r) => (best, r),
        None => (0.0, f()),
    }
}

/// Runs the benchmark, prints a table, returns the figures.
pub fn bench_tokenize(opts: &BenchOptions) -> Result<serde_json::Value> {
    std::fs::create_dir_all(&opts.scratch).map_err(io_err(&opts.scratch))?;
    let tok: LoadedTokenizer = load_tokenizer(&opts.tokenizer)?;
    let mut docs = read_text_docs(&opts.texts)?;
    let mut total = 0;
    docs.retain(|d| {
        total += d.len();
        total <= opts.max_bytes
    });
    let bytes: usize = docs.iter().map(String::len).sum();
    let texts: Vec<&str> = docs.iter().map(String::as_str).collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads)
        .build()
        .map_err(|e| TokenizeError::Loader(e.to_string()))?;

    // 1. Encode: ours, then the peer, back to back.
    let encode = || {
        texts
            .par_iter()
            .map(|t| tok.encode(t))
            .collect::<Result<Vec<_>>>()
    };
    pool.install(encode)?; // warm-up
    let (ours_s, encoded) = pool.install(|| best_of(3, encode));
    let encoded = encoded?;
    let n_tokens: usize = encoded.iter().map(Vec::len).sum();
    let peer = run_peer(opts, &texts);

    // 2. Packing: index build, and index + write of a full shard.
    let mut flat = Vec::with_capacity(n_tokens + encoded.len());
    let mut offsets = vec![0u64];
    for e in &encoded {
        flat.extend_from_slice(e);
        flat.push(EOS_ID);
        offsets.push(flat.len() as u64);
    }
    let (pack_s, packing) = best_of(5, || pack(&offsets, opts.seq_len, true));
    let meta = ShardMeta {
        tokenizer_hash: tok.hash.clone(),
        vocab_size: tok.vocab_size() as u32,
        seq_len: opts.seq_len as u32,
    };
    let dir = opts.scratch.join("bench-shard");
    let (write_s, written) = best_of(3, || {
        let p = pack(&offsets, opts.seq_len, true);
        write_shard(&dir, &meta, &flat, &offsets, None, &p)
    });
    written?;

    // 3. Loader at the mac_nano batch.
    let shard = TokenShard::open(&dir, Some(&tok.hash))?;
    let mut loader = Loader::new(
        vec![shard],
        LoaderConfig {
            batch_size: opts.batch_size,
            seed: 1,
            rank: 0,
            world_size: 1,
        },
    )?;
    let mut batch = Batch::default();
    let n_batches = 2000;
    let t = Instant::now();
    for _ in 0..n_batches {
        loader.next_batch_into(&mut batch);
    }
    let loader_s = t.elapsed().as_secs_f64();
    let batch_tokens = (opts.batch_size * opts.seq_len) as f64;
    let loader_bps = n_batches as f64 / loader_s;
    let needed_bps = opts.train_tokens_per_s / batch_tokens;

    // Report.
    let ours_tps = n_tokens as f64 / ours_s;
    let peer_json = match &peer {
        Ok(p) => {
            let secs = p["seconds"].as_f64().unwrap_or(f64::NAN);
            let same = p["checksum"].as_u64() == Some(checksum(&encoded))
                && p["tokens"].as_u64() == Some(n_tokens as u64);
            json!({
                "tokens_per_s": n_tokens as f64 / secs,
                "fast_tokens_per_s": p["seconds_fast"].as_f64().map(|s| n_tokens as f64 / s),
                "ratio": secs / ours_s,
                "identical_ids": same,
                "version": p["version"],
            })
        }
        Err(why) => json!({ "skipped": why }),
    };
    let report = json!({
        "threads": opts.threads, "docs": texts.len(), "bytes": bytes, "tokens": n_tokens,
        "bytes_per_token": bytes as f64 / n_tokens.max(1) as f64,
        "ours": { "tokens_per_s": ours_tps, "mb_per_s": bytes as f64 / ours_s / 1e6 },
        "peer": peer_json,
        "pack": {
            "index_tokens_per_s": flat.len() as f64 / pack_s,
            "index_and_write_tokens_per_s": flat.len() as f64 / write_s,
            "pad_pct": packing.stats.pad_pct(), "crop_pct": packing.stats.crop_pct(),
        },
        "loader": {
            "batch": [opts.batch_size, opts.seq_len], "batches_per_s": loader_bps,
            "tokens_per_s": loader_bps * batch_tokens,
            "needed_batches_per_s": needed_bps, "headroom": loader_bps / needed_bps,
        },
    });
    println!(
        "bench tokenize — {} docs, {:.1} MB, {} tokens, {} thread(s)",
        texts.len(),
        bytes as f64 / 1e6,
        n_tokens,
        opts.threads
    );
    println!("{:<44} {:>14} {:>10}", "what", "tokens/s", "ours ÷ it");
    println!(
        "{:<44} {:>14.0} {:>10}",
        "encode: tardbot (tokenizers crate, encode_fast)", ours_tps, ""
    );
    match &peer {
        Ok(_) => {
            println!(
                "{:<44} {:>14.0} {:>9.2}x",
                "encode: python tokenizers encode_batch",
                report["peer"]["tokens_per_s"].as_f64().unwrap_or(f64::NAN),
                report["peer"]["ratio"].as_f64().unwrap_or(f64::NAN)
            );
            if let Some(f) = report["peer"]["fast_tokens_per_s"].as_f64() {
                println!(
                    "{:<44} {:>14.0} {:>9.2}x",
                    "encode: python encode_batch_fast (info)",
                    f,
                    ours_tps / f
                );
            }
            println!(
                "{:<44} {:>25}",
                "  same token ids as the peer", report["peer"]["identical_ids"]
            );
        }
        Err(why) => println!(
            "{:<44} skipped: {why}",
            "encode: python tokenizers encode_batch"
        ),
    }
    println!(
        "{:<44} {:>14.0} {:>10}",
        "pack: best-fit index",
        flat.len() as f64 / pack_s,
        if flat.len() as f64 / pack_s >= 50e6 {
            "≥50M ok"
        } else {
            "<50M"
        }
    );
    println!(
        "{:<44} {:>14.0}",
        "pack: index + write shard (hash, u16)",
        flat.len() as f64 / write_s
    );
    println!(
        "{:<44} {:>14.0} {:>9.0}x",
        format!(
            "loader: {}×{} batches ({loader_bps:.0}/s)",
            opts.batch_size, opts.seq_len
        ),
        loader_bps * batch_tokens,
        loader_bps / needed_bps
    );
    println!(
        "  (vs a mac_nano step consuming {:.0} tokens/s = {needed_bps:.1} batches/s; pad {:.2}%)",
        opts.train_tokens_per_s,
        packing.stats.pad_pct()
    );
    Ok(report)
}

/// The whole measurement the `bench tokenize` command prints: a 32k tokenizer trained on
/// `<corpora>/prose/train.txt` (time, peak RSS, bytes/token and round trip on `val.txt`), then
/// [`bench_tokenize`] with it on up to 8 MB of the training text, using every core.
/// `scratch` receives `tokenizer.json` and the benchmark shard.
pub fn bench_tokenize_on_corpora(corpora: &Path, scratch: &Path) -> Result<serde_json::Value> {
    std::fs::create_dir_all(scratch).map_err(io_err(scratch))?;
    let tokenizer = scratch.join("tokenizer.json");
    let train_txt = corpora.join("prose/train.txt");
    let training = measure_training(
        &train_txt,
        &corpora.join("prose/val.txt"),
        32_000,
        &tokenizer,
    )?;
    let bench = bench_tokenize(&BenchOptions::new(
        tokenizer,
        train_txt,
        scratch.join("bench"),
    ))?;
    Ok(json!({ "training": training, "bench": bench }))
}
