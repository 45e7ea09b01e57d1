//! `eval RUN --suite agent --data FILE`: held-out tasks run end to end through the tool loop with
//! the real tools, the way `chat --tools` runs them.
//!
//! A task is one JSONL line: `{"id", "kind", "tools": ["calculator", …], "prompt", "answer"}`. The
//! tools are offered in the system turn as the toolcall stage trained them, the prompt is the user
//! turn, the model answers greedily and every call it writes is executed by the loop. `answer` is a
//! number (the final answer must contain it: an integer exactly, otherwise within 0.1%), a string (the final answer
//! must contain it, case-insensitively) or `null` (no tool fits: the task succeeds when the model
//! calls none). `data/sample/agent_tasks.jsonl` holds 30 hand-written tasks over the built-in tools
//! and the bundled corpus (for `search`), none of them in any training set.
//!
//! Figures, for every kind and overall (`all/…`), so that a zero is never hidden in a blend:
//! - `task_success`: the share of tasks answered right;
//! - `valid_calls`: the share of call attempts that parsed, named an offered tool and matched its
//!   schema (`null` when no call was made);
//! - `calls_per_task`: call attempts per task;
//! - `tool_errors`: the share of executed calls whose tool failed (an error, a timeout, a refusal).

use crate::inference::RunModel;
use anyhow::{Context as _, bail};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use tardbot_finetune::{greedy, respond};
use tardbot_model::TardBot;
use tardbot_tokens::LoadedTokenizer;
use tardbot_tokens::chat::{Conversation, Message, Role};
use tardbot_toolcall::AgentEvaluator;
use tardbot_toolcall::agent::agent_suite;
use tardbot_tools::tool_loop::BoxError;
use tardbot_tools::{Assistant, LoopConfig, LoopEvent, ToolRegistry, TurnOutcome, run_turn};

/// One task of the suite.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentTask {
    pub id: String,
    pub kind: String,
    pub tools: Vec<String>,
    pub prompt: String,
    pub answer: Expected,
}

/// What a right final answer holds.
#[derive(Clone, Debug, PartialEq)]
pub enum Expected {
    Number(f64),
    Text(String),
    /// No tool fits: a right answer calls none.
    NoCall,
}

/// Reads the tasks; an error names the file, the line and the field.
pub fn read_tasks(path: &Path) -> anyhow::Result<Vec<AgentTask>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut tasks = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{}:{}", path.display(), i + 1);
        let v: Value =
            serde_json::from_str(line).with_context(|| format!("{at}: not a JSON object"))?;
        let field = |name: &str| {
            v.get(name)
                .and_then(Value::as_str)
                .map(str::to_string)
                .with_context(|| format!("{at}: `{name}` must be a string"))
        };
        let tools: Vec<String> = match v.get("tools").and_then(Value::as_array) {
            Some(a) if !a.is_empty() => a
                .iter()
                .map(|t| {
                    t.as_str()
                        .map(str::to_string)
                        .with_context(|| format!("{at}: `tools` must be a list of tool names"))
                })
                .collect::<anyhow::Result<_>>()?,
            _ => bail!("{at}: `tools` must be a non-empty list of tool names"),
        };
        let answer = match v.get("answer") {
            Some(Value::Number(n)) => Expected::Number(n.as_f64().unwrap_or(f64::NAN)),
            Some(Value::String(s)) if !s.trim().is_empty() => Expected::Text(s.to_lowercase()),
            Some(Value::Null) => Expected::NoCall,
            _ => {
                bail!("{at}: `answer` must be a number, a non-empty string, or null (no tool fits)")
            }
        };
        tasks.push(AgentTask {
            id: field("id")?,
            kind: field("kind")?,
            tools,
            prompt: field("prompt")?,
            answer,
        });
    }
    if tasks.is_empty() {
        bail!("{} holds no tasks", path.display());
    }
    Ok(tasks)
}

/// How one task went.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TaskOutcome {
    pub success: bool,
    /// Calls the model wrote (malformed ones included).
    pub call_attempts: usize,
    /// Of those, calls that parsed, named an offered tool and matched its schema.
    pub valid_calls: usize,
    /// Calls that ran and whose tool failed.
    pub tool_errors: usize,
    /// Calls that ran (valid ones under the call cap).
    pub executed: usize,
    pub final_answer: String,
}

