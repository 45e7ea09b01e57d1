//! The tool-calling data: BFCL rows and generated multi-turn conversations as [`ChatExample`]s, and the
//! scorer of a generated assistant turn.
//!
//! **BFCL rows** ([`bfcl_examples`]): the system turn lists the row's tools ([`tools_system_prompt`]; a
//! row's own system message comes first), the user turn(s) come from `messages`, and the assistant turn
//! holds the row's `target_calls` as tool calls (for an irrelevance row, `target_calls: []`, the fixed
//! answer [`ABSTAIN_ANSWER`]). `kind` is `bfcl:<category>`; `reference` is
//! `{"tools": [...], "ground_truth": [...], "abstain": bool}` with the row's tools and accepted calls.
//! Rows whose `target_calls` is `null` (BFCL's `live_relevance`: any call is accepted, so there is no
//! target) are not examples; [`load_bfcl`] returns them as [`Skipped`] and [`bfcl_examples`] logs them.
//! In `target_calls`, a dict argument that was copied from the ground truth's nested form
//! (`{"limit": [50]}`, each key a list of accepted values; also such dicts inside a list) is resolved
//! to a value (`{"limit": 50}`).
//!
//! **Generated conversations** ([`generated_examples`]): the three [`LocalTool`]s in the system turn, a
//! user request (several phrasings per tool), the assistant's call, a tool-result turn with the tool's
//! actual JSON output, and a final assistant answer taken from that output. [`ChatExample::prompt`] cuts
//! before the last assistant turn, so these examples evaluate the final answer: their reference carries
//! `final_answer` (plus the call's ground truth); [`first_call_example`] cuts one at its first assistant
//! turn instead, to score the call. One in eight is a request no tool can serve, answered with
//! [`ABSTAIN_ANSWER`].
//!
//! **Scoring** ([`score`], [`aggregate`]): see [`CallScore`].

use crate::call::parse_tool_calls;
use crate::schema::{ToolSpec, json_eq, validate_call};
use crate::tools::{ELEMENTS, Element, LocalTool, UNITS, Unit, format_number};
use serde::Serialize;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use tardbot_finetune::ChatExample;
use tardbot_tokens::chat::{Conversation, Message, Role, ToolCall};
use tardbot_core::rng::SplitMix64;
use tardbot_tokens::special_tokens::Special;

/// The assistant's answer when none of the tools fits the request.
pub const ABSTAIN_ANSWER: &str = "None of the available tools can do that.";

/// The system text that offers `tools` (one compact JSON line per tool). The chat template writes the
/// tool-call tokens itself, so the text only describes the format.
pub fn tools_system_prompt(tools: &[ToolSpec]) -> String {
    let mut s = String::from(
        "You can call the tools listed below. To call one, write a tool call holding a JSON object with \
         the tool's \"name\" and its \"arguments\" (an object matching the tool's parameters); for several \
         calls, write several tool calls. If no tool fits the request, answer in plain text without a \
         tool call.\nTools:",
    );
    if tools.is_empty() {
        s.push_str(" (none)");
    }
    for t in tools {
        s.push('\n');
        s.push_str(&serde_json::to_string(t).unwrap_or_default());
    }
    s
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}: invalid JSON: {message}", path.display())]
    Json {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{}:{line}: field {field:?}: {message}", path.display())]
    Field {
        path: PathBuf,
        line: usize,
        field: String,
        message: String,
    },
}

/// A row that is not an example, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Skipped {
    pub line: usize,
    pub id: String,
    pub reason: String,
}

/// A BFCL file read: the examples in file order and the rows that are not examples.
#[derive(Clone, Debug, PartialEq)]
pub struct BfclLoad {
    pub examples: Vec<ChatExample>,
    pub skipped: Vec<Skipped>,
}

/// Reads a BFCL JSONL file (`{id, category, messages, tools, ground_truth, target_calls}` per line;
/// blank lines are ignored). Any malformed row is an error naming the file, line and field.
pub fn load_bfcl(path: &Path) -> Result<BfclLoad, DataError> {
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut load = BfclLoad {
        examples: Vec::new(),
        skipped: Vec::new(),
    };
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io)?;
        let lineno = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let row: Value = serde_json::from_str(&line).map_err(|e| DataError::Json {
            path: path.to_path_buf(),
            line: lineno,
            message: e.to_string(),
        })?;
        let field_err = |(field, message): (String, String)| DataError::Field {
            path: path.to_path_buf(),
            line: lineno,
            field,
            message,
        };
        let converted = bfcl_row(&row).map_err(field_err)?;
        let id = match &converted {
            Row::Example(e) => e.id.clone(),
            Row::Skip(id, _) => id.clone(),
        };
        if let Some(first) = seen.insert(id.clone(), lineno) {
            return Err(field_err((
                "id".into(),
                format!("{id:?} is also the id on line {first}"),
            )));
        }
        match converted {
            Row::Example(e) => load.examples.push(*e),
            Row::Skip(id, reason) => load.skipped.push(Skipped {
                line: lineno,
                id,
                reason,
            }),
        }
    }
    Ok(load)
}

/// The examples of a BFCL file ([`load_bfcl`]); rows that are not examples are logged with their count.
pub fn bfcl_examples(path: &Path) -> Result<Vec<ChatExample>, DataError> {
    let load = load_bfcl(path)?;
    if !load.skipped.is_empty() {
        let ids: Vec<&str> = load.skipped.iter().take(5).map(|s| s.id.as_str()).collect();
        tracing::warn!(
            file = %path.display(),
            skipped = load.skipped.len(),
            examples = load.examples.len(),
            "BFCL rows without target calls (any call accepted) are not examples; e.g. {}: {}",
            ids.join(", "),
            load.skipped[0].reason
        );
    }
    Ok(load.examples)
}

enum Row {
    Example(Box<ChatExample>),
    Skip(String, String),
}

type FieldError = (String, String);

fn ferr(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    (field.into(), message.into())
}

fn get<'a>(row: &'a Map<String, Value>, field: &str) -> Result<&'a Value, FieldError> {
    row.get(field).ok_or_else(|| ferr(field, "missing"))
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn get_str<'a>(row: &'a Map<String, Value>, field: &str) -> Result<&'a str, FieldError> {
    match get(row, field)? {
        Value::String(s) if !s.trim().is_empty() => Ok(s),
        Value::String(_) => Err(ferr(field, "empty")),
        other => Err(ferr(
            field,
            format!("expected a string, got {}", type_name(other)),
        )),
    }
}

fn get_array<'a>(row: &'a Map<String, Value>, field: &str) -> Result<&'a Vec<Value>, FieldError> {
    match get(row, field)? {
        Value::Array(a) => Ok(a),
        other => Err(ferr(
            field,
            format!("expected an array, got {}", type_name(other)),
        )),
    }
}

