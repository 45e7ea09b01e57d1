//! The OpenAI chat-completions request, read field by field into a [`ChatRequest`] so that every
//! refusal names the field at fault (`messages[2].tool_call_id`), and the response objects.
//!
//! Accepted: `model`, `messages` (system/developer, user, assistant with `tool_calls`, tool with
//! `tool_call_id`; content as a string or text parts), `tools` (functions), `tool_choice` (`auto`,
//! `none`), `temperature`, `top_p`, `top_k` (llama.cpp's extension), `max_tokens` /
//! `max_completion_tokens`, `min_tokens` (vLLM's), `seed`, `stop`, `n` (= 1), `stream`, `stream_options.include_usage`.
//! Other fields OpenAI clients send (`user`, `presence_penalty`, …) are ignored, as llama.cpp does.

use crate::error::ApiError;
use serde_json::{Map, Value, json};
use tardbot_model::SamplingParams;
use tardbot_tokens::chat::{Conversation, Message, Role, ToolCall};
use tardbot_toolcall::ToolSpec;

/// At most this many stop sequences (OpenAI's limit).
pub const MAX_STOP: usize = 4;

/// A validated chat-completions request.
#[derive(Clone, Debug)]
pub struct ChatRequest {
    pub model: String,
    /// The conversation without the tools: the system turn (if any) holds only the client's text.
    pub conversation: Conversation,
    /// The client's function tools (returned to it as `tool_calls`, never run here).
    pub client_tools: Vec<ToolSpec>,
    /// `tool_choice = "none"`: no tool is offered to the model.
    pub tools_off: bool,
    /// `max_tokens` / `max_completion_tokens` as asked (checked against the context later).
    pub max_tokens: Option<usize>,
    /// vLLM's `min_tokens`: the end of the turn cannot be drawn before this many tokens.
    pub min_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
}

/// Reads a request body. `default_seed` is used when the request gives none.
pub fn parse_request(body: &[u8], default_seed: u64) -> Result<ChatRequest, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(None, format!("the request body is not valid JSON: {e}")))?;
    let Value::Object(o) = v else {
        return Err(ApiError::invalid(
            None,
            "the request body must be a JSON object",
        ));
    };
    let model = match o.get("model") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => {
            return Err(ApiError::invalid(
                field("model"),
                "`model` must be a string",
            ));
        }
        None => return Err(ApiError::invalid(field("model"), "`model` is required")),
    };
    if let Some(n) = opt_uint(&o, "n")?
        && n != 1
    {
        return Err(ApiError::invalid(
            field("n"),
            format!("`n` = {n} is not supported; only n = 1"),
        ));
    }
    let client_tools = parse_tools(o.get("tools"))?;
    let tools_off = match o.get("tool_choice") {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) if s == "auto" => false,
        Some(Value::String(s)) if s == "none" => true,
        Some(other) => {
            return Err(ApiError::invalid(
                field("tool_choice"),
                format!("`tool_choice` {other} is not supported; use \"auto\" or \"none\""),
            ));
        }
    };
    let conversation = parse_messages(o.get("messages"))?;
    let max_tokens = match opt_uint(&o, "max_completion_tokens")? {
        Some(n) => Some(n),
        None => opt_uint(&o, "max_tokens")?,
    };
    if max_tokens == Some(0) {
        let name = if o.contains_key("max_completion_tokens") {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        return Err(ApiError::invalid(
            field(name),
            format!("`{name}` must be at least 1"),
        ));
    }
    let min_tokens = opt_uint(&o, "min_tokens")?.unwrap_or(0);
    if let Some(m) = max_tokens
        && min_tokens > m
    {
        return Err(ApiError::invalid(
            field("min_tokens"),
            format!("`min_tokens` = {min_tokens} is more than max_tokens = {m}"),
        ));
    }
    let temperature = opt_number(&o, "temperature")?.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            field("temperature"),
            format!("`temperature` = {temperature} is outside [0, 2]"),
        ));
    }
    let top_p = opt_number(&o, "top_p")?.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(
            field("top_p"),
            format!("`top_p` = {top_p} is outside (0, 1]"),
        ));
    }
    let top_k = opt_uint(&o, "top_k")?.unwrap_or(0);
    let seed = opt_uint(&o, "seed")?.map_or(default_seed, |s| s as u64);
    let stop = match o.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, s)| match s {
                Value::String(s) => Ok(s.clone()),
                _ => Err(ApiError::invalid(
                    Some(format!("stop[{i}]")),
                    "each stop sequence must be a string",
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(ApiError::invalid(
                field("stop"),
                "`stop` must be a string or an array of strings",
            ));
        }
    };
    if stop.len() > MAX_STOP || stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid(
            field("stop"),
            format!("`stop` takes up to {MAX_STOP} non-empty strings"),
        ));
    }
    let stream = opt_bool(&o, "stream")?.unwrap_or(false);
    let include_usage = match o.get("stream_options") {
        Some(Value::Object(so)) => opt_bool(so, "include_usage")?.unwrap_or(false),
        _ => false,
    };
    Ok(ChatRequest {
        model,
        conversation,
        client_tools,
        tools_off,
        max_tokens,
        min_tokens,
        sampling: SamplingParams {
            temperature: temperature as f32,
            top_k,
            top_p: top_p as f32,
            seed,
        },
        stop,
        stream,
        include_usage,
    })
}

