//! Parquet files: the per-file parts in the work directory and the output shards.
//!
//! Output schema (the tokenize stage depends on it): `id` utf8 (BLAKE3 hex of the cleaned text),
//! `source` utf8, `text` utf8, `n_bytes` int64 (UTF-8 bytes of `text`), `split` utf8 (`train`/`val`).
//! Shards are zstd-compressed; a row group closes at `row_group_rows` rows or `row_group_bytes`
//! bytes of text, a shard at `shard_bytes`.

use crate::dedup::KeepPlan;
use crate::error::IngestError;
use arrow::array::{ArrayRef, AsArray, Float64Builder, Int64Builder, StringBuilder, UInt32Builder};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The output shard schema.
pub fn shard_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, false),
        Field::new("n_bytes", DataType::Int64, false),
        Field::new("split", DataType::Utf8, false),
    ]))
}

/// The schema of a part: the shard columns plus where the row came from and its mix draw.
pub fn part_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("part", DataType::UInt32, false),
        Field::new("row", DataType::UInt32, false),
        Field::new("id", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("n_bytes", DataType::Int64, false),
        Field::new("split", DataType::Utf8, false),
        Field::new("mix_u", DataType::Float64, false),
        Field::new("text", DataType::Utf8, false),
    ]))
}

fn zstd_props(level: i32, max_rows: usize) -> Result<WriterProperties, IngestError> {
    let level = ZstdLevel::try_new(level).map_err(|e| IngestError::Write {
        path: PathBuf::new(),
        message: format!("zstd level: {e}"),
    })?;
    Ok(WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_max_row_group_row_count(Some(max_rows))
        .build())
}

/// One kept document on its way into a part.
#[derive(Debug)]
pub struct PartRow {
    pub id: String,
    pub text: String,
    pub val: bool,
    pub mix_u: f64,
}

/// Writes one part, buffering a few MB of rows per record batch.
pub struct PartWriter {
    path: PathBuf,
    writer: ArrowWriter<File>,
    part: u32,
    source: String,
    rows: u32,
    buf: Vec<PartRow>,
    buf_bytes: usize,
}

impl PartWriter {
    pub fn create(path: &Path, part: u32, source: &str) -> Result<PartWriter, IngestError> {
        let f = File::create(path).map_err(|e| IngestError::write(path, e))?;
        let writer = ArrowWriter::try_new(f, part_schema(), Some(zstd_props(1, 1 << 20)?))
            .map_err(|e| IngestError::write(path, e))?;
        Ok(PartWriter {
            path: path.to_path_buf(),
            writer,
            part,
            source: source.to_string(),
            rows: 0,
            buf: Vec::new(),
            buf_bytes: 0,
        })
    }

    pub fn push(&mut self, row: PartRow) -> Result<(), IngestError> {
        self.buf_bytes += row.text.len();
        self.buf.push(row);
        if self.buf_bytes >= 8 << 20 || self.buf.len() >= 8192 {
            self.write_buf()?;
        }
        Ok(())
    }

    fn write_buf(&mut self) -> Result<(), IngestError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let n = self.buf.len();
        let (mut part, mut row) = (
            UInt32Builder::with_capacity(n),
            UInt32Builder::with_capacity(n),
        );
        let mut id = StringBuilder::with_capacity(n, n * 64);
        let mut source = StringBuilder::with_capacity(n, n * self.source.len());
        let mut n_bytes = Int64Builder::with_capacity(n);
        let mut split = StringBuilder::with_capacity(n, n * 5);
        let mut mix_u = Float64Builder::with_capacity(n);
        let mut text = StringBuilder::with_capacity(n, self.buf_bytes);
        for r in self.buf.drain(..) {
            part.append_value(self.part);
            row.append_value(self.rows);
            self.rows += 1;
            id.append_value(&r.id);
            source.append_value(&self.source);
            n_bytes.append_value(r.text.len() as i64);
            split.append_value(if r.val { "val" } else { "train" });
            mix_u.append_value(r.mix_u);
            text.append_value(&r.text);
        }
        self.buf_bytes = 0;
        let cols: Vec<ArrayRef> = vec![
            Arc::new(part.finish()),
            Arc::new(row.finish()),
            Arc::new(id.finish()),
            Arc::new(source.finish()),
            Arc::new(n_bytes.finish()),
            Arc::new(split.finish()),
            Arc::new(mix_u.finish()),
            Arc::new(text.finish()),
        ];
        let batch = RecordBatch::try_new(part_schema(), cols)
            .map_err(|e| IngestError::write(&self.path, e))?;
        self.writer
            .write(&batch)
            .map_err(|e| IngestError::write(&self.path, e))
    }

    /// Closes and fsyncs the part; returns its row count.
    pub fn finish(mut self) -> Result<u64, IngestError> {
        self.write_buf()?;
        let f = self
            .writer
            .into_inner()
            .map_err(|e| IngestError::write(&self.path, e))?;
        f.sync_all()
            .map_err(|e| IngestError::write(&self.path, e))?;
        Ok(u64::from(self.rows))
    }
}

