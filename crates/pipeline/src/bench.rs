//! `tardbot-pipeline bench WHAT`: every benchmark of the project. Each prints a human table and, as
//! its last line, one JSON object of its figures so that runs can be compared across commits.

use std::time::Instant;
use tardbot_core::memory::peak_rss_mib;
use tardbot_ledger::{AttemptStatus, Ledger, MetricPoint, MetricsWriter, NewRun};

/// Prints the figures as the final JSON line.
pub fn emit(figures: &serde_json::Value) {
    println!("{figures}");
}

/// Ledger: batched metric upserts (rows/s) and the per-step cost of logging ~20 metrics from a
/// training loop through the background writer.
pub async fn ledger(rows: usize) -> anyhow::Result<serde_json::Value> {
    let dir = tempfile::tempdir()?;
    let ledger = Ledger::open(&dir.path().join("bench.db")).await?;
    let run = ledger
        .create_run(NewRun {
            config_toml: "",
            config_hash: "",
            config_dir: ".",
            target_stages: &["bench".to_string()],
        })
        .await?;
    let attempt = ledger
        .start_attempt(run.id, "bench", "-", AttemptStatus::Running, None, None)
        .await?;
    let keys: Vec<String> = (0..20).map(|i| format!("metric_{i:02}")).collect();
    let point = |step: usize, k: usize| MetricPoint {
        attempt_id: attempt.id,
        key: keys[k].clone(),
        step: step as i64,
        value: (step * 20 + k) as f64 * 0.5,
    };

    // 1. Direct batched inserts, 10k rows per transaction.
    let batch = 10_000;
    let all: Vec<MetricPoint> = (0..rows).map(|i| point(i / 20, i % 20)).collect();
    let t = Instant::now();
    for chunk in all.chunks(batch) {
        ledger.write_metrics(chunk).await?;
    }
    let insert_s = t.elapsed().as_secs_f64();
    let rows_per_s = rows as f64 / insert_s;

    // 2. Upserts of the same keys (a resumed run replaying steps).
    let t = Instant::now();
    for chunk in all.chunks(batch) {
        ledger.write_metrics(chunk).await?;
    }
    let upsert_rows_per_s = rows as f64 / t.elapsed().as_secs_f64();

    // 3. A training loop's view: log 20 metrics per step, flush at the end (as at a checkpoint).
    let writer = MetricsWriter::spawn(ledger.clone());
    let steps = 20_000;
    let offset = rows / 20 + 1;
    let t = Instant::now();
    let mut log_ns_max = 0u128;
    for s in 0..steps {
        let t_log = Instant::now();
        writer.log((0..20).map(|k| point(offset + s, k)).collect());
        log_ns_max = log_ns_max.max(t_log.elapsed().as_nanos());
    }
    let log_s = t.elapsed().as_secs_f64();
    writer.flush().await?;
    let total_s = t.elapsed().as_secs_f64();
    let count = ledger.metric_count().await?;
    anyhow::ensure!(
        count as usize == rows + steps * 20,
        "lost rows: {count} in the ledger"
    );

    let per_step_log_us = log_s / steps as f64 * 1e6;
    let per_step_total_us = total_s / steps as f64 * 1e6;
    println!(
        "ledger benchmark ({} rows, batches of {batch}, 20 metrics per step)",
        rows
    );
    println!("  batched insert        {:>12.0} rows/s", rows_per_s);
    println!("  batched upsert        {:>12.0} rows/s", upsert_rows_per_s);
    println!(
        "  log() per step        {:>12.2} us   (max {:.1} us)",
        per_step_log_us,
        log_ns_max as f64 / 1e3
    );
    println!(
        "  log+commit per step   {:>12.2} us   (amortised, incl. background writes)",
        per_step_total_us
    );
    println!(
        "  peak RSS              {:>12.1} MiB",
        peak_rss_mib().unwrap_or(f64::NAN)
    );
    Ok(serde_json::json!({
        "bench": "ledger",
        "rows": rows,
        "insert_rows_per_s": rows_per_s.round(),
        "upsert_rows_per_s": upsert_rows_per_s.round(),
        "log_us_per_step": per_step_log_us,
        "log_commit_us_per_step": per_step_total_us,
        "peak_rss_mib": peak_rss_mib(),
    }))
}

