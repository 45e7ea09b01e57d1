//! The loop with a scripted assistant (deterministic): what the model is given back for each kind of
//! call, and the caps.

use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tardbot_tokens::chat::{Conversation, Message, Role};
use tardbot_toolcall::ToolSpec;
use tardbot_tools::tool_loop::BoxError;
use tardbot_tools::{
    Assistant, LoopConfig, LoopEvent, Tool, ToolError, ToolRegistry, TurnOutcome, run_turn,
};

/// Plays back turns; records the conversation it was shown each time.
struct Scripted {
    turns: Vec<String>,
    seen: Vec<Conversation>,
}

impl Scripted {
    fn new(turns: &[&str]) -> Scripted {
        Scripted {
            turns: turns.iter().rev().map(|s| s.to_string()).collect(),
            seen: Vec::new(),
        }
    }
}

impl Assistant for Scripted {
    fn next_turn(&mut self, conv: &Conversation) -> Result<String, BoxError> {
        self.seen.push(conv.clone());
        self.turns.pop().ok_or_else(|| "script exhausted".into())
    }
}

fn call(name: &str, args: Value) -> String {
    format!(
        "<|tool_call|>{}<|/tool_call|>",
        json!({"name": name, "arguments": args})
    )
}

fn user(text: &str) -> Conversation {
    Conversation {
        messages: vec![Message::new(Role::User, text)],
    }
}

fn run(
    script: &mut Scripted,
    tools: &ToolRegistry,
    cfg: &LoopConfig,
) -> (Conversation, TurnOutcome, Vec<LoopEvent>) {
    let mut conv = user("question");
    let mut events = Vec::new();
    let outcome = run_turn(script, tools, &mut conv, cfg, &mut |e| {
        events.push(e.clone())
    })
    .unwrap();
    (conv, outcome, events)
}

fn tool_results(conv: &Conversation) -> Vec<String> {
    conv.messages
        .iter()
        .filter(|m| m.role == Role::Tool)
        .map(|m| m.content.clone())
        .collect()
}

#[test]
fn a_call_runs_and_its_result_is_a_tool_turn_before_generation_continues() {
    let tools = ToolRegistry::builtin(&["calculator"]).unwrap();
    let mut s = Scripted::new(&[
        &format!(
            "Let me compute.{}",
            call("calculator", json!({"expression": "2*(3+4)"}))
        ),
        "It is 14.",
    ]);
    let (conv, outcome, events) = run(&mut s, &tools, &LoopConfig::default());
    assert_eq!(outcome, TurnOutcome::Answered("It is 14.".into()));
    // The second generation saw: user, the assistant's call, the tool's result.
    let second = &s.seen[1].messages;
    assert_eq!(second.len(), 3);
    assert_eq!(second[1].role, Role::Assistant);
    assert_eq!(second[1].content, "Let me compute.");
    assert_eq!(second[1].tool_calls[0].name, "calculator");
    assert_eq!(second[2].role, Role::Tool);
    assert_eq!(
        serde_json::from_str::<Value>(&second[2].content).unwrap(),
        json!({"result": 14})
    );
    assert_eq!(conv.messages.last().unwrap().content, "It is 14.");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, LoopEvent::Result { error: false, .. }))
    );
}

fn error_of(result: &str) -> String {
    serde_json::from_str::<Value>(result).unwrap()["error"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error result: {result}"))
        .to_string()
}

#[test]
fn a_malformed_call_an_unknown_tool_and_invalid_arguments_come_back_as_errors() {
    let tools = ToolRegistry::builtin(&["calculator"]).unwrap();
    let mut s = Scripted::new(&[
        "<|tool_call|>{\"name\": \"calculator\", \"arguments\": {<|/tool_call|>",
        &call("weather", json!({"city": "Oslo"})),
        &call("calculator", json!({"expr": "1+1"})),
        "Sorry.",
    ]);
    let (conv, outcome, _) = run(&mut s, &tools, &LoopConfig::default());
    assert_eq!(outcome, TurnOutcome::Answered("Sorry.".into()));
    let results = tool_results(&conv);
    assert_eq!(results.len(), 3, "{results:?}");
    assert!(
        error_of(&results[0]).starts_with("malformed tool call"),
        "{}",
        results[0]
    );
    let unknown = error_of(&results[1]);
    assert!(
        unknown.contains("unknown tool `weather`") && unknown.contains("calculator"),
        "{unknown}"
    );
    let invalid = error_of(&results[2]);
    assert!(
        invalid.contains("invalid arguments") && invalid.contains("expression"),
        "{invalid}"
    );
}

/// A tool that counts its calls, sleeps, panics or returns a long string, as asked.
struct TestTool {
    calls: Arc<AtomicUsize>,
    sleep: Duration,
    panic: bool,
    output: usize,
    /// Its own bound on a call ([`Tool::time_limit`]).
    limit: Option<Duration>,
}

impl Tool for TestTool {
    fn spec(&self) -> ToolSpec {
        serde_json::from_value(json!({"name": "probe", "description": "test",
            "parameters": {"type": "dict", "properties": {}}}))
        .unwrap()
    }

    fn call(&self, _: &Map<String, Value>) -> Result<Value, ToolError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(self.sleep);
        assert!(!self.panic, "the probe tool panics");
        Ok(json!({"text": "x".repeat(self.output)}))
    }

    fn time_limit(&self) -> Option<Duration> {
        self.limit
    }
}

