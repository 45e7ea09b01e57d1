//! Conversations with the runtime's tools, really executed: `python` runs a short program for a
//! word problem and the answer is read from its actual output; `search` looks the corpus up in the
//! offline index and the answer is read from the passage it returns; `browser` opens pages made of
//! the corpus's passages, served on loopback, reads one or follows a link to it, and the answer is
//! read from the text the browser really rendered.
//!
//! The tools live in `tardbot-tools`, which depends on this crate, so the pipeline hands them in as
//! a [`ToolRunner`]. Each example: the tool and a distractor on offer in the system turn, the user's
//! request, the assistant's call, the tool's real result (fields that vary between two runs of the
//! same call, such as a duration, left out by the runner: the examples must be the same bits on
//! every build, or a resumed stage would not train on the same data), and the answer. Tool results
//! are tool turns, so they stay out of the loss.

use super::{one_call, tools_system_prompt};
use crate::schema::ToolSpec;
use crate::tools::LocalTool;
use serde_json::{Map, Value, json};
use std::path::Path;
use tardbot_core::rng::SplitMix64;
use tardbot_finetune::ChatExample;
use tardbot_tokens::chat::{Conversation, Message, Role};

/// Runs the runtime's built-in tools for the data builder (`tardbot-tools` implements it).
pub trait ToolRunner: Send + Sync {
    /// The spec of `name` as `chat --tools` offers it, and its result for `arguments`, without
    /// fields that vary between runs. `search_index` is the index `search` reads.
    fn run(
        &self,
        name: &str,
        arguments: &Map<String, Value>,
        search_index: Option<&Path>,
    ) -> Result<(ToolSpec, Value), String>;

    /// Up to `n` passages of the index, (title, text), spread over it deterministically by `seed`.
    fn sample_passages(
        &self,
        search_index: &Path,
        n: usize,
        seed: u64,
    ) -> Result<Vec<(String, String)>, String>;

    /// Serves `pages` (path → HTML document) on loopback and makes `calls` of the `browser` tool
    /// against them, in order, in one browser session. URLs in the calls and in the results are
    /// written with [`SITE`] as their origin (the runner maps it to the port it really serves on,
    /// so examples do not depend on a port). Returns the browser's spec and each call's result.
    fn browse(
        &self,
        pages: &[(String, String)],
        calls: &[Map<String, Value>],
    ) -> Result<(ToolSpec, Vec<Value>), String>;
}

/// The origin the browser conversations' pages are written under.
pub const SITE: &str = "http://127.0.0.1:8000";

/// A word problem and the program that solves it.
struct Problem {
    question: String,
    code: String,
}

