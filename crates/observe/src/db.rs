//! Read-only connections on a ledger's file.
//!
//! `Ledger` keeps its pool to itself, and a reader should not share the writer's connections anyway:
//! these connections are opened read-only on the same file (WAL mode lets them read while a run writes).

use crate::error::ObserveError;
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use std::path::Path;
use std::time::Duration;
use tardbot_ledger::Ledger;

/// A small read-only pool on the ledger's database file.
pub(crate) async fn read_pool(ledger: &Ledger) -> Result<SqlitePool, ObserveError> {
    read_pool_at(ledger.path()).await
}

/// A small read-only pool on a ledger file by path (what Grafana's plugin and `sqlite3` see).
pub(crate) async fn read_pool_at(path: &Path) -> Result<SqlitePool, ObserveError> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .busy_timeout(Duration::from_secs(10));
    SqlitePoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await
        .map_err(|source| ObserveError::Open {
            path: path.to_path_buf(),
            source,
        })
}
