//! A realistic ledger built through the ledger's own API: two runs of a four-stage pipeline.
//!
//! - `run-1` (failed): ingest and tokenizer succeed; pretrain is interrupted at step 120 (checkpoints at
//!   50 and 100), resumed from step 100 and trained to 300; sft fails at step 81 with a NaN loss.
//! - `run-2` (succeeded): ingest, tokenizer and pretrain are cached from run-1, sft trains 150 steps.
//!
//! Training attempts log the metrics the training engine logs: `loss`, `aux_loss`, `z_loss`, `grad_norm`,
//! `lr`, `tokens_per_s`, `mfu` every step and, every 5 steps, `expert_load/L{l}/E{e}` for 2 MoE layers of
//! 8 experts, `router_entropy/L{l}` and `dead_experts/L{l}` (expert 7 of layer 1 dies during pretraining).

use std::path::PathBuf;
use tardbot_ledger::{
    AttemptStatus, Eval, Ledger, MetricPoint, NewArtifact, NewRun, Run, RunStatus,
};
use tempfile::TempDir;

pub const LAYERS: u32 = 2;
pub const EXPERTS: u32 = 8;
pub const LOAD_EVERY: i64 = 5;

pub const CONFIG_TOML: &str = r#"# TardBot demo pipeline
workspace = "work"

[model]
preset = "mac_nano"

[ingest]
sources = ["data/sample/*.txt"]

[pretrain]
steps = 300
lr = 3e-4
warmup_steps = 20
checkpoint_every = 50
"#;

pub struct Fixture {
    /// Holds `work/ledger.db` (so `sqlite3 work/ledger.db …` works with this as the current directory).
    pub dir: TempDir,
    pub ledger: Ledger,
    pub failed: Run,
    pub succeeded: Run,
}

/// Deterministic noise in [-1, 1]: the first draw of the pipeline's seeded generator for `i`.
pub fn noise(i: u64) -> f64 {
    tardbot_core::rng::SplitMix64::new(i).uniform() * 2.0 - 1.0
}

fn hash(seed: u64) -> String {
    (0..4)
        .map(|i| format!("{:016x}", (noise(seed * 8 + i) * 1e18) as i64 as u64))
        .collect()
}

/// The loss the fixture logs at `step` of a stage whose loss starts at `start` and settles at `floor`.
pub fn loss_at(step: i64, start: f64, floor: f64) -> f64 {
    floor
        + (start - floor) * (-(step as f64) / 70.0).exp()
        + 0.04 * noise(step as u64 * 31 + start as u64)
}

fn lr_at(step: i64, total: i64) -> f64 {
    let peak = 3e-4;
    if step < 20 {
        peak * (step + 1) as f64 / 20.0
    } else {
        let t = (step - 20) as f64 / (total - 20).max(1) as f64;
        3e-5 + (peak - 3e-5) * 0.5 * (1.0 + (std::f64::consts::PI * t.min(1.0)).cos())
    }
}

/// Logs steps `from..=to` of a training attempt.
pub async fn train(
    ledger: &Ledger,
    attempt_id: i64,
    from: i64,
    to: i64,
    loss_start: f64,
    loss_floor: f64,
) {
    let mut points = Vec::new();
    for step in from..=to {
        let p = |key: &str, value: f64| MetricPoint {
            attempt_id,
            key: key.to_string(),
            step,
            value,
        };
        let s = step as u64;
        points.push(p("loss", loss_at(step, loss_start, loss_floor)));
        points.push(p("aux_loss", 0.01 + 0.02 * (-(step as f64) / 100.0).exp()));
        points.push(p("z_loss", 0.001 * (1.0 + 0.1 * noise(s * 7))));
        points.push(p(
            "grad_norm",
            0.4 + 3.0 * (-(step as f64) / 40.0).exp() + 0.05 * noise(s * 11),
        ));
        points.push(p("lr", lr_at(step, 300)));
        points.push(p("tokens_per_s", 11_800.0 + 400.0 * noise(s * 13)));
        points.push(p("mfu", 0.31 + 0.01 * noise(s * 17)));
        if step % LOAD_EVERY == 0 {
            for layer in 0..LAYERS {
                let mut dead = 0.0;
                for expert in 0..EXPERTS {
                    // Expert 7 of layer 1 dies from step 150 on; expert 0 of layer 0 is popular.
                    let weight = if layer == 1 && expert == 7 && step >= 150 {
                        0.0
                    } else {
                        1.0 + 0.35 * noise(s * 101 + u64::from(layer * EXPERTS + expert))
                            + if layer == 0 && expert == 0 { 1.2 } else { 0.0 }
                    };
                    if weight == 0.0 {
                        dead += 1.0;
                    }
                    points.push(p(
                        &format!("expert_load/L{layer}/E{expert}"),
                        (1024.0 * weight).round(),
                    ));
                }
                points.push(p(
                    &format!("router_entropy/L{layer}"),
                    2.05 - 0.002 * step as f64 * f64::from(layer) + 0.01 * noise(s * 3),
                ));
                points.push(p(&format!("dead_experts/L{layer}"), dead));
            }
        }
    }
    ledger.write_metrics(&points).await.expect("write metrics");
}

