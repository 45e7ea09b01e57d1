//! Opening the database (pragmas, migrations) and the write-transaction helper.

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool, Transaction};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("cannot open ledger {}: {source}", path.display())]
    Open { path: PathBuf, source: sqlx::Error },
    #[error("cannot migrate ledger {}: {source}", path.display())]
    Migrate {
        path: PathBuf,
        source: sqlx::migrate::MigrateError,
    },
    #[error("ledger query failed ({what}): {source}")]
    Query {
        what: &'static str,
        source: sqlx::Error,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("metrics writer: {0}")]
    Writer(String),
}

pub(crate) trait Context<T> {
    fn ctx(self, what: &'static str) -> Result<T, LedgerError>;
}

impl<T> Context<T> for Result<T, sqlx::Error> {
    fn ctx(self, what: &'static str) -> Result<T, LedgerError> {
        self.map_err(|source| LedgerError::Query { what, source })
    }
}

/// A handle on one ledger file. Cheap to clone (a connection pool).
#[derive(Clone, Debug)]
pub struct Ledger {
    pub(crate) pool: SqlitePool,
    path: PathBuf,
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Ledger {
    /// Opens (creating if needed) the ledger at `path` and applies pending migrations.
    pub async fn open(path: &Path) -> Result<Ledger, LedgerError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| LedgerError::Open {
                path: path.to_path_buf(),
                source: sqlx::Error::Io(e),
            })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(60))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|source| LedgerError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        // Two processes opening a fresh ledger at once (a run and `status`, or tests polling a run)
        // must not both apply the migrations: serialise them with an OS lock next to the database.
        let mut lock_path = path.as_os_str().to_owned();
        lock_path.push(".migrate-lock");
        let lock = std::fs::File::create(&lock_path)
            .and_then(|f| f.lock().map(|()| f))
            .map_err(|e| LedgerError::Open {
                path: path.to_path_buf(),
                source: sqlx::Error::Io(e),
            })?;
        let migrated = sqlx::migrate!("../../migrations").run(&pool).await;
        drop(lock);
        migrated.map_err(|source| LedgerError::Migrate {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Ledger {
            pool,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Starts a write transaction with `BEGIN IMMEDIATE`: the write lock is taken up front, so a
    /// concurrent writer waits on the busy timeout instead of failing on a lock upgrade.
    pub(crate) async fn write(&self) -> Result<Transaction<'static, Sqlite>, LedgerError> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .ctx("begin immediate")
    }

    /// Runs `PRAGMA integrity_check` and returns its verdict (`"ok"` when healthy).
    pub async fn integrity_check(&self) -> Result<String, LedgerError> {
        sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(&self.pool)
            .await
            .ctx("integrity check")
    }

    /// Closes the pool, checkpointing the WAL.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}
