//! Input files and document readers.
//!
//! [`expand`] turns `[[ingest.sources]]` into a sorted list of [`InputFile`]s; [`select_shard`]
//! keeps the subset of one `--shard i/n` process; [`read_documents`] streams one file's documents
//! (text, JSONL, Parquet; gzip/zstd by extension) to a callback without holding the file in memory.

use crate::error::IngestError;
use arrow::array::{Array, AsArray};
use arrow::datatypes::DataType;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use tardbot_core::config::{OnError, PipelineConfig, SourceFormat};

/// How an input file is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    None,
    Gzip,
    Zstd,
}

impl Codec {
    pub fn name(self) -> &'static str {
        match self {
            Codec::None => "plain",
            Codec::Gzip => "gzip",
            Codec::Zstd => "zstd",
        }
    }

    /// From the source's `compression` setting, or the extension under `auto`.
    pub fn infer(setting: &str, path: &Path) -> Codec {
        match setting {
            "gzip" => Codec::Gzip,
            "zstd" => Codec::Zstd,
            "none" => Codec::None,
            _ => match path.extension().and_then(|e| e.to_str()) {
                Some("gz" | "gzip") => Codec::Gzip,
                Some("zst" | "zstd") => Codec::Zstd,
                _ => Codec::None,
            },
        }
    }
}

/// One input file of one source.
#[derive(Clone, Debug, PartialEq)]
pub struct InputFile {
    /// Index of the source in `[[ingest.sources]]`.
    pub source: usize,
    pub source_name: String,
    pub path: PathBuf,
    /// The path as shown and hashed: relative to the config directory when below it.
    pub display: String,
    pub format: SourceFormat,
    pub separator: Option<String>,
    pub field: Option<String>,
    pub codec: Codec,
    /// Bytes on disk.
    pub bytes: u64,
}

impl InputFile {
    /// Stable key of the file: a hash of source name and displayed path (independent of the machine).
    pub fn key(&self) -> String {
        tardbot_core::hash::hash_bytes(format!("{}\n{}", self.source_name, self.display).as_bytes())
    }
}

/// Expands every source's path or glob, in config order, each source's files sorted by path.
pub fn expand(cfg: &PipelineConfig) -> Result<Vec<InputFile>, IngestError> {
    let mut files = Vec::new();
    for (i, s) in cfg.ingest.sources.iter().enumerate() {
        let resolved = cfg.resolve(&s.path);
        let raw = resolved.to_string_lossy().to_string();
        let mut paths: Vec<PathBuf> = if s.path.to_string_lossy().contains(['*', '?', '[']) {
            let it = glob::glob(&raw).map_err(|e| IngestError::BadGlob {
                source_name: s.name.clone(),
                pattern: raw.clone(),
                message: e.to_string(),
            })?;
            let mut v = Vec::new();
            for p in it {
                let p = p.map_err(|e| IngestError::Unreadable {
                    path: e.path().to_path_buf(),
                    source: std::io::Error::new(e.error().kind(), e.error().to_string()),
                })?;
                if p.is_file() {
                    v.push(p);
                }
            }
            if v.is_empty() {
                return Err(IngestError::EmptyGlob {
                    source_name: s.name.clone(),
                    pattern: raw,
                });
            }
            v
        } else if resolved.is_dir() {
            return Err(IngestError::Unreadable {
                path: resolved,
                source: std::io::Error::other("is a directory; use a glob such as `dir/*.txt`"),
            });
        } else if resolved.exists() {
            vec![resolved]
        } else {
            return Err(IngestError::MissingPath {
                source_name: s.name.clone(),
                path: resolved,
            });
        };
        paths.sort();
        for path in paths {
            let bytes = std::fs::metadata(&path)
                .map_err(|e| IngestError::Unreadable {
                    path: path.clone(),
                    source: e,
                })?
                .len();
            let display = path
                .strip_prefix(&cfg.base_dir)
                .unwrap_or(&path)
                .to_string_lossy()
                .to_string();
            files.push(InputFile {
                source: i,
                source_name: s.name.clone(),
                codec: Codec::infer(s.compression.as_str(), &path),
                display,
                path,
                format: s.format,
                separator: s.separator.clone(),
                field: s.field.clone(),
                bytes,
            });
        }
    }
    Ok(files)
}

