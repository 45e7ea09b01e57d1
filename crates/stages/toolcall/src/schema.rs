//! Tool definitions (JSON schema, in the BFCL dialect) and validating a parsed call against them.
//!
//! Types are read case-insensitively and with BFCL's and Java/JavaScript's names:
//!
//! | schema type | accepts |
//! |---|---|
//! | `string`, `str`, `char` | a JSON string |
//! | `integer`, `int`, `long`, `short`, `byte` | a JSON number without a fraction (`10`, `10.0`; as JSON Schema) |
//! | `float`, `number`, `double` | any JSON number (an integer is a valid float) |
//! | `boolean`, `bool` | `true` / `false` |
//! | `array`, `tuple`, `list`, `arraylist`, `set` | a JSON array; `items` (if given) checked per item |
//! | `dict`, `object`, `hashmap`, `map` | a JSON object; `properties` (if given) checked per key, `required` enforced |
//! | `any`, a missing type or a type name not listed | anything |
//!
//! A `type` may also be a list of such names (any of them). `enum` restricts a value to the listed ones
//! (numbers compare by value, so `5` equals `5.0`); on an array whose items carry no enum of their own,
//! an `enum` restricts each item. A `null` argument is accepted for an optional parameter (as if
//! omitted) and refused for a required one. Keys not declared by `properties` are refused at the top
//! level (an unknown argument) and inside a nested dict that declares `properties`; a dict without
//! `properties` takes any keys.

use crate::call::{ParsedCall, describe_value};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;

/// A tool as the model sees it (BFCL's function JSON: `{name, description, parameters}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The parameter schema: `{"type": "dict", "properties": {…}, "required": […]}`.
    #[serde(default = "empty_parameters")]
    pub parameters: Value,
}

fn empty_parameters() -> Value {
    serde_json::json!({"type": "dict", "properties": {}})
}

/// One thing wrong with a call. Displays as `tool.path: problem`, e.g.
/// `calculate_area.base: expected integer, got string "10"`.
#[derive(Clone, Debug, PartialEq)]
pub struct Violation {
    /// The tool the call named.
    pub tool: String,
    /// Where in the arguments (`base`, `dims[2]`, `config.mode`); empty for the call itself.
    pub path: String,
    pub problem: Problem,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Problem {
    /// No tool of that name; `known` lists the names that exist.
    UnknownTool {
        known: Vec<String>,
    },
    MissingRequired,
    /// An argument the schema does not declare; `declared` lists the ones it does.
    UnknownArgument {
        declared: Vec<String>,
    },
    WrongType {
        expected: String,
        got: String,
    },
    NotInEnum {
        allowed: Vec<Value>,
        got: String,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}: ", self.tool)?;
        } else {
            write!(f, "{}.{}: ", self.tool, self.path)?;
        }
        match &self.problem {
            Problem::UnknownTool { known } => {
                write!(f, "unknown tool; the tools are: {}", known.join(", "))
            }
            Problem::MissingRequired => write!(f, "missing required argument"),
            Problem::UnknownArgument { declared } => {
                if declared.is_empty() {
                    write!(f, "unknown argument (the schema declares none)")
                } else {
                    write!(
                        f,
                        "unknown argument (expected one of: {})",
                        declared.join(", ")
                    )
                }
            }
            Problem::WrongType { expected, got } => write!(f, "expected {expected}, got {got}"),
            Problem::NotInEnum { allowed, got } => {
                let allowed: Vec<String> = allowed.iter().map(Value::to_string).collect();
                write!(f, "{got} is not one of [{}]", allowed.join(", "))
            }
        }
    }
}

/// Checks `call` against the tool of its name in `tools`: every violation found, or `Ok(())`.
pub fn validate_call(call: &ParsedCall, tools: &[ToolSpec]) -> Result<(), Vec<Violation>> {
    let Some(tool) = tools.iter().find(|t| t.name == call.name) else {
        return Err(vec![Violation {
            tool: call.name.clone(),
            path: String::new(),
            problem: Problem::UnknownTool {
                known: tools.iter().map(|t| t.name.clone()).collect(),
            },
        }]);
    };
    let mut v = Checker {
        tool: &tool.name,
        out: Vec::new(),
    };
    v.check_object(&call.arguments, &tool.parameters, "", true);
    if v.out.is_empty() { Ok(()) } else { Err(v.out) }
}

/// The JSON kinds a schema type names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    String,
    Integer,
    Number,
    Boolean,
    Array,
    Object,
    Any,
}

impl Kind {
    fn from_name(name: &str) -> Kind {
        match name.to_ascii_lowercase().as_str() {
            "string" | "str" | "char" | "character" => Kind::String,
            "integer" | "int" | "long" | "short" | "byte" => Kind::Integer,
            "float" | "number" | "double" => Kind::Number,
            "boolean" | "bool" => Kind::Boolean,
            "array" | "tuple" | "list" | "arraylist" | "set" => Kind::Array,
            "dict" | "object" | "hashmap" | "map" => Kind::Object,
            _ => Kind::Any,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::String => "string",
            Kind::Integer => "integer",
            Kind::Number => "float",
            Kind::Boolean => "boolean",
            Kind::Array => "array",
            Kind::Object => "dict",
            Kind::Any => "any",
        }
    }