fn probe(sleep_ms: u64, panic: bool, output: usize) -> (ToolRegistry, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let tool = TestTool {
        calls: calls.clone(),
        sleep: Duration::from_millis(sleep_ms),
        panic,
        output,
        limit: None,
    };
    (ToolRegistry::new().with(Arc::new(tool)), calls)
}

#[test]
fn a_tool_with_a_longer_limit_of_its_own_is_waited_for() {
    // The loop's default would give up after 200 ms; the tool says its calls may take 300 ms
    // (e.g. `[tools.python] timeout_s` raised by the user), so its 400 ms answer is waited for.
    let cfg = LoopConfig {
        call_timeout: Duration::from_millis(200),
        ..LoopConfig::default()
    };
    let tool = TestTool {
        calls: Arc::new(AtomicUsize::new(0)),
        sleep: Duration::from_millis(400),
        panic: false,
        output: 3,
        limit: Some(Duration::from_millis(300)),
    };
    let tools = ToolRegistry::new().with(Arc::new(tool));
    let mut s = Scripted::new(&[&call("probe", json!({})), "done"]);
    let (conv, _, _) = run(&mut s, &tools, &cfg);
    let result = &tool_results(&conv)[0];
    assert!(result.contains("xxx"), "{result}");
}

#[test]
fn a_slow_tool_times_out_and_a_crashing_tool_is_reported() {
    let cfg = LoopConfig {
        call_timeout: Duration::from_millis(200),
        ..LoopConfig::default()
    };
    let (tools, _) = probe(2_000, false, 1);
    let mut s = Scripted::new(&[&call("probe", json!({})), "done"]);
    let started = std::time::Instant::now();
    let (conv, outcome, _) = run(&mut s, &tools, &cfg);
    assert!(
        started.elapsed() < Duration::from_millis(1_500),
        "the loop waited for the tool"
    );
    assert_eq!(outcome, TurnOutcome::Answered("done".into()));
    assert!(error_of(&tool_results(&conv)[0]).starts_with("timed out after"));

    let (tools, _) = probe(0, true, 1);
    let mut s = Scripted::new(&[&call("probe", json!({})), "done"]);
    let (conv, _, _) = run(&mut s, &tools, &LoopConfig::default());
    assert_eq!(error_of(&tool_results(&conv)[0]), "the tool crashed");
}

#[test]
fn the_call_cap_stops_execution_and_gives_the_model_one_last_turn() {
    let (tools, calls) = probe(0, false, 1);
    let cfg = LoopConfig {
        max_calls: 3,
        ..LoopConfig::default()
    };
    // Two calls per turn, forever.
    let two = format!("{}{}", call("probe", json!({})), call("probe", json!({})));
    let mut s = Scripted::new(&[&two, &two, &two, &two]);
    let (conv, outcome, _) = run(&mut s, &tools, &cfg);
    assert_eq!(outcome, TurnOutcome::CallCapReached);
    assert_eq!(calls.load(Ordering::SeqCst), 3, "executed calls");
    let results = tool_results(&conv);
    assert_eq!(results.len(), 4, "the 4th call is answered, not run");
    assert!(error_of(&results[3]).contains("limit"));
    // Turn 1 (2 calls), turn 2 (1 run + 1 refused), turn 3: the last one, whose calls are not run.
    assert_eq!(s.seen.len(), 3);

    // The model answers in its last turn: that is the outcome.
    let (tools, _) = probe(0, false, 1);
    let mut s = Scripted::new(&[&two, &two, "final"]);
    let (_, outcome, _) = run(&mut s, &tools, &cfg);
    assert_eq!(outcome, TurnOutcome::Answered("final".into()));
}

