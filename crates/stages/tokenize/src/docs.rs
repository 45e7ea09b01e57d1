//! Reading documents from the ingest stage's Parquet shards, one record batch at a time.
//!
//! Columns used: `id`, `source`, `text` and `split` (`"train"` / `"val"`); `n_bytes` is ignored.
//! Only those columns are decoded (projection), and only one record batch is held at a time.

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::DataType;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use std::fs::File;
use std::path::{Path, PathBuf};
use tardbot_tokens::Split;
use tardbot_tokens::error::{Result, TokenizeError, io_err};

/// One document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Doc {
    pub id: String,
    pub source: String,
    pub text: String,
    pub split: Split,
}

/// Rows per record batch read from Parquet.
pub const BATCH_ROWS: usize = 1024;

/// Streams the documents of one Parquet shard as batches (`Iterator<Item = Result<Vec<Doc>>>`).
pub struct DocBatches {
    path: PathBuf,
    reader: ParquetRecordBatchReader,
}

impl DocBatches {
    pub fn open(path: &Path) -> Result<DocBatches> {
        let file = File::open(path).map_err(io_err(path))?;
        let perr = |e: parquet::errors::ParquetError| TokenizeError::Parquet {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(perr)?;
        let fields = builder.schema().fields();
        let mut roots = Vec::new();
        for name in ["id", "source", "text", "split"] {
            let i = fields.iter().position(|f| f.name() == name).ok_or_else(|| TokenizeError::Parquet {
                path: path.to_path_buf(),
                message: format!(
                    "column `{name}` is missing; expected the ingest stage's schema (id, source, text, n_bytes, split)"
                ),
            })?;
            roots.push(i);
        }
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
        let reader = builder
            .with_projection(mask)
            .with_batch_size(BATCH_ROWS)
            .build()
            .map_err(perr)?;
        Ok(DocBatches {
            path: path.to_path_buf(),
            reader,
        })
    }

    fn err(&self, message: String) -> TokenizeError {
        TokenizeError::Parquet {
            path: self.path.clone(),
            message,
        }
    }
}

impl Iterator for DocBatches {
    type Item = Result<Vec<Doc>>;

    fn next(&mut self) -> Option<Self::Item> {
        let batch = match self.reader.next()? {
            Ok(b) => b,
            Err(e) => return Some(Err(self.err(e.to_string()))),
        };
        let col = |name: &str| batch.column_by_name(name).cloned();
        let (Some(ids), Some(sources), Some(texts), Some(splits)) =
            (col("id"), col("source"), col("text"), col("split"))
        else {
            return Some(Err(
                self.err("a record batch lacks id/source/text/split".to_string())
            ));
        };
        let (Some(ids), Some(sources), Some(texts), Some(splits)) = (
            strings(&ids),
            strings(&sources),
            strings(&texts),
            strings(&splits),
        ) else {
            return Some(Err(self.err(
                "columns id, source, text and split must be UTF-8 strings".to_string(),
            )));
        };
        let mut docs = Vec::with_capacity(texts.len());
        for row in 0..texts.len() {
            let split = match splits[row] {
                Some("train") => Split::Train,
                Some("val") => Split::Val,
                other => {
                    return Some(Err(self.err(format!(
                        "row {row}: split is {other:?}; expected \"train\" or \"val\""
                    ))));
                }
            };
            // A null text is an empty document: nothing to tokenize.
            let Some(text) = texts[row] else { continue };
            docs.push(Doc {
                id: ids[row].unwrap_or_default().to_string(),
                source: sources[row].unwrap_or_default().to_string(),
                text: text.to_string(),
                split,
            });
        }
        Some(Ok(docs))
    }
}

/// The values of a string column (any of Arrow's three string layouts), `None` for nulls.
fn strings(col: &ArrayRef) -> Option<Vec<Option<&str>>> {
    match col.data_type() {
        DataType::Utf8 => {
            let a = col.as_string::<i32>();
            Some(
                (0..a.len())
                    .map(|i| a.is_valid(i).then(|| a.value(i)))
                    .collect(),
            )
        }
        DataType::LargeUtf8 => {
            let a = col.as_string::<i64>();
            Some(
                (0..a.len())
                    .map(|i| a.is_valid(i).then(|| a.value(i)))
                    .collect(),
            )
        }
        DataType::Utf8View => {
            let a = col.as_string_view();
            Some(
                (0..a.len())
                    .map(|i| a.is_valid(i).then(|| a.value(i)))
                    .collect(),
            )
        }
        _ => None,
    }
}

/// Reads every document of `split` from a shard (tests, small val splits).
pub fn read_split(path: &Path, split: Split) -> Result<Vec<Doc>> {
    let mut out = Vec::new();
    for batch in DocBatches::open(path)? {
        out.extend(batch?.into_iter().filter(|d| d.split == split));
    }
    Ok(out)
}

/// Writes documents as a Parquet shard in the ingest stage's schema (tests and benchmarks).
pub fn write_parquet_shard(path: &Path, docs: &[Doc]) -> Result<()> {
    use arrow::array::{Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{Field, Schema};
    use std::sync::Arc;
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, false),
        Field::new("n_bytes", DataType::Int64, false),
        Field::new("split", DataType::Utf8, false),
    ]));
    let perr = |message: String| TokenizeError::Parquet {
        path: path.to_path_buf(),
        message,
    };
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from_iter_values(
                docs.iter().map(|d| d.id.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                docs.iter().map(|d| d.source.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                docs.iter().map(|d| d.text.as_str()),
            )),
            Arc::new(Int64Array::from_iter_values(
                docs.iter().map(|d| d.text.len() as i64),
            )),
            Arc::new(StringArray::from_iter_values(
                docs.iter().map(|d| d.split.as_str()),
            )),
        ],
    )
    .map_err(|e| perr(e.to_string()))?;
    let file = File::create(path).map_err(io_err(path))?;
    let mut w = parquet::arrow::ArrowWriter::try_new(file, schema, None)
        .map_err(|e| perr(e.to_string()))?;
    w.write(&batch).map_err(|e| perr(e.to_string()))?;
    w.close().map_err(|e| perr(e.to_string()))?;
    Ok(())
}