fn gen_problem(rng: &mut SplitMix64) -> Problem {
    let mut n = |lo: u64, hi: u64| lo + rng.below(hi - lo + 1);
    let (a, b, c, d) = (n(3, 40), n(6, 48), n(2, 30), n(2, 12));
    let primes_below = n(20, 400);
    let list: Vec<u64> = (0..5).map(|_| n(1, 99)).collect();
    let fact = n(5, 20);
    let (principal, rate, years) = (n(10, 200) * 50, n(1, 9), n(2, 15));
    let pick = n(0, 6);
    match pick {
        0 => Problem {
            question: format!(
                "A baker makes {a} trays of {b} cookies each and sells {c} cookies. How many cookies are left?"
            ),
            code: format!(
                "trays = {a}\nper_tray = {b}\nsold = {c}\nprint(trays * per_tray - sold)"
            ),
        },
        1 => Problem {
            question: format!(
                "A train travels {} km in {d} hours. What is its average speed in km per hour?",
                a * b
            ),
            code: format!(
                "distance = {}\nhours = {d}\nprint(round(distance / hours, 2))",
                a * b
            ),
        },
        2 => Problem {
            question: format!("How many prime numbers are there below {primes_below}?"),
            code: format!(
                "count = 0\nfor k in range(2, {primes_below}):\n    if all(k % p for p in range(2, int(k ** 0.5) + 1)):\n        count += 1\nprint(count)"
            ),
        },
        3 => Problem {
            question: format!(
                "What is the average of {}?",
                list.iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            code: format!("nums = {list:?}\nprint(round(sum(nums) / len(nums), 2))"),
        },
        4 => Problem {
            question: format!("What is {fact} factorial?"),
            code: format!("import math\nprint(math.factorial({fact}))"),
        },
        5 => Problem {
            question: format!(
                "A savings account starts with {principal} dollars and earns {rate}% interest a year, compounded yearly. How much is in it after {years} years?"
            ),
            code: format!(
                "balance = {principal}\nfor year in range({years}):\n    balance *= 1 + {rate} / 100\nprint(round(balance, 2))"
            ),
        },
        _ => Problem {
            question: format!(
                "Adult tickets cost {b} dollars and child tickets {c} dollars. What does a group of {d} adults and {a} children pay?"
            ),
            code: format!("print({d} * {b} + {a} * {c})"),
        },
    }
}

const PYTHON_ASK: &[&str] = &[
    "{q}",
    "Use Python to work this out: {q}",
    "Write a short program to answer this. {q}",
];

/// The distractor offered beside a runtime tool.
fn distractor(rng: &mut SplitMix64) -> ToolSpec {
    LocalTool::ALL[rng.below(LocalTool::ALL.len() as u64) as usize].spec()
}

/// The example: system turn offering `specs`, the request, the call, the result, the answer.
#[allow(clippy::too_many_arguments)]
fn example(
    id: String,
    kind: &str,
    mut specs: Vec<ToolSpec>,
    rng: &mut SplitMix64,
    user: String,
    name: &str,
    arguments: Map<String, Value>,
    result: &Value,
    answer_text: String,
    final_answer: String,
) -> ChatExample {
    if rng.below(2) == 1 {
        specs.reverse();
    }
    let tools_json: Vec<Value> = specs
        .iter()
        .map(|s| serde_json::to_value(s).unwrap_or(Value::Null))
        .collect();
    let (call, ground_truth) = one_call(name, arguments);
    ChatExample {
        id,
        kind: kind.to_string(),
        conversation: Conversation {
            messages: vec![
                Message::new(Role::System, tools_system_prompt(&specs)),
                Message::new(Role::User, user),
                call,
                Message::new(Role::Tool, result.to_string()),
                Message::new(Role::Assistant, answer_text),
            ],
        },
        reference: json!({
            "tools": tools_json,
            "ground_truth": [ground_truth],
            "abstain": false,
            "final_answer": final_answer,
        }),
    }
}

/// `n` conversations where `python` runs a program for a word problem (ids `py:<seed>:<i>`, kind
/// `gen:python`). A program that fails is an error: the generator writes only working programs.
pub fn python_examples(
    runner: &dyn ToolRunner,
    n: usize,
    seed: u64,
) -> Result<Vec<ChatExample>, String> {
    let mut rng = SplitMix64::new(seed ^ 0x7079_7468_6f6e_0000);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let p = gen_problem(&mut rng);
        let mut arguments = Map::new();
        arguments.insert("code".into(), Value::String(p.code.clone()));
        let (spec, result) = runner.run("python", &arguments, None)?;
        let stdout = result["stdout"]
            .as_str()
            .unwrap_or_default()
            .trim()
            .to_string();
        if result["exit_code"] != json!(0) || stdout.is_empty() {
            return Err(format!(
                "the python tool did not run the generated program for {:?}: {result}",
                p.question
            ));
        }
        let ask =
            PYTHON_ASK[rng.below(PYTHON_ASK.len() as u64) as usize].replace("{q}", &p.question);
        let specs = vec![spec, distractor(&mut rng)];
        out.push(example(
            format!("py:{seed}:{i}"),
            "gen:python",
            specs,
            &mut rng,
            ask,
            "python",
            arguments,
            &result,
            format!("The program prints {stdout}, so the answer is {stdout}."),
            stdout,
        ));
    }
    Ok(out)
}

/// Results a training conversation's search asks for.
const SEARCH_RESULTS: u64 = 2;

const QUOTE_ASK: &[&str] = &[
    "Which text contains the words \"{q}\"?",
    "Where does this line come from: \"{q}\"?",
    "Search the library for \"{q}\" and tell me which document it is in.",
];
const TOPIC_ASK: &[&str] = &[
    "Look up \"{t}\" in the library. What does it say?",
    "What does the library have on \"{t}\"?",
    "Search for \"{t}\" and summarize the first result.",
];

