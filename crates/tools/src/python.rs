//! `python`: runs model-written Python in a sandboxed child process, never in ours.
//!
//! # How
//!
//! The code runs as `python3 -I -u -c CODE` under bubblewrap (`bwrap`, Debian's `bubblewrap`), which
//! builds the sandbox from Linux namespaces without needing root. Our child (the outer `bwrap`) is
//! started with an empty environment, stdin closed, in a new session (its own process group), with
//! the rlimits of [`SandboxConfig`] set before exec and, when we run as root, after switching to the
//! configured unprivileged uid/gid (default 65534, `nobody`; supplementary groups dropped) with
//! `SIGKILL` as parent-death signal. bwrap then runs Python with `--unshare-all` (new user, network,
//! pid, ipc, uts, mount and cgroup namespaces), `--die-with-parent`, `--new-session`, a read-only view
//! of `/usr` (and the `/bin`, `/lib*`, `/sbin` links or directories), a handful of `/etc` files the
//! loader and Python read, a fresh procfs of its own pid namespace, a minimal `/dev`, size-bounded
//! empty tmpfs at `/work` (the working directory, `HOME`) and `/tmp`, the root remounted read-only,
//! and only `PATH`, `HOME`, `LANG`, `TMPDIR` in the environment.
//!
//! # What it protects
//!
//! - **Network**: none. The sandbox has its own network namespace with only a loopback interface that
//!   is down; nothing on the host (127.0.0.1 included) or beyond can be reached.
//! - **Files**: nothing of the host is visible except `/usr`, the `/bin`/`/lib*`/`/sbin` links, the
//!   listed `/etc` files and [`SandboxConfig::extra_ro_binds`], all read-only. The project, its run
//!   directories and ledger, `/root`, `/home`, the host's `/tmp` and `/etc/shadow` (not mounted; and
//!   unreadable to the sandbox's uid anyway) are absent. Writes succeed only in `/work` and `/tmp`,
//!   which are private tmpfs (bounded by [`SandboxConfig::work_dir_bytes`]) and vanish with the run.
//! - **Host environment**: the sandbox sees only the four variables above. Our own environment is not
//!   even passed to `bwrap` (its `/proc/1/environ` inside the sandbox would show it otherwise), and
//!   `/proc` is the sandbox's own pid namespace, so no host process (ours included) is visible.
//! - **Privileges**: when we are root the code runs as the unprivileged uid/gid, so it cannot read
//!   root-only files even if they were mounted, and `RLIMIT_NPROC` applies to it; inside its user
//!   namespace it holds no capability on the host.
//! - **Resources**: `RLIMIT_AS` (memory: allocations past it fail, Python raises `MemoryError`),
//!   `RLIMIT_CPU` (CPU seconds per process: `SIGXCPU`, then `SIGKILL`), `RLIMIT_NPROC` (processes and
//!   threads: a fork bomb gets `EAGAIN`), `RLIMIT_FSIZE` (largest file written), `RLIMIT_NOFILE`,
//!   `RLIMIT_CORE` 0 (no core dumps); a wall-clock timeout; output kept up to
//!   [`SandboxConfig::max_output_bytes`] per stream while the rest is drained and counted.
//! - **Leftovers**: at the timeout the whole process group is killed (`SIGKILL`); bwrap's children die
//!   with it (`--die-with-parent`), and when the sandbox's pid 1 dies the kernel kills every process of
//!   its pid namespace, so nothing the code started (daemons, `setsid` children) survives the call,
//!   whether it ended normally or was killed. Nothing is written to the host's disk.
//!
//! # What it does not protect
//!
//! - **Kernel bugs**: the sandbox shares the host kernel; an exploit of a kernel (or user-namespace)
//!   vulnerability escapes it. It is not a VM; seccomp is not used, so every syscall is reachable.
//! - **Side channels**: CPU/cache timing (Spectre-class), `/proc/cpuinfo`, `/proc/meminfo`, load and
//!   other world-readable kernel information in the sandbox's procfs are visible.
//! - **World-readable system files**: everything under `/usr` (and the listed `/etc` files) can be read.
//! - **Denial of service within the limits**: the code may use its CPU seconds, memory, processes and
//!   tmpfs space for the whole timeout; several concurrent calls multiply that. `RLIMIT_NPROC` counts
//!   per uid, so calls running at the same time as the same uid share one budget. tmpfs pages count as
//!   host memory (not against `RLIMIT_AS`).
//! - **Output content**: stdout/stderr are returned as the model wrote them (lossy UTF-8); whatever
//!   consumes them must treat them as untrusted.
//! - **Unsandboxed mode** ([`SandboxConfig::allow_unsandboxed`], only when bwrap is missing or cannot
//!   create namespaces): only the rlimits, the uid switch (as root), `no_new_privs`, the clean
//!   environment, stdin closed, a fresh working directory and the process-group kill remain. The code
//!   can then use the network, read every file its uid can read, see host processes in `/proc`, and a
//!   child that leaves the process group (`setsid`) can survive the call. The result says
//!   `"sandboxed": false`.
//!
//! The exit status of Python killed by a signal inside the sandbox reaches us through bwrap as
//! `128 + signal` (the shell's convention); the result reports such statuses (129–192) as that signal.

