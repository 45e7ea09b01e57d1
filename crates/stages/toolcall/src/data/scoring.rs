//! Scoring a generated assistant turn against an example's reference ([`score`], [`aggregate`]): see
//! [`CallScore`].

use super::ground_truth::{ground_truth_entry, is_nested_form, is_optional_marker};
use crate::call::parse_tool_calls;
use crate::schema::{ToolSpec, json_eq, validate_call};
use serde::Serialize;
use serde_json::{Map, Value};
use tardbot_finetune::ChatExample;
use tardbot_tokens::special_tokens::Special;

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
    use crate::test_util::{by_id, sample, target_text};
    use serde_json::json;
    use std::collections::HashMap;
    use tardbot_tokens::chat::ToolCall;

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
}
