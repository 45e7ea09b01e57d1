//! The computed kinds ([`EXACT_KINDS`]): generated problems (arithmetic, counting, spelling, sorting,
//! unit conversion) whose answers are computed, scored by exact match.

use super::{EXACT_KINDS, example, fill, kind_seed, pick};
use std::collections::HashSet;
use tardbot_core::rng::SplitMix64;
use tardbot_finetune::ChatExample;

/// Appends up to `per_kind` distinct problems of each computed kind to `out`.
pub(super) fn computed_kinds(per_kind: usize, seed: u64, out: &mut Vec<ChatExample>) {
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
}

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

fn range(rng: &mut SplitMix64, lo: u64, hi: u64) -> u64 {
    lo + rng.below(hi - lo + 1)
}

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
    use crate::test_util::build;

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
}
