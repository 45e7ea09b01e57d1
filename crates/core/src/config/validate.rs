//! Validation of `pipeline.toml` that reports every problem with file, line and field.
//!
//! serde stops at the first error, so the structural pass repeats: after each error the offending line
//! (or, for an unknown section, the whole section) is blanked out, which keeps every other line number
//! intact, and deserialization is tried again. Semantic checks ([`Problems`]) name fields by dotted
//! path (`ingest.sources.0.path`); the path is looked up in the spanned TOML document to find its line.

use super::PipelineConfig;
use std::collections::BTreeSet;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// One problem in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigProblem {
    pub file: PathBuf,
    /// 1-based; 0 when the problem has no place in the file (e.g. a required section that is missing).
    pub line: usize,
    pub column: usize,
    /// Dotted path of the field (`pretrain.batch_size`), empty for syntax errors.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.field.is_empty() {
            write!(f, ": `{}`", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} has {} problem(s):\n{}", path.display(), problems.len(), list(problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<ConfigProblem>,
    },
}

fn list(problems: &[ConfigProblem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl ConfigError {
    pub fn problems(&self) -> &[ConfigProblem] {
        match self {
            ConfigError::Unreadable { .. } => &[],
            ConfigError::Invalid { problems, .. } => problems,
        }
    }
}

/// Semantic problems collected by the sections' `check` methods, keyed by dotted field path.
#[derive(Default, Debug)]
pub struct Problems {
    items: Vec<(String, String)>,
}

impl Problems {
    pub fn push(&mut self, field: &str, message: String) {
        self.items.push((field.to_string(), message));
    }
}

pub(crate) fn parse_and_validate(
    text: &str,
    path: &Path,
    base_dir: &Path,
) -> Result<PipelineConfig, ConfigError> {
    let problem = |span: Option<Range<usize>>, field: String, message: String| {
        let (line, column) = span.map_or((0, 0), |s| line_col(text, s.start));
        ConfigProblem {
            file: path.to_path_buf(),
            line,
            column,
            field,
            message,
        }
    };
    let invalid = |problems| ConfigError::Invalid {
        path: path.to_path_buf(),
        problems,
    };

    let doc = match DeTable::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            let p = problem(
                e.span(),
                String::new(),
                format!("TOML syntax: {}", e.message()),
            );
            return Err(invalid(vec![p]));
        }
    };

    // Structural pass: unknown keys, wrong types, missing fields.
    let mut problems = Vec::new();
    let mut working: Vec<String> = text.split('\n').map(str::to_string).collect();
    let mut blanked = BTreeSet::new();
    let parsed = loop {
        match toml::from_str::<PipelineConfig>(&working.join("\n")) {
            Ok(cfg) => break Some(cfg),
            Err(e) => {
                let field = e
                    .span()
                    .map(|s| field_at(doc.get_ref(), s.start))
                    .unwrap_or_default();
                let message = e.message().trim().to_string() + moved_hint(&field);
                problems.push(problem(e.span(), field, message));
                let Some(span) = e.span() else { break None };
                let line = line_col(text, span.start).0 - 1;
                if !blanked.insert(line) || problems.len() > 64 {
                    break None;
                }
                blank_out(&mut working, line);
            }
        }
    };

    // Semantic pass, on what could be read.
    if let Some(mut cfg) = parsed {
        cfg.base_dir = base_dir.to_path_buf();
        let mut sem = Problems::default();
        cfg.check(&mut sem);
        for (field, message) in sem.items {
            let span = span_of(doc.get_ref(), &field);
            problems.push(problem(span, field, message));
        }
        if problems.is_empty() {
            return Ok(cfg);
        }
    }
    problems.sort_by_key(|p| (p.line == 0, p.line, p.column));
    problems.dedup();
    Err(invalid(problems))
}

