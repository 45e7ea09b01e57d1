//! The built-in tools for the toolcall stage's data builder
//! ([`tardbot_toolcall::ToolRunner`]): `python`, `search` and `browser` really run to make its
//! training conversations.
//!
//! `browser` opens pages the generator wrote, served by a small HTTP server on 127.0.0.1 for the
//! length of one [`ToolRunner::browse`], with a Chromium allowed that host only; the port is
//! written as [`SITE`]'s in the calls and results, so examples do not depend on it.
//!
//! `python` runs the generator's own programs (never a model's), so it runs them without the
//! sandbox where bubblewrap is missing (`allow_unsandboxed`), in a child process as always; the
//! result's fields that vary between runs of the same program (its duration, whether a sandbox was
//! there) are dropped, so the examples are the same bits on every machine and every build.

use crate::browser::BrowserConfig;
use crate::python::SandboxConfig;
use crate::search::SearchConfig;
use crate::search::offline::OfflineIndex;
use crate::{ToolRegistry, ToolSettings};
use serde_json::{Map, Value};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tardbot_toolcall::data::SITE;
use tardbot_toolcall::{ToolRunner, ToolSpec};

/// Runs the built-in tools with the data builder's settings.
pub struct BuiltinRunner;

/// Result fields that differ between two runs of the same call.
const VARYING: [&str; 3] = ["duration_s", "sandboxed", "note"];

impl ToolRunner for BuiltinRunner {
    fn run(
        &self,
        name: &str,
        arguments: &Map<String, Value>,
        search_index: Option<&Path>,
    ) -> Result<(ToolSpec, Value), String> {
        let settings = ToolSettings {
            python: SandboxConfig {
                allow_unsandboxed: true,
                ..SandboxConfig::default()
            },
            search: match search_index {
                Some(dir) => SearchConfig::offline(dir, 5),
                None => SearchConfig::default(),
            },
            ..ToolSettings::default()
        };
        let registry = ToolRegistry::builtin_with(&[name], &settings)?;
        let tool = registry
            .get(name)
            .ok_or_else(|| format!("no built-in tool `{name}`"))?;
        let mut result = tool
            .call(arguments)
            .map_err(|e| format!("the {name} tool failed: {e}"))?;
        if let Some(o) = result.as_object_mut() {
            for k in VARYING {
                o.remove(k);
            }
        }
        Ok((tool.spec(), result))
    }

    fn sample_passages(
        &self,
        search_index: &Path,
        n: usize,
        seed: u64,
    ) -> Result<Vec<(String, String)>, String> {
        OfflineIndex::open(search_index)
            .map_err(|e| e.to_string())?
            .sample(n, seed)
            .map_err(|e| e.to_string())
    }

    fn browse(
        &self,
        pages: &[(String, String)],
        calls: &[Map<String, Value>],
    ) -> Result<(ToolSpec, Vec<Value>), String> {
        let site = PageServer::start(pages.to_vec())
            .map_err(|e| format!("could not serve the browser's pages on 127.0.0.1: {e}"))?;
        let origin = format!("http://127.0.0.1:{}", site.port);
        let settings = ToolSettings {
            browser: BrowserConfig {
                allowed_hosts: vec!["127.0.0.1".into()],
                only_allowed_hosts: true,
                ..BrowserConfig::default()
            },
            ..ToolSettings::default()
        };
        let registry = ToolRegistry::builtin_with(&["browser"], &settings)?;
        let tool = registry
            .get("browser")
            .ok_or("no built-in tool `browser`")?;
        let mut results = Vec::with_capacity(calls.len());
        for call in calls {
            let real: Value = serde_json::from_str(
                &Value::Object(call.clone())
                    .to_string()
                    .replace(SITE, &origin),
            )
            .map_err(|e| e.to_string())?;
            let Value::Object(real) = real else {
                unreachable!("an object stays an object")
            };
            let result = tool.call(&real).map_err(|e| {
                format!(
                    "the browser tool failed on {}: {e}",
                    Value::Object(call.clone())
                )
            })?;
            let result = serde_json::from_str(&result.to_string().replace(&origin, SITE))
                .map_err(|e| e.to_string())?;
            results.push(result);
        }
        Ok((tool.spec(), results))
    }
}

/// A static site on 127.0.0.1 (an ephemeral port), one thread per connection, until dropped.
struct PageServer {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl PageServer {
    fn start(pages: Vec<(String, String)>) -> std::io::Result<PageServer> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let pages = Arc::new(pages);
        let stopped = stop.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let pages = pages.clone();
                // A connection of its own: Chromium opens speculative ones that never ask.
                std::thread::spawn(move || serve_page(conn, &pages));
            }
        });
        Ok(PageServer { port, stop })
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Answers one GET with the page at its path (404 otherwise), then closes.
fn serve_page(mut conn: TcpStream, pages: &[(String, String)]) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split_whitespace().nth(1).unwrap_or("/");
    let (status, body) = match pages.iter().find(|(p, _)| p == path) {
        Some((_, html)) => ("200 OK", html.as_str()),
        None => (
            "404 Not Found",
            "<!doctype html><title>Not found</title><p>Not found.</p>",
        ),
    };
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}
