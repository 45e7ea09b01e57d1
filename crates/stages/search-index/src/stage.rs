//! The stage: load the documents, cut passages, index, measure, record.

use std::time::Instant;
use tardbot_core::PipelineConfig;
use tardbot_stage::{Resources, Stage, StageContext, StageError, StageOutput};
use tardbot_tokenize::docs::DocBatches;
use tardbot_tokenize::stage::parquet_inputs;
use tardbot_tools::search::offline::{
    OfflineIndex, PASSAGE_CHARS, Passage, build_index, passages_of,
};

/// The artifact kind of the index directory.
pub const KIND_SEARCH_INDEX: &str = "search-index";
/// Its name in the stage's output directory.
pub const INDEX_DIR: &str = "search-index";
/// Passages the recall check looks for (spread evenly over the index).
const RECALL_PROBES: usize = 200;
/// Words of a passage that make up its probe query.
const PROBE_WORDS: usize = 8;

pub struct SearchIndexStage;

impl Stage for SearchIndexStage {
    fn name(&self) -> &'static str {
        "search_index"
    }
    fn inputs(&self) -> &'static [&'static str] {
        &["ingest"]
    }
    fn enabled(&self, _config: &PipelineConfig) -> bool {
        true
    }
    fn config_slice(&self, _config: &PipelineConfig) -> serde_json::Value {
        // Only the documents (the input hashes) and the code decide the index.
        serde_json::json!({ "passage_chars": PASSAGE_CHARS })
    }
    fn resources(&self, _config: &PipelineConfig) -> Resources {
        Resources {
            threads: 1,
            exclusive: false,
        }
    }

    fn run(&self, ctx: &StageContext) -> Result<StageOutput, StageError> {
        let started = Instant::now();
        let shards = parquet_inputs(ctx)?;

        // 1. Every document of every shard, in shard order, cut into passages.
        let mut passages: Vec<Passage> = Vec::new();
        let mut docs = 0u64;
        for shard in &shards {
            for batch in DocBatches::open(shard).map_err(StageError::failed)? {
                for doc in batch.map_err(StageError::failed)? {
                    docs += 1;
                    let short_id = &doc.id[..doc.id.len().min(16)];
                    passages.extend(passages_of(&doc.source, short_id, &doc.text, PASSAGE_CHARS));
                }
            }
            if ctx.cancelled() {
                return Err(StageError::Interrupted(None));
            }
        }

        // 2. The index.
        let dir = ctx.out_dir.join(INDEX_DIR);
        let probes: Vec<Passage> = probe_passages(&passages);
        let stats = build_index(&dir, passages, &|| ctx.cancelled()).map_err(StageError::failed)?;
        let Some(stats) = stats else {
            return Err(StageError::Interrupted(None));
        };

        // 3. Known-item recall: each probe's own words must find it among the top results.
        let index = OfflineIndex::open(&dir).map_err(StageError::failed)?;
        let (mut at1, mut at5) = (0usize, 0usize);
        for p in &probes {
            let hits = index
                .query(&probe_query(&p.text), 5)
                .map_err(StageError::failed)?;
            at1 += usize::from(hits.first().is_some_and(|h| h.url == p.url));
            at5 += usize::from(hits.iter().any(|h| h.url == p.url));
        }
        let n = probes.len().max(1) as f64;

        // 4. Record.
        let seconds = started.elapsed().as_secs_f64();
        ctx.log_metrics(
            0,
            &[
                ("search_index/docs", docs as f64),
                ("search_index/passages", stats.passages as f64),
                ("search_index/seconds", seconds),
            ],
        );
        if !probes.is_empty() {
            for (metric, hits) in [("recall_at_1", at1), ("recall_at_5", at5)] {
                ctx.record_eval(None, 0, "known_item", metric, hits as f64 / n, probes.len())?;
            }
        }
        ctx.event(
            "search_index_built",
            serde_json::json!({
                "docs": docs, "passages": stats.passages, "seconds": seconds,
                "known_item": {"probes": probes.len(), "recall_at_1": at1, "recall_at_5": at5},
            }),
        )?;
        tracing::info!(
            docs,
            passages = stats.passages,
            seconds,
            recall_at_5 = at5 as f64 / n,
            "search index built"
        );
        Ok(StageOutput::default().with(KIND_SEARCH_INDEX, INDEX_DIR))
    }
}

/// Up to [`RECALL_PROBES`] passages spread evenly over all of them, each with enough words to
/// make a query of.
fn probe_passages(passages: &[Passage]) -> Vec<Passage> {
    let step = (passages.len() / RECALL_PROBES).max(1);
    passages
        .iter()
        .step_by(step)
        .filter(|p| p.text.split_whitespace().count() >= 2 * PROBE_WORDS)
        .take(RECALL_PROBES)
        .cloned()
        .collect()
}

/// [`PROBE_WORDS`] consecutive words from the middle of a passage, the way someone who half
/// remembers a line would ask for it.
fn probe_query(text: &str) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    let start = (words.len().saturating_sub(PROBE_WORDS)) / 2;
    words[start..(start + PROBE_WORDS).min(words.len())].join(" ")
}
