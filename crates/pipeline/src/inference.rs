//! `generate`, `chat` and `eval`: talking to the model a run produced, and scoring it on a file.

use crate::registry::Registry;
use crate::workspace::Workspace;
use anyhow::{Context as _, bail};
use std::io::{BufRead, Write};
use std::path::Path;
use tardbot_core::PipelineConfig;
use tardbot_finetune::{ChatExample, ChatModel, ChatTask, generate_answers, read_jsonl, respond};
use tardbot_ledger::{AttemptStatus, Eval, Ledger, Run};
use tardbot_model::SamplingParams;
use tardbot_tokens::chat::{Conversation, Message, Role};
use tardbot_tools::tool_loop::BoxError;
use tardbot_tools::{Assistant, LoopConfig, LoopEvent, ToolRegistry, TurnOutcome, run_turn};

/// A run's model: which stage produced it, the attempt that trained it, and the loaded model.
pub struct RunModel {
    pub stage: String,
    pub attempt_id: i64,
    pub model: ChatModel,
}

/// The registry's training stages, last first: the default model of a run is the newest one that
/// finished.
fn model_stages(registry: &Registry, run: &Run) -> Vec<String> {
    match run_config(registry, run) {
        Some(cfg) => registry
            .training_stages(&cfg)
            .into_iter()
            .rev()
            .map(str::to_string)
            .collect(),
        None => Vec::new(),
    }
}

/// The files of a run's trained model: which stage and attempt produced them, and the artifacts.
pub struct RunModelFiles {
    pub stage: String,
    pub attempt_id: i64,
    pub weights: tardbot_ledger::Artifact,
    pub model_config: tardbot_ledger::Artifact,
    pub tokenizer: tardbot_ledger::Artifact,
}

/// Finds the model of `stage` (default: the newest finished training stage) of a run.
pub async fn run_model_files(
    registry: &Registry,
    ledger: &Ledger,
    run: &Run,
    stage: Option<&str>,
) -> anyhow::Result<RunModelFiles> {
    let model_stages = model_stages(registry, run);
    let attempts = ledger.attempts(run.id).await?;
    let finished = |s: &str| {
        attempts
            .iter()
            .rev()
            .find(|a| {
                a.stage == s && matches!(a.status, AttemptStatus::Succeeded | AttemptStatus::Cached)
            })
            .map(|a| a.cached_from.unwrap_or(a.id))
    };
    let (stage, attempt_id) = match stage {
        Some(s) => match finished(s) {
            Some(id) => (s.to_string(), id),
            None => bail!(
                "run {} has no finished `{s}` stage; `tardbot-pipeline status {}` shows what ran",
                run.name,
                run.name
            ),
        },
        None => match model_stages
            .iter()
            .find_map(|s| finished(s).map(|id| (s.clone(), id)))
        {
            Some(found) => found,
            None => bail!(
                "run {} has not finished any training stage yet ({})",
                run.name,
                model_stages.join(", ")
            ),
        },
    };
    let file = |kind: &str,
                stage: &str,
                artifacts: &[tardbot_ledger::Artifact]|
     -> anyhow::Result<tardbot_ledger::Artifact> {
        artifacts
            .iter()
            .find(|a| a.kind == kind)
            .cloned()
            .with_context(|| {
                format!(
                    "the `{stage}` stage of run {} recorded no `{kind}`",
                    run.name
                )
            })
    };
    let artifacts = ledger.artifacts(attempt_id).await?;
    let tokenizer = {
        let t = attempts
            .iter()
            .rev()
            .find(|a| a.stage == "tokenizer" && a.status.is_done())
            .map(|a| a.cached_from.unwrap_or(a.id))
            .context("the run has no tokenizer")?;
        file("tokenizer", "tokenizer", &ledger.artifacts(t).await?)?
    };
    Ok(RunModelFiles {
        weights: file("model", &stage, &artifacts)?,
        model_config: file("model-config", &stage, &artifacts)?,
        tokenizer,
        stage,
        attempt_id,
    })
}

/// The offline `search` index the run's `search_index` stage built, if it finished.
pub async fn run_search_index(
    ledger: &Ledger,
    run: &Run,
) -> anyhow::Result<Option<std::path::PathBuf>> {
    let attempts = ledger.attempts(run.id).await?;
    let Some(id) = attempts
        .iter()
        .rev()
        .find(|a| a.stage == "search_index" && a.status.is_done())
        .map(|a| a.cached_from.unwrap_or(a.id))
    else {
        return Ok(None);
    };
    Ok(ledger
        .artifacts(id)
        .await?
        .into_iter()
        .find(|a| a.kind == tardbot_search_index::KIND_SEARCH_INDEX)
        .map(|a| a.path.into()))
}

