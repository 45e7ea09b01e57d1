//! Four processes writing metrics and events to one ledger at once: no lost row, no "database is locked".

use crate::support::*;
use tardbot_ledger::{AttemptStatus, Ledger, MetricPoint, NewRun};

const BATCHES: usize = 40;
const ROWS: usize = 250;

/// Child workload: one run + attempt, then interleaved metric batches and events.
pub fn writer(args: &[String]) -> u8 {
    let path = std::path::PathBuf::from(&args[0]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let result: Result<(), tardbot_ledger::LedgerError> = rt.block_on(async {
        let ledger = Ledger::open(&path).await?;
        let run = ledger
            .create_run(NewRun {
                config_toml: "",
                config_hash: "",
                config_dir: ".",
                target_stages: &[],
            })
            .await?;
        let attempt = ledger
            .start_attempt(run.id, "w", "-", AttemptStatus::Running, None, None)
            .await?;
        for b in 0..BATCHES {
            let points: Vec<MetricPoint> = (0..ROWS)
                .map(|i| MetricPoint {
                    attempt_id: attempt.id,
                    key: format!("k{}", i % 10),
                    step: (b * ROWS + i) as i64,
                    value: i as f64,
                })
                .collect();
            ledger.write_metrics(&points).await?;
            ledger
                .event(
                    Some(run.id),
                    Some(attempt.id),
                    "batch",
                    &serde_json::json!({ "b": b }),
                )
                .await?;
            ledger.heartbeat(run.id).await?;
        }
        ledger.close().await;
        Ok(())
    });
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("writer failed: {e}");
            1
        }
    }
}

#[test]
fn four_processes_write_one_ledger_without_losing_rows_or_locking_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("work")).unwrap();
    let db = ledger_path(dir.path());
    // Create the schema first, as a run would.
    with_ledger(dir.path(), async |_| ());
    let children: Vec<_> = (0..4)
        .map(|_| {
            child("ledger-writer", &[db.to_str().unwrap()], &[])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = finish(c.wait_with_output().unwrap());
        assert_eq!(out.code, 0, "writer failed: {}", out.stderr);
        assert!(!out.stderr.contains("locked"), "{}", out.stderr);
    }
    with_ledger(dir.path(), async |l| {
        assert_eq!(l.metric_count().await.unwrap() as usize, 4 * BATCHES * ROWS);
        let runs = l.runs().await.unwrap();
        assert_eq!(runs.len(), 4);
        for r in runs {
            assert_eq!(l.events(r.id).await.unwrap().len(), BATCHES);
        }
        assert_eq!(l.integrity_check().await.unwrap(), "ok");
    });
}
