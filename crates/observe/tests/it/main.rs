//! Integration tests of tardbot-observe against a realistic ledger (see `fixture`).
//!
//! - `dashboards`: every panel query of every Grafana dashboard, expanded like Grafana and the SQLite
//!   plugin expand them, runs and returns rows with time columns in seconds.
//! - `querying`: every example query of the README's "Querying run history" runs (through sqlx, and through the real
//!   `sqlite3` command line when installed) and returns rows.
//! - `report`: the HTML report of failed, cached and empty runs; rendered in headless Chromium when
//!   `/usr/bin/chromium` exists.
//! - `prometheus`: the live endpoint over real TCP, and a real Prometheus scraping it when
//!   `/usr/bin/prometheus` exists.

mod dashboards;
mod fixture;
mod png;
mod prometheus;
mod querying;
mod report;
mod sql;
