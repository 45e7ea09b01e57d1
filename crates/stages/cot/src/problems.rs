//! The cot data builder: GSM-style problems (JSONL `{template, question, answer, final_answer}`, the
//! answer being worked steps ending in `#### <answer>`) as conversations whose assistant turn reasons
//! inside the think tags and then states `The answer is X.`; and the final-answer extraction and
//! comparison the cot eval scores with.

use serde_json::json;
use std::path::{Path, PathBuf};
use tardbot_finetune::ChatExample;
use tardbot_tokens::chat::{Conversation, Message, Role};

/// The sentence the assistant ends with: `The answer is {final}.`
pub const ANSWER_PREFIX: &str = "The answer is ";

#[derive(Debug, thiserror::Error)]
pub enum CotDataError {
    #[error("{}: {source} (check `data.cot.problems` in pipeline.toml)", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}: {message}", path.display())]
    Row {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error(
        "{}: no problems (the file is empty; expected JSONL rows {{\"question\", \"answer\" ending in `#### x`, \"final_answer\"}})",
        path.display()
    )]
    Empty { path: PathBuf },
}

/// Builds one example per row (the first `limit` rows; 0 = all): user = the question; assistant =
/// thinking (the worked steps, without the `#### x` line and any `<<calc>>` annotations) and content
/// `The answer is {final_answer}.`; kind `gsm`; id `gsm/<line>/<template>` (1-based line; `gsm/<line>`
/// without a template); reference `{"final_answer": …}`. `final_answer` falls back to the text after
/// `####`; when both are given they must agree.
pub fn build_examples(path: &Path, limit: usize) -> Result<Vec<ChatExample>, CotDataError> {
    let text = std::fs::read_to_string(path).map_err(|source| CotDataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if limit > 0 && out.len() >= limit {
            break;
        }
        if line.trim().is_empty() {
            continue;
        }
        out.push(row_example(path, i + 1, line)?);
    }
    if out.is_empty() {
        return Err(CotDataError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(out)
}

fn row_example(path: &Path, line: usize, row: &str) -> Result<ChatExample, CotDataError> {
    let err = |message: String| CotDataError::Row {
        path: path.to_path_buf(),
        line,
        message,
    };
    let v: serde_json::Value = serde_json::from_str(row).map_err(|e| {
        err(format!(
            "not valid JSON ({e}); each line must be an object {{\"question\", \"answer\", \"final_answer\"}}"
        ))
    })?;
    let text_field = |name: &str| -> Result<Option<String>, CotDataError> {
        match v.get(name) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(serde_json::Value::Number(n)) if name == "final_answer" => Ok(Some(n.to_string())),
            Some(other) => Err(err(format!(
                "field `{name}` must be a string, found {other}"
            ))),
        }
    };
    let question = text_field("question")?
        .filter(|q| !q.trim().is_empty())
        .ok_or_else(|| err("missing or empty field `question` (the problem text)".to_string()))?;
    let answer = text_field("answer")?.ok_or_else(|| {
        err(
            "missing field `answer` (the worked steps ending in a line `#### <answer>`)"
                .to_string(),
        )
    })?;
    let Some(hash) = answer.rfind("####") else {
        return Err(err(
            "field `answer` has no `#### <answer>` line; end the worked steps with `#### <final answer>`"
                .to_string(),
        ));
    };
    let steps = strip_calculator_annotations(answer[..hash].trim());
    let after = answer[hash + 4..].trim().to_string();
    if steps.trim().is_empty() {
        return Err(err(
            "field `answer` has no worked steps before its `####` line".to_string(),
        ));
    }
    let final_answer = match text_field("final_answer")?.map(|s| s.trim().to_string()) {
        Some(f) if !f.is_empty() => {
            if !after.is_empty() && !answers_match(&f, &after) {
                return Err(err(format!(
                    "`final_answer` {f:?} disagrees with the `#### {after}` line of `answer`; fix one of them"
                )));
            }
            f
        }
        _ if !after.is_empty() => after,
        _ => {
            return Err(err(
                "no final answer: `final_answer` is missing and the `####` line is empty"
                    .to_string(),
            ));
        }
    };
    let template = match v.get("template") {
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    };
    let id = match template {
        Some(t) => format!("gsm/{line}/{t}"),
        None => format!("gsm/{line}"),
    };
    let mut assistant = Message::new(Role::Assistant, format!("{ANSWER_PREFIX}{final_answer}."));
    assistant.thinking = Some(steps);
    Ok(ChatExample {
        id,
        kind: "gsm".to_string(),
        conversation: Conversation {
            messages: vec![Message::new(Role::User, question.trim()), assistant],
        },
        reference: json!({"final_answer": final_answer}),
    })
}

/// GSM8K's `<<48/2=24>>` calculator annotations are removed from the reasoning.
fn strip_calculator_annotations(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(open) = rest.find("<<") {
        let Some(close) = rest[open..].find(">>") else {
            break;
        };
        out.push_str(&rest[..open]);
        rest = &rest[open + close + 2..];
    }
    out.push_str(rest);
    out
}

/// The final answer of a generated assistant turn: the text after `<|/think|>` when the turn has
/// one (`None` if nothing follows it), else the whole text; the number in `The answer is X` (the last
/// such phrase), else the last number; currency symbols, thousands separators and units dropped
/// (`€2,812.50` → `2812.50`). When `The answer is` is followed by no number, its phrase (to the end
/// of the sentence) is returned.
pub fn extract_answer(generated: &str) -> Option<String> {
    let mut text = generated;
    if let Some(p) = text.rfind("<|/think|>") {
        text = &text[p + "<|/think|>".len()..];
    }
    let text = text.replace("<|endoftext|>", " ").replace("<|end|>", " ");
    let lower = text.to_ascii_lowercase();
    if let Some(p) = lower.rfind(&ANSWER_PREFIX.trim_end().to_ascii_lowercase()) {
        let after = &text[p + ANSWER_PREFIX.trim_end().len()..];
        let after = after.trim_start_matches([' ', ':', '\t']);
        // the phrase up to the end of its sentence or line
        let mut end = after.find('\n').unwrap_or(after.len());
        if let Some(q) = sentence_end(&after[..end]) {
            end = q;
        }
        let phrase = &after[..end];
        if let Some(n) = numbers(phrase).into_iter().next() {
            return Some(n);
        }
        let phrase = phrase.trim().trim_end_matches('.').trim();
        if !phrase.is_empty() {
            return Some(phrase.to_string());
        }
    }
    numbers(&text).pop()
}

/// The first `.` followed by whitespace or the end that is not a decimal point.
fn sentence_end(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    (0..b.len()).find(|&i| {
        matches!(b[i], b'!' | b'?')
            || (b[i] == b'.' && b.get(i + 1).is_none_or(|c| c.is_ascii_whitespace()))
    })
}

/// Every number in `s`, in order, normalised: sign kept, thousands commas dropped (`2,812.50` →
/// `2812.50`), no trailing period.
fn numbers(s: &str) -> Vec<String> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        let mut n = String::new();
        // a minus sign directly before (and not part of a word like "5-3" or "x-2")
        if start > 0 && b[start - 1] == b'-' && (start < 2 || !b[start - 2].is_ascii_alphanumeric())
        {
            n.push('-');
        }
        while i < b.len() {
            let c = b[i];
            if c.is_ascii_digit() {
                n.push(c as char);
                i += 1;
            } else if (c == b',' || c == b'.')
                && b.get(i + 1).is_some_and(u8::is_ascii_digit)
                && !(c == b'.' && n.contains('.'))
            {
                // a comma between digits is a thousands separator; a period a decimal point
                if c == b'.' {
                    n.push('.');
                }
                i += 1;
            } else {
                break;
            }
        }
        out.push(n);
    }
    out
}