/// `settings` with the offline `search` index of the run where `[tools.search] index` does not
/// name one.
pub async fn with_run_search_index(
    mut settings: tardbot_tools::ToolSettings,
    ledger: &Ledger,
    run: &Run,
) -> anyhow::Result<tardbot_tools::ToolSettings> {
    if settings.search.index.is_none() {
        settings.search.index = run_search_index(ledger, run).await?;
    }
    Ok(settings)
}

/// Loads the model of `stage` (default: the newest finished training stage) of a run.
pub async fn load_run_model(
    registry: &Registry,
    ledger: &Ledger,
    run: &Run,
    stage: Option<&str>,
) -> anyhow::Result<RunModel> {
    let f = run_model_files(registry, ledger, run, stage).await?;
    let model = ChatModel::load(
        Path::new(&f.weights.path),
        Path::new(&f.model_config.path),
        Path::new(&f.tokenizer.path),
    )
    .map_err(|e| anyhow::anyhow!("loading the `{}` model of run {}: {e}", f.stage, run.name))?;
    Ok(RunModel {
        stage: f.stage,
        attempt_id: f.attempt_id,
        model,
    })
}

pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    pub system: Option<String>,
    /// Tools the model may call: offered in the system turn, its calls executed by the tool loop.
    pub tools: Option<ToolRegistry>,
}

impl GenerateOptions {
    /// The system turn: `--system`, then the tools on offer as the toolcall stage trained them
    /// (separated by a blank line, as the exported chat template writes them).
    fn system_message(&self) -> Option<Message> {
        let tools = self
            .tools
            .as_ref()
            .map(|t| tardbot_toolcall::tools_system_prompt(&t.specs()));
        let text = match (&self.system, tools) {
            (Some(s), Some(t)) if !s.is_empty() => format!("{s}\n\n{t}"),
            (_, Some(t)) => t,
            (Some(s), None) => s.clone(),
            (None, None) => return None,
        };
        Some(Message::new(Role::System, text))
    }
}

/// One prompt (a user turn), the answer streamed to stdout; with tools, their calls run in the loop.
pub fn generate(m: &RunModel, prompt: &str, o: &GenerateOptions) -> anyhow::Result<()> {
    let mut conv = Conversation {
        messages: o.system_message().into_iter().collect(),
    };
    conv.messages.push(Message::new(Role::User, prompt));
    answer_turn(m, &mut conv, o)?;
    Ok(())
}

/// Generates the assistant's answer to the conversation's last turn and appends it (with tools: every
/// call, result and assistant turn of the loop).
fn answer_turn(m: &RunModel, conv: &mut Conversation, o: &GenerateOptions) -> anyhow::Result<()> {
    let Some(tools) = &o.tools else {
        let answer = stream_answer(m, conv, o)?;
        conv.messages.push(Message::new(Role::Assistant, answer));
        return Ok(());
    };
    let mut assistant = StreamingAssistant { m, o };
    let outcome = run_turn(
        &mut assistant,
        tools,
        conv,
        &LoopConfig::default(),
        &mut |e| {
            if let LoopEvent::Result {
                name,
                result,
                error,
            } = e
            {
                let tag = if *error { "tool error" } else { "tool" };
                println!("[{tag} {name}] {result}");
            }
        },
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    if outcome == TurnOutcome::CallCapReached {
        eprintln!("(the turn reached the limit of tool calls)");
    }
    Ok(())
}

/// The model as the tool loop's assistant, each turn streamed to stdout.
struct StreamingAssistant<'a> {
    m: &'a RunModel,
    o: &'a GenerateOptions,
}

impl Assistant for StreamingAssistant<'_> {
    fn next_turn(&mut self, conv: &Conversation) -> Result<String, BoxError> {
        stream_answer(self.m, conv, self.o).map_err(|e| e.to_string().into())
    }
}

