//! `browser`: a headless Chromium kept for the session; opens pages, returns their text or links,
//! clicks links or buttons, fills and submits forms.
//!
//! # How
//!
//! The tool starts its Chromium on its first call (`--headless --remote-debugging-pipe`, driven over
//! the DevTools protocol on descriptors 3 and 4, see [`cdp`]) with a new temporary profile (also its
//! `HOME`, so nothing is written elsewhere), an empty environment but `HOME`, `PATH`, `LANG`, stdin
//! closed, in a new session (its own process group) with `SIGKILL` as parent-death signal, and opens
//! one tab with request interception on (`Fetch.enable`, every URL). The browser and its tab stay
//! for the next calls (one browser per session): a call with `url` navigates the tab there and polls
//! `document.readyState` until `complete`; a call without `url` acts on the page already open.
//! `read` returns `document.body.innerText`, `links` `document.links`; `click` and
//! `fill_and_submit` mark the document, run the click or fill the fields and submit, and if the main
//! frame requests a new document wait until it has replaced the marked one and loaded (no request
//! within 1 s: no navigation, the same page is read). The browser is stopped when the tool is
//! dropped (the end of the session), when a call times out, or when the browser fails; the next
//! call then starts a fresh one. Stopping kills the whole session (`SIGKILL`) and any process whose
//! command line names the profile (Chromium's crash handler leaves the session), and removes the
//! profile.
//!
//! # What it protects
//!
//! - **Hosts**: by default public `http`/`https` hosts may be loaded, and loopback and private ones
//!   only when listed in [`BrowserConfig::allowed_hosts`] (exact names or IP literals;
//!   `*.example.com` for the subdomains of example.com): `localhost` and `*.localhost`, IPv4
//!   0/8, 127/8, 10/8, 172.16/12, 192.168/16, 169.254/16, 100.64/10, IPv6 `::`, `::1`, fc00::/7,
//!   fe80::/10 and the IPv4-mapped forms; IPv4 written other than as a canonical dotted quad
//!   (`127.1`, `0x7f.0.0.1`, `2130706433`) is refused too ([`internal_host`]). With
//!   [`BrowserConfig::only_allowed_hosts`] only the listed hosts may be loaded (none listed: every
//!   URL is refused). The URL asked for is checked before Chromium starts. Inside the browser,
//!   every request the page makes (the navigation, each redirect hop, a clicked link, a submitted
//!   form, subresources, same-process frames, fetch/XHR) is paused and failed (`BlockedByClient`)
//!   unless its scheme and host pass the same check; the blocked URLs are listed in the result, and
//!   a click or submit whose navigation was blocked fails naming it. As a second layer Chromium's
//!   resolver (`--host-resolver-rules`) maps to "not found" every name but the listed ones (with
//!   `only_allowed_hosts`), or (by default) `localhost`, `*.localhost` and the loopback and
//!   private IP literals not listed; no proxy is used, site isolation is off (so cross-site frames
//!   stay in the page's process, where interception sees them), and the final URL is checked
//!   again.
//! - **Schemes**: only `http` and `https` (`file:`, `chrome:`, `javascript:`, `data:`, … refused),
//!   for the URL asked for and every intercepted request. A URL with credentials (`user@host`),
//!   backslashes, whitespace, control characters or a host ending in a dot is refused, so our parse
//!   of the host is the one Chromium makes.
//! - **Time**: one wall-clock limit ([`BrowserConfig::timeout`]) for each call (start, load,
//!   action, reading); past it the call fails and the browser is killed.
//! - **Output**: the text is cut at [`BrowserConfig::max_text_bytes`] (marked: `truncated`, a note
//!   at its end); at most [`BrowserConfig::max_links`] links, each text cut at 200 characters.
//! - **Leftovers**: no process and no profile survives the tool (or a timed-out call).
//!
//! # What it does not protect
//!
//! - **Chromium's own sandbox is off when we run as root** (`--no-sandbox`, which Chromium requires
//!   then): a renderer exploit runs with our uid. Not root, Chromium's sandbox is kept.
//! - **Names are judged as written, not by the address they resolve to**: under the default policy a
//!   public-looking name whose DNS answer is a loopback or private address (`localtest.me`, a
//!   rebinding domain, an internal name of your resolver) passes both layers and that address is
//!   reached; the resolver rules match names and IP literals, never resolved addresses. Where that
//!   matters, set `only_allowed_hosts = true` and list IP literals or names you control. Likewise a
//!   listed name is resolved by the system's DNS and trusted.
//! - **State persists within a session**: cookies, storage and the open page carry from one call to
//!   the next (that is what lets a click follow an earlier page); the profile goes with the tool.
//! - **Requests interception cannot see** (WebSocket connections, new windows, service workers)
//!   rely on the resolver rules alone (they apply to IP literals too: tested with a WebSocket to
//!   127.0.0.2), so under the default policy only the internal literals and `localhost` are stopped
//!   for them, not other hosts. Anything Chromium reaches without its host resolver is not covered.
//! - **Page content**: scripts run (the text is what they render); the text and links are returned
//!   as the page wrote them, untrusted.
//! - **Resources within the limit**: a page may use CPU and memory for the whole timeout.

pub mod cdp;

use crate::tool::{Tool, ToolError};
use cdp::{Cdp, CdpError};
use serde_json::{Map, Value, json};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tardbot_toolcall::ToolSpec;

/// The default Chromium (Debian's launcher script).
pub const DEFAULT_CHROMIUM: &str = "/usr/bin/chromium";

/// Longest URL accepted.
pub const MAX_URL_BYTES: usize = 2048;

/// After a click or submit, how long to wait for the main frame to request a new document before
/// taking the action as one that does not navigate.
const NO_NAVIGATION_AFTER: Duration = Duration::from_millis(1000);

/// Blocked URLs listed in a result at most.
const MAX_BLOCKED_LISTED: usize = 20;