/// Parses an answer as a number: currency symbols, thousands separators, a trailing period and
/// units (`21 oz`, `50%`) ignored. `None` when it does not start with a number.
fn parse_number(s: &str) -> Option<f64> {
    let t = s
        .trim()
        .trim_start_matches(['$', '€', '£', '¥', '₹'])
        .trim_start();
    let t = t.trim_end_matches('.');
    let (sign, t) = match t.strip_prefix('-') {
        Some(r) => (-1.0, r.trim_start_matches(['$', '€', '£', '¥', '₹'])),
        None => (1.0, t),
    };
    let end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ','))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(end);
    if num.is_empty() || !num.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let unit = unit.trim().trim_end_matches('.');
    if !unit
        .chars()
        .all(|c| c.is_alphabetic() || c == '%' || c == ' ' || c == '/')
    {
        return None;
    }
    let num = num.replace(',', "");
    num.parse::<f64>().ok().map(|x| sign * x)
}

fn normalize_text(s: &str) -> String {
    let t = s
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase();
    t.trim_end_matches('.').trim().to_string()
}

/// Whether a generated answer equals the expected one: numerically (relative tolerance 1e-6,
/// absolute below 1) when both parse as numbers (`2812.5` = `2,812.50` = `€2812.5`; `181` =
/// `181.0`), else as text (case, whitespace and a trailing period ignored).
pub fn answers_match(expected: &str, got: &str) -> bool {
    match (parse_number(expected), parse_number(got)) {
        (Some(a), Some(b)) => (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1.0),
        _ => normalize_text(expected) == normalize_text(got),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../data/sample/gsm_sample.jsonl")
    }

    #[test]
    fn every_sample_row_converts_and_its_own_answers_match() {
        let path = sample();
        let text = std::fs::read_to_string(&path).unwrap();
        let rows: Vec<serde_json::Value> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let ex = build_examples(&path, 0).unwrap();
        assert_eq!(ex.len(), rows.len());
        let mut ids = std::collections::HashSet::new();
        for (e, row) in ex.iter().zip(&rows) {
            assert!(ids.insert(e.id.clone()), "duplicate id {}", e.id);
            assert_eq!(e.kind, "gsm");
            let expected = e.reference["final_answer"].as_str().unwrap();
            assert_eq!(expected, row["final_answer"].as_str().unwrap());
            let a = &e.conversation.messages[1];
            let thinking = a.thinking.as_deref().unwrap();
            assert!(!thinking.contains("####"), "{}", e.id);
            assert_eq!(a.content, format!("The answer is {expected}."));
            // the reference turn as the model would generate it
            let rendered = format!("<|think|>{thinking}<|/think|>{}<|end|>", a.content);
            let got = extract_answer(&rendered).unwrap();
            assert!(answers_match(expected, &got), "{}: {got}", e.id);
            assert_eq!(got, expected);
            // the dataset's own worked answer: its last number is the `####` answer
            let got = extract_answer(row["answer"].as_str().unwrap()).unwrap();
            assert!(
                answers_match(expected, &got),
                "{}: {got} vs {expected}",
                e.id
            );
            tardbot_tokens::chat::render_chat_text(&e.conversation, false).unwrap();
        }
        let first = &ex[0];
        assert_eq!(first.id, "gsm/1/27");
        assert_eq!(first.reference, json!({"final_answer": "2812.5"}));
        assert_eq!(build_examples(&path, 5).unwrap().len(), 5);
        assert_eq!(build_examples(&path, 5).unwrap()[..], ex[..5]);
    }

    #[test]
    fn shared_corpus_converts() {
        let p = Path::new("/work/shared/corpora/cot/gsm_symbolic.jsonl");
        if p.exists() {
            assert!(build_examples(p, 0).unwrap().len() > 5000);
        }
    }

    #[test]
    fn extracts_final_answers() {
        assert_eq!(
            extract_answer("<|think|>5*3=15 then 15+2=17<|/think|>The answer is 17.<|end|>")
                .as_deref(),
            Some("17")
        );
        assert_eq!(
            extract_answer("The answer is €2,812.50 per week.").as_deref(),
            Some("2812.50")
        );
        assert_eq!(
            extract_answer("so it costs $1,200 in total").as_deref(),
            Some("1200")
        );
        assert_eq!(extract_answer("The answer is -4.").as_deref(), Some("-4"));
        assert_eq!(extract_answer("5-3 = 2 apples").as_deref(), Some("2"));
        assert_eq!(
            extract_answer("The answer is 3. Then 99 more").as_deref(),
            Some("3")
        );
        assert_eq!(
            extract_answer("The answer is 0.5 kg").as_deref(),
            Some("0.5")
        );
        assert_eq!(
            extract_answer("the answer is: Tuesday.").as_deref(),
            Some("Tuesday")
        );
        // think closed but nothing after it: no answer
        assert_eq!(extract_answer("<|think|>7 + 1 = 8<|/think|><|end|>"), None);
        // truncated thinking (no close tag): the last number
        assert_eq!(
            extract_answer("<|think|>7 + 1 = 8 and 8 * 2 = 16").as_deref(),
            Some("16")
        );
        assert_eq!(extract_answer("no digits here"), None);
    }

    #[test]
    fn compares_answers() {
        assert!(answers_match("2812.5", "2,812.50"));
        assert!(answers_match("2812.5", "€2812.5"));
        assert!(answers_match("181", "181.0"));
        assert!(answers_match("21", "21 oz"));
        assert!(answers_match("-3", "-3.0"));
        assert!(answers_match("1000000", "1000000.0000001"));
        assert!(!answers_match("2812.5", "2812"));
        assert!(!answers_match("0.5", "0.50001"));
        assert!(answers_match("Tuesday", " tuesday."));
        assert!(!answers_match("Tuesday", "Monday"));
        assert!(!answers_match("12", "12b3"));
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.jsonl");
        let good = r##"{"question": "1+1?", "answer": "1+1=2\n#### 2", "final_answer": "2"}"##;
        let cases = [
            (r#"{"answer": "x\n#### 2"}"#, "`question`"),
            (r#"{"question": "q?", "answer": "no marker"}"#, "####"),
            (r#"{"question": "q?"}"#, "`answer`"),
            (
                r##"{"question": "q?", "answer": "s\n#### 3", "final_answer": "4"}"##,
                "disagrees",
            ),
            (
                r#"{"question": 3, "answer": "s"}"#,
                "`question` must be a string",
            ),
            ("not json", "not valid JSON"),
        ];
        for (bad, want) in cases {
            std::fs::write(&p, format!("{good}\n\n{bad}\n")).unwrap();
            let msg = build_examples(&p, 0).unwrap_err().to_string();
            assert!(msg.contains("p.jsonl:3:") && msg.contains(want), "{msg}");
        }
        std::fs::write(&p, format!("{good}\n")).unwrap();
        let e = build_examples(&p, 0).unwrap();
        assert_eq!(e[0].id, "gsm/1");
        assert_eq!(
            e[0].conversation.messages[1].thinking.as_deref(),
            Some("1+1=2")
        );
        std::fs::write(&p, "\n").unwrap();
        assert!(matches!(
            build_examples(&p, 0),
            Err(CotDataError::Empty { .. })
        ));
        let msg = build_examples(&dir.path().join("nope.jsonl"), 0)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("nope.jsonl") && msg.contains("data.cot.problems"),
            "{msg}"
        );
    }

    #[test]
    fn strips_calculator_annotations() {
        assert_eq!(
            strip_calculator_annotations("48/2 = <<48/2=24>>24 clips"),
            "48/2 = 24 clips"
        );
    }
}
