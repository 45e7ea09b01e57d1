//! [`IngestStage`]: the stage contract around [`ingest`], the recipe.

use crate::clean::CleanPolicy;
use crate::dedup;
use crate::error::IngestError;
use crate::manifest::{MANIFEST_FILE, Manifest, SourceEntry};
use crate::parts::{self, PartSettings, PendingPart};
use crate::report::{self, Counts};
use crate::shards::{self, ShardSettings};
use crate::sources::{self, ReadOptions};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::time::Instant;
use tardbot_core::config::PipelineConfig;
use tardbot_stage::{Resources, Stage, StageContext, StageError, StageOutput};

/// The `ingest` stage: `[[ingest.sources]]` → `shards/part-NNNNN.parquet` + `manifest.json`.
pub struct IngestStage;

impl Stage for IngestStage {
    fn name(&self) -> &'static str {
        "ingest"
    }

    fn inputs(&self) -> &'static [&'static str] {
        &[]
    }

    fn enabled(&self, config: &PipelineConfig) -> bool {
        config.ingest.enabled
    }

    /// The `[ingest]` section, the seed, and the size and mtime of every input file (so that an
    /// edited corpus is not served from the cache).
    fn config_slice(&self, config: &PipelineConfig) -> serde_json::Value {
        let inputs = match sources::expand(config) {
            Ok(files) => files
                .iter()
                .map(|f| {
                    serde_json::json!([
                        f.source_name,
                        f.display,
                        f.bytes,
                        parts::mtime_ns(&f.path).to_string()
                    ])
                })
                .collect(),
            Err(e) => vec![serde_json::json!(e.to_string())],
        };
        serde_json::json!({ "ingest": config.ingest, "seed": config.seed, "inputs": inputs })
    }

    fn resources(&self, _config: &PipelineConfig) -> Resources {
        Resources {
            threads: 0,
            exclusive: false,
        }
    }

    fn run(&self, ctx: &StageContext) -> Result<StageOutput, StageError> {
        let env = IngestEnv {
            out_dir: &ctx.out_dir,
            work_dir: &ctx.work_dir,
            threads: ctx.threads,
            cancelled: &|| ctx.cancelled(),
            metrics: &|step, values| ctx.log_metrics(step, values),
        };
        let summary = match ingest(&ctx.config, &env) {
            Ok(s) => s,
            Err(IngestError::Interrupted) => return Err(StageError::Interrupted(None)),
            Err(e) => return Err(StageError::failed(e)),
        };
        ctx.flush_metrics()?;
        Ok(summary.output())
    }
}

/// Receives `(step, [(key, value)])` metric points.
pub type MetricsSink<'a> = &'a dyn Fn(u64, &[(&str, f64)]);

/// Where [`ingest`] writes and how it reports, independent of the orchestrator.
pub struct IngestEnv<'a> {
    /// Output directory (shards + manifest); published by the orchestrator on success.
    pub out_dir: &'a Path,
    /// Kept across attempts: the per-file parts that make the stage resumable.
    pub work_dir: &'a Path,
    /// Worker threads for cleaning and filtering (0: all cores).
    pub threads: usize,
    pub cancelled: &'a dyn Fn() -> bool,
    pub metrics: MetricsSink<'a>,
}

