//! The toolcall stage's conversations with the runtime's tools, made with the real `python`, the
//! real offline `search` and a real Chromium: the results are real, and two builds give the same
//! bits.

use serde_json::Value;
use tardbot_toolcall::data::{SITE, browser_examples, python_examples, search_examples};
use tardbot_tools::data_runner::BuiltinRunner;
use tardbot_tools::search::offline::{build_index, passages_of};

fn has_python() -> bool {
    std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn python_conversations_carry_what_the_program_printed() {
    if !has_python() {
        eprintln!("SKIP: no python3 on this machine");
        return;
    }
    let a = python_examples(&BuiltinRunner, 14, 3).unwrap();
    assert_eq!(
        a,
        python_examples(&BuiltinRunner, 14, 3).unwrap(),
        "same bits twice"
    );
    for e in &a {
        let m = &e.conversation.messages;
        let code = m[2].tool_calls[0].arguments["code"].as_str().unwrap();
        let result: Value = serde_json::from_str(&m[3].content).unwrap();
        assert_eq!(result["exit_code"], 0, "{code}: {result}");
        assert!(result.get("duration_s").is_none(), "{result}");
        let printed = result["stdout"].as_str().unwrap().trim();
        assert!(m[4].content.contains(printed));
        // A program we can check by hand: factorial.
        if let Some(n) = code
            .strip_prefix("import math\nprint(math.factorial(")
            .and_then(|r| r.strip_suffix("))"))
        {
            let n: u128 = n.parse().unwrap();
            assert_eq!(printed, (1..=n).product::<u128>().to_string());
        }
    }
}

/// An index of three glossary-like documents.
fn three_doc_index() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let docs = [
        (
            "ABEND",
            "ABEND\n\n[ABnormal END] Abnormal termination of software; a crash. Originally from a \
             message on the IBM 360 console, it came to mean any failure of a program.",
        ),
        (
            "Zero Wing",
            "all your base are belong to us\n\nA declaration of victory. The phrase stems from a 1991 \
             adaptation of the Zero Wing arcade game for the Sega Genesis console.",
        ),
        (
            "Tempest",
            "The Tempest\n\nProspero, the rightful Duke of Milan, lives on an island with his \
             daughter Miranda, where the spirit Ariel serves him for a promised freedom.",
        ),
    ];
    let passages = docs
        .iter()
        .flat_map(|(id, text)| passages_of("test", id, text, 480));
    build_index(dir.path(), passages, &|| false)
        .unwrap()
        .unwrap();
    dir
}

#[test]
fn search_conversations_answer_from_the_top_result() {
    let dir = three_doc_index();
    let a = search_examples(&BuiltinRunner, dir.path(), 3, 7).unwrap();
    assert_eq!(a.len(), 3);
    assert_eq!(
        a,
        search_examples(&BuiltinRunner, dir.path(), 3, 7).unwrap()
    );
    for e in &a {
        let m = &e.conversation.messages;
        assert_eq!(m[2].tool_calls[0].name, "search");
        let result: Value = serde_json::from_str(&m[3].content).unwrap();
        assert_eq!(result["backend"], "offline");
        let top = result["results"][0]["title"].as_str().unwrap();
        assert!(m[4].content.contains(top), "{} / {top}", m[4].content);
        assert!(result["results"].as_array().unwrap().len() <= 2);
    }
}

#[test]
fn browser_conversations_read_what_chromium_rendered() {
    if !std::path::Path::new(tardbot_tools::browser::DEFAULT_CHROMIUM).exists() {
        eprintln!("SKIPPED: no Chromium (apt-get install -y chromium)");
        return;
    }
    let dir = three_doc_index();
    let a = browser_examples(&BuiltinRunner, dir.path(), 3, 5).unwrap();
    assert_eq!(a.len(), 3);
    // Another server, another port, another browser: the same bits.
    assert_eq!(
        a,
        browser_examples(&BuiltinRunner, dir.path(), 3, 5).unwrap()
    );
    let mut followed = 0;
    for e in &a {
        let m = &e.conversation.messages;
        let args = &m[2].tool_calls[0].arguments;
        followed += usize::from(args["action"] == "click");
        let result: Value = serde_json::from_str(&m[3].content).unwrap();
        // The final URL is the page's, written under SITE.
        let url = result["url"].as_str().unwrap();
        assert!(url.starts_with(&format!("{SITE}/page/")), "{result}");
        let title = result["title"].as_str().unwrap();
        assert!(
            ["ABEND", "all your base are belong to us", "The Tempest"].contains(&title),
            "{result}"
        );
        let text = result["text"].as_str().unwrap();
        assert!(!text.contains('<'), "rendered text, not HTML: {text}");
        assert!(
            m[4].content
                .starts_with(&format!("The page \"{title}\" says: ")),
            "{}",
            m[4].content
        );
    }
    eprintln!("{followed} of 3 followed a link");
}
