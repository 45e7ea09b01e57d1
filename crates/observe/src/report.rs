//! The HTML run report: one self-contained file (inline CSS, inline SVG, one tiny inline script).

use crate::db::read_pool;
use crate::error::ObserveError;
use crate::history::{AttemptMetrics, Curve, RunHistory, ordered_scalar_keys};
use crate::html::{bytes, count, delta, duration, esc, num, row, short_hash, slug, time_el, utc};
use crate::plots::{Heatmap, Series, heatmap, line_chart, palette};
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

const CHART: (u32, u32) = (620, 300);
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

fn curve_points(c: &Curve) -> Vec<(f64, f64)> {
    c.iter().map(|&(s, v)| (s as f64, v)).collect()
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
        self.training(&mut out)?;
        self.moe(&mut out)?;
        self.evals(&mut out);
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

    fn header(&self, out: &mut String) {
        let run = &self.h.run;
        let _ = write!(
            out,
            "<header>\n<h1>TardBot <span class=\"run\">{}</span> {}</h1>\n<p class=\"meta\">",
            esc(&run.name),
            status_badge(run.status.as_str())
        );
        let _ = write!(out, "created {}", time_el(run.created_ms));
        if let Some(s) = run.started_ms {
            let end = run.ended_ms.or(run.heartbeat_ms).unwrap_or(self.now_ms);
            let _ = write!(out, " · started {} · ran {}", time_el(s), duration(end - s));
        }
        if let Some(e) = run.ended_ms {
            let _ = write!(out, " · ended {}", time_el(e));
        }
        if let Some(host) = &run.host {
            let _ = write!(out, " · host <code>{}</code>", esc(host));
            if let Some(pid) = run.pid {
                let _ = write!(out, " pid {pid}");
            }
        }
        let _ = writeln!(
            out,
            " · config {} · targets: {}</p>",
            short_hash(&run.config_hash, 12),
            esc(&run.target_stages.join(", "))
        );
        self.banner(out);
        out.push_str(
            "<nav><a href=\"#stages\">Stages</a><a href=\"#training\">Training</a><a href=\"#moe\">Experts</a>\
             <a href=\"#evals\">Evals</a><a href=\"#artifacts\">Artifacts</a><a href=\"#checkpoints\">Checkpoints</a>\
             <a href=\"#events\">Events</a><a href=\"#config\">Config</a></nav>\n</header>\n",
        );
    }

    fn banner(&self, out: &mut String) {
        let run = &self.h.run;
        let resume = format!("<code>tardbot-pipeline resume {}</code>", esc(&run.name));
        let last_bad = self.h.attempts.iter().rev().find(|a| {
            matches!(
                a.attempt.status,
                AttemptStatus::Failed | AttemptStatus::Interrupted
            )
        });
        let culprit = last_bad.map_or(String::new(), |a| {
            format!(
                " Stage <b>{}</b> attempt {} {}{}.",
                esc(&a.attempt.stage),
                a.attempt.attempt,
                a.attempt.status,
                a.attempt
                    .error
                    .as_deref()
                    .map_or(String::new(), |e| format!(": <code>{}</code>", esc(e)))
            )
        });
        match run.status {
            RunStatus::Failed => {
                let _ = writeln!(
                    out,
                    "<div class=\"banner bad\">This run failed.{culprit} Continue it with {resume}.</div>"
                );
            }
            RunStatus::Interrupted => {
                let _ = writeln!(
                    out,
                    "<div class=\"banner warn\">This run was interrupted.{culprit} Continue it with {resume}.</div>"
                );
            }
            RunStatus::Running => {
                let beat = run.heartbeat_ms.unwrap_or(run.created_ms);
                let age = self.now_ms - beat;
                if age > STALE_HEARTBEAT_MS {
                    let _ = writeln!(
                        out,
                        "<div class=\"banner warn\">Marked running, but its last heartbeat was {} ago: the process \
                         is probably gone. Continue it with {resume}.</div>",
                        duration(age)
                    );
                } else {
                    let current = self.h.attempts.last().map_or(String::new(), |a| {
                        format!(" Now in stage <b>{}</b>.", esc(&a.attempt.stage))
                    });
                    let _ = writeln!(
                        out,
                        "<div class=\"banner info\">Running (heartbeat {} ago).{current} This report is a snapshot; \
                         render it again for news.</div>",
                        duration(age)
                    );
                }
            }
            RunStatus::Pending => {
                out.push_str("<div class=\"banner info\">This run has not started yet.</div>\n");
            }
            RunStatus::Succeeded => {}
        }
    }

    fn summary(&self, out: &mut String) {
        let h = self.h;
        let done = h
            .attempts
            .iter()
            .filter(|a| a.attempt.status.is_done())
            .count();
        let interrupted = h
            .attempts
            .iter()
            .filter(|a| a.attempt.status == AttemptStatus::Interrupted)
            .count();
        let failed = h
            .attempts
            .iter()
            .filter(|a| a.attempt.status == AttemptStatus::Failed)
            .count();
        let cached = h
            .attempts
            .iter()
            .filter(|a| a.attempt.status == AttemptStatus::Cached)
            .count();
        let mut cards: Vec<(String, String)> = vec![
            (
                "stages done".into(),
                format!(
                    "{done} / {}",
                    h.run.target_stages.len().max(h.stages().len())
                ),
            ),
            (
                "attempts".into(),
                format!(
                    "{} <small>{cached} cached · {interrupted} interrupted · {failed} failed</small>",
                    h.attempts.len()
                ),
            ),
        ];
        // Per stage the furthest step any of its attempts logged a loss for, summed over stages.
        let mut furthest: BTreeMap<&str, i64> = BTreeMap::new();
        for a in &h.attempts {
            if let Some(&(step, _)) = h
                .metrics
                .get(&a.attempt.id)
                .and_then(|m| m.scalars.get("loss"))
                .and_then(|c| c.last())
            {
                let e = furthest.entry(a.attempt.stage.as_str()).or_default();
                *e = (*e).max(step);
            }
        }
        let steps: i64 = furthest.values().sum();
        if steps > 0 {
            cards.push(("training steps logged".into(), count(steps)));
        }
        // The newest training stage's final loss.
        if let Some((a, m)) = h.attempts.iter().rev().find_map(|a| {
            h.metrics
                .get(&a.attempt.id)
                .and_then(|m| m.scalars.get("loss").map(|c| (a, c)))
        }) && let Some(&(step, v)) = m.last()
        {
            cards.push((
                format!("last loss ({})", esc(&a.attempt.stage)),
                format!("{} <small>step {step}</small>", num(Some(v))),
            ));
        }
        if let Some(best) = h
            .evals
            .iter()
            .filter(|e| e.suite == "val" && e.metric == "loss")
            .filter_map(|e| e.value.map(|v| (v, e)))
            .min_by(|a, b| a.0.total_cmp(&b.0))
        {
            cards.push((
                "best val loss".into(),
                format!(
                    "{} <small>{} step {}</small>",
                    num(Some(best.0)),
                    esc(&best.1.stage),
                    best.1.step
                ),
            ));
        }
        if let Some(tokens) = h.checkpoints.iter().map(|c| c.tokens).max() {
            cards.push(("tokens (newest checkpoint)".into(), count(tokens)));
        }
        cards.push(("checkpoints".into(), h.checkpoints.len().to_string()));
        let total: i64 = h.artifacts.iter().map(|a| a.bytes).sum();
        cards.push((
            "artifacts".into(),
            format!("{} <small>{}</small>", h.artifacts.len(), bytes(total)),
        ));
        out.push_str("<section id=\"summary\" class=\"cards\">\n");
        for (label, value) in cards {
            let _ = writeln!(
                out,
                "<div class=\"card\"><div class=\"v\">{value}</div><div class=\"l\">{label}</div></div>"
            );
        }
        out.push_str("</section>\n");
    }

    fn stages(&self, out: &mut String) {
        out.push_str("<section id=\"stages\">\n<h2>Stages</h2>\n");
        if self.h.attempts.is_empty() {
            out.push_str("<p class=\"empty\">No stage has started.</p>\n</section>\n");
            return;
        }
        out.push_str(
            "<table>\n<thead><tr><th>stage</th><th>attempt</th><th>status</th><th>started</th><th>duration</th>\
             <th>cached / resumed</th><th>fingerprint</th><th>error</th></tr></thead>\n<tbody>\n",
        );
        for a in &self.h.attempts {
            let at = &a.attempt;
            let end = at.ended_ms.or(at.heartbeat_ms).unwrap_or(self.now_ms);
            let note = match (at.status, &a.cached_from_run, a.resumed_from_step) {
                (AttemptStatus::Cached, Some(run), _) => format!("cached from <b>{}</b>", esc(run)),
                (AttemptStatus::Cached, None, _) => "cached".into(),
                (_, _, Some(step)) => format!("resumed from checkpoint @ step {step}"),
                _ => String::new(),
            };
            row(
                out,
                &[
                    format!("<b>{}</b>", esc(&at.stage)),
                    at.attempt.to_string(),
                    status_badge(at.status.as_str()),
                    time_el(at.started_ms),
                    duration(end - at.started_ms),
                    note,
                    short_hash(&at.fingerprint, 10),
                    at.error.as_deref().map_or(String::new(), |e| {
                        format!("<code class=\"err\">{}</code>", esc(e))
                    }),
                ],
            );
        }
        out.push_str("</tbody>\n</table>\n</section>\n");
    }

    fn training(&self, out: &mut String) -> Result<(), ObserveError> {
        out.push_str("<section id=\"training\">\n<h2>Training</h2>\n");
        let mut any = false;
        for stage in self.h.stages() {
            let attempts = self.h.trained_attempts(&stage);
            if attempts.iter().all(|(_, m)| m.scalars.is_empty()) {
                continue;
            }
            any = true;
            self.training_stage(out, &stage, &attempts)?;
        }
        if !any {
            out.push_str("<p class=\"empty\">No stage of this run logged training metrics.</p>\n");
        }
        out.push_str("</section>\n");
        Ok(())
    }

    fn training_stage(
        &self,
        out: &mut String,
        stage: &str,
        attempts: &[(&AttemptDetail, &AttemptMetrics)],
    ) -> Result<(), ObserveError> {
        let sid = slug(stage);
        let last = attempts
            .iter()
            .rev()
            .find_map(|(_, m)| m.scalars.get("loss").and_then(|c| c.last()));
        let stride = attempts
            .iter()
            .map(|(_, m)| m.scalar_stride)
            .max()
            .unwrap_or(1);
        let _ = write!(
            out,
            "<h3 id=\"training-{sid}\">{}</h3>\n<p class=\"meta\">{} attempt(s) logged metrics",
            esc(stage),
            attempts.len()
        );
        if let Some(&(step, loss)) = last {
            let _ = write!(out, "; final loss {} at step {step}", num(Some(loss)));
        }
        if stride > 1 {
            let _ = write!(out, "; curves show every {stride}th logged step");
        }
        out.push_str(".</p>\n<div class=\"charts\">\n");

        // Loss: one line per attempt, eval losses of the stage as dots.
        let mut keys: Vec<&str> = Vec::new();
        for (_, m) in attempts {
            for k in ordered_scalar_keys(m) {
                if !keys.contains(&k) {
                    keys.push(k);
                }
            }
        }
        let per_attempt = |key: &str| -> Vec<Series> {
            attempts
                .iter()
                .enumerate()
                .filter_map(|(i, (a, m))| {
                    m.scalars
                        .get(key)
                        .map(|c| Series::line(attempt_label(a), curve_points(c), palette(i)))
                })
                .collect()
        };
        if keys.contains(&"loss") {
            let mut series = per_attempt("loss");
            let mut by_suite: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
            for e in self
                .h
                .evals
                .iter()
                .filter(|e| e.stage == stage && e.metric == "loss")
            {
                if let Some(v) = e.value {
                    by_suite
                        .entry(e.suite.as_str())
                        .or_default()
                        .push((e.step as f64, v));
                }
            }
            for (i, (suite, points)) in by_suite.into_iter().enumerate() {
                series.push(Series::dots(
                    format!("{suite} loss (eval)"),
                    points,
                    palette(attempts.len() + i),
                ));
            }
            self.figure(
                out,
                &format!("loss-{sid}"),
                &format!("{stage}: loss"),
                "loss",
                &series,
            )?;
        }
        let titled = [
            ("lr", "learning rate"),
            ("grad_norm", "gradient norm"),
            ("tokens_per_s", "throughput (tokens/s)"),
            ("mfu", "model FLOPs utilisation"),
        ];
        // Auxiliary losses share one chart.
        let aux: Vec<Series> = ["aux_loss", "z_loss"]
            .iter()
            .filter(|k| keys.contains(k))
            .enumerate()
            .flat_map(|(j, k)| {
                attempts.iter().enumerate().filter_map(move |(i, (a, m))| {
                    m.scalars.get(*k).map(|c| {
                        Series::line(
                            format!("{k} · attempt {}", a.attempt.attempt),
                            curve_points(c),
                            palette(i + 3 * j),
                        )
                    })
                })
            })
            .collect();
        for key in keys {
            match key {
                "loss" | "z_loss" => {}
                "aux_loss" => {
                    self.figure(
                        out,
                        &format!("plot-{sid}-aux"),
                        &format!("{stage}: router auxiliary losses"),
                        "loss",
                        &aux,
                    )?;
                }
                _ => {
                    let title = titled.iter().find(|t| t.0 == key).map_or(key, |t| t.1);
                    self.figure(
                        out,
                        &format!("plot-{sid}-{}", slug(key)),
                        &format!("{stage}: {title}"),
                        key,
                        &per_attempt(key),
                    )?;
                }
            }
        }
        out.push_str("</div>\n");
        Ok(())
    }

    fn figure(
        &self,
        out: &mut String,
        id: &str,
        title: &str,
        y: &str,
        series: &[Series],
    ) -> Result<(), ObserveError> {
        if let Some(svg) = line_chart(title, y, series, CHART)? {
            let _ = writeln!(out, "<figure id=\"{}\">{svg}</figure>", esc(id));
        }
        Ok(())
    }

    fn moe(&self, out: &mut String) -> Result<(), ObserveError> {
        out.push_str("<section id=\"moe\">\n<h2>Experts</h2>\n");
        let mut any = false;
        for stage in self.h.stages() {
            let attempts = self.h.trained_attempts(&stage);
            // Per layer and step, the newest attempt's values win (a resumed attempt replays steps).
            let mut load: BTreeMap<u32, BTreeMap<i64, BTreeMap<u32, f64>>> = BTreeMap::new();
            for (_, m) in &attempts {
                for (&(layer, expert), curve) in &m.expert_load {
                    for &(step, tokens) in curve {
                        load.entry(layer)
                            .or_default()
                            .entry(step)
                            .or_default()
                            .insert(expert, tokens);
                    }
                }
            }
            let has_router = attempts
                .iter()
                .any(|(_, m)| !m.router_entropy.is_empty() || !m.dead_experts.is_empty());
            if load.is_empty() && !has_router {
                continue;
            }
            any = true;
            let sid = slug(&stage);
            let _ = write!(
                out,
                "<h3 id=\"moe-{sid}\">{}</h3>\n<p class=\"meta\">Share of each layer's routed tokens per expert over \
                 training: <span class=\"sw\" style=\"background:#f7f7f7\"></span> balanced (1/experts), \
                 <span class=\"sw\" style=\"background:#b2182b\"></span> ≥4× overloaded, \
                 <span class=\"sw\" style=\"background:#2166ac\"></span> ≤¼ of its share, \
                 <span class=\"sw\" style=\"background:#081d58\"></span> no tokens (dead).</p>\n<div class=\"charts heat\">\n",
                esc(&stage)
            );
            for (layer, steps) in &load {
                if let Some(svg) = heatmap(&layer_heatmap(&stage, *layer, steps), 620)? {
                    let _ = writeln!(out, "<figure id=\"heat-{sid}-l{layer}\">{svg}</figure>");
                }
            }
            let layered = |pick: fn(&AttemptMetrics) -> &BTreeMap<u32, Curve>| -> Vec<Series> {
                let mut merged: BTreeMap<u32, BTreeMap<i64, f64>> = BTreeMap::new();
                for (_, m) in &attempts {
                    for (layer, c) in pick(m) {
                        merged.entry(*layer).or_default().extend(c.iter().copied());
                    }
                }
                merged
                    .into_iter()
                    .enumerate()
                    .map(|(i, (layer, c))| {
                        Series::line(
                            format!("layer {layer}"),
                            c.into_iter().map(|(s, v)| (s as f64, v)).collect(),
                            palette(i),
                        )
                    })
                    .collect()
            };
            self.figure(
                out,
                &format!("plot-{sid}-router-entropy"),
                &format!("{stage}: router entropy"),
                "nats",
                &layered(|m| &m.router_entropy),
            )?;
            self.figure(
                out,
                &format!("plot-{sid}-dead-experts"),
                &format!("{stage}: dead experts"),
                "experts",
                &layered(|m| &m.dead_experts),
            )?;
            out.push_str("</div>\n");
        }
        if !any {
            out.push_str("<p class=\"empty\">No stage of this run logged expert load or router metrics.</p>\n");
        }
        out.push_str("</section>\n");
        Ok(())
    }

    fn evals(&self, out: &mut String) {
        out.push_str("<section id=\"evals\">\n<h2>Evals</h2>\n");
        if self.h.stage_evals.is_empty() {
            out.push_str("<p class=\"empty\">No evals recorded.</p>\n</section>\n");
            return;
        }
        out.push_str(
            "<p class=\"meta\">Per stage, each metric's first measurement (before the stage trained, when the stage \
             evaluates at its start) and its last one (after).</p>\n",
        );
        let mut stage = "";
        for e in &self.h.stage_evals {
            if e.stage != stage {
                if !stage.is_empty() {
                    out.push_str("</tbody>\n</table>\n");
                }
                stage = &e.stage;
                let _ = write!(
                    out,
                    "<h3 id=\"evals-{}\">{}</h3>\n<table class=\"evals\">\n<thead><tr><th>suite</th><th>metric</th>\
                     <th>before</th><th>after</th><th>change</th><th>samples</th><th>evals</th></tr></thead>\n<tbody>\n",
                    slug(stage),
                    esc(stage)
                );
            }
            let change = match (e.before, e.after) {
                (Some(b), Some(a)) if e.evals > 1 => Some(a - b),
                _ => None,
            };
            let class = match (change, is_lower_better(&e.metric)) {
                (Some(d), Some(lower)) if d != 0.0 => {
                    if (d < 0.0) == lower {
                        "better"
                    } else {
                        "worse"
                    }
                }
                _ => "",
            };
            let at = |v: Option<f64>, step: Option<i64>| {
                format!(
                    "{}{}",
                    num(v),
                    step.map_or(String::new(), |s| format!(" <small>@{s}</small>"))
                )
            };
            // A single eval is "before" when taken at the stage's start, else "after".
            let single_before = e.evals == 1 && e.first_step == Some(0);
            row(
                out,
                &[
                    esc(&e.suite),
                    esc(&e.metric),
                    if e.evals > 1 || single_before {
                        at(e.before, e.first_step)
                    } else {
                        "–".into()
                    },
                    if single_before {
                        "–".into()
                    } else {
                        at(e.after, e.last_step)
                    },
                    format!("<span class=\"{class}\">{}</span>", delta(change)),
                    e.samples.map_or("–".into(), |s| s.to_string()),
                    e.evals.to_string(),
                ],
            );
        }
        out.push_str("</tbody>\n</table>\n");
        let _ = write!(
            out,
            "<details><summary>All {} evals</summary>\n<table>\n<thead><tr><th>time</th><th>stage</th><th>attempt</th><th>step</th><th>suite</th><th>metric</th><th>value</th><th>samples</th></tr></thead>\n<tbody>\n",
            self.h.evals.len()
        );
        for e in &self.h.evals {
            row(
                out,
                &[
                    time_el(e.time_ms),
                    esc(&e.stage),
                    e.attempt.to_string(),
                    e.step.to_string(),
                    esc(&e.suite),
                    esc(&e.metric),
                    num(e.value),
                    e.samples.to_string(),
                ],
            );
        }
        out.push_str("</tbody>\n</table>\n</details>\n</section>\n");
    }

    fn artifacts(&self, out: &mut String) {
        out.push_str("<section id=\"artifacts\">\n<h2>Artifacts</h2>\n");
        if self.h.artifacts.is_empty() {
            out.push_str(
                "<p class=\"empty\">No stage of this run has published outputs.</p>\n</section>\n",
            );
            return;
        }
        out.push_str(
            "<table>\n<thead><tr><th>stage</th><th>kind</th><th>path</th><th>BLAKE3</th><th>size</th>\
             <th>produced by</th><th>consumed by</th></tr></thead>\n<tbody>\n",
        );
        for a in &self.h.artifacts {
            let produced = match &a.origin_run {
                Some(run) => format!("cached from <b>{}</b>", esc(run)),
                None => format!("attempt {}", a.attempt),
            };
            row(
                out,
                &[
                    format!("<b>{}</b>", esc(&a.stage)),
                    esc(&a.kind),
                    format!("<code>{}</code>", esc(&a.path)),
                    short_hash(&a.hash, 16),
                    bytes(a.bytes),
                    produced,
                    esc(a.consumed_by.as_deref().unwrap_or("")),
                ],
            );
        }
        out.push_str("</tbody>\n</table>\n</section>\n");
    }

    fn checkpoints(&self, out: &mut String) {
        out.push_str("<section id=\"checkpoints\">\n<h2>Checkpoints</h2>\n");
        if self.h.checkpoints.is_empty() {
            out.push_str("<p class=\"empty\">No checkpoints.</p>\n</section>\n");
            return;
        }
        out.push_str(
            "<table>\n<thead><tr><th>id</th><th>stage</th><th>attempt</th><th>step</th><th>tokens</th><th>size</th>\
             <th>BLAKE3</th><th>complete</th><th>previous</th><th>resumed by attempt</th><th>evals</th><th>path</th></tr></thead>\n<tbody>\n",
        );
        for c in &self.h.checkpoints {
            row(
                out,
                &[
                    c.id.to_string(),
                    esc(&c.stage),
                    c.attempt.to_string(),
                    c.step.to_string(),
                    count(c.tokens),
                    bytes(c.bytes),
                    short_hash(&c.hash, 12),
                    if c.complete {
                        "yes".into()
                    } else {
                        "<span class=\"worse\">no</span>".into()
                    },
                    c.previous.map_or("–".into(), |p| p.to_string()),
                    esc(c.resumed_by.as_deref().unwrap_or("")),
                    c.evals.to_string(),
                    format!("<code>{}</code>", esc(&c.path)),
                ],
            );
        }
        out.push_str("</tbody>\n</table>\n</section>\n");
    }

    fn events(&self, out: &mut String) {
        out.push_str("<section id=\"events\">\n<h2>Events</h2>\n");
        if self.h.events.is_empty() {
            out.push_str("<p class=\"empty\">No events.</p>\n</section>\n");
            return;
        }
        if self.h.event_count > self.h.events.len() as i64 {
            let _ = writeln!(
                out,
                "<p class=\"meta\">The newest {} of {} events.</p>",
                self.h.events.len(),
                self.h.event_count
            );
        }
        let stage_of: BTreeMap<i64, &str> = self
            .h
            .attempts
            .iter()
            .map(|a| (a.attempt.id, a.attempt.stage.as_str()))
            .collect();
        out.push_str("<table>\n<thead><tr><th>time</th><th>kind</th><th>stage</th><th>payload</th></tr></thead>\n<tbody>\n");
        for e in &self.h.events {
            let mut payload = e.payload.clone();
            if payload.chars().count() > 240 {
                payload = payload.chars().take(237).collect::<String>() + "...";
            }
            row(
                out,
                &[
                    time_el(e.time_ms),
                    format!("<b>{}</b>", esc(&e.kind)),
                    esc(e
                        .attempt_id
                        .and_then(|id| stage_of.get(&id).copied())
                        .unwrap_or("")),
                    format!("<code>{}</code>", esc(&payload)),
                ],
            );
        }
        out.push_str("</tbody>\n</table>\n</section>\n");
    }

    fn config(&self, out: &mut String) {
        let run = &self.h.run;
        let _ = write!(
            out,
            "<section id=\"config\">\n<h2>Config</h2>\n<p class=\"meta\">As recorded at run creation (hash {}, \
             relative paths resolve against <code>{}</code>).</p>\n<pre>{}</pre>\n</section>\n",
            short_hash(&run.config_hash, 16),
            esc(&run.config_dir),
            esc(&run.config_toml)
        );
    }
}

