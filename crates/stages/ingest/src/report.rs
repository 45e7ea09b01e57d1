//! Counts: per file (kept in each part's completion marker), per source, in total; the end table.

use crate::filters::Reason;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Document counts of one file, one source or the whole ingest. Additive.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub files: u64,
    /// Files skipped whole under `on_error = "skip"` (unreadable, corrupt, bad Parquet).
    pub files_skipped: u64,
    /// Uncompressed bytes of the documents read.
    pub bytes_in: u64,
    pub docs_in: u64,
    /// Records skipped while reading (malformed JSON, missing field, too large).
    pub records_skipped: u64,
    pub invalid_utf8_repaired: u64,
    pub invalid_utf8_dropped: u64,
    /// Nothing but whitespace after cleaning.
    pub empty: u64,
    /// Dropped by a quality filter, by reason (`too_few_words`, …).
    pub filtered: BTreeMap<String, u64>,
    /// Survived cleaning and filters (before dedup).
    pub docs_kept: u64,
    pub bytes_kept: u64,
    /// Exact duplicates of an earlier document (any source).
    pub duplicates: u64,
    /// Rows written (after dedup and the weighted mix; upsampled documents count once per copy).
    pub docs_out: u64,
    pub bytes_out: u64,
    pub docs_val: u64,
}

impl Counts {
    pub fn add(&mut self, o: &Counts) {
        self.files += o.files;
        self.files_skipped += o.files_skipped;
        self.bytes_in += o.bytes_in;
        self.docs_in += o.docs_in;
        self.records_skipped += o.records_skipped;
        self.invalid_utf8_repaired += o.invalid_utf8_repaired;
        self.invalid_utf8_dropped += o.invalid_utf8_dropped;
        self.empty += o.empty;
        for (k, v) in &o.filtered {
            *self.filtered.entry(k.clone()).or_default() += v;
        }
        self.docs_kept += o.docs_kept;
        self.bytes_kept += o.bytes_kept;
        self.duplicates += o.duplicates;
        self.docs_out += o.docs_out;
        self.bytes_out += o.bytes_out;
        self.docs_val += o.docs_val;
    }

    pub fn filtered_total(&self) -> u64 {
        self.filtered.values().sum()
    }

    /// `(metric key, value)` pairs, keys prefixed, e.g. `ingest/prose/docs_in`.
    pub fn metrics(&self, prefix: &str) -> Vec<(String, f64)> {
        let mut v = vec![
            (format!("{prefix}/files"), self.files as f64),
            (format!("{prefix}/files_skipped"), self.files_skipped as f64),
            (format!("{prefix}/bytes_in"), self.bytes_in as f64),
            (format!("{prefix}/docs_in"), self.docs_in as f64),
            (
                format!("{prefix}/records_skipped"),
                self.records_skipped as f64,
            ),
            (
                format!("{prefix}/invalid_utf8_repaired"),
                self.invalid_utf8_repaired as f64,
            ),
            (
                format!("{prefix}/invalid_utf8_dropped"),
                self.invalid_utf8_dropped as f64,
            ),
            (format!("{prefix}/empty"), self.empty as f64),
            (format!("{prefix}/docs_kept"), self.docs_kept as f64),
            (format!("{prefix}/duplicates"), self.duplicates as f64),
            (format!("{prefix}/docs_out"), self.docs_out as f64),
            (format!("{prefix}/bytes_out"), self.bytes_out as f64),
            (format!("{prefix}/docs_val"), self.docs_val as f64),
        ];
        for r in Reason::ALL {
            let n = self.filtered.get(r.as_str()).copied().unwrap_or(0);
            v.push((format!("{prefix}/filtered/{}", r.as_str()), n as f64));
        }
        v
    }
}

/// The end-of-ingest table: one row per source plus the total, one column per count, and a second
/// table of drops per filter reason.
pub fn table(per_source: &BTreeMap<String, Counts>, total: &Counts, seconds: f64) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<16} {:>6} {:>9} {:>9} {:>7} {:>8} {:>8} {:>9} {:>8} {:>9} {:>8} {:>6}",
        "source",
        "files",
        "MB in",
        "docs in",
        "skipped",
        "bad utf8",
        "filtered",
        "kept",
        "dups",
        "docs out",
        "MB out",
        "val"
    );
    let mut row = |name: &str, c: &Counts| {
        let _ = writeln!(
            s,
            "{:<16} {:>6} {:>9.2} {:>9} {:>7} {:>8} {:>8} {:>9} {:>8} {:>9} {:>8.2} {:>6}",
            name,
            c.files,
            c.bytes_in as f64 / 1e6,
            c.docs_in,
            c.records_skipped + c.files_skipped,
            c.invalid_utf8_repaired + c.invalid_utf8_dropped,
            c.filtered_total() + c.empty,
            c.docs_kept,
            c.duplicates,
            c.docs_out,
            c.bytes_out as f64 / 1e6,
            c.docs_val,
        );
    };
    for (name, c) in per_source {
        row(name, c);
    }
    row("TOTAL", total);
    let _ = writeln!(s, "filter drops (docs):");
    let _ = writeln!(s, "  {:<18} {:>9}", "empty", total.empty);
    for r in Reason::ALL {
        let _ = writeln!(
            s,
            "  {:<18} {:>9}",
            r.as_str(),
            total.filtered.get(r.as_str()).copied().unwrap_or(0)
        );
    }
    let mbps = if seconds > 0.0 {
        total.bytes_in as f64 / 1e6 / seconds
    } else {
        0.0
    };
    let _ = writeln!(
        s,
        "{:.2} MB in {:.2} s = {:.1} MB/s; {} duplicates removed; {} invalid-UTF-8 repaired, {} dropped",
        total.bytes_in as f64 / 1e6,
        seconds,
        mbps,
        total.duplicates,
        total.invalid_utf8_repaired,
        total.invalid_utf8_dropped
    );
    s
}
