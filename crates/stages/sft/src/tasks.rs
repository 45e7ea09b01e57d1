//! The sft data builder: instruction examples over a glossary (the Jargon File) and a verse text
//! (a play), plus generated tasks whose answers are computed, and the exact-match scorer.
//!
//! Task kinds ([`KINDS`]):
//!
//! | kind | source | reference |
//! |---|---|---|
//! | `glossary` | term → first sentence(s) of its definition | `exact: false` (held-out loss) |
//! | `glossary_reverse` | definition (term masked) → term | `exact: false` |
//! | `verse_next` | a quoted line → the line after it in the same speech | `exact: false` |
//! | `speaker` | a quoted line → who speaks it | `exact: false` |
//! | `arithmetic` | `a + b`, `a - b`, `a × b` on small integers | `exact: true` |
//! | `counting` | a letter in a word, the words of a sentence | `exact: true` |
//! | `spelling` | a word letter by letter (`a p p l e`) or reversed | `exact: true` |
//! | `sorting` | numbers ascending/descending, words alphabetically (`1, 2, 3`) | `exact: true` |
//! | `unit_conversion` | km↔m, kg↔g, h↔min with integer results (`5000 m`) | `exact: true` |
//!
//! Every kind has several phrasings of the instruction, picked by a seeded SplitMix64 stream of its
//! own (so one kind's examples do not change when another's source changes). Ids are stable:
//! `glossary/<term>`, `glossary_reverse/<term>`, `verse_next/<line>`, `speaker/<line>` (line numbers of
//! the verse file, 1-based) and `<kind>/<n>` for generated kinds. Within a kind no underlying item
//! (term, line, problem) appears twice, so a held-out split by id never sees its own answer in
//! training. A kind yields fewer than `per_kind` examples when its source has fewer distinct items.

use serde_json::json;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use tardbot_finetune::ChatExample;
use tardbot_tokens::chat::{Conversation, Message, Role};
use tardbot_core::rng::{SplitMix64, permutation};

/// Every task kind, in the order [`build_examples`] emits them.
pub const KINDS: [&str; 9] = [
    "glossary",
    "glossary_reverse",
    "verse_next",
    "speaker",
    "arithmetic",
    "counting",
    "spelling",
    "sorting",
    "unit_conversion",
];

/// The kinds whose answers are computed and scored by [`exact_match`].
pub const EXACT_KINDS: [&str; 5] = [
    "arithmetic",
    "counting",
    "spelling",
    "sorting",
    "unit_conversion",
];

#[derive(Debug, thiserror::Error)]
pub enum SftDataError {
    #[error("{}: {source} (check `data.sft.glossary` / `data.sft.verse` in pipeline.toml)", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}: {message}", path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{}: {message}", path.display())]
    Empty { path: PathBuf, message: String },
}

/// One glossary entry: the term and the cleaned first sentence(s) of its definition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GlossaryEntry {
    pub term: String,
    pub definition: String,
    /// 1-based line of the entry in its file (JSONL row or `:term:` header line).
    pub line: usize,
}

/// Builds the sft examples: the templated kinds over `glossary` and `verse` (skipped when `None`)
/// and the generated kinds, up to `per_kind` each. Deterministic: the same inputs give the same
/// examples in the same order.
pub fn build_examples(
    glossary: Option<&Path>,
    verse: Option<&Path>,
    per_kind: usize,
    seed: u64,
) -> Result<Vec<ChatExample>, SftDataError> {
    let mut out = Vec::new();
    if per_kind == 0 {
        return Ok(out);
    }
    if let Some(path) = glossary {
        let entries = read_glossary(path)?;
        glossary_kinds(&entries, per_kind, seed, &mut out);
    }
    if let Some(path) = verse {
        let lines = read_verse(path)?;
        verse_kinds(path, &lines, per_kind, seed, &mut out)?;
    }
    for kind in EXACT_KINDS {
        let mut rng = SplitMix64::new(kind_seed(seed, kind));
        let mut seen = HashSet::new();
        let mut n = 0usize;
        // Every generator has a finite space of distinct problems: give up after enough misses.
        let mut attempts = 0usize;
        let max_attempts = per_kind * 50 + 1000;
        while n < per_kind && attempts < max_attempts {
            attempts += 1;
            let task = match kind {
                "arithmetic" => arithmetic(&mut rng),
                "counting" => counting(&mut rng),
                "spelling" => spelling(&mut rng),
                "sorting" => sorting(&mut rng),
                _ => unit_conversion(&mut rng),
            };
            if !seen.insert(task.key) {
                continue;
            }
            out.push(example(
                format!("{kind}/{n}"),
                kind,
                task.prompt,
                task.answer,
                true,
            ));
            n += 1;
        }
    }
    Ok(out)
}

