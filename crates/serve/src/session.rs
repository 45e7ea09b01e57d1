//! One chat completion: the tool loop over the engine, each turn's text streamed as deltas.
//!
//! A session runs on a blocking thread ([`tardbot_tools::run_turn`] is synchronous): every turn it
//! renders the conversation, queues a generation on the [`Engine`], and splits the decoded text
//! as it arrives ([`TurnText`]) into reasoning (`<|think|>…<|/think|>`), content, and the call
//! blocks (kept back and parsed at the end of the turn). Built-in tools run here through the loop;
//! the request's own tools end the completion with `tool_calls`. A delta that cannot be sent means
//! the client is gone: the session ends and its generation is dropped (cancelled).

use crate::api::{FinishReason, Usage};
use crate::engine::{Admission, GenEvent, GenRequest};
use crate::error::ApiError;
use crate::metrics::Metrics;
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tardbot_model::{SamplingParams, StopReason};
use tardbot_tokens::chat::{Conversation, ToolCall, render_chat};
use tardbot_tokens::special_tokens::{EOS_ID, Special};
use tardbot_tokens::tokenizer::LoadedTokenizer;
use tardbot_tools::tool_loop::BoxError;
use tardbot_tools::{Assistant, LoopConfig, LoopEvent, ToolRegistry, TurnOutcome, run_turn};
use tokio::sync::mpsc;

/// What a completion sends, in order; [`Delta::Finished`] or [`Delta::Failed`] last.
#[derive(Clone, Debug, PartialEq)]
pub enum Delta {
    Reasoning(String),
    Content(String),
    /// A built-in tool the server ran, with what the model was given back.
    ServerTool {
        name: String,
        arguments: Value,
        result: String,
        error: bool,
    },
    /// Calls of the client's tools, with the ids the client answers them by.
    ClientCalls(Vec<(String, ToolCall)>),
    Finished {
        reason: FinishReason,
        usage: Usage,
    },
    Failed(ApiError),
}

/// Everything a session needs besides its request.
pub struct SessionInput {
    pub tokenizer: Arc<LoadedTokenizer>,
    pub metrics: Arc<Metrics>,
    pub builtin: ToolRegistry,
    pub loop_cfg: LoopConfig,
    /// Context length of the model (prompt + completion).
    pub context: usize,
    pub conversation: Conversation,
    /// Completion tokens allowed over all turns.
    pub max_tokens: usize,
    /// Completion tokens before the end of a turn may be drawn (counted over all turns).
    pub min_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    /// Whether tools were offered (otherwise call blocks are left as text).
    pub tools_on: bool,
    /// Prefix of the ids given to the client's calls (`call_<request>_`).
    pub call_id_prefix: String,
    pub started: Instant,
}

/// Runs a completion to its end, sending deltas on `out`.
pub fn run(input: SessionInput, admission: Admission, out: mpsc::Sender<Delta>) {
    let metrics = input.metrics.clone();
    let started = input.started;
    let mut assistant = ServerAssistant {
        input: &input,
        admission: &admission,
        out: &out,
        usage: Usage::default(),
        turn: 0,
        length: false,
        stopped: false,
        first_token: None,
        cancelled: false,
    };
    let mut conv = input.conversation.clone();
    let result = if input.tools_on {
        let out = out.clone();
        let mut arguments = Value::Null;
        run_turn(
            &mut assistant,
            &input.builtin,
            &mut conv,
            &input.loop_cfg,
            &mut |e| match e {
                LoopEvent::Call { arguments: a, .. } => arguments = a.clone(),
                LoopEvent::Result {
                    name,
                    result,
                    error,
                } => {
                    let _ = out.blocking_send(Delta::ServerTool {
                        name: name.clone(),
                        arguments: std::mem::take(&mut arguments),
                        result: result.clone(),
                        error: *error,
                    });
                }
                LoopEvent::Turn(_) => {}
            },
        )
    } else {
        assistant.next_turn(&conv).map(TurnOutcome::Answered)
    };
    let usage = assistant.usage;
    let (length, cancelled) = (assistant.length, assistant.cancelled);
    let delta = match result {
        _ if cancelled => {
            metrics.cancelled.fetch_add(1, Ordering::Relaxed);
            return;
        }
        Ok(TurnOutcome::ClientCalls(calls)) => {
            let calls = calls
                .iter()
                .enumerate()
                .map(|(i, c)| (format!("{}{i}", input.call_id_prefix), c.to_tool_call()))
                .collect();
            let _ = out.blocking_send(Delta::ClientCalls(calls));
            Delta::Finished {
                reason: FinishReason::ToolCalls,
                usage,
            }
        }
        Ok(_) => Delta::Finished {
            reason: if length {
                FinishReason::Length
            } else {
                FinishReason::Stop
            },
            usage,
        },
        Err(e) => Delta::Failed(ApiError::internal(format!("generation failed: {e}"))),
    };
    metrics.observe_duration(started.elapsed());
    let _ = out.blocking_send(delta);
}

