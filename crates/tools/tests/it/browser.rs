//! The `browser` tool: a real headless Chromium on pages served here, on 127.0.0.1 (allowed) and
//! 127.0.0.2 (not allowed; Linux answers on all of 127/8), never the internet. Each protection test
//! names what it guards and fails if it is removed. Tests that start Chromium print why and skip
//! where `/usr/bin/chromium` is absent; the refusals before Chromium starts run everywhere.

use serde_json::{Map, Value, json};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tardbot_tools::browser::{BrowserConfig, BrowserTool, processes_matching};
use tardbot_tools::{Tool, ToolError, ToolRegistry};

const CHROMIUM: &str = "/usr/bin/chromium";

/// What a path of the test server answers.
#[derive(Clone)]
enum Reply {
    Html(String),
    Redirect(String),
    /// Html after a pause (keeps the page loading meanwhile).
    Slow(u64, String),
    /// Headers and the start of a body that never ends: the page never finishes loading.
    Hang,
    /// A page showing the request's body (a submitted form), decoded.
    Echo,
}

/// A local HTTP server: answers by path, records every path asked for.
struct Site {
    base: String,
    hits: Arc<Mutex<Vec<String>>>,
    bodies: Arc<Mutex<Vec<String>>>,
}

impl Site {
    fn start(ip: &str, routes: Vec<(&str, Reply)>) -> Site {
        let listener = TcpListener::bind((ip, 0)).unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let hits = Arc::new(Mutex::new(Vec::new()));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let routes: Vec<(String, Reply)> = routes
            .into_iter()
            .map(|(p, r)| (p.to_string(), r))
            .collect();
        let (h, b) = (Arc::clone(&hits), Arc::clone(&bodies));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (routes, hits, bodies) = (routes.clone(), Arc::clone(&h), Arc::clone(&b));
                std::thread::spawn(move || serve(stream, &routes, &hits, &bodies));
            }
        });
        Site { base, hits, bodies }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn hits(&self) -> Vec<String> {
        self.hits.lock().unwrap().clone()
    }

    /// The (decoded) bodies of the requests that had one.
    fn bodies(&self) -> Vec<String> {
        self.bodies.lock().unwrap().clone()
    }
}

/// `application/x-www-form-urlencoded` to `k=v` lines.
fn form_decode(body: &str) -> String {
    let dec = |s: &str| {
        let b = s.replace('+', " ").into_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%'
                && i + 2 < b.len()
                && let Ok(x) = u8::from_str_radix(&String::from_utf8_lossy(&b[i + 1..i + 3]), 16)
            {
                out.push(x);
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    body.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            format!("{}={}", dec(k), dec(v))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn serve(
    mut s: TcpStream,
    routes: &[(String, Reply)],
    hits: &Mutex<Vec<String>>,
    bodies: &Mutex<Vec<String>>,
) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut req = Vec::new();
    let mut buf = [0u8; 4096];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    let head_end = req.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let text = String::from_utf8_lossy(&req[..head_end]).into_owned();
    let path = text.split_whitespace().nth(1).unwrap_or("").to_string();
    let len: usize = text
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = req[head_end..].to_vec();
    while body.len() < len {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&buf[..n]),
        }
    }
    let body = form_decode(&String::from_utf8_lossy(&body));
    if len > 0 {
        bodies.lock().unwrap().push(body.clone());
    }
    hits.lock().unwrap().push(path.clone());
    let bare = path.split('?').next().unwrap_or("");
    let reply = routes
        .iter()
        .find(|(p, _)| *p == path || *p == bare)
        .map(|(_, r)| r);
    let head = |status: &str, extra: &str, len: usize| {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\n{extra}\
             Content-Length: {len}\r\nConnection: close\r\n\r\n"
        )
    };
    match reply {
        Some(Reply::Html(body)) => {
            let _ = s.write_all(head("200 OK", "", body.len()).as_bytes());
            let _ = s.write_all(body.as_bytes());
        }
        Some(Reply::Slow(ms, body)) => {
            std::thread::sleep(Duration::from_millis(*ms));
            let _ = s.write_all(head("200 OK", "", body.len()).as_bytes());
            let _ = s.write_all(body.as_bytes());
        }
        Some(Reply::Redirect(to)) => {
            let _ = s.write_all(head("302 Found", &format!("Location: {to}\r\n"), 0).as_bytes());
        }
        Some(Reply::Hang) => {
            let _ = s.write_all(head("200 OK", "", 1_000_000).as_bytes());
            let _ = s.write_all(b"<html><head><title>slow</title></head><body>loading");
            std::thread::sleep(Duration::from_secs(120));
        }
        Some(Reply::Echo) => {
            let page = format!(
                "<html><head><title>received</title></head><body><pre>{}</pre></body></html>",
                body.replace('&', "&amp;").replace('<', "&lt;")
            );
            let _ = s.write_all(head("200 OK", "", page.len()).as_bytes());
            let _ = s.write_all(page.as_bytes());
        }
        None => {
            let _ = s.write_all(head("404 Not Found", "", 0).as_bytes());
        }
    }
}

