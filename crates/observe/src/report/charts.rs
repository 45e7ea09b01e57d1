//! Training curves: the loss of every training stage first, then per stage the other per-step
//! metrics; the MoE expert-load heatmaps.

use super::*;

/// One line per attempt of `key`, values times `scale`.
fn per_attempt(
    attempts: &[(&AttemptDetail, &AttemptMetrics)],
    key: &str,
    scale: f64,
) -> Vec<Series> {
    attempts
        .iter()
        .enumerate()
        .filter_map(|(i, (a, m))| {
            m.scalars
                .get(key)
                .map(|c| Series::line(attempt_label(a), curve_points(c, scale), palette(i)))
        })
        .collect()
}

/// The per-step training metrics besides the loss, in the order the details show them: key, chart
/// title, y-axis title with its unit, and the factor values are drawn with.
const DETAIL_CHARTS: [(&str, &str, &str, f64); 6] = [
    (
        "total_loss",
        "total loss (cross-entropy + router terms)",
        "loss (nats/token)",
        1.0,
    ),
    (
        "grad_norm",
        "gradient norm",
        "L2 norm (before clipping)",
        1.0,
    ),
    ("lr", "learning rate", "learning rate", 1.0),
    ("tokens_per_s", "throughput", "tokens/s", 1.0),
    (
        "mfu",
        "model FLOPs utilisation",
        "MFU (% of fp32 peak)",
        100.0,
    ),
    (
        "aux_loss",
        "router auxiliary losses",
        "loss (unitless)",
        1.0,
    ),
];

/// The attempts of one stage that logged metrics, oldest first.
pub(super) type Attempts<'a> = Vec<(&'a AttemptDetail, &'a AttemptMetrics)>;
/// Stages with their attempts, in order.
pub(super) type Stages<'a> = Vec<(String, Attempts<'a>)>;

/// Whether a stage trained: it logged a per-step loss. Its metrics are steps of training; any other
/// stage's metrics are figures of its data (see [`super::data`]).
pub(super) fn is_training(attempts: &[(&AttemptDetail, &AttemptMetrics)]) -> bool {
    attempts.iter().any(|(_, m)| m.scalars.contains_key("loss"))
}