async fn eval(
    ledger: &Ledger,
    attempt_id: i64,
    checkpoint_id: Option<i64>,
    step: i64,
    suite: &str,
    metric: &str,
    value: f64,
) {
    ledger
        .record_eval(&Eval {
            attempt_id,
            checkpoint_id,
            step,
            suite: suite.into(),
            metric: metric.into(),
            value: Some(value),
            samples: 256,
        })
        .await
        .expect("record eval");
}

async fn event(
    ledger: &Ledger,
    run: i64,
    attempt: Option<i64>,
    kind: &str,
    payload: serde_json::Value,
) {
    ledger
        .event(Some(run), attempt, kind, &payload)
        .await
        .expect("event");
}

async fn checkpoint(ledger: &Ledger, run: &Run, attempt_id: i64, stage: &str, step: i64) -> i64 {
    let c = ledger
        .record_checkpoint(
            attempt_id,
            step,
            step * 8192,
            &format!("runs/{}/stages/{stage}/work/step-{step:06}", run.name),
            &hash(attempt_id as u64 * 1000 + step as u64),
            48_000_000 + step * 10,
        )
        .await
        .expect("checkpoint");
    event(
        ledger,
        run.id,
        Some(attempt_id),
        "checkpoint_written",
        serde_json::json!({"stage": stage, "step": step}),
    )
    .await;
    c.id
}

pub async fn new_run(ledger: &Ledger) -> Run {
    let targets = ["ingest", "tokenizer", "pretrain", "sft"].map(String::from);
    ledger
        .create_run(NewRun {
            config_toml: CONFIG_TOML,
            config_hash: &hash(7),
            config_dir: "/home/tardbot/src",
            target_stages: &targets,
        })
        .await
        .expect("create run")
}

impl Fixture {
    pub async fn build() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = Ledger::open(&dir.path().join("work").join("ledger.db"))
            .await
            .expect("open ledger");

        // run-1: interrupted in pretrain, resumed, failed in sft.
        let run = new_run(&ledger).await;
        ledger
            .claim_run(run.id, "testhost", 4242)
            .await
            .expect("claim");
        event(
            &ledger,
            run.id,
            None,
            "run_started",
            serde_json::json!({"pid": 4242}),
        )
        .await;

        let ingest = ledger
            .start_attempt(
                run.id,
                "ingest",
                &hash(11),
                AttemptStatus::Running,
                None,
                None,
            )
            .await
            .expect("attempt");
        let shards = ledger
            .publish_outputs(
                ingest.id,
                &[NewArtifact {
                    kind: "parquet",
                    path: "runs/run-1/stages/ingest/out",
                    hash: &hash(12),
                    bytes: 12_345_678,
                }],
            )
            .await
            .expect("publish");
        event(
            &ledger,
            run.id,
            Some(ingest.id),
            "stage_succeeded",
            serde_json::json!({"stage": "ingest", "rows": 50_000}),
        )
        .await;

