//! The glossary kinds (`glossary`, `glossary_reverse`) over the Jargon File: its entries read (JSONL
//! rows or the raw file) and their definitions cleaned and cut to the first sentence(s).

use super::{SftDataError, example, fill, kind_seed, pick, read_text};
use std::collections::HashSet;
use std::path::Path;
use tardbot_core::rng::{SplitMix64, permutation};
use tardbot_finetune::ChatExample;

/// One glossary entry: the term and the cleaned first sentence(s) of its definition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GlossaryEntry {
    pub term: String,
    pub definition: String,
    /// 1-based line of the entry in its file (JSONL row or `:term:` header line).
    pub line: usize,
}

/// Reads glossary entries from JSONL `{title, text}` (one Jargon File entry per line, as in
/// data/sample/jargon.jsonl) or the raw Jargon File (entries headed `:term: /pron/, n.`). The format
/// is taken from the extension (`.jsonl`/`.json` vs anything else), or from the first non-space byte
/// (`{`) when there is none. Entries that are only a cross-reference ("See {foo}.") are skipped;
/// a repeated term keeps its first entry.
pub fn read_glossary(path: &Path) -> Result<Vec<GlossaryEntry>, SftDataError> {
    let text = read_text(path)?;
    let jsonl = match path.extension().and_then(|e| e.to_str()) {
        Some("jsonl") | Some("json") | Some("ndjson") => true,
        Some(_) => false,
        None => text.trim_start().starts_with('{'),
    };
    let raw = if jsonl {
        glossary_jsonl(path, &text)?
    } else {
        glossary_raw(&text)
    };
    let mut seen = HashSet::new();
    let entries: Vec<GlossaryEntry> = raw
        .into_iter()
        .filter(|e| seen.insert(e.term.clone()))
        .collect();
    if entries.is_empty() {
        return Err(SftDataError::Empty {
            path: path.to_path_buf(),
            message: if jsonl {
                "no usable glossary entries (each line needs {\"title\": term, \"text\": \":term: …\\n\\ndefinition\"})".to_string()
            } else {
                "no `:term:` entries found; give the raw Jargon File or JSONL rows {\"title\", \"text\"} (name it .jsonl)".to_string()
            },
        });
    }
    Ok(entries)
}

fn glossary_jsonl(path: &Path, text: &str) -> Result<Vec<GlossaryEntry>, SftDataError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let err = |message: String| SftDataError::Parse {
            path: path.to_path_buf(),
            line: i + 1,
            message,
        };
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| {
            err(format!(
                "not valid JSON ({e}); each line must be an object {{\"title\": …, \"text\": …}}"
            ))
        })?;
        let field = |name: &str| -> Result<String, SftDataError> {
            v.get(name)
                .and_then(|x| x.as_str())
                .map(str::to_string)
                .ok_or_else(|| {
                    err(format!(
                        "missing string field `{name}` (each line needs {{\"title\": term, \"text\": definition}})"
                    ))
                })
        };
        let term = clean_inline(&field("title")?);
        let body = field("text")?;
        let mut lines: Vec<&str> = body.lines().collect();
        if lines
            .first()
            .is_some_and(|l| parse_header(l.trim_start()).is_some())
        {
            lines.remove(0);
        }
        if term.is_empty() {
            continue;
        }
        if let Some(definition) = clean_definition(&lines) {
            out.push(GlossaryEntry {
                term,
                definition,
                line: i + 1,
            });
        }
    }
    Ok(out)
}

fn glossary_raw(text: &str) -> Vec<GlossaryEntry> {
    let lines: Vec<&str> = text.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start_matches(' ').len();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i];
        let ind = indent(l);
        let term = if ind <= 3 {
            parse_header(&l[ind..])
        } else {
            None
        };
        let Some(term) = term else {
            i += 1;
            continue;
        };
        let start = i;
        let mut body = Vec::new();
        i += 1;
        while i < lines.len() {
            let b = lines[i];
            if !b.trim().is_empty() {
                let bi = indent(b);
                if bi < ind || (bi == ind && parse_header(&b[bi..]).is_some()) {
                    break;
                }
            }
            body.push(b);
            i += 1;
        }
        let term = clean_inline(&term);
        if term.is_empty() {
            continue;
        }
        if let Some(definition) = clean_definition(&body) {
            out.push(GlossaryEntry {
                term,
                definition,
                line: start + 1,
            });
        }
    }
    out
}

