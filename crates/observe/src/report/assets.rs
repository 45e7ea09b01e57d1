//! The report's inline CSS and script.

pub(super) const CSS: &str = r#"
:root{--fg:#1d2330;--muted:#667085;--line:#e4e7ec;--bg:#f6f7f9;--ok:#127a3a;--bad:#b42318;--warn:#b54708;--info:#175cd3;--cache:#475467}
*{box-sizing:border-box}
body{margin:0;padding:24px 32px 48px;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:var(--fg);background:var(--bg)}
h1{font-size:26px;margin:0 0 4px}h1 .run{font-family:ui-monospace,SFMono-Regular,Menlo,monospace}
h2{font-size:19px;margin:32px 0 10px;padding-bottom:4px;border-bottom:1px solid var(--line)}
h3{font-size:15px;margin:18px 0 4px}
.meta{color:var(--muted);margin:4px 0 10px}
code{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12.5px}
nav{margin:12px 0 0;display:flex;gap:14px;flex-wrap:wrap}nav a{color:var(--info);text-decoration:none}
.badge{display:inline-block;padding:1px 9px;border-radius:10px;font-size:12px;font-weight:600;color:#fff;vertical-align:middle}
.s-succeeded{background:var(--ok)}.s-failed{background:var(--bad)}.s-interrupted{background:var(--warn)}
.s-running{background:var(--info)}.s-cached{background:var(--cache)}.s-pending{background:#98a2b3}
.banner{margin:12px 0 0;padding:10px 14px;border-radius:8px;border:1px solid}
.banner.bad{background:#fef3f2;border-color:#fecdca}.banner.warn{background:#fffaeb;border-color:#fedf89}.banner.info{background:#eff8ff;border-color:#b2ddff}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin-top:18px}
.card{background:#fff;border:1px solid var(--line);border-radius:10px;padding:10px 16px;min-width:150px}
.card .v{font-size:20px;font-weight:650}.card .v small{font-size:12px;font-weight:400;color:var(--muted)}.card .l{color:var(--muted);font-size:12px}
table{border-collapse:collapse;background:#fff;border:1px solid var(--line);border-radius:8px;width:100%;margin:6px 0 8px}
th,td{padding:5px 10px;text-align:left;border-bottom:1px solid var(--line);vertical-align:top}
th{font-size:12px;color:var(--muted);font-weight:600;background:#fafbfc}
tbody tr:nth-child(even){background:#fcfcfd}
td small{color:var(--muted)}
.err{color:var(--bad);white-space:pre-wrap}
.better{color:var(--ok);font-weight:600}.worse{color:var(--bad);font-weight:600}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(400px,1fr));gap:14px}
figure{margin:0;background:#fff;border:1px solid var(--line);border-radius:8px;padding:6px;min-width:0}
figure svg{display:block;width:100%;height:auto}
figcaption{font-size:12px;padding:2px 6px 2px;line-height:1.7}
.key{white-space:nowrap;margin-right:12px}.key i{display:inline-block;width:16px;height:3px;vertical-align:middle;margin-right:5px}
.key i.dot{width:8px;height:8px;border-radius:50%}.note{color:var(--muted)}
.data-stages{display:grid;grid-template-columns:repeat(auto-fill,minmax(360px,1fr));gap:0 18px}
.wide{overflow-x:auto}
table.data td:not(:first-child),table.figures td+td{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td time{white-space:nowrap}td code{overflow-wrap:anywhere}
table.data th:not(:first-child),table.figures th+th{text-align:right}
.sw{display:inline-block;width:12px;height:12px;border:1px solid #ccc;vertical-align:middle}
pre{background:#fff;border:1px solid var(--line);border-radius:8px;padding:12px;overflow:auto;max-height:480px;font-size:12.5px}
details{margin:6px 0}summary{cursor:pointer;color:var(--info)}
.empty{color:var(--muted);font-style:italic}
footer{margin-top:36px;color:var(--muted);font-size:12px}
"#;

/// Shows each timestamp in the reader's local time as a tooltip and marks the page as fully loaded
/// (the Chromium test checks the marker: the script ran without an error).
pub(super) const SCRIPT: &str = r#"
(function () {
  var times = document.querySelectorAll("time[data-ms]");
  for (var i = 0; i < times.length; i++) {
    var d = new Date(Number(times[i].getAttribute("data-ms")));
    times[i].title = d.toLocaleString() + " (your local time)";
  }
  document.documentElement.setAttribute("data-report-ready", String(document.querySelectorAll("figure svg").length));
})();
"#;
