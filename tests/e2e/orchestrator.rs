//! Run, kill, resume, lock, cache, concurrency and Ctrl-C, through the real CLI in child processes.

use crate::support::*;
use crate::test_stages::expected_state;
use std::time::Duration;
use tardbot_ledger::{AttemptStatus, RunStatus};

fn slow_env(steps: u64, step_ms: u64) -> Vec<(&'static str, String)> {
    vec![
        ("SLOW_STEPS", steps.to_string()),
        ("SLOW_STEP_MS", step_ms.to_string()),
        ("SIDE_MS", "10".into()),
    ]
}

fn newest_slow_checkpoint(dir: &std::path::Path) -> i64 {
    with_ledger(dir, async |l| match l.run("run-1").await {
        Ok(run) => l
            .checkpoints(run.id, "slow")
            .await
            .unwrap()
            .first()
            .map_or(0, |c| c.step),
        Err(_) => 0,
    })
}

fn read_result(dir: &std::path::Path) -> (u64, u64) {
    let text =
        std::fs::read_to_string(dir.join("work/runs/run-1/stages/slow/out/result.txt")).unwrap();
    let (state, executed) = text.trim().split_once(' ').unwrap();
    (state.parse().unwrap(), executed.parse().unwrap())
}

#[test]
fn sigkill_mid_stage_then_resume_finishes_without_rerunning_finished_stages() {
    let dir = workspace_dir("");
    let env = slow_env(60, 40);
    let mut first = spawn_cli(dir.path(), &["run", "all"], &env);
    wait_until(
        Duration::from_secs(60),
        "a checkpoint at step >= 10",
        || newest_slow_checkpoint(dir.path()) >= 10,
    );

    // A second driver of the same run is refused while the first is alive.
    let second = cli(dir.path(), &["resume", "run-1"], &env);
    assert_ne!(
        second.code, 0,
        "second driver must be refused: {}",
        second.stdout
    );
    assert!(
        second.stderr.contains("already being driven"),
        "stderr: {}",
        second.stderr
    );

    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let killed_at = newest_slow_checkpoint(dir.path());

    let status = cli(dir.path(), &["status", "run-1"], &env);
    assert!(
        status.stdout.contains("interrupted (process gone)"),
        "status: {}",
        status.stdout
    );

    let resumed = cli(dir.path(), &["resume", "run-1"], &env);
    assert_eq!(
        resumed.code, 0,
        "resume failed: {}\n{}",
        resumed.stdout, resumed.stderr
    );

    // The result equals an uninterrupted computation, and the resumed attempt did not start over.
    let (state, executed) = read_result(dir.path());
    assert_eq!(state, expected_state(7, 60));
    assert_eq!(
        executed,
        60 - killed_at as u64,
        "resumed attempt must start at the last checkpoint"
    );

    with_ledger(dir.path(), async |l| {
        assert_eq!(l.integrity_check().await.unwrap(), "ok");
        let run = l.run("run-1").await.unwrap();
        assert_eq!(run.status, RunStatus::Succeeded);
        let attempts = l.attempts(run.id).await.unwrap();
        let of = |s: &str| attempts.iter().filter(|a| a.stage == s).collect::<Vec<_>>();
        assert_eq!(of("alpha").len(), 1, "a succeeded stage must not run again");
        let slow = of("slow");
        assert_eq!(slow.len(), 2);
        assert_eq!(slow[0].status, AttemptStatus::Interrupted);
        assert_eq!(slow[1].status, AttemptStatus::Succeeded);
        assert!(slow[1].resumed_from.is_some());
        // Replayed steps overwrite metrics: exactly one loss row per step.
        let loss = l.metric_series(slow[0].id, "loss").await.unwrap().len()
            + l.metric_series(slow[1].id, "loss").await.unwrap().len();
        assert!(loss >= 60, "every step logged a loss ({loss})");
    });
}

#[test]
fn ctrl_c_stops_at_a_safe_point_and_resume_completes() {
    let dir = workspace_dir("");
    let env = slow_env(40, 40);
    let child = spawn_cli(dir.path(), &["run", "all"], &env);
    wait_until(Duration::from_secs(60), "a checkpoint", || {
        newest_slow_checkpoint(dir.path()) >= 5
    });
    signal(&child, libc::SIGINT);
    let out = finish(child.wait_with_output().unwrap());
    assert_eq!(out.code, 130, "interrupted run exits 130: {}", out.stderr);
    assert!(
        out.stdout.contains("resume run-1"),
        "tells how to continue: {}",
        out.stdout
    );

    let stopped_at = with_ledger(dir.path(), async |l| {
        let run = l.run("run-1").await.unwrap();
        assert_eq!(run.status, RunStatus::Interrupted);
        let slow: Vec<_> = l
            .attempts(run.id)
            .await
            .unwrap()
            .into_iter()
            .filter(|a| a.stage == "slow")
            .collect();
        assert_eq!(slow[0].status, AttemptStatus::Interrupted);
        // The safe point wrote a checkpoint at the exact step it stopped.
        l.checkpoints(run.id, "slow").await.unwrap()[0].step
    });
    assert!((5..40).contains(&stopped_at));

    let resumed = cli(dir.path(), &["resume", "run-1"], &env);
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    let (state, executed) = read_result(dir.path());
    assert_eq!(state, expected_state(7, 40));
    assert_eq!(executed, 40 - stopped_at as u64);
}

