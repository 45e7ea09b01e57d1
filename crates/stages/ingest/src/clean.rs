//! Cleaning: UTF-8 validation by policy, Unicode NFC, whitespace normalisation.
//!
//! Cleaning runs before filtering and hashing, so two documents that differ only in line endings,
//! trailing spaces or Unicode composition hash alike and are deduplicated.

use tardbot_core::config::IngestConfig;
use unicode_normalization::{IsNormalized, UnicodeNormalization, is_nfc_quick};

/// The cleaning policy, taken from `[ingest.clean]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CleanPolicy {
    /// Drop a document with invalid UTF-8 (otherwise invalid sequences become U+FFFD).
    pub drop_invalid_utf8: bool,
    pub nfc: bool,
    pub whitespace: bool,
    pub collapse_spaces: bool,
    pub max_blank_lines: usize,
}

impl CleanPolicy {
    pub fn from_config(cfg: &IngestConfig) -> Self {
        let c = &cfg.clean;
        CleanPolicy {
            drop_invalid_utf8: c.invalid_utf8.drops(),
            nfc: c.nfc,
            whitespace: c.whitespace,
            collapse_spaces: c.collapse_spaces,
            max_blank_lines: c.max_blank_lines,
        }
    }
}

/// The result of cleaning one document.
#[derive(Debug, PartialEq, Eq)]
pub enum Cleaned {
    /// Clean text; `repaired` when invalid UTF-8 was replaced.
    Text { text: String, repaired: bool },
    /// Invalid UTF-8 under the `drop` policy.
    InvalidUtf8,
    /// Nothing but whitespace.
    Empty,
}

/// Cleans one raw document.
pub fn clean(raw: Vec<u8>, policy: &CleanPolicy) -> Cleaned {
    let (text, repaired) = match String::from_utf8(raw) {
        Ok(s) => (s, false),
        Err(e) if policy.drop_invalid_utf8 => {
            drop(e);
            return Cleaned::InvalidUtf8;
        }
        Err(e) => (String::from_utf8_lossy(e.as_bytes()).into_owned(), true),
    };
    clean_str(text, repaired, policy)
}

/// Cleans a document that is already a `String` (JSONL and Parquet sources).
pub fn clean_str(mut text: String, repaired: bool, policy: &CleanPolicy) -> Cleaned {
    if policy.nfc && !text.is_ascii() && is_nfc_quick(text.chars()) != IsNormalized::Yes {
        text = text.nfc().collect();
    }
    if policy.whitespace {
        match already_normal(&text, policy.collapse_spaces, policy.max_blank_lines) {
            Some(end) => text.truncate(end),
            None => {
                text = normalize_whitespace(&text, policy.collapse_spaces, policy.max_blank_lines)
            }
        }
    }
    if text.trim().is_empty() {
        Cleaned::Empty
    } else {
        Cleaned::Text { text, repaired }
    }
}

fn is_stray_control(c: char) -> bool {
    c.is_control() && c != '\n' && c != '\t'
}

/// Whether `s` holds a control character other than tab and newline (CR included): C0 controls,
/// DEL, and C1 controls (U+0080..U+009F, encoded `C2 80`..`C2 9F`). Bytes only, no decoding.
fn has_stray_control(s: &str) -> bool {
    let b = s.as_bytes();
    // A vectorisable pass for bytes that may begin one; the exact check only where one does.
    let suspect = |c: u8| (c < 0x20 && c != b'\n' && c != b'\t') || c == 0x7f || c == 0xc2;
    if !b
        .chunks(256)
        .any(|chunk| chunk.iter().fold(false, |f, &c| f | suspect(c)))
    {
        return false;
    }
    b.iter().enumerate().any(|(i, &c)| match c {
        b'\n' | b'\t' => false,
        0..=0x1f | 0x7f => true,
        0xc2 => b.get(i + 1).is_some_and(|&n| n < 0xa0),
        _ => false,
    })
}

/// The common case without a copy: when [`normalize_whitespace`] would only cut `s` short (drop
/// trailing blank lines and the trailing whitespace of the last line), the length to cut it to;
/// `None` when it has more to do.
fn already_normal(s: &str, collapse_spaces: bool, max_blank_lines: usize) -> Option<usize> {
    if collapse_spaces || has_stray_control(s) {
        return None;
    }
    let mut end = 0usize; // the end of the last non-blank line (trailing whitespace cut)
    let mut trailing_ws = false; // that line had trailing whitespace
    let (mut started, mut blank_run, mut blank_dirty) = (false, 0usize, false);
    let mut pos = 0usize;
    for line in s.split('\n') {
        let start = pos;
        pos += line.len() + 1;
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            blank_run += 1;
            blank_dirty |= !line.is_empty();
            continue;
        }
        if started {
            if trailing_ws || blank_dirty || blank_run > max_blank_lines {
                return None;
            }
        } else if blank_run > 0 {
            return None; // leading blank lines
        }
        started = true;
        (blank_run, blank_dirty) = (0, false);
        trailing_ws = trimmed.len() != line.len();
        end = start + trimmed.len();
    }
    Some(end)
}

