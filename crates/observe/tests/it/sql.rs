//! Running arbitrary SQL text against a ledger file, as the docs' example queries do.

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions, SqliteRow};
use std::path::Path;

/// A read-only pool on a ledger file (what Grafana's plugin and `sqlite3` see).
pub async fn read_only(path: &Path) -> SqlitePool {
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(SqliteConnectOptions::new().filename(path).read_only(true))
        .await
        .expect("open ledger read-only")
}

/// Runs one statement of SQL text and returns every row.
pub async fn run(pool: &SqlitePool, sql: &str) -> Result<Vec<SqliteRow>, sqlx::Error> {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_all(pool)
        .await
}
