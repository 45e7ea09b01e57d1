//! `export`: a run's trained model written for Hugging Face transformers or llama.cpp, recorded in
//! the ledger as an `export` attempt of the run whose inputs are the stage's model and tokenizer
//! artifacts (lineage) and whose output is the export.

use crate::inference::{RunModelFiles, run_config, run_model_files, stage_steps};
use crate::registry::Registry;
use anyhow::Context as _;
use std::path::{Path, PathBuf};
use tardbot_export::{CardEval, CardStage, ExportDtype, Format, ModelCard, SourceModel};
use tardbot_ledger::{AttemptStatus, Ledger, NewArtifact, Run};

/// What `export` wrote.
pub struct Exported {
    pub stage: String,
    pub files: Vec<PathBuf>,
    pub attempt_id: i64,
}

pub async fn export(
    registry: &Registry,
    ledger: &Ledger,
    run: &Run,
    stage: Option<&str>,
    format: Format,
    dtype: ExportDtype,
    out: &Path,
) -> anyhow::Result<Exported> {
    let files = run_model_files(registry, ledger, run, stage).await?;
    let card = model_card(registry, ledger, run, &files).await?;
    let fingerprint = blake3::hash(
        format!(
            "{}\n{}\n{}\n{}",
            files.weights.hash,
            files.tokenizer.hash,
            format.name(),
            dtype.name()
        )
        .as_bytes(),
    )
    .to_hex()
    .to_string();
    let attempt = ledger
        .start_attempt(
            run.id,
            "export",
            &fingerprint,
            AttemptStatus::Running,
            None,
            None,
        )
        .await?;
    ledger
        .record_inputs(attempt.id, &[files.weights.id, files.tokenizer.id])
        .await?;
    let out_abs = std::path::absolute(out).unwrap_or_else(|_| out.to_path_buf());
    let (weights, model_json, tokenizer) = (
        PathBuf::from(&files.weights.path),
        PathBuf::from(&files.model_config.path),
        PathBuf::from(&files.tokenizer.path),
    );
    let target = out_abs.clone();
    let written = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<PathBuf>> {
        let src = SourceModel::load(&weights, &model_json, &tokenizer)?;
        Ok(tardbot_export::export(&src, &card, format, dtype, &target)?)
    })
    .await
    .context("the export task panicked")
    .and_then(|r| r);
    let written = match written {
        Ok(w) => w,
        Err(e) => {
            let msg = format!("{e:#}");
            ledger
                .finish_attempt(attempt.id, AttemptStatus::Failed, Some(&msg))
                .await?;
            return Err(e);
        }
    };
    // The artifact is the export directory; its hash is the main file's (the weights).
    let main = written
        .iter()
        .find(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("safetensors" | "gguf")
            )
        })
        .context("the export wrote no weights file")?;
    let hash = blake3::Hasher::new()
        .update_mmap(main)
        .with_context(|| format!("hashing {}", main.display()))?
        .finalize()
        .to_hex()
        .to_string();
    let bytes: u64 = written
        .iter()
        .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .sum();
    let kind = format!("export-{}-{}", format.name(), dtype.name());
    ledger
        .publish_outputs(
            attempt.id,
            &[NewArtifact {
                kind: &kind,
                path: &out_abs.to_string_lossy(),
                hash: &hash,
                bytes: bytes as i64,
            }],
        )
        .await?;
    Ok(Exported {
        stage: files.stage,
        files: written,
        attempt_id: attempt.id,
    })
}

/// The model card's facts, from the run's recorded config and ledger.
async fn model_card(
    registry: &Registry,
    ledger: &Ledger,
    run: &Run,
    files: &RunModelFiles,
) -> anyhow::Result<ModelCard> {
    let cfg = run_config(registry, run);
    let mut data = Vec::new();
    if let Some(cfg) = &cfg {
        for s in &cfg.ingest.sources {
            data.push(format!(
                "pretraining source `{}`: `{}` ({:?})",
                s.name,
                s.path.display(),
                s.format
            ));
        }
    }
    let attempts = ledger.attempts(run.id).await?;
    let mut stages: Vec<CardStage> = Vec::new();
    for a in attempts.iter().filter(|a| a.stage != "export") {
        let secs = a.ended_ms.map(|e| (e - a.started_ms) as f64 / 1000.0);
        let mut summary = Vec::new();
        let steps = stage_steps(registry, run, &a.stage);
        if steps > 0 {
            summary.push(format!("{steps} steps"));
        }
        if let Some(s) = secs {
            summary.push(format!("{s:.1} s"));
        }
        if a.cached_from.is_some() {
            summary.push("reused from an earlier identical attempt".into());
        }
        let row = CardStage {
            name: a.stage.clone(),
            status: a.status.as_str().to_string(),
            summary: summary.join(", "),
        };
        // One row per stage: its latest attempt.
        match stages.iter_mut().find(|s| s.name == a.stage) {
            Some(s) => *s = row,
            None => stages.push(row),
        }
    }
    let evals = ledger
        .stage_evals(run.id)
        .await?
        .into_iter()
        .filter_map(|e| {
            e.after.map(|v| CardEval {
                stage: e.stage,
                suite: e.suite,
                metric: e.metric,
                // One eval (no before/after pair) shows as after only.
                before: e.before.filter(|_| e.evals > 1),
                value: v,
                n: e.samples,
            })
        })
        .collect();
    Ok(ModelCard {
        run: run.name.clone(),
        stage: files.stage.clone(),
        preset: cfg.map(|c| c.model.preset),
        data,
        stages,
        evals,
    })
}