/// One output shard as listed in the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// Relative to the stage's output directory, e.g. `shards/part-00000.parquet`.
    pub path: String,
    pub rows: u64,
    pub train_rows: u64,
    pub val_rows: u64,
    pub text_bytes: u64,
    /// File size and BLAKE3 of the file.
    pub bytes: u64,
    pub blake3: String,
}

/// Output layout settings.
#[derive(Clone, Debug)]
pub struct ShardSettings {
    pub shard_bytes: u64,
    pub row_group_bytes: u64,
    pub row_group_rows: usize,
    pub zstd_level: i32,
}

struct OpenShard {
    rel: String,
    path: PathBuf,
    writer: ArrowWriter<File>,
    entry: ShardEntry,
    group_bytes: u64,
    group_rows: usize,
}

struct Rows {
    id: StringBuilder,
    source: StringBuilder,
    text: StringBuilder,
    n_bytes: Int64Builder,
    split: StringBuilder,
    len: usize,
}

impl Rows {
    fn new() -> Rows {
        Rows {
            id: StringBuilder::new(),
            source: StringBuilder::new(),
            text: StringBuilder::new(),
            n_bytes: Int64Builder::new(),
            split: StringBuilder::new(),
            len: 0,
        }
    }
    fn batch(&mut self) -> Result<RecordBatch, arrow::error::ArrowError> {
        self.len = 0;
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.id.finish()),
            Arc::new(self.source.finish()),
            Arc::new(self.text.finish()),
            Arc::new(self.n_bytes.finish()),
            Arc::new(self.split.finish()),
        ];
        RecordBatch::try_new(shard_schema(), cols)
    }
}

/// Writes the kept rows of every part, in part order, into shards under `out_dir/shards/`.
pub struct ShardSink<'a> {
    out_dir: &'a Path,
    settings: ShardSettings,
    open: Option<OpenShard>,
    rows: Rows,
    done: Vec<ShardEntry>,
}

impl<'a> ShardSink<'a> {
    pub fn new(out_dir: &'a Path, settings: ShardSettings) -> Result<Self, IngestError> {
        let dir = out_dir.join("shards");
        std::fs::create_dir_all(&dir).map_err(|e| IngestError::write(&dir, e))?;
        Ok(ShardSink {
            out_dir,
            settings,
            open: None,
            rows: Rows::new(),
            done: Vec::new(),
        })
    }

    fn shard(&mut self) -> Result<&mut OpenShard, IngestError> {
        if self.open.is_none() {
            let rel = format!("shards/part-{:05}.parquet", self.done.len());
            let path = self.out_dir.join(&rel);
            let f = File::create(&path).map_err(|e| IngestError::write(&path, e))?;
            let props = zstd_props(self.settings.zstd_level, self.settings.row_group_rows)?;
            let writer = ArrowWriter::try_new(f, shard_schema(), Some(props))
                .map_err(|e| IngestError::write(&path, e))?;
            self.open = Some(OpenShard {
                entry: ShardEntry {
                    path: rel.clone(),
                    rows: 0,
                    train_rows: 0,
                    val_rows: 0,
                    text_bytes: 0,
                    bytes: 0,
                    blake3: String::new(),
                },
                rel,
                path,
                writer,
                group_bytes: 0,
                group_rows: 0,
            });
        }
        self.open.as_mut().ok_or_else(|| IngestError::Write {
            path: PathBuf::new(),
            message: "no open shard".to_string(),
        })
    }

