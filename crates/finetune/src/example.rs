//! A fine-tuning example: one conversation whose last assistant turn is the target, plus what a task
//! eval needs to score a generated answer. Every data builder (sft, toolcall, cot) produces these; they
//! are stored as JSONL (one example per line), so a user can evaluate on their own file.

use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::path::Path;
use tardbot_tokens::chat::{Conversation, Role};

/// One example. `conversation` ends with the assistant turn the model should produce.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatExample {
    /// Stable identifier (the train/val split is a hash of it).
    pub id: String,
    /// Task kind (`arithmetic`, `glossary`, `bfcl:simple_python`, `gsm`, …): evals report per kind too.
    pub kind: String,
    pub conversation: Conversation,
    /// The reference a task eval compares against (exact answer, accepted tool-call arguments, …);
    /// `null` when the example is only for training and held-out loss.
    #[serde(default)]
    pub reference: serde_json::Value,
}

impl ChatExample {
    /// The conversation up to (not including) the final assistant turn: the prompt at eval time.
    pub fn prompt(&self) -> Conversation {
        let mut messages = self.conversation.messages.clone();
        if let Some(i) = messages.iter().rposition(|m| m.role == Role::Assistant) {
            messages.truncate(i);
        }
        Conversation { messages }
    }
}

/// Which half a stable id falls in: validation when the id's hash lands in the first
/// `val_fraction` of the range (stable when examples are added or reordered).
pub fn is_validation(id: &str, val_fraction: f64) -> bool {
    let h = blake3::hash(id.as_bytes());
    let x = u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap_or([0; 8]));
    (x as f64 / u64::MAX as f64) < val_fraction
}

#[derive(Debug, thiserror::Error)]
pub enum ExampleError {
    #[error("{}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}: {message}", path.display())]
    Parse {
        path: std::path::PathBuf,
        line: usize,
        message: String,
    },
}

/// Writes examples as JSONL.
pub fn write_jsonl(path: &Path, examples: &[ChatExample]) -> Result<(), ExampleError> {
    let io = |source| ExampleError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    for e in examples {
        serde_json::to_writer(&mut w, e).map_err(|e| io(e.into()))?;
        w.write_all(b"\n").map_err(io)?;
    }
    w.into_inner()
        .map_err(|e| io(e.into_error()))?
        .sync_all()
        .map_err(io)
}

/// Reads examples written by [`write_jsonl`]; errors name the file and line.
pub fn read_jsonl(path: &Path) -> Result<Vec<ChatExample>, ExampleError> {
    let file = std::fs::File::open(path).map_err(|source| ExampleError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| ExampleError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(&line).map_err(|e| ExampleError::Parse {
                path: path.to_path_buf(),
                line: i + 1,
                message: e.to_string(),
            })?,
        );
    }
    Ok(out)
}