/// Does `answer` satisfy `expected` (given whether any call was made)?
pub fn is_right(expected: &Expected, answer: &str, called: bool) -> bool {
    match expected {
        Expected::NoCall => !called,
        Expected::Text(t) => answer.to_lowercase().contains(t.as_str()),
        // An integer exactly; otherwise within 0.1% (the task's figure is rounded).
        Expected::Number(x) if x.fract() == 0.0 => numbers_in(answer).contains(x),
        Expected::Number(x) => numbers_in(answer)
            .into_iter()
            .any(|y| (y - x).abs() <= 1e-3 * x.abs()),
    }
}

/// The numbers written in `s` (digit grouping commas removed: `1,692` is 1692).
fn numbers_in(s: &str) -> Vec<f64> {
    let cleaned: String = s
        .char_indices()
        .filter(|&(i, c)| {
            // A comma between digits groups them; elsewhere it separates.
            !(c == ','
                && s[..i].ends_with(|p: char| p.is_ascii_digit())
                && s[i + 1..].starts_with(|n: char| n.is_ascii_digit()))
        })
        .map(|(_, c)| c)
        .collect();
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in cleaned.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_digit() || (c == '.' && !cur.is_empty()) || (c == '-' && cur.is_empty()) {
            cur.push(c);
        } else {
            if let Ok(x) = cur.trim_end_matches('.').parse::<f64>() {
                out.push(x);
            }
            cur.clear();
        }
    }
    out
}

/// Why an error result is the call's fault (it never ran) rather than the tool's.
fn is_invalid_call(result: &str) -> bool {
    let msg = serde_json::from_str::<Value>(result)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_default();
    msg.starts_with("malformed tool call")
        || msg.starts_with("unknown tool")
        || msg.starts_with("invalid arguments")
}

/// Runs one task through the loop with `tools` (the task's tools, built as configured).
pub fn run_task(
    model: &TardBot,
    tok: &LoadedTokenizer,
    task: &AgentTask,
    tools: &ToolRegistry,
    max_new_tokens: usize,
) -> anyhow::Result<TaskOutcome> {
    let mut conv = Conversation {
        messages: vec![
            Message::new(
                Role::System,
                tardbot_toolcall::tools_system_prompt(&tools.specs()),
            ),
            Message::new(Role::User, task.prompt.as_str()),
        ],
    };
    let mut assistant = GreedyAssistant {
        model,
        tok,
        max_new_tokens,
    };
    let mut o = TaskOutcome::default();
    let outcome = run_turn(
        &mut assistant,
        tools,
        &mut conv,
        &LoopConfig::default(),
        &mut |e| {
            if let LoopEvent::Result { result, error, .. } = e {
                o.call_attempts += 1;
                let invalid = *error && is_invalid_call(result);
                let capped = *error && result.contains("not run: this turn already made");
                if !invalid {
                    o.valid_calls += 1;
                }
                if !invalid && !capped {
                    o.executed += 1;
                    o.tool_errors += usize::from(*error);
                }
            }
        },
    )
    .map_err(|e| anyhow::anyhow!("task {}: {e}", task.id))?;
    if let TurnOutcome::Answered(a) = outcome {
        o.success = is_right(&task.answer, &a, o.call_attempts > 0);
        o.final_answer = a;
    }
    Ok(o)
}

struct GreedyAssistant<'a> {
    model: &'a TardBot,
    tok: &'a LoadedTokenizer,
    max_new_tokens: usize,
}

impl Assistant for GreedyAssistant<'_> {
    fn next_turn(&mut self, conv: &Conversation) -> Result<String, BoxError> {
        respond(
            self.model,
            self.tok,
            conv,
            self.max_new_tokens,
            greedy(),
            &mut |_| true,
        )
        .map_err(|e| e.to_string().into())
    }
}

/// The suite's figures over `(task, outcome)` pairs: per kind and `all/…`.
pub fn score(pairs: &[(&AgentTask, TaskOutcome)]) -> Vec<(String, f64)> {
    let mut groups: BTreeMap<String, Vec<&TaskOutcome>> = BTreeMap::new();
    for (t, o) in pairs {
        groups.entry(t.kind.clone()).or_default().push(o);
        groups.entry("all".into()).or_default().push(o);
    }
    let mut out = Vec::new();
    for (kind, os) in groups {
        let n = os.len() as f64;
        let sum = |f: &dyn Fn(&TaskOutcome) -> usize| os.iter().map(|o| f(o)).sum::<usize>() as f64;
        let attempts = sum(&|o| o.call_attempts);
        let executed = sum(&|o| o.executed);
        out.push((
            format!("{kind}/task_success"),
            sum(&|o| usize::from(o.success)) / n,
        ));
        // A rate over no calls is undefined: NaN, recorded as NULL, so that a model that made no
        // call shows no rate before training rather than the after value (v_stage_evals takes the
        // first row it has as `before`).
        let rate = |num: f64, den: f64| if den > 0.0 { num / den } else { f64::NAN };
        out.push((
            format!("{kind}/valid_calls"),
            rate(sum(&|o| o.valid_calls), attempts),
        ));
        out.push((format!("{kind}/calls_per_task"), attempts / n));
        out.push((
            format!("{kind}/tool_errors"),
            rate(sum(&|o| o.tool_errors), executed),
        ));
    }
    out
}

