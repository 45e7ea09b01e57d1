//! The stage contract.
//!
//! A stage declares its upstream stages (whose artifacts it consumes), the slice of `pipeline.toml`
//! its outputs depend on, and how much of the machine it needs; the orchestrator fingerprints it
//! (config slice + input artifact hashes + code version), reuses a succeeded attempt with the same
//! fingerprint, and otherwise calls [`Stage::run`] on a blocking thread with a [`StageContext`].
//!
//! A stage writes its outputs into [`StageContext::out_dir`], a private staging directory. The
//! orchestrator fsyncs it, renames it into place and records the artifacts, with their BLAKE3 hashes,
//! in the same ledger transaction that marks the attempt succeeded: a half-written output never counts.
//! Progress that must survive a crash (checkpoints) goes into [`StageContext::work_dir`], which is kept
//! across attempts of the stage within a run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tardbot_core::PipelineConfig;
use tardbot_core::config::{ConfigProblem, TrainConfig};
use tardbot_core::hash;
use tardbot_ledger::{Artifact, Checkpoint, Eval, Ledger, LedgerError, MetricPoint, MetricsWriter};

/// What a stage needs while it runs; the orchestrator never oversubscribes the budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resources {
    /// Threads the stage keeps busy (0 = all of the budget).
    pub threads: usize,
    /// Runs alone (training stages): nothing else starts while it runs.
    pub exclusive: bool,
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            threads: 1,
            exclusive: false,
        }
    }
}

/// One output of a stage, relative to its output directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputArtifact {
    /// What it is, e.g. `parquet-shard`, `tokenizer`, `token-shard`, `model`.
    pub kind: String,
    /// Path relative to [`StageContext::out_dir`]: a file or a directory.
    pub rel_path: PathBuf,
}

/// What a successful run of a stage produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StageOutput {
    pub artifacts: Vec<OutputArtifact>,
}

impl StageOutput {
    pub fn with(mut self, kind: &str, rel_path: impl Into<PathBuf>) -> Self {
        self.artifacts.push(OutputArtifact {
            kind: kind.to_string(),
            rel_path: rel_path.into(),
        });
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// Cancellation was requested and the stage stopped at a safe point (after checkpointing).
    #[error("interrupted at a safe point{}", .0.map(|s| format!(" (step {s})")).unwrap_or_default())]
    Interrupted(Option<u64>),
    #[error(transparent)]
    Failed(Box<dyn std::error::Error + Send + Sync>),
}

impl StageError {
    pub fn failed(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        StageError::Failed(e.into())
    }
}

impl From<LedgerError> for StageError {
    fn from(e: LedgerError) -> Self {
        StageError::failed(e)
    }
}

impl From<std::io::Error> for StageError {
    fn from(e: std::io::Error) -> Self {
        StageError::failed(e)
    }
}

/// A pipeline stage. Implementations are registered with the orchestrator in `tardbot-pipeline`.
pub trait Stage: Send + Sync + 'static {
    /// The stage's name: its `pipeline.toml` section and its name in the ledger.
    fn name(&self) -> &'static str;

