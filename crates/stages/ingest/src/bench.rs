//! `tardbot-pipeline bench ingest`: end-to-end throughput and peak memory on a generated corpus.
//!
//! The input is the prose corpus (`../shared/corpora/prose/train.txt`, 17.8 MB) written `copies`
//! times with variations: in copy `k > 0` every document gets a first line `Variant k.`, except every
//! 7th document, left unchanged (an exact duplicate the dedup must remove). One copy is gzip-compressed.
//! Without the corpus, pseudo-prose is generated instead. Nothing else runs in the process, so
//! `VmHWM` (peak resident set) is the ingest's own peak.

use crate::error::IngestError;
use crate::stage::{IngestEnv, cpu_seconds, ingest};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tardbot_core::config::PipelineConfig;
use tardbot_core::memory::{peak_live_bytes, peak_rss_bytes, reset_peak_live};

/// What to benchmark.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// The corpus to replicate (a `<|endoftext|>`-separated text file); `None` looks for
    /// `../shared/corpora/prose/train.txt` from the working directory, then generates text.
    pub corpus: Option<PathBuf>,
    /// How many variants of the corpus to write (12 × 17.8 MB ≈ 213 MB by default).
    pub copies: usize,
    /// Worker threads (0: all cores).
    pub threads: usize,
    /// Where to put the generated input and the output (a fresh temporary directory when `None`).
    pub dir: Option<PathBuf>,
    /// zstd level of the output shards (`None`: the `[ingest]` default).
    pub zstd_level: Option<i32>,
    /// Ingests of the same input, each into fresh output (the machine is noisy: the median and
    /// the best are printed, and every run must produce the same shards).
    pub runs: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            corpus: None,
            copies: 12,
            threads: 0,
            dir: None,
            zstd_level: None,
            runs: 3,
        }
    }
}

const SEP: &str = "<|endoftext|>";

fn pseudo_prose(target_bytes: usize) -> String {
    const WORDS: &[&str] = &[
        "the", "of", "and", "to", "in", "a", "that", "he", "was", "it", "his", "with", "for", "as",
        "had", "you", "not", "be", "her", "on", "at", "by", "which", "have", "or", "from", "this",
        "him", "but", "all", "she", "they", "were", "my", "are", "me", "one", "their", "so", "an",
        "said", "them", "we", "who", "would", "been", "will", "no", "when", "there", "if", "more",
        "out", "up", "into", "do", "any", "your", "what", "has", "man", "could", "other", "than",
        "our", "some", "very", "time", "upon", "about", "may", "its", "only", "now", "like",
        "little", "then", "can", "should", "made", "did", "us", "such", "great", "before", "must",
        "two", "these", "see", "know", "over", "much", "down", "after", "first", "good", "men",
        "own", "never", "most", "old", "shall", "day", "where", "those", "came", "come", "himself",
        "way", "work", "life", "without", "go", "make", "well", "through", "being", "long", "say",
        "might", "how", "am", "too", "even", "def", "under",
    ];
    let mut s = String::with_capacity(target_bytes + 1024);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut doc = 0;
    while s.len() < target_bytes {
        doc += 1;
        s.push_str(&format!("Chapter {doc}.\n\n"));
        for _line in 0..(40 + doc % 60) {
            for w in 0..12 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if w > 0 {
                    s.push(' ');
                }
                s.push_str(WORDS[(x % WORDS.len() as u64) as usize]);
            }
            s.push_str(".\n");
        }
        s.push_str(SEP);
        s.push('\n');
    }
    s
}

fn generate(base: &str, dir: &Path, copies: usize) -> Result<u64, IngestError> {
    let docs: Vec<&str> = base.split(&format!("\n{SEP}\n")).collect();
    let mut total = 0u64;
    for k in 0..copies {
        let gz = k == copies / 2 && copies > 1;
        let path = dir.join(if gz {
            format!("copy-{k:03}.txt.gz")
        } else {
            format!("copy-{k:03}.txt")
        });
        let f = std::fs::File::create(&path).map_err(|e| IngestError::write(&path, e))?;
        let mut w: Box<dyn Write> = if gz {
            Box::new(flate2::write::GzEncoder::new(
                std::io::BufWriter::new(f),
                flate2::Compression::fast(),
            ))
        } else {
            Box::new(std::io::BufWriter::with_capacity(1 << 20, f))
        };
        for (i, d) in docs.iter().enumerate() {
            let mut out = String::with_capacity(d.len() + 32);
            if k > 0 && i % 7 != 0 {
                out.push_str(&format!("Variant {k}.\n"));
            }
            out.push_str(d.trim_end_matches('\n'));
            out.push('\n');
            out.push_str(SEP);
            out.push('\n');
            total += out.len() as u64;
            w.write_all(out.as_bytes())
                .map_err(|e| IngestError::write(&path, e))?;
        }
        w.flush().map_err(|e| IngestError::write(&path, e))?;
        drop(w);
        // On disk before the clock starts: otherwise the first ingest races the kernel writing
        // back 200 MB of fresh input (measured: 71 MB/s for that run against 82–87 for the next).
        std::fs::File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(|e| IngestError::write(&path, e))?;
    }
    Ok(total)
}

