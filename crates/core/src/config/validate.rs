//! Validation of `pipeline.toml` that reports every problem with file, line and field.
//!
//! serde stops at the first error, so the structural pass repeats: after each error the offending line
//! (or, for an unknown section, the whole section) is blanked out, which keeps every other line number
//! intact, and deserialization is tried again. Semantic checks ([`Problems`]) name fields by dotted
//! path (`ingest.sources.0.path`); the path is looked up in the spanned TOML document to find its line.

use super::PipelineConfig;
use serde::de::{DeserializeOwned, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use std::collections::BTreeSet;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
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

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// The top-level keys `PipelineConfig` itself declares; every other top-level table belongs to a stage
/// (e.g. `[sft]`, `[data.sft]`) and is parsed by that stage ([`PipelineConfig::section`]).
pub const CORE_SECTIONS: [&str; 8] = [
    "workspace",
    "seed",
    "execution",
    "model",
    "ingest",
    "tokenizer",
    "tokenize",
    "pretrain",
];

/// Checks of the stages' own sections, run on a config whose core sections parsed; each returns its
/// problems with file and line (see [`PipelineConfig::section`] and [`PipelineConfig::locate`]).
pub type ExtraChecks<'a> = &'a dyn Fn(&PipelineConfig) -> Vec<ConfigProblem>;

pub(crate) fn parse_and_validate(
    text: &str,
    path: &Path,
    base_dir: &Path,
    extra: ExtraChecks<'_>,
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

    // Structural pass: unknown keys, wrong types, missing fields. The stages' own tables are set
    // aside (blanked) here; each stage parses its tables from the same text, with the same spans.
    let mut working: Vec<String> = text.split('\n').map(str::to_string).collect();
    let stage_tables = blank_stage_tables(&mut working);
    let (parsed, mut problems) =
        collect(text, &doc, working, |t| toml::from_str::<PipelineConfig>(t));
    for p in &mut problems {
        p.file = path.to_path_buf();
        p.message += moved_hint(&p.field);
    }

    // Semantic pass, on what could be read, then the stages' checks of their own tables.
    if let Some(mut cfg) = parsed {
        cfg.base_dir = base_dir.to_path_buf();
        cfg.source = Some(Arc::new(Source {
            text: text.to_string(),
            path: path.to_path_buf(),
        }));
        cfg.stage_tables = stage_tables;
        let mut sem = Problems::default();
        cfg.check(&mut sem);
        check_across_sections(&cfg, &|field| is_written(doc.get_ref(), field), &mut sem);
        problems.extend(cfg.locate(sem));
        problems.extend(extra(&cfg));
        if problems.is_empty() {
            return Ok(cfg);
        }
    }
    problems.sort_by_key(|p| (p.line == 0, p.line, p.column));
    problems.dedup();
    Err(invalid(problems))
}

/// Deserializes `working` (the file's lines, some blanked) with `parse` until it succeeds, blanking the
/// line of each error so that the next try finds the next one: every structural problem at once.
fn collect<T>(
    text: &str,
    doc: &Spanned<DeTable<'_>>,
    mut working: Vec<String>,
    parse: impl Fn(&str) -> Result<T, toml::de::Error>,
) -> (Option<T>, Vec<ConfigProblem>) {
    let mut problems = Vec::new();
    let mut blanked = BTreeSet::new();
    let parsed = loop {
        match parse(&working.join("\n")) {
            Ok(v) => break Some(v),
            Err(e) => {
                let field = e
                    .span()
                    .map(|s| field_at(doc.get_ref(), s.start))
                    .unwrap_or_default();
                let (line, column) = e.span().map_or((0, 0), |s| line_col(text, s.start));
                problems.push(ConfigProblem {
                    file: PathBuf::new(),
                    line,
                    column,
                    field,
                    message: e.message().trim().to_string(),
                });
                if line == 0 || !blanked.insert(line - 1) || problems.len() > 64 {
                    break None;
                }
                blank_out(&mut working, line - 1);
            }
        }
    };
    (parsed, problems)
}

/// Blanks every table whose header's first key is not one of [`CORE_SECTIONS`] (`[sft]`,
/// `[data.cot]`, …) and returns those first keys. Line numbers and byte offsets stay as they were.
fn blank_stage_tables(lines: &mut [String]) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut i = 0;
    while i < lines.len() {
        let first = header_first_key(&lines[i]);
        match first {
            Some(k) if !CORE_SECTIONS.contains(&k.as_str()) => {
                found.insert(k);
                blank_out(lines, i);
            }
            _ => {}
        }
        i += 1;
    }
    found
}

/// `a` of a table header `[a.b]` or `[[a.b]]` (quotes removed), `None` for any other line.
fn header_first_key(line: &str) -> Option<String> {
    let t = line.trim_start();
    let inner = t.strip_prefix("[[").or_else(|| t.strip_prefix('['))?;
    let end = inner.find(']')?;
    let first = inner[..end].split('.').next()?.trim();
    Some(first.trim_matches(|c| c == '"' || c == '\'').to_string())
}

/// The text a config was read from, kept so that stages parse their own tables with file and line.
#[derive(Debug)]
pub struct Source {
    pub text: String,
    pub path: PathBuf,
}