fn field(name: &str) -> Option<String> {
    Some(name.to_string())
}

fn opt_uint(o: &Map<String, Value>, name: &str) -> Result<Option<usize>, ApiError> {
    match o.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
            ApiError::invalid(
                field(name),
                format!("`{name}` must be a non-negative integer, got {v}"),
            )
        }),
    }
}

fn opt_number(o: &Map<String, Value>, name: &str) -> Result<Option<f64>, ApiError> {
    match o.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| {
            ApiError::invalid(field(name), format!("`{name}` must be a number, got {v}"))
        }),
    }
}

fn opt_bool(o: &Map<String, Value>, name: &str) -> Result<Option<bool>, ApiError> {
    match o.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(ApiError::invalid(
            field(name),
            format!("`{name}` must be true or false, got {v}"),
        )),
    }
}

/// `tools`: `[{"type": "function", "function": {"name", "description", "parameters"}}]`.
pub fn parse_tools(v: Option<&Value>) -> Result<Vec<ToolSpec>, ApiError> {
    let items = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => {
            return Err(ApiError::invalid(
                field("tools"),
                "`tools` must be an array",
            ));
        }
    };
    let mut specs: Vec<ToolSpec> = Vec::new();
    for (i, t) in items.iter().enumerate() {
        let at = |f: &str| Some(format!("tools[{i}]{f}"));
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return Err(ApiError::invalid(
                at(".type"),
                "only tools of type \"function\" are supported",
            ));
        }
        let Some(f) = t.get("function").and_then(Value::as_object) else {
            return Err(ApiError::invalid(
                at(".function"),
                "a function tool needs a `function` object",
            ));
        };
        let name = match f.get("name") {
            Some(Value::String(n)) if valid_tool_name(n) => n.clone(),
            _ => {
                return Err(ApiError::invalid(
                    at(".function.name"),
                    "a function needs a `name` of 1-64 letters, digits, `_` or `-`",
                ));
            }
        };
        if specs.iter().any(|s| s.name == name) {
            return Err(ApiError::invalid(
                at(".function.name"),
                format!("two tools are named `{name}`"),
            ));
        }
        let parameters = match f.get("parameters") {
            None | Some(Value::Null) => json!({"type": "dict", "properties": {}}),
            Some(Value::Object(p)) => to_toolcall_dialect(Value::Object(p.clone())),
            Some(_) => {
                return Err(ApiError::invalid(
                    at(".function.parameters"),
                    "`parameters` must be a JSON schema object",
                ));
            }
        };
        specs.push(ToolSpec {
            name,
            description: f
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            parameters,
        });
    }
    Ok(specs)
}

fn valid_tool_name(n: &str) -> bool {
    (1..=64).contains(&n.len())
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// JSON Schema's `"object"` written as `"dict"`, the word of the BFCL schemas the toolcall stage
/// trained on, so that a client's tools read to the model as its training tools did.
fn to_toolcall_dialect(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| {
                    let v = match (k.as_str(), v) {
                        ("type", Value::String(t)) if t == "object" => Value::String("dict".into()),
                        (_, v) => to_toolcall_dialect(v),
                    };
                    (k, v)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(to_toolcall_dialect).collect()),
        other => other,
    }
}

