//! The `toolcall` stage: teaching the model to call JSON-schema tools.
//!
//! - [`call`]: extracting tool calls from generated text.
//! - [`schema`]: tool definitions (JSON schema) and validating a call against them.
//! - [`tools`]: real local tools (calculator, unit converter, lookup) used in generated conversations.
//! - [`data`]: the data builder (BFCL rows + generated multi-turn conversations) and the call scorer.
//! - [`agent`]: the agent eval (tasks through the real tool loop) among the stage's evals.
//! - [`stage`]: [`ToolcallTask`], the stage as a chat task (fine-tuned from `sft` by `tardbot-finetune`): its examples and tool-call evals.
//!
//! What it does not do: the training loop, checkpoints and generation (`tardbot-finetune`,
//! `tardbot-train`) or the chat template (`tardbot-tokens`).

pub mod agent;
pub mod call;
pub mod config;
pub mod data;
pub mod schema;
pub mod stage;
pub mod tools;

#[cfg(test)]
mod test_util;

pub use agent::{AgentEvalConfig, AgentEvaluator};
pub use stage::ToolcallTask;

pub use call::{CallError, ParsedCall, parse_tool_calls};
pub use data::{
    ABSTAIN_ANSWER, CallScore, DataError, Expected, ToolRunner, aggregate, bfcl_examples,
    first_call_example, generated_examples, load_bfcl, score, tools_system_prompt,
};
pub use schema::{ToolSpec, Violation, validate_call};
pub use tools::LocalTool;