/// The browser's limits. See the module documentation for what they protect.
#[derive(Clone, Debug)]
pub struct BrowserConfig {
    pub chromium: PathBuf,
    /// Hosts allowed explicitly: exact host names or IP literals (IPv6 in brackets),
    /// `*.example.com` for every subdomain of example.com. The only way to reach loopback or
    /// private addresses (see [`internal_host`]); with [`BrowserConfig::only_allowed_hosts`], the
    /// only hosts at all.
    pub allowed_hosts: Vec<String>,
    /// `true`: only [`BrowserConfig::allowed_hosts`] may be loaded (empty: every URL is refused).
    /// `false` (the default): every public host too.
    pub only_allowed_hosts: bool,
    /// Wall-clock limit of one call, Chromium's start included.
    pub timeout: Duration,
    /// Bytes of page text kept.
    pub max_text_bytes: usize,
    /// Links returned at most.
    pub max_links: usize,
}

impl Default for BrowserConfig {
    fn default() -> Self {
        BrowserConfig {
            chromium: PathBuf::from(DEFAULT_CHROMIUM),
            allowed_hosts: Vec::new(),
            only_allowed_hosts: false,
            timeout: Duration::from_secs(20),
            // The tool loop cuts a result at 4 KiB (`LoopConfig::max_result_bytes`): the defaults
            // keep a page's result under it.
            max_text_bytes: 3 * 1024,
            max_links: 25,
        }
    }
}

impl BrowserConfig {
    /// Whether `url` may be loaded: `Ok` or why not (the scheme, the host, its form).
    pub fn check_url(&self, url: &str) -> Result<(), String> {
        let (scheme, host) = parse_url(url)?;
        if scheme != "http" && scheme != "https" {
            return Err(format!(
                "scheme `{scheme}:` is not allowed (only http and https)"
            ));
        }
        if host_allowed(&host, &self.allowed_hosts) {
            return Ok(());
        }
        if self.only_allowed_hosts {
            return Err(if self.allowed_hosts.is_empty() {
                format!(
                    "host `{host}` is not allowed: no host is (only_allowed_hosts with an empty \
                     allowed_hosts)"
                )
            } else {
                format!(
                    "host `{host}` is not allowed (only: {})",
                    self.allowed_hosts.join(", ")
                )
            });
        }
        if let Some(what) = internal_host(&host) {
            return Err(format!(
                "host `{host}` is not allowed: {what} (refused unless listed in [tools.browser] \
                 allowed_hosts)"
            ));
        }
        Ok(())
    }

    /// What the tool's description says about hosts.
    fn hosts_summary(&self) -> String {
        let listed = self.allowed_hosts.join(", ");
        match (self.only_allowed_hosts, self.allowed_hosts.is_empty()) {
            (true, true) => "none are allowed, so every URL is refused".into(),
            (true, false) => format!("only these hosts can be loaded: {listed}"),
            (false, true) => {
                "public hosts only (loopback and private addresses are refused)".into()
            }
            (false, false) => format!(
                "public hosts, and these: {listed} (other loopback and private addresses are refused)"
            ),
        }
    }

    /// Chromium's command-line options (the launcher's own flags come first).
    pub fn chromium_args(&self, profile: &Path) -> Vec<String> {
        let mut a: Vec<String> = [
            "--headless",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-default-apps",
            "--disable-crash-reporter",
            "--disable-breakpad",
            "--disable-dev-shm-usage",
            "--mute-audio",
            "--no-proxy-server",
            "--disable-site-isolation-trials",
            "--disable-features=IsolateOrigins,site-per-process,Translate,MediaRouter",
            "--remote-debugging-pipe",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if unsafe { libc::geteuid() } == 0 {
            a.push("--no-sandbox".into());
        }
        a.push(format!("--user-data-dir={}", profile.display()));
        a.push(host_resolver_rules(
            &self.allowed_hosts,
            self.only_allowed_hosts,
        ));
        a.push("about:blank".into());
        a
    }
}

/// Host patterns of loopback and private addresses (and names) for Chromium's resolver rules; IPv6
/// ones are given with and without brackets.
const INTERNAL_PATTERNS: &[&str] = &[
    "localhost",
    "*.localhost",
    "0.*",
    "127.*",
    "10.*",
    "192.168.*",
    "169.254.*",
    "100.64.*",
    "172.16.*",
    "172.17.*",
    "172.18.*",
    "172.19.*",
    "172.20.*",
    "172.21.*",
    "172.22.*",
    "172.23.*",
    "172.24.*",
    "172.25.*",
    "172.26.*",
    "172.27.*",
    "172.28.*",
    "172.29.*",
    "172.30.*",
    "172.31.*",
];
const INTERNAL_PATTERNS_V6: &[&str] = &[
    "::", "::1", "::ffff:*", "fc*:*", "fd*:*", "fe8*:*", "fe9*:*", "fea*:*", "feb*:*",
];

/// `--host-resolver-rules`. With `only`: every name resolves to "not found" except the allowed
/// ones. Otherwise: the loopback and private IP literals and `localhost` do (unless allowed). The
/// rules match the name as written, never what it resolves to (see the module documentation).
fn host_resolver_rules(allowed: &[String], only: bool) -> String {
    let mut r = String::from("--host-resolver-rules=");
    if only {
        r.push_str("MAP * ~NOTFOUND");
    } else {
        let mut rules: Vec<String> = INTERNAL_PATTERNS
            .iter()
            .map(|p| format!("MAP {p} ~NOTFOUND"))
            .collect();
        for p in INTERNAL_PATTERNS_V6 {
            rules.push(format!("MAP {p} ~NOTFOUND"));
            rules.push(format!("MAP [{p}] ~NOTFOUND"));
        }
        r.push_str(&rules.join(", "));
    }
    for h in allowed {
        let h = h.trim_start_matches('[').trim_end_matches(']');
        r.push_str(", EXCLUDE ");
        r.push_str(h);
    }
    r
}

/// Why `host` (as [`parse_url`] returns it) is internal: loopback, private, link-local or
/// unspecified addresses (IPv4: 0/8, 127/8, 10/8, 172.16/12, 192.168/16, 169.254/16, 100.64/10;
/// IPv6: `::`, `::1`, fc00::/7, fe80::/10, and IPv4-mapped or -compatible forms of the former),
/// `localhost` and its subdomains, and IPv4 hosts not written in canonical dotted-quad form
/// (`127.1`, `0x7f.0.0.1`, `2130706433`: Chromium reads them as addresses). `None`: a public
/// address or a name. Names are not resolved here.
pub fn internal_host(host: &str) -> Option<&'static str> {
    use std::net::{Ipv4Addr, Ipv6Addr};
    fn v4(a: Ipv4Addr) -> Option<&'static str> {
        let [o0, o1, ..] = a.octets();
        if o0 == 127 {
            Some("a loopback address")
        } else if o0 == 0 {
            Some("an unspecified address")
        } else if o0 == 10
            || (o0 == 172 && (16..32).contains(&o1))
            || (o0 == 192 && o1 == 168)
            || (o0 == 100 && (64..128).contains(&o1))
        {
            Some("a private address")
        } else if o0 == 169 && o1 == 254 {
            Some("a link-local address")
        } else {
            None
        }
    }
    if host == "localhost" || host.ends_with(".localhost") {
        return Some("a loopback name");
    }
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        let Ok(a) = inner.parse::<Ipv6Addr>() else {
            return Some("not a valid IPv6 address");
        };
        let s0 = a.segments()[0];
        if a.is_loopback() {
            return Some("a loopback address");
        }
        if a.is_unspecified() {
            return Some("an unspecified address");
        }
        if s0 & 0xfe00 == 0xfc00 {
            return Some("a private address");
        }
        if s0 & 0xffc0 == 0xfe80 {
            return Some("a link-local address");
        }
        return a.to_ipv4().and_then(v4);
    }
    let last = host.rsplit('.').next().unwrap_or("");
    let numeric =
        !last.is_empty() && (last.chars().all(|c| c.is_ascii_digit()) || last.starts_with("0x"));
    if !numeric {
        return None;
    }
    match host.parse::<Ipv4Addr>() {
        Ok(a) if a.to_string() == host => v4(a),
        _ => Some("an IPv4 address not in canonical dotted-quad form"),
    }
}

