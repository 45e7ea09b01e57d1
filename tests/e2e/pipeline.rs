//! The shipped stages end to end with the real binary on the bundled sample (`data/sample`):
//! ingest → tokenizer → tokenize → pretrain → sft → toolcall → cot. Loss falls; every fine-tuning
//! stage records its evals before and after; a run killed with SIGKILL in the middle of each training
//! stage in turn and resumed each time ends with the same per-step losses and bit-identical weights,
//! stage by stage, as an uninterrupted one (the sft stage is stopped by Ctrl-C instead, which exits 130).

use crate::support::{ledger_path, signal, wait_until, with_ledger};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_tardbot-pipeline");
const STEPS: u64 = 60;
const FINETUNE_STEPS: u64 = 12;
const TRAINING: [&str; 4] = ["pretrain", "sft", "toolcall", "cot"];

fn sample(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../data/sample")
        .join(file)
}

/// The test pipeline; `max_experts_in_memory` below micro's 4 experts swaps them through the store.
/// Toolcall conversations where `python` runs a program: 6 where `python3` exists, else none
/// (with a message).
fn python_examples() -> usize {
    let ok = Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIP the toolcall stage's python conversations: no python3 on this machine");
    }
    if ok { 6 } else { 0 }
}

fn browser_examples() -> usize {
    let ok = Path::new("/usr/bin/chromium").exists();
    if !ok {
        eprintln!("SKIP the toolcall stage's browser conversations: no /usr/bin/chromium");
    }
    if ok { 4 } else { 0 }
}