/// Examples per kind (for logs and the stage's data artifact).
pub fn count_by_kind(examples: &[ChatExample]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for e in examples {
        *m.entry(e.kind.clone()).or_insert(0) += 1;
    }
    m
}

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

fn example(id: String, kind: &str, prompt: String, answer: String, exact: bool) -> ChatExample {
    ChatExample {
        id,
        kind: kind.to_string(),
        conversation: Conversation {
            messages: vec![
                Message::new(Role::User, prompt),
                Message::new(Role::Assistant, answer.clone()),
            ],
        },
        reference: json!({"answer": answer, "exact": exact}),
    }
}

/// A per-kind seed (FNV-1a of the kind mixed into the run's seed).
fn kind_seed(seed: u64, kind: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in kind.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    SplitMix64::new(seed ^ h).next_u64()
}

fn pick<'a>(rng: &mut SplitMix64, items: &[&'a str]) -> &'a str {
    items[rng.below(items.len() as u64) as usize]
}

fn range(rng: &mut SplitMix64, lo: u64, hi: u64) -> u64 {
    lo + rng.below(hi - lo + 1)
}

fn fill(template: &str, vars: &[(&str, &str)]) -> String {
    let mut s = template.to_string();
    for (k, v) in vars {
        s = s.replace(&format!("{{{k}}}"), v);
    }
    s
}

fn read_text(path: &Path) -> Result<String, SftDataError> {
    std::fs::read_to_string(path).map_err(|source| SftDataError::Io {
        path: path.to_path_buf(),
        source,
    })
}

// ---------------------------------------------------------------------------------------------
// Glossary

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