/// A URL's scheme and host, both lowercased; refuses forms whose host we might read otherwise than
/// Chromium does.
pub fn parse_url(url: &str) -> Result<(String, String), String> {
    if url.len() > MAX_URL_BYTES {
        return Err(format!("URL longer than {MAX_URL_BYTES} bytes"));
    }
    if url
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '\\')
    {
        return Err("URL contains whitespace, a control character or a backslash".into());
    }
    let Some(colon) = url.find(':') else {
        return Err(format!("`{url}` is not an absolute URL (no scheme)"));
    };
    let scheme = url[..colon].to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        // Refused by its scheme whatever follows.
        return Ok((scheme, String::new()));
    }
    if scheme.is_empty()
        || !scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    {
        return Err(format!("`{url}` is not an absolute URL (bad scheme)"));
    }
    // `http:host` and `http:/host` are read by Chromium as `http://host`: an http(s) URL must
    // spell out `//` and a host, or the check below would see no host at all.
    let Some(rest) = url[colon + 1..].strip_prefix("//") else {
        return Err(format!(
            "`{url}` is not an absolute http(s) URL (write `{scheme}://host/…`)"
        ));
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    if authority.contains('@') {
        return Err("URL with credentials (user@host) refused".into());
    }
    let host = if authority.starts_with('[') {
        match authority.find(']') {
            Some(i) => &authority[..=i],
            None => return Err("bad IPv6 host".into()),
        }
    } else {
        authority.split(':').next().unwrap_or("")
    };
    let port = &authority[host.len()..];
    if !(port.is_empty() || port.starts_with(':') && port[1..].chars().all(|c| c.is_ascii_digit()))
    {
        return Err("bad port".into());
    }
    let host = host.to_ascii_lowercase();
    if host.is_empty() {
        return Err(format!("`{url}` has no host"));
    }
    if host.ends_with('.') {
        return Err(format!("host `{host}` ends with a dot (write it without)"));
    }
    if !host_syntax_ok(&host) {
        return Err(format!(
            "host `{host}` is not a plain host name or IP address"
        ));
    }
    Ok((scheme, host))
}

/// A host name of letters, digits, `-` and `.`, or an IPv6 literal in brackets.
fn host_syntax_ok(host: &str) -> bool {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return !inner.is_empty() && inner.chars().all(|c| c.is_ascii_hexdigit() || c == ':');
    }
    !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
}

/// Whether an `allowed_hosts` entry is well formed (what `[tools.browser]` validation checks).
pub fn allowed_entry_ok(entry: &str) -> bool {
    let e = entry.strip_prefix("*.").unwrap_or(entry);
    e == e.to_ascii_lowercase() && host_syntax_ok(e) && !e.starts_with('.') && !e.ends_with('.')
}

fn host_allowed(host: &str, allowed: &[String]) -> bool {
    !host.is_empty()
        && allowed.iter().any(|a| match a.strip_prefix("*.") {
            Some(domain) => host
                .strip_suffix(domain)
                .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
            None => a == host,
        })
}

/// What to return of the page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Read,
    Links,
}

/// One call of the tool: what to do, on `url` (opened first) or, without it, on the current page.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// The page's text or links.
    Show(Action),
    /// Click the first element matching a CSS selector, or the link/button whose text is
    /// `link_text` (exact, case-insensitive, else the first containing it); follow the navigation
    /// if one starts; the resulting page's text.
    Click {
        selector: Option<String>,
        link_text: Option<String>,
    },
    /// Set each field (CSS selector → value), then click `submit` (a selector) or submit the
    /// first field's form; follow the navigation; the resulting page's text.
    FillAndSubmit {
        fields: Vec<(String, String)>,
        submit: Option<String>,
    },
}