    /// Upstream stages whose artifacts this stage consumes (its edges in the DAG).
    fn inputs(&self) -> &[&'static str];

    /// Whether `pipeline.toml` enables the stage.
    fn enabled(&self, config: &PipelineConfig) -> bool;

    /// Tables of `pipeline.toml` this stage owns beyond `tardbot-core`'s sections, as dotted paths
    /// (`"sft"`, `"data.sft"`); a table no stage owns is a config error.
    fn tables(&self) -> Vec<String> {
        Vec::new()
    }

    /// Problems in the stage's own tables (parsed from the file, with file and line), reported by
    /// `validate` with the core sections' before any run is created.
    fn check_config(&self, _config: &PipelineConfig) -> Vec<ConfigProblem> {
        Vec::new()
    }

    /// The training settings of a stage that trains a model (its `[execution.stages.<stage>]` may
    /// be set; `generate` and `chat` offer its model).
    fn training(&self, _config: &PipelineConfig) -> Option<TrainConfig> {
        None
    }

    /// The part of the configuration the outputs depend on. Part of the fingerprint.
    fn config_slice(&self, config: &PipelineConfig) -> serde_json::Value;

    /// Bump when a code change alters the stage's outputs, to invalidate cached results.
    fn version(&self) -> u32 {
        1
    }

    fn resources(&self, _config: &PipelineConfig) -> Resources {
        Resources::default()
    }

    /// The stage's cache key: config slice, input artifact hashes and code version.
    fn fingerprint(&self, config: &PipelineConfig, inputs: &[Artifact]) -> String {
        let mut hashes: Vec<&str> = inputs.iter().map(|a| a.hash.as_str()).collect();
        hashes.sort_unstable();
        let key = serde_json::json!({
            "stage": self.name(),
            "version": self.version(),
            "crate": env!("CARGO_PKG_VERSION"),
            "config": self.config_slice(config),
            "inputs": hashes,
        });
        hash::hash_bytes(key.to_string().as_bytes())
    }

    /// Does the work. Runs on a blocking thread; poll [`StageContext::cancelled`] at safe points.
    fn run(&self, ctx: &StageContext) -> Result<StageOutput, StageError>;
}

/// Cooperative cancellation (Ctrl-C): set once, polled by stages at safe points.
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Everything a running stage gets from the orchestrator.
pub struct StageContext {
    pub run_id: i64,
    pub attempt_id: i64,
    pub stage: &'static str,
    pub config: Arc<PipelineConfig>,
    /// `<workspace>/runs/<run>`.
    pub run_dir: PathBuf,
    /// Staging directory for this attempt's outputs; published atomically on success.
    pub out_dir: PathBuf,
    /// Kept across attempts of this stage in this run: checkpoints and partial progress.
    pub work_dir: PathBuf,
    /// Artifacts of each upstream stage, by stage name.
    pub inputs: BTreeMap<String, Vec<Artifact>>,
    /// The newest complete checkpoint of this stage in this run whose files verify, if any.
    pub resume: Option<Checkpoint>,
    /// Threads this stage may keep busy.
    pub threads: usize,
    pub ledger: Ledger,
    pub cancel: CancelToken,
    pub(crate) metrics: MetricsWriter,
    pub(crate) runtime: tokio::runtime::Handle,
}

impl StageContext {
    /// Built by the orchestrator.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        run_id: i64,
        attempt_id: i64,
        stage: &'static str,
        config: Arc<PipelineConfig>,
        run_dir: PathBuf,
        out_dir: PathBuf,
        work_dir: PathBuf,
        inputs: BTreeMap<String, Vec<Artifact>>,
        resume: Option<Checkpoint>,
        threads: usize,
        ledger: Ledger,
        cancel: CancelToken,
        metrics: MetricsWriter,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        StageContext {
            run_id,
            attempt_id,
            stage,
            config,
            run_dir,
            out_dir,
            work_dir,
            inputs,
            resume,
            threads,
            ledger,
            cancel,
            metrics,
            runtime,
        }
    }

    /// True once the user asked to stop: checkpoint, then return [`StageError::Interrupted`].
    pub fn cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Artifacts of one upstream stage (empty if it produced none).
    pub fn input(&self, stage: &str) -> &[Artifact] {
        self.inputs.get(stage).map_or(&[], Vec::as_slice)
    }

    /// Logs metrics for a step without waiting: written in batches by a background task.
    pub fn log_metrics(&self, step: u64, values: &[(&str, f64)]) {
        self.metrics.log(
            values
                .iter()
                .map(|(k, v)| MetricPoint {
                    attempt_id: self.attempt_id,
                    key: (*k).to_string(),
                    step: step as i64,
                    value: *v,
                })
                .collect(),
        );
    }

    /// Waits until every logged metric is committed (before a checkpoint is recorded).
    pub fn flush_metrics(&self) -> Result<(), LedgerError> {
        self.runtime.block_on(self.metrics.flush())
    }

    /// Appends an event to the run's log.
    pub fn event(&self, kind: &str, payload: serde_json::Value) -> Result<(), LedgerError> {
        self.runtime.block_on(self.ledger.event(
            Some(self.run_id),
            Some(self.attempt_id),
            kind,
            &payload,
        ))
    }

    /// Records a checkpoint whose files under `path` are complete: fsyncs and hashes them first.
    /// Metrics logged so far are flushed, so a resumed attempt never lacks a step's metrics.
    pub fn record_checkpoint(
        &self,
        step: u64,
        tokens: u64,
        path: &Path,
    ) -> Result<Checkpoint, StageError> {
        hash::fsync_tree(path)?;
        let h = hash::hash_path(path)?;
        self.flush_metrics()?;
        Ok(self.runtime.block_on(self.ledger.record_checkpoint(
            self.attempt_id,
            step as i64,
            tokens as i64,
            &path.to_string_lossy(),
            &h.hex,
            h.bytes as i64,
        ))?)
    }

    /// Records one eval figure (e.g. validation loss) at `step`.
    pub fn record_eval(
        &self,
        checkpoint_id: Option<i64>,
        step: u64,
        suite: &str,
        metric: &str,
        value: f64,
        samples: usize,
    ) -> Result<(), LedgerError> {
        self.runtime.block_on(self.ledger.record_eval(&Eval {
            attempt_id: self.attempt_id,
            checkpoint_id,
            step: step as i64,
            suite: suite.to_string(),
            metric: metric.to_string(),
            value: Some(value),
            samples: samples as i64,
        }))
    }

    /// A progress bar on stderr, hidden when stderr is not a terminal.
    pub fn progress(&self, len: u64, what: &str) -> indicatif::ProgressBar {
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(len),
            indicatif::ProgressDrawTarget::stderr(),
        );
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{prefix:>10} {bar:30} {pos}/{len} {msg} [{elapsed}<{eta}]",
        ) {
            bar.set_style(style);
        }
        bar.set_prefix(self.stage);
        bar.set_message(what.to_string());
        bar
    }
}
