//! Typed reads of one run for people and tools (the HTML report, dashboards' helpers): a run's
//! attempts with their origin, evals, the `v_stage_evals` / `v_run_artifacts` / `v_checkpoint_lineage`
//! views, recent events, and metric series thinned to a number of steps.
//!
//! Each function takes any SQLite executor — a [`crate::Ledger`]'s own connections are not needed, so a
//! reader can use a read-only pool of its own on the ledger file and never compete with a run for
//! connections. Rows are decoded by the types' [`sqlx::FromRow`] implementations.

use crate::db::{Context, LedgerError};
use crate::types::{
    AttemptDetail, CheckpointLineage, Event, MetricSample, RunArtifact, RunEval, StageEval,
};
use sqlx::sqlite::SqliteRow;
use sqlx::{FromRow, SqliteExecutor};

fn decode<T: for<'r> FromRow<'r, SqliteRow>>(
    rows: &[SqliteRow],
    what: &'static str,
) -> Result<Vec<T>, LedgerError> {
    rows.iter()
        .map(T::from_row)
        .collect::<Result<_, _>>()
        .ctx(what)
}

/// Every attempt of a run in order of creation, with the run a cached attempt reused and the step a
/// resumed attempt started from.
pub async fn run_attempts<'e>(
    db: impl SqliteExecutor<'e>,
    run_id: i64,
) -> Result<Vec<AttemptDetail>, LedgerError> {
    let rows = sqlx::query(
        "SELECT a.id, a.run_id, a.stage, a.attempt, a.fingerprint, a.status, a.started_ms, a.ended_ms,
                a.heartbeat_ms, a.error, a.resumed_from, a.cached_from,
                src_run.name AS cached_from_run, ck.step AS resumed_from_step
         FROM stage_attempts a
         LEFT JOIN stage_attempts src ON src.id = a.cached_from
         LEFT JOIN runs src_run ON src_run.id = src.run_id
         LEFT JOIN checkpoints ck ON ck.id = a.resumed_from
         WHERE a.run_id = ? ORDER BY a.id",
    )
    .bind(run_id)
    .fetch_all(db)
    .await
    .ctx("select attempts")?;
    decode(&rows, "decode attempts")
}

/// Every eval of a run's attempts, in the order they were recorded.
pub async fn run_evals<'e>(
    db: impl SqliteExecutor<'e>,
    run_id: i64,
) -> Result<Vec<RunEval>, LedgerError> {
    let rows = sqlx::query(
        "SELECT a.stage, a.attempt, e.step, e.suite, e.metric, e.value, e.samples, e.time_ms
         FROM stage_attempts a JOIN evals e ON e.attempt_id = a.id
         WHERE a.run_id = ? ORDER BY e.time_ms, e.id",
    )
    .bind(run_id)
    .fetch_all(db)
    .await
    .ctx("select evals")?;
    decode(&rows, "decode evals")
}

/// Before/after of every (stage, suite, metric) of a run (`v_stage_evals`), stages in the order of
/// their first attempt, then by suite and metric.
pub async fn stage_evals<'e>(
    db: impl SqliteExecutor<'e>,
    run_id: i64,
) -> Result<Vec<StageEval>, LedgerError> {
    let rows = sqlx::query(
        "SELECT stage, suite, metric, first_step, before, last_step, after, samples, evals
         FROM v_stage_evals WHERE run_id = ?
         ORDER BY (SELECT min(id) FROM stage_attempts s WHERE s.run_id = v_stage_evals.run_id
                   AND s.stage = v_stage_evals.stage), suite, metric",
    )
    .bind(run_id)
    .fetch_all(db)
    .await
    .ctx("select v_stage_evals")?;
    decode(&rows, "decode v_stage_evals")
}

