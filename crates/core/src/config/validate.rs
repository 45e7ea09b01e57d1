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
                problems.push(problem(e.span(), field, e.message().trim().to_string()));
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
        check_across_sections(&cfg, &|field| is_written(doc.get_ref(), field), &mut sem);
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

/// Constraints between sections that a stage would otherwise only find when it runs (e.g. pretraining
/// on shards packed for another sequence length). `written` tells whether a dotted field is set in the
/// file, so that a problem is reported where the user wrote something.
pub(crate) fn check_across_sections(
    cfg: &PipelineConfig,
    written: &dyn Fn(&str) -> bool,
    p: &mut Problems,
) {
    // pretrain reads the token shards `tokenize` packs in windows of `tokenize.seq_len + 1` tokens and
    // refuses shards of any other length.
    if cfg.pretrain.enabled && cfg.tokenize.enabled && cfg.pretrain.seq_len != cfg.tokenize.seq_len
    {
        let (t, pre) = (cfg.tokenize.seq_len, cfg.pretrain.seq_len);
        let why = "the pretrain stage reads the token shards the tokenize stage packs for tokenize.seq_len \
             and fails on any other length; set tokenize.seq_len and pretrain.seq_len to the same value";
        if written("pretrain.seq_len") || !written("tokenize.seq_len") {
            p.push(
                "pretrain.seq_len",
                format!("{pre} differs from tokenize.seq_len {t}: {why}"),
            );
        } else {
            p.push(
                "tokenize.seq_len",
                format!("{t} differs from pretrain.seq_len {pre}: {why}"),
            );
        }
    }
    // With no held-out documents there are no validation token shards, which pretrain needs for its
    // held-out loss.
    if cfg.pretrain.enabled && cfg.ingest.enabled && cfg.ingest.validation_fraction == 0.0 {
        p.push(
            "ingest.validation_fraction",
            "0 holds out no documents, but the pretrain stage evaluates on the validation split and fails \
             without validation token shards; use a fraction above 0 (the default is 0.02) or disable [pretrain]"
                .to_string(),
        );
    }
    // sft builds up to `per_kind` examples of each task kind: none at all is a stage failure.
    if cfg.sft.enabled && cfg.data.sft.per_kind == 0 {
        p.push(
            "data.sft.per_kind",
            "0 builds no instruction examples, and the sft stage fails without any; set it to at least 1 \
             or disable the stage ([sft] enabled = false)"
                .to_string(),
        );
    }
}

/// Whether the key named by a dotted path is written in the file (not left to its default).
fn is_written(table: &DeTable<'_>, dotted: &str) -> bool {
    let mut current = table;
    let mut segs = dotted.split('.').peekable();
    while let Some(seg) = segs.next() {
        let Some((_, v)) = current.iter().find(|(k, _)| k.get_ref() == seg) else {
            return false;
        };
        if segs.peek().is_none() {
            return true;
        }
        match v.get_ref() {
            DeValue::Table(t) => current = t,
            _ => return false,
        }
    }
    false
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

#[cfg(test)]
mod tests {
    use super::ConfigError;
    use crate::config::PipelineConfig;
    use std::path::Path;

    const HEAD: &str = "[model]\npreset = \"tiny\"\n[ingest]\n[[ingest.sources]]\nname = \"a\"\npath = \"x/*.txt\"\nformat = \"text\"\nlicense = \"pd\"\n";

    fn train(section: &str, seq_len: usize) -> String {
        format!("[{section}]\nsteps = 10\nbatch_size = 2\nseq_len = {seq_len}\nlr = 0.001\n")
    }

    fn load(rest: &str) -> Result<PipelineConfig, ConfigError> {
        PipelineConfig::from_text(
            &format!("{HEAD}{rest}"),
            Path::new("pipeline.toml"),
            Path::new("/nonexistent-base"),
        )
    }

    /// The one problem of a config: (line, field, message).
    fn only_problem(rest: &str) -> (usize, String, String) {
        let e = load(rest).expect_err("invalid");
        assert_eq!(e.problems().len(), 1, "{e}");
        let p = &e.problems()[0];
        (p.line, p.field.clone(), p.message.clone())
    }

    fn line_of(rest: &str, needle: &str) -> usize {
        let text = format!("{HEAD}{rest}");
        text.lines().position(|l| l.contains(needle)).expect(needle) + 1
    }

    #[test]
    fn pretrain_and_tokenize_seq_len_must_agree() {
        // Both written: reported at pretrain.seq_len, naming the other field and the fix.
        let rest = format!("[tokenize]\nseq_len = 999999\n{}", train("pretrain", 256));
        let (line, field, message) = only_problem(&rest);
        assert_eq!(field, "pretrain.seq_len");
        assert_eq!(line, line_of(&rest, "seq_len = 256"));
        assert!(
            message.contains("256 differs from tokenize.seq_len 999999")
                && message.contains("same value"),
            "{message}"
        );
        // Only tokenize.seq_len written (pretrain keeps its default 256): reported where it is written.
        let rest = "[tokenize]\nseq_len = 999999\n";
        let (line, field, message) = only_problem(rest);
        assert_eq!(field, "tokenize.seq_len");
        assert_eq!(line, line_of(rest, "seq_len = 999999"));
        assert!(
            message.contains("999999 differs from pretrain.seq_len 256"),
            "{message}"
        );
        // Equal, or one of the two stages off: fine.
        load(&format!(
            "[tokenize]\nseq_len = 64\n{}",
            train("pretrain", 64)
        ))
        .expect("equal");
        load(&format!(
            "[tokenize]\nseq_len = 64\n{}enabled = false\n",
            train("pretrain", 256)
        ))
        .expect("pretrain disabled");
        load(&format!(
            "[tokenize]\nseq_len = 64\nenabled = false\n{}",
            train("pretrain", 256)
        ))
        .expect("tokenize disabled");
    }

    #[test]
    fn pretrain_needs_held_out_documents() {
        let head_with = |f: &str| {
            HEAD.replace(
                "[ingest]\n",
                &format!("[ingest]\nvalidation_fraction = {f}\n"),
            )
        };
        let text = head_with("0.0");
        let e = PipelineConfig::from_text(&text, Path::new("p.toml"), Path::new("/nonexistent"))
            .expect_err("no validation split");
        assert_eq!(e.problems().len(), 1, "{e}");
        let p = &e.problems()[0];
        assert_eq!(p.field, "ingest.validation_fraction");
        assert_eq!(p.line, 4);
        assert!(
            p.message.contains("validation token shards"),
            "{}",
            p.message
        );
        let off = format!("{text}{}enabled = false\n", train("pretrain", 256));
        PipelineConfig::from_text(&off, Path::new("p.toml"), Path::new("/nonexistent"))
            .expect("without pretrain no validation split is needed");
        PipelineConfig::from_text(&head_with("0.01"), Path::new("p.toml"), Path::new("/n"))
            .expect("a small fraction");
    }

    #[test]
    fn sft_needs_examples() {
        let rest = format!("{}[data.sft]\nper_kind = 0\n", train("sft", 128));
        let (line, field, message) = only_problem(&rest);
        assert_eq!(field, "data.sft.per_kind");
        assert_eq!(line, line_of(&rest, "per_kind = 0"));
        assert!(message.contains("no instruction examples"), "{message}");
        // The sft stage is off unless its section is written.
        load("[data.sft]\nper_kind = 0\n").expect("sft disabled");
        load(&format!("{}[data.sft]\nper_kind = 1\n", train("sft", 128))).expect("one per kind");
    }
}
