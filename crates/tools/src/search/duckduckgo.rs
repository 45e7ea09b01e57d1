//! DuckDuckGo's HTML endpoint: a form POST of `q` to the base URL, results parsed from the page.
//!
//! Parsing ([`parse_results`]): each `div.result` that is neither an ad (`result--ad`, or a link
//! through `/y.js`) nor the "no results" row gives a title (`a.result__a`), a URL (its `href`;
//! DuckDuckGo's redirect links `//duckduckgo.com/l/?uddg=<url>&rut=…` are decoded to `<url>`) and
//! a snippet (`.result__snippet`). A page with `div.no-results` and no results is an empty result.
//! Rate limiting is reported as such: HTTP 202/403/429, or the "anomaly" bot-check page DuckDuckGo
//! serves instead of results. Anything else (no results and no "no results" notice, or results
//! without their links) is an error saying the page was not understood, never an empty list.
//!
//! The HTTP client is reqwest's async one on a current-thread tokio runtime of its own, on a thread
//! of its own: `call` is synchronous and may be reached from inside another runtime (the CLI's
//! `tool` command), where blocking on a second runtime would panic.

use super::{SearchBackend, SearchHit};
use crate::tool::ToolError;
use reqwest::Url;
use scraper::{ElementRef, Html, Selector};
use std::time::Duration;

/// The most of a page that is read (DuckDuckGo's pages are ~30 KiB).
const MAX_PAGE_BYTES: usize = 4 << 20;

/// DuckDuckGo's HTML search.
#[derive(Clone, Debug)]
pub struct DuckDuckGo {
    /// `https://html.duckduckgo.com/html/` by default; tests point it at 127.0.0.1.
    pub base_url: String,
    /// Wall clock of one request: connecting, the answer and its body.
    pub timeout: Duration,
}

impl Default for DuckDuckGo {
    fn default() -> Self {
        let c = super::SearchConfig::default();
        DuckDuckGo {
            base_url: c.base_url,
            timeout: c.timeout,
        }
    }
}

impl SearchBackend for DuckDuckGo {
    fn name(&self) -> &'static str {
        "duckduckgo"
    }

    fn time_limit(&self) -> Option<Duration> {
        Some(self.timeout)
    }

    fn search(&self, query: &str, max_results: usize) -> Result<Vec<SearchHit>, ToolError> {
        let base = Url::parse(&self.base_url).map_err(|e| {
            ToolError::Unavailable(format!(
                "[tools.search] base_url `{}` is not a URL: {e}",
                self.base_url
            ))
        })?;
        let (status, body) = self.fetch(&base, query)?;
        if matches!(status, 202 | 403 | 429) {
            return Err(rate_limited(&format!("HTTP {status}")));
        }
        if !(200..300).contains(&status) {
            return Err(ToolError::Failed(format!(
                "DuckDuckGo answered HTTP {status}"
            )));
        }
        parse_results(&body, &base, max_results)
    }
}

impl DuckDuckGo {
    /// The status and body of the answer to the form POST of `query`.
    fn fetch(&self, base: &Url, query: &str) -> Result<(u16, String), ToolError> {
        let secs = self.timeout.as_secs_f64();
        let request = async {
            let client = reqwest::Client::builder()
                .timeout(self.timeout)
                .user_agent(
                    "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
                )
                .build()
                .map_err(|e| ToolError::Failed(format!("could not build the HTTP client: {e}")))?;
            let timed_out = || {
                ToolError::Failed(format!(
                    "DuckDuckGo did not answer within {secs} s (request timed out)"
                ))
            };
            let mut resp = client
                .post(base.clone())
                .form(&[("q", query), ("b", ""), ("kl", "wt-wt")])
                .send()
                .await
                .map_err(|e| {
                    if e.is_timeout() {
                        timed_out()
                    } else {
                        ToolError::Failed(format!("the request to DuckDuckGo failed: {e}"))
                    }
                })?;
            let status = resp.status().as_u16();
            let mut body = Vec::new();
            loop {
                match resp.chunk().await {
                    Ok(Some(chunk)) => {
                        body.extend_from_slice(&chunk);
                        if body.len() > MAX_PAGE_BYTES {
                            return Err(ToolError::Failed(format!(
                                "DuckDuckGo's page is over {} MiB; not a results page",
                                MAX_PAGE_BYTES >> 20
                            )));
                        }
                    }
                    Ok(None) => break,
                    Err(e) if e.is_timeout() => return Err(timed_out()),
                    Err(e) => {
                        return Err(ToolError::Failed(format!(
                            "reading DuckDuckGo's answer: {e}"
                        )));
                    }
                }
            }
            Ok((status, String::from_utf8_lossy(&body).into_owned()))
        };
        std::thread::scope(|s| {
            s.spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| {
                        ToolError::Failed(format!("could not start the HTTP client's runtime: {e}"))
                    })?
                    .block_on(request)
            })
            .join()
            .unwrap_or_else(|_| Err(ToolError::Failed("the HTTP client panicked".into())))
        })
    }
}

