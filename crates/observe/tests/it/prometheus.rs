//! The live metrics endpoint over real TCP on 127.0.0.1, and a real Prometheus scraping it.

use crate::fixture::{EXPERTS, Fixture, LAYERS, loss_at, new_run, train};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use tardbot_ledger::{AttemptStatus, Ledger, Run};
use tardbot_observe::{MetricsServer, exposition};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// Sends a raw request, reads until the server closes; returns (status line, head, body).
async fn request(addr: SocketAddr, raw: &str) -> (String, String, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(raw.as_bytes()).await.expect("send");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut response))
        .await
        .expect("response in time")
        .expect("read response");
    let text = String::from_utf8(response).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
    (
        head.lines().next().unwrap_or("").to_string(),
        head.to_string(),
        body.to_string(),
    )
}

/// Parses the text exposition into `series → value`, checking its grammar on the way: every sample's
/// family has `# HELP` and `# TYPE` lines before it, names and labels are well-formed.
fn parse_exposition(text: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    let mut typed = Vec::<String>::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let name = parts.next().expect("type name");
            assert_eq!(parts.next(), Some("gauge"), "{line}");
            assert!(
                !typed.contains(&name.to_string()),
                "family {name} typed twice"
            );
            typed.push(name.to_string());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "unexpected line {line:?}"
        );
        let (series, value) = line.rsplit_once(' ').expect("series and value");
        let name = series.split('{').next().unwrap_or("");
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "metric name in {line:?}"
        );
        assert!(
            typed.iter().any(|t| t == name),
            "{name} has no # TYPE before its samples"
        );
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            assert!(
                labels.starts_with('{') && labels.ends_with('}'),
                "labels of {line:?}"
            );
        }
        let v = match value {
            "NaN" => f64::NAN,
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("value of {line:?}")),
        };
        assert!(
            samples.insert(series.to_string(), v).is_none(),
            "duplicate series {series}"
        );
    }
    samples
}

fn value(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("no series {series} in:\n{samples:#?}"))
}

/// A third run, running in pretrain, 40 steps in.
async fn live_run(ledger: &Ledger) -> (Run, i64) {
    let run = new_run(ledger).await;
    ledger
        .claim_run(run.id, "testhost", 6262)
        .await
        .expect("claim");
    let a = ledger
        .start_attempt(
            run.id,
            "pretrain",
            "fp-live",
            AttemptStatus::Running,
            None,
            None,
        )
        .await
        .expect("attempt");
    train(ledger, a.id, 0, 40, 10.8, 2.6).await;
    (run, a.id)
}

