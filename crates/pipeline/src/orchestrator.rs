//! Executes a run: the stage graph in dependency order, concurrently where it allows.
//!
//! For each stage whose inputs are done: compute its fingerprint; if a succeeded attempt with the
//! same fingerprint exists (in any run) and its artifacts are still on disk, record a `cached`
//! attempt and reuse them; otherwise start a `running` attempt — resuming from the newest complete
//! checkpoint whose files verify — on a blocking thread, within the resource budget. On success the
//! staging directory is fsynced, renamed into place and its artifacts recorded in the same
//! transaction that marks the attempt succeeded. Ctrl-C (or SIGTERM) asks stages to stop at a safe
//! point; their attempts end `interrupted` and the run can be resumed.

use crate::dag::{self, DagError, Plan};
use crate::lock::{self, LockError, RunLock};
use crate::logging;
use crate::registry::Registry;
use crate::workspace::{Workspace, fsync_dir};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tardbot_core::PipelineConfig;
use tardbot_core::config::ConfigError;
use tardbot_core::hash;
use tardbot_ledger::{
    Artifact, AttemptStatus, Checkpoint, Ledger, LedgerError, MetricsWriter, NewArtifact, NewRun,
    Run, RunStatus,
};
use tardbot_stage::{CancelToken, Stage, StageContext, StageError, StageOutput};
use tokio::task::JoinSet;
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Dag(#[from] DagError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("run {run}: a stage's task ended without a result ({why})")]
    Scheduler { run: String, why: String },
}

/// How a run ended.
#[derive(Debug)]
pub struct RunOutcome {
    pub run: Run,
    pub status: RunStatus,
    pub elapsed: Duration,
    /// Per stage of the plan: its final state in this invocation.
    pub stages: Vec<(String, AttemptStatus)>,
}

/// Options of `run` and `resume`.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Stages to execute even when a cached result exists (`all` forces every stage).
    pub force: Vec<String>,
}

impl RunOptions {
    fn forced(&self, stage: &str) -> bool {
        self.force.iter().any(|f| f == stage || f == "all")
    }
}

pub struct Orchestrator {
    pub registry: Registry,
    pub workspace: Workspace,
    pub ledger: Ledger,
}

struct Finished {
    stage: &'static str,
    threads: usize,
    exclusive: bool,
    status: AttemptStatus,
    artifacts: Vec<Artifact>,
}

enum Slot {
    Pending,
    Running,
    Done(AttemptStatus, Vec<Artifact>),
    Stopped(AttemptStatus),
}

impl Orchestrator {
    pub async fn open(
        registry: Registry,
        workspace: Workspace,
    ) -> Result<Orchestrator, OrchestratorError> {
        let ledger = Ledger::open(&workspace.ledger_path()).await?;
        Ok(Orchestrator {
            registry,
            workspace,
            ledger,
        })
    }

    /// `run all` / `run STAGE`: a new run of `targets` and their upstream.
    pub async fn run(
        &self,
        config: PipelineConfig,
        config_text: &str,
        targets: &[String],
        options: &RunOptions,
    ) -> Result<RunOutcome, OrchestratorError> {
        // Plan before recording anything: a bad target never creates a run.
        let plan = dag::plan(&self.registry, &config, targets)?;
        let base =
            std::path::absolute(&config.base_dir).unwrap_or_else(|_| config.base_dir.clone());
        let run = self
            .ledger
            .create_run(NewRun {
                config_toml: config_text,
                config_hash: &hash::hash_bytes(config_text.as_bytes()),
                config_dir: &base.to_string_lossy(),
                target_stages: targets,
            })
            .await?;
        info!(run = %run.name, stages = ?plan.names(), "run created");
        self.drive(run, config, plan, options).await
    }

    /// `resume RUN`: continues a run with its recorded config; finished stages are not run again.
    pub async fn resume(
        &self,
        name: &str,
        options: &RunOptions,
    ) -> Result<RunOutcome, OrchestratorError> {
        let run = self.ledger.run(name).await?;
        let label = PathBuf::from(format!(
            "{} (recorded config of {})",
            run.config_dir, run.name
        ));
        let config =
            self.registry
                .config_from_text(&run.config_toml, &label, Path::new(&run.config_dir))?;
        let plan = dag::plan(&self.registry, &config, &run.target_stages)?;
        info!(run = %run.name, "resuming");
        self.drive(run, config, plan, options).await
    }

