//! The exact-match scorer of the computed kinds.

/// Scores a generated assistant turn against an example's reference: `None` when the example is not
/// exact-scored (`reference.exact` is not `true`), else whether the answers are equal after
/// normalisation (trim, a trailing `<|end|>`/`<|endoftext|>` dropped, case folded, whitespace
/// collapsed, a trailing period ignored).
pub fn exact_match(reference: &serde_json::Value, generated: &str) -> Option<bool> {
    if reference.get("exact").and_then(|v| v.as_bool()) != Some(true) {
        return None;
    }
    let answer = reference.get("answer")?.as_str()?;
    Some(normalize_answer(answer) == normalize_answer(generated))
}

fn normalize_answer(s: &str) -> String {
    let mut s = s.trim();
    loop {
        let before = s;
        for tok in ["<|endoftext|>", "<|end|>"] {
            if let Some(rest) = s.strip_suffix(tok) {
                s = rest.trim_end();
            }
        }
        if s == before {
            break;
        }
    }
    let mut t = s.split_whitespace().collect::<Vec<_>>().join(" ");
    t = t.to_lowercase();
    while let Some(rest) = t.strip_suffix('.') {
        t = rest.trim_end().to_string();
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn exact_match_normalises() {
        let r = json!({"answer": "a p p l e", "exact": true});
        assert_eq!(exact_match(&r, " A  P p l e.<|end|>"), Some(true));
        assert_eq!(exact_match(&r, "a p p l e<|end|><|endoftext|>"), Some(true));
        assert_eq!(exact_match(&r, "apple"), Some(false));
        assert_eq!(
            exact_match(&json!({"answer": "x", "exact": false}), "x"),
            None
        );
        assert_eq!(exact_match(&serde_json::Value::Null, "x"), None);
        let r = json!({"answer": "1, 2, 3", "exact": true});
        assert_eq!(exact_match(&r, "1, 2, 3."), Some(true));
        assert_eq!(exact_match(&r, "1, 3, 2"), Some(false));
    }
}
