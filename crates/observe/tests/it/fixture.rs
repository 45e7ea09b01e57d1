//! A realistic ledger built through the ledger's own API: two runs of a four-stage pipeline.
//!
//! - `run-1` (failed): ingest and tokenizer succeed; pretrain is interrupted at step 120 (checkpoints at
//!   50 and 100), resumed from step 100 and trained to 300; sft fails at step 81 with a NaN loss.
//! - `run-2` (succeeded): ingest, tokenizer and pretrain are cached from run-1, sft trains 150 steps.
//!
//! Data stages log the figures the ingest, tokenizer and tokenize stages log ([`data_metrics`]): per
//! source, in total, per input file (at the file's ordinal as the step) and single figures; none is a
//! training curve. [`default_run`] is a third ledger, shaped like the default `run all`.
//!
//! Training attempts log the metrics the training engine logs: `loss`, `total_loss`, `aux_loss`, `z_loss`, `grad_norm`,
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
        points.push(p(
            "total_loss",
            loss_at(step, loss_start, loss_floor) + 0.012,
        ));
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

/// Sources of the data stages' figures, as the default pipeline names them.
pub const SOURCES: [&str; 3] = ["jargon", "prose", "tiny_shakespeare"];
/// Input files ingest logs a row of figures for.
pub const FILES: i64 = 3;