/// CRLF and CR become LF; control characters other than tab and newline are removed; trailing
/// whitespace is stripped from every line; runs of blank lines are cut to `max_blank_lines`;
/// leading and trailing blank lines go. With `collapse_spaces`, runs of spaces and tabs inside a
/// line (not its indentation) become one space.
pub fn normalize_whitespace(s: &str, collapse_spaces: bool, max_blank_lines: usize) -> String {
    let owned;
    let s = if has_stray_control(s) {
        owned = s
            .replace("\r\n", "\n")
            .chars()
            .map(|c| if c == '\r' { '\n' } else { c })
            .filter(|&c| !is_stray_control(c))
            .collect::<String>();
        owned.as_str()
    } else {
        s
    };
    let mut out = String::with_capacity(s.len());
    let mut blank_run = 0usize;
    let mut started = false;
    for line in s.split('\n') {
        let line = line.trim_end();
        if line.is_empty() {
            blank_run += usize::from(started);
            continue;
        }
        if started {
            out.push('\n');
            for _ in 0..blank_run.min(max_blank_lines) {
                out.push('\n');
            }
        }
        blank_run = 0;
        started = true;
        if collapse_spaces {
            push_collapsed(&mut out, line);
        } else {
            out.push_str(line);
        }
    }
    out
}

fn push_collapsed(out: &mut String, line: &str) {
    let body = line.trim_start_matches([' ', '\t']);
    out.push_str(&line[..line.len() - body.len()]);
    let mut in_space = false;
    for c in body.chars() {
        if c == ' ' || c == '\t' {
            if !in_space {
                out.push(' ');
            }
            in_space = true;
        } else {
            out.push(c);
            in_space = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> CleanPolicy {
        CleanPolicy {
            drop_invalid_utf8: false,
            nfc: true,
            whitespace: true,
            collapse_spaces: false,
            max_blank_lines: 1,
        }
    }

    #[test]
    fn whitespace_is_normalised() {
        let got = normalize_whitespace("\n\n  a  b \r\nc\t\r\n\r\n\r\n\r\nd\u{0}e\n\n", false, 1);
        assert_eq!(got, "  a  b\nc\n\nde");
        assert_eq!(normalize_whitespace("  x   y\t\tz ", true, 2), "  x y z");
        assert_eq!(normalize_whitespace("a\rb", false, 2), "a\nb");
    }

    #[test]
    fn the_no_copy_path_agrees_with_the_full_normalisation() {
        let cases = [
            "a\nb\n",
            "a\n\nb",
            "a\n\n\nb\n\n",
            "a\n\n\n\nb",
            "\na",
            "  a\n",
            "a  \nb",
            "a\nb  \n \n\t\n",
            "a\n \nb",
            "a\r\nb",
            "a\u{85}b",
            "caf\u{e9}\u{a0}\nb",
            "x\u{3000}",
            "\u{3000}\nx",
            "",
            " \n ",
            "a  b\tc",
        ];
        for s in cases {
            for max in [0, 1, 2] {
                for collapse in [false, true] {
                    let full = normalize_whitespace(s, collapse, max);
                    if let Some(end) = already_normal(s, collapse, max) {
                        assert_eq!(&s[..end], full, "{s:?} max {max}");
                    }
                }
            }
        }
        assert_eq!(already_normal("a\nb\n", false, 1), Some(3));
        assert_eq!(already_normal("a\u{85}b", false, 1), None);
    }

    #[test]
    fn nfc_composes_and_hashes_alike() {
        let decomposed = "Cafe\u{301} au lait".as_bytes().to_vec();
        let composed = "Café au lait".as_bytes().to_vec();
        assert_eq!(clean(decomposed, &policy()), clean(composed, &policy()));
    }

    #[test]
    fn invalid_utf8_replaced_or_dropped() {
        let raw = b"good \xff\xfe bytes".to_vec();
        match clean(raw.clone(), &policy()) {
            Cleaned::Text { text, repaired } => {
                assert!(repaired);
                assert!(text.contains('\u{FFFD}'));
            }
            other => panic!("expected text, got {other:?}"),
        }
        let drop = CleanPolicy {
            drop_invalid_utf8: true,
            ..policy()
        };
        assert_eq!(clean(raw, &drop), Cleaned::InvalidUtf8);
        assert_eq!(clean(b" \n\t\n".to_vec(), &policy()), Cleaned::Empty);
    }
}
