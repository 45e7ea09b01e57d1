//! Logs: human-readable on stderr, and JSON lines in the run's directory (`log.jsonl`) once a run is known.

use std::fs::File;
use std::io::{self, IsTerminal, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::prelude::*;

static RUN_LOG: OnceLock<Arc<Mutex<Option<File>>>> = OnceLock::new();

#[derive(Clone)]
struct RunLogWriter(Arc<Mutex<Option<File>>>);

impl Write for RunLogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.0.lock().ok().as_deref_mut().and_then(Option::as_mut) {
            Some(f) => f.write(buf),
            None => Ok(buf.len()),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self.0.lock().ok().as_deref_mut().and_then(Option::as_mut) {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

impl<'a> MakeWriter<'a> for RunLogWriter {
    type Writer = RunLogWriter;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Installs the global subscriber (once). `RUST_LOG` filters; default `info`.
pub fn init() {
    let slot = RUN_LOG.get_or_init(|| Arc::new(Mutex::new(None))).clone();
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let human = tracing_subscriber::fmt::layer()
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .with_target(false)
        .compact()
        .with_filter(filter());
    let json = tracing_subscriber::fmt::layer()
        .json()
        .with_writer(RunLogWriter(slot))
        .with_filter(filter());
    let _ = tracing_subscriber::registry()
        .with(human)
        .with(json)
        .try_init();
}

/// From now on, JSON log lines also go to `<run_dir>/log.jsonl` (appended across resumes).
pub fn log_to_run_dir(run_dir: &Path) -> io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run_dir.join("log.jsonl"))?;
    if let Some(slot) = RUN_LOG.get()
        && let Ok(mut guard) = slot.lock()
    {
        *guard = Some(file);
    }
    Ok(())
}
