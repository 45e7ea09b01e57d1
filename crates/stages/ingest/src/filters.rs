//! Document quality filters in the spirit of the Gopher rules (Rae et al. 2021, appendix A).
//!
//! Each rule has a named [`Reason`]; a document is dropped for the first rule it fails and counted
//! under that reason. All statistics are computed in one pass over the words and one over the lines.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use tardbot_core::config::IngestConfig;

/// Why a document was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    TooFewWords,
    TooManyWords,
    MeanWordLength,
    SymbolRatio,
    AlphaWords,
    DupLines,
    DupLineChars,
    Top2gram,
    Dup5gram,
}

impl Reason {
    pub const ALL: [Reason; 9] = [
        Reason::TooFewWords,
        Reason::TooManyWords,
        Reason::MeanWordLength,
        Reason::SymbolRatio,
        Reason::AlphaWords,
        Reason::DupLines,
        Reason::DupLineChars,
        Reason::Top2gram,
        Reason::Dup5gram,
    ];

    /// Metric / table name, e.g. `too_few_words`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::TooFewWords => "too_few_words",
            Reason::TooManyWords => "too_many_words",
            Reason::MeanWordLength => "mean_word_length",
            Reason::SymbolRatio => "symbol_ratio",
            Reason::AlphaWords => "alpha_words",
            Reason::DupLines => "dup_lines",
            Reason::DupLineChars => "dup_line_chars",
            Reason::Top2gram => "top_2gram",
            Reason::Dup5gram => "dup_5gram",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Thresholds, from `[ingest.filters]`.
#[derive(Clone, Debug, PartialEq)]
pub struct FilterRules {
    pub enabled: bool,
    pub min_words: usize,
    pub max_words: usize,
    pub min_mean_word_len: f64,
    pub max_mean_word_len: f64,
    pub max_dup_line_fraction: f64,
    pub max_dup_line_char_fraction: f64,
    pub max_top_2gram_char_fraction: f64,
    pub max_dup_5gram_char_fraction: f64,
    pub max_symbol_ratio: f64,
    pub min_alpha_word_fraction: f64,
}

impl FilterRules {
    pub fn from_config(cfg: &IngestConfig) -> Self {
        let f = &cfg.filters;
        FilterRules {
            enabled: f.enabled,
            min_words: f.min_words,
            max_words: f.max_words,
            min_mean_word_len: f.min_mean_word_len,
            max_mean_word_len: f.max_mean_word_len,
            max_dup_line_fraction: f.max_dup_line_fraction,
            max_dup_line_char_fraction: f.max_dup_line_char_fraction,
            max_top_2gram_char_fraction: f.max_top_2gram_char_fraction,
            max_dup_5gram_char_fraction: f.max_dup_5gram_char_fraction,
            max_symbol_ratio: f.max_symbol_ratio,
            min_alpha_word_fraction: f.min_alpha_word_fraction,
        }
    }

