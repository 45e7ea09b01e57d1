//! The contract every tool implements.

use serde_json::{Map, Value};
use tardbot_toolcall::ToolSpec;

/// Why a call produced no result. The loop turns it into an error result the model sees.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The call ran and failed (bad input the schema could not catch, a backend error).
    #[error("{0}")]
    Failed(String),
    /// The tool cannot run on this machine as configured (e.g. no sandbox available); the message
    /// says what would make it available.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// A tool the model can call.
pub trait Tool: Send + Sync {
    /// Name, description and parameter schema, as offered to the model in the system turn.
    fn spec(&self) -> ToolSpec;

    /// Runs the call. `arguments` already satisfy [`Tool::spec`]'s schema. Returns a JSON result.
    /// Implementations bound their own run time (the loop's wall-clock limit cannot stop a thread).
    fn call(&self, arguments: &Map<String, Value>) -> Result<Value, ToolError>;

    /// The wall clock the tool bounds a call to itself (its configured timeout), if it has one:
    /// the loop waits at least this long (plus a grace period) before it answers "timed out", so a
    /// limit the user raised in `[tools.*]` is not cut short by the loop's default.
    fn time_limit(&self) -> Option<std::time::Duration> {
        None
    }
}
