//! The `python` tool's sandbox. Each test names the flag or limit it checks and fails if that
//! protection is removed. Where bubblewrap cannot build a sandbox here they print why and skip (the
//! refusal test runs everywhere). CI runs them as root (the code then runs as uid 65534);
//! `whole_tool_runs_from_a_non_root_process` drives the tool from an unprivileged process too.

use serde_json::{Map, Value, json};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tardbot_tools::python::{PythonTool, SandboxConfig};
use tardbot_tools::{Tool, ToolError};

/// The sandboxes run one at a time: `RLIMIT_NPROC` counts every process of the sandbox uid, so a
/// fork bomb in one test would starve another running beside it.
static SERIAL: Mutex<()> = Mutex::new(());

pub(crate) fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Set (to anything) to make a missing sandbox a failure instead of a skip.
const REQUIRE_VAR: &str = "TARDBOT_REQUIRE_SANDBOX";

/// The tool with `cfg`, or None (printed) where no sandbox can be built here (a failure when
/// [`REQUIRE_VAR`] is set).
fn sandbox(cfg: SandboxConfig) -> Option<PythonTool> {
    let tool = PythonTool::new(cfg);
    match tool.check_sandbox() {
        Ok(()) => Some(tool),
        Err(why) => {
            assert!(
                std::env::var_os(REQUIRE_VAR).is_none(),
                "{REQUIRE_VAR} is set and there is no sandbox: {why}"
            );
            eprintln!("SKIPPED: no sandbox here: {why}");
            None
        }
    }
}

fn run(tool: &PythonTool, code: &str) -> Value {
    let mut args = Map::new();
    args.insert("code".into(), json!(code));
    let v = tool.call(&args).expect("python call");
    eprintln!("{}", truncate(&v.to_string(), 2000));
    v
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn stdout(v: &Value) -> &str {
    v["stdout"].as_str().expect("stdout")
}

fn unique(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("tardbot{tag}{}x{nanos}", std::process::id())
}

/// Host processes whose command line contains `marker` (not ours).
fn processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) || name == std::process::id().to_string() {
            continue;
        }
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline"))
            && String::from_utf8_lossy(&cmd).contains(marker)
        {
            found.push(format!("pid {name}"));
        }
    }
    found
}