    /// `None` keeps the document; `Some(reason)` drops it.
    pub fn check(&self, text: &str) -> Option<Reason> {
        if !self.enabled {
            return None;
        }
        let s = DocStats::of(text);
        if s.words < self.min_words {
            return Some(Reason::TooFewWords);
        }
        if s.words > self.max_words {
            return Some(Reason::TooManyWords);
        }
        let mean = s.word_chars as f64 / s.words.max(1) as f64;
        if mean < self.min_mean_word_len || mean > self.max_mean_word_len {
            return Some(Reason::MeanWordLength);
        }
        if s.symbols as f64 / s.words.max(1) as f64 > self.max_symbol_ratio {
            return Some(Reason::SymbolRatio);
        }
        if (s.alpha_words as f64) < self.min_alpha_word_fraction * s.words as f64 {
            return Some(Reason::AlphaWords);
        }
        if s.dup_lines as f64 > self.max_dup_line_fraction * s.lines.max(1) as f64 {
            return Some(Reason::DupLines);
        }
        if s.dup_line_chars as f64 > self.max_dup_line_char_fraction * s.line_chars.max(1) as f64 {
            return Some(Reason::DupLineChars);
        }
        if s.top_2gram_chars as f64 > self.max_top_2gram_char_fraction * s.word_chars.max(1) as f64
        {
            return Some(Reason::Top2gram);
        }
        if s.dup_5gram_chars as f64 > self.max_dup_5gram_char_fraction * s.word_chars.max(1) as f64
        {
            return Some(Reason::Dup5gram);
        }
        None
    }
}

/// The statistics the rules look at. Lengths are in characters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DocStats {
    pub words: usize,
    pub word_chars: usize,
    pub alpha_words: usize,
    /// `#`, ellipses (`...`, `…`) and U+FFFD (a replaced invalid byte).
    pub symbols: usize,
    /// Non-blank lines, their characters, and those of lines repeating an earlier line.
    pub lines: usize,
    pub line_chars: usize,
    pub dup_lines: usize,
    pub dup_line_chars: usize,
    /// Characters covered by the most frequent word 2-gram (count × its length).
    pub top_2gram_chars: usize,
    /// Characters of words inside a word 5-gram that occurred earlier in the document.
    pub dup_5gram_chars: usize,
}

impl DocStats {
    pub fn of(text: &str) -> DocStats {
        let ascii = text.is_ascii();
        let char_len = |s: &str| if ascii { s.len() } else { s.chars().count() };
        let mut st = DocStats::default();

        // Words: lengths, letters, hashes for the n-gram rules.
        let guess = text.len() / 5 + 1;
        let mut hashes: Vec<u64> = Vec::with_capacity(guess);
        let mut lens: Vec<usize> = Vec::with_capacity(guess);
        for w in text.split_whitespace() {
            let n = char_len(w);
            st.words += 1;
            st.word_chars += n;
            let alpha = if ascii {
                w.bytes().any(|b| b.is_ascii_alphabetic())
            } else {
                w.chars().any(char::is_alphabetic)
            };
            if alpha {
                st.alpha_words += 1;
            }
            hashes.push(fx(w.as_bytes()));
            lens.push(n);
        }
        st.symbols = text.matches("...").count()
            + if ascii {
                text.bytes().filter(|&b| b == b'#').count()
            } else {
                text.chars()
                    .filter(|c| matches!(c, '#' | '…' | '\u{FFFD}'))
                    .count()
            };

        // Lines.
        let mut seen: HashSet<&str, BuildFx> = HashSet::default();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let n = char_len(line);
            st.lines += 1;
            st.line_chars += n;
            if !seen.insert(line) {
                st.dup_lines += 1;
                st.dup_line_chars += n;
            }
        }

        // Most frequent 2-gram.
        let mut grams: HashMap<u64, (u32, usize), BuildFx> =
            HashMap::with_capacity_and_hasher(hashes.len(), BuildFx::default());
        for i in 1..hashes.len() {
            let e = grams
                .entry(mix(hashes[i - 1], hashes[i]))
                .or_insert((0, lens[i - 1] + lens[i]));
            e.0 += 1;
        }
        st.top_2gram_chars = grams
            .values()
            .filter(|(count, _)| *count > 1)
            .map(|&(count, len)| count as usize * len)
            .max()
            .unwrap_or(0);

        // Duplicated 5-grams: mark every word of a 5-gram seen before.
        if hashes.len() >= 5 {
            let mut seen5: HashSet<u64, BuildFx> =
                HashSet::with_capacity_and_hasher(hashes.len(), BuildFx::default());
            let mut covered = vec![false; hashes.len()];
            for i in 0..=hashes.len() - 5 {
                let h = hashes[i..i + 5].iter().fold(0u64, |acc, &x| mix(acc, x));
                if !seen5.insert(h) {
                    covered[i..i + 5].iter_mut().for_each(|c| *c = true);
                }
            }
            st.dup_5gram_chars = covered
                .iter()
                .zip(&lens)
                .filter(|(c, _)| **c)
                .map(|(_, n)| n)
                .sum();
        }
        st
    }
}

