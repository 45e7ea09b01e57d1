//! Metrics: batched upserts keyed by (attempt, key, step), and a background writer so a training loop
//! never waits on the database.

use crate::db::{Context, Ledger, LedgerError, now_ms};
use sqlx::Row;
use std::sync::OnceLock;
use tokio::sync::{mpsc, oneshot};

#[derive(Clone, Debug, PartialEq)]
pub struct MetricPoint {
    pub attempt_id: i64,
    pub key: String,
    pub step: i64,
    /// NaN/Inf are stored as NULL.
    pub value: f64,
}

/// Rows per statement: multi-row VALUES, 5 parameters a row, under SQLite's parameter limit.
/// One statement per 200 rows costs far less than one per row.
const CHUNK: usize = 200;

/// `INSERT … VALUES (?,?,?,?,?), … ON CONFLICT DO UPDATE` for `rows` rows.
fn upsert_sql(rows: usize) -> String {
    let mut sql =
        String::from("INSERT INTO metrics (attempt_id, key, step, value, time_ms) VALUES ");
    for i in 0..rows {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str("(?,?,?,?,?)");
    }
    sql.push_str(" ON CONFLICT (attempt_id, key, step) DO UPDATE SET value = excluded.value, time_ms = excluded.time_ms");
    sql
}

impl Ledger {
    /// Upserts a batch of metric points in one `BEGIN IMMEDIATE` transaction.
    pub async fn write_metrics(&self, points: &[MetricPoint]) -> Result<(), LedgerError> {
        static FULL_CHUNK_SQL: OnceLock<String> = OnceLock::new();
        if points.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let full: &'static str = FULL_CHUNK_SQL.get_or_init(|| upsert_sql(CHUNK));
        let mut tx = self.write().await?;
        for chunk in points.chunks(CHUNK) {
            let partial;
            let sql = if chunk.len() == CHUNK {
                sqlx::AssertSqlSafe(full)
            } else {
                partial = upsert_sql(chunk.len());
                sqlx::AssertSqlSafe(partial.as_str())
            };
            let mut q = sqlx::query(sql);
            for p in chunk {
                q = q
                    .bind(p.attempt_id)
                    .bind(p.key.as_str())
                    .bind(p.step)
                    .bind(p.value.is_finite().then_some(p.value))
                    .bind(now);
            }
            q.execute(&mut *tx).await.ctx("insert metrics")?;
        }
        tx.commit().await.ctx("commit metrics")
    }

    /// One metric of one attempt as (step, value) in step order.
    pub async fn metric_series(
        &self,
        attempt_id: i64,
        key: &str,
    ) -> Result<Vec<(i64, Option<f64>)>, LedgerError> {
        let rows = sqlx::query(
            "SELECT step, value FROM metrics WHERE attempt_id = ? AND key = ? ORDER BY step",
        )
        .bind(attempt_id)
        .bind(key)
        .fetch_all(&self.pool)
        .await
        .ctx("select metric series")?;
        rows.iter()
            .map(|r| Ok((r.try_get("step")?, r.try_get("value")?)))
            .collect::<Result<_, sqlx::Error>>()
            .ctx("decode metric series")
    }

    /// Number of metric rows (all attempts).
    pub async fn metric_count(&self) -> Result<i64, LedgerError> {
        sqlx::query_scalar("SELECT count(*) FROM metrics")
            .fetch_one(&self.pool)
            .await
            .ctx("count metrics")
    }
}

enum Msg {
    Points(Vec<MetricPoint>),
    Flush(oneshot::Sender<Option<String>>),
}

/// Buffers metric points and writes them in batches from a background task.
/// `log` never blocks; `flush` waits until everything logged before it is committed.
#[derive(Clone)]
pub struct MetricsWriter {
    tx: mpsc::UnboundedSender<Msg>,
}

impl MetricsWriter {
    /// Spawns the writer task on the current tokio runtime.
    pub fn spawn(ledger: Ledger) -> MetricsWriter {
        let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
        tokio::spawn(async move {
            let mut last_error: Option<String> = None;
            while let Some(first) = rx.recv().await {
                let mut batch = Vec::new();
                let mut flushes = Vec::new();
                let mut next = Some(first);
                // Drain whatever is queued: one transaction for all of it.
                while let Some(msg) = next.take() {
                    match msg {
                        Msg::Points(p) => batch.extend(p),
                        Msg::Flush(done) => flushes.push(done),
                    }
                    if batch.len() < 100_000 {
                        next = rx.try_recv().ok();
                    }
                }
                if let Err(e) = ledger.write_metrics(&batch).await {
                    tracing::warn!(error = %e, rows = batch.len(), "metrics batch not written");
                    last_error = Some(e.to_string());
                }
                for done in flushes {
                    let _ = done.send(last_error.take());
                }
            }
        });
        MetricsWriter { tx }
    }

    pub fn log(&self, points: Vec<MetricPoint>) {
        // The receiver lives as long as the runtime; a send after shutdown has nowhere to go.
        let _ = self.tx.send(Msg::Points(points));
    }

    /// Waits until every point logged before this call is committed; reports a failed write.
    pub async fn flush(&self) -> Result<(), LedgerError> {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).is_err() {
            return Err(LedgerError::Writer("stopped".into()));
        }
        match wait.await {
            Ok(None) => Ok(()),
            Ok(Some(e)) => Err(LedgerError::Writer(format!("a batch failed: {e}"))),
            Err(_) => Err(LedgerError::Writer("stopped".into())),
        }
    }
}