#[test]
fn second_run_with_unchanged_config_is_all_cached_and_fast() {
    let dir = workspace_dir("");
    let env = slow_env(3, 1);
    let first = cli(dir.path(), &["run", "all"], &env);
    assert_eq!(first.code, 0, "{}", first.stderr);
    let second = cli(dir.path(), &["run", "all"], &env);
    assert_eq!(second.code, 0, "{}", second.stderr);
    let line = second
        .stdout
        .lines()
        .find(|l| l.starts_with("run-2 succeeded in"))
        .expect(&second.stdout);
    let secs: f64 = line
        .trim_start_matches("run-2 succeeded in ")
        .trim_end_matches('s')
        .parse()
        .unwrap();
    assert!(
        secs < 1.0,
        "orchestration of an all-cached run took {secs}s"
    );
    assert!(
        second.stdout.contains("cached from run-1"),
        "{}",
        second.stdout
    );

    with_ledger(dir.path(), async |l| {
        let run = l.run("run-2").await.unwrap();
        let attempts = l.attempts(run.id).await.unwrap();
        assert_eq!(attempts.len(), 4);
        assert!(
            attempts.iter().all(|a| a.status == AttemptStatus::Cached),
            "{attempts:?}"
        );
        // Cached attempts expose the original artifacts, and lineage is recorded.
        let slow = attempts.iter().find(|a| a.stage == "slow").unwrap();
        assert_eq!(l.artifacts(slow.id).await.unwrap()[0].kind, "result");
    });

    // --force reruns the named stage (and only it).
    let forced = cli(dir.path(), &["run", "all", "--force", "slow"], &env);
    assert_eq!(forced.code, 0, "{}", forced.stderr);
    with_ledger(dir.path(), async |l| {
        let run = l.run("run-3").await.unwrap();
        for a in l.attempts(run.id).await.unwrap() {
            let want = if a.stage == "slow" {
                AttemptStatus::Succeeded
            } else {
                AttemptStatus::Cached
            };
            assert_eq!(a.status, want, "{}", a.stage);
        }
    });
}

#[test]
fn independent_stages_run_concurrently_and_run_stage_takes_only_its_upstream() {
    let dir = workspace_dir("");
    let env = vec![("SIDE_MS", "600".to_string())];
    let out = cli(dir.path(), &["run", "beta", "gamma"], &env);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let span = |s: &str| -> (u128, u128) {
        let t = std::fs::read_to_string(
            dir.path()
                .join(format!("work/runs/run-1/stages/{s}/out/span.txt")),
        )
        .unwrap();
        let (a, b) = t.trim().split_once(' ').unwrap();
        (a.parse().unwrap(), b.parse().unwrap())
    };
    let (b0, b1) = span("beta");
    let (g0, g1) = span("gamma");
    assert!(
        b0 < g1 && g0 < b1,
        "beta {b0}..{b1} and gamma {g0}..{g1} did not overlap"
    );
    with_ledger(dir.path(), async |l| {
        let run = l.run("run-1").await.unwrap();
        let stages: Vec<String> = l
            .attempts(run.id)
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.stage)
            .collect();
        assert!(
            !stages.contains(&"slow".to_string()),
            "slow is not upstream of beta/gamma: {stages:?}"
        );
    });
}

/// A stage runs in a rayon pool of the threads it was given (a side stage declares one), so its
/// parallel loops and matmuls never take the cores of the stages running beside it.
#[test]
fn each_stage_runs_in_a_pool_of_its_threads() {
    let dir = workspace_dir("");
    let out = cli(dir.path(), &["run", "beta"], &[("SIDE_MS", "10".into())]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let text = std::fs::read_to_string(
        dir.path()
            .join("work/runs/run-1/stages/beta/out/threads.txt"),
    )
    .unwrap();
    assert_eq!(
        text, "1 1",
        "rayon threads and ctx.threads of a one-thread stage"
    );
}

#[test]
fn unknown_stage_is_refused_without_creating_a_run() {
    let dir = workspace_dir("");
    let out = cli(dir.path(), &["run", "nonesuch"], &[]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("unknown stage `nonesuch`"),
        "{}",
        out.stderr
    );
    with_ledger(dir.path(), async |l| {
        assert!(l.runs().await.unwrap().is_empty())
    });
}