    async fn drive(
        &self,
        run: Run,
        config: PipelineConfig,
        plan: Plan,
        options: &RunOptions,
    ) -> Result<RunOutcome, OrchestratorError> {
        let started = Instant::now();
        let run_dir = self.workspace.run_dir(&run.name);
        let _lock = RunLock::acquire(&run_dir, &run.name)?;
        if let Err(e) = logging::log_to_run_dir(&run_dir) {
            warn!(error = %e, "cannot write the run's log.jsonl");
        }
        // Attempts a killed process left `running` are ours to close now that we hold the lock.
        let orphans = self.ledger.mark_orphans_interrupted(run.id).await?;
        if orphans > 0 {
            info!(run = %run.name, attempts = orphans, "marked attempts of a killed process as interrupted");
        }
        self.ledger
            .claim_run(run.id, &lock::hostname(), std::process::id())
            .await?;
        self.ledger
            .event(
                Some(run.id),
                None,
                "run_started",
                &serde_json::json!({"pid": std::process::id(), "stages": plan.names()}),
            )
            .await?;

        let cancel = CancelToken::default();
        let heartbeat = spawn_heartbeat(self.ledger.clone(), run.id);
        let signals = spawn_signal_handler(cancel.clone());
        let metrics = MetricsWriter::spawn(self.ledger.clone());
        let result = self
            .schedule(&run, Arc::new(config), &plan, options, &cancel, &metrics)
            .await;
        heartbeat.abort();
        signals.abort();
        let _ = metrics.flush().await;

        let stages = result?;
        let status = if cancel.is_cancelled() {
            RunStatus::Interrupted
        } else if stages.iter().all(|(_, s)| s.is_done()) {
            RunStatus::Succeeded
        } else {
            RunStatus::Failed
        };
        self.ledger.finish_run(run.id, status).await?;
        self.ledger
            .event(
                Some(run.id),
                None,
                "run_ended",
                &serde_json::json!({"status": status.as_str()}),
            )
            .await?;
        let run = self.ledger.run(&run.name).await?;
        Ok(RunOutcome {
            run,
            status,
            elapsed: started.elapsed(),
            stages,
        })
    }

    /// The scheduling loop: start every ready stage the budget allows, wait for one to finish, repeat.
    async fn schedule(
        &self,
        run: &Run,
        config: Arc<PipelineConfig>,
        plan: &Plan,
        options: &RunOptions,
        cancel: &CancelToken,
        metrics: &MetricsWriter,
    ) -> Result<Vec<(String, AttemptStatus)>, OrchestratorError> {
        let mut slots: HashMap<&'static str, Slot> = plan
            .stages
            .iter()
            .map(|s| (s.name(), Slot::Pending))
            .collect();
        for a in self.ledger.attempts(run.id).await? {
            if a.status.is_done()
                && let Some(stage) = plan.get(&a.stage)
            {
                let artifacts = self.ledger.artifacts(a.id).await?;
                info!(stage = %a.stage, "already done in this run");
                slots.insert(stage.name(), Slot::Done(a.status, artifacts));
            }
        }
        let budget = config.execution.thread_budget();
        let max_parallel = config.execution.max_parallel_stages.max(1);
        let mut used_threads = 0;
        let mut exclusive_running = false;
        let mut failed = false;
        let mut running: JoinSet<Result<Finished, OrchestratorError>> = JoinSet::new();

        loop {
            let mut started_any = true;
            while started_any && !failed && !cancel.is_cancelled() {
                started_any = false;
                for stage in &plan.stages {
                    let name = stage.name();
                    if !matches!(slots.get(name), Some(Slot::Pending)) {
                        continue;
                    }
                    let Some(inputs) = ready_inputs(stage.as_ref(), &slots) else {
                        continue;
                    };
                    let flat: Vec<Artifact> = inputs.values().flatten().cloned().collect();
                    let fingerprint = stage.fingerprint(&config, &flat);
                    if !options.forced(name)
                        && let Some(artifacts) =
                            self.try_cache(run, name, &fingerprint, &flat).await?
                    {
                        slots.insert(name, Slot::Done(AttemptStatus::Cached, artifacts));
                        started_any = true;
                        continue;
                    }
                    let mut res = stage.resources(&config);
                    if let Some(t) = config.execution.for_stage(name).threads {
                        res.threads = t;
                    }
                    let threads = if res.threads == 0 {
                        budget
                    } else {
                        res.threads.min(budget)
                    };
                    let fits = running.len() < max_parallel
                        && !exclusive_running
                        && (running.is_empty()
                            || (!res.exclusive && used_threads + threads <= budget));
                    if !fits {
                        continue;
                    }
                    used_threads += threads;
                    exclusive_running |= res.exclusive;
                    slots.insert(name, Slot::Running);
                    let job = AttemptJob {
                        ledger: self.ledger.clone(),
                        workspace: self.workspace.clone(),
                        run: run.clone(),
                        stage: Arc::clone(stage),
                        config: Arc::clone(&config),
                        fingerprint,
                        inputs,
                        threads,
                        exclusive: res.exclusive,
                        cancel: cancel.clone(),
                        metrics: metrics.clone(),
                    };
                    running.spawn(job.execute());
                    started_any = true;
                }
            }
            let Some(joined) = running.join_next().await else {
                break;
            };
            let finished = match joined {
                Ok(r) => r?,
                Err(e) => {
                    return Err(OrchestratorError::Scheduler {
                        run: run.name.clone(),
                        why: e.to_string(),
                    });
                }
            };
            used_threads -= finished.threads;
            if finished.exclusive {
                exclusive_running = false;
            }
            let slot = if finished.status == AttemptStatus::Succeeded {
                Slot::Done(finished.status, finished.artifacts)
            } else {
                failed |= finished.status == AttemptStatus::Failed;
                Slot::Stopped(finished.status)
            };
            slots.insert(finished.stage, slot);
        }

        Ok(plan
            .stages
            .iter()
            .map(|s| {
                let status = match slots.get(s.name()) {
                    Some(Slot::Done(st, _)) | Some(Slot::Stopped(st)) => *st,
                    // Never started: an upstream failure or an interrupt stopped the run first.
                    _ => AttemptStatus::Interrupted,
                };
                (s.name().to_string(), status)
            })
            .collect())
    }

