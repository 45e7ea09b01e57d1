//! The toolcall stage's local tools (calculator, unit converter, element lookup) as runtime tools:
//! the same code that computed the results in the stage's training conversations.

use crate::tool::{Tool, ToolError};
use serde_json::{Map, Value};
use tardbot_toolcall::ToolSpec;
use tardbot_toolcall::tools::LocalTool;

/// One of [`LocalTool::ALL`].
pub struct Local(pub LocalTool);

impl Tool for Local {
    fn spec(&self) -> ToolSpec {
        self.0.spec()
    }

    fn call(&self, arguments: &Map<String, Value>) -> Result<Value, ToolError> {
        self.0.call(arguments).map_err(ToolError::Failed)
    }
}
