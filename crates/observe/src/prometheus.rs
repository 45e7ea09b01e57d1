//! The live metrics endpoint: `GET /metrics` in Prometheus' text exposition format (version 0.0.4),
//! read from the ledger at every scrape.
//!
//! A deliberately tiny HTTP/1.1 responder on tokio's `TcpListener`: one request per connection
//! (`Connection: close`), `GET`/`HEAD` only, request heads up to 8 KiB, 10 s to send one. Meant for
//! 127.0.0.1; it has no authentication.

use crate::db::read_pool;
use crate::error::{ObserveError, QueryContext};
use crate::keys::{LayerKey, parse_layer_key};
use sqlx::{Row, SqlitePool};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tardbot_ledger::Ledger;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MAX_HEAD: usize = 8 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(10);
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A bound, not yet serving, metrics endpoint.
pub struct MetricsServer {
    listener: TcpListener,
    pool: SqlitePool,
    run: Option<i64>,
}

impl MetricsServer {
    /// Binds `addr` (use port 0 for any free port) and opens read-only ledger connections.
    /// `run`: the run to expose; `None` follows the newest run of the ledger at each scrape, so a
    /// server started before `run` creates its run still shows it.
    pub async fn bind(
        addr: SocketAddr,
        ledger: &Ledger,
        run: Option<i64>,
    ) -> Result<MetricsServer, ObserveError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ObserveError::Listen { addr, source })?;
        let pool = read_pool(ledger).await?;
        Ok(MetricsServer {
            listener,
            pool,
            run,
        })
    }

    /// The address actually bound (the port chosen for port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, ObserveError> {
        self.listener
            .local_addr()
            .map_err(|source| ObserveError::Listen {
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                source,
            })
    }

    /// Answers scrapes until `shutdown` completes. Connections are served concurrently; a failing
    /// connection is logged and dropped, never ends the server.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), ObserveError> {
        let addr = self.local_addr()?;
        tracing::info!(%addr, "metrics endpoint listening: http://{addr}/metrics");
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let pool = self.pool.clone();
                        let run = self.run;
                        tokio::spawn(async move {
                            if let Err(e) = handle(stream, &pool, run).await {
                                tracing::debug!(%peer, error = %e, "metrics connection dropped");
                            }
                        });
                    }
                    // Out of file descriptors and the like: back off instead of spinning.
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics endpoint cannot accept");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
        self.pool.close().await;
        Ok(())
    }
}

/// Binds `addr` and serves `GET /metrics` for `run` (see [`MetricsServer::bind`]) until `shutdown`.
pub async fn serve_metrics(
    addr: SocketAddr,
    ledger: Ledger,
    run: Option<i64>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ObserveError> {
    MetricsServer::bind(addr, &ledger, run)
        .await?
        .serve(shutdown)
        .await
}

/// The exposition text for `run` (`None`: the newest run), as a scrape returns it.
pub async fn exposition(ledger: &Ledger, run: Option<i64>) -> Result<String, ObserveError> {
    let pool = read_pool(ledger).await?;
    let text = render(&pool, run).await;
    pool.close().await;
    text
}

async fn handle(mut stream: TcpStream, pool: &SqlitePool, run: Option<i64>) -> std::io::Result<()> {
    let head = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(head) => head?,
        Err(_) => {
            return respond(
                &mut stream,
                "408 Request Timeout",
                "text/plain",
                b"timeout\n",
                false,
            )
            .await;
        }
    };
    let Some(head) = head else {
        return respond(
            &mut stream,
            "431 Request Header Fields Too Large",
            "text/plain",
            b"request head too large\n",
            false,
        )
        .await;
    };
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            b"only GET and HEAD\n",
            false,
        )
        .await;
    }
    match path {
        "/metrics" => match render(pool, run).await {
            Ok(body) => {
                respond(
                    &mut stream,
                    "200 OK",
                    CONTENT_TYPE,
                    body.as_bytes(),
                    head_only,
                )
                .await
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics scrape failed");
                let body = format!("ledger query failed: {e}\n");
                respond(
                    &mut stream,
                    "500 Internal Server Error",
                    "text/plain",
                    body.as_bytes(),
                    head_only,
                )
                .await
            }
        },
        "/" => {
            respond(
                &mut stream,
                "200 OK",
                "text/plain; charset=utf-8",
                b"TardBot metrics: GET /metrics\n",
                head_only,
            )
            .await
        }
        _ => {
            respond(
                &mut stream,
                "404 Not Found",
                "text/plain",
                b"not found; try /metrics\n",
                head_only,
            )
            .await
        }
    }
}