    /// A succeeded attempt with this fingerprint whose artifacts are all still on disk, reused by
    /// recording a `cached` attempt in this run.
    async fn try_cache(
        &self,
        run: &Run,
        stage: &str,
        fingerprint: &str,
        inputs: &[Artifact],
    ) -> Result<Option<Vec<Artifact>>, OrchestratorError> {
        let Some(previous) = self.ledger.find_succeeded(stage, fingerprint).await? else {
            return Ok(None);
        };
        let artifacts = self.ledger.artifacts(previous.id).await?;
        if let Some(missing) = artifacts.iter().find(|a| !artifact_present(a)) {
            warn!(stage, path = %missing.path, "cached artifact is gone or changed size; running the stage again");
            return Ok(None);
        }
        let attempt = self
            .ledger
            .start_attempt(
                run.id,
                stage,
                fingerprint,
                AttemptStatus::Cached,
                None,
                Some(previous.id),
            )
            .await?;
        self.ledger
            .record_inputs(attempt.id, &inputs.iter().map(|a| a.id).collect::<Vec<_>>())
            .await?;
        info!(stage, from_attempt = previous.id, "cached");
        Ok(Some(artifacts))
    }
}

/// The artifacts of every input stage, once all of them are done.
fn ready_inputs(
    stage: &dyn Stage,
    slots: &HashMap<&'static str, Slot>,
) -> Option<BTreeMap<String, Vec<Artifact>>> {
    let mut inputs = BTreeMap::new();
    for input in stage.inputs() {
        match slots.get(input) {
            Some(Slot::Done(_, artifacts)) => {
                inputs.insert(input.to_string(), artifacts.clone());
            }
            _ => return None,
        }
    }
    Some(inputs)
}

fn artifact_present(a: &Artifact) -> bool {
    match std::fs::metadata(&a.path) {
        Ok(m) if m.is_dir() => true,
        Ok(m) => m.len() == a.bytes as u64,
        Err(_) => false,
    }
}

/// One attempt of one stage, run as its own task.
struct AttemptJob {
    ledger: Ledger,
    workspace: Workspace,
    run: Run,
    stage: Arc<dyn Stage>,
    config: Arc<PipelineConfig>,
    fingerprint: String,
    inputs: BTreeMap<String, Vec<Artifact>>,
    threads: usize,
    exclusive: bool,
    cancel: CancelToken,
    metrics: MetricsWriter,
}