impl Report<'_> {
    /// Stages that logged metrics, in order, split into training stages and data stages.
    pub(super) fn stages_with_metrics(&self) -> (Stages<'_>, Stages<'_>) {
        let (mut training, mut data) = (Vec::new(), Vec::new());
        for stage in self.h.stages() {
            let attempts = self.h.trained_attempts(&stage);
            if attempts.iter().all(|(_, m)| m.scalars.is_empty()) {
                continue;
            }
            if is_training(&attempts) {
                training.push((stage, attempts));
            } else {
                data.push((stage, attempts));
            }
        }
        (training, data)
    }

    /// "Did it learn": the loss curve of every training stage, held-out losses as dots, side by side.
    pub(super) fn learning(&self, out: &mut String) -> Result<(), ObserveError> {
        out.push_str("<section id=\"learning\">\n<h2>Learning</h2>\n");
        let (training, _) = self.stages_with_metrics();
        if training.is_empty() {
            out.push_str("<p class=\"empty\">No stage of this run logged training metrics.</p>\n</section>\n");
            return Ok(());
        }
        out.push_str(
            "<p class=\"meta\">Training loss per step of every training stage (a line per attempt), the held-out \
             evaluations as dots. Evals before and after each stage follow below.</p>\n<div class=\"charts\">\n",
        );
        let mut flat = Vec::new();
        for (stage, attempts) in &training {
            if !self.loss_figure(out, stage, attempts)? {
                flat.push(stage.as_str());
            }
        }
        out.push_str("</div>\n");
        if !flat.is_empty() {
            let _ = writeln!(
                out,
                "<p class=\"meta\">No curve for {}: fewer than two logged steps (the values are in the \
                 training details).</p>",
                esc(&flat.join(", "))
            );
        }
        out.push_str("</section>\n");
        Ok(())
    }

    /// The loss chart of one stage; false when it has no line to draw.
    fn loss_figure(
        &self,
        out: &mut String,
        stage: &str,
        attempts: &[(&AttemptDetail, &AttemptMetrics)],
    ) -> Result<bool, ObserveError> {
        let sid = slug(stage);
        let mut series = per_attempt(attempts, "loss", 1.0);
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
                format!("{suite} loss (held-out eval)"),
                points,
                palette(attempts.len() + i),
            ));
        }
        let last = attempts
            .iter()
            .rev()
            .find_map(|(_, m)| m.scalars.get("loss").and_then(|c| c.last()));
        let stride = attempts
            .iter()
            .map(|(_, m)| m.scalar_stride)
            .max()
            .unwrap_or(1);
        let mut note = format!("{} attempt(s)", attempts.len());
        if let Some(&(step, loss)) = last {
            let _ = write!(note, " · final loss {} at step {step}", num(Some(loss)));
        }
        if stride > 1 {
            let _ = write!(note, " · every {stride}th logged step shown");
        }
        self.figure(
            out,
            &format!("loss-{sid}"),
            &format!("{stage}: loss"),
            "loss (nats/token)",
            &series,
            &note,
        )
    }

    /// Training details: per training stage every other per-step metric, and the figures logged once.
    pub(super) fn training(&self, out: &mut String) -> Result<(), ObserveError> {
        out.push_str("<section id=\"training\">\n<h2>Training details</h2>\n");
        let (training, _) = self.stages_with_metrics();
        if training.is_empty() {
            out.push_str("<p class=\"empty\">No stage of this run logged training metrics.</p>\n");
        }
        for (stage, attempts) in &training {
            self.training_stage(out, stage, attempts)?;
        }
        out.push_str("</section>\n");
        Ok(())
    }

    pub(super) fn training_stage(
        &self,
        out: &mut String,
        stage: &str,
        attempts: &[(&AttemptDetail, &AttemptMetrics)],
    ) -> Result<(), ObserveError> {
        let sid = slug(stage);
        let _ = writeln!(
            out,
            "<h3 id=\"training-{sid}\">{}</h3>\n<div class=\"charts\">",
            esc(stage)
        );
        let mut keys: Vec<&str> = Vec::new();
        for (_, m) in attempts {
            for k in ordered_scalar_keys(m) {
                if !keys.contains(&k) {
                    keys.push(k);
                }
            }
        }
        // A key charts when it has two steps in one attempt; otherwise it is a number in the table.
        let (charted, single): (Vec<&str>, Vec<&str>) = keys.into_iter().partition(|k| {
            attempts.iter().any(|(_, m)| {
                m.scalars
                    .get(*k)
                    .is_some_and(|c| c.len() >= MIN_CHART_POINTS)
            })
        });
        let mut ordered: Vec<&str> = DETAIL_CHARTS
            .iter()
            .map(|d| d.0)
            .filter(|k| charted.contains(k))
            .collect();
        ordered.extend(charted.iter().copied().filter(|k| {
            !DETAIL_CHARTS.iter().any(|d| d.0 == *k) && !matches!(*k, "loss" | "z_loss")
        }));
        for key in ordered {
            if key == "aux_loss" {
                // Both router terms in one chart.
                let aux: Vec<Series> = ["aux_loss", "z_loss"]
                    .iter()
                    .enumerate()
                    .flat_map(|(j, k)| {
                        attempts.iter().enumerate().filter_map(move |(i, (a, m))| {
                            m.scalars.get(*k).map(|c| {
                                Series::line(
                                    format!("{k} · attempt {}", a.attempt.attempt),
                                    curve_points(c, 1.0),
                                    palette(i + 3 * j),
                                )
                            })
                        })
                    })
                    .collect();
                self.figure(
                    out,
                    &format!("plot-{sid}-aux"),
                    &format!("{stage}: router auxiliary losses"),
                    "loss (unitless)",
                    &aux,
                    "",
                )?;
                continue;
            }
            let (title, y, scale) = DETAIL_CHARTS
                .iter()
                .find(|d| d.0 == key)
                .map_or((key, key, 1.0), |d| (d.1, d.2, d.3));
            self.figure(
                out,
                &format!("plot-{sid}-{}", slug(key)),
                &format!("{stage}: {title}"),
                y,
                &per_attempt(attempts, key, scale),
                "",
            )?;
        }
        out.push_str("</div>\n");
        if !single.is_empty() {
            out.push_str(
                "<table class=\"figures\">\n<thead><tr><th>logged once</th><th>attempt</th><th>step</th><th>value</th></tr></thead>\n<tbody>\n",
            );
            for key in single {
                for (a, m) in attempts {
                    if let Some(&(step, v)) = m.scalars.get(key).and_then(|c| c.first()) {
                        row(
                            out,
                            &[
                                format!("<code>{}</code>", esc(key)),
                                a.attempt.attempt.to_string(),
                                step.to_string(),
                                super::data::value_cell(key, v),
                            ],
                        );
                    }
                }
            }
            out.push_str("</tbody>\n</table>\n");
        }
        Ok(())
    }

    /// A chart in a `<figure>` with its legend (more than one series) and `note` below it; nothing, and
    /// false, when the series have no line to draw ([`line_chart`]).
    pub(super) fn figure(
        &self,
        out: &mut String,
        id: &str,
        title: &str,
        y: &str,
        series: &[Series],
        note: &str,
    ) -> Result<bool, ObserveError> {
        let Some(svg) = line_chart(title, y, series, CHART)? else {
            return Ok(false);
        };
        let _ = write!(out, "<figure id=\"{}\">{svg}", esc(id));
        if series.len() > 1 || !note.is_empty() {
            out.push_str("<figcaption>");
            if series.len() > 1 {
                for s in series {
                    let c = s.color;
                    let _ = write!(
                        out,
                        "<span class=\"key\"><i class=\"{}\" style=\"background:#{:02x}{:02x}{:02x}\"></i>{}</span>",
                        if s.line { "line" } else { "dot" },
                        c.0,
                        c.1,
                        c.2,
                        esc(&s.name)
                    );
                }
            }
            if !note.is_empty() {
                let _ = write!(out, "<span class=\"note\">{}</span>", esc(note));
            }
            out.push_str("</figcaption>");
        }
        out.push_str("</figure>\n");
        Ok(true)
    }

    pub(super) fn moe(&self, out: &mut String) -> Result<(), ObserveError> {
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
                if let Some(svg) = heatmap(&layer_heatmap(&stage, *layer, steps), CHART.0)? {
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
                "entropy (nats)",
                &layered(|m| &m.router_entropy),
                "",
            )?;
            self.figure(
                out,
                &format!("plot-{sid}-dead-experts"),
                &format!("{stage}: dead experts"),
                "experts (count)",
                &layered(|m| &m.dead_experts),
                "",
            )?;
            out.push_str("</div>\n");
        }
        if !any {
            out.push_str("<p class=\"empty\">No stage of this run logged expert load or router metrics.</p>\n");
        }
        out.push_str("</section>\n");
        Ok(())
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
