//! The verse kinds (`verse_next`, `speaker`) over a plain-text play or poem: its spoken lines, their
//! speeches and speakers.

use super::{SftDataError, example, fill, kind_seed, pick, read_text};
use std::collections::HashMap;
use std::path::Path;
use tardbot_core::rng::{SplitMix64, permutation};
use tardbot_finetune::ChatExample;

/// A spoken (or plain verse) line of the verse text.
#[derive(Clone, Debug)]
pub(super) struct VerseLine {
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

pub(super) fn read_verse(path: &Path) -> Result<Vec<VerseLine>, SftDataError> {
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

pub(super) fn verse_kinds(
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

#[cfg(test)]
mod tests {
    use crate::tasks::build_examples;

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
}
