//! `bench serve`: concurrent clients against a server on 127.0.0.1 for a fixed time, with batched
//! decode on and off: requests completed (and any lost), p50/p99 time to first token and total
//! latency, aggregate generated tokens per second. On and off alternate within each round (which
//! goes first alternates between rounds), so the machine's drift falls on both; the ratio is the
//! median of the rounds' ratios.

use crate::{Engine, EngineConfig, Metrics, ServerState};
use serde::Serialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tardbot_model::TardBot;
use tardbot_tokens::tokenizer::LoadedTokenizer;

#[derive(Clone, Debug)]
pub struct BenchServeOptions {
    pub clients: Vec<usize>,
    /// Time each (clients, batching) cell runs.
    pub seconds: f64,
    pub max_tokens: usize,
    /// User messages the clients cycle through.
    pub prompts: Vec<String>,
    pub max_batch: usize,
    pub rounds: usize,
}

/// One cell of the table.
#[derive(Clone, Debug, Serialize)]
pub struct BenchServeRow {
    pub round: usize,
    pub clients: usize,
    pub batched: bool,
    pub completed: usize,
    /// Requests that failed or came back incomplete (should be 0).
    pub lost: usize,
    pub ttft_p50_ms: f64,
    pub ttft_p99_ms: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub tokens_per_s: f64,
    /// Mean sequences per decode step, from the server's metrics.
    pub mean_decode_batch: f64,
}

/// Runs every cell, each on a fresh server: per round, for each client count, batched and
/// unbatched back to back (batched first in even rounds).
pub async fn bench_serve(
    model: Arc<TardBot>,
    tokenizer: Arc<LoadedTokenizer>,
    opts: &BenchServeOptions,
) -> std::io::Result<Vec<BenchServeRow>> {
    let mut rows = Vec::new();
    for round in 0..opts.rounds.max(1) {
        for &clients in &opts.clients {
            let order = if round % 2 == 0 {
                [true, false]
            } else {
                [false, true]
            };
            for batched in order {
                let mut row =
                    cell(model.clone(), tokenizer.clone(), opts, clients, batched).await?;
                row.round = round;
                rows.push(row);
            }
        }
    }
    Ok(rows)
}

/// Per client count: the median over rounds of tokens/s batched / unbatched, with its range.
pub fn median_ratios(rows: &[BenchServeRow]) -> Vec<(usize, f64, f64, f64)> {
    let mut clients: Vec<usize> = rows.iter().map(|r| r.clients).collect();
    clients.sort_unstable();
    clients.dedup();
    clients
        .into_iter()
        .map(|c| {
            let rate = |round: usize, batched: bool| {
                rows.iter()
                    .find(|r| r.clients == c && r.round == round && r.batched == batched)
                    .map(|r| r.tokens_per_s)
            };
            let mut ratios: Vec<f64> = (0..=rows.iter().map(|r| r.round).max().unwrap_or(0))
                .filter_map(|round| Some(rate(round, true)? / rate(round, false)?))
                .filter(|r| r.is_finite())
                .collect();
            ratios.sort_by(f64::total_cmp);
            let (lo, hi) = (
                ratios.first().copied().unwrap_or(0.0),
                ratios.last().copied().unwrap_or(0.0),
            );
            (c, percentile(&mut ratios, 0.5), lo, hi)
        })
        .collect()
}

async fn cell(
    model: Arc<TardBot>,
    tokenizer: Arc<LoadedTokenizer>,
    opts: &BenchServeOptions,
    clients: usize,
    batched: bool,
) -> std::io::Result<BenchServeRow> {
    let metrics = Arc::new(Metrics::default());
    let context = model.config().max_seq_len;
    let engine = Engine::start(
        model,
        EngineConfig {
            max_batch: if batched { opts.max_batch } else { 1 },
            max_requests: clients.max(1) * 2,
            batched,
        },
        metrics.clone(),
    );
    let state = ServerState::new(
        "bench".into(),
        engine,
        tokenizer,
        context,
        crate::http::ServerTools::default(),
        metrics.clone(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/v1/chat/completions", listener.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(crate::serve(listener, Arc::new(state), async move {
        let _ = stop_rx.await;
    }));
    let deadline = Instant::now() + Duration::from_secs_f64(opts.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (url, opts) = (url.clone(), opts.clone());
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut out: Vec<Result<(f64, f64, usize), String>> = Vec::new();
            let mut i = c;
            while Instant::now() < deadline {
                let prompt = &opts.prompts[i % opts.prompts.len()];
                i += clients;
                let body = json!({"model": "bench", "stream": true, "temperature": 1.0, "seed": i,
                    "max_tokens": opts.max_tokens, "stream_options": {"include_usage": true},
                    "messages": [{"role": "user", "content": prompt}]});
                out.push(one_request(&http, &url, &body).await);
            }
            out
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.extend(t.await.unwrap_or_default());
    }
    let wall = started.elapsed().as_secs_f64();
    let (mut ttft, mut lat, mut tokens, mut lost) = (Vec::new(), Vec::new(), 0, 0);
    for r in &results {
        match r {
            Ok((t, l, n)) => {
                ttft.push(*t);
                lat.push(*l);
                tokens += n;
            }
            Err(_) => lost += 1,
        }
    }
    let text = metrics.render("bench");
    let read = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let steps = read("tardbot_serve_decode_steps_total");
    let seqs = read("tardbot_serve_decode_step_sequences_total");
    let _ = stop_tx.send(());
    let _ = server.await;
    Ok(BenchServeRow {
        round: 0,
        clients,
        batched,
        completed: ttft.len(),
        lost,
        ttft_p50_ms: percentile(&mut ttft, 0.5) * 1e3,
        ttft_p99_ms: percentile(&mut ttft, 0.99) * 1e3,
        latency_p50_ms: percentile(&mut lat, 0.5) * 1e3,
        latency_p99_ms: percentile(&mut lat, 0.99) * 1e3,
        tokens_per_s: tokens as f64 / wall,
        mean_decode_batch: if steps > 0.0 { seqs / steps } else { 0.0 },
    })
}

/// One streamed request: (time to first content, total time, completion tokens); an error for a
/// refused request or a stream without its `[DONE]`.
async fn one_request(
    http: &reqwest::Client,
    url: &str,
    body: &Value,
) -> Result<(f64, f64, usize), String> {
    let t0 = Instant::now();
    let mut r = http
        .post(url)
        .json(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !r.status().is_success() {
        return Err(format!("status {}", r.status()));
    }
    let (mut ttft, mut buf, mut tokens, mut done) = (None, String::new(), 0, false);
    while let Some(chunk) = r.chunk().await.map_err(|e| e.to_string())? {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(i) = buf.find("\n\n") {
            let ev: String = buf.drain(..i + 2).collect();
            let Some(data) = ev.trim().strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                done = true;
                continue;
            }
            let v: Value = serde_json::from_str(data).map_err(|e| e.to_string())?;
            if ttft.is_none()
                && v["choices"][0]["delta"]["content"]
                    .as_str()
                    .is_some_and(|c| !c.is_empty())
            {
                ttft = Some(t0.elapsed().as_secs_f64());
            }
            if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                tokens = n as usize;
            }
        }
    }
    if !done {
        return Err("the stream ended without [DONE]".into());
    }
    let total = t0.elapsed().as_secs_f64();
    Ok((ttft.unwrap_or(total), total, tokens))
}

fn percentile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}