fn bfcl_row(row: &Value) -> Result<Row, FieldError> {
    let Value::Object(row) = row else {
        return Err(ferr(
            "(row)",
            format!("expected a JSON object, got {}", type_name(row)),
        ));
    };
    let id = get_str(row, "id")?.to_string();
    let category = get_str(row, "category")?;

    // Messages: an optional system message first, then user (and assistant) turns.
    let raw_messages = get_array(row, "messages")?;
    let mut system = None;
    let mut turns = Vec::new();
    for (i, m) in raw_messages.iter().enumerate() {
        let field = format!("messages[{i}]");
        let m = m
            .as_object()
            .ok_or_else(|| ferr(&field, format!("expected an object, got {}", type_name(m))))?;
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| ferr(format!("{field}.role"), "missing or not a string"))?;
        let content = m
            .get("content")
            .and_then(Value::as_str)
            .ok_or_else(|| ferr(format!("{field}.content"), "missing or not a string"))?;
        match role {
            "system" if i == 0 => system = Some(content.to_string()),
            "system" => {
                return Err(ferr(
                    format!("{field}.role"),
                    "a system message must come first",
                ));
            }
            "user" => turns.push(Message::new(Role::User, content)),
            "assistant" => turns.push(Message::new(Role::Assistant, content)),
            other => {
                return Err(ferr(
                    format!("{field}.role"),
                    format!("{other:?} is not one of \"system\", \"user\", \"assistant\""),
                ));
            }
        }
    }
    if turns.last().is_none_or(|m| m.role != Role::User) {
        return Err(ferr("messages", "the last message must be a user message"));
    }

    // Tools.
    let raw_tools = get_array(row, "tools")?;
    let mut tools = Vec::with_capacity(raw_tools.len());
    for (i, t) in raw_tools.iter().enumerate() {
        let spec: ToolSpec = serde_json::from_value(t.clone())
            .map_err(|e| ferr(format!("tools[{i}]"), e.to_string()))?;
        if !spec.parameters.is_object() {
            return Err(ferr(
                format!("tools[{i}].parameters"),
                format!("expected an object, got {}", type_name(&spec.parameters)),
            ));
        }
        tools.push(spec);
    }

    // Targets and ground truth.
    let targets = match get(row, "target_calls")? {
        Value::Null => {
            return Ok(Row::Skip(
                id,
                "target_calls is null: the row accepts any call, so it has no target".to_string(),
            ));
        }
        Value::Array(a) => a,
        other => {
            return Err(ferr(
                "target_calls",
                format!("expected an array or null, got {}", type_name(other)),
            ));
        }
    };
    let ground_truth: &[Value] = match get(row, "ground_truth")? {
        Value::Null => &[],
        Value::Array(a) => a,
        other => {
            return Err(ferr(
                "ground_truth",
                format!("expected an array or null, got {}", type_name(other)),
            ));
        }
    };
    let abstain = targets.is_empty();
    if abstain && !ground_truth.is_empty() {
        return Err(ferr(
            "ground_truth",
            "given for a row without target calls (an irrelevance row has none)",
        ));
    }
    if ground_truth.len() != targets.len() {
        return Err(ferr(
            "ground_truth",
            format!(
                "{} entries for {} target calls",
                ground_truth.len(),
                targets.len()
            ),
        ));
    }
    for (i, g) in ground_truth.iter().enumerate() {
        ground_truth_entry(g).map_err(|m| ferr(format!("ground_truth[{i}]"), m))?;
    }
    let mut calls = Vec::with_capacity(targets.len());
    for (i, t) in targets.iter().enumerate() {
        let field = format!("target_calls[{i}]");
        let name = t
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| ferr(format!("{field}.name"), "missing or not a string"))?;
        if !tools.iter().any(|s| s.name == name) {
            return Err(ferr(
                format!("{field}.name"),
                format!("{name:?} is not one of the row's tools"),
            ));
        }
        let mut arguments = match t.get("arguments") {
            Some(Value::Object(m)) => m.clone(),
            None | Some(Value::Null) => Map::new(),
            Some(other) => {
                return Err(ferr(
                    format!("{field}.arguments"),
                    format!("expected an object, got {}", type_name(other)),
                ));
            }
        };
        // Resolve dict arguments copied from the ground truth's nested form.
        if let Some(Ok((gname, accepted))) = ground_truth.get(i).map(ground_truth_entry)
            && gname == name
        {
            for (arg, value) in arguments.iter_mut() {
                if contains_nested_form(value)
                    && accepted
                        .get(arg)
                        .and_then(Value::as_array)
                        .is_some_and(|a| a.iter().any(|x| x == value))
                {
                    *value = resolve_copied(value);
                }
            }
        }
        calls.push(ToolCall {
            name: name.to_string(),
            arguments: Value::Object(arguments),
        });
    }

    let mut system_text = tools_system_prompt(&tools);
    if let Some(s) = system {
        system_text = format!("{s}\n\n{system_text}");
    }
    let mut messages = vec![Message::new(Role::System, system_text)];
    messages.extend(turns);
    let mut answer = Message::new(Role::Assistant, if abstain { ABSTAIN_ANSWER } else { "" });
    answer.tool_calls = calls;
    messages.push(answer);
    Ok(Row::Example(Box::new(ChatExample {
        id,
        kind: format!("bfcl:{category}"),
        conversation: Conversation { messages },
        reference: json!({
            "tools": raw_tools,
            "ground_truth": ground_truth,
            "abstain": abstain,
        }),
    })))
}

/// A ground-truth entry: `{"tool_name": {"arg": [accepted values…], …}}`.
fn ground_truth_entry(g: &Value) -> Result<(&str, &Map<String, Value>), String> {
    let obj = g
        .as_object()
        .filter(|o| o.len() == 1)
        .ok_or_else(|| "expected an object with one key, the tool's name".to_string())?;
    let (name, args) = obj
        .iter()
        .next()
        .ok_or_else(|| "expected an object with one key, the tool's name".to_string())?;
    let args = args
        .as_object()
        .ok_or_else(|| format!("{name:?}: expected an object of accepted argument values"))?;
    if let Some((arg, _)) = args.iter().find(|(_, v)| !v.is_array()) {
        return Err(format!(
            "{name:?}.{arg}: expected a list of accepted values"
        ));
    }
    Ok((name, args))
}

/// Whether a dict is in the ground truth's nested form (every value a list of accepted values).
fn is_nested_form(v: &Value) -> bool {
    v.as_object()
        .is_some_and(|o| !o.is_empty() && o.values().all(Value::is_array))
}

/// Whether a value holds a nested-form dict (itself, or inside an array).
fn contains_nested_form(v: &Value) -> bool {
    match v {
        Value::Object(_) => is_nested_form(v),
        Value::Array(a) => a.iter().any(contains_nested_form),
        _ => false,
    }
}