/// `bench train`: what to run besides our own training steps.
#[derive(Clone, Debug)]
pub struct TrainBenchArgs {
    pub opts: tardbot_train::BenchTrainOptions,
    /// Python interpreter (with torch) to run the PyTorch peer with, back to back with ours.
    pub peer_python: Option<std::path::PathBuf>,
    /// The peer script (`shared/bench/torch_ref.py`).
    pub peer_script: std::path::PathBuf,
    /// Run the peer with `torch.compile`.
    pub peer_compile: bool,
    /// Also measure the peak RSS of one step with and without activation checkpointing, each in a
    /// fresh process.
    pub memory: bool,
}

/// The preset name the PyTorch peer knows for one of ours (same shapes: checked by hand against
/// `torch_ref.py`'s table — layers, hidden, experts, heads, window, vocab; KV heads = heads / 2,
/// intermediate = 4 × hidden, first quarter dense, top-2, tied embeddings in both).
fn peer_preset(preset: &str) -> Option<&'static str> {
    match preset {
        "tiny" => Some("tiny"),
        "mac_nano" => Some("mac_nano"),
        "mac_mini" => None, // ours: intermediate 4.5 × hidden; the peer's is 4 ×
        "mac_base" => Some("mac_base"),
        "mac_plus" => Some("mac_plus"),
        _ => None,
    }
}

/// The last line of `out` that parses as a JSON object.
fn last_json(out: &str) -> Option<serde_json::Value> {
    out.lines()
        .rev()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l.trim()).ok())
        .filter(|v| v.is_object())
}