use crate::tool::{Tool, ToolError};
use serde_json::{Map, Value, json};
use std::ffi::OsString;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};
use tardbot_toolcall::ToolSpec;

/// Longest code accepted (it travels as one argument; Linux caps one at 128 KiB).
pub const MAX_CODE_BYTES: usize = 100_000;

/// Where the working directory is inside the sandbox.
pub const SANDBOX_WORK_DIR: &str = "/work";

const MIB: u64 = 1024 * 1024;

/// The sandbox's limits and setup. See the module documentation for what it protects.
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    /// The interpreter. It must be visible inside the sandbox: under `/usr` (the default
    /// `/usr/bin/python3`) or under one of [`SandboxConfig::extra_ro_binds`].
    pub python: PathBuf,
    /// bubblewrap.
    pub bwrap: PathBuf,
    /// Wall-clock limit of one run; then the process group is killed.
    pub timeout: Duration,
    /// `RLIMIT_CPU` (soft; the hard limit, `SIGKILL`, is one second more).
    pub cpu_seconds: u64,
    /// `RLIMIT_AS`, bytes.
    pub address_space_bytes: u64,
    /// Processes and threads the run may have at once (`RLIMIT_NPROC`). The rlimit counts every task
    /// of the uid, so it is set to the uid's current task count plus this.
    pub max_processes: u64,
    /// `RLIMIT_FSIZE`, bytes.
    pub file_size_bytes: u64,
    /// `RLIMIT_NOFILE`.
    pub open_files: u64,
    /// Size of each of the sandbox's tmpfs (`/work`, `/tmp`).
    pub work_dir_bytes: u64,
    /// Bytes of stdout and of stderr kept; the rest is read and counted, not kept.
    pub max_output_bytes: usize,
    /// The uid/gid the code runs as when we are root (default 65534, `nobody`).
    pub uid: u32,
    pub gid: u32,
    /// More host paths to show read-only at the same place (e.g. an interpreter outside `/usr`).
    pub extra_ro_binds: Vec<PathBuf>,
    /// Run without the sandbox where bwrap is missing or cannot create namespaces (rlimits, clean
    /// environment and uid switch only: see the module documentation). Default false: refuse.
    pub allow_unsandboxed: bool,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            python: PathBuf::from("/usr/bin/python3"),
            bwrap: PathBuf::from("/usr/bin/bwrap"),
            timeout: Duration::from_secs(10),
            cpu_seconds: 10,
            address_space_bytes: 512 * MIB,
            max_processes: 64,
            file_size_bytes: 16 * MIB,
            open_files: 64,
            work_dir_bytes: 64 * MIB,
            max_output_bytes: 64 * 1024,
            uid: 65534,
            gid: 65534,
            extra_ro_binds: Vec::new(),
            allow_unsandboxed: false,
        }
    }
}

/// One run's outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct RunResult {
    pub stdout: String,
    pub stderr: String,
    /// None when the process was killed by a signal.
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Killed at the wall-clock timeout.
    pub timed_out: bool,
    /// Ended by a signal (the timeout's, a limit's, or its own).
    pub killed: bool,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// Bytes written to each stream in total.
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    pub duration: Duration,
    pub sandboxed: bool,
}

