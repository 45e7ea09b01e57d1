//! Document quality filters in the spirit of the Gopher rules (Rae et al. 2021, appendix A).
//!
//! Each rule has a named [`Reason`]; a document is dropped for the first rule it fails and counted
//! under that reason. One scan over the text finds the words and the lines; the n-gram statistics
//! then work on the words' hashes, with per-thread buffers reused from document to document.

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
    /// Per word: its hash and its length in characters.
    hashes: Vec<u64>,
    lens: Vec<u32>,
    /// Per word 2-gram (the one beginning at word `i`): its hash and its slot in `grams`.
    pairs: Vec<u64>,
    slots: Vec<u32>,
    /// Per non-blank line: the hash of its trimmed text and its length in characters.
    line_keys: Vec<(u64, u32)>,
    /// Words that begin a 5-gram made of repeated 2-grams (the only ones that can repeat).
    candidates: Vec<u32>,
    lines: Table,
    grams: Table,
    seen5: Table,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// An open-addressing table of 64-bit hashes (linear probing) with a count per key, sized afresh
/// for each document: much cheaper than a general hash map for the millions of n-grams the rules
/// look at. A slot is 8 bytes, a tag and a count, so the table of a long document still fits in
/// the L1 cache: the slot comes from the hash's mixed bits and the tag is its top 32 bits (never
/// 0, which marks a free slot). Keys are hashes: two n-grams (or lines) are taken as equal when
/// their hashes land in one probe run with the same tag, about 2⁻³² per pair.
#[derive(Default)]
struct Table {
    /// `(tag, count)`; the count is the caller's to keep.
    slots: Vec<(u32, u32)>,
    shift: u32,
}

impl Table {
    /// Empties the table and sizes it for `n` keys (at most half full).
    fn reset(&mut self, n: usize) {
        let bits = (2 * n).max(16).next_power_of_two().trailing_zeros();
        self.slots.clear();
        self.slots.resize(1 << bits, (0, 0));
        self.shift = 64 - bits;
    }