/// The first sentence of `text` (at most ~200 characters, cut at a word).
fn first_sentence(text: &str) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    // A sentence ends at . ! ? before a space or the end, not in its first few characters (the
    // "n." of a glossary headword).
    let end = flat
        .char_indices()
        .find(|&(i, c)| {
            matches!(c, '.' | '!' | '?') && i >= 12 && flat[i + c.len_utf8()..].starts_with([' '])
                || matches!(c, '.' | '!' | '?') && i + c.len_utf8() == flat.len()
        })
        .map_or(flat.len(), |(i, c)| i + c.len_utf8());
    let s = &flat[..end];
    if s.chars().count() <= 200 {
        return s.to_string();
    }
    let cut: String = s.chars().take(200).collect();
    match cut.rfind(' ') {
        Some(i) => format!("{}…", &cut[..i]),
        None => cut,
    }
}

/// `n` conversations that search the corpus (ids `search:<seed>:<i>`, kind `gen:search`): a quoted
/// line looked up to name its document, or a document's title looked up and its passage
/// summarized. The question comes from a passage of the index; the answer from what `search`
/// really returned (its top result).
pub fn search_examples(
    runner: &dyn ToolRunner,
    index: &Path,
    n: usize,
    seed: u64,
) -> Result<Vec<ChatExample>, String> {
    let mut rng = SplitMix64::new(seed ^ 0x7365_6172_6368_0000);
    let passages = runner.sample_passages(index, n, seed)?;
    let mut out = Vec::with_capacity(n);
    for (i, (title, text)) in passages.into_iter().enumerate() {
        let words: Vec<&str> = text.split_whitespace().collect();
        let by_quote = words.len() >= 16 && rng.below(2) == 0;
        let (user, query) = if by_quote {
            let start = rng.below((words.len() - 8) as u64) as usize;
            let q = words[start..start + 8].join(" ");
            let ask = QUOTE_ASK[rng.below(QUOTE_ASK.len() as u64) as usize].replace("{q}", &q);
            (ask, q)
        } else {
            let ask = TOPIC_ASK[rng.below(TOPIC_ASK.len() as u64) as usize].replace("{t}", &title);
            (ask, title.clone())
        };
        // Two results keep the conversation within a small model's window.
        let mut arguments = Map::new();
        arguments.insert("query".into(), Value::String(query));
        arguments.insert("max_results".into(), json!(SEARCH_RESULTS));
        let (spec, result) = runner.run("search", &arguments, Some(index))?;
        let Some(top) = result["results"].get(0) else {
            continue; // nothing found: no answer to learn from this one
        };
        let top_title = top["title"].as_str().unwrap_or_default().to_string();
        let snippet = first_sentence(top["snippet"].as_str().unwrap_or_default());
        let (answer_text, final_answer) = if by_quote {
            (
                format!("It is from \"{top_title}\": {snippet}"),
                top_title.clone(),
            )
        } else {
            (format!("\"{top_title}\": {snippet}"), snippet.clone())
        };
        let specs = vec![spec, distractor(&mut rng)];
        out.push(example(
            format!("search:{seed}:{i}"),
            "gen:search",
            specs,
            &mut rng,
            user,
            "search",
            arguments,
            &result,
            answer_text,
            final_answer,
        ));
    }
    Ok(out)
}

const READ_ASK: &[&str] = &[
    "Open {u} and tell me what it says.",
    "What is on the page {u}?",
    "Read {u} for me. How does it begin?",
];
const FOLLOW_ASK: &[&str] = &[
    "On {u}, open the entry \"{t}\" and tell me what it says.",
    "Go to {u} and follow the link \"{t}\". What is that page about?",
    "The list at {u} has a link called \"{t}\". Click it and summarize the page.",
];

