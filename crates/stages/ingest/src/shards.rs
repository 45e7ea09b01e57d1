//! Parquet files: the per-file parts in the work directory and the output shards.
//!
//! Output schema (the tokenize stage depends on it): `id` utf8 (BLAKE3 hex of the cleaned text),
//! `source` utf8, `text` utf8, `n_bytes` int64 (UTF-8 bytes of `text`), `split` utf8 (`train`/`val`).
//! Shards are zstd-compressed; a row group closes at `row_group_rows` rows or `row_group_bytes`
//! bytes of text, a shard at `shard_bytes`. Row groups are encoded (and compressed) in parallel
//! on the stage's thread pool and appended to their shard in order, so the bytes written do not
//! depend on the number of threads. Parts are intermediate files read back once: uncompressed,
//! in row groups of a few MB.

use crate::dedup::KeepPlan;
use crate::error::IngestError;
use arrow::array::{
    ArrayRef, AsArray, Float64Builder, Int64Builder, StringArray, StringBuilder, UInt32Builder,
};
use arrow::buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::arrow_writer::{
    ArrowColumnChunk, ArrowColumnWriter, ArrowRowGroupWriterFactory, compute_leaves,
};
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::{Compression, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::ColumnPath;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};

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

/// Writer settings of parts and shards. `text` and `id` are long, (nearly) unique strings: a
/// dictionary never pays off for them, and nothing reads min/max statistics of `text`.
fn writer_props(compression: Compression, max_rows: usize) -> WriterProperties {
    WriterProperties::builder()
        .set_compression(compression)
        .set_max_row_group_row_count(Some(max_rows))
        .set_column_dictionary_enabled(ColumnPath::from("text"), false)
        .set_column_dictionary_enabled(ColumnPath::from("id"), false)
        .set_column_statistics_enabled(ColumnPath::from("text"), EnabledStatistics::None)
        .build()
}

fn zstd(level: i32) -> Result<Compression, IngestError> {
    let level = ZstdLevel::try_new(level).map_err(|e| IngestError::Write {
        path: PathBuf::new(),
        message: format!("zstd level: {e}"),
    })?;
    Ok(Compression::ZSTD(level))
}

/// Rows and text bytes per row group of a part.
const PART_GROUP_ROWS: usize = 8192;
const PART_GROUP_BYTES: usize = 8 << 20;

/// One kept document on its way into a part.
#[derive(Debug)]
pub struct PartRow {
    pub id: String,
    pub text: String,
    pub val: bool,
    pub mix_u: f64,
}

/// Writes one part, one row group per few MB of rows.
pub struct PartWriter {
    path: PathBuf,
    writer: ArrowWriter<File>,
    part: u32,
    source: String,
    rows: u32,
    buf: Vec<PartRow>,
    buf_bytes: usize,
    /// The text buffer of the last row group, for the next.
    spare: TextBuf,
}

/// The column of `text` in [`part_schema`].
const PART_TEXT_COLUMN: usize = 7;

impl PartWriter {
    pub fn create(path: &Path, part: u32, source: &str) -> Result<PartWriter, IngestError> {
        let f = File::create(path).map_err(|e| IngestError::write(path, e))?;
        let props = writer_props(Compression::UNCOMPRESSED, PART_GROUP_ROWS);
        let writer = ArrowWriter::try_new(f, part_schema(), Some(props))
            .map_err(|e| IngestError::write(path, e))?;
        Ok(PartWriter {
            path: path.to_path_buf(),
            writer,
            part,
            source: source.to_string(),
            rows: 0,
            buf: Vec::new(),
            buf_bytes: 0,
            spare: TextBuf::default(),
        })
    }

