//! Extracting tool calls from a generated assistant turn.
//!
//! The chat template renders a call as `<|tool_call|>{"name":…,"arguments":…}<|/tool_call|>`; generated
//! text is decoded with the special tokens written out literally, so a call is found by those markers.
//! Text outside the blocks (an answer, thinking, a trailing `<|end|>`) is ignored, and so is a stray
//! `<|/tool_call|>` without an opener. A call object may omit `arguments` (or give `null`): that is a
//! call without arguments. Keys other than `name` and `arguments` are ignored.

use serde_json::{Map, Value};
use tardbot_tokens::special_tokens::Special;

/// One tool call as the model wrote it.
#[derive(Clone, Debug, PartialEq)]
pub struct ParsedCall {
    pub name: String,
    pub arguments: Map<String, Value>,
}

impl ParsedCall {
    /// The call as the chat template's [`tardbot_tokens::chat::ToolCall`].
    pub fn to_tool_call(&self) -> tardbot_tokens::chat::ToolCall {
        tardbot_tokens::chat::ToolCall {
            name: self.name.clone(),
            arguments: Value::Object(self.arguments.clone()),
        }
    }
}

/// What is wrong with a tool-call block. `index` counts blocks from 0 in the order they appear;
/// `offset` is the byte offset of the block's `<|tool_call|>` in the generated text.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum CallError {
    #[error(
        "tool call #{index} (byte {offset}): the block is not closed: no <|/tool_call|> before {what} (truncated output?)"
    )]
    Unterminated {
        index: usize,
        offset: usize,
        /// "the end of the text" or "the next <|tool_call|>".
        what: &'static str,
    },
    #[error(
        "tool call #{index} (byte {offset}): invalid JSON at line {line}, column {column} of the block: {message}"
    )]
    InvalidJson {
        index: usize,
        offset: usize,
        line: usize,
        column: usize,
        message: String,
    },
    #[error(
        "tool call #{index} (byte {offset}): expected a JSON object {{\"name\": …, \"arguments\": {{…}}}}, got {got}"
    )]
    NotAnObject {
        index: usize,
        offset: usize,
        got: String,
    },
    #[error("tool call #{index} (byte {offset}): the object has no \"name\"")]
    MissingName { index: usize, offset: usize },
    #[error("tool call #{index} (byte {offset}): \"name\" must be a string, got {got}")]
    NameNotString {
        index: usize,
        offset: usize,
        got: String,
    },
    #[error(
        "tool call #{index} (byte {offset}, tool {name:?}): \"arguments\" must be a JSON object, got {got}"
    )]
    ArgumentsNotObject {
        index: usize,
        offset: usize,
        name: String,
        got: String,
    },
}

/// A short description of a JSON value for error messages: its type and (abridged) text.
pub fn describe_value(v: &Value) -> String {
    let kind = match v {
        Value::Null => return "null".to_string(),
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(a) => return format!("array of {} item(s) {}", a.len(), abridge(v)),
        Value::Object(_) => "dict",
    };
    format!("{kind} {}", abridge(v))
}

fn abridge(v: &Value) -> String {
    let s = v.to_string();
    const MAX: usize = 60;
    if s.chars().count() <= MAX {
        s
    } else {
        let cut: String = s.chars().take(MAX).collect();
        format!("{cut}…")
    }
}

/// Every `<|tool_call|>…<|/tool_call|>` block of `generated`, in order. No block at all gives
/// `Ok(vec![])` (the model answered without a tool); the first malformed block gives its error.
pub fn parse_tool_calls(generated: &str) -> Result<Vec<ParsedCall>, CallError> {
    let open = Special::ToolCallOpen.text();
    let close = Special::ToolCallClose.text();
    let mut calls = Vec::new();
    let mut pos = 0;
    while let Some(rel) = generated[pos..].find(open) {
        let index = calls.len();
        let offset = pos + rel;
        let body_start = offset + open.len();
        let rest = &generated[body_start..];
        let next_open = rest.find(open);
        let body_end = match rest.find(close) {
            Some(c) if next_open.is_none_or(|o| c < o) => c,
            _ => {
                return Err(CallError::Unterminated {
                    index,
                    offset,
                    what: if next_open.is_some() {
                        "the next <|tool_call|>"
                    } else {
                        "the end of the text"
                    },
                });
            }
        };
        calls.push(parse_block(&rest[..body_end], index, offset)?);
        pos = body_start + body_end + close.len();
    }
    Ok(calls)
}

