//! The official `openai` Python client (PyPI) against the server: `tests/interop/check_openai.py`.
//! Skipped with a message where that Python (the interop environment of `tests/interop/setup.sh`,
//! or `$TARDBOT_INTEROP_PYTHON`) has no `openai` package.

use crate::fixture::*;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::Command;

fn python_with_openai() -> Option<PathBuf> {
    let candidate = std::env::var_os("TARDBOT_INTEROP_PYTHON")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".cache/tardbot/interop-venv/bin/python"))
        })?;
    let ok = Command::new(&candidate)
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!(
            "SKIPPED: {} cannot import openai (run tests/interop/setup.sh, or set TARDBOT_INTEROP_PYTHON)",
            candidate.display()
        );
    }
    ok.then_some(candidate)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_client_chats_streams_and_calls_tools() {
    let Some(python) = python_with_openai() else {
        return;
    };
    let s = Server::default().await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/interop/check_openai.py");
    let base = s.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .args([base.as_str(), MODEL_ID])
            .output()
            .expect("run python")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "check_openai.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON from check_openai.py");
    assert_eq!(v["models"], json!([MODEL_ID]));
    assert_eq!(v["plain"]["content"], HELLO_ANSWER);
    assert_eq!(v["plain"]["finish"], "stop");
    let pieces: Vec<&str> = v["stream"]["pieces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(pieces.len() > 2, "{pieces:?}");
    assert_eq!(pieces.concat(), HELLO_ANSWER);
    assert_eq!(v["stream"]["finish"], "stop");
    assert_eq!(
        v["stream"]["completion_tokens"],
        v["plain"]["completion_tokens"]
    );
    assert_eq!(v["tools"]["finish"], "tool_calls");
    assert_eq!(v["tools"]["calls"][0]["name"], "get_weather");
    assert_eq!(
        v["tools"]["calls"][0]["arguments"],
        json!({"city": "Paris"})
    );
    assert_eq!(v["follow_up"]["content"], WEATHER_ANSWER);
    assert_eq!(v["follow_up"]["finish"], "stop");
}