impl AttemptJob {
    async fn execute(self) -> Result<Finished, OrchestratorError> {
        let name = self.stage.name();
        let stage_dir = self.workspace.stage_dir(&self.run.name, name);
        let work_dir = stage_dir.join("work");
        std::fs::create_dir_all(&work_dir).map_err(|source| OrchestratorError::Io {
            what: "cannot create",
            path: work_dir.clone(),
            source,
        })?;
        let resume = self.resume_point().await?;
        let attempt = self
            .ledger
            .start_attempt(
                self.run.id,
                name,
                &self.fingerprint,
                AttemptStatus::Running,
                resume.as_ref().map(|c| c.id),
                None,
            )
            .await?;
        let input_ids: Vec<i64> = self.inputs.values().flatten().map(|a| a.id).collect();
        self.ledger.record_inputs(attempt.id, &input_ids).await?;

        // Staging directories of earlier, killed attempts never count: start clean.
        clear_staging(&stage_dir);
        let staging = stage_dir.join(format!("attempt-{}.staging", attempt.attempt));
        std::fs::create_dir_all(&staging).map_err(|source| OrchestratorError::Io {
            what: "cannot create",
            path: staging.clone(),
            source,
        })?;
        match &resume {
            Some(c) => info!(
                stage = name,
                attempt = attempt.attempt,
                from_step = c.step,
                "started (resuming)"
            ),
            None => info!(stage = name, attempt = attempt.attempt, "started"),
        }

        let started = Instant::now();
        let ctx = StageContext::new(
            self.run.id,
            attempt.id,
            name,
            Arc::clone(&self.config),
            self.workspace.run_dir(&self.run.name),
            staging.clone(),
            work_dir,
            self.inputs.clone(),
            resume,
            self.threads,
            self.ledger.clone(),
            self.cancel.clone(),
            self.metrics.clone(),
            tokio::runtime::Handle::current(),
        );
        let stage = Arc::clone(&self.stage);
        // Every stage runs in a pool of its threads: the kernels, matmuls and data-parallel loops of
        // a stage never use more cores than the budget gave it (`[execution] threads`).
        let outcome = tokio::task::spawn_blocking(move || {
            match rayon::ThreadPoolBuilder::new()
                .num_threads(ctx.threads)
                .thread_name(move |i| format!("{name}-{i}"))
                .build()
            {
                Ok(pool) => pool.install(|| stage.run(&ctx)),
                Err(e) => Err(StageError::failed(format!(
                    "cannot start {} threads: {e}",
                    ctx.threads
                ))),
            }
        })
        .await;
        let _ = self.metrics.flush().await;
        let elapsed = started.elapsed().as_secs_f64();

        let (status, artifacts) = match outcome {
            Ok(Ok(output)) => match self
                .publish(attempt.id, &staging, &stage_dir, &output)
                .await
            {
                Ok(artifacts) => {
                    info!(
                        stage = name,
                        seconds = format!("{elapsed:.2}"),
                        artifacts = artifacts.len(),
                        "succeeded"
                    );
                    (AttemptStatus::Succeeded, artifacts)
                }
                Err(e) => {
                    let msg = format!("publishing outputs failed: {}", error_chain(e.as_ref()));
                    self.fail(attempt.id, &msg).await?;
                    (AttemptStatus::Failed, vec![])
                }
            },
            Ok(Err(StageError::Interrupted(step))) => {
                let msg = format!(
                    "interrupted by request{}",
                    step.map(|s| format!(" at step {s}")).unwrap_or_default()
                );
                warn!(stage = name, "{msg}");
                self.ledger
                    .finish_attempt(attempt.id, AttemptStatus::Interrupted, Some(&msg))
                    .await?;
                (AttemptStatus::Interrupted, vec![])
            }
            Ok(Err(StageError::Failed(e))) => {
                self.fail(attempt.id, &error_chain(e.as_ref())).await?;
                (AttemptStatus::Failed, vec![])
            }
            Err(join) => {
                self.fail(attempt.id, &format!("stage panicked: {join}"))
                    .await?;
                (AttemptStatus::Failed, vec![])
            }
        };
        Ok(Finished {
            stage: name,
            threads: self.threads,
            exclusive: self.exclusive,
            status,
            artifacts,
        })
    }

    async fn fail(&self, attempt_id: i64, message: &str) -> Result<(), OrchestratorError> {
        tracing::error!(stage = self.stage.name(), "failed: {message}");
        self.ledger
            .finish_attempt(attempt_id, AttemptStatus::Failed, Some(message))
            .await?;
        Ok(())
    }