/// Entries on one shelf page of the browser conversations' site.
const SHELF: usize = 6;

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The site the browser conversations visit: `/page/<i>`, one passage each (its title as the
/// document's title, its paragraphs as `<p>`), and `/shelf/<k>`, lists of links to [`SHELF`] pages.
fn corpus_site(passages: &[(String, String)]) -> Vec<(String, String)> {
    let mut pages: Vec<(String, String)> = passages
        .iter()
        .enumerate()
        .map(|(i, (title, text))| {
            let body: String = text
                .split("\n\n")
                .filter(|p| !p.trim().is_empty())
                .map(|p| format!("<p>{}</p>\n", escape_html(p.trim())))
                .collect();
            (
                format!("/page/{i}"),
                format!(
                    "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{}</title></head>\n<body>\n{body}</body></html>\n",
                    escape_html(title)
                ),
            )
        })
        .collect();
    for (k, shelf) in passages.chunks(SHELF).enumerate() {
        let items: String = shelf
            .iter()
            .enumerate()
            .map(|(j, (title, _))| {
                format!(
                    "<li><a href=\"/page/{}\">{}</a></li>\n",
                    k * SHELF + j,
                    escape_html(title)
                )
            })
            .collect();
        pages.push((
            format!("/shelf/{k}"),
            format!(
                "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Shelf {k}</title></head>\n<body>\n<h1>Shelf {k}</h1>\n<ul>\n{items}</ul>\n</body></html>\n"
            ),
        ));
    }
    pages
}

/// `n` conversations that browse pages of the corpus (ids `browser:<seed>:<i>`, kind
/// `gen:browser`): a page opened and read, or a shelf of links opened and one followed by its text.
/// The answer comes from the text the browser returned. Titles that repeat on a shelf are read, not
/// followed (a link's text must name one page).
pub fn browser_examples(
    runner: &dyn ToolRunner,
    index: &Path,
    n: usize,
    seed: u64,
) -> Result<Vec<ChatExample>, String> {
    let mut rng = SplitMix64::new(seed ^ 0x6272_6f77_7365_0000);
    let passages = runner.sample_passages(index, n, seed ^ 0x6272_6f77)?;
    let pages = corpus_site(&passages);
    let mut plans = Vec::with_capacity(passages.len());
    for (i, (title, _)) in passages.iter().enumerate() {
        let shelf = i / SHELF;
        let unique = passages
            .iter()
            .skip(shelf * SHELF)
            .take(SHELF)
            .filter(|(t, _)| t == title)
            .count()
            == 1;
        let mut arguments = Map::new();
        let user = if unique && rng.below(2) == 0 {
            let u = format!("{SITE}/shelf/{shelf}");
            arguments.insert("url".into(), json!(u));
            arguments.insert("action".into(), json!("click"));
            arguments.insert("link_text".into(), json!(title));
            FOLLOW_ASK[rng.below(FOLLOW_ASK.len() as u64) as usize]
                .replace("{u}", &u)
                .replace("{t}", title)
        } else {
            let u = format!("{SITE}/page/{i}");
            arguments.insert("url".into(), json!(u));
            arguments.insert("action".into(), json!("read"));
            READ_ASK[rng.below(READ_ASK.len() as u64) as usize].replace("{u}", &u)
        };
        plans.push((user, arguments));
    }
    let calls: Vec<Map<String, Value>> = plans.iter().map(|(_, a)| a.clone()).collect();
    let (spec, results) = runner.browse(&pages, &calls)?;
    let mut out = Vec::with_capacity(plans.len());
    for (i, ((user, arguments), result)) in plans.into_iter().zip(&results).enumerate() {
        let page_title = result["title"].as_str().unwrap_or_default().to_string();
        let said = first_sentence(result["text"].as_str().unwrap_or_default());
        if page_title.is_empty() || said.is_empty() {
            return Err(format!(
                "the browser did not render page {i} of the generated site: {result}"
            ));
        }
        let specs = vec![spec.clone(), distractor(&mut rng)];
        out.push(example(
            format!("browser:{seed}:{i}"),
            "gen:browser",
            specs,
            &mut rng,
            user,
            "browser",
            arguments,
            result,
            format!("The page \"{page_title}\" says: {said}"),
            said,
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stands in for `tardbot-tools` (tested with the real tools in the pipeline crate): python
    /// evaluates nothing, it echoes what a program would print for the test's purposes.
    struct Fake;

    impl ToolRunner for Fake {
        fn run(
            &self,
            name: &str,
            arguments: &Map<String, Value>,
            _: Option<&Path>,
        ) -> Result<(ToolSpec, Value), String> {
            let spec = ToolSpec {
                name: name.into(),
                description: "d".into(),
                parameters: json!({"type": "dict", "properties": {}}),
            };
            Ok(match name {
                "python" => (
                    spec,
                    json!({"stdout": format!("{}\n", arguments["code"].as_str().unwrap().len()), "exit_code": 0}),
                ),
                _ => (
                    spec,
                    json!({"results": [{"title": "T", "url": "u", "snippet": "First sentence here. Second."}]}),
                ),
            })
        }

        fn sample_passages(
            &self,
            _: &Path,
            n: usize,
            _: u64,
        ) -> Result<Vec<(String, String)>, String> {
            Ok((0..n)
                .map(|i| (format!("Title {i}"), "w ".repeat(20 + i)))
                .collect())
        }

        /// Reads the page's `<title>` and the text of its first `<p>` from the HTML served.
        fn browse(
            &self,
            pages: &[(String, String)],
            calls: &[Map<String, Value>],
        ) -> Result<(ToolSpec, Vec<Value>), String> {
            let spec = ToolSpec {
                name: "browser".into(),
                description: "d".into(),
                parameters: json!({"type": "dict", "properties": {}}),
            };
            let between = |s: &str, a: &str, b: &str| {
                let i = s.find(a).unwrap() + a.len();
                s[i..i + s[i..].find(b).unwrap()].to_string()
            };
            let results = calls
                .iter()
                .map(|c| {
                    let path = c["url"].as_str().unwrap().strip_prefix(SITE).unwrap();
                    let mut html = &pages.iter().find(|(p, _)| p == path).unwrap().1;
                    if c["action"] == "click" {
                        let t = c["link_text"].as_str().unwrap();
                        let href = between(html, "", &format!("\">{t}<"));
                        let href = &href[href.rfind('"').unwrap() + 1..];
                        html = &pages.iter().find(|(p, _)| p == href).unwrap().1;
                    }
                    json!({"title": between(html, "<title>", "</title>"),
                           "text": format!("{} end.\n\nMore.", between(html, "<p>", "</p>"))})
                })
                .collect();
            Ok((spec, results))
        }
    }

    #[test]
    fn browser_examples_read_or_follow_the_served_pages() {
        let b = browser_examples(&Fake, Path::new("idx"), 14, 3).unwrap();
        assert_eq!(b.len(), 14);
        assert_eq!(b, browser_examples(&Fake, Path::new("idx"), 14, 3).unwrap());
        let mut followed = 0;
        for (i, e) in b.iter().enumerate() {
            let m = &e.conversation.messages;
            let args = &m[2].tool_calls[0].arguments;
            assert!(args["url"].as_str().unwrap().starts_with(SITE));
            followed += usize::from(args["action"] == "click");
            // Whichever way it got there, the page read is passage i's.
            let result: Value = serde_json::from_str(&m[3].content).unwrap();
            assert_eq!(result["title"], json!(format!("Title {i}")), "{args}");
            assert!(
                m[4].content
                    .starts_with(&format!("The page \"Title {i}\" says: w w"))
            );
            assert!(!m[4].content.contains("More."));
        }
        assert!(followed > 0 && followed < 14, "{followed}");
    }

    #[test]
    fn examples_carry_the_real_result_and_an_answer_from_it() {
        let py = python_examples(&Fake, 30, 1).unwrap();
        assert_eq!(py.len(), 30);
        assert_eq!(py, python_examples(&Fake, 30, 1).unwrap(), "deterministic");
        for e in &py {
            let m = &e.conversation.messages;
            let printed = serde_json::from_str::<Value>(&m[3].content).unwrap()["stdout"]
                .as_str()
                .unwrap()
                .trim()
                .to_string();
            assert!(m[4].content.contains(&printed));
            assert_eq!(e.reference["final_answer"], json!(printed));
            assert_eq!(m[2].tool_calls[0].name, "python");
        }
        let s = search_examples(&Fake, Path::new("idx"), 10, 1).unwrap();
        assert_eq!(s.len(), 10);
        for e in &s {
            let answer = &e.conversation.messages[4].content;
            assert!(answer.contains("First sentence here."), "{answer}");
            assert!(!answer.contains("Second"), "{answer}");
        }
    }
}
