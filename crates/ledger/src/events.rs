//! Events (append-only log) and evals.

use crate::db::{Context, Ledger, LedgerError, now_ms};
use crate::types::{Eval, Event};
use sqlx::{FromRow, Row};

impl Ledger {
    pub async fn event(
        &self,
        run_id: Option<i64>,
        attempt_id: Option<i64>,
        kind: &str,
        payload: &serde_json::Value,
    ) -> Result<(), LedgerError> {
        let mut tx = self.write().await?;
        sqlx::query("INSERT INTO events (time_ms, run_id, attempt_id, kind, payload) VALUES (?, ?, ?, ?, ?)")
            .bind(now_ms())
            .bind(run_id)
            .bind(attempt_id)
            .bind(kind)
            .bind(payload.to_string())
            .execute(&mut *tx)
            .await
            .ctx("insert event")?;
        tx.commit().await.ctx("commit event")
    }

    pub async fn events(&self, run_id: i64) -> Result<Vec<Event>, LedgerError> {
        let rows = sqlx::query(
            "SELECT id, time_ms, run_id, attempt_id, kind, payload FROM events WHERE run_id = ? ORDER BY id",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await
        .ctx("select events")?;
        rows.iter()
            .map(Event::from_row)
            .collect::<Result<_, _>>()
            .ctx("decode events")
    }

    pub async fn record_eval(&self, eval: &Eval) -> Result<(), LedgerError> {
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO evals (attempt_id, checkpoint_id, step, suite, metric, value, samples, time_ms)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(eval.attempt_id)
        .bind(eval.checkpoint_id)
        .bind(eval.step)
        .bind(&eval.suite)
        .bind(&eval.metric)
        .bind(eval.value.filter(|v| v.is_finite()))
        .bind(eval.samples)
        .bind(now_ms())
        .execute(&mut *tx)
        .await
        .ctx("insert eval")?;
        tx.commit().await.ctx("commit eval")
    }

    /// One eval metric of a stage in a run, over all its attempts, as (step, value) in step order.
    pub async fn eval_series(
        &self,
        run_id: i64,
        stage: &str,
        suite: &str,
        metric: &str,
    ) -> Result<Vec<(i64, Option<f64>)>, LedgerError> {
        let rows = sqlx::query(
            "SELECT e.step, e.value FROM evals e JOIN stage_attempts a ON a.id = e.attempt_id
             WHERE a.run_id = ? AND a.stage = ? AND e.suite = ? AND e.metric = ? ORDER BY e.step, e.id",
        )
        .bind(run_id)
        .bind(stage)
        .bind(suite)
        .bind(metric)
        .fetch_all(&self.pool)
        .await
        .ctx("select eval series")?;
        rows.iter()
            .map(|r| Ok((r.try_get("step")?, r.try_get("value")?)))
            .collect::<Result<_, sqlx::Error>>()
            .ctx("decode eval series")
    }
}

impl Ledger {
    /// Before/after of every (stage, suite, metric) of a run (`v_stage_evals`); see
    /// [`crate::read::stage_evals`].
    pub async fn stage_evals(
        &self,
        run_id: i64,
    ) -> Result<Vec<crate::types::StageEval>, LedgerError> {
        crate::read::stage_evals(&self.pool, run_id).await
    }
}
