//! The chat page in headless Chromium, driven over the DevTools protocol (`--remote-debugging-pipe`:
//! JSON messages on file descriptors 3 and 4): the message is typed into the box and sent with
//! Enter as a user would, then the page must show the streamed reply and the server-run tool call.
//! Skipped with a message where Chromium is absent.

use crate::fixture::*;
use serde_json::{Value, json};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tardbot_tools::browser::cdp::{Cdp, pipe, raw};

const CHROMIUM: &str = "/usr/bin/chromium";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chat_page_streams_a_reply_and_shows_the_tool_call() {
    if !Path::new(CHROMIUM).exists() {
        eprintln!(
            "SKIPPED: {CHROMIUM} is not installed (apt-get install -y chromium); the chat page was not opened"
        );
        return;
    }
    let s = Server::default().await;
    let url = format!("{}/", s.base);
    let log = tokio::task::spawn_blocking(move || chat_in_browser(&url, SIX_TIMES_SEVEN))
        .await
        .unwrap();
    assert!(
        log.model.contains(MODEL_ID),
        "model name shown: {}",
        log.model
    );
    let html = &log.html;
    assert!(
        html.contains(&format!("<div class=\"msg user\">{SIX_TIMES_SEVEN}</div>")),
        "the typed message is not shown:\n{html}"
    );
    assert!(
        html.contains("data-tool=\"calculator\"") && html.contains("tool call: calculator"),
        "the tool call is not rendered:\n{html}"
    );
    assert!(
        html.contains(&format!(
            "<div class=\"msg assistant\">{SIX_TIMES_SEVEN_ANSWER}</div>"
        )),
        "the reply is not rendered:\n{html}"
    );
    // The tool call comes before the answer it led to.
    assert!(html.find("data-tool").unwrap() < html.find(SIX_TIMES_SEVEN_ANSWER).unwrap());
}

struct PageLog {
    model: String,
    html: String,
}

/// A DevTools session over Chromium's pipe (the tools crate's client, [`Cdp`]).
struct Devtools {
    child: Child,
    cdp: Cdp,
    session: Option<String>,
    _profile: tempfile::TempDir,
}

impl Devtools {
    fn launch() -> Devtools {
        let profile = tempfile::tempdir().expect("profile");
        // fd 3: commands to the browser; fd 4: its answers.
        let (cmd_read, cmd_write) = pipe().expect("pipe");
        let (ans_read, ans_write) = pipe().expect("pipe");
        let (r3, w4) = (raw(&cmd_read), raw(&ans_write));
        let mut command = Command::new(CHROMIUM);
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: only async-signal-safe calls (dup2) between fork and exec.
        unsafe {
            command.pre_exec(move || {
                if libc::dup2(r3, 3) < 0 || libc::dup2(w4, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("start chromium");
        drop((cmd_read, ans_write));
        Devtools {
            child,
            cdp: Cdp::new(cmd_write, ans_read),
            session: None,
            _profile: profile,
        }
    }

    /// Sends a command (to the attached page once there is one) and waits for its result.
    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self
            .cdp
            .send(method, params, self.session.as_deref())
            .expect("write to chromium");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v = self
                .cdp
                .recv(deadline)
                .unwrap_or_else(|e| panic!("chromium did not answer {method}: {e}"));
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
        );
        r["result"]["value"].clone()
    }

    /// Evaluates `expression` until it is truthy.
    fn wait_for(&mut self, expression: &str, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.eval(expression) != json!(true) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Devtools {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Opens the page, types `message` into the box, presses Enter, waits for the answer to finish.
fn chat_in_browser(url: &str, message: &str) -> PageLog {
    let mut dt = Devtools::launch();
    let target = dt.call("Target.createTarget", json!({"url": url}));
    let attached = dt.call(
        "Target.attachToTarget",
        json!({"targetId": target["targetId"], "flatten": true}),
    );
    dt.session = attached["sessionId"].as_str().map(str::to_string);
    dt.wait_for(
        "document.getElementById('model') !== null && document.getElementById('model').textContent.includes('/')",
        "the model name",
    );
    let model = dt.eval("document.getElementById('model').textContent");
    dt.eval("document.getElementById('input').focus()");
    dt.call("Input.insertText", json!({"text": message}));
    for kind in ["keyDown", "keyUp"] {
        dt.call(
            "Input.dispatchKeyEvent",
            json!({"type": kind, "key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13}),
        );
    }
    dt.wait_for(
        "document.querySelector('#log .meta') !== null",
        "the answer to finish",
    );
    let html = dt.eval("document.getElementById('log').innerHTML");
    PageLog {
        model: model.as_str().unwrap_or_default().to_string(),
        html: html.as_str().unwrap_or_default().to_string(),
    }
}
