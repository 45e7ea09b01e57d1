//! `bench tools`: latency of the built-in tools, each measured on this machine with nothing off
//! it: a sandboxed Python call, cold (a fresh tool each round, `print(1)`); a `search` query against
//! a recorded DuckDuckGo page served on 127.0.0.1; the offline `search` index of the bundled prose
//! sample, built and queried (a fresh tool each query, as a chat session opens it); a browser page load on loopback (a fresh
//! Chromium each round, and a page load in the already running one). Each is skipped, with a
//! message, where bubblewrap or Chromium is missing.

use serde_json::{Map, Value, json};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};
use tardbot_tools::Tool;
use tardbot_tools::browser::{Action, BrowserConfig, BrowserTool};
use tardbot_tools::python::{PythonTool, SandboxConfig};
use tardbot_tools::search::{SearchConfig, SearchTool};

/// A DuckDuckGo results page, recorded (the search tests' fixture).
const DDG_RESULTS: &str = include_str!("../../tools/tests/fixtures/duckduckgo/results.html");

/// The page the browser loads.
const PAGE: &str = "<html><head><title>bench</title></head><body><h1>Bench page</h1>\
                    <p>A paragraph of text.</p><a href=\"/\">home</a></body></html>";

/// Median, min and max of `ms` (not empty).
fn stats(ms: &mut [f64]) -> Value {
    ms.sort_by(f64::total_cmp);
    let n = ms.len();
    let median = if n % 2 == 1 {
        ms[n / 2]
    } else {
        (ms[n / 2 - 1] + ms[n / 2]) / 2.0
    };
    let r = |x: f64| (x * 100.0).round() / 100.0;
    json!({"median_ms": r(median), "min_ms": r(ms[0]), "max_ms": r(ms[n - 1]), "rounds": n})
}

/// Serves `body` (as text/html) to every request on 127.0.0.1; returns the base URL.
fn serve(body: &'static str) -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let base = format!("http://{}", listener.local_addr()?);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || answer(stream, body));
        }
    });
    Ok(base)
}

