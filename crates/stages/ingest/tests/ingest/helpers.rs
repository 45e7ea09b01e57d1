//! Test helpers: a temporary directory with a pipeline config, direct calls of the ingest, and a
//! run of [`IngestStage`] inside a real [`StageContext`] (ledger, run, attempt, metrics writer) —
//! usable as a template by other stage crates.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use tardbot_core::config::PipelineConfig;
use tardbot_ingest::IngestError;
use tardbot_ingest::stage::{IngestEnv, IngestSummary, ingest};
use tardbot_ledger::{AttemptStatus, Ledger, MetricsWriter, NewRun};
use tardbot_stage::{CancelToken, Stage, StageContext, StageError, StageOutput};

pub struct TestDir(tempfile::TempDir);

impl TestDir {
    pub fn new() -> TestDir {
        TestDir(tempfile::tempdir().expect("tempdir"))
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.0.path().join(rel)
    }

    /// A validated config whose relative paths resolve in this directory.
    pub fn config(&self, ingest_toml: &str) -> PipelineConfig {
        let text = format!("[model]\npreset = \"tiny\"\n{ingest_toml}");
        PipelineConfig::from_text(&text, &self.path("pipeline.toml"), self.0.path())
            .unwrap_or_else(|e| panic!("test config is valid: {e}"))
    }

    /// A config that skips the semantic checks (to reach the stage's own handling of bad paths).
    pub fn config_unchecked(&self, ingest_toml: &str) -> PipelineConfig {
        let text = format!("[model]\npreset = \"tiny\"\n{ingest_toml}");
        let mut cfg: PipelineConfig =
            toml::from_str(&text).unwrap_or_else(|e| panic!("test config parses: {e}"));
        cfg.base_dir = self.0.path().to_path_buf();
        cfg
    }

    pub fn ingest(&self, cfg: &PipelineConfig, out: &str) -> Result<IngestSummary, IngestError> {
        self.ingest_with_work(cfg, out, "work")
    }

    pub fn ingest_with_work(
        &self,
        cfg: &PipelineConfig,
        out: &str,
        work: &str,
    ) -> Result<IngestSummary, IngestError> {
        self.ingest_env(cfg, out, work, &|| false)
    }

    pub fn ingest_env(
        &self,
        cfg: &PipelineConfig,
        out: &str,
        work: &str,
        cancelled: &(dyn Fn() -> bool + Sync),
    ) -> Result<IngestSummary, IngestError> {
        let (out, work) = (self.path(out), self.path(work));
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out).expect("out dir");
        std::fs::create_dir_all(&work).expect("work dir");
        let env = IngestEnv {
            out_dir: &out,
            work_dir: &work,
            threads: 2,
            cancelled,
            metrics: &|_, _| {},
        };
        ingest(cfg, &env)
    }
}

/// Runs [`tardbot_ingest::IngestStage`] the way the orchestrator does: a ledger in the test
/// directory, a run and an attempt, a metrics writer, the stage on a blocking thread. Returns the
/// stage's result and how many metric rows reached the ledger.
pub fn run_stage_in_ledger(
    t: &TestDir,
    cfg: PipelineConfig,
) -> (Result<StageOutput, StageError>, i64) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let db = t.path("ledger.db");
    let (out, work, run_dir) = (t.path("run/out"), t.path("run/work"), t.path("run"));
    std::fs::create_dir_all(&out).expect("out");
    std::fs::create_dir_all(&work).expect("work");
    rt.block_on(async move {
        let ledger = Ledger::open(&db).await.expect("ledger opens");
        let run = ledger
            .create_run(NewRun {
                config_toml: "",
                config_hash: "test",
                config_dir: ".",
                target_stages: &[],
            })
            .await
            .expect("run");
        let stage = tardbot_ingest::IngestStage;
        let fp = stage.fingerprint(&cfg, &[]);
        let attempt = ledger
            .start_attempt(
                run.id,
                stage.name(),
                &fp,
                AttemptStatus::Running,
                None,
                None,
            )
            .await
            .expect("attempt");
        let metrics = MetricsWriter::spawn(ledger.clone());
        let ctx = StageContext::new(
            run.id,
            attempt.id,
            "ingest",
            Arc::new(cfg),
            run_dir,
            out,
            work,
            BTreeMap::new(),
            None,
            2,
            ledger.clone(),
            CancelToken::default(),
            metrics,
            tokio::runtime::Handle::current(),
        );
        let result = tokio::task::spawn_blocking(move || stage.run(&ctx))
            .await
            .expect("stage thread");
        let n = ledger.metric_count().await.expect("metric count");
        (result, n)
    })
}