/// The model behind the tool loop: each turn one generation on the engine.
struct ServerAssistant<'a> {
    input: &'a SessionInput,
    admission: &'a Admission,
    out: &'a mpsc::Sender<Delta>,
    usage: Usage,
    turn: u64,
    /// A turn ended at the token budget or the context.
    length: bool,
    /// A stop sequence matched: the completion ends with this turn.
    stopped: bool,
    first_token: Option<Instant>,
    cancelled: bool,
}

/// A client that reads nothing for this long is taken as gone (its place is freed).
const STALLED_CLIENT: Duration = Duration::from_secs(60);

impl ServerAssistant<'_> {
    /// Sends a delta; a client that disconnected, or stopped reading for [`STALLED_CLIENT`], ends
    /// the completion.
    fn send(&mut self, d: Delta) -> Result<(), BoxError> {
        let started = Instant::now();
        let mut d = d;
        loop {
            match self.out.try_send(d) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(back))
                    if started.elapsed() < STALLED_CLIENT =>
                {
                    d = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => {
                    self.cancelled = true;
                    return Err("the client disconnected or stopped reading".into());
                }
            }
        }
    }
}

impl Assistant for ServerAssistant<'_> {
    fn next_turn(&mut self, conv: &Conversation) -> Result<String, BoxError> {
        let input = self.input;
        // After a stop sequence or at the budget, the loop gets an empty turn: it ends.
        if self.stopped || self.length {
            return Ok(String::new());
        }
        let prompt = render_chat(&input.tokenizer, conv, true)?.tokens;
        let budget = input.max_tokens - self.usage.completion_tokens;
        let room = input.context.saturating_sub(prompt.len());
        let max_new = budget.min(room);
        if max_new == 0 {
            self.length = true;
            return Ok(String::new());
        }
        self.usage.prompt_tokens += prompt.len();
        input
            .metrics
            .prompt_tokens
            .fetch_add(prompt.len() as u64, Ordering::Relaxed);
        let mut stream = self.admission.generate(GenRequest {
            prompt,
            max_new_tokens: max_new,
            sampling: SamplingParams {
                seed: input.sampling.seed.wrapping_add(self.turn),
                ..input.sampling.clone()
            },
            stop_tokens: vec![Special::EndOfTurn.id(), EOS_ID],
            min_new_tokens: input
                .min_tokens
                .saturating_sub(self.usage.completion_tokens)
                .min(max_new),
        });
        self.turn += 1;
        let mut text = TurnText::new(input.tools_on, &input.stop);
        let mut ids: Vec<u32> = Vec::new();
        let mut shown = 0;
        loop {
            match stream.blocking_next() {
                Some(GenEvent::Token(t)) => {
                    if self.first_token.is_none() {
                        self.first_token = Some(Instant::now());
                        input.metrics.observe_ttft(input.started.elapsed());
                    }
                    self.usage.completion_tokens += 1;
                    if t == Special::EndOfTurn.id() || t == EOS_ID {
                        continue;
                    }
                    ids.push(t);
                    let decoded = input.tokenizer.decode(&ids)?;
                    // Byte-level BPE: a partial UTF-8 sequence decodes to U+FFFD until it completes.
                    if decoded.ends_with('\u{FFFD}') || decoded.len() <= shown {
                        continue;
                    }
                    let piece = decoded[shown..].to_string();
                    shown = decoded.len();
                    for d in text.push(&piece) {
                        self.send(d)?;
                    }
                    if text.stopped {
                        // Dropping the stream cancels the generation.
                        self.stopped = true;
                        break;
                    }
                }
                Some(GenEvent::Done(reason)) => {
                    self.length |= reason == StopReason::MaxTokens;
                    // Bytes of an unfinished character at the end are shown as U+FFFD rather than
                    // holding back the text before them.
                    let decoded = input.tokenizer.decode(&ids)?;
                    if decoded.len() > shown && !text.stopped {
                        for d in text.push(&decoded[shown..]) {
                            self.send(d)?;
                        }
                    }
                    break;
                }
                Some(GenEvent::Failed(e)) => return Err(e.into()),
                None => return Err("the decode engine stopped".into()),
            }
        }
        for d in text.finish() {
            self.send(d)?;
        }
        Ok(text.turn_text())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Nothing seen yet: a think block may open.
    Start,
    Thinking,
    Content,
    /// After the first call opened: kept back (parsed when the turn ends).
    Calls,
    /// A stop sequence matched.
    Stopped,
}

