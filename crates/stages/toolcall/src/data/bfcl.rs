//! BFCL rows as [`ChatExample`]s.
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

use super::ground_truth::{contains_nested_form, ground_truth_entry, resolve_copied};
use super::{ABSTAIN_ANSWER, tools_system_prompt};
use crate::schema::ToolSpec;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use tardbot_finetune::ChatExample;
use tardbot_tokens::chat::{Conversation, Message, Role, ToolCall};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{CallScore, Expected, score};
    use crate::test_util::{by_id, sample, sample_path, target_text};
    use tardbot_tokens::chat::render_chat_text;

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
