//! The offline `search` backend: a tantivy full-text index over passages of the corpus.
//!
//! The `search_index` stage cuts the ingest stage's documents into [`Passage`]s
//! ([`passages_of`]) and writes them with [`build_index`]; [`OfflineIndex`] opens that directory and
//! answers queries with BM25 over the title and text (English stemming, OR of the query's terms,
//! title matches weighted twice). Works with no network, on the user's own corpus.
//!
//! The index is built to be the same bytes for the same passages, so the stage's artifact hash is
//! stable across runs (the pipeline's caching and bit-exact resume rely on that): one indexing
//! thread, no background merges, everything merged into one segment, and the segment's random id
//! replaced by one derived from its position ([`make_deterministic`]).

use super::SearchHit;
use crate::tool::ToolError;
use std::path::{Path, PathBuf};
use tantivy::collector::TopDocs;
use tantivy::indexer::NoMergePolicy;
use tantivy::query::QueryParser;
use tantivy::schema::{
    Field, IndexRecordOption, STORED, Schema, TextFieldIndexing, TextOptions, Value,
};
use tantivy::store::Compressor;
use tantivy::{Index, IndexReader, IndexSettings, IndexWriter, ReloadPolicy, TantivyDocument};

/// Characters a passage holds at most (a few sentences: what a result's snippet shows).
pub const PASSAGE_CHARS: usize = 480;

/// One searchable unit: a piece of a document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Passage {
    pub title: String,
    /// Where it comes from: `corpus://<source>/<document id>#<passage number>`.
    pub url: String,
    pub text: String,
}

#[derive(Debug, thiserror::Error)]
pub enum OfflineIndexError {
    #[error("search index {}: {source}", path.display())]
    Tantivy {
        path: PathBuf,
        source: tantivy::TantivyError,
    },
    #[error("search index {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("search index {}: {message}", path.display())]
    Format { path: PathBuf, message: String },
}

/// Cuts a document into passages of at most `max_chars` characters: whole paragraphs packed
/// together while they fit, a longer paragraph cut at word boundaries. Whitespace inside a
/// paragraph is collapsed. The title is the document's first line (at most 80 characters).
pub fn passages_of(source: &str, id: &str, text: &str, max_chars: usize) -> Vec<Passage> {
    let max_chars = max_chars.max(40);
    let first_line = text.lines().map(str::trim).find(|l| !l.is_empty());
    let Some(first_line) = first_line else {
        return Vec::new();
    };
    let title = cut_at_word(first_line, 80);
    let mut pieces: Vec<String> = Vec::new();
    for para in text.split("\n\n") {
        let words: Vec<&str> = para.split_whitespace().collect();
        if words.is_empty() {
            continue;
        }
        let mut cur = String::new();
        for w in words {
            let w = cut_at_word(w, max_chars); // a "word" longer than a passage (a URL, a table rule)
            if !cur.is_empty() && cur.chars().count() + 1 + w.chars().count() > max_chars {
                pieces.push(std::mem::take(&mut cur));
            }
            if !cur.is_empty() {
                cur.push(' ');
            }
            cur.push_str(&w);
        }
        pieces.push(cur);
    }
    // Pack whole paragraphs while they fit.
    let mut out: Vec<String> = Vec::new();
    for p in pieces {
        match out.last_mut() {
            Some(last) if last.chars().count() + 1 + p.chars().count() <= max_chars => {
                last.push('\n');
                last.push_str(&p);
            }
            _ => out.push(p),
        }
    }
    out.into_iter()
        .enumerate()
        .map(|(i, text)| Passage {
            title: title.clone(),
            url: format!("corpus://{source}/{id}#{}", i + 1),
            text,
        })
        .collect()
}

/// `s` cut to at most `max` characters, at a word boundary where there is one.
fn cut_at_word(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let cut: String = s.chars().take(max).collect();
    match cut.rfind(' ') {
        Some(i) if i > 0 => cut[..i].to_string(),
        _ => cut,
    }
}

struct Fields {
    title: Field,
    text: Field,
    url: Field,
}

fn schema() -> (Schema, Fields) {
    let text_options = TextOptions::default()
        .set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer("en_stem")
                .set_index_option(IndexRecordOption::WithFreqsAndPositions),
        )
        .set_stored();
    let mut b = Schema::builder();
    let title = b.add_text_field("title", text_options.clone());
    let text = b.add_text_field("text", text_options);
    let url = b.add_text_field("url", STORED);
    (b.build(), Fields { title, text, url })
}