/// A value copied from the ground truth with every nested-form dict in it (itself, or inside arrays)
/// resolved to a dict of values: each key's first accepted value that is not the optional marker
/// (`""` / `null`); keys with none are left out.
fn resolve_copied(v: &Value) -> Value {
    match v {
        Value::Object(o) if is_nested_form(v) => {
            let mut out = Map::new();
            for (k, accepted) in o {
                let first = accepted
                    .as_array()
                    .and_then(|a| a.iter().find(|x| !is_optional_marker(x)));
                if let Some(x) = first {
                    out.insert(k.clone(), resolve_copied(x));
                }
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(resolve_copied).collect()),
        _ => v.clone(),
    }
}

fn is_optional_marker(v: &Value) -> bool {
    v.is_null() || v.as_str() == Some("")
}

// ---------------------------------------------------------------------------------------------
// Generated conversations.

const CALC_ASK: &[&str] = &[
    "What is {e}?",
    "Calculate {e}.",
    "Compute {e}, please.",
    "How much is {e}?",
    "Evaluate the expression {e}.",
    "Use the calculator to work out {e}.",
    "Can you tell me what {e} equals?",
];
const CALC_SAY: &[&str] = &["{e} = {r}.", "The result is {r}.", "It comes to {r}."];
const CONVERT_ASK: &[&str] = &[
    "Convert {v} {from} to {to}.",
    "How many {to} are there in {v} {from}?",
    "What is {v} {from_sym} in {to_sym}?",
    "{v} {from} is how many {to}?",
    "Please change {v} {from_sym} into {to}.",
];
const CONVERT_SAY: &[&str] = &["{v} {from} is {x} {to}.", "That is {x} {to_sym}."];
const SYMBOL_ASK: &[&str] = &[
    "What is the chemical symbol for {name}?",
    "Which symbol does {name} have in the periodic table?",
    "Look up the symbol of {name}.",
];
const NUMBER_ASK: &[&str] = &[
    "What is the atomic number of {name}?",
    "How many protons does an atom of {name} have?",
    "Look up the atomic number of {name}.",
];
const NAME_ASK: &[&str] = &[
    "Which element has the symbol {sym}?",
    "What element is {sym}?",
    "Which chemical element does the symbol {sym} stand for?",
];
const NO_TOOL_ASK: &[&str] = &[
    "What's the weather like in Paris today?",
    "Book me a table for two at an Italian restaurant tonight.",
    "Send an email to my boss saying I'll be late.",
    "Play some relaxing music.",
    "Set an alarm for 7 am tomorrow.",
    "What is the current price of Bitcoin?",
    "Order a large pizza to my address.",
    "Call my mother and tell her I'm on my way.",
];

fn pick<'a>(rng: &mut SplitMix64, items: &'a [&'a str]) -> &'a str {
    items[rng.below(items.len() as u64) as usize]
}

fn fill(template: &str, vars: &[(&str, &str)]) -> String {
    let mut s = template.to_string();
    for (k, v) in vars {
        s = s.replace(&format!("{{{k}}}"), v);
    }
    s
}

/// One generated request: the user's text, the call, the final answer's text and the value it must
/// contain.
struct Generated {
    tool: LocalTool,
    user: String,
    arguments: Map<String, Value>,
}

fn gen_calculator(rng: &mut SplitMix64) -> Generated {
    let mut n = |lo: u64, hi: u64| (lo + rng.below(hi - lo + 1)).to_string();
    let (a, b, c) = (n(1, 99), n(1, 99), n(2, 20));
    let frac = n(1, 9);
    let d = ["2", "4", "5", "8", "10"][rng.below(5) as usize];
    let templates = [
        format!("{a} + {b} * {c}"),
        format!("({a} + {b}) * {c}"),
        format!("{a} * {c} - {b}"),
        format!("{a} / {d}"),
        format!("({a} - {b}) / {d}"),
        format!("-{a} + {b}"),
        format!("{c}.{frac} * {b}"),
        format!("{a} * ({b} - {c})"),
    ];
    let e = templates[rng.below(templates.len() as u64) as usize].clone();
    let user = fill(pick(rng, CALC_ASK), &[("e", &e)]);
    let mut arguments = Map::new();
    arguments.insert("expression".into(), Value::String(e));
    Generated {
        tool: LocalTool::Calculator,
        user,
        arguments,
    }
}

fn unit_name(u: &Unit, value: f64) -> &'static str {
    if value == 1.0 { u.singular } else { u.plural }
}

fn gen_convert(rng: &mut SplitMix64) -> Generated {
    let from = &UNITS[rng.below(UNITS.len() as u64) as usize];
    let same: Vec<&Unit> = UNITS
        .iter()
        .filter(|u| u.dimension == from.dimension && u.symbol != from.symbol)
        .collect();
    let to = same[rng.below(same.len() as u64) as usize];
    let whole = if from.dimension == crate::tools::Dimension::Temperature {
        // -40..=300 in every temperature unit is above absolute zero except in kelvin.
        let lo = if from.symbol == "K" { 0 } else { -40 };
        lo + rng.below((300 - lo + 1) as u64) as i64
    } else {
        1 + rng.below(500) as i64
    };
    let value = if rng.below(4) == 0 {
        whole as f64 + 0.5
    } else {
        whole as f64
    };
    let v = format_number(value, 10);
    let user = fill(
        pick(rng, CONVERT_ASK),
        &[
            ("v", &v),
            ("from", unit_name(from, value)),
            ("to", to.plural),
            ("from_sym", from.symbol),
            ("to_sym", to.symbol),
        ],
    );
    let mut arguments = Map::new();
    arguments.insert("value".into(), crate::tools::number_value(value, 10));
    arguments.insert("from_unit".into(), Value::String(from.symbol.into()));
    arguments.insert("to_unit".into(), Value::String(to.symbol.into()));
    Generated {
        tool: LocalTool::UnitConverter,
        user,
        arguments,
    }
}

/// Which fact an element question asks for.
#[derive(Clone, Copy)]
enum Ask {
    Symbol,
    Number,
    Name,
}

fn gen_lookup(rng: &mut SplitMix64) -> (Generated, Ask) {
    let e: &Element = &ELEMENTS[rng.below(ELEMENTS.len() as u64) as usize];
    let ask = [Ask::Symbol, Ask::Number, Ask::Name][rng.below(3) as usize];
    let name = if rng.below(2) == 0 {
        e.name.to_string()
    } else {
        e.name.to_lowercase()
    };
    let (template, query) = match ask {
        Ask::Symbol => (pick(rng, SYMBOL_ASK), name.clone()),
        Ask::Number => (pick(rng, NUMBER_ASK), name.clone()),
        Ask::Name => (pick(rng, NAME_ASK), e.symbol.to_string()),
    };
    let user = fill(template, &[("name", &name), ("sym", e.symbol)]);
    let mut arguments = Map::new();
    arguments.insert("element".into(), Value::String(query));
    (
        Generated {
            tool: LocalTool::ElementLookup,
            user,
            arguments,
        },
        ask,
    )
}

/// The final answer from the tool's result: (text, the value it must contain).
fn final_answer(
    g: &Generated,
    ask: Option<Ask>,
    result: &Value,
    rng: &mut SplitMix64,
) -> (String, String) {
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let arg = |k: &str| g.arguments.get(k).unwrap_or(&Value::Null);
    match g.tool {
        LocalTool::Calculator => {
            let r = s(&result["result"]);
            let e = s(arg("expression"));
            (fill(pick(rng, CALC_SAY), &[("e", &e), ("r", &r)]), r)
        }
        LocalTool::UnitConverter => {
            let x = s(&result["value"]);
            let value = arg("value").as_f64().unwrap_or(0.0);
            let from = crate::tools::find_unit(&s(arg("from_unit")));
            let to = crate::tools::find_unit(&s(&result["unit"]));
            let (Some(from), Some(to)) = (from, to) else {
                return (format!("It is {x}."), x);
            };
            let xv = result["value"].as_f64().unwrap_or(0.0);
            let text = fill(
                pick(rng, CONVERT_SAY),
                &[
                    ("v", &format_number(value, 10)),
                    ("from", unit_name(from, value)),
                    ("x", &x),
                    ("to", unit_name(to, xv)),
                    ("to_sym", to.symbol),
                ],
            );
            (text, x)
        }
        LocalTool::ElementLookup => {
            let (name, sym, num) = (
                s(&result["name"]),
                s(&result["symbol"]),
                s(&result["atomic_number"]),
            );
            match ask.unwrap_or(Ask::Symbol) {
                Ask::Symbol => (format!("The chemical symbol for {name} is {sym}."), sym),
                Ask::Number => (format!("The atomic number of {name} is {num}."), num),
                Ask::Name => (format!("{sym} is the symbol for {name}."), name),
            }
        }
    }
}

/// `n` deterministic conversations with the real local tools (same `seed`, same examples; a longer
/// run extends a shorter one). Ids are `gen:<seed>:<i>`, kinds `gen:<tool name>` or `gen:abstain`.
pub fn generated_examples(n: usize, seed: u64) -> Vec<ChatExample> {
    let mut rng = SplitMix64::new(seed ^ 0x7001_ca11_0000_0000);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let pick_kind = rng.below(8);
        // Two tools on offer (the needed one and a distractor, in random order): the prompt stays
        // short enough for a small model's window, and picking the right tool still matters.
        let needed = match pick_kind {
            0 => LocalTool::ALL[rng.below(LocalTool::ALL.len() as u64) as usize],
            k => LocalTool::ALL[(k % 3) as usize],
        };
        let others: Vec<LocalTool> = LocalTool::ALL
            .into_iter()
            .filter(|t| *t != needed)
            .collect();
        let other = others[rng.below(others.len() as u64) as usize];
        let mut specs = vec![needed.spec(), other.spec()];
        if rng.below(2) == 1 {
            specs.swap(0, 1);
        }
        let tools_json: Vec<Value> = specs
            .iter()
            .map(|s| serde_json::to_value(s).unwrap_or(Value::Null))
            .collect();
        let system = Message::new(Role::System, tools_system_prompt(&specs));
        let id = format!("gen:{seed}:{i}");
        if pick_kind == 0 {
            out.push(ChatExample {
                id,
                kind: "gen:abstain".to_string(),
                conversation: Conversation {
                    messages: vec![
                        system,
                        Message::new(Role::User, pick(&mut rng, NO_TOOL_ASK)),
                        Message::new(Role::Assistant, ABSTAIN_ANSWER),
                    ],
                },
                reference: json!({"tools": tools_json, "ground_truth": [], "abstain": true}),
            });
            continue;
        }
        let (g, ask) = match pick_kind % 3 {
            0 => (gen_calculator(&mut rng), None),
            1 => (gen_convert(&mut rng), None),
            _ => {
                let (g, a) = gen_lookup(&mut rng);
                (g, Some(a))
            }
        };
        // The generators only produce arguments the tools accept; an error would be a bug here, and
        // is shown as the tool's result rather than hidden.
        let result = g
            .tool
            .call(&g.arguments)
            .unwrap_or_else(|e| json!({"error": e}));
        let (answer_text, answer) = final_answer(&g, ask, &result, &mut rng);
        let ground_truth: Map<String, Value> = g
            .arguments
            .iter()
            .map(|(k, v)| (k.clone(), json!([v])))
            .collect();
        let mut call = Message::new(Role::Assistant, "");
        call.tool_calls.push(ToolCall {
            name: g.tool.name().to_string(),
            arguments: Value::Object(g.arguments.clone()),
        });
        out.push(ChatExample {
            id,
            kind: format!("gen:{}", g.tool.name()),
            conversation: Conversation {
                messages: vec![
                    system,
                    Message::new(Role::User, g.user),
                    call,
                    Message::new(Role::Tool, result.to_string()),
                    Message::new(Role::Assistant, answer_text),
                ],
            },
            reference: json!({
                "tools": tools_json,
                "ground_truth": [{g.tool.name(): ground_truth}],
                "abstain": false,
                "final_answer": answer,
            }),
        });
    }
    out
}

