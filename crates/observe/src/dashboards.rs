//! Checking the Grafana dashboards in `dashboards/json` against a ledger, query by query, the way
//! Grafana and the `frser-sqlite-datasource` plugin would run them.
//!
//! Expansion, in Grafana's order:
//! 1. the frontend's template service ([`interpolate`]) replaces dashboard variables (`$run`, `${run}`,
//!    `[[run]]`) and the global `$__from` / `$__to` (unix **milliseconds**); a query variable's value
//!    is the first row of its query (Grafana's default selection), a custom variable's its current
//!    value;
//! 2. the plugin's backend ([`apply_plugin_macros`]) replaces `$__from` / `$__to` again (for alerting;
//!    also milliseconds) and then its one macro `$__unixEpochGroupSeconds(col, n[, NULL])` →
//!    `cast((col / n) as int) * n` (pkg/plugin/macros.go: regex `\$__([_a-zA-Z0-9]+)\(([^\)]*)\)`;
//!    unknown macros stay as they are, and SQLite then fails on them).
//!
//! [`check_dashboards`] then runs every panel query on a read-only connection and checks what the
//! plugin needs to draw it: the time columns hold unix **seconds**, and a time series is sorted by
//! time (the plugin's long-to-wide conversion needs it).

use crate::db::read_pool_at;
use crate::error::ObserveError;
use serde_json::Value;
use sqlx::sqlite::SqliteRow;
use sqlx::{Column, Row, SqlitePool, TypeInfo, ValueRef};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

/// The uid of the provisioned ledger datasource every panel and query variable must use.
pub const DATASOURCE_UID: &str = "tardbot-ledger";
/// The Grafana plugin (datasource type) that reads the ledger.
pub const DATASOURCE_TYPE: &str = "frser-sqlite-datasource";

/// Unix seconds between 2001-09-09 and 2286-11-20: what a time column outside the dashboard's range
/// (a table that does not filter by time) must still hold. Milliseconds (~1.7e12) and minutes
/// (~2.9e7) fall outside.
const PLAUSIBLE_SECONDS: std::ops::Range<f64> = 1e9..1e10;

/// What [`check_dashboards`] ran: every panel query, in dashboard-file and panel order.
#[derive(Clone, Debug, Default)]
pub struct DashboardCheck {
    pub queries: Vec<PanelQuery>,
}

impl DashboardCheck {
    /// The queries that returned no rows, as `dashboard / panel / refId`.
    pub fn empty(&self) -> Vec<String> {
        self.queries
            .iter()
            .filter(|q| q.rows == 0)
            .map(ToString::to_string)
            .collect()
    }

    /// How many queries returned rows.
    pub fn with_rows(&self) -> usize {
        self.queries.iter().filter(|q| q.rows > 0).count()
    }
}

/// One panel query that ran without a problem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PanelQuery {
    /// The dashboard's file name, e.g. `overview.json`.
    pub dashboard: String,
    /// The panel's title as written (variables not expanded).
    pub panel: String,
    pub ref_id: String,
    /// Whether the query restricts rows to the dashboard's range (`$__from` / `$__to`).
    pub time_filtered: bool,
    pub rows: usize,
}

impl fmt::Display for PanelQuery {
    /// `dashboard / panel / refId`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} / {} / {}", self.dashboard, self.panel, self.ref_id)
    }
}

/// Grafana's template service: dashboard variables (`$name`, `${name}`, `${name:format}`,
/// `[[name]]`) and the global `$__from` / `$__to` (unix milliseconds). Unknown names stay as they are.
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
        } else if chars[i] == '['
            && chars.get(i + 1) == Some(&'[')
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

/// The frser-sqlite-datasource plugin's backend: `$__from` / `$__to` (milliseconds), then its one
/// macro `$__unixEpochGroupSeconds(col, n[, NULL])` → `cast((col / n) as int) * n`. Other `$__name(…)`
/// macros are left as they are, as the plugin leaves them; a malformed `unixEpochGroupSeconds` is an
/// error with the plugin's message.
pub fn apply_plugin_macros(sql: &str, from_ms: i64, to_ms: i64) -> Result<String, String> {
    expand_plugin_macros(sql, from_ms, to_ms).map(|(sql, _)| sql)
}