/// The artifacts a run's attempts produced or reused (`v_run_artifacts`), oldest first.
pub async fn run_artifacts<'e>(
    db: impl SqliteExecutor<'e>,
    run_id: i64,
) -> Result<Vec<RunArtifact>, LedgerError> {
    let rows = sqlx::query(
        "SELECT stage, attempt, kind, path, hash, bytes, run_id, origin_run_id, origin_run, consumed_by
         FROM v_run_artifacts WHERE run_id = ? ORDER BY artifact_id",
    )
    .bind(run_id)
    .fetch_all(db)
    .await
    .ctx("select v_run_artifacts")?;
    decode(&rows, "decode v_run_artifacts")
}

/// A run's checkpoints with their lineage (`v_checkpoint_lineage`), oldest first.
pub async fn checkpoint_lineage<'e>(
    db: impl SqliteExecutor<'e>,
    run_id: i64,
) -> Result<Vec<CheckpointLineage>, LedgerError> {
    let rows = sqlx::query(
        "SELECT stage, attempt, checkpoint_id, step, tokens, path, hash, bytes, complete,
                previous_checkpoint_id, resumed_by_attempts, evals
         FROM v_checkpoint_lineage WHERE run_id = ? ORDER BY checkpoint_id",
    )
    .bind(run_id)
    .fetch_all(db)
    .await
    .ctx("select v_checkpoint_lineage")?;
    decode(&rows, "decode v_checkpoint_lineage")
}

/// The newest `limit` events of a run, oldest first.
pub async fn recent_events<'e>(
    db: impl SqliteExecutor<'e>,
    run_id: i64,
    limit: i64,
) -> Result<Vec<Event>, LedgerError> {
    let rows = sqlx::query(
        "SELECT id, time_ms, run_id, attempt_id, kind, payload FROM (
             SELECT * FROM events WHERE run_id = ? ORDER BY id DESC LIMIT ?
         ) ORDER BY id",
    )
    .bind(run_id)
    .bind(limit)
    .fetch_all(db)
    .await
    .ctx("select events")?;
    decode(&rows, "decode events")
}

/// How many events a run has.
pub async fn event_count<'e>(db: impl SqliteExecutor<'e>, run_id: i64) -> Result<i64, LedgerError> {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE run_id = ?")
        .bind(run_id)
        .fetch_one(db)
        .await
        .ctx("count events")
}

/// Which metric keys [`sampled_metrics`] reads, by key prefix.
#[derive(Clone, Copy, Debug)]
pub enum KeyPrefixes<'a> {
    /// Keys that start with one of these.
    Within(&'a [&'a str]),
    /// Keys that start with none of these.
    Outside(&'a [&'a str]),
}