fn rate_limited(why: &str) -> ToolError {
    ToolError::Failed(format!(
        "DuckDuckGo is rate limiting this machine ({why}); wait a few minutes before searching \
         again"
    ))
}

fn selector(s: &str) -> Selector {
    // The selectors are constants of this file; a parse failure is a bug the tests catch.
    Selector::parse(s).unwrap_or_else(|e| panic!("selector {s}: {e:?}"))
}

fn text_of(e: ElementRef<'_>) -> String {
    e.text()
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn has_class(e: ElementRef<'_>, class: &str) -> bool {
    e.value().classes().any(|c| c == class)
}

/// The results of a DuckDuckGo HTML page served from `base` (see the module doc), at most
/// `max_results`.
pub fn parse_results(
    page: &str,
    base: &Url,
    max_results: usize,
) -> Result<Vec<SearchHit>, ToolError> {
    let doc = Html::parse_document(page);
    if doc
        .select(&selector(
            ".anomaly-modal, #challenge-form, .anomaly-modal__title",
        ))
        .next()
        .is_some()
        || page.contains("bots use DuckDuckGo too")
    {
        return Err(rate_limited(
            "it served its bot-check page instead of results",
        ));
    }
    let (result, link, snippet) = (
        selector("div.result"),
        selector("a.result__a"),
        selector(".result__snippet"),
    );
    let mut hits = Vec::new();
    let mut organic = 0;
    for r in doc.select(&result) {
        if has_class(r, "result--ad") || has_class(r, "result--no-result") {
            continue;
        }
        if r.select(&selector("div.no-results")).next().is_some() {
            continue;
        }
        organic += 1;
        let Some(a) = r.select(&link).next() else {
            continue;
        };
        let Some(url) = a.value().attr("href").and_then(|h| target_of(h, base)) else {
            continue;
        };
        let title = text_of(a);
        if title.is_empty() {
            continue;
        }
        hits.push(SearchHit {
            title,
            url,
            snippet: r.select(&snippet).next().map(text_of).unwrap_or_default(),
        });
        if hits.len() >= max_results {
            break;
        }
    }
    if !hits.is_empty() {
        return Ok(hits);
    }
    if organic == 0 && doc.select(&selector("div.no-results")).next().is_some() {
        return Ok(Vec::new());
    }
    Err(ToolError::Failed(if organic > 0 {
        format!(
            "DuckDuckGo's page had {organic} results but none with a title and link this tool \
             understands (its HTML may have changed)"
        )
    } else {
        "DuckDuckGo's page had neither results nor a \"no results\" notice (its HTML may have \
         changed)"
            .to_string()
    }))
}

/// Where a result link leads: DuckDuckGo's redirect (`//duckduckgo.com/l/?uddg=<url>&rut=…`)
/// decoded to `<url>`; other links resolved against `base` (protocol-relative ones get its
/// scheme). None for an ad's click link (`/y.js`) or what is no http(s) URL.
pub fn target_of(href: &str, base: &Url) -> Option<String> {
    let u = base.join(href.trim()).ok()?;
    if u.path() == "/y.js" {
        return None;
    }
    let u = if u.path() == "/l/" {
        let (_, target) = u.query_pairs().find(|(k, _)| k == "uddg")?;
        Url::parse(&target).ok()?
    } else {
        u
    };
    matches!(u.scheme(), "http" | "https").then(|| u.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_links_are_decoded() {
        let base = Url::parse("https://html.duckduckgo.com/html/").unwrap();
        assert_eq!(
            target_of(
                "//duckduckgo.com/l/?uddg=https%3A%2F%2Fwww.rust-lang.org%2Flearn%3Fa%3D1%26b%3D2&rut=abc",
                &base
            )
            .as_deref(),
            Some("https://www.rust-lang.org/learn?a=1&b=2")
        );
        assert_eq!(
            target_of("https://example.com/x", &base).as_deref(),
            Some("https://example.com/x")
        );
        assert_eq!(
            target_of("//duckduckgo.com/y.js?ad_domain=x.com&u3=y", &base),
            None
        );
        assert_eq!(target_of("//duckduckgo.com/l/?rut=abc", &base), None);
        assert_eq!(
            target_of("//duckduckgo.com/l/?uddg=javascript%3Aalert(1)", &base),
            None
        );
    }
}