/// `messages` as the chat template's conversation. Tool results must answer a call an earlier
/// assistant message made (by id); the system (or developer) message must come first.
fn parse_messages(v: Option<&Value>) -> Result<Conversation, ApiError> {
    let items = match v {
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(Value::Array(_)) => {
            return Err(ApiError::invalid(
                field("messages"),
                "`messages` must hold at least one message",
            ));
        }
        Some(_) => {
            return Err(ApiError::invalid(
                field("messages"),
                "`messages` must be an array",
            ));
        }
        None => {
            return Err(ApiError::invalid(
                field("messages"),
                "`messages` is required",
            ));
        }
    };
    let mut messages = Vec::with_capacity(items.len());
    // Ids of calls made and not yet answered.
    let mut open_calls: Vec<String> = Vec::new();
    for (i, m) in items.iter().enumerate() {
        let at = |f: &str| Some(format!("messages[{i}]{f}"));
        let Some(m) = m.as_object() else {
            return Err(ApiError::invalid(at(""), "each message must be an object"));
        };
        let role = match m.get("role").and_then(Value::as_str) {
            Some("system" | "developer") => Role::System,
            Some("user") => Role::User,
            Some("assistant") => Role::Assistant,
            Some("tool") => Role::Tool,
            Some(other) => {
                return Err(ApiError::invalid(
                    at(".role"),
                    format!(
                        "unknown role `{other}`; the roles are system, developer, user, assistant, tool"
                    ),
                ));
            }
            None => return Err(ApiError::invalid(at(".role"), "a message needs a `role`")),
        };
        if role == Role::System && i != 0 {
            return Err(ApiError::invalid(
                at(".role"),
                "a system message must be the first message",
            ));
        }
        let content =
            content_text(m.get("content")).map_err(|e| ApiError::invalid(at(".content"), e))?;
        let mut msg = Message::new(role, content.unwrap_or_default());
        match role {
            Role::Assistant => {
                if let Some(calls) = m.get("tool_calls").filter(|c| !c.is_null()) {
                    let Some(calls) = calls.as_array() else {
                        return Err(ApiError::invalid(
                            at(".tool_calls"),
                            "`tool_calls` must be an array",
                        ));
                    };
                    for (j, c) in calls.iter().enumerate() {
                        let (id, call) = parse_call(c).map_err(|e| {
                            ApiError::invalid(Some(format!("messages[{i}].tool_calls[{j}]")), e)
                        })?;
                        open_calls.push(id);
                        msg.tool_calls.push(call);
                    }
                }
            }
            Role::Tool => {
                let id = match m.get("tool_call_id") {
                    Some(Value::String(id)) => id,
                    _ => {
                        return Err(ApiError::invalid(
                            at(".tool_call_id"),
                            "a tool message needs the `tool_call_id` of the call it answers",
                        ));
                    }
                };
                let Some(k) = open_calls.iter().position(|c| c == id) else {
                    return Err(ApiError::invalid(
                        at(".tool_call_id"),
                        format!(
                            "the tool message answers `{id}`, which no earlier assistant message called (or which was already answered)"
                        ),
                    ));
                };
                open_calls.remove(k);
            }
            Role::System | Role::User => {}
        }
        messages.push(msg);
    }
    Ok(Conversation { messages })
}

/// `content`: a string, null, or text parts (`[{"type": "text", "text": …}]`, joined).
fn content_text(v: Option<&Value>) -> Result<Option<String>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(parts)) => {
            let mut s = String::new();
            for p in parts {
                match (p.get("type").and_then(Value::as_str), p.get("text")) {
                    (Some("text"), Some(Value::String(t))) => s.push_str(t),
                    _ => return Err("only text content parts (`{\"type\": \"text\", \"text\": …}`) are supported".into()),
                }
            }
            Ok(Some(s))
        }
        Some(_) => Err("`content` must be a string or an array of text parts".into()),
    }
}