/// A generated example cut after its first assistant turn that makes a call, with the reference of a
/// call row (no `final_answer`), so that [`score`] grades the call. `None` when no assistant turn
/// makes a call.
pub fn first_call_example(example: &ChatExample) -> Option<ChatExample> {
    let msgs = &example.conversation.messages;
    let i = msgs
        .iter()
        .position(|m| m.role == Role::Assistant && !m.tool_calls.is_empty())?;
    let mut reference = example.reference.clone();
    if let Some(o) = reference.as_object_mut() {
        o.remove("final_answer");
    }
    Some(ChatExample {
        id: example.id.clone(),
        kind: example.kind.clone(),
        conversation: Conversation {
            messages: msgs[..=i].to_vec(),
        },
        reference,
    })
}

// ---------------------------------------------------------------------------------------------
// Scoring.

/// What an example's reference asks of the generated turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Expected {
    /// One or more calls (`ground_truth` non-empty).
    Calls,
    /// An answer without any call (`abstain: true`).
    Abstain,
    /// A final answer containing `final_answer` (generated conversations).
    Answer,
    /// The reference holds none of these; the example counts in no rate.
    Unscored,
}

/// How a generated assistant turn fares against an example's reference.
///
/// - `valid_json`: every `<|tool_call|>` block parses into `{"name": string, "arguments": object}`
///   ([`parse_tool_calls`]), and, on a `Calls` row, there is at least one.
/// - `name_correct` (`Calls`): the called tool names equal the expected ones as a multiset (order free).
/// - `exact_match` (`Calls`): the calls pair one-to-one with the ground-truth entries (order free), each
///   with the entry's name and arguments: every argument given is in the entry and its value is one of
///   the accepted values; every entry argument not given is optional (its list holds `""` or `null`,
///   or is empty). Values compare BFCL-style: numbers by value (`5 == 5.0`), strings ignoring case,
///   spaces and `,./-_*^`, lists item by item, dicts key by key (a nested-form dict, whose values are
///   lists of accepted values, accepts a dict per key).
/// - `schema_valid` (`Calls`): at least one call, and every call passes [`validate_call`] against the
///   reference's tools.
/// - `abstained_correctly` (`Abstain` only): `Some(true)` when the text holds no `<|tool_call|>` at all.
/// - `answer_correct` (`Answer` only): the text (outside call blocks) contains `final_answer` as a
///   whole token, case-insensitively (`14` is not found in `140` or `1.14`).
///
/// On rows where a field does not apply it is `false` (or `None`) and [`aggregate`] leaves it out.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CallScore {
    pub expected: Expected,
    /// Calls parsed (0 when the text did not parse).
    pub calls: usize,
    pub valid_json: bool,
    pub name_correct: bool,
    pub exact_match: bool,
    pub abstained_correctly: Option<bool>,
    pub schema_valid: bool,
    pub answer_correct: Option<bool>,
    /// The first thing that went wrong (a parse error, schema violations, a name mismatch), for display.
    pub note: Option<String>,
}

