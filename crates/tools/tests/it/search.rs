//! The `search` tool against recorded DuckDuckGo pages (hand-written in DuckDuckGo's structure, see
//! tests/fixtures/duckduckgo/README.md) served from 127.0.0.1: nothing here reaches the internet.

use serde_json::{Map, Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tardbot_tokens::chat::{Conversation, Message, Role};
use tardbot_toolcall::ParsedCall;
use tardbot_tools::search::{DEFAULT_BASE_URL, SearchConfig, SearchTool};
use tardbot_tools::tool_loop::BoxError;
use tardbot_tools::{
    Assistant, LoopConfig, Tool, ToolError, ToolRegistry, ToolSettings, TurnOutcome, run_turn,
};

fn fixture(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/duckduckgo")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
struct Seen {
    request_line: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The form field `name` of the body, decoded.
    fn form(&self, name: &str) -> Option<String> {
        reqwest::Url::parse(&format!("http://form.invalid/?{}", self.body))
            .ok()?
            .query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }
}

/// A stand-in for DuckDuckGo on 127.0.0.1: answers every request with `status` and `body`
/// (`status` None: reads the request and never answers), and records what it was sent.
struct Server {
    base_url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    fn start(status: Option<u16>, body: String) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base_url = format!("http://{}/html/", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (record, body) = (record.clone(), body.clone());
                std::thread::spawn(move || serve(stream, status, &body, &record));
            }
        });
        Server { base_url, seen }
    }

    fn tool(&self, max_results: usize, timeout: Duration) -> SearchTool {
        SearchTool::new(&SearchConfig::duckduckgo(
            &self.base_url,
            timeout,
            max_results,
        ))
        .unwrap()
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(stream: TcpStream, status: Option<u16>, body: &str, record: &Mutex<Vec<Seen>>) {
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut req_body = vec![0; len];
    if reader.read_exact(&mut req_body).is_err() {
        return;
    }
    record.lock().unwrap().push(Seen {
        request_line: request_line.trim_end().to_string(),
        headers,
        body: String::from_utf8_lossy(&req_body).into_owned(),
    });
    let Some(status) = status else {
        // Never answers: holds the connection open past any test's timeout.
        std::thread::sleep(Duration::from_secs(30));
        return;
    };
    let mut stream = reader.into_inner();
    let _ = write!(
        stream,
        "HTTP/1.1 {status} X\r\ncontent-type: text/html; charset=UTF-8\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.flush();
}

fn args(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

fn search(tool: &SearchTool, query: &str) -> Result<Value, ToolError> {
    tool.call(&args(json!({ "query": query })))
}

fn failure(r: Result<Value, ToolError>) -> String {
    match r {
        Err(e) => e.to_string(),
        Ok(v) => panic!("expected an error, got {v}"),
    }
}

const SECS: Duration = Duration::from_secs(10);

#[test]
fn results_are_parsed_with_redirects_decoded_and_ads_skipped() {
    let server = Server::start(Some(200), fixture("results.html"));
    let v = search(&server.tool(10, SECS), "rust programming language").unwrap();
    assert_eq!(v["backend"], "duckduckgo", "{v}");
    let results = v["results"].as_array().unwrap();
    let urls: Vec<&str> = results.iter().map(|r| r["url"].as_str().unwrap()).collect();
    assert_eq!(
        urls,
        [
            "https://www.rust-lang.org/",
            "https://en.wikipedia.org/wiki/Rust_(programming_language)",
            "https://doc.rust-lang.org/book/",
            "https://github.com/rust-lang/rust?tab=readme-ov-file&lang=en",
            "https://www.reddit.com/r/rust/",
            "https://stackoverflow.blog/2020/01/20/what-is-rust-and-why-is-it-so-popular/",
        ],
        "{v}"
    );
    assert_eq!(results[0]["title"], "Rust Programming Language");
    assert_eq!(
        results[2]["title"],
        "The Rust Programming Language - The Rust Book"
    );
    // Entities decoded, markup dropped, whitespace collapsed.
    assert_eq!(
        results[2]["snippet"],
        "by Steve Klabnik, Carol Nichols, and Chris Krycho & contributions from the Rust \
         Community. This version of the text assumes you're using Rust 1.85.0 or later."
    );
    let text = v.to_string();
    assert!(!text.contains("Bootcamp") && !text.contains("y.js"), "{v}");
    assert!(!text.contains("duckduckgo.com/l/"), "{v}");
    for r in results {
        let keys: Vec<&String> = r.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["snippet", "title", "url"], "{r}");
    }
}

#[test]
fn max_results_caps_the_list_and_the_config_caps_the_call() {
    let server = Server::start(Some(200), fixture("results.html"));
    let tool = server.tool(4, SECS);
    let two = tool
        .call(&args(json!({"query": "rust", "max_results": 2})))
        .unwrap();
    let urls: Vec<&str> = two["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["url"].as_str().unwrap())
        .collect();
    assert_eq!(
        urls,
        [
            "https://www.rust-lang.org/",
            "https://en.wikipedia.org/wiki/Rust_(programming_language)"
        ]
    );
    // More than `[tools.search] max_results` allows, or nothing said: the configured 4.
    for a in [
        json!({"query": "rust", "max_results": 50}),
        json!({"query": "rust"}),
    ] {
        let v = tool.call(&args(a)).unwrap();
        assert_eq!(v["results"].as_array().unwrap().len(), 4, "{v}");
    }
    assert!(
        failure(tool.call(&args(json!({"query": "rust", "max_results": 0}))))
            .contains("max_results")
    );
}

#[test]
fn the_request_carries_the_query() {
    let server = Server::start(Some(200), fixture("results.html"));
    search(&server.tool(5, SECS), "  héllo wörld & \"friends\"  ").unwrap();
    let seen = server.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let s = &seen[0];
    assert_eq!(s.request_line, "POST /html/ HTTP/1.1", "{s:?}");
    assert_eq!(
        s.header("content-type"),
        Some("application/x-www-form-urlencoded"),
        "{s:?}"
    );
    assert_eq!(
        s.form("q").as_deref(),
        Some("héllo wörld & \"friends\""),
        "{s:?}"
    );
    assert!(
        s.header("user-agent")
            .is_some_and(|ua| ua.starts_with("Mozilla/5.0"))
    );
}

#[test]
fn a_no_results_page_is_an_empty_list() {
    let server = Server::start(Some(200), fixture("no_results.html"));
    let v = search(&server.tool(5, SECS), "zxqvjkw qpzmxnv blorptangle").unwrap();
    assert_eq!(v, json!({"results": [], "backend": "duckduckgo"}));
}

#[test]
fn rate_limiting_is_an_error_that_says_so() {
    for status in [429, 403, 202] {
        let server = Server::start(Some(status), String::new());
        let e = failure(search(&server.tool(5, SECS), "rust"));
        assert!(
            e.contains("rate limiting") && e.contains(&format!("HTTP {status}")),
            "{status}: {e}"
        );
    }
    // The bot check DuckDuckGo serves instead of results, with HTTP 200 and with 202.
    for status in [200, 202] {
        let server = Server::start(Some(status), fixture("anomaly.html"));
        let e = failure(search(&server.tool(5, SECS), "rust"));
        assert!(e.contains("rate limiting"), "{status}: {e}");
    }
    let server = Server::start(Some(200), fixture("anomaly.html"));
    let e = failure(search(&server.tool(5, SECS), "rust"));
    assert!(e.contains("bot-check"), "{e}");
}

#[test]
fn a_page_it_does_not_understand_is_an_error_not_an_empty_list() {
    for page in [
        fixture("changed.html"),
        "<html><body><p>Service temporarily unavailable</p></body></html>".to_string(),
        String::new(),
        // Result rows whose links are gone.
        "<html><body><div class=\"result results_links\"><h2 class=\"result__title\">Rust</h2>\
         </div></body></html>"
            .to_string(),
    ] {
        let server = Server::start(Some(200), page.clone());
        let e = failure(search(&server.tool(5, SECS), "rust"));
        assert!(e.contains("HTML may have changed"), "{page}: {e}");
    }
    let server = Server::start(Some(500), "oops".into());
    assert!(failure(search(&server.tool(5, SECS), "rust")).contains("HTTP 500"));
}

#[test]
fn a_server_that_never_answers_times_out() {
    let server = Server::start(None, String::new());
    let t0 = Instant::now();
    let e = failure(search(&server.tool(5, Duration::from_millis(300)), "rust"));
    assert!(e.contains("timed out"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert_eq!(server.seen().len(), 1, "the request was sent");
}

#[test]
fn an_unreachable_base_url_is_an_error() {
    // A port nothing listens on (bound, then closed).
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tool = SearchTool::new(&SearchConfig::duckduckgo(
        &format!("http://127.0.0.1:{port}/html/"),
        SECS,
        5,
    ))
    .unwrap();
    assert!(failure(search(&tool, "rust")).contains("request to DuckDuckGo failed"));
}

#[test]
fn calls_from_inside_a_tokio_runtime_work() {
    // The CLI's `tool` command calls tools from its async main.
    let server = Server::start(Some(200), fixture("results.html"));
    let tool = server.tool(3, SECS);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let v = rt.block_on(async { search(&tool, "rust") }).unwrap();
    assert_eq!(v["results"].as_array().unwrap().len(), 3);
}

#[test]
fn the_registry_builds_it_with_its_settings_and_checks_its_arguments() {
    assert!(tardbot_tools::registry::BUILTIN.contains(&"search"));
    // The default backend is the offline index, which a registry without a run does not have.
    let e = ToolRegistry::builtin(&["search"]).err().unwrap();
    assert!(e.contains("no index") && e.contains("duckduckgo"), "{e}");
    assert_eq!(SearchConfig::default().base_url, DEFAULT_BASE_URL);

    let server = Server::start(Some(200), fixture("results.html"));
    let settings = ToolSettings {
        search: SearchConfig::duckduckgo(&server.base_url, SECS, 2),
        ..ToolSettings::default()
    };
    let tools = ToolRegistry::builtin_with(&["calculator", "search"], &settings).unwrap();
    let spec = tools.get("search").unwrap().spec();
    assert_eq!(spec.parameters["required"], json!(["query"]));
    assert_eq!(
        spec.parameters["properties"]["max_results"]["type"],
        "integer"
    );
    let check = |a: Value| {
        tools
            .check(&ParsedCall {
                name: "search".into(),
                arguments: args(a),
            })
            .map(|_| ())
    };
    let missing = check(json!({"max_results": 3})).unwrap_err();
    assert!(missing.contains("query"), "{missing}");
    assert!(check(json!({"query": 7})).is_err());
    assert!(check(json!({"query": "rust", "max_results": "three"})).is_err());
    check(json!({"query": "rust", "max_results": 3})).unwrap();

    let tool = tools.get("search").unwrap();
    let v = tool.call(&args(json!({"query": "rust"}))).unwrap();
    assert_eq!(v["results"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(server.seen().len(), 1);
}

/// Plays back turns.
struct Scripted(Vec<String>);

impl Assistant for Scripted {
    fn next_turn(&mut self, _: &Conversation) -> Result<String, BoxError> {
        Ok(self.0.remove(0))
    }
}

fn call(args: Value) -> String {
    format!(
        "<|tool_call|>{}<|/tool_call|>",
        json!({"name": "search", "arguments": args})
    )
}

#[test]
fn in_the_loop_a_call_without_a_query_is_refused_and_a_good_one_runs() {
    let server = Server::start(Some(200), fixture("results.html"));
    let settings = ToolSettings {
        search: SearchConfig::duckduckgo(&server.base_url, SECS, 3),
        ..ToolSettings::default()
    };
    let tools = ToolRegistry::builtin_with(&["search"], &settings).unwrap();
    let mut assistant = Scripted(vec![
        call(json!({"max_results": 2})),
        call(json!({"query": "rust programming language", "max_results": 2})),
        "Rust's site is https://www.rust-lang.org/.".to_string(),
    ]);
    let mut conv = Conversation {
        messages: vec![Message::new(Role::User, "What is Rust's website?")],
    };
    let outcome = run_turn(
        &mut assistant,
        &tools,
        &mut conv,
        &LoopConfig::default(),
        &mut |_| {},
    )
    .unwrap();
    assert!(matches!(outcome, TurnOutcome::Answered(_)), "{outcome:?}");
    let results: Vec<Value> = conv
        .messages
        .iter()
        .filter(|m| m.role == Role::Tool)
        .map(|m| serde_json::from_str(&m.content).unwrap())
        .collect();
    assert_eq!(results.len(), 2, "{results:?}");
    let refused = results[0]["error"].as_str().unwrap();
    assert!(
        refused.contains("invalid arguments") && refused.contains("query"),
        "{refused}"
    );
    assert_eq!(
        results[1]["results"][0]["url"], "https://www.rust-lang.org/",
        "{}",
        results[1]
    );
    assert_eq!(results[1]["results"].as_array().unwrap().len(), 2);
    // Only the good call reached the server.
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].form("q").as_deref(),
        Some("rust programming language")
    );
}