    /// The slot of `key`, and whether the key was absent (it is inserted, with count 0).
    #[inline]
    fn insert(&mut self, key: u64) -> (usize, bool) {
        let tag = ((key >> 32) as u32).max(1);
        let mask = self.slots.len() - 1;
        let mut i = (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize;
        loop {
            match self.slots[i].0 {
                t if t == tag => return (i, false),
                0 => {
                    self.slots[i].0 = tag;
                    return (i, true);
                }
                _ => i = (i + 1) & mask,
            }
        }
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
            slots,
            line_keys,
            candidates,
            lines,
            grams,
            seen5,
        } = sc;
        hashes.clear();
        lens.clear();
        line_keys.clear();

        // Words (Unicode whitespace separates them): lengths, letters, hashes for the n-gram
        // rules, and the symbols (`#`, `…`, U+FFFD, `...`). ASCII runs are scanned 16 bytes at
        // a time (SSE2; a class table elsewhere); only non-ASCII characters are decoded. The
        // same scan finds the lines: a line's trimmed text runs from its first word's start to
        // its last word's end.
        let bytes = text.as_bytes();
        let n = bytes.len();
        let decode = |i: usize| text[i..].chars().next().unwrap_or('\u{FFFD}');
        let mut line = (usize::MAX, 0usize); // (first word's start, last word's end)
        let mut end_line = |line: &mut (usize, usize)| {
            if line.0 != usize::MAX {
                let l = &bytes[line.0..line.1];
                let chars = if ascii { l.len() } else { char_count(l) };
                line_keys.push((fx_at(bytes, line.0, line.1), chars as u32));
                line.0 = usize::MAX;
            }
        };
        let mut i = 0usize;
        while i < n {
            let b = bytes[i];
            let c = CLASS[b as usize];
            if c & WS != 0 {
                if b == b'\n' {
                    end_line(&mut line);
                }
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
                let (end, classes) = ascii_run(bytes, i);
                i = end;
                seen |= classes;
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
            if line.0 == usize::MAX {
                line.0 = start;
            }
            line.1 = i;
        }
        end_line(&mut line);

        // Non-blank lines, and those repeating an earlier line.
        lines.reset(line_keys.len());
        for &(key, chars) in line_keys.iter() {
            st.lines += 1;
            st.line_chars += chars as usize;
            if !lines.insert(key).1 {
                st.dup_lines += 1;
                st.dup_line_chars += chars as usize;
            }
        }

        // Most frequent 2-gram (counts only grow, so the maximum is tracked as they do).
        let w = hashes.len();
        pairs.clear();
        slots.clear();
        grams.reset(w);
        for i in 1..w {
            let pair = mix(hashes[i - 1], hashes[i]);
            pairs.push(pair);
            let (s, new) = grams.insert(pair);
            slots.push(s as u32);
            // Equal 2-grams are equal words, so this occurrence's length is the 2-gram's.
            let count = &mut grams.slots[s].1;
            if new {
                *count = 1;
            } else {
                *count += 1;
                let chars = *count as usize * (lens[i - 1] + lens[i]) as usize;
                st.top_2gram_chars = st.top_2gram_chars.max(chars);
            }
        }

        // Duplicated 5-grams (hashed from two 2-grams and a word): every word of a 5-gram seen
        // before counts, once. A 5-gram that repeats is made of four 2-grams that repeat, so
        // only those 5-grams are looked at.
        if w >= 5 {
            candidates.clear();
            let mut run = 0u32; // repeated 2-grams in a row, ending at `j`
            for (j, &s) in slots.iter().enumerate() {
                run = if grams.slots[s as usize].1 >= 2 {
                    run + 1
                } else {
                    0
                };
                if run >= 4 {
                    candidates.push(j as u32 - 3);
                }
            }
            seen5.reset(candidates.len());
            let mut covered_to = 0usize;
            for &i in candidates.iter() {
                let i = i as usize;
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

/// The end of the run of ASCII non-whitespace bytes starting at `i`, and the classes seen in it
/// (`ALPHA`, and `DOT` for any `.` or `#`).
#[inline]
fn ascii_run(bytes: &[u8], mut i: usize) -> (usize, u8) {
    let mut seen = 0u8;
    #[cfg(target_arch = "x86_64")]
    while let Some(chunk) = bytes.get(i..i + 16) {
        let (stop, letter, sym) = classes16(chunk);
        let keep = if stop != 0 {
            (1u32 << stop.trailing_zeros()) - 1
        } else {
            0xffff
        };
        if letter & keep != 0 {
            seen |= ALPHA;
        }
        if sym & keep != 0 {
            seen |= DOT;
        }
        if stop != 0 {
            return (i + stop.trailing_zeros() as usize, seen);
        }
        i += 16;
    }
    while let Some(&b) = bytes.get(i) {
        let c = CLASS[b as usize];
        if c & STOP != 0 {
            break;
        }
        seen |= c;
        i += 1;
    }
    (i, seen & (ALPHA | DOT | HASH))
}

/// Bit masks over 16 bytes: whitespace or non-ASCII (where an ASCII run stops), ASCII letters,
/// `.` or `#`.
#[cfg(target_arch = "x86_64")]
#[inline]
fn classes16(chunk: &[u8]) -> (u32, u32, u32) {
    use std::arch::x86_64::*;
    assert!(chunk.len() >= 16);
    // SAFETY: SSE2 is part of the x86_64 baseline; the load reads 16 bytes of `chunk`.
    unsafe {
        let v = _mm_loadu_si128(chunk.as_ptr().cast());
        let set = |b: u8| _mm_set1_epi8(b as i8);
        // x <= n, unsigned
        let at_most = |x: __m128i, n: u8| _mm_cmpeq_epi8(_mm_min_epu8(x, set(n)), x);
        let ws = _mm_or_si128(
            at_most(_mm_sub_epi8(v, set(9)), 4),
            _mm_cmpeq_epi8(v, set(b' ')),
        );
        let letter = at_most(_mm_sub_epi8(_mm_or_si128(v, set(0x20)), set(b'a')), 25);
        let sym = _mm_or_si128(_mm_cmpeq_epi8(v, set(b'.')), _mm_cmpeq_epi8(v, set(b'#')));
        let stop = _mm_or_si128(ws, v); // the sign bit marks bytes >= 0x80
        (
            _mm_movemask_epi8(stop) as u32,
            _mm_movemask_epi8(letter) as u32,
            _mm_movemask_epi8(sym) as u32,
        )
    }
}

/// Characters in UTF-8 `bytes` (bytes that do not continue a character).
fn char_count(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| (b as i8) >= -0x40).count()
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
            mix(mix(0, len as u64), w)
        }
        _ => fx(&bytes[start..end]),
    }
}

/// FxHash over the length and then the bytes, 8 at a time (the last word zero-padded): fast,
/// non-cryptographic, deterministic. The length goes first: mixed in last, right after the last
/// word, it let strings that differ only in length and last word collide (e.g. `.Ω\u{1f}the` and
/// `.Ω\u{1f}thex`, 7 and 8 bytes).
fn fx(bytes: &[u8]) -> u64 {
    let mut h = mix(0, bytes.len() as u64);
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
    h
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

    /// The statistics computed the plain way (split, maps, sets), for comparison.
    fn reference(text: &str) -> DocStats {
        use std::collections::{HashMap, HashSet};
        let words: Vec<&str> = text
            .split(char::is_whitespace)
            .filter(|w| !w.is_empty())
            .collect();
        let chars = |s: &str| s.chars().count();
        let mut st = DocStats {
            words: words.len(),
            word_chars: words.iter().map(|w| chars(w)).sum(),
            alpha_words: words
                .iter()
                .filter(|w| w.chars().any(char::is_alphabetic))
                .count(),
            ..DocStats::default()
        };
        for w in &words {
            st.symbols += w.matches(['#', '…', '\u{FFFD}']).count();
            st.symbols += w
                .split(|c| c != '.')
                .map(|dots| dots.len() / 3)
                .sum::<usize>();
        }
        let mut seen_lines = HashSet::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            st.lines += 1;
            st.line_chars += chars(line);
            if !seen_lines.insert(line) {
                st.dup_lines += 1;
                st.dup_line_chars += chars(line);
            }
        }
        let mut pairs: HashMap<(&str, &str), usize> = HashMap::new();
        for p in words.windows(2) {
            *pairs.entry((p[0], p[1])).or_default() += 1;
        }
        st.top_2gram_chars = pairs
            .iter()
            .filter(|&(_, &n)| n >= 2)
            .map(|((a, b), &n)| n * (chars(a) + chars(b)))
            .max()
            .unwrap_or(0);
        let mut seen5 = HashSet::new();
        let mut covered_to = 0;
        for (i, g) in words.windows(5).enumerate() {
            if !seen5.insert(g) {
                st.dup_5gram_chars += words[covered_to.max(i)..i + 5]
                    .iter()
                    .map(|w| chars(w))
                    .sum::<usize>();
                covered_to = i + 5;
            }
        }
        st
    }

    #[test]
    fn stats_agree_with_the_plain_computation() {
        let mut docs: Vec<String> = [
            PROSE,
            VARIED,
            "",
            "  \n\t\n",
            "a b c d e\na b c d e\n\nx",
            "one\r\ntwo\r\none\r\n two \n",
            "caf\u{e9} na\u{ef}ve \u{2026} ... .... ##.# x\u{FFFD}y \u{a0}z\u{3000}w\u{85}v\u{2028}u",
            "\u{201c}Quoted,\u{201d} she said.\n\u{201c}Quoted,\u{201d} she said.\n",
            "\u{65e5}\u{672c} \u{65e5}\u{672c} \u{65e5}\u{672c} \u{65e5}\u{672c} \u{65e5}\u{672c} \u{65e5}\u{672c}",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // Words longer than the 16-byte blocks of the ASCII scan, ending in and across blocks.
        for len in [15, 16, 17, 31, 32, 33, 70] {
            let w = "ab.".repeat(len).chars().take(len).collect::<String>();
            docs.push(format!("{w} {w}\u{e9}{w} #{w}... {w}\n{w}"));
        }
        // Pseudo-random documents from awkward pieces, with repeats (duplicate lines, n-grams).
        let pieces = [
            "the",
            "cat",
            "sat",
            " ",
            " ",
            "  ",
            "\n",
            "\n",
            "\n\n",
            "\r\n",
            "\t",
            "\u{a0}",
            "\u{3000}",
            "\u{85}",
            "\u{2028}",
            "\u{2026}",
            "...",
            "....",
            ".",
            "#",
            "\u{FFFD}",
            "caf\u{e9}",
            "\u{65e5}",
            "x",
            "12",
            "3.4",
            "a.b",
            "\u{301}",
            "\u{b}",
            "\u{1f}",
        ];
        let mut x: u64 = 0x1234_5678_9abc_def1;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..2000 {
            let mut d = String::new();
            let mut earlier: Vec<String> = Vec::new();
            for _ in 0..rnd() % 300 {
                let r = rnd();
                if r % 13 == 0 && !earlier.is_empty() {
                    let again = earlier[(r >> 8) as usize % earlier.len()].clone();
                    d.push_str(&again);
                } else {
                    d.push_str(pieces[(r >> 8) as usize % pieces.len()]);
                    if r % 7 == 0 && earlier.len() < 8 {
                        let mut k = d.len().saturating_sub(24);
                        while !d.is_char_boundary(k) {
                            k += 1;
                        }
                        earlier.push(d[k..].to_string());
                    }
                }
            }
            docs.push(d);
        }
        let (mut dup5, mut dup_lines) = (0, 0);
        for d in &docs {
            let got = DocStats::of(d);
            assert_eq!(got, reference(d), "{d:?}");
            dup5 += usize::from(got.dup_5gram_chars > 0);
            dup_lines += usize::from(got.dup_lines > 0);
        }
        assert!(dup5 > 100 && dup_lines > 100, "{dup5} {dup_lines}");
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
