//! The `tardbot-pipeline` command line.

use crate::orchestrator::{Orchestrator, RunOptions, error_chain};
use crate::registry::Registry;
use crate::workspace::Workspace;
use crate::{bench, inference, logging, report};
use anyhow::Context as _;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tardbot_core::{ModelConfig, PipelineConfig};
use tardbot_ledger::{Ledger, RunStatus};

#[derive(Parser, Debug)]
#[command(
    name = "tardbot-pipeline",
    version,
    about = "Raw text to a small MoE chat model: run, resume and inspect the TardBot pipeline."
)]
pub struct Cli {
    /// The pipeline file.
    #[arg(long, short, global = true, default_value = "pipeline.toml")]
    pub config: PathBuf,
    /// Workspace directory (ledger and runs); default: `workspace` from the pipeline file.
    #[arg(long, global = true)]
    pub workspace: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Start a new run of `all` stages, or of the named stages and their upstream.
    Run {
        #[arg(required = true, value_name = "all|STAGE")]
        targets: Vec<String>,
        /// Run STAGE even if a cached result exists (repeatable; `all` forces every stage).
        #[arg(long, value_name = "STAGE")]
        force: Vec<String>,
        /// Serve live Prometheus metrics of the run on this address (e.g. 127.0.0.1:9464).
        #[arg(long, value_name = "ADDR")]
        metrics_addr: Option<SocketAddr>,
        /// Ingest only shard I of N of the input files (0-based, e.g. `--shard 0/4`); the shards'
        /// manifests merge.
        #[arg(long, value_name = "I/N")]
        shard: Option<String>,
    },
    /// Continue an interrupted or failed run from where it stopped, with its recorded config.
    Resume {
        run: String,
        #[arg(long, value_name = "STAGE")]
        force: Vec<String>,
        #[arg(long, value_name = "ADDR")]
        metrics_addr: Option<SocketAddr>,
    },
    /// Write a self-contained HTML report of a run (default: <workspace>/runs/<run>/report.html).
    Report {
        run: String,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Stages of a run (default: the newest) with state, attempts, duration, cached/resumed.
    Status { run: Option<String> },
    /// Table of all runs.
    Runs,
    /// Parameter counts and memory of a model preset.
    Describe {
        preset: String,
        #[arg(long, default_value_t = 8)]
        batch: usize,
        #[arg(long, default_value_t = 256)]
        seq: usize,
    },
    /// Check a pipeline file; every problem is reported with file, line and field.
    Validate { file: Option<PathBuf> },
    /// Answer one prompt with a run's model (default: its newest finished training stage), streaming.
    Generate {
        run: String,
        #[arg(long)]
        prompt: String,
        #[command(flatten)]
        opts: GenerateArgs,
    },
    /// Talk to a run's model turn by turn (stdin; /reset, /quit).
    Chat {
        run: String,
        #[command(flatten)]
        opts: GenerateArgs,
    },
    /// Score a run's model on a file with a stage's task eval; prints and records the figures.
    Eval {
        run: String,
        /// A chat stage's eval suite (`sft`, `toolcall`, `cot` in the shipped pipeline), or `agent`:
        /// tasks run end to end through the tool loop with the real tools (see agent_eval.rs).
        #[arg(long)]
        suite: String,
        /// Example JSONL (a stage's examples/val.jsonl), or the suite's source format (BFCL rows for
        /// toolcall, GSM rows for cot); for `agent`, task JSONL (data/sample/agent_tasks.jsonl).
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        limit: Option<usize>,
        /// Which stage's model (default: the newest finished training stage).
        #[arg(long)]
        stage: Option<String>,
        #[arg(long, default_value_t = 128)]
        max_new_tokens: usize,
    },
    /// Write a run's model for another runtime: `hf` (a Hugging Face transformers directory) or
    /// `gguf` (one llama.cpp file), recorded in the ledger as an `export` of the run.
    Export {
        run: String,
        /// Which stage's model (default: the newest finished training stage).
        #[arg(long)]
        stage: Option<String>,
        /// `hf` or `gguf`.
        #[arg(long)]
        format: String,
        /// Weights' type: f32, f16, bf16 (hf) or q8_0 (gguf).
        #[arg(long, default_value = "f32")]
        dtype: String,
        /// The directory to create (it must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// Serve a run's model over an OpenAI-compatible HTTP API (`/v1/chat/completions`, `/v1/models`,
    /// streaming, tool calls), with a web chat page at `/` and Prometheus metrics at `/metrics`.
    Serve {
        run: String,
        /// Which stage's model (default: the newest finished training stage).
        #[arg(long)]
        stage: Option<String>,
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: SocketAddr,
        /// Built-in tools the server runs itself, comma-separated (e.g. `python,calculator`); tools a
        /// request brings are returned to its client as `tool_calls`.
        #[arg(long, value_delimiter = ',')]
        tools: Vec<String>,
        /// Sequences decoded together (batched decode).
        #[arg(long, default_value_t = 16)]
        max_batch: usize,
        /// Requests admitted at once (decoding or queued); more are answered 429.
        #[arg(long, default_value_t = 64)]
        max_requests: usize,
        /// Decode one sequence per forward pass (for comparison with batched decode).
        #[arg(long)]
        no_batching: bool,
    },
    /// Run one built-in tool directly and print its JSON result (exit 0), or its error (exit 1): a
    /// check of a machine's tool setup.
    Tool {
        /// `calculator`, `convert_units`, `element_lookup`, …
        name: String,
        /// The call's arguments, a JSON object.
        #[arg(long, default_value = "{}")]
        args: String,
        /// A run whose `search_index` stage built the offline `search` index to use (unless
        /// `[tools.search] index` names one).
        #[arg(long)]
        run: Option<String>,
    },
    /// Run a benchmark; prints a table, then one JSON line of figures.
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
}

/// Sampling options of `generate` and `chat`.
#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// Which stage's model (default: the newest finished training stage).
    #[arg(long)]
    pub stage: Option<String>,
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    #[arg(long, default_value_t = 50)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// A system turn before the conversation.
    #[arg(long)]
    pub system: Option<String>,
    /// Tools the model may call, comma-separated (e.g. `calculator,python`): offered in the system
    /// turn; each call is executed and its result fed back before the model continues.
    #[arg(long, value_delimiter = ',')]
    pub tools: Vec<String>,
}

impl GenerateArgs {
    /// `settings` are the pipeline file's `[tools.*]` (`python`'s sandbox, `search`'s backend,
    /// `browser`'s hosts).
    fn options(
        &self,
        settings: &tardbot_tools::ToolSettings,
    ) -> anyhow::Result<inference::GenerateOptions> {
        let tools = if self.tools.is_empty() {
            None
        } else {
            let names: Vec<&str> = self.tools.iter().map(String::as_str).collect();
            Some(
                tardbot_tools::ToolRegistry::builtin_with(&names, settings)
                    .map_err(anyhow::Error::msg)?,
            )
        };
        Ok(inference::GenerateOptions {
            max_new_tokens: self.max_new_tokens,
            sampling: tardbot_model::SamplingParams {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                seed: self.seed,
            },
            system: self.system.clone(),
            tools,
        })
    }
}

#[derive(Subcommand, Debug)]
pub enum BenchWhat {
    /// Batched metric inserts and per-step logging cost.
    Ledger {
        #[arg(long, default_value_t = 1_000_000)]
        rows: usize,
    },
    /// Ingest throughput (MB/s) and peak memory on a corpus replicated with variations.
    Ingest {
        /// `<|endoftext|>`-separated text to replicate (default: ../shared/corpora/prose/train.txt).
        #[arg(long)]
        corpus: Option<PathBuf>,
        #[arg(long, default_value_t = 12)]
        copies: usize,
        /// zstd level of the output shards (default: the `[ingest]` default).
        #[arg(long, allow_hyphen_values = true)]
        zstd_level: Option<i32>,
        /// Ingests of the same input (median and best printed; all must write the same shards).
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Tokenizer training on the prose corpus, encode speed against Python tokenizers, packing, loader.
    Tokenize {
        #[arg(long, default_value = "../shared/corpora")]
        corpora: PathBuf,
    },
    /// Generation tokens/s, fp32 and int8 weights; with `--peer PYTHON`, llama.cpp (llama-cpp-python)
    /// on the GGUF export of the same model, in alternating rounds, and the ratios ours / llama.cpp.
    Generate {
        #[arg(long, default_value = "mac_nano")]
        preset: String,
        #[arg(long, default_value_t = 64)]
        prompt_tokens: usize,
        #[arg(long, default_value_t = 64)]
        new_tokens: usize,
        /// A Python with llama-cpp-python (tests/interop/setup.sh makes one).
        #[arg(long)]
        peer: Option<PathBuf>,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// The API server under concurrent streamed clients (1, 8, 32 by default) for a fixed time each,
    /// batched decode on and off: requests completed, p50/p99 time to first token and latency,
    /// aggregate tokens/s. Random weights of the preset; run from the repository (reads data/sample).
    Serve {
        #[arg(long, default_value = "tiny")]
        preset: String,
        #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
        clients: Vec<usize>,
        #[arg(long, default_value_t = 20.0)]
        seconds: f64,
        #[arg(long, default_value_t = 64)]
        max_tokens: usize,
        #[arg(long, default_value_t = 32)]
        max_batch: usize,
        /// Rounds of on/off pairs (order alternating); the ratio is the median over rounds.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Training steps (forward, backward, AdamW) on random tokens, fp32 CPU: tokens/s, MFU, time per
    /// phase, peak RSS; with `--peer PYTHON`, the PyTorch peer (`torch_ref.py`) with the same shapes
    /// back to back and the ratio ours / PyTorch.
    Train {
        #[arg(long, default_value = "tiny")]
        preset: String,
        #[arg(long, default_value_t = 8)]
        batch: usize,
        #[arg(long, default_value_t = 256)]
        seq: usize,
        /// Timed steps.
        #[arg(long, default_value_t = 5)]
        steps: usize,
        /// Untimed steps before them.
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        /// Segmented backward (activation checkpointing).
        #[arg(long)]
        checkpointing: bool,
        /// Rayon threads (default: the global pool, RAYON_NUM_THREADS or one per core).
        #[arg(long)]
        threads: Option<usize>,
        /// fp32 peak for the MFU, GFLOP/s (default: this machine's FMA peak, measured on the
        /// benchmark's threads right before the timed steps).
        #[arg(long)]
        peak_gflops: Option<f64>,
        /// Python with torch: also run the PyTorch peer with the same shapes and print the ratio.
        #[arg(long)]
        peer: Option<PathBuf>,
        #[arg(long, default_value = "../shared/bench/torch_ref.py")]
        peer_script: PathBuf,
        /// Also measure peak RSS of one step with and without activation checkpointing.
        #[arg(long)]
        memory: bool,
        /// Experts resident at once (default: all; below the expert count: experts swapped
        /// through the memory-mapped expert store).
        #[arg(long)]
        max_experts_in_memory: Option<usize>,
        /// Train on learnable sequences instead of random tokens (the loss falls).
        #[arg(long)]
        learnable: bool,
        /// auto | cpu | cuda | metal, as `[execution] device` (the peer runs on the same device).
        #[arg(long, default_value = "cpu", value_parser = parse_device)]
        device: tardbot_core::config::Device,
        /// f32 | bf16 | f16, as `[execution] precision` (the peer gets `--bf16` with bf16).
        #[arg(long, default_value = "f32", value_parser = tardbot_core::config::Precision::parse)]
        precision: tardbot_core::config::Precision,
        /// Run the peer with `torch.compile` (`--compile`).
        #[arg(long)]
        peer_compile: bool,
    },
    /// Tool latency on this machine, loopback only: a sandboxed Python call (cold), a `search`
    /// against a recorded DuckDuckGo page served on 127.0.0.1, a browser page load on 127.0.0.1
    /// (fresh Chromium, and in the running one); median, min, max over the rounds. Each is skipped,
    /// with a message, where bubblewrap or Chromium is missing.
    Tools {
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// Expert swapping: training steps with every expert resident and with `max_experts_in_memory`
    /// (default 1) experts in memory, each in a fresh process: step-time ratio, peak RSS against the
    /// expert state and the `describe` prediction; with `--memory-cap-mib`, both run under a cgroup
    /// memory limit (root, cgroup v1 or v2).
    Experts {
        #[arg(long, default_value = "mac_nano")]
        preset: String,
        #[arg(long, default_value_t = 4)]
        batch: usize,
        #[arg(long, default_value_t = 256)]
        seq: usize,
        #[arg(long, default_value_t = 2)]
        steps: usize,
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        #[arg(long, default_value_t = 1)]
        max_experts_in_memory: usize,
        /// Segmented backward in both runs.
        #[arg(long)]
        checkpointing: bool,
        #[arg(long)]
        threads: Option<usize>,
        /// Run both under this memory limit (MiB): shows that swapping trains where all-resident
        /// cannot.
        #[arg(long)]
        memory_cap_mib: Option<u64>,
    },
}

/// Entry point of the shipped binary.
pub fn main(registry: Registry) -> ExitCode {
    ExitCode::from(main_with_args(registry, std::env::args_os()))
}

/// Entry point with explicit arguments and stage registry (tests drive the real CLI with test
/// stages). Returns the process exit code: 0 ok, 1 failure, 2 bad usage or config, 130 interrupted.
pub fn main_with_args<I, T>(registry: Registry, args: I) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    logging::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(dispatch(cli, registry)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_chain(e.as_ref()));
            1
        }
    }
}

fn load_config(registry: &Registry, path: &Path) -> Result<(PipelineConfig, String), u8> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!(
                "error: cannot read pipeline file {}: {e} (pass another with --config FILE)",
                path.display()
            );
            return Err(2);
        }
    };
    match registry.load_config(path) {
        Ok(cfg) => Ok((cfg, text)),
        Err(e) => {
            eprintln!("error: {e}");
            Err(2)
        }
    }
}

