//! Checkpoint directories: `<work>/ckpt-<step>/`, written atomically and pruned by a retention policy.
//!
//! A checkpoint is first written to `ckpt-<step>.tmp/`, every file is fsynced, then the directory is
//! renamed into place and its parent fsynced: a crash leaves either a complete checkpoint or a `.tmp`
//! that is ignored and cleaned up.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing checkpoint {}: {message}", path.display())]
    Write { path: PathBuf, message: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointDir {
    pub step: u64,
    pub path: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn fsync_all(path: &Path) -> std::io::Result<()> {
    if path.is_dir() {
        for e in std::fs::read_dir(path)? {
            fsync_all(&e?.path())?;
        }
    }
    std::fs::File::open(path)?.sync_all()
}

/// Writes a checkpoint for `step`: `write` fills the temporary directory it is given.
pub fn write_atomic<E: std::fmt::Display>(
    work_dir: &Path,
    step: u64,
    write: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<CheckpointDir, CheckpointError> {
    let fin = work_dir.join(format!("ckpt-{step:08}"));
    let tmp = work_dir.join(format!("ckpt-{step:08}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    write(&tmp).map_err(|e| CheckpointError::Write {
        path: tmp.clone(),
        message: e.to_string(),
    })?;
    fsync_all(&tmp).map_err(io(&tmp))?;
    if fin.exists() {
        // The same step written again after a resume: the new one replaces it.
        std::fs::remove_dir_all(&fin).map_err(io(&fin))?;
    }
    std::fs::rename(&tmp, &fin).map_err(io(&fin))?;
    std::fs::File::open(work_dir)
        .and_then(|d| d.sync_all())
        .map_err(io(work_dir))?;
    Ok(CheckpointDir { step, path: fin })
}

/// Complete checkpoint directories in `work_dir`, oldest first.
pub fn list(work_dir: &Path) -> Result<Vec<CheckpointDir>, CheckpointError> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(work_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io(work_dir)(e)),
    };
    for e in entries {
        let e = e.map_err(io(work_dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(step) = name
            .strip_prefix("ckpt-")
            .and_then(|s| s.parse::<u64>().ok())
        {
            out.push(CheckpointDir {
                step,
                path: e.path(),
            });
        }
    }
    out.sort_by_key(|c| c.step);
    Ok(out)
}

/// Keeps the newest `keep_last` checkpoints plus those in `also_keep` (e.g. the best), removes the
/// rest and any leftover `.tmp` directories. Returns what was removed.
pub fn prune(
    work_dir: &Path,
    keep_last: usize,
    also_keep: &[u64],
) -> Result<Vec<PathBuf>, CheckpointError> {
    let all = list(work_dir)?;
    let cut = all.len().saturating_sub(keep_last.max(1));
    let mut removed = Vec::new();
    for c in &all[..cut] {
        if !also_keep.contains(&c.step) {
            std::fs::remove_dir_all(&c.path).map_err(io(&c.path))?;
            removed.push(c.path.clone());
        }
    }
    for e in std::fs::read_dir(work_dir).map_err(io(work_dir))?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("ckpt-") && name.ends_with(".tmp") {
            std::fs::remove_dir_all(e.path()).map_err(io(work_dir))?;
            removed.push(e.path());
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_list_and_retention() {
        let dir = tempfile::tempdir().unwrap();
        for step in [10, 20, 30, 40] {
            write_atomic(dir.path(), step, |tmp| {
                std::fs::write(tmp.join("w.bin"), step.to_le_bytes())
            })
            .unwrap();
        }
        // A writer that fails leaves no complete checkpoint behind.
        let err = write_atomic(dir.path(), 50, |_| Err("disk full")).unwrap_err();
        assert!(err.to_string().contains("disk full"));
        let steps: Vec<u64> = list(dir.path()).unwrap().iter().map(|c| c.step).collect();
        assert_eq!(steps, [10, 20, 30, 40]);

        let removed = prune(dir.path(), 2, &[10]).unwrap();
        assert_eq!(removed.len(), 2, "ckpt 20 and the failed .tmp: {removed:?}");
        let steps: Vec<u64> = list(dir.path()).unwrap().iter().map(|c| c.step).collect();
        assert_eq!(steps, [10, 30, 40]);
        assert_eq!(
            std::fs::read(dir.path().join("ckpt-00000040/w.bin")).unwrap(),
            40u64.to_le_bytes()
        );
    }
}