        let tok = ledger
            .start_attempt(
                run.id,
                "tokenizer",
                &hash(21),
                AttemptStatus::Running,
                None,
                None,
            )
            .await
            .expect("attempt");
        ledger
            .record_inputs(tok.id, &[shards[0].id])
            .await
            .expect("inputs");
        let tokenizer = ledger
            .publish_outputs(
                tok.id,
                &[
                    NewArtifact {
                        kind: "tokenizer",
                        path: "runs/run-1/stages/tokenizer/out/tokenizer.json",
                        hash: &hash(22),
                        bytes: 1_048_576,
                    },
                    NewArtifact {
                        kind: "tokens",
                        path: "runs/run-1/stages/tokenizer/out/tokens",
                        hash: &hash(23),
                        bytes: 98_000_000,
                    },
                ],
            )
            .await
            .expect("publish");
        event(
            &ledger,
            run.id,
            Some(tok.id),
            "stage_succeeded",
            serde_json::json!({"stage": "tokenizer"}),
        )
        .await;

        let pre1 = ledger
            .start_attempt(
                run.id,
                "pretrain",
                &hash(31),
                AttemptStatus::Running,
                None,
                None,
            )
            .await
            .expect("attempt");
        ledger
            .record_inputs(pre1.id, &[tokenizer[0].id, tokenizer[1].id])
            .await
            .expect("inputs");
        eval(&ledger, pre1.id, None, 0, "val", "loss", 10.84).await;
        eval(&ledger, pre1.id, None, 0, "val", "bpb", 3.91).await;
        train(&ledger, pre1.id, 0, 60, 10.8, 2.6).await;
        checkpoint(&ledger, &run, pre1.id, "pretrain", 50).await;
        train(&ledger, pre1.id, 61, 120, 10.8, 2.6).await;
        let c100 = checkpoint(&ledger, &run, pre1.id, "pretrain", 100).await;
        eval(&ledger, pre1.id, Some(c100), 100, "val", "loss", 4.02).await;
        ledger
            .finish_attempt(
                pre1.id,
                AttemptStatus::Interrupted,
                Some("interrupted (Ctrl-C) at step 120"),
            )
            .await
            .expect("finish");
        event(
            &ledger,
            run.id,
            Some(pre1.id),
            "stage_interrupted",
            serde_json::json!({"stage": "pretrain", "step": 120}),
        )
        .await;
        ledger
            .finish_run(run.id, RunStatus::Interrupted)
            .await
            .expect("finish run");

        // `resume run-1`
        ledger
            .claim_run(run.id, "testhost", 4243)
            .await
            .expect("claim");
        event(
            &ledger,
            run.id,
            None,
            "run_resumed",
            serde_json::json!({"pid": 4243}),
        )
        .await;
        let pre2 = ledger
            .start_attempt(
                run.id,
                "pretrain",
                &hash(31),
                AttemptStatus::Running,
                Some(c100),
                None,
            )
            .await
            .expect("attempt");
        ledger
            .record_inputs(pre2.id, &[tokenizer[0].id, tokenizer[1].id])
            .await
            .expect("inputs");
        let mut last = c100;
        for (from, to) in [(101, 150), (151, 200), (201, 250), (251, 300)] {
            train(&ledger, pre2.id, from, to, 10.8, 2.6).await;
            last = checkpoint(&ledger, &run, pre2.id, "pretrain", to).await;
            if to % 100 == 0 {
                eval(
                    &ledger,
                    pre2.id,
                    Some(last),
                    to,
                    "val",
                    "loss",
                    loss_at(to, 10.8, 2.7),
                )
                .await;
                eval(
                    &ledger,
                    pre2.id,
                    Some(last),
                    to,
                    "val",
                    "bpb",
                    loss_at(to, 10.8, 2.7) / 2.77,
                )
                .await;
            }
        }
        let model = ledger
            .publish_outputs(
                pre2.id,
                &[NewArtifact {
                    kind: "model",
                    path: "runs/run-1/stages/pretrain/out/model.safetensors",
                    hash: &hash(32),
                    bytes: 96_468_992,
                }],
            )
            .await
            .expect("publish");
        event(
            &ledger,
            run.id,
            Some(pre2.id),
            "stage_succeeded",
            serde_json::json!({"stage": "pretrain", "steps": 300}),
        )
        .await;