impl PipelineConfig {
    /// Parses the table at `path` (e.g. `["data", "sft"]`) as `T`, the way `pipeline.toml`'s own
    /// sections are parsed: every problem at once, each with file, line and dotted field.
    /// `Ok(None)` when the file has no such table.
    pub fn section<T: DeserializeOwned>(&self, path: &[&str]) -> Result<Option<T>, ConfigError> {
        let Some(src) = &self.source else {
            return Ok(None);
        };
        let doc = DeTable::parse(&src.text).map_err(|e| ConfigError::Invalid {
            path: src.path.clone(),
            problems: vec![ConfigProblem {
                file: src.path.clone(),
                line: 0,
                column: 0,
                field: String::new(),
                message: format!("TOML syntax: {}", e.message()),
            }],
        })?;
        let working = src.text.split('\n').map(str::to_string).collect();
        let (parsed, mut problems) = collect(&src.text, &doc, working, |t| {
            let de = toml::de::Deserializer::parse(t)?;
            SectionProbe::<T> {
                path,
                _t: PhantomData,
            }
            .deserialize(de)
        });
        match parsed {
            Some(v) if problems.is_empty() => Ok(v),
            _ => {
                for p in &mut problems {
                    p.file = src.path.clone();
                    p.message += moved_hint(&p.field);
                }
                problems.sort_by_key(|p| (p.line == 0, p.line, p.column));
                Err(ConfigError::Invalid {
                    path: src.path.clone(),
                    problems,
                })
            }
        }
    }

    /// Semantic problems (dotted field paths) with the file, line and column of each field.
    pub fn locate(&self, problems: Problems) -> Vec<ConfigProblem> {
        let Some(src) = &self.source else {
            return Vec::new();
        };
        let doc = DeTable::parse(&src.text).ok();
        problems
            .items
            .into_iter()
            .map(|(field, message)| {
                let span = doc.as_ref().and_then(|d| span_of(d.get_ref(), &field));
                let (line, column) = span.map_or((0, 0), |s| line_col(&src.text, s.start));
                ConfigProblem {
                    file: src.path.clone(),
                    line,
                    column,
                    field,
                    message,
                }
            })
            .collect()
    }

    /// The first keys of the tables in the file that belong to stages (see [`CORE_SECTIONS`]).
    pub fn stage_tables(&self) -> &BTreeSet<String> {
        &self.stage_tables
    }

    /// The keys of the table at `path` in the file (e.g. the stages under `[data]`).
    pub fn keys_under(&self, path: &[&str]) -> Vec<String> {
        self.section::<toml::Table>(path)
            .ok()
            .flatten()
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default()
    }
}

/// Walks the document's maps along `path`, ignoring every other key, and deserializes `T` there:
/// errors keep toml's spans into the whole file.
struct SectionProbe<'p, T> {
    path: &'p [&'p str],
    _t: PhantomData<T>,
}

impl<'de, T: DeserializeOwned> DeserializeSeed<'de> for SectionProbe<'_, T> {
    type Value = Option<T>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<T>, D::Error> {
        if self.path.is_empty() {
            T::deserialize(d).map(Some)
        } else {
            d.deserialize_map(self)
        }
    }
}

impl<'de, T: DeserializeOwned> Visitor<'de> for SectionProbe<'_, T> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a table")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<T>, A::Error> {
        let mut found = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == self.path[0] {
                found = map.next_value_seed(SectionProbe::<T> {
                    path: &self.path[1..],
                    _t: PhantomData,
                })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
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
    use crate::config::{PipelineConfig, TrainConfig};
    use serde::Deserialize;
    use std::path::Path;

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Data {
        per_kind: usize,
        file: Option<String>,
    }

    const TEXT: &str = "[model]\npreset = \"tiny\"\n[ingest]\nsources = []\nenabled = false\n\n\
                        [sft]\nsteps = 3\nbatch_size = 2\nseq_len = 8\nlr = 0.01\n\n\
                        [data.sft]\nper_kind = 4\n\n[data.cot]\nper_knd = 2\nfile = 7\n";

    fn load(text: &str) -> PipelineConfig {
        PipelineConfig::from_text(text, Path::new("p.toml"), Path::new(".")).expect("core sections")
    }

    #[test]
    fn stage_tables_are_left_to_their_stages_and_parsed_with_lines() {
        let cfg = load(TEXT);
        let names: Vec<&str> = cfg.stage_tables().iter().map(String::as_str).collect();
        assert_eq!(names, ["data", "sft"]);
        let sft: TrainConfig = cfg.section(&["sft"]).unwrap().unwrap();
        assert_eq!((sft.steps, sft.batch_size), (3, 2));
        assert_eq!(
            cfg.section::<Data>(&["data", "sft"]).unwrap(),
            Some(Data {
                per_kind: 4,
                file: None
            })
        );
        assert_eq!(cfg.section::<Data>(&["data", "toolcall"]).unwrap(), None);
        // Every problem of a stage's table at once, each with its line and dotted field.
        let err = cfg.section::<Data>(&["data", "cot"]).unwrap_err();
        let found: Vec<(usize, &str)> = err
            .problems()
            .iter()
            .map(|p| (p.line, p.field.as_str()))
            .collect();
        assert_eq!(
            found,
            [(17, "data.cot.per_knd"), (18, "data.cot.file")],
            "{err}"
        );
        assert_eq!(cfg.keys_under(&["data"]), ["cot", "sft"]);
    }

    #[test]
    fn a_scalar_no_section_declares_is_still_an_unknown_field() {
        let err = PipelineConfig::from_text(
            &format!("colour = 3\n{TEXT}"),
            Path::new("p.toml"),
            Path::new("."),
        )
        .unwrap_err();
        assert_eq!(err.problems()[0].field, "colour");
        assert!(err.problems()[0].message.contains("unknown field"));
    }
}

/// Constraints between sections (`check_across_sections`).
#[cfg(test)]
mod cross_section_tests {
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
}