/// Polls (a killed process takes a moment to go) until no process carries `marker`, for 3 s.
fn assert_no_process_with(marker: &str) {
    let until = Instant::now() + Duration::from_secs(3);
    loop {
        let left = processes_with(marker);
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < until, "processes left behind: {left:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

// --- a child process running the tool (another uid, another environment) --------------------

const HELPER_CODE_VAR: &str = "TARDBOT_PY_HELPER_CODE";

/// Not a test of its own: the entry point of the child processes other tests start (the test binary
/// run with `--ignored --exact python::helper_entry`). Does nothing without its code variable.
#[test]
#[ignore = "run in a child process by other tests"]
fn helper_entry() {
    let Ok(code) = std::env::var(HELPER_CODE_VAR) else {
        return;
    };
    let tool = PythonTool::default();
    match tool.check_sandbox() {
        Ok(()) => println!("HELPER_RESULT:{}", run(&tool, &code)),
        Err(why) => println!("HELPER_UNAVAILABLE:{why}"),
    }
}

/// Runs `code` through the tool in a child process (`prefix` before the test binary, e.g.
/// `setpriv …`; `env` added to the inherited environment). None (printed) when the child had no
/// sandbox.
fn run_in_helper(exe: &Path, prefix: &[&str], env: &[(&str, &str)], code: &str) -> Option<Value> {
    let (program, pre) = match prefix.split_first() {
        Some((p, rest)) => (PathBuf::from(p), rest.to_vec()),
        None => (exe.to_path_buf(), Vec::new()),
    };
    let mut cmd = Command::new(program);
    cmd.args(pre);
    if !prefix.is_empty() {
        cmd.arg(exe);
    }
    cmd.args([
        "python::helper_entry",
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .current_dir("/")
    .env(HELPER_CODE_VAR, code);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("start the helper");
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines() {
        // The harness writes "test python::helper_entry ... " before the line.
        if let Some((_, j)) = line.split_once("HELPER_RESULT:") {
            return Some(serde_json::from_str(j).expect("helper JSON"));
        }
        if let Some((_, why)) = line.split_once("HELPER_UNAVAILABLE:") {
            assert!(
                std::env::var_os(REQUIRE_VAR).is_none(),
                "{REQUIRE_VAR} is set and the helper has no sandbox: {why}"
            );
            eprintln!("SKIPPED: no sandbox in the helper: {why}");
            return None;
        }
    }
    panic!(
        "helper gave no result (status {}):\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

// --- the protections -------------------------------------------------------------------------

/// `--unshare-all` (its network namespace): a listener on the host's 127.0.0.1 is unreachable.
#[test]
fn network_is_unreachable() {
    let _g = serial();
    let Some(tool) = sandbox(SandboxConfig::default()) else {
        return;
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let v = run(
        &tool,
        &format!(
            "import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=3)\n    \
             print('CONNECTED')\nexcept OSError as e:\n    print('FAILED', e)\n"
        ),
    );
    assert!(stdout(&v).starts_with("FAILED"), "{v}");
    listener.set_nonblocking(true).unwrap();
    assert_eq!(
        listener.accept().map(|_| ()).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "the listener was reached"
    );
}

/// Only /usr, the /lib* links and a few /etc files are mounted: /etc/shadow, a world-readable
/// secret in the host's /tmp and the project's own files (where the ledger lives) are absent.
/// (/etc/shadow would also be unreadable to uid 65534: `runs_as_an_unprivileged_uid` checks that.)
#[test]
fn host_files_are_not_readable() {
    let _g = serial();
    let Some(tool) = sandbox(SandboxConfig::default()) else {
        return;
    };
    let dir = tempfile::Builder::new()
        .prefix("tardbot-secret-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let secret = dir.path().join("secret.txt");
    let word = unique("secret");
    std::fs::File::create(&secret)
        .unwrap()
        .write_all(word.as_bytes())
        .unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let project = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    assert!(project.exists());
    let v = run(
        &tool,
        &format!(
            "for p in ['/etc/shadow', {:?}, {:?}]:\n    try:\n        open(p).read()\n        \
             print('READ', p)\n    except OSError as e:\n        print(type(e).__name__, p)\n",
            secret.display().to_string(),
            project.display().to_string()
        ),
    );
    let out = stdout(&v);
    assert!(!out.contains("READ"), "{v}");
    assert!(!out.contains(&word));
    assert_eq!(out.matches("FileNotFoundError").count(), 3, "{v}");
}

/// `env_clear` on bwrap itself and `--clearenv`: a unique variable of the process that runs the
/// tool is neither in `os.environ` nor in any `/proc/*/environ` the code can read (bwrap's pid 1 in
/// the sandbox would show bwrap's own environment); and `/proc` shows no host process.
#[test]
fn host_environment_is_not_visible() {
    let _g = serial();
    if sandbox(SandboxConfig::default()).is_none() {
        return;
    }
    let name = unique("ENV");
    let value = unique("value");
    let code = format!(
        "import os, glob\n\
         name, value = {name:?}, {value:?}\n\
         print('in os.environ' if name in os.environ else 'not in os.environ')\n\
         print('env keys', sorted(os.environ))\n\
         pids = [p for p in os.listdir('/proc') if p.isdigit()]\n\
         print('pids', len(pids))\n\
         for f in glob.glob('/proc/*/environ'):\n    \
             try:\n        data = open(f, 'rb').read()\n    except OSError:\n        continue\n    \
             if value.encode() in data or name.encode() in data:\n        print('LEAK', f)\n"
    );
    let exe = std::env::current_exe().unwrap();
    let Some(v) = run_in_helper(&exe, &[], &[(&name, &value)], &code) else {
        return;
    };
    let out = stdout(&v);
    assert!(out.contains("not in os.environ"), "{v}");
    assert!(!out.contains("LEAK"), "{v}");
    assert!(
        out.contains("env keys ['HOME', 'LANG', 'PATH', 'PWD', 'TMPDIR']"),
        "{v}"
    );
    // bwrap's init and Python: nothing else (a shared pid namespace would show hundreds).
    let pids: usize = out
        .lines()
        .find_map(|l| l.strip_prefix("pids "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(pids <= 3, "{v}");
}

/// `--ro-bind /usr`, `--remount-ro /` (and /etc not mounted): writing to /usr, /, /etc or /root
/// fails; the working directory (a tmpfs) and /tmp are writable, and nothing reaches the host.
#[test]
fn writes_succeed_only_in_the_work_dir() {
    let _g = serial();
    let Some(tool) = sandbox(SandboxConfig::default()) else {
        return;
    };
    let name = unique("write");
    let v = run(
        &tool,
        &format!(
            "import os\nprint('cwd', os.getcwd())\n\
             for d in ['/usr', '/usr/bin', '/', '/etc', '/root', '/proc/sys/kernel']:\n    \
             p = os.path.join(d, {name:?})\n    try:\n        open(p, 'w').write('x')\n        \
             print('WROTE', p)\n    except OSError as e:\n        print('refused', p, e)\n\
             open('here.txt', 'w').write('inside')\nprint('read back', open('/work/here.txt').read())\n\
             open('/tmp/t', 'w').write('t')\nprint('tmp ok')\n"
        ),
    );
    let out = stdout(&v);
    assert!(!out.contains("WROTE"), "{v}");
    assert_eq!(out.matches("refused").count(), 6, "{v}");
    assert!(out.contains("cwd /work"), "{v}");
    assert!(out.contains("read back inside"), "{v}");
    assert!(out.contains("tmp ok"), "{v}");
    for d in ["/usr", "/usr/bin", "/", "/etc", "/root"] {
        assert!(!Path::new(d).join(&name).exists());
    }
}

/// `RLIMIT_AS`: a 4 GiB allocation fails with MemoryError (bytes(n) is calloc'd, so without the
/// limit it would succeed without touching memory and print "allocated").
#[test]
fn memory_bomb_ends_at_the_limit() {
    let _g = serial();
    let Some(tool) = sandbox(SandboxConfig::default()) else {
        return;
    };
    let v = run(
        &tool,
        "b = bytes(4 * 1024**3)\nprint('allocated', len(b))\n",
    );
    assert!(!stdout(&v).contains("allocated"), "{v}");
    assert!(v["stderr"].as_str().unwrap().contains("MemoryError"), "{v}");
    assert_eq!(v["exit_code"], json!(1));
    assert_eq!(v["timed_out"], json!(false));
}

/// `RLIMIT_NPROC` (with the uid switch: it counts per uid): forking stops with EAGAIN within the
/// budget; the pid namespace kills the sleeping children when Python exits, so none is left.
#[test]
fn fork_bomb_is_contained() {
    let _g = serial();
    let cfg = SandboxConfig {
        max_processes: 16,
        ..SandboxConfig::default()
    };
    let Some(tool) = sandbox(cfg) else {
        return;
    };
    let marker = unique("forkbomb");
    let start = Instant::now();
    let v = run(
        &tool,
        &format!(
            "# {marker}\nimport os, time\nn, err = 0, None\ntry:\n    while n < 300:\n        \
             if os.fork() == 0:\n            time.sleep(60)\n            os._exit(0)\n        \
             n += 1\nexcept OSError as e:\n    err = e\nprint('forks', n, type(err).__name__)\n"
        ),
    );
    assert!(start.elapsed() < Duration::from_secs(8), "{v}");
    let out = stdout(&v);
    assert!(out.contains("BlockingIOError"), "{v}");
    let n: u32 = out
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(n < 16, "{v}");
    assert_no_process_with(&marker);
}

/// The wall-clock timeout kills the process group (and with it the pid namespace): an endless loop
/// and the child it forked are gone when the call returns.
#[test]
fn endless_loop_is_killed_at_the_timeout_with_nothing_left() {
    let _g = serial();
    let cfg = SandboxConfig {
        timeout: Duration::from_secs(2),
        ..SandboxConfig::default()
    };
    let Some(tool) = sandbox(cfg) else {
        return;
    };
    let marker = unique("loop");
    let v = run(
        &tool,
        &format!(
            "# {marker}\nimport os\nos.fork()\nprint('looping', flush=True)\nwhile True:\n    pass\n"
        ),
    );
    assert_eq!(v["timed_out"], json!(true), "{v}");
    assert_eq!(v["killed"], json!(true));
    assert_eq!(v["exit_code"], Value::Null);
    assert_eq!(v["signal"], json!(libc::SIGKILL));
    assert!(
        stdout(&v).contains("looping"),
        "output before the kill is kept: {v}"
    );
    let d = v["duration_s"].as_f64().unwrap();
    assert!((2.0..4.0).contains(&d), "{v}");
    assert_no_process_with(&marker);
}

/// `max_output_bytes`: 10 MB on each stream is cut at the cap, flagged, and read to the end fast.
#[test]
fn ten_megabytes_of_output_are_truncated() {
    let _g = serial();
    let Some(tool) = sandbox(SandboxConfig::default()) else {
        return;
    };
    let cap = tool.config().max_output_bytes;
    let v = run(
        &tool,
        "import sys\nfor _ in range(10):\n    sys.stdout.write('x' * 1_000_000)\n    \
         sys.stderr.write('y' * 1_000_000)\nprint('done', file=sys.stderr)\n",
    );
    assert_eq!(v["exit_code"], json!(0), "{v}");
    assert_eq!(v["stdout_truncated"], json!(true));
    assert_eq!(v["stderr_truncated"], json!(true));
    assert_eq!(stdout(&v).len(), cap);
    assert_eq!(v["stderr"].as_str().unwrap().len(), cap);
    assert!(v["duration_s"].as_f64().unwrap() < 5.0);
    let r = tool.run("print('x' * 10)").unwrap();
    assert!(!r.stdout_truncated);
    assert_eq!(r.stdout, "xxxxxxxxxx\n");
}

/// The uid switch before exec'ing bwrap (when we are root): the code runs as uid/gid 65534 with no
/// supplementary groups and cannot become root (so /etc/shadow, were it mounted, is unreadable).
/// Not root: it runs as our own uid, never 0.
#[test]
fn runs_as_an_unprivileged_uid() {
    let _g = serial();
    let Some(tool) = sandbox(SandboxConfig::default()) else {
        return;
    };
    let v = run(
        &tool,
        "import os\nprint(os.getuid(), os.geteuid(), os.getgid(), os.getgroups())\n\
         try:\n    os.setuid(0)\n    print('BECAME ROOT')\nexcept OSError as e:\n    \
         print('setuid refused')\n",
    );
    let out = stdout(&v);
    let expect = if is_root() {
        "65534 65534 65534 []".to_string()
    } else {
        let (u, g) = unsafe { (libc::getuid(), libc::getgid()) };
        format!("{u} {u} {g} ")
    };
    assert!(out.starts_with(&expect), "{v}");
    assert!(out.contains("setuid refused"), "{v}");
}

/// The whole tool started by an unprivileged process (uid 65534 via `setpriv`): the sandbox still
/// forms, with no network and no host environment.
#[test]
fn whole_tool_runs_from_a_non_root_process() {
    let _g = serial();
    if !is_root() {
        eprintln!("SKIPPED: not root, so every other test here already runs the tool unprivileged");
        return;
    }
    let Some(setpriv) = ["/usr/bin/setpriv", "/bin/setpriv"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        eprintln!("SKIPPED: no setpriv to start the tool as another uid");
        return;
    };
    if sandbox(SandboxConfig::default()).is_none() {
        return;
    }
    // The test binary may sit under /root (CI's target dir): give uid 65534 a copy it can run.
    let dir = tempfile::Builder::new()
        .prefix("tardbot-helper-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = dir.path().join("it");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let code = format!(
        "import os, socket\nprint('uid', os.getuid())\nprint('keys', sorted(os.environ))\n\
         try:\n    socket.create_connection(('127.0.0.1', {port}), timeout=3)\n    print('CONNECTED')\n\
         except OSError:\n    print('no network')\n\
         try:\n    open('/usr/x', 'w')\n    print('WROTE')\nexcept OSError:\n    print('ro')\n"
    );
    let prefix = [
        setpriv,
        "--reuid",
        "65534",
        "--regid",
        "65534",
        "--clear-groups",
    ];
    let Some(v) = run_in_helper(&exe, &prefix, &[], &code) else {
        return;
    };
    let out = stdout(&v);
    assert!(out.contains("uid 65534"), "{v}");
    assert!(
        out.contains("keys ['HOME', 'LANG', 'PATH', 'PWD', 'TMPDIR']"),
        "{v}"
    );
    assert!(out.contains("no network") && out.contains("ro"), "{v}");
    assert!(!out.contains("CONNECTED") && !out.contains("WROTE"), "{v}");
}

/// Exit status, exceptions and signals come back as stated.
#[test]
fn results_report_exit_status_and_signals() {
    let _g = serial();
    let Some(tool) = sandbox(SandboxConfig::default()) else {
        return;
    };
    let v = run(&tool, "print(6 * 7)");
    assert_eq!(stdout(&v), "42\n");
    assert_eq!(v["exit_code"], json!(0));
    assert_eq!(v["killed"], json!(false));
    assert!(v.get("sandboxed").is_none());
    let v = run(&tool, "raise ValueError('boom')");
    assert_eq!(v["exit_code"], json!(1));
    assert!(v["stderr"].as_str().unwrap().contains("ValueError: boom"));
    let v = run(
        &tool,
        "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)",
    );
    assert_eq!(v["exit_code"], Value::Null, "{v}");
    assert_eq!(v["signal"], json!(libc::SIGKILL));
    assert_eq!(v["killed"], json!(true));
    assert_eq!(v["timed_out"], json!(false));
    let spec = tool.spec();
    assert_eq!(spec.name, "python");
    assert_eq!(spec.parameters["required"], json!(["code"]));
}

/// No sandbox (bwrap missing): the tool refuses, naming what to install; with `allow_unsandboxed`
/// it runs and says so.
#[test]
fn refuses_without_a_sandbox_unless_allowed() {
    let _g = serial();
    let cfg = SandboxConfig {
        bwrap: "/nonexistent/bwrap".into(),
        ..SandboxConfig::default()
    };
    let tool = PythonTool::new(cfg.clone());
    let mut args = Map::new();
    args.insert("code".into(), json!("print('ran')"));
    match tool.call(&args) {
        Err(ToolError::Unavailable(why)) => {
            assert!(why.contains("bubblewrap"), "{why}");
            assert!(why.contains("allow_unsandboxed"), "{why}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    if !Path::new(&cfg.python).exists() {
        eprintln!("SKIPPED (unsandboxed half): no {}", cfg.python.display());
        return;
    }
    let tool = PythonTool::new(SandboxConfig {
        allow_unsandboxed: true,
        ..cfg
    });
    let v = tool.call(&args).expect("unsandboxed run");
    assert_eq!(stdout(&v), "ran\n");
    assert_eq!(v["sandboxed"], json!(false));
    let v = run(&tool, "import os\nprint(sorted(os.environ), os.getuid())");
    let expect_uid = if is_root() {
        65534
    } else {
        unsafe { libc::getuid() }
    };
    assert!(
        stdout(&v).starts_with(&format!("['HOME', 'LANG', 'PATH', 'TMPDIR'] {expect_uid}")),
        "{v}"
    );
}