/// The files of shard `index` of `count`: chosen by a hash of each file's key, so a file's shard
/// does not change when other files are added.
pub fn select_shard(files: Vec<InputFile>, index: u32, count: u32) -> Vec<InputFile> {
    if count <= 1 {
        return files;
    }
    files
        .into_iter()
        .filter(|f| {
            let h = blake3::hash(f.key().as_bytes());
            let mut w = [0u8; 8];
            w.copy_from_slice(&h.as_bytes()[..8]);
            u64::from_le_bytes(w) % u64::from(count) == u64::from(index)
        })
        .collect()
}

/// `--shard I/N` for a pipeline file: the config text with `ingest.shard_index = I` and
/// `ingest.shard_count = N` set, and the config parsed and validated from it. The text is what a
/// run records, so a resumed run processes the same shard.
pub fn with_shard(
    spec: &str,
    text: &str,
    path: &Path,
    base_dir: &Path,
) -> Result<(PipelineConfig, String), String> {
    let (i, n) = spec
        .split_once('/')
        .and_then(|(i, n)| Some((i.trim().parse::<u32>().ok()?, n.trim().parse::<u32>().ok()?)))
        .ok_or_else(|| format!("`{spec}` is not I/N (e.g. 0/4: the first of four shards)"))?;
    if n == 0 || i >= n {
        return Err(format!(
            "`{spec}`: the index must be below the count (0-based, 0 <= I < N)"
        ));
    }
    let mut doc: toml::Table = text.parse().map_err(|e| format!("{e}"))?;
    let ingest = doc
        .entry("ingest")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let toml::Value::Table(ingest) = ingest else {
        return Err("`ingest` in the pipeline file is not a table".to_string());
    };
    ingest.insert("shard_index".into(), toml::Value::Integer(i64::from(i)));
    ingest.insert("shard_count".into(), toml::Value::Integer(i64::from(n)));
    let text = toml::to_string(&doc).map_err(|e| e.to_string())?;
    let cfg = PipelineConfig::from_text(&text, path, base_dir).map_err(|e| e.to_string())?;
    Ok((cfg, text))
}

/// One document as read, before cleaning.
#[derive(Debug)]
pub enum RawDoc {
    /// Bytes not yet validated as UTF-8 (text sources).
    Bytes(Vec<u8>),
    /// Already a string; `repaired` when invalid UTF-8 in the record was replaced.
    Str { text: String, repaired: bool },
    /// A record with invalid UTF-8 under the drop policy (counted, not cleaned).
    InvalidUtf8,
}

/// Records skipped while reading under `on_error = "skip"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadSkips {
    pub malformed: u64,
    pub missing_field: u64,
    pub too_large: u64,
}

/// Reading options shared by all formats.
#[derive(Clone, Copy, Debug)]
pub struct ReadOptions {
    pub on_error: OnError,
    pub max_document_bytes: u64,
    pub drop_invalid_utf8: bool,
}

/// Streams the documents of one file to `emit`. A file-level problem (unreadable, corrupt stream,
/// bad Parquet) is always an error here; the caller decides whether `on_error` skips the file.
pub fn read_documents(
    file: &InputFile,
    opts: &ReadOptions,
    emit: &mut dyn FnMut(RawDoc) -> bool,
) -> Result<ReadSkips, IngestError> {
    match file.format {
        SourceFormat::Text => read_text(file, opts, emit),
        SourceFormat::Jsonl => read_jsonl(file, opts, emit),
        SourceFormat::Parquet => read_parquet(file, opts, emit),
    }
}

fn open(file: &InputFile) -> Result<Box<dyn BufRead + Send>, IngestError> {
    let f = File::open(&file.path).map_err(|e| IngestError::Unreadable {
        path: file.path.clone(),
        source: e,
    })?;
    const CAP: usize = 1 << 20;
    Ok(match file.codec {
        Codec::None => Box::new(BufReader::with_capacity(CAP, f)),
        Codec::Gzip => Box::new(BufReader::with_capacity(
            CAP,
            flate2::read::MultiGzDecoder::new(BufReader::with_capacity(CAP, f)),
        )),
        Codec::Zstd => {
            let d = zstd::stream::read::Decoder::new(f).map_err(|e| corrupt(file, e))?;
            Box::new(BufReader::with_capacity(CAP, d))
        }
    })
}

