//! The example queries of the README's "Querying run history" section, parsed out of the
//! markdown so the doc cannot drift: each runs against the fixture ledger through sqlx and returns
//! rows, and, where the `sqlite3` command line is installed, the exact shell line runs too.

use crate::fixture::{Fixture, extra_ledger};
use crate::sql::{read_only, run};
use std::path::Path;
use std::process::Command;

/// The README's "Querying run history" section, up to the next `## ` heading.
fn doc() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    let readme =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let start = readme
        .find("## Querying run history\n")
        .expect("README.md has a \"## Querying run history\" section");
    let section = &readme[start..];
    let end = section[3..].find("\n## ").map_or(section.len(), |i| i + 4);
    section[..end].to_string()
}

/// Splits a shell command line into words: '…' literal, "…" with \" \\ \$ \` escapes, \ outside quotes.
fn shell_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err("unterminated '".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err("unterminated \"".into()),
                        },
                        Some(c @ ('$' | '`')) => {
                            return Err(format!("unescaped {c} inside double quotes"));
                        }
                        Some(c) => word.push(c),
                        None => return Err("unterminated \"".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(c) = chars.next() {
                    word.push(c);
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// The `sqlite3 …` command lines of the doc's ```sh blocks (backslash-continued lines joined).
fn commands(doc: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_block = false;
    let mut current = String::new();
    for line in doc.lines() {
        let t = line.trim_end();
        if t.starts_with("```") {
            in_block = t == "```sh";
            continue;
        }
        if !in_block {
            continue;
        }
        if let Some(start) = t.strip_suffix('\\') {
            current.push_str(start);
            current.push(' ');
            continue;
        }
        current.push_str(t);
        let cmd = std::mem::take(&mut current);
        if cmd.trim_start().starts_with("sqlite3 ") {
            out.push(cmd.trim().to_string());
        }
    }
    out
}

struct Example {
    line: String,
    sql: String,
}

fn examples() -> Vec<Example> {
    let doc = doc();
    assert!(
        doc.starts_with("## Querying run history\n"),
        "the README section \"Querying run history\""
    );
    commands(&doc)
        .into_iter()
        .map(|line| {
            let words = shell_words(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(words.first().map(String::as_str), Some("sqlite3"), "{line}");
            assert!(
                words.iter().any(|w| w == "work/ledger.db"),
                "{line}: the examples read work/ledger.db"
            );
            let sql = words.last().cloned().expect("an SQL argument");
            assert!(
                sql.contains("SELECT"),
                "{line}: the last argument is the SQL"
            );
            Example { line, sql }
        })
        .collect()
}

#[test]
fn shell_words_quote_like_sh() {
    assert_eq!(
        shell_words("sqlite3 -header a.db 'SELECT 1'").unwrap(),
        ["sqlite3", "-header", "a.db", "SELECT 1"]
    );
    assert_eq!(
        shell_words(r#"x "a 'b' \"c\"" d\ e"#).unwrap(),
        ["x", "a 'b' \"c\"", "d e"]
    );
    assert!(shell_words("x 'open").is_err());
    assert!(shell_words("x \"$HOME\"").is_err());
}

#[tokio::test]
async fn every_documented_query_returns_rows() {
    let examples = examples();
    assert!(
        (6..=8).contains(&examples.len()),
        "the section has 6–8 example queries, found {}",
        examples.len()
    );
    let f = Fixture::build().await;
    let mut ledgers = vec![f.ledger_path()];
    ledgers.extend(extra_ledger());
    for path in &ledgers {
        let pool = read_only(path).await;
        for ex in &examples {
            let t = run(&pool, &ex.sql)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}\n{}", path.display(), ex.sql));
            assert!(
                !t.is_empty(),
                "{}: no rows from\n{}",
                path.display(),
                ex.sql
            );
        }
        pool.close().await;
    }

    // The exact shell lines, with the real sqlite3, from a directory holding work/ledger.db.
    let sqlite3 = Command::new("sqlite3").arg("-version").output();
    if !sqlite3.as_ref().is_ok_and(|o| o.status.success()) {
        eprintln!(
            "SKIPPED running the doc's shell lines: the sqlite3 command line is not installed (apt-get install sqlite3)"
        );
        return;
    }
    assert_eq!(f.ledger_path(), f.dir.path().join("work/ledger.db"));
    for ex in &examples {
        let out = Command::new("sh")
            .arg("-c")
            .arg(&ex.line)
            .current_dir(f.dir.path())
            .output()
            .expect("run sh");
        let stdout = String::from_utf8_lossy(&out.stdout);
        // Shown with --nocapture (and on failure): what a reader of the doc sees.
        eprintln!("$ {}\n{stdout}", ex.line);
        assert!(
            out.status.success(),
            "{}\nfailed: {}",
            ex.line,
            String::from_utf8_lossy(&out.stderr)
        );
        // -header: a header line, then at least one row.
        assert!(
            stdout.lines().count() >= 3,
            "{}\nprinted too little:\n{stdout}",
            ex.line
        );
    }
}
