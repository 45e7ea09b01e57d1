//! Every panel query of every dashboard in dashboards/json, expanded as Grafana and the
//! frser-sqlite-datasource plugin expand it, runs against the ledger and returns rows whose time
//! columns are unix seconds.
//!
//! Expansion, in Grafana's order:
//! 1. the frontend's template service replaces dashboard variables (`$run`, `${run}`, `[[run]]`) and the
//!    global `$__from` / `$__to` (unix **milliseconds**); a query variable's value is the first row of its
//!    query (Grafana's default selection), a custom variable's its current value;
//! 2. the plugin's backend replaces `$__from` / `$__to` again (for alerting; also milliseconds) and then
//!    its one macro `$__unixEpochGroupSeconds(col, n[, NULL])` → `cast((col / n) as int) * n`
//!    (pkg/plugin/macros.go: regex `\$__([_a-zA-Z0-9]+)\(([^\)]*)\)`; unknown macros stay as they are).

use crate::fixture::{Fixture, extra_ledger};
use crate::sql::{Cell, Table, read_only, run};
use serde_json::Value;
use sqlx::SqlitePool;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const DATASOURCE_UID: &str = "tardbot-ledger";
const PLUGIN: &str = "frser-sqlite-datasource";

fn dashboards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dashboards")
}

fn dashboards() -> Vec<(String, Value)> {
    let dir = dashboards_dir().join("json");
    let mut out: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("read dashboard");
            let json = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: invalid JSON: {e}", p.display()));
            (
                p.file_name().expect("name").to_string_lossy().into_owned(),
                json,
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Panels, including those nested in rows.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
        for p in v
            .get("panels")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            out.push(p);
            walk(p, out);
        }
    }
    let mut out = Vec::new();
    walk(dashboard, &mut out);
    out
}

