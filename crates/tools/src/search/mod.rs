//! `search` (`{"query": "…", "max_results"?: n}`): web search through a backend.
//!
//! [`SearchBackend`] is the contract; [`duckduckgo::DuckDuckGo`] queries DuckDuckGo's HTML endpoint
//! (its base URL is configurable, `[tools.search] base_url`, so tests serve recorded pages on
//! 127.0.0.1). The result is `{"results": [{"title", "url", "snippet"}], "backend": "duckduckgo"}`;
//! a backend that cannot answer (rate limited, a page it does not understand, a timeout) is an
//! error the model sees, never an empty list.

pub mod duckduckgo;

use crate::tool::{Tool, ToolError};
use serde::Serialize;
use serde_json::{Map, Value, json};
use std::time::Duration;
use tardbot_toolcall::ToolSpec;

/// DuckDuckGo's HTML endpoint.
pub const DEFAULT_BASE_URL: &str = "https://html.duckduckgo.com/html/";

/// How `search` is set up (`[tools.search]`; see [`crate::settings::SearchSettings`]).
#[derive(Clone, Debug, PartialEq)]
pub struct SearchConfig {
    /// Where the query is POSTed ([`DEFAULT_BASE_URL`]).
    pub base_url: String,
    /// Wall clock per request (connect, answer and body).
    pub timeout: Duration,
    /// The most results a call returns (and the default when the call does not say).
    pub max_results: usize,
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig {
            base_url: DEFAULT_BASE_URL.to_string(),
            timeout: Duration::from_secs(10),
            max_results: 5,
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
    /// At most `max_results` hits, best first; `Ok(vec![])` only when the backend said it found
    /// nothing.
    fn search(&self, query: &str, max_results: usize) -> Result<Vec<SearchHit>, ToolError>;
}

/// The `search` tool over a backend.
pub struct SearchTool {
    backend: Box<dyn SearchBackend>,
    max_results: usize,
}

impl SearchTool {
    /// `search` through DuckDuckGo as `cfg` says.
    pub fn new(cfg: &SearchConfig) -> SearchTool {
        SearchTool::with_backend(
            Box::new(duckduckgo::DuckDuckGo {
                base_url: cfg.base_url.clone(),
                timeout: cfg.timeout,
            }),
            cfg.max_results,
        )
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
                "Search the web; returns the title, URL and snippet of each of the top results \
                 (at most {}).",
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