/// The `browser` tool. One Chromium per tool (per session): started on the first call, kept with
/// its page across calls, stopped when the tool is dropped, or when a call times out or the browser
/// fails (the next call starts a fresh one).
pub struct BrowserTool {
    cfg: BrowserConfig,
    browser: std::sync::Mutex<Option<Browser>>,
}

impl Default for BrowserTool {
    fn default() -> Self {
        BrowserTool::new(BrowserConfig::default())
    }
}

impl Drop for BrowserTool {
    fn drop(&mut self) {
        let slot = self.browser.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some(mut b) = slot.take() {
            b.shutdown();
        }
    }
}

impl BrowserTool {
    pub fn new(cfg: BrowserConfig) -> BrowserTool {
        BrowserTool {
            cfg,
            browser: std::sync::Mutex::new(None),
        }
    }

    pub fn config(&self) -> &BrowserConfig {
        &self.cfg
    }

    /// Opens `url` and returns the tool's JSON result.
    pub fn open(&self, url: &str, action: Action) -> Result<Value, ToolError> {
        self.run(Some(url), &Step::Show(action))
    }

    /// Whether a Chromium is running for this tool.
    pub fn is_running(&self) -> bool {
        self.browser
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Stops the browser, if one runs (the next call starts a fresh one).
    pub fn close(&self) {
        let taken = self
            .browser
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(mut b) = taken {
            b.shutdown();
        }
    }

    /// Runs one step, on `url` (opened first) or on the current page; returns the tool's result.
    pub fn run(&self, url: Option<&str>, step: &Step) -> Result<Value, ToolError> {
        if let Some(url) = url {
            self.cfg
                .check_url(url)
                .map_err(|why| ToolError::Failed(format!("refused: {why}")))?;
        }
        let mut slot = self.browser.lock().unwrap_or_else(|p| p.into_inner());
        if url.is_none() && slot.as_ref().is_none_or(|b| b.current.is_none()) {
            return Err(ToolError::Failed("no page is open yet: give `url`".into()));
        }
        if slot.is_none() && !is_executable(&self.cfg.chromium) {
            return Err(ToolError::Unavailable(format!(
                "no Chromium at {} (Debian/Ubuntu: apt-get install chromium; or set [tools.browser] \
                 chromium)",
                self.cfg.chromium.display()
            )));
        }
        let deadline = Instant::now() + self.cfg.timeout;
        if slot.is_none() {
            let mut b = Browser::launch(&self.cfg)
                .map_err(|e| ToolError::Failed(format!("could not start Chromium: {e}")))?;
            if let Err(e) = b.open_tab(&self.cfg, deadline) {
                b.shutdown();
                return Err(self.error(e));
            }
            *slot = Some(b);
        }
        let b = slot.as_mut().expect("started above");
        let r = b.step(&self.cfg, url, step, deadline);
        if let Err(VisitError::Cdp(_)) = &r {
            // Timed out or broken: stop it; the next call starts afresh.
            if let Some(mut b) = slot.take() {
                b.shutdown();
            }
        }
        r.map_err(|e| self.error(e))
    }

    fn error(&self, e: VisitError) -> ToolError {
        match e {
            VisitError::Cdp(CdpError::Timeout) => ToolError::Failed(format!(
                "timed out after {} s (the page did not finish loading); the browser was stopped",
                self.cfg.timeout.as_secs_f64()
            )),
            VisitError::Cdp(e) => ToolError::Failed(format!("browser: {e}")),
            VisitError::Page(m) => ToolError::Failed(m),
        }
    }
}

fn opt_str(arguments: &Map<String, Value>, key: &str) -> Result<Option<String>, ToolError> {
    match arguments.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ToolError::Failed(format!(
            "argument `{key}` must be a string"
        ))),
    }
}

/// The step a call's arguments ask for (the action named, or implied by its arguments).
pub fn step_of(arguments: &Map<String, Value>) -> Result<Step, ToolError> {
    let action = opt_str(arguments, "action")?;
    let action =
        action
            .as_deref()
            .unwrap_or(if arguments.get("fields").is_some_and(|v| !v.is_null()) {
                "fill_and_submit"
            } else if ["selector", "link_text"]
                .iter()
                .any(|k| arguments.get(*k).is_some_and(|v| !v.is_null()))
            {
                "click"
            } else {
                "read"
            });
    Ok(match action {
        "read" => Step::Show(Action::Read),
        "links" => Step::Show(Action::Links),
        "click" => {
            let selector = opt_str(arguments, "selector")?;
            let link_text = opt_str(arguments, "link_text")?;
            if selector.is_some() == link_text.is_some() {
                return Err(ToolError::Failed(
                    "click needs exactly one of `selector` and `link_text`".into(),
                ));
            }
            Step::Click {
                selector,
                link_text,
            }
        }
        "fill_and_submit" => {
            let Some(Value::Object(f)) = arguments.get("fields") else {
                return Err(ToolError::Failed(
                    "fill_and_submit needs `fields`: {\"CSS selector\": \"value\", …}".into(),
                ));
            };
            let fields = f
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        Value::Number(_) | Value::Bool(_) => v.to_string(),
                        _ => {
                            return Err(ToolError::Failed(format!(
                                "field `{k}`: the value must be a string, number or boolean"
                            )));
                        }
                    };
                    Ok((k.clone(), v))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Step::FillAndSubmit {
                fields,
                submit: opt_str(arguments, "submit")?,
            }
        }
        other => {
            return Err(ToolError::Failed(format!(
                "unknown action `{other}` (read, links, click or fill_and_submit)"
            )));
        }
    })
}

