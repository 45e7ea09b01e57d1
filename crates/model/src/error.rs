//! Errors of the model crate.

/// Everything that can go wrong building, running, saving or loading the model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Store(#[from] crate::expert_store::StoreError),
    #[error("invalid model config: {0}")]
    Config(String),
    #[error("invalid input: {0}")]
    Input(String),
    #[error("checkpoint {path}: {msg}")]
    Checkpoint { path: String, msg: String },
}

pub type Result<T> = std::result::Result<T, ModelError>;