/// Reads up to the blank line ending the request head; `None` when it exceeds [`MAX_HEAD`].
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.truncate(end);
            return Ok(Some(String::from_utf8_lossy(&buf).into_owned()));
        }
        if buf.len() > MAX_HEAD {
            return Ok(None);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            // The peer closed early; answer what we have (a bare request line still counts).
            return Ok(Some(String::from_utf8_lossy(&buf).into_owned()));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
    head_only: bool,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if !head_only {
        stream.write_all(body).await?;
    }
    stream.shutdown().await
}

/// Escapes a label value: backslash, double quote and newline.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Builds the exposition: every family gets `# HELP` and `# TYPE` once, then its samples.
#[derive(Default)]
struct Exposition {
    families: Vec<(&'static str, &'static str, Vec<String>)>,
}

impl Exposition {
    fn sample(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
        value: f64,
    ) {
        let mut line = String::from(name);
        if !labels.is_empty() {
            line.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    line.push(',');
                }
                let _ = write!(line, "{k}=\"{}\"", label(v));
            }
            line.push('}');
        }
        let _ = write!(line, " {}", fmt_value(value));
        match self.families.iter_mut().find(|f| f.0 == name) {
            Some(f) => f.2.push(line),
            None => self.families.push((name, help, vec![line])),
        }
    }

    fn text(&self) -> String {
        let mut out = String::new();
        for (name, help, lines) in &self.families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for l in lines {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

fn fmt_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}

const RUN_STATUSES: [&str; 5] = ["pending", "running", "succeeded", "failed", "interrupted"];
const ATTEMPT_STATUSES: [&str; 5] = ["running", "succeeded", "failed", "cached", "interrupted"];

/// Reads the run's state and renders the exposition text.
async fn render(pool: &SqlitePool, run: Option<i64>) -> Result<String, ObserveError> {
    let mut x = Exposition::default();
    let run_row = match run {
        Some(id) => {
            sqlx::query("SELECT * FROM v_run_progress WHERE run_id = ?")
                .bind(id)
                .fetch_optional(pool)
                .await
        }
        None => {
            sqlx::query("SELECT * FROM v_run_progress ORDER BY run_id DESC LIMIT 1")
                .fetch_optional(pool)
                .await
        }
    }
    .ctx("select v_run_progress")?;
    let Some(p) = run_row else {
        x.sample(
            "tardbot_run_found",
            "1 when the ledger holds the run this endpoint exposes.",
            &[],
            0.0,
        );
        return Ok(x.text());
    };
    let get = |what: &'static str| move |e: sqlx::Error| ObserveError::Query { what, source: e };
    let run_id: i64 = p.try_get("run_id").map_err(get("decode run"))?;
    let name: String = p.try_get("run").map_err(get("decode run"))?;
    let status: String = p.try_get("status").map_err(get("decode run"))?;
    let r = [("run", name.as_str())];
    x.sample(
        "tardbot_run_found",
        "1 when the ledger holds the run this endpoint exposes.",
        &[],
        1.0,
    );
    for s in RUN_STATUSES {
        x.sample(
            "tardbot_run_status",
            "1 for the run's current status, 0 for the others.",
            &[("run", &name), ("status", s)],
            f64::from(u8::from(status == s)),
        );
    }
    if let Ok(Some(age)) = p.try_get::<Option<f64>, _>("heartbeat_age_s") {
        x.sample(
            "tardbot_run_heartbeat_age_seconds",
            "Seconds since the run's last heartbeat.",
            &r,
            age,
        );
    }
    let done: i64 = p.try_get("stages_done").map_err(get("decode run"))?;
    x.sample(
        "tardbot_run_stages_done",
        "Stages of the run that succeeded or were cached.",
        &r,
        done as f64,
    );
    if let Ok(Some(n)) = p.try_get::<Option<i64>, _>("stages_targeted") {
        x.sample(
            "tardbot_run_stages_targeted",
            "Stages the run was asked to execute.",
            &r,
            n as f64,
        );
    }
    let counts = sqlx::query(
        "SELECT status, count(*) AS n FROM stage_attempts WHERE run_id = ? GROUP BY status",
    )
    .bind(run_id)
    .fetch_all(pool)
    .await
    .ctx("count attempts")?;
    let mut by_status: BTreeMap<String, i64> = BTreeMap::new();
    for c in &counts {
        by_status.insert(
            c.try_get("status").ctx("decode counts")?,
            c.try_get("n").ctx("decode counts")?,
        );
    }
    for s in ATTEMPT_STATUSES {
        x.sample(
            "tardbot_stage_attempts",
            "Stage attempts of the run by status.",
            &[("run", &name), ("status", s)],
            by_status.get(s).copied().unwrap_or(0) as f64,
        );
    }
    let stage: Option<String> = p.try_get("stage").ctx("decode run")?;
    if let Some(stage) = &stage {
        let attempt: Option<i64> = p.try_get("attempt").ctx("decode run")?;
        let a_status: Option<String> = p.try_get("attempt_status").ctx("decode run")?;
        x.sample(
            "tardbot_current_stage",
            "The run's newest stage attempt (value 1; stage, attempt and status in labels).",
            &[
                ("run", &name),
                ("stage", stage),
                ("attempt", &attempt.unwrap_or(0).to_string()),
                ("status", a_status.as_deref().unwrap_or("")),
            ],
            1.0,
        );
    }

    // Training metrics: the newest attempt that logged any, latest value of every key.
    let trained = sqlx::query(
        "SELECT a.id, a.stage FROM stage_attempts a
         WHERE a.run_id = ? AND EXISTS (SELECT 1 FROM metrics m WHERE m.attempt_id = a.id)
         ORDER BY a.id DESC LIMIT 1",
    )
    .bind(run_id)
    .fetch_optional(pool)
    .await
    .ctx("select trained attempt")?;
    if let Some(t) = trained {
        let attempt_id: i64 = t.try_get("id").ctx("decode attempt")?;
        let tstage: String = t.try_get("stage").ctx("decode attempt")?;
        training_samples(&mut x, pool, attempt_id, &name, &tstage).await?;
    }

    let ckpts = sqlx::query(
        "SELECT a.stage, max(c.step) AS step, max(c.tokens) AS tokens, count(*) AS n
         FROM stage_attempts a JOIN checkpoints c ON c.attempt_id = a.id
         WHERE a.run_id = ? AND c.complete = 1 GROUP BY a.stage ORDER BY min(a.id)",
    )
    .bind(run_id)
    .fetch_all(pool)
    .await
    .ctx("select checkpoints")?;
    for c in &ckpts {
        let stage: String = c.try_get("stage").ctx("decode checkpoints")?;
        let l = [("run", name.as_str()), ("stage", stage.as_str())];
        let step: i64 = c.try_get("step").ctx("decode checkpoints")?;
        let tokens: i64 = c.try_get("tokens").ctx("decode checkpoints")?;
        let n: i64 = c.try_get("n").ctx("decode checkpoints")?;
        x.sample(
            "tardbot_checkpoint_step",
            "Step of the stage's newest complete checkpoint.",
            &l,
            step as f64,
        );
        x.sample(
            "tardbot_checkpoint_tokens",
            "Tokens seen at the stage's newest complete checkpoint.",
            &l,
            tokens as f64,
        );
        x.sample(
            "tardbot_checkpoints",
            "Complete checkpoints of the stage.",
            &l,
            n as f64,
        );
    }

    let evals = sqlx::query(
        "SELECT stage, suite, metric, after, last_step FROM v_stage_evals WHERE run_id = ?",
    )
    .bind(run_id)
    .fetch_all(pool)
    .await
    .ctx("select v_stage_evals")?;
    for e in &evals {
        let stage: String = e.try_get("stage").ctx("decode evals")?;
        let suite: String = e.try_get("suite").ctx("decode evals")?;
        let metric: String = e.try_get("metric").ctx("decode evals")?;
        let l = [
            ("run", name.as_str()),
            ("stage", stage.as_str()),
            ("suite", suite.as_str()),
            ("metric", metric.as_str()),
        ];
        if let Some(v) = e.try_get::<Option<f64>, _>("after").ctx("decode evals")? {
            x.sample("tardbot_eval", "Newest eval result of the stage.", &l, v);
        }
        if let Some(s) = e
            .try_get::<Option<i64>, _>("last_step")
            .ctx("decode evals")?
        {
            x.sample(
                "tardbot_eval_step",
                "Training step of the newest eval of the stage.",
                &l,
                s as f64,
            );
        }
    }
    Ok(x.text())
}

/// Latest value of every metric key of one attempt. The keys are enumerated with a recursive
/// "skip scan" over the primary key and each key's newest step found by a seek, so a scrape costs
/// O(keys · log rows) however long the run is.
async fn training_samples(
    x: &mut Exposition,
    pool: &SqlitePool,
    attempt_id: i64,
    run: &str,
    stage: &str,
) -> Result<(), ObserveError> {
    let rows = sqlx::query(
        "WITH RECURSIVE keys(key) AS (
             SELECT (SELECT min(key) FROM metrics WHERE attempt_id = ?1)
             UNION ALL
             SELECT (SELECT min(m.key) FROM metrics m WHERE m.attempt_id = ?1 AND m.key > keys.key)
             FROM keys WHERE keys.key IS NOT NULL
         )
         SELECT k.key, m.step, m.value
         FROM keys k JOIN metrics m ON m.attempt_id = ?1 AND m.key = k.key
          AND m.step = (SELECT max(step) FROM metrics WHERE attempt_id = ?1 AND key = k.key)
         WHERE k.key IS NOT NULL",
    )
    .bind(attempt_id)
    .fetch_all(pool)
    .await
    .ctx("select latest metrics")?;
    let l = [("run", run), ("stage", stage)];
    let (mut loss_step, mut max_step): (Option<i64>, Option<i64>) = (None, None);
    let mut loads: BTreeMap<u32, Vec<(u32, f64)>> = BTreeMap::new();
    for r in &rows {
        let key: String = r.try_get("key").ctx("decode metric")?;
        let s: i64 = r.try_get("step").ctx("decode metric")?;
        max_step = max_step.max(Some(s));
        if key == "loss" {
            loss_step = Some(s);
        }
        // NULL is a NaN or infinity the stage logged: exposed as NaN (a diverged loss shows as such).
        let value: Option<f64> = r.try_get("value").ctx("decode metric")?;
        let v = value.unwrap_or(f64::NAN);
        match (key.as_str(), parse_layer_key(&key)) {
            (_, Some(LayerKey::ExpertLoad { layer, expert })) => {
                if let Some(v) = value {
                    loads.entry(layer).or_default().push((expert, v));
                }
            }
            (_, Some(LayerKey::RouterEntropy { layer })) => x.sample(
                "tardbot_router_entropy",
                "Entropy of the router's distribution over experts, per MoE layer (newest step).",
                &[
                    ("run", run),
                    ("stage", stage),
                    ("layer", &layer.to_string()),
                ],
                v,
            ),
            (_, Some(LayerKey::DeadExperts { layer })) => x.sample(
                "tardbot_dead_experts",
                "Experts of the MoE layer that received no tokens (newest step).",
                &[
                    ("run", run),
                    ("stage", stage),
                    ("layer", &layer.to_string()),
                ],
                v,
            ),
            ("loss", None) => x.sample("tardbot_loss", "Training loss at the newest step.", &l, v),
            ("aux_loss", None) => x.sample(
                "tardbot_aux_loss",
                "Router load-balancing loss at the newest step.",
                &l,
                v,
            ),
            ("z_loss", None) => {
                x.sample("tardbot_z_loss", "Router z-loss at the newest step.", &l, v)
            }
            ("grad_norm", None) => x.sample(
                "tardbot_grad_norm",
                "Global gradient norm at the newest step.",
                &l,
                v,
            ),
            ("lr", None) => x.sample(
                "tardbot_learning_rate",
                "Learning rate at the newest step.",
                &l,
                v,
            ),
            ("tokens_per_s", None) => x.sample(
                "tardbot_tokens_per_second",
                "Training throughput at the newest step.",
                &l,
                v,
            ),
            ("mfu", None) => x.sample(
                "tardbot_mfu",
                "Model FLOPs utilisation (0..1) at the newest step.",
                &l,
                v,
            ),
            (other, None) => x.sample(
                "tardbot_metric",
                "Any other metric the stage logs, newest value per key.",
                &[("run", run), ("stage", stage), ("key", other)],
                v,
            ),
        }
    }
    if let Some(s) = loss_step.or(max_step) {
        x.sample(
            "tardbot_step",
            "Newest training step of the stage (of its loss when logged).",
            &l,
            s as f64,
        );
    }
    for (layer, experts) in loads {
        let total: f64 = experts.iter().map(|e| e.1).sum();
        let layer = layer.to_string();
        for (expert, tokens) in experts {
            let expert = expert.to_string();
            let el = [
                ("run", run),
                ("stage", stage),
                ("layer", layer.as_str()),
                ("expert", expert.as_str()),
            ];
            x.sample(
                "tardbot_expert_load_tokens",
                "Tokens routed to the expert at the newest logged step.",
                &el,
                tokens,
            );
            if total > 0.0 {
                x.sample(
                    "tardbot_expert_load_share",
                    "The expert's share of its layer's routed tokens at the newest logged step (1/experts is balanced).",
                    &el,
                    tokens / total,
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_format() {
        let mut x = Exposition::default();
        x.sample(
            "tardbot_loss",
            "Loss.",
            &[("run", "run-1"), ("stage", "a\"b\\c\nd")],
            2.5,
        );
        x.sample(
            "tardbot_loss",
            "Loss.",
            &[("run", "run-2"), ("stage", "s")],
            f64::NAN,
        );
        x.sample("tardbot_up", "Up.", &[], 1.0);
        assert_eq!(
            x.text(),
            "# HELP tardbot_loss Loss.\n# TYPE tardbot_loss gauge\n\
             tardbot_loss{run=\"run-1\",stage=\"a\\\"b\\\\c\\nd\"} 2.5\n\
             tardbot_loss{run=\"run-2\",stage=\"s\"} NaN\n\
             # HELP tardbot_up Up.\n# TYPE tardbot_up gauge\ntardbot_up 1\n"
        );
        assert_eq!(fmt_value(1e-7), "0.0000001");
        assert_eq!(fmt_value(f64::NEG_INFINITY), "-Inf");
    }
}