/// Where a setting that left the recipe for `[execution]` went, for files written before it moved.
fn moved_hint(field: &str) -> &'static str {
    let last = field.rsplit('.').next().unwrap_or_default();
    if field == "device" {
        "; `device` moved to `[execution]`"
    } else if field == "resources" || field.starts_with("resources.") {
        "; `[resources]` moved to `[execution]` (threads, max_parallel_stages)"
    } else if last == "activation_checkpointing" {
        "; `activation_checkpointing` moved to `[execution]` (or `[execution.stages.<stage>]` for one stage)"
    } else {
        ""
    }
}

/// Blanks a line with spaces (byte offsets of the rest of the file stay valid for the spans of later
/// errors); for a table header, the whole table up to the next header.
fn blank_out(lines: &mut [String], line: usize) {
    let is_header = |l: &str| l.trim_start().starts_with('[');
    let blank = |l: &mut String| *l = " ".repeat(l.len());
    let header = is_header(&lines[line]);
    blank(&mut lines[line]);
    if header {
        for l in lines[line + 1..].iter_mut() {
            if is_header(l) {
                break;
            }
            blank(l);
        }
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

/// Dotted path of the innermost key or value whose span contains `offset`.
fn field_at(table: &DeTable<'_>, offset: usize) -> String {
    fn walk(value: &DeValue<'_>, offset: usize, path: &mut Vec<String>) {
        match value {
            DeValue::Table(t) => {
                for (k, v) in t.iter() {
                    if k.span().contains(&offset) {
                        path.push(k.get_ref().to_string());
                        return;
                    }
                    if v.span().contains(&offset) || contains_deep(v, offset) {
                        path.push(k.get_ref().to_string());
                        walk(v.get_ref(), offset, path);
                        return;
                    }
                }
            }
            DeValue::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    if v.span().contains(&offset) || contains_deep(v, offset) {
                        path.push(i.to_string());
                        walk(v.get_ref(), offset, path);
                        return;
                    }
                }
            }
            _ => {}
        }
    }
    let mut path = Vec::new();
    walk(&DeValue::Table(table.clone()), offset, &mut path);
    path.join(".")
}

/// Spans of tables declared with headers do not always cover their keys; look inside.
fn contains_deep(v: &Spanned<DeValue<'_>>, offset: usize) -> bool {
    match v.get_ref() {
        DeValue::Table(t) => t.iter().any(|(k, v)| {
            k.span().contains(&offset) || v.span().contains(&offset) || contains_deep(v, offset)
        }),
        DeValue::Array(a) => a
            .iter()
            .any(|v| v.span().contains(&offset) || contains_deep(v, offset)),
        _ => false,
    }
}

/// Span of the key named by a dotted path, or of its deepest existing ancestor.
fn span_of(table: &DeTable<'_>, dotted: &str) -> Option<Range<usize>> {
    let mut best = None;
    let mut current: Option<&DeValue<'_>> = None;
    for (depth, seg) in dotted.split('.').enumerate() {
        let next = match (depth, current) {
            (0, _) => table
                .iter()
                .find(|(k, _)| k.get_ref() == seg)
                .map(|(k, v)| (k.span(), v)),
            (_, Some(DeValue::Table(t))) => t
                .iter()
                .find(|(k, _)| k.get_ref() == seg)
                .map(|(k, v)| (k.span(), v)),
            (_, Some(DeValue::Array(a))) => seg
                .parse::<usize>()
                .ok()
                .and_then(|i| a.get(i))
                .map(|v| (first_key_span(v), v)),
            _ => None,
        };
        let Some((span, value)) = next else { break };
        best = Some(span);
        current = Some(value.get_ref());
    }
    best
}

/// For an array element (e.g. one `[[ingest.sources]]` table), the span of its first key.
fn first_key_span(v: &Spanned<DeValue<'_>>) -> Range<usize> {
    match v.get_ref() {
        DeValue::Table(t) => t
            .iter()
            .map(|(k, _)| k.span())
            .min_by_key(|s| s.start)
            .unwrap_or(v.span()),
        _ => v.span(),
    }
}