/// What [`build_index`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexStats {
    pub passages: u64,
}

/// Writes an index of `passages` into the empty (or absent) directory `dir`, the same bytes for
/// the same passages in the same order. `cancelled` is polled between passages: `Ok(None)` when it
/// said stop.
pub fn build_index(
    dir: &Path,
    passages: impl IntoIterator<Item = Passage>,
    cancelled: &dyn Fn() -> bool,
) -> Result<Option<IndexStats>, OfflineIndexError> {
    let terr = |source| OfflineIndexError::Tantivy {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(|source| OfflineIndexError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let (schema, f) = schema();
    let settings = IndexSettings {
        docstore_compression: Compressor::None,
        docstore_compress_dedicated_thread: false,
        ..IndexSettings::default()
    };
    let index = Index::builder()
        .schema(schema)
        .settings(settings)
        .create_in_dir(dir)
        .map_err(terr)?;
    // One thread: documents reach segments in input order.
    let mut writer: IndexWriter = index.writer_with_num_threads(1, 64 << 20).map_err(terr)?;
    writer.set_merge_policy(Box::new(NoMergePolicy));
    let mut n = 0u64;
    for p in passages {
        if n.is_multiple_of(1024) && cancelled() {
            return Ok(None);
        }
        let mut doc = TantivyDocument::default();
        doc.add_text(f.title, &p.title);
        doc.add_text(f.text, &p.text);
        doc.add_text(f.url, &p.url);
        writer.add_document(doc).map_err(terr)?;
        n += 1;
    }
    writer.commit().map_err(terr)?;
    let segments = index.searchable_segment_ids().map_err(terr)?;
    if segments.len() > 1 {
        writer.merge(&segments).wait().map_err(terr)?;
    }
    writer.garbage_collect_files().wait().map_err(terr)?;
    writer.wait_merging_threads().map_err(terr)?;
    make_deterministic(dir)?;
    Ok(Some(IndexStats { passages: n }))
}

/// Replaces the random segment ids tantivy gives segments (file names, `meta.json`,
/// `.managed.json`) with ids numbered in segment order, so that the same passages give the same
/// bytes.
fn make_deterministic(dir: &Path) -> Result<(), OfflineIndexError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| OfflineIndexError::Io { path, source }
    };
    let meta_path = dir.join("meta.json");
    let mut meta = std::fs::read_to_string(&meta_path).map_err(io(&meta_path))?;
    let parsed: serde_json::Value =
        serde_json::from_str(&meta).map_err(|e| OfflineIndexError::Format {
            path: meta_path.clone(),
            message: format!("meta.json is not JSON: {e}"),
        })?;
    let ids: Vec<String> = parsed["segments"]
        .as_array()
        .map(|s| {
            s.iter()
                .filter_map(|seg| seg["segment_id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let managed_path = dir.join(".managed.json");
    let mut managed = std::fs::read_to_string(&managed_path).map_err(io(&managed_path))?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    for (i, old) in ids.iter().enumerate() {
        let old_simple = old.replace('-', "");
        let new_simple = format!("{:032x}", i as u128 + 1);
        let new_hyphenated = format!(
            "{}-{}-{}-{}-{}",
            &new_simple[..8],
            &new_simple[8..12],
            &new_simple[12..16],
            &new_simple[16..20],
            &new_simple[20..]
        );
        meta = meta.replace(old.as_str(), &new_hyphenated);
        meta = meta.replace(&old_simple, &new_simple);
        managed = managed.replace(&old_simple, &new_simple);
        for path in &files {
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if let Some(rest) = name.strip_prefix(&old_simple) {
                let to = dir.join(format!("{new_simple}{rest}"));
                std::fs::rename(path, &to).map_err(io(path))?;
            }
        }
    }
    // `.managed.json` lists files in hash-set order: sort it.
    let mut listed: Vec<String> =
        serde_json::from_str(&managed).map_err(|e| OfflineIndexError::Format {
            path: managed_path.clone(),
            message: format!(".managed.json is not a JSON list: {e}"),
        })?;
    listed.sort();
    managed = serde_json::to_string(&listed).unwrap_or_default();
    std::fs::write(&meta_path, meta).map_err(io(&meta_path))?;
    std::fs::write(&managed_path, managed).map_err(io(&managed_path))?;
    Ok(())
}

/// An index [`build_index`] wrote, opened for search.
pub struct OfflineIndex {
    dir: PathBuf,
    index: Index,
    reader: IndexReader,
    fields: Fields,
}

impl OfflineIndex {
    pub fn open(dir: &Path) -> Result<OfflineIndex, OfflineIndexError> {
        let terr = |source| OfflineIndexError::Tantivy {
            path: dir.to_path_buf(),
            source,
        };
        if !dir.join("meta.json").is_file() {
            return Err(OfflineIndexError::Format {
                path: dir.to_path_buf(),
                message:
                    "no meta.json here: not a search index (the `search_index` stage builds one)"
                        .into(),
            });
        }
        let index = Index::open_in_dir(dir).map_err(terr)?;
        let schema = index.schema();
        let field =
            |name: &str| {
                schema.get_field(name).map_err(|_| OfflineIndexError::Format {
                path: dir.to_path_buf(),
                message: format!(
                    "the index has no `{name}` field: not one the `search_index` stage built"
                ),
            })
            };
        let fields = Fields {
            title: field("title")?,
            text: field("text")?,
            url: field("url")?,
        };
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(terr)?;
        Ok(OfflineIndex {
            dir: dir.to_path_buf(),
            index,
            reader,
            fields,
        })
    }

    /// Passages in the index.
    pub fn len(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Up to `n` passages, (title, text), spread evenly over the index from an offset `seed`
    /// picks: the same passages for the same index and seed.
    pub fn sample(&self, n: usize, seed: u64) -> Result<Vec<(String, String)>, ToolError> {
        let searcher = self.reader.searcher();
        let addresses: Vec<tantivy::DocAddress> = searcher
            .segment_readers()
            .iter()
            .enumerate()
            .flat_map(|(ord, r)| {
                (0..r.max_doc()).map(move |d| tantivy::DocAddress::new(ord as u32, d))
            })
            .collect();
        if addresses.is_empty() || n == 0 {
            return Ok(Vec::new());
        }
        let step = (addresses.len() / n).max(1);
        let offset = (seed % step as u64) as usize;
        let mut out = Vec::new();
        for addr in addresses.iter().skip(offset).step_by(step).take(n) {
            let hit = self.stored(&searcher, *addr)?;
            out.push((hit.title, hit.snippet));
        }
        Ok(out)
    }

    /// The best `max_results` passages for `query` (BM25; any of its words; syntax the query
    /// language cannot parse is read as plain words).
    pub fn query(&self, query: &str, max_results: usize) -> Result<Vec<SearchHit>, ToolError> {
        let mut parser =
            QueryParser::for_index(&self.index, vec![self.fields.title, self.fields.text]);
        parser.set_field_boost(self.fields.title, 2.0);
        let (q, _unparsed) = parser.parse_query_lenient(query);
        let searcher = self.reader.searcher();
        let top = searcher
            .search(
                q.as_ref(),
                &TopDocs::with_limit(max_results.max(1)).order_by_score(),
            )
            .map_err(|e| ToolError::Failed(format!("the offline index failed: {e}")))?;
        let mut hits = Vec::with_capacity(top.len());
        for (_score, addr) in top {
            hits.push(self.stored(&searcher, addr)?);
        }
        Ok(hits)
    }

    /// The stored passage at `addr`: its title, URL and whole text (as the snippet).
    fn stored(
        &self,
        searcher: &tantivy::Searcher,
        addr: tantivy::DocAddress,
    ) -> Result<SearchHit, ToolError> {
        let doc: TantivyDocument = searcher.doc(addr).map_err(|e| {
            ToolError::Failed(format!(
                "the offline index {} is damaged: {e}",
                self.dir.display()
            ))
        })?;
        let get = |f: Field| {
            doc.get_first(f)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string()
        };
        Ok(SearchHit {
            title: get(self.fields.title),
            url: get(self.fields.url),
            snippet: get(self.fields.text),
        })
    }
}

impl super::SearchBackend for OfflineIndex {
    fn name(&self) -> &'static str {
        "offline"
    }

    fn search(&self, query: &str, max_results: usize) -> Result<Vec<SearchHit>, ToolError> {
        self.query(query, max_results)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus() -> Vec<Passage> {
        let docs = [
            (
                "d1",
                "The Tempest\n\nProspero, the rightful Duke of Milan, lives on an island with his daughter Miranda.\n\nAriel is a spirit who serves him.",
            ),
            (
                "d2",
                "Volcanoes\n\nA volcano is a rupture in the crust of a planet where lava erupts.\n\nMount Etna is one of the most active volcanoes in Europe.",
            ),
            (
                "d3",
                "Gardening\n\nTomatoes grow best in warm weather with plenty of sunlight and water.",
            ),
        ];
        docs.iter()
            .flat_map(|(id, text)| passages_of("test", id, text, PASSAGE_CHARS))
            .collect()
    }

    #[test]
    fn passages_pack_paragraphs_and_cut_long_ones_at_words() {
        let text = "Title line\n\nshort one.\n\nshort two.\n\n".to_string() + &"word ".repeat(60);
        let ps = passages_of("src", "doc-7", &text, 100);
        assert_eq!(ps[0].title, "Title line");
        assert_eq!(ps[0].text, "Title line\nshort one.\nshort two.");
        assert_eq!(ps[0].url, "corpus://src/doc-7#1");
        assert!(ps.len() >= 4, "{ps:?}");
        for p in &ps {
            assert!(p.text.chars().count() <= 100, "{}", p.text.len());
            assert!(!p.text.ends_with(' ') && !p.text.starts_with(' '));
        }
        let words: usize = ps[1..].iter().map(|p| p.text.split(' ').count()).sum();
        assert_eq!(words, 60, "no word lost or split");
        assert!(passages_of("s", "e", "  \n\n ", 100).is_empty());
    }

    #[test]
    fn finds_the_passage_by_stemmed_words_and_ranks_it_first() {
        let dir = tempfile::tempdir().unwrap();
        let stats = build_index(dir.path(), corpus(), &|| false)
            .unwrap()
            .unwrap();
        assert_eq!(stats.passages, 3, "each short document is one passage");
        let index = OfflineIndex::open(dir.path()).unwrap();
        assert_eq!(index.len(), 3);
        // "erupting volcano" matches "erupts" and "volcanoes" only through stemming.
        let hits = index.query("erupting volcano", 5).unwrap();
        assert_eq!(hits[0].url, "corpus://test/d2#1", "{hits:?}");
        assert!(hits[0].snippet.contains("Mount Etna"));
        assert_eq!(hits[0].title, "Volcanoes");
        assert_eq!(
            index.query("Who serves Prospero?", 1).unwrap()[0].title,
            "The Tempest"
        );
        // Query syntax a model might write by accident is read as words, not an error.
        let hits = index.query("tomatoes AND (sunlight", 5).unwrap();
        assert_eq!(hits[0].title, "Gardening");
        assert!(index.query("zzzz qqqq", 5).unwrap().is_empty());
        assert_eq!(
            index.query("the", 2).unwrap().len(),
            2,
            "max_results is kept"
        );
    }

    #[test]
    fn the_same_passages_give_the_same_bytes() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let many: Vec<Passage> = (0..3000)
            .flat_map(|i| {
                passages_of(
                    "s",
                    &i.to_string(),
                    &format!("Doc {i}\n\nsome words {i} {} more words", i * 7),
                    200,
                )
            })
            .chain(corpus())
            .collect();
        for d in [&a, &b] {
            build_index(d.path(), many.clone(), &|| false)
                .unwrap()
                .unwrap();
        }
        let listing = |d: &Path| {
            let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(d)
                .unwrap()
                .map(|e| {
                    let p = e.unwrap().path();
                    (
                        p.file_name().unwrap().to_string_lossy().into_owned(),
                        std::fs::read(&p).unwrap(),
                    )
                })
                .collect();
            v.sort();
            v
        };
        let (la, lb) = (listing(a.path()), listing(b.path()));
        let names: Vec<&String> = la.iter().map(|(n, _)| n).collect();
        assert!(la == lb, "two builds differ; files: {names:?}");
        // tantivy keeps its (empty) lock files; readers lock them again without writing.
        assert!(names.contains(&&"meta.json".to_string()), "{names:?}");
        let index = OfflineIndex::open(a.path()).unwrap();
        assert_eq!(index.len(), 3003);
        assert_eq!(index.query("Prospero", 1).unwrap()[0].title, "The Tempest");
    }

    #[test]
    fn a_directory_that_is_not_an_index_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = OfflineIndex::open(dir.path()).err().unwrap().to_string();
        assert!(e.contains("not a search index"), "{e}");
    }
}