const K: u64 = 0x517c_c1b7_2722_0a95;

fn mix(a: u64, b: u64) -> u64 {
    (a.rotate_left(5) ^ b).wrapping_mul(K)
}

/// FxHash over bytes: fast, non-cryptographic, deterministic.
fn fx(bytes: &[u8]) -> u64 {
    let mut h = 0u64;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = mix(h, u64::from_le_bytes(w));
    }
    for &b in chunks.remainder() {
        h = mix(h, u64::from(b));
    }
    mix(h, bytes.len() as u64)
}

/// A `Hasher` for keys that are already hashes (and for short strings, via [`fx`]).
#[derive(Default)]
pub struct FxHasher(u64);

impl Hasher for FxHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = mix(self.0, fx(bytes));
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = mix(self.0, i);
    }
}

type BuildFx = BuildHasherDefault<FxHasher>;

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> FilterRules {
        FilterRules::from_config(
            &tardbot_core::config::PipelineConfig::from_text(
                "[model]\npreset = \"mac_nano\"\n[ingest]\nsources = []\nenabled = false\n",
                std::path::Path::new("t.toml"),
                std::path::Path::new("."),
            )
            .expect("test config parses")
            .ingest,
        )
    }

    const PROSE: &str = "It was the best of times, it was the worst of times, it was the age of wisdom, \
        it was the age of foolishness, it was the epoch of belief, it was the epoch of incredulity, \
        it was the season of Light, it was the season of Darkness.";

    const VARIED: &str = "The quick brown fox jumps over the lazy dog while a curious cat watches from \
        the garden wall, and somewhere far away a train whistles twice before the evening rain begins \
        to fall on quiet streets.";

    #[test]
    fn good_prose_passes() {
        assert_eq!(rules().check(VARIED), None);
    }

    #[test]
    fn each_rule_fires_with_its_reason() {
        let r = rules();
        assert_eq!(r.check("too short to keep"), Some(Reason::TooFewWords));
        let long_words = "incomprehensibilities ".repeat(30);
        assert_eq!(r.check(&long_words), Some(Reason::MeanWordLength));
        let hashy = format!("{} {}", VARIED, "### ... ### ... ###".repeat(3));
        assert_eq!(r.check(&hashy), Some(Reason::SymbolRatio));
        let numbers = (0..40)
            .map(|i| format!("{i}.{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(r.check(&numbers), Some(Reason::AlphaWords));
        let lines = format!("{VARIED}\n{}", "Buy now cheap pills\n".repeat(30));
        assert_eq!(r.check(&lines), Some(Reason::DupLines));
        assert_eq!(
            r.check(PROSE),
            Some(Reason::Top2gram),
            "`it was` covers > 20% of the characters"
        );
        let mut loose = rules();
        loose.max_top_2gram_char_fraction = 1.0;
        let spam = format!("{VARIED} {VARIED} {VARIED}");
        assert_eq!(loose.check(&spam), Some(Reason::Dup5gram));
        loose.max_dup_5gram_char_fraction = 1.0;
        assert_eq!(loose.check(&spam), None);
        let max = FilterRules {
            max_words: 10,
            ..rules()
        };
        assert_eq!(max.check(VARIED), Some(Reason::TooManyWords));
    }

    #[test]
    fn disabled_keeps_everything() {
        let r = FilterRules {
            enabled: false,
            ..rules()
        };
        assert_eq!(r.check("x"), None);
    }

    #[test]
    fn stats_count_duplicated_lines_and_grams() {
        let s = DocStats::of("a b c d e\na b c d e\n\nx");
        assert_eq!((s.lines, s.dup_lines, s.dup_line_chars), (3, 1, 9));
        assert_eq!(s.words, 11);
        assert_eq!(
            s.dup_5gram_chars, 5,
            "the second `a b c d e` repeats the first 5-gram"
        );
    }
}
