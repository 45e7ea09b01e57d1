//! BLAKE3 content hashing of files and directory trees.
//!
//! An artifact's identity is its content hash: fingerprints of downstream stages are built from these,
//! and checkpoints are verified against them on resume.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// Hash and byte size of a file or a directory tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContentHash {
    pub hex: String,
    pub bytes: u64,
}

/// Hashes one file (memory-mapped by blake3 where that pays) and returns its hash and size.
pub fn hash_file(path: &Path) -> io::Result<ContentHash> {
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_mmap(path)
        .map_err(|e| io::Error::new(e.kind(), format!("hashing {}: {e}", path.display())))?;
    Ok(ContentHash {
        hex: hasher.finalize().to_hex().to_string(),
        bytes: hasher.count(),
    })
}

/// Hashes a file, or a directory tree (relative paths and contents, in sorted order, so the hash does
/// not depend on directory iteration order).
pub fn hash_path(path: &Path) -> io::Result<ContentHash> {
    if !path.is_dir() {
        return hash_file(path);
    }
    let mut files = Vec::new();
    collect_files(path, path, &mut files)?;
    files.sort();
    let mut tree = blake3::Hasher::new();
    let mut bytes = 0;
    for rel in files {
        let h = hash_file(&path.join(&rel))?;
        tree.update(rel.to_string_lossy().as_bytes());
        tree.update(&[0]);
        tree.update(h.hex.as_bytes());
        bytes += h.bytes;
    }
    Ok(ContentHash {
        hex: tree.finalize().to_hex().to_string(),
        bytes,
    })
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let p = entry.path();
        if entry.file_type()?.is_dir() {
            collect_files(root, &p, out)?;
        } else {
            out.push(p.strip_prefix(root).unwrap_or(&p).to_path_buf());
        }
    }
    Ok(())
}

/// fsyncs a file or every file of a directory tree, and the directories themselves, so that a rename
/// that publishes them is durable.
pub fn fsync_tree(path: &Path) -> io::Result<()> {
    if path.is_dir() {
        for entry in std::fs::read_dir(path)? {
            fsync_tree(&entry?.path())?;
        }
    }
    File::open(path)?.sync_all()
}

/// Hex BLAKE3 of a byte string (config slices, fingerprints).
pub fn hash_bytes(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_hash_is_order_independent_and_content_sensitive() {
        let dir = std::env::temp_dir().join(format!("tardbot-hash-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("a.bin"), b"alpha").unwrap();
        std::fs::write(dir.join("sub/b.bin"), b"beta").unwrap();
        let h1 = hash_path(&dir).unwrap();
        assert_eq!(h1.bytes, 9);
        assert_eq!(h1, hash_path(&dir).unwrap());
        std::fs::write(dir.join("sub/b.bin"), b"betA").unwrap();
        assert_ne!(h1.hex, hash_path(&dir).unwrap().hex);
        // Known value: BLAKE3 of the empty input.
        assert_eq!(
            hash_bytes(b""),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
