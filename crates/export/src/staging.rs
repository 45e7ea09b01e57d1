//! Exports are written into a hidden directory beside the destination and renamed into place last,
//! so an interrupted export leaves nothing under the name a user would load.

use crate::error::{Result, output_err};
use std::path::{Path, PathBuf};

pub(crate) struct Dir {
    out: PathBuf,
    tmp: PathBuf,
    files: Vec<String>,
    done: bool,
}

impl Dir {
    pub(crate) fn new(out: &Path) -> Result<Dir> {
        if out.exists() {
            return Err(output_err(
                out,
                "already exists; remove it or choose another --out",
            ));
        }
        let name = out
            .file_name()
            .ok_or_else(|| output_err(out, "not a directory name"))?
            .to_string_lossy();
        let parent = out.parent().filter(|p| !p.as_os_str().is_empty());
        let parent = parent.unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(|e| output_err(parent, e))?;
        let tmp = parent.join(format!(".{name}.partial-{}", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| output_err(&tmp, e))?;
        }
        std::fs::create_dir(&tmp).map_err(|e| output_err(&tmp, e))?;
        Ok(Dir {
            out: out.to_path_buf(),
            tmp,
            files: Vec::new(),
            done: false,
        })
    }

    /// Where files go before [`Dir::finish`].
    pub(crate) fn path(&self) -> &Path {
        &self.tmp
    }

    /// Records a file written directly under [`Dir::path`].
    pub(crate) fn add(&mut self, name: &str) {
        self.files.push(name.to_string());
    }

    pub(crate) fn write_bytes(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let p = self.tmp.join(name);
        std::fs::write(&p, bytes).map_err(|e| output_err(&p, e))?;
        self.add(name);
        Ok(())
    }

    pub(crate) fn write_json(&mut self, name: &str, v: &serde_json::Value) -> Result<()> {
        let mut text =
            serde_json::to_string_pretty(v).map_err(|e| output_err(Path::new(name), e))?;
        text.push('\n');
        self.write_bytes(name, text.as_bytes())
    }

    /// Syncs every file and renames the directory into place; returns the final paths.
    pub(crate) fn finish(mut self) -> Result<Vec<PathBuf>> {
        for f in &self.files {
            let p = self.tmp.join(f);
            std::fs::File::open(&p)
                .and_then(|f| f.sync_all())
                .map_err(|e| output_err(&p, e))?;
        }
        std::fs::rename(&self.tmp, &self.out).map_err(|e| output_err(&self.out, e))?;
        self.done = true;
        Ok(self.files.iter().map(|f| self.out.join(f)).collect())
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}
