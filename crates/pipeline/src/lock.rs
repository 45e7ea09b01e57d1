//! The run lock: an OS file lock on `<run dir>/run.lock`, held for the life of the driving process.
//!
//! The kernel releases it when the process dies (even by SIGKILL), so a crashed run never blocks its
//! own resume, while a live one always refuses a second driver. The lock file holds the owner's pid
//! and host for the refusal message; the ledger's `runs.pid/host/heartbeat_ms` mirror it for `status`.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "run {run} is already being driven by another process ({owner}); wait for it to finish, or stop it (Ctrl-C) before resuming"
    )]
    Held { run: String, owner: String },
    #[error("cannot lock {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Held while this process drives a run; dropping it releases the lock.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

/// This machine's name (`gethostname`), else `$HOSTNAME`, else `unknown-host`.
pub fn hostname() -> String {
    os_hostname()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into())
}

#[cfg(unix)]
fn os_hostname() -> Option<String> {
    // POSIX caps host names at 255 bytes (HOST_NAME_MAX); one more for the NUL.
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is writable for its whole length, which is what we pass.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    // A name that fills the buffer may come back without its NUL: take what is there.
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..end]).trim().to_string())
}

#[cfg(not(unix))]
fn os_hostname() -> Option<String> {
    None
}

impl RunLock {
    pub fn acquire(run_dir: &Path, run: &str) -> Result<RunLock, LockError> {
        let path = run_dir.join("run.lock");
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(run_dir).map_err(io)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut owner = String::new();
                let _ = file.read_to_string(&mut owner);
                let owner = if owner.trim().is_empty() {
                    "owner unknown".into()
                } else {
                    owner.trim().to_string()
                };
                return Err(LockError::Held {
                    run: run.to_string(),
                    owner,
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        write!(file, "pid {} on {}", std::process::id(), hostname()).map_err(io)?;
        file.flush().map_err(io)?;
        Ok(RunLock { _file: file })
    }

    /// Whether some live process holds the run's lock (without keeping it).
    pub fn is_held(run_dir: &Path) -> bool {
        let Ok(file) = File::open(run_dir.join("run.lock")) else {
            return false;
        };
        match file.try_lock_shared() {
            Ok(()) => {
                let _ = file.unlock();
                false
            }
            Err(_) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn hostname_is_the_kernels() {
        let name = super::hostname();
        assert!(!name.is_empty() && !name.contains('\0'), "{name:?}");
        if let Ok(k) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
            assert_eq!(name, k.trim());
        }
    }
}
