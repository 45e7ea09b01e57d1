//! Exports a trained TardBot so that other runtimes load and run it exactly.
//!
//! - [`hf`]: a Hugging Face transformers directory (`Qwen2MoeForCausalLM`, `tokenizer.json`,
//!   `tokenizer_config.json` with the chat template in Jinja, a model card).
//! - [`gguf`]: one GGUF file for llama.cpp (`llama` architecture with Mixtral-style experts).
//!
//! Input is what a training stage publishes (`model.safetensors`, `model.json`) and the run's
//! `tokenizer.json` ([`SourceModel`]); the model card's facts come from the caller, which reads the
//! ledger ([`ModelCard`]). This crate does not read the ledger, resolve runs or record artifacts:
//! the pipeline's `export` command does. Each module's doc states how the target architecture
//! computes TardBot, and what it cannot express is refused with [`ExportError::Unsupported`].

pub mod card;
pub mod chat_template;
mod error;
pub mod gguf;
pub mod hf;
pub mod rope;
pub mod source;
mod staging;

pub use card::{CardEval, CardStage, ModelCard};
pub use chat_template::CHAT_TEMPLATE;
pub use error::{ExportError, Result};
pub use source::SourceModel;

use std::path::{Path, PathBuf};

/// The target runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Hf,
    Gguf,
}

impl Format {
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "hf" => Some(Format::Hf),
            "gguf" => Some(Format::Gguf),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Hf => "hf",
            Format::Gguf => "gguf",
        }
    }
}

/// The weights' type in the export (norms and routers stay f32 in GGUF).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportDtype {
    F32,
    F16,
    Bf16,
    Q8_0,
}

impl ExportDtype {
    pub fn parse(s: &str) -> Option<ExportDtype> {
        match s {
            "f32" => Some(ExportDtype::F32),
            "f16" => Some(ExportDtype::F16),
            "bf16" => Some(ExportDtype::Bf16),
            "q8_0" => Some(ExportDtype::Q8_0),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ExportDtype::F32 => "f32",
            ExportDtype::F16 => "f16",
            ExportDtype::Bf16 => "bf16",
            ExportDtype::Q8_0 => "q8_0",
        }
    }
}

/// Writes `src` as `format` into the new directory `out`; returns the files written.
pub fn export(
    src: &SourceModel,
    card: &ModelCard,
    format: Format,
    dtype: ExportDtype,
    out: &Path,
) -> Result<Vec<PathBuf>> {
    match format {
        Format::Hf => hf::write_hf(src, card, dtype, out),
        Format::Gguf => gguf::write_gguf(src, card, dtype, out),
    }
}