fn have_chromium() -> bool {
    if Path::new(CHROMIUM).exists() {
        true
    } else {
        eprintln!("SKIPPED: {CHROMIUM} is not installed (apt-get install -y chromium)");
        false
    }
}

fn tool(hosts: &[&str], f: impl FnOnce(&mut BrowserConfig)) -> BrowserTool {
    let mut cfg = BrowserConfig {
        allowed_hosts: hosts.iter().map(|h| h.to_string()).collect(),
        timeout: Duration::from_secs(30),
        ..BrowserConfig::default()
    };
    f(&mut cfg);
    BrowserTool::new(cfg)
}

fn call(tool: &BrowserTool, args: Value) -> Result<Value, ToolError> {
    let Value::Object(m) = args else { panic!() };
    let m: Map<String, Value> = m;
    tool.call(&m)
}

/// Our Chromium's processes and profiles (their paths hold this prefix).
fn leftovers() -> (Vec<i32>, Vec<PathBuf>) {
    let procs = processes_matching(-1, b"tardbot-browser-");
    let dirs = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("tardbot-browser-")
        })
        .map(|e| e.path())
        .collect();
    (procs, dirs)
}

#[test]
fn reads_a_page_after_a_redirect_and_leaves_nothing_behind_once_dropped() {
    let _g = crate::python::serial();
    if !have_chromium() {
        return;
    }
    let site = Site::start(
        "127.0.0.1",
        vec![
            ("/start", Reply::Redirect("/page".into())),
            (
                "/page",
                Reply::Html(
                    "<html><head><title>Hello page</title></head><body><h1>Greetings</h1>\
                     <p id=p></p><script>document.getElementById('p').textContent = \
                     'written by ' + 'script';</script></body></html>"
                        .into(),
                ),
            ),
        ],
    );
    let t = tool(&["127.0.0.1"], |_| {});
    let v = call(&t, json!({"url": site.url("/start")})).unwrap();
    assert_eq!(v["url"], json!(site.url("/page")), "{v}");
    assert_eq!(v["title"], "Hello page", "{v}");
    let text = v["text"].as_str().unwrap();
    assert!(
        text.contains("Greetings") && text.contains("written by script"),
        "{v}"
    );
    assert_eq!(v["truncated"], false, "{v}");
    assert!(v.get("blocked").is_none(), "{v}");
    drop(t);
    let (procs, dirs) = leftovers();
    assert!(procs.is_empty() && dirs.is_empty(), "{procs:?} {dirs:?}");
}