#[tokio::test]
async fn endpoint_serves_the_running_run_over_tcp() {
    let f = Fixture::build().await;
    let (run, attempt) = live_run(&f.ledger).await;
    // `None`: follow the newest run, as `run --metrics-addr` does before its run exists.
    let server = MetricsServer::bind("127.0.0.1:0".parse().expect("addr"), &f.ledger, None)
        .await
        .expect("bind");
    let addr = server.local_addr().expect("addr");
    assert!(addr.ip().is_loopback() && addr.port() != 0);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));

    let (status, head, body) = request(
        addr,
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */*\r\n\r\n",
    )
    .await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(
        head.contains(&format!("Content-Length: {}", body.len())),
        "{head}"
    );
    let s = parse_exposition(&body);
    let r = format!("run=\"{}\"", run.name);
    let rs = format!("{r},stage=\"pretrain\"");
    assert_eq!(
        value(&s, &format!("tardbot_run_status{{{r},status=\"running\"}}")),
        1.0
    );
    assert_eq!(
        value(&s, &format!("tardbot_run_status{{{r},status=\"failed\"}}")),
        0.0
    );
    assert_eq!(
        value(
            &s,
            &format!("tardbot_current_stage{{{rs},attempt=\"1\",status=\"running\"}}")
        ),
        1.0
    );
    assert_eq!(value(&s, &format!("tardbot_step{{{rs}}}")), 40.0);
    assert_eq!(
        value(&s, &format!("tardbot_loss{{{rs}}}")),
        loss_at(40, 10.8, 2.6)
    );
    let tps = value(&s, &format!("tardbot_tokens_per_second{{{rs}}}"));
    assert!((11_000.0..12_500.0).contains(&tps), "{tps}");
    assert!(value(&s, &format!("tardbot_learning_rate{{{rs}}}")) > 0.0);
    assert!(value(&s, &format!("tardbot_run_heartbeat_age_seconds{{{r}}}")) < 600.0);
    let mut share = 0.0;
    for layer in 0..LAYERS {
        for expert in 0..EXPERTS {
            let l = format!("{rs},layer=\"{layer}\",expert=\"{expert}\"");
            assert!(value(&s, &format!("tardbot_expert_load_tokens{{{l}}}")) > 0.0);
            share += value(&s, &format!("tardbot_expert_load_share{{{l}}}"));
        }
        assert!(
            value(
                &s,
                &format!("tardbot_router_entropy{{{rs},layer=\"{layer}\"}}")
            ) > 1.0
        );
        assert_eq!(
            value(
                &s,
                &format!("tardbot_dead_experts{{{rs},layer=\"{layer}\"}}")
            ),
            0.0
        );
    }
    assert!(
        (share - f64::from(LAYERS)).abs() < 1e-9,
        "shares of each layer sum to 1"
    );

    // The run moves on; the next scrape sees it.
    train(&f.ledger, attempt, 41, 60, 10.8, 2.6).await;
    let (_, _, body) = request(addr, "GET /metrics HTTP/1.0\r\n\r\n").await;
    let s = parse_exposition(&body);
    assert_eq!(value(&s, &format!("tardbot_step{{{rs}}}")), 60.0);
    assert_eq!(
        value(&s, &format!("tardbot_loss{{{rs}}}")),
        loss_at(60, 10.8, 2.6)
    );

    let (status, head, body) = request(addr, "HEAD /metrics HTTP/1.1\r\n\r\n").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(body.is_empty() && head.contains("Content-Length: "));
    assert_eq!(
        request(addr, "GET /nope HTTP/1.1\r\n\r\n").await.0,
        "HTTP/1.1 404 Not Found"
    );
    assert_eq!(
        request(addr, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
            .await
            .0,
        "HTTP/1.1 405 Method Not Allowed"
    );
    let huge = format!(
        "GET /metrics HTTP/1.1\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(10_000)
    );
    assert_eq!(
        request(addr, &huge).await.0,
        "HTTP/1.1 431 Request Header Fields Too Large"
    );

    stop.send(()).expect("stop");
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("stops")
        .expect("join")
        .expect("serve ok");
}

#[tokio::test]
async fn exposition_of_a_failed_run() {
    let f = Fixture::build().await;
    let text = exposition(&f.ledger, Some(f.failed.id))
        .await
        .expect("exposition");
    let s = parse_exposition(&text);
    let r = "run=\"run-1\"";
    assert_eq!(
        value(&s, &format!("tardbot_run_status{{{r},status=\"failed\"}}")),
        1.0
    );
    assert_eq!(
        value(
            &s,
            &format!("tardbot_stage_attempts{{{r},status=\"interrupted\"}}")
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            &format!("tardbot_stage_attempts{{{r},status=\"succeeded\"}}")
        ),
        3.0
    );
    assert_eq!(
        value(
            &s,
            &format!("tardbot_current_stage{{{r},stage=\"sft\",attempt=\"1\",status=\"failed\"}}")
        ),
        1.0
    );
    // sft's last loss was NaN (stored as NULL): shown as NaN at step 81.
    assert_eq!(
        value(&s, &format!("tardbot_step{{{r},stage=\"sft\"}}")),
        81.0
    );
    assert!(value(&s, &format!("tardbot_loss{{{r},stage=\"sft\"}}")).is_nan());
    assert_eq!(
        value(
            &s,
            &format!("tardbot_checkpoint_step{{{r},stage=\"pretrain\"}}")
        ),
        300.0
    );
    assert_eq!(
        value(
            &s,
            &format!("tardbot_eval{{{r},stage=\"pretrain\",suite=\"val\",metric=\"loss\"}}")
        ),
        loss_at(300, 10.8, 2.7)
    );
    assert_eq!(value(&s, &format!("tardbot_run_stages_done{{{r}}}")), 3.0);

    let empty = tempfile::tempdir().expect("dir");
    let ledger = Ledger::open(&empty.path().join("ledger.db"))
        .await
        .expect("open");
    let s = parse_exposition(&exposition(&ledger, None).await.expect("exposition"));
    assert_eq!(value(&s, "tardbot_run_found"), 0.0);
}

const PROMETHEUS: &str = "/usr/bin/prometheus";

/// Kills the child when the test ends, however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `GET path` from Prometheus' HTTP API (HTTP/1.0: a plain body, connection closed).
async fn api(addr: SocketAddr, path: &str) -> Option<serde_json::Value> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.ok()?;
    let text = String::from_utf8(response).ok()?;
    serde_json::from_str(text.split_once("\r\n\r\n")?.1).ok()
}

/// The value of the first series of an instant query, once Prometheus has one.
async fn query(addr: SocketAddr, expr: &str) -> Option<f64> {
    let v = api(addr, &format!("/api/v1/query?query={expr}")).await?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

async fn wait_for(addr: SocketAddr, expr: &str, want: f64, deadline: Duration) {
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < deadline {
        last = query(addr, expr).await;
        if last == Some(want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    panic!("Prometheus never saw {expr} = {want} (last: {last:?})");
}

#[tokio::test]
async fn prometheus_scrapes_the_endpoint_during_a_run() {
    if !Path::new(PROMETHEUS).exists() {
        eprintln!(
            "SKIPPED: {PROMETHEUS} is not installed (apt-get install -y --no-install-recommends prometheus); no real scrape tested"
        );
        return;
    }
    let f = Fixture::build().await;
    let (run, attempt) = live_run(&f.ledger).await;
    let server = MetricsServer::bind(
        "127.0.0.1:0".parse().expect("addr"),
        &f.ledger,
        Some(run.id),
    )
    .await
    .expect("bind");
    let target = server.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));

    let dir = tempfile::tempdir().expect("dir");
    let web = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: tardbot\n    \
             scrape_interval: 1s\n    scrape_timeout: 1s\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .expect("config");
    let _prometheus = KillOnDrop(
        std::process::Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .arg("--log.level=warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );

    wait_for(web, "up", 1.0, Duration::from_secs(60)).await;
    wait_for(web, "tardbot_step", 40.0, Duration::from_secs(30)).await;
    // Training goes on; the next scrapes follow.
    train(&f.ledger, attempt, 41, 75, 10.8, 2.6).await;
    wait_for(web, "tardbot_step", 75.0, Duration::from_secs(30)).await;
    let loss = query(web, "tardbot_loss").await.expect("loss scraped");
    assert!((loss - loss_at(75, 10.8, 2.6)).abs() < 1e-9, "{loss}");
    let experts = api(web, "/api/v1/query?query=count(tardbot_expert_load_tokens)")
        .await
        .expect("count");
    assert_eq!(
        experts["data"]["result"][0]["value"][1],
        serde_json::json!((LAYERS * EXPERTS).to_string())
    );

    stop.send(()).expect("stop");
    task.await.expect("join").expect("serve ok");
}