/// An assistant message's call: `{"id", "type": "function", "function": {"name", "arguments": "<JSON>"}}`.
fn parse_call(c: &Value) -> Result<(String, ToolCall), String> {
    let id = c
        .get("id")
        .and_then(Value::as_str)
        .ok_or("a tool call needs an `id`")?;
    let f = c
        .get("function")
        .and_then(Value::as_object)
        .ok_or("a tool call needs a `function` object")?;
    let name = f
        .get("name")
        .and_then(Value::as_str)
        .ok_or("a tool call needs `function.name`")?;
    let arguments = match f.get("arguments") {
        Some(Value::String(s)) => serde_json::from_str::<Value>(s)
            .map_err(|e| format!("`function.arguments` is not JSON: {e}"))?,
        Some(v @ Value::Object(_)) => v.clone(),
        None | Some(Value::Null) => json!({}),
        Some(_) => return Err("`function.arguments` must be a JSON string".into()),
    };
    Ok((
        id.to_string(),
        ToolCall {
            name: name.to_string(),
            arguments,
        },
    ))
}

/// Why a completion ended, as OpenAI names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
    ToolCalls,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
        }
    }
}

/// Token counts of a completion.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens prefilled, summed over the turns of the tool loop.
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

impl Usage {
    pub fn to_json(self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        })
    }
}

/// A call returned to the client: `{"id", "type": "function", "function": {"name", "arguments"}}`
/// with the arguments as a JSON string, as OpenAI sends them.
pub fn tool_call_json(id: &str, call: &ToolCall) -> Value {
    json!({
        "id": id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments.to_string()},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<ChatRequest, ApiError> {
        parse_request(v.to_string().as_bytes(), 7)
    }

    #[test]
    fn reads_a_full_request() {
        let r = parse(json!({
            "model": "m", "temperature": 0, "top_p": 0.5, "max_completion_tokens": 9, "seed": 3,
            "stop": ["\n"], "stream": true, "stream_options": {"include_usage": true},
            "tools": [{"type": "function", "function": {"name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "weather?"}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "{\"t\": 3}"}
            ]
        }))
        .unwrap();
        assert_eq!(r.max_tokens, Some(9));
        assert_eq!(r.sampling.seed, 3);
        assert_eq!(r.client_tools[0].parameters["type"], "dict");
        assert_eq!(r.conversation.messages.len(), 4);
        assert_eq!(r.conversation.messages[1].content, "weather?");
        assert_eq!(
            r.conversation.messages[2].tool_calls[0].arguments["city"],
            "Oslo"
        );
        assert!(r.stream && r.include_usage);
    }

    #[test]
    fn each_bad_field_is_named() {
        let base = || json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        let cases: Vec<(Value, &str)> = vec![
            (json!({"messages": []}), "model"),
            (json!({"model": "m", "messages": []}), "messages"),
            (
                json!({"model": "m", "messages": [{"role": "robot", "content": "x"}]}),
                "messages[0].role",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}, {"role": "system", "content": "x"}]}),
                "messages[1].role",
            ),
            (
                json!({"model": "m", "messages": [{"role": "tool", "tool_call_id": "nope", "content": "x"}]}),
                "messages[0].tool_call_id",
            ),
            (
                json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]}),
                "messages[0].tool_call_id",
            ),
            (
                {
                    let mut b = base();
                    b["max_tokens"] = json!(0);
                    b
                },
                "max_tokens",
            ),
            (
                {
                    let mut b = base();
                    b["max_tokens"] = json!(-3);
                    b
                },
                "max_tokens",
            ),
            (
                {
                    let mut b = base();
                    b["temperature"] = json!(3);
                    b
                },
                "temperature",
            ),
            (
                {
                    let mut b = base();
                    b["n"] = json!(2);
                    b
                },
                "n",
            ),
            (
                {
                    let mut b = base();
                    b["tool_choice"] = json!("required");
                    b
                },
                "tool_choice",
            ),
            (
                {
                    let mut b = base();
                    b["stop"] = json!(["a", "b", "c", "d", "e"]);
                    b
                },
                "stop",
            ),
            (
                {
                    let mut b = base();
                    b["tools"] = json!([{"type": "retrieval"}]);
                    b
                },
                "tools[0].type",
            ),
        ];
        for (body, param) in cases {
            let e = parse(body.clone()).expect_err(&body.to_string());
            assert_eq!(e.status.as_u16(), 400, "{body}");
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
        }
        let e = parse_request(b"{\"model\": ", 0).unwrap_err();
        assert!(e.message.contains("not valid JSON"), "{}", e.message);
    }
}