    pub fn push(&mut self, row: PartRow) -> Result<(), IngestError> {
        self.buf_bytes += row.text.len();
        self.buf.push(row);
        if self.buf_bytes >= PART_GROUP_BYTES || self.buf.len() >= PART_GROUP_ROWS {
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
        let mut text = std::mem::take(&mut self.spare);
        text.values.reserve(self.buf_bytes);
        text.offsets.reserve(n + 1);
        if text.offsets.is_empty() {
            text.offsets.push(0);
        }
        for r in self.buf.drain(..) {
            part.append_value(self.part);
            row.append_value(self.rows);
            self.rows += 1;
            id.append_value(&r.id);
            source.append_value(&self.source);
            n_bytes.append_value(r.text.len() as i64);
            split.append_value(if r.val { "val" } else { "train" });
            mix_u.append_value(r.mix_u);
            text.append(&r.text)
                .map_err(|e| IngestError::write(&self.path, e))?;
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
            .map_err(|e| IngestError::write(&self.path, e))?;
        if let Some(spare) = TextBuf::reclaim_column(batch, PART_TEXT_COLUMN) {
            self.spare = spare;
        }
        self.writer
            .flush()
            .map_err(|e| IngestError::write(&self.path, e))
    }

    /// Closes the part (not yet synced: see `parts::PendingPart`); returns its row count.
    pub fn finish(mut self) -> Result<u64, IngestError> {
        self.write_buf()?;
        self.writer
            .close()
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

/// A shard file being written; the bytes are hashed on their way to the file.
struct HashingFile {
    file: File,
    hasher: blake3::Hasher,
}

impl Write for HashingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

struct OpenShard {
    index: usize,
    path: PathBuf,
    writer: SerializedFileWriter<HashingFile>,
}

type Chunks = Result<Vec<ArrowColumnChunk>, ParquetError>;

/// A row group being encoded on the pool; its batch comes back with the chunks, to be reused.
struct Pending {
    shard: usize,
    chunks: mpsc::Receiver<(Chunks, RecordBatch)>,
}

/// The values and offsets of a string column, kept from one row group to the next: a row group
/// holds up to `row_group_bytes` (16 MB) of text, and fresh memory of that size for every group
/// costs the kernel as much time zeroing pages as copying the text into it.
#[derive(Default)]
pub(crate) struct TextBuf {
    values: Vec<u8>,
    offsets: Vec<i32>,
}

impl TextBuf {
    fn with_capacity(rows: usize, bytes: usize) -> TextBuf {
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(0);
        TextBuf {
            values: Vec::with_capacity(bytes),
            offsets,
        }
    }

    fn append(&mut self, s: &str) -> Result<(), arrow::error::ArrowError> {
        self.values.extend_from_slice(s.as_bytes());
        let end = i32::try_from(self.values.len()).map_err(|_| {
            arrow::error::ArrowError::InvalidArgumentError(
                "more than 2 GB of text in one column chunk".to_string(),
            )
        })?;
        self.offsets.push(end);
        Ok(())
    }

    /// The collected strings as an array (the buffers move into it, nothing is copied).
    fn finish(&mut self) -> StringArray {
        let values = std::mem::take(&mut self.values);
        let mut offsets = std::mem::take(&mut self.offsets);
        if offsets.is_empty() {
            offsets.push(0);
        }
        self.offsets.push(0);
        let offsets = OffsetBuffer::new(ScalarBuffer::from(offsets));
        debug_assert!(std::str::from_utf8(&values).is_ok());
        // SAFETY: `values` is a concatenation of `&str`s (`append` is the only way in) and
        // `offsets` holds 0 and the end of each, so every value is valid UTF-8 and the offsets
        // are monotonic and in bounds. (`try_new` would validate the text again, a second pass
        // over every byte.)
        unsafe { StringArray::new_unchecked(offsets, Buffer::from_vec(values), None) }
    }

    /// Takes back the buffers of an array made by [`TextBuf::finish`] once nothing else holds
    /// them (emptied, capacity kept); `None` when they are still shared.
    fn reclaim(array: StringArray) -> Option<TextBuf> {
        let (offsets, values, _) = array.into_parts();
        let mut values = values.into_vec::<u8>().ok()?;
        let mut offsets = offsets.into_inner().into_inner().into_vec::<i32>().ok()?;
        values.clear();
        offsets.clear();
        offsets.push(0);
        Some(TextBuf { values, offsets })
    }

    /// [`TextBuf::reclaim`] of column `index` of `batch` (dropped).
    fn reclaim_column(batch: RecordBatch, index: usize) -> Option<TextBuf> {
        let array = batch.column(index).as_string_opt::<i32>()?.clone();
        drop(batch);
        TextBuf::reclaim(array)
    }
}

/// The rows of the row group being collected.
struct Rows {
    id: StringBuilder,
    source: StringBuilder,
    text: TextBuf,
    n_bytes: Int64Builder,
    split: StringBuilder,
    len: usize,
}

/// The column of `text` in [`shard_schema`].
const SHARD_TEXT_COLUMN: usize = 2;

impl Rows {
    fn new(rows: usize, text: TextBuf) -> Rows {
        Rows {
            id: StringBuilder::with_capacity(rows, rows * 64),
            source: StringBuilder::new(),
            text,
            n_bytes: Int64Builder::with_capacity(rows),
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

/// Encodes one row group's columns (runs on the pool).
fn encode(mut writers: Vec<ArrowColumnWriter>, batch: &RecordBatch) -> Chunks {
    let mut next = writers.iter_mut();
    for (array, field) in batch.columns().iter().zip(batch.schema_ref().fields()) {
        for leaf in compute_leaves(field, array)? {
            next.next()
                .ok_or_else(|| ParquetError::General("more leaves than columns".to_string()))?
                .write(&leaf)?;
        }
    }
    writers.into_iter().map(ArrowColumnWriter::close).collect()
}

/// Writes the kept rows of every part, in part order, into shards under `out_dir/shards/`.
///
/// The caller's thread reads the parts and cuts rows into row groups and shards (so where a row
/// group or shard ends depends only on the rows); each row group is encoded on the pool while the
/// next is collected, and appended to its shard in order. Closed shards are fsynced in the
/// background. Memory: a few row groups in flight.
pub struct ShardSink<'a> {
    out_dir: &'a Path,
    settings: ShardSettings,
    pool: &'a rayon::ThreadPool,
    props: WriterProperties,
    factory: ArrowRowGroupWriterFactory,
    schema: SchemaRef,
    rows: Rows,
    rows_hint: (usize, usize),
    /// One entry per shard begun; `bytes` and `blake3` are filled in when it closes.
    entries: Vec<ShardEntry>,
    /// The last shard took its last row: the next row begins a new one.
    shard_full: bool,
    groups_in_shard: usize,
    group_bytes: u64,
    group_rows: usize,
    in_flight: VecDeque<Pending>,
    /// Text buffers of encoded row groups, for the next ones.
    spare: Vec<TextBuf>,
    open: Option<OpenShard>,
    syncing: Vec<std::thread::JoinHandle<Result<(), IngestError>>>,
}

impl<'a> ShardSink<'a> {
    pub fn new(
        out_dir: &'a Path,
        settings: ShardSettings,
        pool: &'a rayon::ThreadPool,
    ) -> Result<Self, IngestError> {
        let dir = out_dir.join("shards");
        std::fs::create_dir_all(&dir).map_err(|e| IngestError::write(&dir, e))?;
        let props = writer_props(zstd(settings.zstd_level)?, settings.row_group_rows.max(1));
        let schema = shard_schema();
        // The column writers depend only on schema and properties, not on the file.
        let (template, factory) =
            ArrowWriter::try_new(std::io::sink(), schema.clone(), Some(props.clone()))
                .and_then(ArrowWriter::into_serialized_writer)
                .map_err(|e| IngestError::write(&dir, e))?;
        drop(template);
        let rows_hint = (
            settings.row_group_rows.clamp(1, 1 << 16),
            usize::try_from(settings.row_group_bytes).map_or(64 << 20, |b| b.min(64 << 20))
                + (1 << 20),
        );
        Ok(ShardSink {
            out_dir,
            settings,
            pool,
            props,
            factory,
            schema,
            rows: Rows::new(
                rows_hint.0,
                TextBuf::with_capacity(rows_hint.0, rows_hint.1),
            ),
            rows_hint,
            entries: Vec::new(),
            shard_full: true,
            groups_in_shard: 0,
            group_bytes: 0,
            group_rows: 0,
            in_flight: VecDeque::new(),
            spare: Vec::new(),
            open: None,
            syncing: Vec::new(),
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
        if self.shard_full {
            self.entries.push(ShardEntry {
                path: format!("shards/part-{:05}.parquet", self.entries.len()),
                rows: 0,
                train_rows: 0,
                val_rows: 0,
                text_bytes: 0,
                bytes: 0,
                blake3: String::new(),
            });
            self.shard_full = false;
            self.groups_in_shard = 0;
        }
        let Some(e) = self.entries.last_mut() else {
            return Ok(());
        };
        e.rows += 1;
        e.text_bytes += text.len() as u64;
        if split == "val" {
            e.val_rows += 1;
        } else {
            e.train_rows += 1;
        }
        self.shard_full = e.text_bytes >= self.settings.shard_bytes;
        self.group_bytes += text.len() as u64;
        self.group_rows += 1;
        let r = &mut self.rows;
        r.id.append_value(id);
        r.source.append_value(source);
        r.text
            .append(text)
            .map_err(|e| IngestError::write(&self.out_dir.join("shards"), e))?;
        r.n_bytes.append_value(n_bytes);
        r.split.append_value(split);
        r.len += 1;
        if self.shard_full
            || self.group_bytes >= self.settings.row_group_bytes
            || self.group_rows >= self.settings.row_group_rows
        {
            self.end_group()?;
        }
        Ok(())
    }

    fn shard_path(&self, index: usize) -> PathBuf {
        self.out_dir.join(&self.entries[index].path)
    }

    /// Sends the collected rows off to be encoded as one row group.
    fn end_group(&mut self) -> Result<(), IngestError> {
        self.group_bytes = 0;
        self.group_rows = 0;
        if self.rows.len == 0 {
            return Ok(());
        }
        let shard = self.entries.len() - 1;
        let path = self.shard_path(shard);
        let batch = self
            .rows
            .batch()
            .map_err(|e| IngestError::write(&path, e))?;
        let text = self
            .spare
            .pop()
            .unwrap_or_else(|| TextBuf::with_capacity(self.rows_hint.0, self.rows_hint.1));
        self.rows = Rows::new(self.rows_hint.0, text);
        let writers = self
            .factory
            .create_column_writers(self.groups_in_shard)
            .map_err(|e| IngestError::write(&path, e))?;
        self.groups_in_shard += 1;
        let (tx, rx) = mpsc::sync_channel(1);
        self.pool.spawn(move || {
            let chunks = encode(writers, &batch);
            let _ = tx.send((chunks, batch));
        });
        self.in_flight.push_back(Pending { shard, chunks: rx });
        while self.in_flight.len() > self.pool.current_num_threads() + 1 {
            self.append_next()?;
        }
        Ok(())
    }

    /// Appends the oldest encoded row group to its shard (opening and closing shards as needed).
    fn append_next(&mut self) -> Result<(), IngestError> {
        let Some(p) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let path = self.shard_path(p.shard);
        let (chunks, batch) = p
            .chunks
            .recv()
            .map_err(|_| IngestError::write(&path, "a row group encoder panicked"))?;
        let chunks = chunks.map_err(|e| IngestError::write(&path, e))?;
        if let Some(text) = TextBuf::reclaim_column(batch, SHARD_TEXT_COLUMN) {
            self.spare.push(text);
        }
        if self.open.as_ref().is_some_and(|o| o.index != p.shard) {
            self.close_shard()?;
        }
        if self.open.is_none() {
            let file = File::create(&path).map_err(|e| IngestError::write(&path, e))?;
            let sink = HashingFile {
                file,
                hasher: blake3::Hasher::new(),
            };
            let (writer, _) =
                ArrowWriter::try_new(sink, self.schema.clone(), Some(self.props.clone()))
                    .and_then(ArrowWriter::into_serialized_writer)
                    .map_err(|e| IngestError::write(&path, e))?;
            self.open = Some(OpenShard {
                index: p.shard,
                path: path.clone(),
                writer,
            });
        }
        let Some(open) = self.open.as_mut() else {
            return Ok(());
        };
        let mut rg = open
            .writer
            .next_row_group()
            .map_err(|e| IngestError::write(&path, e))?;
        for c in chunks {
            c.append_to_row_group(&mut rg)
                .map_err(|e| IngestError::write(&path, e))?;
        }
        rg.close().map_err(|e| IngestError::write(&path, e))?;
        Ok(())
    }

    /// Writes the footer of the open shard, records its size and hash, and fsyncs it in the
    /// background.
    fn close_shard(&mut self) -> Result<(), IngestError> {
        let Some(s) = self.open.take() else {
            return Ok(());
        };
        let sink = s
            .writer
            .into_inner()
            .map_err(|e| IngestError::write(&s.path, e))?;
        let entry = &mut self.entries[s.index];
        entry.bytes = sink.hasher.count();
        entry.blake3 = sink.hasher.finalize().to_hex().to_string();
        let (file, path) = (sink.file, s.path);
        self.syncing.push(std::thread::spawn(move || {
            file.sync_all().map_err(|e| IngestError::write(&path, e))
        }));
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
        let builder = ParquetRecordBatchReaderBuilder::try_new(f).map_err(|e| bad(&e))?;
        let wanted: Vec<usize> = ["id", "source", "text", "n_bytes", "split"]
            .iter()
            .map(|n| builder.schema().index_of(n).map_err(|e| bad(&e)))
            .collect::<Result<_, _>>()?;
        let mask = ProjectionMask::roots(builder.parquet_schema(), wanted);
        let reader = builder
            .with_projection(mask)
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

    /// Encodes and appends what is left, closes the last shard and waits for the fsyncs; returns
    /// every shard's entry.
    pub fn finish(mut self) -> Result<Vec<ShardEntry>, IngestError> {
        self.end_group()?;
        while !self.in_flight.is_empty() {
            self.append_next()?;
        }
        self.close_shard()?;
        for h in self.syncing.drain(..) {
            h.join()
                .map_err(|_| IngestError::write(self.out_dir, "an fsync thread panicked"))??;
        }
        Ok(std::mem::take(&mut self.entries))
    }
}

/// Writes every part's kept rows into shards.
pub fn write_shards(
    out_dir: &Path,
    settings: ShardSettings,
    parts: &[(u32, PathBuf)],
    plan: &KeepPlan,
    pool: &rayon::ThreadPool,
) -> Result<Vec<ShardEntry>, IngestError> {
    let mut sink = ShardSink::new(out_dir, settings, pool)?;
    for (ordinal, path) in parts {
        sink.copy_part(path, plan.rows(*ordinal))?;
    }
    sink.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_buffers_come_back_for_the_next_row_group() {
        let mut t = TextBuf::with_capacity(4, 1 << 16);
        for s in ["a", "", "ünï", "code"] {
            t.append(s).expect("append");
        }
        let array = t.finish();
        assert_eq!(
            array.iter().flatten().collect::<Vec<_>>(),
            ["a", "", "ünï", "code"]
        );
        let batch =
            RecordBatch::try_from_iter([("t", Arc::new(array) as ArrayRef)]).expect("batch");
        let shared = batch.clone();
        assert!(
            TextBuf::reclaim_column(batch, 0).is_none(),
            "not while another batch holds the buffers"
        );
        let mut again = TextBuf::reclaim_column(shared, 0).expect("the buffers come back");
        assert!(again.values.is_empty() && again.values.capacity() >= 1 << 16);
        again.append("x").expect("append");
        assert_eq!(again.finish().value(0), "x");
    }
}