impl Tool for BrowserTool {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "browser".into(),
            // Short: the spec is in every prompt that offers the tool, and small models have
            // small windows.
            description: format!(
                "A headless web browser; its page stays open between calls. `url`: open that page \
                 (http or https), else act on the current one. `action`: \"read\" (default: title \
                 and text), \"links\", \"click\" (`selector` or `link_text`), \
                 \"fill_and_submit\" (`fields`, optional `submit`); click and submit return the \
                 page they lead to. Hosts: {}. {} s per call; text past {} KiB is cut.",
                self.cfg.hosts_summary(),
                self.cfg.timeout.as_secs_f64(),
                self.cfg.max_text_bytes / 1024
            ),
            parameters: json!({
                "type": "dict",
                "properties": {
                    "url": {"type": "string", "description": "The page to open; omitted: the current page."},
                    "action": {"type": "string", "enum": ["read", "links", "click", "fill_and_submit"]},
                    "selector": {"type": "string", "description": "click: a CSS selector."},
                    "link_text": {"type": "string", "description": "click: the text of a link or button."},
                    "fields": {"type": "dict", "description": "fill_and_submit: CSS selector → value."},
                    "submit": {"type": "string", "description": "fill_and_submit: the submit button's CSS selector."}
                },
                "required": []
            }),
        }
    }

    fn time_limit(&self) -> Option<std::time::Duration> {
        Some(self.cfg.timeout)
    }

    fn call(&self, arguments: &Map<String, Value>) -> Result<Value, ToolError> {
        let url = opt_str(arguments, "url")?;
        let step = step_of(arguments)?;
        self.run(url.as_deref(), &step)
    }
}

enum VisitError {
    Cdp(CdpError),
    Page(String),
}

impl From<CdpError> for VisitError {
    fn from(e: CdpError) -> Self {
        VisitError::Cdp(e)
    }
}

/// One running Chromium, its DevTools pipe and its profile.
struct Browser {
    child: Child,
    sid: libc::pid_t,
    cdp: Cdp,
    profile: Option<tempfile::TempDir>,
    session: Option<String>,
    blocked: Vec<String>,
    blocked_count: usize,
    done: bool,
    /// The URL of the page last loaded (`None`: none yet, or the last load failed).
    current: Option<String>,
    /// The tab's main frame.
    main_frame: String,
    /// Marks the document an action starts on (to tell when it is replaced).
    marks: u64,
    /// During an action: a main-frame document was requested; one was blocked (its URL).
    nav_requested: bool,
    nav_blocked: Option<String>,
}

