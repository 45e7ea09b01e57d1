//! Exact deduplication, the weighted mix and the output statistics, planned with polars lazy
//! frames over the parts.
//!
//! Only the small columns are scanned (`part`, `row`, `source`, `id`, `n_bytes`, `split`, `mix_u`;
//! Parquet projection skips `text`), so memory grows with the number of documents, not their size.
//! The first occurrence of an id, in part order, wins. The mix: a training document of a source
//! with weight `w` is written `floor(w)` times plus once more when its `mix_u` draw (a hash of the
//! seed and the document) is below `w - floor(w)`; validation documents are written once.

use crate::error::IngestError;
use polars::prelude::*;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Which rows of which part to write, and how many times: `(row, copies)` sorted by row.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeepPlan {
    by_part: BTreeMap<u32, Vec<(u32, u32)>>,
}

impl KeepPlan {
    pub fn rows(&self, part: u32) -> &[(u32, u32)] {
        self.by_part.get(&part).map_or(&[], Vec::as_slice)
    }
    pub fn total_rows(&self) -> u64 {
        self.by_part
            .values()
            .flatten()
            .map(|&(_, c)| u64::from(c))
            .sum()
    }
}

/// What the plan does per source.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceOutcome {
    pub duplicates: u64,
    pub docs_out: u64,
    pub bytes_out: u64,
    pub docs_val: u64,
}

fn pe(what: &'static str) -> impl Fn(PolarsError) -> IngestError {
    move |e| IngestError::polars(what, e)
}

/// Plans dedup and mix over the given parts. `weights` maps source name → sampling weight.
pub fn plan(
    parts: &[PathBuf],
    dedup: bool,
    weights: &BTreeMap<String, f64>,
) -> Result<(KeepPlan, BTreeMap<String, SourceOutcome>), IngestError> {
    let mut outcome: BTreeMap<String, SourceOutcome> = BTreeMap::new();
    if parts.is_empty() {
        return Ok((KeepPlan::default(), outcome));
    }
    let paths: Vec<PlRefPath> = parts
        .iter()
        .map(|p| PlRefPath::new(p.to_string_lossy().to_string()))
        .collect();
    let args = ScanArgsParquet {
        glob: false,
        ..ScanArgsParquet::default()
    };
    let all = LazyFrame::scan_parquet_files(paths.into_iter().collect(), args)
        .map_err(pe("scanning the parts"))?
        .select([
            col("part"),
            col("row"),
            col("source"),
            col("id"),
            col("n_bytes"),
            col("split"),
            col("mix_u"),
        ]);
    let unique = if dedup {
        all.clone()
            .unique_stable(Some(cols(["id"])), UniqueKeepStrategy::First)
    } else {
        all.clone()
    };

    // Copies per row from the source weights (validation rows exactly once).
    let (mut base, mut frac) = (lit(1i64), lit(0.0f64));
    for (name, &w) in weights {
        let whole = w.floor();
        let is = col("source").eq(lit(name.as_str()));
        base = when(is.clone()).then(lit(whole as i64)).otherwise(base);
        frac = when(is).then(lit(w - whole)).otherwise(frac);
    }
    let copies = when(col("split").eq(lit("val")))
        .then(lit(1i64))
        .otherwise(base + col("mix_u").lt(frac).cast(DataType::Int64))
        .alias("copies");
    let kept = unique
        .clone()
        .with_column(copies)
        .filter(col("copies").gt(lit(0i64)))
        .sort(["part", "row"], SortMultipleOptions::default());

    // The plan itself.
    let df = kept
        .clone()
        .select([col("part"), col("row"), col("copies")])
        .collect()
        .map_err(pe("planning dedup and mix"))?;
    let mut plan = KeepPlan::default();
    let (p, r, c) = (
        df.column("part")
            .and_then(|c| c.u32())
            .map_err(pe("plan column part"))?,
        df.column("row")
            .and_then(|c| c.u32())
            .map_err(pe("plan column row"))?,
        df.column("copies")
            .and_then(|c| c.i64())
            .map_err(pe("plan column copies"))?,
    );
    for i in 0..df.height() {
        if let (Some(p), Some(r), Some(c)) = (p.get(i), r.get(i), c.get(i)) {
            plan.by_part.entry(p).or_default().push((r, c as u32));
        }
    }

    // Statistics: duplicates and output per source.
    let count_by_source =
        |lf: LazyFrame, what: &'static str| -> Result<BTreeMap<String, i64>, IngestError> {
            let df = lf
                .group_by([col("source")])
                .agg([len().cast(DataType::Int64).alias("n")])
                .collect()
                .map_err(pe(what))?;
            let s = df
                .column("source")
                .and_then(|c| c.str())
                .map_err(pe(what))?;
            let n = df.column("n").and_then(|c| c.i64()).map_err(pe(what))?;
            Ok((0..df.height())
                .filter_map(|i| Some((s.get(i)?.to_string(), n.get(i)?)))
                .collect())
        };
    let before = count_by_source(all, "counting rows per source")?;
    let after = count_by_source(unique, "counting unique rows per source")?;
    for (src, n) in &before {
        outcome.entry(src.clone()).or_default().duplicates =
            (n - after.get(src).copied().unwrap_or(0)).max(0) as u64;
    }
    let out = kept
        .with_column((col("n_bytes") * col("copies")).alias("bytes_out"))
        .with_column(
            when(col("split").eq(lit("val")))
                .then(lit(1i64))
                .otherwise(lit(0i64))
                .alias("is_val"),
        )
        .group_by([col("source")])
        .agg([
            col("copies").sum().cast(DataType::Int64).alias("docs"),
            col("bytes_out").sum().cast(DataType::Int64).alias("bytes"),
            col("is_val").sum().cast(DataType::Int64).alias("val"),
        ])
        .collect()
        .map_err(pe("output statistics"))?;
    let s = out
        .column("source")
        .and_then(|c| c.str())
        .map_err(pe("stats source"))?;
    let d = out
        .column("docs")
        .and_then(|c| c.i64())
        .map_err(pe("stats docs"))?;
    let b = out
        .column("bytes")
        .and_then(|c| c.i64())
        .map_err(pe("stats bytes"))?;
    let v = out
        .column("val")
        .and_then(|c| c.i64())
        .map_err(pe("stats val"))?;
    for i in 0..out.height() {
        if let Some(name) = s.get(i) {
            let o = outcome.entry(name.to_string()).or_default();
            o.docs_out = d.get(i).unwrap_or(0) as u64;
            o.bytes_out = b.get(i).unwrap_or(0) as u64;
            o.docs_val = v.get(i).unwrap_or(0) as u64;
        }
    }
    Ok((plan, outcome))
}
