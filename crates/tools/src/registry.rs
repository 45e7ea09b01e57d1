//! The tools a session offers, by name.

use crate::tool::Tool;
use std::sync::Arc;
use tardbot_toolcall::{ParsedCall, ToolSpec, validate_call};

/// Names [`ToolRegistry::builtin`] knows.
pub const BUILTIN: &[&str] = &[
    "browser",
    "calculator",
    "convert_units",
    "element_lookup",
    "python",
    "search",
];

/// Tools by name, in the order they are offered to the model.
#[derive(Clone, Default)]
pub struct ToolRegistry {
    tools: Vec<Arc<dyn Tool>>,
}

impl ToolRegistry {
    pub fn new() -> ToolRegistry {
        ToolRegistry::default()
    }

    /// Adds a tool; a tool of the same name is replaced.
    pub fn with(mut self, tool: Arc<dyn Tool>) -> ToolRegistry {
        let name = tool.spec().name;
        self.tools.retain(|t| t.spec().name != name);
        self.tools.push(tool);
        self
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Tool>> {
        self.tools.iter().find(|t| t.spec().name == name)
    }

    /// The tool a call names, once its arguments satisfy the tool's schema; otherwise what is wrong
    /// (an unknown tool, listing the known ones, or each schema violation), as the model is told.
    pub fn check(&self, call: &ParsedCall) -> Result<&Arc<dyn Tool>, String> {
        let Some(tool) = self.get(&call.name) else {
            return Err(format!(
                "unknown tool `{}`; the tools are: {}",
                call.name,
                self.names().join(", ")
            ));
        };
        if let Err(violations) = validate_call(call, &self.specs()) {
            let v: Vec<String> = violations.iter().map(|v| v.to_string()).collect();
            return Err(format!("invalid arguments: {}", v.join("; ")));
        }
        Ok(tool)
    }

    /// The specs offered to the model (its system turn lists them).
    pub fn specs(&self) -> Vec<ToolSpec> {
        self.tools.iter().map(|t| t.spec()).collect()
    }

    pub fn names(&self) -> Vec<String> {
        self.tools.iter().map(|t| t.spec().name).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }

    /// The built-in tools of these names ([`BUILTIN`]; with the default
    /// [`ToolSettings`](crate::settings::ToolSettings)); an unknown name is an error listing the
    /// known ones.
    pub fn builtin(names: &[&str]) -> Result<ToolRegistry, String> {
        ToolRegistry::builtin_with(names, &crate::settings::ToolSettings::default())
    }

    /// [`ToolRegistry::builtin`] with the tools as configured: `python`'s sandbox
    /// (`[tools.python]`), `search`'s backend (`[tools.search]`), the hosts `browser` may open
    /// (`[tools.browser]`).
    pub fn builtin_with(
        names: &[&str],
        settings: &crate::settings::ToolSettings,
    ) -> Result<ToolRegistry, String> {
        let mut r = ToolRegistry::new();
        for &name in names {
            let tool: Arc<dyn Tool> = match tardbot_toolcall::tools::LocalTool::by_name(name) {
                Some(t) => Arc::new(crate::local::Local(t)),
                None if name == "python" => {
                    Arc::new(crate::python::PythonTool::new(settings.python.clone()))
                }
                None if name == "search" => {
                    Arc::new(crate::search::SearchTool::new(&settings.search)?)
                }
                None if name == "browser" => {
                    Arc::new(crate::browser::BrowserTool::new(settings.browser.clone()))
                }
                None => {
                    return Err(format!(
                        "unknown tool `{name}`; built-in tools: {}",
                        BUILTIN.join(", ")
                    ));
                }
            };
            r = r.with(tool);
        }
        Ok(r)
    }
}