impl RunResult {
    /// The tool's JSON result.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "stdout": self.stdout,
            "stderr": self.stderr,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "timed_out": self.timed_out,
            "killed": self.killed,
            "stdout_truncated": self.stdout_truncated,
            "stderr_truncated": self.stderr_truncated,
            "duration_s": (self.duration.as_secs_f64() * 1000.0).round() / 1000.0,
        });
        if !self.sandboxed {
            v["sandboxed"] = json!(false);
            v["note"] = json!(
                "ran WITHOUT the sandbox (allow_unsandboxed): rlimits and a clean environment only"
            );
        }
        v
    }
}

/// The `python` tool.
pub struct PythonTool {
    cfg: SandboxConfig,
    /// Set once the sandbox has been seen to work (a failed probe is tried again next call).
    probed: OnceLock<()>,
}

impl Default for PythonTool {
    fn default() -> Self {
        PythonTool::new(SandboxConfig::default())
    }
}

impl PythonTool {
    pub fn new(cfg: SandboxConfig) -> PythonTool {
        PythonTool {
            cfg,
            probed: OnceLock::new(),
        }
    }

    pub fn config(&self) -> &SandboxConfig {
        &self.cfg
    }

    /// Whether the sandbox works here (probed once: bwrap runs the interpreter); `Err` says why not
    /// and what to install or change.
    pub fn check_sandbox(&self) -> Result<(), String> {
        if self.probed.get().is_some() {
            return Ok(());
        }
        check_python(&self.cfg.python)?;
        if !is_executable(&self.cfg.bwrap) {
            return Err(format!(
                "bubblewrap not found at {} (Debian/Ubuntu: apt-get install bubblewrap; or set \
                 SandboxConfig::bwrap)",
                self.cfg.bwrap.display()
            ));
        }
        let probe = self
            .spawn_and_wait("print('sandbox-ok')", true, Duration::from_secs(20))
            .map_err(|e| format!("bubblewrap at {}: {e}", self.cfg.bwrap.display()))?;
        if probe.exit_code != Some(0) || probe.stdout.trim() != "sandbox-ok" {
            return Err(format!(
                "bubblewrap at {} could not run {} in a sandbox (exit {:?}, signal {:?}): {}. It needs \
                 unprivileged user namespaces (sysctl user.max_user_namespaces > 0; on Ubuntu also \
                 kernel.apparmor_restrict_unprivileged_userns=0) and the interpreter under /usr or \
                 SandboxConfig::extra_ro_binds",
                self.cfg.bwrap.display(),
                self.cfg.python.display(),
                probe.exit_code,
                probe.signal,
                probe.stderr.trim()
            ));
        }
        let _ = self.probed.set(());
        Ok(())
    }

    /// Runs `code`: in the sandbox, or (where it is unavailable and the config allows it) without.
    pub fn run(&self, code: &str) -> Result<RunResult, ToolError> {
        if code.len() > MAX_CODE_BYTES {
            return Err(ToolError::Failed(format!(
                "code is {} bytes; the limit is {MAX_CODE_BYTES}",
                code.len()
            )));
        }
        if code.contains('\0') {
            return Err(ToolError::Failed("code contains a NUL byte".into()));
        }
        let sandboxed = match self.check_sandbox() {
            Ok(()) => true,
            Err(why) if !self.cfg.allow_unsandboxed => {
                return Err(ToolError::Unavailable(format!(
                    "python refuses to run without a sandbox: {why}. To run unsandboxed anyway \
                     (rlimits and a clean environment only), set allow_unsandboxed"
                )));
            }
            Err(_) => {
                check_python(&self.cfg.python).map_err(ToolError::Unavailable)?;
                false
            }
        };
        self.spawn_and_wait(code, sandboxed, self.cfg.timeout)
            .map_err(|e| ToolError::Failed(format!("could not run python: {e}")))
    }

