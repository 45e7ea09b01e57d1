//! The store's errors: each names the file and, where one is at fault, the layer and expert, and says
//! how to recover.

use std::path::{Path, PathBuf};

use super::format::VERSION;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("expert store {}: {op}: {source}", path.display())]
    Io {
        path: PathBuf,
        op: String,
        source: std::io::Error,
    },
    #[error(
        "expert store {}: not an expert store (magic {found:?}); fix: point at a file made by \
         ExpertStore::create or ExpertStore::from_safetensors",
        path.display()
    )]
    BadMagic { path: PathBuf, found: Vec<u8> },
    #[error(
        "expert store {}: format version {found}, this build reads {VERSION}; fix: re-create it \
         from the model's safetensors (ExpertStore::from_safetensors)",
        path.display()
    )]
    Version { path: PathBuf, found: u32 },
    #[error(
        "expert store {}: header corrupt: {what}; fix: restore the store from the last checkpoint \
         or re-create it from the model's safetensors",
        path.display()
    )]
    Header { path: PathBuf, what: String },
    #[error(
        "expert store {}: truncated: {len} bytes, expected {expected}; layer {layer} expert {expert} \
         and every region after it are incomplete (disk full or interrupted copy?); fix: restore the \
         store from the last checkpoint",
        path.display()
    )]
    Truncated {
        path: PathBuf,
        len: u64,
        expected: u64,
        layer: usize,
        expert: usize,
    },
    #[error(
        "expert store {}: layer {layer} expert {expert}: checksum mismatch (table {stored}, data \
         {computed}); the region was corrupted or written without a commit; fix: restore the store \
         from the last checkpoint",
        path.display()
    )]
    Checksum {
        path: PathBuf,
        layer: usize,
        expert: usize,
        stored: String,
        computed: String,
    },
    #[error(
        "expert store {}: layer {layer} expert {expert}: modified and never committed (the process \
         stopped mid-step?); fix: restore the store from the last checkpoint",
        path.display()
    )]
    Uncommitted {
        path: PathBuf,
        layer: usize,
        expert: usize,
    },
    #[error(
        "expert store {}: layer {layer} expert {expert}: table entry corrupt; fix: restore the store \
         from the last checkpoint",
        path.display()
    )]
    TableEntry {
        path: PathBuf,
        layer: usize,
        expert: usize,
    },
    #[error(
        "expert store {}: no region for layer {layer} expert {expert} (MoE layers {moe_layers:?}, \
         {n_experts} experts)",
        path.display()
    )]
    NoSuchRegion {
        path: PathBuf,
        layer: usize,
        expert: usize,
        moe_layers: Vec<usize>,
        n_experts: usize,
    },
    #[error(
        "expert store {}: cannot check out layer {layer} expert {expert}: {resident} regions already \
         resident (max_resident {max}: {held}); fix: drop a region guard first or raise \
         max_experts_in_memory",
        path.display()
    )]
    TooManyResident {
        path: PathBuf,
        layer: usize,
        expert: usize,
        resident: usize,
        max: usize,
        held: String,
    },
    #[error(
        "expert store {}: layer {layer} expert {expert} is already checked out; fix: use the \
         existing guard",
        path.display()
    )]
    AlreadyCheckedOut {
        path: PathBuf,
        layer: usize,
        expert: usize,
    },
    #[error("expert store {}: {what}", path.display())]
    Layout { path: PathBuf, what: String },
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Maps an I/O error of `op` on `path` to [`StoreError::Io`].
pub(super) fn io_err(
    path: &Path,
    op: impl Into<String>,
) -> impl FnOnce(std::io::Error) -> StoreError {
    let (path, op) = (path.to_path_buf(), op.into());
    move |source| StoreError::Io { path, op, source }
}