    fn accepts(self, v: &Value) -> bool {
        match self {
            Kind::String => v.is_string(),
            Kind::Integer => {
                v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|x| x.fract() == 0.0)
            }
            Kind::Number => v.is_number(),
            Kind::Boolean => v.is_boolean(),
            Kind::Array => v.is_array(),
            Kind::Object => v.is_object(),
            Kind::Any => true,
        }
    }
}

/// The kinds a schema allows (several when `type` is a list); `[Any]` when it names none.
fn kinds(schema: &Value) -> Vec<Kind> {
    let ks: Vec<Kind> = match schema.get("type") {
        Some(Value::String(s)) => vec![Kind::from_name(s)],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(Kind::from_name)
            .collect(),
        _ => vec![],
    };
    if ks.is_empty() || ks.contains(&Kind::Any) {
        vec![Kind::Any]
    } else {
        ks
    }
}

/// Value equality with numbers compared by value (`5 == 5.0`), recursively.
pub fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => x == y,
            _ => x == y,
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, a)| y.get(k).is_some_and(|b| json_eq(a, b)))
        }
        _ => a == b,
    }
}

struct Checker<'a> {
    tool: &'a str,
    out: Vec<Violation>,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl Checker<'_> {
    fn push(&mut self, path: &str, problem: Problem) {
        self.out.push(Violation {
            tool: self.tool.to_string(),
            path: path.to_string(),
            problem,
        });
    }

    /// Checks an object's keys against `schema`'s `properties` / `required`. `top` marks the call's
    /// own arguments, where undeclared keys are always refused.
    fn check_object(&mut self, obj: &Map<String, Value>, schema: &Value, path: &str, top: bool) {
        let props = schema.get("properties").and_then(Value::as_object);
        let required: Vec<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        for r in &required {
            if obj.get(*r).is_none_or(Value::is_null) {
                self.push(&join(path, r), Problem::MissingRequired);
            }
        }
        let strict = top || props.is_some_and(|p| !p.is_empty());
        for (key, value) in obj {
            let sub = join(path, key);
            match props.and_then(|p| p.get(key)) {
                Some(s) => {
                    if value.is_null() {
                        // Optional: as if omitted; required: already reported as missing.
                        continue;
                    }
                    self.check_value(value, s, &sub);
                }
                None if strict => self.push(
                    &sub,
                    Problem::UnknownArgument {
                        declared: props
                            .map(|p| p.keys().cloned().collect())
                            .unwrap_or_default(),
                    },
                ),
                None => {}
            }
        }
    }

    fn check_value(&mut self, value: &Value, schema: &Value, path: &str) {
        let ks = kinds(schema);
        let Some(kind) = ks.iter().copied().find(|k| k.accepts(value)) else {
            let expected: Vec<&str> = ks.iter().map(|k| k.name()).collect();
            self.push(
                path,
                Problem::WrongType {
                    expected: expected.join(" or "),
                    got: describe_value(value),
                },
            );
            return;
        };
        let items = schema.get("items");
        if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
            let item_enum = items.is_some_and(|i| i.get("enum").is_some());
            match value {
                Value::Array(vs) if kind == Kind::Array && !item_enum => {
                    for (i, v) in vs.iter().enumerate() {
                        self.check_enum(v, allowed, &format!("{path}[{i}]"));
                    }
                }
                _ => self.check_enum(value, allowed, path),
            }
        }
        match (kind, value) {
            (Kind::Array, Value::Array(vs)) => {
                if let Some(items) = items {
                    for (i, v) in vs.iter().enumerate() {
                        self.check_value(v, items, &format!("{path}[{i}]"));
                    }
                }
            }
            (Kind::Object, Value::Object(m)) => self.check_object(m, schema, path, false),
            _ => {}
        }
    }

    fn check_enum(&mut self, value: &Value, allowed: &[Value], path: &str) {
        if !allowed.is_empty() && !allowed.iter().any(|a| json_eq(a, value)) {
            self.push(
                path,
                Problem::NotInEnum {
                    allowed: allowed.to_vec(),
                    got: describe_value(value),
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::parse_tool_calls;
    use serde_json::json;

    fn area_tool() -> ToolSpec {
        serde_json::from_value(json!({
            "name": "calculate_area",
            "description": "Area of a shape.",
            "parameters": {"type": "dict", "properties": {
                "base": {"type": "integer", "description": "The base."},
                "height": {"type": "float"},
                "unit": {"type": "string", "enum": ["cm", "m"]},
                "exact": {"type": "boolean"},
                "dims": {"type": "array", "items": {"type": "integer"}},
                "points": {"type": "array", "items": {"type": "tuple", "items": {"type": "float"}}},
                "tags": {"type": "array", "items": {"type": "string"}, "enum": ["a", "b"]},
                "opts": {"type": "dict", "properties": {"mode": {"type": "string"}}, "required": ["mode"]},
                "blob": {"type": "dict"},
                "anything": {"type": "any"},
                "java": {"type": "String"}
            }, "required": ["base", "height"]}
        }))
        .unwrap()
    }

    fn call(args: Value) -> ParsedCall {
        ParsedCall {
            name: "calculate_area".into(),
            arguments: args.as_object().unwrap().clone(),
        }
    }

    fn errors(args: Value) -> Vec<String> {
        match validate_call(&call(args), &[area_tool()]) {
            Ok(()) => vec![],
            Err(v) => v.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn a_good_call_passes() {
        assert_eq!(
            errors(json!({"base": 10, "height": 5})),
            Vec::<String>::new()
        );
        assert_eq!(
            errors(json!({
                "base": 10, "height": 5.5, "unit": "cm", "exact": true, "dims": [1, 2],
                "points": [[1, 2.5], [3.0, 4]], "tags": ["a", "b", "a"], "opts": {"mode": "x"},
                "blob": {"free": ["form"]}, "anything": [null, {}], "java": "s"
            })),
            Vec::<String>::new()
        );
        // 10.0 is an integer (as in JSON Schema); an integer is a valid float; an optional argument
        // may be null.
        assert_eq!(
            errors(json!({"base": 10.0, "height": 5})),
            Vec::<String>::new()
        );
        assert_eq!(
            errors(json!({"base": 1, "height": 2, "unit": null})),
            Vec::<String>::new()
        );
    }

    #[test]
    fn wrong_types_are_reported_with_path_and_value() {
        assert_eq!(
            errors(json!({"base": "10", "height": 5})),
            ["calculate_area.base: expected integer, got string \"10\""]
        );
        assert_eq!(
            errors(json!({"base": 10.5, "height": "high", "exact": "yes"})),
            [
                "calculate_area.base: expected integer, got float 10.5",
                "calculate_area.exact: expected boolean, got string \"yes\"",
                "calculate_area.height: expected float, got string \"high\"",
            ]
        );
        assert_eq!(
            errors(
                json!({"base": 1, "height": 1, "dims": [1, "2", 3.5], "points": [[1, "x"]], "opts": "fast"})
            ),
            [
                "calculate_area.dims[1]: expected integer, got string \"2\"",
                "calculate_area.dims[2]: expected integer, got float 3.5",
                "calculate_area.opts: expected dict, got string \"fast\"",
                "calculate_area.points[0][1]: expected float, got string \"x\"",
            ]
        );
        assert_eq!(
            errors(json!({"base": 1, "height": 1, "dims": 3})),
            ["calculate_area.dims: expected array, got integer 3"]
        );
    }

    #[test]
    fn missing_extra_and_enum() {
        assert_eq!(
            errors(json!({"height": 5, "color": "red"})),
            [
                "calculate_area.base: missing required argument",
                "calculate_area.color: unknown argument (expected one of: anything, base, blob, dims, exact, height, java, opts, points, tags, unit)",
            ]
        );
        assert_eq!(
            errors(json!({"base": null, "height": 5})),
            ["calculate_area.base: missing required argument"]
        );
        assert_eq!(
            errors(json!({"base": 1, "height": 5, "unit": "inch", "tags": ["a", "c"]})),
            [
                "calculate_area.tags[1]: string \"c\" is not one of [\"a\", \"b\"]",
                "calculate_area.unit: string \"inch\" is not one of [\"cm\", \"m\"]",
            ]
        );
        assert_eq!(
            errors(json!({"base": 1, "height": 5, "opts": {"speed": 2}})),
            [
                "calculate_area.opts.mode: missing required argument",
                "calculate_area.opts.speed: unknown argument (expected one of: mode)",
            ]
        );
    }

    #[test]
    fn unknown_tool_lists_the_known_ones() {
        let calls = parse_tool_calls(
            r#"<|tool_call|>{"name":"calculate_volume","arguments":{"base":1}}<|/tool_call|>"#,
        )
        .unwrap();
        let other = ToolSpec {
            name: "other".into(),
            description: String::new(),
            parameters: json!({"type": "dict", "properties": {}}),
        };
        let err = validate_call(&calls[0], &[area_tool(), other]).unwrap_err();
        assert_eq!(
            err[0].to_string(),
            "calculate_volume: unknown tool; the tools are: calculate_area, other"
        );
        assert_eq!(err.len(), 1);
    }

    #[test]
    fn numbers_compare_by_value() {
        assert!(json_eq(&json!(5), &json!(5.0)));
        assert!(json_eq(&json!([1, {"a": 2}]), &json!([1.0, {"a": 2.0}])));
        assert!(!json_eq(&json!(5), &json!("5")));
        let t: ToolSpec = serde_json::from_value(json!({"name": "f", "parameters": {
            "type": "dict", "properties": {"n": {"type": "integer", "enum": [1, 2]}}}}))
        .unwrap();
        let c = ParsedCall {
            name: "f".into(),
            arguments: json!({"n": 2}).as_object().unwrap().clone(),
        };
        assert_eq!(validate_call(&c, &[t]), Ok(()));
    }
}