/// [`apply_plugin_macros`], also returning the largest `unixEpochGroupSeconds` interval (0 if none):
/// a bucketed time may start that much before the range.
fn expand_plugin_macros(sql: &str, from_ms: i64, to_ms: i64) -> Result<(String, i64), String> {
    let sql = sql
        .replace("$__from", &from_ms.to_string())
        .replace("$__to", &to_ms.to_string());
    let mut out = String::new();
    let mut bucket = 0;
    let mut rest = sql.as_str();
    while let Some(start) = rest.find("$__") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 3..];
        let name_len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        let name = &after[..name_len];
        let args_and_rest = &after[name_len..];
        match (args_and_rest.starts_with('('), args_and_rest.find(')')) {
            (true, Some(close)) => {
                let args: Vec<&str> = args_and_rest[1..close].split(',').collect();
                let whole = &rest[start..start + 3 + name_len + close + 1];
                if name == "unixEpochGroupSeconds" {
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
                    bucket = bucket.max(n);
                    out.push_str(&format!("cast(({} / {n}) as int) * {n}", args[0]));
                } else {
                    out.push_str(whole);
                }
                rest = &rest[start + whole.len()..];
            }
            _ => {
                out.push_str("$__");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Ok((out, bucket))
}

/// Runs every panel query of every dashboard in `dashboards_dir/json/*.json` against the ledger file
/// (opened read-only), for Grafana's time range `from_ms..=to_ms` (unix milliseconds, as Grafana passes
/// them), expanded as Grafana and the plugin expand them (see the module docs).
///
/// Checked for every dashboard: valid JSON, a title, a uid of its own, panels; query variables on the
/// ledger datasource returning one column and at least one row. For every panel: datasource uid
/// [`DATASOURCE_UID`] and type [`DATASOURCE_TYPE`], targets. For every query: `queryText` equal to
/// `rawQueryText` (the plugin runs `queryText`, the editor shows `rawQueryText`), a `queryType` of
/// `table` or `time series`, no `$` left after expansion, it runs, and when it returns rows: one of its
/// `timeColumns` is in the result, every time value is a number of unix seconds — within the range
/// (less one `unixEpochGroupSeconds` bucket) for a query filtering on `$__from` / `$__to`, a plausible
/// date otherwise — and a time series is sorted by time.
///
/// The report's reading rules, where they apply: every time-series panel has an axis label (with its
/// unit); a dashboard with a loss panel shows it as its first time series; and a time-series query
/// that is not bucketed by `unixEpochGroupSeconds` returns at least two rows per series.
///
/// A query returning no rows is no problem (see [`DashboardCheck::empty`]). Every problem found is
/// returned at once in [`ObserveError::Dashboards`], each naming `dashboard / panel / refId`.
pub async fn check_dashboards(
    dashboards_dir: &Path,
    ledger: &Path,
    from_ms: i64,
    to_ms: i64,
) -> Result<DashboardCheck, ObserveError> {
    let files = dashboard_files(&dashboards_dir.join("json"))?;
    let pool = read_pool_at(ledger).await?;
    let mut checker = Checker {
        pool: &pool,
        from_ms,
        to_ms,
        queries: Vec::new(),
        problems: Vec::new(),
    };
    if files.is_empty() {
        checker.problem(format!(
            "{}: no dashboards (*.json)",
            dashboards_dir.join("json").display()
        ));
    }
    let mut uids = BTreeSet::new();
    for (name, text) in &files {
        checker.dashboard(name, text, &mut uids).await;
    }
    pool.close().await;
    if checker.problems.is_empty() {
        Ok(DashboardCheck {
            queries: checker.queries,
        })
    } else {
        Err(ObserveError::Dashboards {
            problems: checker.problems,
        })
    }
}

/// `(file name, text)` of every `*.json` in `dir`, by name.
fn dashboard_files(dir: &Path) -> Result<Vec<(String, String)>, ObserveError> {
    let io = |source| ObserveError::DashboardFiles {
        path: dir.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.extension().is_some_and(|x| x == "json") {
            let text =
                std::fs::read_to_string(&path).map_err(|source| ObserveError::DashboardFiles {
                    path: path.clone(),
                    source,
                })?;
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            out.push((name.into_owned(), text));
        }
    }
    out.sort();
    Ok(out)
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

/// A value as the plugin would see it.
#[derive(Clone, Debug)]
enum Cell {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
}

impl Cell {
    fn as_f64(&self) -> Option<f64> {
        match self {
            Cell::Int(i) => Some(*i as f64),
            Cell::Real(r) => Some(*r),
            _ => None,
        }
    }
}

struct Table {
    columns: Vec<String>,
    rows: Vec<Vec<Cell>>,
}

fn cell(row: &SqliteRow, i: usize) -> Result<Cell, sqlx::Error> {
    let raw = row.try_get_raw(i)?;
    if raw.is_null() {
        return Ok(Cell::Null);
    }
    Ok(match raw.type_info().name() {
        "INTEGER" => Cell::Int(row.try_get(i)?),
        "REAL" => Cell::Real(row.try_get(i)?),
        _ => Cell::Text(
            row.try_get::<String, _>(i)
                .unwrap_or_else(|_| "<blob>".into()),
        ),
    })
}

/// Runs one statement of SQL text; every value typed by its storage class.
async fn run(pool: &SqlitePool, sql: &str) -> Result<Table, sqlx::Error> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_all(pool)
        .await?;
    let columns = rows
        .first()
        .map(|r| r.columns().iter().map(|c| c.name().to_string()).collect())
        .unwrap_or_default();
    let rows = rows
        .iter()
        .map(|r| (0..r.columns().len()).map(|i| cell(r, i)).collect())
        .collect::<Result<_, _>>()?;
    Ok(Table { columns, rows })
}

struct Checker<'a> {
    pool: &'a SqlitePool,
    from_ms: i64,
    to_ms: i64,
    queries: Vec<PanelQuery>,
    problems: Vec<String>,
}

