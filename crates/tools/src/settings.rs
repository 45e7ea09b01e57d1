//! `[tools.*]` of `pipeline.toml`. `[tools.python]`: the sandbox's limits, and the explicit opt-out
//! of the sandbox. `[tools.search]`: where `search` asks, how long it waits, how many results.
//!
//! ```toml
//! [tools.python]
//! timeout_s = 10            # wall clock per call
//! cpu_seconds = 10
//! memory_mib = 512          # address space
//! max_output_kib = 64       # per stream
//! allow_unsandboxed = false # true: run without bubblewrap where it is unavailable (see python.rs)
//!
//! [tools.search]
//! backend = "offline"       # offline (the search_index stage's index of the corpus) | duckduckgo
//! index = "path/to/index"   # offline: an index directory (default: the run's search_index output)
//! base_url = "https://html.duckduckgo.com/html/" # DuckDuckGo's HTML endpoint (or a stand-in)
//! timeout_s = 10            # wall clock per DuckDuckGo request
//! max_results = 5           # the most a call returns (1..=50)
//! ```
//!
//! `[tools.browser]`: the hosts the browser may load and its limits (see browser/mod.rs). By
//! default public http/https hosts may be loaded; loopback (127/8, ::1, localhost) and private
//! ranges (10/8, 172.16/12, 192.168/16, 169.254/16, fc00::/7, fe80::/10) only when listed in
//! `allowed_hosts`. `only_allowed_hosts = true` allows the listed hosts and nothing else. Hosts are
//! judged by name: a public name that resolves to a private address is not caught (use
//! `only_allowed_hosts` where that matters).
//!
//! ```toml
//! [tools.browser]
//! allowed_hosts = ["127.0.0.1", "*.example.org"] # also loopback/private hosts allowed (default [])
//! only_allowed_hosts = false    # true: only allowed_hosts (then empty refuses every URL)
//! timeout_s = 20                # wall clock per call, Chromium's start included
//! max_text_kib = 3              # page text kept (the tool loop cuts results at 4 KiB)
//! chromium = "/usr/bin/chromium"
//! ```

use crate::browser::BrowserConfig;
use crate::python::SandboxConfig;
use crate::search::{BackendKind, SearchConfig};
use serde::Deserialize;
use std::time::Duration;

/// What the built-in tools are built with ([`crate::ToolRegistry::builtin_with`]).
#[derive(Clone, Debug, Default)]
pub struct ToolSettings {
    /// `python`'s sandbox (`[tools.python]`).
    pub python: SandboxConfig,
    /// `search`'s backend (`[tools.search]`).
    pub search: SearchConfig,
    /// The hosts `browser` may open and its limits (`[tools.browser]`; by default public ones).
    pub browser: BrowserConfig,
}

/// `[tools.search]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SearchSettings {
    pub backend: Option<String>,
    pub index: Option<std::path::PathBuf>,
    pub base_url: Option<String>,
    pub timeout_s: Option<f64>,
    pub max_results: Option<usize>,
}

/// The most results `[tools.search] max_results` may ask for (DuckDuckGo's first page has ~30).
pub const MAX_SEARCH_RESULTS: usize = 50;

impl SearchSettings {
    /// The search these settings describe (defaults for what they leave out).
    pub fn search_config(&self) -> SearchConfig {
        let mut c = SearchConfig::default();
        if self.backend.as_deref() == Some("duckduckgo") {
            c.backend = BackendKind::DuckDuckGo;
        }
        c.index.clone_from(&self.index);
        if let Some(u) = &self.base_url {
            c.base_url = u.clone();
        }
        if let Some(t) = self.timeout_s.filter(|t| t.is_finite() && *t > 0.0) {
            c.timeout = Duration::from_secs_f64(t);
        }
        if let Some(n) = self.max_results.filter(|n| *n >= 1) {
            c.max_results = n.min(MAX_SEARCH_RESULTS);
        }
        c
    }

