//! The HTML run report: contents for failed, cached and never-started runs, and a real render in
//! headless Chromium to a PNG.

use crate::fixture::{EXPERTS, FILES, Fixture, LAYERS, default_run, extra_ledger, new_run};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tardbot_observe::{ObserveError, render_report};

/// The text inside the element with `id="…"` up to its closing tag (figures and sections only nest
/// other kinds of elements here).
fn element<'a>(html: &'a str, id: &str, tag: &str) -> &'a str {
    let start = html
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no element #{id}"));
    let end = html[start..]
        .find(&format!("</{tag}>"))
        .unwrap_or_else(|| panic!("#{id} is not closed"));
    &html[start..start + end]
}

/// The cells (raw HTML) of each body row of the first table in `html`.
fn table_rows(html: &str) -> Vec<Vec<String>> {
    let body = html
        .split("<tbody>")
        .nth(1)
        .and_then(|b| b.split("</tbody>").next())
        .unwrap_or("");
    body.split("<tr>")
        .skip(1)
        .map(|r| {
            r.split("<td>")
                .skip(1)
                .map(|c| c.split("</td>").next().unwrap_or("").to_string())
                .collect()
        })
        .collect()
}

#[tokio::test]
async fn failed_run_report_has_every_part() {
    let f = Fixture::build().await;
    let html = render_report(&f.ledger, &f.failed.name)
        .await
        .expect("render");

    assert!(html.starts_with("<!doctype html>"));
    // Every part, in the order a reader asks: did it work, did it learn, then the details.
    let order = [
        "summary",
        "stages",
        "learning",
        "evals",
        "training",
        "moe",
        "data",
        "artifacts",
        "checkpoints",
        "events",
        "config",
    ];
    let at: Vec<usize> = order
        .iter()
        .map(|id| {
            html.find(&format!("id=\"{id}\""))
                .unwrap_or_else(|| panic!("section #{id}"))
        })
        .collect();
    assert!(
        at.windows(2).all(|w| w[0] < w[1]),
        "sections out of order: {order:?} at {at:?}"
    );
    // The first chart is the first training stage's loss.
    let first_figure = html.find("<figure").expect("a figure");
    assert_eq!(
        html.find("<figure id=\"loss-pretrain\""),
        Some(first_figure),
        "the first chart is pretrain's loss"
    );
    // Failure banner with the resume command; the error text is escaped.
    assert!(html.contains("This run failed."), "failure banner");
    assert!(html.contains("<code>tardbot-pipeline resume run-1</code>"));
    assert!(html.contains("grad_norm &gt; 1e4"), "error text escaped");
    assert!(!html.contains("grad_norm > 1e4"));

    // Stage table: interrupted, resumed, failed attempts.
    let stages = element(&html, "stages", "section");
    assert_eq!(stages.matches("<tr>").count(), 1 + 5, "header + 5 attempts");
    assert!(
        stages.contains("s-interrupted")
            && stages.contains("s-failed")
            && stages.contains("s-succeeded")
    );
    assert!(stages.contains("resumed from checkpoint @ step 100"));

    // Loss plot of pretrain: both attempts, eval dots, an SVG polyline per attempt.
    let loss = element(&html, "loss-pretrain", "figure");
    assert!(
        loss.contains("<svg") && loss.contains("</svg"),
        "inline SVG"
    );
    for (i, color) in ["#1F77B4", "#FF7F0E"].iter().enumerate() {
        // The curve in the attempt's colour, and its legend entry (HTML, below the chart).
        let lines = loss
            .matches(&format!(
                "<polyline fill=\"none\" opacity=\"1\" stroke=\"{color}\""
            ))
            .count();
        assert_eq!(lines, 1, "attempt {} curve in {color}", i + 1);
        assert!(
            loss.contains(&format!("background:{}", color.to_ascii_lowercase())),
            "legend swatch of attempt {}",
            i + 1
        );
    }
    assert!(
        loss.contains("attempt 1 (interrupted)")
            && loss.contains("attempt 2 (succeeded), resumed @ 100")
    );
    assert!(loss.contains("val loss (held-out eval)"));
    assert!(
        loss.contains("loss (nats/token)"),
        "unit in the y-axis title"
    );
    for key in [
        "total-loss",
        "lr",
        "grad-norm",
        "tokens-per-s",
        "mfu",
        "aux",
    ] {
        assert!(
            html.contains(&format!("id=\"plot-pretrain-{key}\"")),
            "pretrain {key} plot"
        );
    }
    assert!(
        html.contains("id=\"loss-sft\""),
        "the failed stage's curve is shown too"
    );

    // Expert-load heatmaps: one per layer per training stage, a cell per (bin, expert).
    for layer in 0..LAYERS {
        let heat = element(&html, &format!("heat-pretrain-l{layer}"), "figure");
        assert!(
            heat.matches("<rect").count() > (EXPERTS as usize) * 30,
            "heatmap cells of layer {layer}"
        );
    }
    assert!(
        html.contains("id=\"plot-pretrain-router-entropy\"")
            && html.contains("id=\"plot-pretrain-dead-experts\"")
    );
    // The dead expert (layer 1, expert 7, from step 150) is drawn in the "dead" colour.
    assert!(
        element(&html, "heat-pretrain-l1", "figure").contains("#081D58"),
        "dead expert colour"
    );
    assert!(
        !element(&html, "heat-pretrain-l0", "figure").contains("#081D58"),
        "no dead expert in layer 0"
    );

    // Data stages: their figures are tables, not charts; one row per source and the total, one per
    // file, columns that are zero everywhere named once.
    for figure in html.split("<figure id=\"").skip(1) {
        let id = figure.split('"').next().unwrap_or("");
        assert!(
            !id.contains("ingest") && !id.contains("tokenizer"),
            "a data stage's figure is drawn as a chart: #{id}"
        );
    }
    let data = element(&html, "data", "section");
    for (stage, figure, value) in [
        ("ingest", "mb_per_s", "11.0000"),
        ("ingest", "shards", "1"),
        ("tokenizer", "vocab_size", "4,096"),
        ("tokenizer", "train_seconds", "0.3700 s"),
    ] {
        let rows = table_rows(element(data, &format!("data-{stage}"), "table"));
        assert!(
            rows.iter()
                .any(|r| r[0] == format!("<code>{figure}</code>") && r[1] == value),
            "{stage} {figure} = {value} in {rows:?}"
        );
    }
    let sources = data
        .split("id=\"data-ingest-sources\"")
        .nth(1)
        .expect("per-source table");
    let rows = table_rows(sources);
    let names: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(
        names,
        [
            "<b>jargon</b>",
            "<b>prose</b>",
            "<b>tiny_shakespeare</b>",
            "<b>total</b>"
        ]
    );
    assert!(
        sources.contains(
            "Zero for every source: empty, filtered/alpha_words, filtered/dup_lines, \
             filtered/too_few_words, invalid_utf8_dropped, invalid_utf8_repaired."
        ),
        "zero columns named once"
    );
    assert!(
        !sources
            .split("</table>")
            .next()
            .unwrap_or("")
            .contains(">empty<")
    );
    let files = data
        .split("id=\"data-ingest-items\"")
        .nth(1)
        .expect("per-file table");
    assert!(files.starts_with(">ingest: per file<"), "{}", &files[..60]);
    let rows = table_rows(files);
    assert_eq!(rows.len(), FILES as usize, "a row per file: {rows:?}");
    assert_eq!(
        rows[2],
        [
            "2",
            "0.0420 s",
            "<span title=\"360,000 B\">351.6 KiB</span>",
            "202",
            "192"
        ]
    );

    // Evals before/after pretrain: val loss 10.84 before.
    let evals = element(&html, "evals", "section");
    assert!(
        evals.contains("10.8400 <small>@0</small>"),
        "before value of pretrain val loss"
    );
    assert!(evals.contains("class=\"better\""), "val loss went down");

    // Artifacts with full hashes in tooltips, checkpoints with resume lineage.
    let artifacts = element(&html, "artifacts", "section");
    assert!(artifacts.contains("model.safetensors") && artifacts.contains("92.0 MiB"));
    let hash: String =
        sqlx::query_scalar("SELECT hash FROM artifacts WHERE kind = 'model' ORDER BY id LIMIT 1")
            .fetch_one(&crate::sql::read_only(&f.ledger_path()).await)
            .await
            .expect("hash");
    assert!(
        artifacts.contains(&format!("title=\"{hash}\"")),
        "full hash"
    );
    let checkpoints = element(&html, "checkpoints", "section");
    assert_eq!(
        checkpoints.matches("<tr>").count(),
        1 + 7,
        "header + 7 checkpoints"
    );
    let rows = table_rows(checkpoints);
    let resumed: Vec<&Vec<String>> = rows
        .iter()
        .filter(|r| r.get(9).is_some_and(|c| !c.is_empty()))
        .collect();
    assert_eq!(
        resumed.len(),
        1,
        "one checkpoint was resumed from: {rows:?}"
    );
    assert_eq!(
        (
            resumed[0][1].as_str(),
            resumed[0][3].as_str(),
            resumed[0][9].as_str()
        ),
        ("pretrain", "100", "2")
    );

    // Config is shown; the report is self-contained (no external resources).
    assert!(html.contains("checkpoint_every = 50"));
    for needle in ["<link", "src=\"http", "@import", "url(http"] {
        assert!(!html.contains(needle), "external resource: {needle}");
    }
    let external = html.matches("http://").count() + html.matches("https://").count();
    assert_eq!(
        external,
        html.matches("xmlns=\"http://www.w3.org/2000/svg\"").count(),
        "the only URLs are SVG namespaces"
    );
}

