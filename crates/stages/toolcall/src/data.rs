//! The tool-calling data: BFCL rows and generated multi-turn conversations as
//! [`ChatExample`](tardbot_finetune::ChatExample)s, and the scorer of a generated assistant turn.
//!
//! - `bfcl`: BFCL rows read into examples ([`load_bfcl`], [`bfcl_examples`]).
//! - `generated`: conversations with the real local tools ([`generated_examples`],
//!   [`first_call_example`]).
//! - `executed`: conversations with the runtime's `python`, `search` and `browser`, really run
//!   through a [`ToolRunner`] ([`python_examples`], [`search_examples`], [`browser_examples`]).
//! - `unseen`: calls to functions made up for each example, BFCL's shape
//!   ([`unseen_function_examples`]).
//! - `scoring`: how a generated assistant turn fares against an example's reference ([`score`],
//!   [`aggregate`]; see [`CallScore`]).
//! - `ground_truth`: BFCL's ground-truth form (accepted values per argument), read by the BFCL
//!   conversion and by the scorer.
//!
//! Both sources offer their tools in the system turn ([`tools_system_prompt`]) and answer a request
//! that no tool fits with [`ABSTAIN_ANSWER`].

use crate::schema::ToolSpec;

mod bfcl;
mod executed;
mod generated;
mod ground_truth;
mod scoring;
mod unseen;

pub use bfcl::{BfclLoad, DataError, Skipped, bfcl_examples, load_bfcl};
pub use executed::{SITE, ToolRunner, browser_examples, python_examples, search_examples};
pub use generated::{first_call_example, generated_examples};
pub use scoring::{CallScore, Expected, aggregate, args_match, score};
pub use unseen::unseen_function_examples;

/// The assistant turn that makes one call, and that call as a reference's `ground_truth` entry
/// (`{name: {argument: [its one accepted value]}}`, BFCL's form).
pub(crate) fn one_call(
    name: &str,
    arguments: serde_json::Map<String, serde_json::Value>,
) -> (tardbot_tokens::chat::Message, serde_json::Value) {
    use serde_json::{Value, json};
    use tardbot_tokens::chat::{Message, Role, ToolCall};
    let accepted: serde_json::Map<String, Value> = arguments
        .iter()
        .map(|(k, v)| (k.clone(), json!([v])))
        .collect();
    let mut call = Message::new(Role::Assistant, "");
    call.tool_calls.push(ToolCall {
        name: name.to_string(),
        arguments: Value::Object(arguments),
    });
    (call, json!({ name: accepted }))
}

/// The assistant's answer when none of the tools fits the request.
pub const ABSTAIN_ANSWER: &str = "None of the available tools can do that.";

/// The system text that offers `tools` (one compact JSON line per tool). The chat template writes the
/// tool-call tokens itself, so the text only describes the format.
pub fn tools_system_prompt(tools: &[ToolSpec]) -> String {
    let mut s = String::from(
        "You can call the tools listed below. To call one, write a tool call holding a JSON object with \
         the tool's \"name\" and its \"arguments\" (an object matching the tool's parameters); for several \
         calls, write several tool calls. If no tool fits the request, answer in plain text without a \
         tool call.\nTools:",
    );
    if tools.is_empty() {
        s.push_str(" (none)");
    }
    for t in tools {
        s.push('\n');
        s.push_str(&serde_json::to_string(t).unwrap_or_default());
    }
    s
}
