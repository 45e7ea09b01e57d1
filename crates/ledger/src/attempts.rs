//! Stage attempts: one row per try of a stage within a run.

use crate::db::{Context, Ledger, LedgerError, now_ms};
use crate::types::{AttemptStatus, StageAttempt};
use sqlx::FromRow;

const ATTEMPT_COLUMNS: &str = "id, run_id, stage, attempt, fingerprint, status, started_ms, ended_ms, heartbeat_ms, \
     error, resumed_from, cached_from";

impl Ledger {
    /// Records a new attempt of `stage` in `run_id`, numbered after the previous ones.
    /// `status` is `Running` for a real attempt or `Cached` (then `cached_from` names the source).
    pub async fn start_attempt(
        &self,
        run_id: i64,
        stage: &str,
        fingerprint: &str,
        status: AttemptStatus,
        resumed_from: Option<i64>,
        cached_from: Option<i64>,
    ) -> Result<StageAttempt, LedgerError> {
        let mut tx = self.write().await?;
        let now = now_ms();
        let ended = (status != AttemptStatus::Running).then_some(now);
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO stage_attempts (run_id, stage, attempt, fingerprint, status, started_ms, ended_ms,
                                         heartbeat_ms, resumed_from, cached_from)
             VALUES (?1, ?2, (SELECT COALESCE(MAX(attempt), 0) + 1 FROM stage_attempts WHERE run_id = ?1 AND stage = ?2),
                     ?3, ?4, ?5, ?6, ?5, ?7, ?8)
             RETURNING id",
        )
        .bind(run_id)
        .bind(stage)
        .bind(fingerprint)
        .bind(status.as_str())
        .bind(now)
        .bind(ended)
        .bind(resumed_from)
        .bind(cached_from)
        .fetch_one(&mut *tx)
        .await
        .ctx("insert attempt")?;
        tx.commit().await.ctx("commit attempt")?;
        self.attempt(id).await
    }

    pub async fn attempt(&self, id: i64) -> Result<StageAttempt, LedgerError> {
        let sql = format!("SELECT {ATTEMPT_COLUMNS} FROM stage_attempts WHERE id = ?");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .ctx("select attempt")?
            .ok_or_else(|| LedgerError::NotFound(format!("no stage attempt {id}")))?;
        StageAttempt::from_row(&row).ctx("decode attempt")
    }

    /// Every attempt of a run, in order of creation.
    pub async fn attempts(&self, run_id: i64) -> Result<Vec<StageAttempt>, LedgerError> {
        let sql =
            format!("SELECT {ATTEMPT_COLUMNS} FROM stage_attempts WHERE run_id = ? ORDER BY id");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(run_id)
            .fetch_all(&self.pool)
            .await
            .ctx("select attempts")?;
        rows.iter()
            .map(StageAttempt::from_row)
            .collect::<Result<_, _>>()
            .ctx("decode attempts")
    }

    /// Ends an attempt with a final status (and the error text of a failure).
    pub async fn finish_attempt(
        &self,
        id: i64,
        status: AttemptStatus,
        error: Option<&str>,
    ) -> Result<(), LedgerError> {
        let mut tx = self.write().await?;
        sqlx::query("UPDATE stage_attempts SET status = ?, ended_ms = ?, error = ? WHERE id = ?")
            .bind(status.as_str())
            .bind(now_ms())
            .bind(error)
            .bind(id)
            .execute(&mut *tx)
            .await
            .ctx("finish attempt")?;
        tx.commit().await.ctx("commit finish attempt")
    }

    /// Attempts of a run still marked `running` (after a crash) become `interrupted`.
    /// Only call this while holding the run's lock. Returns how many were marked.
    pub async fn mark_orphans_interrupted(&self, run_id: i64) -> Result<u64, LedgerError> {
        let mut tx = self.write().await?;
        let n = sqlx::query(
            "UPDATE stage_attempts SET status = 'interrupted', ended_ms = COALESCE(heartbeat_ms, started_ms),
             error = 'process died while the attempt was running (no clean shutdown recorded)'
             WHERE run_id = ? AND status = 'running'",
        )
        .bind(run_id)
        .execute(&mut *tx)
        .await
        .ctx("mark orphans")?
        .rows_affected();
        tx.commit().await.ctx("commit orphans")?;
        Ok(n)
    }

    /// The newest succeeded attempt of `stage` with this fingerprint, in any run: a cache hit.
    pub async fn find_succeeded(
        &self,
        stage: &str,
        fingerprint: &str,
    ) -> Result<Option<StageAttempt>, LedgerError> {
        let sql = format!(
            "SELECT {ATTEMPT_COLUMNS} FROM stage_attempts
             WHERE stage = ? AND fingerprint = ? AND status = 'succeeded' ORDER BY id DESC LIMIT 1"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(stage)
            .bind(fingerprint)
            .fetch_optional(&self.pool)
            .await
            .ctx("find cached attempt")?;
        row.map(|r| StageAttempt::from_row(&r))
            .transpose()
            .ctx("decode attempt")
    }
}
