//! Every panel query of every dashboard in dashboards/json, expanded as Grafana and the
//! frser-sqlite-datasource plugin expand it, runs against the fixture ledger and returns rows whose
//! time columns are unix seconds ([`check_dashboards`]; the expansion is documented there). The
//! end-to-end pipeline test runs the same check against the ledger of a real run.

use crate::fixture::{Fixture, extra_ledger};
use crate::sql::read_only;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tardbot_observe::{
    DATASOURCE_TYPE, DATASOURCE_UID, ObserveError, apply_plugin_macros, check_dashboards,
    interpolate,
};

fn dashboards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dashboards")
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

#[tokio::test]
async fn every_panel_query_returns_rows_with_time_in_seconds() {
    let f = Fixture::build().await;
    // Grafana's default range for these dashboards is the last 24 hours; the fixture was written just now.
    let to_ms = tardbot_ledger::now_ms() + 60_000;
    let from_ms = to_ms - 24 * 3600 * 1000;
    let check = check_dashboards(&dashboards_dir(), &f.ledger_path(), from_ms, to_ms)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        check.queries.len() >= 25,
        "only {} panel queries",
        check.queries.len()
    );
    assert_eq!(check.empty(), Vec::<String>::new(), "queries without rows");

    // A range that ends before the run: exactly the time-filtered queries come back empty, which a
    // query comparing seconds with milliseconds (or ignoring the range) would not.
    let (old_from, old_to) = (from_ms - 48 * 3600 * 1000, from_ms - 24 * 3600 * 1000);
    let old = check_dashboards(&dashboards_dir(), &f.ledger_path(), old_from, old_to)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(old.queries.len(), check.queries.len());
    let filtered: Vec<String> = old
        .queries
        .iter()
        .filter(|q| q.time_filtered)
        .map(ToString::to_string)
        .collect();
    assert!(
        filtered.len() >= 10,
        "only {} time-filtered queries",
        filtered.len()
    );
    assert_eq!(old.empty(), filtered, "rows outside the time range");

    if let Some(path) = extra_ledger() {
        let pool = read_only(&path).await;
        let first: i64 = sqlx::query_scalar("SELECT min(created_ms) FROM runs")
            .fetch_one(&pool)
            .await
            .expect("runs");
        pool.close().await;
        let to_ms = tardbot_ledger::now_ms() + 60_000;
        let check = check_dashboards(&dashboards_dir(), &path, first - 60_000, to_ms)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        eprintln!(
            "TARDBOT_TEST_LEDGER {}: {} panel queries ok, {} with rows; empty: {:#?}",
            path.display(),
            check.queries.len(),
            check.with_rows(),
            check.empty()
        );
    }
}

#[tokio::test]
async fn problems_name_the_dashboard_panel_and_query() {
    let f = Fixture::build().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("json")).unwrap();
    let ds = serde_json::json!({"type": DATASOURCE_TYPE, "uid": DATASOURCE_UID});
    let target = |sql: &str| {
        serde_json::json!({
            "refId": "A", "datasource": ds, "queryType": "time series", "timeColumns": ["time"],
            "rawQueryText": sql, "queryText": sql
        })
    };
    let labelled = |title: &str, sql: &str, label: &str, y: i64| {
        serde_json::json!({
            "type": "timeseries", "title": title, "datasource": ds, "targets": [target(sql)],
            "gridPos": {"x": 0, "y": y, "w": 24, "h": 5},
            "fieldConfig": {"defaults": {"custom": {"axisLabel": label}}}
        })
    };
    let panel = |title: &str, sql: &str| labelled(title, sql, "value (unit)", 0);
    let dashboard = serde_json::json!({
        "uid": "bad", "title": "Bad",
        "panels": [
            panel("Milliseconds", "SELECT time_ms AS time, value FROM metrics WHERE time_ms >= $__from AND time_ms <= $__to"),
            panel("Unsorted", "SELECT time_ms / 1000.0 AS time FROM metrics ORDER BY time DESC"),
            panel("Typo", "SELECT time FROM no_such_view"),
            panel("Unknown variable", "SELECT time FROM v_evals WHERE run = '$nope'"),
            panel("Fine", "SELECT time FROM v_evals ORDER BY time"),
        ]
    });
    std::fs::write(dir.path().join("json/bad.json"), dashboard.to_string()).unwrap();
    std::fs::write(dir.path().join("json/broken.json"), "{").unwrap();
    // The report's reading rules: axis labels, the loss first, no single-point series.
    let rules = serde_json::json!({
        "uid": "rules", "title": "Rules",
        "panels": [
            labelled("Throughput", "SELECT time, stage, tokens_per_s FROM v_throughput ORDER BY time", "", 0),
            labelled("Loss", "SELECT time, stage, loss FROM v_stage_loss ORDER BY time", "loss (nats/token)", 5),
            labelled(
                "One eval",
                "SELECT time, stage || ' ' || suite AS series, value FROM v_evals \
                 WHERE run = 'run-1' AND stage = 'sft' AND metric = 'loss' ORDER BY time",
                "loss (nats/token)",
                10,
            ),
        ]
    });
    std::fs::write(dir.path().join("json/rules.json"), rules.to_string()).unwrap();
    let to_ms = tardbot_ledger::now_ms() + 60_000;
    let err = check_dashboards(dir.path(), &f.ledger_path(), to_ms - 86_400_000, to_ms)
        .await
        .expect_err("problems");
    let ObserveError::Dashboards { problems } = &err else {
        panic!("{err}");
    };
    let starts: Vec<&str> = problems
        .iter()
        .map(|p| p.split(':').next().unwrap())
        .collect();
    assert_eq!(
        starts,
        [
            "bad.json / Milliseconds / A",
            "bad.json / Unsorted / A",
            "bad.json / Typo / A",
            "bad.json / Unknown variable / A",
            "broken.json",
            "rules.json / Throughput",
            "rules.json",
            "rules.json / One eval / A",
        ],
        "{err}"
    );
    assert!(problems[5].contains("without an axis label"), "{err}");
    assert!(
        problems[6].contains("the first time series is \"Throughput\""),
        "{err}"
    );
    assert!(
        problems[7].contains("single point") && problems[7].contains("sft val"),
        "{err}"
    );
    assert!(problems[0].contains("not unix seconds"), "{err}");
    assert!(problems[1].contains("sorted"), "{err}");
    assert!(problems[3].contains("unexpanded"), "{err}");
}

/// `(file name, JSON)` of every dashboard, for the provisioning checks.
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

#[test]
fn provisioning_points_at_the_dashboards_and_the_fixed_datasource() {
    let dir = dashboards_dir().join("provisioning");
    let ds = std::fs::read_to_string(dir.join("datasources/tardbot-ledger.yaml"))
        .expect("datasource provisioning");
    assert!(
        ds.contains(&format!("uid: {DATASOURCE_UID}")),
        "datasource uid"
    );
    assert!(
        ds.contains(&format!("type: {DATASOURCE_TYPE}")),
        "datasource plugin"
    );
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
