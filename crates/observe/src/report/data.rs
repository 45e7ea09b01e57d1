//! Data stages: any stage that logged metrics but no training loss (ingest, tokenizer, tokenize). Their
//! "steps" are not time but items (file ordinals, shard indices) or a single summary, so their figures
//! are tables, never charts:
//!
//! - `STAGE/source/NAME/COLUMN` and `STAGE/total/COLUMN`: one table, a row per source and the total;
//! - keys logged at two or more steps: one table, a row per step (the file or shard it counts);
//! - every other key, logged once: a number in the stage's table of figures.

use super::*;

/// Per-item tables longer than this are folded away (`<details>`): a long list of files is a lookup,
/// not something a reader scrolls past.
const OPEN_ROWS: usize = 12;

/// Where one key of a data stage goes.
enum Place<'k> {
    Source { name: &'k str, column: &'k str },
    Total { column: &'k str },
    PerItem { column: &'k str },
    Figure { name: &'k str },
}

fn place<'k>(stage: &str, key: &'k str, steps: usize) -> Place<'k> {
    let rest = key
        .strip_prefix(stage)
        .and_then(|r| r.strip_prefix('/'))
        .unwrap_or(key);
    if let Some((name, column)) = rest.strip_prefix("source/").and_then(|r| r.split_once('/')) {
        return Place::Source { name, column };
    }
    if let Some(column) = rest.strip_prefix("total/") {
        return Place::Total { column };
    }
    if steps >= MIN_CHART_POINTS {
        Place::PerItem { column: rest }
    } else {
        Place::Figure { name: rest }
    }
}

/// `951,743`.
fn grouped(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("−{out}") } else { out }
}

/// A logged value as a table cell, read by its key's last part: sizes in bytes, percentages, seconds,
/// whole counts with separators.
pub(super) fn value_cell(key: &str, v: f64) -> String {
    let last = key.rsplit('/').next().unwrap_or(key);
    let whole = v.is_finite() && v.fract() == 0.0 && v.abs() < 9e15;
    if whole && last.contains("bytes") && !last.contains("per_") {
        let n = v as i64;
        return format!("<span title=\"{} B\">{}</span>", grouped(n), bytes(n));
    }
    if last.ends_with("_pct") {
        return format!("{} %", num(Some(v)));
    }
    if last.contains("per_s") {
        return num(Some(v));
    }
    if last.ends_with("seconds") || last.ends_with("_s") {
        return format!("{} s", num(Some(v)));
    }
    if whole {
        return grouped(v as i64);
    }
    num(Some(v))
}

/// The noun of a per-item table's rows, from its columns' names (`file/docs_in`, `shard_tokens`), and
/// the columns with it taken off.
fn item_noun(columns: &[&str]) -> &'static str {
    for noun in ["file", "shard", "source"] {
        if columns.iter().any(|c| c.starts_with(noun)) {
            return noun;
        }
    }
    "step"
}

fn strip_noun<'c>(column: &'c str, noun: &str) -> &'c str {
    column
        .strip_prefix(noun)
        .and_then(|r| r.strip_prefix(['/', '_']))
        .unwrap_or(column)
}

fn table_head(out: &mut String, class: &str, first: &str, columns: &[&str]) {
    let _ = write!(
        out,
        "<div class=\"wide\"><table class=\"{class}\">\n<thead><tr><th>{}</th>",
        esc(first)
    );
    // Long column names (`filtered/too_few_words`) may break after their slashes.
    for c in columns {
        let _ = write!(out, "<th>{}</th>", esc(c).replace('/', "/<wbr>"));
    }
    out.push_str("</tr></thead>\n<tbody>\n");
}

fn table_end(out: &mut String) {
    out.push_str("</tbody>\n</table></div>\n");
}

