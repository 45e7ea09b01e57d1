//! The top of the report: header, the banner of a failed or interrupted run, summary cards, stages.

use super::*;

impl Report<'_> {
    pub(super) fn header(&self, out: &mut String) {
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
            "<nav><a href=\"#stages\">Stages</a><a href=\"#learning\">Learning</a><a href=\"#evals\">Evals</a>\
             <a href=\"#training\">Training details</a><a href=\"#moe\">Experts</a><a href=\"#data\">Data</a><a href=\"#artifacts\">Artifacts</a><a href=\"#checkpoints\">Checkpoints</a>\
             <a href=\"#events\">Events</a><a href=\"#config\">Config</a></nav>\n</header>\n",
        );
    }

    pub(super) fn banner(&self, out: &mut String) {
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

    pub(super) fn summary(&self, out: &mut String) {
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

    pub(super) fn stages(&self, out: &mut String) {
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
}
