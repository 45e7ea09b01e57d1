//! One input file → one *part* in the work directory: its cleaned, filtered documents as Parquet
//! plus a completion marker holding the file's counts.
//!
//! A part is complete only when its marker exists and matches the input file (size, mtime) and
//! the configuration; a killed ingest therefore restarts at the first input file whose part is not
//! complete. Reading and writing run on their own threads, one each for all the files; cleaning,
//! filtering and hashing of each batch of documents run in parallel on the stage's thread pool;
//! rows are written in input order.

use crate::clean::{CleanPolicy, Cleaned, clean, clean_str};
use crate::error::IngestError;
use crate::filters::{FilterRules, Reason};
use crate::report::Counts;
use crate::shards::{PartRow, PartWriter};
use crate::sources::{InputFile, RawDoc, ReadOptions, ReadSkips, read_documents};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use tardbot_core::config::FilterConfig;
use tardbot_core::config::OnError;

/// Everything needed to turn files into parts.
pub struct PartSettings {
    pub dir: PathBuf,
    pub clean: CleanPolicy,
    pub filters: FilterConfig,
    pub read: ReadOptions,
    pub validation_fraction: f64,
    pub seed: u64,
    /// Hash of the stage's config slice: a part made under another config is redone.
    pub config_hash: String,
}

/// The completion marker of a part (`<part>.done.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Marker {
    pub file_key: String,
    pub input: String,
    pub input_bytes: u64,
    pub input_mtime_ns: u128,
    pub config_hash: String,
    /// File name of the part's Parquet in the parts directory (absent: the file was skipped).
    pub part: Option<String>,
    pub rows: u64,
    pub counts: Counts,
}

impl Marker {
    pub fn part_path(&self, dir: &Path) -> Option<PathBuf> {
        self.part.as_ref().map(|p| dir.join(p))
    }
}

fn stem(ordinal: u32, file: &InputFile) -> String {
    format!("{ordinal:06}-{}", &file.key()[..16])
}

pub(crate) fn mtime_ns(path: &Path) -> u128 {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos())
}

/// The marker of a complete part for this file, if there is one.
pub fn complete_part(s: &PartSettings, ordinal: u32, file: &InputFile) -> Option<Marker> {
    let path = s.dir.join(format!("{}.done.json", stem(ordinal, file)));
    let m: Marker = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    let ok = m.file_key == file.key()
        && m.input_bytes == file.bytes
        && m.input_mtime_ns == mtime_ns(&file.path)
        && m.config_hash == s.config_hash
        && m.part_path(&s.dir).is_none_or(|p| p.is_file());
    ok.then_some(m)
}

/// What happened to one document.
enum Outcome {
    Kept { row: PartRow, repaired: bool },
    InvalidUtf8,
    Empty { repaired: bool },
    Filtered { reason: Reason, repaired: bool },
}

fn unit(bytes: &[u8]) -> f64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&bytes[..8]);
    (u64::from_le_bytes(w) >> 11) as f64 / (1u64 << 53) as f64
}

fn process(doc: RawDoc, s: &PartSettings) -> Outcome {
    let cleaned = match doc {
        RawDoc::Bytes(b) => clean(b, &s.clean),
        RawDoc::Str { text, repaired } => clean_str(text, repaired, &s.clean),
        RawDoc::InvalidUtf8 => Cleaned::InvalidUtf8,
    };
    let (text, repaired) = match cleaned {
        Cleaned::Text { text, repaired } => (text, repaired),
        Cleaned::InvalidUtf8 => return Outcome::InvalidUtf8,
        Cleaned::Empty => return Outcome::Empty { repaired: false },
    };
    if let Some(reason) = s.filters.check(&text) {
        return Outcome::Filtered { reason, repaired };
    }
    let h = blake3::hash(text.as_bytes());
    let mut keyed = blake3::Hasher::new();
    keyed.update(&s.seed.to_le_bytes());
    keyed.update(h.as_bytes());
    let row = PartRow {
        id: h.to_hex().to_string(),
        val: unit(h.as_bytes()) < s.validation_fraction,
        mix_u: unit(keyed.finalize().as_bytes()),
        text,
    };
    Outcome::Kept { row, repaired }
}

