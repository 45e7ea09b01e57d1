//! The `cot` stage: chain-of-thought fine-tuning (reasoning inside think tags, then the answer).
//!
//! - [`problems`]: the data builder over GSM-style problems and final-answer extraction and matching.

pub mod problems;
