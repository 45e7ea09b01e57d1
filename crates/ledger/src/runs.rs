//! Runs: creation, lookup, status, heartbeats.

use crate::db::{Context, Ledger, LedgerError, now_ms};
use crate::types::{Run, RunStatus};
use sqlx::FromRow;

const RUN_COLUMNS: &str = "id, name, config_toml, config_hash, config_dir, target_stages, status, created_ms, \
     started_ms, ended_ms, host, pid, heartbeat_ms";

/// What a new run records about itself.
pub struct NewRun<'a> {
    pub config_toml: &'a str,
    pub config_hash: &'a str,
    pub config_dir: &'a str,
    pub target_stages: &'a [String],
}

impl Ledger {
    /// Creates a run in state `pending`, named `run-<id>`.
    pub async fn create_run(&self, new: NewRun<'_>) -> Result<Run, LedgerError> {
        let mut tx = self.write().await?;
        let now = now_ms();
        let targets = serde_json::to_string(new.target_stages).unwrap_or_else(|_| "[]".into());
        // A unique placeholder name, replaced by `run-<id>` once the id is known.
        let placeholder = format!("new-{}-{now}", std::process::id());
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO runs (name, config_toml, config_hash, config_dir, target_stages, status, created_ms)
             VALUES (?, ?, ?, ?, ?, 'pending', ?) RETURNING id",
        )
        .bind(&placeholder)
        .bind(new.config_toml)
        .bind(new.config_hash)
        .bind(new.config_dir)
        .bind(&targets)
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .ctx("insert run")?;
        sqlx::query("UPDATE runs SET name = ? WHERE id = ?")
            .bind(format!("run-{id}"))
            .bind(id)
            .execute(&mut *tx)
            .await
            .ctx("name run")?;
        tx.commit().await.ctx("commit run")?;
        self.run(&format!("run-{id}")).await
    }

    /// Looks a run up by name (`run-7`) or id (`7`).
    pub async fn run(&self, name_or_id: &str) -> Result<Run, LedgerError> {
        let sql =
            format!("SELECT {RUN_COLUMNS} FROM runs WHERE name = ?1 OR CAST(id AS TEXT) = ?1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(name_or_id)
            .fetch_optional(&self.pool)
            .await
            .ctx("select run")?;
        match row {
            Some(r) => Run::from_row(&r).ctx("decode run"),
            None => Err(LedgerError::NotFound(format!(
                "no run named `{name_or_id}` in {} (see `tardbot-pipeline runs`)",
                self.path().display()
            ))),
        }
    }

    /// All runs, newest first.
    pub async fn runs(&self) -> Result<Vec<Run>, LedgerError> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs ORDER BY id DESC");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .fetch_all(&self.pool)
            .await
            .ctx("select runs")?;
        rows.iter()
            .map(Run::from_row)
            .collect::<Result<_, _>>()
            .ctx("decode runs")
    }

    /// Marks a run as driven by this process: status running, host, pid, heartbeat.
    pub async fn claim_run(&self, run_id: i64, host: &str, pid: u32) -> Result<(), LedgerError> {
        let mut tx = self.write().await?;
        let now = now_ms();
        sqlx::query(
            "UPDATE runs SET status = 'running', started_ms = COALESCE(started_ms, ?1), ended_ms = NULL,
             host = ?2, pid = ?3, heartbeat_ms = ?1 WHERE id = ?4",
        )
        .bind(now)
        .bind(host)
        .bind(pid as i64)
        .bind(run_id)
        .execute(&mut *tx)
        .await
        .ctx("claim run")?;
        tx.commit().await.ctx("commit claim")
    }

    pub async fn finish_run(&self, run_id: i64, status: RunStatus) -> Result<(), LedgerError> {
        let mut tx = self.write().await?;
        sqlx::query("UPDATE runs SET status = ?, ended_ms = ?, heartbeat_ms = ? WHERE id = ?")
            .bind(status.as_str())
            .bind(now_ms())
            .bind(now_ms())
            .bind(run_id)
            .execute(&mut *tx)
            .await
            .ctx("finish run")?;
        tx.commit().await.ctx("commit finish run")
    }

    /// Refreshes the heartbeat of a run and of its running attempts.
    pub async fn heartbeat(&self, run_id: i64) -> Result<(), LedgerError> {
        let mut tx = self.write().await?;
        let now = now_ms();
        sqlx::query("UPDATE runs SET heartbeat_ms = ? WHERE id = ?")
            .bind(now)
            .bind(run_id)
            .execute(&mut *tx)
            .await
            .ctx("heartbeat run")?;
        sqlx::query(
            "UPDATE stage_attempts SET heartbeat_ms = ? WHERE run_id = ? AND status = 'running'",
        )
        .bind(now)
        .bind(run_id)
        .execute(&mut *tx)
        .await
        .ctx("heartbeat attempts")?;
        tx.commit().await.ctx("commit heartbeat")
    }
}
