//! Reading the TardBot ledger for people: the HTML run report, the live Prometheus endpoint, and the
//! check of the Grafana dashboards.
//!
//! What it does:
//! - [`render_report`] turns one run of the ledger into a single self-contained HTML file (inline CSS,
//!   inline SVG plots drawn with `plotters`, one small inline script, nothing fetched): config, stage table
//!   with durations and cached/resumed attempts, loss/LR/grad-norm/throughput curves per training stage,
//!   MoE expert-load heatmaps and router health, eval tables before/after each stage, artifacts with hashes
//!   and lineage, checkpoints, recent events. It works for succeeded, failed, interrupted and still-running
//!   runs alike, and for a run that never started a stage.
//! - [`MetricsServer`] / [`serve_metrics`] answer `GET /metrics` on a loopback address with the Prometheus
//!   text exposition of where a run stands (status, current stage, step, loss, tokens/s, expert load,
//!   router health, evals, checkpoints), read from the ledger at every scrape. [`exposition`] is the same
//!   text without the server.
//! - [`check_dashboards`] runs every panel query of the Grafana dashboards in `dashboards/json` against a
//!   ledger file, expanded as Grafana's template service ([`interpolate`]: variables, `$__from`/`$__to`
//!   in milliseconds) and the `frser-sqlite-datasource` plugin ([`apply_plugin_macros`]:
//!   `$__unixEpochGroupSeconds`) expand them, and checks that their time columns hold unix seconds;
//!   it reports which queries came back empty ([`DashboardCheck`]) and every problem at once.
//!
//! What it does not do: it never writes to the ledger (it opens its own read-only connections on the
//! ledger's file, so a report or a scrape never competes with a run for the write lock), it does not
//! compute anything the ledger does not already hold, and it is no general web server: one tiny HTTP/1.1
//! responder over tokio's `TcpListener`, no framework, no TLS, no authentication — keep it on 127.0.0.1.
//!
//! The SQL views these read (`v_train_steps`, `v_stage_loss`, `v_expert_load`, `v_router`,
//! `v_stage_evals`, `v_checkpoint_lineage`, `v_run_artifacts`, `v_run_progress`, …) live in
//! `migrations/0002_observability.sql`; the Grafana dashboards in `dashboards/` read the same views.

mod dashboards;
mod db;
mod error;
mod history;
mod html;
mod keys;
mod plots;
mod prometheus;
mod report;

pub use dashboards::{
    DATASOURCE_TYPE, DATASOURCE_UID, DashboardCheck, PanelQuery, apply_plugin_macros,
    check_dashboards, interpolate,
};
pub use error::ObserveError;
pub use prometheus::{MetricsServer, exposition, serve_metrics};
pub use report::render_report;