/// Runs each task through the loop with its tools built from `settings`; `each` sees every outcome.
pub fn run_tasks<'t>(
    model: &TardBot,
    tok: &LoadedTokenizer,
    tasks: &'t [AgentTask],
    settings: &tardbot_tools::ToolSettings,
    max_new_tokens: usize,
    each: &mut dyn FnMut(&AgentTask, &TaskOutcome),
) -> anyhow::Result<Vec<(&'t AgentTask, TaskOutcome)>> {
    let mut pairs = Vec::with_capacity(tasks.len());
    for t in tasks {
        let names: Vec<&str> = t.tools.iter().map(String::as_str).collect();
        let tools = ToolRegistry::builtin_with(&names, settings)
            .map_err(|e| anyhow::anyhow!("task {}: {e}", t.id))?;
        let o = run_task(model, tok, t, &tools, max_new_tokens)?;
        each(t, &o);
        pairs.push((t, o));
    }
    Ok(pairs)
}

/// The toolcall stage's agent eval (`[data.toolcall] agent`): the same tasks, loop and tools as
/// `eval --suite agent`, the tools as `[tools.*]` configure them and `search` over the run's index.
pub struct LoopAgentEvaluator;

impl AgentEvaluator for LoopAgentEvaluator {
    fn evaluate(
        &self,
        config: &tardbot_core::PipelineConfig,
        tasks: &Path,
        search_index: Option<&Path>,
        model: &TardBot,
        tok: &LoadedTokenizer,
        max_new_tokens: usize,
    ) -> Result<(Vec<(String, f64)>, usize), String> {
        let mut settings = crate::registry::Registry::tool_settings(config);
        if settings.search.index.is_none() {
            settings.search.index = search_index.map(Path::to_path_buf);
        }
        let tasks = read_tasks(tasks).map_err(|e| format!("{e:#}"))?;
        let pairs = run_tasks(
            model,
            tok,
            &tasks,
            &settings,
            max_new_tokens,
            &mut |_, _| {},
        )
        .map_err(|e| format!("{e:#}"))?;
        Ok((score(&pairs), pairs.len()))
    }
}