/// Bins one layer's per-step expert load into at most [`HEAT_BINS`] columns of mean shares.
fn layer_heatmap(stage: &str, layer: u32, steps: &BTreeMap<i64, BTreeMap<u32, f64>>) -> Heatmap {
    let experts = steps
        .values()
        .filter_map(|e| e.keys().next_back())
        .max()
        .map_or(0, |m| m + 1);
    let step_list: Vec<i64> = steps.keys().copied().collect();
    let n_bins = step_list.len().min(HEAT_BINS);
    let mut bins = Vec::with_capacity(n_bins);
    let mut cells = Vec::with_capacity(n_bins);
    for b in 0..n_bins {
        let lo = b * step_list.len() / n_bins;
        let hi = (b + 1) * step_list.len() / n_bins;
        let x0 = step_list[lo] as f64;
        let x1 = step_list
            .get(hi)
            .map_or(step_list[hi - 1] as f64 + 1.0, |&s| s as f64);
        let mut sums = vec![0.0; experts as usize];
        let mut counts = vec![0u32; experts as usize];
        for step in &step_list[lo..hi] {
            let Some(load) = steps.get(step) else {
                continue;
            };
            let total: f64 = load.values().sum();
            if total <= 0.0 {
                continue;
            }
            for (&e, &tokens) in load {
                sums[e as usize] += tokens / total;
                counts[e as usize] += 1;
            }
        }
        bins.push((x0, x1));
        cells.push(
            sums.iter()
                .zip(&counts)
                .map(|(s, &c)| (c > 0).then(|| s / f64::from(c)))
                .collect(),
        );
    }
    Heatmap {
        title: format!("{stage} · layer {layer} · expert load"),
        experts,
        bins,
        cells,
    }
}

