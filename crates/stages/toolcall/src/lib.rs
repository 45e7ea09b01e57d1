//! The `toolcall` stage: teaching the model to call JSON-schema tools.
//!
//! - [`call`]: extracting tool calls from generated text.
//! - [`schema`]: tool definitions (JSON schema) and validating a call against them.
//! - [`tools`]: real local tools (calculator, unit converter, lookup) used in generated conversations.
//! - [`data`]: the data builder (BFCL rows + generated multi-turn conversations) and the call scorer.

pub mod call;
pub mod data;
pub mod schema;
pub mod tools;