/// Runs the tasks of `data` (at most `limit`) with the run's model and records the figures as
/// evals of the model's attempt (suite `agent:<file name>`), at the stage's final step.
#[allow(clippy::too_many_arguments)]
pub async fn eval(
    registry: &crate::registry::Registry,
    ledger: &tardbot_ledger::Ledger,
    run: &tardbot_ledger::Run,
    m: &RunModel,
    settings: &tardbot_tools::ToolSettings,
    data: &Path,
    limit: Option<usize>,
    max_new_tokens: usize,
) -> anyhow::Result<Vec<(String, f64)>> {
    let mut tasks = read_tasks(data)?;
    if let Some(n) = limit {
        tasks.truncate(n);
    }
    let started = std::time::Instant::now();
    let pairs = run_tasks(
        &m.model.model,
        &m.model.tokenizer,
        &tasks,
        settings,
        max_new_tokens,
        &mut |t, o| {
            println!(
                "  {:<24} {} calls {:>2} ({} valid, {} tool errors)  {}",
                t.id,
                if o.success { "ok  " } else { "FAIL" },
                o.call_attempts,
                o.valid_calls,
                o.tool_errors,
                o.final_answer
                    .replace('\n', " ")
                    .chars()
                    .take(60)
                    .collect::<String>()
            )
        },
    )?;
    let figures = score(&pairs);
    let suite = agent_suite(data);
    let step = crate::inference::stage_steps(registry, run, &m.stage);
    println!(
        "{} agent tasks of {} on the `{}` model of {} ({:.1}s)",
        pairs.len(),
        data.display(),
        m.stage,
        run.name,
        started.elapsed().as_secs_f64()
    );
    crate::inference::record_figures(ledger, m, &suite, step, &figures, pairs.len()).await?;
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_judged_by_number_text_or_the_absence_of_calls() {
        let n = Expected::Number(1692.0);
        assert!(is_right(&n, "It is 1,692.", true));
        assert!(is_right(&n, "36*47 = 1692", true));
        assert!(!is_right(&n, "It is 1,691.", true));
        assert!(!is_right(&n, "I don't know", true));
        let f = Expected::Number(26.0976);
        assert!(is_right(&f, "About 26.098 miles.", true));
        assert!(!is_right(&f, "About 26 miles.", true));
        assert!(is_right(
            &Expected::Number(-3.5),
            "The result is -3.5",
            true
        ));
        let t = Expected::Text("abnormal end".into());
        assert!(is_right(&t, "ABEND means ABnormal END.", true));
        assert!(!is_right(&t, "It means abend.", true));
        assert!(is_right(&Expected::NoCall, "None of the tools fit.", false));
        assert!(!is_right(&Expected::NoCall, "None of the tools fit.", true));
    }

    #[test]
    fn figures_are_per_kind_and_overall() {
        let task = |kind: &str| AgentTask {
            id: "x".into(),
            kind: kind.into(),
            tools: vec!["calculator".into()],
            prompt: "p".into(),
            answer: Expected::Number(1.0),
        };
        let (a, b) = (task("calculator"), task("search"));
        let ok = TaskOutcome {
            success: true,
            call_attempts: 2,
            valid_calls: 1,
            tool_errors: 0,
            executed: 1,
            final_answer: "1".into(),
        };
        let pairs = vec![(&a, ok.clone()), (&b, TaskOutcome::default())];
        let f: BTreeMap<String, f64> = score(&pairs).into_iter().collect();
        assert_eq!(f["all/task_success"], 0.5);
        assert_eq!(f["calculator/task_success"], 1.0);
        assert_eq!(
            f["search/task_success"], 0.0,
            "a zero is shown, not blended away"
        );
        assert_eq!(f["calculator/valid_calls"], 0.5);
        assert_eq!(f["all/calls_per_task"], 1.0);
        assert_eq!(f["calculator/tool_errors"], 0.0);
        assert!(f["search/valid_calls"].is_nan(), "no calls, no rate");
    }

    #[test]
    fn the_bundled_tasks_read_and_bad_lines_are_named() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/sample/agent_tasks.jsonl");
        let tasks = read_tasks(&path).unwrap();
        assert_eq!(tasks.len(), 30);
        for t in &tasks {
            ToolRegistry::builtin_with(
                &t.tools.iter().map(String::as_str).collect::<Vec<_>>(),
                &tardbot_tools::ToolSettings {
                    search: tardbot_tools::search::SearchConfig::duckduckgo(
                        "http://127.0.0.1:9/",
                        std::time::Duration::from_secs(1),
                        5,
                    ),
                    ..Default::default()
                },
            )
            .unwrap_or_else(|e| panic!("{}: {e}", t.id));
        }
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("t.jsonl");
        std::fs::write(
            &bad,
            "{\"id\": \"a\", \"kind\": \"k\", \"tools\": [\"calculator\"], \"prompt\": \"p\", \"answer\": 1}\n\
             {\"id\": \"b\", \"kind\": \"k\", \"tools\": [], \"prompt\": \"p\", \"answer\": 1}\n",
        )
        .unwrap();
        let e = read_tasks(&bad).unwrap_err().to_string();
        assert!(e.contains("t.jsonl:2") && e.contains("tools"), "{e}");
    }

    /// Each bundled task's expected answer is what its tool really returns (the local tools run
    /// here; python, search and abstain tasks are checked in the e2e test and by the suite).
    #[test]
    fn the_bundled_answers_are_what_the_local_tools_compute() {
        use tardbot_toolcall::tools::LocalTool;
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/sample/agent_tasks.jsonl");
        let tasks = read_tasks(&path).unwrap();
        let call = |tool: &str, args: Value| {
            let Value::Object(m) = args else { panic!() };
            LocalTool::by_name(tool)
                .unwrap()
                .call(&m)
                .unwrap()
                .to_string()
        };
        let checks = [
            (
                "agent:calculator:2",
                call("calculator", serde_json::json!({"expression": "36*47"})),
            ),
            (
                "agent:convert_units:1",
                call(
                    "convert_units",
                    serde_json::json!({"value": 42, "from_unit": "km", "to_unit": "mi"}),
                ),
            ),
            (
                "agent:element_lookup:5",
                call("element_lookup", serde_json::json!({"element": "neon"})),
            ),
        ];
        for (id, result) in checks {
            let t = tasks.iter().find(|t| t.id == id).unwrap();
            assert!(
                is_right(&t.answer, &result, true),
                "{id}: {result} vs {:?}",
                t.answer
            );
        }
    }
}
