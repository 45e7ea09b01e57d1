//! The `sft` stage: instruction tuning on templated and computed tasks.
//!
//! - [`tasks`]: the data builder (templated over a glossary and a verse text, plus generated tasks whose
//!   answers are computed) and the exact-match scorer.

pub mod tasks;