const HEAT_BINS: usize = 60;

const CSS: &str = r#"
:root{--fg:#1d2330;--muted:#667085;--line:#e4e7ec;--bg:#f6f7f9;--ok:#127a3a;--bad:#b42318;--warn:#b54708;--info:#175cd3;--cache:#475467}
*{box-sizing:border-box}
body{margin:0;padding:24px 32px 48px;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:var(--fg);background:var(--bg)}
h1{font-size:26px;margin:0 0 4px}h1 .run{font-family:ui-monospace,SFMono-Regular,Menlo,monospace}
h2{font-size:19px;margin:32px 0 10px;padding-bottom:4px;border-bottom:1px solid var(--line)}
h3{font-size:15px;margin:18px 0 4px}
.meta{color:var(--muted);margin:4px 0 10px}
code{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12.5px}
nav{margin:12px 0 0;display:flex;gap:14px;flex-wrap:wrap}nav a{color:var(--info);text-decoration:none}
.badge{display:inline-block;padding:1px 9px;border-radius:10px;font-size:12px;font-weight:600;color:#fff;vertical-align:middle}
.s-succeeded{background:var(--ok)}.s-failed{background:var(--bad)}.s-interrupted{background:var(--warn)}
.s-running{background:var(--info)}.s-cached{background:var(--cache)}.s-pending{background:#98a2b3}
.banner{margin:12px 0 0;padding:10px 14px;border-radius:8px;border:1px solid}
.banner.bad{background:#fef3f2;border-color:#fecdca}.banner.warn{background:#fffaeb;border-color:#fedf89}.banner.info{background:#eff8ff;border-color:#b2ddff}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin-top:18px}
.card{background:#fff;border:1px solid var(--line);border-radius:10px;padding:10px 16px;min-width:150px}
.card .v{font-size:20px;font-weight:650}.card .v small{font-size:12px;font-weight:400;color:var(--muted)}.card .l{color:var(--muted);font-size:12px}
table{border-collapse:collapse;background:#fff;border:1px solid var(--line);border-radius:8px;width:100%;margin:6px 0 8px}
th,td{padding:5px 10px;text-align:left;border-bottom:1px solid var(--line);vertical-align:top}
th{font-size:12px;color:var(--muted);font-weight:600;background:#fafbfc}
tbody tr:nth-child(even){background:#fcfcfd}
td small{color:var(--muted)}
.err{color:var(--bad);white-space:pre-wrap}
.better{color:var(--ok);font-weight:600}.worse{color:var(--bad);font-weight:600}
.charts{display:flex;flex-wrap:wrap;gap:14px}
figure{margin:0;background:#fff;border:1px solid var(--line);border-radius:8px;padding:6px;flex:0 1 634px}
figure svg{display:block;max-width:100%;height:auto}
.sw{display:inline-block;width:12px;height:12px;border:1px solid #ccc;vertical-align:middle}
pre{background:#fff;border:1px solid var(--line);border-radius:8px;padding:12px;overflow:auto;max-height:480px;font-size:12.5px}
details{margin:6px 0}summary{cursor:pointer;color:var(--info)}
.empty{color:var(--muted);font-style:italic}
footer{margin-top:36px;color:var(--muted);font-size:12px}
"#;

/// Shows each timestamp in the reader's local time as a tooltip and marks the page as fully loaded
/// (the Chromium test checks the marker: the script ran without an error).
const SCRIPT: &str = r#"
(function () {
  var times = document.querySelectorAll("time[data-ms]");
  for (var i = 0; i < times.length; i++) {
    var d = new Date(Number(times[i].getAttribute("data-ms")));
    times[i].title = d.toLocaleString() + " (your local time)";
  }
  document.documentElement.setAttribute("data-report-ready", String(document.querySelectorAll("figure svg").length));
})();
"#;