/// A turn's decoded text as it streams in, split into reasoning and content deltas. Text that may
/// be the start of a marker or a stop sequence is held until the next piece tells.
pub struct TurnText {
    mode: Mode,
    pending: String,
    /// Whether `<|tool_call|>` starts the call blocks (tools offered) or is text.
    calls_on: bool,
    stops: Vec<String>,
    reasoning: String,
    content: String,
    /// The raw text (for the loop's parser), up to a stop sequence.
    raw: String,
    pub stopped: bool,
}

impl TurnText {
    pub fn new(calls_on: bool, stops: &[String]) -> TurnText {
        TurnText {
            mode: Mode::Start,
            pending: String::new(),
            calls_on,
            stops: stops.to_vec(),
            reasoning: String::new(),
            content: String::new(),
            raw: String::new(),
            stopped: false,
        }
    }

    /// The next piece of decoded text; returns what can be shown now.
    pub fn push(&mut self, piece: &str) -> Vec<Delta> {
        if matches!(self.mode, Mode::Stopped) {
            return Vec::new();
        }
        self.raw.push_str(piece);
        self.pending.push_str(piece);
        let mut out = Vec::new();
        let (think_open, think_close) = (Special::ThinkOpen.text(), Special::ThinkClose.text());
        let call_open = Special::ToolCallOpen.text();
        loop {
            match self.mode {
                Mode::Start => {
                    if let Some(rest) = self.pending.strip_prefix(think_open) {
                        self.pending = rest.to_string();
                        self.mode = Mode::Thinking;
                    } else if think_open.starts_with(self.pending.as_str()) {
                        return out;
                    } else {
                        self.mode = Mode::Content;
                    }
                }
                Mode::Thinking => match self.pending.find(think_close) {
                    Some(i) => {
                        let r = self.pending[..i].to_string();
                        self.pending = self.pending[i + think_close.len()..].to_string();
                        self.emit_reasoning(r, &mut out);
                        self.mode = Mode::Content;
                    }
                    None => {
                        let keep = held_suffix(&self.pending, &[think_close]);
                        let r = self.pending[..self.pending.len() - keep].to_string();
                        self.pending.drain(..self.pending.len() - keep);
                        self.emit_reasoning(r, &mut out);
                        return out;
                    }
                },
                Mode::Content => {
                    let call_at = if self.calls_on {
                        self.pending.find(call_open)
                    } else {
                        None
                    };
                    let stop_at = self
                        .stops
                        .iter()
                        .filter_map(|s| self.pending.find(s.as_str()))
                        .min();
                    match (call_at, stop_at) {
                        (_, Some(s)) if call_at.is_none_or(|c| s < c) => {
                            let c = self.pending[..s].to_string();
                            self.emit_content(c, &mut out);
                            // The raw text ends where the stop sequence began.
                            let cut = self.raw.len() - (self.pending.len() - s);
                            self.raw.truncate(cut);
                            self.pending.clear();
                            self.mode = Mode::Stopped;
                            self.stopped = true;
                            return out;
                        }
                        (Some(c), _) => {
                            let text = self.pending[..c].to_string();
                            self.emit_content(text, &mut out);
                            self.pending.clear();
                            self.mode = Mode::Calls;
                            return out;
                        }
                        _ => {
                            let mut markers: Vec<&str> =
                                self.stops.iter().map(String::as_str).collect();
                            if self.calls_on {
                                markers.push(call_open);
                            }
                            let keep = held_suffix(&self.pending, &markers);
                            let c = self.pending[..self.pending.len() - keep].to_string();
                            self.pending.drain(..self.pending.len() - keep);
                            self.emit_content(c, &mut out);
                            return out;
                        }
                    }
                }
                Mode::Calls | Mode::Stopped => {
                    self.pending.clear();
                    return out;
                }
            }
        }
    }

