//! `serve RUN`: a run's model behind the OpenAI-compatible API of `tardbot-serve`, and `bench serve`.

use crate::inference::RunModel;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tardbot_serve::bench::{BenchServeOptions, BenchServeRow, bench_serve, median_ratios};
use tardbot_serve::{Engine, EngineConfig, Metrics, ServerState, ServerTools};

/// Serves until Ctrl-C (in-flight requests finish first).
pub async fn serve(
    run: &str,
    m: RunModel,
    addr: SocketAddr,
    tools: ServerTools,
    engine: EngineConfig,
) -> anyhow::Result<()> {
    let model_id = format!("{run}/{}", m.stage);
    let context = m.model.model.config().max_seq_len;
    let metrics = Arc::new(Metrics::default());
    let tool_names = tools.names();
    let state = ServerState::new(
        model_id.clone(),
        Engine::start(Arc::new(m.model.model), engine.clone(), metrics.clone()),
        Arc::new(m.model.tokenizer),
        context,
        tools,
        metrics,
    );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let addr = listener.local_addr()?;
    eprintln!(
        "serving `{model_id}` (context {context} tokens, decode batch {}, {} requests at once, tools: {})",
        if engine.batched { engine.max_batch } else { 1 },
        engine.max_requests,
        if tool_names.is_empty() {
            "none".to_string()
        } else {
            tool_names.join(", ")
        }
    );
    eprintln!("  chat page      http://{addr}/");
    eprintln!("  OpenAI API     http://{addr}/v1  (model \"{model_id}\")");
    eprintln!("  metrics        http://{addr}/metrics");
    tardbot_serve::serve(listener, Arc::new(state), async {
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("stopping: finishing the requests in flight");
    })
    .await?;
    Ok(())
}

/// `bench serve --preset P` (its figures, for the JSON line): seeded random weights of the preset and a tokenizer trained on the
/// bundled prose sample (the figures are about the server, not the answers).
pub async fn bench(
    preset: &str,
    clients: Vec<usize>,
    seconds: f64,
    max_tokens: usize,
    max_batch: usize,
    rounds: usize,
) -> anyhow::Result<serde_json::Value> {
    let mut cfg = tardbot_core::ModelConfig::from_preset(preset)
        .ok_or_else(|| anyhow::anyhow!("no preset `{preset}`"))?;
    let dir = tempfile::tempdir()?;
    let prose = std::fs::read_to_string(Path::new("data/sample/prose.txt")).map_err(|e| {
        anyhow::anyhow!("bench serve reads data/sample/prose.txt (run it from the repository): {e}")
    })?;
    let docs: Vec<&str> = prose.split("\n\n").collect();
    let tokenizer_path = dir.path().join("tokenizer.json");
    tardbot_tokenize::train_tokenizer::train_bpe(
        docs.iter().copied(),
        &tardbot_tokenize::train_tokenizer::TrainOptions {
            vocab_size: 4096,
            min_frequency: 2,
            max_training_bytes: 1 << 30,
            seed: 1,
        },
        &tokenizer_path,
    )?;
    let tokenizer = tardbot_tokens::tokenizer::load_tokenizer(&tokenizer_path)?;
    cfg.vocab_size = tokenizer.vocab_size();
    let (model, _vars) = tardbot_model::TardBot::new_random(
        &cfg,
        0,
        tardbot_model::candle_core::DType::F32,
        &tardbot_model::candle_core::Device::Cpu,
    )?;
    // Prompts: the prose sample's paragraphs, cut to ~60 words.
    let prompts: Vec<String> = docs
        .iter()
        .filter(|d| d.len() > 200)
        .take(64)
        .map(|d| d.split_whitespace().take(60).collect::<Vec<_>>().join(" "))
        .collect();
    let opts = BenchServeOptions {
        clients,
        seconds,
        max_tokens,
        prompts,
        max_batch,
        rounds,
    };
    println!(
        "bench serve: {preset}, {max_tokens} new tokens per request, {seconds} s per cell, {rounds} rounds, streamed, sampled"
    );
    let rows = bench_serve(Arc::new(model), Arc::new(tokenizer), &opts).await?;
    print_rows(&rows);
    let mut ratios = Vec::new();
    for (clients, median, lo, hi) in median_ratios(&rows) {
        println!(
            "  {clients} clients: batched decode gives {median:.2}x the tokens/s (median of rounds; {lo:.2}-{hi:.2})"
        );
        ratios.push(
            serde_json::json!({"clients": clients, "median_ratio": median, "min": lo, "max": hi}),
        );
    }
    Ok(
        serde_json::json!({"bench": "serve", "preset": preset, "max_tokens": max_tokens,
        "rounds": rounds, "ratios": ratios, "rows": rows}),
    )
}

fn print_rows(rows: &[BenchServeRow]) {
    println!(
        "{:>5} {:>7} {:>8} {:>9} {:>5} {:>10} {:>10} {:>12} {:>12} {:>9} {:>9}",
        "round",
        "clients",
        "batched",
        "completed",
        "lost",
        "ttft p50",
        "ttft p99",
        "latency p50",
        "latency p99",
        "tokens/s",
        "mean batch"
    );
    for r in rows {
        println!(
            "{:>5} {:>7} {:>8} {:>9} {:>5} {:>8.0}ms {:>8.0}ms {:>10.0}ms {:>10.0}ms {:>9.1} {:>9.2}",
            r.round,
            r.clients,
            if r.batched { "on" } else { "off" },
            r.completed,
            r.lost,
            r.ttft_p50_ms,
            r.ttft_p99_ms,
            r.latency_p50_ms,
            r.latency_p99_ms,
            r.tokens_per_s,
            r.mean_decode_batch
        );
    }
}