fn corrupt(file: &InputFile, e: std::io::Error) -> IngestError {
    match file.codec {
        Codec::None => IngestError::Unreadable {
            path: file.path.clone(),
            source: e,
        },
        c => IngestError::Corrupt {
            path: file.path.clone(),
            codec: c.name(),
            source: e,
        },
    }
}

fn too_large(
    file: &InputFile,
    line: u64,
    bytes: u64,
    opts: &ReadOptions,
) -> Result<(), IngestError> {
    match opts.on_error {
        OnError::Skip => Ok(()),
        OnError::Fail => Err(IngestError::DocumentTooLarge {
            path: file.path.clone(),
            line,
            bytes,
            limit: opts.max_document_bytes,
        }),
    }
}

fn strip_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn read_text(
    file: &InputFile,
    opts: &ReadOptions,
    emit: &mut dyn FnMut(RawDoc) -> bool,
) -> Result<ReadSkips, IngestError> {
    let mut r = open(file)?;
    let mut skips = ReadSkips::default();
    let limit = opts.max_document_bytes;
    let Some(sep) = file.separator.as_deref() else {
        let mut doc = Vec::new();
        (&mut r)
            .take(limit + 1)
            .read_to_end(&mut doc)
            .map_err(|e| corrupt(file, e))?;
        if doc.len() as u64 > limit {
            too_large(file, 1, doc.len() as u64, opts)?;
            skips.too_large += 1;
        } else {
            emit(RawDoc::Bytes(doc));
        }
        return Ok(skips);
    };
    let sep = sep.as_bytes();
    // Lines are read straight into the document (a separator line is cut off again), so a
    // document's bytes are copied once out of the reader's buffer.
    let mut doc: Vec<u8> = Vec::new();
    let mut skipped: Vec<u8> = Vec::new(); // the current line of an oversized document
    let (mut line_no, mut doc_start, mut oversized) = (0u64, 1u64, false);
    loop {
        let target = if oversized { &mut skipped } else { &mut doc };
        let start = target.len();
        let n = r.read_until(b'\n', target).map_err(|e| corrupt(file, e))?;
        line_no += 1;
        let at_end = n == 0;
        if at_end || strip_eol(&target[start..]).trim_ascii() == sep {
            target.truncate(start);
            if oversized {
                too_large(file, doc_start, doc.len() as u64, opts)?;
                skips.too_large += 1;
                doc.clear();
            } else if !doc.is_empty() {
                let next = Vec::with_capacity(doc.len());
                if !emit(RawDoc::Bytes(std::mem::replace(&mut doc, next))) {
                    return Ok(skips);
                }
            }
            oversized = false;
            doc_start = line_no + 1;
            if at_end {
                return Ok(skips);
            }
            continue;
        }
        if oversized {
            skipped.clear();
        } else if doc.len() as u64 > limit {
            oversized = true;
            doc.clear();
            doc.shrink_to_fit();
        }
    }
}

/// What a JSONL record holds under the text field.
enum FieldValue {
    Missing,
    NotString,
    Str(String),
}

struct Extract<'f>(&'f str);
struct KeyIs<'f>(&'f str);

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIs<'_> {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string key")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<bool, E> {
        Ok(v == self.0)
    }
}

impl<'de> DeserializeSeed<'de> for Extract<'_> {
    type Value = FieldValue;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<FieldValue, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Extract<'_> {
    type Value = FieldValue;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<FieldValue, A::Error> {
        let mut out = FieldValue::Missing;
        while let Some(hit) = m.next_key_seed(KeyIs(self.0))? {
            if hit {
                out = match m.next_value::<serde_json::Value>()? {
                    serde_json::Value::String(s) => FieldValue::Str(s),
                    _ => FieldValue::NotString,
                };
            } else {
                m.next_value::<IgnoredAny>()?;
            }
        }
        Ok(out)
    }
}