fn glossary_kinds(
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

// ---------------------------------------------------------------------------------------------
// Verse

/// A spoken (or plain verse) line of the verse text.
#[derive(Clone, Debug)]
struct VerseLine {
    /// 1-based line number in the file.
    line: usize,
    /// The speech (or stanza) it belongs to.
    block: usize,
    speaker: Option<String>,
    text: String,
}

/// `NAME.` (all capitals, as in the Project Gutenberg plays) or `Name:` (as in tiny_shakespeare),
/// alone on a line after a blank line and followed by a line of speech.
fn speaker_name(lines: &[&str], i: usize) -> Option<String> {
    let t = lines[i].trim();
    if i > 0 && !lines[i - 1].trim().is_empty() {
        return None;
    }
    let next = lines.get(i + 1)?.trim();
    if next.is_empty() {
        return None;
    }
    let (name, colon) = if let Some(n) = t.strip_suffix(':') {
        (n.trim(), true)
    } else {
        (t.strip_suffix('.')?.trim(), false)
    };
    if name.is_empty() || name.chars().count() > 32 || name.split_whitespace().count() > 4 {
        return None;
    }
    if !name
        .chars()
        .all(|c| c.is_alphabetic() || matches!(c, ' ' | '\'' | '-' | '’'))
    {
        return None;
    }
    let first_upper = name.chars().next().is_some_and(char::is_uppercase);
    let all_caps = name
        .chars()
        .filter(|c| c.is_alphabetic())
        .all(char::is_uppercase);
    let ok = if colon { first_upper } else { all_caps };
    if !ok {
        return None;
    }
    // a list of names (the dramatis personae) is not a speech
    if speaker_like(next) {
        return None;
    }
    Some(name.to_string())
}

fn speaker_like(line: &str) -> bool {
    let name = line
        .strip_suffix('.')
        .or_else(|| line.strip_suffix(':'))
        .unwrap_or(line);
    name.split_whitespace().count() <= 4
        && name.chars().any(char::is_alphabetic)
        && name
            .chars()
            .filter(|c| c.is_alphabetic())
            .all(char::is_uppercase)
}

fn read_verse(path: &Path) -> Result<Vec<VerseLine>, SftDataError> {
    let text = read_text(path)?;
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut block = 0usize;
    let mut speaker: Option<String> = None;
    let mut depth = 0usize; // inside a [stage direction]
    let mut in_block = false;
    for (i, l) in lines.iter().enumerate() {
        if l.trim().is_empty() {
            if in_block {
                block += 1;
                in_block = false;
            }
            speaker = None;
            depth = 0;
            continue;
        }
        if let Some(name) = speaker_name(&lines, i) {
            speaker = Some(name);
            continue;
        }
        let mut clean = String::new();
        for c in l.chars() {
            match c {
                '[' => depth += 1,
                ']' => depth = depth.saturating_sub(1),
                _ if depth == 0 => clean.push(c),
                _ => {}
            }
        }
        let clean = clean.split_whitespace().collect::<Vec<_>>().join(" ");
        if clean.is_empty() || !clean.chars().any(char::is_alphabetic) {
            continue;
        }
        in_block = true;
        out.push(VerseLine {
            line: i + 1,
            block,
            speaker: speaker.clone(),
            text: clean,
        });
    }
    if out.is_empty() {
        return Err(SftDataError::Empty {
            path: path.to_path_buf(),
            message: "no text lines; `data.sft.verse` should be a plain-text play or poem"
                .to_string(),
        });
    }
    Ok(out)
}

fn verse_kinds(
    path: &Path,
    lines: &[VerseLine],
    per_kind: usize,
    seed: u64,
    out: &mut Vec<ChatExample>,
) -> Result<(), SftDataError> {
    const NEXT: [&str; 4] = [
        "What is the line after \"{line}\"?",
        "Continue the verse with the next line: \"{line}\"",
        "In the play, which line follows \"{line}\"?",
        "Give the line that comes after: \"{line}\"",
    ];
    const SPEAKER: [&str; 3] = [
        "Who speaks this line: \"{line}\"?",
        "Which character says \"{line}\"?",
        "In the play, who says: \"{line}\"?",
    ];
    let words = |s: &str| s.split_whitespace().count();
    let mut count: HashMap<&str, usize> = HashMap::new();
    for l in lines {
        *count.entry(l.text.as_str()).or_insert(0) += 1;
    }
    let unique = |l: &VerseLine| count.get(l.text.as_str()) == Some(&1);
    let has_speakers = lines.iter().any(|l| l.speaker.is_some());
    // (prompt line index, answer line index)
    let next: Vec<(usize, usize)> = lines
        .windows(2)
        .enumerate()
        .filter(|(_, w)| {
            w[0].block == w[1].block
                && (!has_speakers || w[0].speaker.is_some())
                && words(&w[0].text) >= 3
                && words(&w[1].text) >= 2
                && unique(&w[0])
        })
        .map(|(i, _)| (i, i + 1))
        .collect();
    if next.is_empty() {
        return Err(SftDataError::Empty {
            path: path.to_path_buf(),
            message: "no pairs of consecutive lines of three or more words; `data.sft.verse` should be a plain-text play or poem".to_string(),
        });
    }
    let ks = kind_seed(seed, "verse_next");
    let mut rng = SplitMix64::new(ks);
    for &p in permutation(next.len(), ks).iter().take(per_kind) {
        let (a, b) = next[p as usize];
        let prompt = fill(pick(&mut rng, &NEXT), &[("line", &lines[a].text)]);
        out.push(example(
            format!("verse_next/{}", lines[a].line),
            "verse_next",
            prompt,
            lines[b].text.clone(),
            false,
        ));
    }
    let spoken: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].speaker.is_some() && words(&lines[i].text) >= 4 && unique(&lines[i]))
        .collect();
    if spoken.is_empty() {
        tracing::warn!(
            path = %path.display(),
            "no speaker lines (`NAME.` or `Name:` alone before a speech): no `speaker` examples"
        );
    }
    let ks = kind_seed(seed, "speaker");
    let mut rng = SplitMix64::new(ks);
    for &p in permutation(spoken.len(), ks).iter().take(per_kind) {
        let l = &lines[spoken[p as usize]];
        let prompt = fill(pick(&mut rng, &SPEAKER), &[("line", &l.text)]);
        out.push(example(
            format!("speaker/{}", l.line),
            "speaker",
            prompt,
            l.speaker.clone().unwrap_or_default(),
            false,
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Generated tasks

struct Task {
    /// The underlying problem, independent of phrasing (deduplication).
    key: String,
    prompt: String,
    answer: String,
}

/// Common English words (lowercase ASCII) for counting, spelling and sorting.
const WORDS: &[&str] = &[
    "apple",
    "banana",
    "orange",
    "grape",
    "lemon",
    "cherry",
    "melon",
    "peach",
    "river",
    "mountain",
    "forest",
    "desert",
    "ocean",
    "island",
    "valley",
    "garden",
    "window",
    "door",
    "table",
    "chair",
    "pencil",
    "paper",
    "book",
    "letter",
    "school",
    "teacher",
    "student",
    "friend",
    "family",
    "mother",
    "father",
    "sister",
    "brother",
    "baby",
    "house",
    "kitchen",
    "bottle",
    "glass",
    "plate",
    "spoon",
    "knife",
    "bread",
    "butter",
    "cheese",
    "coffee",
    "water",
    "sugar",
    "salt",
    "pepper",
    "honey",
    "rabbit",
    "turtle",
    "monkey",
    "tiger",
    "zebra",
    "horse",
    "donkey",
    "sheep",
    "chicken",
    "eagle",
    "parrot",
    "dolphin",
    "whale",
    "shark",
    "spider",
    "beetle",
    "butterfly",
    "kitten",
    "puppy",
    "camel",
    "yellow",
    "purple",
    "green",
    "silver",
    "golden",
    "black",
    "white",
    "little",
    "happy",
    "quiet",
    "gentle",
    "strong",
    "bright",
    "simple",
    "clever",
    "brave",
    "funny",
    "lucky",
    "sleepy",
    "hungry",
    "castle",
    "bridge",
    "tower",
    "village",
    "city",
    "market",
    "street",
    "station",
    "airport",
    "harbor",
    "rocket",
    "planet",
    "comet",
    "moon",
    "star",
    "cloud",
    "thunder",
    "rainbow",
    "winter",
    "summer",
    "autumn",
    "spring",
    "morning",
    "evening",
    "midnight",
    "holiday",
    "birthday",
    "music",
    "guitar",
    "piano",
    "violin",
    "drum",
    "trumpet",
    "song",
    "dance",
    "story",
    "poem",
    "computer",
    "keyboard",
    "printer",
    "screen",
    "mouse",
    "program",
    "network",
    "button",
    "signal",
    "engine",
    "wheel",
    "bicycle",
    "train",
    "ticket",
    "pocket",
    "jacket",
    "blanket",
    "pillow",
    "mirror",
    "candle",
    "lantern",
    "basket",
    "bucket",
    "hammer",
    "ladder",
    "needle",
    "thread",
    "balloon",
    "puzzle",
    "treasure",
    "journey",
];

fn word(rng: &mut SplitMix64) -> &'static str {
    WORDS[rng.below(WORDS.len() as u64) as usize]
}

fn arithmetic(rng: &mut SplitMix64) -> Task {
    const PHRASINGS: [&str; 4] = [
        "What is {a} {op} {b}?",
        "Compute {a} {op} {b}.",
        "Calculate: {a} {op} {b}",
        "{a} {op} {b} = ?",
    ];
    let (a, b, sym, names, r): (u64, u64, &str, &[&str], u64) = match rng.below(3) {
        0 => {
            let (a, b) = (range(rng, 0, 99), range(rng, 0, 99));
            (a, b, "+", &["+", "plus"], a + b)
        }
        1 => {
            let (x, y) = (range(rng, 0, 99), range(rng, 0, 99));
            let (a, b) = (x.max(y), x.min(y));
            (a, b, "-", &["-", "minus"], a - b)
        }
        _ => {
            let (a, b) = (range(rng, 2, 12), range(rng, 2, 12));
            (a, b, "*", &["×", "*", "times"], a * b)
        }
    };
    let op = pick(rng, names);
    let prompt = fill(
        pick(rng, &PHRASINGS),
        &[("a", &a.to_string()), ("op", op), ("b", &b.to_string())],
    );
    Task {
        key: format!("{a}{sym}{b}"),
        prompt,
        answer: r.to_string(),
    }
}

fn counting(rng: &mut SplitMix64) -> Task {
    if rng.below(2) == 0 {
        const PHRASINGS: [&str; 3] = [
            "How many times does the letter \"{l}\" appear in \"{w}\"?",
            "Count the letter \"{l}\" in the word \"{w}\".",
            "How many \"{l}\" letters are in \"{w}\"?",
        ];
        let w = word(rng);
        let letter = if rng.below(5) == 0 {
            (b'a' + rng.below(26) as u8) as char
        } else {
            let cs: Vec<char> = w.chars().collect();
            cs[rng.below(cs.len() as u64) as usize]
        };
        let n = w.chars().filter(|&c| c == letter).count();
        let l = letter.to_string();
        Task {
            key: format!("letter:{letter}:{w}"),
            prompt: fill(pick(rng, &PHRASINGS), &[("l", &l), ("w", w)]),
            answer: n.to_string(),
        }
    } else {
        const PHRASINGS: [&str; 3] = [
            "How many words are in this sentence: \"{s}\"?",
            "Count the words: \"{s}\"",
            "How many words does \"{s}\" contain?",
        ];
        let n = range(rng, 2, 9) as usize;
        let ws: Vec<&str> = (0..n).map(|_| word(rng)).collect();
        let s = ws.join(" ");
        Task {
            key: format!("words:{s}"),
            prompt: fill(pick(rng, &PHRASINGS), &[("s", &s)]),
            answer: n.to_string(),
        }
    }
}

fn spelling(rng: &mut SplitMix64) -> Task {
    let w = word(rng);
    if rng.below(2) == 0 {
        const PHRASINGS: [&str; 3] = [
            "Spell \"{w}\" letter by letter.",
            "How do you spell \"{w}\"? Give the letters separated by spaces.",
            "Write out the letters of \"{w}\" one by one.",
        ];
        Task {
            key: format!("spell:{w}"),
            prompt: fill(pick(rng, &PHRASINGS), &[("w", w)]),
            answer: w.chars().map(String::from).collect::<Vec<_>>().join(" "),
        }
    } else {
        const PHRASINGS: [&str; 3] = [
            "Reverse the word \"{w}\".",
            "Write \"{w}\" backwards.",
            "What is \"{w}\" spelled backwards?",
        ];
        Task {
            key: format!("reverse:{w}"),
            prompt: fill(pick(rng, &PHRASINGS), &[("w", w)]),
            answer: w.chars().rev().collect(),
        }
    }
}

fn sorting(rng: &mut SplitMix64) -> Task {
    match rng.below(3) {
        0 | 1 => {
            const ASC: [&str; 3] = [
                "Sort these numbers in ascending order: {xs}",
                "Put these numbers in order from smallest to largest: {xs}",
                "Arrange from lowest to highest: {xs}",
            ];
            const DESC: [&str; 3] = [
                "Sort these numbers in descending order: {xs}",
                "Put these numbers in order from largest to smallest: {xs}",
                "Arrange from highest to lowest: {xs}",
            ];
            let n = range(rng, 3, 6) as usize;
            let xs: Vec<u64> = (0..n).map(|_| range(rng, 0, 99)).collect();
            let desc = rng.below(2) == 1;
            let mut sorted = xs.clone();
            sorted.sort_unstable();
            if desc {
                sorted.reverse();
            }
            let list = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
            let shown = list(&xs);
            let template = pick(rng, if desc { &DESC } else { &ASC });
            Task {
                key: format!("num:{desc}:{shown}"),
                prompt: fill(template, &[("xs", &shown)]),
                answer: list(&sorted),
            }
        }
        _ => {
            const PHRASINGS: [&str; 3] = [
                "Sort these words alphabetically: {xs}",
                "Put these words in alphabetical order: {xs}",
                "Alphabetize: {xs}",
            ];
            let n = range(rng, 3, 5) as usize;
            let mut ws: Vec<&str> = Vec::new();
            while ws.len() < n {
                let w = word(rng);
                if !ws.contains(&w) {
                    ws.push(w);
                }
            }
            let shown = ws.join(", ");
            let mut sorted = ws.clone();
            sorted.sort_unstable();
            Task {
                key: format!("words:{shown}"),
                prompt: fill(pick(rng, &PHRASINGS), &[("xs", &shown)]),
                answer: sorted.join(", "),
            }
        }
    }
}

fn unit_conversion(rng: &mut SplitMix64) -> Task {
    const PHRASINGS: [&str; 4] = [
        "Convert {v} {from} to {to}.",
        "How many {to} are in {v} {from}?",
        "What is {v} {from} in {to}?",
        "{v} {from_sym} = ? {to_sym}",
    ];
    // big unit (singular, plural, symbol), small unit (plural, symbol), factor, largest big value
    let units: [(&str, &str, &str, &str, &str, u64, u64); 3] = [
        ("kilometer", "kilometers", "km", "meters", "m", 1000, 100),
        ("kilogram", "kilograms", "kg", "grams", "g", 1000, 100),
        ("hour", "hours", "h", "minutes", "min", 60, 24),
    ];
    let (b1, bn, bs, sn, ss, factor, max) = units[rng.below(3) as usize];
    let big = range(rng, 1, max);
    let small = big * factor;
    let down = rng.below(2) == 0;
    let (v, from, from_sym, to_plural, to_sym, answer) = if down {
        let from = if big == 1 { b1 } else { bn };
        (big, from, bs, sn, ss, format!("{small} {ss}"))
    } else {
        (small, sn, ss, bn, bs, format!("{big} {bs}"))
    };
    let prompt = fill(
        pick(rng, &PHRASINGS),
        &[
            ("v", &v.to_string()),
            ("from", from),
            ("to", to_plural),
            ("from_sym", from_sym),
            ("to_sym", to_sym),
        ],
    );
    Task {
        key: format!("{v}{from_sym}->{to_sym}"),
        prompt,
        answer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../data/sample")
            .join(name)
    }

    fn build(per_kind: usize, seed: u64) -> Vec<ChatExample> {
        build_examples(
            Some(&sample("jargon.jsonl")),
            Some(&sample("tiny_shakespeare.txt")),
            per_kind,
            seed,
        )
        .unwrap()
    }

    #[test]
    fn builds_every_kind_deterministically() {
        let a = build(200, 7);
        let b = build(200, 7);
        let ser = |v: &[ChatExample]| {
            v.iter()
                .map(|e| serde_json::to_string(e).unwrap())
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(ser(&a), ser(&b));
        let counts = count_by_kind(&a);
        for k in KINDS {
            assert!(counts.get(k).copied().unwrap_or(0) > 50, "{k}: {counts:?}");
        }
        for k in ["verse_next", "speaker"].into_iter().chain(EXACT_KINDS) {
            assert_eq!(counts[k], 200, "{k}");
        }
        let c = build(200, 8);
        assert_ne!(ser(&a), ser(&c));
        // ids unique; every example renders through the chat template
        let ids: HashSet<&str> = a.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids.len(), a.len());
        for e in &a {
            tardbot_tokens::chat::render_chat_text(&e.conversation, false).unwrap();
            let exact = EXACT_KINDS.contains(&e.kind.as_str());
            assert_eq!(e.reference["exact"], json!(exact));
            let answer = &e.conversation.messages[1].content;
            assert_eq!(e.reference["answer"], json!(answer));
            assert!(!answer.trim().is_empty(), "{}", e.id);
            assert!(
                !e.conversation.messages[0].content.contains("{"),
                "{}",
                e.id
            );
            if exact {
                assert_eq!(exact_match(&e.reference, answer), Some(true));
            } else {
                assert_eq!(exact_match(&e.reference, answer), None);
            }
        }
    }

    #[test]
    fn several_phrasings_per_kind() {
        let all = build(100, 1);
        for k in KINDS {
            // the first few words of the prompt, with quoted material and numbers removed
            let shapes: HashSet<String> = all
                .iter()
                .filter(|e| e.kind == k)
                .map(|e| {
                    let p = &e.conversation.messages[0].content;
                    p.split('"')
                        .step_by(2)
                        .collect::<String>()
                        .split_whitespace()
                        .filter(|w| !w.chars().any(|c| c.is_ascii_digit()))
                        .take(3)
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect();
            assert!(shapes.len() >= 3, "{k}: {shapes:?}");
        }
    }

    #[test]
    fn computed_answers_are_right() {
        for e in build(200, 3) {
            let p = &e.conversation.messages[0].content;
            let a = e.reference["answer"].as_str().unwrap();
            match e.kind.as_str() {
                "arithmetic" => {
                    let nums: Vec<i64> = p
                        .split(|c: char| !c.is_ascii_digit())
                        .filter(|s| !s.is_empty())
                        .map(|s| s.parse().unwrap())
                        .collect();
                    let r = if p.contains(" + ") || p.contains("plus") {
                        nums[0] + nums[1]
                    } else if p.contains(" - ") || p.contains("minus") {
                        nums[0] - nums[1]
                    } else {
                        nums[0] * nums[1]
                    };
                    assert_eq!(a, r.to_string(), "{p}");
                }
                "spelling" if p.contains("backwards") || p.contains("Reverse") => {
                    let w = p.split('"').nth(1).unwrap();
                    assert_eq!(a.chars().rev().collect::<String>(), w);
                }
                "spelling" => {
                    let w = p.split('"').nth(1).unwrap();
                    assert_eq!(a.replace(' ', ""), w);
                }
                "unit_conversion" => {
                    let v: u64 = p
                        .split(|c: char| !c.is_ascii_digit())
                        .find(|s| !s.is_empty())
                        .unwrap()
                        .parse()
                        .unwrap();
                    let (n, unit) = a.split_once(' ').unwrap();
                    let n: u64 = n.parse().unwrap();
                    let factor = if unit == "min" || unit == "h" {
                        60
                    } else {
                        1000
                    };
                    assert!(n == v * factor || n * factor == v, "{p} -> {a}");
                }
                _ => {}
            }
        }
    }

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
    fn errors_name_file_line_and_fix() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("g.jsonl");
        std::fs::write(
            &p,
            "{\"title\": \"a\", \"text\": \":a: n.\\n\\nA thing that is.\"}\n\n{\"text\": \"x\"}\n",
        )
        .unwrap();
        let msg = read_glossary(&p).unwrap_err().to_string();
        assert!(
            msg.contains("g.jsonl:3:") && msg.contains("`title`"),
            "{msg}"
        );
        std::fs::write(&p, "{\"title\": \"a\", \"text\": 1}\nnot json\n").unwrap();
        let msg = read_glossary(&p).unwrap_err().to_string();
        assert!(
            msg.contains("g.jsonl:1:") && msg.contains("`text`"),
            "{msg}"
        );
        let missing = dir.path().join("nope.txt");
        let msg = build_examples(Some(&missing), None, 5, 0)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("nope.txt") && msg.contains("data.sft"),
            "{msg}"
        );
        let empty = dir.path().join("empty.txt");
        std::fs::write(&empty, "\n\n").unwrap();
        assert!(matches!(
            build_examples(None, Some(&empty), 5, 0),
            Err(SftDataError::Empty { .. })
        ));
    }

    #[test]
    fn verse_speakers_and_next_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v.txt");
        std::fs::write(
            &p,
            "PERSONS.\n\nKING OF FRANCE.\nTHE DUKE.\n\nACT I.\n\nFirst Citizen:\nBefore we proceed any further, hear me speak.\n[Aside.] Speak, speak now.\n\n\
             COUNTESS.\nIn delivering my son from me, I bury\na second husband, and so it goes.\n",
        )
        .unwrap();
        let ex = build_examples(None, Some(&p), 10, 0).unwrap();
        let get = |id: &str| {
            ex.iter()
                .find(|e| e.id == id)
                .map(|e| e.conversation.messages[1].content.clone())
        };
        assert_eq!(get("speaker/9").as_deref(), Some("First Citizen"));
        assert_eq!(get("speaker/13").as_deref(), Some("COUNTESS"));
        assert_eq!(get("verse_next/9").as_deref(), Some("Speak, speak now."));
        assert_eq!(
            get("verse_next/13").as_deref(),
            Some("a second husband, and so it goes.")
        );
        assert!(
            !ex.iter()
                .any(|e| e.conversation.messages[1].content.contains("DUKE"))
        );
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