/// Grafana's template service: variables and the global `$__from`/`$__to` (milliseconds).
pub fn interpolate(sql: &str, vars: &BTreeMap<String, String>, from_ms: i64, to_ms: i64) -> String {
    let lookup = |name: &str| -> Option<String> {
        match name {
            "__from" => Some(from_ms.to_string()),
            "__to" => Some(to_ms.to_string()),
            _ => vars.get(name).cloned(),
        }
    };
    let chars: Vec<char> = sql.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let rest: String = chars[i..].iter().take(2).collect();
        if chars[i] == '$' && chars.get(i + 1) == Some(&'{') {
            if let Some(end) = chars[i..].iter().position(|&c| c == '}') {
                let inner: String = chars[i + 2..i + end].iter().collect();
                let name = inner.split(':').next().unwrap_or("");
                if let Some(v) = lookup(name) {
                    out.push_str(&v);
                    i += end + 1;
                    continue;
                }
            }
        } else if chars[i] == '$' {
            let name: String = chars[i + 1..]
                .iter()
                .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
                .collect();
            if let Some(v) = lookup(&name) {
                out.push_str(&v);
                i += 1 + name.chars().count();
                continue;
            }
        } else if rest == "[["
            && let Some(end) = chars[i..].windows(2).position(|w| w == [']', ']'])
        {
            let name: String = chars[i + 2..i + end].iter().collect();
            if let Some(v) = lookup(&name) {
                out.push_str(&v);
                i += end + 2;
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// The plugin's backend: `$__from`/`$__to` (ms), then `$__unixEpochGroupSeconds(col, n[, NULL])`.
pub fn apply_plugin_macros(sql: &str, from_ms: i64, to_ms: i64) -> Result<String, String> {
    let sql = sql
        .replace("$__from", &from_ms.to_string())
        .replace("$__to", &to_ms.to_string());
    let mut out = String::new();
    let mut rest = sql.as_str();
    while let Some(start) = rest.find("$__") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 3..];
        let name_len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        let name = &after[..name_len];
        let args_and_rest = &after[name_len..];
        let close = args_and_rest.find(')');
        match (args_and_rest.starts_with('('), close) {
            (true, Some(close)) => {
                let args: Vec<&str> = args_and_rest[1..close].split(',').collect();
                let whole = &rest[start..start + 3 + name_len + close + 1];
                let replaced = match name {
                    "unixEpochGroupSeconds" => {
                        if !(2..=3).contains(&args.len()) {
                            return Err(format!(
                                "unsupported number of arguments ({}) for unixEpochGroupSeconds",
                                args.len()
                            ));
                        }
                        let n: i64 = args[1].trim().parse().map_err(|_| {
                            format!(
                                "could not convert '{}' to an integer grouping interval",
                                args[1]
                            )
                        })?;
                        if args.len() == 3 && !args[2].trim().eq_ignore_ascii_case("null") {
                            return Err(format!("unsupported gap filling value of: `{}`", args[2]));
                        }
                        format!("cast(({} / {n}) as int) * {n}", args[0])
                    }
                    // The plugin leaves other macros untouched (and SQLite then fails on them).
                    _ => whole.to_string(),
                };
                out.push_str(&replaced);
                rest = &rest[start + whole.len()..];
            }
            _ => {
                out.push_str("$__");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[test]
fn macro_expansion_matches_the_plugin() {
    // The plugin README's own examples.
    assert_eq!(
        apply_plugin_macros("SELECT $__unixEpochGroupSeconds(\"time\", 10)", 0, 0).unwrap(),
        "SELECT cast((\"time\" / 10) as int) * 10"
    );
    assert_eq!(
        apply_plugin_macros("$__unixEpochGroupSeconds(timestamp, 10, NULL)", 0, 0).unwrap(),
        "cast((timestamp / 10) as int) * 10"
    );
    assert!(apply_plugin_macros("$__unixEpochGroupSeconds(t, x)", 0, 0).is_err());
    assert_eq!(
        apply_plugin_macros("$__timeGroup(t) $__from", 5, 6).unwrap(),
        "$__timeGroup(t) 5"
    );
    let mut vars = BTreeMap::new();
    vars.insert("run".to_string(), "run-2".to_string());
    vars.insert("layer".to_string(), "1".to_string());
    assert_eq!(
        interpolate(
            "'$run' ${run} [[run]] $layer $layers $__from/${__to:date}",
            &vars,
            1000,
            2000
        ),
        "'run-2' run-2 run-2 1 $layers 1000/2000"
    );
}

/// Resolves the dashboard's variables in order, each query variable by running its query.
async fn resolve_variables(
    name: &str,
    dashboard: &Value,
    pool: &SqlitePool,
    from_ms: i64,
    to_ms: i64,
) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let var = v["name"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: a variable without name"));
        let value = match v["type"].as_str() {
            Some("query") => {
                assert_eq!(
                    v["datasource"]["uid"], DATASOURCE_UID,
                    "{name}: variable {var} must use the ledger datasource"
                );
                let q = v["query"].as_str().unwrap_or_else(|| {
                    panic!("{name}: variable {var}: the plugin takes a query string")
                });
                let sql =
                    apply_plugin_macros(&interpolate(q, &vars, from_ms, to_ms), from_ms, to_ms)
                        .expect("macros");
                let t = run(pool, &sql)
                    .await
                    .unwrap_or_else(|e| panic!("{name}: variable {var}: {e}\n{sql}"));
                assert_eq!(
                    t.columns.len(),
                    1,
                    "{name}: variable {var}: the plugin needs exactly one column"
                );
                match t.rows.first().map(|r| r[0].clone()) {
                    Some(Cell::Text(s)) => s,
                    Some(Cell::Int(i)) => i.to_string(),
                    Some(Cell::Real(r)) => r.to_string(),
                    other => panic!("{name}: variable {var} has no value ({other:?}): {sql}"),
                }
            }
            Some("custom" | "textbox" | "constant" | "interval") => v["current"]["value"]
                .as_str()
                .map(String::from)
                .or_else(|| {
                    v["query"]
                        .as_str()
                        .and_then(|q| q.split(',').next())
                        .map(|s| s.trim().to_string())
                })
                .unwrap_or_else(|| panic!("{name}: variable {var} has no value")),
            other => panic!("{name}: variable {var}: type {other:?} is not handled here"),
        };
        vars.insert(var.to_string(), value);
    }
    vars
}

/// Checks one expanded panel query's result; returns a description for the summary.
fn check_result(ctx: &str, target: &Value, t: &Table, from_ms: i64, to_ms: i64) {
    assert!(!t.rows.is_empty(), "{ctx}: no rows");
    let time_cols: Vec<&str> = target["timeColumns"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let present: Vec<&str> = time_cols
        .iter()
        .copied()
        .filter(|c| t.column(c).is_some())
        .collect();
    assert!(
        !present.is_empty(),
        "{ctx}: none of the time columns {time_cols:?} is in the result {:?}",
        t.columns
    );
    let (lo, hi) = (from_ms as f64 / 1000.0, to_ms as f64 / 1000.0);
    for c in &present {
        let i = t.column(c).expect("present");
        let mut previous = f64::NEG_INFINITY;
        for (n, row) in t.rows.iter().enumerate() {
            let Some(secs) = row[i].as_f64() else {
                panic!(
                    "{ctx}: time column `{c}` row {n} is {:?}, not a number of seconds",
                    row[i]
                );
            };
            assert!(
                (lo - 1.0..=hi + 1.0).contains(&secs),
                "{ctx}: time column `{c}` = {secs} is not unix seconds within the dashboard range [{lo}, {hi}] \
                 (milliseconds would be ~1000x larger)"
            );
            if target["queryType"] == "time series" && *c == present[0] {
                assert!(
                    secs >= previous,
                    "{ctx}: a time series must be sorted by time (the plugin's long-to-wide needs it)"
                );
                previous = secs;
            }
        }
    }
}

async fn check_all_dashboards(ledger: &Path, from_ms: i64, to_ms: i64) -> usize {
    let pool = read_only(ledger).await;
    let mut queries = 0;
    let mut uids = Vec::new();
    for (name, d) in dashboards() {
        let uid = d["uid"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no uid"));
        assert!(
            !uids.contains(&uid.to_string()),
            "{name}: uid {uid} used twice"
        );
        uids.push(uid.to_string());
        assert!(
            d["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{name}: no title"
        );
        let vars = resolve_variables(&name, &d, &pool, from_ms, to_ms).await;
        let ps = panels(&d);
        assert!(!ps.is_empty(), "{name}: no panels");
        for p in ps {
            if p["type"] == "row" {
                continue;
            }
            let title = p["title"].as_str().unwrap_or("?");
            assert_eq!(
                p["datasource"]["uid"], DATASOURCE_UID,
                "{name} / {title}: panel datasource"
            );
            assert_eq!(
                p["datasource"]["type"], PLUGIN,
                "{name} / {title}: panel datasource type"
            );
            let targets = p["targets"]
                .as_array()
                .unwrap_or_else(|| panic!("{name} / {title}: no targets"));
            assert!(!targets.is_empty(), "{name} / {title}: no targets");
            for t in targets {
                let ctx = format!("{name} / {title} / {}", t["refId"]);
                assert_eq!(
                    t["datasource"]["uid"], DATASOURCE_UID,
                    "{ctx}: target datasource"
                );
                let raw = t["rawQueryText"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{ctx}: no rawQueryText"));
                assert_eq!(
                    t["queryText"].as_str(),
                    Some(raw),
                    "{ctx}: queryText and rawQueryText differ"
                );
                assert!(
                    matches!(t["queryType"].as_str(), Some("table" | "time series")),
                    "{ctx}: queryType"
                );
                let sql =
                    apply_plugin_macros(&interpolate(raw, &vars, from_ms, to_ms), from_ms, to_ms)
                        .unwrap_or_else(|e| panic!("{ctx}: {e}"));
                assert!(
                    !sql.contains('$'),
                    "{ctx}: unexpanded variable or macro left in\n{sql}"
                );
                let table = run(&pool, &sql)
                    .await
                    .unwrap_or_else(|e| panic!("{ctx}: {e}\n{sql}"));
                check_result(&ctx, t, &table, from_ms, to_ms);
                queries += 1;
            }
        }
    }
    pool.close().await;
    queries
}

#[tokio::test]
async fn every_panel_query_returns_rows_with_time_in_seconds() {
    let f = Fixture::build().await;
    // Grafana's default range for these dashboards is the last 24 hours; the fixture was written just now.
    let to_ms = tardbot_ledger::now_ms() + 60_000;
    let from_ms = to_ms - 24 * 3600 * 1000;
    let n = check_all_dashboards(&f.ledger_path(), from_ms, to_ms).await;
    assert!(n >= 25, "only {n} panel queries");
    // A range that ends before the run: time-filtered panels must come back empty, which a query
    // comparing seconds with milliseconds (or ignoring the range) would not.
    let pool = read_only(&f.ledger_path()).await;
    let (old_from, old_to) = (from_ms - 48 * 3600 * 1000, from_ms - 24 * 3600 * 1000);
    for (name, d) in dashboards() {
        let vars = resolve_variables(&name, &d, &pool, from_ms, to_ms).await;
        for p in panels(&d) {
            for t in p["targets"].as_array().into_iter().flatten() {
                let raw = t["rawQueryText"].as_str().unwrap_or("");
                if !raw.contains("$__from") {
                    continue;
                }
                let sql = apply_plugin_macros(
                    &interpolate(raw, &vars, old_from, old_to),
                    old_from,
                    old_to,
                )
                .expect("macros");
                let table = run(&pool, &sql).await.expect("query");
                assert!(
                    table.rows.is_empty(),
                    "{name} / {}: rows outside the time range",
                    p["title"]
                );
            }
        }
    }
    pool.close().await;

    if let Some(path) = extra_ledger() {
        let pool = read_only(&path).await;
        let first: i64 = sqlx::query_scalar("SELECT min(created_ms) FROM runs")
            .fetch_one(&pool)
            .await
            .expect("runs");
        pool.close().await;
        let n =
            check_all_dashboards(&path, first - 60_000, tardbot_ledger::now_ms() + 60_000).await;
        eprintln!(
            "TARDBOT_TEST_LEDGER {}: {n} panel queries ok",
            path.display()
        );
    }
}

#[test]
fn provisioning_points_at_the_dashboards_and_the_fixed_datasource() {
    let dir = dashboards_dir().join("provisioning");
    let ds = std::fs::read_to_string(dir.join("datasources/tardbot-ledger.yaml"))
        .expect("datasource provisioning");
    assert!(
        ds.contains(&format!("uid: {DATASOURCE_UID}")),
        "datasource uid"
    );
    assert!(ds.contains(&format!("type: {PLUGIN}")), "datasource plugin");
    assert!(
        ds.contains("path: ${TARDBOT_LEDGER}"),
        "ledger path from the environment"
    );
    let dash = std::fs::read_to_string(dir.join("dashboards/tardbot.yaml"))
        .expect("dashboard provisioning");
    assert!(
        dash.contains("path: ${TARDBOT_DASHBOARDS}"),
        "dashboards path from the environment"
    );
    let script =
        std::fs::read_to_string(dashboards_dir().join("start-grafana.sh")).expect("start script");
    assert!(
        script.contains("TARDBOT_DASHBOARDS=\"$here/json\"")
            && script.contains("GF_PATHS_PROVISIONING=\"$here/provisioning\"")
    );
    let readme =
        std::fs::read_to_string(dashboards_dir().join("README.md")).expect("dashboards/README.md");
    for (name, d) in dashboards() {
        let title = d["title"].as_str().expect("title");
        assert!(
            readme.contains(title),
            "dashboards/README.md does not mention {name} ({title})"
        );
    }
}