#[tokio::test]
async fn cached_and_pending_runs_render() {
    let f = Fixture::build().await;
    let html = render_report(&f.ledger, &f.succeeded.name)
        .await
        .expect("render");
    assert!(
        !html.contains("class=\"banner"),
        "a succeeded run has no banner"
    );
    let stages = element(&html, "stages", "section");
    assert_eq!(stages.matches("cached from <b>run-1</b>").count(), 3);
    let artifacts = element(&html, "artifacts", "section");
    assert!(
        artifacts.contains("cached from <b>run-1</b>"),
        "reused artifacts name their run"
    );
    assert!(
        html.contains("id=\"loss-sft\"") && !html.contains("id=\"loss-pretrain\""),
        "only sft trained in run-2"
    );

    // A run that never started a stage, looked up by id.
    let pending = new_run(&f.ledger).await;
    let html = render_report(&f.ledger, &pending.id.to_string())
        .await
        .expect("render pending");
    assert!(html.contains("This run has not started yet."));
    assert!(
        html.contains("No stage has started.")
            && html.contains("No stage of this run logged training metrics.")
            && html.contains("No data stage of this run logged figures.")
    );

    // A running run with a fresh heartbeat: a snapshot banner naming its stage.
    f.ledger
        .claim_run(pending.id, "testhost", 7)
        .await
        .expect("claim");
    f.ledger
        .start_attempt(
            pending.id,
            "ingest",
            "fp",
            tardbot_ledger::AttemptStatus::Running,
            None,
            None,
        )
        .await
        .expect("attempt");
    let html = render_report(&f.ledger, &pending.name)
        .await
        .expect("render running");
    assert!(html.contains("Running (heartbeat") && html.contains("Now in stage <b>ingest</b>"));

    match render_report(&f.ledger, "run-999").await {
        Err(ObserveError::Ledger(e)) => assert!(e.to_string().contains("run-999")),
        other => panic!("expected not found, got {:?}", other.map(|h| h.len())),
    }
}