impl Checker<'_> {
    fn problem(&mut self, p: String) {
        self.problems.push(p);
    }

    async fn dashboard(&mut self, name: &str, text: &str, uids: &mut BTreeSet<String>) {
        let d: Value = match serde_json::from_str(text) {
            Ok(d) => d,
            Err(e) => return self.problem(format!("{name}: invalid JSON: {e}")),
        };
        match d["uid"].as_str() {
            None => self.problem(format!("{name}: no uid")),
            Some(uid) if !uids.insert(uid.to_string()) => {
                self.problem(format!("{name}: uid {uid} used by another dashboard"))
            }
            Some(_) => {}
        }
        if d["title"].as_str().is_none_or(str::is_empty) {
            self.problem(format!("{name}: no title"));
        }
        let Some(vars) = self.variables(name, &d).await else {
            return; // the panels' queries cannot be expanded
        };
        let ps = panels(&d);
        if ps.is_empty() {
            self.problem(format!("{name}: no panels"));
        }
        self.layout(name, &ps);
        for p in ps {
            if p["type"] == "row" {
                continue;
            }
            let title = p["title"].as_str().unwrap_or("?");
            let at = format!("{name} / {title}");
            if p["datasource"]["uid"] != DATASOURCE_UID {
                self.problem(format!(
                    "{at}: datasource uid {} is not {DATASOURCE_UID}",
                    p["datasource"]["uid"]
                ));
            }
            if p["datasource"]["type"] != DATASOURCE_TYPE {
                self.problem(format!(
                    "{at}: datasource type {} is not {DATASOURCE_TYPE}",
                    p["datasource"]["type"]
                ));
            }
            let targets = p["targets"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            if targets.is_empty() {
                self.problem(format!("{at}: no targets"));
            }
            for t in targets {
                let ref_id = t["refId"].as_str().unwrap_or("?").to_string();
                let query = PanelQuery {
                    dashboard: name.to_string(),
                    panel: title.to_string(),
                    ref_id,
                    time_filtered: false,
                    rows: 0,
                };
                let chart = p["type"] == "timeseries";
                if let Err(e) = self.target(query, t, &vars, chart).await {
                    self.problem(format!(
                        "{at} / {}: {e}",
                        t["refId"].as_str().unwrap_or("?")
                    ));
                }
            }
        }
    }

    /// The report's reading rules where they apply to a dashboard: every time-series panel names its
    /// axis with a unit (`fieldConfig.defaults.custom.axisLabel`), and in a dashboard with a loss
    /// panel the first time-series panel (top to bottom, left to right) is a loss panel.
    fn layout(&mut self, name: &str, ps: &[&Value]) {
        let mut charts: Vec<(i64, i64, &str)> = Vec::new();
        for p in ps.iter().filter(|p| p["type"] == "timeseries") {
            let title = p["title"].as_str().unwrap_or("?");
            if p["fieldConfig"]["defaults"]["custom"]["axisLabel"]
                .as_str()
                .is_none_or(|l| l.trim().is_empty())
            {
                self.problem(format!(
                    "{name} / {title}: a time series without an axis label (fieldConfig.defaults.custom.axisLabel, with its unit)"
                ));
            }
            let at = |k: &str| p["gridPos"][k].as_i64().unwrap_or(i64::MAX);
            charts.push((at("y"), at("x"), title));
        }
        charts.sort();
        let is_loss = |t: &str| t.to_ascii_lowercase().contains("loss");
        if charts.iter().any(|c| is_loss(c.2))
            && let Some(first) = charts.first()
            && !is_loss(first.2)
        {
            self.problem(format!(
                "{name}: the first time series is {:?}; a dashboard with a loss panel shows it first",
                first.2
            ));
        }
    }

    /// The dashboard's variables in order, each query variable by running its query; `None` (and the
    /// problem recorded) when one has no value.
    async fn variables(&mut self, name: &str, d: &Value) -> Option<BTreeMap<String, String>> {
        let mut vars = BTreeMap::new();
        for v in d["templating"]["list"].as_array().into_iter().flatten() {
            let Some(var) = v["name"].as_str() else {
                self.problem(format!("{name}: a variable without a name"));
                return None;
            };
            match self.variable(v, &vars).await {
                Ok(value) => {
                    vars.insert(var.to_string(), value);
                }
                Err(e) => {
                    self.problem(format!("{name}: variable {var}: {e}"));
                    return None;
                }
            }
        }
        Some(vars)
    }

    async fn variable(&self, v: &Value, vars: &BTreeMap<String, String>) -> Result<String, String> {
        match v["type"].as_str() {
            Some("query") => {
                if v["datasource"]["uid"] != DATASOURCE_UID {
                    return Err(format!(
                        "datasource uid {} is not {DATASOURCE_UID}",
                        v["datasource"]["uid"]
                    ));
                }
                let q = v["query"]
                    .as_str()
                    .ok_or("the plugin takes a query string")?;
                let sql = apply_plugin_macros(
                    &interpolate(q, vars, self.from_ms, self.to_ms),
                    self.from_ms,
                    self.to_ms,
                )?;
                let t = run(self.pool, &sql)
                    .await
                    .map_err(|e| format!("{e}\n{sql}"))?;
                if t.rows.first().is_some_and(|r| r.len() != 1) {
                    return Err("the plugin needs exactly one column".into());
                }
                match t.rows.first().map(|r| &r[0]) {
                    Some(Cell::Text(s)) => Ok(s.clone()),
                    Some(Cell::Int(i)) => Ok(i.to_string()),
                    Some(Cell::Real(r)) => Ok(r.to_string()),
                    Some(Cell::Null) | None => Err(format!("no value: {sql}")),
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
                .ok_or_else(|| "no value".into()),
            other => Err(format!("type {other:?} is not handled")),
        }
    }

    /// Expands, runs and checks one query; records it when it ran.
    async fn target(
        &mut self,
        mut query: PanelQuery,
        t: &Value,
        vars: &BTreeMap<String, String>,
        chart: bool,
    ) -> Result<(), String> {
        let (from_ms, to_ms) = (self.from_ms, self.to_ms);
        if t["datasource"]["uid"] != DATASOURCE_UID {
            return Err(format!(
                "datasource uid {} is not {DATASOURCE_UID}",
                t["datasource"]["uid"]
            ));
        }
        let raw = t["rawQueryText"].as_str().ok_or("no rawQueryText")?;
        if t["queryText"].as_str() != Some(raw) {
            return Err("queryText and rawQueryText differ".into());
        }
        let query_type = t["queryType"].as_str();
        if !matches!(query_type, Some("table" | "time series")) {
            return Err(format!(
                "queryType {query_type:?} is not table or time series"
            ));
        }
        query.time_filtered = raw.contains("$__from") || raw.contains("$__to");
        let (sql, bucket) =
            expand_plugin_macros(&interpolate(raw, vars, from_ms, to_ms), from_ms, to_ms)?;
        if sql.contains('$') {
            return Err(format!("unexpanded variable or macro left in\n{sql}"));
        }
        let table = run(self.pool, &sql)
            .await
            .map_err(|e| format!("{e}\n{sql}"))?;
        query.rows = table.rows.len();
        if !table.rows.is_empty() {
            let time_columns: Vec<&str> = t["timeColumns"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let range = query.time_filtered.then(|| {
                let lo = from_ms as f64 / 1000.0 - bucket as f64 - 1.0;
                lo..=to_ms as f64 / 1000.0 + 1.0
            });
            check_times(
                &table,
                &time_columns,
                range,
                query_type == Some("time series"),
            )?;
            // Per-step series (not time buckets, where one bucket is a fair average) need two points.
            if chart && bucket == 0 {
                check_series_points(&table, &time_columns)?;
            }
        }
        self.queries.push(query);
        Ok(())
    }
}

/// Every series of a time-series panel's result has at least two rows: a single point is no curve
/// (the report's rule; such a figure belongs in a table). A series is a distinct value of the text
/// columns that are not time columns (Grafana's long-to-wide split); a result without any is one series.
fn check_series_points(t: &Table, time_columns: &[&str]) -> Result<(), String> {
    let mut rows: BTreeMap<Vec<String>, usize> = BTreeMap::new();
    for row in &t.rows {
        let key: Vec<String> = row
            .iter()
            .zip(&t.columns)
            .filter(|(_, c)| !time_columns.contains(&c.as_str()))
            .filter_map(|(v, _)| match v {
                Cell::Text(s) => Some(s.clone()),
                _ => None,
            })
            .collect();
        *rows.entry(key).or_default() += 1;
    }
    let single: Vec<String> = rows
        .into_iter()
        .filter(|(_, n)| *n < 2)
        .map(|(k, _)| k.join(" "))
        .collect();
    if single.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "series with a single point, drawn as an empty chart (leave them out, e.g. HAVING count(*) >= 2): {single:?}"
        ))
    }
}