    /// What is wrong with the values (checked with the rest of the pipeline file).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        if let Some(b) = &self.backend
            && !matches!(b.as_str(), "offline" | "duckduckgo")
        {
            p.push((
                "backend",
                format!("`{b}` is not a search backend; use \"offline\" or \"duckduckgo\""),
            ));
        }
        if let Some(u) = &self.base_url {
            match reqwest::Url::parse(u) {
                Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {}
                Ok(_) => p.push(("base_url", format!("`{u}` is not an http(s) URL"))),
                Err(e) => p.push(("base_url", format!("`{u}` is not a URL: {e}"))),
            }
        }
        if let Some(t) = self.timeout_s
            && !(t.is_finite() && t > 0.0 && t <= 300.0)
        {
            p.push(("timeout_s", format!("{t} is not in (0, 300] seconds")));
        }
        if let Some(n) = self.max_results
            && !(1..=MAX_SEARCH_RESULTS).contains(&n)
        {
            p.push((
                "max_results",
                format!("{n} is not in 1..={MAX_SEARCH_RESULTS}"),
            ));
        }
        p
    }
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PythonSettings {
    pub timeout_s: Option<f64>,
    pub cpu_seconds: Option<u64>,
    pub memory_mib: Option<u64>,
    pub max_output_kib: Option<usize>,
    #[serde(default)]
    pub allow_unsandboxed: bool,
}

impl PythonSettings {
    /// The sandbox these settings describe (defaults for what they leave out).
    pub fn sandbox_config(&self) -> SandboxConfig {
        let mut c = SandboxConfig::default();
        if let Some(t) = self.timeout_s.filter(|t| t.is_finite() && *t > 0.0) {
            c.timeout = Duration::from_secs_f64(t);
        }
        if let Some(s) = self.cpu_seconds {
            c.cpu_seconds = s;
        }
        if let Some(m) = self.memory_mib {
            c.address_space_bytes = m * 1024 * 1024;
        }
        if let Some(k) = self.max_output_kib {
            c.max_output_bytes = k * 1024;
        }
        c.allow_unsandboxed = self.allow_unsandboxed;
        c
    }

    /// What is wrong with the values (checked with the rest of the pipeline file).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        if let Some(t) = self.timeout_s
            && !(t.is_finite() && t > 0.0 && t <= 3600.0)
        {
            p.push(("timeout_s", format!("{t} is not in (0, 3600] seconds")));
        }
        if self.cpu_seconds == Some(0) {
            p.push(("cpu_seconds", "must be at least 1".to_string()));
        }
        if let Some(m) = self.memory_mib
            && m < 64
        {
            p.push((
                "memory_mib",
                format!("{m} MiB is too little for Python to start (at least 64)"),
            ));
        }
        p
    }
}

/// `[tools.browser]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BrowserSettings {
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// `true`: only `allowed_hosts` may be loaded; default `false`: public hosts too.
    #[serde(default)]
    pub only_allowed_hosts: bool,
    pub timeout_s: Option<f64>,
    pub max_text_kib: Option<usize>,
    pub chromium: Option<std::path::PathBuf>,
}

impl BrowserSettings {
    /// The browser these settings describe (defaults for what they leave out).
    pub fn browser_config(&self) -> BrowserConfig {
        let mut c = BrowserConfig {
            allowed_hosts: self.allowed_hosts.clone(),
            only_allowed_hosts: self.only_allowed_hosts,
            ..BrowserConfig::default()
        };
        if let Some(t) = self.timeout_s.filter(|t| t.is_finite() && *t > 0.0) {
            c.timeout = Duration::from_secs_f64(t);
        }
        if let Some(k) = self.max_text_kib.filter(|k| *k > 0) {
            c.max_text_bytes = k * 1024;
        }
        if let Some(p) = &self.chromium {
            c.chromium = p.clone();
        }
        c
    }