const CHROMIUM: &str = "/usr/bin/chromium";

/// Runs Chromium with a deadline; returns (exit ok, stdout, stderr). Output goes through files: a
/// page's DOM is larger than a pipe's buffer, and Chromium would block writing it.
fn chromium(args: &[String], deadline: Duration) -> (bool, String, String) {
    let io = tempfile::tempdir().expect("io dir");
    let (out_path, err_path) = (io.path().join("stdout"), io.path().join("stderr"));
    let mut child = Command::new(CHROMIUM)
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("start chromium");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait chromium") {
            break status;
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium did not finish in {deadline:?}: {}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let read =
        |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
    (status.success(), read(&out_path), read(&err_path))
}

fn chromium_args(profile: &Path, extra: &[String], url: &str) -> Vec<String> {
    let mut args: Vec<String> = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--enable-logging=stderr",
        "--v=0",
    ]
    .map(String::from)
    .to_vec();
    args.push(format!("--window-size={WIDTH},2400"));
    args.push(format!("--user-data-dir={}", profile.display()));
    args.extend_from_slice(extra);
    args.push(url.to_string());
    args
}

#[tokio::test]
async fn report_renders_in_headless_chromium() {
    if !Path::new(CHROMIUM).exists() {
        eprintln!(
            "SKIPPED: {CHROMIUM} is not installed (apt-get install -y chromium); the report was not rendered in a browser"
        );
        return;
    }
    let f = Fixture::build().await;
    let html = render_report(&f.ledger, &f.failed.name)
        .await
        .expect("render");
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("observe-report");
    std::fs::create_dir_all(&out_dir).expect("out dir");
    let page = out_dir.join("report.html");
    let png = out_dir.join("report.png");
    let _ = std::fs::remove_file(&png);
    std::fs::write(&page, &html).expect("write report");
    let url = format!("file://{}", page.display());

    // 1. The DOM after scripts ran: the report's script marks the page and counts the plots.
    let profile = tempfile::tempdir().expect("profile");
    let (ok, dom, stderr) = chromium(
        &chromium_args(profile.path(), &["--dump-dom".into()], &url),
        Duration::from_secs(120),
    );
    assert!(ok, "chromium --dump-dom failed: {stderr}");
    let figures = html.matches("<figure").count();
    assert!(
        dom.contains(&format!("data-report-ready=\"{figures}\"")),
        "the page's script did not run to its end (data-report-ready missing or wrong); stderr:\n{stderr}"
    );
    for line in stderr.lines() {
        assert!(!line.contains("Uncaught"), "script error: {line}");
    }

    // 2. The screenshot.
    let profile = tempfile::tempdir().expect("profile");
    let (ok, _, stderr) = chromium(
        &chromium_args(
            profile.path(),
            &[format!("--screenshot={}", png.display())],
            &url,
        ),
        Duration::from_secs(120),
    );
    assert!(ok && png.exists(), "chromium --screenshot failed: {stderr}");
    let image = crate::png::decode(&std::fs::read(&png).expect("read png")).expect("png");
    assert_eq!(
        (image.width, image.height),
        (WIDTH as usize, 2400),
        "window size"
    );
    let channels = image.channels;
    assert!(channels >= 3, "colour screenshot");
    let pixels = image.pixels.chunks(channels);
    let (mut non_background, mut loss_blue, mut total) = (0usize, 0usize, 0usize);
    for p in pixels {
        total += 1;
        let (r, g, b) = (i32::from(p[0]), i32::from(p[1]), i32::from(p[2]));
        if (r - 246).abs() + (g - 247).abs() + (b - 249).abs() > 12 && (r, g, b) != (255, 255, 255)
        {
            non_background += 1;
        }
        // The first attempt's loss line (#1f77b4), allowing for anti-aliasing.
        if (r - 31).abs() + (g - 119).abs() + (b - 180).abs() < 40 {
            loss_blue += 1;
        }
    }
    assert!(
        non_background * 20 > total,
        "the page is mostly empty: {non_background} of {total} pixels drawn"
    );
    assert!(
        loss_blue > 400,
        "the loss curves' blue is (almost) absent: {loss_blue} pixels; see {}",
        png.display()
    );
    eprintln!(
        "report screenshot: {} ({loss_blue} loss-blue pixels, {non_background} drawn)",
        png.display()
    );
}