/// `:term: /pron/, n.` → `term` (the text between the first colon and the next colon that ends the
/// line or is followed by a space).
fn parse_header(line: &str) -> Option<String> {
    let rest = line.strip_prefix(':')?;
    let mut from = 0;
    while let Some(p) = rest[from..].find(':') {
        let end = from + p;
        let after = &rest[end + 1..];
        if end > 0 && (after.is_empty() || after.starts_with(' ')) {
            return Some(rest[..end].to_string());
        }
        from = end + 1;
    }
    None
}

/// `{crash}` → `crash`; whitespace collapsed.
fn clean_inline(s: &str) -> String {
    s.replace(['{', '}'], "")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

const POS_TAGS: [&str; 14] = [
    "n.", "v.", "vt.", "vi.", "adj.", "adv.", "interj.", "excl.", "prep.", "pron.", "conj.",
    "obs.", "pl.", "imp.",
];

/// The first definition paragraph of an entry body, cleaned (sense numbers, parts of speech and
/// `[source]` tags dropped, `{links}` unwrapped), cut to its first sentence(s). `None` for a
/// cross-reference-only entry.
fn clean_definition(body: &[&str]) -> Option<String> {
    let mut paragraphs = Vec::new();
    let mut cur = String::new();
    for l in body {
        let t = l.trim();
        if t.is_empty() {
            if !cur.is_empty() {
                paragraphs.push(std::mem::take(&mut cur));
            }
        } else {
            if !cur.is_empty() {
                cur.push(' ');
            }
            cur.push_str(t);
        }
    }
    if !cur.is_empty() {
        paragraphs.push(cur);
    }
    for p in paragraphs {
        let p = clean_inline(&p);
        let mut s = p.as_str();
        loop {
            let before = s;
            s = s.trim_start();
            // "1. " sense numbers
            let digits = s.len() - s.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            if digits > 0 && s[digits..].starts_with(". ") {
                s = &s[digits + 2..];
            }
            // "n. ", "vt. ", "n.,"
            for tag in POS_TAGS {
                if let Some(rest) = s.strip_prefix(tag)
                    && (rest.is_empty() || rest.starts_with([' ', ',']))
                {
                    s = rest.trim_start_matches(',');
                }
            }
            // "[Usenet] " source tags
            if s.starts_with('[')
                && let Some(e) = s.find(']')
            {
                s = &s[e + 1..];
            }
            // "(alt.: …)", "(also …)", "(of a program)" variant and scope notes
            if s.starts_with('(')
                && let Some(e) = matching_paren(s)
            {
                s = s[e + 1..].trim_start_matches(['.', ',', ';']);
            }
            // "/pron/, " pronunciations
            if let Some(rest) = s.strip_prefix('/')
                && let Some(e) = rest.find('/')
            {
                s = &rest[e + 1..];
            }
            s = s.trim_start_matches(['.', ',', ';', ' ']);
            if s == before {
                break;
            }
        }
        let s = s.trim();
        // empty, or only a variant note ("Also MEGO factor.")
        if s.is_empty()
            || (s.starts_with("Also ") && s.chars().count() < 40)
            || s.starts_with("alt.:")
            || s.starts_with("var.:")
        {
            continue;
        }
        let lower = s.to_lowercase();
        if lower.starts_with("see ")
            || lower.starts_with("syn.")
            || lower.starts_with("syn ")
            || lower.starts_with("= ")
            || lower.starts_with("var. of")
            || lower.starts_with("(see ")
        {
            return None;
        }
        let d = first_sentences(s, 40, 220);
        return (d.chars().count() >= 12).then_some(d);
    }
    None
}

/// The byte index of the `)` closing the `(` that starts `s`.
fn matching_paren(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

const ABBREVIATIONS: [&str; 12] = [
    "e.g", "i.e", "etc", "abbrev", "vs", "cf", "esp", "approx", "st", "mr", "dr", "prob",
];

/// Sentences from the start of `s` until at least `min` characters, cut at a word boundary (with
/// `…`) when the first sentence alone is longer than `max` characters.
fn first_sentences(s: &str, min: usize, max: usize) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut end = chars.len();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '.' | '!' | '?') {
            let mut j = i + 1;
            while j < chars.len() && matches!(chars[j], '’' | '”' | '"' | '\'' | ')') {
                j += 1;
            }
            let at_end = j == chars.len();
            let boundary = at_end
                || (chars[j].is_whitespace()
                    && chars
                        .get(j + 1)
                        .is_some_and(|n| n.is_uppercase() || matches!(n, '‘' | '“' | '"')));
            if boundary && c == '.' {
                // the word before the period: an abbreviation or an initial is no sentence end
                let mut k = i;
                while k > 0 && (chars[k - 1].is_alphanumeric() || chars[k - 1] == '.') {
                    k -= 1;
                }
                let word: String = chars[k..i].iter().collect::<String>().to_lowercase();
                let initial = word.chars().count() == 1 && chars[k].is_uppercase();
                if !at_end && (ABBREVIATIONS.contains(&word.as_str()) || initial) {
                    i += 1;
                    continue;
                }
            }
            if boundary && j >= min.min(chars.len()) {
                end = j;
                break;
            }
        }
        i += 1;
    }
    if end > max {
        let cut: String = chars[..max].iter().collect();
        let cut = match cut.rfind(' ') {
            Some(p) => &cut[..p],
            None => cut.as_str(),
        };
        let cut = cut.trim_end_matches([',', ';', ':', ' ', '(', '—', '-']);
        return format!("{cut}…");
    }
    chars[..end].iter().collect::<String>().trim().to_string()
}