/// Scores `generated` (the decoded assistant turn, special tokens written out) against `example`.
pub fn score(example: &ChatExample, generated: &str) -> CallScore {
    let r = &example.reference;
    let ground_truth: Vec<(&str, &Map<String, Value>)> = r
        .get("ground_truth")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|g| ground_truth_entry(g).ok())
                .collect()
        })
        .unwrap_or_default();
    let final_answer = r.get("final_answer").and_then(|v| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    });
    let expected = if final_answer.is_some() {
        Expected::Answer
    } else if r.get("abstain").and_then(Value::as_bool) == Some(true) {
        Expected::Abstain
    } else if !ground_truth.is_empty() {
        Expected::Calls
    } else {
        Expected::Unscored
    };
    let parsed = parse_tool_calls(generated);
    let mut s = CallScore {
        expected,
        calls: parsed.as_ref().map_or(0, Vec::len),
        valid_json: parsed.is_ok(),
        name_correct: false,
        exact_match: false,
        abstained_correctly: None,
        schema_valid: false,
        answer_correct: None,
        note: parsed.as_ref().err().map(ToString::to_string),
    };
    match expected {
        Expected::Unscored => {
            s.note = Some("the reference has no ground_truth, abstain or final_answer".to_string());
        }
        Expected::Abstain => {
            let made_call = generated.contains(Special::ToolCallOpen.text());
            s.abstained_correctly = Some(!made_call);
            if made_call && s.note.is_none() {
                s.note = Some("made a call where none was expected".to_string());
            }
        }
        Expected::Answer => {
            let answer = final_answer.unwrap_or_default();
            let ok = contains_token(&strip_calls(generated), &answer);
            s.answer_correct = Some(ok);
            if !ok && s.note.is_none() {
                s.note = Some(format!("the answer does not contain {answer:?}"));
            }
        }
        Expected::Calls => {
            let Ok(calls) = parsed else { return s };
            if calls.is_empty() {
                s.valid_json = false;
                s.note = Some("no tool call where one was expected".to_string());
                return s;
            }
            let tools: Vec<ToolSpec> = r
                .get("tools")
                .and_then(|t| serde_json::from_value(t.clone()).ok())
                .unwrap_or_default();
            let violations: Vec<String> = calls
                .iter()
                .filter_map(|c| validate_call(c, &tools).err())
                .flatten()
                .map(|v| v.to_string())
                .collect();
            s.schema_valid = violations.is_empty();
            let mut got: Vec<&str> = calls.iter().map(|c| c.name.as_str()).collect();
            let mut want: Vec<&str> = ground_truth.iter().map(|(n, _)| *n).collect();
            got.sort_unstable();
            want.sort_unstable();
            s.name_correct = got == want;
            s.exact_match = s.name_correct
                && one_to_one(calls.len(), ground_truth.len(), |i, j| {
                    calls[i].name == ground_truth[j].0
                        && args_match(&calls[i].arguments, ground_truth[j].1)
                });
            s.note = if !s.name_correct {
                Some(format!(
                    "called [{}], expected [{}]",
                    got.join(", "),
                    want.join(", ")
                ))
            } else if !violations.is_empty() {
                Some(violations.join("; "))
            } else if !s.exact_match {
                Some("arguments differ from every accepted value".to_string())
            } else {
                None
            };
        }
    }
    s
}

/// Whether items `0..n` pair one-to-one with `0..m` under `fits` (augmenting-path matching).
fn one_to_one(n: usize, m: usize, fits: impl Fn(usize, usize) -> bool) -> bool {
    if n != m {
        return false;
    }
    let fit: Vec<Vec<bool>> = (0..n)
        .map(|i| (0..m).map(|j| fits(i, j)).collect())
        .collect();
    let mut owner: Vec<Option<usize>> = vec![None; m];
    fn augment(
        i: usize,
        fit: &[Vec<bool>],
        owner: &mut [Option<usize>],
        seen: &mut [bool],
    ) -> bool {
        for j in 0..owner.len() {
            if fit[i][j] && !seen[j] {
                seen[j] = true;
                if owner[j].is_none_or(|k| augment(k, fit, owner, seen)) {
                    owner[j] = Some(i);
                    return true;
                }
            }
        }
        false
    }
    (0..n).all(|i| augment(i, &fit, &mut owner, &mut vec![false; m]))
}

/// Whether `args` match a ground-truth entry's accepted values (see [`CallScore::exact_match`]).
pub fn args_match(args: &Map<String, Value>, accepted: &Map<String, Value>) -> bool {
    let optional = |acc: &Value| match acc {
        Value::Array(a) => a.is_empty() || a.iter().any(is_optional_marker),
        _ => false,
    };
    args.iter().all(|(k, v)| match accepted.get(k) {
        None => false,
        Some(acc) if v.is_null() && optional(acc) => true,
        Some(Value::Array(options)) => options.iter().any(|a| value_matches(v, a)),
        Some(literal) => value_matches(v, literal),
    }) && accepted
        .iter()
        .all(|(k, acc)| args.contains_key(k) || optional(acc))
}

fn normalize(s: &str) -> String {
    s.chars()
        .filter(|c| !" ,./-_*^".contains(*c))
        .flat_map(char::to_lowercase)
        .map(|c| if c == '\'' { '"' } else { c })
        .collect()
}

fn value_matches(v: &Value, a: &Value) -> bool {
    match (v, a) {
        (Value::String(x), Value::String(y)) => {
            x == y || (!y.is_empty() && normalize(x) == normalize(y))
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(v, a)| value_matches(v, a))
        }
        (Value::Object(x), Value::Object(y)) => {
            (is_nested_form(a) && args_match(x, y))
                || (x.len() == y.len()
                    && x.iter()
                        .all(|(k, v)| y.get(k).is_some_and(|a| value_matches(v, a))))
        }
        _ => json_eq(v, a),
    }
}

/// The text outside `<|tool_call|>…<|/tool_call|>` blocks.
fn strip_calls(text: &str) -> String {
    let (open, close) = (Special::ToolCallOpen.text(), Special::ToolCallClose.text());
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find(open) {
        out.push_str(&rest[..i]);
        match rest[i..].find(close) {
            Some(j) => rest = &rest[i + j + close.len()..],
            None => return out,
        }
    }
    out.push_str(rest);
    out
}

