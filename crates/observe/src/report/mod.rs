//! The HTML run report: one self-contained file (inline CSS, inline SVG, one tiny inline script).
//!
//! - this file: reading the run and the page's frame;
//! - [`overview`]: header, failure banner, summary cards, stage table;
//! - [`charts`]: training curves (the loss of every stage first) and the MoE load heatmaps;
//! - [`data`]: the figures of data stages, as tables;
//! - [`tables`]: evals, artifacts, checkpoints, events, the recorded config;
//!
//! The page reads in the order a reader asks: did the run work (header, stages), did it learn (loss
//! curves, evals before and after), then the details (training metrics, experts, data stages,
//! artifacts, checkpoints, events, config). A metric logged once is a number in a table, never a
//! chart.
//! - [`assets`]: the page's CSS and script.

mod assets;
mod charts;
mod data;
mod overview;
mod tables;

use assets::{CSS, SCRIPT};

use crate::db::read_pool;
use crate::error::ObserveError;
use crate::history::{AttemptMetrics, Curve, RunHistory, ordered_scalar_keys};
use crate::html::{bytes, count, delta, duration, esc, num, row, short_hash, slug, time_el, utc};
use crate::plots::{Heatmap, MIN_CHART_POINTS, Series, heatmap, line_chart, palette};
use std::collections::BTreeMap;
use std::fmt::Write;
use tardbot_ledger::{AttemptDetail, AttemptStatus, Ledger, RunStatus, now_ms};

/// Renders the report of run `run` (a name like `run-7` or an id like `7`) as one HTML document.
///
/// Everything is read from the ledger through read-only connections; nothing is written. A run in any
/// state renders: a failed or interrupted run gets a banner with the error and the resume command, a
/// running one shows how far it got, and one that never started a stage shows its config.
pub async fn render_report(ledger: &Ledger, run: &str) -> Result<String, ObserveError> {
    let run = ledger.run(run).await?;
    let pool = read_pool(ledger).await?;
    let history = RunHistory::load(&pool, run).await;
    pool.close().await;
    let history = history?;
    Report {
        h: &history,
        now_ms: now_ms(),
        ledger_path: ledger.path().display().to_string(),
    }
    .html()
}

/// Drawn size of a chart: about its width in a three-across grid at 1400 px, so labels keep their size.
const CHART: (u32, u32) = (460, 280);
/// How long a running run's heartbeat may be silent before the report calls it stale.
const STALE_HEARTBEAT_MS: i64 = 60_000;

struct Report<'a> {
    h: &'a RunHistory,
    now_ms: i64,
    ledger_path: String,
}

fn status_badge(status: &str) -> String {
    format!("<span class=\"badge s-{0}\">{0}</span>", esc(status))
}

fn is_lower_better(metric: &str) -> Option<bool> {
    let m = metric.to_ascii_lowercase();
    if ["loss", "bpb", "ppl", "perplexity", "error", "wer"]
        .iter()
        .any(|k| m.contains(k))
    {
        Some(true)
    } else if [
        "acc", "exact", "match", "valid", "rate", "f1", "score", "pass",
    ]
    .iter()
    .any(|k| m.contains(k))
    {
        Some(false)
    } else {
        None
    }
}

fn curve_points(c: &Curve, scale: f64) -> Vec<(f64, f64)> {
    c.iter().map(|&(s, v)| (s as f64, v * scale)).collect()
}

fn attempt_label(a: &AttemptDetail) -> String {
    let mut label = format!("attempt {} ({})", a.attempt.attempt, a.attempt.status);
    if let Some(step) = a.resumed_from_step {
        let _ = write!(label, ", resumed @ {step}");
    }
    label
}

impl Report<'_> {
    fn html(&self) -> Result<String, ObserveError> {
        let run = &self.h.run;
        let mut out = String::with_capacity(256 * 1024);
        let _ = write!(
            out,
            "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
             <meta name=\"generator\" content=\"tardbot-observe\">\n\
             <title>TardBot {} — {}</title>\n<style>{CSS}</style>\n</head>\n<body>\n",
            esc(&run.name),
            run.status
        );
        self.header(&mut out);
        self.summary(&mut out);
        self.stages(&mut out);
        self.learning(&mut out)?;
        self.evals(&mut out);
        self.training(&mut out)?;
        self.moe(&mut out)?;
        self.data(&mut out);
        self.artifacts(&mut out);
        self.checkpoints(&mut out);
        self.events(&mut out);
        self.config(&mut out);
        let _ = write!(
            out,
            "<footer>Generated {} UTC by tardbot-observe from <code>{}</code>.</footer>\n\
             <script>{SCRIPT}</script>\n</body>\n</html>\n",
            utc(self.now_ms),
            esc(&self.ledger_path)
        );
        Ok(out)
    }
}