/// Replaces whole-word occurrences of `term` (ASCII case-insensitive) with `___`.
fn mask_term(text: &str, term: &str) -> String {
    let t: Vec<char> = term.chars().collect();
    let s: Vec<char> = text.chars().collect();
    if t.is_empty() {
        return text.to_string();
    }
    let mut out = String::new();
    let mut i = 0;
    while i < s.len() {
        let matches = i + t.len() <= s.len()
            && s[i..i + t.len()]
                .iter()
                .zip(&t)
                .all(|(a, b)| a.eq_ignore_ascii_case(b))
            && (i == 0 || !s[i - 1].is_alphanumeric())
            && s.get(i + t.len()).is_none_or(|c| !c.is_alphanumeric());
        if matches {
            out.push_str("___");
            i += t.len();
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

pub(super) fn glossary_kinds(
    entries: &[GlossaryEntry],
    per_kind: usize,
    seed: u64,
    out: &mut Vec<ChatExample>,
) {
    const FORWARD: [&str; 4] = [
        "What does \"{term}\" mean in hacker jargon?",
        "Define the jargon term \"{term}\".",
        "In the Jargon File, what is meant by \"{term}\"?",
        "Explain the hacker slang \"{term}\" in a sentence.",
    ];
    const REVERSE: [&str; 3] = [
        "Which jargon term means: {definition}",
        "What hacker slang term is defined as follows? {definition}",
        "Name the Jargon File term for this definition: {definition}",
    ];
    for (kind, templates) in [
        ("glossary", &FORWARD[..]),
        ("glossary_reverse", &REVERSE[..]),
    ] {
        let ks = kind_seed(seed, kind);
        let mut rng = SplitMix64::new(ks);
        for &i in permutation(entries.len(), ks).iter().take(per_kind) {
            let e = &entries[i as usize];
            let template = pick(&mut rng, templates);
            let (prompt, answer) = if kind == "glossary" {
                (fill(template, &[("term", &e.term)]), e.definition.clone())
            } else {
                let masked = mask_term(&e.definition, &e.term);
                (fill(template, &[("definition", &masked)]), e.term.clone())
            };
            out.push(example(
                format!("{kind}/{}", e.term),
                kind,
                prompt,
                answer,
                false,
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::sample;

    #[test]
    fn glossary_definitions_are_cleaned() {
        let entries = read_glossary(&sample("jargon.jsonl")).unwrap();
        let abend = entries.iter().find(|e| e.term == "ABEND").unwrap();
        assert!(
            abend
                .definition
                .starts_with("Abnormal termination (of software); crash; lossage."),
            "{}",
            abend.definition
        );
        for e in &entries {
            assert!(!e.definition.contains(['{', '}']), "{e:?}");
            assert!(!e.definition.starts_with(['[', ':', '/']), "{e:?}");
            assert!(e.definition.chars().count() <= 222, "{e:?}");
        }
        let tm = entries.iter().find(|e| e.term == "(TM)").unwrap();
        assert!(tm.definition.starts_with("ASCII rendition"), "{tm:?}");
    }

    #[test]
    fn raw_jargon_file_and_jsonl_agree() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("jargon.txt");
        std::fs::write(
            &raw,
            "   Glossary\n\n  A\n\n   ABEND\n\n   :ABEND: /a´bend/, n.\n\n   [ABnormal END]\n\n   \
             1. Abnormal termination (of software); {crash}; {lossage}. Derives from\n   an error \
             message on the IBM 360.\n\n   :abbrev: /@·breev´/, n.\n\n   Common abbreviation for \
             ‘abbreviation’.\n\n  B\n\n   :back door: n.\n\n   See {trap door}.\n\n   :bogus: adj.\n\n   \
             1. Non-functional. Unworkable.\n\n   :borken: adj.\n\n   (also borked) Common deliberate typo for \
             ‘broken’.\n\n   :drugged: adj.\n\n   (also on drugs)\n\n   Conspicuously stupid.\n\nAppendix A. Folklore\n\nlots of text\n",
        )
        .unwrap();
        let e = read_glossary(&raw).unwrap();
        let terms: Vec<&str> = e.iter().map(|e| e.term.as_str()).collect();
        assert_eq!(terms, ["ABEND", "abbrev", "bogus", "borken", "drugged"]);
        assert_eq!(e[3].definition, "Common deliberate typo for ‘broken’.");
        assert_eq!(e[4].definition, "Conspicuously stupid.");
        assert_eq!(
            e[0].definition,
            "Abnormal termination (of software); crash; lossage."
        );
        assert_eq!(e[0].line, 7);
        assert_eq!(e[2].definition, "Non-functional. Unworkable.");
        // the same entry as a JSONL row
        let jsonl = dir.path().join("g.jsonl");
        std::fs::write(
            &jsonl,
            "{\"title\": \"ABEND\", \"text\": \":ABEND: /a´bend/, n.\\n\\n[ABnormal END]\\n\\n1. Abnormal termination (of software); {crash}; {lossage}. Derives from\\nan error message on the IBM 360.\"}\n",
        )
        .unwrap();
        assert_eq!(
            read_glossary(&jsonl).unwrap()[0].definition,
            e[0].definition
        );
    }

    #[test]
    fn shared_raw_jargon_file_parses() {
        let p = Path::new("/work/shared/corpora/glossary/jargon.txt");
        if !p.exists() {
            return;
        }
        let e = read_glossary(p).unwrap();
        assert!(e.len() > 1800, "{}", e.len());
        assert!(e.iter().any(|e| e.term == "zorkmid"));
        let last = e.iter().find(|e| e.term == "zorkmid").unwrap();
        assert_eq!(
            last.definition,
            "The canonical unit of currency in hacker-written games."
        );
        // variant notes are dropped (one entry has an unbalanced parenthesis)
        assert!(e.iter().filter(|e| e.definition.starts_with('(')).count() <= 1);
    }

    #[test]
    fn masks_the_term_in_reverse_prompts() {
        assert_eq!(
            mask_term("ABEND is called abend, abends", "abend"),
            "___ is called ___, abends"
        );
        assert_eq!(mask_term("an X or x-ray box", "X"), "an ___ or ___-ray box");
    }
}
