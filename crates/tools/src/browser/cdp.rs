//! A DevTools-protocol client over Chromium's `--remote-debugging-pipe`: JSON messages, each ended
//! by a NUL byte, written to the browser's file descriptor 3 and read from its descriptor 4.
//!
//! Commands are sent with [`Cdp::send`] (it does not wait); everything the browser writes (answers
//! and events) is read on a thread of its own and taken with [`Cdp::recv`] up to a deadline, so a
//! browser that stops answering costs at most the caller's deadline, never a hang.

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc;
use std::time::Instant;

/// Largest message kept (bigger ones are read and dropped, so a page cannot make us buffer without
/// bound; the tool caps what it asks for far below this).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Why no message came.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CdpError {
    #[error("the deadline passed")]
    Timeout,
    #[error("the browser closed its DevTools pipe")]
    Closed,
    #[error("writing to the browser: {0}")]
    Io(String),
}

/// One browser's DevTools pipe.
pub struct Cdp {
    to_browser: std::fs::File,
    from_browser: mpsc::Receiver<Value>,
    next_id: u64,
}

impl Cdp {
    /// A client on the two pipe ends we keep: `to_browser` (the write end of the browser's fd 3) and
    /// `from_browser` (the read end of its fd 4). Starts the reader thread, which ends when the
    /// browser closes its end.
    pub fn new(to_browser: OwnedFd, from_browser: OwnedFd) -> Cdp {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(std::fs::File::from(from_browser));
            let mut buf = Vec::new();
            loop {
                buf.clear();
                let mut limited = (&mut r).take(MAX_MESSAGE_BYTES as u64 + 1);
                match limited.read_until(0, &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                if buf.last() != Some(&0) {
                    // Too long: skip to its end.
                    let mut skip = Vec::new();
                    match r.read_until(0, &mut skip) {
                        Ok(0) | Err(_) => return,
                        Ok(_) => continue,
                    }
                }
                buf.pop();
                if let Ok(v) = serde_json::from_slice::<Value>(&buf)
                    && tx.send(v).is_err()
                {
                    return;
                }
            }
        });
        Cdp {
            to_browser: std::fs::File::from(to_browser),
            from_browser: rx,
            next_id: 0,
        }
    }

    /// Sends a command (to a page's `session`, or to the browser) and returns its id; the answer is
    /// the message [`Cdp::recv`] returns with that `id`.
    pub fn send(
        &mut self,
        method: &str,
        params: Value,
        session: Option<&str>,
    ) -> Result<u64, CdpError> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = msg.to_string().into_bytes();
        bytes.push(0);
        self.to_browser.write_all(&bytes).map_err(|e| {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                CdpError::Closed
            } else {
                CdpError::Io(e.to_string())
            }
        })?;
        Ok(id)
    }

    /// The next message (an answer or an event), waiting until `deadline` at most.
    pub fn recv(&self, deadline: Instant) -> Result<Value, CdpError> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.from_browser.recv_timeout(left).map_err(|e| match e {
            mpsc::RecvTimeoutError::Timeout => CdpError::Timeout,
            mpsc::RecvTimeoutError::Disconnected => CdpError::Closed,
        })
    }
}

/// A pipe (read end, write end), both close-on-exec: only what the child `dup2`s survives its exec.
pub fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills both descriptors, which we then own.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The descriptor number (for `dup2` in the child).
pub fn raw(fd: &OwnedFd) -> i32 {
    fd.as_raw_fd()
}