fn parse_line(line: &str, field: &str) -> Result<FieldValue, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(line);
    let v = Extract(field).deserialize(&mut de)?;
    de.end()?;
    Ok(v)
}

fn read_jsonl(
    file: &InputFile,
    opts: &ReadOptions,
    emit: &mut dyn FnMut(RawDoc) -> bool,
) -> Result<ReadSkips, IngestError> {
    let field = file.field.as_deref().unwrap_or("text");
    let mut r = open(file)?;
    let mut skips = ReadSkips::default();
    let mut line: Vec<u8> = Vec::new();
    let mut line_no = 0u64;
    let skip = opts.on_error == OnError::Skip;
    loop {
        line.clear();
        let n = r
            .read_until(b'\n', &mut line)
            .map_err(|e| corrupt(file, e))?;
        if n == 0 {
            return Ok(skips);
        }
        line_no += 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if line.len() as u64 > opts.max_document_bytes {
            too_large(file, line_no, line.len() as u64, opts)?;
            skips.too_large += 1;
            continue;
        }
        let (parsed, repaired) = match std::str::from_utf8(&line) {
            Ok(s) => (parse_line(s, field), false),
            Err(_) if opts.drop_invalid_utf8 => {
                if !emit(RawDoc::InvalidUtf8) {
                    return Ok(skips);
                }
                continue;
            }
            Err(_) => {
                let s = String::from_utf8_lossy(&line);
                (parse_line(&s, field), true)
            }
        };
        let value = match parsed {
            Ok(v) => v,
            Err(e) if skip => {
                drop(e);
                skips.malformed += 1;
                continue;
            }
            Err(e) => {
                return Err(IngestError::MalformedJson {
                    path: file.path.clone(),
                    line: line_no,
                    message: e.to_string(),
                });
            }
        };
        match value {
            FieldValue::Str(text) => {
                if !emit(RawDoc::Str { text, repaired }) {
                    return Ok(skips);
                }
            }
            FieldValue::Missing | FieldValue::NotString if skip => skips.missing_field += 1,
            FieldValue::Missing | FieldValue::NotString => {
                return Err(IngestError::MissingField {
                    path: file.path.clone(),
                    line: line_no,
                    field: field.to_string(),
                });
            }
        }
    }
}