/// Width of the browser window the layout is measured at: a laptop screen.
const WIDTH: u32 = 1400;
/// The most a default run's report may be tall at [`WIDTH`] (before the reader-first order it was
/// 32,763 px, with 161 charts, the first loss curve at 19,626 px).
const MAX_HEIGHT: f64 = 14_000.0;

/// Measures the laid-out page: its height and, per figure, where it is, its caption, and the points
/// it draws: the vertices of its data lines (plotters draws data 2 px wide, axes and ticks 1 px) and
/// its dots, or for a heatmap the columns of cells (the first rect is the background).
const LAYOUT_SCRIPT: &str = r#"<script>
(function () {
  var figs = [].slice.call(document.querySelectorAll("figure"));
  var out = {
    height: document.documentElement.scrollHeight,
    width: document.documentElement.clientWidth,
    figures: figs.map(function (f) {
      var svg = f.querySelector("svg"), r = f.getBoundingClientRect();
      var points = 0, longest = 0, columns = {};
      [].forEach.call(svg.querySelectorAll("polyline[stroke-width='2']"), function (p) {
        points += p.points.numberOfItems;
        longest = Math.max(longest, p.points.numberOfItems);
      });
      points += svg.querySelectorAll("circle").length;
      [].slice.call(svg.querySelectorAll("rect"), 1).forEach(function (c) { columns[c.getAttribute("x")] = 1; });
      var caption = svg.querySelector("text");
      return {
        id: f.id,
        top: r.top + window.scrollY,
        left: r.left,
        title: caption ? caption.textContent.trim() : "",
        points: points,
        longest: longest,
        columns: Object.keys(columns).length
      };
    })
  };
  var pre = document.createElement("pre");
  pre.id = "layout";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
</script>"#;

#[derive(Debug)]
struct Figure {
    id: String,
    top: f64,
    left: f64,
    title: String,
    points: u64,
    longest: u64,
    columns: u64,
}

struct Layout {
    height: f64,
    /// In reading order: top to bottom, then left to right.
    figures: Vec<Figure>,
}

/// Lays `html` out in headless Chromium at [`WIDTH`] px and reads back [`LAYOUT_SCRIPT`]'s figures.
fn layout(html: &str, name: &str) -> Layout {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("observe-report");
    std::fs::create_dir_all(&dir).expect("out dir");
    let page = dir.join(format!("{name}-layout.html"));
    std::fs::write(
        &page,
        html.replace("</body>", &format!("{LAYOUT_SCRIPT}</body>")),
    )
    .expect("write page");
    let profile = tempfile::tempdir().expect("profile");
    let (ok, dom, stderr) = chromium(
        &chromium_args(
            profile.path(),
            &["--dump-dom".into()],
            &format!("file://{}", page.display()),
        ),
        Duration::from_secs(120),
    );
    assert!(ok, "chromium --dump-dom failed: {stderr}");
    let json = dom
        .split("<pre id=\"layout\">")
        .nth(1)
        .and_then(|r| r.split("</pre>").next())
        .unwrap_or_else(|| panic!("the layout script did not run; stderr:\n{stderr}"))
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    let v: serde_json::Value = serde_json::from_str(&json).expect("layout JSON");
    assert_eq!(v["width"].as_f64(), Some(f64::from(WIDTH)), "window width");
    let mut figures: Vec<Figure> = v["figures"]
        .as_array()
        .expect("figures")
        .iter()
        .map(|f| Figure {
            id: f["id"].as_str().unwrap_or("").to_string(),
            top: f["top"].as_f64().unwrap_or(f64::NAN),
            left: f["left"].as_f64().unwrap_or(f64::NAN),
            title: f["title"].as_str().unwrap_or("").to_string(),
            points: f["points"].as_u64().unwrap_or(0),
            longest: f["longest"].as_u64().unwrap_or(0),
            columns: f["columns"].as_u64().unwrap_or(0),
        })
        .collect();
    figures.sort_by(|a, b| a.top.total_cmp(&b.top).then(a.left.total_cmp(&b.left)));
    Layout {
        height: v["height"].as_f64().expect("height"),
        figures,
    }
}

/// What a reader sees: the first chart is a loss curve and every loss curve comes before any other
/// chart; no chart has fewer than two points (a line chart draws a line of two or more, a heatmap two
/// or more columns).
fn assert_reads_story_first(l: &Layout, what: &str) {
    let first = l
        .figures
        .first()
        .unwrap_or_else(|| panic!("{what}: no chart"));
    assert!(
        first.id.starts_with("loss-") && first.title.ends_with(": loss"),
        "{what}: the first chart is {first:?}, not a loss curve"
    );
    let last_loss = l
        .figures
        .iter()
        .filter(|f| f.id.starts_with("loss-"))
        .map(|f| f.top)
        .fold(f64::NEG_INFINITY, f64::max);
    if let Some(f) = l
        .figures
        .iter()
        .find(|f| !f.id.starts_with("loss-") && f.top < last_loss)
    {
        panic!("{what}: {f:?} is above a loss curve (at {last_loss} px)");
    }
    for f in &l.figures {
        if f.id.starts_with("heat-") {
            assert!(
                f.columns >= 2,
                "{what}: heatmap with {} column(s): {f:?}",
                f.columns
            );
        } else {
            assert!(
                f.longest >= 2 && f.points >= 2,
                "{what}: a chart with fewer than two points: {f:?}"
            );
        }
    }
}

#[tokio::test]
async fn default_run_report_reads_story_first_in_chromium() {
    if !Path::new(CHROMIUM).exists() {
        eprintln!(
            "SKIPPED: {CHROMIUM} is not installed (apt-get install -y chromium); the report's layout was not checked"
        );
        return;
    }
    let (_dir, ledger, run) = default_run().await;
    let html = render_report(&ledger, &run.name).await.expect("render");
    let once = element(&html, "training", "section")
        .split("<table class=\"figures\">")
        .nth(1)
        .expect("pretrain's table of figures logged once");
    assert_eq!(
        table_rows(once),
        [["<code>params</code>", "1", "0", "3,279,488"]],
        "a figure logged once is a number in a table"
    );
    let l = layout(&html, "default-run");
    assert_reads_story_first(&l, "default-run fixture");
    assert_eq!(
        l.figures
            .iter()
            .filter(|f| f.id.starts_with("loss-"))
            .count(),
        4,
        "a loss curve per training stage"
    );
    eprintln!(
        "default-run fixture: {:.0} px tall at {WIDTH} px, {} charts, {} bytes",
        l.height,
        l.figures.len(),
        html.len()
    );
    assert!(
        l.height < MAX_HEIGHT,
        "the default run's report is {:.0} px tall at {WIDTH} px (bound {MAX_HEIGHT})",
        l.height
    );

    // The failed run too: two attempts, a failed stage, data stages with per-file rows.
    let f = Fixture::build().await;
    let html = render_report(&f.ledger, &f.failed.name)
        .await
        .expect("render");
    assert_reads_story_first(&layout(&html, "failed-run"), "failed run");

    // A real run's ledger (e.g. of the default `run all`), when given: its newest run.
    if let Some(path) = extra_ledger() {
        let ledger = tardbot_ledger::Ledger::open(&path)
            .await
            .expect("open TARDBOT_TEST_LEDGER");
        let runs = ledger.runs().await.expect("runs");
        let newest = runs
            .iter()
            .max_by_key(|r| r.id)
            .expect("a run in TARDBOT_TEST_LEDGER");
        let html = render_report(&ledger, &newest.name).await.expect("render");
        let l = layout(&html, "extra-ledger");
        eprintln!(
            "TARDBOT_TEST_LEDGER {} {}: {:.0} px tall at {WIDTH} px, {} charts, {} bytes",
            path.display(),
            newest.name,
            l.height,
            l.figures.len(),
            html.len()
        );
        assert_reads_story_first(&l, &newest.name);
        assert!(
            l.height < MAX_HEIGHT,
            "{}: {:.0} px tall at {WIDTH} px (bound {MAX_HEIGHT})",
            newest.name,
            l.height
        );
    }
}