fn raw_len(d: &RawDoc) -> u64 {
    match d {
        RawDoc::Bytes(b) => b.len() as u64,
        RawDoc::Str { text, .. } => text.len() as u64,
        RawDoc::InvalidUtf8 => 0,
    }
}

const BATCH_BYTES: u64 = 16 << 20;
const FIRST_BATCH_BYTES: u64 = 1 << 20;
const BATCH_DOCS: usize = 16384;

/// A part written but not yet durable. [`PendingPart::complete`] fsyncs it, moves it into place
/// and then writes its marker, so a marker only ever vouches for a complete part; the ingest runs
/// it in the background while the next file is read.
pub struct PendingPart {
    tmp: PathBuf,
    /// Where the part goes (`None`: the file was skipped, there is no part).
    dest: Option<PathBuf>,
    marker_path: PathBuf,
    marker: Marker,
}

impl PendingPart {
    pub fn complete(self) -> Result<(), IngestError> {
        if let Some(dest) = &self.dest {
            std::fs::File::open(&self.tmp)
                .and_then(|f| f.sync_all())
                .map_err(|e| IngestError::write(&self.tmp, e))?;
            std::fs::rename(&self.tmp, dest).map_err(|e| IngestError::write(dest, e))?;
        }
        let mpath = &self.marker_path;
        let mtmp = mpath.with_extension("json.tmp");
        let json =
            serde_json::to_vec_pretty(&self.marker).map_err(|e| IngestError::write(mpath, e))?;
        write_synced(&mtmp, &json)?;
        std::fs::rename(&mtmp, mpath).map_err(|e| IngestError::write(mpath, e))
    }
}

/// What the reader thread sends: a batch of one file's documents (by index into the files being
/// built), or the end of that file with how its reading went.
enum ReadMsg {
    Batch(usize, Vec<RawDoc>),
    End(usize, Result<ReadSkips, IngestError>),
}

/// What the writer thread gets: one file's kept rows, or the end of that file with its counts.
enum WriteMsg {
    Rows(usize, Vec<PartRow>),
    End(usize, Result<ReadSkips, IngestError>, Counts),
}

/// A finished file (by index), or the error that ends the build.
type Finished = (usize, Result<(Marker, PendingPart), IngestError>);

