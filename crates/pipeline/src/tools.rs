//! `tool NAME --args JSON`: one built-in tool run directly, its arguments checked against its schema
//! as the tool loop checks a model's call ([`ToolRegistry::check`]).

use serde_json::Value;
use tardbot_toolcall::ParsedCall;
use tardbot_tools::ToolRegistry;

/// Prints the result (exit 0) or the error (exit 1; 2 for a bad command line). The tools are built
/// as `[tools.*]` configures them (`python`'s sandbox, `search`'s backend, `browser`'s hosts).
pub fn run_one(name: &str, args: &str, settings: &tardbot_tools::ToolSettings) -> u8 {
    let registry = match ToolRegistry::builtin_with(&[name], settings) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let arguments = match serde_json::from_str::<Value>(args) {
        Ok(Value::Object(m)) => m,
        Ok(other) => {
            eprintln!("error: --args must be a JSON object, got {other}");
            return 2;
        }
        Err(e) => {
            eprintln!("error: --args is not JSON: {e}");
            return 2;
        }
    };
    let call = ParsedCall {
        name: name.to_string(),
        arguments,
    };
    // The same checks the tool loop makes of a model's call (the name is known: `builtin` took it).
    let tool = match registry.check(&call) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    match tool.call(&call.arguments) {
        Ok(v) => {
            println!("{v}");
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}
