//! The tool-calling loop: generate, execute the calls, feed the results back, generate again.
//!
//! One user turn becomes: assistant turn → (its calls executed in order, each result appended as a
//! tool-result turn) → assistant turn → … until an assistant turn has no call. Results are JSON
//! strings; an error result is `{"error": "..."}`. Caps (per user turn): at most
//! [`LoopConfig::max_calls`] executed calls (later calls get an error result and the model one last
//! turn to answer), results longer than [`LoopConfig::max_result_bytes`] are cut and marked, and a
//! call that runs past [`LoopConfig::call_timeout`] is answered with a timeout error (the tool's
//! thread is left to finish on its own; tools bound their own run time).
//!
//! Calls of [`LoopConfig::client_tools`] are not run here: the loop runs the turn's other calls, then
//! ends with [`TurnOutcome::ClientCalls`] for the caller (the API server returns them to its client
//! as `tool_calls`; the client sends their results back in its next request).

use crate::registry::ToolRegistry;
use serde_json::{Value, json};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tardbot_tokens::chat::{Conversation, Message, Role};
use tardbot_toolcall::{ParsedCall, parse_tool_calls};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Writes the assistant's next turn for a conversation: its text with the special tokens written out
/// (`<|think|>…<|/think|>`, `<|tool_call|>{…}<|/tool_call|>`), without the closing `<|end|>`.
pub trait Assistant {
    fn next_turn(&mut self, conv: &Conversation) -> Result<String, BoxError>;
}

/// The loop's limits.
#[derive(Clone, Debug)]
pub struct LoopConfig {
    /// Calls executed per user turn.
    pub max_calls: usize,
    /// A result longer than this (bytes of its JSON) is cut at a character boundary and marked.
    pub max_result_bytes: usize,
    /// Wall-clock limit of one call; a tool with a longer limit of its own
    /// ([`crate::Tool::time_limit`]) gets that one plus [`TIME_LIMIT_GRACE`].
    pub call_timeout: Duration,
    /// Tools the caller runs itself (see the module doc); not in the registry.
    pub client_tools: Vec<String>,
}

impl Default for LoopConfig {
    fn default() -> Self {
        LoopConfig {
            max_calls: 6,
            max_result_bytes: 4096,
            call_timeout: Duration::from_secs(30),
            client_tools: Vec::new(),
        }
    }
}

/// What the loop adds to a tool's own time limit before it gives up on the call (the tool's
/// start-up and the reading of its result).
pub const TIME_LIMIT_GRACE: Duration = Duration::from_secs(5);

/// What happened, in order, for display (`chat --tools` prints these).
#[derive(Clone, Debug, PartialEq)]
pub enum LoopEvent {
    /// An assistant turn as generated.
    Turn(String),
    /// A call about to run (as parsed).
    Call { name: String, arguments: Value },
    /// What the model is given back for it.
    Result {
        name: String,
        result: String,
        error: bool,
    },
}

/// How a user turn ended.
#[derive(Clone, Debug, PartialEq)]
pub enum TurnOutcome {
    /// An assistant turn without calls: the answer.
    Answered(String),
    /// The call cap was reached and the model still called tools in its last turn.
    CallCapReached,
    /// The turn called tools of [`LoopConfig::client_tools`]: these calls, in order, for the caller.
    ClientCalls(Vec<ParsedCall>),
}