/// Turns input files into parts, in order: `files` are `(ordinal, file)` pairs without a complete
/// part. One reader thread streams the files' documents in batches, the pool cleans, filters and
/// hashes each batch, one writer thread appends the kept rows to each file's part (in input
/// order), all three at once and across file boundaries, so the next file is being read while
/// the last one is written. Each finished file is handed to `done` (ordinal, marker, what is left
/// to make the part durable) in order; `done` returns `false` to stop. Under `on_error = "skip"`
/// a file that cannot be read becomes a marker recording the skip.
///
/// `cancelled` is asked before each file is processed; a cancelled build stops there with
/// [`IngestError::Interrupted`] (the files before it are handed to `done` first).
pub fn build_parts(
    s: &PartSettings,
    files: &[(u32, &InputFile)],
    pool: &rayon::ThreadPool,
    cancelled: &dyn Fn() -> bool,
    done: &mut dyn FnMut(u32, Marker, PendingPart) -> bool,
) -> Result<(), IngestError> {
    if files.is_empty() {
        return Ok(());
    }
    let panicked = |who: &str| IngestError::Write {
        path: s.dir.clone(),
        message: format!("the {who} thread panicked"),
    };
    std::thread::scope(|scope| -> Result<(), IngestError> {
        let (tx, rx) = sync_channel::<ReadMsg>(2);
        let read_opts = s.read;
        let reader = scope.spawn(move || {
            // The first batches are small so that the pool starts working at once; then they
            // double up to `BATCH_BYTES` (fewer hand-overs per MB).
            let mut limit = FIRST_BATCH_BYTES;
            for (k, (_, file)) in files.iter().enumerate() {
                let (mut batch, mut bytes, mut open) = (Vec::new(), 0u64, true);
                let r = read_documents(file, &read_opts, &mut |d| {
                    bytes += raw_len(&d);
                    batch.push(d);
                    if bytes >= limit || batch.len() >= BATCH_DOCS {
                        bytes = 0;
                        limit = (2 * limit).min(BATCH_BYTES);
                        open = tx
                            .send(ReadMsg::Batch(k, std::mem::take(&mut batch)))
                            .is_ok();
                    }
                    open
                });
                let sent = open
                    && (batch.is_empty() || tx.send(ReadMsg::Batch(k, batch)).is_ok())
                    && tx.send(ReadMsg::End(k, r)).is_ok();
                if !sent {
                    return; // the build stopped
                }
            }
        });
        let (wtx, wrx) = sync_channel::<WriteMsg>(2);
        // Unbounded: the writer never waits for the main thread, which waits for the writer.
        let (ftx, frx) = std::sync::mpsc::channel::<Finished>();
        let writer = scope.spawn(move || write_parts(s, files, wrx, ftx));

        let mut outcome = Ok(());
        let mut current = None;
        let mut counts = Counts::default();
        // Hands the files the writer has finished to `done`; `false` when the build must stop.
        let mut deliver = |outcome: &mut Result<(), IngestError>| -> bool {
            for (k, finished) in frx.try_iter() {
                match finished {
                    Ok((marker, pending)) => {
                        if !done(files[k].0, marker, pending) {
                            return false;
                        }
                    }
                    Err(e) => {
                        if outcome.is_ok() {
                            *outcome = Err(e);
                        }
                        return false;
                    }
                }
            }
            true
        };
        for msg in rx.iter() {
            let k = match &msg {
                ReadMsg::Batch(k, _) | ReadMsg::End(k, _) => *k,
            };
            if current != Some(k) {
                if cancelled() {
                    outcome = Err(IngestError::Interrupted);
                    break;
                }
                current = Some(k);
                counts = Counts {
                    files: 1,
                    ..Counts::default()
                };
            }
            let sent = match msg {
                ReadMsg::Batch(_, batch) => {
                    let kept = process_batch(s, batch, pool, &mut counts);
                    wtx.send(WriteMsg::Rows(k, kept)).is_ok()
                }
                ReadMsg::End(_, read) => wtx
                    .send(WriteMsg::End(k, read, std::mem::take(&mut counts)))
                    .is_ok(),
            };
            // A failed send: the writer stopped, and its error is among the finished files.
            if !sent || !deliver(&mut outcome) {
                break;
            }
        }
        drop(rx);
        drop(wtx);
        let written = writer.join().map_err(|_| panicked("part writer"));
        let read = reader.join().map_err(|_| panicked("reader"));
        deliver(&mut outcome);
        written?;
        read?;
        outcome
    })
}

/// Cleans, filters and hashes one batch on the pool; counts what happened and returns the kept
/// rows in input order.
fn process_batch(
    s: &PartSettings,
    batch: Vec<RawDoc>,
    pool: &rayon::ThreadPool,
    counts: &mut Counts,
) -> Vec<PartRow> {
    counts.docs_in += batch.len() as u64;
    counts.bytes_in += batch.iter().map(raw_len).sum::<u64>();
    let outcomes: Vec<Outcome> =
        pool.install(|| batch.into_par_iter().map(|d| process(d, s)).collect());
    let mut kept = Vec::with_capacity(outcomes.len());
    for o in outcomes {
        match o {
            Outcome::Kept { row, repaired } => {
                counts.invalid_utf8_repaired += u64::from(repaired);
                counts.docs_kept += 1;
                counts.bytes_kept += row.text.len() as u64;
                kept.push(row);
            }
            Outcome::InvalidUtf8 => counts.invalid_utf8_dropped += 1,
            Outcome::Empty { repaired } => {
                counts.invalid_utf8_repaired += u64::from(repaired);
                counts.empty += 1;
            }
            Outcome::Filtered { reason, repaired } => {
                counts.invalid_utf8_repaired += u64::from(repaired);
                *counts
                    .filtered
                    .entry(reason.as_str().to_string())
                    .or_default() += 1;
            }
        }
    }
    kept
}

