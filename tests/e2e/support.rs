//! Test plumbing: temp workspaces, the child-process entry point, ledger access from the parent.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use tardbot_ledger::Ledger;

pub const CHILD_ENV: &str = "TARDBOT_E2E_CHILD";
pub const ARGS_ENV: &str = "TARDBOT_E2E_ARGS";

/// Not a test: the entry point of child processes started by the tests (ignored unless started by
/// [`child`] with `--ignored`). `TARDBOT_E2E_CHILD=cli` runs the real CLI with the test stages;
/// `ledger-writer` runs one concurrent-writer workload.
#[test]
#[ignore = "entry point of child processes, not a test"]
fn child_process_entry() {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return;
    };
    let args: Vec<String> =
        serde_json::from_str(&std::env::var(ARGS_ENV).unwrap_or_else(|_| "[]".into()))
            .expect("child args are JSON");
    let code = match mode.as_str() {
        "cli" => {
            let mut argv = vec!["tardbot-pipeline".to_string()];
            argv.extend(args);
            tardbot_pipeline::cli::main_with_args(crate::test_stages::registry(), argv)
        }
        "ledger-writer" => crate::ledger_concurrency::writer(&args),
        other => panic!("unknown child mode {other}"),
    };
    std::process::exit(code as i32);
}

/// A command that runs this test binary as a child in `mode` with `args`.
pub fn child(mode: &str, args: &[&str], envs: &[(&str, String)]) -> Command {
    let exe = std::env::current_exe().expect("test binary path");
    let mut cmd = Command::new(exe);
    cmd.args([
        "--exact",
        "support::child_process_entry",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_ENV, mode)
    .env(ARGS_ENV, serde_json::to_string(args).unwrap())
    .env("RUST_LOG", "info")
    .stdin(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd
}

pub struct Finished {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn finish(out: Output) -> Finished {
    Finished {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs the CLI with test stages to completion.
pub fn cli(dir: &Path, args: &[&str], envs: &[(&str, String)]) -> Finished {
    let mut full = vec!["--config", "pipeline.toml"];
    full.extend_from_slice(args);
    let out = child("cli", &full, envs)
        .current_dir(dir)
        .output()
        .expect("start child");
    finish(out)
}

/// Starts the CLI with test stages in the background, output captured.
pub fn spawn_cli(dir: &Path, args: &[&str], envs: &[(&str, String)]) -> Child {
    let mut full = vec!["--config", "pipeline.toml"];
    full.extend_from_slice(args);
    child("cli", &full, envs)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start child")
}

/// A temp directory with a minimal valid pipeline.toml (the test stages read only `seed`).
pub fn workspace_dir(extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("corpus.txt"), "a tiny corpus\n").unwrap();
    let toml = format!(
        r#"workspace = "work"
seed = 7

[execution]
threads = 2
max_parallel_stages = 2

[model]
preset = "tiny"

[ingest]
[[ingest.sources]]
name = "tiny"
path = "corpus.txt"
format = "text"
license = "public domain"
{extra}
"#
    );
    std::fs::write(dir.path().join("pipeline.toml"), toml).unwrap();
    dir
}

pub fn ledger_path(dir: &Path) -> PathBuf {
    dir.join("work").join("ledger.db")
}

/// Runs an async ledger query on a private runtime.
pub fn with_ledger<T>(dir: &Path, f: impl AsyncFnOnce(&Ledger) -> T) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ledger = Ledger::open(&ledger_path(dir)).await.expect("open ledger");
        let out = f(&ledger).await;
        ledger.close().await;
        out
    })
}

/// Polls until `cond` holds (or panics after `timeout`).
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn signal(child: &Child, sig: i32) {
    // SAFETY: plain kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(child.id() as i32, sig) };
    assert_eq!(rc, 0, "kill({}, {sig}) failed", child.id());
}
