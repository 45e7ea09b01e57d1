//! Document quality filters in the spirit of the Gopher rules (Rae et al. 2021, appendix A).
//!
//! Each rule has a named [`Reason`]; a document is dropped for the first rule it fails and counted
//! under that reason. All statistics are computed in one pass over the words and one over the lines,
//! with per-thread buffers reused from document to document.

use std::cell::RefCell;
use tardbot_core::config::FilterConfig;

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

/// The quality rules of `[ingest.filters]` applied to one document.
pub trait FilterRules {
    /// `None` keeps the document; `Some(reason)` drops it.
    fn check(&self, text: &str) -> Option<Reason>;
}

impl FilterRules for FilterConfig {
    fn check(&self, text: &str) -> Option<Reason> {
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

/// Per-thread buffers reused across documents (the filters run on every document).
#[derive(Default)]
struct Scratch {
    /// Per word: its hash, its length in characters, and the hash of the 2-gram it begins.
    hashes: Vec<u64>,
    lens: Vec<u32>,
    pairs: Vec<u64>,
    lines: Table,
    grams: Table,
    seen5: Table,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// An open-addressing table of 64-bit hashes (linear probing, 0 marks a free slot) with a
/// `[count, length]` value per key, sized afresh for each document: much cheaper than a general
/// hash map for the millions of n-grams the rules look at. Keys are hashes: two n-grams (or
/// lines) are taken as equal when their 64-bit hashes are.
#[derive(Default)]
struct Table {
    slots: Vec<(u64, [u32; 2])>,
    shift: u32,
}

impl Table {
    /// Empties the table and sizes it for `n` keys (at most half full).
    fn reset(&mut self, n: usize) {
        let bits = (2 * n).max(16).next_power_of_two().trailing_zeros();
        self.slots.clear();
        self.slots.resize(1 << bits, (0, [0, 0]));
        self.shift = 64 - bits;
    }

    /// The value of `key`, and whether the key was absent (it is inserted, with value 0).
    #[inline]
    fn insert(&mut self, key: u64) -> (&mut [u32; 2], bool) {
        let key = if key == 0 { K } else { key };
        let mask = self.slots.len() - 1;
        let mut i = (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize;
        loop {
            match self.slots[i].0 {
                k if k == key => break,
                0 => {
                    self.slots[i].0 = key;
                    return (&mut self.slots[i].1, true);
                }
                _ => i = (i + 1) & mask,
            }
        }
        (&mut self.slots[i].1, false)
    }
}

// Byte classes of the word scan (bit flags).
const ALPHA: u8 = 1;
const DOT: u8 = 2;
const HASH: u8 = 4;
const WS: u8 = 8;
const NON_ASCII: u8 = 16;
const STOP: u8 = WS | NON_ASCII;

/// The class of every byte: ASCII whitespace as `char::is_whitespace` has it (tab, LF, VT, FF,
/// CR, space), ASCII letters, `.`, `#`, and bytes of non-ASCII characters.
static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = match b as u8 {
            b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ' => WS,
            b'a'..=b'z' | b'A'..=b'Z' => ALPHA,
            b'.' => DOT,
            b'#' => HASH,
            0x80..=0xff => NON_ASCII,
            _ => 0,
        };
        b += 1;
    }
    t
};

/// Characters in `s` (UTF-8 bytes that do not continue a character).
fn char_count(s: &str, ascii: bool) -> usize {
    if ascii {
        s.len()
    } else {
        s.bytes().filter(|&b| (b as i8) >= -0x40).count()
    }
}

/// `#` and the `...` in a word (a run of n dots holds n / 3, as `str::matches` counts).
fn ascii_symbols(word: &[u8]) -> usize {
    let mut n = 0;
    let mut dots = 0;
    for &b in word {
        if b == b'.' {
            dots += 1;
        } else {
            n += dots / 3 + usize::from(b == b'#');
            dots = 0;
        }
    }
    n + dots / 3
}

impl DocStats {
    pub fn of(text: &str) -> DocStats {
        SCRATCH.with(|s| match s.try_borrow_mut() {
            Ok(mut s) => Self::with_scratch(text, &mut s),
            Err(_) => Self::with_scratch(text, &mut Scratch::default()),
        })
    }

    fn with_scratch(text: &str, sc: &mut Scratch) -> DocStats {
        let ascii = text.is_ascii();
        let mut st = DocStats::default();
        let Scratch {
            hashes,
            lens,
            pairs,
            lines,
            grams,
            seen5,
        } = sc;
        hashes.clear();
        lens.clear();

        // Words (Unicode whitespace separates them): lengths, letters, hashes for the n-gram
        // rules, and the symbols (`#`, `…`, U+FFFD, `...`). ASCII runs are scanned through a
        // class table; only non-ASCII characters are decoded.
        let bytes = text.as_bytes();
        let n = bytes.len();
        let decode = |i: usize| text[i..].chars().next().unwrap_or('\u{FFFD}');
        let mut i = 0usize;
        while i < n {
            let c = CLASS[bytes[i] as usize];
            if c & WS != 0 {
                i += 1;
                continue;
            }
            if c & NON_ASCII != 0 {
                let ch = decode(i);
                if ch.is_whitespace() {
                    i += ch.len_utf8();
                    continue;
                }
            }
            // A word starts at `i`.
            let start = i;
            let (mut chars, mut seen, mut alpha) = (0usize, 0u8, false);
            loop {
                let run = i;
                while i < n {
                    let c = CLASS[bytes[i] as usize];
                    if c & STOP != 0 {
                        break;
                    }
                    seen |= c;
                    i += 1;
                }
                chars += i - run;
                if seen & (DOT | HASH) != 0 {
                    st.symbols += ascii_symbols(&bytes[run..i]);
                    seen &= !(DOT | HASH);
                }
                if i >= n || bytes[i] < 0x80 {
                    break; // the end, or ASCII whitespace
                }
                let ch = decode(i);
                if ch.is_whitespace() {
                    break;
                }
                st.symbols += usize::from(matches!(ch, '…' | '\u{FFFD}'));
                alpha |= ch.is_alphabetic();
                chars += 1;
                i += ch.len_utf8();
            }
            alpha |= seen & ALPHA != 0;
            st.words += 1;
            st.word_chars += chars;
            st.alpha_words += usize::from(alpha);
            hashes.push(fx_at(bytes, start, i));
            lens.push(chars as u32);
        }

        // Lines (trimmed, non-blank), and those repeating an earlier line.
        let approx_lines = bytes.iter().filter(|&&b| b == b'\n').count() + 1;
        lines.reset(approx_lines);
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let n = char_count(line, ascii);
            st.lines += 1;
            st.line_chars += n;
            if !lines.insert(fx(line.as_bytes())).1 {
                st.dup_lines += 1;
                st.dup_line_chars += n;
            }
        }

        // Most frequent 2-gram (counts only grow, so the maximum is tracked as they do).
        let w = hashes.len();
        pairs.clear();
        grams.reset(w);
        for i in 1..w {
            let pair = mix(hashes[i - 1], hashes[i]);
            pairs.push(pair);
            let (v, new) = grams.insert(pair);
            if new {
                *v = [1, lens[i - 1] + lens[i]];
            } else {
                v[0] += 1;
                st.top_2gram_chars = st.top_2gram_chars.max(v[0] as usize * v[1] as usize);
            }
        }

        // Duplicated 5-grams (hashed from two 2-grams and a word): every word of a 5-gram seen
        // before counts, once.
        if w >= 5 {
            seen5.reset(w);
            let mut covered_to = 0usize;
            for i in 0..=w - 5 {
                let h = mix(mix(pairs[i], pairs[i + 2]), hashes[i + 4]);
                if !seen5.insert(h).1 {
                    st.dup_5gram_chars += lens[covered_to.max(i)..i + 5]
                        .iter()
                        .map(|&n| n as usize)
                        .sum::<usize>();
                    covered_to = i + 5;
                }
            }
        }
        st
    }
}

const K: u64 = 0x517c_c1b7_2722_0a95;

fn mix(a: u64, b: u64) -> u64 {
    (a.rotate_left(5) ^ b).wrapping_mul(K)
}

/// [`fx`] of `bytes[start..end]`, reading short words as one (masked) 8-byte load where the
/// text goes on long enough.
#[inline]
fn fx_at(bytes: &[u8], start: usize, end: usize) -> u64 {
    let len = end - start;
    match bytes.get(start..start + 8) {
        Some(w) if len <= 8 => {
            let mut a = [0u8; 8];
            a.copy_from_slice(w);
            let w = u64::from_le_bytes(a);
            let w = if len == 8 {
                w
            } else {
                w & ((1u64 << (8 * len)) - 1)
            };
            mix(mix(0, w), len as u64)
        }
        _ => fx(&bytes[start..end]),
    }
}

/// FxHash over bytes, 8 at a time (the last word zero-padded): fast, non-cryptographic,
/// deterministic.
fn fx(bytes: &[u8]) -> u64 {
    let mut h = 0u64;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = mix(h, u64::from_le_bytes(w));
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let w = rest
            .iter()
            .rev()
            .fold(0u64, |w, &b| (w << 8) | u64::from(b));
        h = mix(h, w);
    }
    mix(h, bytes.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> FilterConfig {
        FilterConfig::default()
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
        let max = FilterConfig {
            max_words: 10,
            ..rules()
        };
        assert_eq!(max.check(VARIED), Some(Reason::TooManyWords));
    }

    /// `cargo test --release --workspace -- --ignored filter_speed --nocapture`: the rules' speed on
    /// the prose corpus.
    #[test]
    #[ignore]
    fn filter_speed() {
        let Ok(text) = std::fs::read_to_string("../../../../shared/corpora/prose/train.txt") else {
            return;
        };
        let docs: Vec<&str> = text.split("\n<|endoftext|>\n").collect();
        let t = std::time::Instant::now();
        let words: usize = docs.iter().map(|d| DocStats::of(d).words).sum();
        let s = t.elapsed().as_secs_f64();
        println!(
            "{} docs, {words} words, {:.1} MB in {s:.3} s = {:.0} MB/s",
            docs.len(),
            text.len() as f64 / 1e6,
            text.len() as f64 / 1e6 / s
        );
    }

    #[test]
    fn disabled_keeps_everything() {
        let r = FilterConfig {
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