/// Generates the input, runs the full ingest (read, clean, filter, dedup, write Parquet), prints a
/// table and returns the figures as JSON: `mb_in`, `seconds`, `mb_per_s`, `cpu_seconds` and
/// `cpu_s_per_mb` (of the ingest alone, all threads: what a loaded machine does not change much),
/// `peak_rss_mb`, the counts, and the generation parameters.
pub fn bench_ingest(opts: &BenchOptions) -> Result<serde_json::Value, IngestError> {
    let tmp;
    let dir = match &opts.dir {
        Some(d) => d.clone(),
        None => {
            tmp = TempDir::new()?;
            tmp.0.clone()
        }
    };
    let input = dir.join("input");
    std::fs::create_dir_all(&input).map_err(|e| IngestError::write(&input, e))?;
    let corpus = opts.corpus.clone().or_else(|| {
        Some(PathBuf::from("../shared/corpora/prose/train.txt")).filter(|p| p.is_file())
    });
    let (base, base_name) = match &corpus {
        Some(p) => (
            std::fs::read_to_string(p).map_err(|e| IngestError::Unreadable {
                path: p.clone(),
                source: e,
            })?,
            p.display().to_string(),
        ),
        None => (pseudo_prose(18 << 20), "generated pseudo-prose".to_string()),
    };
    let gen_started = Instant::now();
    let generated = generate(&base, &input, opts.copies.max(1))?;
    drop(base);
    let gen_s = gen_started.elapsed().as_secs_f64();

    // Only `[ingest]` matters here, so the config is built directly rather than parsed from a
    // file: the checks of other sections (e.g. bundled data files that must exist next to the
    // config) have nothing to find in the scratch directory.
    let cfg_path = dir.join("pipeline.toml");
    let mut cfg: PipelineConfig = serde_json::from_value(serde_json::json!({
        "model": { "preset": "tiny" },
        "ingest": { "sources": [{
            "name": "bench",
            "path": "input/copy-*",
            "format": "text",
            "separator": SEP,
            "license": "public-domain",
        }] },
    }))
    .map_err(|e| IngestError::Manifest {
        path: cfg_path,
        message: e.to_string(),
    })?;
    cfg.base_dir = dir.clone();
    if let Some(level) = opts.zstd_level {
        cfg.ingest.zstd_level = level;
    }
    let (out, work) = (dir.join("out"), dir.join("work"));
    let mut speeds: Vec<f64> = Vec::new();
    let mut cpu = None;
    let mut first_shards: Option<Vec<String>> = None;
    let mut last = None;
    for run in 0..opts.runs.max(1) {
        for d in [&out, &work] {
            let _ = std::fs::remove_dir_all(d);
            std::fs::create_dir_all(d).map_err(|e| IngestError::write(d, e))?;
        }
        let env = IngestEnv {
            out_dir: &out,
            work_dir: &work,
            threads: opts.threads,
            cancelled: &|| false,
            metrics: &|_, _| {},
        };
        let cpu_before = cpu_seconds();
        reset_peak_live();
        let summary = ingest(&cfg, &env)?;
        cpu = cpu_seconds()
            .zip(cpu_before)
            .map(|(after, before)| after - before);
        // Determinism: every run writes the same shards, byte for byte.
        let hashes: Vec<String> = summary
            .manifest
            .shards
            .iter()
            .map(|s| s.blake3.clone())
            .collect();
        match &first_shards {
            None => first_shards = Some(hashes),
            Some(first) if *first != hashes => {
                return Err(IngestError::Write {
                    path: out.clone(),
                    message: format!("run {} wrote different shards than run 1", run + 1),
                });
            }
            Some(_) => {}
        }
        eprintln!(
            "run {}: {:.1} MB/s ({:.2} s: {}; peak live heap {:.0} MB)",
            run + 1,
            summary.mb_per_s(),
            summary.seconds,
            summary
                .phases
                .iter()
                .map(|(p, s)| format!("{p} {s:.2}"))
                .collect::<Vec<_>>()
                .join(", "),
            peak_live_bytes().map_or(f64::NAN, |b| b as f64 / 1e6)
        );
        speeds.push(summary.mb_per_s());
        last = Some(summary);
    }
    let summary = last.ok_or_else(|| IngestError::write(&out, "no run"))?;
    let mut sorted = speeds.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let best = sorted[sorted.len() - 1];
    let t = &summary.manifest.totals;
    let peak = peak_rss_bytes().unwrap_or(0);
    let out_bytes: u64 = summary.manifest.shards.iter().map(|s| s.bytes).sum();
    let threads = if opts.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        opts.threads
    };
    println!(
        "bench ingest: {} × variants of {base_name} ({} MB generated in {gen_s:.1} s)",
        opts.copies,
        generated / 1_000_000
    );
    println!(
        "  {:<28} {:>12}",
        "input MB (uncompressed)",
        format!("{:.1}", t.bytes_in as f64 / 1e6)
    );
    println!(
        "  {:<28} {:>12}",
        "seconds",
        format!("{:.2}", summary.seconds)
    );
    println!(
        "  {:<28} {:>12}",
        "MB/s (last run)",
        format!("{:.1}", summary.mb_per_s())
    );
    println!(
        "  {:<28} {:>12}   (best {best:.1}; runs: {}; identical shards in every run)",
        format!("MB/s median of {}", speeds.len()),
        format!("{median:.1}"),
        speeds
            .iter()
            .map(|v| format!("{v:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(cpu) = cpu {
        println!(
            "  {:<28} {:>12}",
            "CPU seconds (all threads)",
            format!("{cpu:.2}")
        );
        println!(
            "  {:<28} {:>12}",
            "CPU seconds per MB",
            format!("{:.4}", cpu / (t.bytes_in as f64 / 1e6).max(1e-9))
        );
    }
    for (phase, s) in &summary.phases {
        let cpu = summary.phase_cpu.iter().find(|(p, _)| p == phase);
        let cores = cpu.map_or(String::new(), |(_, c)| format!(" ({c:.2} CPU-s)"));
        println!(
            "  {:<28} {:>12}{cores}",
            format!("  {phase} seconds"),
            format!("{s:.2}")
        );
    }
    println!("  {:<28} {:>12}", "threads", threads);
    println!("  {:<28} {:>12}", "docs in", t.docs_in);
    println!(
        "  {:<28} {:>12}",
        "docs filtered",
        t.filtered_total() + t.empty
    );
    println!("  {:<28} {:>12}", "duplicates removed", t.duplicates);
    println!("  {:<28} {:>12}", "docs out", t.docs_out);
    println!(
        "  {:<28} {:>12}",
        "shards / MB on disk",
        format!(
            "{} / {:.1}",
            summary.manifest.shards.len(),
            out_bytes as f64 / 1e6
        )
    );
    println!(
        "  {:<28} {:>12}",
        "peak RSS MB (VmHWM)",
        format!("{:.1}", peak as f64 / 1e6)
    );
    Ok(serde_json::json!({
        "corpus": base_name,
        "copies": opts.copies,
        "threads": threads,
        "mb_in": t.bytes_in as f64 / 1e6,
        "seconds": summary.seconds,
        "phase_seconds": summary.phases.iter().map(|(p, s)| (p.to_string(), *s)).collect::<std::collections::BTreeMap<_, _>>(),
        "phase_cpu_seconds": summary.phase_cpu.iter().map(|(p, s)| (p.to_string(), *s)).collect::<std::collections::BTreeMap<_, _>>(),
        "mb_per_s": median,
        "mb_per_s_best": best,
        "mb_per_s_runs": speeds,
        "cpu_seconds": cpu,
        "cpu_s_per_mb": cpu.map(|c| c / (t.bytes_in as f64 / 1e6).max(1e-9)),
        "peak_rss_mb": peak as f64 / 1e6,
        "docs_in": t.docs_in,
        "docs_filtered": t.filtered_total() + t.empty,
        "filtered": t.filtered,
        "duplicates": t.duplicates,
        "docs_out": t.docs_out,
        "shards": summary.manifest.shards.len(),
        "mb_out_on_disk": out_bytes as f64 / 1e6,
    }))
}

/// A temporary directory removed on drop (the bench's default workspace).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir, IngestError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let p = std::env::temp_dir().join(format!(
            "tardbot-bench-ingest-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&p).map_err(|e| IngestError::write(&p, e))?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