    fn spawn_and_wait(
        &self,
        code: &str,
        sandboxed: bool,
        timeout: Duration,
    ) -> std::io::Result<RunResult> {
        let cfg = &self.cfg;
        let root = unsafe { libc::geteuid() } == 0;
        let run_uid = if root {
            cfg.uid
        } else {
            unsafe { libc::getuid() }
        };
        let limits = Limits {
            cpu: cfg.cpu_seconds,
            address_space: cfg.address_space_bytes,
            nproc: tasks_of_uid(run_uid) + cfg.max_processes,
            fsize: cfg.file_size_bytes,
            nofile: cfg.open_files,
            drop_to: root.then_some((cfg.uid, cfg.gid)),
            no_new_privs: !sandboxed,
        };

        // Unsandboxed: a fresh host directory (kept until the run is over, then removed).
        let work_dir = if sandboxed {
            None
        } else {
            let dir = tempfile::Builder::new()
                .prefix("tardbot-python-")
                .tempdir()?;
            if root {
                std::os::unix::fs::chown(dir.path(), Some(cfg.uid), Some(cfg.gid))?;
            }
            Some(dir)
        };

        let mut cmd = if sandboxed {
            let mut c = Command::new(&cfg.bwrap);
            c.args(bwrap_args(cfg));
            c.arg("--").arg(&cfg.python).args(["-I", "-u", "-c", code]);
            c.current_dir("/");
            c
        } else {
            let dir = work_dir.as_ref().expect("unsandboxed work dir").path();
            let mut c = Command::new(&cfg.python);
            c.args(["-I", "-u", "-c", code]);
            c.current_dir(dir);
            c
        };
        // Nothing of our environment reaches the child (not even bwrap: the sandbox could read its
        // /proc/1/environ).
        cmd.env_clear();
        let home: OsString = match &work_dir {
            Some(d) => d.path().as_os_str().to_owned(),
            None => SANDBOX_WORK_DIR.into(),
        };
        cmd.env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", &home)
            .env("TMPDIR", &home)
            .env("LANG", "C.UTF-8");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: the hook only makes async-signal-safe syscalls on values computed before the fork.
        unsafe {
            cmd.pre_exec(move || limits.apply());
        }

        let start = Instant::now();
        let mut child = cmd.spawn()?;
        let pgid = child.id() as libc::pid_t;
        let cap = cfg.max_output_bytes;
        let out = Capture::start(child.stdout.take().expect("piped stdout"), cap);
        let err = Capture::start(child.stderr.take().expect("piped stderr"), cap);

        let timed_out = wait_until_exit(&child, start + timeout, pgid);
        // The leader is exited but not reaped (its pid, hence the group id, cannot be reused yet):
        // kill whatever else is left in its group, then reap it.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let status = reap(&mut child)?;
        let duration = start.elapsed();

        // Once every process holding the pipes is gone the readers see EOF. In the sandbox that is
        // at once (its pid namespace dies with it); unsandboxed, an escaped child could hold them.
        let grace = Instant::now() + Duration::from_secs(2);
        let (stdout, stdout_bytes, stdout_truncated) = out.finish(grace);
        let (stderr, stderr_bytes, stderr_truncated) = err.finish(grace);
        if let Some(dir) = work_dir {
            make_removable(dir.path());
            drop(dir);
        }

        let (mut exit_code, mut signal) = (status.code(), status.signal());
        if sandboxed
            && let Some(c) = exit_code
            && (129..=192).contains(&c)
        {
            exit_code = None;
            signal = Some(c - 128);
        }
        Ok(RunResult {
            stdout,
            stderr,
            exit_code,
            signal,
            timed_out,
            killed: signal.is_some(),
            stdout_truncated,
            stderr_truncated,
            stdout_bytes,
            stderr_bytes,
            duration,
            sandboxed,
        })
    }
}

