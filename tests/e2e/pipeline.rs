//! The shipped stages end to end with the real binary on the bundled sample (`data/sample`):
//! ingest → tokenizer → tokenize → pretrain. Loss falls; a run killed with SIGKILL mid-training and
//! resumed ends with the same per-step losses and bit-identical weights as an uninterrupted one.

use crate::support::{ledger_path, wait_until, with_ledger};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_tardbot-pipeline");
const STEPS: u64 = 60;

fn sample(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../data/sample")
        .join(file)
}

fn write_config(dir: &Path) {
    let toml = format!(
        r#"workspace = "work"
seed = 99
device = "cpu"

[resources]
threads = 2

[model]
preset = "micro"

[ingest]
validation_fraction = 0.1

[[ingest.sources]]
name = "prose"
path = "{prose}"
format = "text"
separator = "<|endoftext|>"
license = "public-domain"

[[ingest.sources]]
name = "jargon"
path = "{jargon}"
format = "jsonl"
field = "text"
license = "public-domain"

[tokenizer]
vocab_size = 512

[tokenize]
seq_len = 32

[pretrain]
steps = {STEPS}
batch_size = 4
seq_len = 32
lr = 1e-2
warmup_steps = 5
checkpoint_every = 10
keep_checkpoints = 3
eval_every = 20
eval_batches = 2
"#,
        prose = sample("prose.txt").display(),
        jargon = sample("jargon.jsonl").display(),
    );
    std::fs::write(dir.join("pipeline.toml"), toml).unwrap();
}

fn cmd(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .current_dir(dir)
        .env("RAYON_NUM_THREADS", "2")
        .env("RUST_LOG", "warn");
    c
}

fn run_ok(dir: &Path, args: &[&str]) {
    let out = cmd(dir, args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// (step, loss bits) of the pretrain stage of run-1, over all its attempts.
fn pretrain_losses(dir: &Path) -> Vec<(i64, u64)> {
    with_ledger(dir, async |l| {
        let run = l.run("run-1").await.unwrap();
        let mut losses = Vec::new();
        for a in l
            .attempts(run.id)
            .await
            .unwrap()
            .into_iter()
            .filter(|a| a.stage == "pretrain")
        {
            for (step, v) in l.metric_series(a.id, "loss").await.unwrap() {
                losses.push((step, v.expect("finite loss").to_bits()));
            }
        }
        losses.sort();
        losses.dedup();
        losses
    })
}

fn final_weights(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("work/runs/run-1/stages/pretrain/out/model.safetensors")).unwrap()
}

fn newest_checkpoint(dir: &Path) -> i64 {
    if !ledger_path(dir).exists() {
        return 0;
    }
    with_ledger(dir, async |l| match l.run("run-1").await {
        Ok(run) => l
            .checkpoints(run.id, "pretrain")
            .await
            .unwrap()
            .first()
            .map_or(0, |c| c.step),
        Err(_) => 0,
    })
}

#[test]
fn run_all_trains_and_a_sigkilled_run_resumes_bit_exactly() {
    // Uninterrupted reference.
    let a = tempfile::tempdir().unwrap();
    write_config(a.path());
    run_ok(a.path(), &["run", "all"]);
    let losses_a = pretrain_losses(a.path());
    assert_eq!(losses_a.len() as u64, STEPS, "one loss per step");
    let first = f64::from_bits(losses_a[0].1);
    let last = f64::from_bits(losses_a[losses_a.len() - 1].1);
    assert!(
        last < first - 0.5,
        "training loss must fall: {first} -> {last}"
    );
    let val: Vec<f64> = with_ledger(a.path(), async |l| {
        let run = l.run("run-1").await.unwrap();
        l.eval_series(run.id, "pretrain", "val", "loss")
            .await
            .unwrap()
            .into_iter()
            .filter_map(|(_, v)| v)
            .collect()
    });
    assert!(
        val.len() >= 2 && val[val.len() - 1] < val[0],
        "validation loss must fall: {val:?}"
    );

    // Killed mid-training, then resumed.
    let b = tempfile::tempdir().unwrap();
    write_config(b.path());
    let mut child = cmd(b.path(), &["run", "all"]).spawn().unwrap();
    wait_until(Duration::from_secs(300), "a pretrain checkpoint", || {
        newest_checkpoint(b.path()) >= 20
    });
    child.kill().unwrap();
    child.wait().unwrap();
    run_ok(b.path(), &["resume", "run-1"]);
    let losses_b = pretrain_losses(b.path());
    assert_eq!(
        losses_b, losses_a,
        "per-step losses of the resumed run differ from the uninterrupted run"
    );
    assert!(
        final_weights(b.path()) == final_weights(a.path()),
        "final weights are not bit-identical"
    );
    with_ledger(b.path(), async |l| {
        let run = l.run("run-1").await.unwrap();
        let pre: Vec<_> = l
            .attempts(run.id)
            .await
            .unwrap()
            .into_iter()
            .filter(|a| a.stage == "pretrain")
            .collect();
        assert_eq!(pre.len(), 2);
        assert!(pre[1].resumed_from.is_some());
        assert_eq!(l.integrity_check().await.unwrap(), "ok");
    });
}