#[test]
fn long_results_are_cut_and_marked() {
    let (tools, _) = probe(0, false, 10_000);
    let cfg = LoopConfig {
        max_result_bytes: 100,
        ..LoopConfig::default()
    };
    let mut s = Scripted::new(&[&call("probe", json!({})), "ok"]);
    let (conv, _, _) = run(&mut s, &tools, &cfg);
    let r = &tool_results(&conv)[0];
    assert!(r.len() < 200, "{} bytes", r.len());
    assert!(r.contains("[truncated: 100 of 10011 bytes shown]"), "{r}");
}

#[test]
fn a_python_call_runs_in_the_sandbox_and_its_output_comes_back() {
    // The sandbox's process limit counts every process of its uid: one sandbox at a time.
    let _serial = crate::python::serial();
    let tools = ToolRegistry::builtin(&["python"]).unwrap();
    let python = tools.get("python").unwrap();
    let probe = python.call(serde_json::json!({"code": "print(1)"}).as_object().unwrap());
    if let Err(ToolError::Unavailable(why)) = probe {
        eprintln!("SKIP python in the loop: {why}");
        return;
    }
    let mut s = Scripted::new(&[&call("python", json!({"code": "print(12 * 7)"})), "84."]);
    let (conv, outcome, _) = run(&mut s, &tools, &LoopConfig::default());
    assert_eq!(outcome, TurnOutcome::Answered("84.".into()));
    let result: Value = serde_json::from_str(&tool_results(&conv)[0]).unwrap();
    assert_eq!(result["stdout"], "84\n", "{result}");
    assert_eq!(result["exit_code"], 0);
}

#[test]
fn thinking_is_kept_as_thinking_not_as_text() {
    let tools = ToolRegistry::builtin(&["calculator"]).unwrap();
    let mut s = Scripted::new(&[
        &format!(
            "<|think|>Use the calculator.<|/think|>{}",
            call("calculator", json!({"expression": "1+1"}))
        ),
        "<|think|>It said 2.<|/think|>2.",
    ]);
    let (conv, outcome, _) = run(&mut s, &tools, &LoopConfig::default());
    assert_eq!(outcome, TurnOutcome::Answered("2.".into()));
    let first = &s.seen[1].messages[1];
    assert_eq!(first.thinking.as_deref(), Some("Use the calculator."));
    assert_eq!(first.content, "");
    let last = conv.messages.last().unwrap();
    assert_eq!(last.thinking.as_deref(), Some("It said 2."));
    assert_eq!(last.content, "2.");
}

#[test]
fn client_tool_calls_end_the_turn_after_the_builtin_calls_of_the_same_turn_ran() {
    let tools = ToolRegistry::builtin(&["calculator"]).unwrap();
    let mut s = Scripted::new(&[&format!(
        "{}{}",
        call("calculator", json!({"expression": "6*7"})),
        call("get_weather", json!({"city": "Oslo"}))
    )]);
    let cfg = LoopConfig {
        client_tools: vec!["get_weather".into()],
        ..LoopConfig::default()
    };
    let (conv, outcome, _) = run(&mut s, &tools, &cfg);
    let TurnOutcome::ClientCalls(calls) = outcome else {
        panic!("expected the client's call, got {outcome:?}");
    };
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].name, "get_weather");
    assert_eq!(calls[0].arguments["city"], "Oslo");
    // The builtin call ran (one tool turn); the client's did not.
    assert_eq!(tool_results(&conv).len(), 1);
    assert_eq!(
        s.seen.len(),
        1,
        "no second generation before the client answers"
    );
    // Without the setting the same call is an unknown tool, answered with an error.
    let mut s = Scripted::new(&[&call("get_weather", json!({"city": "Oslo"})), "ok"]);
    let (conv, outcome, _) = run(&mut s, &tools, &LoopConfig::default());
    assert_eq!(outcome, TurnOutcome::Answered("ok".into()));
    assert!(tool_results(&conv)[0].contains("unknown tool"));
}