impl Browser {
    fn launch(cfg: &BrowserConfig) -> std::io::Result<Browser> {
        let profile = tempfile::Builder::new()
            .prefix("tardbot-browser-")
            .tempdir()?;
        // fd 3: commands to the browser; fd 4: its answers.
        let (cmd_read, cmd_write) = cdp::pipe()?;
        let (ans_read, ans_write) = cdp::pipe()?;
        let (r3, w4) = (cdp::raw(&cmd_read), cdp::raw(&ans_write));
        let mut command = Command::new(&cfg.chromium);
        command
            .args(cfg.chromium_args(profile.path()))
            .env_clear()
            .env("HOME", profile.path())
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("LANG", "C.UTF-8")
            .current_dir(profile.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            command.pre_exec(move || {
                if libc::setsid() < 0
                    || libc::dup2(r3, 3) < 0
                    || libc::dup2(w4, 4) < 0
                    || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn()?;
        drop((cmd_read, ans_write));
        let sid = child.id() as libc::pid_t;
        Ok(Browser {
            child,
            sid,
            cdp: Cdp::new(cmd_write, ans_read),
            profile: Some(profile),
            session: None,
            blocked: Vec::new(),
            blocked_count: 0,
            done: false,
            current: None,
            main_frame: String::new(),
            marks: 0,
            nav_requested: false,
            nav_blocked: None,
        })
    }

    /// Sends a command and waits for its answer, handling the events that come meanwhile (the
    /// paused requests above all: each is let through or failed at once).
    fn call(
        &mut self,
        cfg: &BrowserConfig,
        method: &str,
        params: Value,
        deadline: Instant,
    ) -> Result<Value, VisitError> {
        let id = self.cdp.send(method, params, self.session.as_deref())?;
        loop {
            let msg = self.cdp.recv(deadline)?;
            if msg.get("method").is_some() {
                self.on_event(cfg, &msg)?;
                continue;
            }
            if msg["id"] == id {
                if let Some(err) = msg.get("error") {
                    return Err(VisitError::Page(format!("browser: {method}: {err}")));
                }
                return Ok(msg["result"].clone());
            }
        }
    }

    fn on_event(&mut self, cfg: &BrowserConfig, msg: &Value) -> Result<(), VisitError> {
        if msg["method"] != "Fetch.requestPaused" {
            return Ok(());
        }
        let p = &msg["params"];
        let request_id = p["requestId"].clone();
        let url = p["request"]["url"].as_str().unwrap_or("");
        let session = msg["sessionId"].as_str().map(str::to_string);
        let main_document = p["resourceType"] == "Document"
            && !self.main_frame.is_empty()
            && p["frameId"].as_str() == Some(self.main_frame.as_str());
        self.nav_requested |= main_document;
        if cfg.check_url(url).is_ok() {
            self.cdp.send(
                "Fetch.continueRequest",
                json!({"requestId": request_id}),
                session.as_deref(),
            )?;
        } else {
            self.blocked_count += 1;
            if main_document && self.nav_blocked.is_none() {
                let mut u = url.to_string();
                truncate_at_char(&mut u, 300);
                self.nav_blocked = Some(u);
            }
            if self.blocked.len() < MAX_BLOCKED_LISTED {
                let mut u = url.to_string();
                truncate_at_char(&mut u, 300);
                self.blocked.push(u);
            }
            self.cdp.send(
                "Fetch.failRequest",
                json!({"requestId": request_id, "errorReason": "BlockedByClient"}),
                session.as_deref(),
            )?;
        }
        Ok(())
    }

    fn eval(
        &mut self,
        cfg: &BrowserConfig,
        expression: &str,
        deadline: Instant,
    ) -> Result<Value, VisitError> {
        let r = self.call(
            cfg,
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
            deadline,
        )?;
        if let Some(e) = r.get("exceptionDetails") {
            return Err(VisitError::Page(format!("browser: script failed: {e}")));
        }
        Ok(r["result"]["value"].clone())
    }

    /// Opens the tab every call uses, with request interception on.
    fn open_tab(&mut self, cfg: &BrowserConfig, deadline: Instant) -> Result<(), VisitError> {
        let target = self.call(
            cfg,
            "Target.createTarget",
            json!({"url": "about:blank"}),
            deadline,
        )?;
        let attached = self.call(
            cfg,
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
            deadline,
        )?;
        let Some(session) = attached["sessionId"].as_str() else {
            return Err(VisitError::Page("browser: no session for the tab".into()));
        };
        self.session = Some(session.to_string());
        let tree = self.call(cfg, "Page.getFrameTree", json!({}), deadline)?;
        self.main_frame = tree["frameTree"]["frame"]["id"]
            .as_str()
            .or(target["targetId"].as_str())
            .unwrap_or("")
            .to_string();
        self.call(
            cfg,
            "Fetch.enable",
            json!({"patterns": [{"urlPattern": "*"}]}),
            deadline,
        )?;
        Ok(())
    }

    /// One call: opens `url` if given, does `step`, returns its result.
    fn step(
        &mut self,
        cfg: &BrowserConfig,
        url: Option<&str>,
        step: &Step,
        deadline: Instant,
    ) -> Result<Value, VisitError> {
        self.blocked.clear();
        self.blocked_count = 0;
        self.nav_requested = false;
        self.nav_blocked = None;
        if let Some(url) = url {
            self.current = None;
            self.navigate(cfg, url, deadline)?;
            self.current = Some(url.to_string());
        }
        let action = match step {
            Step::Show(action) => *action,
            Step::Click {
                selector,
                link_text,
            } => {
                let script = format!(
                    "const sel = {}, text = {}; let el = null; \
                     if (sel !== null) {{ el = document.querySelector(sel); }} else {{ \
                       const want = text.trim().toLowerCase(); \
                       const all = Array.from(document.querySelectorAll('a, button, input[type=submit], input[type=button], [role=button], [onclick]')); \
                       const t = e => (e.innerText || e.value || '').trim().toLowerCase(); \
                       el = all.find(e => t(e) === want) || all.find(e => t(e).includes(want)) || null; }} \
                     if (!el) return 'nothing to click matches ' + (sel !== null ? 'selector ' + sel : 'text ' + JSON.stringify(text)); \
                     if (el.removeAttribute) el.removeAttribute('target'); \
                     if (el.form) el.form.removeAttribute('target'); \
                     el.click(); return null;",
                    serde_json::to_string(selector).unwrap_or_default(),
                    serde_json::to_string(link_text).unwrap_or_default(),
                );
                self.act(cfg, &script, deadline)?;
                Action::Read
            }
            Step::FillAndSubmit { fields, submit } => {
                let fields: Map<String, Value> =
                    fields.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
                let script = format!(
                    "const fields = {}, submit = {}; let form = null; \
                     for (const [sel, val] of Object.entries(fields)) {{ \
                       const el = document.querySelector(sel); \
                       if (!el) return 'no field matches selector ' + sel; \
                       if (el.type === 'checkbox' || el.type === 'radio') {{ \
                         el.checked = !['', 'false', 'off', '0'].includes(val); }} \
                       else {{ el.value = val; }} \
                       el.dispatchEvent(new Event('input', {{bubbles: true}})); \
                       el.dispatchEvent(new Event('change', {{bubbles: true}})); \
                       form = form || el.form; }} \
                     if (form) form.removeAttribute('target'); \
                     if (submit !== null) {{ \
                       const b = document.querySelector(submit); \
                       if (!b) return 'nothing to click matches selector ' + submit; \
                       if (b.form) b.form.removeAttribute('target'); \
                       b.click(); return null; }} \
                     if (!form) return 'the fields are in no form: give `submit` (a button to click)'; \
                     if (form.requestSubmit) form.requestSubmit(); else form.submit(); \
                     return null;",
                    Value::Object(fields),
                    serde_json::to_string(submit).unwrap_or_default(),
                );
                self.act(cfg, &script, deadline)?;
                Action::Read
            }
        };
        self.finish(cfg, action, deadline)
    }

    /// Navigates the tab to `url` and waits for the page to load.
    fn navigate(
        &mut self,
        cfg: &BrowserConfig,
        url: &str,
        deadline: Instant,
    ) -> Result<(), VisitError> {
        let nav = self.call(cfg, "Page.navigate", json!({"url": url}), deadline)?;
        if let Some(err) = nav["errorText"].as_str().filter(|e| !e.is_empty()) {
            return Err(VisitError::Page(
                self.with_blocked(format!("could not load {url}: {err}")),
            ));
        }
        self.wait_loaded(cfg, deadline)
    }

    fn wait_loaded(&mut self, cfg: &BrowserConfig, deadline: Instant) -> Result<(), VisitError> {
        let mut pause = Duration::from_millis(20);
        while self.eval(cfg, "document.readyState", deadline)? != json!("complete") {
            if Instant::now() >= deadline {
                return Err(CdpError::Timeout.into());
            }
            std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
            pause = (pause * 2).min(Duration::from_millis(200));
        }
        Ok(())
    }

    /// Runs `script` (a function body returning `null`, or why it could not act) on a page marked
    /// as the current document; then, if the main frame starts a navigation, waits until the new
    /// document has loaded (or its request was blocked).
    fn act(
        &mut self,
        cfg: &BrowserConfig,
        script: &str,
        deadline: Instant,
    ) -> Result<(), VisitError> {
        self.marks += 1;
        let mark = self.marks;
        self.nav_requested = false;
        self.nav_blocked = None;
        let r = self.eval(
            cfg,
            &format!(
                "(() => {{ window.__tardbot_mark = {mark}; try {{ {script} }} catch (e) {{ return String(e); }} }})()"
            ),
            deadline,
        )?;
        if let Some(why) = r.as_str() {
            return Err(VisitError::Page(why.to_string()));
        }
        let start = Instant::now();
        let probe = format!("String(window.__tardbot_mark === {mark}) + ' ' + document.readyState");
        loop {
            // While a document is replaced, evaluation may fail: that is "not there yet".
            let state = match self.eval(cfg, &probe, deadline) {
                Ok(v) => v.as_str().unwrap_or("").to_string(),
                Err(VisitError::Page(_)) => String::new(),
                Err(e) => return Err(e),
            };
            if state == "false complete" {
                return Ok(()); // a new document, loaded
            }
            if state.starts_with("true") {
                let waited = start.elapsed();
                if self.nav_blocked.is_some() && waited > Duration::from_millis(1000) {
                    return Ok(()); // blocked and no error page came: `finish` reports it
                }
                if !self.nav_requested && waited > NO_NAVIGATION_AFTER {
                    return Ok(()); // no navigation: the same page
                }
            }
            if Instant::now() >= deadline {
                return Err(CdpError::Timeout.into());
            }
            std::thread::sleep(Duration::from_millis(30));
        }
    }

    /// Checks where the page ended, and returns its text or links.
    fn finish(
        &mut self,
        cfg: &BrowserConfig,
        action: Action,
        deadline: Instant,
    ) -> Result<Value, VisitError> {
        if let Some(url) = self.nav_blocked.take() {
            return Err(VisitError::Page(self.with_blocked(format!(
                "could not load {url}: net::ERR_BLOCKED_BY_CLIENT (host or scheme not allowed)"
            ))));
        }
        let final_url = self.eval(cfg, "location.href", deadline)?;
        let final_url = final_url.as_str().unwrap_or("").to_string();
        if let Err(why) = cfg.check_url(&final_url) {
            return Err(VisitError::Page(self.with_blocked(format!(
                "the page ended on {final_url}, which is refused: {why}"
            ))));
        }
        self.current = Some(final_url.clone());
        let mut out = match action {
            Action::Read => self.read(cfg, deadline)?,
            Action::Links => self.links(cfg, deadline)?,
        };
        out["url"] = json!(final_url);
        if self.blocked_count > 0 {
            out["blocked"] = json!(self.blocked);
            out["blocked_count"] = json!(self.blocked_count);
            out["note"] = json!("requests to hosts or schemes not allowed were blocked");
        }
        Ok(out)
    }

    fn read(&mut self, cfg: &BrowserConfig, deadline: Instant) -> Result<Value, VisitError> {
        // At most max_text_bytes UTF-16 units come over the pipe (each at least one byte in UTF-8).
        let cap = cfg.max_text_bytes + 1;
        let v = self.eval(
            cfg,
            &format!(
                "(() => {{ const t = document.body ? document.body.innerText : ''; \
                 return {{title: document.title, total: t.length, text: t.slice(0, {cap})}}; }})()"
            ),
            deadline,
        )?;
        let total = v["total"].as_u64().unwrap_or(0);
        let mut text = v["text"].as_str().unwrap_or("").to_string();
        // `total` counts UTF-16 units, as JavaScript does.
        let truncated =
            text.len() > cfg.max_text_bytes || (total as usize) > text.encode_utf16().count();
        let mut out = json!({"title": v["title"].as_str().unwrap_or("")});
        if truncated {
            truncate_at_char(&mut text, cfg.max_text_bytes);
            let shown = text.encode_utf16().count();
            text.push_str(&format!(
                "\n[… truncated: {shown} of {total} characters shown]"
            ));
        }
        out["text"] = json!(text);
        out["truncated"] = json!(truncated);
        Ok(out)
    }

    fn links(&mut self, cfg: &BrowserConfig, deadline: Instant) -> Result<Value, VisitError> {
        let max = cfg.max_links;
        let v = self.eval(
            cfg,
            &format!(
                "(() => {{ const a = Array.from(document.links); return {{title: document.title, \
                 total: a.length, links: a.slice(0, {max}).map(l => ({{text: \
                 (l.innerText || '').trim().slice(0, 200), href: String(l.href).slice(0, 2048)}}))}}; }})()"
            ),
            deadline,
        )?;
        let total = v["total"].as_u64().unwrap_or(0);
        let links: Vec<Value> = v["links"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|l| {
                        let href = l["href"].as_str().unwrap_or("");
                        json!({
                            "text": l["text"].as_str().unwrap_or(""),
                            "href": href,
                            "allowed": cfg.check_url(href).is_ok(),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(json!({
            "title": v["title"].as_str().unwrap_or(""),
            "links": links,
            "links_total": total,
            "truncated": total as usize > links.len(),
        }))
    }

    fn with_blocked(&self, msg: String) -> String {
        if self.blocked.is_empty() {
            msg
        } else {
            format!(
                "{msg}; blocked (host or scheme not allowed): {}",
                self.blocked.join(", ")
            )
        }
    }

    /// Kills every process of the browser's session, and any process naming its profile; reaps
    /// the browser; removes the profile.
    fn shutdown(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        unsafe { libc::kill(-self.sid, libc::SIGKILL) };
        let profile = self.profile.take();
        if let Some(p) = &profile {
            kill_strays(self.sid, p.path());
        }
        loop {
            match self.child.wait() {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                _ => break,
            }
        }
        // Strays that were starting while we looked.
        if let Some(p) = &profile {
            kill_strays(self.sid, p.path());
        }
        drop(profile);
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// SIGKILLs every process in session `sid` or whose command line contains `profile`.
fn kill_strays(sid: libc::pid_t, profile: &Path) {
    let needle = profile.as_os_str().as_encoded_bytes();
    for pid in processes_matching(sid, needle) {
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Live processes (zombies left out) in session `sid` or whose command line contains `needle`.
pub fn processes_matching(sid: libc::pid_t, needle: &[u8]) -> Vec<libc::pid_t> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<libc::pid_t>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp session ...
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let fields: Vec<&str> = after.split_whitespace().collect();
        if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
            continue;
        }
        let in_session = fields.get(3).and_then(|s| s.parse::<libc::pid_t>().ok()) == Some(sid);
        let names = !needle.is_empty()
            && std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle));
        if in_session || names {
            out.push(pid);
        }
    }
    out
}

fn truncate_at_char(s: &mut String, max_bytes: usize) {
    if s.len() > max_bytes {
        let mut i = max_bytes;
        while !s.is_char_boundary(i) {
            i -= 1;
        }
        s.truncate(i);
    }
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(hosts: &[&str]) -> BrowserConfig {
        BrowserConfig {
            allowed_hosts: hosts.iter().map(|s| s.to_string()).collect(),
            only_allowed_hosts: true,
            ..BrowserConfig::default()
        }
    }

    fn public(hosts: &[&str]) -> BrowserConfig {
        BrowserConfig {
            only_allowed_hosts: false,
            ..cfg(hosts)
        }
    }

    /// The default policy: public hosts yes; loopback, private, link-local, unspecified and
    /// non-canonical IPv4 forms no, unless listed.
    #[test]
    fn the_default_policy_refuses_internal_hosts_unless_listed() {
        let c = public(&["127.0.0.1"]);
        assert!(!BrowserConfig::default().only_allowed_hosts);
        for ok in [
            "http://127.0.0.1:8080/",
            "https://example.org/",
            "http://8.8.8.8/",
            "http://172.32.0.1/",
            "http://[2001:db8::1]/",
            "http://1.2.3.4.example/",
        ] {
            assert!(c.check_url(ok).is_ok(), "{ok} refused");
        }
        for bad in [
            "http://127.0.0.2/",
            "http://localhost/",
            "http://a.localhost/",
            "http://10.0.0.1/",
            "http://172.16.0.1/",
            "http://172.31.255.255/",
            "http://192.168.1.1/",
            "http://169.254.169.254/",
            "http://0.0.0.0/",
            "http://100.64.0.1/",
            "http://[::1]/",
            "http://[::]/",
            "http://[fc00::1]/",
            "http://[fd12::1]/",
            "http://[fe80::1]/",
            "http://[::ffff:7f00:1]/",
            "http://[::ffff:a00:1]/",
            "http://127.1/",
            "http://2130706433/",
            "http://0x7f.0.0.1/",
            // No `//`: Chromium reads these as http://127.0.0.1/ and http://localhost/.
            "http:127.0.0.2",
            "http:/localhost:8080/",
            "https:",
            "http:///path",
            "http://010.0.0.1/",
            "http://127.0.0.1./",
            "file:///etc/passwd",
        ] {
            assert!(c.check_url(bad).is_err(), "{bad} accepted");
        }
        assert!(
            BrowserConfig::default()
                .check_url("http://10.0.0.1/")
                .unwrap_err()
                .contains("private")
        );
    }

    /// The resolver's second layer under the default policy: internal literals and localhost
    /// resolve to nothing, the listed hosts excepted.
    #[test]
    fn chromium_resolves_no_internal_literal_by_default() {
        let args = public(&["127.0.0.1"]).chromium_args(Path::new("/p"));
        let rules = args
            .iter()
            .find(|a| a.starts_with("--host-resolver-rules="))
            .unwrap();
        for r in [
            "MAP 127.* ~NOTFOUND",
            "MAP 10.* ~NOTFOUND",
            "MAP 172.16.* ~NOTFOUND",
            "MAP 172.31.* ~NOTFOUND",
            "MAP 192.168.* ~NOTFOUND",
            "MAP 169.254.* ~NOTFOUND",
            "MAP localhost ~NOTFOUND",
            "MAP [::1] ~NOTFOUND",
            "MAP fe8*:* ~NOTFOUND",
            "EXCLUDE 127.0.0.1",
        ] {
            assert!(rules.contains(r), "{r}: {rules}");
        }
        assert!(!rules.contains("MAP * "), "{rules}");
    }

    #[test]
    fn urls_are_checked_for_scheme_and_host() {
        let c = cfg(&["127.0.0.1", "*.example.org"]);
        assert!(c.check_url("http://127.0.0.1:8080/a?b#c").is_ok());
        assert!(c.check_url("HTTPS://127.0.0.1").is_ok());
        assert!(c.check_url("https://docs.example.org/x").is_ok());
        for bad in [
            "file:///etc/passwd",
            "chrome://version",
            "javascript:alert(1)",
            "data:text/html,hi",
            "ftp://127.0.0.1/",
            "http://127.0.0.2/",
            "http://localhost/",
            "https://example.org/",
            "https://evilexample.org/",
            "http://127.0.0.1@evil.com/",
            "http://evil.com\\@127.0.0.1/",
            "http://127.0.0.1 .evil.com/",
            "http://%31%32%37.0.0.1/",
            "http://127.0.0.1./",
            "http://127.0.0.1:80x/",
            "/relative",
        ] {
            assert!(c.check_url(bad).is_err(), "{bad} accepted");
        }
        assert!(
            cfg(&[])
                .check_url("http://127.0.0.1/")
                .unwrap_err()
                .contains("no host is")
        );
    }

    /// The second layer: Chromium resolves only the allowed names.
    #[test]
    fn chromium_resolves_only_allowed_hosts() {
        let args = cfg(&["127.0.0.1", "*.example.org"]).chromium_args(Path::new("/p"));
        assert!(
            args.contains(
                &"--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE *.example.org"
                    .to_string()
            ),
            "{args:?}"
        );
        assert!(args.contains(&"--no-proxy-server".to_string()));
        assert!(args.contains(&"--user-data-dir=/p".to_string()));
    }

    #[test]
    fn allowed_entries_are_validated() {
        for ok in ["127.0.0.1", "example.org", "*.example.org", "[::1]"] {
            assert!(allowed_entry_ok(ok), "{ok}");
        }
        for bad in [
            "",
            "*",
            "Example.org",
            "http://x",
            "a b",
            "x/",
            ".x",
            "*.",
            "*.*.x",
        ] {
            assert!(!allowed_entry_ok(bad), "{bad}");
        }
    }
}
