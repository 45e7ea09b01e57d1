//! Running arbitrary SQL text against a ledger file, as the dashboards and the docs do.

use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions, SqliteRow};
use sqlx::{Column, Row, SqlitePool, TypeInfo, ValueRef};
use std::path::Path;

/// A read-only pool on a ledger file (what Grafana's plugin and `sqlite3` see).
pub async fn read_only(path: &Path) -> SqlitePool {
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(SqliteConnectOptions::new().filename(path).read_only(true))
        .await
        .expect("open ledger read-only")
}

/// A cell as the plugin would see it.
#[derive(Clone, Debug, PartialEq)]
pub enum Cell {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
}

impl Cell {
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Cell::Int(i) => Some(*i as f64),
            Cell::Real(r) => Some(*r),
            _ => None,
        }
    }
}

pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
}

impl Table {
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }
}

fn cell(row: &SqliteRow, i: usize) -> Cell {
    let raw = row.try_get_raw(i).expect("raw value");
    if raw.is_null() {
        return Cell::Null;
    }
    match raw.type_info().name() {
        "INTEGER" => Cell::Int(row.try_get(i).expect("integer")),
        "REAL" => Cell::Real(row.try_get(i).expect("real")),
        _ => Cell::Text(
            row.try_get::<String, _>(i)
                .unwrap_or_else(|_| "<blob>".into()),
        ),
    }
}

/// Runs one statement of SQL text and returns every row, every value typed by its storage class.
pub async fn run(pool: &SqlitePool, sql: &str) -> Result<Table, sqlx::Error> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_all(pool)
        .await?;
    let columns = rows
        .first()
        .map(|r| r.columns().iter().map(|c| c.name().to_string()).collect())
        .unwrap_or_default();
    let rows = rows
        .iter()
        .map(|r| (0..r.columns().len()).map(|i| cell(r, i)).collect())
        .collect();
    Ok(Table { columns, rows })
}