/// Our training-step benchmark, then (optionally) the PyTorch peer with the same shapes and thread
/// count, and the ratio ours / PyTorch. The returned figures are ours plus `peer` and `ratio`.
pub async fn train(args: TrainBenchArgs) -> anyhow::Result<serde_json::Value> {
    use anyhow::Context;
    let applied = crate::runtime::tune_cpu_runtime();
    if !applied.is_empty() {
        println!("runtime settings applied: {}", applied.join(", "));
    }
    let opts = args.opts.clone();
    let mut figures =
        tokio::task::spawn_blocking(move || tardbot_train::bench_train(&opts)).await??;
    let threads = figures["threads"].as_u64().unwrap_or(2);

    if args.memory {
        let exe = std::env::current_exe().context("locating the running binary")?;
        let mut rss = serde_json::Map::new();
        for ckpt in [false, true] {
            let mut cmd = std::process::Command::new(&exe);
            cmd.args(["bench", "train", "--preset", &args.opts.preset])
                .args(["--batch", &args.opts.batch.to_string()])
                .args(["--seq", &args.opts.seq.to_string()])
                .args(["--steps", "1", "--warmup", "1"])
                // Return freed memory at once, so that the peak RSS of the timed step (reset after
                // the warm-up) is that step's own, not memory the allocator kept from before.
                .env("MIMALLOC_PURGE_DELAY", "0")
                .args(["--threads", &threads.to_string()]);
            if ckpt {
                cmd.arg("--checkpointing");
            }
            let out = cmd.output().context("running the memory measurement")?;
            let text = String::from_utf8_lossy(&out.stdout);
            let v = last_json(&text).with_context(|| {
                format!(
                    "no figures from {cmd:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })?;
            rss.insert(
                if ckpt {
                    "with_checkpointing"
                } else {
                    "without_checkpointing"
                }
                .into(),
                serde_json::json!({
                    "peak_rss_mib": v["peak_rss_mib"],
                    "rss_before_steps_mib": v["rss_before_steps_mib"],
                    "step_s": v["step_s"],
                }),
            );
        }
        let get = |k: &str, f: &str| rss[k][f].as_f64().unwrap_or(f64::NAN);
        println!(
            "peak RSS of one training step after a warm-up step (fresh process each, allocator purging freed memory at once):"
        );
        for k in ["without_checkpointing", "with_checkpointing"] {
            println!(
                "  {:<24} {:>9.1} MiB   (before the step: {:.1} MiB = weights + AdamW moments + allocator; step {:.2} s)",
                k.replace('_', " "),
                get(k, "peak_rss_mib"),
                get(k, "rss_before_steps_mib"),
                get(k, "step_s")
            );
        }
        figures["memory"] = serde_json::Value::Object(rss);
    }

    if let Some(python) = &args.peer_python {
        let preset = peer_preset(&args.opts.preset).with_context(|| {
            format!(
                "the PyTorch peer has no preset with the shapes of `{}`",
                args.opts.preset
            )
        })?;
        anyhow::ensure!(
            args.peer_script.exists(),
            "peer script {} not found (pass --peer-script)",
            args.peer_script.display()
        );
        let mut cmd = std::process::Command::new(python);
        cmd.arg(&args.peer_script)
            .args(["--preset", preset])
            .args(["--batch", &args.opts.batch.to_string()])
            .args(["--seq", &args.opts.seq.to_string()])
            .args(["--steps", &args.opts.steps.to_string()])
            .args(["--threads", &threads.to_string()])
            .args(["--device", args.opts.device.name()]);
        if args.opts.precision == tardbot_core::config::Precision::Bf16 {
            cmd.arg("--bf16");
        }
        if args.peer_compile {
            cmd.arg("--compile");
        }
        let out = cmd
            .output()
            .with_context(|| format!("running the peer {cmd:?}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let peer = last_json(&text).with_context(|| {
            format!(
                "the peer printed no JSON figures (exit {}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        let ours = figures["tokens_per_s"].as_f64().unwrap_or(f64::NAN);
        let theirs = peer["tokens_per_s"].as_f64().unwrap_or(f64::NAN);
        let ratio = ours / theirs;
        println!(
            "PyTorch peer ({preset}, same shapes, {threads} threads): {:.1} tokens/s; ours {:.1} tokens/s; ratio ours/PyTorch {:.3}",
            theirs, ours, ratio
        );
        figures["peer"] = peer;
        figures["ratio"] = serde_json::json!(ratio);
    }
    Ok(figures)
}

pub struct ExpertsBenchArgs {
    pub preset: String,
    pub batch: usize,
    pub seq: usize,
    pub steps: usize,
    pub warmup: usize,
    /// The swapped run's `max_experts_in_memory`.
    pub max_experts_in_memory: usize,
    pub checkpointing: bool,
    pub threads: Option<usize>,
    /// Run both configurations under this cgroup memory limit.
    pub memory_cap_mib: Option<u64>,
}

/// A cgroup with a memory limit that child processes join (v1 `memory` controller or v2), removed
/// when dropped. Linux only: elsewhere [`MemoryCap::new`] says so.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
struct MemoryCap {
    dir: std::path::PathBuf,
    procs: std::path::PathBuf,
}

impl MemoryCap {
    #[cfg(not(target_os = "linux"))]
    fn new(mib: u64) -> anyhow::Result<Self> {
        anyhow::bail!(
            "--memory-cap-mib {mib} needs Linux cgroups (the v1 memory controller or v2) and this \
             platform has none; run the benchmark without a memory cap"
        )
    }

    #[cfg(target_os = "linux")]
    fn new(mib: u64) -> anyhow::Result<Self> {
        use anyhow::Context;
        let name = format!("tardbot-bench-{}", std::process::id());
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        // v1: the memory controller's hierarchy, below this process's own group.
        let v1_root = std::path::Path::new("/sys/fs/cgroup/memory");
        let v1_own = own
            .lines()
            .find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_string()));
        let (dir, limit_file) = if v1_root.join("memory.limit_in_bytes").exists() {
            let base = v1_root.join(v1_own.unwrap_or_default().trim_start_matches('/'));
            (base.join(name), "memory.limit_in_bytes")
        } else {
            let own2 = own
                .lines()
                .find_map(|l| l.strip_prefix("0::"))
                .unwrap_or("/");
            let base = std::path::Path::new("/sys/fs/cgroup").join(own2.trim_start_matches('/'));
            (base.join(name), "memory.max")
        };
        std::fs::create_dir(&dir).with_context(|| {
            format!(
                "creating cgroup {} for the memory cap (needs root and a writable cgroup hierarchy)",
                dir.display()
            )
        })?;
        let cap = MemoryCap {
            procs: dir.join("cgroup.procs"),
            dir,
        };
        std::fs::write(cap.dir.join(limit_file), (mib << 20).to_string())
            .with_context(|| format!("setting {limit_file} in {}", cap.dir.display()))?;
        Ok(cap)
    }
}

impl Drop for MemoryCap {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Expert swapping against all-resident experts, each in a fresh process (`bench train` with
/// `--max-experts-in-memory`), on learnable sequences.
pub fn experts(args: ExpertsBenchArgs) -> anyhow::Result<serde_json::Value> {
    use anyhow::Context;
    use std::os::unix::process::ExitStatusExt;
    let cfg = tardbot_core::ModelConfig::from_preset(&args.preset)
        .with_context(|| format!("unknown preset `{}`", args.preset))?;
    anyhow::ensure!(
        cfg.n_moe_layers() > 0 && (1..cfg.n_experts).contains(&args.max_experts_in_memory),
        "preset `{}` has {} experts per MoE layer: --max-experts-in-memory must be in 1..{}",
        args.preset,
        cfg.n_experts,
        cfg.n_experts
    );
    let cap = args.memory_cap_mib.map(MemoryCap::new).transpose()?;
    let exe = std::env::current_exe().context("locating the running binary")?;
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut runs = Vec::new();
    for m in [cfg.n_experts, args.max_experts_in_memory] {
        // A shell joins the cgroup (if any), then becomes the benchmark.
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c")
            .arg(r#"if [ -n "$1" ]; then echo $$ > "$1" || exit 97; fi; shift; exec "$@""#)
            .arg("sh")
            .arg(cap.as_ref().map(|c| c.procs.clone()).unwrap_or_default())
            .arg(&exe)
            .args(["bench", "train", "--preset", &args.preset])
            .args(["--batch", &args.batch.to_string()])
            .args(["--seq", &args.seq.to_string()])
            .args(["--steps", &args.steps.to_string()])
            .args(["--warmup", &args.warmup.to_string()])
            .args(["--threads", &threads.to_string()])
            .args(["--max-experts-in-memory", &m.to_string()])
            .arg("--learnable")
            // Freed memory goes back at once: the peak RSS is the step's own.
            .env("MIMALLOC_PURGE_DELAY", "0");
        if args.checkpointing {
            cmd.arg("--checkpointing");
        }
        let started = Instant::now();
        let out = cmd.output().context("running a benchmark process")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let figures = last_json(&text);
        let killed = out.status.signal();
        let outcome = match (&figures, killed) {
            (Some(_), _) if out.status.success() => "trained".to_string(),
            (_, Some(9)) => "killed by the memory cap (SIGKILL from the OOM killer)".to_string(),
            _ => format!(
                "failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            ),
        };
        runs.push(serde_json::json!({
            "max_experts_in_memory": m,
            "outcome": outcome,
            "wall_s": started.elapsed().as_secs_f64(),
            "figures": figures,
        }));
    }

    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let expert_state_all = mib(cfg.expert_state_bytes(cfg.n_experts));
    let m = args.max_experts_in_memory;
    let predicted_saving = expert_state_all - mib(cfg.expert_state_bytes(m));
    let get = |i: usize, k: &str| runs[i]["figures"][k].as_f64().unwrap_or(f64::NAN);
    println!(
        "expert swapping: preset {}, batch {} × seq {}, {} timed steps after {} warm-up, {} threads{}{}",
        args.preset,
        args.batch,
        args.seq,
        args.steps,
        args.warmup,
        threads,
        if args.checkpointing {
            ", activation checkpointing"
        } else {
            ""
        },
        args.memory_cap_mib
            .map(|c| format!(", memory cap {c} MiB"))
            .unwrap_or_default()
    );
    println!(
        "  {:<28} {:>9} {:>10} {:>14} {:>16} {:>19}  outcome",
        "", "step s", "tokens/s", "peak RSS MiB", "describe() MiB", "loss first → last"
    );
    for (i, label) in [
        "all experts resident".to_string(),
        format!("max_experts_in_memory = {m}"),
    ]
    .iter()
    .enumerate()
    {
        println!(
            "  {:<28} {:>9.2} {:>10.1} {:>14.1} {:>16.1} {:>8.3} → {:>8.3}  {}",
            label,
            get(i, "step_s"),
            get(i, "tokens_per_s"),
            get(i, "peak_rss_mib"),
            get(i, "predicted_total_mib"),
            get(i, "first_loss"),
            get(i, "loss"),
            runs[i]["outcome"].as_str().unwrap_or("")
        );
    }
    let ratio = get(1, "step_s") / get(0, "step_s");
    let saving = get(0, "peak_rss_mib") - get(1, "peak_rss_mib");
    println!(
        "  step time, swapped / resident: {ratio:.3} (target ≤ 1.5); at most {} expert(s) were in memory at once",
        runs[1]["figures"]["peak_resident_experts"]
    );
    println!(
        "  expert state (weights + grads + AdamW moments): {expert_state_all:.1} MiB all resident; peak RSS saved {saving:.1} MiB = {:.1}% of it (target ≥ 60%); describe() predicts {predicted_saving:.1} MiB saved",
        100.0 * saving / expert_state_all
    );
    Ok(serde_json::json!({
        "bench": "experts",
        "preset": args.preset,
        "batch": args.batch,
        "seq": args.seq,
        "threads": threads,
        "memory_cap_mib": args.memory_cap_mib,
        "runs": runs,
        "step_time_ratio": ratio,
        "expert_state_mib": expert_state_all,
        "peak_rss_saved_mib": saving,
        "saved_fraction_of_expert_state": saving / expert_state_all,
        "predicted_saved_mib": predicted_saving,
    }))
}

/// `bench generate --peer PYTHON`: ours against llama.cpp on the GGUF `export` writes of the same
/// random model (f32 against our fp32, q8_0 against our int8), same prompt ids, token counts and
/// threads, in alternating rounds; prints the medians and their ratios, then one JSON line.
pub fn generate_with_peer(
    opts: &tardbot_model::BenchGenerateOptions,
    python: &std::path::Path,
    rounds: usize,
) -> anyhow::Result<serde_json::Value> {
    use anyhow::Context;
    use std::path::Path;
    use tardbot_export::{ExportDtype, Format, ModelCard, SourceModel};
    let cfg = tardbot_core::ModelConfig::from_preset(&opts.preset)
        .with_context(|| format!("unknown preset `{}`", opts.preset))?;
    let dir = tempfile::tempdir()?;
    let (_, vm) = tardbot_model::TardBot::new_random(
        &cfg,
        opts.seed,
        tardbot_model::candle_core::DType::F32,
        &tardbot_model::candle_core::Device::Cpu,
    )?;
    let weights = dir.path().join("model.safetensors");
    tardbot_model::save_safetensors(&vm, None, &weights)?;
    drop(vm);
    let model_json = dir.path().join("model.json");
    std::fs::write(&model_json, serde_json::to_vec(&cfg)?)?;
    // The GGUF needs a tokenizer; the benchmark feeds ids, so a small one trained here serves.
    let tokenizer = dir.path().join("tokenizer.json");
    let text = "the model reads the text and the model writes the text ".repeat(8);
    tardbot_tokenize::train_tokenizer::train_bpe(
        std::iter::once(text.as_str()),
        &tardbot_tokenize::train_tokenizer::TrainOptions {
            vocab_size: tardbot_tokens::special_tokens::N_SPECIAL + 256 + 16,
            min_frequency: 2,
            max_training_bytes: 1 << 20,
            seed: 0,
        },
        &tokenizer,
    )?;
    let src = SourceModel::load(&weights, &model_json, &tokenizer)?;
    let card = ModelCard {
        run: "bench".into(),
        stage: "random".into(),
        ..ModelCard::default()
    };
    let mut ggufs = Vec::new();
    for (name, dtype) in [("f32", ExportDtype::F32), ("q8_0", ExportDtype::Q8_0)] {
        let out = dir.path().join(name);
        tardbot_export::export(&src, &card, Format::Gguf, dtype, &out)?;
        ggufs.push((name, out.join("model.gguf")));
    }
    drop(src);
    let script = dir.path().join("bench_llama_cpp.py");
    std::fs::write(&script, include_str!("bench_llama_cpp.py"))?;
    let prompt = tardbot_model::bench_prompt(&cfg, opts);
    let threads = rayon::current_num_threads();
    let peer = |gguf: &Path| -> anyhow::Result<serde_json::Value> {
        let args = dir.path().join("peer.json");
        std::fs::write(
            &args,
            serde_json::to_vec(&serde_json::json!({"model": gguf, "prompt": prompt,
                "new_tokens": opts.new_tokens, "threads": threads}))?,
        )?;
        let out = std::process::Command::new(python)
            .arg(&script)
            .arg(&args)
            .output()
            .with_context(|| format!("running {}", python.display()))?;
        anyhow::ensure!(
            out.status.success(),
            "the llama.cpp peer failed (is llama-cpp-python installed? tests/interop/setup.sh):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        Ok(serde_json::from_str(stdout.lines().last().unwrap_or(""))?)
    };
    // (ours fp32, ours int8, peer f32, peer q8_0) × (prefill, decode), per round.
    let mut figures: Vec<[f64; 8]> = Vec::new();
    for round in 0..rounds.max(1) {
        let ours = tardbot_model::bench_generate(opts)?;
        let row = |w: &str, k: &str| {
            ours["results"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|r| r["weights"] == w)
                .and_then(|r| r[k].as_f64())
                .unwrap_or(f64::NAN)
        };
        let pf = peer(&ggufs[0].1)?;
        let pq = peer(&ggufs[1].1)?;
        let f = [
            row("fp32", "prefill_tokens_per_s"),
            row("fp32", "decode_tokens_per_s"),
            row("int8", "prefill_tokens_per_s"),
            row("int8", "decode_tokens_per_s"),
            pf["prefill_tokens_per_s"].as_f64().unwrap_or(f64::NAN),
            pf["decode_tokens_per_s"].as_f64().unwrap_or(f64::NAN),
            pq["prefill_tokens_per_s"].as_f64().unwrap_or(f64::NAN),
            pq["decode_tokens_per_s"].as_f64().unwrap_or(f64::NAN),
        ];
        println!(
            "round {}: prefill ours/llama.cpp f32 {:.1}/{:.1}, int8/q8_0 {:.1}/{:.1}; decode f32 {:.1}/{:.1}, int8/q8_0 {:.1}/{:.1} tok/s",
            round + 1,
            f[0],
            f[4],
            f[2],
            f[6],
            f[1],
            f[5],
            f[3],
            f[7]
        );
        figures.push(f);
    }
    let median = |v: &mut Vec<f64>| -> f64 {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let ratio = |a: usize, b: usize| median(&mut figures.iter().map(|f| f[a] / f[b]).collect());
    let v = serde_json::json!({
        "bench": "generate-peer",
        "preset": opts.preset,
        "threads": threads,
        "prompt_tokens": opts.prompt_tokens,
        "new_tokens": opts.new_tokens,
        "rounds": figures.len(),
        "ratio_prefill_f32": ratio(0, 4),
        "ratio_decode_f32": ratio(1, 5),
        "ratio_prefill_int8_vs_q8_0": ratio(2, 6),
        "ratio_decode_int8_vs_q8_0": ratio(3, 7),
        "rounds_figures": figures,
    });
    println!(
        "ours / llama.cpp (median of {} rounds): prefill f32 {:.2}, decode f32 {:.2}, prefill int8/q8_0 {:.2}, decode int8/q8_0 {:.2}",
        figures.len(),
        v["ratio_prefill_f32"].as_f64().unwrap_or(f64::NAN),
        v["ratio_decode_f32"].as_f64().unwrap_or(f64::NAN),
        v["ratio_prefill_int8_vs_q8_0"].as_f64().unwrap_or(f64::NAN),
        v["ratio_decode_int8_vs_q8_0"].as_f64().unwrap_or(f64::NAN)
    );
    Ok(v)
}