/// The built-in tools' settings from the pipeline file's `[tools.python]`, `[tools.search]` and
/// `[tools.browser]`; the defaults when the file does not exist (tools need no pipeline), exit code
/// 2 when it is invalid.
fn tool_settings(registry: &Registry, config: &Path) -> Result<tardbot_tools::ToolSettings, u8> {
    if !config.exists() {
        return Ok(tardbot_tools::ToolSettings::default());
    }
    load_config(registry, config).map(|(c, _)| Registry::tool_settings(&c))
}

fn workspace(
    registry: &Registry,
    cli_ws: &Option<PathBuf>,
    config: &Path,
) -> Result<Workspace, u8> {
    match cli_ws {
        Some(ws) => Ok(Workspace::new(ws)),
        None => load_config(registry, config).map(|(c, _)| Workspace::new(c.workspace_dir())),
    }
}

fn exit_for(status: RunStatus) -> u8 {
    match status {
        RunStatus::Succeeded => 0,
        RunStatus::Interrupted => 130,
        _ => 1,
    }
}

async fn dispatch(cli: Cli, registry: Registry) -> anyhow::Result<u8> {
    match cli.command {
        Command::Run {
            targets,
            force,
            metrics_addr,
            shard,
        } => {
            let (config, text) = match load_config(&registry, &cli.config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let (config, text) = match shard {
                None => (config, text),
                Some(s) => {
                    match tardbot_ingest::with_shard(&s, &text, &cli.config, &config.base_dir) {
                        Ok(c) => c,
                        Err(e) => {
                            eprintln!("error: --shard {s}: {e}");
                            return Ok(2);
                        }
                    }
                }
            };
            let ws = Workspace::new(
                cli.workspace
                    .clone()
                    .unwrap_or_else(|| config.workspace_dir()),
            );
            let orch = Orchestrator::open(registry, ws).await?;
            let metrics = LiveMetrics::start(metrics_addr, &orch.ledger, None).await?;
            let outcome = orch
                .run(config, &text, &targets, &RunOptions { force })
                .await;
            metrics.stop().await;
            let outcome = outcome?;
            print_outcome(&orch, &outcome).await?;
            Ok(exit_for(outcome.status))
        }
        Command::Resume {
            run,
            force,
            metrics_addr,
        } => {
            let ws = match workspace(&registry, &cli.workspace, &cli.config) {
                Ok(ws) => ws,
                Err(code) => return Ok(code),
            };
            let orch = Orchestrator::open(registry, ws).await?;
            let existing = orch.ledger.run(&run).await?;
            if existing.status == RunStatus::Succeeded && force.is_empty() {
                println!("{} already succeeded; nothing to resume", existing.name);
                return Ok(0);
            }
            let metrics = LiveMetrics::start(metrics_addr, &orch.ledger, Some(existing.id)).await?;
            let outcome = orch.resume(&run, &RunOptions { force }).await;
            metrics.stop().await;
            let outcome = outcome?;
            print_outcome(&orch, &outcome).await?;
            Ok(exit_for(outcome.status))
        }
        Command::Report { run, out } => {
            let ws = match workspace(&registry, &cli.workspace, &cli.config) {
                Ok(ws) => ws,
                Err(code) => return Ok(code),
            };
            let ledger = Ledger::open(&ws.ledger_path()).await?;
            let found = ledger.run(&run).await?;
            let html = tardbot_observe::render_report(&ledger, &run).await?;
            let path = out.unwrap_or_else(|| ws.run_dir(&found.name).join("report.html"));
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            std::fs::write(&path, html).with_context(|| format!("writing {}", path.display()))?;
            println!("{}", path.display());
            Ok(0)
        }
        Command::Status { run } => {
            let ws = match workspace(&registry, &cli.workspace, &cli.config) {
                Ok(ws) => ws,
                Err(code) => return Ok(code),
            };
            let ledger = Ledger::open(&ws.ledger_path()).await?;
            let run = match run {
                Some(r) => ledger.run(&r).await?,
                None => match ledger.runs().await?.into_iter().next() {
                    Some(r) => r,
                    None => {
                        println!("no runs yet in {}", ledger.path().display());
                        return Ok(0);
                    }
                },
            };
            print!("{}", report::status(&ledger, &ws, &run).await?);
            Ok(0)
        }
        Command::Generate { run, prompt, opts } => {
            let ws = match workspace(&registry, &cli.workspace, &cli.config) {
                Ok(ws) => ws,
                Err(code) => return Ok(code),
            };
            let (ledger, run) = inference::open_run(&ws, &run).await?;
            let m =
                inference::load_run_model(&registry, &ledger, &run, opts.stage.as_deref()).await?;
            let settings = match tool_settings(&registry, &cli.config) {
                Ok(s) => inference::with_run_search_index(s, &ledger, &run).await?,
                Err(code) => return Ok(code),
            };
            inference::generate(&m, &prompt, &opts.options(&settings)?)?;
            Ok(0)
        }
        Command::Chat { run, opts } => {
            let ws = match workspace(&registry, &cli.workspace, &cli.config) {
                Ok(ws) => ws,
                Err(code) => return Ok(code),
            };
            let (ledger, run) = inference::open_run(&ws, &run).await?;
            let m =
                inference::load_run_model(&registry, &ledger, &run, opts.stage.as_deref()).await?;
            let settings = match tool_settings(&registry, &cli.config) {
                Ok(s) => inference::with_run_search_index(s, &ledger, &run).await?,
                Err(code) => return Ok(code),
            };
            inference::chat(&m, &opts.options(&settings)?)?;
            Ok(0)
        }
        Command::Serve {
            run,
            stage,
            addr,
            tools,
            max_batch,
            max_requests,
            no_batching,
        } => {
            let ws = match workspace(&registry, &cli.workspace, &cli.config) {
                Ok(ws) => ws,
                Err(code) => return Ok(code),
            };
            let settings = match tool_settings(&registry, &cli.config) {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            if max_batch == 0 || max_requests == 0 {
                anyhow::bail!("--max-batch and --max-requests must be at least 1");
            }
            let (ledger, run) = inference::open_run(&ws, &run).await?;
            let settings = inference::with_run_search_index(settings, &ledger, &run).await?;
            let names: Vec<&str> = tools.iter().map(String::as_str).collect();
            let tools =
                tardbot_serve::ServerTools::new(&names, settings).map_err(anyhow::Error::msg)?;
            let m = inference::load_run_model(&registry, &ledger, &run, stage.as_deref()).await?;
            let engine = tardbot_serve::EngineConfig {
                max_batch,
                max_requests,
                batched: !no_batching,
            };
            crate::serve::serve(&run.name, m, addr, tools, engine).await?;
            Ok(0)
        }
        Command::Tool { name, args, run } => {
            let settings = match tool_settings(&registry, &cli.config) {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            let settings = match run {
                Some(run) => {
                    let ws = match workspace(&registry, &cli.workspace, &cli.config) {
                        Ok(ws) => ws,
                        Err(code) => return Ok(code),
                    };
                    let (ledger, run) = inference::open_run(&ws, &run).await?;
                    inference::with_run_search_index(settings, &ledger, &run).await?
                }
                None => settings,
            };
            Ok(crate::tools::run_one(&name, &args, &settings))
        }
        Command::Export {
            run,
            stage,
            format,
            dtype,
            out,
        } => {
            let Some(format) = tardbot_export::Format::parse(&format) else {
                eprintln!("error: --format {format}: expected hf or gguf");
                return Ok(2);
            };
            let Some(dtype) = tardbot_export::ExportDtype::parse(&dtype) else {
                eprintln!("error: --dtype {dtype}: expected f32, f16, bf16 or q8_0");
                return Ok(2);
            };
            let ws = match workspace(&registry, &cli.workspace, &cli.config) {
                Ok(ws) => ws,
                Err(code) => return Ok(code),
            };
            let (ledger, run) = inference::open_run(&ws, &run).await?;
            let done = crate::export::export(
                &registry,
                &ledger,
                &run,
                stage.as_deref(),
                format,
                dtype,
                &out,
            )
            .await?;
            println!(
                "exported the `{}` model of run {} as {} {} (ledger attempt {}):",
                done.stage,
                run.name,
                format.name(),
                dtype.name(),
                done.attempt_id
            );
            for f in &done.files {
                println!("  {}", f.display());
            }
            Ok(0)
        }
        Command::Eval {
            run,
            suite,
            data,
            limit,
            stage,
            max_new_tokens,
        } => {
            let ws = match workspace(&registry, &cli.workspace, &cli.config) {
                Ok(ws) => ws,
                Err(code) => return Ok(code),
            };
            let (ledger, run) = inference::open_run(&ws, &run).await?;
            let m = inference::load_run_model(&registry, &ledger, &run, stage.as_deref()).await?;
            if suite == "agent" {
                let settings = match tool_settings(&registry, &cli.config) {
                    Ok(s) => inference::with_run_search_index(s, &ledger, &run).await?,
                    Err(code) => return Ok(code),
                };
                crate::agent_eval::eval(
                    &registry,
                    &ledger,
                    &run,
                    &m,
                    &settings,
                    &data,
                    limit,
                    max_new_tokens,
                )
                .await?;
                return Ok(0);
            }
            inference::eval(
                &registry,
                &ledger,
                &run,
                &m,
                &suite,
                &data,
                limit,
                max_new_tokens,
            )
            .await?;
            Ok(0)
        }
        Command::Runs => {
            let ws = match workspace(&registry, &cli.workspace, &cli.config) {
                Ok(ws) => ws,
                Err(code) => return Ok(code),
            };
            let ledger = Ledger::open(&ws.ledger_path()).await?;
            print!("{}", report::runs(&ledger, &ws).await?);
            Ok(0)
        }
        Command::Describe { preset, batch, seq } => match ModelConfig::from_preset(&preset) {
            Some(m) => {
                println!("{}", m.describe(batch, seq));
                Ok(0)
            }
            None => {
                eprintln!(
                    "error: preset `{preset}` does not exist; choose one of: {}",
                    ModelConfig::preset_names().join(", ")
                );
                Ok(2)
            }
        },
        Command::Validate { file } => {
            let path = file.unwrap_or(cli.config);
            match load_config(&registry, &path) {
                Ok((cfg, _)) => {
                    println!(
                        "{}: ok (preset {}, workspace {})",
                        path.display(),
                        cfg.model.preset,
                        cfg.workspace_dir().display()
                    );
                    Ok(0)
                }
                Err(code) => Ok(code),
            }
        }
        Command::Bench { what } => {
            let figures = match what {
                BenchWhat::Ledger { rows } => {
                    bench::ledger(rows).await.context("ledger benchmark")?
                }
                BenchWhat::Ingest {
                    corpus,
                    copies,
                    zstd_level,
                    runs,
                } => {
                    let opts = tardbot_ingest::BenchOptions {
                        corpus,
                        copies,
                        zstd_level,
                        runs,
                        ..Default::default()
                    };
                    tokio::task::spawn_blocking(move || tardbot_ingest::bench_ingest(&opts))
                        .await??
                }
                BenchWhat::Tokenize { corpora } => {
                    anyhow::ensure!(
                        corpora.join("prose/train.txt").exists(),
                        "the tokenize benchmark needs the prose corpus at {}/prose/train.txt (pass --corpora DIR)",
                        corpora.display()
                    );
                    let scratch = tempfile::tempdir()?;
                    let dir = scratch.path().to_path_buf();
                    tokio::task::spawn_blocking(move || {
                        tardbot_tokenize::bench::bench_tokenize_on_corpora(&corpora, &dir)
                    })
                    .await??
                }
                BenchWhat::Generate {
                    preset,
                    prompt_tokens,
                    new_tokens,
                    peer,
                    rounds,
                } => {
                    let opts = tardbot_model::BenchGenerateOptions {
                        preset,
                        prompt_tokens,
                        new_tokens,
                        seed: 0,
                    };
                    match peer {
                        Some(python) => {
                            tokio::task::spawn_blocking(move || {
                                bench::generate_with_peer(&opts, &python, rounds)
                            })
                            .await??
                        }
                        None => {
                            tokio::task::spawn_blocking(move || {
                                tardbot_model::bench_generate(&opts)
                            })
                            .await??
                        }
                    }
                }
                BenchWhat::Serve {
                    preset,
                    clients,
                    seconds,
                    max_tokens,
                    max_batch,
                    rounds,
                } => {
                    crate::serve::bench(&preset, clients, seconds, max_tokens, max_batch, rounds)
                        .await?
                }
                BenchWhat::Train {
                    preset,
                    batch,
                    seq,
                    steps,
                    warmup,
                    checkpointing,
                    threads,
                    peak_gflops,
                    peer,
                    peer_script,
                    memory,
                    max_experts_in_memory,
                    learnable,
                    device,
                    precision,
                    peer_compile,
                } => bench::train(bench::TrainBenchArgs {
                    opts: tardbot_train::BenchTrainOptions {
                        preset,
                        batch,
                        seq,
                        steps,
                        warmup,
                        activation_checkpointing: checkpointing,
                        threads,
                        peak_gflops,
                        seed: 0,
                        max_experts_in_memory,
                        learnable,
                        device: device.resolve().with_context(|| {
                            format!(
                                "this tardbot-pipeline was built without the `{}` backend",
                                device.name()
                            )
                        })?,
                        precision,
                    },
                    peer_python: peer,
                    peer_script,
                    peer_compile,
                    memory,
                })
                .await
                .context("training benchmark")?,
                BenchWhat::Tools { rounds } => {
                    tokio::task::spawn_blocking(move || crate::bench_tools::tools(rounds))
                        .await?
                        .context("tools benchmark")?
                }
                BenchWhat::Experts {
                    preset,
                    batch,
                    seq,
                    steps,
                    warmup,
                    max_experts_in_memory,
                    checkpointing,
                    threads,
                    memory_cap_mib,
                } => bench::experts(bench::ExpertsBenchArgs {
                    preset,
                    batch,
                    seq,
                    steps,
                    warmup,
                    max_experts_in_memory,
                    checkpointing,
                    threads,
                    memory_cap_mib,
                })
                .context("expert-swapping benchmark")?,
            };
            bench::emit(&figures);
            Ok(0)
        }
    }
}

async fn print_outcome(
    orch: &Orchestrator,
    outcome: &crate::orchestrator::RunOutcome,
) -> anyhow::Result<()> {
    print!(
        "{}",
        report::status(&orch.ledger, &orch.workspace, &outcome.run).await?
    );
    println!(
        "{} {} in {:.2}s{}",
        outcome.run.name,
        outcome.status,
        outcome.elapsed.as_secs_f64(),
        match outcome.status {
            RunStatus::Succeeded => String::new(),
            _ => format!(
                " — continue with: tardbot-pipeline resume {}",
                outcome.run.name
            ),
        }
    );
    Ok(())
}

/// The optional Prometheus endpoint of `run`/`resume --metrics-addr`.
struct LiveMetrics {
    task: Option<(
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    )>,
}

impl LiveMetrics {
    async fn start(
        addr: Option<SocketAddr>,
        ledger: &Ledger,
        run: Option<i64>,
    ) -> anyhow::Result<LiveMetrics> {
        let Some(addr) = addr else {
            return Ok(LiveMetrics { task: None });
        };
        let server = tardbot_observe::MetricsServer::bind(addr, ledger, run).await?;
        eprintln!("live metrics: http://{}/metrics", server.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            if let Err(e) = server
                .serve(async {
                    let _ = stopped.await;
                })
                .await
            {
                tracing::warn!(error = %e, "metrics endpoint stopped");
            }
        });
        Ok(LiveMetrics {
            task: Some((stop, task)),
        })
    }

    async fn stop(self) {
        if let Some((stop, task)) = self.task {
            let _ = stop.send(());
            let _ = task.await;
        }
    }
}

/// `--device`: the names of `[execution] device`.
fn parse_device(s: &str) -> Result<tardbot_core::config::Device, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| format!("unknown device `{s}`; one of: auto, cpu, cuda, metal"))
}