fn read_parquet(
    file: &InputFile,
    opts: &ReadOptions,
    emit: &mut dyn FnMut(RawDoc) -> bool,
) -> Result<ReadSkips, IngestError> {
    let field = file.field.as_deref().unwrap_or("text");
    let bad = |e: &dyn fmt::Display| IngestError::BadParquet {
        path: file.path.clone(),
        message: e.to_string(),
    };
    let f = File::open(&file.path).map_err(|e| IngestError::Unreadable {
        path: file.path.clone(),
        source: e,
    })?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(f).map_err(|e| bad(&e))?;
    let schema = builder.schema().clone();
    let Ok(idx) = schema.index_of(field) else {
        return Err(IngestError::MissingColumn {
            path: file.path.clone(),
            field: field.to_string(),
            available: schema
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    let dt = schema.field(idx).data_type().clone();
    if !matches!(
        dt,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    ) {
        return Err(IngestError::ColumnType {
            path: file.path.clone(),
            field: field.to_string(),
            found: dt.to_string(),
        });
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), [idx]);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(1024)
        .build()
        .map_err(|e| bad(&e))?;
    let mut skips = ReadSkips::default();
    let mut row = 0u64;
    for batch in reader {
        let batch = batch.map_err(|e| bad(&e))?;
        let col = batch.column(0);
        let texts: Box<dyn Iterator<Item = Option<&str>>> = match col.data_type() {
            DataType::Utf8 => Box::new(col.as_string::<i32>().iter()),
            DataType::LargeUtf8 => Box::new(col.as_string::<i64>().iter()),
            _ => Box::new(col.as_string_view().iter()),
        };
        for t in texts {
            row += 1;
            match t {
                Some(t) if t.len() as u64 > opts.max_document_bytes => {
                    too_large(file, row, t.len() as u64, opts)?;
                    skips.too_large += 1;
                }
                Some(t) => {
                    if !emit(RawDoc::Str {
                        text: t.to_string(),
                        repaired: false,
                    }) {
                        return Ok(skips);
                    }
                }
                None if opts.on_error == OnError::Skip => skips.missing_field += 1,
                None => {
                    return Err(IngestError::MissingField {
                        path: file.path.clone(),
                        line: row,
                        field: field.to_string(),
                    });
                }
            }
        }
        debug_assert!(col.len() <= 1024);
    }
    Ok(skips)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, name: &str, bytes: &[u8], sep: Option<&str>) -> InputFile {
        let path = dir.join(name);
        std::fs::write(&path, bytes).expect("write");
        InputFile {
            source: 0,
            source_name: "s".to_string(),
            display: name.to_string(),
            codec: Codec::infer("auto", &path),
            path,
            format: SourceFormat::Text,
            separator: sep.map(str::to_string),
            field: None,
            bytes: bytes.len() as u64,
        }
    }

    fn docs(f: &InputFile, opts: &ReadOptions) -> Result<(Vec<String>, ReadSkips), IngestError> {
        let mut out = Vec::new();
        let skips = read_documents(f, opts, &mut |d| {
            if let RawDoc::Bytes(b) = d {
                out.push(String::from_utf8_lossy(&b).into_owned());
            }
            true
        })?;
        Ok((out, skips))
    }

    fn opts(on_error: OnError, max: u64) -> ReadOptions {
        ReadOptions {
            on_error,
            max_document_bytes: max,
            drop_invalid_utf8: false,
        }
    }

    #[test]
    fn text_splits_on_separator_lines_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = file(
            dir.path(),
            "a.txt",
            b"one\r\n<|endoftext|>\r\ntwo <|endoftext|> inline\n <|endoftext|> \n\n<|endoftext|>\nthree",
            Some("<|endoftext|>"),
        );
        let (d, _) = docs(&f, &opts(OnError::Fail, 1000)).expect("reads");
        assert_eq!(d, ["one\r\n", "two <|endoftext|> inline\n", "\n", "three"]);
        let whole = file(dir.path(), "b.txt", b"x\n<|endoftext|>\ny", None);
        assert_eq!(
            docs(&whole, &opts(OnError::Fail, 1000)).expect("reads").0,
            ["x\n<|endoftext|>\ny"]
        );
    }

    #[test]
    fn oversized_documents_fail_or_are_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = file(
            dir.path(),
            "a.txt",
            b"short\n#\nthis one is far too long\n#\nok\n",
            Some("#"),
        );
        let e = docs(&f, &opts(OnError::Fail, 10)).expect_err("too large");
        assert!(e.to_string().contains("a.txt:3:"), "{e}");
        let (d, skips) = docs(&f, &opts(OnError::Skip, 10)).expect("skips");
        assert_eq!(
            (d, skips.too_large),
            (vec!["short\n".to_string(), "ok\n".to_string()], 1)
        );
    }

    #[test]
    fn shard_option_rewrites_the_recorded_config() {
        let text = "[model]\npreset = \"tiny\"\n[ingest]\nenabled = false\nsources = []\n";
        let (cfg, t) = with_shard("1/3", text, Path::new("p.toml"), Path::new(".")).expect("ok");
        assert_eq!((cfg.ingest.shard_index, cfg.ingest.shard_count), (1, 3));
        assert!(t.contains("shard_count = 3"), "{t}");
        for bad in ["3/3", "1", "a/b", "0/0"] {
            assert!(with_shard(bad, text, Path::new("p.toml"), Path::new(".")).is_err());
        }
    }

    #[test]
    fn shards_partition_files_deterministically() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files: Vec<InputFile> = (0..20)
            .map(|i| file(dir.path(), &format!("f{i}"), b"x", None))
            .collect();
        let mut seen = Vec::new();
        for i in 0..3 {
            let a = select_shard(files.clone(), i, 3);
            assert_eq!(a, select_shard(files.clone(), i, 3));
            seen.extend(a.into_iter().map(|f| f.display));
        }
        seen.sort();
        let mut all: Vec<String> = files.iter().map(|f| f.display.clone()).collect();
        all.sort();
        assert_eq!(seen, all);
    }
}
