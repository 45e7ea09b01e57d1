//! The crate's error type.

use std::net::SocketAddr;
use std::path::PathBuf;
use tardbot_ledger::LedgerError;

#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("cannot open ledger {} for reading: {source}", path.display())]
    Open { path: PathBuf, source: sqlx::Error },
    #[error("ledger query failed ({what}): {source}")]
    Query {
        what: &'static str,
        source: sqlx::Error,
    },
    #[error("cannot draw the {what} plot: {message}")]
    Plot { what: String, message: String },
    #[error("cannot read dashboards at {}: {source}", path.display())]
    DashboardFiles {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Every problem found by [`crate::check_dashboards`], each starting with
    /// `dashboard / panel / refId` (or as much of it as applies).
    #[error("{} problem(s) in the Grafana dashboards:\n- {}", problems.len(), problems.join("\n- "))]
    Dashboards { problems: Vec<String> },
    #[error("metrics endpoint on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

pub(crate) trait QueryContext<T> {
    fn ctx(self, what: &'static str) -> Result<T, ObserveError>;
}

impl<T> QueryContext<T> for Result<T, sqlx::Error> {
    fn ctx(self, what: &'static str) -> Result<T, ObserveError> {
        self.map_err(|source| ObserveError::Query { what, source })
    }
}
