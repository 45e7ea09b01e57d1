//! Training curves per stage and the MoE expert-load heatmaps.

use super::*;

impl Report<'_> {
    pub(super) fn training(&self, out: &mut String) -> Result<(), ObserveError> {
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

    pub(super) fn training_stage(
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

    pub(super) fn figure(
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
