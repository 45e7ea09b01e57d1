//! `search` (`{"query": "…", "max_results"?: n}`): search through a backend.
//!
//! [`SearchBackend`] is the contract, with two backends:
//! - [`offline::OfflineIndex`] (the default): a tantivy full-text index over passages of the
//!   ingest stage's documents, built by the `search_index` stage: no network, the user's own
//!   corpus.
//! - [`duckduckgo::DuckDuckGo`]: DuckDuckGo's HTML endpoint (its base URL is configurable,
//!   `[tools.search] base_url`, so tests serve recorded pages on 127.0.0.1).
//!
//! The result is `{"results": [{"title", "url", "snippet"}], "backend": "offline"|"duckduckgo"}`;
//! a backend that cannot answer (rate limited, a page it does not understand, a timeout, a damaged
//! index) is an error the model sees, never an empty list.

pub mod duckduckgo;
pub mod offline;

use crate::tool::{Tool, ToolError};
use serde::Serialize;
use serde_json::{Map, Value, json};
use std::path::PathBuf;
use std::time::Duration;
use tardbot_toolcall::ToolSpec;

/// DuckDuckGo's HTML endpoint.
pub const DEFAULT_BASE_URL: &str = "https://html.duckduckgo.com/html/";

/// Which backend answers (`[tools.search] backend`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendKind {
    /// The `search_index` stage's index of the corpus.
    #[default]
    Offline,
    DuckDuckGo,
}

/// How `search` is set up (`[tools.search]`; see [`crate::settings::SearchSettings`]).
#[derive(Clone, Debug, PartialEq)]
pub struct SearchConfig {
    pub backend: BackendKind,
    /// The offline index's directory: `[tools.search] index`, or else the one the `search_index`
    /// stage built in the run that `chat`/`generate`/`serve`/`tool --run` use.
    pub index: Option<PathBuf>,
    /// Where DuckDuckGo queries are POSTed ([`DEFAULT_BASE_URL`]).
    pub base_url: String,
    /// Wall clock per DuckDuckGo request (connect, answer and body).
    pub timeout: Duration,
    /// The most results a call returns (and the default when the call does not say).
    pub max_results: usize,
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig {
            backend: BackendKind::Offline,
            index: None,
            base_url: DEFAULT_BASE_URL.to_string(),
            timeout: Duration::from_secs(10),
            max_results: 5,
        }
    }
}

impl SearchConfig {
    /// DuckDuckGo at `base_url`.
    pub fn duckduckgo(base_url: &str, timeout: Duration, max_results: usize) -> SearchConfig {
        SearchConfig {
            backend: BackendKind::DuckDuckGo,
            base_url: base_url.to_string(),
            timeout,
            max_results,
            ..SearchConfig::default()
        }
    }

    /// The offline index in `dir`.
    pub fn offline(dir: impl Into<PathBuf>, max_results: usize) -> SearchConfig {
        SearchConfig {
            backend: BackendKind::Offline,
            index: Some(dir.into()),
            max_results,
            ..SearchConfig::default()
        }
    }
}

/// One search result.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SearchHit {
    pub title: String,
    pub url: String,
    pub snippet: String,
}

/// Where `search` looks things up.
pub trait SearchBackend: Send + Sync {
    fn name(&self) -> &'static str;
    /// The wall clock a query is bounded to, where the backend bounds it.
    fn time_limit(&self) -> Option<Duration> {
        None
    }
    /// At most `max_results` hits, best first; `Ok(vec![])` only when the backend said it found
    /// nothing.
    fn search(&self, query: &str, max_results: usize) -> Result<Vec<SearchHit>, ToolError>;
}

/// The `search` tool over a backend.
pub struct SearchTool {
    backend: Box<dyn SearchBackend>,
    max_results: usize,
}

/// Why an offline `search` has no index, and the ways to give it one.
pub const NO_INDEX: &str = "the offline search backend has no index: use a run whose \
`search_index` stage finished (`chat`/`generate`/`serve RUN`, `tool search --run RUN`), set \
[tools.search] index = \"DIR\", or set [tools.search] backend = \"duckduckgo\"";

impl SearchTool {
    /// `search` through the backend `cfg` chooses; an offline index that is not set or does not
    /// open is an error saying so.
    pub fn new(cfg: &SearchConfig) -> Result<SearchTool, String> {
        let backend: Box<dyn SearchBackend> = match cfg.backend {
            BackendKind::DuckDuckGo => Box::new(duckduckgo::DuckDuckGo {
                base_url: cfg.base_url.clone(),
                timeout: cfg.timeout,
            }),
            BackendKind::Offline => {
                let dir = cfg.index.as_ref().ok_or_else(|| NO_INDEX.to_string())?;
                Box::new(offline::OfflineIndex::open(dir).map_err(|e| e.to_string())?)
            }
        };
        Ok(SearchTool::with_backend(backend, cfg.max_results))
    }

    /// `search` through any backend, at most `max_results` (at least 1) results a call.
    pub fn with_backend(backend: Box<dyn SearchBackend>, max_results: usize) -> SearchTool {
        SearchTool {
            backend,
            max_results: max_results.max(1),
        }
    }
}

impl Tool for SearchTool {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "search".into(),
            description: format!(
                "Search {}; returns the title, URL and snippet of each of the top results \
                 (at most {}).",
                match self.backend.name() {
                    "offline" => "the offline library of documents",
                    _ => "the web",
                },
                self.max_results
            ),
            parameters: json!({
                "type": "dict",
                "properties": {
                    "query": {"type": "string", "description": "What to search for."},
                    "max_results": {
                        "type": "integer",
                        "description": format!(
                            "How many results to return, 1 to {} (default {}).",
                            self.max_results, self.max_results
                        )
                    }
                },
                "required": ["query"]
            }),
        }
    }

    fn time_limit(&self) -> Option<Duration> {
        self.backend.time_limit()
    }

    fn call(&self, arguments: &Map<String, Value>) -> Result<Value, ToolError> {
        let query = arguments
            .get("query")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .trim();
        if query.is_empty() {
            return Err(ToolError::Failed("the query is empty".into()));
        }
        let n = match arguments.get("max_results") {
            None | Some(Value::Null) => self.max_results,
            Some(v) => match v.as_i64() {
                Some(n) if n >= 1 => (n as usize).min(self.max_results),
                _ => {
                    return Err(ToolError::Failed(format!(
                        "max_results must be an integer from 1 to {}, got {v}",
                        self.max_results
                    )));
                }
            },
        };
        let hits = self.backend.search(query, n)?;
        Ok(json!({"results": hits, "backend": self.backend.name()}))
    }
}