    /// The end of the turn: whatever was held back is text after all.
    pub fn finish(&mut self) -> Vec<Delta> {
        let rest = std::mem::take(&mut self.pending);
        let mut out = Vec::new();
        match self.mode {
            Mode::Thinking => self.emit_reasoning(rest, &mut out),
            Mode::Start | Mode::Content => self.emit_content(rest, &mut out),
            Mode::Calls | Mode::Stopped => {}
        }
        out
    }

    /// The turn as the tool loop parses it (ends at a stop sequence).
    pub fn turn_text(&self) -> String {
        self.raw.clone()
    }

    fn emit_reasoning(&mut self, r: String, out: &mut Vec<Delta>) {
        if !r.is_empty() {
            self.reasoning.push_str(&r);
            out.push(Delta::Reasoning(r));
        }
    }

    fn emit_content(&mut self, c: String, out: &mut Vec<Delta>) {
        if !c.is_empty() {
            self.content.push_str(&c);
            out.push(Delta::Content(c));
        }
    }
}

/// Length of the longest suffix of `s` that is a proper prefix of one of `markers`.
fn held_suffix(s: &str, markers: &[&str]) -> usize {
    let mut best = 0;
    for m in markers {
        for (i, _) in m.char_indices().skip(1) {
            if i > best && s.ends_with(&m[..i]) {
                best = i;
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(pieces: &[&str], calls_on: bool, stops: &[&str]) -> (Vec<Delta>, TurnText) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut t = TurnText::new(calls_on, &stops);
        let mut out = Vec::new();
        for p in pieces {
            out.extend(t.push(p));
        }
        out.extend(t.finish());
        (out, t)
    }

    fn joined(ds: &[Delta]) -> (String, String) {
        let (mut r, mut c) = (String::new(), String::new());
        for d in ds {
            match d {
                Delta::Reasoning(s) => r.push_str(s),
                Delta::Content(s) => c.push_str(s),
                _ => {}
            }
        }
        (r, c)
    }

    #[test]
    fn think_content_and_calls_split_across_any_piece_boundaries() {
        let text = "<|think|>add them<|/think|>Sure.<|tool_call|>{\"name\":\"f\",\"arguments\":{}}<|/tool_call|>";
        // Every way of cutting the text in two, and one char at a time.
        for cut in (0..=text.len()).filter(|&i| text.is_char_boundary(i)) {
            let (ds, t) = split(&[&text[..cut], &text[cut..]], true, &[]);
            assert_eq!(
                joined(&ds),
                ("add them".into(), "Sure.".into()),
                "cut {cut}"
            );
            assert_eq!(t.turn_text(), text);
        }
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let pieces: Vec<&str> = chars.iter().map(String::as_str).collect();
        let (ds, _) = split(&pieces, true, &[]);
        assert_eq!(joined(&ds), ("add them".into(), "Sure.".into()));
        // Without tools a call block is text.
        let (ds, _) = split(&["a<|tool_call|>b"], false, &[]);
        assert_eq!(joined(&ds).1, "a<|tool_call|>b");
    }

    #[test]
    fn a_stop_sequence_ends_the_text_before_it() {
        for cut in 0..12 {
            let text = "one two\nthree";
            let (ds, t) = split(&[&text[..cut], &text[cut..]], true, &["\nth"]);
            assert_eq!(joined(&ds).1, "one two", "cut {cut}");
            assert!(t.stopped);
            assert_eq!(t.turn_text(), "one two");
        }
        // A held prefix that never completes is shown at the end.
        let (ds, t) = split(&["end\nt"], true, &["\nth"]);
        assert_eq!(joined(&ds).1, "end\nt");
        assert!(!t.stopped);
    }
}