/// Whether `needle` occurs in `text` (case-insensitively) as a whole token: not inside a word or a
/// longer number.
fn contains_token(text: &str, needle: &str) -> bool {
    let (text, needle) = (text.to_lowercase(), needle.trim().to_lowercase());
    if needle.is_empty() {
        return false;
    }
    let mut from = 0;
    while let Some(i) = text[from..].find(&needle) {
        let start = from + i;
        let end = start + needle.len();
        let before = text[..start].chars().next_back();
        let mut after = text[end..].chars();
        let (a1, a2) = (after.next(), after.next());
        let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric());
        let bad_before = word(before) || matches!(before, Some('.' | '-' | '_'));
        let bad_after = word(a1)
            || a1 == Some('_')
            || (matches!(a1, Some('.' | ','))
                && word(a2)
                && a2.is_some_and(|c| c.is_ascii_digit()));
        if !bad_before && !bad_after {
            return true;
        }
        from = start + text[start..].chars().next().map_or(1, char::len_utf8);
    }
    false
}

/// Rates over the rows where each applies (a rate with no such row is left out):
/// `valid_json_rate`, `name_accuracy`, `exact_match`, `schema_valid_rate` over `Calls` rows;
/// `abstention_accuracy` over `Abstain` rows; `final_answer_accuracy` over `Answer` rows; and the row
/// counts `call_rows`, `abstain_rows`, `answer_rows`.
pub fn aggregate(scores: &[CallScore]) -> Vec<(&'static str, f64)> {
    let of = |e: Expected| scores.iter().filter(move |s| s.expected == e);
    let rate = |e: Expected, f: &dyn Fn(&CallScore) -> bool| {
        let n = of(e).count();
        (n > 0).then(|| of(e).filter(|s| f(s)).count() as f64 / n as f64)
    };
    let mut out = Vec::new();
    let mut put = |name: &'static str, v: Option<f64>| {
        if let Some(v) = v {
            out.push((name, v));
        }
    };
    put("valid_json_rate", rate(Expected::Calls, &|s| s.valid_json));
    put("name_accuracy", rate(Expected::Calls, &|s| s.name_correct));
    put("exact_match", rate(Expected::Calls, &|s| s.exact_match));
    put(
        "schema_valid_rate",
        rate(Expected::Calls, &|s| s.schema_valid),
    );
    put(
        "abstention_accuracy",
        rate(Expected::Abstain, &|s| s.abstained_correctly == Some(true)),
    );
    put(
        "final_answer_accuracy",
        rate(Expected::Answer, &|s| s.answer_correct == Some(true)),
    );
    put("call_rows", Some(of(Expected::Calls).count() as f64));
    put("abstain_rows", Some(of(Expected::Abstain).count() as f64));
    put("answer_rows", Some(of(Expected::Answer).count() as f64));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tardbot_tokens::chat::render_chat_text;

    fn sample_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../data/sample/bfcl_sample.jsonl")
    }

    fn sample() -> Vec<ChatExample> {
        bfcl_examples(&sample_path()).unwrap()
    }

    fn by_id<'a>(examples: &'a [ChatExample], id: &str) -> &'a ChatExample {
        examples.iter().find(|e| e.id == id).unwrap()
    }

    /// The assistant turn as the model should generate it (the target rendered by the chat template).
    fn target_text(e: &ChatExample) -> String {
        let full = render_chat_text(&e.conversation, false).unwrap();
        let start = full.rfind("<|assistant|>").unwrap() + "<|assistant|>".len();
        full[start..].trim_end_matches("<|endoftext|>").to_string()
    }

    #[test]
    fn every_sample_row_converts() {
        let load = load_bfcl(&sample_path()).unwrap();
        let lines = std::fs::read_to_string(sample_path())
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count();
        assert_eq!(lines, 392);
        assert_eq!(load.examples.len() + load.skipped.len(), lines);
        assert_eq!(load.skipped.len(), 2); // the two live_relevance rows
        assert!(
            load.skipped
                .iter()
                .all(|s| s.id.starts_with("live_relevance"))
        );
        let abstain = load
            .examples
            .iter()
            .filter(|e| e.reference["abstain"] == json!(true))
            .count();
        assert_eq!(abstain, 119);
        for e in &load.examples {
            assert!(e.kind.starts_with("bfcl:"));
            // Renders through the one chat template; the prompt ends before the target.
            let text = render_chat_text(&e.conversation, false).unwrap();
            assert!(text.starts_with("<|system|>"), "{}", e.id);
            assert_eq!(e.prompt().messages.last().unwrap().role, Role::User);
            // The target itself scores perfectly.
            let s = score(e, &target_text(e));
            match s.expected {
                Expected::Abstain => assert_eq!(s.abstained_correctly, Some(true), "{}", e.id),
                Expected::Calls => {
                    assert!(
                        s.valid_json && s.name_correct && s.exact_match,
                        "{}: {s:?}",
                        e.id
                    )
                }
                other => panic!("{}: {other:?}", e.id),
            }
        }
        // Most targets are schema-valid too (BFCL's data has a few type quirks).
        let calls: Vec<CallScore> = load
            .examples
            .iter()
            .map(|e| score(e, &target_text(e)))
            .filter(|s| s.expected == Expected::Calls)
            .collect();
        let valid = calls.iter().filter(|s| s.schema_valid).count();
        assert!(valid * 100 >= calls.len() * 95, "{valid}/{}", calls.len());
    }

    #[test]
    fn nested_dict_targets_are_resolved() {
        let e = sample();
        let java = by_id(&e, "simple_java_1");
        let call = &java.conversation.messages.last().unwrap().tool_calls[0];
        assert_eq!(
            call.arguments["params"],
            json!({"limit": 50, "schemaFilter": "public"})
        );
        let s = score(java, &target_text(java));
        assert!(s.exact_match && s.schema_valid, "{s:?}");

        // A list of nested-form dicts (BFCL's simple_python_96), resolved item by item.
        let row = json!({
            "id": "q", "category": "simple_python",
            "messages": [{"role": "user", "content": "Find engineers over 25."}],
            "tools": [{"name": "database.query", "description": "Query.", "parameters": {
                "type": "dict", "required": ["table", "conditions"], "properties": {
                    "table": {"type": "string"},
                    "conditions": {"type": "array", "items": {"type": "dict", "properties": {
                        "field": {"type": "string"}, "value": {"type": "string"}}}}}}}],
            "ground_truth": [{"database.query": {"table": ["user"], "conditions": [[
                {"field": ["age"], "value": ["25"]}, {"field": ["job"], "value": ["engineer", ""]}]]}}],
            "target_calls": [{"name": "database.query", "arguments": {"table": "user", "conditions": [
                {"field": ["age"], "value": ["25"]}, {"field": ["job"], "value": ["engineer", ""]}]}}]
        });
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nested.jsonl");
        std::fs::write(&p, format!("{row}\n")).unwrap();
        let ex = &bfcl_examples(&p).unwrap()[0];
        let call = &ex.conversation.messages.last().unwrap().tool_calls[0];
        assert_eq!(
            call.arguments["conditions"],
            json!([{"field": "age", "value": "25"}, {"field": "job", "value": "engineer"}])
        );
        let s = score(ex, &target_text(ex));
        assert!(s.exact_match && s.schema_valid, "{s:?}");
    }

    #[test]
    fn the_system_turn_lists_the_tools() {
        let e = sample();
        let ex = by_id(&e, "simple_python_0");
        let system = &ex.conversation.messages[0].content;
        assert!(system.contains("tool call"));
        let tool_line = system.lines().last().unwrap();
        let spec: ToolSpec = serde_json::from_str(tool_line).unwrap();
        assert_eq!(spec.name, "calculate_triangle_area");
        assert_eq!(ex.kind, "bfcl:simple_python");
    }

    #[test]
    fn scores_real_rows() {
        let e = sample();
        let ex = by_id(&e, "simple_python_0");
        let good = r#"<|tool_call|>{"name": "calculate_triangle_area", "arguments": {"base": 10, "height": 5.0}}<|/tool_call|><|end|>"#;
        let s = score(ex, good);
        assert!(
            s.valid_json && s.name_correct && s.exact_match && s.schema_valid,
            "{s:?}"
        );
        assert_eq!(s.abstained_correctly, None);
        // The optional unit may be given with an accepted value.
        let s = score(
            ex,
            r#"<|tool_call|>{"name": "calculate_triangle_area", "arguments": {"base": 10, "height": 5, "unit": "Units"}}<|/tool_call|>"#,
        );
        assert!(s.exact_match, "{s:?}");
        // Wrong value: valid and well-typed, but not an exact match.
        let s = score(
            ex,
            r#"<|tool_call|>{"name": "calculate_triangle_area", "arguments": {"base": 12, "height": 5}}<|/tool_call|>"#,
        );
        assert!(
            s.valid_json && s.name_correct && s.schema_valid && !s.exact_match,
            "{s:?}"
        );
        // Wrong type: the schema check says where.
        let s = score(
            ex,
            r#"<|tool_call|>{"name": "calculate_triangle_area", "arguments": {"base": "10", "height": 5}}<|/tool_call|>"#,
        );
        assert!(!s.schema_valid && !s.exact_match, "{s:?}");
        assert_eq!(
            s.note.as_deref(),
            Some("calculate_triangle_area.base: expected integer, got string \"10\"")
        );
        // Extra argument.
        let s = score(
            ex,
            r#"<|tool_call|>{"name": "calculate_triangle_area", "arguments": {"base": 10, "height": 5, "color": "red"}}<|/tool_call|>"#,
        );
        assert!(!s.schema_valid && !s.exact_match && s.name_correct, "{s:?}");
        // Wrong tool name.
        let s = score(
            ex,
            r#"<|tool_call|>{"name": "triangle_area", "arguments": {"base": 10, "height": 5}}<|/tool_call|>"#,
        );
        assert!(s.valid_json && !s.name_correct && !s.schema_valid, "{s:?}");
        // Truncated JSON.
        let s = score(
            ex,
            r#"<|tool_call|>{"name": "calculate_triangle_area", "arguments": {"base": 10"#,
        );
        assert!(!s.valid_json && !s.name_correct, "{s:?}");
        assert!(s.note.unwrap().contains("not closed"));
        // No call at all.
        let s = score(ex, "The area is 25 square units.<|end|>");
        assert!(!s.valid_json && !s.name_correct, "{s:?}");

        // An irrelevance row.
        let irr = by_id(&e, "irrelevance_0");
        let s = score(irr, "I cannot compute that with these tools.<|end|>");
        assert_eq!(
            (s.expected, s.abstained_correctly),
            (Expected::Abstain, Some(true))
        );
        let s = score(
            irr,
            r#"<|tool_call|>{"name": "determine_body_mass_index", "arguments": {"weight": 10, "height": 5}}<|/tool_call|>"#,
        );
        assert_eq!(s.abstained_correctly, Some(false));
    }

    #[test]
    fn scores_parallel_calls_in_any_order() {
        let e = sample();
        let ex = e
            .iter()
            .find(|e| {
                e.kind == "bfcl:parallel"
                    && e.conversation.messages.last().unwrap().tool_calls.len() >= 2
            })
            .unwrap();
        let target = &ex.conversation.messages.last().unwrap().tool_calls;
        let block = |c: &ToolCall| {
            format!(
                "<|tool_call|>{}<|/tool_call|>",
                json!({"name": c.name, "arguments": c.arguments})
            )
        };
        let reversed: String = target.iter().rev().map(block).collect();
        let s = score(ex, &reversed);
        assert!(s.exact_match, "{}: {s:?}", ex.id);
        let only_first = block(&target[0]);
        let s = score(ex, &only_first);
        assert!(s.valid_json && !s.name_correct && !s.exact_match, "{s:?}");
        let doubled = format!("{}{}", block(&target[0]), block(&target[0]));
        assert!(!score(ex, &doubled).exact_match);
    }

    #[test]
    fn argument_matching_rules() {
        let acc = json!({"a": [5], "b": ["New York, NY", "NYC"], "c": ["", "x"], "d": [[1, 2]], "e": [{"k": ["v", ""]}]});
        let acc = acc.as_object().unwrap();
        let m = |v: Value| args_match(v.as_object().unwrap(), acc);
        assert!(m(
            json!({"a": 5.0, "b": "new york ny", "d": [1, 2.0], "e": {"k": "V"}})
        ));
        assert!(m(
            json!({"a": 5, "b": "NYC", "c": "x", "d": [1, 2], "e": {}})
        ));
        assert!(m(
            json!({"a": 5, "b": "NYC", "c": null, "d": [1, 2], "e": {"k": "v"}})
        ));
        assert!(
            !m(json!({"a": 5, "b": "NYC", "d": [1, 2]})),
            "e is required"
        );
        assert!(!m(json!({"a": 6, "b": "NYC", "d": [1, 2], "e": {}})));
        assert!(!m(json!({"a": "5", "b": "NYC", "d": [1, 2], "e": {}})));
        assert!(!m(json!({"a": 5, "b": "NYC", "d": [2, 1], "e": {}})));
        assert!(!m(
            json!({"a": 5, "b": "NYC", "d": [1, 2], "e": {}, "z": 1})
        ));
        assert!(!m(json!({"a": 5, "b": "Boston", "d": [1, 2], "e": {}})));
        assert!(!m(
            json!({"a": 5, "b": "NYC", "c": "y", "d": [1, 2], "e": {}})
        ));
    }

    #[test]
    fn answer_tokens() {
        assert!(contains_token("2*(3+4) = 14.", "14"));
        assert!(contains_token("It is -40 degrees.", "-40"));
        assert!(contains_token("The symbol for carbon is C.", "c"));
        assert!(!contains_token("It is 140.", "14"));
        assert!(!contains_token("It is 1.14.", "14"));
        assert!(!contains_token("It is 14.5.", "14"));
        assert!(!contains_token("It is -14.", "14"));
        assert!(!contains_token("Calcium is Ca.", "c"));
        assert_eq!(
            strip_calls("a<|tool_call|>{}<|/tool_call|>b<|tool_call|>{"),
            "ab"
        );
    }

    #[test]
    fn generated_examples_are_real_and_deterministic() {
        let a = generated_examples(200, 7);
        assert_eq!(a, generated_examples(200, 7));
        assert_eq!(a[..50], generated_examples(50, 7)[..]);
        assert_ne!(a, generated_examples(200, 8));
        let mut kinds: Vec<&str> = a.iter().map(|e| e.kind.as_str()).collect();
        kinds.sort_unstable();
        kinds.dedup();
        assert_eq!(
            kinds,
            [
                "gen:abstain",
                "gen:calculator",
                "gen:convert_units",
                "gen:element_lookup"
            ]
        );
        let mut users: Vec<&str> = a
            .iter()
            .map(|e| e.conversation.messages[1].content.as_str())
            .collect();
        users.sort_unstable();
        users.dedup();
        assert!(users.len() > 150, "{}", users.len());
        for e in &a {
            render_chat_text(&e.conversation, false).unwrap();
            let msgs = &e.conversation.messages;
            let last = msgs.last().unwrap();
            assert_eq!(last.role, Role::Assistant);
            if e.kind == "gen:abstain" {
                assert_eq!(score(e, ABSTAIN_ANSWER).abstained_correctly, Some(true));
                continue;
            }
            // The tool turn is the tool's real result, and the answer is scored from the final turn.
            assert_eq!(msgs[3].role, Role::Tool);
            assert!(
                !msgs[3].content.contains("error"),
                "{}: {}",
                e.id,
                msgs[3].content
            );
            let s = score(e, &last.content);
            assert_eq!(
                s.answer_correct,
                Some(true),
                "{}: {:?} {s:?}",
                e.id,
                last.content
            );
            assert_eq!(score(e, "No idea.").answer_correct, Some(false));
            // Cut at the call, the call scores as a call row.
            let c = first_call_example(e).unwrap();
            assert_eq!(c.prompt().messages.len(), 2);
            let s = score(&c, &target_text(&c));
            assert!(s.exact_match && s.schema_valid, "{}: {s:?}", e.id);
        }
        // Shown with --nocapture, to eyeball the phrasings.
        for e in a.iter().take(8) {
            eprintln!(
                "{}",
                render_chat_text(&e.conversation, false)
                    .unwrap()
                    .split("<|end|>")
                    .skip(1)
                    .collect::<Vec<_>>()
                    .join("<|end|>")
            );
        }
        let calc = a.iter().find(|e| e.kind == "gen:calculator").unwrap();
        assert!(
            calc.conversation.messages[3]
                .content
                .starts_with("{\"result\":")
        );
    }

    #[test]
    fn aggregate_counts_each_rate_over_its_rows() {
        let e = sample();
        let call = by_id(&e, "simple_python_0");
        let irr = by_id(&e, "irrelevance_0");
        let good = target_text(call);
        let scores = vec![
            score(call, &good),
            score(call, "no call"),
            score(
                call,
                r#"<|tool_call|>{"name": "calculate_triangle_area", "arguments": {"base": 1, "height": 5}}<|/tool_call|>"#,
            ),
            score(call, r#"<|tool_call|>{"name""#),
            score(irr, "No tool fits."),
        ];
        let agg: HashMap<&str, f64> = aggregate(&scores).into_iter().collect();
        assert_eq!(agg["valid_json_rate"], 0.5);
        assert_eq!(agg["name_accuracy"], 0.5);
        assert_eq!(agg["exact_match"], 0.25);
        assert_eq!(agg["schema_valid_rate"], 0.5);
        assert_eq!(agg["abstention_accuracy"], 1.0);
        assert_eq!(agg["call_rows"], 4.0);
        assert!(!agg.contains_key("final_answer_accuracy"));
        assert!(aggregate(&[]).iter().all(|(k, _)| k.ends_with("_rows")));
    }

    #[test]
    fn malformed_rows_name_file_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let good = std::fs::read_to_string(sample_path())
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .to_string();
        let check = |bad: &str, want: &str| {
            let p = dir.path().join("bfcl_bad.jsonl");
            std::fs::write(&p, format!("{good}\n\n{bad}\n")).unwrap();
            let err = bfcl_examples(&p).unwrap_err().to_string();
            assert!(err.ends_with(want), "{err}");
            assert!(err.contains("bfcl_bad.jsonl:3: "), "{err}");
        };
        let mut row: Value = serde_json::from_str(&good).unwrap();
        row["id"] = json!("other");
        let edit = |f: &dyn Fn(&mut Value)| {
            let mut r = row.clone();
            f(&mut r);
            r.to_string()
        };
        check(
            &edit(&|r| {
                r.as_object_mut().unwrap().remove("tools");
            }),
            "field \"tools\": missing",
        );
        check(
            "{not json",
            "invalid JSON: key must be a string at line 1 column 2",
        );
        check(
            &edit(&|r| r["tools"] = json!("x")),
            "field \"tools\": expected an array, got a string",
        );
        check(
            &edit(&|r| r["messages"][0]["role"] = json!("robot")),
            "field \"messages[0].role\": \"robot\" is not one of \"system\", \"user\", \"assistant\"",
        );
        check(
            &edit(&|r| r["target_calls"][0]["name"] = json!("nope")),
            "field \"target_calls[0].name\": \"nope\" is not one of the row's tools",
        );
        check(
            &edit(&|r| r["ground_truth"] = json!([])),
            "field \"ground_truth\": 0 entries for 1 target calls",
        );
        check(
            &edit(&|r| r["tools"][0] = json!({"description": "x"})),
            "field \"tools[0]\": missing field `name`",
        );
        check(
            &edit(&|r| r["id"] = json!("simple_python_0")),
            "field \"id\": \"simple_python_0\" is also the id on line 1",
        );
    }

    #[test]
    #[ignore = "reads the full shared corpus; run with --ignored"]
    fn the_full_corpus_converts() {
        let p = Path::new("/work/shared/corpora/tool_calling/bfcl_single_turn.jsonl");
        let load = load_bfcl(p).unwrap();
        assert_eq!(load.examples.len() + load.skipped.len(), 3095);
        let mut bad = Vec::new();
        for e in &load.examples {
            let s = score(e, &target_text(e));
            assert!(
                s.expected != Expected::Calls || s.exact_match,
                "{}: {s:?}",
                e.id
            );
            if s.expected == Expected::Calls && !s.schema_valid {
                bad.push(format!("{}: {}", e.id, s.note.unwrap_or_default()));
            }
        }
        eprintln!(
            "{} targets not schema-valid:\n{}",
            bad.len(),
            bad.join("\n")
        );
    }
}
