//! Where things live on disk: `<workspace>/ledger.db` and `<workspace>/runs/<run>/…`.

use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct Workspace {
    pub root: PathBuf,
}

impl Workspace {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Workspace { root: root.into() }
    }

    pub fn ledger_path(&self) -> PathBuf {
        self.root.join("ledger.db")
    }

    pub fn run_dir(&self, run_name: &str) -> PathBuf {
        self.root.join("runs").join(run_name)
    }

    /// Per-stage directory of a run: `out/` (published outputs), `work/` (checkpoints, kept across
    /// attempts) and `attempt-N.staging/` (outputs being written).
    pub fn stage_dir(&self, run_name: &str, stage: &str) -> PathBuf {
        self.run_dir(run_name).join("stages").join(stage)
    }
}

/// fsyncs a directory entry so a rename inside it is durable.
pub fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