#[test]
fn links_are_listed_and_capped() {
    let _g = crate::python::serial();
    if !have_chromium() {
        return;
    }
    let body: String = (0..5)
        .map(|i| format!("<a href=\"/p{i}\">link {i}</a> "))
        .collect::<String>()
        + "<a href=\"https://elsewhere.example/\">away</a>";
    let site = Site::start(
        "127.0.0.1",
        vec![(
            "/",
            Reply::Html(format!("<html><body>{body}</body></html>")),
        )],
    );
    let t = tool(&["127.0.0.1"], |c| c.max_links = 3);
    let v = call(&t, json!({"url": site.url("/"), "action": "links"})).unwrap();
    let links = v["links"].as_array().unwrap();
    assert_eq!(links.len(), 3, "{v}");
    assert_eq!(links[0]["text"], "link 0");
    assert_eq!(links[0]["href"], json!(site.url("/p0")));
    assert_eq!(links[0]["allowed"], true);
    assert_eq!(v["links_total"], 6, "{v}");
    assert_eq!(v["truncated"], true, "{v}");
}

/// Guards the allowlist check before launch: a host not listed (and any host when the list is
/// empty) is refused without starting Chromium (here there is none to start: the error must be the
/// refusal, not "unavailable") and without a connection to it.
#[test]
fn hosts_not_allowed_are_refused_before_chromium_starts() {
    let other = TcpListener::bind("127.0.0.2:0").unwrap();
    let url = format!("http://{}/", other.local_addr().unwrap());
    let no_chromium = |c: &mut BrowserConfig| c.chromium = "/nonexistent/chromium".into();
    let only = |c: &mut BrowserConfig| {
        c.chromium = "/nonexistent/chromium".into();
        c.only_allowed_hosts = true;
    };
    for (hosts, only_listed, expect) in [
        (
            &["127.0.0.1"][..],
            false,
            "host `127.0.0.2` is not allowed: a loopback address",
        ),
        (&[][..], false, "a loopback address"),
        (
            &["127.0.0.1"][..],
            true,
            "host `127.0.0.2` is not allowed (only: 127.0.0.1)",
        ),
        (&[][..], true, "no host is"),
    ] {
        let t = if only_listed {
            tool(hosts, only)
        } else {
            tool(hosts, no_chromium)
        };
        match call(&t, json!({"url": url})) {
            Err(ToolError::Failed(m)) => assert!(m.contains(expect), "{m}"),
            other => panic!("{other:?}"),
        }
    }
    // With the host allowed the same tool gets as far as looking for Chromium.
    let t = tool(&["127.0.0.2"], no_chromium);
    assert!(matches!(
        call(&t, json!({"url": url})),
        Err(ToolError::Unavailable(_))
    ));
    other.set_nonblocking(true).unwrap();
    assert!(other.accept().is_err(), "the host was reached");
}

/// Guards the scheme check: only http and https.
#[test]
fn schemes_other_than_http_are_refused() {
    let t = tool(&["127.0.0.1"], |c| {
        c.chromium = "/nonexistent/chromium".into()
    });
    for url in [
        "file:///etc/passwd",
        "chrome://version",
        "javascript:alert(1)",
        "data:text/html,<b>x</b>",
        "view-source:http://127.0.0.1/",
    ] {
        match call(&t, json!({"url": url})) {
            Err(ToolError::Failed(m)) => assert!(m.contains("scheme"), "{url}: {m}"),
            other => panic!("{url}: {other:?}"),
        }
    }
}

