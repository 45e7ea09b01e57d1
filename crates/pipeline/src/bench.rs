//! `tardbot-pipeline bench WHAT`: every benchmark of the project. Each prints a human table and, as
//! its last line, one JSON object of its figures so that runs can be compared across commits.

use std::time::Instant;
use tardbot_ledger::{AttemptStatus, Ledger, MetricPoint, MetricsWriter, NewRun};

/// Prints the figures as the final JSON line.
pub fn emit(figures: &serde_json::Value) {
    println!("{figures}");
}

/// Peak resident set size of this process, from /proc (Linux), in MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Ledger: batched metric upserts (rows/s) and the per-step cost of logging ~20 metrics from a
/// training loop through the background writer.
pub async fn ledger(rows: usize) -> anyhow::Result<serde_json::Value> {
    let dir = tempfile::tempdir()?;
    let ledger = Ledger::open(&dir.path().join("bench.db")).await?;
    let run = ledger
        .create_run(NewRun {
            config_toml: "",
            config_hash: "",
            config_dir: ".",
            target_stages: &["bench".to_string()],
        })
        .await?;
    let attempt = ledger
        .start_attempt(run.id, "bench", "-", AttemptStatus::Running, None, None)
        .await?;
    let keys: Vec<String> = (0..20).map(|i| format!("metric_{i:02}")).collect();
    let point = |step: usize, k: usize| MetricPoint {
        attempt_id: attempt.id,
        key: keys[k].clone(),
        step: step as i64,
        value: (step * 20 + k) as f64 * 0.5,
    };

    // 1. Direct batched inserts, 10k rows per transaction.
    let batch = 10_000;
    let all: Vec<MetricPoint> = (0..rows).map(|i| point(i / 20, i % 20)).collect();
    let t = Instant::now();
    for chunk in all.chunks(batch) {
        ledger.write_metrics(chunk).await?;
    }
    let insert_s = t.elapsed().as_secs_f64();
    let rows_per_s = rows as f64 / insert_s;

    // 2. Upserts of the same keys (a resumed run replaying steps).
    let t = Instant::now();
    for chunk in all.chunks(batch) {
        ledger.write_metrics(chunk).await?;
    }
    let upsert_rows_per_s = rows as f64 / t.elapsed().as_secs_f64();

    // 3. A training loop's view: log 20 metrics per step, flush at the end (as at a checkpoint).
    let writer = MetricsWriter::spawn(ledger.clone());
    let steps = 20_000;
    let offset = rows / 20 + 1;
    let t = Instant::now();
    let mut log_ns_max = 0u128;
    for s in 0..steps {
        let t_log = Instant::now();
        writer.log((0..20).map(|k| point(offset + s, k)).collect());
        log_ns_max = log_ns_max.max(t_log.elapsed().as_nanos());
    }
    let log_s = t.elapsed().as_secs_f64();
    writer.flush().await?;
    let total_s = t.elapsed().as_secs_f64();
    let count = ledger.metric_count().await?;
    anyhow::ensure!(
        count as usize == rows + steps * 20,
        "lost rows: {count} in the ledger"
    );

    let per_step_log_us = log_s / steps as f64 * 1e6;
    let per_step_total_us = total_s / steps as f64 * 1e6;
    println!(
        "ledger benchmark ({} rows, batches of {batch}, 20 metrics per step)",
        rows
    );
    println!("  batched insert        {:>12.0} rows/s", rows_per_s);
    println!("  batched upsert        {:>12.0} rows/s", upsert_rows_per_s);
    println!(
        "  log() per step        {:>12.2} us   (max {:.1} us)",
        per_step_log_us,
        log_ns_max as f64 / 1e3
    );
    println!(
        "  log+commit per step   {:>12.2} us   (amortised, incl. background writes)",
        per_step_total_us
    );
    println!(
        "  peak RSS              {:>12.1} MiB",
        peak_rss_mib().unwrap_or(f64::NAN)
    );
    Ok(serde_json::json!({
        "bench": "ledger",
        "rows": rows,
        "insert_rows_per_s": rows_per_s.round(),
        "upsert_rows_per_s": upsert_rows_per_s.round(),
        "log_us_per_step": per_step_log_us,
        "log_commit_us_per_step": per_step_total_us,
        "peak_rss_mib": peak_rss_mib(),
    }))
}