    /// The newest complete checkpoint of this stage in this run whose files still hash to the
    /// recorded value; a corrupt one is reported and skipped in favour of the previous.
    async fn resume_point(&self) -> Result<Option<Checkpoint>, OrchestratorError> {
        for c in self
            .ledger
            .checkpoints(self.run.id, self.stage.name())
            .await?
        {
            let path = PathBuf::from(&c.path);
            let verified = tokio::task::spawn_blocking(move || hash::hash_path(&path)).await;
            match verified {
                Ok(Ok(h)) if h.hex == c.hash => return Ok(Some(c)),
                other => {
                    let why = match other {
                        Ok(Ok(_)) => "hash mismatch".to_string(),
                        Ok(Err(e)) => e.to_string(),
                        Err(e) => e.to_string(),
                    };
                    warn!(stage = self.stage.name(), step = c.step, %why, "checkpoint does not verify; trying an older one");
                    self.ledger
                        .event(
                            Some(self.run.id),
                            None,
                            "checkpoint_rejected",
                            &serde_json::json!({"stage": self.stage.name(), "checkpoint": c.id, "step": c.step, "why": why}),
                        )
                        .await?;
                }
            }
        }
        Ok(None)
    }

    /// fsync the staging directory, rename it to `out/`, hash the artifacts, record them.
    async fn publish(
        &self,
        attempt_id: i64,
        staging: &Path,
        stage_dir: &Path,
        output: &StageOutput,
    ) -> Result<Vec<Artifact>, Box<dyn std::error::Error + Send + Sync>> {
        let out = stage_dir.join("out");
        let (staging, stage_dir, rels) = (
            staging.to_path_buf(),
            stage_dir.to_path_buf(),
            output
                .artifacts
                .iter()
                .map(|a| a.rel_path.clone())
                .collect::<Vec<_>>(),
        );
        let out2 = out.clone();
        let hashes = tokio::task::spawn_blocking(
            move || -> std::io::Result<Vec<(PathBuf, hash::ContentHash)>> {
                hash::fsync_tree(&staging)?;
                if out2.exists() {
                    // Left by a process killed between rename and ledger commit: never recorded.
                    std::fs::remove_dir_all(&out2)?;
                }
                std::fs::rename(&staging, &out2)?;
                fsync_dir(&stage_dir)?;
                rels.iter()
                    .map(|rel| {
                        let p = out2.join(rel);
                        if !p.exists() {
                            return Err(std::io::Error::other(format!(
                                "the stage listed artifact {} but did not write it",
                                rel.display()
                            )));
                        }
                        Ok((p.clone(), hash::hash_path(&p)?))
                    })
                    .collect()
            },
        )
        .await??;
        let paths: Vec<String> = hashes
            .iter()
            .map(|(p, _)| p.to_string_lossy().into_owned())
            .collect();
        let new: Vec<NewArtifact<'_>> = output
            .artifacts
            .iter()
            .zip(&hashes)
            .zip(&paths)
            .map(|((a, (_, h)), path)| NewArtifact {
                kind: &a.kind,
                path,
                hash: &h.hex,
                bytes: h.bytes as i64,
            })
            .collect();
        Ok(self.ledger.publish_outputs(attempt_id, &new).await?)
    }
}

fn clear_staging(stage_dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(stage_dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().ends_with(".staging") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// An error and its sources, `outer: inner: innermost`.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = inner.source();
    }
    s
}

fn spawn_heartbeat(ledger: Ledger, run_id: i64) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            tick.tick().await;
            if let Err(e) = ledger.heartbeat(run_id).await {
                warn!(error = %e, "heartbeat not written");
            }
        }
    })
}

/// First Ctrl-C / SIGTERM: stop at a safe point. Second: exit now (the ledger stays consistent;
/// the attempt is marked interrupted by the next `resume`).
fn spawn_signal_handler(cancel: CancelToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        wait_for_interrupt(&mut term).await;
        warn!("interrupt: stopping at the next safe point (interrupt again to abort now)");
        cancel.cancel();
        wait_for_interrupt(&mut term).await;
        warn!("second interrupt: aborting");
        std::process::exit(130);
    })
}

async fn wait_for_interrupt(term: &mut Option<tokio::signal::unix::Signal>) {
    match term {
        Some(t) => {
            tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = t.recv() => {} }
        }
        None => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