    /// What is wrong with the values (checked with the rest of the pipeline file).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        let bad: Vec<&str> = self
            .allowed_hosts
            .iter()
            .map(String::as_str)
            .filter(|h| !crate::browser::allowed_entry_ok(h))
            .collect();
        if !bad.is_empty() {
            p.push((
                "allowed_hosts",
                format!(
                    "{bad:?}: each entry is a lowercase host name or IP address (IPv6 in brackets), \
                     or `*.domain` for its subdomains; no scheme, port or path"
                ),
            ));
        }
        if let Some(t) = self.timeout_s
            && !(t.is_finite() && t > 0.0 && t <= 600.0)
        {
            p.push(("timeout_s", format!("{t} is not in (0, 600] seconds")));
        }
        if let Some(k) = self.max_text_kib
            && !(1..=1024).contains(&k)
        {
            p.push(("max_text_kib", format!("{k} is not in [1, 1024]")));
        }
        if let Some(c) = &self.chromium
            && !c.is_absolute()
        {
            p.push((
                "chromium",
                format!("`{}` is not an absolute path", c.display()),
            ));
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_become_the_sandbox_and_bad_values_are_named() {
        let s = PythonSettings {
            timeout_s: Some(2.5),
            memory_mib: Some(256),
            allow_unsandboxed: true,
            ..PythonSettings::default()
        };
        let c = s.sandbox_config();
        assert_eq!(c.timeout, Duration::from_millis(2500));
        assert_eq!(c.address_space_bytes, 256 << 20);
        assert!(c.allow_unsandboxed);
        assert!(!PythonSettings::default().sandbox_config().allow_unsandboxed);
        let bad = PythonSettings {
            timeout_s: Some(-1.0),
            memory_mib: Some(8),
            ..PythonSettings::default()
        };
        let fields: Vec<&str> = bad.problems().iter().map(|(f, _)| *f).collect();
        assert_eq!(fields, ["timeout_s", "memory_mib"]);
    }

    #[test]
    fn search_settings_become_the_config_and_bad_values_are_named() {
        let d = SearchSettings::default().search_config();
        assert_eq!(d, SearchConfig::default());
        assert_eq!(d.base_url, crate::search::DEFAULT_BASE_URL);
        let s = SearchSettings {
            backend: Some("duckduckgo".into()),
            index: None,
            base_url: Some("http://127.0.0.1:8080/html/".into()),
            timeout_s: Some(0.5),
            max_results: Some(3),
        };
        assert!(s.problems().is_empty());
        let c = s.search_config();
        assert_eq!(c.base_url, "http://127.0.0.1:8080/html/");
        assert_eq!(c.timeout, Duration::from_millis(500));
        assert_eq!(c.max_results, 3);
        assert_eq!(c.backend, BackendKind::DuckDuckGo);
        assert_eq!(d.backend, BackendKind::Offline, "offline is the default");
        let bad = SearchSettings {
            backend: Some("bing".into()),
            index: Some("idx".into()),
            base_url: Some("html.duckduckgo.com/html".into()),
            timeout_s: Some(0.0),
            max_results: Some(0),
        };
        let fields: Vec<&str> = bad.problems().iter().map(|(f, _)| *f).collect();
        assert_eq!(fields, ["backend", "base_url", "timeout_s", "max_results"]);
        assert_eq!(bad.search_config().index, Some("idx".into()));
        let ftp = SearchSettings {
            base_url: Some("ftp://example.com/".into()),
            ..SearchSettings::default()
        };
        assert_eq!(ftp.problems().len(), 1);
    }

    #[test]
    fn browser_settings_become_the_config_and_bad_values_are_named() {
        let s = BrowserSettings {
            allowed_hosts: vec!["127.0.0.1".into()],
            timeout_s: Some(5.0),
            max_text_kib: Some(2),
            chromium: None,
            only_allowed_hosts: true,
        };
        let c = s.browser_config();
        assert_eq!(c.allowed_hosts, ["127.0.0.1"]);
        assert!(c.only_allowed_hosts);
        assert_eq!(c.timeout, Duration::from_secs(5));
        assert_eq!(c.max_text_bytes, 2048);
        assert!(s.problems().is_empty());
        assert!(
            BrowserSettings::default()
                .browser_config()
                .allowed_hosts
                .is_empty()
        );
        assert!(
            !BrowserSettings::default()
                .browser_config()
                .only_allowed_hosts
        );
        let parsed: BrowserSettings =
            serde_json::from_str(r#"{"only_allowed_hosts": true}"#).unwrap();
        assert!(parsed.only_allowed_hosts);
        let bad = BrowserSettings {
            allowed_hosts: vec!["http://x.org".into()],
            timeout_s: Some(0.0),
            max_text_kib: Some(0),
            chromium: Some("chromium".into()),
            only_allowed_hosts: false,
        };
        let fields: Vec<&str> = bad.problems().iter().map(|(f, _)| *f).collect();
        assert_eq!(
            fields,
            ["allowed_hosts", "timeout_s", "max_text_kib", "chromium"]
        );
    }
}
