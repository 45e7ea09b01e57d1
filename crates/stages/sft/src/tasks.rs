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
//!
//! The builder is here; the kinds are built in `glossary` (the Jargon File read and cleaned),
//! `verse` (speeches and speakers of a play) and `computed` (generated problems with computed
//! answers), and scored in `scoring` ([`exact_match`]).

use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tardbot_core::rng::SplitMix64;
use tardbot_finetune::ChatExample;
use tardbot_tokens::chat::{Conversation, Message, Role};

mod computed;
mod glossary;
mod scoring;
mod verse;

use computed::computed_kinds;
use glossary::glossary_kinds;
use verse::{read_verse, verse_kinds};

pub use glossary::{GlossaryEntry, read_glossary};
pub use scoring::exact_match;

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
    computed_kinds(per_kind, seed, &mut out);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::build;
    use std::collections::HashSet;

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
}
