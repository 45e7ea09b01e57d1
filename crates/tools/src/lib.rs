//! The tools a TardBot model calls, and the loop that runs them.
//!
//! - [`Tool`]: a name, a JSON schema (the dialect the toolcall stage validates,
//!   [`tardbot_toolcall::ToolSpec`]) and `call(arguments) → JSON result`.
//! - [`ToolRegistry`]: the built-in tools by name ([`ToolRegistry::builtin`]).
//! - [`tool_loop`]: generate an assistant turn; parse its calls, validate each against its tool's
//!   schema, execute, append the results as tool-result turns, generate again; until a turn has no
//!   call. Every failure (malformed call, unknown tool, invalid arguments, a tool's error, a timeout,
//!   the per-turn call cap) comes back to the model as an error result: a session never dies of a tool.
//! - [`python`]: Python in a sandboxed child process (never in ours).
//! - [`browser`]: one headless Chromium per session (read, links, click, fill and submit), public
//!   hosts by default, loopback and private ones only when configured.
//! - [`local`]: the toolcall stage's calculator, unit converter and element lookup.
//! - [`search`]: search over the offline index of the corpus, or the web (DuckDuckGo's HTML
//!   endpoint, its base URL configurable).
//! - [`data_runner`]: `python` and `search` run for the toolcall stage's training conversations.
//!
//! This crate does not generate text: the loop takes an [`tool_loop::Assistant`] (the pipeline wraps
//! a trained model in one; tests script one), so it has no model or tokenizer dependency.

pub mod browser;
pub mod data_runner;
pub mod local;
pub mod python;
pub mod registry;
pub mod search;
pub mod settings;
pub mod tool;
pub mod tool_loop;

pub use registry::ToolRegistry;
pub use settings::ToolSettings;
pub use tool::{Tool, ToolError};
pub use tool_loop::{Assistant, LoopConfig, LoopEvent, TurnOutcome, run_turn};
