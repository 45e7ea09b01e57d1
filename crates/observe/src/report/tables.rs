//! Evals before and after, artifacts, checkpoints, events and the recorded config.

use super::*;

impl Report<'_> {
    pub(super) fn evals(&self, out: &mut String) {
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

    pub(super) fn artifacts(&self, out: &mut String) {
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

    pub(super) fn checkpoints(&self, out: &mut String) {
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

    pub(super) fn events(&self, out: &mut String) {
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

    pub(super) fn config(&self, out: &mut String) {
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