/// Reads user turns from stdin until EOF or `/quit`; the conversation accumulates.
pub fn chat(m: &RunModel, o: &GenerateOptions) -> anyhow::Result<()> {
    let mut conv = Conversation {
        messages: o.system_message().into_iter().collect(),
    };
    eprintln!(
        "chatting with the `{}` model (Ctrl-D or /quit to leave, /reset to start over)",
        m.stage
    );
    let stdin = std::io::stdin();
    loop {
        eprint!("you> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim();
        match line {
            "" => continue,
            "/quit" => break,
            "/reset" => {
                conv.messages.retain(|m| m.role == Role::System);
                continue;
            }
            _ => {}
        }
        conv.messages.push(Message::new(Role::User, line));
        eprint!("bot> ");
        answer_turn(m, &mut conv, o)?;
    }
    Ok(())
}

fn stream_answer(m: &RunModel, conv: &Conversation, o: &GenerateOptions) -> anyhow::Result<String> {
    let mut out = std::io::stdout();
    let answer = respond(
        &m.model.model,
        &m.model.tokenizer,
        conv,
        o.max_new_tokens,
        o.sampling.clone(),
        &mut |piece| {
            let _ = out.write_all(piece.as_bytes());
            let _ = out.flush();
            true
        },
    )
    .map_err(|e| anyhow::anyhow!("generation failed: {e}"))?;
    println!();
    Ok(answer)
}

/// The chat task whose eval suite `suite` names.
fn suite<'r>(registry: &'r Registry, suite: &str) -> anyhow::Result<&'r dyn ChatTask> {
    match registry.chat_task(suite) {
        Some(t) => Ok(t.as_ref()),
        None => bail!(
            "no eval suite `{suite}`; the suites are `agent` and the chat stages: {}",
            registry
                .chat_tasks
                .iter()
                .map(|t| t.name())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Reads an eval file: the stage's example JSONL (`{id, kind, conversation, reference}`, e.g. a
/// stage's `examples/val.jsonl`) or the suite's source format (BFCL rows for toolcall, GSM rows for cot).
pub fn read_eval_file(task: &dyn ChatTask, path: &Path) -> anyhow::Result<Vec<ChatExample>> {
    let first = std::fs::File::open(path)
        .map(std::io::BufReader::new)
        .with_context(|| format!("opening {}", path.display()))?
        .lines()
        .map_while(Result::ok)
        .find(|l| !l.trim().is_empty())
        .with_context(|| format!("{} is empty", path.display()))?;
    let is_examples = serde_json::from_str::<serde_json::Value>(&first)
        .map(|v| v.get("conversation").is_some())
        .unwrap_or(false);
    if is_examples {
        Ok(read_jsonl(path)?)
    } else {
        task.read_source_file(path)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("reading {} as {} source rows", path.display(), task.name()))
    }
}

/// Scores `examples` with the suite's scorer, prints the figures, records them under the suite
/// `<suite>:<file name>` on the attempt that trained the model.
#[allow(clippy::too_many_arguments)]
pub async fn eval(
    registry: &Registry,
    ledger: &Ledger,
    run: &Run,
    m: &RunModel,
    suite_name: &str,
    data: &Path,
    limit: Option<usize>,
    max_new_tokens: usize,
) -> anyhow::Result<Vec<(String, f64)>> {
    let task = suite(registry, suite_name)?;
    let mut examples = read_eval_file(task, data)?;
    if let Some(n) = limit {
        examples.truncate(n);
    }
    let examples: Vec<ChatExample> = examples.iter().flat_map(|ex| task.eval_items(ex)).collect();
    if examples.is_empty() {
        bail!("{} holds no examples", data.display());
    }
    let started = std::time::Instant::now();
    let answers = generate_answers(
        &m.model.model,
        &m.model.tokenizer,
        &examples,
        max_new_tokens,
    )
    .map_err(|e| anyhow::anyhow!("generation failed: {e}"))?;
    let pairs: Vec<(&ChatExample, String)> = examples.iter().zip(answers).collect();
    let figures = task.score(&pairs);
    let file = data
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let suite_name = format!("{}:{file}", task.name());
    let step = stage_steps(registry, run, &m.stage);
    println!(
        "{} examples of {} on the `{}` model of {} ({:.1}s)",
        pairs.len(),
        data.display(),
        m.stage,
        run.name,
        started.elapsed().as_secs_f64()
    );
    record_figures(ledger, m, &suite_name, step, &figures, pairs.len()).await?;
    Ok(figures)
}

/// Prints eval figures and records them as evals of the model's attempt at `step`.
pub(crate) async fn record_figures(
    ledger: &Ledger,
    m: &RunModel,
    suite: &str,
    step: u64,
    figures: &[(String, f64)],
    samples: usize,
) -> anyhow::Result<()> {
    for (metric, value) in figures {
        println!("  {metric:<32} {value:.4}");
        ledger
            .record_eval(&Eval {
                attempt_id: m.attempt_id,
                checkpoint_id: None,
                step: step as i64,
                suite: suite.to_string(),
                metric: metric.clone(),
                value: Some(*value),
                samples: samples as i64,
            })
            .await?;
    }
    Ok(())
}

/// The run's recorded config, if it still parses.
pub(crate) fn run_config(registry: &Registry, run: &Run) -> Option<PipelineConfig> {
    registry
        .config_from_text(
            &run.config_toml,
            Path::new("pipeline.toml"),
            Path::new(&run.config_dir),
        )
        .ok()
}

/// The configured steps of a training stage in the run's recorded config (the step of its final model).
pub(crate) fn stage_steps(registry: &Registry, run: &Run, stage: &str) -> u64 {
    let Some(cfg) = run_config(registry, run) else {
        return 0;
    };
    registry
        .stages
        .iter()
        .find(|s| s.name() == stage)
        .and_then(|s| s.training(&cfg))
        .map_or(0, |t| t.steps)
}

/// The workspace's ledger and the named run.
pub async fn open_run(ws: &Workspace, run: &str) -> anyhow::Result<(Ledger, Run)> {
    let ledger = Ledger::open(&ws.ledger_path()).await?;
    let run = ledger.run(run).await?;
    Ok((ledger, run))
}