    fn push(
        &mut self,
        id: &str,
        source: &str,
        text: &str,
        n_bytes: i64,
        split: &str,
    ) -> Result<(), IngestError> {
        let (rg_bytes, rg_rows, shard_bytes) = (
            self.settings.row_group_bytes,
            self.settings.row_group_rows,
            self.settings.shard_bytes,
        );
        let s = self.shard()?;
        s.entry.rows += 1;
        s.entry.text_bytes += text.len() as u64;
        if split == "val" {
            s.entry.val_rows += 1;
        } else {
            s.entry.train_rows += 1;
        }
        s.group_bytes += text.len() as u64;
        s.group_rows += 1;
        let (group_full, shard_full) = (
            s.group_bytes >= rg_bytes || s.group_rows >= rg_rows,
            s.entry.text_bytes >= shard_bytes,
        );
        let r = &mut self.rows;
        r.id.append_value(id);
        r.source.append_value(source);
        r.text.append_value(text);
        r.n_bytes.append_value(n_bytes);
        r.split.append_value(split);
        r.len += 1;
        if shard_full {
            self.close_shard()?;
        } else if group_full || r.len >= 1024 {
            self.write_rows(group_full)?;
        }
        Ok(())
    }

    fn write_rows(&mut self, end_group: bool) -> Result<(), IngestError> {
        let Some(s) = self.open.as_mut() else {
            return Ok(());
        };
        if self.rows.len > 0 {
            let batch = self
                .rows
                .batch()
                .map_err(|e| IngestError::write(&s.path, e))?;
            s.writer
                .write(&batch)
                .map_err(|e| IngestError::write(&s.path, e))?;
        }
        if end_group {
            s.writer
                .flush()
                .map_err(|e| IngestError::write(&s.path, e))?;
            s.group_bytes = 0;
            s.group_rows = 0;
        }
        Ok(())
    }

    fn close_shard(&mut self) -> Result<(), IngestError> {
        self.write_rows(false)?;
        let Some(s) = self.open.take() else {
            return Ok(());
        };
        let f = s
            .writer
            .into_inner()
            .map_err(|e| IngestError::write(&s.path, e))?;
        f.sync_all().map_err(|e| IngestError::write(&s.path, e))?;
        drop(f);
        let h =
            tardbot_core::hash::hash_file(&s.path).map_err(|e| IngestError::write(&s.path, e))?;
        let mut entry = s.entry;
        entry.bytes = h.bytes;
        entry.blake3 = h.hex;
        debug_assert_eq!(entry.path, s.rel);
        self.done.push(entry);
        Ok(())
    }

    /// Copies the rows of one part that the plan keeps (each as many times as its copies).
    pub fn copy_part(&mut self, part_path: &Path, keep: &[(u32, u32)]) -> Result<(), IngestError> {
        if keep.is_empty() {
            return Ok(());
        }
        let bad = |e: &dyn std::fmt::Display| IngestError::Write {
            path: part_path.to_path_buf(),
            message: format!("reading back the part: {e}"),
        };
        let f = File::open(part_path).map_err(|e| bad(&e))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(f)
            .map_err(|e| bad(&e))?
            .with_batch_size(1024)
            .build()
            .map_err(|e| bad(&e))?;
        let mut next = keep.iter().peekable();
        let mut row = 0u32;
        for batch in reader {
            let batch = batch.map_err(|e| bad(&e))?;
            let col = |name: &str| {
                batch
                    .column_by_name(name)
                    .ok_or_else(|| bad(&format!("no column {name}")))
            };
            let (ids, sources, texts, splits) = (
                col("id")?.as_string::<i32>().clone(),
                col("source")?.as_string::<i32>().clone(),
                col("text")?.as_string::<i32>().clone(),
                col("split")?.as_string::<i32>().clone(),
            );
            let n_bytes = col("n_bytes")?.as_primitive::<Int64Type>().clone();
            for i in 0..batch.num_rows() {
                while let Some(&&(r, copies)) = next.peek() {
                    if r != row {
                        break;
                    }
                    next.next();
                    for _ in 0..copies {
                        self.push(
                            ids.value(i),
                            sources.value(i),
                            texts.value(i),
                            n_bytes.value(i),
                            splits.value(i),
                        )?;
                    }
                }
                row += 1;
            }
            if next.peek().is_none() {
                break;
            }
        }
        Ok(())
    }

    /// Closes the last shard; returns every shard's entry.
    pub fn finish(mut self) -> Result<Vec<ShardEntry>, IngestError> {
        self.close_shard()?;
        Ok(self.done)
    }
}

/// Writes every part's kept rows into shards.
pub fn write_shards(
    out_dir: &Path,
    settings: ShardSettings,
    parts: &[(u32, PathBuf)],
    plan: &KeepPlan,
) -> Result<Vec<ShardEntry>, IngestError> {
    let mut sink = ShardSink::new(out_dir, settings)?;
    for (ordinal, path) in parts {
        sink.copy_part(path, plan.rows(*ordinal))?;
    }
    sink.finish()
}