fn parse_block(body: &str, index: usize, offset: usize) -> Result<ParsedCall, CallError> {
    let value: Value = serde_json::from_str(body).map_err(|e| CallError::InvalidJson {
        index,
        offset,
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })?;
    let Value::Object(mut obj) = value else {
        return Err(CallError::NotAnObject {
            index,
            offset,
            got: describe_value(&value),
        });
    };
    let name = match obj.remove("name") {
        None => return Err(CallError::MissingName { index, offset }),
        Some(Value::String(s)) => s,
        Some(other) => {
            return Err(CallError::NameNotString {
                index,
                offset,
                got: describe_value(&other),
            });
        }
    };
    let arguments = match obj.remove("arguments") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(other) => {
            return Err(CallError::ArgumentsNotObject {
                index,
                offset,
                name,
                got: describe_value(&other),
            });
        }
    };
    Ok(ParsedCall { name, arguments })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tardbot_tokens::chat::{Conversation, Message, Role, ToolCall, render_chat_text};

    #[test]
    fn no_block_is_no_call() {
        assert_eq!(parse_tool_calls("The answer is 4.<|end|>").unwrap(), vec![]);
        assert_eq!(parse_tool_calls("").unwrap(), vec![]);
        // A stray closer without an opener is text.
        assert_eq!(parse_tool_calls("oops<|/tool_call|>").unwrap(), vec![]);
    }

    #[test]
    fn parses_one_and_several_calls() {
        let one = r#"<|tool_call|>{"name":"calc","arguments":{"expression":"2*(3+4)"}}<|/tool_call|><|end|>"#;
        let calls = parse_tool_calls(one).unwrap();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].name, "calc");
        assert_eq!(calls[0].arguments["expression"], json!("2*(3+4)"));

        let two = "Let me check.<|tool_call|> {\"name\": \"a\", \"arguments\": {\"x\": 1}} <|/tool_call|>\
                   <|tool_call|>{\"arguments\":{},\"name\":\"b\"}<|/tool_call|>";
        let calls = parse_tool_calls(two).unwrap();
        assert_eq!(
            calls.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(calls[0].arguments["x"], json!(1));
        assert!(calls[1].arguments.is_empty());

        // Missing or null arguments: a call without arguments.
        let bare = r#"<|tool_call|>{"name":"now"}<|/tool_call|><|tool_call|>{"name":"now","arguments":null}<|/tool_call|>"#;
        assert!(
            parse_tool_calls(bare)
                .unwrap()
                .iter()
                .all(|c| c.arguments.is_empty())
        );
    }

    #[test]
    fn round_trips_the_chat_template() {
        let mut a = Message::new(Role::Assistant, "");
        for (name, args) in [
            ("f", json!({"a": [1, 2.5], "b": {"c": "d"}})),
            ("g", json!({})),
        ] {
            a.tool_calls.push(ToolCall {
                name: name.into(),
                arguments: args,
            });
        }
        let conv = Conversation {
            messages: vec![Message::new(Role::User, "go"), a.clone()],
        };
        let text = render_chat_text(&conv, false).unwrap();
        let start = text.rfind("<|assistant|>").unwrap();
        let calls = parse_tool_calls(&text[start..]).unwrap();
        let back: Vec<ToolCall> = calls.iter().map(ParsedCall::to_tool_call).collect();
        assert_eq!(back, a.tool_calls);
    }

    #[test]
    fn truncated_block_is_unterminated() {
        let e = parse_tool_calls(r#"ok <|tool_call|>{"name":"calc","argum"#).unwrap_err();
        assert_eq!(
            e,
            CallError::Unterminated {
                index: 0,
                offset: 3,
                what: "the end of the text"
            }
        );
        assert!(e.to_string().contains("not closed"), "{e}");
        // The second block is cut off after a good first one.
        let e = parse_tool_calls(
            r#"<|tool_call|>{"name":"a","arguments":{}}<|/tool_call|><|tool_call|>{"name":"#,
        )
        .unwrap_err();
        assert!(matches!(e, CallError::Unterminated { index: 1, .. }), "{e}");
        // An opener inside an unclosed block.
        let e = parse_tool_calls(
            r#"<|tool_call|>{"name":"a"<|tool_call|>{"name":"b","arguments":{}}<|/tool_call|>"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("the next <|tool_call|>"), "{e}");
    }

    #[test]
    fn invalid_json_reports_line_and_column() {
        let e = parse_tool_calls(
            "<|tool_call|>{\"name\":\"a\",\n \"arguments\": {\"x\": 1,}}<|/tool_call|>",
        )
        .unwrap_err();
        match &e {
            CallError::InvalidJson { line, column, .. } => {
                assert_eq!(*line, 2);
                assert!(*column > 10, "{e}");
            }
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().contains("line 2, column"), "{e}");
        // JSON cut short inside a closed block.
        let e = parse_tool_calls(r#"<|tool_call|>{"name":"a","arguments":{"x":<|/tool_call|>"#)
            .unwrap_err();
        assert!(matches!(e, CallError::InvalidJson { .. }), "{e}");
    }

    #[test]
    fn wrong_shapes_are_named() {
        let e = parse_tool_calls(r#"<|tool_call|>["calc", {}]<|/tool_call|>"#).unwrap_err();
        assert!(matches!(e, CallError::NotAnObject { .. }), "{e}");
        assert!(e.to_string().contains("got array"), "{e}");

        let e = parse_tool_calls(r#"<|tool_call|>{"arguments":{}}<|/tool_call|>"#).unwrap_err();
        assert_eq!(
            e,
            CallError::MissingName {
                index: 0,
                offset: 0
            }
        );

        let e = parse_tool_calls(r#"<|tool_call|>{"name":3,"arguments":{}}<|/tool_call|>"#)
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("\"name\" must be a string, got integer 3"),
            "{e}"
        );

        let e = parse_tool_calls(r#"<|tool_call|>{"name":"calc","arguments":"2+2"}<|/tool_call|>"#)
            .unwrap_err();
        assert!(matches!(e, CallError::ArgumentsNotObject { .. }), "{e}");
        assert!(e.to_string().contains("got string \"2+2\""), "{e}");
        assert!(e.to_string().contains("\"calc\""), "{e}");
    }
}