/// What an ingest produced.
#[derive(Clone, Debug)]
pub struct IngestSummary {
    pub manifest: Manifest,
    /// Input files whose complete part was reused from an earlier attempt.
    pub resumed_files: usize,
    pub seconds: f64,
    /// Wall seconds of each phase: `parts` (read, clean, filter, write the parts), `plan`
    /// (dedup and mix over the parts' index columns), `shards` (write the output).
    pub phases: Vec<(&'static str, f64)>,
    /// CPU seconds (all threads of the process) of each phase, where the platform tells
    /// (`getrusage`); CPU over wall seconds is how many cores a phase kept busy.
    pub phase_cpu: Vec<(&'static str, f64)>,
    /// The end-of-run table, as printed.
    pub table: String,
}

impl IngestSummary {
    /// The stage's artifacts: each shard (`parquet-shard`) and the manifest (`manifest`).
    pub fn output(&self) -> StageOutput {
        let out = self
            .manifest
            .shards
            .iter()
            .fold(StageOutput::default(), |o, s| {
                o.with("parquet-shard", &s.path)
            });
        out.with("manifest", MANIFEST_FILE)
    }

    /// Input MB (uncompressed document bytes) per second.
    pub fn mb_per_s(&self) -> f64 {
        self.manifest.totals.bytes_in as f64 / 1e6 / self.seconds.max(1e-9)
    }
}

fn config_hash(cfg: &PipelineConfig, with_shard: bool) -> String {
    let mut ingest = cfg.ingest.clone();
    if !with_shard {
        ingest.shard_index = 0;
    }
    let key = serde_json::json!({ "ingest": ingest, "seed": cfg.seed, "version": env!("CARGO_PKG_VERSION") });
    tardbot_core::hash::hash_bytes(key.to_string().as_bytes())
}

/// Runs the whole ingest: sources → parts → dedup/mix plan → shards → manifest.
pub fn ingest(cfg: &PipelineConfig, env: &IngestEnv<'_>) -> Result<IngestSummary, IngestError> {
    let started = Instant::now();
    let cpu_started = cpu_seconds();
    let ic = &cfg.ingest;

    // 1. The input files of this shard.
    let all_files = sources::expand(cfg)?;
    let n_all = all_files.len();
    let files = sources::select_shard(all_files, ic.shard_index, ic.shard_count);
    if files.is_empty() {
        return Err(IngestError::EmptyShard {
            index: ic.shard_index,
            count: ic.shard_count,
            files: n_all,
        });
    }

    // 2. Each file → a complete part in the work directory (reused when already complete).
    let settings = PartSettings {
        dir: env.work_dir.join("parts"),
        clean: CleanPolicy::from_config(ic),
        filters: ic.filters.clone(),
        read: ReadOptions {
            on_error: ic.on_error,
            max_document_bytes: ic.max_document_bytes,
            drop_invalid_utf8: ic.clean.invalid_utf8.drops(),
        },
        validation_fraction: ic.validation_fraction,
        seed: cfg.seed,
        config_hash: config_hash(cfg, true),
    };
    std::fs::create_dir_all(&settings.dir).map_err(|e| IngestError::write(&settings.dir, e))?;
    let threads = if env.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        env.threads
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| IngestError::write(&settings.dir, e))?;
    let mut per_source: BTreeMap<String, Counts> = ic
        .sources
        .iter()
        .map(|s| (s.name.clone(), Counts::default()))
        .collect();
    let mut parts: Vec<(u32, PathBuf)> = Vec::new();
    let mut resumed_files = 0;
    // Parts are made durable (fsync, rename, marker) on a thread of their own while the next
    // files are read; all of them before the dedup reads the parts.
    std::thread::scope(|scope| -> Result<(), IngestError> {
        let (done_tx, done_rx) = sync_channel::<PendingPart>(4);
        let finisher = scope.spawn(move || -> Result<(), IngestError> {
            for pending in done_rx {
                pending.complete()?;
            }
            Ok(())
        });
        let made = {
            let mut record = |ordinal: u32, marker: &parts::Marker| {
                if let Some(p) = marker.part_path(&settings.dir) {
                    parts.push((ordinal, p));
                }
                let file = &files[ordinal as usize];
                let c = per_source.entry(file.source_name.clone()).or_default();
                c.add(&marker.counts);
                (env.metrics)(
                    u64::from(ordinal),
                    &[
                        ("ingest/file/docs_in", marker.counts.docs_in as f64),
                        ("ingest/file/docs_kept", marker.counts.docs_kept as f64),
                        ("ingest/file/bytes_in", marker.counts.bytes_in as f64),
                        ("ingest/elapsed_s", started.elapsed().as_secs_f64()),
                    ],
                );
            };
            let mut to_build = Vec::new();
            for (ordinal, file) in files.iter().enumerate() {
                let ordinal = ordinal as u32;
                match parts::complete_part(&settings, ordinal, file) {
                    Some(marker) => {
                        resumed_files += 1;
                        record(ordinal, &marker);
                    }
                    None => to_build.push((ordinal, file)),
                }
            }
            parts::build_parts(
                &settings,
                &to_build,
                &pool,
                env.cancelled,
                &mut |ordinal, marker, pending| {
                    // A failed send: the finisher failed, and its error is returned below.
                    let sent = done_tx.send(pending).is_ok();
                    if sent {
                        record(ordinal, &marker);
                    }
                    sent
                },
            )
        };
        drop(done_tx);
        let finished = finisher.join().map_err(|_| IngestError::Write {
            path: settings.dir.clone(),
            message: "the part finisher thread panicked".to_string(),
        })?;
        made.and(finished)
    })?;
    parts.sort_by_key(|(ordinal, _)| *ordinal);
    if (env.cancelled)() {
        return Err(IngestError::Interrupted);
    }
    let parts_s = started.elapsed().as_secs_f64();
    let parts_cpu = cpu_seconds();

    // 3. Dedup across all sources, split and weighted mix (polars over the parts' index columns).
    let weights: BTreeMap<String, f64> = ic
        .sources
        .iter()
        .map(|s| (s.name.clone(), s.weight))
        .collect();
    let part_paths: Vec<PathBuf> = parts.iter().map(|(_, p)| p.clone()).collect();
    let (plan, outcome) = dedup::plan(&part_paths, ic.dedup, &weights)?;
    for (name, o) in &outcome {
        let c = per_source.entry(name.clone()).or_default();
        c.duplicates = o.duplicates;
        c.docs_out = o.docs_out;
        c.bytes_out = o.bytes_out;
        c.docs_val = o.docs_val;
    }
    let mut totals = Counts::default();
    per_source.values().for_each(|c| totals.add(c));

    // 4. An empty corpus is an error, not an empty artifact.
    let seconds_so_far = started.elapsed().as_secs_f64();
    let plan_s = seconds_so_far - parts_s;
    let plan_cpu = cpu_seconds();
    if plan.total_rows() == 0 {
        eprintln!("{}", report::table(&per_source, &totals, seconds_so_far));
        return Err(IngestError::EmptyCorpus {
            read: totals.docs_in,
            files: files.len(),
        });
    }

    // 5. Shards, then the manifest (after clearing what a failed earlier attempt may have left).
    let _ = std::fs::remove_dir_all(env.out_dir.join("shards"));
    let _ = std::fs::remove_file(env.out_dir.join(MANIFEST_FILE));
    let shard_settings = ShardSettings {
        shard_bytes: ic.shard_bytes,
        row_group_bytes: ic.row_group_bytes,
        row_group_rows: ic.row_group_rows,
        zstd_level: ic.zstd_level,
    };
    let shard_entries = shards::write_shards(env.out_dir, shard_settings, &parts, &plan, &pool)?;
    let manifest = Manifest {
        format: 1,
        shard_indices: vec![ic.shard_index],
        shard_count: ic.shard_count,
        config_hash: config_hash(cfg, false),
        columns: shards::shard_schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect(),
        shards: shard_entries,
        sources: ic
            .sources
            .iter()
            .map(|s| {
                let entry = SourceEntry {
                    license: s.license.clone(),
                    weight: s.weight,
                    counts: per_source.get(&s.name).cloned().unwrap_or_default(),
                };
                (s.name.clone(), entry)
            })
            .collect(),
        totals: totals.clone(),
    };
    manifest.write(&env.out_dir.join(MANIFEST_FILE))?;

    // 6. Metrics and the table.
    let seconds = started.elapsed().as_secs_f64();
    let phases = vec![
        ("parts", parts_s),
        ("plan", plan_s),
        ("shards", seconds - parts_s - plan_s),
    ];
    let phase_cpu = match (cpu_started, parts_cpu, plan_cpu, cpu_seconds()) {
        (Some(a), Some(b), Some(c), Some(d)) => {
            vec![("parts", b - a), ("plan", c - b), ("shards", d - c)]
        }
        _ => Vec::new(),
    };
    for (name, c) in &per_source {
        log_counts(env, &format!("ingest/source/{name}"), c);
    }
    log_counts(env, "ingest/total", &totals);
    (env.metrics)(
        0,
        &[
            ("ingest/seconds", seconds),
            (
                "ingest/mb_per_s",
                totals.bytes_in as f64 / 1e6 / seconds.max(1e-9),
            ),
            ("ingest/shards", manifest.shards.len() as f64),
            ("ingest/resumed_files", resumed_files as f64),
        ],
    );
    let table = report::table(&per_source, &totals, seconds);
    eprintln!("{table}");
    Ok(IngestSummary {
        manifest,
        resumed_files,
        seconds,
        phases,
        phase_cpu,
        table,
    })
}

fn log_counts(env: &IngestEnv<'_>, prefix: &str, c: &Counts) {
    let m = c.metrics(prefix);
    let refs: Vec<(&str, f64)> = m.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    (env.metrics)(0, &refs);
}

/// CPU seconds (user + system, all threads) this process has used so far, from
/// `getrusage(RUSAGE_SELF)` (Linux and macOS; `None` where unavailable).
pub fn cpu_seconds() -> Option<f64> {
    tardbot_core::memory::cpu_seconds()
}