/// Guards the in-browser interception: a redirect from an allowed host to one that is not is
/// failed inside Chromium; the other host never sees a request.
#[test]
fn a_redirect_to_a_host_not_allowed_is_blocked() {
    let _g = crate::python::serial();
    if !have_chromium() {
        return;
    }
    let other = Site::start("127.0.0.2", vec![("/secret", Reply::Html("SECRET".into()))]);
    let site = Site::start(
        "127.0.0.1",
        vec![("/go", Reply::Redirect(other.url("/secret")))],
    );
    let t = tool(&["127.0.0.1"], |_| {});
    let r = call(&t, json!({"url": site.url("/go")}));
    match &r {
        Err(ToolError::Failed(m)) => {
            assert!(
                m.contains("BLOCKED_BY_CLIENT") && m.contains(&other.url("/secret")),
                "{m}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(site.hits(), ["/go"]);
    assert!(other.hits().is_empty(), "{:?}", other.hits());
}

/// Guards the in-browser interception for subresources: images, scripts, frames and fetch() to a
/// host not allowed are failed and listed (only interception lists them); the page itself still
/// loads; the other host never sees a request. Also guards the resolver rules: a WebSocket, which
/// interception does not see, must not reach the other host either (the page keeps loading for
/// 800 ms meanwhile).
#[test]
fn subresources_from_a_host_not_allowed_are_blocked() {
    let _g = crate::python::serial();
    if !have_chromium() {
        return;
    }
    let other = Site::start(
        "127.0.0.2",
        vec![("/x.js", Reply::Html("document.title = 'pwned'".into()))],
    );
    let page = format!(
        "<html><head><title>own</title><script src=\"{js}\"></script></head><body>\
         <img src=\"{img}\"><iframe src=\"{frame}\"></iframe><p>main text</p>\
         <script>fetch('{api}').catch(() => {{}}); try {{ new WebSocket('{ws}'); }} catch (e) {{}}\
         </script><img src=\"/wait\"></body></html>",
        ws = other.url("/ws").replace("http://", "ws://"),
        js = other.url("/x.js"),
        img = other.url("/i.png"),
        frame = other.url("/frame"),
        api = other.url("/api"),
    );
    let site = Site::start(
        "127.0.0.1",
        vec![
            ("/", Reply::Html(page)),
            ("/wait", Reply::Slow(800, String::new())),
        ],
    );
    let t = tool(&["127.0.0.1"], |_| {});
    let v = call(&t, json!({"url": site.url("/")})).unwrap();
    assert_eq!(v["title"], "own", "{v}");
    assert!(v["text"].as_str().unwrap().contains("main text"), "{v}");
    let blocked: Vec<&str> = v["blocked"]
        .as_array()
        .unwrap_or_else(|| panic!("nothing blocked: {v}"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for path in ["/x.js", "/i.png", "/frame"] {
        assert!(blocked.contains(&other.url(path).as_str()), "{path}: {v}");
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(other.hits().is_empty(), "{:?}", other.hits());
}

/// Guards the wall-clock limit and the kill: a page that never finishes loading fails at the
/// timeout, and no Chromium process nor profile remains though the tool lives on; its next call
/// starts a fresh browser.
#[test]
fn a_page_that_never_loads_times_out_and_chromium_is_gone() {
    let _g = crate::python::serial();
    if !have_chromium() {
        return;
    }
    let site = Site::start("127.0.0.1", vec![("/slow", Reply::Hang)]);
    let t = tool(&["127.0.0.1"], |c| c.timeout = Duration::from_secs(8));
    let start = Instant::now();
    let r = call(&t, json!({"url": site.url("/slow")}));
    let took = start.elapsed();
    match &r {
        Err(ToolError::Failed(m)) => assert!(m.contains("timed out"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(took < Duration::from_secs(14), "took {took:?}");
    assert_eq!(site.hits().first().map(String::as_str), Some("/slow"));
    let (procs, dirs) = leftovers();
    assert!(
        procs.is_empty() && dirs.is_empty(),
        "left behind: {procs:?} {dirs:?}"
    );
    assert!(!t.is_running());
    // The next call starts a fresh browser.
    let site2 = Site::start(
        "127.0.0.1",
        vec![("/ok", Reply::Html("<body>fresh</body>".into()))],
    );
    let v = call(&t, json!({"url": site2.url("/ok")})).unwrap();
    assert!(v["text"].as_str().unwrap().contains("fresh"), "{v}");
}

/// Guards the output cap: long text is cut to the limit and marked.
#[test]
fn long_text_is_truncated_and_marked() {
    let _g = crate::python::serial();
    if !have_chromium() {
        return;
    }
    let long = "wordé ".repeat(20_000);
    let site = Site::start(
        "127.0.0.1",
        vec![(
            "/",
            Reply::Html(format!("<html><body><p>{long}</p></body></html>")),
        )],
    );
    let t = tool(&["127.0.0.1"], |c| c.max_text_bytes = 1000);
    let v = call(&t, json!({"url": site.url("/")})).unwrap();
    let text = v["text"].as_str().unwrap();
    assert_eq!(v["truncated"], true, "{v}");
    let (kept, note) = text.split_once("\n[… truncated: ").expect("marked");
    assert!(kept.len() <= 1000 && kept.len() > 900, "{}", kept.len());
    assert!(note.contains("characters shown]"), "{note}");
}

#[test]
fn the_registry_offers_the_browser_with_its_settings() {
    let settings = tardbot_tools::ToolSettings {
        browser: BrowserConfig {
            allowed_hosts: vec!["127.0.0.1".into()],
            ..BrowserConfig::default()
        },
        ..Default::default()
    };
    let r = ToolRegistry::builtin_with(&["browser"], &settings).unwrap();
    let spec = r.get("browser").unwrap().spec();
    assert!(
        spec.description.contains("127.0.0.1"),
        "{}",
        spec.description
    );
    let plain = ToolRegistry::builtin(&["browser"]).unwrap();
    assert!(
        plain
            .get("browser")
            .unwrap()
            .spec()
            .description
            .contains("loopback and private addresses are refused")
    );
    let only = BrowserConfig {
        only_allowed_hosts: true,
        ..BrowserConfig::default()
    };
    let only = ToolRegistry::builtin_with(
        &["browser"],
        &tardbot_tools::ToolSettings {
            browser: only,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(
        only.get("browser")
            .unwrap()
            .spec()
            .description
            .contains("every URL is refused")
    );
}

fn expect_failed(r: Result<Value, ToolError>) -> String {
    match r {
        Err(ToolError::Failed(m)) => m,
        other => panic!("{other:?}"),
    }
}

fn nav_site() -> Site {
    Site::start(
        "127.0.0.1",
        vec![
            (
                "/",
                Reply::Html(
                    "<html><head><title>home</title></head><body>\
                     <a href=\"/a\">Go to A</a> <a id=\"bee\" href=\"/b\">second</a>\
                     <button id=\"nothing\">stay</button></body></html>"
                        .into(),
                ),
            ),
            (
                "/a",
                Reply::Html("<html><head><title>A</title></head><body>page A</body></html>".into()),
            ),
            (
                "/b",
                Reply::Html("<html><head><title>B</title></head><body>page B</body></html>".into()),
            ),
        ],
    )
}

/// Clicking follows a link found by its text (case-insensitive) or by a CSS selector; a click
/// that starts no navigation returns the same page; a missing target is a clear error.
#[test]
fn click_follows_links_by_text_and_by_selector() {
    let _g = crate::python::serial();
    if !have_chromium() {
        return;
    }
    let site = nav_site();
    let t = tool(&["127.0.0.1"], |_| {});
    let v = call(
        &t,
        json!({"url": site.url("/"), "action": "click", "link_text": "go to a"}),
    )
    .unwrap();
    assert_eq!(v["url"], json!(site.url("/a")), "{v}");
    assert_eq!(v["title"], "A", "{v}");
    assert!(v["text"].as_str().unwrap().contains("page A"), "{v}");
    // Action implied by `selector`.
    let v = call(&t, json!({"url": site.url("/"), "selector": "#bee"})).unwrap();
    assert_eq!(v["url"], json!(site.url("/b")), "{v}");
    assert!(v["text"].as_str().unwrap().contains("page B"), "{v}");
    let v = call(&t, json!({"url": site.url("/"), "selector": "#nothing"})).unwrap();
    assert_eq!(v["url"], json!(site.url("/")), "{v}");
    let m = expect_failed(call(&t, json!({"selector": "#absent"})));
    assert!(m.contains("nothing to click matches"), "{m}");
    let hits = site.hits();
    assert!(
        hits.contains(&"/a".to_string()) && hits.contains(&"/b".to_string()),
        "{hits:?}"
    );
}

/// Filling and submitting a form: the server receives the values typed (POST body), and the
/// result is the page it answered.
#[test]
fn a_form_is_filled_and_submitted() {
    let _g = crate::python::serial();
    if !have_chromium() {
        return;
    }
    let site = Site::start(
        "127.0.0.1",
        vec![
            (
                "/form",
                Reply::Html(
                    "<html><body><form method=\"post\" action=\"/submit\">\
                     <input name=\"name\" id=\"name\"> <input name=\"city\">\
                     <input type=\"checkbox\" name=\"agree\" value=\"yes\">\
                     <button type=\"submit\" id=\"go\">Send</button></form></body></html>"
                        .into(),
                ),
            ),
            ("/submit", Reply::Echo),
        ],
    );
    let t = tool(&["127.0.0.1"], |_| {});
    let v = call(
        &t,
        json!({"url": site.url("/form"), "action": "fill_and_submit",
               "fields": {"#name": "Ada Lovelace", "input[name=city]": "Paris & Co", "input[name=agree]": true}}),
    )
    .unwrap();
    assert_eq!(v["url"], json!(site.url("/submit")), "{v}");
    let text = v["text"].as_str().unwrap();
    for want in ["name=Ada Lovelace", "city=Paris & Co", "agree=yes"] {
        assert!(text.contains(want), "{want}: {v}");
    }
    let bodies = site.bodies();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    assert!(
        bodies[0].contains("name=Ada Lovelace") && bodies[0].contains("city=Paris & Co"),
        "{bodies:?}"
    );
    // With an explicit submit button, on the current page (opened first).
    call(&t, json!({"url": site.url("/form")})).unwrap();
    let v = call(&t, json!({"fields": {"#name": "Grace"}, "submit": "#go"})).unwrap();
    assert!(v["text"].as_str().unwrap().contains("name=Grace"), "{v}");
    assert_eq!(site.bodies().len(), 2);
}

/// Guards the in-browser interception for actions: a click on a link, and a form submitted, to a
/// host not allowed are failed inside Chromium (the error names the blocked URL, which only
/// interception lists); the other host never sees a request.
#[test]
fn a_click_or_a_submit_to_a_host_not_allowed_is_blocked() {
    let _g = crate::python::serial();
    if !have_chromium() {
        return;
    }
    let other = Site::start(
        "127.0.0.2",
        vec![
            ("/secret", Reply::Html("SECRET".into())),
            ("/collect", Reply::Echo),
        ],
    );
    let page = format!(
        "<html><body><a href=\"{secret}\">leave</a>\
         <form method=\"post\" action=\"{collect}\"><input name=\"q\" id=\"q\"></form></body></html>",
        secret = other.url("/secret"),
        collect = other.url("/collect"),
    );
    let site = Site::start("127.0.0.1", vec![("/", Reply::Html(page))]);
    let t = tool(&["127.0.0.1"], |_| {});
    let m = expect_failed(call(
        &t,
        json!({"url": site.url("/"), "action": "click", "link_text": "leave"}),
    ));
    assert!(
        m.contains("BLOCKED_BY_CLIENT") && m.contains(&other.url("/secret")),
        "{m}"
    );
    let m = expect_failed(call(
        &t,
        json!({"url": site.url("/"), "fields": {"#q": "leak"}}),
    ));
    assert!(
        m.contains("BLOCKED_BY_CLIENT") && m.contains(&other.url("/collect")),
        "{m}"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(other.hits().is_empty(), "{:?}", other.hits());
    assert!(other.bodies().is_empty(), "{:?}", other.bodies());
}

/// Guards "one browser per session": a call without `url` sees the very page (same document, its
/// script's random number) the previous call opened, and acts on it; a fresh tool has no page.
#[test]
fn the_browser_and_its_page_persist_across_calls() {
    let _g = crate::python::serial();
    if !have_chromium() {
        return;
    }
    let site = Site::start(
        "127.0.0.1",
        vec![
            (
                "/",
                Reply::Html(
                    "<html><body><p id=\"r\"></p><a href=\"/next\">next</a><script>\
                     document.getElementById('r').textContent = 'token ' + Math.random();\
                     </script></body></html>"
                        .into(),
                ),
            ),
            ("/next", Reply::Html("<body>the next page</body>".into())),
        ],
    );
    let t = tool(&["127.0.0.1"], |_| {});
    let m = expect_failed(call(&t, json!({"action": "read"})));
    assert!(m.contains("no page is open"), "{m}");
    let first = call(&t, json!({"url": site.url("/")})).unwrap();
    assert!(t.is_running());
    let (procs, _) = leftovers();
    let again = call(&t, json!({"action": "read"})).unwrap();
    assert_eq!(again["text"], first["text"], "{first} {again}");
    assert_eq!(again["url"], json!(site.url("/")));
    let (procs2, _) = leftovers();
    assert_eq!(procs, procs2, "the browser was restarted");
    let v = call(&t, json!({"link_text": "next"})).unwrap();
    assert!(v["text"].as_str().unwrap().contains("the next page"), "{v}");
    let pages: Vec<String> = site
        .hits()
        .into_iter()
        .filter(|h| h != "/favicon.ico")
        .collect();
    assert_eq!(pages, ["/", "/next"], "the page was loaded again");
}

/// Guards the default host policy: with nothing listed, loopback and private addresses are
/// refused (before Chromium starts: no connection reaches the listener); listed, 127.0.0.1 loads.
#[test]
fn the_default_policy_refuses_loopback_and_private_hosts_not_listed() {
    let _g = crate::python::serial();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let t = tool(&[], |_| {});
    assert!(!t.config().only_allowed_hosts);
    for (url, what) in [
        (format!("http://127.0.0.1:{port}/"), "loopback"),
        (format!("http://localhost:{port}/"), "loopback"),
        ("http://10.0.0.1/".to_string(), "private"),
        ("http://192.168.0.1/".to_string(), "private"),
        ("http://[::1]/".to_string(), "loopback"),
    ] {
        let m = expect_failed(call(&t, json!({"url": url})));
        assert!(m.contains("not allowed") && m.contains(what), "{url}: {m}");
    }
    listener.set_nonblocking(true).unwrap();
    assert!(listener.accept().is_err(), "the host was reached");
    assert!(!t.is_running());
    if !have_chromium() {
        return;
    }
    let site = Site::start(
        "127.0.0.1",
        vec![("/", Reply::Html("<body>listed</body>".into()))],
    );
    let v = call(&tool(&["127.0.0.1"], |_| {}), json!({"url": site.url("/")})).unwrap();
    assert!(v["text"].as_str().unwrap().contains("listed"), "{v}");
}

/// Guards `Drop`: while the tool lives its Chromium runs; once dropped no process nor profile of
/// it remains.
#[test]
fn dropping_the_tool_leaves_no_chromium() {
    let _g = crate::python::serial();
    if !have_chromium() {
        return;
    }
    let site = Site::start(
        "127.0.0.1",
        vec![("/", Reply::Html("<body>x</body>".into()))],
    );
    let t = tool(&["127.0.0.1"], |_| {});
    call(&t, json!({"url": site.url("/")})).unwrap();
    let (procs, dirs) = leftovers();
    assert!(!procs.is_empty() && dirs.len() == 1, "{procs:?} {dirs:?}");
    drop(t);
    let (procs, dirs) = leftovers();
    assert!(
        procs.is_empty() && dirs.is_empty(),
        "left behind: {procs:?} {dirs:?}"
    );
}