impl Tool for PythonTool {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "python".into(),
            description: format!(
                "Run a Python 3 program in a sandbox and return what it printed. No network, no \
                 input; only {SANDBOX_WORK_DIR} and /tmp are writable and start empty; standard \
                 library and the system Python's packages only; {} s wall-clock, {} MiB of memory. Print the results you need.",
                self.cfg.timeout.as_secs_f64(),
                self.cfg.address_space_bytes / MIB
            ),
            parameters: json!({
                "type": "dict",
                "properties": {
                    "code": {
                        "type": "string",
                        "description": "The complete program, run as a script; use print() for output."
                    }
                },
                "required": ["code"]
            }),
        }
    }

    fn time_limit(&self) -> Option<std::time::Duration> {
        Some(self.cfg.timeout)
    }

    fn call(&self, arguments: &Map<String, Value>) -> Result<Value, ToolError> {
        let code = arguments
            .get("code")
            .and_then(Value::as_str)
            .ok_or_else(|| ToolError::Failed("argument `code` (a string) is required".into()))?;
        Ok(self.run(code)?.to_json())
    }
}

/// bwrap's options (everything before `--`).
fn bwrap_args(cfg: &SandboxConfig) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |xs: &[&str]| a.extend(xs.iter().map(OsString::from));
    push(&["--unshare-all", "--die-with-parent", "--new-session"]);
    push(&["--ro-bind", "/usr", "/usr"]);
    for dir in ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"] {
        let p = Path::new(dir);
        match std::fs::symlink_metadata(p) {
            Ok(m) if m.file_type().is_symlink() => {
                if let Ok(target) = std::fs::read_link(p) {
                    a.push("--symlink".into());
                    a.push(target.into_os_string());
                    a.push(dir.into());
                }
            }
            Ok(m) if m.is_dir() => {
                a.extend(["--ro-bind", dir, dir].map(OsString::from));
            }
            _ => {}
        }
    }
    // What the loader and Debian's Python read from /etc; nothing else of /etc (no passwd, shadow,
    // host names, credentials).
    let mut etc: Vec<PathBuf> = [
        "/etc/ld.so.cache",
        "/etc/ld.so.conf",
        "/etc/ld.so.conf.d",
        "/etc/localtime",
        "/etc/alternatives",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    if let Ok(rd) = std::fs::read_dir("/etc") {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with("python3") {
                etc.push(e.path());
            }
        }
    }
    for p in etc.iter().chain(&cfg.extra_ro_binds) {
        a.push("--ro-bind-try".into());
        a.push(p.clone().into_os_string());
        a.push(p.clone().into_os_string());
    }
    let size = cfg.work_dir_bytes.to_string();
    let mut push = |xs: &[&str]| a.extend(xs.iter().map(OsString::from));
    push(&["--proc", "/proc", "--dev", "/dev"]);
    push(&["--size", &size, "--tmpfs", SANDBOX_WORK_DIR]);
    push(&["--size", &size, "--tmpfs", "/tmp"]);
    push(&["--chdir", SANDBOX_WORK_DIR, "--remount-ro", "/"]);
    push(&[
        "--clearenv",
        "--setenv",
        "PATH",
        "/usr/local/bin:/usr/bin:/bin",
    ]);
    push(&[
        "--setenv",
        "HOME",
        SANDBOX_WORK_DIR,
        "--setenv",
        "TMPDIR",
        "/tmp",
    ]);
    push(&["--setenv", "LANG", "C.UTF-8", "--cap-drop", "ALL"]);
    a
}

/// What the child sets between fork and exec.
#[derive(Clone, Copy)]
struct Limits {
    cpu: u64,
    address_space: u64,
    nproc: u64,
    fsize: u64,
    nofile: u64,
    drop_to: Option<(u32, u32)>,
    no_new_privs: bool,
}

