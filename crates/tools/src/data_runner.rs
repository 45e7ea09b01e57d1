//! The built-in tools for the toolcall stage's data builder
//! ([`tardbot_toolcall::ToolRunner`]): `python` and `search` really run to make its training
//! conversations.
//!
//! `python` runs the generator's own programs (never a model's), so it runs them without the
//! sandbox where bubblewrap is missing (`allow_unsandboxed`), in a child process as always; the
//! result's fields that vary between runs of the same program (its duration, whether a sandbox was
//! there) are dropped, so the examples are the same bits on every machine and every build.

use crate::python::SandboxConfig;
use crate::search::SearchConfig;
use crate::search::offline::OfflineIndex;
use crate::{ToolRegistry, ToolSettings};
use serde_json::{Map, Value};
use std::path::Path;
use tardbot_toolcall::{ToolRunner, ToolSpec};

/// Runs the built-in tools with the data builder's settings.
pub struct BuiltinRunner;

/// Result fields that differ between two runs of the same call.
const VARYING: [&str; 3] = ["duration_s", "sandboxed", "note"];

impl ToolRunner for BuiltinRunner {
    fn run(
        &self,
        name: &str,
        arguments: &Map<String, Value>,
        search_index: Option<&Path>,
    ) -> Result<(ToolSpec, Value), String> {
        let settings = ToolSettings {
            python: SandboxConfig {
                allow_unsandboxed: true,
                ..SandboxConfig::default()
            },
            search: match search_index {
                Some(dir) => SearchConfig::offline(dir, 5),
                None => SearchConfig::default(),
            },
            ..ToolSettings::default()
        };
        let registry = ToolRegistry::builtin_with(&[name], &settings)?;
        let tool = registry
            .get(name)
            .ok_or_else(|| format!("no built-in tool `{name}`"))?;
        let mut result = tool
            .call(arguments)
            .map_err(|e| format!("the {name} tool failed: {e}"))?;
        if let Some(o) = result.as_object_mut() {
            for k in VARYING {
                o.remove(k);
            }
        }
        Ok((tool.spec(), result))
    }

    fn sample_passages(
        &self,
        search_index: &Path,
        n: usize,
        seed: u64,
    ) -> Result<Vec<(String, String)>, String> {
        OfflineIndex::open(search_index)
            .map_err(|e| e.to_string())?
            .sample(n, seed)
            .map_err(|e| e.to_string())
    }
}
