//! Artifacts (a stage's published outputs) and their lineage.

use crate::db::{Context, Ledger, LedgerError, now_ms};
use crate::types::Artifact;
use sqlx::FromRow;

/// An artifact to record: its files are already fsynced and renamed into place.
pub struct NewArtifact<'a> {
    pub kind: &'a str,
    pub path: &'a str,
    pub hash: &'a str,
    pub bytes: i64,
}

impl Ledger {
    /// Records a succeeded attempt's artifacts and marks the attempt succeeded, in one transaction:
    /// either the stage's outputs are all visible downstream, or none is.
    pub async fn publish_outputs(
        &self,
        attempt_id: i64,
        artifacts: &[NewArtifact<'_>],
    ) -> Result<Vec<Artifact>, LedgerError> {
        let mut tx = self.write().await?;
        let now = now_ms();
        for a in artifacts {
            sqlx::query(
                "INSERT INTO artifacts (attempt_id, kind, path, hash, bytes, created_ms) VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(attempt_id)
            .bind(a.kind)
            .bind(a.path)
            .bind(a.hash)
            .bind(a.bytes)
            .bind(now)
            .execute(&mut *tx)
            .await
            .ctx("insert artifact")?;
        }
        sqlx::query("UPDATE stage_attempts SET status = 'succeeded', ended_ms = ?, error = NULL WHERE id = ?")
            .bind(now)
            .bind(attempt_id)
            .execute(&mut *tx)
            .await
            .ctx("succeed attempt")?;
        tx.commit().await.ctx("commit outputs")?;
        self.artifacts(attempt_id).await
    }

    /// The artifacts an attempt produced (for a cached attempt: those of the attempt it reuses).
    pub async fn artifacts(&self, attempt_id: i64) -> Result<Vec<Artifact>, LedgerError> {
        let rows = sqlx::query(
            "SELECT id, attempt_id, kind, path, hash, bytes FROM artifacts
             WHERE attempt_id = (SELECT COALESCE(cached_from, id) FROM stage_attempts WHERE id = ?) ORDER BY id",
        )
        .bind(attempt_id)
        .fetch_all(&self.pool)
        .await
        .ctx("select artifacts")?;
        rows.iter()
            .map(Artifact::from_row)
            .collect::<Result<_, _>>()
            .ctx("decode artifacts")
    }

    /// Lineage: `attempt_id` consumed these artifacts.
    pub async fn record_inputs(
        &self,
        attempt_id: i64,
        artifact_ids: &[i64],
    ) -> Result<(), LedgerError> {
        let mut tx = self.write().await?;
        for id in artifact_ids {
            sqlx::query(
                "INSERT OR IGNORE INTO artifact_inputs (attempt_id, artifact_id) VALUES (?, ?)",
            )
            .bind(attempt_id)
            .bind(id)
            .execute(&mut *tx)
            .await
            .ctx("insert artifact input")?;
        }
        tx.commit().await.ctx("commit inputs")
    }
}

impl Ledger {
    /// Lineage, the other way: the artifacts `attempt_id` consumed.
    pub async fn inputs(&self, attempt_id: i64) -> Result<Vec<Artifact>, LedgerError> {
        let rows = sqlx::query(
            "SELECT a.id, a.attempt_id, a.kind, a.path, a.hash, a.bytes FROM artifact_inputs i
             JOIN artifacts a ON a.id = i.artifact_id WHERE i.attempt_id = ? ORDER BY a.id",
        )
        .bind(attempt_id)
        .fetch_all(&self.pool)
        .await
        .ctx("select inputs")?;
        rows.iter()
            .map(Artifact::from_row)
            .collect::<Result<_, _>>()
            .ctx("decode inputs")
    }
}