/// The writer thread of [`build_parts`]: appends each file's rows to its part and, at the file's
/// end, closes the part (or, for a file that could not be read, removes it) and sends the marker
/// and pending part back. Stops at the first error that ends the build (after sending it), and
/// removes the part of a file it did not see the end of.
fn write_parts(
    s: &PartSettings,
    files: &[(u32, &InputFile)],
    rx: std::sync::mpsc::Receiver<WriteMsg>,
    finished: std::sync::mpsc::Sender<Finished>,
) {
    let tmp_of = |k: usize| {
        let (ordinal, file) = files[k];
        s.dir.join(format!("{}.parquet.tmp", stem(ordinal, file)))
    };
    let create = |k: usize| {
        let (ordinal, file) = files[k];
        PartWriter::create(&tmp_of(k), ordinal, &file.source_name)
    };
    let mut open: Option<(usize, PartWriter)> = None;
    for msg in rx {
        match msg {
            WriteMsg::Rows(k, rows) => {
                let pushed = (|| -> Result<(), IngestError> {
                    if open.as_ref().is_none_or(|(j, _)| *j != k) {
                        open = Some((k, create(k)?));
                    }
                    if let Some((_, w)) = open.as_mut() {
                        for row in rows {
                            w.push(row)?;
                        }
                    }
                    Ok(())
                })();
                if let Err(e) = pushed {
                    drop(open.take());
                    let _ = std::fs::remove_file(tmp_of(k));
                    let _ = finished.send((k, Err(e)));
                    return;
                }
            }
            WriteMsg::End(k, read, mut counts) => {
                // The writer is open for this file unless it kept no rows (or failed to read).
                let writer = open.take().map(|(_, w)| w);
                let rows = match read {
                    Ok(skips) => {
                        counts.records_skipped +=
                            skips.malformed + skips.missing_field + skips.too_large;
                        writer
                            .map_or_else(|| create(k), Ok)
                            .and_then(PartWriter::finish)
                    }
                    Err(e) => Err(e),
                };
                let tmp = tmp_of(k);
                let (ordinal, file) = files[k];
                let rows = match rows {
                    Ok(rows) => rows,
                    Err(e) if s.read.on_error == OnError::Skip && e.is_skippable_file_error() => {
                        tracing::warn!("skipping {}: {e}", file.display);
                        let _ = std::fs::remove_file(&tmp);
                        counts = Counts {
                            files: 1,
                            files_skipped: 1,
                            ..Counts::default()
                        };
                        0
                    }
                    Err(e) => {
                        let _ = std::fs::remove_file(&tmp);
                        let _ = finished.send((k, Err(e)));
                        return;
                    }
                };
                let name = stem(ordinal, file);
                let part = (counts.files_skipped == 0).then(|| format!("{name}.parquet"));
                let marker = Marker {
                    file_key: file.key(),
                    input: file.display.clone(),
                    input_bytes: file.bytes,
                    input_mtime_ns: mtime_ns(&file.path),
                    config_hash: s.config_hash.clone(),
                    part,
                    rows,
                    counts,
                };
                let pending = PendingPart {
                    tmp,
                    dest: marker.part_path(&s.dir),
                    marker_path: s.dir.join(format!("{name}.done.json")),
                    marker: marker.clone(),
                };
                if finished.send((k, Ok((marker, pending)))).is_err() {
                    return;
                }
            }
        }
    }
    if let Some((k, w)) = open.take() {
        drop(w);
        let _ = std::fs::remove_file(tmp_of(k));
    }
}

pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), IngestError> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(|e| IngestError::write(path, e))?;
    f.write_all(bytes)
        .map_err(|e| IngestError::write(path, e))?;
    f.sync_all().map_err(|e| IngestError::write(path, e))
}