/// What the data stages log, under the keys they use: ingest per source (`ingest/source/NAME/COUNT`,
/// 13 counts and 9 filter reasons), in total, per file at the file's ordinal, and four single
/// figures; the tokenizer and tokenize their single figures (tokenize one shard at step 0, totals at
/// step 1). 96 keys for ingest, like the default run.
pub async fn data_metrics(ledger: &Ledger, ingest: i64, tokenizer: i64, tokenize: Option<i64>) {
    let counts = [
        "files",
        "files_skipped",
        "bytes_in",
        "docs_in",
        "records_skipped",
        "invalid_utf8_repaired",
        "invalid_utf8_dropped",
        "empty",
        "docs_kept",
        "duplicates",
        "docs_out",
        "bytes_out",
        "docs_val",
    ];
    let reasons = [
        "alpha_words",
        "dup_5gram",
        "dup_line_chars",
        "dup_lines",
        "mean_word_length",
        "symbol_ratio",
        "too_few_words",
        "too_many_words",
        "top_2gram",
    ];
    let p = |attempt_id: i64, key: String, step: i64, value: f64| MetricPoint {
        attempt_id,
        key,
        step,
        value,
    };
    let mut points = Vec::new();
    for (i, source) in SOURCES.iter().chain(["total"].iter()).enumerate() {
        let prefix = if *source == "total" {
            "ingest/total".to_string()
        } else {
            format!("ingest/source/{source}")
        };
        for (j, c) in counts.iter().enumerate() {
            // Some columns are zero for every source, as in a clean sample.
            let v = if c.starts_with("invalid") || *c == "empty" {
                0.0
            } else {
                ((i + 1) * 100 + j * 7) as f64
            };
            points.push(p(ingest, format!("{prefix}/{c}"), 0, v));
        }
        for (j, r) in reasons.iter().enumerate() {
            points.push(p(
                ingest,
                format!("{prefix}/filtered/{r}"),
                0,
                (j % 3) as f64,
            ));
        }
    }
    for file in 0..FILES {
        for (key, v) in [
            ("ingest/file/docs_in", 200.0 + file as f64),
            ("ingest/file/docs_kept", 190.0 + file as f64),
            ("ingest/file/bytes_in", 120_000.0 * (file + 1) as f64),
            ("ingest/elapsed_s", 0.04 + 0.001 * file as f64),
        ] {
            points.push(p(ingest, key.into(), file, v));
        }
    }
    for (key, v) in [
        ("ingest/seconds", 0.11),
        ("ingest/mb_per_s", 11.0),
        ("ingest/shards", 1.0),
        ("ingest/resumed_files", 0.0),
    ] {
        points.push(p(ingest, key.into(), 0, v));
    }
    for (key, v) in [
        ("tokenizer/vocab_size", 4096.0),
        ("tokenizer/train_split_bytes", 1_039_203.0),
        ("tokenizer/sampled_bytes", 1_039_203.0),
        ("tokenizer/train_seconds", 0.37),
        ("tokenizer/val_bytes_per_token", 3.03),
        ("tokenizer/val_docs", 25.0),
    ] {
        points.push(p(tokenizer, key.into(), 0, v));
    }
    if let Some(tokenize) = tokenize {
        for (key, step, v) in [
            ("tokenize/shard_tokens", 0, 321_058.0),
            ("tokenize/shard_pad_pct", 0, 0.25),
            ("tokenize/shard_crop_pct", 0, 0.0),
            ("tokenize/train_tokens", 1, 302_937.0),
            ("tokenize/val_tokens", 1, 17_754.0),
            ("tokenize/train_bytes_per_token", 1, 3.43),
            ("tokenize/val_bytes_per_token", 1, 3.03),
            ("tokenize/pad_pct", 1, 0.25),
            ("tokenize/crop_pct", 1, 0.0),
            ("tokenize/val_pad_pct", 1, 2.25),
            ("tokenize/train_windows", 1, 1187.0),
        ] {
            points.push(p(tokenize, key.into(), step, v));
        }
    }
    ledger
        .write_metrics(&points)
        .await
        .expect("write data metrics");
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

        data_metrics(&ledger, ingest.id, tok.id, None).await;

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

/// A ledger with one succeeded run shaped like the default `run all` (pipeline.toml on the bundled
/// sample): ingest, tokenizer and tokenize logging the figures the real stages log, pretrain for 300
/// steps with held-out evals at 0, 100, 200 and 300, then sft (40 steps), toolcall and cot (30 each),
/// each evaluated on held-out loss and six task metrics before and after; pretrain also logs one
/// figure once (`params`); a checkpoint per stage and the default run's artifacts and events.
pub async fn default_run() -> (TempDir, Ledger, Run) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = Ledger::open(&dir.path().join("work").join("ledger.db"))
        .await
        .expect("open ledger");
    let targets = [
        "ingest",
        "tokenizer",
        "tokenize",
        "pretrain",
        "sft",
        "toolcall",
        "cot",
    ]
    .map(String::from);
    let run = ledger
        .create_run(NewRun {
            config_toml: CONFIG_TOML,
            config_hash: &hash(70),
            config_dir: "/home/tardbot/src",
            target_stages: &targets,
        })
        .await
        .expect("create run");
    ledger
        .claim_run(run.id, "testhost", 77)
        .await
        .expect("claim");
    event(
        &ledger,
        run.id,
        None,
        "run_started",
        serde_json::json!({"pid": 77}),
    )
    .await;
    let mut ids = Vec::new();
    for (i, stage) in targets.iter().enumerate() {
        let a = ledger
            .start_attempt(
                run.id,
                stage,
                &hash(80 + i as u64),
                AttemptStatus::Running,
                None,
                None,
            )
            .await
            .expect("attempt");
        ids.push(a.id);
        let steps = match stage.as_str() {
            "pretrain" => 300,
            "sft" => 40,
            "toolcall" | "cot" => 30,
            _ => 0,
        };
        if steps > 0 {
            let start = if i == 3 { 8.3 } else { 7.5 };
            let evals: Vec<i64> = if i == 3 {
                vec![0, 100, 200, 300]
            } else {
                vec![0, steps / 2, steps]
            };
            for &step in &evals {
                eval(
                    &ledger,
                    a.id,
                    None,
                    step,
                    "val",
                    "loss",
                    loss_at(step, start, 5.0),
                )
                .await;
                eval(
                    &ledger,
                    a.id,
                    None,
                    step,
                    "val",
                    "bits_per_byte",
                    3.0 - step as f64 / 300.0,
                )
                .await;
            }
            train(&ledger, a.id, 1, steps, start, 5.0).await;
            if i == 3 {
                // A figure a training stage logs once: a number for a table, not a chart.
                ledger
                    .write_metrics(&[MetricPoint {
                        attempt_id: a.id,
                        key: "params".into(),
                        step: 0,
                        value: 3_279_488.0,
                    }])
                    .await
                    .expect("params");
            }
            if i > 3 {
                for m in 0..6 {
                    for step in [0, steps] {
                        let metric = format!("exact_match/task_{m}");
                        eval(
                            &ledger,
                            a.id,
                            None,
                            step,
                            stage,
                            &metric,
                            step as f64 / 100.0,
                        )
                        .await;
                    }
                }
            }
            checkpoint(&ledger, &run, a.id, stage, steps / 2).await;
            event(
                &ledger,
                run.id,
                Some(a.id),
                "train_start",
                serde_json::json!({"stage": stage}),
            )
            .await;
        }
        let outputs: Vec<(String, String)> = match steps {
            0 => vec![(
                "shard".into(),
                format!("runs/run-1/stages/{stage}/out/part-00000"),
            )],
            _ => [
                "model",
                "model-config",
                "examples",
                "examples",
                "chat-shard",
                "chat-shard",
            ]
            .iter()
            .take(if i == 3 { 2 } else { 6 })
            .enumerate()
            .map(|(k, kind)| {
                (
                    kind.to_string(),
                    format!("runs/run-1/stages/{stage}/out/{kind}-{k}"),
                )
            })
            .collect(),
        };
        let hashes: Vec<String> = (0..outputs.len())
            .map(|k| hash(900 + 10 * i as u64 + k as u64))
            .collect();
        let artifacts: Vec<NewArtifact> = outputs
            .iter()
            .zip(&hashes)
            .enumerate()
            .map(|(k, ((kind, path), h))| NewArtifact {
                kind,
                path,
                hash: h,
                bytes: 13_000_000 + k as i64,
            })
            .collect();
        ledger
            .publish_outputs(a.id, &artifacts)
            .await
            .expect("publish");
    }
    data_metrics(&ledger, ids[0], ids[1], Some(ids[2])).await;
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
    let run = ledger.run(&run.name).await.expect("run");
    (dir, ledger, run)
}

/// Ledgers the SQL tests run against: the fixture's, plus `TARDBOT_TEST_LEDGER` when set (e.g. the
/// ledger of a real short pipeline run).
pub fn extra_ledger() -> Option<PathBuf> {
    std::env::var_os("TARDBOT_TEST_LEDGER").map(PathBuf::from)
}