fn answer(mut s: TcpStream, body: &str) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut req = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = req.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&req[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut got = req.len() - head_end;
    while got < len {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    let _ = write!(
        s,
        "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
}

fn args(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn python(rounds: usize) -> Result<Value, String> {
    PythonTool::new(SandboxConfig::default()).check_sandbox()?;
    let mut t = Vec::new();
    for _ in 0..rounds {
        let start = Instant::now();
        let tool = PythonTool::new(SandboxConfig::default());
        let r = tool.run("print(1)").map_err(|e| e.to_string())?;
        t.push(ms(start.elapsed()));
        if r.stdout != "1\n" || !r.sandboxed {
            return Err(format!("unexpected result: {}", r.to_json()));
        }
    }
    Ok(stats(&mut t))
}

fn search(rounds: usize) -> Result<Value, String> {
    let base = serve(DDG_RESULTS).map_err(|e| e.to_string())?;
    let cfg = SearchConfig::duckduckgo(&format!("{base}/html/"), Duration::from_secs(10), 5);
    let mut t = Vec::new();
    for _ in 0..rounds {
        let tool = SearchTool::new(&cfg)?;
        let start = Instant::now();
        let v = tool
            .call(&args(json!({"query": "rust programming language"})))
            .map_err(|e| e.to_string())?;
        t.push(ms(start.elapsed()));
        if v["results"].as_array().is_none_or(|a| a.is_empty()) {
            return Err(format!("no results: {v}"));
        }
    }
    Ok(stats(&mut t))
}

/// The bundled prose sample the offline index is built from.
const PROSE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/sample/prose.txt");

/// Queries of the offline index (words from the sample's documents, and some it lacks).
const QUERIES: [&str; 6] = [
    "the rightful duke of milan",
    "in the beginning god created the heaven and the earth",
    "hacker ethic",
    "twenty thousand leagues under the sea",
    "quantum chromodynamics",
    "what did the serpent say to the woman",
];

/// (building the index of the sample, a query through a fresh `search` tool).
fn search_offline(rounds: usize) -> Result<(Value, Value), String> {
    use tardbot_tools::search::offline::{PASSAGE_CHARS, build_index, passages_of};
    let text = std::fs::read_to_string(PROSE)
        .map_err(|e| format!("{PROSE}: {e} (run from a checkout of the repository)"))?;
    let passages: Vec<_> = text
        .split("<|endoftext|>")
        .enumerate()
        .flat_map(|(i, doc)| passages_of("prose", &i.to_string(), doc, PASSAGE_CHARS))
        .collect();
    let (mut build, mut query) = (Vec::new(), Vec::new());
    let mut n = 0;
    for r in 0..rounds {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let start = Instant::now();
        let stats = build_index(dir.path(), passages.clone(), &|| false)
            .map_err(|e| e.to_string())?
            .ok_or("cancelled")?;
        build.push(ms(start.elapsed()));
        n = stats.passages;
        let cfg = SearchConfig::offline(dir.path(), 5);
        let q = QUERIES[r % QUERIES.len()];
        let start = Instant::now();
        let v = SearchTool::new(&cfg)?
            .call(&args(json!({ "query": q })))
            .map_err(|e| e.to_string())?;
        query.push(ms(start.elapsed()));
        if v["results"].as_array().is_none_or(|a| a.is_empty()) && r % QUERIES.len() != 4 {
            return Err(format!("no results for {q:?}: {v}"));
        }
    }
    let mut build = stats(&mut build);
    build["passages"] = json!(n);
    build["bytes"] = json!(text.len());
    Ok((build, stats(&mut query)))
}

/// (a fresh Chromium and its first page, a page load in the running browser).
fn browser(rounds: usize) -> Result<(Value, Value), String> {
    let cfg = BrowserConfig {
        allowed_hosts: vec!["127.0.0.1".into()],
        timeout: Duration::from_secs(30),
        ..BrowserConfig::default()
    };
    if !cfg.chromium.exists() {
        return Err(format!(
            "no Chromium at {} (apt-get install chromium)",
            cfg.chromium.display()
        ));
    }
    let url = format!("{}/", serve(PAGE).map_err(|e| e.to_string())?);
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let start = Instant::now();
        let tool = BrowserTool::new(cfg.clone());
        let v = tool.open(&url, Action::Read).map_err(|e| e.to_string())?;
        cold.push(ms(start.elapsed()));
        if !v["text"].as_str().unwrap_or("").contains("Bench page") {
            return Err(format!("unexpected page: {v}"));
        }
        let start = Instant::now();
        tool.open(&url, Action::Read).map_err(|e| e.to_string())?;
        warm.push(ms(start.elapsed()));
    }
    Ok((stats(&mut cold), stats(&mut warm)))
}

/// Runs the three measurements, prints a table, returns the figures (`null` where skipped).
pub fn tools(rounds: usize) -> anyhow::Result<Value> {
    anyhow::ensure!(rounds >= 1, "--rounds must be at least 1");
    let mut rows: Vec<(&str, Result<Value, String>)> = vec![
        ("python print(1), cold (sandboxed)", python(rounds)),
        ("search, recorded DuckDuckGo page", search(rounds)),
    ];
    let (build, query) = match search_offline(rounds) {
        Ok((b, q)) => (Ok(b), Ok(q)),
        Err(e) => (Err(e.clone()), Err(e)),
    };
    rows.push(("search, offline: index the sample", build));
    rows.push(("search, offline: one query", query));
    let (cold, warm) = match browser(rounds) {
        Ok((c, w)) => (Ok(c), Ok(w)),
        Err(e) => (Err(e.clone()), Err(e)),
    };
    rows.push(("browser, fresh Chromium + page", cold));
    rows.push(("browser, page load (running)", warm));
    println!("tools benchmark ({rounds} rounds, loopback only; ms)");
    println!("  {:<36} {:>9} {:>9} {:>9}", "", "median", "min", "max");
    let mut skipped = Map::new();
    let mut fig = |key: &str, r: &Result<Value, String>| match r {
        Ok(v) => v.clone(),
        Err(why) => {
            skipped.insert(key.into(), json!(why));
            Value::Null
        }
    };
    let figures = [
        ("python_cold", fig("python_cold", &rows[0].1)),
        ("search_local", fig("search_local", &rows[1].1)),
        (
            "search_offline_build",
            fig("search_offline_build", &rows[2].1),
        ),
        (
            "search_offline_query",
            fig("search_offline_query", &rows[3].1),
        ),
        ("browser_cold", fig("browser_cold", &rows[4].1)),
        ("browser_page_load", fig("browser_page_load", &rows[5].1)),
    ];
    for ((label, r), _) in rows.iter().zip(&figures) {
        match r {
            Ok(v) => println!(
                "  {label:<36} {:>9.1} {:>9.1} {:>9.1}",
                v["median_ms"].as_f64().unwrap_or(f64::NAN),
                v["min_ms"].as_f64().unwrap_or(f64::NAN),
                v["max_ms"].as_f64().unwrap_or(f64::NAN)
            ),
            Err(why) => println!("  {label:<36} skipped: {why}"),
        }
    }
    let mut out = json!({"bench": "tools", "rounds": rounds});
    for (k, v) in figures {
        out[k] = v;
    }
    out["skipped"] = Value::Object(skipped);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_are_median_min_max() {
        let v = stats(&mut [5.0, 1.0, 3.0]);
        assert_eq!(v["median_ms"], 3.0);
        assert_eq!(v["min_ms"], 1.0);
        assert_eq!(v["max_ms"], 5.0);
        assert_eq!(stats(&mut [1.0, 2.0])["median_ms"], 1.5);
    }

    /// The recorded page is served and parsed (no network, no sandbox needed).
    #[test]
    fn search_against_the_recorded_page_returns_results() {
        let v = search(1).unwrap();
        assert_eq!(v["rounds"], 1);
    }

    /// The bundled sample is indexed and found again.
    #[test]
    fn the_offline_index_of_the_sample_answers() {
        let (build, query) = search_offline(1).unwrap();
        assert!(build["passages"].as_u64().unwrap() > 1000, "{build}");
        assert_eq!(query["rounds"], 1);
    }
}