        let sft = ledger
            .start_attempt(run.id, "sft", &hash(41), AttemptStatus::Running, None, None)
            .await
            .expect("attempt");
        ledger
            .record_inputs(sft.id, &[model[0].id, tokenizer[0].id])
            .await
            .expect("inputs");
        eval(&ledger, sft.id, Some(last), 0, "val", "loss", 3.4).await;
        eval(&ledger, sft.id, Some(last), 0, "sft", "loss", 2.9).await;
        train(&ledger, sft.id, 0, 80, 3.2, 1.9).await;
        checkpoint(&ledger, &run, sft.id, "sft", 50).await;
        ledger
            .write_metrics(&[MetricPoint {
                attempt_id: sft.id,
                key: "loss".into(),
                step: 81,
                value: f64::NAN,
            }])
            .await
            .expect("nan");
        ledger
            .finish_attempt(
                sft.id,
                AttemptStatus::Failed,
                Some(
                    "loss became NaN at step 81 (grad_norm > 1e4); last good checkpoint at step 50",
                ),
            )
            .await
            .expect("finish");
        event(
            &ledger,
            run.id,
            Some(sft.id),
            "stage_failed",
            serde_json::json!({"stage": "sft", "error": "loss became NaN"}),
        )
        .await;
        ledger
            .finish_run(run.id, RunStatus::Failed)
            .await
            .expect("finish run");
        event(
            &ledger,
            run.id,
            None,
            "run_ended",
            serde_json::json!({"status": "failed"}),
        )
        .await;
        let failed = ledger.run(&run.name).await.expect("run");

        // run-2: everything up to pretrain cached from run-1, sft trains and succeeds.
        let run = new_run(&ledger).await;
        ledger
            .claim_run(run.id, "testhost", 5151)
            .await
            .expect("claim");
        event(
            &ledger,
            run.id,
            None,
            "run_started",
            serde_json::json!({"pid": 5151}),
        )
        .await;
        for (stage, fp, from) in [
            ("ingest", 11, ingest.id),
            ("tokenizer", 21, tok.id),
            ("pretrain", 31, pre2.id),
        ] {
            let a = ledger
                .start_attempt(
                    run.id,
                    stage,
                    &hash(fp),
                    AttemptStatus::Cached,
                    None,
                    Some(from),
                )
                .await
                .expect("cached");
            event(
                &ledger,
                run.id,
                Some(a.id),
                "stage_cached",
                serde_json::json!({"stage": stage, "from": "run-1"}),
            )
            .await;
        }
        let sft = ledger
            .start_attempt(run.id, "sft", &hash(42), AttemptStatus::Running, None, None)
            .await
            .expect("attempt");
        ledger
            .record_inputs(sft.id, &[model[0].id, tokenizer[0].id])
            .await
            .expect("inputs");
        eval(&ledger, sft.id, Some(last), 0, "val", "loss", 3.4).await;
        eval(&ledger, sft.id, Some(last), 0, "sft", "loss", 2.9).await;
        train(&ledger, sft.id, 0, 75, 3.2, 1.9).await;
        checkpoint(&ledger, &run, sft.id, "sft", 75).await;
        train(&ledger, sft.id, 76, 150, 3.2, 1.9).await;
        let c150 = checkpoint(&ledger, &run, sft.id, "sft", 150).await;
        eval(&ledger, sft.id, Some(c150), 150, "val", "loss", 2.35).await;
        eval(&ledger, sft.id, Some(c150), 150, "sft", "loss", 1.95).await;
        ledger
            .publish_outputs(
                sft.id,
                &[NewArtifact {
                    kind: "model",
                    path: "runs/run-2/stages/sft/out/model.safetensors",
                    hash: &hash(43),
                    bytes: 96_468_992,
                }],
            )
            .await
            .expect("publish");
        event(
            &ledger,
            run.id,
            Some(sft.id),
            "stage_succeeded",
            serde_json::json!({"stage": "sft"}),
        )
        .await;
        ledger
            .finish_run(run.id, RunStatus::Succeeded)
            .await
            .expect("finish run");
        event(
            &ledger,
            run.id,
            None,
            "run_ended",
            serde_json::json!({"status": "succeeded"}),
        )
        .await;
        let succeeded = ledger.run(&run.name).await.expect("run");

        Fixture {
            dir,
            ledger,
            failed,
            succeeded,
        }
    }

    pub fn ledger_path(&self) -> PathBuf {
        self.ledger.path().to_path_buf()
    }
}

/// Ledgers the SQL tests run against: the fixture's, plus `TARDBOT_TEST_LEDGER` when set (e.g. the
/// ledger of a real short pipeline run).
pub fn extra_ledger() -> Option<PathBuf> {
    std::env::var_os("TARDBOT_TEST_LEDGER").map(PathBuf::from)
}