/// The smallest string above every string that starts with `prefix` (`None`: no such bound).
fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(c) = chars.pop() {
        if let Some(next) = (c as u32 + 1..=char::MAX as u32).find_map(char::from_u32) {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// The metrics of one attempt whose keys `keys` selects, in (key, step) order, NULL values (NaN or
/// infinity at logging time) left out. A key logged at more than `max_steps` steps is read every n-th
/// of its steps (n = `stride`, the same for all points of the key), its last step always kept. Each
/// prefix is a range scan of the metrics primary key.
pub async fn sampled_metrics<'e>(
    db: impl SqliteExecutor<'e>,
    attempt_id: i64,
    keys: KeyPrefixes<'_>,
    max_steps: i64,
) -> Result<Vec<MetricSample>, LedgerError> {
    let (prefixes, negate) = match keys {
        KeyPrefixes::Within(p) => (p, ""),
        KeyPrefixes::Outside(p) => (p, "NOT"),
    };
    // Bounds as parameters ?3, ?4, …: `key >= prefix AND key < end` (or `key >= prefix` when no end).
    let mut bounds: Vec<String> = Vec::new();
    let mut ranges: Vec<String> = Vec::new();
    for p in prefixes {
        bounds.push(p.to_string());
        let lo = bounds.len() + 2;
        match prefix_end(p) {
            Some(end) => {
                bounds.push(end);
                ranges.push(format!("(key >= ?{lo} AND key < ?{})", lo + 1));
            }
            None => ranges.push(format!("(key >= ?{lo})")),
        }
    }
    let filter = if ranges.is_empty() {
        "0".to_string()
    } else {
        ranges.join(" OR ")
    };
    let sql = format!(
        "SELECT key, step, value, (n + ?2 - 1) / ?2 AS stride FROM (
             SELECT key, step, value,
                    row_number() OVER (PARTITION BY key ORDER BY step) AS i,
                    count(*) OVER (PARTITION BY key) AS n
             FROM metrics WHERE attempt_id = ?1 AND {negate} ({filter})
         )
         WHERE value IS NOT NULL AND ((i - 1) % ((n + ?2 - 1) / ?2) = 0 OR i = n)
         ORDER BY key, step"
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
        .bind(attempt_id)
        .bind(max_steps.max(1));
    for b in &bounds {
        q = q.bind(b.as_str());
    }
    let rows = q.fetch_all(db).await.ctx("select metrics")?;
    decode(&rows, "decode metric")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AttemptStatus, Eval, Ledger, MetricPoint, NewArtifact, NewRun};

    #[test]
    fn prefix_ends() {
        assert_eq!(
            prefix_end("expert_load/L").as_deref(),
            Some("expert_load/M")
        );
        assert_eq!(prefix_end("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_end("\u{D7FF}").as_deref(), Some("\u{E000}"));
        assert_eq!(prefix_end("\u{10FFFF}"), None);
        assert_eq!(prefix_end(""), None);
    }

    fn temp_ledger_path() -> std::path::PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        std::env::temp_dir()
            .join(format!(
                "tardbot-ledger-read-{}-{nanos}",
                std::process::id()
            ))
            .join("ledger.db")
    }

    #[tokio::test]
    async fn typed_reads_of_a_run() {
        let path = temp_ledger_path();
        let ledger = Ledger::open(&path).await.unwrap();
        let targets = ["pretrain".to_string()];
        let new_run = || NewRun {
            config_toml: "",
            config_hash: "h",
            config_dir: ".",
            target_stages: &targets,
        };
        // run-1: pretrain interrupted after a checkpoint at step 10, resumed and succeeded.
        let run1 = ledger.create_run(new_run()).await.unwrap();
        let a1 = ledger
            .start_attempt(
                run1.id,
                "pretrain",
                "fp",
                AttemptStatus::Running,
                None,
                None,
            )
            .await
            .unwrap();
        let ck = ledger
            .record_checkpoint(a1.id, 10, 640, "ck/10", "c10", 7)
            .await
            .unwrap();
        ledger
            .finish_attempt(a1.id, AttemptStatus::Interrupted, None)
            .await
            .unwrap();
        let a2 = ledger
            .start_attempt(
                run1.id,
                "pretrain",
                "fp",
                AttemptStatus::Running,
                Some(ck.id),
                None,
            )
            .await
            .unwrap();
        let arts = [NewArtifact {
            kind: "model",
            path: "out/model",
            hash: "m",
            bytes: 3,
        }];
        ledger.publish_outputs(a2.id, &arts).await.unwrap();
        for (step, value) in [(0, 5.0), (20, 2.5)] {
            ledger
                .record_eval(&Eval {
                    attempt_id: a2.id,
                    checkpoint_id: None,
                    step,
                    suite: "val".into(),
                    metric: "loss".into(),
                    value: Some(value),
                    samples: 8,
                })
                .await
                .unwrap();
        }
        // Ten steps of a scalar (one NaN) and of a per-layer key.
        let mut points = Vec::new();
        for step in 0..10 {
            let loss = if step == 4 { f64::NAN } else { step as f64 };
            for (key, value) in [("loss", loss), ("expert_load/L0/E1", 1.0)] {
                points.push(MetricPoint {
                    attempt_id: a2.id,
                    key: key.into(),
                    step,
                    value,
                });
            }
        }
        ledger.write_metrics(&points).await.unwrap();
        for i in 0..5 {
            let payload = serde_json::json!({ "i": i });
            ledger
                .event(Some(run1.id), None, "e", &payload)
                .await
                .unwrap();
        }
        // run-2: pretrain cached from run-1.
        let run2 = ledger.create_run(new_run()).await.unwrap();
        ledger
            .start_attempt(
                run2.id,
                "pretrain",
                "fp",
                AttemptStatus::Cached,
                None,
                Some(a2.id),
            )
            .await
            .unwrap();
        let db = &ledger.pool;

        let attempts = run_attempts(db, run1.id).await.unwrap();
        assert_eq!(attempts.len(), 2);
        assert_eq!(attempts[0].attempt.status, AttemptStatus::Interrupted);
        assert_eq!(attempts[1].resumed_from_step, Some(10));
        assert_eq!(attempts[1].cached_from_run, None);
        let cached = run_attempts(db, run2.id).await.unwrap();
        assert_eq!(cached[0].cached_from_run.as_deref(), Some("run-1"));
        assert_eq!(cached[0].attempt.status, AttemptStatus::Cached);

        let own = run_artifacts(db, run1.id).await.unwrap();
        assert_eq!((own.len(), own[0].origin_run.as_deref()), (1, None));
        let reused = run_artifacts(db, run2.id).await.unwrap();
        assert_eq!(reused[0].origin_run.as_deref(), Some("run-1"));
        assert_eq!((reused[0].kind.as_str(), reused[0].bytes), ("model", 3));

        let lineage = checkpoint_lineage(db, run1.id).await.unwrap();
        assert_eq!(lineage.len(), 1);
        assert_eq!(
            (lineage[0].id, lineage[0].step, lineage[0].complete),
            (ck.id, 10, true)
        );
        assert_eq!(lineage[0].resumed_by.as_deref(), Some("2"));

        let evals = run_evals(db, run1.id).await.unwrap();
        assert_eq!(evals.len(), 2);
        assert_eq!(
            (evals[1].stage.as_str(), evals[1].attempt, evals[1].step),
            ("pretrain", 2, 20)
        );
        let stage = stage_evals(db, run1.id).await.unwrap();
        assert_eq!(stage.len(), 1);
        assert_eq!(
            (stage[0].before, stage[0].after, stage[0].evals),
            (Some(5.0), Some(2.5), 2)
        );

        assert_eq!(event_count(db, run1.id).await.unwrap(), 5);
        let recent = recent_events(db, run1.id, 2).await.unwrap();
        let payloads: Vec<&str> = recent.iter().map(|e| e.payload.as_str()).collect();
        assert_eq!(payloads, [r#"{"i":3}"#, r#"{"i":4}"#]);

        // At most 3 steps of 10: every 4th step (0, 4, 8) and the last one, the NULL (NaN at 4) left out.
        let prefixes = ["expert_load/L"];
        let scalars = sampled_metrics(db, a2.id, KeyPrefixes::Outside(&prefixes), 3)
            .await
            .unwrap();
        let got: Vec<(&str, i64, f64, i64)> = scalars
            .iter()
            .map(|s| (s.key.as_str(), s.step, s.value, s.stride))
            .collect();
        assert_eq!(
            got,
            [
                ("loss", 0, 0.0, 4),
                ("loss", 8, 8.0, 4),
                ("loss", 9, 9.0, 4)
            ]
        );
        let layers = sampled_metrics(db, a2.id, KeyPrefixes::Within(&prefixes), 100)
            .await
            .unwrap();
        assert_eq!(layers.len(), 10);
        assert!(
            layers
                .iter()
                .all(|s| s.key == "expert_load/L0/E1" && s.stride == 1)
        );
        let none = sampled_metrics(db, a2.id, KeyPrefixes::Within(&[]), 100)
            .await
            .unwrap();
        assert!(none.is_empty());

        ledger.close().await;
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
