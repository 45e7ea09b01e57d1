//! Checkpoints: resumable points inside a stage.

use crate::db::{Context, Ledger, LedgerError, now_ms};
use crate::types::Checkpoint;
use sqlx::FromRow;

impl Ledger {
    /// Records a checkpoint whose files are complete and fsynced.
    pub async fn record_checkpoint(
        &self,
        attempt_id: i64,
        step: i64,
        tokens: i64,
        path: &str,
        hash: &str,
        bytes: i64,
    ) -> Result<Checkpoint, LedgerError> {
        let mut tx = self.write().await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO checkpoints (attempt_id, step, tokens, path, hash, bytes, complete, created_ms)
             VALUES (?, ?, ?, ?, ?, ?, 1, ?) RETURNING id",
        )
        .bind(attempt_id)
        .bind(step)
        .bind(tokens)
        .bind(path)
        .bind(hash)
        .bind(bytes)
        .bind(now_ms())
        .fetch_one(&mut *tx)
        .await
        .ctx("insert checkpoint")?;
        tx.commit().await.ctx("commit checkpoint")?;
        Ok(Checkpoint {
            id,
            attempt_id,
            step,
            tokens,
            path: path.to_string(),
            hash: hash.to_string(),
            bytes,
            complete: true,
        })
    }

    /// Complete checkpoints of `stage` in `run_id` across all its attempts, newest first:
    /// the candidates a resumed attempt starts from.
    pub async fn checkpoints(
        &self,
        run_id: i64,
        stage: &str,
    ) -> Result<Vec<Checkpoint>, LedgerError> {
        let rows = sqlx::query(
            "SELECT c.id, c.attempt_id, c.step, c.tokens, c.path, c.hash, c.bytes, c.complete
             FROM checkpoints c JOIN stage_attempts a ON a.id = c.attempt_id
             WHERE a.run_id = ? AND a.stage = ? AND c.complete = 1
             ORDER BY c.step DESC, c.id DESC",
        )
        .bind(run_id)
        .bind(stage)
        .fetch_all(&self.pool)
        .await
        .ctx("select checkpoints")?;
        rows.iter()
            .map(Checkpoint::from_row)
            .collect::<Result<_, _>>()
            .ctx("decode checkpoints")
    }
}