/// The time columns of a non-empty result: present, unix seconds (within `range` when given), and
/// sorted when the result is a time series.
fn check_times(
    t: &Table,
    time_columns: &[&str],
    range: Option<std::ops::RangeInclusive<f64>>,
    time_series: bool,
) -> Result<(), String> {
    let present: Vec<(&str, usize)> = time_columns
        .iter()
        .filter_map(|c| Some((*c, t.columns.iter().position(|x| x == c)?)))
        .collect();
    if present.is_empty() {
        return Err(format!(
            "none of the time columns {time_columns:?} is in the result {:?}",
            t.columns
        ));
    }
    for (k, (c, i)) in present.iter().enumerate() {
        let mut previous = f64::NEG_INFINITY;
        for (n, row) in t.rows.iter().enumerate() {
            let Some(secs) = row[*i].as_f64() else {
                return Err(format!(
                    "time column `{c}` row {n} is {:?}, not a number of seconds",
                    row[*i]
                ));
            };
            match &range {
                Some(r) if !r.contains(&secs) => {
                    return Err(format!(
                        "time column `{c}` = {secs} is not unix seconds within the dashboard's range \
                         [{}, {}] (milliseconds would be ~1000x larger)",
                        r.start(),
                        r.end()
                    ));
                }
                None if !PLAUSIBLE_SECONDS.contains(&secs) => {
                    return Err(format!(
                        "time column `{c}` = {secs} is not a plausible number of unix seconds \
                         (milliseconds would be ~1000x larger)"
                    ));
                }
                _ => {}
            }
            if time_series && k == 0 {
                if secs < previous {
                    return Err(format!(
                        "a time series must be sorted by time (the plugin's long-to-wide \
                         conversion needs it): `{c}` goes back from {previous} to {secs} at row {n}"
                    ));
                }
                previous = secs;
            }
        }
    }
    Ok(())
}