fn write_config(dir: &Path, max_experts_in_memory: usize) {
    let toml = format!(
        r#"workspace = "work"
seed = 99

[execution]
device = "cpu"
threads = 2
max_experts_in_memory = {max_experts_in_memory}

[model]
preset = "micro"
overrides = {{ max_seq_len = 1024 }}

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

[sft]
steps = {FINETUNE_STEPS}
batch_size = 4
seq_len = 96
lr = 3e-3
warmup_steps = 2
checkpoint_every = 4
keep_checkpoints = 3
eval_every = 6
eval_batches = 2

[data.sft]
glossary = "{jargon}"
per_kind = 20
eval = {{ examples = 4, max_new_tokens = 8 }}

[toolcall]
steps = {FINETUNE_STEPS}
batch_size = 2
seq_len = 1024
lr = 3e-3
warmup_steps = 2
checkpoint_every = 4
keep_checkpoints = 3
eval_every = 6
eval_batches = 2

[data.toolcall]
generated = 60
unseen = 10
python = {python}
search = 8
browser = {browser}
eval = {{ examples = 4, max_new_tokens = 16 }}
agent = {{ tasks = "{agent}", max_new_tokens = 16 }}

[cot]
steps = {FINETUNE_STEPS}
batch_size = 2
seq_len = 512
lr = 3e-3
warmup_steps = 2
checkpoint_every = 4
keep_checkpoints = 3
eval_every = 6
eval_batches = 2

[data.cot]
problems = "{gsm}"
limit = 120
eval = {{ examples = 4, max_new_tokens = 16 }}
"#,
        prose = sample("prose.txt").display(),
        jargon = sample("jargon.jsonl").display(),
        gsm = sample("gsm_sample.jsonl").display(),
        python = python_examples(),
        browser = browser_examples(),
        agent = sample("agent_tasks.jsonl").display(),
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

/// (step, loss bits) of a training stage of run-1, over all its attempts.
fn losses(dir: &Path, stage: &str) -> Vec<(i64, u64)> {
    with_ledger(dir, async |l| {
        let run = l.run("run-1").await.unwrap();
        let mut losses = Vec::new();
        for a in l
            .attempts(run.id)
            .await
            .unwrap()
            .into_iter()
            .filter(|a| a.stage == stage)
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

fn final_weights(dir: &Path, stage: &str) -> Vec<u8> {
    std::fs::read(dir.join(format!(
        "work/runs/run-1/stages/{stage}/out/model.safetensors"
    )))
    .unwrap()
}

fn newest_checkpoint(dir: &Path, stage: &str) -> i64 {
    if !ledger_path(dir).exists() {
        return 0;
    }
    with_ledger(dir, async |l| match l.run("run-1").await {
        Ok(run) => l
            .checkpoints(run.id, stage)
            .await
            .unwrap()
            .first()
            .map_or(0, |c| c.step),
        Err(_) => 0,
    })
}

/// Held-out losses of a stage of run-1, in step order.
fn val_losses(dir: &Path, stage: &str) -> Vec<f64> {
    with_ledger(dir, async |l| {
        let run = l.run("run-1").await.unwrap();
        l.eval_series(run.id, stage, "val", "loss")
            .await
            .unwrap()
            .into_iter()
            .filter_map(|(_, v)| v)
            .collect()
    })
}

/// (suite, metric, step) of every eval a stage recorded in run-1.
fn evals(dir: &Path, stage: &str) -> Vec<(String, String, i64)> {
    with_ledger(dir, async |l| {
        let run = l.run("run-1").await.unwrap();
        let mut out = Vec::new();
        for (suite, metric) in [
            ("val", "loss"),
            ("sft", "exact_match"),
            ("toolcall", "valid_json_rate"),
            ("toolcall", "final_answer_accuracy"),
            ("cot", "answer_accuracy"),
        ] {
            for (step, _) in l.eval_series(run.id, stage, suite, metric).await.unwrap() {
                out.push((suite.to_string(), metric.to_string(), step));
            }
        }
        out
    })
}

#[test]
fn run_all_trains_and_a_sigkilled_run_resumes_bit_exactly() {
    // Uninterrupted reference.
    let a = tempfile::tempdir().unwrap();
    write_config(a.path(), 4);
    run_ok(a.path(), &["run", "all"]);
    let losses_a = losses(a.path(), "pretrain");
    assert_eq!(losses_a.len() as u64, STEPS, "one loss per step");
    let first = f64::from_bits(losses_a[0].1);
    let last = f64::from_bits(losses_a[losses_a.len() - 1].1);
    assert!(
        last < first - 0.5,
        "training loss must fall: {first} -> {last}"
    );
    let val = val_losses(a.path(), "pretrain");
    assert!(
        val.len() >= 2 && val[val.len() - 1] < val[0],
        "validation loss must fall: {val:?}"
    );
    let (unigram, bpb) = with_ledger(a.path(), async |l| {
        let run = l.run("run-1").await.unwrap();
        let u = l
            .eval_series(run.id, "pretrain", "baseline", "unigram_entropy")
            .await
            .unwrap();
        let b = l
            .eval_series(run.id, "pretrain", "val", "bits_per_byte")
            .await
            .unwrap();
        (u[0].1.unwrap(), b.last().and_then(|x| x.1).unwrap())
    });
    assert!(
        val[val.len() - 1] < unigram,
        "held-out loss {} must be below the unigram entropy {unigram} of the data",
        val[val.len() - 1]
    );
    assert!(bpb > 0.5 && bpb < 8.0, "bits per byte {bpb}");
    // Each fine-tuning stage: a loss per step, held-out loss and its task eval before (step 0) and
    // after (the last step), and a lower held-out loss after than before.
    for (stage, task) in [
        ("sft", ("sft", "exact_match")),
        ("toolcall", ("toolcall", "final_answer_accuracy")),
        ("cot", ("cot", "answer_accuracy")),
    ] {
        assert_eq!(
            losses(a.path(), stage).len() as u64,
            FINETUNE_STEPS,
            "{stage}"
        );
        let e = evals(a.path(), stage);
        for step in [0, FINETUNE_STEPS as i64] {
            for (suite, metric) in [("val", "loss"), task] {
                assert!(
                    e.contains(&(suite.to_string(), metric.to_string(), step)),
                    "{stage}: no {suite}/{metric} eval at step {step}: {e:?}"
                );
            }
        }
        let val = val_losses(a.path(), stage);
        assert!(
            val[val.len() - 1] < val[0],
            "{stage}: held-out loss must fall: {val:?}"
        );
    }

    // Every Grafana panel query, expanded as Grafana and the SQLite plugin do, against this real
    // run's ledger: each runs, time columns are unix seconds, and every panel shows rows.
    let dashboards = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dashboards");
    let check = with_ledger(a.path(), async |l| {
        let run = l.run("run-1").await.unwrap();
        tardbot_observe::check_dashboards(
            &dashboards,
            &ledger_path(a.path()),
            run.created_ms - 60_000,
            tardbot_ledger::now_ms() + 60_000,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
    });
    assert!(
        check.queries.len() >= 30,
        "only {} panel queries",
        check.queries.len()
    );
    assert!(
        check.empty().is_empty(),
        "panel queries without rows on a real run: {:?}",
        check.empty()
    );

    // Killed (SIGKILL; Ctrl-C for sft) in the middle of each training stage in turn, resumed each time,
    // and with the experts swapped through the expert store (one in memory at a time): per-step
    // losses and final weights equal the uninterrupted all-resident run's, bit for bit.
    let b = tempfile::tempdir().unwrap();
    write_config(b.path(), 1);
    for (i, stage) in TRAINING.iter().enumerate() {
        let args: &[&str] = if i == 0 {
            &["run", "all"]
        } else {
            &["resume", "run-1"]
        };
        let mut child = cmd(b.path(), args).spawn().unwrap();
        let at = if *stage == "pretrain" { 20 } else { 4 };
        wait_until(
            Duration::from_secs(300),
            &format!("a {stage} checkpoint"),
            || newest_checkpoint(b.path(), stage) >= at,
        );
        if *stage == "sft" {
            // Ctrl-C: the stage checkpoints at the next step and the process exits 130.
            signal(&child, libc::SIGINT);
            assert_eq!(
                child.wait().unwrap().code(),
                Some(130),
                "exit code after Ctrl-C"
            );
        } else {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
    run_ok(b.path(), &["resume", "run-1"]);
    for stage in TRAINING {
        assert_eq!(
            losses(b.path(), stage),
            losses(a.path(), stage),
            "{stage}: per-step losses of the resumed run differ from the uninterrupted run"
        );
        assert!(
            final_weights(b.path(), stage) == final_weights(a.path(), stage),
            "{stage}: final weights are not bit-identical"
        );
    }
    with_ledger(b.path(), async |l| {
        let run = l.run("run-1").await.unwrap();
        let attempts = l.attempts(run.id).await.unwrap();
        let pre: Vec<_> = attempts.iter().filter(|a| a.stage == "pretrain").collect();
        assert_eq!(pre.len(), 2);
        assert!(pre[1].resumed_from.is_some());
        assert!(
            attempts
                .iter()
                .any(|a| a.stage != "pretrain" && a.resumed_from.is_some()),
            "no fine-tuning stage was resumed from a checkpoint"
        );
        assert_eq!(l.integrity_check().await.unwrap(), "ok");
    });

    execution_settings_reuse_cached_stages(a.path());
    exports_are_recorded_with_their_lineage(a.path());
    tools_run_from_the_command_line(a.path());
    serve_answers_over_http(a.path());
}

/// `serve run-1` loads the run's newest model and answers a chat completion over HTTP; Ctrl-C stops
/// it cleanly (exit 0). The API itself is tested in `crates/serve/tests`.
fn serve_answers_over_http(dir: &Path) {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut child = cmd(dir, &["serve", "run-1", "--addr", "127.0.0.1:0"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut addr = None;
    let mut banner = String::new();
    for _ in 0..20 {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            break;
        }
        banner.push_str(&line);
        if let Some(rest) = line.split("OpenAI API     http://").nth(1) {
            addr = rest.split('/').next().map(str::to_string);
            break;
        }
    }
    let addr = addr.unwrap_or_else(|| panic!("no address in the serve banner:\n{banner}"));
    assert!(banner.contains("run-1/cot"), "{banner}");
    let body = r#"{"model": "run-1/cot", "max_tokens": 8, "temperature": 0, "messages": [{"role": "user", "content": "What is 2 + 3?"}]}"#;
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let json = response.split("\r\n\r\n").nth(1).unwrap();
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(v["object"], "chat.completion", "{v}");
    assert!(
        v["usage"]["completion_tokens"].as_u64().unwrap() <= 8,
        "{v}"
    );
    signal(&child, libc::SIGINT);
    assert_eq!(child.wait().unwrap().code(), Some(0), "exit after Ctrl-C");
}

/// `tool` runs one built-in tool (exit 0 with its JSON, 1 for bad arguments, 2 for an unknown tool);
/// `generate --tools` runs the trained toolcall model through the tool loop.
fn tools_run_from_the_command_line(dir: &Path) {
    let out = cmd(
        dir,
        &[
            "tool",
            "calculator",
            "--args",
            r#"{"expression": "2*(3+4)"}"#,
        ],
    )
    .output()
    .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r#"{"result":14}"#
    );
    let out = cmd(dir, &["tool", "calculator", "--args", r#"{"expr": "1"}"#])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing required argument"));
    let out = cmd(dir, &["tool", "no_such_tool"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    // The offline `search` answers from the index the run's `search_index` stage built of the
    // corpus; without a run it has no index and says how to give it one.
    let query = r#"{"query": "abnormal end of a program"}"#;
    let out = cmd(dir, &["tool", "search", "--run", "run-1", "--args", query])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["backend"], "offline", "{v}");
    let top = &v["results"][0];
    assert!(
        top["title"].as_str().unwrap().contains("ABEND")
            && top["url"].as_str().unwrap().starts_with("corpus://jargon/"),
        "{v}"
    );
    let out = cmd(dir, &["tool", "search", "--args", query])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("search_index"));
    // The agent suite: the bundled tasks through the loop with the real tools, per kind and
    // overall. The toolcall stage ran them itself before (on the sft model) and after training
    // (`[data.toolcall] agent`); `eval` runs them on any model (here sft's).
    let tasks = sample("agent_tasks.jsonl");
    let out = cmd(
        dir,
        &[
            "eval",
            "run-1",
            "--suite",
            "agent",
            "--stage",
            "sft",
            "--data",
            tasks.to_str().unwrap(),
            "--max-new-tokens",
            "16",
        ],
    )
    .output()
    .unwrap();
    eprintln!("agent eval, sft:\n{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    with_ledger(dir, async |l| {
        let run = l.run("run-1").await.unwrap();
        for stage in ["sft", "toolcall"] {
            for metric in [
                "all/task_success",
                "search/task_success",
                "abstain/calls_per_task",
            ] {
                let series = l
                    .eval_series(run.id, stage, "agent:agent_tasks.jsonl", metric)
                    .await
                    .unwrap();
                // sft: `eval`'s one row; toolcall: before and after, at its first and last step.
                let rows = if stage == "sft" { 1 } else { 2 };
                assert!(
                    series.len() == rows && series.iter().all(|(_, v)| v.is_some()),
                    "{stage}: {metric} recorded as {series:?}"
                );
            }
        }
    });
    // `[tools.python]` of the pipeline file sets the sandbox: a 1 s wall clock kills an endless loop.
    let cfg = dir.join("pipeline.toml");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str("\n[tools.python]\ntimeout_s = 1\n");
    std::fs::write(&cfg, text).unwrap();
    let out = cmd(
        dir,
        &[
            "tool",
            "python",
            "--args",
            r#"{"code": "while True: pass"}"#,
        ],
    )
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.success() {
        let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(v["timed_out"], true, "{v}");
        assert!(v["duration_s"].as_f64().unwrap() < 3.0, "{v}");
    } else {
        // No sandbox on this machine: the tool refuses, saying what to install.
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("bubblewrap"), "{stderr}");
        eprintln!("SKIP the python timeout check: {stderr}");
    }
    let session = cmd(
        dir,
        &[
            "generate",
            "run-1",
            "--stage",
            "toolcall",
            "--prompt",
            "What is 12 times 7?",
            "--tools",
            "calculator,element_lookup",
            "--temperature",
            "0",
            "--max-new-tokens",
            "24",
        ],
    )
    .output()
    .unwrap();
    // The micro model's session, as it went (it is too small to use its tools well).
    eprintln!(
        "generate --tools session:\n{}",
        String::from_utf8_lossy(&session.stdout)
    );
    assert!(
        session.status.success(),
        "{}",
        String::from_utf8_lossy(&session.stderr)
    );
}

/// `export` writes the trained model for transformers and llama.cpp and records it as an `export`
/// attempt of the run whose inputs are the stage's model and tokenizer; a refused export is a failed
/// attempt that leaves no directory.
fn exports_are_recorded_with_their_lineage(dir: &Path) {
    run_ok(
        dir,
        &["export", "run-1", "--format", "hf", "--out", "exported/hf"],
    );
    assert!(dir.join("exported/hf/config.json").exists());
    run_ok(
        dir,
        &[
            "export",
            "run-1",
            "--stage",
            "pretrain",
            "--format",
            "gguf",
            "--out",
            "exported/gguf",
        ],
    );
    assert!(dir.join("exported/gguf/model.gguf").exists());
    // micro's rows of 16 values cannot be q8_0 blocks of 32.
    let out = cmd(
        dir,
        &[
            "export",
            "run-1",
            "--format",
            "gguf",
            "--dtype",
            "q8_0",
            "--out",
            "exported/q8",
        ],
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a q8_0 export of micro must be refused"
    );
    assert!(
        stderr.contains("q8_0") && stderr.contains("multiple of 32"),
        "{stderr}"
    );
    assert!(!dir.join("exported/q8").exists());
    with_ledger(dir, async |l| {
        let run = l.run("run-1").await.unwrap();
        assert_eq!(run.status, tardbot_ledger::RunStatus::Succeeded);
        let attempts = l.attempts(run.id).await.unwrap();
        let exports: Vec<_> = attempts.iter().filter(|a| a.stage == "export").collect();
        assert_eq!(exports.len(), 3, "{exports:?}");
        assert_eq!(exports[2].status, tardbot_ledger::AttemptStatus::Failed);
        assert!(exports[2].error.as_deref().unwrap_or("").contains("q8_0"));
        for (attempt, stage, kind) in [
            (exports[0], "cot", "export-hf-f32"),
            (exports[1], "pretrain", "export-gguf-f32"),
        ] {
            let out = l.artifacts(attempt.id).await.unwrap();
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].kind, kind);
            let inputs = l.inputs(attempt.id).await.unwrap();
            let model = inputs
                .iter()
                .find(|a| a.kind == "model")
                .expect("model input");
            let producer = l.attempt(model.attempt_id).await.unwrap();
            assert_eq!(
                producer.stage, stage,
                "the export's lineage names the stage it exported"
            );
            assert!(inputs.iter().any(|a| a.kind == "tokenizer"));
        }
    });
    run_ok(dir, &["status", "run-1"]);
}

/// `[execution]` settings that give the same bits (expert swapping, activation checkpointing,
/// threads, `auto` for the CPU) are not part of any fingerprint: a second run with all of them
/// changed reuses every stage of the first.
fn execution_settings_reuse_cached_stages(dir: &Path) {
    let path = dir.join("pipeline.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let changed = text
        .replace(
            "device = \"cpu\"\nthreads = 2\nmax_experts_in_memory = 4",
            "device = \"auto\"\nthreads = 1\nmax_experts_in_memory = 2\nactivation_checkpointing = true\n\n\
             [execution.stages.cot]\nmax_experts_in_memory = 1\nactivation_checkpointing = false",
        );
    assert_ne!(
        changed, text,
        "the test config's [execution] section changed shape"
    );
    std::fs::write(&path, changed).unwrap();
    run_ok(dir, &["run", "all"]);
    with_ledger(dir, async |l| {
        let run = l.run("run-2").await.unwrap();
        let attempts = l.attempts(run.id).await.unwrap();
        assert_eq!(attempts.len(), 8, "{attempts:?}");
        for a in &attempts {
            assert_eq!(
                a.status,
                tardbot_ledger::AttemptStatus::Cached,
                "{}: changing execution settings must not retrain it",
                a.stage
            );
        }
    });
}
