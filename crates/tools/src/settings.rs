//! `[tools.python]` of `pipeline.toml`: the sandbox's limits, and the explicit opt-out of the sandbox.
//!
//! ```toml
//! [tools.python]
//! timeout_s = 10            # wall clock per call
//! cpu_seconds = 10
//! memory_mib = 512          # address space
//! max_output_kib = 64       # per stream
//! allow_unsandboxed = false # true: run without bubblewrap where it is unavailable (see python.rs)
//! ```

use crate::python::SandboxConfig;
use serde::Deserialize;
use std::time::Duration;

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PythonSettings {
    pub timeout_s: Option<f64>,
    pub cpu_seconds: Option<u64>,
    pub memory_mib: Option<u64>,
    pub max_output_kib: Option<usize>,
    #[serde(default)]
    pub allow_unsandboxed: bool,
}

impl PythonSettings {
    /// The sandbox these settings describe (defaults for what they leave out).
    pub fn sandbox_config(&self) -> SandboxConfig {
        let mut c = SandboxConfig::default();
        if let Some(t) = self.timeout_s.filter(|t| t.is_finite() && *t > 0.0) {
            c.timeout = Duration::from_secs_f64(t);
        }
        if let Some(s) = self.cpu_seconds {
            c.cpu_seconds = s;
        }
        if let Some(m) = self.memory_mib {
            c.address_space_bytes = m * 1024 * 1024;
        }
        if let Some(k) = self.max_output_kib {
            c.max_output_bytes = k * 1024;
        }
        c.allow_unsandboxed = self.allow_unsandboxed;
        c
    }

    /// What is wrong with the values (checked with the rest of the pipeline file).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        if let Some(t) = self.timeout_s
            && !(t.is_finite() && t > 0.0 && t <= 3600.0)
        {
            p.push(("timeout_s", format!("{t} is not in (0, 3600] seconds")));
        }
        if self.cpu_seconds == Some(0) {
            p.push(("cpu_seconds", "must be at least 1".to_string()));
        }
        if let Some(m) = self.memory_mib
            && m < 64
        {
            p.push((
                "memory_mib",
                format!("{m} MiB is too little for Python to start (at least 64)"),
            ));
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_become_the_sandbox_and_bad_values_are_named() {
        let s = PythonSettings {
            timeout_s: Some(2.5),
            memory_mib: Some(256),
            allow_unsandboxed: true,
            ..PythonSettings::default()
        };
        let c = s.sandbox_config();
        assert_eq!(c.timeout, Duration::from_millis(2500));
        assert_eq!(c.address_space_bytes, 256 << 20);
        assert!(c.allow_unsandboxed);
        assert!(!PythonSettings::default().sandbox_config().allow_unsandboxed);
        let bad = PythonSettings {
            timeout_s: Some(-1.0),
            memory_mib: Some(8),
            ..PythonSettings::default()
        };
        let fields: Vec<&str> = bad.problems().iter().map(|(f, _)| *f).collect();
        assert_eq!(fields, ["timeout_s", "memory_mib"]);
    }
}