impl Limits {
    /// Runs in the forked child: async-signal-safe calls only, no allocation.
    fn apply(&self) -> std::io::Result<()> {
        fn check(r: libc::c_int) -> std::io::Result<()> {
            if r == -1 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        }
        fn limit(res: libc::__rlimit_resource_t, soft: u64, hard: u64) -> std::io::Result<()> {
            // Never above the current hard limit (which an unprivileged caller cannot raise).
            let mut now = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            check(unsafe { libc::getrlimit(res, &mut now) })?;
            let hard = (hard as libc::rlim_t).min(now.rlim_max);
            let r = libc::rlimit {
                rlim_cur: (soft as libc::rlim_t).min(hard),
                rlim_max: hard,
            };
            check(unsafe { libc::setrlimit(res, &r) })
        }
        unsafe {
            // A new session: its own process group, which the timeout kills as a whole.
            check(libc::setsid())?;
            limit(libc::RLIMIT_CPU, self.cpu, self.cpu + 1)?;
            limit(libc::RLIMIT_AS, self.address_space, self.address_space)?;
            limit(libc::RLIMIT_NPROC, self.nproc, self.nproc)?;
            limit(libc::RLIMIT_FSIZE, self.fsize, self.fsize)?;
            limit(libc::RLIMIT_NOFILE, self.nofile, self.nofile)?;
            limit(libc::RLIMIT_CORE, 0, 0)?;
            if let Some((uid, gid)) = self.drop_to {
                check(libc::setgroups(0, std::ptr::null()))?;
                check(libc::setgid(gid))?;
                check(libc::setuid(uid))?;
                if libc::getuid() != uid || libc::geteuid() != uid {
                    return Err(std::io::Error::from_raw_os_error(libc::EPERM));
                }
            }
            // After the uid switch (which clears it): if we die, so does the child.
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0))?;
            if self.no_new_privs {
                check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
            }
        }
        Ok(())
    }
}

/// Waits for the child to exit (without reaping it) or the deadline; at the deadline kills its
/// process group. Returns whether it timed out.
fn wait_until_exit(child: &Child, deadline: Instant, pgid: libc::pid_t) -> bool {
    let pid = child.id() as libc::id_t;
    let mut pause = Duration::from_millis(1);
    loop {
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        if r == -1 || unsafe { info.si_pid() } != 0 {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            return true;
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

fn reap(child: &mut Child) -> std::io::Result<std::process::ExitStatus> {
    loop {
        match child.wait() {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// One output stream read on its own thread: the first `cap` bytes kept, the rest counted.
struct Capture {
    state: Arc<Mutex<(Vec<u8>, u64)>>,
    done: mpsc::Receiver<()>,
    cap: usize,
}

impl Capture {
    fn start(mut stream: impl Read + Send + 'static, cap: usize) -> Capture {
        let state = Arc::new(Mutex::new((Vec::new(), 0u64)));
        let (tx, done) = mpsc::channel();
        let shared = Arc::clone(&state);
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
                        let room = cap.saturating_sub(s.0.len());
                        let keep = n.min(room);
                        s.0.extend_from_slice(&buf[..keep]);
                        s.1 += n as u64;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = tx.send(());
        });
        Capture { state, done, cap }
    }

    /// Text kept (a cut character dropped), bytes written in all, and whether it was cut.
    fn finish(self, until: Instant) -> (String, u64, bool) {
        let _ = self
            .done
            .recv_timeout(until.saturating_duration_since(Instant::now()));
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (bytes, total) = (&s.0, s.1);
        let truncated = total > bytes.len() as u64 || bytes.len() > self.cap;
        let mut kept: &[u8] = bytes;
        if truncated
            && let Err(e) = std::str::from_utf8(kept)
            && e.error_len().is_none()
        {
            kept = &kept[..e.valid_up_to()];
        }
        (String::from_utf8_lossy(kept).into_owned(), total, truncated)
    }
}

fn check_python(python: &Path) -> Result<(), String> {
    if is_executable(python) {
        Ok(())
    } else {
        Err(format!(
            "no Python interpreter at {} (Debian/Ubuntu: apt-get install python3; or set \
             SandboxConfig::python)",
            python.display()
        ))
    }
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
}

/// Tasks (processes and threads) the uid runs now: what `RLIMIT_NPROC` counts.
fn tasks_of_uid(uid: u32) -> u64 {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut n = 0u64;
    for e in rd.flatten() {
        let name = e.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if e.metadata().is_ok_and(|m| m.uid() == uid) {
            let tasks = std::fs::read_dir(e.path().join("task")).map_or(1, |t| t.count() as u64);
            n += tasks.max(1);
        }
    }
    n
}

/// Gives every directory under `dir` owner rwx, so that the code's `chmod 000` cannot keep its
/// working directory from being removed.
fn make_removable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                make_removable(&e.path());
            }
        }
    }
}