impl Report<'_> {
    pub(super) fn data(&self, out: &mut String) {
        out.push_str("<section id=\"data\">\n<h2>Data stages</h2>\n");
        let (_, data) = self.stages_with_metrics();
        if data.is_empty() {
            out.push_str(
                "<p class=\"empty\">No data stage of this run logged figures.</p>\n</section>\n",
            );
            return;
        }
        // The stages' figures side by side; their per-source and per-item tables below, full width.
        let mut wide = String::new();
        out.push_str("<div class=\"data-stages\">\n");
        for (stage, attempts) in &data {
            // The newest attempt's figures describe the stage's output.
            let Some((a, m)) = attempts.last() else {
                continue;
            };
            self.data_stage(out, &mut wide, stage, a, m, attempts.len());
        }
        out.push_str("</div>\n");
        out.push_str(&wide);
        out.push_str("</section>\n");
    }

    fn data_stage(
        &self,
        out: &mut String,
        wide: &mut String,
        stage: &str,
        a: &AttemptDetail,
        m: &AttemptMetrics,
        attempts: usize,
    ) {
        let sid = slug(stage);
        let mut figures: Vec<(&str, &str, f64)> = Vec::new();
        let mut sources: BTreeMap<&str, BTreeMap<&str, f64>> = BTreeMap::new();
        let mut total: BTreeMap<&str, f64> = BTreeMap::new();
        let mut items: BTreeMap<i64, BTreeMap<&str, f64>> = BTreeMap::new();
        let mut item_columns: Vec<&str> = Vec::new();
        for (key, curve) in &m.scalars {
            let Some(&(_, last)) = curve.last() else {
                continue;
            };
            match place(stage, key, curve.len()) {
                Place::Source { name, column } => {
                    sources.entry(name).or_default().insert(column, last);
                }
                Place::Total { column } => {
                    total.insert(column, last);
                }
                Place::PerItem { column } => {
                    item_columns.push(column);
                    for &(step, v) in curve {
                        items.entry(step).or_default().insert(column, v);
                    }
                }
                Place::Figure { name } => figures.push((name, key, last)),
            }
        }
        // A total without sources is a set of plain figures.
        if sources.is_empty() {
            figures.extend(total.iter().map(|(c, v)| (*c, *c, *v)));
            total.clear();
        }

        let _ = write!(
            out,
            "<div class=\"data-stage\">\n<h3 id=\"data-{sid}\">{}</h3>\n",
            esc(stage)
        );
        if attempts > 1 {
            let _ = writeln!(
                out,
                "<p class=\"meta\">Figures of attempt {} (of {attempts}).</p>",
                a.attempt.attempt
            );
        }
        if figures.is_empty() {
            out.push_str("<p class=\"empty\">Only per-source or per-item figures (below).</p>\n");
        } else {
            out.push_str(
                "<table class=\"figures\">\n<thead><tr><th>figure</th><th>value</th></tr></thead>\n<tbody>\n",
            );
            for (name, key, v) in &figures {
                row(
                    out,
                    &[format!("<code>{}</code>", esc(name)), value_cell(key, *v)],
                );
            }
            out.push_str("</tbody>\n</table>\n");
        }
        out.push_str("</div>\n");

        if !sources.is_empty() {
            let mut columns: Vec<&str> = Vec::new();
            for c in sources.values().flat_map(|r| r.keys()).chain(total.keys()) {
                if !columns.contains(c) {
                    columns.push(c);
                }
            }
            // Columns that are zero everywhere are named once instead of drawn as a column of zeros.
            let zero = |c: &&str| {
                sources
                    .values()
                    .chain(std::iter::once(&total))
                    .all(|r| r.get(*c).is_none_or(|v| *v == 0.0))
            };
            let (zeros, shown): (Vec<&str>, Vec<&str>) = columns.into_iter().partition(zero);
            let _ = writeln!(
                wide,
                "<h3 id=\"data-{sid}-sources\">{}: per source</h3>",
                esc(stage)
            );
            table_head(wide, "data", "source", &shown);
            let cells = |r: &BTreeMap<&str, f64>| -> Vec<String> {
                shown
                    .iter()
                    .map(|c| r.get(c).map_or("–".into(), |v| value_cell(c, *v)))
                    .collect()
            };
            for (name, r) in &sources {
                let mut cells = cells(r);
                cells.insert(0, format!("<b>{}</b>", esc(name)));
                row(wide, &cells);
            }
            if !total.is_empty() {
                let mut cells = cells(&total);
                cells.insert(0, "<b>total</b>".into());
                row(wide, &cells);
            }
            table_end(wide);
            if !zeros.is_empty() {
                let _ = writeln!(
                    wide,
                    "<p class=\"meta\">Zero for every source: {}.</p>",
                    esc(&zeros.join(", "))
                );
            }
        }

        if !items.is_empty() {
            let noun = item_noun(&item_columns);
            let labels: Vec<&str> = item_columns.iter().map(|c| strip_noun(c, noun)).collect();
            let folded = items.len() > OPEN_ROWS;
            if folded {
                let _ = writeln!(
                    wide,
                    "<details id=\"data-{sid}-items\"><summary>{}: per {noun} ({} {noun}s)</summary>",
                    esc(stage),
                    items.len()
                );
            } else {
                let _ = writeln!(
                    wide,
                    "<h3 id=\"data-{sid}-items\">{}: per {noun}</h3>",
                    esc(stage)
                );
            }
            table_head(wide, "data", noun, &labels);
            for (step, r) in &items {
                let mut cells: Vec<String> = item_columns
                    .iter()
                    .map(|c| r.get(c).map_or("–".into(), |v| value_cell(c, *v)))
                    .collect();
                cells.insert(0, step.to_string());
                row(wide, &cells);
            }
            table_end(wide);
            if folded {
                wide.push_str("</details>\n");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_by_their_key() {
        assert_eq!(grouped(951_743), "951,743");
        assert_eq!(grouped(-1_000), "−1,000");
        assert_eq!(grouped(12), "12");
        assert_eq!(value_cell("ingest/source/prose/docs_in", 269.0), "269");
        assert_eq!(
            value_cell("ingest/file/bytes_in", 951_743.0),
            "<span title=\"951,743 B\">929.4 KiB</span>"
        );
        assert_eq!(value_cell("tokenize/pad_pct", 0.25241), "0.2524 %");
        assert_eq!(value_cell("ingest/seconds", 0.0449), "0.0449 s");
        assert_eq!(value_cell("ingest/mb_per_s", 26.5), "26.5000");
        assert_eq!(value_cell("tokenizer/val_bytes_per_token", 3.03), "3.0300");
    }

    #[test]
    fn keys_find_their_table() {
        assert!(matches!(
            place("ingest", "ingest/source/prose/filtered/dup_lines", 1),
            Place::Source {
                name: "prose",
                column: "filtered/dup_lines"
            }
        ));
        assert!(matches!(
            place("ingest", "ingest/total/docs_in", 1),
            Place::Total { column: "docs_in" }
        ));
        assert!(matches!(
            place("ingest", "ingest/file/docs_in", 3),
            Place::PerItem {
                column: "file/docs_in"
            }
        ));
        assert!(matches!(
            place("ingest", "ingest/file/docs_in", 1),
            Place::Figure {
                name: "file/docs_in"
            }
        ));
        assert!(matches!(
            place("tokenize", "other/x", 1),
            Place::Figure { name: "other/x" }
        ));
        assert_eq!(item_noun(&["file/docs_in", "elapsed_s"]), "file");
        assert_eq!(item_noun(&["shard_tokens"]), "shard");
        assert_eq!(strip_noun("shard_tokens", "shard"), "tokens");
        assert_eq!(strip_noun("elapsed_s", "file"), "elapsed_s");
    }
}