/// Runs the loop for the conversation's last (user or tool) turn; appends every assistant and
/// tool-result turn to `conv`.
pub fn run_turn(
    assistant: &mut dyn Assistant,
    tools: &ToolRegistry,
    conv: &mut Conversation,
    cfg: &LoopConfig,
    on_event: &mut dyn FnMut(&LoopEvent),
) -> Result<TurnOutcome, BoxError> {
    let mut executed = 0;
    let mut capped = false;
    loop {
        let text = assistant.next_turn(conv)?;
        on_event(&LoopEvent::Turn(text.clone()));
        let mut msg = assistant_message(&text);
        let calls = match parse_tool_calls(&text) {
            Ok(c) => c,
            Err(e) => {
                // A malformed call: the turn is kept up to the call, and the model is told what was
                // wrong with it.
                conv.messages.push(msg);
                let result = error_result(&format!("malformed tool call: {e}"));
                on_event(&LoopEvent::Result {
                    name: String::new(),
                    result: result.clone(),
                    error: true,
                });
                conv.messages.push(Message::new(Role::Tool, result));
                if capped {
                    return Ok(TurnOutcome::CallCapReached);
                }
                executed += 1;
                capped = executed >= cfg.max_calls;
                continue;
            }
        };
        if calls.is_empty() {
            let answer = msg.content.clone();
            conv.messages.push(msg);
            return Ok(TurnOutcome::Answered(answer));
        }
        msg.tool_calls = calls.iter().map(ParsedCall::to_tool_call).collect();
        conv.messages.push(msg);
        if capped {
            return Ok(TurnOutcome::CallCapReached);
        }
        let (client, calls): (Vec<ParsedCall>, Vec<ParsedCall>) = calls
            .into_iter()
            .partition(|c| cfg.client_tools.contains(&c.name));
        for call in &calls {
            on_event(&LoopEvent::Call {
                name: call.name.clone(),
                arguments: Value::Object(call.arguments.clone()),
            });
            let (result, error) = if executed >= cfg.max_calls {
                capped = true;
                (
                    error_result(&format!(
                        "not run: this turn already made {} tool calls (the limit); answer with what you have",
                        cfg.max_calls
                    )),
                    true,
                )
            } else {
                executed += 1;
                match execute(tools, call, cfg) {
                    Ok(v) => (truncate(&v.to_string(), cfg.max_result_bytes), false),
                    Err(e) => (error_result(&e), true),
                }
            };
            on_event(&LoopEvent::Result {
                name: call.name.clone(),
                result: result.clone(),
                error,
            });
            conv.messages.push(Message::new(Role::Tool, result));
        }
        if !client.is_empty() {
            return Ok(TurnOutcome::ClientCalls(client));
        }
        capped |= executed >= cfg.max_calls;
    }
}

/// A generated turn as the chat template's assistant message (calls not included): its
/// `<|think|>…<|/think|>` block as `thinking`, and the text before its first call as `content`, so
/// that rendering the conversation again gives the control tokens, not their text.
fn assistant_message(text: &str) -> Message {
    use tardbot_tokens::special_tokens::Special;
    let (think_open, think_close) = (Special::ThinkOpen.text(), Special::ThinkClose.text());
    let (thinking, rest) = match text
        .strip_prefix(think_open)
        .and_then(|t| t.split_once(think_close))
    {
        Some((thinking, rest)) => (Some(thinking.to_string()), rest),
        None => (None, text),
    };
    let content = match rest.find(Special::ToolCallOpen.text()) {
        Some(i) => &rest[..i],
        None => rest,
    };
    Message {
        thinking,
        ..Message::new(Role::Assistant, content)
    }
}

/// Validates and runs one call under the wall-clock limit.
fn execute(tools: &ToolRegistry, call: &ParsedCall, cfg: &LoopConfig) -> Result<Value, String> {
    let tool = tools.check(call)?.clone();
    let limit = match tool.time_limit() {
        Some(own) => cfg.call_timeout.max(own + TIME_LIMIT_GRACE),
        None => cfg.call_timeout,
    };
    let args = call.arguments.clone();
    let (tx, rx) = mpsc::channel();
    let started = Instant::now();
    std::thread::Builder::new()
        .name(format!("tool-{}", call.name))
        .spawn(move || {
            let _ = tx.send(tool.call(&args));
        })
        .map_err(|e| format!("could not start the tool: {e}"))?;
    match rx.recv_timeout(limit) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(format!(
            "timed out after {:.1} s",
            started.elapsed().as_secs_f64()
        )),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err("the tool crashed".to_string()),
    }
}

fn error_result(message: &str) -> String {
    json!({ "error": message }).to_string()
}

/// `s` cut to at most `max` bytes at a character boundary, with a marker saying how much was cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}…[truncated: {} of {} bytes shown]",
        &s[..end],
        end,
        s.len()
    )
}
