//! The training engine's error type, shared by the trainer and the expert store's checkpoint part.

use crate::checkpoint;
use crate::optim::OptimError;
use tardbot_model::{ModelError, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Optim(#[from] OptimError),
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("trainer state {}: {what}", path.display())]
    State {
        path: std::path::PathBuf,
        what: String,
    },
}

pub type Result<T> = std::result::Result<T, TrainError>;
