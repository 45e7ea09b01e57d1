//! BFCL's ground-truth form: one entry per call, `{"tool_name": {"arg": [accepted values…], …}}`; a
//! dict argument may itself be in this nested form (each key a list of accepted values), and `""` or
//! `null` among a key's accepted values marks it optional. The BFCL conversion resolves targets
//! copied from it; the scorer matches calls against it.

use serde_json::{Map, Value};

/// A ground-truth entry: `{"tool_name": {"arg": [accepted values…], …}}`.
pub(super) fn ground_truth_entry(g: &Value) -> Result<(&str, &Map<String, Value>), String> {
    let obj = g
        .as_object()
        .filter(|o| o.len() == 1)
        .ok_or_else(|| "expected an object with one key, the tool's name".to_string())?;
    let (name, args) = obj
        .iter()
        .next()
        .ok_or_else(|| "expected an object with one key, the tool's name".to_string())?;
    let args = args
        .as_object()
        .ok_or_else(|| format!("{name:?}: expected an object of accepted argument values"))?;
    if let Some((arg, _)) = args.iter().find(|(_, v)| !v.is_array()) {
        return Err(format!(
            "{name:?}.{arg}: expected a list of accepted values"
        ));
    }
    Ok((name, args))
}

/// Whether a dict is in the ground truth's nested form (every value a list of accepted values).
pub(super) fn is_nested_form(v: &Value) -> bool {
    v.as_object()
        .is_some_and(|o| !o.is_empty() && o.values().all(Value::is_array))
}

/// Whether a value holds a nested-form dict (itself, or inside an array).
pub(super) fn contains_nested_form(v: &Value) -> bool {
    match v {
        Value::Object(_) => is_nested_form(v),
        Value::Array(a) => a.iter().any(contains_nested_form),
        _ => false,
    }
}

/// A value copied from the ground truth with every nested-form dict in it (itself, or inside arrays)
/// resolved to a dict of values: each key's first accepted value that is not the optional marker
/// (`""` / `null`); keys with none are left out.
pub(super) fn resolve_copied(v: &Value) -> Value {
    match v {
        Value::Object(o) if is_nested_form(v) => {
            let mut out = Map::new();
            for (k, accepted) in o {
                let first = accepted
                    .as_array()
                    .and_then(|a| a.iter().find(|x| !is_optional_marker(x)));
                if let Some(x) = first {
                    out.insert(k.clone(), resolve_copied(x));
                }
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(resolve_copied).collect()),
        _ => v.clone(),
    }
}

pub(super) fn is_optional_marker(v: &Value) -> bool {
    v.is_null() || v.as_str() == Some("")
}
