use std::path::PathBuf;

/// Why an export failed. Nothing is left under the output name when it does: files are written
/// beside it and renamed into place last.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The model (or the requested dtype) has something the target format cannot compute exactly.
    #[error("cannot export to {format}: {reason}")]
    Unsupported {
        format: &'static str,
        reason: String,
    },
    #[error("{path}: {msg}")]
    Input { path: PathBuf, msg: String },
    #[error("writing {path}: {msg}")]
    Output { path: PathBuf, msg: String },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, ExportError>;

pub(crate) fn input_err(path: &std::path::Path, msg: impl std::fmt::Display) -> ExportError {
    ExportError::Input {
        path: path.to_path_buf(),
        msg: msg.to_string(),
    }
}

pub(crate) fn output_err(path: &std::path::Path, msg: impl std::fmt::Display) -> ExportError {
    ExportError::Output {
        path: path.to_path_buf(),
        msg: msg.to_string(),
    }
}
